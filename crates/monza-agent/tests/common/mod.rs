//! The host side of the agent's protocol, for tests: a listening socket in a temporary
//! directory, a real busybox container running the static agent as an unprivileged user,
//! and a connection that sends requests and gathers their answers.

use std::collections::HashMap;
use std::io::{BufReader, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use monza_agent_protocol::{
    ErrorReply, ExecRequest, Exit, Hello, Message, PROTOCOL_VERSION, Stream, Welcome, read_message,
    write_message,
};

pub const IMAGE: &str = "monza-test/busybox:latest";
/// Where the agent binary and the socket directory appear in the container.
const AGENT_IN_CONTAINER: &str = "/.monza-bin/monza-agent";
const SOCKET_DIR_IN_CONTAINER: &str = "/.monza";
const SOCKET_NAME: &str = "agent.sock";
/// No single answer takes this long; a test fails rather than hangs.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether the Docker engine answers; in CI its absence fails the test.
pub fn docker_available() -> bool {
    let why = match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) => e.to_string(),
    };
    assert!(!in_ci(), "Docker is required in CI but unavailable: {why}");
    eprintln!("!!! SKIPPED: Docker is unavailable ({why})");
    false
}

/// The static agent, built once per test run with the command the README gives (or taken
/// from `MONZA_AGENT_BIN`).
pub fn agent_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("MONZA_AGENT_BIN") {
            return PathBuf::from(path);
        }
        // The test executable is <target>/debug/deps/<name>: a target directory of its own
        // (`agent-static` inside it), because the outer `cargo test` holds the lock of its own.
        let exe = std::env::current_exe().expect("test executable path");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("the test executable lives in <target>/debug/deps")
            .join("agent-static");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&workspace)
            .args([
                "build",
                "--quiet",
                "--package",
                "monza-agent",
                "--bin",
                "monza-agent",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
            ])
            .arg(&target)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("running cargo to build the static agent");
        assert!(status.success(), "building the static agent failed");
        target.join("x86_64-unknown-linux-gnu/debug/monza-agent")
    })
}

/// A container removed (with its anonymous volumes) when dropped, even by a failing test.
#[derive(Debug)]
pub struct Container {
    pub id: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "--force", "--volumes", &self.id])
            .output();
    }
}

impl Container {
    /// `docker exec <container> cat <path>`, as root: the tests' window into the sandbox,
    /// independent of the agent.
    pub fn cat(&self, path: &str) -> String {
        let out = Command::new("docker")
            .args(["exec", &self.id, "cat", path])
            .output()
            .expect("docker exec");
        assert!(
            out.status.success(),
            "docker exec cat {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        Command::new("docker")
            .args(["logs", &self.id])
            .output()
            .map(|out| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .unwrap_or_default()
    }
}

/// The host's end: it creates and owns the listening socket; the agent connects to it.
#[derive(Debug)]
pub struct Host {
    pub dir: tempfile::TempDir,
    listener: Option<UnixListener>,
}

impl Host {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("monza-agent-test-")
            .tempdir()
            .expect("temp dir");
        // Searchable by the sandbox's user, writable by nobody but the host.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod socket dir");
        let mut host = Self {
            dir,
            listener: None,
        };
        host.listen();
        host
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(SOCKET_NAME)
    }

    fn listen(&mut self) {
        let socket = self.socket();
        let listener = UnixListener::bind(&socket).expect("bind the agent socket");
        // Connecting needs write permission on the socket.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .expect("chmod socket");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        self.listener = Some(listener);
    }

    /// Stops listening (as a restarted server would) and listens again on the same path.
    pub fn restart(&mut self) {
        self.listener = None;
        std::fs::remove_file(self.socket()).expect("remove the old socket");
        self.listen();
    }

    /// Waits (bounded) for the agent to connect, then does the handshake.
    pub fn accept(&self, within: Duration) -> Result<Conn, String> {
        let listener = self.listener.as_ref().expect("listening");
        let deadline = Instant::now() + within;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(format!("no agent connected within {within:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        stream.set_nonblocking(false).expect("blocking stream");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        let mut writer = stream.try_clone().expect("clone stream");
        let mut reader = BufReader::with_capacity(256 * 1024, stream);
        let hello = match read_message(&mut reader) {
            Ok(Some(Message::Hello(hello))) => hello,
            other => return Err(format!("expected a hello, got {other:?}")),
        };
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        write_message(
            &mut writer,
            &Message::Welcome(Welcome {
                protocol: PROTOCOL_VERSION,
            }),
        )
        .map_err(|e| e.to_string())?;
        Ok(Conn {
            reader,
            writer,
            hello,
            next_id: 1,
        })
    }
}

/// One connection to an agent.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub hello: Hello,
    next_id: u64,
}

/// Everything one exec answered.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<Exit>,
    pub error: Option<ErrorReply>,
}

impl Outcome {
    pub fn exit(&self) -> &Exit {
        match (&self.exit, &self.error) {
            (Some(exit), _) => exit,
            (None, error) => panic!("expected an exit, got {error:?}"),
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("UTF-8 stdout")
    }

    fn absorb(&mut self, message: Message) -> bool {
        match message {
            Message::Output {
                stream: Stream::Stdout,
                data,
                ..
            } => self.stdout.extend_from_slice(&data),
            Message::Output {
                stream: Stream::Stderr,
                data,
                ..
            } => self.stderr.extend_from_slice(&data),
            Message::Exit { exit, .. } => {
                self.exit = Some(exit);
                return true;
            }
            Message::Error { error, .. } => {
                self.error = Some(error);
                return true;
            }
            other => panic!("unexpected message {other:?}"),
        }
        false
    }
}

impl Conn {
    pub fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn send(&mut self, message: &Message) {
        write_message(&mut self.writer, message).expect("send to the agent");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.writer.write_all(bytes).expect("send to the agent");
    }

