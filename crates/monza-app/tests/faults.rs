#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fault tests: the real `monza` binary as a child process against the real Docker engine and
//! PostgreSQL, while things go wrong: kill -9 mid-create, a container removed by hand, the
//! engine and the database stopped and started, two replicas, a soak.
//!
//! Some of these stop the Docker engine or PostgreSQL, which would break tests running beside
//! them: `cargo xtask test` leaves this target out and `cargo xtask faults` runs it alone,
//! one test at a time (`--test-threads 1`). Every outage is undone by a guard, even when a
//! test fails.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{ChildServer as Server, DeploymentContainers as Containers, admin_url, docker, psql};

async fn create(server: &Server) -> Value {
    server.create(json!({"template": "busybox"})).await
}

async fn execute(server: &Server, id: &str) -> (StatusCode, Value) {
    server.exec(id, "echo hi").await
}

/// Executes in the sandbox every 500 ms until it answers 200 (within 60 s): the body.
async fn execute_once_recovered(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = execute(server, id).await;
        if status == StatusCode::OK {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Test templates for the kill -9 tests: `busybox`, and `busybox-sleep-N`, whose create sleeps
/// N seconds in a lifecycle hook, so its creates stay in flight that long.
fn sleeping_templates(sleeps: &[u32]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut templates = vec![(
        "busybox".to_owned(),
        r#"{"image": "monza-test/busybox:latest"}"#.to_owned(),
    )];
    for secs in sleeps {
        templates.push((
            format!("busybox-sleep-{secs}"),
            format!(
                r#"{{"image": "monza-test/busybox:latest", "postCreateCommand": "sleep {secs}"}}"#
            ),
        ));
    }
    for (name, body) in templates {
        std::fs::create_dir_all(dir.path().join(&name)).unwrap();
        std::fs::write(dir.path().join(&name).join("devcontainer.json"), body).unwrap();
    }
    dir
}

/// A store for a fault test: a PostgreSQL database of its own (these tests need PostgreSQL,
/// in CI and out), or a SQLite file; with the containers of the deployment its servers
/// carry, removed when it is dropped (before the database).
struct FaultStore {
    url: String,
    containers: Containers,
    _pg: Option<support::PgDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl FaultStore {
    /// The deployment is the one a server derives from the database: none is set.
    fn postgres() -> Self {
        let pg = support::PgDatabase::create().expect("PostgreSQL must answer");
        Self {
            url: pg.url(),
            containers: Containers(pg.deployment()),
            _pg: Some(pg),
            _dir: None,
        }
    }

    /// The deployment must be given to its servers (`MONZA_DEPLOYMENT`).
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            url: format!("sqlite://{}", dir.path().join("monza.db").display()),
            containers: Containers(format!("faults-sqlite-{}", uuid::Uuid::new_v4().simple())),
            _pg: None,
            _dir: Some(dir),
        }
    }
}

fn borrowed(settings: &[(String, String)]) -> Vec<(&str, &str)> {
    settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Sends `count` creates of `template` named `name` and forgets them (their server is about
/// to be killed).
fn fire_creates(server: &Server, count: usize, name: &str, template: &str) {
    for _ in 0..count {
        let client = server.client.clone();
        let url = server.url("/api/sandboxes");
        let body = json!({"name": name, "template": template});
        tokio::spawn(async move {
            let _ = client.post(url).json(&body).send().await;
        });
    }
}

/// Waits (30 s at most) until `count` sandboxes named `name` are `creating` and each has its
/// container: creates in flight, past the engine's create, in their lifecycle hook.
async fn wait_in_flight(server: &Server, containers: &Containers, name: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = server.all_sandboxes().await;
        let creating: Vec<&str> = rows
            .iter()
            .filter(|s| s["name"] == name && s["status"] == "creating")
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        let with_container = containers
            .list()
            .iter()
            .filter(|(_, sandbox_id, _)| creating.contains(&sandbox_id.as_str()))
            .count();
        if creating.len() == count && with_container == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "creates never in flight: {} creating, {with_container} with a container",
            creating.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the sandboxes named `name` are settled: none `creating`, and every container
/// of one of them belongs to it while it is `running`.
fn settled(rows: &[Value], containers: &[(String, String, String)], name: &str) -> bool {
    let mine: HashMap<&str, &Value> = rows
        .iter()
        .filter(|s| s["name"] == name)
        .map(|s| (s["id"].as_str().unwrap(), s))
        .collect();
    mine.values().all(|s| s["status"] != "creating")
        && containers.iter().all(|(cid, sandbox_id, _)| {
            mine.get(sandbox_id.as_str()).is_none_or(|s| {
                s["status"] == "running" && s["container_id"].as_str() == Some(cid.as_str())
            })
        })
}

/// Waits until the sandboxes named `name` are [`settled`], within `within`: the rows.
async fn wait_settled(
    server: &Server,
    containers: &Containers,
    name: &str,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let rows = server.all_sandboxes().await;
        if settled(&rows, &containers.list(), name) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "not settled within {within:?}: {:#?}\ncontainers: {:?}\nlog:\n{}",
            rows.iter()
                .filter(|s| s["name"] == name)
                .map(|s| (&s["id"], &s["status"]))
                .collect::<Vec<_>>(),
            containers.list(),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The killed creates: each `error`, its reason saying its creator stopped renewing its lease.
fn assert_abandoned(rows: &[Value], name: &str, count: usize) {
    let mine: Vec<&Value> = rows.iter().filter(|s| s["name"] == name).collect();
    assert_eq!(mine.len(), count, "{mine:#?}");
    for sandbox in mine {
        assert_eq!(sandbox["status"], "error", "{sandbox}");
        let reason = sandbox["status_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("stopped renewing its lease"), "{sandbox}");
    }
}

/// kill -9 with 10 creates in flight (rows written, containers made, lifecycle hooks
/// running), restart: within 30 s no sandbox is `creating` and no container is left without
/// a running sandbox, with the default create timeout (10 minutes) and lease (15 s).
async fn after_kill_9_with_10_creates_in_flight_a_restart_settles_them_within_30s(
    store: FaultStore,
) {
    let containers = &store.containers;
    let templates = sleeping_templates(&[60]);
    let settings = [
        (
            "DEVCONTAINERS_PATH".to_owned(),
            templates.path().display().to_string(),
        ),
        ("MONZA_DEPLOYMENT".to_owned(), store.containers.0.clone()),
        // Only the start-up pass: the leases must settle the creates, not a periodic pass.
        ("MONZA_RECONCILE_INTERVAL".to_owned(), "1h".to_owned()),
    ];
    let settings = borrowed(&settings);
    let mut server = Server::start(&store.url, &settings).await;
    fire_creates(&server, 10, "killed", "busybox-sleep-60");
    wait_in_flight(&server, containers, "killed", 10).await;
    server.kill9();

    let log = server.log.with_file_name("restarted.log");
    let mut restarted = Server::spawn(&store.url, &settings, &log);
    let restart = Instant::now();
    restarted.wait_healthy().await;
    let rows = wait_settled(
        &restarted,
        containers,
        "killed",
        Duration::from_secs(30).saturating_sub(restart.elapsed()),
    )
    .await;
    eprintln!("settled {:?} after the restart", restart.elapsed());
    assert_abandoned(&rows, "killed", 10);
    assert!(containers.list().is_empty(), "{:?}", containers.list());
    restarted.assert_alive();
}

#[tokio::test]
async fn after_kill_9_with_10_creates_in_flight_a_restart_settles_them_within_30s_on_postgres() {
    after_kill_9_with_10_creates_in_flight_a_restart_settles_them_within_30s(
        FaultStore::postgres(),
    )
    .await;
}

#[tokio::test]
async fn after_kill_9_with_10_creates_in_flight_a_restart_settles_them_within_30s_on_sqlite() {
    after_kill_9_with_10_creates_in_flight_a_restart_settles_them_within_30s(FaultStore::sqlite())
        .await;
}

/// Two replicas on one database; one is killed with 10 creates in flight and restarted while
/// the other keeps creating: the killed creates are settled within 30 s, and every create of
/// the live replica (each outlasting two leases, so kept only by its renewals) succeeds.
#[tokio::test]
async fn after_kill_9_of_a_replica_its_creates_are_settled_and_the_live_replicas_creates_are_undisturbed()
 {
    let store = FaultStore::postgres();
    let containers = &store.containers;
    let templates = sleeping_templates(&[60, 7]);
    let settings = [
        (
            "DEVCONTAINERS_PATH".to_owned(),
            templates.path().display().to_string(),
        ),
        ("MONZA_RECONCILE_INTERVAL".to_owned(), "2s".to_owned()),
        ("MONZA_CREATE_LEASE".to_owned(), "3s".to_owned()),
    ];
    let settings = borrowed(&settings);
    let mut a = Server::start(&store.url, &settings).await;
    let mut b = Server::start(&store.url, &settings).await;

    // The live replica creates all along, three at a time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (client, url, stop) = (b.client.clone(), b.url("/api/sandboxes"), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let response = client
                        .post(&url)
                        .json(&json!({"name": "live", "template": "busybox-sleep-7"}))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    let body = response.json::<Value>().await.unwrap_or(Value::Null);
                    answers.push((status, body, started, Instant::now()));
                }
                answers
            })
        })
        .collect();

    fire_creates(&a, 10, "killed", "busybox-sleep-60");
    wait_in_flight(&a, containers, "killed", 10).await;
    a.kill9();
    let killed = Instant::now();
    let log = a.log.with_file_name("restarted.log");
    let mut restarted = Server::spawn(&store.url, &settings, &log);
    restarted.wait_healthy().await;
    let rows = wait_settled(&b, containers, "killed", Duration::from_secs(30)).await;
    let settled_at = Instant::now();
    eprintln!("settled {:?} after the kill", killed.elapsed());
    assert_abandoned(&rows, "killed", 10);

    // Let the live replica's creates run past a few more passes of both replicas.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    let mut live = Vec::new();
    let mut spans = Vec::new();
    for worker in workers {
        for (status, body, started, ended) in worker.await.unwrap() {
            assert_eq!(
                status,
                StatusCode::CREATED,
                "a live replica's create: {body}"
            );
            live.push(body["id"].as_str().unwrap().to_owned());
            spans.push((started, ended));
        }
    }
    // The live replica was creating through the kill and through the settling.
    for (moment, what) in [(killed, "the kill"), (settled_at, "the settling")] {
        assert!(
            spans.iter().any(|(s, e)| *s < moment && moment < *e),
            "no create of the live replica was in flight at {what}"
        );
    }
    let rows = wait_settled(&b, containers, "live", Duration::from_secs(10)).await;
    for id in &live {
        let sandbox = rows.iter().find(|s| s["id"] == id.as_str()).unwrap();
        assert_eq!(sandbox["status"], "running", "{sandbox}");
        let (_, events) = b.get_json(&format!("/api/sandboxes/{id}/events")).await;
        let failed = events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "failed");
        assert!(!failed, "{id}: {events:#}");
    }
    assert!(
        settled(&rows, &containers.list(), "killed") && settled(&rows, &containers.list(), "live"),
        "{:?}",
        containers.list()
    );
    assert_eq!(
        containers.list().len(),
        live.len(),
        "one container per live sandbox"
    );
    b.assert_alive();
    restarted.assert_alive();
}

