//! Background processes: started by one request, owned by the agent (not by a connection)
//! until they exit, so they survive the host going away; their output is kept in a bounded
//! ring per stream and read from any offset, as often as asked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use monza_agent_protocol::{
    AttachRequest, CaughtUp, ErrorCode, ErrorReply, Exit, MAX_CHUNK, Message, ProcessInfo,
    ProcessList, Program, PtySize, Signal, Span, StartRequest, Started, Stream,
};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::exec::{DRAIN_GRACE, EXIT_POLL, code_and_signal, error, send, spawn, wait_ready};
use crate::outbox::Outbox;

/// Bytes kept per stream when the start does not say.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 1024 * 1024;
/// The most a start may ask to keep per stream.
pub const MAX_OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;
/// Exited processes kept for list and attach; the oldest are forgotten beyond this.
const KEEP_EXITED: usize = 16;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The last `cap` bytes of a stream, with the offset of the first one kept.
#[derive(Debug)]
struct Ring {
    data: VecDeque<u8>,
    start: u64,
    cap: usize,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Self {
            data: VecDeque::new(),
            start: 0,
            cap,
        }
    }

    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    fn push(&mut self, bytes: &[u8]) {
        let over = (self.data.len() + bytes.len()).saturating_sub(self.cap);
        let from_old = over.min(self.data.len());
        self.data.drain(..from_old);
        let skip_new = over - from_old;
        self.start += over as u64;
        self.data.extend(&bytes[skip_new..]);
    }

    /// Up to `max` bytes from `offset` (moved into the kept range): `(offset, bytes)`.
    fn read(&self, offset: u64, max: usize) -> (u64, Vec<u8>) {
        let offset = offset.clamp(self.start, self.end());
        let at = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        let until = at.saturating_add(max).min(self.data.len());
        (offset, self.data.range(at..until).copied().collect())
    }

    fn span(&self) -> Span {
        Span {
            start: self.start,
            end: self.end(),
        }
    }
}

#[derive(Debug)]
struct State {
    rings: [Ring; 2],
    exit: Option<Exit>,
    /// The main process was reaped: its pid may belong to another process now.
    reaped: bool,
}

struct StdinOp {
    id: u64,
    data: Vec<u8>,
    close: bool,
    outbox: Arc<Outbox>,
}

#[derive(Debug)]
struct Process {
    pid: Pid,
    program: Program,
    started_at_ms: u64,
    keep_alive: bool,
    /// Killed with its group at this instant, if it still runs.
    deadline: Option<Instant>,
    /// The master side of its terminal, when it runs on one (kept to resize it).
    pty: Option<OwnedFd>,
    state: Mutex<State>,
    changed: Condvar,
    stdin: Mutex<Option<mpsc::Sender<StdinOp>>>,
}

impl std::fmt::Debug for StdinOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinOp")
            .field("id", &self.id)
            .field("len", &self.data.len())
            .field("close", &self.close)
            .finish()
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

/// Every background process of the agent, by pid.
#[derive(Debug, Default)]
pub struct Processes {
    table: Mutex<BTreeMap<u32, Arc<Process>>>,
}

impl Processes {
    fn get(&self, pid: u32) -> Result<Arc<Process>, ErrorReply> {
        lock(&self.table)
            .get(&pid)
            .cloned()
            .ok_or_else(|| error(ErrorCode::NotFound, format!("no background process {pid}")))
    }

