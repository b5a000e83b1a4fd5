//! The wire protocol between monza (the host) and `monza-agent` (inside a sandbox).
//!
//! One unix-socket connection, opened by the agent towards a socket the host listens on,
//! carries many concurrent requests. Every message is one frame:
//!
//! ```text
//! +----------------+---------+------+-----------------+----------------------+
//! | len: u32 (BE)  | version | kind | id: u64 (BE)    | body (len - 10 bytes)|
//! +----------------+---------+------+-----------------+----------------------+
//! ```
//!
//! `len` counts the bytes after itself (at least [`FRAME_HEADER_AFTER_LEN`], at most
//! [`MAX_FRAME_LEN`]). `version` is [`PROTOCOL_VERSION`] on every frame; a frame of another
//! version is refused. `id` ties answers to their request: the host picks it, the agent echoes
//! it on every output chunk, exit or error of that request (id 0 is the connection itself:
//! hello and welcome). Bodies are JSON for control messages and raw bytes for data, so output
//! is never re-encoded and bytes that are not UTF-8 arrive intact.
//!
//! The codec is pure ([`encode`], [`decode`] work on byte slices) so the blocking agent and,
//! later, an async host (a `tokio_util` codec over the same two functions) share it;
//! [`read_message`] and [`write_message`] are the blocking helpers over `std::io`; with the
//! `tokio-codec` feature, `AgentCodec` is the same codec as a `tokio_util` Decoder/Encoder.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

mod fs;
pub use fs::{
    FileContent, FsAnswer, FsEntry, FsKind, FsMatch, FsOutcome, FsRequest, ReadFileRequest,
    WalkBudget, WriteFileRequest,
};

/// The protocol version this crate speaks, stated in every frame and in the hello.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of a frame after the length field and before the body: version, kind, id.
pub const FRAME_HEADER_AFTER_LEN: usize = 1 + 1 + 8;

/// The largest `len` accepted: 8 MiB, enough for an exec's inline stdin of the 1 MiB+ the
/// execute route accepts, small enough that a broken peer cannot make the other side allocate
/// without bound.
pub const MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// The largest output chunk the agent sends in one frame.
pub const MAX_CHUNK: usize = 64 * 1024;

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const EXEC: u8 = 0x10;
    pub const PING: u8 = 0x11;
    pub const SIGNAL: u8 = 0x12;
    pub const PAUSE: u8 = 0x19;
    pub const RESUME: u8 = 0x1a;
    pub const STDOUT: u8 = 0x20;
    pub const STDERR: u8 = 0x21;
    pub const EXIT: u8 = 0x30;
    pub const PONG: u8 = 0x31;
    pub const ERROR: u8 = 0x3f;
    // Background processes.
    pub const START: u8 = 0x13;
    pub const LIST: u8 = 0x14;
    pub const ATTACH: u8 = 0x15;
    pub const STDIN: u8 = 0x16;
    pub const SIGNAL_PROCESS: u8 = 0x17;
    pub const RESIZE: u8 = 0x1b;
    pub const DETACH: u8 = 0x18;
    pub const PROCESS_STDOUT: u8 = 0x24;
    pub const PROCESS_STDERR: u8 = 0x25;
    pub const STARTED: u8 = 0x32;
    pub const PROCESSES: u8 = 0x33;
    pub const CAUGHT_UP: u8 = 0x34;
    pub const OK: u8 = 0x35;
    // File operations.
    pub const FS: u8 = 0x1c;
    pub const FORGET: u8 = 0x1d;
    pub const FS_ANSWER: u8 = 0x36;
    pub const WRITE_FILE: u8 = 0x1e;
    pub const READ_FILE: u8 = 0x1f;
    pub const FILE_CONTENT: u8 = 0x37;
}

