#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `monza` binary's command line, run as a user would.

use std::path::PathBuf;
use std::process::Command;

fn monza() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_monza"));
    for var in [
        "DATABASE_URL",
        "DEVCONTAINERS_PATH",
        "MONZA_ALLOW_UNSAFE_TEMPLATES",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

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
        "SANDBOX_MEMORY_LIMIT",
        "SANDBOX_CPU_LIMIT",
        "MONZA_PUBLISH_ADDR",
        "DOCKER_HOST",
        "MONZA_LOG_FORMAT",
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
    let out = monza()
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("DATABASE_URL", "mysql://root:hunter2@localhost/monza")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("sqlite://"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[test]
fn a_bad_duration_stops_start_up_naming_the_setting() {
    let out = monza()
        .args(["serve"])
        .env("MONZA_SANDBOX_TTL", "forever")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sandbox-ttl") || stderr.contains("MONZA_SANDBOX_TTL"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_database_is_one_clear_line_without_the_password() {
    let out = monza()
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env(
            "DATABASE_URL",
            "postgres://monza:s3cr3t-pw@127.0.0.1:1/monza",
        )
        .env("MONZA_DB_CONNECT_ATTEMPTS", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("s3cr3t-pw"),
        "the password leaked: {stderr}"
    );
    assert!(
        stderr.contains("127.0.0.1") && stderr.contains('1'),
        "{stderr}"
    );
}
