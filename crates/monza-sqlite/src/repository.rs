//! [`SqliteSandboxRepository`]: the port over one SQLite database file (or memory).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool::Runtime;
use diesel::connection::SimpleConnection;
use diesel::{Connection, ConnectionError, SqliteConnection};
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use monza_domain::{
    Admission, Error, InstanceId, NewEvent, PortMapping, Result, RunningUpdate, Sandbox,
    SandboxEvent, SandboxFilter, SandboxId, SandboxRepository, StatusChange, TenantId, Touch,
};
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::error::{TxError, db_error, unavailable};
use crate::queries;

/// The schema, compiled in from `migrations/sqlite`.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

type Conn = SyncConnectionWrapper<SqliteConnection>;

/// Where the database lives, as parsed from a `sqlite://PATH` or `sqlite::memory:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteLocation {
    /// A database file (created, with its parent directories, if missing).
    File(PathBuf),
    /// A private in-memory database, gone when the repository is dropped (tests).
    Memory,
}

impl fmt::Display for SqliteLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "sqlite://{}", path.display()),
            Self::Memory => f.write_str("sqlite::memory:"),
        }
    }
}

/// Parses the `DATABASE_URL` forms this adapter accepts: `sqlite://PATH` (relative or,
/// with a third slash, absolute: `sqlite:///var/lib/monza/monza.db`) and `sqlite::memory:`.
pub fn parse_sqlite_url(url: &str) -> Result<SqliteLocation> {
    let url = url.trim();
    if url == "sqlite::memory:" || url == "sqlite://:memory:" {
        return Ok(SqliteLocation::Memory);
    }
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() && !path.contains('?') => {
            Ok(SqliteLocation::File(PathBuf::from(path)))
        }
        Some(_) => Err(Error::invalid(format!(
            "invalid SQLite URL {url:?}: expected sqlite://PATH (no query string) or sqlite::memory:"
        ))),
        None => Err(Error::invalid(format!(
            "not a SQLite URL: {url:?}: expected sqlite://PATH or sqlite::memory:"
        ))),
    }
}

/// How each write reaches the disk (`PRAGMA synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Each commit is fsynced before it returns: acknowledged writes survive a power loss.
    #[default]
    Full,
    /// Commits are written to the WAL (the OS has them) and fsynced at checkpoints:
    /// acknowledged writes survive a crash of monza, not a power loss of the machine.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// Tuning for [`SqliteSandboxRepository`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a write waits for another process's lock (`PRAGMA busy_timeout`).
    pub busy_timeout: Duration,
    /// Read connections (reads run in parallel with the single writer in WAL mode).
    pub readers: usize,
    /// Durability of each commit.
    pub synchronous: Synchronous,
    /// How long a call waits for a connection before giving up as unavailable.
    pub acquire_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            readers: 4,
            synchronous: Synchronous::Full,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// The sandbox repository on SQLite.
///
/// One writer connection (writes queue for it in order, each in a `BEGIN IMMEDIATE`
/// transaction that is committed before the call returns) and a pool of read connections.
/// Every connection runs with WAL, `foreign_keys = ON` and a busy timeout. Cloning is cheap
/// and shares the connections.
#[derive(Clone)]
pub struct SqliteSandboxRepository {
    inner: Arc<Inner>,
}

struct Inner {
    location: SqliteLocation,
    writer: Mutex<Conn>,
    readers: Option<Pool<Conn>>,
    acquire_timeout: Duration,
}

impl fmt::Debug for SqliteSandboxRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSandboxRepository")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

fn pragmas(location: &SqliteLocation, options: &SqliteOptions, read_only: bool) -> String {
    // busy_timeout first: switching to WAL needs a lock that another process (a server
    // closing its last connection checkpoints the WAL) may hold for a moment.
    let wal = if matches!(location, SqliteLocation::File(_)) {
        "PRAGMA journal_mode = WAL; "
    } else {
        ""
    };
    let mut sql = format!(
        "PRAGMA busy_timeout = {}; {wal}PRAGMA foreign_keys = ON; PRAGMA synchronous = {};",
        options.busy_timeout.as_millis(),
        options.synchronous.pragma()
    );
    if read_only {
        sql.push_str(" PRAGMA query_only = ON;");
    }
    sql
}

fn establish(url: &str, pragmas: &str) -> Result<SqliteConnection, ConnectionError> {
    let mut conn = SqliteConnection::establish(url)?;
    conn.batch_execute(pragmas)
        .map_err(|e| ConnectionError::BadConnection(format!("setting up SQLite: {e}")))?;
    Ok(conn)
}

fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Timeout(_) => unavailable("timed out waiting for a SQLite connection"),
        PoolError::Backend(e) => unavailable(format!("opening a SQLite connection: {e}")),
        other => Error::internal(format!("SQLite connection pool: {other}")),
    }
}

async fn run<T: Send + 'static>(
    conn: &mut Conn,
    task: impl FnOnce(&mut SqliteConnection) -> Result<T, TxError> + Send + 'static,
) -> Result<T> {
    conn.spawn_blocking(move |c| Ok(task(c)))
        .await
        .map_err(db_error)?
        .map_err(Error::from)
}

impl SqliteSandboxRepository {
    /// Opens (creating it and its parent directories if needed) the database file at
    /// `path` and brings its schema up to date.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                unavailable(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        Self::start(SqliteLocation::File(path), options).await
    }

    /// A fresh private in-memory database (one connection), for tests.
    pub async fn in_memory() -> Result<Self> {
        Self::start(SqliteLocation::Memory, SqliteOptions::default()).await
    }

    /// Opens the database a `sqlite://PATH` or `sqlite::memory:` URL names.
    pub async fn connect(url: &str, options: SqliteOptions) -> Result<Self> {
        match parse_sqlite_url(url)? {
            SqliteLocation::File(path) => Self::open(path, options).await,
            SqliteLocation::Memory => Self::start(SqliteLocation::Memory, options).await,
        }
    }

    /// Where the database lives.
    pub fn location(&self) -> &SqliteLocation {
        &self.inner.location
    }

    async fn start(location: SqliteLocation, options: SqliteOptions) -> Result<Self> {
        let url = match &location {
            SqliteLocation::File(path) => path
                .to_str()
                .ok_or_else(|| {
                    Error::invalid(format!("SQLite path {} is not UTF-8", path.display()))
                })?
                .to_owned(),
            SqliteLocation::Memory => ":memory:".to_owned(),
        };
        let writer_setup = pragmas(&location, &options, false);
        let what = location.to_string();
        let writer_url = url.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut conn = establish(&writer_url, &writer_setup)
                .map_err(|e| unavailable(format!("cannot open {what}: {e}")))?;
            let applied = conn
                .immediate_transaction(|c| {
                    c.run_pending_migrations(MIGRATIONS).map(|done| done.len())
                })
                .map_err(|e| Error::internal(format!("migrating {what}: {e}")))?;
            tracing::info!(database = %what, applied, "SQLite schema is up to date");
            Ok::<_, Error>(conn)
        })
        .await
        .map_err(|e| Error::internal(format!("opening SQLite: {e}")))??;
        let writer = SyncConnectionWrapper::new(writer);

        let readers = match &location {
            SqliteLocation::Memory => None,
            SqliteLocation::File(_) => {
                let setup = pragmas(&location, &options, true);
                let mut config = ManagerConfig::<Conn>::default();
                config.recycling_method = RecyclingMethod::Fast;
                config.custom_setup = Box::new(move |url| {
                    let url = url.to_owned();
                    let setup = setup.clone();
                    Box::pin(async move {
                        let conn = tokio::task::spawn_blocking(move || establish(&url, &setup))
                            .await
                            .map_err(|e| ConnectionError::BadConnection(e.to_string()))??;
                        Ok(SyncConnectionWrapper::new(conn))
                    })
                });
                let manager = AsyncDieselConnectionManager::<Conn>::new_with_config(url, config);
                let pool = Pool::builder(manager)
                    .max_size(options.readers.max(1))
                    .wait_timeout(Some(options.acquire_timeout))
                    .create_timeout(Some(options.acquire_timeout))
                    .recycle_timeout(Some(options.acquire_timeout))
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| Error::internal(format!("building the SQLite pool: {e}")))?;
                Some(pool)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                location,
                writer: Mutex::new(writer),
                readers,
                acquire_timeout: options.acquire_timeout,
            }),
        })
    }

    /// Runs `task` in a `BEGIN IMMEDIATE` transaction on the writer, committed (and so
    /// durable) before this returns.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        task: impl FnOnce(&mut SqliteConnection) -> Result<T, TxError> + Send + 'static,
    ) -> Result<T> {
        let mut writer = tokio::time::timeout(self.inner.acquire_timeout, self.inner.writer.lock())
            .await
            .map_err(|_| unavailable("timed out waiting for the SQLite writer"))?;
        run(&mut writer, move |c| c.immediate_transaction(task)).await
    }

    /// Runs `task` in a read transaction (one consistent snapshot).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        task: impl FnOnce(&mut SqliteConnection) -> Result<T, TxError> + Send + 'static,
    ) -> Result<T> {
        match &self.inner.readers {
            Some(pool) => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                run(&mut conn, move |c| c.transaction(task)).await
            }
            None => {
                let mut writer =
                    tokio::time::timeout(self.inner.acquire_timeout, self.inner.writer.lock())
                        .await
                        .map_err(|_| unavailable("timed out waiting for the SQLite connection"))?;
                run(&mut writer, move |c| c.transaction(task)).await
            }
        }
    }
}

