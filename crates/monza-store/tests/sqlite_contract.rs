//! The repository contract suite (monza-domain's `testing::repository_contract`), run
//! against a SQLite file per test and against an in-memory database.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::sync::Arc;

use monza_domain::testing::repository_contract::Repo;
use monza_store::sqlite::{SqliteOptions, SqliteSandboxRepository};
use tempfile::TempDir;

async fn open(dir: &TempDir) -> Repo {
    let repo = SqliteSandboxRepository::open(dir.path().join("monza.db"), SqliteOptions::default())
        .await
        .unwrap();
    Arc::new(repo)
}

async fn fresh_file() -> Option<(Repo, TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    Some((open(&dir).await, dir))
}

/// Two repositories on one file, as two monza processes would have.
async fn fresh_file_pair() -> Option<(Repo, Repo, TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&dir).await;
    let second = open(&dir).await;
    Some((first, second, dir))
}

async fn fresh_memory() -> Option<(Repo, ())> {
    let repo = SqliteSandboxRepository::in_memory().await.unwrap();
    Some((Arc::new(repo), ()))
}

/// A private in-memory database cannot be shared: both "instances" are one repository.
async fn fresh_memory_pair() -> Option<(Repo, Repo, ())> {
    let repo: Repo = Arc::new(SqliteSandboxRepository::in_memory().await.unwrap());
    Some((repo.clone(), repo, ()))
}

mod file {
    monza_domain::repository_contract_tests!(
        fresh = super::fresh_file,
        fresh_pair = super::fresh_file_pair,
    );
}

mod memory {
    monza_domain::repository_contract_tests!(
        fresh = super::fresh_memory,
        fresh_pair = super::fresh_memory_pair,
    );
}
