//! The agent inside each sandbox (crate `monza-agent`), seen from the host: its binary, the
//! socket monza listens on for it, starting it, and running commands through it.
//!
//! Per sandbox, monza creates `<agent_dir>/<sandbox id>/` (monza's user, 0711), binds a
//! listening unix socket `agent.sock` in it (0666) and keeps the listener; the container
//! gets that directory read-only at [`SOCKET_DIR`] and the binary read-only at
//! [`BINARY_PATH`]. After the container starts, a detached Docker exec starts the agent as
//! the sandbox's user; it connects out to the socket. monza only ever `accept()`s on the
//! listener it holds: nothing under the directory is opened, connected to or followed after
//! the listener is bound.
//!
//! Each start of the agent gets a fresh random token in the starting exec's `Env`
//! (`MONZA_AGENT_TOKEN`); a connection is served only when its hello carries the latest
//! start's token, so a peer that merely reaches the socket is refused.
//!
//! One connection per sandbox is in use at a time: a later one is accepted only when the
//! current one has ended (a restarted agent replaces a dead one); others are closed. Answers
//! are demultiplexed by request id to the execs waiting for them.
//!
//! [`Agents::exec`] answers `None` whenever the agent cannot serve a command the way Docker
//! exec would (no agent, not connected within a short wait, dead, another user, the agent
//! refusing the command); the caller then runs it through Docker exec, and a dead agent is
//! restarted in the background.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use monza_agent_protocol::{
    self as protocol, AgentCodec, CodecError, DecodeError, Message, PROTOCOL_VERSION, Program,
    Signal, Stream, Welcome,
};
use monza_domain::{Command, Error, ExecRequest, OutputStream, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::engine::RawClient;
use crate::error::{Failure, bounded};
use crate::sink::{Finished, Sink, consumer_gone};

mod fs;
mod processes;

pub(crate) use fs::FsReply;

/// The static agent, built by this crate's build script (see `build.rs`).
pub const AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/monza-agent"));

/// Where the container sees its socket directory (read-only).
pub(crate) const SOCKET_DIR: &str = "/.monza";
/// Where the container sees the agent binary (read-only).
pub(crate) const BINARY_PATH: &str = "/.monza-agent";
/// The socket's name in the directory.
const SOCKET_NAME: &str = "agent.sock";
/// The environment variable telling the agent where to connect.
pub(crate) const SOCKET_ENV: &str = "MONZA_AGENT_SOCKET";
/// The environment variable carrying a start's secret token to the agent: only in the
/// detached Docker exec's `Env` that starts it, never in the container's config or labels.
const TOKEN_ENV: &str = "MONZA_AGENT_TOKEN";
/// Handshakes in progress at once per sandbox; connections beyond are closed at once.
const HANDSHAKES: usize = 4;

/// How long after it was started an agent may take to connect; an exec waits for it that
/// long at most, then goes through Docker exec.
const CONNECT_WAIT: Duration = Duration::from_millis(1000);
/// How long an adopted agent that may still run (its token was saved) has to reconnect
/// before a fresh one is started; also how long a background-process request waits for
/// an agent that was just (re)started.
const ADOPT_WAIT: Duration = Duration::from_secs(3);
/// The agent is not started again sooner than this after the last start.
const RESTART_EVERY: Duration = Duration::from_secs(2);
/// A connection's hello must arrive within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past its timeout the host waits for an exec's exit before giving up on it.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Output bytes held for one exec past which the agent is asked to pause it (a streamed
/// exec whose client reads slowly); it is resumed below [`RESUME_BELOW`]. The reader never
/// waits for one exec, so the others go on; what arrives after the pause (the agent's
/// outbox, at most 1 MiB) is held too.
const PAUSE_ABOVE: usize = 256 * 1024;
/// See [`PAUSE_ABOVE`].
const RESUME_BELOW: usize = 64 * 1024;
/// Output bytes held for one request past which its frames are no longer held: an exec
/// fails (the agent is taken to ignore its pause), an attach ends and its reader attaches
/// again from where it got to (the bytes are still in the agent's ring), so host memory
/// never grows past this per request. An agent keeps sending until the pause or detach
/// reaches it: its outbox (1 MiB) and whatever it read meanwhile, which for a process
/// writing as fast as a CPU can (`yes`) on a loaded machine was seen to pass 4 MiB.
const HOLD_LIMIT: usize = 4 * 1024 * 1024;
/// Frames buffered toward the agent.
const OUTBOX_FRAMES: usize = 256;

/// The directory under the agent directory that holds the ownership locks.
const OWNERS: &str = "owners";

/// `MONZA_AGENT_SOCKET=…`: where the agent finds the socket inside the sandbox.
fn socket_env() -> String {
    format!("{SOCKET_ENV}={SOCKET_DIR}/{SOCKET_NAME}")
}

/// Every sandbox's agent, by container id. Shared by the runtime's clones.
pub(crate) struct Agents {
    enabled: AtomicBool,
    dir: PathBuf,
    raw: RawClient,
    request_timeout: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    binary: Mutex<Option<PathBuf>>,
    /// Containers whose agent adoption was tried (once each).
    adopted: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("dir", &self.dir)
            .field("sandboxes", &lock(&self.slots).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a container needs for its agent: its mounts and environment.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) slot: Arc<Slot>,
    pub(crate) container: AgentMounts,
}

/// The agent's part of a container's create body.
#[derive(Debug, Clone)]
pub(crate) struct AgentMounts {
    /// Read-only binds: the socket directory and the binary.
    pub(crate) mounts: Vec<serde_json::Value>,
    /// `MONZA_AGENT_SOCKET=...`.
    pub(crate) env: String,
}

impl AgentMounts {
    /// The mounts for socket directory `dir` and agent binary `binary`.
    pub(crate) fn new(dir: &Path, binary: &Path) -> Self {
        Self {
            mounts: vec![
                json!({
                    "Type": "bind",
                    "Source": dir.to_string_lossy(),
                    "Target": SOCKET_DIR,
                    "ReadOnly": true,
                }),
                json!({
                    "Type": "bind",
                    "Source": binary.to_string_lossy(),
                    "Target": BINARY_PATH,
                    "ReadOnly": true,
                }),
            ],
            env: socket_env(),
        }
    }
}

impl Agents {
    pub(crate) fn new(
        enabled: bool,
        dir: PathBuf,
        raw: RawClient,
        request_timeout: Duration,
    ) -> Self {
        Self {
            enabled: AtomicBool::new(enabled),
            dir,
            raw,
            request_timeout,
            slots: Mutex::default(),
            binary: Mutex::default(),
            adopted: Mutex::default(),
        }
    }

    /// Whether new sandboxes get an agent and execs try it first.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Installs the binary now; when that fails, turns the agent off for this runtime
    /// (Docker exec only) and says why.
    pub(crate) fn install_or_disable(&self) -> Result<PathBuf> {
        let installed = self.binary();
        if installed.is_err() {
            self.enabled.store(false, Ordering::Relaxed);
        }
        installed
    }

    /// The host path of the agent binary, `<dir>/bin/monza-agent` (monza's user, 0555),
    /// written once per runtime: an existing file is kept only when its content hashes the
    /// same as the embedded binary, else replaced atomically (a rename; running containers
    /// keep the file they started with). The name does not change with the content, so a
    /// stopped container's bind mount still finds it after an upgrade.
    pub(crate) fn binary(&self) -> Result<PathBuf> {
        let mut cached = lock(&self.binary);
        if let Some(path) = &*cached {
            return Ok(path.clone());
        }
        if !socket_path_fits(&self.dir) {
            return Err(Error::internal(format!(
                "the agent directory {} is too long: a sandbox's socket path would not fit a \
                 unix socket address ({SUN_PATH_MAX} bytes)",
                self.dir.display()
            )));
        }
        let digest = agent_digest();
        let bin_dir = self.dir.join("bin");
        make_dir(&self.dir)?;
        make_dir(&bin_dir)?;
        let path = bin_dir.join("monza-agent");
        let fail = |e: std::io::Error| {
            Error::internal(format!("installing the agent at {}: {e}", path.display()))
        };
        let intact = match std::fs::read(&path) {
            Ok(bytes) => hex(&Sha256::digest(&bytes)) == digest,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(fail(e)),
        };
        if !intact {
            let tmp = bin_dir.join(format!(
                ".monza-agent-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(AGENT_BINARY)?;
                file.sync_all()?;
                file.set_permissions(std::fs::Permissions::from_mode(0o555))?;
                std::fs::rename(&tmp, &path)
            };
            if let Err(e) = write() {
                let _ = std::fs::remove_file(&tmp);
                return Err(fail(e));
            }
            tracing::info!(path = %path.display(), "agent binary installed");
        }
        *cached = Some(path.clone());
        Ok(path)
    }

    /// Creates the sandbox's socket directory and listener (before its container exists, or
    /// when adopting one). `user` is who the agent runs as: the user execs without their own
    /// run as. `token` is the one an agent already running in it was started with (kept by
    /// an earlier monza, see [`Agents::saved_token`]): that agent is served when it
    /// reconnects, with its background processes.
    pub(crate) fn prepare(
        &self,
        sandbox_id: &str,
        user: Option<String>,
        token: Option<String>,
    ) -> Result<Prepared> {
        let binary = self.binary()?;
        let owner = self.own(sandbox_id)?;
        let dir = self.sandbox_dir(sandbox_id);
        let listener = match listen(&dir) {
            Ok(listener) => listener,
            Err(e) => {
                // Nothing to own: no lock file left behind.
                let _ = std::fs::remove_file(&owner.0);
                return Err(e);
            }
        };

        let (conn_tx, _) = watch::channel(None);
        // An agent that may still run gets its time to reconnect before anyone starts
        // another (see `Slot::reconnect_or_start`).
        let last_start = token.as_ref().map(|_| Instant::now());
        let slot = Arc::new(Slot {
            dir: dir.clone(),
            sandbox_id: sandbox_id.to_owned(),
            token_path: self.token_path(sandbox_id),
            user,
            container_id: Mutex::new(None),
            conn: conn_tx,
            last_start: Mutex::new(last_start),
            served: AtomicU64::new(0),
            raw: self.raw.clone(),
            request_timeout: self.request_timeout,
            accept: Mutex::new(None),
            owner: Mutex::new(Some(owner)),
            reconnecting: AtomicBool::new(token.is_some()),
            // Before the listener accepts: an agent reconnecting at once must not be refused.
            token: Mutex::new(token),
            keep_alive: Mutex::new(std::collections::HashSet::new()),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::downgrade(&slot)));
        *lock(&slot.accept) = Some(task);
        Ok(Prepared {
            slot,
            container: AgentMounts::new(&dir, &binary),
        })
    }

    /// Takes the sandbox's ownership lock, `<dir>/owners/<sandbox id>.lock` (a directory no
    /// sandbox sees): an exclusive `flock` held while the slot lives, so two runtimes on one
    /// agent directory (replicas, or a runtime and its successor in one process) never both
    /// listen for one sandbox. Conflict when another live runtime holds it.
    fn own(&self, sandbox_id: &str) -> Result<(PathBuf, std::fs::File)> {
        let path = self.lock_path(sandbox_id);
        let owners = self.dir.join(OWNERS);
        let fail = |e: std::io::Error| Error::internal(format!("locking {}: {e}", path.display()));
        match std::fs::DirBuilder::new().mode(0o700).create(&owners) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(e)),
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(fail)?;
        match file.try_lock() {
            Ok(()) => Ok((path, file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::conflict(format!(
                "the agent of sandbox {sandbox_id} belongs to another live monza"
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
        }
    }

    /// Removes the directory and lock file of a sandbox whose container is gone and which
    /// no slot of this runtime holds, unless another live runtime owns it (holds its lock).
    pub(crate) fn remove_leftovers(&self, sandbox_id: &str) {
        let dir = self.sandbox_dir(sandbox_id);
        let lock_path = self.lock_path(sandbox_id);
        if !dir.exists() && !lock_path.exists() {
            return;
        }
        let Ok((path, _file)) = self.own(sandbox_id) else {
            return;
        };
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a left-over agent directory failed")
            }
        }
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(self.token_path(sandbox_id));
    }

    /// The token the sandbox's agent was last started with, as saved by [`Slot::start_agent`]
    /// (by this monza or an earlier one); `None` when there is none or it cannot be read.
    pub(crate) fn saved_token(&self, sandbox_id: &str) -> Option<String> {
        let token = std::fs::read_to_string(self.token_path(sandbox_id)).ok()?;
        let token = token.trim();
        (token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| token.to_owned())
    }

    /// Every slot, for a pass over all of them.
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots).values().cloned().collect()
    }

    /// Files a prepared slot under its container's id.
    pub(crate) fn register(&self, container_id: &str, slot: Arc<Slot>) {
        *lock(&slot.container_id) = Some(container_id.to_owned());
        lock(&self.slots).insert(container_id.to_owned(), slot);
    }

    /// The sandbox's socket directory.
    pub(crate) fn sandbox_dir(&self, sandbox_id: &str) -> PathBuf {
        self.dir.join(sandbox_id)
    }

    /// The sandbox's ownership lock file (see [`Agents::own`]).
    fn lock_path(&self, sandbox_id: &str) -> PathBuf {
        self.dir.join(OWNERS).join(format!("{sandbox_id}.lock"))
    }

    /// Where the token of the sandbox agent's latest start is kept (0600, beside the lock,
    /// in a directory no sandbox sees), so that a restarted monza serves the agent still
    /// running there, whose background processes live on in it.
    fn token_path(&self, sandbox_id: &str) -> PathBuf {
        self.dir.join(OWNERS).join(format!("{sandbox_id}.token"))
    }

    /// Records that adoption of the container was tried; false when it already was.
    pub(crate) fn first_adoption(&self, container_id: &str) -> bool {
        lock(&self.adopted).insert(container_id.to_owned())
    }

    pub(crate) fn get(&self, container_id: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(container_id).cloned()
    }

    /// Forgets the container's agent: closes its listener and connection and removes its
    /// directory.
    pub(crate) fn forget(&self, container_id: &str) {
        lock(&self.adopted).remove(container_id);
        let slot = lock(&self.slots).remove(container_id);
        if let Some(slot) = slot {
            slot.close(true);
        }
    }

    /// Runs `request` through the container's agent, or answers `None` when Docker exec
    /// must run it instead (see the module docs).
    pub(crate) async fn exec(
        &self,
        container_id: &str,
        request: &ExecRequest,
        default_timeout: Duration,
        sink: &mut Sink,
    ) -> Option<Outcome> {
        let slot = self.get(container_id)?;
        if request.user != slot.user {
            return None;
        }
        let Some(conn) = slot.connection().await else {
            slot.restart_in_background();
            return None;
        };
        let output = conn.exec(request, default_timeout, sink).await;
        if conn.is_closed() {
            slot.restart_in_background();
        }
        if matches!(output, Some(Outcome::Done(Ok(_)))) {
            slot.served.fetch_add(1, Ordering::Relaxed);
        }
        output
    }
}

/// How an exec through the agent ended, when Docker exec is not to run it.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The agent ran it: how it ended (its output is in the sink), or why it failed.
    Done(Result<Finished>),
    /// The agent was handed the command and then lost (the connection ended, or the agent
    /// lost track of it after it started): it may have run, so it is not run again. The
    /// caller finds out whether the container is gone, which is then the answer.
    Lost(Error),
}

