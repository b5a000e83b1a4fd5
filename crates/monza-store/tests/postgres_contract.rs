//! The repository contract suite (monza-domain's `testing::repository_contract`), run
//! against PostgreSQL: a fresh database per test.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

mod pg;

use std::sync::Arc;

use monza_domain::testing::repository_contract::Repo;
use monza_store::postgres::PgSandboxRepository;
use pg::{TestDb, test_options};

async fn repository(db: &TestDb) -> Repo {
    Arc::new(
        PgSandboxRepository::connect_to(db.url.clone(), test_options())
            .await
            .unwrap(),
    )
}

async fn fresh() -> Option<(Repo, TestDb)> {
    let db = TestDb::create().await?;
    Some((repository(&db).await, db))
}

/// Two repositories (two pools) on one database, as two monza processes would have.
async fn fresh_pair() -> Option<(Repo, Repo, TestDb)> {
    let db = TestDb::create().await?;
    let first = repository(&db).await;
    let second = repository(&db).await;
    Some((first, second, db))
}

monza_domain::repository_contract_tests!(fresh = fresh, fresh_pair = fresh_pair);
