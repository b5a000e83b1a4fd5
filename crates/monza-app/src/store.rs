//! Chooses and opens the sandbox store from `DATABASE_URL`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use monza_domain::{SandboxRepository, TokenRepository};

use crate::settings::Secret;

/// How start-up retries a database that does not answer yet.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts in all.
    pub attempts: u32,
    /// Pause between attempts.
    pub delay: std::time::Duration,
}

/// Which store a `DATABASE_URL` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
    /// `sqlite://PATH`, or the default file under the data directory.
    SqliteFile(PathBuf),
    /// `sqlite::memory:` (tests).
    SqliteMemory,
}

/// The accepted forms, for error messages.
pub const ACCEPTED: &str = "postgres://USER:PASSWORD@HOST:PORT/DB, postgresql://…, sqlite://PATH, \
     sqlite::memory:, or unset for SQLite in MONZA_DATA_DIR";

/// Reads `DATABASE_URL`; unset means SQLite in `data_dir/monza.db`.
pub fn locate(url: Option<&str>, data_dir: &Path) -> Result<StoreLocation> {
    let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(StoreLocation::SqliteFile(data_dir.join("monza.db")));
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(StoreLocation::Postgres(url.to_owned()));
    }
    if url == "sqlite::memory:" {
        return Ok(StoreLocation::SqliteMemory);
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            bail!("DATABASE_URL sqlite:// names no file: use sqlite://PATH");
        }
        return Ok(StoreLocation::SqliteFile(PathBuf::from(path)));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    bail!("DATABASE_URL has an unknown scheme {scheme:?}: accepted are {ACCEPTED}")
}

/// The ports one store serves: sandboxes and API tokens, on the same database.
#[derive(Clone)]
pub struct Stores {
    /// Where sandboxes are kept.
    pub sandboxes: Arc<dyn SandboxRepository>,
    /// Where API tokens are kept.
    pub tokens: Arc<dyn TokenRepository>,
    /// Names this store without secrets (`postgres://HOST:PORT/DB`, `sqlite:PATH`): the
    /// default deployment label, so replicas sharing a database share their containers and
    /// servers with different stores on one engine never touch each other's.
    pub deployment: String,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    fn of<R: SandboxRepository + TokenRepository + 'static>(repo: R, deployment: String) -> Self {
        let repo = Arc::new(repo);
        Self {
            sandboxes: repo.clone(),
            tokens: repo,
            deployment,
        }
    }
}

/// Opens (and migrates) the store `DATABASE_URL` names: its sandbox repository.
pub async fn open(
    url: Option<&Secret>,
    data_dir: &Path,
    retry: &Retry,
) -> Result<Arc<dyn SandboxRepository>> {
    Ok(open_stores(url, data_dir, retry).await?.sandboxes)
}

/// Opens (and migrates) the store `DATABASE_URL` names, with every port it serves.
pub async fn open_stores(url: Option<&Secret>, data_dir: &Path, retry: &Retry) -> Result<Stores> {
    match locate(url.map(Secret::expose), data_dir)? {
        StoreLocation::Postgres(url) => {
            // The URL's own error never contains the password.
            let url = monza_store::postgres::PgUrl::parse(&url)
                .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
            let described = url.describe();
            let deployment = format!(
                "postgres://{}:{}/{}",
                url.host(),
                url.port(),
                url.database()
            );
            let options = monza_store::postgres::PgOptions {
                migration_attempts: retry.attempts,
                migration_retry_delay: retry.delay,
                ..monza_store::postgres::PgOptions::default()
            };
            let repo = monza_store::postgres::PgSandboxRepository::connect_to(url, options)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(database = %described, "store: PostgreSQL");
            Ok(Stores::of(repo, deployment))
        }
        StoreLocation::SqliteFile(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| {
                    format!("MONZA_DATA_DIR: cannot create {}", parent.display())
                })?;
            }
            let repo =
                monza_store::sqlite::SqliteSandboxRepository::open(&path, Default::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("SQLite database {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "store: SQLite");
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            Ok(Stores::of(repo, format!("sqlite:{}", path.display())))
        }
        StoreLocation::SqliteMemory => {
            let repo = monza_store::sqlite::SqliteSandboxRepository::in_memory()
                .await
                .map_err(|e| anyhow::anyhow!("in-memory SQLite: {e}"))?;
            tracing::info!("store: in-memory SQLite (nothing survives a restart)");
            Ok(Stores::of(
                repo,
                // Nothing else can share an in-memory store: a label no one else has.
                format!(
                    "sqlite::memory:{}:{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or_default()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_means_sqlite_in_the_data_dir() {
        assert_eq!(
            locate(None, Path::new("/d")).unwrap(),
            StoreLocation::SqliteFile("/d/monza.db".into())
        );
        assert_eq!(
            locate(Some(" "), Path::new("/d")).unwrap(),
            StoreLocation::SqliteFile("/d/monza.db".into())
        );
    }

    #[test]
    fn schemes_select_the_adapter() {
        let d = Path::new("/d");
        assert!(matches!(
            locate(Some("postgres://u:p@h/db"), d).unwrap(),
            StoreLocation::Postgres(_)
        ));
        assert!(matches!(
            locate(Some("postgresql://u@h/db"), d).unwrap(),
            StoreLocation::Postgres(_)
        ));
        assert_eq!(
            locate(Some("sqlite:///var/lib/monza.db"), d).unwrap(),
            StoreLocation::SqliteFile("/var/lib/monza.db".into())
        );
        assert_eq!(
            locate(Some("sqlite::memory:"), d).unwrap(),
            StoreLocation::SqliteMemory
        );
    }

    #[test]
    fn an_unknown_scheme_lists_the_accepted_ones() {
        let err = locate(Some("mysql://u:secret@h/db"), Path::new("/d"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"mysql\""), "{err}");
        assert!(err.contains("sqlite://PATH"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
