//! The token store contract (monza-domain's `testing::token_contract`), run against
//! PostgreSQL: a fresh database per test.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

mod pg;

use std::sync::Arc;

use monza_domain::testing::token_contract::Tokens;
use monza_store::postgres::PgSandboxRepository;
use pg::{TestDb, test_options};

async fn fresh() -> Option<(Tokens, TestDb)> {
    let db = TestDb::create().await?;
    let repo = PgSandboxRepository::connect_to(db.url.clone(), test_options())
        .await
        .unwrap();
    Some((Arc::new(repo), db))
}

monza_domain::token_contract_tests!(fresh = fresh);
