#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The schema fuzzer: schemathesis, with all of its checks (`xtask/fuzz/schemathesis.toml`
//! scopes one off where it cannot apply, and says why), against the real `monza` binary
//! (real Docker engine, the busybox test template), once on a SQLite file and once on a fresh
//! PostgreSQL database. Zero failures: not only no 5xx, but every answer documented (status,
//! content type, headers, body schema), every schema-valid request accepted, every invalid one
//! refused, authentication honoured, a deleted sandbox gone.
//!
//! schemathesis comes from PyPI, pinned in `xtask/fuzz/requirements.txt`; `cargo xtask test`
//! installs it in a virtual environment and names its `st` in `MONZA_SCHEMATHESIS`. Without
//! it the test fails in CI and is skipped loudly elsewhere.
//!
//! Bounded: `MONZA_FUZZ_MAX_EXAMPLES` examples per operation (10 by default), a 30 s timeout
//! per request and a hard wall-clock limit (`MONZA_FUZZ_TIME_LIMIT_SECS`, 600 by default) after
//! which schemathesis is killed and the test fails. `MONZA_FUZZ_SEED` fixes the seed (the seed
//! of every run is printed). Whatever happens, every sandbox the run made is deleted through
//! the API, every container of its deployment is removed by label, and the PostgreSQL
//! database is dropped.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use monza_domain::testing::{in_ci, require};
use support::{ADMIN_TOKEN, ChildServer as Server, DeploymentContainers, PgDatabase};

/// Fixed unless `MONZA_FUZZ_SEED` says otherwise, so a CI run can be replayed.
const DEFAULT_SEED: &str = "1100811";

/// The `st` executable, or `None` (skipped) outside CI.
fn schemathesis() -> Option<PathBuf> {
    let found = std::env::var_os("MONZA_SCHEMATHESIS")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or("MONZA_SCHEMATHESIS does not name schemathesis's `st` (cargo xtask test sets it)");
    require("schemathesis", found)
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A directory holding only the busybox test template (the fuzzer may name any template
/// the document lists; the other test templates build images or fail on purpose).
fn busybox_templates(dir: &Path) -> PathBuf {
    let templates = dir.join("templates");
    let from = monza_devcontainer::test_templates_dir().join("busybox");
    let to = templates.join("busybox");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    templates
}

/// The two runs that together cover every operation with every check. schemathesis leaves
/// out the operation that served the document unless a filter names it, and rightly so
/// beside the others: the document lists the path templates (`/api/sandboxes/{id}`), which
/// its link inference would read as URLs to follow, with `{id}` as an id. So the document's
/// own operation gets a run of its own. The terminal's WebSocket is left out: schemathesis
/// speaks plain HTTP only, to which that route rightly answers 426; a real WebSocket client
/// drives it in `tests/processes.rs`. So is the archive upload: schemathesis cannot make a
/// tar archive (`application/x-tar` has no serializer), and bytes that are not one are
/// rightly refused; `tests/files.rs` sends it real and hostile archives.
const RUNS: [(&str, &[&str]); 2] = [
    (
        "every operation but the document's, the terminal's WebSocket and the archive upload",
        &[
            "--exclude-path",
            "/api/sandboxes/{id}/processes/{pid}/pty",
            "--exclude-operation-id",
            "put_archive",
        ],
    ),
    (
        "GET /api/openapi.json",
        &["--include-path", "/api/openapi.json"],
    ),
];

/// Runs schemathesis to its end or the wall-clock limit: (exit success, output).
fn run_schemathesis(
    st: &Path,
    server: &Server,
    report_dir: &Path,
    filter: &[&str],
    limit: Duration,
) -> (bool, String) {
    let seed = std::env::var("MONZA_FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let examples = setting("MONZA_FUZZ_MAX_EXAMPLES", 10).to_string();
    std::fs::create_dir_all(report_dir).unwrap();
    let output = report_dir.join("st.log");
    let file = std::fs::File::create(&output).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/fuzz/schemathesis.toml");
    let mut cmd = Command::new(st);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/openapi.json", server.base))
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--max-examples", &examples])
        .args(["--seed", &seed])
        .args(["--request-timeout", "30"])
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(report_dir)
        .args(["--no-color", "--output-truncate", "false"])
        .args(filter)
        .current_dir(report_dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    eprintln!(
        "schema fuzz: {} (seed {seed}, {examples} examples per operation, limit {}s)",
        server.base,
        limit.as_secs()
    );
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start schemathesis");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut text = String::new();
    std::fs::File::open(&output)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    eprintln!(
        "schema fuzz: finished in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(status) => (status.success(), text),
        None => (
            false,
            format!(
                "{text}\n!!! schemathesis was killed after the {}s wall-clock limit",
                limit.as_secs()
            ),
        ),
    }
}

async fn fuzz(store: &str, database_url: impl FnOnce(&Path) -> String) {
    let Some(st) = schemathesis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let deployment = DeploymentContainers(format!("monza-fuzz-{}", uuid::Uuid::new_v4().simple()));
    let templates = busybox_templates(dir.path()).display().to_string();
    let mut server = Server::spawn(
        &database_url(dir.path()),
        &[
            ("DEVCONTAINERS_PATH", &templates),
            ("MONZA_DEPLOYMENT", &deployment.0),
        ],
        &dir.path().join("monza.log"),
    );
    server.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(setting("MONZA_FUZZ_TIME_LIMIT_SECS", 600));
    let mut passed = true;
    let mut output = String::new();
    for (i, (what, filter)) in RUNS.iter().enumerate() {
        let limit = deadline.saturating_duration_since(Instant::now());
        let report_dir = dir.path().join(format!("run-{i}"));
        let (ok, text) = run_schemathesis(&st, &server, &report_dir, filter, limit);
        passed &= ok;
        output.push_str(&format!(
            "=== schemathesis on {store}: {what} ===\n{text}\n"
        ));
    }
    let undeleted = server.delete_live().await;
    let log = server.log_text();
    drop(server);
    let left = deployment.ids();
    deployment.remove_all();
    if !passed {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "schemathesis failed on {store}:\n{output}\n--- last lines of the server's log ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(
        undeleted.is_empty(),
        "sandboxes the API could not delete: {undeleted:?}"
    );
    assert!(
        left.is_empty(),
        "containers left after deleting every sandbox: {left:?}"
    );
    if in_ci() {
        eprintln!("schema fuzz on {store}: no failure");
    }
}

#[tokio::test]
async fn schemathesis_finds_nothing_on_sqlite() {
    fuzz("SQLite", |dir| {
        format!("sqlite://{}", dir.join("monza.db").display())
    })
    .await;
}

#[tokio::test]
async fn schemathesis_finds_nothing_on_postgres() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    fuzz("PostgreSQL", |_| db.url()).await;
    drop(db);
}
