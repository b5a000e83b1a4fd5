#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Regression tests for what an outside fuzz of the API found (issue 11): hostile text, loose
//! bodies and ids, engine refusals on the file routes, kernel file systems, execute racing a
//! delete, slow bodies and the memory an execute may hold. Against the real server and
//! engine, on both stores where a store is involved.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use monza_app::settings::AgentMode;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Store, TestApp, assert_error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A multipart body built by hand, so a test controls every byte (reqwest would refuse or
/// rewrite a hostile file name). Each part is (field name, file name, content).
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "monza-test-boundary-7c1f";
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disposition = match filename {
            // A quoted-string (RFC 6266): `\` and `"` escaped, as Python's urllib3 does.
            Some(f) => format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{}\"",
                f.replace('\\', "\\\\").replace('"', "\\\"")
            ),
            None => format!("Content-Disposition: form-data; name=\"{name}\""),
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(app: &TestApp, id: &str, dir: Option<&str>, name: &str) -> (StatusCode, Value) {
    let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![("file", Some(name), b"hello")];
    if let Some(dir) = dir {
        parts.push(("path", None, dir.as_bytes()));
    }
    let (content_type, body) = multipart(&parts);
    app.send(
        app.client
            .post(app.url(&format!("/api/sandboxes/{id}/files/upload")))
            .header("Content-Type", content_type)
            .body(body),
    )
    .await
}

/// `path` is sent as written: the caller percent-encodes what needs it.
async fn download(app: &TestApp, id: &str, raw_path: &str) -> (StatusCode, Value) {
    app.get_json(&format!(
        "/api/sandboxes/{id}/files/download?path={raw_path}"
    ))
    .await
}

