//! The repository benchmark on SQLite (a WAL file in a temporary directory).
//!
//! `cargo bench -p monza-store --bench sqlite` (add `-- --quick`, or set
//! `MONZA_BENCH_QUICK=1`, for a tiny run). `MONZA_SQLITE_SYNCHRONOUS=normal` measures
//! `PRAGMA synchronous = NORMAL` instead of the default `FULL`.

use std::sync::Arc;

use monza_domain::testing::repository_bench;
use monza_store::sqlite::{SqliteOptions, SqliteSandboxRepository, Synchronous};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let synchronous = match std::env::var("MONZA_SQLITE_SYNCHRONOUS").as_deref() {
        Ok("normal" | "NORMAL") => Synchronous::Normal,
        _ => Synchronous::Full,
    };
    let dir = tempfile::tempdir()?;
    let options = SqliteOptions {
        synchronous,
        ..SqliteOptions::default()
    };
    let repo = SqliteSandboxRepository::open(dir.path().join("bench.db"), options.clone()).await?;
    let name = format!(
        "SQLite (WAL, synchronous={synchronous:?}, {} readers)",
        options.readers
    );
    Ok(repository_bench::run_and_print(&name, Arc::new(repo)).await?)
}