    pub fn start(self: &Arc<Self>, request: StartRequest) -> Result<Started, ErrorReply> {
        let cap = usize::try_from(
            request
                .output_limit
                .unwrap_or(DEFAULT_OUTPUT_LIMIT)
                .min(MAX_OUTPUT_LIMIT),
        )
        .unwrap_or(usize::MAX);
        let started = Instant::now();
        let fail = |e: std::io::Error| {
            error(
                ErrorCode::Spawn,
                format!("sharing the process's terminal: {e}"),
            )
        };
        // The watcher's thread comes before the program: one that forks at once (a fork bomb)
        // can use up the sandbox's pids before a thread made after it, and a process nobody
        // watches is killed. Without a thread nothing is started.
        let (hand_over, handed) = mpsc::sync_channel::<Watched>(1);
        std::thread::Builder::new()
            .name("process".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Ok((process, child, outputs)) = handed.recv() {
                    watch(&process, child, outputs, started);
                }
            })
            .map_err(|e| error(ErrorCode::Spawn, format!("no thread: {e}")))?;
        // Its output (one reader per stream) and, when writable, its input.
        let (child, master, outputs, input) = match request.pty {
            Some(size) => {
                let (mut child, master) = crate::pty::spawn(
                    &request.program,
                    request.cwd.as_deref(),
                    &request.env,
                    size,
                )?;
                let files = crate::pty::file(&master)
                    .and_then(|output| crate::pty::file(&master).map(|input| (output, input)));
                let (output, input) = match files {
                    Ok(files) => files,
                    Err(e) => {
                        // Never left running unwatched.
                        send(Pid::from_child(&child), Signal::Kill);
                        let _ = child.wait();
                        return Err(fail(e));
                    }
                };
                (child, Some(master), [Some(output), None], Some(input))
            }
            None => {
                let mut child = spawn(
                    &request.program,
                    request.cwd.as_deref(),
                    &request.env,
                    request.stdin,
                )?;
                let outputs = [
                    child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
                    child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
                ];
                let input = child.stdin.take().map(|p| File::from(OwnedFd::from(p)));
                (child, None, outputs, input)
            }
        };
        let pid = Pid::from_child(&child);
        let started_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let deadline = request
            .timeout_ms
            .and_then(|ms| started.checked_add(std::time::Duration::from_millis(ms)));
        let process = Arc::new(Process {
            pid,
            program: request.program,
            started_at_ms,
            keep_alive: request.keep_alive,
            deadline,
            pty: master,
            state: Mutex::new(State {
                rings: [Ring::new(cap), Ring::new(cap)],
                exit: None,
                reaped: false,
            }),
            changed: Condvar::new(),
            stdin: Mutex::new(None),
        });
        if let Some(stdin) = input {
            let (tx, rx) = mpsc::channel();
            *lock(&process.stdin) = Some(tx);
            let spawned = std::thread::Builder::new()
                .name(format!("stdin-{}", pid.as_raw_nonzero()))
                .stack_size(64 * 1024)
                .spawn(move || feed_stdin(stdin, &rx));
            if spawned.is_err() {
                *lock(&process.stdin) = None;
            }
        }
        let raw = pid.as_raw_nonzero().get().unsigned_abs();
        {
            let mut table = lock(&self.table);
            let exited: Vec<u32> = table
                .iter()
                .filter(|(_, p)| lock(&p.state).exit.is_some())
                .map(|(pid, _)| *pid)
                .collect();
            for pid in exited
                .iter()
                .take(exited.len().saturating_sub(KEEP_EXITED - 1))
            {
                table.remove(pid);
            }
            table.insert(raw, Arc::clone(&process));
        }
        if let Err(mpsc::SendError((_, mut child, _))) =
            hand_over.send((Arc::clone(&process), child, outputs))
        {
            // The watcher is gone (it cannot be: it waits for this). Killed, reaped and
            // forgotten: never listed as running with nobody watching.
            kill(&process, Signal::Kill);
            let _ = child.wait();
            lock(&self.table).remove(&raw);
            return Err(error(
                ErrorCode::Spawn,
                "the process's watcher ended".into(),
            ));
        }
        Ok(Started {
            pid: raw,
            started_at_ms,
        })
    }

    pub fn list(&self) -> ProcessList {
        let table = lock(&self.table);
        ProcessList {
            processes: table
                .iter()
                .map(|(pid, process)| {
                    let state = lock(&process.state);
                    ProcessInfo {
                        pid: *pid,
                        program: process.program.clone(),
                        started_at_ms: process.started_at_ms,
                        exit: state.exit.clone(),
                        stdout: state.rings[0].span(),
                        stderr: state.rings[1].span(),
                        keep_alive: process.keep_alive,
                        stdin_open: lock(&process.stdin).is_some(),
                        pty: process.pty.is_some(),
                    }
                })
                .collect(),
        }
    }

    pub fn signal(&self, pid: u32, signal: Signal) -> Result<(), ErrorReply> {
        let process = self.get(pid)?;
        let state = lock(&process.state);
        if !state.reaped {
            kill(&process, signal);
        }
        Ok(())
    }

    /// Kills a process's group unless it was reaped, and drops it and its output: later
    /// requests for it are not found. A reader still attached reads on to the end.
    pub fn forget(&self, pid: u32) -> Result<(), ErrorReply> {
        let process = self.get(pid)?;
        if !lock(&process.state).reaped {
            kill(&process, Signal::Kill);
        }
        lock(&self.table).remove(&pid);
        Ok(())
    }

    /// Resizes the terminal of a process started on one.
    pub fn resize(&self, pid: u32, size: PtySize) -> Result<(), ErrorReply> {
        let process = self.get(pid)?;
        let Some(master) = &process.pty else {
            return Err(error(
                ErrorCode::BadRequest,
                format!("process {pid} does not run on a terminal"),
            ));
        };
        crate::pty::resize(master, size).map_err(|e| ErrorReply {
            code: ErrorCode::BadRequest,
            message: format!("resizing the terminal of process {pid}: {e}"),
            errno: Some(e.raw_os_error()),
        })
    }

    /// Queues bytes for the process's stdin; the stdin thread answers when written.
    pub fn stdin(
        &self,
        id: u64,
        pid: u32,
        data: Vec<u8>,
        close: bool,
        outbox: &Arc<Outbox>,
    ) -> Result<(), ErrorReply> {
        let process = self.get(pid)?;
        let mut stdin = lock(&process.stdin);
        let Some(sender) = stdin.as_ref() else {
            return Err(error(
                ErrorCode::NotFound,
                format!("process {pid} has no open stdin"),
            ));
        };
        let op = StdinOp {
            id,
            data,
            close,
            outbox: Arc::clone(outbox),
        };
        if sender.send(op).is_err() {
            *stdin = None;
            return Err(error(
                ErrorCode::NotFound,
                format!("process {pid} has no open stdin"),
            ));
        }
        if close {
            *stdin = None;
        }
        Ok(())
    }

    /// Starts streaming the output of a process to `outbox` on a thread of its own.
    pub fn attach(
        &self,
        id: u64,
        request: &AttachRequest,
        outbox: &Arc<Outbox>,
        attaches: &Attaches,
    ) -> Result<JoinHandle<()>, ErrorReply> {
        let process = self.get(request.pid)?;
        let cancel = Arc::new(AtomicBool::new(false));
        lock(&attaches.running).insert(id, (Arc::clone(&cancel), Arc::clone(&process)));
        let offsets = [request.stdout_offset, request.stderr_offset];
        let follow = request.follow;
        let outbox = Arc::clone(outbox);
        let attaches_running = Arc::clone(&attaches.running);
        std::thread::Builder::new()
            .name(format!("attach-{id}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                stream_output(id, &process, offsets, follow, &cancel, &outbox);
                lock(&attaches_running).remove(&id);
            })
            .map_err(|e| {
                lock(&attaches.running).remove(&id);
                error(ErrorCode::Spawn, format!("no thread: {e}"))
            })
    }
}