    pub fn recv(&mut self) -> Message {
        match read_message(&mut self.reader) {
            Ok(Some(message)) => message,
            other => panic!("expected a message from the agent, got {other:?}"),
        }
    }

    /// Sends `request` and returns its id (answers are read with [`Conn::recv`]).
    pub fn start(&mut self, request: ExecRequest) -> u64 {
        let id = self.fresh_id();
        self.send(&Message::Exec { id, request });
        id
    }

    /// Runs one request alone on the connection and gathers its answer.
    pub fn exec(&mut self, request: ExecRequest) -> Outcome {
        let id = self.start(request);
        let mut outcome = Outcome::default();
        loop {
            let message = self.recv();
            assert_eq!(message.id(), id, "an answer for another request");
            if outcome.absorb(message) {
                return outcome;
            }
        }
    }

    pub fn sh(&mut self, command: &str) -> Outcome {
        self.exec(ExecRequest::shell(command))
    }

    /// Gathers the answers of several requests sent together, by id.
    pub fn gather(&mut self, ids: &[u64]) -> HashMap<u64, Outcome> {
        let mut outcomes: HashMap<u64, Outcome> = HashMap::new();
        let mut done = 0;
        while done < ids.len() {
            let message = self.recv();
            let id = message.id();
            assert!(ids.contains(&id), "answer for unknown id {id}");
            if outcomes.entry(id).or_default().absorb(message) {
                done += 1;
            }
        }
        outcomes
    }
}

/// A running container with the agent connected.
#[derive(Debug)]
pub struct Sandbox {
    pub conn: Conn,
    pub host: Host,
    pub container: Container,
}

/// Starts a hardened busybox container whose entrypoint is the agent, running as
/// 1000:1000; `None` (skipped) when Docker is missing outside CI.
pub fn sandbox() -> Option<Sandbox> {
    if !docker_available() {
        return None;
    }
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let binary = agent_binary();
    let host = Host::new();
    let name = format!(
        "monza-agent-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let out = Command::new("docker")
        .args([
            "run",
            "--detach",
            "--name",
            &name,
            "--label",
            "monza-agent-test=1",
            "--init",
            "--user",
            "1000:1000",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,mode=1777",
            "--pids-limit",
            "512",
            "--memory",
            "256m",
            "--network",
            "none",
            "--env",
        ])
        .arg(format!(
            "MONZA_AGENT_SOCKET={SOCKET_DIR_IN_CONTAINER}/{SOCKET_NAME}"
        ))
        .arg("--volume")
        .arg(format!("{}:{AGENT_IN_CONTAINER}:ro", binary.display()))
        .arg("--volume")
        .arg(format!(
            "{}:{SOCKET_DIR_IN_CONTAINER}:ro",
            host.dir.path().display()
        ))
        .args([IMAGE, AGENT_IN_CONTAINER])
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let container = Container {
        id: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    };
    let conn = match host.accept(Duration::from_secs(30)) {
        Ok(conn) => conn,
        Err(e) => panic!("{e}; agent logs:\n{}", container.logs()),
    };
    Some(Sandbox {
        conn,
        host,
        container,
    })
}