/// One sandbox's agent: its directory, listener task and current connection.
pub(crate) struct Slot {
    dir: PathBuf,
    pub(crate) sandbox_id: String,
    /// See [`Agents::token_path`].
    token_path: PathBuf,
    user: Option<String>,
    container_id: Mutex<Option<String>>,
    conn: watch::Sender<Option<Arc<Conn>>>,
    last_start: Mutex<Option<Instant>>,
    /// The token of the agent's latest start; `None` until it is started: no one is served.
    token: Mutex<Option<String>>,
    /// Commands the agent ran to their end.
    pub(crate) served: AtomicU64,
    raw: RawClient,
    request_timeout: Duration,
    accept: Mutex<Option<JoinHandle<()>>>,
    /// `<agent_dir>/owners/<sandbox id>.lock`, locked while this slot lives.
    owner: Mutex<Option<(PathBuf, std::fs::File)>>,
    /// The `keep_alive` background processes last seen running (pids).
    pub(crate) keep_alive: Mutex<std::collections::HashSet<u32>>,
    /// An agent that may still run is being given its time to reconnect (see
    /// [`Slot::reconnect_or_start`]): nothing else starts one meanwhile.
    reconnecting: AtomicBool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("dir", &self.dir)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// Whether an agent is connected now.
    pub(crate) fn connected(&self) -> bool {
        self.conn.borrow().as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The live connection; when there is none but the agent was started less than
    /// [`CONNECT_WAIT`] ago, waits for it until then.
    async fn connection(&self) -> Option<Arc<Conn>> {
        self.connection_within(CONNECT_WAIT).await
    }

    /// The live connection; when there is none but the agent was started less than `wait`
    /// ago, waits for it until then.
    async fn connection_within(&self, wait: Duration) -> Option<Arc<Conn>> {
        if let Some(conn) = self.conn.borrow().as_ref().filter(|c| !c.is_closed()) {
            return Some(conn.clone());
        }
        let since = (*lock(&self.last_start))?;
        let remaining = wait.checked_sub(since.elapsed())?;
        let mut rx = self.conn.subscribe();
        let waited = tokio::time::timeout(remaining, rx.wait_for(live)).await;
        match waited {
            Ok(Ok(conn)) => conn.clone(),
            _ => None,
        }
    }

    /// Whether the agent was started less than [`CONNECT_WAIT`] ago (it may still connect).
    pub(crate) fn recently_started(&self) -> bool {
        lock(&self.last_start).is_some_and(|t| t.elapsed() < CONNECT_WAIT)
    }

    /// Starts the agent with a detached Docker exec, as the sandbox's user.
    pub(crate) async fn start_agent(&self) -> Result<()> {
        let Some(container_id) = lock(&self.container_id).clone() else {
            return Ok(());
        };
        *lock(&self.last_start) = Some(Instant::now());
        let what = format!("starting the agent in container {container_id}");
        // A fresh secret per start: from now on only the agent started here is served (an
        // earlier start's agent, and anyone else who can reach the socket, is refused).
        let token = new_token()?;
        {
            // Saved and made current in one step: two starts at once leave the file and the
            // slot agreeing on the later one.
            let mut current = lock(&self.token);
            save_token(&self.token_path, &token)?;
            *current = Some(token.clone());
        }
        let mut body = json!({
            "Cmd": [BINARY_PATH],
            "AttachStdin": false,
            "AttachStdout": false,
            "AttachStderr": false,
            "Env": [
                socket_env(),
                format!("{TOKEN_ENV}={token}"),
            ],
        });
        if let (Some(user), Some(obj)) = (&self.user, body.as_object_mut()) {
            obj.insert("User".into(), json!(user));
        }
        let start = async {
            let endpoint = format!("/containers/{container_id}/exec");
            let exec = self.raw.post_for_id(&endpoint, body.to_string()).await?;
            let endpoint = format!("/exec/{exec}/start");
            self.raw
                .post_json(&endpoint, r#"{"Detach":true,"Tty":false}"#.to_owned())
                .await?;
            Ok::<(), Failure>(())
        };
        bounded(self.request_timeout, start)
            .await
            .map_err(|f| f.into_domain("docker", &what))?;
        tracing::debug!(container_id, "agent started");
        Ok(())
    }

    /// For a slot adopted with a saved token (see [`Agents::prepare`]): the agent that may
    /// still run there is given [`ADOPT_WAIT`] to reconnect (its backoff is at most 2 s);
    /// when it does not, a fresh one is started.
    pub(crate) async fn reconnect_or_start(&self) -> Result<()> {
        let mut rx = self.conn.subscribe();
        let since = (*lock(&self.last_start)).unwrap_or_else(Instant::now);
        let remaining = ADOPT_WAIT.saturating_sub(since.elapsed());
        if matches!(
            tokio::time::timeout(remaining, rx.wait_for(live)).await,
            Ok(Ok(_))
        ) {
            tracing::info!(sandbox_id = %self.sandbox_id, "the running agent reconnected");
            self.reconnecting.store(false, Ordering::Release);
            return Ok(());
        }
        self.reconnecting.store(false, Ordering::Release);
        self.start_agent().await
    }

    /// Starts the agent again in the background, unless it was started less than
    /// [`RESTART_EVERY`] ago.
    pub(crate) fn restart_in_background(self: &Arc<Self>) {
        if self.reconnecting.load(Ordering::Acquire) {
            return;
        }
        {
            let last = lock(&self.last_start);
            if last.is_some_and(|t| t.elapsed() < RESTART_EVERY) {
                return;
            }
        }
        self.start_in_background();
    }

    /// Starts the agent without waiting for the Docker exec that starts it. The start is
    /// claimed at once, so a command arriving meanwhile waits for its connection (up to
    /// [`CONNECT_WAIT`]) instead of starting it again; on failure commands go through Docker
    /// exec and the next one tries again.
    pub(crate) fn start_in_background(self: &Arc<Self>) {
        *lock(&self.last_start) = Some(Instant::now());
        let slot = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = slot.start_agent().await {
                tracing::warn!(error = %e, "starting the agent failed");
            }
        });
    }