/// The attaches of one connection, by request id.
#[derive(Debug, Default)]
pub struct Attaches {
    #[allow(clippy::type_complexity)]
    running: Arc<Mutex<HashMap<u64, (Arc<AtomicBool>, Arc<Process>)>>>,
}

impl Attaches {
    /// Ends attach `id` (it answers with its offsets); false when no such attach runs.
    pub fn detach(&self, id: u64) -> bool {
        let Some((cancel, process)) = lock(&self.running).get(&id).cloned() else {
            return false;
        };
        cancel_attach(&cancel, &process);
        true
    }

    pub fn detach_all(&self) {
        let all: Vec<_> = lock(&self.running).values().cloned().collect();
        for (cancel, process) in all {
            cancel_attach(&cancel, &process);
        }
    }
}

fn cancel_attach(cancel: &AtomicBool, process: &Process) {
    // Under the state lock, so the attach cannot miss the wake-up between its check and
    // its wait.
    let _state = lock(&process.state);
    cancel.store(true, Ordering::SeqCst);
    process.changed.notify_all();
}

/// Signals the process's group, and for one on a terminal its whole session too (a job
/// control shell puts its jobs in groups of their own, all in its session).
fn kill(process: &Process, signal: Signal) {
    send(process.pid, signal);
    if process.pty.is_some() {
        crate::pty::signal_session(process.pid, signal);
    }
}

fn feed_stdin(mut stdin: File, ops: &mpsc::Receiver<StdinOp>) {
    while let Ok(op) = ops.recv() {
        let answer = match stdin.write_all(&op.data) {
            Ok(()) => Message::Ok { id: op.id },
            Err(e) => Message::Error {
                id: op.id,
                error: ErrorReply {
                    code: ErrorCode::BadRequest,
                    message: format!("writing to stdin: {e}"),
                    errno: e.raw_os_error(),
                },
            },
        };
        let _ = op.outbox.send(&answer);
        if op.close {
            return;
        }
    }
}

/// What a process's watcher is handed once the program runs.
type Watched = (Arc<Process>, std::process::Child, [Option<File>; 2]);

