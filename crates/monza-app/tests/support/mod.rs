//! A test server for monza-app's integration tests: the real `Application` on 127.0.0.1:0,
//! real Docker, SQLite in a temporary directory or a fresh PostgreSQL database of its own,
//! authentication on with a known admin token. Every sandbox it made is deleted (and so its
//! container removed) when it shuts down.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use monza_app::settings::{Secret, ServeArgs};
use monza_app::{Application, StopHandle};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Which store a test server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

pub const PG_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

/// The admin token every test server starts with.
pub const ADMIN_TOKEN: &str = "support-admin-token-0123456789abcdef0123456789abcdef";

/// A database of its own on the test server, dropped at the end.
#[derive(Debug)]
pub struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    pub fn create() -> Option<Self> {
        let admin_url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| PG_URL.into());
        let name = format!("monza_test_{}", uuid::Uuid::new_v4().simple());
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

    pub fn url(&self) -> String {
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

/// A running test server.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// The `monza.deployment` label of every container this server makes.
    deployment: String,
    stop: StopHandle,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

impl TestApp {
    /// Starts a server on `store` with the busybox test templates, after `tweak`. `None`
    /// (a loud skip) outside CI when Docker or PostgreSQL is missing.
    pub async fn spawn(store: Store, tweak: impl FnOnce(&mut ServeArgs)) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mut args = ServeArgs::defaults();
        args.addr = "127.0.0.1:0".parse().ok()?;
        args.devcontainers = monza_devcontainer::test_templates_dir().to_path_buf();
        args.default_template = "busybox".into();
        args.data_dir = dir.path().to_path_buf();
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
        let deployment = format!("test-{}", uuid::Uuid::new_v4().simple());
        args.deployment = Some(deployment.clone());
        tweak(&mut args);
        let app = monza_domain::testing::require(
            "Docker engine and store for the integration tests",
            Application::build(args).await,
        )?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let stop = app.stop_handle();
        let task = Some(tokio::spawn(app.run_until_stopped()));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_TOKEN}")).unwrap(),
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        Some(Self {
            base,
            client,
            deployment,
            stop,
            task,
            _dir: dir,
            _pg: pg,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The local address, for raw connections.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// Creates a sandbox (busybox unless `body` says otherwise); asserts 201.
    pub async fn create(&self, body: Value) -> Value {
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

    /// A request's status and JSON body (`Null` when the body is not JSON).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn exec(&self, id: &str, command: &str) -> (StatusCode, Value) {
        self.send(
            self.client
                .post(self.url(&format!("/api/sandboxes/{id}/execute")))
                .json(&json!({ "command": command })),
        )
        .await
    }

    pub async fn all_sandboxes(&self) -> Vec<Value> {
        let (status, body) = self
            .send(self.client.get(self.url("/api/sandboxes?status=all")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().unwrap().clone()
    }

    /// Deletes every sandbox still live (removing its container), then stops the server.
    pub async fn shutdown(mut self) {
        for sandbox in self.all_sandboxes().await {
            if sandbox["deleted_at"].is_null() {
                let id = sandbox["id"].as_str().unwrap();
                let _ = self
                    .client
                    .delete(self.url(&format!("/api/sandboxes/{id}")))
                    .send()
                    .await;
            }
        }
        self.stop.stop().await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestApp {
    /// A test that failed before `shutdown` still leaves no container behind.
    fn drop(&mut self) {
        let filter = format!("label=monza.deployment={}", self.deployment);
        let Ok(listed) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// Asserts an error answer's status and stable code.
pub fn assert_error(what: &str, (status, body): &(StatusCode, Value), want: u16, code: &str) {
    assert_eq!(status.as_u16(), want, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
}
