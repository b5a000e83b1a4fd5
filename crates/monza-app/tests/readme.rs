#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The README's API walkthrough, run as written: every `sh` block of its "The API" section,
//! in order, in one bash script against a real server. The shipped `go` template needs a
//! registry, so this server's `go` template is a stand-in on the local busybox image.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use monza_app::Application;
use monza_app::settings::{Secret, ServeArgs};

/// The server's first admin token (`MONZA_BOOTSTRAP_TOKEN`), the walkthrough's `MONZA_TOKEN`.
const TOKEN: &str = "readme-walkthrough-token-0123456789abcdef0123456789";

fn api_section_script() -> String {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme
        .find("\n## The API")
        .expect("README has an API section");
    let end = readme[start + 1..]
        .find("\n## ")
        .map_or(readme.len(), |i| start + 1 + i);
    let section = &readme[start..end];
    let mut script = String::from("set -euo pipefail\n");
    let mut blocks = 0;
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").unwrap();
        for line in body[..close].lines() {
            // The server address and the token are the test's own.
            if !line.starts_with("MONZA=") && !line.starts_with("MONZA_TOKEN=") {
                script.push_str(line);
                script.push('\n');
            }
        }
        blocks += 1;
        rest = &body[close + 3..];
    }
    assert!(
        blocks >= 5,
        "found only {blocks} sh blocks in the API section"
    );
    script
}

#[tokio::test]
async fn the_readme_api_examples_work_as_written() {
    let script = api_section_script();
    let templates = tempfile::tempdir().unwrap();
    std::fs::create_dir(templates.path().join("go")).unwrap();
    std::fs::write(
        templates.path().join("go/devcontainer.json"),
        r#"{ "name": "go stand-in", "image": "monza-test/busybox:latest" }"#,
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::defaults();
    args.addr = "127.0.0.1:0".parse().unwrap();
    args.devcontainers = templates.path().to_path_buf();
    args.data_dir = data.path().to_path_buf();
    args.shutdown_timeout = Duration::from_secs(5);
    args.bootstrap_token = Some(Secret::from(TOKEN.to_owned()));
    let Some(app) = monza_domain::testing::require(
        "Docker engine for the README walkthrough",
        Application::build(args).await,
    ) else {
        return;
    };
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = app.stop_handle();
    let service = app.service().clone();
    let server = tokio::spawn(app.run_until_stopped());

    let workdir = tempfile::tempdir().unwrap();
    let output = tokio::task::spawn_blocking({
        let base = base.clone();
        let workdir = workdir.path().to_path_buf();
        move || {
            Command::new("bash")
                .args(["-c", &script])
                .env("MONZA", base)
                .env("MONZA_TOKEN", TOKEN)
                .current_dir(workdir)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();

    // What the walkthrough did, as the store saw it.
    let all = service
        .list(
            &monza_domain::Access::Admin,
            monza_domain::SandboxFilter {
                status: monza_domain::StatusFilter::All,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for sandbox in &all {
        let _ = service
            .delete(&monza_domain::Access::Admin, sandbox.id)
            .await;
    }
    stop.stop().await;
    server.await.unwrap().unwrap();

    assert!(
        output.status.success(),
        "script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("\"status\":\"ok\""), "{stdout}");
    assert!(
        stdout.contains("hello from "),
        "execute output missing:\n{stdout}"
    );
    assert!(
        stdout.contains("/workspace/src/hello.go"),
        "upload missing:\n{stdout}"
    );
    for answer in [
        r#"{"path":"/workspace/notes/2026/list.txt","offset":1,"lines":["beta"],"next_offset":2}"#,
        r#"{"matches":[{"path":"/workspace/notes/2026/list.txt","line":3,"text":"gamma"}],"truncated":false}"#,
        r#"{"paths":["/workspace/notes/2026/list.txt"],"truncated":false}"#,
        r#"{"path":"/workspace/notes/2026/list.txt","replacements":1}"#,
        r#"{"path":"/workspace/notes","removed":3}"#,
        r#"{"path":"/workspace/tree","files":1,"directories":2,"links":1,"bytes":11}"#,
        "./latest -> src/a.txt",
        "./ ./empty/ ./latest ./src/ ./src/a.txt \n",
        r#"{"results":[{"path":"/workspace/batch/a.txt","size":11,"mode":"0644"},{"path":"/workspace/batch/deep/b.txt","size":11,"mode":"0644"}]}"#,
        r#"{"path":"/workspace/batch/deep/b.txt","size":11,"mode":"0644","content_base64":"aGVsbG8gdHJlZQo="}]}"#,
    ] {
        assert!(stdout.contains(answer), "{answer} missing:\n{stdout}");
    }
    // curl prints bodies without a final newline, so markers follow JSON on the same line.
    assert!(stdout.contains("same\n"), "download differs:\n{stdout}");
    assert_eq!(
        stdout.matches("204\n").count(),
        5,
        "the codes of stdin, signal, the process's delete, heartbeat and delete missing:\n{stdout}"
    );
    assert!(
        stdout.contains("101\nterminal ready\n"),
        "the terminal's WebSocket handshake or its first frame missing:\n{stdout}"
    );
    assert!(
        stdout.contains(r#"{"data":"bye monza\n","offset":21,"type":"stdout"}"#),
        "the background process's output, read from an offset, missing:\n{stdout}"
    );
    assert!(
        !stdout.contains("\"error\""),
        "an example answered an error:\n{stdout}"
    );
    assert_eq!(all.len(), 1, "the walkthrough makes exactly one sandbox");
    assert_eq!(all[0].name.as_str(), "demo");
    assert_eq!(all[0].status(), monza_domain::SandboxStatus::Deleted);
}