/// Reads the process's pipes (or its terminal) into its rings until it exits, then records
/// the exit.
fn watch(
    process: &Process,
    mut child: std::process::Child,
    outputs: [Option<File>; 2],
    started: Instant,
) {
    let [mut stdout, mut stderr] = outputs;
    let pidfd = pidfd_open(process.pid, PidfdFlags::empty()).ok();
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut status = None;
    let mut drain_until: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if status.is_some()
            && ((stdout.is_none() && stderr.is_none()) || drain_until.is_some_and(|d| now >= d))
        {
            break;
        }
        if status.is_none() && !timed_out && process.deadline.is_some_and(|d| now >= d) {
            // Its whole group: what it started goes with it.
            timed_out = true;
            kill(process, Signal::Kill);
        }
        let until_deadline = process
            .deadline
            .filter(|_| status.is_none() && !timed_out)
            .map(|d| d.saturating_duration_since(now));
        let wait = match drain_until {
            Some(until) => Some(until.saturating_duration_since(now)),
            None if pidfd.is_none() => Some(EXIT_POLL),
            None => None,
        };
        let wait = match (wait, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Ok(ready) = wait_ready(
            stdout.as_ref().map(AsFd::as_fd),
            stderr.as_ref().map(AsFd::as_fd),
            pidfd.as_ref().filter(|_| status.is_none()),
            wait,
        ) else {
            kill(process, Signal::Kill);
            status = child.wait().ok();
            break;
        };
        for (stream, is_ready) in [
            (Stream::Stdout, ready.stdout),
            (Stream::Stderr, ready.stderr),
        ] {
            if !is_ready {
                continue;
            }
            let n = match stream {
                Stream::Stdout => stdout.as_mut().map(|p| p.read(&mut buf)),
                Stream::Stderr => stderr.as_mut().map(|p| p.read(&mut buf)),
            };
            match n {
                Some(Ok(0)) | Some(Err(_)) => match stream {
                    Stream::Stdout => stdout = None,
                    Stream::Stderr => stderr = None,
                },
                Some(Ok(n)) => {
                    let mut state = lock(&process.state);
                    state.rings[index(stream)].push(&buf[..n]);
                    process.changed.notify_all();
                }
                None => {}
            }
        }
        if status.is_none() && (ready.exited || pidfd.is_none()) {
            let mut state = lock(&process.state);
            status = child.try_wait().ok().flatten();
            if status.is_some() {
                state.reaped = true;
                if stdout.is_some() || stderr.is_some() {
                    drain_until = Some(Instant::now() + DRAIN_GRACE);
                }
            }
        }
    }
    // Nobody can feed a process that is gone: let its stdin thread end.
    *lock(&process.stdin) = None;
    let (exit_code, signal) = status.map_or((-1, None), code_and_signal);
    // The coreutils convention, as for a timed-out exec.
    let exit_code = if timed_out { 124 } else { exit_code };
    let mut state = lock(&process.state);
    state.reaped = true;
    let [out, err] = &state.rings;
    let exit = Exit {
        exit_code,
        signal,
        timed_out,
        truncated: out.start > 0 || err.start > 0,
        stdout_bytes: out.end(),
        stderr_bytes: err.end(),
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    };
    state.exit = Some(exit);
    process.changed.notify_all();
}

/// Sends the output from `offsets` on, then the exit, or the offsets reached when not
/// following (or detached).
fn stream_output(
    id: u64,
    process: &Process,
    mut offsets: [u64; 2],
    follow: bool,
    cancel: &AtomicBool,
    outbox: &Outbox,
) {
    loop {
        let mut chunks = Vec::new();
        let exit = {
            let mut state = lock(&process.state);
            loop {
                if cancel.load(Ordering::SeqCst) {
                    break None;
                }
                for stream in STREAMS {
                    let i = index(stream);
                    let (from, data) = state.rings[i].read(offsets[i], MAX_CHUNK);
                    offsets[i] = from;
                    if !data.is_empty() {
                        chunks.push((stream, from, data));
                    }
                }
                if !chunks.is_empty() {
                    break None;
                }
                if state.exit.is_some() {
                    break state.exit.clone();
                }
                if !follow {
                    break None;
                }
                state = process
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        if chunks.is_empty() {
            let last = match exit {
                Some(exit) => Message::Exit { id, exit },
                None => Message::CaughtUp {
                    id,
                    offsets: CaughtUp {
                        stdout_offset: offsets[0],
                        stderr_offset: offsets[1],
                    },
                },
            };
            let _ = outbox.send(&last);
            return;
        }
        for (stream, offset, data) in chunks {
            offsets[index(stream)] = offset + data.len() as u64;
            let sent = outbox.send(&Message::ProcessOutput {
                id,
                stream,
                offset,
                data,
            });
            if sent.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_bytes_and_says_where_they_start() {
        let mut ring = Ring::new(5);
        ring.push(b"abc");
        assert_eq!(ring.read(0, 10), (0, b"abc".to_vec()));
        ring.push(b"defg");
        assert_eq!(ring.span(), Span { start: 2, end: 7 });
        assert_eq!(ring.read(0, 10), (2, b"cdefg".to_vec()));
        assert_eq!(ring.read(4, 2), (4, b"ef".to_vec()));
        assert_eq!(ring.read(99, 2), (7, Vec::new()));
        ring.push(b"0123456789");
        assert_eq!(ring.span(), Span { start: 12, end: 17 });
        assert_eq!(ring.read(0, 10), (12, b"56789".to_vec()));
        let mut none = Ring::new(0);
        none.push(b"xy");
        assert_eq!(none.span(), Span { start: 2, end: 2 });
    }
}