/// The agent's first frame on every connection (id 0). Its layout (a JSON body in a frame of
/// kind 0x01) never changes between versions, so a host can always read it and say why it
/// refuses an agent of another version; fields are only ever added, optional.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u8,
    /// The agent's pid in the sandbox's pid namespace.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// The secret the host gave this start of the agent (`MONZA_AGENT_TOKEN` in the
    /// environment of the Docker exec that started it). The host serves only a connection
    /// whose hello carries the token of the agent's latest start. Never printed by `Debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("protocol", &self.protocol)
            .field("pid", &self.pid)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("agent_version", &self.agent_version)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The host's answer to [`Hello`] (id 0): the agent serves requests only after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u8,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    /// Executed directly: the first element is the program (looked up in `PATH`).
    Argv(Vec<String>),
    /// Run as `/bin/sh -c <command>`.
    Shell(String),
}

/// Run one command to its end, streaming its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub program: Program,
    /// Working directory; the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Added to (or overriding) the agent's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Killed with its whole process group after this long; exit code 124 and `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Stdout and stderr together forward at most this many bytes; the rest is read and
    /// dropped (the command is not blocked) and the exit says `truncated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Bytes written to the command's stdin, which is then closed. Absent: stdin is
    /// `/dev/null`. Travels raw after the JSON, not inside it.
    #[serde(skip)]
    pub stdin: Option<Vec<u8>>,
}

impl ExecRequest {
    /// `/bin/sh -c command`, no timeout, no limit, no stdin.
    pub fn shell(command: impl Into<String>) -> Self {
        Self::new(Program::Shell(command.into()))
    }

    /// The program and its arguments, executed directly.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Program::Argv(argv.into_iter().map(Into::into).collect()))
    }

    fn new(program: Program) -> Self {
        Self {
            program,
            cwd: None,
            env: BTreeMap::new(),
            timeout_ms: None,
            max_output_bytes: None,
            stdin: None,
        }
    }
}

/// Signals the host may send to a running request's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Signal {
    Term,
    Int,
    Kill,
    Hup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SignalBody {
    signal: Signal,
}

/// Which pipe an output chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The last frame of an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code; 128 + signal when a signal ended it; 124 when it timed out.
    pub exit_code: i32,
    /// The signal that ended the command, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Some output was not forwarded (`max_output_bytes`, or the command timed out while the
    /// host was not reading).
    pub truncated: bool,
    /// Bytes the command wrote to each pipe, forwarded or not.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// From spawn to exit, in microseconds.
    pub duration_us: u64,
}

/// Why a request failed without running (or is not understood).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The program could not be started (not found, not executable, bad cwd): it never ran.
    Spawn,
    /// The command started, then the agent lost track of it (watching or forwarding it
    /// failed) and killed it: it may have run, partly or whole, so it must not be run again.
    Started,
    /// The request's body did not parse, or its id is already in use.
    BadRequest,
    /// A frame kind this agent does not know (a newer host).
    Unsupported,
    /// A signal for an id that runs nothing.
    NotFound,
    /// A file operation failed; `errno` says why (`ENOENT`, `EISDIR`, `EACCES`, ...).
    Fs,
    /// An edit whose old text is not in the file.
    NoMatch,
    /// An edit of one occurrence whose old text is in the file more than once.
    AmbiguousMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    /// The OS error number, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
}

/// Start a background process: it outlives the request and the connection; its output is
/// kept in a ring per stream inside the agent, read with [`AttachRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    pub program: Program,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Keep stdin open for [`Message::Stdin`]; otherwise it is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Bytes kept per stream; the oldest are dropped first. The agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_limit: Option<u64>,
    /// Killed with its whole process group after this long (its exit says `timed_out`,
    /// code 124); no limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The host keeps the sandbox alive while it runs. The agent only records it, so a
    /// restarted host finds it in the list.
    #[serde(default)]
    pub keep_alive: bool,
    /// Run it on a new pseudo-terminal of this size, as the leader of a session whose
    /// controlling terminal it is: its output (stdout and stderr both) is the terminal's,
    /// as stdout; [`Message::Stdin`] types into it; [`Message::Resize`] resizes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

