#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Background processes end to end: the real server, the real engine, the agent in a
//! busybox sandbox, on SQLite and on PostgreSQL, driven over HTTP: every route, the sandbox
//! kept alive by a `keep_alive` process, and a process that outlives `kill -9` of the
//! server and is read on after the restart from where the client stopped.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use monza_app::settings::AgentMode;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{ChildServer, DeploymentContainers, Lines, PgDatabase, Store, TestApp, assert_error};

/// `GET …/processes/{pid}/output?{query}` as NDJSON lines.
async fn output(app: &support::Api, id: &str, pid: u64, query: &str) -> Lines {
    let response = app
        .client
        .get(app.url(&format!(
            "/api/sandboxes/{id}/processes/{pid}/output?{query}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    Lines::of(response)
}

/// Every line of an output to its end: (stdout, stderr, the last event).
async fn read_all(mut lines: Lines) -> (String, String, Value) {
    let (mut out, mut err) = (String::new(), String::new());
    loop {
        let line = lines.next().await.expect("a last event");
        match line["type"].as_str().unwrap() {
            "stdout" => out.push_str(line["data"].as_str().unwrap()),
            "stderr" => err.push_str(line["data"].as_str().unwrap()),
            "keepalive" => {}
            _ => {
                assert_eq!(lines.next().await, None, "nothing after the last event");
                return (out, err, line);
            }
        }
    }
}

async fn start(app: &support::Api, id: &str, body: Value) -> Value {
    let (status, process) = app
        .post_json(&format!("/api/sandboxes/{id}/processes"), body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{process}");
    process
}

/// Every route of the resource, with its errors, on the busybox image (no libc) and on the
/// Debian one (glibc, dash, a non-root user).
async fn every_process_route(store: Store) {
    for template in ["busybox", "debian"] {
        every_process_route_on(store, template).await;
    }
}

/// Processes still running whose command line matches the (grep) `pattern`, found in
/// `/proc` (Debian's minimal image has no `ps`).
async fn running_matching(app: &support::Api, id: &str, pattern: &str) -> String {
    let out = app
        .exec_ok(
            id,
            &format!(
                "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done \
                 | grep -c '{pattern}' || true"
            ),
        )
        .await;
    out["stdout"].as_str().unwrap().trim().to_owned()
}

async fn every_process_route_on(store: Store, template: &str) {
    let Some(app) = TestApp::spawn(store, |args| args.agent = AgentMode::On).await else {
        return;
    };
    let id = app.create(json!({ "template": template })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("/api/sandboxes/{id}/processes");

    // Started with stdin open: its output streams while it waits for a line.
    let response = app
        .client
        .post(app.url(&base))
        .json(&json!({
            "command": "echo out; echo err >&2; read line; echo \"got $line\"; exit 3",
            "stdin": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let process: Value = response.json().await.unwrap();
    let pid = process["pid"].as_u64().unwrap();
    assert_eq!(location, format!("{base}/{pid}"));
    assert_eq!(process["status"], "running", "{process}");
    assert_eq!(process["stdin_open"], true);
    assert_eq!(process["exit_code"], Value::Null);

    let mut lines = output(&app, &id, pid, "follow=true").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = lines.next().await.unwrap();
        if line["type"] != "keepalive" {
            seen.push(line);
        }
    }
    seen.sort_by_key(|l| l["type"].as_str().unwrap().to_owned());
    assert_eq!(
        seen,
        [
            json!({"type": "stderr", "offset": 0, "data": "err\n"}),
            json!({"type": "stdout", "offset": 0, "data": "out\n"}),
        ]
    );
    let (status, listed) = app.get_json(&base).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed.as_array().unwrap().iter().any(|p| p["pid"] == pid),
        "{listed}"
    );
    let written = app
        .client
        .post(app.url(&format!("{base}/{pid}/stdin?close=true")))
        .body("hi\n")
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), StatusCode::NO_CONTENT);
    let (out, _, exit) = read_all(lines).await;
    assert_eq!(out, "got hi\n");
    assert_eq!(exit["type"], "exit", "{exit}");
    assert_eq!(exit["exitCode"], 3);
    assert_eq!(
        (&exit["stdout_offset"], &exit["stderr_offset"]),
        (&json!(11), &json!(4))
    );

    let (status, process) = app.get_json(&format!("{base}/{pid}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(process["status"], "exited");
    assert_eq!(process["exit_code"], 3);
    assert_eq!(process["stdout"], json!({"start": 0, "end": 11}));
    assert_eq!(process["stdin_open"], false);
    // Read on from an offset, not following: exactly the rest, then the exit.
    let (out, err, last) =
        read_all(output(&app, &id, pid, "stdout_offset=4&stderr_offset=4").await).await;
    assert_eq!((out.as_str(), err.as_str()), ("got hi\n", ""));
    assert_eq!(last["type"], "exit");

    // Not following a running one: what there is, then where to read on from.
    let talker = start(&app, &id, json!({"command": "echo hello; exec sleep 300"})).await;
    let tpid = talker["pid"].as_u64().unwrap();
    let mut caught = Value::Null;
    for _ in 0..100 {
        let (out, _, last) = read_all(output(&app, &id, tpid, "").await).await;
        caught = last;
        if out == "hello\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        caught,
        json!({"type": "caught_up", "stdout_offset": 6, "stderr_offset": 0})
    );
    // Signalled (any case, with or without SIG): its group ends, and says how.
    let (status, _) = app
        .post_json(
            &format!("{base}/{tpid}/signal"),
            json!({"signal": "sigterm"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, exit) = read_all(output(&app, &id, tpid, "offset=6&follow=true").await).await;
    assert_eq!(
        (&exit["exitCode"], &exit["signal"]),
        (&json!(143), &json!(15)),
        "{exit}"
    );

    // Following a silent process answers at once, then keeps the line alive.
    let silent = start(&app, &id, json!({"command": "sleep 305"})).await;
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        app.client
            .get(app.url(&format!(
                "{base}/{}/output?follow=true",
                silent["pid"].as_u64().unwrap()
            )))
            .send(),
    )
    .await
    .expect("the answer starts while the process is silent")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut lines = Lines::of(response);
    assert_eq!(lines.next().await, Some(json!({"type": "keepalive"})));
    drop(lines);

    // Deleted: killed with its group and forgotten, its output too.
    let doomed = start(&app, &id, json!({"command": "sleep 301 & sleep 302"})).await;
    let dpid = doomed["pid"].as_u64().unwrap();
    let deleted = app
        .send(app.client.delete(app.url(&format!("{base}/{dpid}"))))
        .await;
    assert_eq!(deleted.0, StatusCode::NO_CONTENT, "{deleted:?}");
    assert_error(
        "a deleted process",
        &app.get_json(&format!("{base}/{dpid}")).await,
        404,
        "not_found",
    );
    assert_error(
        "the output of a deleted process",
        &app.get_json(&format!("{base}/{dpid}/output")).await,
        404,
        "not_found",
    );
    assert_error(
        "a second delete",
        &app.send(app.client.delete(app.url(&format!("{base}/{dpid}"))))
            .await,
        404,
        "not_found",
    );
    // Killed, not forgotten: a KILL signal leaves it listed with its exit.
    let killed = start(&app, &id, json!({"command": "sleep 304"})).await;
    let kpid = killed["pid"].as_u64().unwrap();
    let (status, _) = app
        .post_json(&format!("{base}/{kpid}/signal"), json!({"signal": "KILL"}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, exit) = read_all(output(&app, &id, kpid, "follow=true").await).await;
    assert_eq!(exit["exitCode"], 137, "{exit}");
    assert_eq!(
        running_matching(&app, &id, "^sleep 30[12]").await,
        "0",
        "{template}: the group outlived its delete"
    );

    // A timeout kills it with 124; a small ring says from where it still has output.
    let timed = start(
        &app,
        &id,
        json!({"command": "sleep 303", "timeout_secs": 1}),
    )
    .await;
    let (_, _, exit) =
        read_all(output(&app, &id, timed["pid"].as_u64().unwrap(), "follow=true").await).await;
    assert_eq!(
        (&exit["exitCode"], &exit["timed_out"]),
        (&json!(124), &json!(true)),
        "{exit}"
    );
    let ring = start(
        &app,
        &id,
        json!({"command": "yes 0123456789 | head -c 5000", "output_limit_bytes": 1024, "cwd": "/tmp"}),
    )
    .await;
    let rpid = ring["pid"].as_u64().unwrap();
    // A follower reads as the process writes, so it may get more than the ring keeps (never
    // more than was written), and always the end.
    let (out, _, _) = read_all(output(&app, &id, rpid, "follow=true").await).await;
    assert!(out.len() <= 5000, "{}", out.len());
    // 5000 bytes of `0123456789\n` end in the middle of a line.
    assert!(out.ends_with("\n012345"), "{out:?}");
    let mut lines = output(&app, &id, rpid, "").await;
    assert_eq!(lines.next().await.unwrap()["offset"], 5000 - 1024);
    let (_, process) = app.get_json(&format!("{base}/{rpid}")).await;
    assert_eq!(
        process["stdout"],
        json!({"start": 5000 - 1024, "end": 5000})
    );

    // Bad input: a clear 4xx each, nothing started.
    let bad = [
        (json!({"command": ""}), "invalid_input"),
        (
            json!({"command": "true", "cwd": "relative"}),
            "invalid_input",
        ),
        (
            json!({"command": "true", "output_limit_bytes": 10}),
            "invalid_input",
        ),
        (
            json!({"command": "true", "pty": {"cols": 80, "rows": 24, "x": 1}}),
            "invalid_input",
        ),
        (
            json!({"command": "true", "keep_alive": "yes"}),
            "invalid_input",
        ),
    ];
    for (body, code) in bad {
        let answer = app.post_json(&base, body.clone()).await;
        assert_error(&format!("{body}"), &answer, 400, code);
    }
    assert_error(
        "pid 0",
        &app.get_json(&format!("{base}/0")).await,
        400,
        "invalid_input",
    );
    assert_error(
        "pid abc",
        &app.get_json(&format!("{base}/abc")).await,
        400,
        "invalid_input",
    );
    assert_error(
        "unknown pid",
        &app.get_json(&format!("{base}/999999")).await,
        404,
        "not_found",
    );
    assert_error(
        "unknown query",
        &app.get_json(&format!("{base}/{pid}/output?since=3")).await,
        400,
        "invalid_input",
    );
    assert_error(
        "bad follow",
        &app.get_json(&format!("{base}/{pid}/output?follow=yes"))
            .await,
        400,
        "invalid_input",
    );
    assert_error(
        "bad offset",
        &app.get_json(&format!("{base}/{pid}/output?offset=-1"))
            .await,
        400,
        "invalid_input",
    );
    let answer = app
        .post_json(&format!("{base}/{pid}/signal"), json!({"signal": "STOP"}))
        .await;
    assert_error("signal STOP", &answer, 400, "invalid_input");
    let closed = app
        .send(
            app.client
                .post(app.url(&format!("{base}/{tpid}/stdin")))
                .body("x"),
        )
        .await;
    assert_error("stdin never opened", &closed, 404, "not_found");
    let nowhere = app
        .post_json(&base, json!({"command": "true", "cwd": "/no/such/dir"}))
        .await;
    assert_error("a cwd that does not exist", &nowhere, 404, "file_not_found");
    let other = "00000000-0000-4000-8000-000000000000";
    assert_error(
        "unknown sandbox",
        &app.get_json(&format!("/api/sandboxes/{other}/processes"))
            .await,
        404,
        "not_found",
    );
    let no_token = app
        .send(app.request(reqwest::Method::GET, &base, None))
        .await;
    assert_error("no token", &no_token, 401, "unauthorized");

    app.delete(&id).await;
    let answer = app.get_json(&base).await;
    assert_error("a deleted sandbox", &answer, 409, "conflict");
    app.shutdown().await;

    // Without the agent: refused, saying why.
    let Some(app) = TestApp::spawn(store, |args| args.agent = AgentMode::Off).await else {
        return;
    };
    let id = app.create(json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = app
        .post_json(
            &format!("/api/sandboxes/{id}/processes"),
            json!({"command": "sleep 1"}),
        )
        .await;
    assert_error("MONZA_AGENT=off", &answer, 409, "conflict");
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MONZA_AGENT=off"),
        "{}",
        answer.1
    );
    app.shutdown().await;
}

/// A `keep_alive` process keeps its sandbox past the idle TTL while it runs (nobody uses
/// the sandbox meanwhile); once it ended, the sandbox expires like any idle one. A sandbox
/// whose process is not `keep_alive` expires while the process runs.
async fn a_keep_alive_process_keeps_its_sandbox_past_the_idle_ttl(store: Store) {
    let Some(app) = TestApp::spawn(store, |args| {
        args.agent = AgentMode::On;
        args.sandbox_ttl = Duration::from_secs(3);
        args.reaper_interval = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let new = || async {
        app.create(json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (kept, idle) = (new().await, new().await);
    start(
        &app,
        &kept,
        json!({"command": "sleep 8", "keep_alive": true}),
    )
    .await;
    start(&app, &idle, json!({"command": "sleep 8"})).await;
    let started = Instant::now();
    // 6 s: twice the TTL, with no request on either sandbox but these reads of the list.
    let mut idle_expired = false;
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let all = app.all_sandboxes().await;
        let status = |id: &str| {
            all.iter()
                .find(|s| s["id"] == id)
                .map(|s| s["status"].as_str().unwrap().to_owned())
        };
        assert_eq!(
            status(&kept).as_deref(),
            Some("running"),
            "the keep-alive sandbox expired"
        );
        idle_expired |= status(&idle).as_deref() == Some("expired");
    }
    assert!(
        idle_expired,
        "a sandbox whose process is not keep_alive expired meanwhile"
    );
    // The process ends at 8 s; the sandbox is idle from then on.
    let mut expired = false;
    for _ in 0..60 {
        if app.status_of(&kept).await == "expired" {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        expired,
        "the sandbox outlived its keep-alive process by far"
    );
    app.shutdown().await;
}

/// A background process outlives `kill -9` of the server: after the restart it is listed,
/// still running, and its output is read on from the offset where the client stopped, to
/// its exit.
async fn a_background_process_survives_kill_9_of_the_server(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let (url, _pg) = match store {
        Store::Sqlite => (
            format!("sqlite://{}", dir.path().join("monza.db").display()),
            None,
        ),
        Store::Postgres => {
            let Some(pg) = PgDatabase::create() else {
                return;
            };
            (pg.url(), Some(pg))
        }
    };
    let containers = DeploymentContainers(DeploymentContainers::label());
    let settings = [
        ("MONZA_DEPLOYMENT", containers.0.as_str()),
        ("MONZA_AGENT", "on"),
    ];
    let log = dir.path().join("monza.log");
    let mut first = ChildServer::spawn(&url, &settings, &log);
    first.wait_ready().await;
    let id = first.create(json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gate =
        "i=0; while [ ! -e /workspace/gate ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done";
    let process = start(
        &first,
        &id,
        json!({"command": format!("echo one; echo two; {gate}; echo three; exit 7")}),
    )
    .await;
    let pid = process["pid"].as_u64().unwrap();
    let mut caught = Value::Null;
    for _ in 0..100 {
        let (out, _, last) = read_all(output(&first, &id, pid, "").await).await;
        caught = last;
        if out == "one\ntwo\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(caught["stdout_offset"], 8, "{caught}");

    first.kill9();
    let mut second = ChildServer::spawn(&url, &settings, &log);
    second.wait_ready().await;
    let (status, listed) = second
        .get_json(&format!("/api/sandboxes/{id}/processes"))
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}\n{}", second.log_text());
    let listed = listed.as_array().unwrap();
    let found = listed
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("still listed");
    assert_eq!(found["status"], "running", "{found}");
    second.exec_ok(&id, "touch /workspace/gate").await;
    let (out, _, exit) =
        read_all(output(&second, &id, pid, "stdout_offset=8&follow=true").await).await;
    assert_eq!(out, "three\n");
    assert_eq!(exit["exitCode"], 7, "{exit}");
    let (_, process) = second
        .get_json(&format!("/api/sandboxes/{id}/processes/{pid}"))
        .await;
    assert_eq!(process["exit_code"], 7);
    assert_eq!(second.delete(&id).await, StatusCode::NO_CONTENT);
}

/// A WebSocket to `pid`'s terminal, as the admin.
async fn terminal(
    app: &support::Api,
    id: &str,
    pid: u64,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/api/sandboxes/{id}/processes/{pid}/pty", app.addr());
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", support::ADMIN_TOKEN).parse().unwrap(),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// Reads the terminal until its bytes hold `needle` (30 s at most): the bytes, and any text
/// frames meanwhile.
async fn screen_until(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    screen: &mut String,
    needle: &str,
) -> Vec<Value> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Ws;
    let mut texts = Vec::new();
    while !screen.contains(needle) {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} never came; the screen is {screen:?}"))
            .expect("the socket stays open")
            .unwrap();
        match frame {
            Ws::Binary(bytes) => screen.push_str(&String::from_utf8_lossy(&bytes)),
            Ws::Text(text) => texts.push(serde_json::from_str(&text).unwrap()),
            Ws::Close(close) => panic!("closed ({close:?}) before {needle:?}: {screen:?}"),
            _ => {}
        }
    }
    texts
}

/// The next text frame (skipping terminal bytes), then whether the socket closed after it.
async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Ws;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s")
            .expect("the socket stays open")
            .unwrap();
        if let Ws::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// A process on a terminal, used through a WebSocket like a browser terminal would: sized,
/// typed into, resized, interrupted with ^C, and its exit said before the close.
async fn a_terminal_over_a_websocket(store: Store) {
    for template in ["busybox", "debian"] {
        a_terminal_over_a_websocket_on(store, template).await;
    }
}

async fn a_terminal_over_a_websocket_on(store: Store, template: &str) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let Some(app) = TestApp::spawn(store, |args| args.agent = AgentMode::On).await else {
        return;
    };
    let id = app.create(json!({ "template": template })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shell = start(
        &app,
        &id,
        json!({
            "command": "stty size; read a; echo \"got $a\"; stty size",
            "pty": {"cols": 80, "rows": 24},
        }),
    )
    .await;
    assert_eq!(
        (&shell["pty"], &shell["stdin_open"]),
        (&json!(true), &json!(true))
    );
    let pid = shell["pid"].as_u64().unwrap();
    let mut ws = terminal(&app, &id, pid).await.expect("the WebSocket opens");
    let mut screen = String::new();
    screen_until(&mut ws, &mut screen, "24 80").await;
    ws.send(Ws::text(r#"{"type":"resize","cols":100,"rows":30}"#))
        .await
        .unwrap();
    ws.send(Ws::binary(b"hello\r".to_vec())).await.unwrap();
    screen_until(&mut ws, &mut screen, "30 100").await;
    assert!(screen.contains("got hello\r\n"), "{screen:?}");
    let exit = next_text(&mut ws).await;
    assert_eq!(
        (&exit["type"], &exit["exitCode"]),
        (&json!("exit"), &json!(0)),
        "{exit}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(closed, Some(Ok(Ws::Close(_))) | None),
        "{closed:?}"
    );

    // A bad control message is said and the terminal goes on; ^C interrupts its job.
    let cat = start(
        &app,
        &id,
        json!({"command": "echo ready; cat", "pty": {"cols": 80, "rows": 24}}),
    )
    .await;
    let cpid = cat["pid"].as_u64().unwrap();
    let mut ws = terminal(&app, &id, cpid).await.unwrap();
    let mut screen = String::new();
    screen_until(&mut ws, &mut screen, "ready").await;
    ws.send(Ws::text("nonsense")).await.unwrap();
    let error = next_text(&mut ws).await;
    assert_eq!(error["error"]["code"], "invalid_input", "{error}");
    ws.send(Ws::text(r#"{"type":"resize","cols":0,"rows":30}"#))
        .await
        .unwrap();
    let error = next_text(&mut ws).await;
    assert_eq!(error["error"]["code"], "invalid_input", "{error}");
    ws.send(Ws::binary(b"typed\r".to_vec())).await.unwrap();
    // Echoed by the terminal, then written back by cat.
    screen_until(&mut ws, &mut screen, "typed\r\ntyped\r\n").await;
    ws.send(Ws::binary(vec![0x03])).await.unwrap();
    let exit = next_text(&mut ws).await;
    assert_eq!(
        (&exit["type"], &exit["signal"]),
        (&json!("exit"), &json!(2)),
        "{exit}"
    );
    drop(ws);

    // Closing the socket leaves the process running; another attach replays its screen.
    let sleeper = start(
        &app,
        &id,
        json!({"command": "echo kept; exec sleep 300", "pty": {"cols": 80, "rows": 24}}),
    )
    .await;
    let spid = sleeper["pid"].as_u64().unwrap();
    let mut ws = terminal(&app, &id, spid).await.unwrap();
    screen_until(&mut ws, &mut String::new(), "kept").await;
    ws.close(None).await.unwrap();
    drop(ws);
    let (_, process) = app
        .get_json(&format!("/api/sandboxes/{id}/processes/{spid}"))
        .await;
    assert_eq!(process["status"], "running", "{process}");
    let mut ws = terminal(&app, &id, spid).await.unwrap();
    screen_until(&mut ws, &mut String::new(), "kept").await;
    drop(ws);

    // Attaching to a silent terminal past what it holds opens at once (a shell at its
    // prompt says nothing until typed into).
    let quiet = start(
        &app,
        &id,
        json!({"command": "printf 12345; read a; echo \"read $a\"", "pty": {"cols": 80, "rows": 24}}),
    )
    .await;
    let qpid = quiet["pid"].as_u64().unwrap();
    let mut caught = Value::Null;
    for _ in 0..100 {
        let (_, process) = app
            .get_json(&format!("/api/sandboxes/{id}/processes/{qpid}"))
            .await;
        caught = process;
        if caught["stdout"]["end"] == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(caught["stdout"]["end"], 5, "{caught}");
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "ws://{}/api/sandboxes/{id}/processes/{qpid}/pty?offset=5",
        app.addr()
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", support::ADMIN_TOKEN).parse().unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("the WebSocket opens on a silent terminal")
    .unwrap();
    ws.send(Ws::binary(b"x\r".to_vec())).await.unwrap();
    let mut screen = String::new();
    screen_until(&mut ws, &mut screen, "read x").await;
    assert!(
        !screen.contains("12345"),
        "replayed from the offset: {screen:?}"
    );
    drop(ws);

    // Refused before the handshake: not a terminal, not a WebSocket, unknown.
    let plain = start(&app, &id, json!({"command": "sleep 300"})).await;
    match terminal(&app, &id, plain["pid"].as_u64().unwrap()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 409)
        }
        other => panic!("expected a 409, got {other:?}"),
    }
    let answer = app
        .get_json(&format!("/api/sandboxes/{id}/processes/{spid}/pty"))
        .await;
    assert_error("not a WebSocket", &answer, 426, "upgrade_required");
    match terminal(&app, &id, 999_999).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 404)
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    let bad = app
        .post_json(
            &format!("/api/sandboxes/{id}/processes"),
            json!({"command": "sh", "pty": {"cols": 0, "rows": 24}}),
        )
        .await;
    assert_error("a zero-column terminal", &bad, 400, "invalid_input");
    app.shutdown().await;
}

/// A server as a child process on a SQLite file in `dir`, with the agent, its containers
/// labelled for removal.
async fn child_server(dir: &std::path::Path, containers: &DeploymentContainers) -> ChildServer {
    let url = format!("sqlite://{}", dir.join("monza.db").display());
    let settings = [
        ("MONZA_DEPLOYMENT", containers.0.as_str()),
        ("MONZA_AGENT", "on"),
    ];
    let mut server = ChildServer::spawn(&url, &settings, &dir.join("monza.log"));
    server.wait_ready().await;
    server
}

/// The agent's peak resident memory in the sandbox, in KiB (`VmHWM` of `/.monza-agent`).
async fn agent_peak_kib(server: &ChildServer, id: &str) -> u64 {
    let out = server
        .exec_ok(
            id,
            "for p in /proc/[0-9]*; do if [ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = '/.monza-agent ' ]; \
             then grep VmHWM $p/status; fi; done",
        )
        .await;
    let text = out["stdout"].as_str().unwrap();
    text.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no agent found: {out}"))
}

/// 1 GiB written by a background process and followed to its end by a client: the bytes
/// arrive in order to the last (those the ring dropped before the reader got to them
/// skipped, as their offsets say), and neither the server's memory nor the agent's grows
/// with it.
#[tokio::test]
async fn a_process_writing_1_gib_keeps_the_servers_and_the_agents_memory_bounded() {
    const GIB: u64 = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let containers = DeploymentContainers(DeploymentContainers::label());
    let server = child_server(dir.path(), &containers).await;
    let id = server.create(json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = server.rss_kib();
    let process = start(
        &server,
        &id,
        json!({
            "command": format!("head -c {GIB} /dev/zero | tr '\\0' a"),
            "output_limit_bytes": 16 * 1024 * 1024,
        }),
    )
    .await;
    let pid = process["pid"].as_u64().unwrap();
    let response = server
        .client
        .get(server.url(&format!(
            "/api/sandboxes/{id}/processes/{pid}/output?follow=true"
        )))
        .send()
        .await
        .unwrap();
    let mut lines = Lines::of(response);
    let (mut next, mut skipped) = (0u64, 0u64);
    let exit = loop {
        let line = lines.next().await.expect("the output ends with its exit");
        match line["type"].as_str().unwrap() {
            "stdout" => {
                let data = line["data"].as_str().unwrap();
                // The process is never held back: a reader slower than it skips what the
                // ring (16 MiB) dropped meanwhile, and the offset says where it goes on.
                let offset = line["offset"].as_u64().unwrap();
                assert!(offset >= next, "a byte repeated: {offset} after {next}");
                skipped += offset - next;
                assert!(data.bytes().all(|b| b == b'a'));
                next = offset + data.len() as u64;
            }
            "keepalive" => {}
            _ => break line,
        }
    };
    assert_eq!(exit["type"], "exit", "{exit}");
    assert_eq!(next, GIB, "read to the last byte");
    assert_eq!(exit["stdout_offset"], GIB);
    let server_peak = server.peak_rss_kib();
    let agent_peak = agent_peak_kib(&server, &id).await;
    eprintln!(
        "1 GiB followed ({skipped} bytes dropped by the ring before they were read): server RSS \
         {before} KiB before, peak {server_peak} KiB; agent peak {agent_peak} KiB"
    );
    // The ring (16 MiB) and what is in flight; nothing near the 1 GiB that went through.
    assert!(
        agent_peak < 64 * 1024,
        "the agent peaked at {agent_peak} KiB"
    );
    assert!(
        server_peak < before + 128 * 1024,
        "the server grew from {before} KiB to a peak of {server_peak} KiB"
    );
    assert_eq!(server.delete(&id).await, StatusCode::NO_CONTENT);
}

/// A fork bomb in a background process of one sandbox: the server keeps answering, another
/// sandbox keeps running commands, the bombed one answers (whatever it can), and killing the
/// process (its whole group) gives the sandbox back.
#[tokio::test]
async fn a_fork_bomb_in_a_background_process_leaves_the_server_answering() {
    let dir = tempfile::tempdir().unwrap();
    let containers = DeploymentContainers(DeploymentContainers::label());
    let mut server = child_server(dir.path(), &containers).await;
    let new = || async {
        server.create(json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (bombed, calm) = (new().await, new().await);
    let bomb = start(&server, &bombed, json!({"command": "f() { f | f & }; f"})).await;
    let pid = bomb["pid"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let answered = |what: &'static str, started: Instant| {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} took {:?}",
            started.elapsed()
        )
    };
    let started = Instant::now();
    let (status, _) = server.get_json("/health").await;
    assert_eq!(status, StatusCode::OK);
    answered("/health", started);
    let started = Instant::now();
    server.assert_output(&calm, "echo calm", "calm\n").await;
    answered("a command in another sandbox", started);
    let started = Instant::now();
    let (status, body) = server.exec(&bombed, "echo hello").await;
    answered("a command in the bombed sandbox", started);
    eprintln!("a command in the bombed sandbox: {status} {body}");
    assert!(
        status == StatusCode::OK || body["error"]["code"].is_string(),
        "{status} {body}"
    );

    let killed = server
        .send(
            server
                .client
                .delete(server.url(&format!("/api/sandboxes/{bombed}/processes/{pid}"))),
        )
        .await;
    assert_eq!(killed.0, StatusCode::NO_CONTENT, "{killed:?}");
    let mut back = false;
    for _ in 0..60 {
        let (status, body) = server.exec(&bombed, "echo back").await;
        if status == StatusCode::OK && body["output"] == "back\n" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        back,
        "the sandbox never came back after its bomb was killed"
    );
    server.assert_alive();
    for id in [&bombed, &calm] {
        assert_eq!(server.delete(id).await, StatusCode::NO_CONTENT);
    }
}

on_both_stores!(
    a_terminal_over_a_websocket,
    every_process_route,
    a_keep_alive_process_keeps_its_sandbox_past_the_idle_ttl,
    a_background_process_survives_kill_9_of_the_server,
);