    fn install(&self, conn: Arc<Conn>) -> bool {
        let mut installed = false;
        self.conn.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| !c.is_closed()) {
                return false;
            }
            *current = Some(conn.clone());
            installed = true;
            true
        });
        installed
    }

    /// Stops listening and drops the connection; with `remove_dir`, also removes the
    /// directory (the container is gone). Without, the directory stays for the container's
    /// bind mount: a later monza adopts it (see `DockerRuntime::adopt_agent`).
    pub(crate) fn close(&self, remove_dir: bool) {
        if let Some(task) = lock(&self.accept).take() {
            task.abort();
        }
        if let Some(conn) = self.conn.send_replace(None) {
            conn.close();
        }
        let owner = lock(&self.owner).take();
        if !remove_dir {
            // Dropping the file releases the lock: a successor may adopt the sandbox.
            return;
        }
        if let Some((path, _file)) = owner {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::fs::remove_file(&self.token_path);
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "removing the agent directory failed")
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.close(false);
    }
}

/// Accepts agent connections on the listener (and only there) for as long as the slot lives.
/// Handshakes run side by side (at most [`HANDSHAKES`]), so a peer that connects and says
/// nothing delays no one.
async fn accept_loop(listener: UnixListener, slot: Weak<Slot>) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an agent connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = slot.upgrade() else {
            return;
        };
        // One agent at a time: a second connection while the first lives is not installed,
        // but still answered, so that a stale agent (an earlier start's token) hears that it
        // is refused and exits instead of retrying for ever.
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let weak = Arc::downgrade(&slot);
        drop(slot);
        tokio::spawn(async move {
            let _permit = permit;
            match Conn::handshake(stream, &weak).await {
                Ok(conn) => {
                    // Not into a slot closed meanwhile (its accept task is gone).
                    let installed = weak.upgrade().is_some_and(|slot| {
                        lock(&slot.accept).is_some() && slot.install(conn.clone())
                    });
                    if !installed {
                        conn.close();
                    }
                }
                Err(e) => tracing::info!(error = %e, "agent handshake failed"),
            }
        });
    }
}

