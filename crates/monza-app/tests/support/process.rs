//! The `monza` binary as a child process: [`monza`] for one command, [`ServeChild`] for a
//! `monza serve` read through its stderr, [`ChildServer`] for one logging to a file (the
//! fault and fuzz tests, which kill it, restart it and take its engine and store away).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::{ADMIN_TOKEN, Api, DeploymentContainers};

/// The `monza` binary, without the settings a developer's shell may have exported.
pub fn monza() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_monza"));
    for var in [
        "DATABASE_URL",
        "DEVCONTAINERS_PATH",
        "MONZA_AGENT",
        "MONZA_AGENT_DIR",
        "MONZA_ALLOW_UNSAFE_TEMPLATES",
        "MONZA_AUTH",
        "MONZA_BOOTSTRAP_TOKEN",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd`, which must succeed: its stdout.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `monza serve` on 127.0.0.1:0 with `envs`, which must stop start-up: its stderr.
pub fn serve_fails(envs: &[(&str, &str)]) -> String {
    let out = monza()
        .args(["serve", "--addr", "127.0.0.1:0"])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "monza serve started: {stderr}");
    stderr
}

/// Sends SIGTERM to `child` and asserts it exits with status 0.
pub fn terminate(child: &mut Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {}", child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}

/// `monza serve` on 127.0.0.1:0 with the SQLite store in a directory, the busybox test
/// templates, JSON logs on a pipe, and a deployment label of its own (every container
/// carrying it is removed when this is dropped).
pub struct ServeChild {
    child: Child,
    pub port: u16,
    /// The log lines before "monza listening".
    pub startup: Vec<String>,
    /// Reads the rest of the log, so the child never blocks on a full pipe.
    rest: Option<JoinHandle<Vec<String>>>,
    _containers: DeploymentContainers,
}

impl ServeChild {
    /// Starts it on `dir` with `envs`; `None` (a loud skip) outside CI when it does not start
    /// (no Docker engine).
    pub fn start(dir: &Path, envs: &[(&str, &str)]) -> Option<Self> {
        let containers = DeploymentContainers(DeploymentContainers::label());
        let mut cmd = monza();
        cmd.args(["serve", "--addr", "127.0.0.1:0"])
            .env("MONZA_DATA_DIR", dir)
            .env("MONZA_AGENT_DIR", dir.join("agent"))
            .env(
                "DEVCONTAINERS_PATH",
                monza_devcontainer::test_templates_dir(),
            )
            .env("MONZA_DEFAULT_TEMPLATE", "busybox")
            .env("MONZA_LOG_FORMAT", "json")
            .env("MONZA_DEPLOYMENT", &containers.0)
            .envs(envs.iter().copied())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut startup = Vec::new();
        let mut port = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("monza listening") {
                let json: Value = serde_json::from_str(&line).unwrap();
                port = json["port"].as_u64();
                break;
            }
            let unavailable = line.contains("Docker engine") && line.contains("unavailable");
            startup.push(line);
            if unavailable {
                break;
            }
        }
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            let result: Result<(), String> = Err(format!("monza serve did not start: {startup:?}"));
            monza_domain::testing::require("monza serve start-up (Docker engine)", result);
            return None;
        };
        let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect());
        Some(Self {
            child,
            port: u16::try_from(port).unwrap(),
            startup,
            rest: Some(rest),
            _containers: containers,
        })
    }

    /// Whether a start-up line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.startup.iter().any(|l| l.contains(needle))
    }

    /// SIGTERM; asserts exit status 0: the log lines after "monza listening". Its containers
    /// stay until this is dropped.
    pub fn terminate(&mut self) -> Vec<String> {
        terminate(&mut self.child);
        self.rest.take().unwrap().join().unwrap()
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `monza serve` as a child process on `database_url`, with the busybox test templates, the
/// admin token, no tenant limit and only the environment given (its log in a file); its
/// [`Api`] is its own. Killed (SIGKILL) when dropped.
pub struct ChildServer {
    child: Child,
    api: Api,
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for ChildServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl ChildServer {
    /// Spawns it, logging to a file of its own, and waits until `/health` answers 200.
    pub async fn start(database_url: &str, settings: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::spawn(database_url, settings, &dir.path().join("monza.log"));
        server._dir = Some(dir);
        server.wait_healthy().await;
        server
    }

    /// Spawns it, appending its log to `log` (`settings` come last, so they win).
    pub fn spawn(database_url: &str, settings: &[(&str, &str)], log: &Path) -> Self {
        let port = free_port();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_monza"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("SERVER_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env(
                "MONZA_AGENT_DIR",
                log.parent().unwrap_or(Path::new("/tmp")).join("agent"),
            )
            .env(
                "DEVCONTAINERS_PATH",
                monza_devcontainer::test_templates_dir(),
            )
            .env("MONZA_DEFAULT_TEMPLATE", "busybox")
            .env("MONZA_BOOTSTRAP_TOKEN", ADMIN_TOKEN)
            .env("MONZA_MAX_SANDBOXES_PER_TENANT", "0")
            .env("MONZA_SHUTDOWN_TIMEOUT", "5s")
            .envs(std::env::var_os("DOCKER_HOST").map(|h| ("DOCKER_HOST", h)))
            .envs(settings.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child,
            api: Api::new(format!("http://127.0.0.1:{port}")),
            log: log.to_path_buf(),
            _dir: None,
        }
    }

    /// Waits (60 s at most) until `/health` answers 200: the process serves.
    pub async fn wait_healthy(&mut self) {
        self.wait_for_200("/health").await;
    }

    /// Waits (60 s at most) until `/ready` answers 200: the engine and the store answer too.
    pub async fn wait_ready(&mut self) {
        self.wait_for_200("/ready").await;
    }

    async fn wait_for_200(&mut self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(self.url(path)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("monza exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "monza did not start:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_alive(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "monza exited:\n{}",
            self.log_text()
        );
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// The child's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory the child ever had, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
