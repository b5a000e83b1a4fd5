//! The [`TokenRepository`] contract: one suite every store adapter runs against itself, like
//! [`crate::testing::repository_contract`]. Adapter crates run it with
//! [`token_contract_tests!`](crate::token_contract_tests).
//!
//! Beyond the port's doc comments it pins down: timestamps are kept to the microsecond (as
//! for sandboxes), and the hash round-trips exactly.

use std::sync::Arc;

use time::Duration;

use crate::auth::{ApiToken, StoredToken, TokenHash, TokenId};
use crate::error::Error;
use crate::ports::TokenRepository;
use crate::sandbox::TenantId;
use crate::testing::repository_contract::{base_time, micros};

/// A token store under test.
pub type Tokens = Arc<dyn TokenRepository>;

/// Runs every token contract check as its own `#[tokio::test]`. `fresh` is an async function
/// returning `Option<(Tokens, Guard)>`: a fresh, empty store and a guard dropped when the
/// check ends, or `None` to skip (see [`crate::testing::require`]).
#[macro_export]
macro_rules! token_contract_tests {
    (fresh = $fresh:path $(,)?) => {
        $crate::contract_checks!(token_contract, $fresh, (tokens);
            insert_then_find_returns_the_same_token,
            find_of_an_unknown_id_is_not_found,
            insert_of_a_duplicate_id_is_a_conflict,
            list_is_oldest_first_without_secrets,
            revoke_sets_revoked_at_once_and_unknown_is_not_found,
            count_includes_revoked_tokens,
            insert_first_token_writes_only_into_an_empty_store,
            concurrent_first_inserts_write_exactly_one,
        );
    };
}

/// A token with id `id` (16 hex digits) for `tenant`, created `minutes` after the base time.
pub fn sample_token(id: &str, tenant: &str, admin: bool, minutes: i64) -> StoredToken {
    StoredToken {
        token: ApiToken {
            id: TokenId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            tenant: TenantId::new(tenant).unwrap_or_else(|e| panic!("{e}")),
            admin,
            // Sub-microsecond digits, to check they are truncated like everywhere else.
            created_at: base_time() + Duration::minutes(minutes) + Duration::nanoseconds(1_234_567),
            revoked_at: None,
        },
        hash: TokenHash::of(&format!("secret of {id}")),
    }
}

fn stored_form(mut token: StoredToken) -> StoredToken {
    token.token.created_at = micros(token.token.created_at);
    token.token.revoked_at = token.token.revoked_at.map(micros);
    token
}

