#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The security suite (issue 6), against the real server on 127.0.0.1:0 with real Docker and
//! SQLite: authentication on every `/api` route, tenant isolation, the bootstrap paths,
//! `MONZA_AUTH=disabled`, the per-tenant limit, hostile input, the hardened container as the
//! engine reports it, and a fork bomb.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use monza_app::settings::{Secret, ServeArgs};
use monza_app::{Application, StopHandle};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ADMIN: &str = "security-suite-admin-token-0123456789abcdef0123456789";
const ID_PLACEHOLDER: &str = "{id}";

fn monza() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_monza"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("MONZA_BOOTSTRAP_TOKEN")
        .env_remove("MONZA_AUTH")
        .env_remove("RUST_LOG");
    cmd
}

/// `monza token ARGS` on the SQLite store in `dir`; its stdout.
fn token_cli(dir: &Path, args: &[&str]) -> String {
    let out = monza()
        .arg("token")
        .args(args)
        .env("MONZA_DATA_DIR", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "monza token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Server {
    base: String,
    client: reqwest::Client,
    stop: StopHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start(tweak: impl FnOnce(&mut ServeArgs)) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mut args = ServeArgs::defaults();
        args.addr = "127.0.0.1:0".parse().unwrap();
        args.devcontainers = monza_devcontainer::test_templates_dir().to_path_buf();
        args.default_template = "busybox".into();
        args.data_dir = dir.path().to_path_buf();
        args.database_url = None;
        args.shutdown_timeout = Duration::from_secs(5);
        args.bootstrap_token = Some(Secret::from(ADMIN.to_owned()));
        tweak(&mut args);
        let app = monza_domain::testing::require(
            "Docker engine for the security suite",
            Application::build(args).await,
        )?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let stop = app.stop_handle();
        let task = tokio::spawn(app.run_until_stopped());
        Some(Self {
            base,
            client: reqwest::Client::new(),
            stop,
            task,
            dir,
        })
    }

    /// A new token for `tenant`, made with the CLI on the running server's store.
    fn token(&self, tenant: &str) -> String {
        token_cli(self.dir.path(), &["create", "--tenant", tenant])
            .trim()
            .to_owned()
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn create(&self, token: &str, template: &str) -> Value {
        let res = self
            .request(Method::POST, "/api/sandboxes", Some(token))
            .json(&json!({ "template": template }))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.request(method, path, Some(token));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ids(&self, token: &str) -> Vec<String> {
        let (status, list) = self
            .json(Method::GET, "/api/sandboxes?status=all", token, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn stop(self) {
        for id in self.ids(ADMIN).await {
            let _ = self
                .request(Method::DELETE, &format!("/api/sandboxes/{id}"), Some(ADMIN))
                .send()
                .await;
        }
        self.stop.stop().await;
        self.task.await.unwrap().unwrap();
    }
}

/// Asserts a JSON error with this status and code; returns its message.
fn error_of(status: StatusCode, body: &Value, want: u16, code: &str) -> String {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

/// A request for every protected route, otherwise valid, naming sandbox `id`.
fn route_request(
    server: &Server,
    method: &str,
    path: &str,
    id: &str,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let is_post = method == Method::POST;
    let path = path.replace(ID_PLACEHOLDER, id);
    let req = if path.ends_with("/files/download") {
        server.request(method, &format!("{path}?path=/etc/hostname"), token)
    } else {
        server.request(method, &path, token)
    };
    if path.ends_with("/execute") {
        req.json(&json!({ "command": "true" }))
    } else if path.ends_with("/files/upload") {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("x.txt"),
        );
        req.multipart(form)
    } else if path == "/api/sandboxes" && is_post {
        req.json(&json!({ "template": "busybox" }))
    } else {
        req
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_needs_a_valid_token_and_tenants_never_see_each_other() {
    let Some(server) = Server::start(|_| {}).await else {
        return;
    };
    let alice = server.token("alice");
    let bob = server.token("bob");
    let carol = server.token("carol");
    let carol_id = carol[6..22].to_owned();
    let revoked = token_cli(server.dir.path(), &["revoke", &carol_id]);
    assert!(revoked.contains(&carol_id), "{revoked}");
    let listed = token_cli(server.dir.path(), &["list"]);
    for needle in ["alice", "bob", "carol", &carol_id] {
        assert!(listed.contains(needle), "{needle} missing:\n{listed}");
    }
    for secret in [&alice[23..], &bob[23..], &ADMIN[10..]] {
        assert!(
            !listed.contains(secret),
            "token list shows a secret:\n{listed}"
        );
    }

    let sandbox = server.create(&alice, "busybox").await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    assert_eq!(sandbox["tenant"], "alice");

    let routes: Vec<(String, String)> = monza_http::registered_routes()
        .into_iter()
        .filter(|(_, path)| monza_http::is_protected(path))
        .collect();
    assert!(routes.len() >= 9, "{routes:?}");
    let unknown = format!("monza_{}_{}", "0".repeat(16), "0".repeat(64));
    for (method, path) in &routes {
        for token in [
            None,
            Some("not a token"),
            Some(unknown.as_str()),
            Some(carol.as_str()),
        ] {
            let res = route_request(&server, method, path, &id, token)
                .send()
                .await
                .unwrap();
            let status = res.status();
            let header = res
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = res.json().await.unwrap();
            error_of(status, &body, 401, "unauthorized");
            assert_eq!(
                header.as_deref(),
                Some("Bearer realm=\"monza\""),
                "{method} {path}"
            );
        }
        if path.contains(ID_PLACEHOLDER) {
            let res = route_request(&server, method, path, &id, Some(&bob))
                .send()
                .await
                .unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            let message = error_of(status, &body, 404, "not_found");
            assert!(message.contains(&id), "{method} {path}: {message}");
        }
    }

    assert!(
        !server.ids(&bob).await.contains(&id),
        "bob sees alice's sandbox"
    );
    assert!(server.ids(&alice).await.contains(&id));
    assert!(
        server.ids(ADMIN).await.contains(&id),
        "the admin sees every tenant"
    );
    let (status, seen) = server
        .json(Method::GET, &format!("/api/sandboxes/{id}"), ADMIN, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    // Bob's refused calls changed nothing: the sandbox still runs.
    assert_eq!(seen["status"], "running");
    let res = server
        .request(
            Method::DELETE,
            &format!("/api/sandboxes/{id}"),
            Some(&alice),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_tenant_limit_create_is_429_naming_the_limit() {
    let Some(server) = Server::start(|args| args.max_sandboxes_per_tenant = 2).await else {
        return;
    };
    let alice = server.token("alice");
    let bob = server.token("bob");
    server.create(&alice, "busybox").await;
    server.create(&alice, "busybox").await;
    let (status, body) = server
        .json(
            Method::POST,
            "/api/sandboxes",
            &alice,
            Some(json!({"template": "busybox"})),
        )
        .await;
    let message = error_of(status, &body, 429, "limit_exceeded");
    assert!(message.contains("limit is 2"), "{message}");
    assert_eq!(
        server.ids(&alice).await.len(),
        2,
        "no third sandbox was half-made"
    );
    server.create(&bob, "busybox").await;
    server.stop().await;
}

/// `monza serve` as a child on `dir` with `envs`; returns it, its port and the stderr lines
/// up to "monza listening" (the rest is drained in a thread).
fn spawn_serve(dir: &Path, envs: &[(&str, &str)]) -> Option<(Child, u16, Vec<String>)> {
    let mut cmd = monza();
    cmd.args(["serve", "--addr", "127.0.0.1:0"])
        .env("MONZA_DATA_DIR", dir)
        .env(
            "DEVCONTAINERS_PATH",
            monza_devcontainer::test_templates_dir(),
        )
        .env("MONZA_DEFAULT_TEMPLATE", "busybox")
        .env("MONZA_LOG_FORMAT", "json")
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("monza listening") {
            let json: Value = serde_json::from_str(&line).unwrap();
            port = json["port"].as_u64();
            break;
        }
        seen.push(line);
    }
    let Some(port) = port else {
        let _ = child.kill();
        let _ = child.wait();
        let result: Result<(), String> = Err(format!("monza serve did not start: {seen:?}"));
        monza_domain::testing::require("monza serve start-up (Docker engine)", result);
        return None;
    };
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    Some((child, port as u16, seen))
}

fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

async fn list_status(port: u16, token: Option<&str>) -> StatusCode {
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/api/sandboxes"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_first_token_is_printed_once_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let Some((child, port, lines)) = spawn_serve(dir.path(), &[]) else {
        return;
    };
    let marked: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(monza_app::BOOTSTRAP_MARKER))
        .collect();
    assert_eq!(marked.len(), 1, "{lines:?}");
    let token = marked[0].rsplit(' ').next().unwrap().to_owned();
    assert!(token.starts_with("monza_"), "{}", marked[0]);
    assert!(
        lines.iter().any(|l| l.contains("monza token create")),
        "says how to make more: {lines:?}"
    );
    let logged: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&token) && !l.contains(monza_app::BOOTSTRAP_MARKER))
        .collect();
    assert!(logged.is_empty(), "the token is in a log line: {logged:?}");
    assert_eq!(list_status(port, Some(&token)).await, StatusCode::OK);
    assert_eq!(list_status(port, None).await, StatusCode::UNAUTHORIZED);
    terminate(child);

    // A second start on the same store: no new token, the first still works, even with
    // MONZA_BOOTSTRAP_TOKEN set (it is only for an empty store).
    let (child, port, lines) =
        spawn_serve(dir.path(), &[("MONZA_BOOTSTRAP_TOKEN", ADMIN)]).unwrap();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(monza_app::BOOTSTRAP_MARKER)),
        "a second bootstrap: {lines:?}"
    );
    assert_eq!(list_status(port, Some(&token)).await, StatusCode::OK);
    assert_eq!(
        list_status(port, Some(ADMIN)).await,
        StatusCode::UNAUTHORIZED
    );
    terminate(child);
    let listed = token_cli(dir.path(), &["list"]);
    assert_eq!(
        listed.lines().count(),
        2,
        "a header and one token:\n{listed}"
    );
    assert!(listed.contains("yes"), "the token is an admin:\n{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_setting_becomes_the_admin_token_and_a_weak_one_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = monza()
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("MONZA_DATA_DIR", dir.path())
        .env("MONZA_BOOTSTRAP_TOKEN", "too-short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MONZA_BOOTSTRAP_TOKEN"), "{stderr}");
    assert!(
        !stderr.contains("too-short"),
        "the value is echoed: {stderr}"
    );

    let Some((child, port, lines)) = spawn_serve(dir.path(), &[("MONZA_BOOTSTRAP_TOKEN", ADMIN)])
    else {
        return;
    };
    assert!(
        !lines.iter().any(|l| l.contains(ADMIN)),
        "the token is logged"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(monza_app::BOOTSTRAP_MARKER))
    );
    assert_eq!(list_status(port, Some(ADMIN)).await, StatusCode::OK);
    terminate(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_disabled_makes_everyone_admin_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let Some((child, port, lines)) = spawn_serve(dir.path(), &[("MONZA_AUTH", "disabled")]) else {
        return;
    };
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("MONZA_AUTH=disabled")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(monza_app::BOOTSTRAP_MARKER))
    );
    assert_eq!(list_status(port, None).await, StatusCode::OK);
    terminate(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_a_4xx_json_error_and_leaves_nothing_half_made() {
    let Some(server) = Server::start(|_| {}).await else {
        return;
    };
    let sandbox = server.create(ADMIN, "busybox").await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let api = |tail: &str| format!("/api/sandboxes/{id}{tail}");

    // JSON over 64 KiB.
    let big = json!({ "command": "x".repeat(70 * 1024) });
    let (status, body) = server
        .json(Method::POST, &api("/execute"), ADMIN, Some(big))
        .await;
    error_of(status, &body, 413, "too_large");
    let (status, body) = server
        .json(
            Method::POST,
            "/api/sandboxes",
            ADMIN,
            Some(json!({"name": "n".repeat(70 * 1024)})),
        )
        .await;
    error_of(status, &body, 413, "too_large");

    // Empty command; clamped limits.
    let (status, body) = server
        .json(
            Method::POST,
            &api("/execute"),
            ADMIN,
            Some(json!({"command": "  "})),
        )
        .await;
    error_of(status, &body, 400, "invalid_input");
    let (status, body) = server
        .json(
            Method::POST,
            &api("/execute"),
            ADMIN,
            Some(json!({"command": "echo hello", "max_output_bytes": 1_u64 << 60, "timeout_secs": 1_u64 << 40})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "huge limits are clamped, not refused: {body}"
    );
    assert_eq!(body["output"], "hello\n");
    let (status, body) = server
        .json(
            Method::POST,
            &api("/execute"),
            ADMIN,
            Some(json!({"command": "echo 0123456789", "max_output_bytes": 4})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    assert!(body["output"].as_str().unwrap().len() <= 4, "{body}");

    // Malformed multipart.
    let res = server
        .request(Method::POST, &api("/files/upload"), Some(ADMIN))
        .header("Content-Type", "multipart/form-data; boundary=xyz")
        .body("--xyz\r\ngarbage without headers\r\n--nope")
        .send()
        .await
        .unwrap();
    let status = res.status();
    error_of(status, &res.json().await.unwrap(), 400, "invalid_input");

    // Bad upload and download paths.
    let long = format!("/{}", "a".repeat(5000));
    for bad in [
        "relative/dir",
        "/workspace/../etc",
        "/tmp/a\0b",
        long.as_str(),
    ] {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("x.txt"),
            )
            .text("path", bad.to_owned());
        let res = server
            .request(Method::POST, &api("/files/upload"), Some(ADMIN))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = res.status();
        error_of(status, &res.json().await.unwrap(), 400, "invalid_input");
        let res = server
            .request(Method::GET, &api("/files/download"), Some(ADMIN))
            .query(&[("path", bad)])
            .send()
            .await
            .unwrap();
        let status = res.status();
        error_of(status, &res.json().await.unwrap(), 400, "invalid_input");
    }

    // A hostile upload name is reduced to a safe base name in the destination directory.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"payload".to_vec()).file_name("../../etc/evil.txt"),
        )
        .text("path", "/tmp");
    let (status, body) = {
        let res = server
            .request(Method::POST, &api("/files/upload"), Some(ADMIN))
            .multipart(form)
            .send()
            .await
            .unwrap();
        (res.status(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "/tmp/evil.txt");

    // A file whose name would inject a header is downloaded with an encoded filename*.
    let (status, body) = server
        .json(
            Method::POST,
            &api("/execute"),
            ADMIN,
            Some(json!({"command": "printf x > \"$(printf '/tmp/a\\r\\nX-Injected: 1\";b')\""})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let res = server
        .request(Method::GET, &api("/files/download"), Some(ADMIN))
        .query(&[("path", "/tmp/a\r\nX-Injected: 1\";b")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().get("x-injected").is_none(),
        "{:?}",
        res.headers()
    );
    let disposition = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.contains("filename*=UTF-8''a%0D%0AX-Injected"),
        "{disposition}"
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"x");

    // Upload over 100 MiB, generated lazily: refused while reading.
    let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
    let chunks = (0..101).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let stream = futures::stream::iter(chunks);
    let part =
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream)).file_name("big.bin");
    let started = Instant::now();
    let sent = server
        .request(Method::POST, &api("/files/upload"), Some(ADMIN))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await;
    match sent {
        Ok(res) => {
            let status = res.status();
            let message = error_of(status, &res.json().await.unwrap(), 413, "too_large");
            assert!(message.contains("104857600"), "{message}");
        }
        // The server may answer and close before the client finished sending; then the
        // client sees the connection end, which is the limit enforced while reading.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60));

    // Nothing half-made: one sandbox, running; no stray file.
    assert_eq!(server.ids(ADMIN).await, vec![id.clone()]);
    let (status, body) = server.json(Method::GET, &api(""), ADMIN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "running");
    let (_, body) = server
        .json(
            Method::POST,
            &api("/execute"),
            ADMIN,
            Some(json!({"command": "ls /tmp /workspace 2>/dev/null; ls /etc/evil.txt"})),
        )
        .await;
    assert!(
        !body["output"].as_str().unwrap().contains("big.bin"),
        "{body}"
    );
    assert_ne!(body["exitCode"], 0, "/etc/evil.txt exists: {body}");
    server.stop().await;
}

fn inspect(container: &str) -> Value {
    let out = Command::new("docker")
        .args(["inspect", container])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reports_a_hardened_container() {
    let Some(server) = Server::start(|args| {
        args.pids_limit = 100;
        args.memory_limit = 256 * 1024 * 1024;
        args.cpu_limit = 0.5;
    })
    .await
    else {
        return;
    };
    let sandbox = server.create(ADMIN, "busybox-ports").await;
    let container = sandbox["container_id"].as_str().unwrap();
    let info = inspect(container);
    let host = &info["HostConfig"];
    assert_eq!(host["CapDrop"], json!(["ALL"]), "{host}");
    let added: Vec<String> = host["CapAdd"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c.as_str().unwrap().trim_start_matches("CAP_").to_owned())
                .collect()
        })
        .unwrap_or_default();
    for cap in &added {
        assert!(
            monza_docker::SANDBOX_CAPABILITIES.contains(&cap.as_str()),
            "{cap} added"
        );
    }
    assert!(
        host["SecurityOpt"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().unwrap().starts_with("no-new-privileges")),
        "{host}"
    );
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["PidsLimit"], 100);
    assert_eq!(host["Memory"], 256 * 1024 * 1024);
    assert_eq!(host["NanoCpus"], 500_000_000);
    let bindings = host["PortBindings"].as_object().unwrap();
    assert!(!bindings.is_empty(), "busybox-ports publishes a port");
    for binding in bindings.values().flat_map(|b| b.as_array().unwrap()) {
        assert_eq!(binding["HostIp"], "127.0.0.1", "{binding}");
    }
    for mount in info["Mounts"].as_array().unwrap() {
        assert!(
            !mount["Source"]
                .as_str()
                .unwrap_or_default()
                .contains("docker.sock"),
            "{mount}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_hits_the_pids_limit_while_the_server_keeps_answering() {
    let Some(server) = Server::start(|args| args.pids_limit = 64).await else {
        return;
    };
    let sandbox = server.create(ADMIN, "busybox").await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let container = sandbox["container_id"].as_str().unwrap().to_owned();
    let bomb = {
        let req = server
            .request(
                Method::POST,
                &format!("/api/sandboxes/{id}/execute"),
                Some(ADMIN),
            )
            .json(&json!({"command": ":(){ :|:& };:", "timeout_secs": 5}));
        tokio::spawn(async move { req.send().await.map(|r| r.status()) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let res = server
            .request(Method::GET, "/health", None)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let (status, _) = server
            .json(Method::GET, &format!("/api/sandboxes/{id}"), ADMIN, None)
            .await;
        assert_eq!(status, StatusCode::OK);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer {slowest:?}"
    );
    let pids: u64 = {
        let out = Command::new("docker")
            .args(["stats", "--no-stream", "--format", "{{.PIDs}}", &container])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    assert!(pids > 0 && pids <= 64, "pids in the sandbox: {pids}");
    let status = bomb.await.unwrap().unwrap();
    assert!(status.is_success() || status.is_client_error(), "{status}");
    let res = server
        .request(Method::DELETE, &format!("/api/sandboxes/{id}"), Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let out = Command::new("docker")
        .args(["inspect", &container])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the container is still there");
    server.stop().await;
}