impl StartRequest {
    pub fn shell(command: impl Into<String>) -> Self {
        Self {
            program: Program::Shell(command.into()),
            cwd: None,
            env: BTreeMap::new(),
            stdin: false,
            output_limit: None,
            timeout_ms: None,
            keep_alive: false,
            pty: None,
        }
    }
}

/// The answer to a start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
    pub started_at_ms: u64,
}

/// Offsets `[start, end)` of the bytes a ring holds for one stream; `start` > 0 when the
/// oldest were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub program: Program,
    pub started_at_ms: u64,
    /// Absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    pub stdout: Span,
    pub stderr: Span,
    /// As started ([`StartRequest::keep_alive`]).
    #[serde(default)]
    pub keep_alive: bool,
    /// Its stdin is open ([`StartRequest::stdin`], not yet closed).
    #[serde(default)]
    pub stdin_open: bool,
    /// It runs on a pseudo-terminal ([`StartRequest::pty`]).
    #[serde(default)]
    pub pty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// Read a background process's output from byte offsets (per stream), then, with `follow`,
/// as it comes. Answered by [`Message::ProcessOutput`] chunks, then [`Message::Exit`] (the
/// process ended and everything was sent) or [`Message::CaughtUp`] (not following, or
/// detached).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    pub pid: u32,
    #[serde(default)]
    pub stdout_offset: u64,
    #[serde(default)]
    pub stderr_offset: u64,
    #[serde(default)]
    pub follow: bool,
}

