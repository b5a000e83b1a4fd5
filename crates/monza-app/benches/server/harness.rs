//! The things every scenario drives: the real `monza` binary as a child process, an HTTP
//! client for its API, and raw docker-api calls (the PostgreSQL database of its own is the
//! tests' `support/pg.rs`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use docker_api::Docker;
use docker_api::opts::{
    ContainerCreateOpts, ContainerFilter, ContainerListOpts, ContainerRemoveOpts, ExecCreateOpts,
    ExecStartOpts, PublishPort,
};
use futures::StreamExt;
use monza_docker::SANDBOX_CAPABILITIES;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

pub const IMAGE: &str = "monza-test/busybox:latest";
/// Every container the benchmark makes carries this label (value `server` or `raw`), so the
/// end of the run removes them all, whatever happened.
pub const LABEL: &str = "monza-bench";
const KEEP_ALIVE: &str = "trap 'exit 0' TERM INT\nwhile sleep 1000 & wait $!; do :; done";

/// A templates directory with one template, `bench`: the busybox image, port 8080
/// published, and the benchmark's label (the same options the raw side uses).
pub fn templates_dir(root: &Path) -> PathBuf {
    let dir = root.join("templates");
    let template = dir.join("bench");
    std::fs::create_dir_all(&template).unwrap();
    let config = json!({
        "name": "bench",
        "image": IMAGE,
        "forwardPorts": [8080],
        "containerEnv": {"A": "1"},
        "workspaceFolder": "/workspace",
        "runArgs": ["--label", format!("{LABEL}=server")],
    });
    std::fs::write(
        template.join("devcontainer.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    dir
}

/// Which store a server uses.
#[derive(Debug, Clone)]
pub enum Store {
    /// `monza.db` in this directory.
    Sqlite(PathBuf),
    Postgres(String),
}

impl Store {
    pub fn name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "SQLite",
            Store::Postgres(_) => "PostgreSQL",
        }
    }
}

/// The real `monza` binary (release profile), serving on a loopback port.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub api: Api,
    pub log: PathBuf,
    /// From spawn to the first 200 from `/ready`.
    pub startup: Duration,
}

