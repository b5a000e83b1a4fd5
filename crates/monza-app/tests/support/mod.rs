//! The test server of monza-app's integration tests: the real `Application` on 127.0.0.1:0,
//! real Docker, SQLite in a temporary directory or a fresh PostgreSQL database of its own,
//! authentication on with a known admin token, and a `monza.deployment` label of its own.
//! Every sandbox it made is deleted at `shutdown`, and every container carrying its label is
//! removed when it is dropped, so a failed test leaves nothing on the engine either.
//!
//! `on_both_stores!(name, …)` turns an `async fn name(store: Store)` into the tests
//! `name::sqlite` and `name::postgres`.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use monza_app::settings::{Secret, ServeArgs};
use monza_app::{Application, StopHandle};
use monza_domain::ContainerRuntime;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

pub mod pg;
pub mod process;

pub use pg::{PG_URL, PgDatabase, admin_url, psql};
pub use process::{ChildServer, ServeChild, monza, serve_fails, stdout_of};

/// One test per store for each `async fn NAME(store: Store)`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::support::Store::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$name(super::support::Store::Postgres).await;
            }
        }
    )+};
}

/// Which store a test server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// The admin token every test server starts with (`MONZA_BOOTSTRAP_TOKEN`), so the tests
/// run with authentication on, as a real deployment does.
pub const ADMIN_TOKEN: &str = "support-admin-token-0123456789abcdef0123456789abcdef";

/// `docker ARGS`: its stdout (empty when docker cannot be run).
pub fn docker(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// The images of one repository (`monza-build/busybox-build`) that appear while this lives:
/// each is removed when it is dropped, whatever happened. Declare it before the server, so
/// it is dropped after the server's containers (an image in use cannot be removed).
#[derive(Debug)]
pub struct NewImages {
    repository: String,
    before: Vec<String>,
}

impl NewImages {
    /// Remembers the images `repository` has now.
    pub fn of(repository: &str) -> Self {
        Self {
            repository: repository.to_owned(),
            before: image_ids(repository),
        }
    }
}

fn image_ids(repository: &str) -> Vec<String> {
    docker(&["images", "-q", "--no-trunc", repository])
        .lines()
        .map(str::to_owned)
        .collect()
}

impl Drop for NewImages {
    fn drop(&mut self) {
        for id in image_ids(&self.repository) {
            if !self.before.contains(&id) {
                docker(&["rmi", "-f", &id]);
            }
        }
    }
}

/// The containers carrying one `monza.deployment` label; every one of them is removed (with
/// its anonymous volumes) when this is dropped, whatever happened.
#[derive(Debug)]
pub struct DeploymentContainers(pub String);

impl DeploymentContainers {
    /// A new label, unique to one test.
    pub fn label() -> String {
        format!("test-{}", uuid::Uuid::new_v4().simple())
    }

    /// `(container id, sandbox id, state)` of each container of the deployment.
    pub fn list(&self) -> Vec<(String, String, String)> {
        docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=monza.deployment={}", self.0),
            "--format",
            "{{.ID}}\t{{.Label \"monza.sandbox_id\"}}\t{{.State}}",
        ])
        .lines()
        .filter_map(|line| {
            let mut parts = line.split('\t');
            Some((
                parts.next()?.to_owned(),
                parts.next()?.to_owned(),
                parts.next()?.to_owned(),
            ))
        })
        .collect()
    }

    /// The ids of the deployment's containers.
    pub fn ids(&self) -> Vec<String> {
        self.list().into_iter().map(|(id, _, _)| id).collect()
    }

    pub fn remove_all(&self) {
        let ids = self.ids();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args);
        }
    }
}

impl Drop for DeploymentContainers {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// One running `Application`.
pub struct Running {
    pub base: String,
    stop: StopHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    runtime: Arc<dyn ContainerRuntime>,
}

impl Running {
    /// Starts a server with `args`; `None` (a loud skip) outside CI when a dependency is
    /// missing.
    pub async fn start(args: ServeArgs) -> Option<Self> {
        let app = monza_domain::testing::require(
            "Docker engine and store for the integration tests",
            Application::build(args).await,
        )?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let stop = app.stop_handle();
        let runtime = app.service().runtime().clone();
        let task = tokio::spawn(app.run_until_stopped());
        Some(Self {
            base,
            stop,
            task,
            runtime,
        })
    }