/// The offsets an attach reached when it ended without an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaughtUp {
    pub stdout_offset: u64,
    pub stderr_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PidBody {
    pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PidResize {
    pid: u32,
    #[serde(flatten)]
    size: PtySize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PidSignal {
    pid: u32,
    signal: Signal,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Agent → host, first frame.
    Hello(Hello),
    /// Host → agent, answer to the hello.
    Welcome(Welcome),
    /// Host → agent: run a command; answered by output chunks then [`Message::Exit`], or by
    /// one [`Message::Error`].
    Exec {
        id: u64,
        request: ExecRequest,
    },
    /// Host → agent; answered by [`Message::Pong`] with the same id.
    Ping {
        id: u64,
    },
    /// Host → agent: signal the process group of the request `id`.
    Signal {
        id: u64,
        signal: Signal,
    },
    /// Host → agent: stop reading the pipes of the request `id` (the host holds enough of
    /// its output): its command blocks once its pipes fill, its timeout still runs. The other
    /// requests go on. No answer.
    Pause {
        id: u64,
    },
    /// Host → agent: read the pipes of the request `id` again. No answer.
    Resume {
        id: u64,
    },
    /// Agent → host: bytes the command wrote.
    Output {
        id: u64,
        stream: Stream,
        data: Vec<u8>,
    },
    /// Agent → host: the command ended.
    Exit {
        id: u64,
        exit: Exit,
    },
    Pong {
        id: u64,
    },
    /// Agent → host: the request `id` failed.
    Error {
        id: u64,
        error: ErrorReply,
    },
    /// Host → agent: start a background process; answered by [`Message::Started`].
    Start {
        id: u64,
        request: StartRequest,
    },
    Started {
        id: u64,
        started: Started,
    },
    /// Host → agent: every background process; answered by [`Message::Processes`].
    List {
        id: u64,
    },
    Processes {
        id: u64,
        list: ProcessList,
    },
    /// Host → agent: stream a background process's output (see [`AttachRequest`]).
    Attach {
        id: u64,
        request: AttachRequest,
    },
    /// Agent → host: output of a background process, starting at byte `offset` of its
    /// stream (later than asked when the ring dropped the bytes asked for).
    ProcessOutput {
        id: u64,
        stream: Stream,
        offset: u64,
        data: Vec<u8>,
    },
    CaughtUp {
        id: u64,
        offsets: CaughtUp,
    },
    /// Host → agent: end the attach `id` (it answers with [`Message::CaughtUp`]).
    Detach {
        id: u64,
    },
    /// Host → agent: bytes for a background process's stdin, then close it if `close`;
    /// answered by [`Message::Ok`] once written. One at a time per process.
    Stdin {
        id: u64,
        pid: u32,
        close: bool,
        data: Vec<u8>,
    },
    /// Host → agent: signal a background process's group; answered by [`Message::Ok`].
    SignalProcess {
        id: u64,
        pid: u32,
        signal: Signal,
    },
    Ok {
        id: u64,
    },
    /// Host → agent: resize a background process's terminal (it gets `SIGWINCH`);
    /// answered by [`Message::Ok`].
    Resize {
        id: u64,
        pid: u32,
        size: PtySize,
    },
    /// Host → agent: kill a background process's group (unless it already exited) and drop
    /// it and its output; answered by [`Message::Ok`]. Later requests for it are not found.
    Forget {
        id: u64,
        pid: u32,
    },
    /// Host → agent: one file operation; answered by [`Message::FsAnswer`] or one
    /// [`Message::Error`].
    Fs {
        id: u64,
        request: FsRequest,
    },
    FsAnswer {
        id: u64,
        answer: FsAnswer,
    },
    /// Host → agent: create or replace the regular file `request.path` with `data` (a small
    /// file, whole in one frame); answered by [`Message::FsAnswer`] (the file's entry) or one
    /// [`Message::Error`].
    WriteFile {
        id: u64,
        request: WriteFileRequest,
        data: Vec<u8>,
    },
    /// Host → agent: the content of a small regular file; answered by
    /// [`Message::FileContent`] or one [`Message::Error`].
    ReadFile {
        id: u64,
        request: ReadFileRequest,
    },
    /// Agent → host: what was read (`data` is empty unless `content.complete`).
    FileContent {
        id: u64,
        content: FileContent,
        data: Vec<u8>,
    },
}

impl Message {
    /// The request id the frame carries (0 for hello and welcome).
    pub fn id(&self) -> u64 {
        match self {
            Message::Hello(_) | Message::Welcome(_) => 0,
            Message::Exec { id, .. }
            | Message::Ping { id }
            | Message::Signal { id, .. }
            | Message::Pause { id }
            | Message::Resume { id }
            | Message::Output { id, .. }
            | Message::Exit { id, .. }
            | Message::Pong { id }
            | Message::Error { id, .. }
            | Message::Start { id, .. }
            | Message::Started { id, .. }
            | Message::List { id }
            | Message::Processes { id, .. }
            | Message::Attach { id, .. }
            | Message::ProcessOutput { id, .. }
            | Message::CaughtUp { id, .. }
            | Message::Detach { id }
            | Message::Stdin { id, .. }
            | Message::SignalProcess { id, .. }
            | Message::Ok { id }
            | Message::Resize { id, .. }
            | Message::Forget { id, .. }
            | Message::Fs { id, .. }
            | Message::FsAnswer { id, .. }
            | Message::WriteFile { id, .. }
            | Message::ReadFile { id, .. }
            | Message::FileContent { id, .. } => *id,
        }
    }
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame length {len} is over the maximum of {max} bytes")]
    Oversized { len: usize, max: usize },
    #[error("frame length {len} is shorter than the {min}-byte header")]
    Undersized { len: usize, min: usize },
    #[error("frame is protocol version {found}, this side speaks version {supported}")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("truncated frame: the stream ended after {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
    /// The frame was read whole (the stream is still in step); only its kind is unknown.
    #[error("unknown frame kind {kind:#04x} (request id {id})")]
    UnknownKind { kind: u8, id: u64 },
    /// The frame was read whole (the stream is still in step); its body is wrong.
    #[error("bad body in frame of kind {kind:#04x} (request id {id}): {reason}")]
    BadBody { kind: u8, id: u64, reason: String },
}

/// A message that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {len} bytes is over the frame maximum of {max} bytes")]
    Oversized { len: usize, max: usize },
    #[error("cannot serialize the message body: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reading a message from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Writing a message to a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

fn begin(out: &mut Vec<u8>, kind: u8, id: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(PROTOCOL_VERSION);
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    start
}

fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), EncodeError> {
    let len = out.len() - start - 4;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(EncodeError::Oversized {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let len = u32::try_from(len).map_err(|_| EncodeError::Oversized {
        len,
        max: MAX_FRAME_LEN,
    })?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends the frame of `message` to `out`. On error `out` is left as it was.
pub fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let result = encode_inner(message, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_inner(message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    fn json<T: Serialize>(
        out: &mut Vec<u8>,
        kind: u8,
        id: u64,
        body: &T,
    ) -> Result<usize, EncodeError> {
        let start = begin(out, kind, id);
        serde_json::to_writer(&mut *out, body)?;
        Ok(start)
    }
    let frame_start = match message {
        Message::Hello(hello) => json(out, kind::HELLO, 0, hello)?,
        Message::Welcome(welcome) => json(out, kind::WELCOME, 0, welcome)?,
        Message::Exec { id, request } => {
            // Body: u32 JSON length, the JSON, then the raw stdin (if the JSON says so).
            let wire = ExecWire {
                request,
                stdin: request.stdin.is_some(),
            };
            let stdin = request.stdin.as_deref().unwrap_or_default();
            json_and_bytes(out, kind::EXEC, *id, &wire, stdin)?
        }
        Message::Ping { id } => begin(out, kind::PING, *id),
        Message::Pause { id } => begin(out, kind::PAUSE, *id),
        Message::Resume { id } => begin(out, kind::RESUME, *id),
        Message::Pong { id } => begin(out, kind::PONG, *id),
        Message::Signal { id, signal } => {
            json(out, kind::SIGNAL, *id, &SignalBody { signal: *signal })?
        }
        Message::Output { id, stream, data } => {
            let kind = match stream {
                Stream::Stdout => kind::STDOUT,
                Stream::Stderr => kind::STDERR,
            };
            if data.len() + FRAME_HEADER_AFTER_LEN > MAX_FRAME_LEN {
                return Err(EncodeError::Oversized {
                    len: data.len() + FRAME_HEADER_AFTER_LEN,
                    max: MAX_FRAME_LEN,
                });
            }
            let frame = begin(out, kind, *id);
            out.extend_from_slice(data);
            frame
        }
        Message::Exit { id, exit } => json(out, kind::EXIT, *id, exit)?,
        Message::Error { id, error } => json(out, kind::ERROR, *id, error)?,
        Message::Start { id, request } => json(out, kind::START, *id, request)?,
        Message::Started { id, started } => json(out, kind::STARTED, *id, started)?,
        Message::List { id } => begin(out, kind::LIST, *id),
        Message::Processes { id, list } => json(out, kind::PROCESSES, *id, list)?,
        Message::Attach { id, request } => json(out, kind::ATTACH, *id, request)?,
        Message::ProcessOutput {
            id,
            stream,
            offset,
            data,
        } => {
            let kind = match stream {
                Stream::Stdout => kind::PROCESS_STDOUT,
                Stream::Stderr => kind::PROCESS_STDERR,
            };
            if data.len() + 8 + FRAME_HEADER_AFTER_LEN > MAX_FRAME_LEN {
                return Err(EncodeError::Oversized {
                    len: data.len() + 8 + FRAME_HEADER_AFTER_LEN,
                    max: MAX_FRAME_LEN,
                });
            }
            let frame = begin(out, kind, *id);
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(data);
            frame
        }
        Message::CaughtUp { id, offsets } => json(out, kind::CAUGHT_UP, *id, offsets)?,
        Message::Detach { id } => begin(out, kind::DETACH, *id),
        Message::Stdin {
            id,
            pid,
            close,
            data,
        } => {
            // Body: u32 pid, u8 close, the raw bytes.
            if data.len() + 5 + FRAME_HEADER_AFTER_LEN > MAX_FRAME_LEN {
                return Err(EncodeError::Oversized {
                    len: data.len() + 5 + FRAME_HEADER_AFTER_LEN,
                    max: MAX_FRAME_LEN,
                });
            }
            let frame = begin(out, kind::STDIN, *id);
            out.extend_from_slice(&pid.to_be_bytes());
            out.push(u8::from(*close));
            out.extend_from_slice(data);
            frame
        }
        Message::SignalProcess { id, pid, signal } => json(
            out,
            kind::SIGNAL_PROCESS,
            *id,
            &PidSignal {
                pid: *pid,
                signal: *signal,
            },
        )?,
        Message::Ok { id } => begin(out, kind::OK, *id),
        Message::Resize { id, pid, size } => json(
            out,
            kind::RESIZE,
            *id,
            &PidResize {
                pid: *pid,
                size: *size,
            },
        )?,
        Message::Forget { id, pid } => json(out, kind::FORGET, *id, &PidBody { pid: *pid })?,
        Message::Fs { id, request } => json(out, kind::FS, *id, request)?,
        Message::FsAnswer { id, answer } => json(out, kind::FS_ANSWER, *id, answer)?,
        Message::WriteFile { id, request, data } => {
            json_and_bytes(out, kind::WRITE_FILE, *id, request, data)?
        }
        Message::ReadFile { id, request } => json(out, kind::READ_FILE, *id, request)?,
        Message::FileContent { id, content, data } => {
            json_and_bytes(out, kind::FILE_CONTENT, *id, content, data)?
        }
    };
    finish(out, frame_start)
}

/// Begins a frame whose body is a u32 JSON length, the JSON, then raw bytes.
fn json_and_bytes<T: Serialize>(
    out: &mut Vec<u8>,
    kind: u8,
    id: u64,
    meta: &T,
    data: &[u8],
) -> Result<usize, EncodeError> {
    let frame = begin(out, kind, id);
    let json_at = out.len();
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *out, meta)?;
    let json_len = out.len() - json_at - 4;
    let json_len = u32::try_from(json_len).map_err(|_| EncodeError::Oversized {
        len: json_len,
        max: MAX_FRAME_LEN,
    })?;
    out[json_at..json_at + 4].copy_from_slice(&json_len.to_be_bytes());
    if out.len() - frame + data.len() > MAX_FRAME_LEN + 4 {
        return Err(EncodeError::Oversized {
            len: out.len() - frame + data.len() - 4,
            max: MAX_FRAME_LEN,
        });
    }
    out.extend_from_slice(data);
    Ok(frame)
}

/// Splits a body made by [`json_and_bytes`] into its JSON and its bytes.
fn split_json<'a>(body: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    let Some((json_len, rest)) = body.split_first_chunk::<4>() else {
        return Err(format!("{what} body shorter than its 4-byte JSON length"));
    };
    let json_len = u32::from_be_bytes(*json_len) as usize;
    rest.split_at_checked(json_len).ok_or_else(|| {
        format!(
            "{what} JSON length {json_len} is past the body's end ({} bytes)",
            rest.len()
        )
    })
}

#[derive(Serialize)]
struct ExecWire<'a> {
    #[serde(flatten)]
    request: &'a ExecRequest,
    stdin: bool,
}

#[derive(Deserialize)]
struct ExecWireOwned {
    #[serde(flatten)]
    request: ExecRequest,
    stdin: bool,
}

/// The frame of one message, as a new buffer.
pub fn encode_to_vec(message: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode(message, &mut out)?;
    Ok(out)
}

/// Checks the 4-byte length prefix of a frame; returns `len` (bytes after the prefix).
pub fn check_len(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::Oversized {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len < FRAME_HEADER_AFTER_LEN {
        return Err(DecodeError::Undersized {
            len,
            min: FRAME_HEADER_AFTER_LEN,
        });
    }
    Ok(len)
}

/// Decodes the first frame of `buf`: `Ok(None)` when `buf` holds only part of it (read
/// more), `Ok(Some((message, consumed)))` otherwise. A length or version that cannot be
/// right is refused as soon as its bytes are in, before the rest of the frame arrives.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = check_len(*prefix)?;
    if let Some(&version) = buf.get(4) {
        check_version(version)?;
    }
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode_frame(frame)?, 4 + len)))
}

