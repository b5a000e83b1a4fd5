//! Values exchanged with the container runtime port.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::Error;
use crate::sandbox::{SandboxId, TenantId};
use crate::template::{Command, Template};

/// A stream of bytes moving in or out of a sandbox, never held whole in memory.
pub type ByteStream = BoxStream<'static, Result<Bytes, Error>>;

/// A stream's bytes in memory when there are exactly `size` of them (`size` is small):
/// `Ok(Err(received))` when they are not, `received` past `size` as soon as it is passed.
pub async fn collect_exactly(
    mut content: ByteStream,
    size: u64,
) -> Result<std::result::Result<Bytes, u64>, Error> {
    use futures::StreamExt as _;
    let mut data = bytes::BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = content.next().await {
        data.extend_from_slice(&chunk?);
        if data.len() as u64 > size {
            break;
        }
    }
    if data.len() as u64 == size {
        Ok(Ok(data.freeze()))
    } else {
        Ok(Err(data.len() as u64))
    }
}

/// What to create a container from.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// The sandbox the container belongs to (it carries this as a label).
    pub sandbox_id: SandboxId,
    /// Its owner (also a label).
    pub tenant: TenantId,
    /// The resolved template.
    pub template: Template,
}

/// A created (not yet started) container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedContainer {
    /// Docker's id.
    pub id: String,
    /// The image it runs (for a built template, the tag monza gave the build).
    pub image: String,
}

/// A container port published on the host, read back after start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    /// Port inside the container.
    pub container_port: u16,
    /// Port on the host.
    pub host_port: u16,
}

/// What the engine says of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// It exists and runs.
    Running,
    /// It exists but does not run (exited, created, paused, dead).
    Stopped,
    /// The engine does not know it (removed behind monza's back).
    Missing,
}

/// A container carrying monza's labels, as found on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    /// Docker's id.
    pub id: String,
    /// The `monza.sandbox_id` label, when it parses.
    pub sandbox_id: Option<SandboxId>,
    /// Whether it is running.
    pub running: bool,
}

/// A command to run in a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecRequest {
    /// What to run.
    pub command: Command,
    /// Working directory (default: the template's workspace folder).
    pub workdir: Option<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// The user to run as (default: the image's).
    pub user: Option<String>,
    /// Output kept, in bytes, for `output` (and each of `stdout`/`stderr`); more is dropped
    /// and `truncated` set. A streamed command ([`ContainerRuntime::exec_stream`]) sends all
    /// of its output and ignores it.
    ///
    /// [`ContainerRuntime::exec_stream`]: crate::ContainerRuntime::exec_stream
    pub max_output_bytes: usize,
    /// Kill the command (and every process it started) after this long.
    pub timeout: Option<Duration>,
    /// Bytes written to the command's stdin, which is then closed. `None`: stdin is empty
    /// (closed at once).
    pub stdin: Option<Vec<u8>>,
}

/// The exit code a command killed by its timeout answers with, whatever signal ended it:
/// coreutils' `timeout` convention, which LangChain DeepAgents' sandboxes expect.
pub const TIMED_OUT_EXIT_CODE: i64 = 124;

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// stdout and stderr combined, in arrival order.
    pub output: String,
    /// stdout alone.
    pub stdout: String,
    /// stderr alone.
    pub stderr: String,
    /// The exit code: -1 when the command ended without one. A runtime reports what ended
    /// a timed-out command (137 for SIGKILL); the service answers [`TIMED_OUT_EXIT_CODE`].
    pub exit_code: i64,
    /// Some output was dropped because of `max_output_bytes`.
    pub truncated: bool,
    /// The timeout killed the command.
    pub timed_out: bool,
    /// How long it ran.
    pub duration: Duration,
}

/// Which of a command's output streams bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Its standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

impl OutputStream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One step of a streamed command: its output as it comes, then its exit, last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes the command wrote, as they came (not necessarily UTF-8, and a character may
    /// be split between two chunks).
    Output {
        /// Where it wrote them.
        stream: OutputStream,
        /// What it wrote.
        data: Bytes,
    },
    /// The command ended; nothing follows.
    Exit {
        /// As in [`ExecOutput::exit_code`].
        exit_code: i64,
        /// The timeout killed it.
        timed_out: bool,
        /// How long it ran.
        duration: Duration,
    },
}

/// A streamed command's events, ending with its [`ExecEvent::Exit`] (or an error). The
/// command runs only while this is held: dropping it before the exit kills the command and
/// every process it started. A consumer that reads slowly slows the command down (its
/// output waits), and memory stays bounded whatever it writes.
pub type ExecEvents = BoxStream<'static, Result<ExecEvent, Error>>;

/// A file going into a sandbox.
pub struct UploadFile {
    /// Its base name (already reduced to a safe one).
    pub name: String,
    /// Its exact size in bytes (the tar header needs it before the content).
    pub size: u64,
    /// The content: exactly `size` bytes.
    pub content: ByteStream,
    /// How it is written: mode, missing parents, owner.
    pub options: WriteOptions,
}

impl fmt::Debug for UploadFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadFile")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// How a file is written into a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Its permission bits; when absent, a file already there keeps its own and a new one is
    /// 0644.
    pub mode: Option<u32>,
    /// Missing directories on the way are created (owned by `user`, mode 0755); when false
    /// a missing parent is `file_not_found`.
    pub create_parents: bool,
    /// Who owns the file and the directories created for it: a user name or uid, with an
    /// optional `:group` (the template's `remoteUser`); the image's user when absent.
    pub user: Option<String>,
}

/// What kind of thing a path in a sandbox is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (not followed).
    Symlink,
    /// A device, socket or pipe.
    Other,
}