#[async_trait]
impl SandboxRepository for SqliteSandboxRepository {
    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox.id), err(level = "debug"))]
    async fn insert(&self, sandbox: &Sandbox, max_live: Option<u64>) -> Result<Admission> {
        let sandbox = sandbox.clone();
        self.write(move |c| queries::insert(c, &sandbox, max_live))
            .await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn get(&self, id: SandboxId) -> Result<Sandbox> {
        self.read(move |c| queries::get(c, id)).await
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn list(&self, filter: &SandboxFilter) -> Result<Vec<Sandbox>> {
        let filter = filter.clone();
        self.read(move |c| queries::list(c, &filter)).await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn mark_running(&self, id: SandboxId, update: &RunningUpdate) -> Result<Sandbox> {
        let update = update.clone();
        self.write(move |c| queries::mark_running(c, id, &update))
            .await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn transition(&self, id: SandboxId, change: &StatusChange) -> Result<Sandbox> {
        let change = change.clone();
        self.write(move |c| queries::transition(c, id, &change))
            .await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn record_activity(
        &self,
        id: SandboxId,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
        record: Option<NewEvent>,
    ) -> Result<Sandbox> {
        self.write(move |c| queries::record_activity(c, id, at, expires_at, record.as_ref()))
            .await
    }

    async fn touch(
        &self,
        id: SandboxId,
        tenant: Option<TenantId>,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool> {
        self.write(move |c| {
            let tenant = tenant.as_ref().map(TenantId::as_str);
            queries::touch_if_owned(c, id, tenant, at, expires_at)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(touches = touches.len()), err)]
    async fn touch_many(&self, touches: &[Touch]) -> Result<Vec<bool>> {
        let touches = touches.to_vec();
        // One transaction on the writer: one WAL sync for the whole batch.
        self.write(move |c| {
            touches
                .iter()
                .map(|t| {
                    let tenant = t.tenant.as_ref().map(TenantId::as_str);
                    queries::touch_if_owned(c, t.id, tenant, t.at, t.expires_at)
                })
                .collect()
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err)]
    async fn replace_port_mappings(&self, id: SandboxId, ports: &[PortMapping]) -> Result<bool> {
        let ports = ports.to_vec();
        self.write(move |c| queries::replace_port_mappings(c, id, &ports))
            .await
    }

    #[tracing::instrument(skip_all, err)]
    async fn claim_expired(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Sandbox>> {
        self.write(move |c| queries::claim_expired(c, now, limit))
            .await
    }

    #[tracing::instrument(skip_all, fields(leases = ids.len()), err)]
    async fn renew_leases(
        &self,
        instance: InstanceId,
        ids: &[SandboxId],
        expires_at: OffsetDateTime,
    ) -> Result<u64> {
        let ids = ids.to_vec();
        self.write(move |c| queries::renew_leases(c, instance, &ids, expires_at))
            .await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err)]
    async fn fail_lapsed_create(
        &self,
        id: SandboxId,
        now: OffsetDateTime,
        change: &StatusChange,
    ) -> Result<Option<Sandbox>> {
        let change = change.clone();
        self.write(move |c| queries::fail_lapsed_create(c, id, now, &change))
            .await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn append_event(&self, id: SandboxId, event: &NewEvent) -> Result<()> {
        let event = event.clone();
        let at = OffsetDateTime::now_utc();
        self.write(move |c| queries::append_event(c, id, &event, at))
            .await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn events(&self, id: SandboxId) -> Result<Vec<SandboxEvent>> {
        self.read(move |c| queries::events(c, id)).await
    }

    async fn ping(&self) -> Result<()> {
        self.read(queries::ping).await
    }
}