fn check_version(version: u8) -> Result<(), DecodeError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        })
    }
}

/// Decodes one frame without its length prefix (`frame.len()` is the prefix's value).
pub fn decode_frame(frame: &[u8]) -> Result<Message, DecodeError> {
    let Some((&[version, kind], rest)) = frame.split_first_chunk::<2>() else {
        return Err(DecodeError::Undersized {
            len: frame.len(),
            min: FRAME_HEADER_AFTER_LEN,
        });
    };
    check_version(version)?;
    let Some((id, body)) = rest.split_first_chunk::<8>() else {
        return Err(DecodeError::Undersized {
            len: frame.len(),
            min: FRAME_HEADER_AFTER_LEN,
        });
    };
    let id = u64::from_be_bytes(*id);
    let bad = |reason: String| DecodeError::BadBody { kind, id, reason };
    fn json<T: for<'de> Deserialize<'de>>(
        body: &[u8],
        bad: impl Fn(String) -> DecodeError,
    ) -> Result<T, DecodeError> {
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
    }
    let empty = |body: &[u8]| {
        if body.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("expected no body, got {} bytes", body.len())))
        }
    };
    let message = match kind {
        kind::HELLO => Message::Hello(json(body, bad)?),
        kind::WELCOME => Message::Welcome(json(body, bad)?),
        kind::EXEC => {
            let (meta, stdin) = split_json(body, "exec").map_err(bad)?;
            let wire: ExecWireOwned = json(meta, bad)?;
            let mut request = wire.request;
            if wire.stdin {
                request.stdin = Some(stdin.to_vec());
            } else if !stdin.is_empty() {
                return Err(bad(format!(
                    "{} stdin bytes after an exec that says it has no stdin",
                    stdin.len()
                )));
            }
            Message::Exec { id, request }
        }
        kind::PING => {
            empty(body)?;
            Message::Ping { id }
        }
        kind::PONG => {
            empty(body)?;
            Message::Pong { id }
        }
        kind::PAUSE => {
            empty(body)?;
            Message::Pause { id }
        }
        kind::RESUME => {
            empty(body)?;
            Message::Resume { id }
        }
        kind::SIGNAL => {
            let SignalBody { signal } = json(body, bad)?;
            Message::Signal { id, signal }
        }
        kind::STDOUT | kind::STDERR => Message::Output {
            id,
            stream: if kind == kind::STDOUT {
                Stream::Stdout
            } else {
                Stream::Stderr
            },
            data: body.to_vec(),
        },
        kind::EXIT => Message::Exit {
            id,
            exit: json(body, bad)?,
        },
        kind::ERROR => Message::Error {
            id,
            error: json(body, bad)?,
        },
        kind::START => Message::Start {
            id,
            request: json(body, bad)?,
        },
        kind::STARTED => Message::Started {
            id,
            started: json(body, bad)?,
        },
        kind::LIST => {
            empty(body)?;
            Message::List { id }
        }
        kind::PROCESSES => Message::Processes {
            id,
            list: json(body, bad)?,
        },
        kind::ATTACH => Message::Attach {
            id,
            request: json(body, bad)?,
        },
        kind::PROCESS_STDOUT | kind::PROCESS_STDERR => {
            let Some((offset, data)) = body.split_first_chunk::<8>() else {
                return Err(bad("process output shorter than its 8-byte offset".into()));
            };
            Message::ProcessOutput {
                id,
                stream: if kind == kind::PROCESS_STDOUT {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                offset: u64::from_be_bytes(*offset),
                data: data.to_vec(),
            }
        }
        kind::CAUGHT_UP => Message::CaughtUp {
            id,
            offsets: json(body, bad)?,
        },
        kind::DETACH => {
            empty(body)?;
            Message::Detach { id }
        }
        kind::STDIN => {
            let Some((pid, rest)) = body.split_first_chunk::<4>() else {
                return Err(bad("stdin body shorter than its 4-byte pid".into()));
            };
            let Some((&close, data)) = rest.split_first() else {
                return Err(bad("stdin body without its close byte".into()));
            };
            if close > 1 {
                return Err(bad(format!("stdin close byte is {close}, not 0 or 1")));
            }
            Message::Stdin {
                id,
                pid: u32::from_be_bytes(*pid),
                close: close == 1,
                data: data.to_vec(),
            }
        }
        kind::SIGNAL_PROCESS => {
            let PidSignal { pid, signal } = json(body, bad)?;
            Message::SignalProcess { id, pid, signal }
        }
        kind::OK => {
            empty(body)?;
            Message::Ok { id }
        }
        kind::RESIZE => {
            let PidResize { pid, size } = json(body, bad)?;
            Message::Resize { id, pid, size }
        }
        kind::FORGET => {
            let PidBody { pid } = json(body, bad)?;
            Message::Forget { id, pid }
        }
        kind::FS => Message::Fs {
            id,
            request: json(body, bad)?,
        },
        kind::FS_ANSWER => Message::FsAnswer {
            id,
            answer: json(body, bad)?,
        },
        kind::WRITE_FILE => {
            let (meta, data) = split_json(body, "write-file").map_err(bad)?;
            Message::WriteFile {
                id,
                request: json(meta, bad)?,
                data: data.to_vec(),
            }
        }
        kind::READ_FILE => Message::ReadFile {
            id,
            request: json(body, bad)?,
        },
        kind::FILE_CONTENT => {
            let (meta, data) = split_json(body, "file-content").map_err(bad)?;
            let content: FileContent = json(meta, bad)?;
            if !content.complete && !data.is_empty() {
                return Err(bad(format!(
                    "{} bytes after file content that says it is not included",
                    data.len()
                )));
            }
            Message::FileContent {
                id,
                content,
                data: data.to_vec(),
            }
        }
        _ => return Err(DecodeError::UnknownKind { kind, id }),
    };
    Ok(message)
}

