//! Opening a SQLite store: URLs, migrations on new and migrated files, durability.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::path::PathBuf;

use monza_domain::testing::repository_contract::{base_time, micros, sample_sandbox};
use monza_domain::{Error, SandboxRepository, SandboxStatus};
use monza_store::sqlite::{
    SqliteLocation, SqliteOptions, SqliteSandboxRepository, parse_sqlite_url,
};
use time::Duration;

/// The store on the file at `path`, with the default options.
async fn open(path: &std::path::Path) -> SqliteSandboxRepository {
    SqliteSandboxRepository::open(path, SqliteOptions::default())
        .await
        .unwrap()
}

/// Inserts `sandbox` (no limit) and checks it was written.
async fn inserted(repo: &SqliteSandboxRepository, sandbox: &monza_domain::Sandbox) {
    assert_eq!(
        repo.insert(sandbox, None).await.unwrap(),
        monza_domain::Admission::Inserted
    );
}

#[test]
fn parses_the_accepted_url_forms() {
    assert_eq!(
        parse_sqlite_url("sqlite://data/monza.db"),
        Ok(SqliteLocation::File(PathBuf::from("data/monza.db")))
    );
    assert_eq!(
        parse_sqlite_url("sqlite:///var/lib/monza/monza.db"),
        Ok(SqliteLocation::File(PathBuf::from(
            "/var/lib/monza/monza.db"
        )))
    );
    assert_eq!(
        parse_sqlite_url("sqlite::memory:"),
        Ok(SqliteLocation::Memory)
    );
    for bad in [
        "sqlite://",
        "postgres://localhost/db",
        "monza.db",
        "sqlite://x.db?mode=ro",
    ] {
        assert!(
            matches!(parse_sqlite_url(bad), Err(Error::InvalidInput(_))),
            "{bad} should be refused"
        );
    }
}

#[tokio::test]
async fn creates_missing_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/monza.db");
    let url = format!("sqlite://{}", path.display());
    let repo = SqliteSandboxRepository::connect(&url, SqliteOptions::default())
        .await
        .unwrap();
    repo.ping().await.unwrap();
    assert!(path.is_file());
    assert_eq!(repo.location(), &SqliteLocation::File(path));
}

#[tokio::test]
async fn migrations_run_on_a_new_and_on_an_already_migrated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monza.db");
    let sandbox = sample_sandbox("acme", SandboxStatus::Running, base_time());
    {
        let repo = open(&path).await;
        inserted(&repo, &sandbox).await;
    }
    // Opening again finds the schema current and the data intact.
    let repo = open(&path).await;
    assert_eq!(repo.get(sandbox.id).await.unwrap(), sandbox);
}

#[tokio::test]
async fn an_acknowledged_heartbeat_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monza.db");
    let sandbox = sample_sandbox("acme", SandboxStatus::Running, base_time());
    let at = micros(base_time() + Duration::minutes(9));
    let writer = open(&path).await;
    inserted(&writer, &sandbox).await;
    writer
        .record_activity(sandbox.id, at, at + Duration::minutes(30), None)
        .await
        .unwrap();
    // A new repository (new connections) on the same file, while the first is still open:
    // nothing was waiting in memory.
    let reader = open(&path).await;
    let seen = reader.get(sandbox.id).await.unwrap();
    assert_eq!(seen.last_activity, at);
    assert_eq!(seen.expires_at, at + Duration::minutes(30));
    drop(writer);
    drop(reader);
    let reopened = open(&path).await;
    assert_eq!(reopened.get(sandbox.id).await.unwrap().last_activity, at);
}

#[tokio::test]
async fn an_unopenable_path_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let err = SqliteSandboxRepository::open(blocker.join("monza.db"), SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable { dependency, .. } if dependency == "database"),
        "{err:?}"
    );
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[tokio::test]
async fn writes_go_through_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monza.db");
    let repo = open(&path).await;
    repo.ping().await.unwrap();
    // The WAL file exists next to the database once the journal mode is WAL.
    let sandbox = sample_sandbox("acme", SandboxStatus::Creating, base_time());
    inserted(&repo, &sandbox).await;
    assert!(dir.path().join("monza.db-wal").exists(), "WAL mode");
}

/// A row written by a monza older than the `remote_env`/`remote_user` columns (both NULL)
/// reads its remote settings from its stored devcontainer.json (the compatibility path).
#[tokio::test]
async fn a_row_without_remote_settings_reads_them_from_its_stored_template() {
    use diesel::{Connection, RunQueryDsl, SqliteConnection};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monza.db");
    let repo = open(&path).await;
    let mut sandbox = sample_sandbox("acme", SandboxStatus::Running, base_time());
    sandbox.devcontainer_config = serde_json::json!({
        "image": "busybox",
        "remoteUser": "vscode",
        "remoteEnv": {"EDITOR": "vi"},
    });
    inserted(&repo, &sandbox).await;
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    diesel::sql_query("UPDATE sandboxes SET remote_env = NULL, remote_user = NULL")
        .execute(&mut conn)
        .unwrap();
    let back = repo.get(sandbox.id).await.unwrap();
    assert_eq!(back.remote_user.as_deref(), Some("vscode"));
    assert_eq!(
        back.remote_env,
        std::collections::BTreeMap::from([("EDITOR".to_owned(), "vi".to_owned())])
    );
}
