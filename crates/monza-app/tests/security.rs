#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The security suite (issue 6), against the real server on 127.0.0.1:0 with real Docker and
//! SQLite: authentication on every `/api` route, tenant isolation, the bootstrap paths,
//! `MONZA_AUTH=disabled`, the per-tenant limit, hostile input, the hardened container as the
//! engine reports it, and a fork bomb.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{
    ADMIN_TOKEN as ADMIN, ServeChild, Store, TestApp, docker, monza, serve_fails, stdout_of,
};

const ID_PLACEHOLDER: &str = "{id}";

/// `monza token ARGS` on the SQLite store in `dir`; its stdout.
fn token_cli(dir: &Path, args: &[&str]) -> String {
    stdout_of(monza().arg("token").args(args).env("MONZA_DATA_DIR", dir))
}

/// A test server on SQLite, after `tweak`.
async fn start(tweak: impl FnOnce(&mut monza_app::settings::ServeArgs)) -> Option<TestApp> {
    TestApp::spawn(Store::Sqlite, tweak).await
}

/// A new token for `tenant`, made with the CLI on the running server's store.
fn token(server: &TestApp, tenant: &str) -> String {
    token_cli(&server.args.data_dir, &["create", "--tenant", tenant])
        .trim()
        .to_owned()
}

