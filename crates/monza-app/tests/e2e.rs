#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End to end: the real `Application` on a loopback port, against the real Docker engine,
//! once with SQLite and once with PostgreSQL, driven over HTTP like a client would.

#[macro_use]
mod support;

use std::time::Duration;

use monza_app::settings::{AgentMode, ServeArgs};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Lines, NewImages, Store, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server on `store` with the agent `agent`, and the id of a sandbox created on it.
async fn with_a_sandbox(store: Store, agent: AgentMode) -> Option<(TestApp, String)> {
    let app = TestApp::spawn(store, |args| args.agent = agent).await?;
    let id = app.create(json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    Some((app, id))
}

/// A server whose sandboxes expire after `ttl_secs` idle, with the reaper passing every
/// second.
fn reaping_after(ttl_secs: u64) -> impl FnOnce(&mut ServeArgs) {
    move |args| {
        args.sandbox_ttl = Duration::from_secs(ttl_secs);
        args.reaper_interval = Duration::from_secs(1);
    }
}

/// `sandbox` as it stands in `list` (a JSON array of sandboxes), if it does.
fn listed<'a>(list: &'a Value, sandbox: &Value) -> Option<&'a Value> {
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == sandbox["id"])
}

/// Asserts a create of `template` is refused with a 4xx whose message contains `needle`.
async fn create_refused(app: &TestApp, template: &str, needle: &str) {
    let (status, body) = app
        .post_json("/api/sandboxes", json!({ "template": template }))
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(needle), "{needle:?} missing: {body}");
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
    assert!(listed(&list, &sandbox).is_some());

    // Execute: output in order, exit code, stderr, truncation.
    let out = app
        .exec_ok(
            &id,
            "echo out; sleep 0.3; echo err >&2; sleep 0.3; echo $((6*7)); exit 3",
        )
        .await;
    assert_eq!(out["exitCode"], 3);
    assert_eq!(out["output"], "out\nerr\n42\n");
    assert_eq!(out["stderr"], "err\n");
    assert_eq!(out["truncated"], false);
    let (_, out) = app
        .post_json(
            &format!("/api/sandboxes/{id}/execute"),
            json!({ "command": "head -c 100000 /dev/zero | tr '\\0' a", "max_output_bytes": 1000 }),
        )
        .await;
    assert_eq!(out["truncated"], true);
    assert_eq!(out["output"].as_str().unwrap().len(), 1000);
    app.assert_output(&id, "pwd", "/workspace\n").await;
    // The sandbox's agent listens in a directory of its own while it lives.
    let agent_dir = app.args.agent_dir.join(&id);
    assert!(agent_dir.join("agent.sock").exists(), "{agent_dir:?}");

    // Heartbeat moves expires_at forward.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.heartbeat(&id).await, StatusCode::NO_CONTENT);
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
    let (status, body) = app
        .send(
            app.client
                .post(app.url(&format!("/api/sandboxes/{id}/files/upload")))
                .multipart(form),
        )
        .await;
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
    assert_eq!(
        body["error"]["code"], "file_not_found",
        "not the sandbox's not_found"
    );
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
    // The message lists the available templates.
    create_refused(&app, "no-such-template", "busybox").await;
    let (status, body) = app
        .post_json("/api/sandboxes", json!({"template": "../etc"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Delete: container gone, idempotent, then activity is a conflict.
    assert_eq!(app.delete(&id).await, StatusCode::NO_CONTENT);
    assert!(!app.container_exists(&container_id).await);
    assert!(!agent_dir.exists(), "{agent_dir:?} outlived its sandbox");
    assert_eq!(app.delete(&id).await, StatusCode::NO_CONTENT);
    // Gone from its own address (and its events), still listed with ?status=deleted.
    let (status, body) = app.get_json(&format!("/api/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = app.get_json(&format!("/api/sandboxes/{id}/events")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, deleted) = app.get_json("/api/sandboxes?status=deleted").await;
    let deleted = listed(&deleted, &sandbox).unwrap();
    assert_eq!(deleted["status"], "deleted");
    assert!(deleted["deleted_at"].is_string());
    assert_eq!(app.heartbeat(&id).await, StatusCode::CONFLICT);
    let (_, list) = app.get_json("/api/sandboxes").await;
    assert!(listed(&list, &sandbox).is_none());
    let (_, all) = app.get_json("/api/sandboxes?status=all").await;
    assert!(listed(&all, &sandbox).is_some());
    app.shutdown().await;
}

/// 200 executes at once on one sandbox, through the agent and through Docker exec: each
/// answers with its own output and exit code.
async fn two_hundred_concurrent_executes_all_answer_correctly(store: Store) {
    for agent in [AgentMode::On, AgentMode::Off] {
        let Some((app, id)) = with_a_sandbox(store, agent).await else {
            return;
        };
        let answers = futures::future::join_all((0..200).map(|i| {
            let (app, id) = (&app, &id);
            async move {
                let command = format!("echo out-{i}; echo err-{i} >&2; exit {}", i % 7);
                (i, app.exec(id, &command).await)
            }
        }))
        .await;
        for (i, (status, out)) in answers {
            assert_eq!(status, StatusCode::OK, "{agent:?} #{i}: {out}");
            assert_eq!(out["stdout"], format!("out-{i}\n"), "{agent:?} #{i}: {out}");
            assert_eq!(out["stderr"], format!("err-{i}\n"), "{agent:?} #{i}: {out}");
            assert_eq!(out["exitCode"], i % 7, "{agent:?} #{i}: {out}");
        }
        app.shutdown().await;
    }
}

/// A command running longer than the idle TTL keeps its sandbox alive while it runs,
/// buffered or streamed, however long it takes.
async fn a_long_command_outlives_the_idle_ttl(store: Store) {
    let Some(app) = TestApp::spawn(store, reaping_after(2)).await else {
        return;
    };
    let id = app.create(json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Three TTLs without a heartbeat; the reaper passes every second meanwhile.
    let out = app.exec_ok(&id, "sleep 6; echo done").await;
    assert_eq!(out["output"], "done\n", "{out}");
    assert_eq!(app.status_of(&id).await, "running");
    let response = app
        .client
        .post(app.url(&format!("/api/sandboxes/{id}/execute")))
        .header("accept", "application/x-ndjson")
        .json(&json!({"command": "sleep 6; echo streamed"}))
        .send()
        .await
        .unwrap();
    let mut lines = Lines::of(response);
    let mut last = Value::Null;
    while let Some(line) = lines.next().await {
        last = line;
    }
    assert_eq!(
        (&last["type"], &last["exitCode"]),
        (&json!("exit"), &json!(0)),
        "{last}"
    );
    assert_eq!(app.status_of(&id).await, "running");
    // Idle again, it expires as before.
    let mut expired = false;
    for _ in 0..40 {
        if app.status_of(&id).await == "expired" {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(expired, "the idle sandbox did not expire after its command");
    app.shutdown().await;
}

/// Execute streamed as NDJSON and as SSE, through the agent and through Docker exec: the
/// first chunk comes while the command still runs, and a client that goes away takes the
/// command with it.
async fn execute_streams(store: Store) {
    for agent in [AgentMode::On, AgentMode::Off] {
        let Some((app, id)) = with_a_sandbox(store, agent).await else {
            return;
        };
        let execute = app.url(&format!("/api/sandboxes/{id}/execute"));
        let stream = |accept: &'static str, command: &str| {
            app.client
                .post(&execute)
                .header("accept", accept)
                .json(&json!({ "command": command }))
                .send()
        };

        // It waits for a file the test creates only once it has read the first line.
        let gate = "i=0; while [ ! -e /workspace/gate ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done";
        let response = stream(
            "application/x-ndjson",
            &format!("echo first; {gate}; echo last >&2"),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let mut lines = Lines::of(response);
        assert_eq!(
            lines.next().await,
            Some(json!({"type": "stdout", "data": "first\n"})),
            "{agent:?}"
        );
        app.exec_ok(&id, "touch /workspace/gate").await;
        assert_eq!(
            lines.next().await,
            Some(json!({"type": "stderr", "data": "last\n"})),
            "{agent:?}"
        );
        let exit = lines.next().await.unwrap();
        assert_eq!(
            (&exit["type"], &exit["exitCode"]),
            (&json!("exit"), &json!(0)),
            "{exit}"
        );
        assert_eq!(lines.next().await, None);

        let sse = stream("text/event-stream", "printf x").await.unwrap();
        assert_eq!(sse.headers()["content-type"], "text/event-stream");
        let text = sse.text().await.unwrap();
        assert!(text.starts_with("event: stdout\ndata: {"), "{text}");
        assert!(text.contains("event: exit\ndata: {"), "{text}");

        // The client leaves: the command and what it started are killed.
        let response = stream(
            "application/x-ndjson",
            "sleep 303 & echo started; sleep 304",
        )
        .await
        .unwrap();
        let mut lines = Lines::of(response);
        assert_eq!(lines.next().await.unwrap()["data"], "started\n");
        drop(lines);
        let mut left = String::new();
        for _ in 0..100 {
            let out = app
                .exec_ok(&id, "ps -o args | grep -c 'sleep 30[34]' || true")
                .await;
            left = out["stdout"].as_str().unwrap().trim().to_owned();
            if left == "0" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(left, "0", "{agent:?}: the command outlived its client");
        app.shutdown().await;
    }
}

/// Execute's fuller request, through the agent and through Docker exec alike: stdin fed
/// then closed, a body past the old 64 KiB limit, `timeout_secs: 0` as the server's maximum,
/// a timeout's 124, and a cut that never splits a character.
async fn execute_in_full(store: Store) {
    for agent in [AgentMode::On, AgentMode::Off] {
        let Some((app, id)) = with_a_sandbox(store, agent).await else {
            return;
        };
        let execute = format!("/api/sandboxes/{id}/execute");
        let run = |body: Value| app.post_json(&execute, body);

        let (status, out) = run(json!({"command": "cat; echo .", "stdin": "a\nb\n"})).await;
        assert_eq!(status, StatusCode::OK, "{agent:?}: {out}");
        assert_eq!(out["output"], "a\nb\n.\n", "{agent:?}");

        // A DeepAgents-sized edit in the command line and most of a MiB on stdin.
        let edit = "QUJD".repeat(25_000);
        let stdin = "é".repeat(400 * 1024);
        let command = format!("echo {edit} | base64 -d | wc -c; wc -c");
        let (status, out) = run(json!({"command": command, "stdin": stdin})).await;
        assert_eq!(status, StatusCode::OK, "{agent:?}: {out}");
        let counts: Vec<&str> = out["stdout"].as_str().unwrap().split_whitespace().collect();
        assert_eq!(counts, ["75000", "819200"], "{agent:?}: {out}");

        let (status, out) = run(json!({"command": "echo quick", "timeout_secs": 0})).await;
        assert_eq!(status, StatusCode::OK, "{agent:?}: {out}");
        assert_eq!(
            (&out["exitCode"], &out["timed_out"]),
            (&json!(0), &json!(false))
        );

        let (status, out) =
            run(json!({"command": "echo started; sleep 30", "timeout_secs": 1})).await;
        assert_eq!(status, StatusCode::OK, "{agent:?}: {out}");
        assert_eq!(out["exitCode"], 124, "{agent:?}: {out}");
        assert_eq!(out["timed_out"], true);
        assert_eq!(out["output"], "started\n");

        // "é" is two bytes: a cap of 5 falls inside the third one, which is left out whole.
        let (status, out) =
            run(json!({"command": "printf 'abcd\\303\\251xyz'", "max_output_bytes": 5})).await;
        assert_eq!(status, StatusCode::OK, "{agent:?}: {out}");
        assert_eq!(out["output"], "abcd", "{agent:?}: {out}");
        assert_eq!(out["truncated"], true);
        app.shutdown().await;
    }
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

async fn idle_sandboxes_expire_and_heartbeated_ones_stay(store: Store) {
    let Some(app) = TestApp::spawn(store, reaping_after(3)).await else {
        return;
    };
    let idle = app.create(json!({"name": "idle"})).await;
    let kept = app.create(json!({"name": "kept"})).await;
    let idle_id = idle["id"].as_str().unwrap();
    let kept_id = kept["id"].as_str().unwrap();
    let mut expired = false;
    for _ in 0..20 {
        assert_eq!(app.heartbeat(kept_id).await, StatusCode::NO_CONTENT);
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
    let (status, body) = app.exec(idle_id, "true").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    app.delete(kept_id).await;
    app.shutdown().await;
}

async fn a_restarted_server_serves_live_sandboxes(store: Store) {
    let Some(app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let sandbox = app.create(json!({})).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    app.exec_ok(&id, "echo before > /workspace/state").await;
    let app = app.restart().await;
    app.assert_output(&id, "cat /workspace/state", "before\n")
        .await;
    assert_eq!(app.status_of(&id).await, "running");
    app.delete(&id).await;
    app.shutdown().await;
}

/// Templates end to end: lifecycle hooks run in order, a failing hook leaves the sandbox in
/// `error` with its output in the event log and no container, a built template is built once
/// and reused, and the environment and workspace folder reach commands.
#[tokio::test]
async fn templates_shape_the_sandbox_end_to_end() {
    // The build below is this test's own image: removed at the end like its containers.
    let _built = NewImages::of("monza-build/busybox-build");
    let Some(app) = TestApp::spawn(Store::Sqlite, |_| {}).await else {
        return;
    };
    let hooks = app.create(json!({"template": "busybox-hooks"})).await;
    let out = app
        .exec_ok(hooks["id"].as_str().unwrap(), "cat /tmp/hooks.log")
        .await;
    assert_eq!(
        out["output"], "onCreate\npostCreate-a\npostCreate-b\npostStart\n",
        "{out}"
    );

    create_refused(&app, "busybox-failing-hook", "exited with code 3").await;
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
        .runtime()
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
        .exec_ok(
            second["id"].as_str().unwrap(),
            "cat /etc/monza-build-greeting",
        )
        .await;
    assert_eq!(out["exitCode"], 0, "{out}");

    let env = app.create(json!({"template": "busybox-env"})).await;
    assert_eq!(env["workspace_mount"], "/work/project");
    let out = app
        .exec_ok(
            env["id"].as_str().unwrap(),
            "pwd; echo $MONZA_TEST_VAR; echo $MONZA_REMOTE_VAR",
        )
        .await;
    assert_eq!(
        out["output"], "/work/project\nfrom-container-env\nfrom-remote-env\n",
        "{out}"
    );

    for sandbox in [&hooks, &first, &second, &env] {
        app.delete(sandbox["id"].as_str().unwrap()).await;
    }
    app.shutdown().await;
}

/// How many creates [`race_creates`] sends at once, and the tenant limit they race for.
const SIMULTANEOUS_CREATES: usize = 50;
const LIMIT: u64 = 10;

/// [`SIMULTANEOUS_CREATES`] creates at once, spread over `bases` (one server or several
/// replicas): exactly [`LIMIT`] get 201 and the rest 429 naming the limit, the engine runs
/// exactly [`LIMIT`] containers (those of the created sandboxes), and the store lists exactly
/// [`LIMIT`] live sandboxes. Deletes what it made.
async fn race_creates(app: &TestApp, bases: &[String]) {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(SIMULTANEOUS_CREATES));
    let creates: Vec<_> = (0..SIMULTANEOUS_CREATES)
        .map(|i| {
            let api = app.at(&bases[i % bases.len()]);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                // A 503 (the database slow to take a new connection under this burst on a
                // loaded machine) is what a client retries; the limit is what is tested.
                let mut answer = (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
                for attempt in 0..5 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    answer = api
                        .post_json("/api/sandboxes", json!({"template": "busybox"}))
                        .await;
                    if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
                        break;
                    }
                }
                answer
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut refused = 0;
    for create in creates {
        let (status, body) = create.await.unwrap();
        match status {
            StatusCode::CREATED => created.push(body["id"].as_str().unwrap().to_owned()),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(&format!("the limit is {LIMIT}")),
                    "{message}"
                );
                refused += 1;
            }
            other => panic!("create answered {other}: {body}"),
        }
    }
    let containers = app.runtime().list_managed().await.unwrap();
    let (_, live) = app.get_json("/api/sandboxes").await;
    for id in &created {
        app.delete(id).await;
    }
    assert_eq!(
        (created.len(), refused),
        (LIMIT as usize, SIMULTANEOUS_CREATES - LIMIT as usize),
        "201s and 429s"
    );
    assert_eq!(
        containers.len(),
        LIMIT as usize,
        "containers: {containers:?}"
    );
    for container in &containers {
        let owner = container.sandbox_id.map(|id| id.to_string());
        assert!(
            owner.as_ref().is_some_and(|id| created.contains(id)),
            "container {} of {owner:?} belongs to no created sandbox",
            container.id
        );
    }
    assert_eq!(live.as_array().unwrap().len(), LIMIT as usize, "{live}");
    assert!(
        app.runtime().list_managed().await.unwrap().is_empty(),
        "deleted sandboxes left containers"
    );
}

async fn the_tenant_limit_holds_under_simultaneous_creates(store: Store) {
    let Some(app) = TestApp::spawn(store, |args| {
        args.max_sandboxes_per_tenant = LIMIT;
    })
    .await
    else {
        return;
    };
    race_creates(&app, std::slice::from_ref(&app.base)).await;
    app.shutdown().await;
}

/// Two replicas on one PostgreSQL database, the creates split between them: the limit is
/// one decision across both.
#[tokio::test]
async fn the_tenant_limit_holds_across_two_replicas_on_one_postgres() {
    let Some(app) = TestApp::spawn(Store::Postgres, |args| {
        args.max_sandboxes_per_tenant = LIMIT;
    })
    .await
    else {
        return;
    };
    let second = app.replica().await;
    race_creates(&app, &[app.base.clone(), second.base.clone()]).await;
    second.stop().await;
    app.shutdown().await;
}

on_both_stores!(
    a_long_command_outlives_the_idle_ttl,
    two_hundred_concurrent_executes_all_answer_correctly,
    execute_in_full,
    execute_streams,
    every_route,
    forwarded_ports_accept_connections,
    idle_sandboxes_expire_and_heartbeated_ones_stay,
    a_restarted_server_serves_live_sandboxes,
    the_tenant_limit_holds_under_simultaneous_creates,
);
