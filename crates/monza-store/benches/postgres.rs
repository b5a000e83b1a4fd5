//! The repository benchmark on PostgreSQL (a fresh database on `TEST_DATABASE_URL`,
//! default `postgres://postgres:postgres@127.0.0.1:5432/postgres`, dropped afterwards).
//!
//! `cargo bench -p monza-store --bench postgres` (add `-- --quick`, or set
//! `MONZA_BENCH_QUICK=1`, for a tiny run).

#[path = "../tests/pg/mod.rs"]
mod pg;

use std::sync::Arc;

use monza_domain::testing::repository_bench;
use monza_store::postgres::{PgOptions, PgSandboxRepository};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(db) = pg::TestDb::create().await else {
        return Err("PostgreSQL is unavailable".into());
    };
    let options = PgOptions::default();
    let repo = PgSandboxRepository::connect_to(db.url.clone(), options.clone()).await?;
    let name = format!(
        "PostgreSQL ({} pooled connections)",
        options.max_connections
    );
    Ok(repository_bench::run_and_print(&name, Arc::new(repo)).await?)
}
