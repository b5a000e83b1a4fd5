#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `monza` binary's command line, run as a user would.

mod support;

use std::path::PathBuf;
use support::{ADMIN_TOKEN, ServeChild, docker, monza, serve_fails};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn serve_help_lists_every_setting() {
    let out = monza().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DATABASE_URL",
        "MONZA_DATA_DIR",
        "SERVER_ADDR",
        "DEVCONTAINERS_PATH",
        "MONZA_SANDBOX_TTL",
        "MONZA_REAPER_INTERVAL",
        "MONZA_RECONCILE_INTERVAL",
        "MONZA_CREATE_TIMEOUT",
        "MONZA_CREATE_LEASE",
        "MONZA_DOCKER_TIMEOUT",
        "MONZA_DEPLOYMENT",
        "SANDBOX_MEMORY_LIMIT",
        "SANDBOX_CPU_LIMIT",
        "MONZA_PUBLISH_ADDR",
        "DOCKER_HOST",
        "MONZA_LOG_FORMAT",
        "SANDBOX_PIDS_LIMIT",
        "MONZA_ALLOW_UNSAFE_TEMPLATES",
        "MONZA_AUTH",
        "MONZA_BOOTSTRAP_TOKEN",
        "MONZA_MAX_SANDBOXES_PER_TENANT",
    ] {
        assert!(
            help.contains(var),
            "{var} missing from serve --help:\n{help}"
        );
    }
}

#[test]
fn the_shipped_templates_pass_the_check() {
    let out = monza()
        .args(["templates", "check"])
        .arg(repo_root().join("devcontainers"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["go", "node", "python-3.12", "base"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("ok {name} "))
                || l.starts_with(&format!("warn {name}:"))),
            "{name} missing:\n{stdout}"
        );
    }
}

#[test]
fn a_broken_template_fails_the_check_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("broken")).unwrap();
    std::fs::write(
        dir.path().join("broken/devcontainer.json"),
        "{ \"image\": 42 ",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("fine")).unwrap();
    std::fs::write(
        dir.path().join("fine/devcontainer.json"),
        "// comment\n{ \"image\": \"alpine:3\", }",
    )
    .unwrap();
    let out = monza()
        .args(["templates", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("error broken:")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("ok fine ")),
        "{stdout}"
    );
}

#[test]
fn an_unknown_database_scheme_stops_start_up_naming_the_setting() {
    let stderr = serve_fails(&[("DATABASE_URL", "mysql://root:hunter2@localhost/monza")]);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("sqlite://"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[test]
fn a_bad_duration_stops_start_up_naming_the_setting() {
    let stderr = serve_fails(&[("MONZA_SANDBOX_TTL", "forever")]);
    assert!(
        stderr.contains("sandbox-ttl") || stderr.contains("MONZA_SANDBOX_TTL"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_database_is_one_clear_line_without_the_password() {
    let stderr = serve_fails(&[
        (
            "DATABASE_URL",
            "postgres://monza:s3cr3t-pw@127.0.0.1:1/monza",
        ),
        ("MONZA_DB_CONNECT_ATTEMPTS", "1"),
    ]);
    assert!(
        !stderr.contains("s3cr3t-pw"),
        "the password leaked: {stderr}"
    );
    assert!(
        stderr.contains("127.0.0.1") && stderr.contains('1'),
        "{stderr}"
    );
}

/// `monza serve` as a child process: SIGTERM stops it with exit status 0, and the sandbox
/// it made is still running afterwards (sandboxes outlive the server).
#[test]
fn sigterm_stops_the_server_cleanly_and_leaves_sandboxes_running() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let Some(mut serve) = ServeChild::start(dir.path(), &[("MONZA_BOOTSTRAP_TOKEN", ADMIN_TOKEN)])
    else {
        return;
    };
    let port = serve.port;
    let request = |method: &str, path: &str, body: &str| -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    };
    let created = request("POST", "/api/sandboxes", "{}");
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let body = &created[created.find("\r\n\r\n").unwrap() + 4..];
    let sandbox: serde_json::Value = serde_json::from_str(body).unwrap();
    let container = sandbox["container_id"].as_str().unwrap().to_owned();

    let log = serve.terminate();
    assert!(log.iter().any(|l| l.contains("monza stopped")), "{log:?}");

    let running = docker(&["inspect", "--format", "{{.State.Running}}", &container]);
    assert_eq!(
        running.trim(),
        "true",
        "the sandbox's container stopped with the server"
    );
}
