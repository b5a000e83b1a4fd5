//! A fresh PostgreSQL database per test on `TEST_DATABASE_URL` (default
//! `postgres://postgres:postgres@127.0.0.1:5432/postgres`), dropped when the test ends.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries and the bench

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use monza_store::postgres::{PgOptions, PgUrl, parse_postgres_url};

pub const DEFAULT_SERVER: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

pub fn server_url() -> PgUrl {
    let url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    parse_postgres_url(&url).unwrap()
}

/// Options for tests: quick to fail.
pub fn test_options() -> PgOptions {
    PgOptions {
        max_connections: 8,
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(10),
        migration_attempts: 3,
        migration_retry_delay: Duration::from_millis(200),
    }
}

/// A database of its own, dropped (with `WITH (FORCE)`, ending its connections) on drop.
pub struct TestDb {
    pub url: PgUrl,
    server: PgUrl,
    name: String,
}

impl TestDb {
    /// `None` (skipped loudly) if the server is unreachable outside CI; a panic in CI.
    pub async fn create() -> Option<Self> {
        let server = server_url();
        let what = format!("PostgreSQL at {server}");
        let mut conn = monza_domain::testing::require(
            &what,
            tokio::time::timeout(
                Duration::from_secs(5),
                AsyncPgConnection::establish(server.expose()),
            )
            .await
            .map_err(|_| "no answer within 5 s".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string())),
        )?;
        let name = format!("monza_test_{}", uuid::Uuid::new_v4().simple());
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        Some(Self {
            url: server.with_database(&name),
            server,
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.expose().to_owned();
        let name = self.name.clone();
        // Best effort, on a thread of its own: `Drop` cannot await.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = AsyncPgConnection::establish(&server).await.ok()?;
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}
