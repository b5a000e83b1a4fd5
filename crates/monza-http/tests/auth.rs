//! Authentication through the real router: every protected route refuses a request without
//! a valid bearer token with a 401 JSON error and `WWW-Authenticate`, before reading its
//! body; a tenant token reaches the service as that tenant. The token store is a mock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns: a panic is the failure report

mod support;

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::test::TestRequest;
use monza_domain::{
    ApiToken, Error, MockClock, MockTokenRepository, StoredToken, TenantId, TokenHash, TokenId,
    TokenService,
};
use monza_http::{Auth, is_protected, registered_routes};
use support::{Answer, Mocks, NOW, TestApp};

const ALICE: &str =
    "monza_00000000000000a1_1111111111111111111111111111111111111111111111111111111111111111";
const ADMIN: &str =
    "monza_00000000000000a2_2222222222222222222222222222222222222222222222222222222222222222";
const REVOKED: &str =
    "monza_00000000000000a3_3333333333333333333333333333333333333333333333333333333333333333";

fn stored(token: &str, tenant: &str, admin: bool, revoked: bool) -> StoredToken {
    StoredToken {
        token: ApiToken {
            id: TokenId::parse(&token[6..22]).unwrap(),
            tenant: TenantId::new(tenant).unwrap(),
            admin,
            created_at: NOW,
            revoked_at: revoked.then_some(NOW),
        },
        hash: TokenHash::of(token),
    }
}

/// Authentication over a token store.
fn auth(repo: MockTokenRepository) -> Auth {
    let mut clock = MockClock::new();
    clock.expect_now().returning(|| NOW);
    Auth::Tokens(TokenService::new(Arc::new(repo), Arc::new(clock)))
}

/// Authentication that knows ALICE, ADMIN and REVOKED.
fn tokens() -> Auth {
    let mut repo = MockTokenRepository::new();
    let known = [
        stored(ALICE, "alice", false, false),
        stored(ADMIN, "default", true, false),
        stored(REVOKED, "alice", false, true),
    ];
    repo.expect_find_token().returning(move |id| {
        known
            .iter()
            .find(|t| &t.token.id == id)
            .cloned()
            .ok_or_else(|| Error::not_found("no such token"))
    });
    auth(repo)
}

/// `GET /api/sandboxes` with `token` as the bearer.
async fn list_with(app: &TestApp, token: &str) -> Answer {
    let req = TestRequest::get()
        .uri("/api/sandboxes")
        .insert_header(("Authorization", format!("Bearer {token}")));
    app.call(req).await
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "6f1c1f8e-8b8a-4a36-9d5e-0e4c2b9b7a01")
}

#[actix_web::test]
async fn every_protected_route_refuses_missing_malformed_unknown_and_revoked_tokens() {
    let app = app!(Mocks::permissive().service(), auth = tokens());
    let routes: Vec<_> = registered_routes()
        .into_iter()
        .filter(|(_, path)| is_protected(path))
        .collect();
    assert!(routes.len() >= 9, "{routes:?}");
    let unknown = ALICE.replace("a1_", "ff_");
    let forged = format!("{}0", &ALICE[..ALICE.len() - 1]);
    let cases: [(Option<&str>, &str); 6] = [
        (None, "Authorization"),
        (Some("Basic dXNlcjpwYXNz"), "malformed"),
        (Some("Bearer not a token"), "malformed"),
        (Some(&format!("Bearer {unknown}")), "not valid"),
        (Some(&format!("Bearer {forged}")), "not valid"),
        (Some(&format!("Bearer {REVOKED}")), "revoked"),
    ];
    for (method, path) in &routes {
        for (header, says) in &cases {
            let mut req = TestRequest::default()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(&concrete(path));
            if let Some(value) = header {
                req = req.insert_header(("Authorization", *value));
            }
            let answer = app.call(req).await;
            let message = answer.error(401, "unauthorized");
            assert!(
                message.contains(says),
                "{method} {path} with {header:?}: {message}"
            );
            assert_eq!(
                answer.header("www-authenticate"),
                "Bearer realm=\"monza\"",
                "{method} {path}"
            );
        }
    }
}

#[actix_web::test]
async fn health_hello_ready_and_the_openapi_document_need_no_token() {
    let app = app!(Mocks::permissive().service(), auth = tokens());
    for path in ["/health", "/hello", "/ready", "/api/openapi.json"] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, 200, "{path}");
    }
}

#[actix_web::test]
async fn an_unauthenticated_oversized_body_is_401_not_413() {
    let app = app!(Mocks::permissive().service(), auth = tokens());
    let answer = app
        .post_raw("/api/sandboxes", "application/json", vec![b' '; 200 * 1024])
        .await;
    answer.error(401, "unauthorized");
}

#[actix_web::test]
async fn a_tenant_token_lists_only_its_tenant_and_an_admin_token_every_tenant() {
    let mut mocks = Mocks::new();
    mocks
        .repo
        .expect_list()
        .withf(|filter| filter.tenant == Some(TenantId::new("alice").unwrap()))
        .times(1)
        .returning(|_| Ok(Vec::new()));
    mocks
        .repo
        .expect_list()
        .withf(|filter| filter.tenant.is_none())
        .times(1)
        .returning(|_| Ok(Vec::new()));
    let app = app!(mocks.service(), auth = tokens());
    for token in [ALICE, ADMIN] {
        let answer = list_with(&app, token).await;
        assert_eq!(answer.status, 200);
    }
}

#[actix_web::test]
async fn an_unreachable_token_store_is_503_not_401() {
    let mut repo = MockTokenRepository::new();
    repo.expect_find_token()
        .returning(|_| Err(Error::unavailable("database", "connection refused")));
    let app = app!(Mocks::permissive().service(), auth = auth(repo));
    let answer = list_with(&app, ALICE).await;
    answer.error(503, "unavailable");
}