/// Reads one whole frame. `Ok(None)`: the stream ended cleanly between frames. A stream that
/// ends inside a frame is [`DecodeError::Truncated`]. After [`DecodeError::UnknownKind`] and
/// [`DecodeError::BadBody`] the frame has been consumed and the next read can go on; after
/// any other error the connection is out of step and must be dropped.
pub fn read_message<R: Read>(reader: &mut R) -> Result<Option<Message>, ReadError> {
    let mut prefix = [0u8; 4];
    let got = read_full(reader, &mut prefix)?;
    if got == 0 {
        return Ok(None);
    }
    if got < 4 {
        return Err(DecodeError::Truncated { expected: 4, got }.into());
    }
    let len = check_len(prefix)?;
    let mut frame = vec![0u8; len];
    let got = read_full(reader, &mut frame)?;
    if got < len {
        return Err(DecodeError::Truncated {
            expected: 4 + len,
            got: 4 + got,
        }
        .into());
    }
    Ok(Some(decode_frame(&frame)?))
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Encodes `message` and writes its frame with one `write_all`.
pub fn write_message<W: Write>(writer: &mut W, message: &Message) -> Result<(), WriteError> {
    let frame = encode_to_vec(message)?;
    writer.write_all(&frame)?;
    Ok(())
}

#[cfg(feature = "tokio-codec")]
mod tokio_codec;
#[cfg(feature = "tokio-codec")]
pub use tokio_codec::{AgentCodec, CodecError};

#[cfg(test)]
mod tests;
