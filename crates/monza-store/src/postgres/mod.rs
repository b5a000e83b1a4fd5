//! The store on PostgreSQL: [`PgSandboxRepository`], for production and several replicas.
//!
//! diesel-async (pure Rust, no libpq) with a deadpool pool. The schema comes from
//! `migrations/postgres`, embedded at build time and applied at start-up by
//! [`PgSandboxRepository::connect`], with retry, under an advisory lock. Timestamps are
//! `timestamptz`: anything finer than a microsecond is truncated. `claim_expired` uses
//! `FOR UPDATE SKIP LOCKED`, so several monza processes can reap one database. Every write
//! is committed (PostgreSQL's default `synchronous_commit = on`) before the call returns.
//!
//! TLS is not supported yet (connections use `NoTls`).

mod codec;
mod specific;
mod url;

use std::fmt;
use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use monza_domain::{Error, Result};

use crate::error::{pool_error, unavailable};

pub use url::{PgUrl, parse_postgres_url};

type Conn = AsyncPgConnection;
#[allow(
    dead_code,
    reason = "named by the rows' `check_for_backend`, which the lint does not see"
)]
type Backend = diesel::pg::Pg;
type Store = PgSandboxRepository;

/// `= ANY($1)` takes one array parameter: no need to split a list of ids.
const IN_CHUNK: usize = usize::MAX;

/// A transaction on a pooled connection (committed before it returns, rolled back on an
/// error).
macro_rules! in_transaction {
    ($store:expr, [$($name:ident $(= $value:expr)?),*], |$c:ident| $body:expr) => {{
        $(let $name = owned!($name $(= $value)?);)*
        transaction_on!($store.conn().await?, |$c| $body)
    }};
}

/// One statement, autocommitted: durable when it returns.
macro_rules! in_statement {
    ($store:expr, [$($name:ident $(= $value:expr)?),*], |$c:ident| $body:expr) => {{
        $(let $name = owned!($name $(= $value)?);)*
        let mut conn = $store.conn().await?;
        let $c: &mut super::Conn = &mut conn;
        let result: crate::error::Tx<_> = $body.await;
        result.map_err(monza_domain::Error::from)
    }};
}

/// Reads on a pooled connection (one statement each: a query that needs one snapshot is
/// one statement).
macro_rules! in_read {
    ($store:expr, [$($capture:tt)*], |$c:ident| $body:expr) => {
        in_statement!($store, [$($capture)*], |$c| $body)
    };
}

/// A read of a few rows by key: on PostgreSQL, a read like any other.
macro_rules! in_point_read {
    ($store:expr, [$($capture:tt)*], |$c:ident| $body:expr) => {
        in_read!($store, [$($capture)*], |$c| $body)
    };
}

/// `$rows` (a slice) into `$table` in one multi-row `INSERT`, none for no rows.
macro_rules! insert_all {
    ($conn:ident, $table:expr, $rows:expr) => {{
        let rows = $rows;
        if rows.is_empty() {
            Ok(())
        } else {
            diesel::insert_into($table)
                .values(rows)
                .execute($conn)
                .await
                .map(drop)
        }
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

/// The schema, compiled in from `migrations/postgres`.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// Serializes migrations between monza processes starting at once (an arbitrary constant).
const MIGRATION_LOCK: i64 = 0x6d6f_6e7a_615f_6d67;

/// Tuning for [`PgSandboxRepository`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections in the pool.
    pub max_connections: usize,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a call waits for a pooled connection before it is unavailable.
    pub acquire_timeout: Duration,
    /// Start-up: how many times to try reaching the database and migrating it.
    pub migration_attempts: u32,
    /// Start-up: the pause between attempts.
    pub migration_retry_delay: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(10),
            migration_attempts: 10,
            migration_retry_delay: Duration::from_secs(2),
        }
    }
}

/// The sandbox (and token) repository on PostgreSQL.
///
/// Every write is committed (PostgreSQL's default `synchronous_commit = on`) before the
/// call returns. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PgSandboxRepository {
    pool: Pool<AsyncPgConnection>,
    url: PgUrl,
}

impl fmt::Debug for PgSandboxRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSandboxRepository")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

