#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End to end: the real `Application` on a loopback port, against the real Docker engine,
//! once with SQLite and once with PostgreSQL, driven over HTTP like a client would.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use monza_app::settings::{Secret, ServeArgs};
use monza_app::{Application, StopHandle};
use monza_domain::ContainerRuntime;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug)]
enum Store {
    Sqlite,
    Postgres,
}

const PG_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

/// The admin token every test server starts with (`MONZA_BOOTSTRAP_TOKEN`), so these tests
/// run with authentication on, as a real deployment does.
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef0123456789abcdef";

/// A client that sends the admin token with every request.
fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_TOKEN}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

fn templates_dir() -> PathBuf {
    monza_devcontainer::test_templates_dir().to_path_buf()
}

/// A database of its own on the test server, dropped at the end.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    fn create() -> Option<Self> {
        let admin_url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| PG_URL.into());
        let name = format!("monza_e2e_{}", uuid::Uuid::new_v4().simple());
        let created = Command::new("psql")
            .args([&admin_url, "-qc", &format!("CREATE DATABASE {name}")])
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).into_owned())
                }
            });
        monza_domain::testing::require("PostgreSQL (via psql)", created)?;
        Some(Self { admin_url, name })
    }

    fn url(&self) -> String {
        match self.admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{}", self.name),
            None => self.admin_url.clone(),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

struct TestApp {
    base: String,
    client: reqwest::Client,
    stop: StopHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    args: ServeArgs,
    runtime: std::sync::Arc<dyn ContainerRuntime>,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

fn base_args(store: Store, dir: &tempfile::TempDir) -> Option<(ServeArgs, Option<PgDatabase>)> {
    let mut args = ServeArgs::defaults();
    args.addr = "127.0.0.1:0".parse().ok()?;
    args.devcontainers = templates_dir();
    args.default_template = "busybox".into();
    args.data_dir = dir.path().to_path_buf();
    args.reaper_interval = Duration::from_secs(1);
    args.shutdown_timeout = Duration::from_secs(5);
    args.bootstrap_token = Some(Secret::from(ADMIN_TOKEN.to_owned()));
    let pg = match store {
        Store::Sqlite => {
            args.database_url = None;
            None
        }
        Store::Postgres => {
            let pg = PgDatabase::create()?;
            args.database_url = Some(Secret::from(pg.url()));
            Some(pg)
        }
    };
    Some((args, pg))
}

async fn start(
    args: ServeArgs,
) -> Option<(
    String,
    StopHandle,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    std::sync::Arc<dyn ContainerRuntime>,
)> {
    let app = monza_domain::testing::require(
        "Docker engine and store for the end-to-end tests",
        Application::build(args).await,
    )?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = app.stop_handle();
    let runtime = app.service().runtime().clone();
    let task = tokio::spawn(app.run_until_stopped());
    Some((base, stop, task, runtime))
}

impl TestApp {
    async fn spawn(store: Store, tweak: impl FnOnce(&mut ServeArgs)) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let (mut args, pg) = base_args(store, &dir)?;
        tweak(&mut args);
        let (base, stop, task, runtime) = start(args.clone()).await?;
        Some(Self {
            base,
            client: admin_client(),
            stop,
            task,
            args,
            runtime,
            _dir: dir,
            _pg: pg,
        })
    }

    /// Stops this server and starts a new one on the same store.
    async fn restart(self) -> Self {
        self.stop.stop().await;
        self.task.await.unwrap().unwrap();
        let (base, stop, task, runtime) = start(self.args.clone()).await.unwrap();
        Self {
            base,
            stop,
            task,
            runtime,
            ..self
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn create(&self, body: Value) -> Value {
        let response = self
            .client
            .post(self.url("/api/sandboxes"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn exec(&self, id: &str, command: &str) -> Value {
        let response = self
            .client
            .post(self.url(&format!("/api/sandboxes/{id}/execute")))
            .json(&json!({ "command": command }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn status_of(&self, id: &str) -> String {
        let (_, body) = self.get_json(&format!("/api/sandboxes/{id}")).await;
        body["status"].as_str().unwrap_or_default().to_owned()
    }

    async fn container_exists(&self, container_id: &str) -> bool {
        self.runtime
            .list_managed()
            .await
            .unwrap()
            .iter()
            .any(|c| c.id == container_id)
    }

    async fn shutdown(self) {
        self.stop.stop().await;
        let _ = self.task.await;
    }
}

async fn every_route(store: Store) {
    let Some(app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let (status, body) = app.get_json("/health").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = app.get_json("/hello").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"message": "hello, world"}))
    );

    // Create with defaults: template busybox (the test server's default), name from it.
    let response = app
        .client
        .post(app.url("/api/sandboxes"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let sandbox: Value = response.json().await.unwrap();
    let id = sandbox["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/sandboxes/{id}"));
    assert_eq!(sandbox["status"], "running");
    assert_eq!(sandbox["name"], "sandbox-busybox");
    assert_eq!(sandbox["image"], "monza-test/busybox:latest");
    assert_eq!(sandbox["workspace_mount"], "/workspace");
    assert!(sandbox["deleted_at"].is_null());
    assert!(sandbox["devcontainer_config"].is_object());
    for field in ["last_activity", "created_at", "expires_at"] {
        let text = sandbox[field].as_str().unwrap();
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{field} {text:?}: {e}"));
        assert!(text.ends_with('Z'), "{field} {text:?} is not UTC");
    }
    let container_id = sandbox["container_id"].as_str().unwrap().to_owned();
    assert!(app.container_exists(&container_id).await);

    let (status, got) = app.get_json(&format!("/api/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], sandbox["id"]);
    let (status, list) = app.get_json("/api/sandboxes").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == sandbox["id"])
    );

    // Execute: output in order, exit code, stderr, truncation.
    let out = app
        .exec(
            &id,
            "echo out; sleep 0.3; echo err >&2; sleep 0.3; echo $((6*7)); exit 3",
        )
        .await;
    assert_eq!(out["exitCode"], 3);
    assert_eq!(out["output"], "out\nerr\n42\n");
    assert_eq!(out["stderr"], "err\n");
    assert_eq!(out["truncated"], false);
    let response = app
        .client
        .post(app.url(&format!("/api/sandboxes/{id}/execute")))
        .json(&json!({ "command": "head -c 100000 /dev/zero | tr '\\0' a", "max_output_bytes": 1000 }))
        .send()
        .await
        .unwrap();
    let out: Value = response.json().await.unwrap();
    assert_eq!(out["truncated"], true);
    assert_eq!(out["output"].as_str().unwrap().len(), 1000);
    let out = app.exec(&id, "pwd").await;
    assert_eq!(out["output"], "/workspace\n");

    // Heartbeat moves expires_at forward.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app
        .client
        .post(app.url(&format!("/api/sandboxes/{id}/heartbeat")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (_, after) = app.get_json(&format!("/api/sandboxes/{id}")).await;
    assert!(after["expires_at"].as_str() > sandbox["expires_at"].as_str());

    // Upload then download a multi-megabyte binary file.
    let content: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let form = reqwest::multipart::Form::new()
        .text("path", "/workspace/data")
        .part(
            "file",
            reqwest::multipart::Part::bytes(content.clone()).file_name("blob.bin"),
        );
    let response = app
        .client
        .post(app.url(&format!("/api/sandboxes/{id}/files/upload")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "ok", "path": "/workspace/data/blob.bin"})
    );
    let response = app
        .client
        .get(app.url(&format!("/api/sandboxes/{id}/files/download")))
        .query(&[("path", "/workspace/data/blob.bin")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"].to_str().unwrap(),
        content.len().to_string()
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("blob.bin")
    );
    let downloaded = response.bytes().await.unwrap();
    assert!(
        downloaded.as_ref() == content.as_slice(),
        "downloaded bytes differ"
    );
    let (status, body) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/download?path=/workspace/nope"
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = app
        .get_json(&format!("/api/sandboxes/{id}/files/download"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Client errors.
    let (status, body) = app.get_json("/api/sandboxes/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let unknown = uuid::Uuid::new_v4();
    let (status, body) = app.get_json(&format!("/api/sandboxes/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let response = app
        .client
        .post(app.url("/api/sandboxes"))
        .json(&json!({"template": "no-such-template"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_client_error(), "{status} {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("busybox"),
        "the message lists the available templates: {body}"
    );
    let response = app
        .client
        .post(app.url("/api/sandboxes"))
        .json(&json!({"template": "../etc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Delete: container gone, idempotent, then activity is a conflict.
    let response = app
        .client
        .delete(app.url(&format!("/api/sandboxes/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(!app.container_exists(&container_id).await);
    let response = app
        .client
        .delete(app.url(&format!("/api/sandboxes/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // Gone from its own address (and its events), still listed with ?status=deleted.
    let (status, body) = app.get_json(&format!("/api/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = app.get_json(&format!("/api/sandboxes/{id}/events")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, deleted) = app.get_json("/api/sandboxes?status=deleted").await;
    let deleted = deleted
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == sandbox["id"])
        .unwrap()
        .clone();
    assert_eq!(deleted["status"], "deleted");
    assert!(deleted["deleted_at"].is_string());
    let response = app
        .client
        .post(app.url(&format!("/api/sandboxes/{id}/heartbeat")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let (_, list) = app.get_json("/api/sandboxes").await;
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == sandbox["id"])
    );
    let (_, all) = app.get_json("/api/sandboxes?status=all").await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == sandbox["id"])
    );
    app.shutdown().await;
}

#[tokio::test]
async fn every_route_on_sqlite() {
    every_route(Store::Sqlite).await;
}

#[tokio::test]
async fn every_route_on_postgres() {
    every_route(Store::Postgres).await;
}

async fn forwarded_ports_accept_connections(store: Store) {
    let Some(app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let sandbox = app.create(json!({"template": "busybox-ports"})).await;
    let id = sandbox["id"].as_str().unwrap();
    let mapping = sandbox["port_mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["container_port"] == 8080)
        .unwrap_or_else(|| panic!("no mapping for 8080: {sandbox}"))
        .clone();
    let host_port = mapping["host_port"].as_u64().unwrap() as u16;
    assert_ne!(host_port, 0);
    // The template's postStartCommand started busybox httpd on 8080, serving "hello".
    let _ = id;
    let mut reply = String::new();
    for _ in 0..50 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", host_port)).await {
            let _ = stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf)).await;
            reply = String::from_utf8_lossy(&buf).into_owned();
            if reply.contains("hello") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reply.starts_with("HTTP/1.") && reply.contains("hello"),
        "got {reply:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn forwarded_ports_accept_connections_on_sqlite() {
    forwarded_ports_accept_connections(Store::Sqlite).await;
}

#[tokio::test]
async fn forwarded_ports_accept_connections_on_postgres() {
    forwarded_ports_accept_connections(Store::Postgres).await;
}

async fn idle_sandboxes_expire_and_heartbeated_ones_stay(store: Store) {
    let Some(app) = TestApp::spawn(store, |args| {
        args.sandbox_ttl = Duration::from_secs(3);
        args.reaper_interval = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let idle = app.create(json!({"name": "idle"})).await;
    let kept = app.create(json!({"name": "kept"})).await;
    let idle_id = idle["id"].as_str().unwrap();
    let kept_id = kept["id"].as_str().unwrap();
    let mut expired = false;
    for _ in 0..20 {
        let response = app
            .client
            .post(app.url(&format!("/api/sandboxes/{kept_id}/heartbeat")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        if app.status_of(idle_id).await == "expired" {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(expired, "the idle sandbox did not expire");
    let (_, idle_now) = app.get_json(&format!("/api/sandboxes/{idle_id}")).await;
    assert!(idle_now["deleted_at"].is_string());
    // The reaper marks the row first, then removes the container in the same pass.
    let idle_container = idle["container_id"].as_str().unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if !app.container_exists(idle_container).await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the expired sandbox's container is still there");
    assert_eq!(app.status_of(kept_id).await, "running");
    assert!(
        app.container_exists(kept["container_id"].as_str().unwrap())
            .await
    );
    let response = app
        .client
        .post(app.url(&format!("/api/sandboxes/{idle_id}/execute")))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let _ = app
        .client
        .delete(app.url(&format!("/api/sandboxes/{kept_id}")))
        .send()
        .await;
    app.shutdown().await;
}

#[tokio::test]
async fn idle_sandboxes_expire_and_heartbeated_ones_stay_on_sqlite() {
    idle_sandboxes_expire_and_heartbeated_ones_stay(Store::Sqlite).await;
}

#[tokio::test]
async fn idle_sandboxes_expire_and_heartbeated_ones_stay_on_postgres() {
    idle_sandboxes_expire_and_heartbeated_ones_stay(Store::Postgres).await;
}

async fn a_restarted_server_serves_live_sandboxes(store: Store) {
    let Some(app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let sandbox = app.create(json!({})).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    app.exec(&id, "echo before > /workspace/state").await;
    let app = app.restart().await;
    let out = app.exec(&id, "cat /workspace/state").await;
    assert_eq!(out["output"], "before\n");
    assert_eq!(app.status_of(&id).await, "running");
    let _ = app
        .client
        .delete(app.url(&format!("/api/sandboxes/{id}")))
        .send()
        .await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_restarted_server_serves_live_sandboxes_on_sqlite() {
    a_restarted_server_serves_live_sandboxes(Store::Sqlite).await;
}

#[tokio::test]
async fn a_restarted_server_serves_live_sandboxes_on_postgres() {
    a_restarted_server_serves_live_sandboxes(Store::Postgres).await;
}

/// Templates end to end: lifecycle hooks run in order, a failing hook leaves the sandbox in
/// `error` with its output in the event log and no container, a built template is built once
/// and reused, and the environment and workspace folder reach commands.
#[tokio::test]
async fn templates_shape_the_sandbox_end_to_end() {
    let Some(app) = TestApp::spawn(Store::Sqlite, |_| {}).await else {
        return;
    };
    let hooks = app.create(json!({"template": "busybox-hooks"})).await;
    let out = app
        .exec(hooks["id"].as_str().unwrap(), "cat /tmp/hooks.log")
        .await;
    assert_eq!(
        out["output"], "onCreate\npostCreate-a\npostCreate-b\npostStart\n",
        "{out}"
    );

    let response = app
        .client
        .post(app.url("/api/sandboxes"))
        .json(&json!({"template": "busybox-failing-hook"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_client_error(), "{status} {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{body}"
    );
    let (_, failed) = app.get_json("/api/sandboxes?status=error").await;
    let failed = failed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["template"] == "busybox-failing-hook")
        .unwrap_or_else(|| panic!("no failed sandbox listed: {failed}"))
        .clone();
    let failed_id = failed["id"].as_str().unwrap();
    let (_, events) = app
        .get_json(&format!("/api/sandboxes/{failed_id}/events"))
        .await;
    let failure = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "failed")
        .unwrap_or_else(|| panic!("no failed event: {events}"));
    let logged = failure["details"]["output"].as_str().unwrap_or_default();
    assert!(
        logged.contains("about to fail") && logged.contains("failing-hook-stderr"),
        "{failure}"
    );
    let leftovers: Vec<_> = app
        .runtime
        .list_managed()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.sandbox_id.map(|id| id.to_string()).as_deref() == Some(failed_id))
        .collect();
    assert!(leftovers.is_empty(), "the failed create left {leftovers:?}");

    let first = app.create(json!({"template": "busybox-build"})).await;
    let second = app.create(json!({"template": "busybox-build"})).await;
    assert_eq!(first["image"], second["image"], "the build was not reused");
    assert!(first["image"].as_str().unwrap().starts_with("monza-build/"));
    let out = app
        .exec(
            second["id"].as_str().unwrap(),
            "cat /etc/monza-build-greeting",
        )
        .await;
    assert_eq!(out["exitCode"], 0, "{out}");

    let env = app.create(json!({"template": "busybox-env"})).await;
    assert_eq!(env["workspace_mount"], "/work/project");
    let out = app
        .exec(
            env["id"].as_str().unwrap(),
            "pwd; echo $MONZA_TEST_VAR; echo $MONZA_REMOTE_VAR",
        )
        .await;
    assert_eq!(
        out["output"], "/work/project\nfrom-container-env\nfrom-remote-env\n",
        "{out}"
    );

    for sandbox in [&hooks, &first, &second, &env] {
        let _ = app
            .client
            .delete(app.url(&format!(
                "/api/sandboxes/{}",
                sandbox["id"].as_str().unwrap()
            )))
            .send()
            .await;
    }
    app.shutdown().await;
}