/// Whether an agent's error for an exec leaves it to Docker exec: only when the command was
/// not started (any code but [`protocol::ErrorCode::Started`]) and none of its output
/// arrived. Otherwise it ran, or may have, and running it again would run it twice.
fn falls_back(code: protocol::ErrorCode, output_seen: bool) -> bool {
    code != protocol::ErrorCode::Started && !output_seen
}

/// Creates the sandbox's socket directory and binds its listener, `agent.sock` (0666).
fn listen(dir: &Path) -> Result<UnixListener> {
    make_dir(dir)?;
    let socket = dir.join(SOCKET_NAME);
    let fail = |e: std::io::Error| {
        Error::internal(format!(
            "creating the agent socket {}: {e}",
            socket.display()
        ))
    };
    // Our own directory, which no sandbox can write: a stale socket from an earlier
    // listener is ours to remove.
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let listener = UnixListener::bind(&socket).map_err(fail)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).map_err(fail)?;
    Ok(listener)
}

/// The longest unix socket path Linux takes (`sun_path` is 108 bytes with its NUL).
const SUN_PATH_MAX: usize = 107;

/// Whether `<dir>/<sandbox id>/agent.sock` fits a unix socket address for every sandbox id
/// (a UUID, 36 characters).
fn socket_path_fits(dir: &Path) -> bool {
    let longest = dir
        .join("00000000-0000-0000-0000-000000000000")
        .join(SOCKET_NAME);
    longest.as_os_str().len() <= SUN_PATH_MAX
}

