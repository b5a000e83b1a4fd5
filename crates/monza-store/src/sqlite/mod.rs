//! The embedded default store on SQLite: [`SqliteSandboxRepository`], used when
//! `DATABASE_URL` is unset.
//!
//! diesel's SQLite backend (libsqlite3 compiled in) behind diesel-async's
//! `SyncConnectionWrapper`; the schema comes from `migrations/sqlite`, embedded and applied
//! when the repository opens. Ids are stored as UUID text, timestamps as integer
//! microseconds since the Unix epoch (finer precision is truncated), JSON as text.
//!
//! Durability: every write is committed in its own `BEGIN IMMEDIATE` transaction before
//! the call returns. With [`Synchronous::Full`] (the default) the commit is fsynced, so it
//! survives a power loss; [`Synchronous::Normal`] survives a crash of monza only.

mod codec;
mod specific;

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, ConnectionError, SqliteConnection};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper};
use diesel_async::{AsyncConnection, TransactionManager};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use monza_domain::{Error, Result};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::{Tx, db_error, pool_error, unavailable};

/// diesel-async's view of a SQLite connection, its statements run on the calling thread:
/// a port call runs all of its statements, with its `BEGIN` and `COMMIT`, in one trip to a
/// blocking thread ([`run`]) instead of one trip per statement.
type Conn = SyncConnectionWrapper<SqliteConnection, OnThisThread>;
#[allow(
    dead_code,
    reason = "named by the rows' `check_for_backend`, which the lint does not see"
)]
type Backend = diesel::sqlite::Sqlite;
type Store = SqliteSandboxRepository;

/// SQLite keeps at most this many bound parameters in one statement comfortably.
const IN_CHUNK: usize = 500;

/// Runs `$body` on `$lease`'s connection through [`run`], taking along what it captures.
macro_rules! run_on {
    ($lease:expr, $begin:ident, [$($name:ident $(= $value:expr)?),*], |$c:ident| $body:expr) => {{
        $(let $name = owned!($name $(= $value)?);)*
        let lease = $lease;
        super::run(lease, super::Begin::$begin, async move |$c: &mut super::Conn| {
            $body.await
        })
        .await
    }};
}

/// A `BEGIN IMMEDIATE` transaction on the writer, committed (and so durable) before it
/// returns, rolled back on an error: all of it in one trip to a blocking thread.
macro_rules! in_transaction {
    ($store:expr, [$($capture:tt)*], |$c:ident| $body:expr) => {
        run_on!($store.writer().await?, Immediate, [$($capture)*], |$c| $body)
    };
}

/// A single-statement write: SQLite has one writer, so it is a transaction like any other.
macro_rules! in_statement {
    ($store:expr, [$($capture:tt)*], |$c:ident| $body:expr) => {
        in_transaction!($store, [$($capture)*], |$c| $body)
    };
}

/// A read transaction (one consistent snapshot) on a reader, in one trip to a blocking
/// thread.
macro_rules! in_read {
    ($store:expr, [$($capture:tt)*], |$c:ident| $body:expr) => {
        run_on!($store.reader().await?, Deferred, [$($capture)*], |$c| $body)
    };
}

/// A read of a few rows by key, run where it is asked for ([`run_here`]): it costs less
/// than the trip to a blocking thread and back.
macro_rules! in_point_read {
    ($store:expr, [$($name:ident $(= $value:expr)?),*], |$c:ident| $body:expr) => {{
        $(let $name = owned!($name $(= $value)?);)*
        let lease = $store.reader().await?;
        super::run_here(lease, async move |$c: &mut super::Conn| $body.await).await
    }};
}

/// `$rows` (a slice) into `$table`, one `INSERT` each (diesel batches SQLite inserts only on
/// its synchronous connection); the caller's transaction makes them one commit.
macro_rules! insert_all {
    ($conn:ident, $table:expr, $rows:expr) => {{
        let mut inserted = Ok(());
        for row in $rows {
            if let Err(e) = diesel::insert_into($table).values(row).execute($conn).await {
                inserted = Err(e);
                break;
            }
        }
        inserted
    }};
}

#[path = "../common/queries.rs"]
mod queries;
#[path = "../common/repository.rs"]
mod repository;
#[path = "../common/rows.rs"]
mod rows;
#[path = "../common/schema.rs"]
mod schema;
#[path = "../common/tokens.rs"]
mod tokens;

