//! The token store contract (monza-domain's `testing::token_contract`), run against a SQLite
//! file per test and against an in-memory database.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::sync::Arc;

use monza_domain::testing::token_contract::Tokens;
use monza_store::sqlite::{SqliteOptions, SqliteSandboxRepository};
use tempfile::TempDir;

async fn fresh_file() -> Option<(Tokens, TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let repo = SqliteSandboxRepository::open(dir.path().join("monza.db"), SqliteOptions::default())
        .await
        .unwrap();
    Some((Arc::new(repo), dir))
}

async fn fresh_memory() -> Option<(Tokens, ())> {
    let repo = SqliteSandboxRepository::in_memory().await.unwrap();
    Some((Arc::new(repo), ()))
}

mod file {
    monza_domain::token_contract_tests!(fresh = super::fresh_file);
}

mod memory {
    monza_domain::token_contract_tests!(fresh = super::fresh_memory);
}
