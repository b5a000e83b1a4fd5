#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use async_trait::async_trait;

use super::*;
use crate::ports::MockClock;

/// A token store in memory, with the port's semantics.
#[derive(Default)]
struct MemTokens {
    rows: Mutex<Vec<StoredToken>>,
    down: bool,
}

#[async_trait]
impl TokenRepository for MemTokens {
    async fn insert_token(&self, token: &StoredToken) -> Result<()> {
        let mut rows = self.rows.lock().unwrap();
        if rows.iter().any(|r| r.token.id == token.token.id) {
            return Err(Error::conflict("duplicate"));
        }
        rows.push(token.clone());
        Ok(())
    }
    async fn insert_first_token(&self, token: &StoredToken) -> Result<bool> {
        let mut rows = self.rows.lock().unwrap();
        if !rows.is_empty() {
            return Ok(false);
        }
        rows.push(token.clone());
        Ok(true)
    }
    async fn find_token(&self, id: &TokenId) -> Result<StoredToken> {
        if self.down {
            return Err(Error::unavailable("database", "down"));
        }
        let rows = self.rows.lock().unwrap();
        rows.iter()
            .find(|r| &r.token.id == id)
            .cloned()
            .ok_or_else(|| Error::not_found("no"))
    }
    async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        Ok(self
            .rows
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.token.clone())
            .collect())
    }
    async fn revoke_token(&self, id: &TokenId, at: OffsetDateTime) -> Result<ApiToken> {
        let mut rows = self.rows.lock().unwrap();
        let row = rows
            .iter_mut()
            .find(|r| &r.token.id == id)
            .ok_or_else(|| Error::not_found("no"))?;
        row.token.revoked_at.get_or_insert(at);
        Ok(row.token.clone())
    }
    async fn count_tokens(&self) -> Result<u64> {
        Ok(self.rows.lock().unwrap().len() as u64)
    }
}

fn service_over(repo: Arc<MemTokens>) -> TokenService {
    let mut clock = MockClock::new();
    clock
        .expect_now()
        .returning(|| OffsetDateTime::from_unix_timestamp(1_704_067_200).unwrap());
    TokenService::new(repo, Arc::new(clock))
}

/// A service whose store fails every lookup as unavailable.
fn service_over_a_store_that_is_down() -> TokenService {
    service_over(Arc::new(MemTokens {
        down: true,
        ..MemTokens::default()
    }))
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

#[tokio::test]
async fn an_issued_token_has_monzas_shape_and_is_never_stored() {
    let repo = Arc::new(MemTokens::default());
    let tokens = service_over(repo.clone());
    let a = tokens.create(tenant("alice"), false).await.unwrap();
    let b = tokens.create(tenant("alice"), false).await.unwrap();
    let text = a.reveal();
    assert_eq!(text.len(), 6 + 16 + 1 + 64, "{text}");
    assert!(
        text.starts_with(&format!("monza_{}_", a.token.id)),
        "{text}"
    );
    assert_ne!(a.reveal(), b.reveal());
    assert_ne!(a.token.id, b.token.id);
    let stored = repo.rows.lock().unwrap().clone();
    let dump = format!("{stored:?}");
    let secret_part = &text[23..];
    assert!(
        !dump.contains(secret_part),
        "the store holds the secret: {dump}"
    );
    assert_eq!(stored[0].hash, TokenHash::of(text));
    assert!(
        !format!("{a:?}").contains(secret_part),
        "Debug shows the secret"
    );
}

#[tokio::test]
async fn a_tenant_token_is_that_tenant_and_an_admin_token_is_admin() {
    let tokens = service_over(Arc::new(MemTokens::default()));
    let user = tokens.create(tenant("alice"), false).await.unwrap();
    let admin = tokens.create(tenant("ops"), true).await.unwrap();
    assert_eq!(
        tokens.authenticate(user.reveal()).await.unwrap(),
        Access::Tenant(tenant("alice"))
    );
    assert_eq!(
        tokens.authenticate(admin.reveal()).await.unwrap(),
        Access::Admin
    );
}

#[tokio::test]
async fn a_wrong_secret_and_an_unknown_id_are_refused_alike() {
    let tokens = service_over(Arc::new(MemTokens::default()));
    let user = tokens.create(tenant("alice"), false).await.unwrap();
    let text = user.reveal();
    // Same id, last secret digit changed.
    let last = if text.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &text[..text.len() - 1]);
    let unknown = format!("monza_{}_{}", "0".repeat(16), "a".repeat(64));
    for bearer in [
        forged.as_str(),
        unknown.as_str(),
        "some-other-long-enough-token-text",
    ] {
        let err = tokens.authenticate(bearer).await.unwrap_err();
        assert_eq!(err, Error::unauthorized(INVALID), "{bearer}");
    }
}