pub struct ServerConfig<'a> {
    pub store: &'a Store,
    pub templates: &'a Path,
    pub log_dir: &'a Path,
    pub token: &'a str,
    pub extra_env: Vec<(&'static str, String)>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Server {
    pub async fn start(config: &ServerConfig<'_>) -> Server {
        let port = free_port();
        let log = config
            .log_dir
            .join(format!("monza-{}-{port}.log", config.store.name()));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_monza"));
        cmd.arg("serve")
            .env("SERVER_ADDR", format!("127.0.0.1:{port}"))
            .env("DEVCONTAINERS_PATH", config.templates)
            .env("MONZA_DEFAULT_TEMPLATE", "bench")
            .env("MONZA_BOOTSTRAP_TOKEN", config.token)
            // The footprint and reaper scenarios hold 100 sandboxes of one tenant; the
            // limit's check (one count per create) still runs, it just never refuses.
            .env("MONZA_MAX_SANDBOXES_PER_TENANT", "1000")
            .env("MONZA_SHUTDOWN_TIMEOUT", "5s")
            // The agent's binary and sockets in the run's directory, removed with it.
            .env(
                "MONZA_AGENT_DIR",
                config.log_dir.join(format!("agent-{port}")),
            )
            .env_remove("RUST_LOG")
            .env_remove("MONZA_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        match config.store {
            Store::Sqlite(dir) => {
                cmd.env_remove("DATABASE_URL").env("MONZA_DATA_DIR", dir);
            }
            Store::Postgres(url) => {
                cmd.env("DATABASE_URL", url);
            }
        }
        for (key, value) in &config.extra_env {
            cmd.env(key, value);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawning the monza binary");
        let pid = child.id();
        let api = Api::new(format!("http://127.0.0.1:{port}"), config.token);
        let ready_client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "monza exited with {status} before it was ready:\n{}",
                    tail(&log)
                );
            }
            let ready = ready_client
                .get(format!("{}/ready", api.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("monza was not ready within 60 s:\n{}", tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let startup = started.elapsed();
        Server {
            child,
            pid,
            api,
            log,
            startup,
        }
    }

    /// SIGTERM, then up to 10 s for a clean exit (then SIGKILL).
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "monza exited with {status} on SIGTERM:\n{}",
                    tail(&self.log)
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("monza {} did not stop on SIGTERM; killing it", self.pid);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A request's status and JSON body (`Null` when the body is not JSON).
async fn send_json(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// monza's REST API. Every request carries `Authorization: Bearer <token>` (the server is
/// started with the same token as `MONZA_BOOTSTRAP_TOKEN`).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    token: String,
}

impl Api {
    pub fn new(base: String, token: &str) -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        Self {
            base,
            client,
            token: token.to_owned(),
        }
    }

    pub fn token_for_load(&self) -> String {
        self.token.clone()
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// `POST /api/sandboxes` with the bench template: the sandbox, running.
    pub async fn create(&self) -> Value {
        let (status, body) = send_json(
            self.request(Method::POST, "/api/sandboxes")
                .json(&json!({"template": "bench"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "create: {body}");
        assert_eq!(body["status"], "running", "create: {body}");
        body
    }

    pub async fn delete(&self, id: &str) {
        let response = self
            .request(Method::DELETE, &format!("/api/sandboxes/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "delete {id}");
    }

    /// `POST …/execute` keeping up to 4 MiB: the output's length, after checking the exit
    /// code is 0.
    pub async fn execute(&self, id: &str, command: &str) -> usize {
        self.execute_keeping(id, command, 4 * 1024 * 1024).await
    }

    /// [`Api::execute`] keeping up to `max_output_bytes` (what each execute reserves of the
    /// server's output budget, twice over, while it runs).
    pub async fn execute_keeping(&self, id: &str, command: &str, max_output_bytes: usize) -> usize {
        let (status, body) = send_json(
            self.request(Method::POST, &format!("/api/sandboxes/{id}/execute"))
                .json(&json!({"command": command, "max_output_bytes": max_output_bytes})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "execute: {body}");
        assert_eq!(body["exitCode"], 0, "execute {command:?}");
        body["stdout"].as_str().map_or(0, str::len)
    }

    /// `POST …/execute` streamed as NDJSON of `command`, which must print `ready`, then copy
    /// a FIFO to stdout: once `ready` arrived, `fire` writes the FIFO and returns when it
    /// wrote; the answer is the time from then to the arrival of what it wrote (`x`).
    pub async fn stream_latency(
        &self,
        id: &str,
        command: &str,
        fire: impl FnOnce() -> Instant + Send + 'static,
    ) -> Duration {
        let response = self
            .request(Method::POST, &format!("/api/sandboxes/{id}/execute"))
            .header("accept", "application/x-ndjson")
            .json(&json!({ "command": command }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "streamed execute");
        let mut body = response.bytes_stream();
        let mut buf = Vec::new();
        let mut fire = Some(fire);
        let mut fired = None;
        loop {
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let event: Value = serde_json::from_slice(&line).unwrap();
                let data = event["data"].as_str().unwrap_or("");
                if data.contains("ready")
                    && let Some(fire) = fire.take()
                {
                    fired = Some(tokio::task::spawn_blocking(fire).await.unwrap());
                }
                if data.contains('x')
                    && let Some(at) = fired
                {
                    return at.elapsed();
                }
                assert_ne!(event["type"], "exit", "the command ended first: {event}");
            }
            let chunk = body.next().await.expect("the stream ended early").unwrap();
            buf.extend_from_slice(&chunk);
        }
    }

    pub async fn upload(&self, id: &str, name: &str, content: Bytes) {
        let len = content.len() as u64;
        let form = reqwest::multipart::Form::new()
            .text("path", "/workspace")
            .part(
                "file",
                reqwest::multipart::Part::stream_with_length(reqwest::Body::from(content), len)
                    .file_name(name.to_owned()),
            );
        let response = self
            .request(Method::POST, &format!("/api/sandboxes/{id}/files/upload"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "upload: {body}");
    }

    /// `PUT …/files?path=`: writes one file at an exact path.
    pub async fn put_file(&self, id: &str, path: &str, content: Bytes) {
        let response = self
            .request(Method::PUT, &format!("/api/sandboxes/{id}/files"))
            .query(&[("path", path)])
            .body(content)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "put {path}: {body}");
    }

    /// `GET …/files?path=` drained: the file's length.
    pub async fn get_file(&self, id: &str, path: &str) -> u64 {
        let response = self
            .request(Method::GET, &format!("/api/sandboxes/{id}/files"))
            .query(&[("path", path)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "get {path}");
        response.bytes().await.unwrap().len() as u64
    }

    /// `PUT …/files/archive`: unpacks a tar into `dir`.
    pub async fn put_archive(&self, id: &str, dir: &str, tar: Bytes) {
        let response = self
            .request(Method::PUT, &format!("/api/sandboxes/{id}/files/archive"))
            .query(&[("path", dir)])
            .body(tar)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "archive upload: {body}");
    }

    /// `GET …/files/archive` drained: the tar stream's length.
    pub async fn get_archive(&self, id: &str, dir: &str) -> u64 {
        let response = self
            .request(Method::GET, &format!("/api/sandboxes/{id}/files/archive"))
            .query(&[("path", dir)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "archive download {dir}");
        let mut stream = response.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            n += chunk.unwrap().len() as u64;
        }
        n
    }

    /// Downloads and drains a file: its length.
    pub async fn download(&self, id: &str, path: &str) -> u64 {
        let response = self
            .request(Method::GET, &format!("/api/sandboxes/{id}/files/download"))
            .query(&[("path", path)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "download {path}");
        let mut stream = response.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            n += chunk.unwrap().len() as u64;
        }
        n
    }
}

/// The Docker engine driven directly, doing what monza asks of it.
#[derive(Clone)]
pub struct Raw {
    pub docker: Docker,
}

impl Raw {
    /// The bench template's container through docker-api's builder, as far as it goes
    /// (it cannot express `CapDrop`/`PidsLimit`), then start and inspect for the port.
    pub async fn create_start(&self) -> String {
        let opts = ContainerCreateOpts::builder()
            .name(format!("monza-bench-raw-{}", uuid::Uuid::new_v4().simple()))
            .image(IMAGE)
            .labels([(LABEL, "raw")])
            .env(["A=1"])
            .working_dir("/workspace")
            .entrypoint(["/bin/sh"])
            .command(["-c", KEEP_ALIVE])
            .expose(
                PublishPort::tcp(8080),
                docker_api::opts::HostPort::with_ip(0, "127.0.0.1".into()),
            )
            .memory(512 * 1024 * 1024)
            .memory_swap(512 * 1024 * 1024)
            .nano_cpus(1_000_000_000)
            .privileged(false)
            .security_options(["no-new-privileges"])
            .capabilities(SANDBOX_CAPABILITIES.to_vec())
            .build();
        let container = self.docker.containers().create(&opts).await.unwrap();
        container.start().await.unwrap();
        let inspect = container.inspect().await.unwrap();
        assert!(inspect.network_settings.and_then(|n| n.ports).is_some());
        container.id().to_string()
    }

    /// A running container that monza's reconciler takes for the container of `sandbox_id`
    /// in `deployment` (monza's labels, that deployment). The control plane's rows all point
    /// at it, so a server's start-up reconciliation finds their container alive without the
    /// engine holding one container per row.
    pub async fn stand_in(&self, deployment: &str, sandbox_id: &str) -> String {
        let opts = ContainerCreateOpts::builder()
            .name(format!(
                "monza-bench-stand-in-{}",
                uuid::Uuid::new_v4().simple()
            ))
            .image(IMAGE)
            .labels([
                (LABEL, "stand-in"),
                (monza_docker::LABEL_MANAGED, "true"),
                (monza_docker::LABEL_DEPLOYMENT, deployment),
                (monza_docker::LABEL_SANDBOX_ID, sandbox_id),
            ])
            .entrypoint(["/bin/sh"])
            .command(["-c", KEEP_ALIVE])
            .build();
        let container = self.docker.containers().create(&opts).await.unwrap();
        container.start().await.unwrap();
        container.id().to_string()
    }

    pub async fn remove(&self, id: &str) {
        let opts = ContainerRemoveOpts::builder()
            .force(true)
            .volumes(true)
            .build();
        self.docker
            .containers()
            .get(id)
            .remove(&opts)
            .await
            .unwrap();
    }

    /// exec create + start of `/bin/sh -c COMMAND` in `/workspace`, attached to its output.
    async fn start_exec(
        &self,
        id: &str,
        command: &str,
    ) -> (
        docker_api::Exec,
        impl futures::Stream<Item = Result<docker_api::conn::TtyChunk, docker_api::conn::Error>> + Unpin,
    ) {
        let opts = ExecCreateOpts::builder()
            .command(["/bin/sh", "-c", command])
            .attach_stdout(true)
            .attach_stderr(true)
            .working_dir("/workspace")
            .build();
        let exec = docker_api::Exec::create(self.docker.clone(), id, &opts)
            .await
            .unwrap();
        let stream = exec.start(&ExecStartOpts::default()).await.unwrap();
        (exec, stream)
    }

    /// exec create + start + drain + inspect of `/bin/sh -c COMMAND` (what monza runs):
    /// the stdout length, after checking the exit code is 0.
    pub async fn exec(&self, id: &str, command: &str) -> usize {
        let (exec, mut stream) = self.start_exec(id, command).await;
        let mut n = 0;
        while let Some(chunk) = stream.next().await {
            if let docker_api::conn::TtyChunk::StdOut(bytes) = chunk.unwrap() {
                n += bytes.len();
            }
        }
        let code = exec.inspect().await.unwrap().exit_code;
        assert_eq!(code, Some(0), "raw exec {command:?}");
        n
    }

    /// [`Api::stream_latency`] through a raw attached exec.
    pub async fn stream_latency(
        &self,
        id: &str,
        command: &str,
        fire: impl FnOnce() -> Instant + Send + 'static,
    ) -> Duration {
        let (_exec, mut stream) = self.start_exec(id, command).await;
        let mut fire = Some(fire);
        let mut fired = None;
        while let Some(chunk) = stream.next().await {
            if let docker_api::conn::TtyChunk::StdOut(bytes) = chunk.unwrap() {
                if bytes.windows(5).any(|w| w == b"ready")
                    && let Some(fire) = fire.take()
                {
                    fired = Some(tokio::task::spawn_blocking(fire).await.unwrap());
                }
                if bytes.contains(&b'x')
                    && let Some(at) = fired
                {
                    return at.elapsed();
                }
            }
        }
        panic!("the raw exec ended before its FIFO's line arrived");
    }

    /// Where `path` of a running container is on the host: under overlay2's merged
    /// directory (the bench writes a FIFO the container reads through it).
    pub async fn host_path(&self, id: &str, path: &str) -> PathBuf {
        let inspect = self.docker.containers().get(id).inspect().await.unwrap();
        let merged = inspect
            .graph_driver
            .and_then(|g| g.data.get("MergedDir").cloned())
            .expect("an overlay2 merged directory (the stream scenario needs overlay2)");
        Path::new(&merged).join(path.trim_start_matches('/'))
    }

    pub async fn upload(&self, id: &str, path: &str, content: &[u8]) {
        self.docker
            .containers()
            .get(id)
            .copy_file_into(path, content)
            .await
            .unwrap();
    }

    /// `PUT /archive` of a tar into the existing directory `dir` (what `docker cp` sends).
    pub async fn put_archive(&self, id: &str, dir: &str, tar: Bytes) {
        self.docker
            .containers()
            .get(id)
            .copy_to(Path::new(dir), tar.to_vec().into())
            .await
            .unwrap();
    }

    /// `GET /archive` drained: the tar stream's length.
    pub async fn download(&self, id: &str, path: &str) -> u64 {
        let container = self.docker.containers().get(id);
        let mut stream = std::pin::pin!(container.copy_from(path));
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            n += chunk.unwrap().len() as u64;
        }
        n
    }

    /// Removes every container carrying the benchmark's label (either side).
    pub async fn remove_all_labelled(&self) -> usize {
        let opts = ContainerListOpts::builder()
            .all(true)
            .filter([ContainerFilter::LabelKey(LABEL.into())])
            .build();
        let Ok(list) = self.docker.containers().list(&opts).await else {
            eprintln!("could not list the benchmark's containers for clean-up");
            return 0;
        };
        let ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
        let opts = ContainerRemoveOpts::builder()
            .force(true)
            .volumes(true)
            .build();
        let results = futures::future::join_all(ids.iter().map(|id| {
            let opts = &opts;
            async move { self.docker.containers().get(id).remove(opts).await }
        }))
        .await;
        results.iter().filter(|r| r.is_ok()).count()
    }
}
