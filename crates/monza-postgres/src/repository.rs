//! [`PgSandboxRepository`]: the port over a pool of PostgreSQL connections.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool::Runtime;
use diesel::ConnectionError;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use monza_domain::{
    Admission, Error, InstanceId, NewEvent, PortMapping, Result, RunningUpdate, Sandbox,
    SandboxEvent, SandboxFilter, SandboxId, SandboxRepository, StatusChange, TenantId, Touch,
};
use time::OffsetDateTime;

use crate::error::{pool_error, unavailable};
use crate::queries;
use crate::url::PgUrl;

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

/// The sandbox repository on PostgreSQL.
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
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::internal(format!("building the PostgreSQL pool: {e}")))?;
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

#[async_trait]
impl SandboxRepository for PgSandboxRepository {
    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox.id), err(level = "debug"))]
    async fn insert(&self, sandbox: &Sandbox, max_live: Option<u64>) -> Result<Admission> {
        let mut conn = self.conn().await?;
        Ok(queries::insert(&mut conn, sandbox, max_live).await?)
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn get(&self, id: SandboxId) -> Result<Sandbox> {
        let mut conn = self.conn().await?;
        Ok(queries::get(&mut conn, id).await?)
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn list(&self, filter: &SandboxFilter) -> Result<Vec<Sandbox>> {
        let mut conn = self.conn().await?;
        Ok(queries::list(&mut conn, filter).await?)
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn mark_running(&self, id: SandboxId, update: &RunningUpdate) -> Result<Sandbox> {
        let mut conn = self.conn().await?;
        Ok(queries::mark_running(&mut conn, id, update).await?)
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn transition(&self, id: SandboxId, change: &StatusChange) -> Result<Sandbox> {
        let mut conn = self.conn().await?;
        Ok(queries::transition(&mut conn, id, change).await?)
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn record_activity(
        &self,
        id: SandboxId,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
        record: Option<NewEvent>,
    ) -> Result<Sandbox> {
        let mut conn = self.conn().await?;
        Ok(queries::record_activity(&mut conn, id, at, expires_at, record.as_ref()).await?)
    }

    async fn touch(
        &self,
        id: SandboxId,
        tenant: Option<TenantId>,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool> {
        let touch = Touch {
            id,
            tenant,
            at,
            expires_at,
        };
        let mut conn = self.conn().await?;
        let changed = queries::touch_many(&mut conn, std::slice::from_ref(&touch)).await?;
        Ok(changed.iter().any(|touched| *touched))
    }

    #[tracing::instrument(skip_all, fields(touches = touches.len()), err)]
    async fn touch_many(&self, touches: &[Touch]) -> Result<Vec<bool>> {
        let mut conn = self.conn().await?;
        Ok(queries::touch_many(&mut conn, touches).await?)
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err)]
    async fn replace_port_mappings(&self, id: SandboxId, ports: &[PortMapping]) -> Result<bool> {
        let mut conn = self.conn().await?;
        Ok(queries::replace_port_mappings(&mut conn, id, ports).await?)
    }

    #[tracing::instrument(skip_all, err)]
    async fn claim_expired(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Sandbox>> {
        let mut conn = self.conn().await?;
        Ok(queries::claim_expired(&mut conn, now, limit).await?)
    }

    #[tracing::instrument(skip_all, fields(leases = ids.len()), err)]
    async fn renew_leases(
        &self,
        instance: InstanceId,
        ids: &[SandboxId],
        expires_at: OffsetDateTime,
    ) -> Result<u64> {
        let mut conn = self.conn().await?;
        Ok(queries::renew_leases(&mut conn, instance, ids, expires_at).await?)
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err)]
    async fn fail_lapsed_create(
        &self,
        id: SandboxId,
        now: OffsetDateTime,
        change: &StatusChange,
    ) -> Result<Option<Sandbox>> {
        let mut conn = self.conn().await?;
        Ok(queries::fail_lapsed_create(&mut conn, id, now, change).await?)
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn append_event(&self, id: SandboxId, event: &NewEvent) -> Result<()> {
        let mut conn = self.conn().await?;
        Ok(queries::append_event(&mut conn, id, event, OffsetDateTime::now_utc()).await?)
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn events(&self, id: SandboxId) -> Result<Vec<SandboxEvent>> {
        let mut conn = self.conn().await?;
        Ok(queries::events(&mut conn, id).await?)
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        Ok(queries::ping(&mut conn).await?)
    }
}