/// What the agent runs for a command.
fn program_of(command: &Command) -> Program {
    match command {
        Command::Shell(line) => Program::Shell(line.clone()),
        Command::Argv(argv) => Program::Argv(argv.clone()),
    }
}

/// Whether a connection is there and open.
fn live(conn: &Option<Arc<Conn>>) -> bool {
    conn.as_ref().is_some_and(|c| !c.is_closed())
}

/// Writes `token` to `path` (0600), whole or not at all (a temporary file renamed over it).
fn save_token(path: &Path, token: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| Error::internal(format!("saving {}: {e}", path.display()));
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let temporary = path.with_extension(format!(
        "token.{}.{}",
        std::process::id(),
        SAVES.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(fail)?;
    file.write_all(token.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)
}

/// A fresh start token: 32 random bytes, hex.
fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("no randomness for the agent's token: {e}")))?;
    Ok(hex(&bytes))
}

/// Whether the hello's token is the slot's current one, compared in constant time (the
/// length is not secret: every token is 64 hex digits).
fn token_matches(expected: Option<&str>, given: Option<&str>) -> bool {
    let (Some(expected), Some(given)) = (expected, given) else {
        return false;
    };
    let (expected, given) = (expected.as_bytes(), given.as_bytes());
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Where the reader puts one exec's frames: never waiting (the channel is unbounded), its
/// output bounded by pausing the exec in the agent instead ([`PAUSE_ABOVE`]).
#[derive(Clone)]
struct Waiter {
    tx: mpsc::UnboundedSender<Message>,
    flow: Arc<Flow>,
}

/// One exec's output held between the reader and the exec, and whether the agent was asked
/// to pause it.
#[derive(Default)]
struct Flow {
    held: AtomicU64,
    paused: AtomicBool,
    /// An attach's frames passed [`HOLD_LIMIT`]: the reader dropped its waiter, and its
    /// consumer attaches again once it has taken what was held.
    overflowed: AtomicBool,
}

/// The socket's writing end, framed.
type Writer = FramedWrite<tokio::net::unix::OwnedWriteHalf, AgentCodec>;

/// One accepted agent connection: a writer task, a reader task, the execs waiting.
struct Conn {
    /// Frames for the writer task, which writes them in order.
    outbox: mpsc::Sender<Message>,
    /// The writing end, shared by the writer task and [`Conn::send_new`].
    writer: Arc<tokio::sync::Mutex<Writer>>,
    /// The socket itself (a duplicate descriptor), to end it at once on [`Conn::close`]
    /// whoever holds the writer.
    socket: std::os::unix::net::UnixStream,
    waiters: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Conn {
    /// Reads the hello and answers it: a welcome only for the slot's current token and
    /// protocol; anything else gets an error frame (id 0), which tells a genuine but stale
    /// agent to exit, and is closed.
    async fn handshake(
        stream: UnixStream,
        slot: &Weak<Slot>,
    ) -> std::result::Result<Arc<Self>, String> {
        let socket = std::os::fd::AsFd::as_fd(&stream)
            .try_clone_to_owned()
            .map(std::os::unix::net::UnixStream::from)
            .map_err(|e| format!("duplicating the socket: {e}"))?;
        let (read, write) = stream.into_split();
        let mut reader = FramedRead::new(read, AgentCodec);
        let mut writer = FramedWrite::new(write, AgentCodec);
        let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
            .await
            .map_err(|_| "no hello in time".to_owned())?;
        let hello = match hello {
            Some(Ok(Message::Hello(hello))) => hello,
            Some(Ok(other)) => {
                return Err(format!(
                    "expected a hello, got a frame of id {}",
                    other.id()
                ));
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed before its hello".into()),
        };
        let refusal = if hello.protocol != PROTOCOL_VERSION {
            Some(format!("agent speaks protocol {}", hello.protocol))
        } else {
            let expected = slot.upgrade().and_then(|slot| lock(&slot.token).clone());
            (!token_matches(expected.as_deref(), hello.token.as_deref()))
                .then(|| "the hello does not carry the current start's token".to_owned())
        };
        if let Some(why) = refusal {
            let _ = writer
                .send(Message::Error {
                    id: 0,
                    error: protocol::ErrorReply {
                        code: protocol::ErrorCode::BadRequest,
                        message: why.clone(),
                        errno: None,
                    },
                })
                .await;
            return Err(format!(
                "refused a peer (pid {}, uid {}): {why}",
                hello.pid, hello.uid
            ));
        }
        writer
            .send(Message::Welcome(Welcome {
                protocol: PROTOCOL_VERSION,
            }))
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(pid = hello.pid, uid = hello.uid, version = %hello.agent_version, "agent connected");
        Ok(Self::serve(socket, reader, writer))
    }

    /// The connection past its handshake: its writer and reader tasks started on the framed
    /// halves of `socket` (which keep what they buffered).
    fn serve(
        socket: std::os::unix::net::UnixStream,
        mut reader: FramedRead<tokio::net::unix::OwnedReadHalf, AgentCodec>,
        writer: Writer,
    ) -> Arc<Self> {
        let (outbox, mut rx) = mpsc::channel::<Message>(OUTBOX_FRAMES);
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let conn = Arc::new(Self {
            outbox,
            writer: writer.clone(),
            socket,
            waiters: Mutex::default(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            tasks: Mutex::default(),
        });
        let weak = Arc::downgrade(&conn);
        let write_task = tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let id = message.id();
                let sent = writer.lock().await.send(message).await;
                let Some(conn) = weak.upgrade() else { break };
                if !conn.written(id, sent) {
                    break;
                }
            }
            if let Some(conn) = weak.upgrade() {
                conn.close();
            }
        });
        let weak = Arc::downgrade(&conn);
        let read_task = tokio::spawn(async move {
            while let Some(frame) = reader.next().await {
                let message = match frame {
                    Ok(message) => message,
                    // A whole frame this host does not understand: skipped.
                    Err(CodecError::Decode(
                        DecodeError::UnknownKind { .. } | DecodeError::BadBody { .. },
                    )) => continue,
                    Err(_) => break,
                };
                let Some(conn) = weak.upgrade() else { return };
                let id = message.id();
                let waiter = lock(&conn.waiters).get(&id).cloned();
                if let Some(waiter) = waiter {
                    // Output held for a consumer past PAUSE_ABOVE: an exec is paused in the
                    // agent; an attach is ended (its bytes stay in the agent's ring) and its
                    // reader attaches again from where it got to.
                    let held_output = match &message {
                        Message::Output { data, .. } => Some((data.len(), Message::Pause { id })),
                        Message::ProcessOutput { data, .. } => {
                            Some((data.len(), Message::Detach { id }))
                        }
                        _ => None,
                    };
                    if let Some((len, slow_down)) = held_output {
                        let held =
                            waiter.flow.held.fetch_add(len as u64, Ordering::AcqRel) + len as u64;
                        // First, so the agent is told even when one frame passes both limits.
                        if held > PAUSE_ABOVE as u64
                            && !waiter.flow.paused.swap(true, Ordering::AcqRel)
                        {
                            // The outbox is drained by the writer, never by this task.
                            let _ = conn.outbox.send(slow_down).await;
                        }
                        if held > HOLD_LIMIT as u64 {
                            // Its channel ends rather than host memory grows.
                            lock(&conn.waiters).remove(&id);
                            if matches!(message, Message::ProcessOutput { .. }) {
                                waiter.flow.overflowed.store(true, Ordering::Release);
                                tracing::debug!(
                                    id,
                                    held,
                                    "an attach outran its reader; it attaches again"
                                );
                            } else {
                                tracing::warn!(
                                    id,
                                    held,
                                    "the agent ignored flow control; the request is dropped"
                                );
                            }
                            continue;
                        }
                    }
                    let _ = waiter.tx.send(message);
                }
            }
            if let Some(conn) = weak.upgrade() {
                conn.close();
            }
        });
        lock(&conn.tasks).extend([write_task, read_task]);
        conn
    }

    /// A connection served on `stream` without a handshake, for tests speaking as the agent
    /// on the other end.
    #[cfg(test)]
    pub(crate) fn serve_for_test(stream: UnixStream) -> Arc<Self> {
        let socket = std::os::fd::AsFd::as_fd(&stream)
            .try_clone_to_owned()
            .map(std::os::unix::net::UnixStream::from)
            .unwrap();
        let (read, write) = stream.into_split();
        Self::serve(
            socket,
            FramedRead::new(read, AgentCodec),
            FramedWrite::new(write, AgentCodec),
        )
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Hands the first frame of a new request `id` to the agent: straight onto the socket
    /// when the writer is idle (nobody holds it, nothing of an earlier frame is left to
    /// flush), else through the writer task's queue. False when it was not handed over (the
    /// connection is gone), so Docker exec may run the command.
    ///
    /// Straight is faster: the writer task may sit on a parked thread of another runtime
    /// (each HTTP worker has its own), and waking it costs more than the write (0.3–0.4 ms
    /// of a 4 ms execute on a machine that was idle). A new request's frame may overtake
    /// queued frames of other requests, never one of its own, so each request's frames keep
    /// their order. Once in the writer's buffer the frame is handed over: if the socket
    /// takes only part of it now, a task flushes the rest, whatever becomes of this call.
    async fn send_new(self: &Arc<Self>, id: u64, message: Message) -> bool {
        use futures::{FutureExt as _, Sink as _};
        let idle = match self.writer.clone().try_lock_owned() {
            Ok(writer) if writer.write_buffer().is_empty() => Some(writer),
            _ => None,
        };
        let Some(mut writer) = idle else {
            return self.outbox.send(message).await.is_ok();
        };
        if self.is_closed() {
            return false;
        }
        // An empty buffer is always ready; `start_send` only encodes into it.
        let fed = match futures::future::poll_fn(|cx| Pin::new(&mut *writer).poll_ready(cx))
            .now_or_never()
        {
            Some(Ok(())) => Pin::new(&mut *writer).start_send(message),
            _ => {
                drop(writer);
                return self.outbox.send(message).await.is_ok();
            }
        };
        if fed.is_err() {
            // Too big for a frame, nothing written: the request fails, the connection goes on.
            return self.written(id, fed);
        }
        match writer.flush().now_or_never() {
            Some(flushed) => {
                drop(writer);
                if !self.written(id, flushed) {
                    self.close();
                }
            }
            None => {
                let conn = Arc::downgrade(self);
                tokio::spawn(async move {
                    let flushed = writer.flush().await;
                    drop(writer);
                    if let Some(conn) = conn.upgrade()
                        && !conn.written(id, flushed)
                    {
                        conn.close();
                    }
                });
            }
        }
        true
    }

    /// What became of request `id`'s frame: too big for one frame (nothing was written)
    /// fails that request and the connection goes on; false when the socket broke.
    fn written(&self, id: u64, sent: std::result::Result<(), CodecError>) -> bool {
        match sent {
            Ok(()) => true,
            Err(CodecError::Encode(e)) => {
                let waiter = lock(&self.waiters).get(&id).cloned();
                if let Some(waiter) = waiter {
                    let _ = waiter.tx.send(Message::Error {
                        id,
                        error: protocol::ErrorReply {
                            code: protocol::ErrorCode::BadRequest,
                            message: format!("the request does not fit the agent's frames: {e}"),
                            errno: None,
                        },
                    });
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Marks the connection dead, wakes every waiting exec and stops its tasks.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // The agent sees the end now, whoever holds the writer.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        lock(&self.waiters).clear();
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    /// See [`Agents::exec`].
    async fn exec(
        self: &Arc<Self>,
        request: &ExecRequest,
        default_timeout: Duration,
        sink: &mut Sink,
    ) -> Option<Outcome> {
        let started = Instant::now();
        let timeout = request.timeout.unwrap_or(default_timeout);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let flow = Arc::new(Flow::default());
        lock(&self.waiters).insert(
            id,
            Waiter {
                tx,
                flow: flow.clone(),
            },
        );
        let mut guard = Waiting {
            conn: self,
            id,
            done: false,
        };
        let program = program_of(&request.command);
        let message = Message::Exec {
            id,
            request: protocol::ExecRequest {
                program,
                cwd: request.workdir.clone(),
                env: request.env.clone(),
                timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
                // Docker exec's budget is per buffer (combined, stdout, stderr), which one
                // combined agent limit cannot express: the host caps, as on the Docker path.
                max_output_bytes: None,
                stdin: request.stdin.clone(),
            },
        };
        let deadline = tokio::time::sleep(timeout.saturating_add(EXIT_GRACE));
        tokio::pin!(deadline);
        // Within the exec's deadline too: a wedged writer (an agent that stopped reading)
        // must not hold the exec for ever. Not handed over, so Docker exec may run it.
        tokio::select! {
            sent = self.send_new(id, message) => if !sent {
                guard.done = true;
                return None;
            },
            () = &mut deadline => {
                guard.done = true;
                tracing::warn!("the agent's outbox stayed full past an exec's deadline; Docker exec runs it");
                return None;
            }
        }
        let mut output_seen = false;
        loop {
            tokio::select! {
                // Frames first: the deadline below only catches an agent that went silent.
                biased;
                frame = rx.recv(), if sink.ready() => match frame {
                    Some(Message::Output { stream, data, .. }) => {
                        output_seen = true;
                        let held = flow.held.fetch_sub(data.len() as u64, Ordering::AcqRel)
                            - data.len() as u64;
                        if held < RESUME_BELOW as u64 && flow.paused.swap(false, Ordering::AcqRel) {
                            let _ = self.outbox.send(Message::Resume { id }).await;
                        }
                        let stream = match stream {
                            Stream::Stdout => OutputStream::Stdout,
                            Stream::Stderr => OutputStream::Stderr,
                        };
                        sink.push(stream, data.into());
                    }
                    Some(Message::Exit { exit, .. }) => {
                        guard.done = true;
                        // Docker exec reports the SIGKILL the timeout sends as 128 + 9.
                        let exit_code = if exit.timed_out {
                            128 + i64::from(exit.signal.unwrap_or(9))
                        } else {
                            i64::from(exit.exit_code)
                        };
                        return Some(Outcome::Done(Ok(Finished {
                            exit_code,
                            timed_out: exit.timed_out,
                            duration: started.elapsed(),
                        })));
                    }
                    Some(Message::Error { error, .. }) => {
                        guard.done = true;
                        if falls_back(error.code, output_seen) {
                            // Not started (not found, bad cwd...): Docker exec says it its own way.
                            tracing::debug!(code = ?error.code, message = %error.message, "agent refused a command; Docker exec runs it");
                            return None;
                        }
                        // It ran, or may have: never a second time through Docker exec.
                        return Some(Outcome::Lost(Error::unavailable(
                            "agent",
                            format!("the sandbox's agent lost the command after it started; it may have run: {}", error.message),
                        )));
                    }
                    Some(_) => {}
                    None => {
                        // The connection ended after the command was handed over: it may have
                        // run, partly or whole. Running it again through Docker exec could run
                        // it twice, so it fails instead (at most once); the next exec finds
                        // the agent dead and goes through Docker exec.
                        guard.done = true;
                        return Some(Outcome::Lost(Error::unavailable(
                            "agent",
                            "the sandbox's agent went away before the command ended; it may have run",
                        )));
                    }
                },
                live = sink.drive() => if !live {
                    // The consumer went away: the guard kills the command's process group.
                    return Some(Outcome::Done(Err(consumer_gone())));
                },
                // Not while output waits for a slow consumer: the agent may be waiting on us.
                () = &mut deadline, if sink.ready() => {
                    // The agent's own timeout should have ended it long ago.
                    tracing::warn!("agent did not report a timed-out command's end");
                    return Some(Outcome::Done(Ok(Finished {
                        exit_code: -1,
                        timed_out: true,
                        duration: started.elapsed(),
                    })));
                }
            }
        }
    }
}

/// Removes a waiting exec's entry; when the exec is abandoned before its exit (the caller
/// went away, or gave up), kills its process group.
struct Waiting<'a> {
    conn: &'a Arc<Conn>,
    id: u64,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.conn.waiters).remove(&self.id);
        if !self.done {
            let _ = self.conn.outbox.try_send(Message::Signal {
                id: self.id,
                signal: Signal::Kill,
            });
        }
    }
}

/// Creates `dir` and any missing parent (`create_dir_all`, so the default
/// `/run/monza/agent` works after a reboot empties `/run`), each 0711 and owned by monza's
/// user; only directories created here are chmodded. An existing `dir` must be a real
/// directory (not a symlink) owned by monza's user and not writable by group or others,
/// else it is refused untouched (`MONZA_AGENT_DIR=/tmp` keeps its sticky bit, and no one
/// else can swap what monza binds into sandboxes).
pub(crate) fn make_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let fail = |e: std::io::Error| {
        Error::internal(format!(
            "creating the agent directory {}: {e}",
            dir.display()
        ))
    };
    // The missing ones, deepest first.
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty()) {
        match std::fs::symlink_metadata(path) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                missing.push(path);
                at = path.parent();
            }
            Err(e) => return Err(fail(e)),
        }
    }
    for path in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o711).create(path) {
            // Ours: exactly 0711, whatever the umask.
            Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
                .map_err(fail)?,
            // Made meanwhile by someone else: checked below like any existing one.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(e)),
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(fail)?;
    if !meta.is_dir() {
        return Err(fail(std::io::Error::other(
            "not a directory (a symlink is refused)",
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(fail(std::io::Error::other(format!(
            "owned by uid {}, not by monza's user (uid {me})",
            meta.uid()
        ))));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(fail(std::io::Error::other(format!(
            "writable by group or others (mode {:o}); make it 0711 or 0755",
            meta.mode() & 0o7777
        ))));
    }
    Ok(())
}

/// The embedded agent's SHA-256, hex.
fn agent_digest() -> String {
    hex(&Sha256::digest(AGENT_BINARY))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_error_falls_back_to_docker_exec_only_before_the_command_started() {
        use protocol::ErrorCode as C;
        assert!(
            falls_back(C::Spawn, false),
            "not found, bad cwd: Docker exec says it"
        );
        assert!(falls_back(C::BadRequest, false));
        assert!(falls_back(C::Unsupported, false));
        assert!(!falls_back(C::Started, false), "started: it may have run");
        for code in [
            C::Spawn,
            C::BadRequest,
            C::Unsupported,
            C::NotFound,
            C::Started,
        ] {
            assert!(!falls_back(code, true), "{code:?} after output: it ran");
        }
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_missing_agent_dir_is_created_with_its_parents_each_0711() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run/monza/agent");
        make_dir(&dir).unwrap();
        for path in [
            tmp.path().join("run"),
            tmp.path().join("run/monza"),
            dir.clone(),
        ] {
            assert_eq!(mode(&path), 0o711, "{}", path.display());
        }
        // Again: existing and fine.
        make_dir(&dir).unwrap();
        make_dir(&dir.join("bin")).unwrap();
        assert_eq!(mode(&dir.join("bin")), 0o711);
    }

    #[test]
    fn an_existing_dir_is_never_chmodded_and_refused_when_others_could_write_it() {
        let tmp = tempfile::tempdir().unwrap();
        let private = tmp.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        make_dir(&private).unwrap();
        assert_eq!(mode(&private), 0o700, "kept as it was");

        for refused in [0o1777, 0o775, 0o757] {
            let dir = tmp.path().join(format!("open-{refused:o}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(refused)).unwrap();
            let error = make_dir(&dir).unwrap_err().to_string();
            assert!(error.contains("writable by group or others"), "{error}");
            assert_eq!(mode(&dir), refused, "left untouched");
        }

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        let error = make_dir(&link).unwrap_err().to_string();
        assert!(error.contains("symlink"), "{error}");
    }

    #[test]
    fn an_existing_dir_owned_by_another_uid_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("theirs");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if std::os::unix::fs::chown(&dir, Some(4242), Some(4242)).is_err() {
            // Not root: nothing else to give it to.
            return;
        }
        let error = make_dir(&dir).unwrap_err().to_string();
        assert!(error.contains("owned by uid 4242"), "{error}");
        assert_eq!(mode(&dir), 0o755, "left untouched");
    }

    #[test]
    fn an_agent_dir_too_long_for_a_socket_address_is_refused() {
        assert!(socket_path_fits(Path::new("/run/monza/agent")));
        // 107 bytes exactly: "/" + 58 + "/" + 36 + "/agent.sock".
        let at_limit = format!("/{}", "a".repeat(58));
        assert_eq!(
            Path::new(&at_limit)
                .join("00000000-0000-0000-0000-000000000000")
                .join(SOCKET_NAME)
                .as_os_str()
                .len(),
            SUN_PATH_MAX
        );
        assert!(socket_path_fits(Path::new(&at_limit)));
        assert!(!socket_path_fits(Path::new(&format!("{at_limit}a"))));
    }

    #[test]
    fn only_the_current_token_matches() {
        let token = new_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token().unwrap(), "fresh per start");
        assert!(token_matches(Some(&token), Some(&token)));
        assert!(!token_matches(Some(&token), None));
        assert!(!token_matches(None, Some(&token)));
        assert!(!token_matches(None, None));
        assert!(!token_matches(Some(&token), Some("")));
        assert!(!token_matches(Some(&token), Some(&token[..63])));
        let mut other = token.clone().into_bytes();
        other[63] = if other[63] == b'0' { b'1' } else { b'0' };
        assert!(!token_matches(
            Some(&token),
            Some(std::str::from_utf8(&other).unwrap())
        ));
    }
}