impl FileKind {
    /// The name clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Directory => "directory",
            Self::Symlink => "symlink",
            Self::Other => "other",
        }
    }
}

/// What a path in a sandbox is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// Base name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// What it is.
    pub kind: FileKind,
    /// Permission bits (including setuid, setgid and sticky).
    pub mode: u32,
    /// Last modification, when the sandbox's file system reports one.
    pub modified: Option<time::OffsetDateTime>,
    /// Where a symbolic link points (the Docker adapter reports it resolved to an absolute
    /// path).
    pub link_target: Option<String>,
}

impl FileStat {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }
}

/// A file coming out of a sandbox.
pub struct FileDownload {
    /// What it is.
    pub stat: FileStat,
    /// The content: exactly `stat.size` bytes.
    pub content: ByteStream,
}

impl fmt::Debug for FileDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDownload")
            .field("stat", &self.stat)
            .finish_non_exhaustive()
    }
}

/// A background process to start in a sandbox: it outlives the request that starts it (and
/// the server), and its output is kept inside the sandbox, read from any offset.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRequest {
    /// What to run.
    pub command: Command,
    /// Working directory.
    pub workdir: Option<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// The user to run as (default: the image's).
    pub user: Option<String>,
    /// Killed with every process it started after this long; none when absent.
    pub timeout: Option<Duration>,
    /// Keep its stdin open for [`ContainerRuntime::process_stdin`]; else it reads nothing.
    ///
    /// [`ContainerRuntime::process_stdin`]: crate::ContainerRuntime::process_stdin
    pub stdin: bool,
    /// The sandbox stays alive while it runs.
    pub keep_alive: bool,
    /// Output bytes kept per stream; the oldest are dropped first.
    pub output_limit: u64,
    /// Run it on a new terminal of this size (its output is then all `stdout`, and its
    /// stdin is the terminal's input); pipes when absent.
    pub pty: Option<TerminalSize>,
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl TerminalSize {
    /// The largest side a terminal may have.
    pub const MAX: u16 = 1000;

    /// A size of 1 to [`TerminalSize::MAX`] each way.
    pub fn new(cols: u64, rows: u64) -> Result<Self, Error> {
        let side = |n: u64, what: &str| {
            u16::try_from(n)
                .ok()
                .filter(|n| (1..=Self::MAX).contains(n))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "a terminal's {what} must be from 1 to {}, not {n}",
                        Self::MAX
                    ))
                })
        };
        Ok(Self {
            cols: side(cols, "cols")?,
            rows: side(rows, "rows")?,
        })
    }
}

/// Offsets `[start, end)` of the output a background process's stream still has: `start`
/// is above 0 once the oldest bytes were dropped; `end` is every byte it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputSpan {
    /// The first byte kept.
    pub start: u64,
    /// One past the last byte written.
    pub end: u64,
}

/// How a background process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Its exit code (128 + the signal when a signal ended it, [`TIMED_OUT_EXIT_CODE`]
    /// when its timeout did, -1 when unknown).
    pub exit_code: i64,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Its timeout killed it.
    pub timed_out: bool,
    /// How long it ran.
    pub duration: Duration,
}

/// A background process, as the sandbox's agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its process id inside the sandbox, which names it.
    pub pid: u32,
    /// What runs: the shell command line, or the argv joined by spaces.
    pub command: String,
    /// When it started.
    pub started_at: time::OffsetDateTime,
    /// How it ended; `None` while it runs.
    pub exit: Option<ProcessExit>,
    /// What its stdout still has.
    pub stdout: OutputSpan,
    /// What its stderr still has.
    pub stderr: OutputSpan,
    /// It keeps its sandbox alive while it runs.
    pub keep_alive: bool,
    /// Its stdin is open.
    pub stdin_open: bool,
    /// It runs on a terminal.
    pub pty: bool,
}

/// Signals a background process's group may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessSignal {
    /// `SIGTERM`.
    Term,
    /// `SIGINT`.
    Int,
    /// `SIGKILL`.
    Kill,
    /// `SIGHUP`.
    Hup,
}

impl std::str::FromStr for ProcessSignal {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let name = s.to_ascii_uppercase();
        match name.strip_prefix("SIG").unwrap_or(&name) {
            "TERM" => Ok(Self::Term),
            "INT" => Ok(Self::Int),
            "KILL" => Ok(Self::Kill),
            "HUP" => Ok(Self::Hup),
            _ => Err(Error::invalid(format!(
                "signal {s:?} is not one of TERM, INT, KILL, HUP"
            ))),
        }
    }
}

/// One step of reading a background process's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// Bytes it wrote, from byte `offset` of `stream` (later than asked when the oldest
    /// were dropped).
    Output {
        /// Which stream.
        stream: OutputStream,
        /// Where in the stream `data` starts.
        offset: u64,
        /// The bytes (not necessarily UTF-8, a character may be split between chunks).
        data: Bytes,
    },
    /// Everything it wrote was sent, and it has ended: nothing follows.
    Exit(ProcessExit),
    /// Not following (or no longer): everything written so far was sent; the offsets to
    /// read on from. Nothing follows.
    CaughtUp {
        /// Where stdout is read on from.
        stdout_offset: u64,
        /// Where stderr is read on from.
        stderr_offset: u64,
    },
}

/// A background process's output events, ending with [`ProcessEvent::Exit`] or
/// [`ProcessEvent::CaughtUp`] (or an error). Dropping it only stops the reading: the
/// process runs on.
pub type ProcessEvents = BoxStream<'static, Result<ProcessEvent, Error>>;