fn encode(path: &str) -> String {
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn execute_json(app: &TestApp, id: &str, body: Value) -> (StatusCode, Value) {
    app.send(
        app.client
            .post(app.url(&format!("/api/sandboxes/{id}/execute")))
            .json(&body),
    )
    .await
}

/// A server on SQLite with one busybox sandbox: the server and the sandbox's id.
async fn app_with_a_sandbox() -> Option<(TestApp, String)> {
    let app = TestApp::spawn(Store::Sqlite, |_| {}).await?;
    let sandbox = app.create(json!({})).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    Some((app, id))
}

// --- NUL bytes (item 3) --------------------------------------------------------------------

async fn nul_bytes_in_every_text_field_are_a_400_and_nothing_runs_or_is_stored(store: Store) {
    let Some(app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let create = |body: Value| app.send(app.client.post(app.url("/api/sandboxes")).json(&body));
    for body in [
        json!({"name": "a\u{0}b"}),
        json!({"template": "busy\u{0}box"}),
        json!({"name": "ok", "x\u{0}": 1}),
    ] {
        assert_error(
            &format!("create {body}"),
            &create(body.clone()).await,
            400,
            "invalid_input",
        );
    }
    assert!(
        app.all_sandboxes().await.is_empty(),
        "a refused create stored a row"
    );

    let sandbox = app.create(json!({"name": "nul"})).await;
    let id = sandbox["id"].as_str().unwrap();
    for body in [
        json!({"command": "touch /tmp/ran\u{0}"}),
        json!({"command": "touch /tmp/ran", "workdir": "/tmp\u{0}"}),
        json!({"command": "touch /tmp/ran", "env": {"A\u{0}": "x"}}),
        json!({"command": "touch /tmp/ran", "env": {"A": "x\u{0}y"}}),
    ] {
        assert_error(
            &format!("execute {body}"),
            &execute_json(&app, id, body.clone()).await,
            400,
            "invalid_input",
        );
    }
    assert_error(
        "upload path",
        &upload(&app, id, Some("/workspace\u{0}x"), "a.txt").await,
        400,
        "invalid_input",
    );
    assert_error(
        "upload name",
        &upload(&app, id, None, "a\u{0}b.txt").await,
        400,
        "invalid_input",
    );
    assert_error(
        "download path",
        &download(&app, id, "/etc/passwd%00").await,
        400,
        "invalid_input",
    );
    assert_error(
        "list status",
        &app.get_json("/api/sandboxes?status=running%00").await,
        400,
        "invalid_input",
    );
    // Nothing ran, nothing was logged as run.
    let actions = app.actions(id).await;
    assert_eq!(actions, ["created", "started"]);
    let out = app.exec_ok(id, "test -e /tmp/ran; echo $?").await;
    assert_eq!(out["output"], "1\n", "a refused command ran: {out}");
    app.shutdown().await;
}

// --- Bodies, ids and queries (item 7) -------------------------------------------------------

#[tokio::test]
async fn bodies_ids_and_queries_are_as_strict_as_documented() {
    let Some(app) = TestApp::spawn(Store::Sqlite, |_| {}).await else {
        return;
    };
    let raw_create = |body: &'static str| {
        app.send(
            app.client
                .post(app.url("/api/sandboxes"))
                .header("Content-Type", "application/json")
                .body(body),
        )
    };
    for body in [r#"["x"]"#, r#""x""#, "42", "true"] {
        assert_error(
            &format!("create {body}"),
            &raw_create(body).await,
            400,
            "invalid_input",
        );
    }
    assert!(app.all_sandboxes().await.is_empty());
    // `null` is "no body": the defaults.
    let (status, sandbox) = raw_create("null").await;
    assert_eq!(status, StatusCode::CREATED, "{sandbox}");
    assert_eq!(sandbox["name"], "sandbox-busybox");
    let id = sandbox["id"].as_str().unwrap();

    let (status, body) = execute_json(&app, id, json!(["echo"])).await;
    assert_error("execute array", &(status, body), 400, "invalid_input");
    let raw_execute = |content_type: &'static str, body: &'static str| {
        let url = app.url(&format!("/api/sandboxes/{id}/execute"));
        app.send(
            app.client
                .post(url)
                .header("Content-Type", content_type)
                .body(body),
        )
    };
    let (status, body) = raw_execute("application/json", "null").await;
    assert_error("execute null", &(status, body), 400, "invalid_input");

    // The body is JSON whatever the Content-Type says (`curl -d` sends form encoding), as
    // the Go service did; a body that is not JSON stays a 400.
    let form_encoded = "application/x-www-form-urlencoded";
    let (status, body) = raw_execute(form_encoded, r#"{"command": "echo via curl -d"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], "via curl -d\n");
    let (status, body) = raw_execute(form_encoded, "command=echo").await;
    assert_error(
        "form-encoded execute",
        &(status, body),
        400,
        "invalid_input",
    );

    let simple = id.replace('-', "");
    for spelling in [
        format!("%20{id}"),
        format!("{id}%20"),
        format!("{id}%0A"),
        format!("%09{id}"),
        format!("%7B{id}%7D"),
        format!("urn:uuid:{id}"),
        simple,
    ] {
        assert_error(
            &format!("id {spelling}"),
            &app.get_json(&format!("/api/sandboxes/{spelling}")).await,
            400,
            "invalid_input",
        );
    }
    let (status, same) = app
        .get_json(&format!("/api/sandboxes/{}", id.to_uppercase()))
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["id"], id);

    assert_error(
        "non-UTF-8 download path",
        &download(&app, id, "/etc/pass%FFwd").await,
        400,
        "invalid_input",
    );
    assert_error(
        "repeated status",
        &app.get_json("/api/sandboxes?status=all&status=running")
            .await,
        400,
        "invalid_input",
    );
    app.shutdown().await;
}

// --- Files are never destroyed nor renamed (issue 13) -------------------------------------

/// Each of these answered 200 and lost or moved the user's data: an upload named like an
/// existing directory replaced the directory and everything in it; one under a regular
/// file was a 500; names were cut to what followed a backslash and lost their spaces.
#[tokio::test]
async fn an_upload_never_replaces_a_directory_nor_stores_a_file_under_another_name() {
    let Some((app, id)) = app_with_a_sandbox().await else {
        return;
    };
    let out = app
        .exec_ok(
            &id,
            "mkdir -p /workspace/keep && echo precious > /workspace/keep/data.txt && \
             echo plain > /workspace/file",
        )
        .await;
    assert_eq!(out["exitCode"], 0, "{out}");
    assert_error(
        "upload over a directory",
        &upload(&app, &id, Some("/workspace"), "keep").await,
        409,
        "is_directory",
    );
    assert_error(
        "upload under a regular file",
        &upload(&app, &id, Some("/workspace/file"), "x.txt").await,
        409,
        "not_a_directory",
    );
    app.assert_output(
        &id,
        "cat /workspace/keep/data.txt /workspace/file",
        "precious\nplain\n",
    )
    .await;

    for name in ["back\\slash.txt", " lead.txt", "trail.txt ", "quote\"d.txt"] {
        let (status, body) = upload(&app, &id, Some("/workspace/names"), name).await;
        assert_eq!(status, StatusCode::OK, "{name:?}: {body}");
        assert_eq!(body["path"], format!("/workspace/names/{name}"), "{name:?}");
    }
    app.assert_output(
        &id,
        "for f in /workspace/names/*; do printf '[%s]' \"${f##*/}\"; done",
        "[ lead.txt][back\\slash.txt][quote\"d.txt][trail.txt ]",
    )
    .await;
    for (name, what) in [
        ("a/b.txt", "a /"),
        ("tab\tname", "a control character"),
        ("..", ".."),
    ] {
        let answer = upload(&app, &id, Some("/workspace/names"), name).await;
        assert_error(&format!("upload of {what}"), &answer, 400, "invalid_path");
    }
    app.assert_output(&id, "ls /workspace/names | wc -l", "4\n")
        .await;

    // A file that was there keeps its permission bits; a new one is 0644.
    let out = app
        .exec_ok(
            &id,
            "printf '#!/bin/sh\\necho old\\n' > /workspace/run.sh && chmod 750 /workspace/run.sh",
        )
        .await;
    assert_eq!(out["exitCode"], 0, "{out}");
    let (status, body) = upload(&app, &id, Some("/workspace"), "run.sh").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.assert_output(
        &id,
        "stat -c '%a %s' /workspace/run.sh /workspace/names/' lead.txt'",
        "750 5\n644 5\n",
    )
    .await;

    // A missing file and a missing sandbox are told apart by their codes.
    assert_error(
        "download of a missing file",
        &download(&app, &id, "/workspace/nope").await,
        404,
        "file_not_found",
    );
    assert_error(
        "download of a directory",
        &download(&app, &id, "/workspace/keep").await,
        409,
        "is_directory",
    );
    assert_error(
        "download from a missing sandbox",
        &download(
            &app,
            "00000000-0000-4000-8000-000000000000",
            "/workspace/file",
        )
        .await,
        404,
        "not_found",
    );
    app.shutdown().await;
}

// --- Engine refusals, kernel file systems, engine files (items 4 and 5) ----------------------

#[tokio::test]
async fn the_engines_file_refusals_are_the_clients_4xx_never_a_500() {
    for agent in [AgentMode::Off, AgentMode::On] {
        if !file_refusals_through(agent).await {
            return;
        }
    }
}

/// The refusals of the file routes, on the engine's path (`Off`) or the agent's (`On`):
/// `false` when there is no Docker engine.
async fn file_refusals_through(agent: AgentMode) -> bool {
    let Some(app) = TestApp::spawn(Store::Sqlite, |args| args.agent = agent).await else {
        return false;
    };
    let id = app.create(json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = app
        .exec_ok(
            &id,
            "mkdir -p /workspace && cd /workspace && echo hi > reg && ln -s /proc/1/root p1 && \
             ln -s /proc/self/cwd cwd && ln -s loop1 loop2 && ln -s loop2 loop1",
        )
        .await;
    assert_eq!(out["exitCode"], 0, "{out}");
    let long = "a".repeat(300);
    let long_dir = format!("/workspace/{long}");
    let uploads: [(&str, &str, u16, &str); 8] = [
        (&long_dir, "x.txt", 400, "invalid_input"),
        ("/workspace", &long, 400, "invalid_path"),
        ("/workspace/reg", "x.txt", 409, "not_a_directory"),
        ("/etc", "hosts", 400, "invalid_input"),
        ("/etc", "hostname", 400, "invalid_input"),
        ("/etc/hostname", "x.txt", 400, "invalid_input"),
        ("/workspace/loop1", "x.txt", 404, "file_not_found"),
        ("/workspace/reg/deeper", "x.txt", 409, "not_a_directory"),
    ];
    for (dir, name, want, code) in uploads {
        let what = format!("upload {name:.20} into {dir:.40}");
        assert_error(&what, &upload(&app, &id, Some(dir), name).await, want, code);
    }
    // A link into /proc: the engine resolves it in the image's file system, where /proc is
    // empty; the agent, inside the sandbox, as the sandbox's own shell would (/proc/1/root is
    // the sandbox's root, /proc/self/cwd the agent's working directory, the workspace).
    for (dir, lands_at) in [
        ("/workspace/p1", "/x.txt"),
        ("/workspace/cwd", "/workspace/x.txt"),
    ] {
        let what = format!("upload x.txt into {dir} ({agent:?})");
        let answer = upload(&app, &id, Some(dir), "x.txt").await;
        if agent == AgentMode::On {
            assert_eq!(answer.0, StatusCode::OK, "{what}: {}", answer.1);
            let shown = app
                .exec_ok(&id, &format!("cat {lands_at} && rm {lands_at}"))
                .await;
            assert_eq!(shown["stdout"], "hello", "{what}: {shown}");
        } else {
            assert_error(&what, &answer, 404, "file_not_found");
        }
    }
    let downloads: [(&str, u16, &str); 5] = [
        ("/workspace/loop1", 404, "file_not_found"),
        ("/workspace/loop1/x", 404, "file_not_found"),
        ("/etc/hostname/x", 409, "not_a_directory"),
        ("/workspace/reg/x", 409, "not_a_directory"),
        (&long_dir, 400, "invalid_input"),
    ];
    for (path, want, code) in downloads {
        let what = format!("download {path:.40}");
        let answer = download(&app, &id, &encode(path)).await;
        assert_error(&what, &answer, want, code);
        let message = answer.1["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("overlay2"),
            "{what} leaks a host path: {message}"
        );
    }
    let through_link = download(&app, &id, &encode("/workspace/p1/etc/passwd")).await;
    if agent == AgentMode::On {
        assert_eq!(through_link.0, StatusCode::OK, "{}", through_link.1);
        let text = through_link.1.as_str().unwrap_or_default();
        assert!(text.starts_with("root:"), "the sandbox's passwd: {text:?}");
    } else {
        assert_error(
            "download through /proc",
            &through_link,
            404,
            "file_not_found",
        );
    }
    // The sandbox is still what it was: running, its files intact.
    app.assert_output(
        &id,
        "cat /workspace/reg /etc/hostname >/dev/null && echo ok",
        "ok\n",
    )
    .await;
    app.shutdown().await;
    true
}

#[tokio::test]
async fn kernel_file_systems_and_engine_files_are_refused_and_the_sandbox_keeps_working() {
    let Some((app, id)) = app_with_a_sandbox().await else {
        return;
    };
    for dir in [
        "/proc",
        "/proc/1",
        "/sys",
        "/dev",
        "/dev/shm",
        "/etc/passwd",
        "/etc/group",
    ] {
        assert_error(
            &format!("upload into {dir}"),
            &upload(&app, &id, Some(dir), "x.txt").await,
            400,
            "invalid_input",
        );
    }
    for path in [
        "/proc/self/status",
        "/sys/kernel/hostname",
        "/dev/null",
        "/dev/shm/x",
    ] {
        assert_error(
            &format!("download {path}"),
            &download(&app, &id, &encode(path)).await,
            400,
            "invalid_input",
        );
    }
    // Nothing landed under the mounts, and /etc/passwd is still a file: commands still run.
    app.assert_output(
        &id,
        "test -f /etc/passwd && ! test -e /dev/shm/x.txt && echo fine",
        "fine\n",
    )
    .await;
    // An ordinary upload still works.
    let (status, body) = upload(&app, &id, Some("/workspace/data"), "x.txt").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.shutdown().await;
}

// --- Execute racing delete (item 2) -------------------------------------------------------

async fn execute_racing_delete_answers_200_or_409_only(store: Store) {
    let Some(app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let mut answers: Vec<(u16, String)> = Vec::new();
    for round in 0..4 {
        let sandbox = app.create(json!({"name": format!("race-{round}")})).await;
        let id = sandbox["id"].as_str().unwrap().to_owned();
        let mut workers = Vec::new();
        for _ in 0..8 {
            let (api, id) = (app.at(&app.base), id.clone());
            workers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                // Until the sandbox answers that it ended; bounded.
                for _ in 0..200 {
                    let (status, body) = api.exec(&id, "echo x").await;
                    let status = status.as_u16();
                    seen.push((status, body.to_string()));
                    if status != 200 {
                        break;
                    }
                }
                seen
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + 50 * round)).await;
        assert_eq!(app.delete(&id).await, StatusCode::NO_CONTENT);
        for worker in workers {
            answers.extend(worker.await.unwrap());
        }
    }
    let bad: Vec<&(u16, String)> = answers
        .iter()
        .filter(|(status, _)| *status != 200 && *status != 409)
        .collect();
    assert!(bad.is_empty(), "answers other than 200/409: {bad:#?}");
    assert!(
        answers.iter().any(|(status, _)| *status == 409),
        "no execute ever met the deleted sandbox"
    );
    app.shutdown().await;
}

// --- Slow bodies (item 6) ------------------------------------------------------------------

/// Sends `head`, then `body` one byte per `pace`, and returns what the server answered (its
/// first line), or `None` if it closed without an answer. Bounded by `limit`.
async fn trickle(
    addr: &str,
    head: String,
    body: Vec<u8>,
    pace: Duration,
    limit: Duration,
) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for byte in body {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(pace).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    let finished = tokio::time::timeout(limit, read_all).await.is_ok();
    writer.abort();
    assert!(
        finished,
        "the server neither answered nor closed within {limit:?}"
    );
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().map(str::to_owned)
}

#[tokio::test]
async fn slow_bodies_are_cut_with_408_within_their_bound() {
    let Some(app) = TestApp::spawn(Store::Sqlite, |args| {
        args.body_timeout = Duration::from_secs(2);
        args.upload_min_rate = 1024;
    })
    .await
    else {
        return;
    };
    let sandbox = app.create(json!({})).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let addr = app.addr();
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..12 {
        let addr = addr.clone();
        let id = id.clone();
        slow.push(tokio::spawn(async move {
            let (head, body) = if i % 2 == 0 {
                let body = br#"{"command":"echo never"}"#.to_vec();
                let head = format!(
                    "POST /api/sandboxes/{id}/execute HTTP/1.1\r\nHost: x\r\n\
                     Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                );
                (head, body)
            } else {
                let (content_type, body) = multipart(&[("file", Some("slow.bin"), &[b'x'; 4096])]);
                let head = format!(
                    "POST /api/sandboxes/{id}/files/upload HTTP/1.1\r\nHost: x\r\n\
                     Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: {content_type}\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                );
                (head, body)
            };
            trickle(
                &addr,
                head,
                body,
                Duration::from_millis(700),
                Duration::from_secs(20),
            )
            .await
        }));
    }
    for (i, conn) in slow.into_iter().enumerate() {
        let line = conn.await.unwrap();
        let line = line.unwrap_or_default();
        assert!(line.contains(" 408 "), "connection {i}: {line:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "slow bodies held their requests for {:?}",
        started.elapsed()
    );
    // A body at a normal pace still goes through, and nothing slow ran.
    app.assert_output(&id, "ls /workspace; echo done", "done\n")
        .await;
    app.shutdown().await;
}

// --- Memory per execute (item 9) -------------------------------------------------------------

/// This process's peak resident memory, in bytes (nextest runs each test in a process of its
/// own, so it is this test's server).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_flood_of_output_holds_about_twice_the_cap_and_the_budget_bounds_the_rest() {
    const CAP: u64 = 16 * 1024 * 1024;
    let Some(app) = TestApp::spawn(Store::Sqlite, |args| {
        args.exec_output_budget = 4 * CAP;
    })
    .await
    else {
        return;
    };
    let sandbox = app.create(json!({})).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let (status, _) = app.exec(&id, "echo warm").await;
    assert_eq!(status, StatusCode::OK);
    let before = peak_rss();
    let response = app
        .client
        .post(app.url(&format!("/api/sandboxes/{id}/execute")))
        .json(&json!({"command": "yes | head -c 268435456", "max_output_bytes": CAP}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Read and drop: the client keeps only the size and a window to find the exit code in.
    let marker = br#""exitCode":0,"truncated":true,"stdout":"y"#;
    let mut size = 0u64;
    let mut window = Vec::new();
    let mut found = false;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        size += chunk.len() as u64;
        window.extend_from_slice(&chunk);
        found |= window.windows(marker.len()).any(|w| w == marker);
        window.drain(..window.len().saturating_sub(marker.len()));
    }
    assert!(found, "no exit code 0 with truncated output in the answer");
    assert!(
        size > 2 * CAP,
        "output and stdout both carry the capped text: {size}"
    );
    let growth = peak_rss().saturating_sub(before);
    eprintln!("peak memory grew by {} MiB", growth >> 20);
    assert!(
        growth < 5 * CAP / 2,
        "one execute raised peak memory by {} MiB with a {} MiB cap",
        growth >> 20,
        CAP >> 20
    );

    // Two such executes fill the budget of 4 × cap; a third is refused at once, and runs once
    // they are done.
    let hold = |secs: u32| {
        let client = app.client.clone();
        let url = app.url(&format!("/api/sandboxes/{id}/execute"));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"command": format!("sleep {secs}"), "max_output_bytes": CAP}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let first = hold(3);
    let second = hold(3);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let refused = execute_json(
        &app,
        &id,
        json!({"command": "echo no", "max_output_bytes": CAP}),
    )
    .await;
    assert_error("over the budget", &refused, 503, "unavailable");
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    let (status, out) = execute_json(
        &app,
        &id,
        json!({"command": "echo yes", "max_output_bytes": CAP}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["output"], "yes\n");
    app.shutdown().await;
}

on_both_stores!(
    nul_bytes_in_every_text_field_are_a_400_and_nothing_runs_or_is_stored,
    execute_racing_delete_answers_200_or_409_only,
);

// --- Idle connections --------------------------------------------------------------------

/// A client that pauses between two requests (an agent waiting for its model) reuses its
/// connection: the server keeps it open well past actix's default of 5 s, which closed it
/// under the client's next request, answered by nothing.
#[tokio::test]
async fn a_connection_idle_for_seconds_still_takes_the_next_request() {
    let Some(app) = TestApp::spawn(Store::Sqlite, |_| {}).await else {
        return;
    };
    let mut stream = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    let request = b"GET /health HTTP/1.1\r\nHost: monza\r\n\r\n";
    for round in 0..2 {
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while !answer.ends_with(b"{\"status\":\"ok\"}") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "round {round}: no answer within 10 s");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("{\"status\":\"ok\"}"),
            "round {round}: {text:?}"
        );
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
    }
    app.shutdown().await;
}