#[tokio::test]
async fn malformed_bearers_are_unauthorized_without_a_lookup() {
    let tokens = service_over_a_store_that_is_down();
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    for bearer in [
        "",
        "two words",
        "tab\there",
        "ünïcode",
        "semi;colon",
        long.as_str(),
    ] {
        let err = tokens.authenticate(bearer).await.unwrap_err();
        assert!(
            matches!(&err, Error::Unauthorized(m) if m.contains("malformed")),
            "{bearer:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_revoking_keeps_the_first_time() {
    let repo = Arc::new(MemTokens::default());
    let tokens = service_over(repo.clone());
    let user = tokens.create(tenant("alice"), false).await.unwrap();
    let revoked = tokens.revoke(&user.token.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    let err = tokens.authenticate(user.reveal()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Unauthorized(m) if m.contains("revoked")),
        "{err:?}"
    );
    let unknown = TokenId::parse("0123456789abcdef").unwrap();
    assert!(matches!(
        tokens.revoke(&unknown).await,
        Err(Error::NotFound(m)) if m.contains("0123456789abcdef")
    ));
}

#[tokio::test]
async fn an_unreachable_store_is_not_the_callers_fault() {
    let tokens = service_over_a_store_that_is_down();
    let err = tokens
        .authenticate(&format!("monza_{}_{}", "1".repeat(16), "2".repeat(64)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn bootstrap_from_the_setting_makes_an_admin_once() {
    let repo = Arc::new(MemTokens::default());
    let tokens = service_over(repo.clone());
    let given = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let Bootstrap::FromSetting(token) = tokens.bootstrap(Some(given)).await.unwrap() else {
        panic!("expected the setting to become the first token");
    };
    assert!(token.admin);
    assert_eq!(token.id, token_id_of(given));
    assert_eq!(tokens.authenticate(given).await.unwrap(), Access::Admin);
    assert_eq!(
        tokens.bootstrap(Some(given)).await.unwrap(),
        Bootstrap::AlreadyConfigured
    );
    assert_eq!(
        tokens.bootstrap(None).await.unwrap(),
        Bootstrap::AlreadyConfigured
    );
    assert_eq!(repo.count_tokens().await.unwrap(), 1);
}

#[tokio::test]
async fn bootstrap_generates_a_working_admin_token_when_none_is_given() {
    let repo = Arc::new(MemTokens::default());
    let tokens = service_over(repo.clone());
    let Bootstrap::Generated(issued) = tokens.bootstrap(None).await.unwrap() else {
        panic!("expected a generated token");
    };
    assert!(issued.token.admin);
    assert_eq!(
        tokens.authenticate(issued.reveal()).await.unwrap(),
        Access::Admin
    );
    // Revoked tokens still count: no second bootstrap after revoking the first.
    tokens.revoke(&issued.token.id).await.unwrap();
    assert_eq!(
        tokens.bootstrap(None).await.unwrap(),
        Bootstrap::AlreadyConfigured
    );
}

#[tokio::test]
async fn a_weak_bootstrap_setting_is_refused_and_nothing_stored() {
    let repo = Arc::new(MemTokens::default());
    let tokens = service_over(repo.clone());
    let long = "x".repeat(MAX_TOKEN_LEN + 1);
    for bad in [
        "short",
        "contains spaces but is long enough 1234567",
        long.as_str(),
    ] {
        let err = tokens.bootstrap(Some(bad)).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("MONZA_BOOTSTRAP_TOKEN")),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(repo.count_tokens().await.unwrap(), 0);
}

#[test]
fn hashes_compare_in_constant_time_and_round_trip_as_hex() {
    let a = TokenHash::of("a");
    let b = TokenHash::of("b");
    assert!(a.constant_time_eq(&TokenHash::of("a")));
    assert!(!a.constant_time_eq(&b));
    assert_eq!(TokenHash::from_hex(&a.to_hex()).unwrap(), a);
    assert_eq!(
        a.to_hex(),
        "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    );
    assert!(TokenHash::from_hex("zz").is_err());
}

#[test]
fn token_ids_are_sixteen_lowercase_hex_digits() {
    assert!(TokenId::parse("0123456789abcdef").is_ok());
    for bad in [
        "",
        "0123456789ABCDEF",
        "0123456789abcde",
        "0123456789abcdefg",
        "../etc",
    ] {
        assert!(TokenId::parse(bad).is_err(), "{bad:?}");
    }
}