/// The schema, compiled in from `migrations/sqlite`.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

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
    writer: Arc<Mutex<Conn>>,
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
        let writer = Conn::new(writer);

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
                        Ok(Conn::new(conn))
                    })
                });
                let manager = AsyncDieselConnectionManager::<Conn>::new_with_config(url, config);
                Some(crate::pool::build(
                    manager,
                    options.readers,
                    options.acquire_timeout,
                    options.acquire_timeout,
                    "SQLite",
                )?)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                location,
                writer: Arc::new(Mutex::new(writer)),
                readers,
                acquire_timeout: options.acquire_timeout,
            }),
        })
    }

    /// The writer: SQLite's one write connection, held until the call's transaction ends.
    async fn writer(&self) -> Result<Lease> {
        let writer = self.inner.writer.clone().lock_owned();
        let writer = tokio::time::timeout(self.inner.acquire_timeout, writer)
            .await
            .map_err(|_| unavailable("timed out waiting for the SQLite writer"))?;
        Ok(Lease::Writer(writer))
    }

    /// A read connection (the writer for an in-memory database, which has only one).
    async fn reader(&self) -> Result<Lease> {
        match &self.inner.readers {
            Some(pool) => Ok(Lease::Pooled(pool.get().await.map_err(pool_error)?)),
            None => self.writer().await,
        }
    }
}

/// How a call's transaction starts.
#[derive(Debug, Clone, Copy)]
enum Begin {
    /// Takes the write lock at once (against every connection and process), so the
    /// transaction never fails half-way on a lock another writer took since its first read.
    Immediate,
    /// A read snapshot, taken at the first read.
    Deferred,
}

/// Runs `job` in one transaction on `conn`, committed (durable, for a write) before this
/// returns, rolled back on an error, all on one blocking thread: SQLite calls block (a
/// commit waits for its fsync), so they stay off the async workers, and one trip for the
/// whole call costs a fraction of one trip per statement. The job runs to its end even if
/// the caller stops waiting, so a write is all done or not at all.
async fn run<T, F>(mut conn: Lease, begin: Begin, job: F) -> Result<T>
where
    T: Send + 'static,
    F: AsyncFnOnce(&mut Conn) -> Tx<T> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // Every future below is ready when first polled (`OnThisThread`), so this never
        // parks.
        handle.block_on(transact(&mut conn, begin, job))
    })
    .await
    .map_err(|e| Error::internal(format!("SQLite call ended abnormally: {e}")))?
}

/// Runs the read `job` in one snapshot on `conn` on the calling thread, for point reads
/// (a row or a few by key, from pages the OS has cached): a few microseconds of work, less
/// than the two thread switches [`run`] costs. Its futures are ready when first polled, so
/// it completes in one poll and cannot be cancelled half-way.
async fn run_here<T, F>(mut conn: Lease, job: F) -> Result<T>
where
    F: AsyncFnOnce(&mut Conn) -> Tx<T>,
{
    transact(&mut conn, Begin::Deferred, job).await
}

/// `job` in one transaction begun as `begin`, committed, rolled back on an error.
async fn transact<T, F>(conn: &mut Conn, begin: Begin, job: F) -> Result<T>
where
    F: AsyncFnOnce(&mut Conn) -> Tx<T>,
{
    recover(conn).await?;
    match begin {
        Begin::Immediate => conn
            .spawn_blocking(|c| {
                diesel::connection::AnsiTransactionManager::begin_transaction_sql(
                    c,
                    "BEGIN IMMEDIATE",
                )
            })
            .await
            .map_err(db_error)?,
        Begin::Deferred => Manager::begin_transaction(conn).await.map_err(db_error)?,
    }
    match job(conn).await {
        Ok(value) => match Manager::commit_transaction(conn).await {
            Ok(()) => Ok(value),
            Err(e) => {
                recover(conn).await?;
                Err(db_error(e))
            }
        },
        Err(e) => {
            recover(conn).await?;
            Err(e.into())
        }
    }
}

/// Runs diesel-async's "blocking" tasks where they are asked for: [`run`] already put the
/// whole call on a blocking thread.
#[derive(Debug, Clone, Copy, Default)]
struct OnThisThread;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl SpawnBlocking for OnThisThread {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<R, BoxError>> + Send + 'a>>
    where
        R: Send + 'static,
    {
        Box::pin(std::future::ready(Ok(task())))
    }

    fn get_runtime() -> Self {
        Self
    }
}

type Manager = <Conn as AsyncConnection>::TransactionManager;

/// Rolls back a transaction left open on `conn` (by a failed commit or rollback).
async fn recover(conn: &mut Conn) -> Result<()> {
    for _ in 0..8 {
        let depth = Manager::transaction_manager_status_mut(conn)
            .transaction_depth()
            .map_err(db_error)?;
        if depth.is_none() {
            return Ok(());
        }
        Manager::rollback_transaction(conn)
            .await
            .map_err(db_error)?;
    }
    Err(Error::internal("SQLite: cannot leave a nested transaction"))
}

/// A connection held for one call: a pooled reader or the locked writer.
enum Lease {
    Pooled(Object<Conn>),
    Writer(OwnedMutexGuard<Conn>),
}

impl std::ops::Deref for Lease {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        match self {
            Self::Pooled(conn) => conn,
            Self::Writer(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            Self::Pooled(conn) => conn,
            Self::Writer(conn) => conn,
        }
    }
}