/// `POST /api/sandboxes` of `template` with `token`; asserts 201.
async fn create(server: &TestApp, token: &str, template: &str) -> Value {
    let (status, body) = json(
        server,
        Method::POST,
        "/api/sandboxes",
        token,
        Some(json!({ "template": template })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// A request with `token` (and `body` as JSON): its status and body.
async fn json(
    server: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = server.request(method, path, Some(token));
    if let Some(body) = body {
        req = req.json(&body);
    }
    server.send(req).await
}

/// The ids of every sandbox `token` sees.
async fn ids(server: &TestApp, token: &str) -> Vec<String> {
    let (status, list) = json(
        server,
        Method::GET,
        "/api/sandboxes?status=all",
        token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A multipart form of one file, `content` named `name`.
fn file_form(content: &'static [u8], name: &str) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(content).file_name(name.to_owned());
    reqwest::multipart::Form::new().part("file", part)
}

/// An upload of `form` into sandbox `id`, as the admin.
fn upload(server: &TestApp, id: &str, form: reqwest::multipart::Form) -> reqwest::RequestBuilder {
    let path = format!("/api/sandboxes/{id}/files/upload");
    server.client.post(server.url(&path)).multipart(form)
}

/// A download of `path` from sandbox `id`, as the admin.
fn download(server: &TestApp, id: &str, path: &str) -> reqwest::RequestBuilder {
    let url = server.url(&format!("/api/sandboxes/{id}/files/download"));
    server.client.get(url).query(&[("path", path)])
}

/// An answer's JSON error; for `HEAD`, which has no body, the code from its
/// `X-Monza-Error-Code` header.
async fn body_of(method: &str, res: reqwest::Response) -> Value {
    if method == "HEAD" {
        let code = res
            .headers()
            .get("x-monza-error-code")
            .map(|v| v.to_str().unwrap().to_owned());
        json!({"error": {"code": code, "message": "(HEAD has no body)"}})
    } else {
        res.json().await.unwrap()
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
    server: &TestApp,
    method: &str,
    path: &str,
    id: &str,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let is_post = method == Method::POST;
    let path = path.replace(ID_PLACEHOLDER, id).replace("{pid}", "1");
    // Paths the routes that change files accept (not an engine-mounted file).
    let changes = (method == Method::DELETE && path.ends_with("/files"))
        || (method == Method::PUT && path.ends_with("/files/archive"))
        || path.ends_with("/files/mkdir")
        || path.ends_with("/files/edit");
    let req = if changes {
        server.request(method, &format!("{path}?path=/tmp/x"), token)
    } else if path.ends_with("/files/move") {
        server.request(method, &format!("{path}?from=/tmp/x&to=/tmp/y"), token)
    } else if [
        "/files/download",
        "/files",
        "/files/stat",
        "/files/list",
        "/files/lines",
        "/files/archive",
    ]
    .iter()
    .any(|end| path.ends_with(end))
    {
        server.request(method, &format!("{path}?path=/etc/hostname"), token)
    } else {
        server.request(method, &path, token)
    };
    if path.ends_with("/execute") || (path.ends_with("/processes") && is_post) {
        req.json(&json!({ "command": "true" }))
    } else if path.ends_with("/files/search") || path.ends_with("/files/glob") {
        req.json(&json!({ "pattern": "x" }))
    } else if path.ends_with("/files/edit") {
        req.json(&json!({ "old_string": "a", "new_string": "b" }))
    } else if path.ends_with("/signal") {
        req.json(&json!({ "signal": "TERM" }))
    } else if path.ends_with("/pty") {
        req.header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    } else if path.ends_with("/files/upload") {
        req.multipart(file_form(b"x", "x.txt"))
    } else if path.ends_with("/files/batch/upload") {
        req.multipart(file_form(b"x", "/tmp/x"))
    } else if path.ends_with("/files/batch/download") {
        req.json(&json!({ "paths": ["/tmp/x"] }))
    } else if path == "/api/sandboxes" && is_post {
        req.json(&json!({ "template": "busybox" }))
    } else {
        req
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_needs_a_valid_token_and_tenants_never_see_each_other() {
    let Some(server) = start(|_| {}).await else {
        return;
    };
    let alice = token(&server, "alice");
    let bob = token(&server, "bob");
    let carol = token(&server, "carol");
    let carol_id = carol[6..22].to_owned();
    let revoked = token_cli(&server.args.data_dir, &["revoke", &carol_id]);
    assert!(revoked.contains(&carol_id), "{revoked}");
    let listed = token_cli(&server.args.data_dir, &["list"]);
    for needle in ["alice", "bob", "carol", &carol_id] {
        assert!(listed.contains(needle), "{needle} missing:\n{listed}");
    }
    for secret in [&alice[23..], &bob[23..], &ADMIN[10..]] {
        assert!(
            !listed.contains(secret),
            "token list shows a secret:\n{listed}"
        );
    }

    let sandbox = create(&server, &alice, "busybox").await;
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
            let body = body_of(method, res).await;
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
            let body = body_of(method, res).await;
            let message = error_of(status, &body, 404, "not_found");
            assert!(
                method == "HEAD" || message.contains(&id),
                "{method} {path}: {message}"
            );
        }
    }

    assert!(
        !ids(&server, &bob).await.contains(&id),
        "bob sees alice's sandbox"
    );
    assert!(ids(&server, &alice).await.contains(&id));
    assert!(
        ids(&server, ADMIN).await.contains(&id),
        "the admin sees every tenant"
    );
    let (status, seen) = server.get_json(&format!("/api/sandboxes/{id}")).await;
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
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_tenant_limit_create_is_429_naming_the_limit() {
    let Some(server) = start(|args| args.max_sandboxes_per_tenant = 2).await else {
        return;
    };
    let alice = token(&server, "alice");
    let bob = token(&server, "bob");
    create(&server, &alice, "busybox").await;
    create(&server, &alice, "busybox").await;
    let (status, body) = json(
        &server,
        Method::POST,
        "/api/sandboxes",
        &alice,
        Some(json!({"template": "busybox"})),
    )
    .await;
    let message = error_of(status, &body, 429, "limit_exceeded");
    assert!(message.contains("limit is 2"), "{message}");
    assert_eq!(
        ids(&server, &alice).await.len(),
        2,
        "no third sandbox was half-made"
    );
    create(&server, &bob, "busybox").await;
    server.shutdown().await;
}

/// The status of `GET /api/sandboxes` on `serve` with `token`, or no token at all.
async fn list_status(serve: &ServeChild, token: Option<&str>) -> StatusCode {
    let mut req =
        reqwest::Client::new().get(format!("http://127.0.0.1:{}/api/sandboxes", serve.port));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_first_token_is_printed_once_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut serve) = ServeChild::start(dir.path(), &[]) else {
        return;
    };
    let lines = &serve.startup;
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
    assert_eq!(list_status(&serve, Some(&token)).await, StatusCode::OK);
    assert_eq!(list_status(&serve, None).await, StatusCode::UNAUTHORIZED);
    serve.terminate();

    // A second start on the same store: no new token, the first still works, even with
    // MONZA_BOOTSTRAP_TOKEN set (it is only for an empty store).
    let mut serve = ServeChild::start(dir.path(), &[("MONZA_BOOTSTRAP_TOKEN", ADMIN)]).unwrap();
    let lines = &serve.startup;
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(monza_app::BOOTSTRAP_MARKER)),
        "a second bootstrap: {lines:?}"
    );
    assert_eq!(list_status(&serve, Some(&token)).await, StatusCode::OK);
    assert_eq!(
        list_status(&serve, Some(ADMIN)).await,
        StatusCode::UNAUTHORIZED
    );
    serve.terminate();
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
    let stderr = serve_fails(&[
        ("MONZA_DATA_DIR", dir.path().to_str().unwrap()),
        ("MONZA_BOOTSTRAP_TOKEN", "too-short"),
    ]);
    assert!(stderr.contains("MONZA_BOOTSTRAP_TOKEN"), "{stderr}");
    assert!(
        !stderr.contains("too-short"),
        "the value is echoed: {stderr}"
    );

    let Some(mut serve) = ServeChild::start(dir.path(), &[("MONZA_BOOTSTRAP_TOKEN", ADMIN)]) else {
        return;
    };
    let lines = &serve.startup;
    assert!(
        !lines.iter().any(|l| l.contains(ADMIN)),
        "the token is logged"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(monza_app::BOOTSTRAP_MARKER))
    );
    assert_eq!(list_status(&serve, Some(ADMIN)).await, StatusCode::OK);
    serve.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_disabled_makes_everyone_admin_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut serve) = ServeChild::start(dir.path(), &[("MONZA_AUTH", "disabled")]) else {
        return;
    };
    let lines = &serve.startup;
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
    assert_eq!(list_status(&serve, None).await, StatusCode::OK);
    serve.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_a_4xx_json_error_and_leaves_nothing_half_made() {
    let Some(server) = start(|_| {}).await else {
        return;
    };
    let sandbox = create(&server, ADMIN, "busybox").await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let api = |tail: &str| format!("/api/sandboxes/{id}{tail}");
    let execute_path = api("/execute");
    let execute = |body: Value| server.post_json(&execute_path, body);

    // An execute body over MONZA_MAX_COMMAND_BYTES (1 MiB), any other JSON over 64 KiB.
    let big = json!({ "command": "x".repeat(1024 * 1024 + 1) });
    let (status, body) = server.post_json(&api("/execute"), big).await;
    let message = error_of(status, &body, 413, "too_large");
    assert!(message.contains("MONZA_MAX_COMMAND_BYTES"), "{message}");
    let (status, body) = server
        .post_json("/api/sandboxes", json!({"name": "n".repeat(70 * 1024)}))
        .await;
    error_of(status, &body, 413, "too_large");

    // Empty command; clamped limits.
    let (status, body) = execute(json!({"command": "  "})).await;
    error_of(status, &body, 400, "invalid_input");
    let (status, body) = execute(json!({
        "command": "echo hello",
        "max_output_bytes": 1_u64 << 60,
        "timeout_secs": 1_u64 << 40,
    }))
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "huge limits are clamped, not refused: {body}"
    );
    assert_eq!(body["output"], "hello\n");
    let (status, body) =
        execute(json!({"command": "echo 0123456789", "max_output_bytes": 4})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    assert!(body["output"].as_str().unwrap().len() <= 4, "{body}");

    // Malformed multipart.
    let (status, body) = server
        .send(
            server
                .client
                .post(server.url(&api("/files/upload")))
                .header("Content-Type", "multipart/form-data; boundary=xyz")
                .body("--xyz\r\ngarbage without headers\r\n--nope"),
        )
        .await;
    error_of(status, &body, 400, "invalid_input");

    // Bad upload and download paths.
    let long = format!("/{}", "a".repeat(5000));
    for bad in [
        "relative/dir",
        "/workspace/../etc",
        "/tmp/a\0b",
        long.as_str(),
    ] {
        let form = file_form(b"x", "x.txt").text("path", bad.to_owned());
        let (status, body) = server.send(upload(&server, &id, form)).await;
        error_of(status, &body, 400, "invalid_input");
        let (status, body) = server.send(download(&server, &id, bad)).await;
        error_of(status, &body, 400, "invalid_input");
    }

    // A hostile upload name is refused, never cut down to a base name: nothing is written.
    let form = file_form(b"payload", "../../etc/evil.txt").text("path", "/tmp");
    let (status, body) = server.send(upload(&server, &id, form)).await;
    error_of(status, &body, 400, "invalid_path");
    let (status, body) = execute(json!({
        "command": "for f in /tmp/evil.txt /etc/evil.txt /evil.txt; do test -e $f && echo $f; done; true"
    }))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "", "a hostile name wrote a file: {body}");

    // A file whose name would inject a header is downloaded with an encoded filename*.
    let (status, body) =
        execute(json!({"command": "printf x > \"$(printf '/tmp/a\\r\\nX-Injected: 1\";b')\""}))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let res = download(&server, &id, "/tmp/a\r\nX-Injected: 1\";b")
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
    let form = reqwest::multipart::Form::new().part("file", part);
    let sent = upload(&server, &id, form).send().await;
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
    assert_eq!(ids(&server, ADMIN).await, vec![id.clone()]);
    let (status, body) = server.get_json(&api("")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "running");
    let (_, body) =
        execute(json!({"command": "ls /tmp /workspace 2>/dev/null; ls /etc/evil.txt"})).await;
    assert!(
        !body["output"].as_str().unwrap().contains("big.bin"),
        "{body}"
    );
    assert_ne!(body["exitCode"], 0, "/etc/evil.txt exists: {body}");
    server.shutdown().await;
}

fn inspect(container: &str) -> Value {
    let out = stdout_of(Command::new("docker").args(["inspect", container]));
    let all: Value = serde_json::from_str(&out).unwrap();
    all[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reports_a_hardened_container() {
    let Some(server) = start(|args| {
        args.pids_limit = 100;
        args.memory_limit = 256 * 1024 * 1024;
        args.cpu_limit = 0.5;
    })
    .await
    else {
        return;
    };
    let sandbox = create(&server, ADMIN, "busybox-ports").await;
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
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_hits_the_pids_limit_while_the_server_keeps_answering() {
    let Some(server) = start(|args| args.pids_limit = 64).await else {
        return;
    };
    let sandbox = create(&server, ADMIN, "busybox").await;
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
        let (status, _) = server.get_json(&format!("/api/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer {slowest:?}"
    );
    let pids: u64 = docker(&["stats", "--no-stream", "--format", "{{.PIDs}}", &container])
        .trim()
        .parse()
        .unwrap_or(0);
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
    server.shutdown().await;
}