fn id(text: &str) -> TokenId {
    TokenId::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

async fn ok<T>(what: &str, result: crate::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

pub async fn insert_then_find_returns_the_same_token(tokens: Tokens) {
    let token = sample_token("00000000000000a1", "alice", false, 0);
    let admin = sample_token("00000000000000a2", "ops", true, 1);
    ok("insert", tokens.insert_token(&token).await).await;
    ok("insert admin", tokens.insert_token(&admin).await).await;
    let found = ok("find", tokens.find_token(&token.token.id).await).await;
    assert_eq!(found, stored_form(token));
    let found = ok("find admin", tokens.find_token(&admin.token.id).await).await;
    assert_eq!(found, stored_form(admin));
}

pub async fn find_of_an_unknown_id_is_not_found(tokens: Tokens) {
    let result = tokens.find_token(&id("ffffffffffffffff")).await;
    assert!(matches!(result, Err(Error::NotFound(_))), "{result:?}");
}

pub async fn insert_of_a_duplicate_id_is_a_conflict(tokens: Tokens) {
    let token = sample_token("00000000000000b1", "alice", false, 0);
    ok("insert", tokens.insert_token(&token).await).await;
    let again = sample_token("00000000000000b1", "bob", true, 5);
    let result = tokens.insert_token(&again).await;
    assert!(matches!(result, Err(Error::Conflict(_))), "{result:?}");
    let found = ok("find", tokens.find_token(&token.token.id).await).await;
    assert_eq!(found.token.tenant.as_str(), "alice", "the first one stays");
}

pub async fn list_is_oldest_first_without_secrets(tokens: Tokens) {
    let newest = sample_token("00000000000000c3", "carol", false, 30);
    let oldest = sample_token("00000000000000c1", "alice", true, 10);
    let middle = sample_token("00000000000000c2", "bob", false, 20);
    for token in [&newest, &oldest, &middle] {
        ok("insert", tokens.insert_token(token).await).await;
    }
    let listed = ok("list", tokens.list_tokens().await).await;
    let expected: Vec<ApiToken> = [oldest, middle, newest]
        .into_iter()
        .map(|t| stored_form(t).token)
        .collect();
    assert_eq!(listed, expected);
}

pub async fn revoke_sets_revoked_at_once_and_unknown_is_not_found(tokens: Tokens) {
    let token = sample_token("00000000000000d1", "alice", false, 0);
    let other = sample_token("00000000000000d2", "alice", false, 1);
    ok("insert", tokens.insert_token(&token).await).await;
    ok("insert other", tokens.insert_token(&other).await).await;
    let first = base_time() + Duration::hours(1);
    let revoked = ok("revoke", tokens.revoke_token(&token.token.id, first).await).await;
    assert_eq!(revoked.revoked_at, Some(micros(first)));
    let again = ok(
        "revoke again",
        tokens
            .revoke_token(&token.token.id, first + Duration::hours(1))
            .await,
    )
    .await;
    assert_eq!(
        again.revoked_at,
        Some(micros(first)),
        "the first time stays"
    );
    let found = ok("find", tokens.find_token(&token.token.id).await).await;
    assert_eq!(found.token.revoked_at, Some(micros(first)));
    assert_eq!(found.hash, token.hash);
    let untouched = ok("find other", tokens.find_token(&other.token.id).await).await;
    assert_eq!(untouched.token.revoked_at, None);
    let result = tokens.revoke_token(&id("eeeeeeeeeeeeeeee"), first).await;
    assert!(matches!(result, Err(Error::NotFound(_))), "{result:?}");
}

pub async fn count_includes_revoked_tokens(tokens: Tokens) {
    assert_eq!(ok("count", tokens.count_tokens().await).await, 0);
    let a = sample_token("00000000000000e1", "alice", false, 0);
    let b = sample_token("00000000000000e2", "bob", false, 1);
    ok("insert", tokens.insert_token(&a).await).await;
    ok("insert", tokens.insert_token(&b).await).await;
    ok(
        "revoke",
        tokens.revoke_token(&a.token.id, base_time()).await,
    )
    .await;
    assert_eq!(ok("count", tokens.count_tokens().await).await, 2);
}

pub async fn insert_first_token_writes_only_into_an_empty_store(tokens: Tokens) {
    let first = sample_token("00000000000000f1", "default", true, 0);
    let second = sample_token("00000000000000f2", "default", true, 1);
    assert!(ok("first", tokens.insert_first_token(&first).await).await);
    assert!(!ok("second", tokens.insert_first_token(&second).await).await);
    ok(
        "revoke",
        tokens.revoke_token(&first.token.id, base_time()).await,
    )
    .await;
    assert!(
        !ok("after revoke", tokens.insert_first_token(&second).await).await,
        "a revoked token still counts"
    );
    let listed = ok("list", tokens.list_tokens().await).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, first.token.id);
}

pub async fn concurrent_first_inserts_write_exactly_one(tokens: Tokens) {
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let tokens = tokens.clone();
            let token = sample_token(&format!("{i:016x}"), "default", true, i);
            async move { tokens.insert_first_token(&token).await }
        })
        .collect();
    let results = futures::future::join_all(attempts).await;
    let written = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("insert_first_token: {e:?}")))
        .filter(|&w| w)
        .count();
    assert_eq!(written, 1);
    assert_eq!(ok("count", tokens.count_tokens().await).await, 1);
}