    /// Stops it and waits for it to end cleanly.
    pub async fn stop(self) {
        self.stop.stop().await;
        self.task.await.unwrap().unwrap();
    }
}

/// monza's API at `base`, as the admin (`client`) or as anyone (`request`).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    /// Sends the admin token with every request.
    pub client: reqwest::Client,
    /// Sends no token of its own.
    plain: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            client: admin_client(),
            plain: reqwest::Client::new(),
        }
    }

    /// The same clients at another base (another replica).
    pub fn at(&self, base: &str) -> Self {
        Self {
            base: base.to_owned(),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The local address, for raw connections.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// A request carrying `token`, or no token at all.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.plain.request(method, self.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Creates a sandbox (busybox unless `body` says otherwise); asserts 201.
    pub async fn create(&self, body: Value) -> Value {
        let (status, body) = self
            .send(self.client.post(self.url("/api/sandboxes")).json(&body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// A request's status and JSON body (the text as a JSON string when it is not JSON).
    pub async fn send(&self, request: RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    /// `POST path` with `body`: the status and JSON body.
    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    pub async fn exec(&self, id: &str, command: &str) -> (StatusCode, Value) {
        self.post_json(
            &format!("/api/sandboxes/{id}/execute"),
            json!({ "command": command }),
        )
        .await
    }

    /// Runs a command; asserts 200.
    pub async fn exec_ok(&self, id: &str, command: &str) -> Value {
        let (status, body) = self.exec(id, command).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Runs a command; asserts 200 and that its output is `want`.
    pub async fn assert_output(&self, id: &str, command: &str, want: &str) {
        let out = self.exec_ok(id, command).await;
        assert_eq!(out["output"], want, "{command}: {out}");
    }

    /// `POST /api/sandboxes/{id}/heartbeat`: its status.
    pub async fn heartbeat(&self, id: &str) -> StatusCode {
        let url = self.url(&format!("/api/sandboxes/{id}/heartbeat"));
        self.client.post(url).send().await.unwrap().status()
    }

    /// `DELETE /api/sandboxes/{id}`: its status.
    pub async fn delete(&self, id: &str) -> StatusCode {
        let url = self.url(&format!("/api/sandboxes/{id}"));
        self.client.delete(url).send().await.unwrap().status()
    }

    pub async fn status_of(&self, id: &str) -> String {
        let (_, body) = self.get_json(&format!("/api/sandboxes/{id}")).await;
        body["status"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn all_sandboxes(&self) -> Vec<Value> {
        let (status, body) = self.get_json("/api/sandboxes?status=all").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().unwrap().clone()
    }

    /// The event log of sandbox `id`.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let (status, body) = self.get_json(&format!("/api/sandboxes/{id}/events")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().unwrap().clone()
    }

    /// The actions of sandbox `id`'s events, oldest first.
    pub async fn actions(&self, id: &str) -> Vec<String> {
        self.events(id)
            .await
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Deletes, as the admin, every sandbox not deleted yet: the ids of those whose delete
    /// was not a 204.
    pub async fn delete_live(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for sandbox in self.all_sandboxes().await {
            if sandbox["deleted_at"].is_null() {
                let id = sandbox["id"].as_str().unwrap();
                let url = self.url(&format!("/api/sandboxes/{id}"));
                let deleted = self.client.delete(url).send().await;
                if !deleted.is_ok_and(|r| r.status() == StatusCode::NO_CONTENT) {
                    failed.push(id.to_owned());
                }
            }
        }
        failed
    }
}

/// A test server: the first replica, its store and its clean-up. Its [`Api`] is the
/// first replica's.
pub struct TestApp {
    api: Api,
    pub args: ServeArgs,
    server: Option<Running>,
    // Dropped in this order: the database after the containers.
    _containers: DeploymentContainers,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

impl std::ops::Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestApp {
    /// Starts a server on `store` with the busybox test templates, after `tweak` (which may
    /// also replace the deployment label). `None` (a loud skip) outside CI when Docker or
    /// PostgreSQL is missing.
    pub async fn spawn(store: Store, tweak: impl FnOnce(&mut ServeArgs)) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mut args = ServeArgs::defaults();
        args.addr = "127.0.0.1:0".parse().ok()?;
        args.devcontainers = monza_devcontainer::test_templates_dir().to_path_buf();
        args.default_template = "busybox".into();
        args.data_dir = dir.path().to_path_buf();
        args.agent_dir = dir.path().join("agent");
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
        args.deployment = Some(DeploymentContainers::label());
        tweak(&mut args);
        let containers =
            DeploymentContainers(args.deployment.clone().unwrap_or_else(|| "unset".into()));
        let server = Running::start(args.clone()).await?;
        Some(Self {
            api: Api::new(server.base.clone()),
            args,
            server: Some(server),
            _containers: containers,
            _dir: dir,
            _pg: pg,
        })
    }

    /// Another replica on the same store and deployment; the caller stops it.
    pub async fn replica(&self) -> Running {
        Running::start(self.args.clone()).await.unwrap()
    }

    /// Stops this server and starts a new one on the same store.
    pub async fn restart(mut self) -> Self {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        let server = Running::start(self.args.clone()).await.unwrap();
        self.api.base = server.base.clone();
        self.server = Some(server);
        self
    }

    /// The server's container runtime, to look at the engine as monza sees it.
    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.server.as_ref().unwrap().runtime
    }

    pub async fn container_exists(&self, container_id: &str) -> bool {
        self.runtime()
            .list_managed()
            .await
            .unwrap()
            .iter()
            .any(|c| c.id == container_id)
    }

    /// Deletes every sandbox still live (removing its container), then stops the server.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            self.delete_live().await;
            server.stop().await;
        }
    }
}

/// A client that sends the admin token with every request.
pub fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_TOKEN}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Asserts an error answer's status and stable code.
pub fn assert_error(what: &str, (status, body): &(StatusCode, Value), want: u16, code: &str) {
    assert_eq!(status.as_u16(), want, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
}

/// Reads NDJSON lines from a streamed answer, one at a time.
pub struct Lines {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl Lines {
    pub fn of(response: reqwest::Response) -> Self {
        use futures::StreamExt;
        Self {
            body: response.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    /// The next line as JSON, within 30 s; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<Value> {
        use futures::StreamExt;
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("a line within 30 s")?;
            self.buf.extend_from_slice(&chunk.unwrap());
        }
    }
}