#[tokio::test]
async fn a_container_removed_behind_monzas_back_makes_the_sandbox_error_and_requests_get_409() {
    let store = FaultStore::postgres();
    let server = Server::start(&store.url, &[("MONZA_RECONCILE_INTERVAL", "2s")]).await;

    // Found by a request.
    let sandbox = create(&server).await;
    let id = sandbox["id"].as_str().unwrap();
    docker(&["rm", "-f", sandbox["container_id"].as_str().unwrap()]);
    let (status, body) = execute(&server, id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("container vanished"), "{message}");
    let (_, after) = server.get_json(&format!("/api/sandboxes/{id}")).await;
    assert_eq!(after["status"], "error");
    assert!(
        after["status_reason"]
            .as_str()
            .unwrap()
            .contains("container vanished")
    );
    let (_, events) = server
        .get_json(&format!("/api/sandboxes/{id}/events"))
        .await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "failed"
                && e["details"]["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("container vanished"))),
        "{events:#}"
    );

    // Found by reconciliation, with no request at all.
    let quiet = create(&server).await;
    let quiet_id = quiet["id"].as_str().unwrap();
    docker(&["rm", "-f", quiet["container_id"].as_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, now) = server.get_json(&format!("/api/sandboxes/{quiet_id}")).await;
        if now["status"] == "error" {
            assert!(
                now["status_reason"]
                    .as_str()
                    .unwrap()
                    .contains("container vanished"),
                "{now}\n{}",
                server.log_text()
            );
            break;
        }
        assert!(Instant::now() < deadline, "still {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = server
        .send(
            server
                .client
                .post(server.url(&format!("/api/sandboxes/{quiet_id}/heartbeat"))),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("container vanished"),
        "{body}"
    );
}

/// Blocks until `done`, checking every `every_ms` milliseconds; fails saying `what` past
/// `within`.
fn wait_until(within: Duration, every_ms: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(every_ms));
    }
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` is still a running process. A zombie counts as gone: it has exited, and
/// only its parent (whatever started dockerd) can reap it.
fn process_alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: `PID (comm) S ...`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// During an outage: `/ready` is a 503 naming the state of the database and of the engine,
/// while `/health` (liveness) stays 200.
async fn assert_not_ready(server: &Server, database: &str, docker: &str) {
    let (status, ready) = server.get_json("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(
        ready,
        json!({"status": "unavailable", "database": database, "docker": docker})
    );
    let (status, _) = server.get_json("/health").await;
    assert_eq!(status, StatusCode::OK, "liveness depends on neither");
}

/// An outage of a dependency, undone on `end` or when dropped (even when a test fails).
struct Outage {
    restore: Option<Box<dyn FnOnce()>>,
}

impl Outage {
    fn end(&mut self) {
        if let Some(restore) = self.restore.take() {
            restore();
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.end();
    }
}

/// Stops the Docker engine; the outage starts it again the way it was started (same command
/// line, in the background, logging to `$TMPDIR/monza-dockerd.log` like `cargo xtask env`).
fn docker_outage() -> Outage {
    let pid = std::fs::read_to_string("/var/run/docker.pid")
        .expect("dockerd's pid file: this test restarts a dockerd it can find");
    let pid = pid.trim().to_owned();
    let cmdline: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(!cmdline.is_empty());
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let outage = Outage {
        restore: Some(Box::new(move || start_dockerd(&cmdline))),
    };
    wait_until(Duration::from_secs(60), 100, "dockerd did not stop", || {
        !process_alive(&pid)
    });
    outage
}

/// Starts dockerd with `cmdline` unless the engine answers already; waits until it does.
fn start_dockerd(cmdline: &[String]) {
    if docker_answers() {
        return;
    }
    let log = std::env::temp_dir().join("monza-dockerd.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new("setsid")
        // Forks: dockerd is detached from this test (and its process group) at once.
        .arg("--fork")
        .args(cmdline)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    wait_until(
        Duration::from_secs(90),
        200,
        "dockerd did not come back",
        docker_answers,
    );
}

#[tokio::test]
async fn docker_engine_stopped_and_started_gives_quick_503s_then_recovers_without_restart() {
    let store = FaultStore::postgres();
    let mut server = Server::start(
        &store.url,
        &[
            ("MONZA_RECONCILE_INTERVAL", "1s"),
            ("MONZA_REAPER_INTERVAL", "1s"),
            ("MONZA_DOCKER_TIMEOUT", "5s"),
        ],
    )
    .await;
    let sandbox = create(&server).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let ported = server.create(json!({"template": "busybox-ports"})).await;
    let ported_id = ported["id"].as_str().unwrap().to_owned();
    let ported_container = ported["container_id"].as_str().unwrap().to_owned();

    let mut outage = docker_outage();
    let started = Instant::now();
    let (status, body) = server
        .post_json("/api/sandboxes", json!({"template": "busybox"}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let (status, body) = execute(&server, &id).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "503s took {:?}",
        started.elapsed()
    );
    let (status, _) = server.get_json(&format!("/api/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "get needs only the store");
    let (status, _) = server.get_json("/api/sandboxes").await;
    assert_eq!(status, StatusCode::OK, "list needs only the store");
    assert_not_ready(&server, "ok", "unavailable").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(server.log_text().contains("reconcile pass skipped"));
    outage.end();

    // The engine stopped the container with it; reconciliation starts it again.
    let body = execute_once_recovered(&server, &id).await;
    assert_eq!(body["output"], "hi\n");
    // The engine may publish a restarted container on other host ports: the API must say
    // where it publishes now.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let published = docker(&["port", &ported_container, "8080/tcp"]);
        let engine_port = published
            .lines()
            .next()
            .and_then(|line| line.rsplit_once(':'))
            .and_then(|(_, port)| port.trim().parse::<u64>().ok());
        let (status, body) = server
            .get_json(&format!("/api/sandboxes/{ported_id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let api_port = body["port_mappings"][0]["host_port"].as_u64();
        if engine_port.is_some() && engine_port == api_port {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API says host port {api_port:?}, the engine publishes {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    create(&server).await;
    let (status, _) = server.get_json("/ready").await;
    assert_eq!(status, StatusCode::OK);
    server.assert_alive();
}

fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("a pg_ctlcluster cluster under /etc/postgresql")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .unwrap()
}

/// Stops the local PostgreSQL cluster; the outage starts it again and waits until it answers.
fn pg_outage() -> Outage {
    let version = pg_version();
    let status = Command::new("pg_ctlcluster")
        .args([&version, "main", "stop"])
        .status()
        .unwrap();
    assert!(status.success());
    Outage {
        restore: Some(Box::new(move || {
            let _ = Command::new("pg_ctlcluster")
                .args([&version, "main", "start"])
                .status();
            wait_until(
                Duration::from_secs(60),
                200,
                "PostgreSQL did not come back",
                || psql(&admin_url(), "select 1").is_ok(),
            );
        })),
    }
}

#[tokio::test]
async fn postgres_stopped_and_started_gives_quick_503s_then_recovers_without_restart() {
    let store = FaultStore::postgres();
    let mut server = Server::start(&store.url, &[("MONZA_RECONCILE_INTERVAL", "1s")]).await;
    let sandbox = create(&server).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();

    let mut outage = pg_outage();
    let started = Instant::now();
    let (status, body) = server.get_json(&format!("/api/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, body) = execute(&server, &id).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _) = server.get_json("/api/sandboxes").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "503s took {:?}",
        started.elapsed()
    );
    assert_not_ready(&server, "unavailable", "ok").await;
    outage.end();

    execute_once_recovered(&server, &id).await;
    create(&server).await;
    let (status, _) = server.get_json("/ready").await;
    assert_eq!(status, StatusCode::OK);
    server.assert_alive();
}

#[tokio::test]
async fn two_replicas_expire_each_idle_sandbox_exactly_once() {
    let store = FaultStore::postgres();
    let containers = &store.containers;
    let settings = [
        ("MONZA_SANDBOX_TTL", "8s"),
        ("MONZA_REAPER_INTERVAL", "1s"),
        ("MONZA_RECONCILE_INTERVAL", "1s"),
    ];
    let mut a = Server::start(&store.url, &settings).await;
    let mut b = Server::start(&store.url, &settings).await;
    let mut ids = Vec::new();
    for round in 0..5 {
        let batch: Vec<_> = (0..4)
            .map(|i| {
                let client = a.client.clone();
                let url = if (round + i) % 2 == 0 {
                    a.url("/api/sandboxes")
                } else {
                    b.url("/api/sandboxes")
                };
                tokio::spawn(async move {
                    let response = client
                        .post(url)
                        .json(&json!({"template": "busybox"}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::CREATED);
                    let body: Value = response.json().await.unwrap();
                    body["id"].as_str().unwrap().to_owned()
                })
            })
            .collect();
        for task in batch {
            ids.push(task.await.unwrap());
        }
    }
    assert_eq!(ids.len(), 20);
    // Either replica answers for any sandbox.
    for id in &ids {
        let (status, _) = b.get_json(&format!("/api/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK);
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = a.all_sandboxes().await;
        if rows.iter().all(|s| s["status"] == "expired") && containers.list().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all expired: {:?}",
            rows.iter().map(|s| &s["status"]).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for id in &ids {
        let actions = a.actions(id).await;
        assert_eq!(
            actions.iter().filter(|a| *a == "expired").count(),
            1,
            "{id}: {actions:?}"
        );
        assert!(!actions.iter().any(|a| a == "failed"), "{id}: {actions:?}");
    }
    a.assert_alive();
    b.assert_alive();
    for server in [&a, &b] {
        let log = server.log_text();
        assert!(!log.contains(" ERROR "), "{log}");
    }
}

#[tokio::test]
async fn soak_50_clients_for_60s_gets_no_5xx_and_memory_stays_flat() {
    let store = FaultStore::postgres();
    let mut server = Server::start(&store.url, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(create(&server).await["id"].as_str().unwrap().to_owned());
    }
    let ids = Arc::new(ids);
    let base = server.base.clone();
    let requests = Arc::new(AtomicU64::new(0));
    let server_errors = Arc::new(AtomicU64::new(0));
    let soak = Duration::from_secs(60);
    let end = Instant::now() + soak;
    let workers: Vec<_> = (0..50u64)
        .map(|worker| {
            let (client, ids, base) = (server.client.clone(), ids.clone(), base.clone());
            let (requests, server_errors) = (requests.clone(), server_errors.clone());
            tokio::spawn(async move {
                let id = &ids[(worker % 10) as usize];
                let name = format!("soak-{worker}.txt");
                let mut step = worker;
                let mut uploaded: Option<String> = None;
                while Instant::now() < end {
                    step += 1;
                    let sandbox = format!("{base}/api/sandboxes/{id}");
                    let request = match step % 5 {
                        0 => client.get(&sandbox),
                        1 => client.post(format!("{sandbox}/heartbeat")),
                        2 => client
                            .post(format!("{sandbox}/execute"))
                            .json(&json!({"command": "echo soak"})),
                        3 => {
                            let form = reqwest::multipart::Form::new().part(
                                "file",
                                reqwest::multipart::Part::bytes(vec![b'x'; 4096])
                                    .file_name(name.clone()),
                            );
                            client
                                .post(format!("{sandbox}/files/upload"))
                                .multipart(form)
                        }
                        _ if uploaded.is_some() => client
                            .get(format!("{sandbox}/files/download"))
                            .query(&[("path", uploaded.as_deref().unwrap_or_default())]),
                        _ => client.get(&sandbox),
                    };
                    let response = request.send().await.unwrap();
                    let status = response.status();
                    let body = response.bytes().await.unwrap_or_default();
                    requests.fetch_add(1, Ordering::Relaxed);
                    if status.is_server_error() {
                        server_errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{status}: {}", String::from_utf8_lossy(&body));
                    }
                    if step % 5 == 3 && status.is_success() {
                        uploaded = serde_json::from_slice::<Value>(&body)
                            .ok()
                            .and_then(|v| v["path"].as_str().map(str::to_owned));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let early = server.rss_kib();
    for worker in workers {
        worker.await.unwrap();
    }
    let late = server.rss_kib();
    let total = requests.load(Ordering::Relaxed);
    eprintln!("soak: {total} requests; RSS {early} KiB after 10 s, {late} KiB at the end");
    assert!(total > 1000, "only {total} requests");
    assert_eq!(server_errors.load(Ordering::Relaxed), 0);
    assert!(
        late as f64 <= early as f64 * 1.2,
        "RSS grew from {early} KiB to {late} KiB"
    );
    server.assert_alive();
}