async fn establish(
    url: &str,
    timeout: Duration,
) -> std::result::Result<AsyncPgConnection, ConnectionError> {
    match tokio::time::timeout(timeout, AsyncPgConnection::establish(url)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectionError::BadConnection(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Opens (and closes) a TCP connection first: the driver's "error connecting to server"
/// hides why, the socket error says it (refused, no route, unknown host).
async fn probe(url: &PgUrl, timeout: Duration) -> std::result::Result<(), String> {
    let host = url.host();
    if host.starts_with('/') || host.starts_with("%2F") {
        return Ok(()); // a Unix socket directory: let the driver report
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, url.port()))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot open a TCP connection: {e}")),
        Err(_) => Err(format!(
            "no TCP connection within {} ms",
            timeout.as_millis()
        )),
    }
}

/// Connects once and applies pending migrations, under an advisory lock so two processes
/// starting together do not both apply them.
async fn migrate_once(url: &PgUrl, options: &PgOptions) -> std::result::Result<usize, String> {
    probe(url, options.connect_timeout).await?;
    let mut conn = establish(url.expose(), options.connect_timeout)
        .await
        .map_err(|e| e.to_string())?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    // `AsyncConnectionWrapper` blocks on the async connection: run it off the runtime's
    // worker threads (`AsyncMigrationHarness` would need a multi-thread runtime).
    let applied = tokio::task::spawn_blocking(move || {
        let mut wrapper: AsyncConnectionWrapper<AsyncPgConnection> =
            AsyncConnectionWrapper::from(conn);
        let applied = wrapper
            .run_pending_migrations(MIGRATIONS)
            .map(|done| done.len())
            .map_err(|e| e.to_string());
        let unlocked = diesel::RunQueryDsl::execute(
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")),
            &mut wrapper,
        );
        (applied, unlocked)
    })
    .await
    .map_err(|e| format!("the migration task failed: {e}"))?;
    match applied {
        (Ok(applied), _) => Ok(applied),
        // The lock goes with the connection, which is dropped here.
        (Err(e), _) => Err(format!("migration failed: {e}")),
    }
}

impl PgSandboxRepository {
    /// Parses `url` (`postgres://` or `postgresql://`), brings the schema up to date
    /// (retrying `options.migration_attempts` times, `options.migration_retry_delay` apart,
    /// each failure logged with its attempt number) and builds the pool.
    ///
    /// A database that never answers is one `Unavailable { dependency: "database" }` error
    /// naming the host, port and database, never the password.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self> {
        let url = PgUrl::parse(url)?;
        Self::connect_to(url, options).await
    }

    /// Like [`Self::connect`], for an already parsed URL.
    pub async fn connect_to(url: PgUrl, options: PgOptions) -> Result<Self> {
        let attempts = options.migration_attempts.max(1);
        let mut attempt = 1;
        loop {
            match migrate_once(&url, &options).await {
                Ok(applied) => {
                    tracing::info!(database = %url, applied, "PostgreSQL schema is up to date");
                    break;
                }
                Err(e) => {
                    let e = url.scrub(&e);
                    if attempt >= attempts {
                        return Err(unavailable(format!(
                            "cannot reach {} after {attempts} attempts: {e}",
                            url.describe()
                        )));
                    }
                    tracing::warn!(
                        attempt,
                        attempts,
                        database = %url,
                        error = %e,
                        retry_in_ms = options.migration_retry_delay.as_millis() as u64,
                        "cannot reach or migrate PostgreSQL; retrying"
                    );
                    tokio::time::sleep(options.migration_retry_delay).await;
                    attempt += 1;
                }
            }
        }

        let connect_timeout = options.connect_timeout;
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        // A broken connection is dropped when it is returned (`is_broken`); checking out
        // does not cost a round trip.
        config.recycling_method = RecyclingMethod::Fast;
        config.custom_setup =
            Box::new(move |url| Box::pin(establish_owned(url.to_owned(), connect_timeout)));
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            url.expose(),
            config,
        );
        let pool = crate::pool::build(
            manager,
            options.max_connections,
            options.acquire_timeout,
            options.connect_timeout,
            "PostgreSQL",
        )?;
        Ok(Self { pool, url })
    }

    /// The database, without its password (for logs).
    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    pub(crate) async fn conn(&self) -> Result<Object<AsyncPgConnection>> {
        self.pool.get().await.map_err(|e| {
            let e = pool_error(e);
            match e {
                Error::Unavailable { message, .. } => unavailable(
                    self.url
                        .scrub(&format!("{}: {message}", self.url.describe())),
                ),
                other => other,
            }
        })
    }
}

async fn establish_owned(
    url: String,
    timeout: Duration,
) -> std::result::Result<AsyncPgConnection, ConnectionError> {
    establish(&url, timeout).await
}
