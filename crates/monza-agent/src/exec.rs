//! Running one `exec` request: spawn in its own process group, stream both pipes through
//! the outbox, enforce the timeout on the whole group, report the exit.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use monza_agent_protocol::{
    ErrorCode, ErrorReply, ExecRequest, Exit, MAX_CHUNK, Message, Program, Signal, Stream,
    encode_to_vec,
};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, kill_process, kill_process_group, pidfd_open};

use crate::outbox::{Outbox, PushError};
use crate::{SOCKET_ENV, TOKEN_ENV};

/// How long output is still read after the command's main process exited while something it
/// started (a `cmd &`) keeps the pipes open. The exit is reported then; the rest is not
/// waited for.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_millis(100);

/// How often a paused request checks whether the host resumed it.
pub(crate) const PAUSE_POLL: Duration = Duration::from_millis(5);

/// Without a pidfd (kernels before 5.3, or a seccomp profile that refuses it) the exit is
/// noticed by polling this often.
pub(crate) const EXIT_POLL: Duration = Duration::from_millis(10);

/// The requests of one connection that are running, by request id.
#[derive(Debug, Default)]
pub struct Jobs {
    state: Mutex<JobsState>,
}

#[derive(Debug, Default)]
struct JobsState {
    /// The main process of each request, once spawned and until reaped.
    running: HashMap<u64, Option<Pid>>,
    /// The connection is gone: a command spawned from now on is killed at once.
    closed: bool,
    /// Requests whose pipes the host asked not to read for now ([`Message::Pause`]).
    paused: HashMap<u64, Arc<AtomicBool>>,
}

impl std::ops::Deref for JobsState {
    type Target = HashMap<u64, Option<Pid>>;
    fn deref(&self) -> &Self::Target {
        &self.running
    }
}

impl std::ops::DerefMut for JobsState {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.running
    }
}

impl Jobs {
    fn lock(&self) -> MutexGuard<'_, JobsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `id` for a new request; false when a request with that id still runs.
    pub fn reserve(&self, id: u64) -> bool {
        let mut running = self.lock();
        if running.contains_key(&id) {
            return false;
        }
        running.insert(id, None);
        true
    }

    fn started(&self, id: u64, pid: Pid) {
        let mut state = self.lock();
        state.insert(id, Some(pid));
        if state.closed {
            send(pid, Signal::Kill);
        }
    }

    /// Sends `signal` to the process group of request `id` (and to its main process, in case
    /// that left the group). False when `id` runs nothing.
    pub fn signal(&self, id: u64, signal: Signal) -> bool {
        let running = self.lock();
        match running.get(&id) {
            Some(Some(pid)) => {
                send(*pid, signal);
                true
            }
            Some(None) => true,
            None => false,
        }
    }

    /// Reaps the main process if it exited. Done under the lock, with the pid forgotten in the
    /// same step, so a signal can never reach a process that reused the pid.
    fn reap(&self, id: u64, child: &mut Child) -> io::Result<Option<ExitStatus>> {
        let mut running = self.lock();
        let status = child.try_wait()?;
        if status.is_some()
            && let Some(pid) = running.get_mut(&id)
        {
            *pid = None;
        }
        Ok(status)
    }

    pub fn remove(&self, id: u64) {
        let mut state = self.lock();
        state.remove(&id);
        state.paused.remove(&id);
    }

    /// Stops (`true`) or resumes reading request `id`'s pipes. Ignored when `id` runs nothing.
    pub fn pause(&self, id: u64, paused: bool) {
        if let Some(flag) = self.lock().paused.get(&id) {
            flag.store(paused, Ordering::Release);
        }
    }

    /// The flag [`Jobs::pause`] sets for request `id`, read by its runner on every pass
    /// without taking the jobs' lock.
    fn pause_flag(&self, id: u64) -> Arc<AtomicBool> {
        self.lock().paused.entry(id).or_default().clone()
    }

    /// The connection is gone: kill every command it started.
    pub fn kill_all(&self) {
        let mut state = self.lock();
        state.closed = true;
        for pid in state.values().flatten() {
            send(*pid, Signal::Kill);
        }
    }
}

pub(crate) fn send(pid: Pid, signal: Signal) {
    let signal = match signal {
        Signal::Term => rustix::process::Signal::TERM,
        Signal::Int => rustix::process::Signal::INT,
        Signal::Kill => rustix::process::Signal::KILL,
        Signal::Hup => rustix::process::Signal::HUP,
    };
    // Errors mean the group or the process is already gone.
    let _ = kill_process_group(pid, signal);
    let _ = kill_process(pid, signal);
}

/// Why a request ended without an exit to report.
enum Failure {
    /// Answer with this error.
    Reply(ErrorReply),
    /// The connection is gone; nobody to answer.
    Disconnected,
}

/// Runs request `id` to its end and answers it (output chunks then exit, or one error).
/// `id` must have been reserved in `jobs`; it is released here.
pub fn run(id: u64, request: ExecRequest, outbox: &Outbox, jobs: &Jobs) {
    let result = Runner::start(id, request, outbox, jobs).and_then(Runner::finish);
    jobs.remove(id);
    let answer = match result {
        Ok(exit) => Message::Exit { id, exit },
        Err(Failure::Reply(error)) => Message::Error { id, error },
        Err(Failure::Disconnected) => return,
    };
    // A failure here means the connection closed meanwhile: nobody to tell.
    let _ = outbox.send(&answer);
}

/// An error answer with no OS error behind it.
pub(crate) fn error(code: ErrorCode, message: String) -> ErrorReply {
    ErrorReply {
        code,
        message,
        errno: None,
    }
}

/// Answers a request that cannot run with an error.
pub fn refuse(id: u64, code: ErrorCode, message: String, outbox: &Outbox) {
    let _ = outbox.send(&Message::Error {
        id,
        error: error(code, message),
    });
}

struct Runner<'a> {
    id: u64,
    outbox: &'a Outbox,
    jobs: &'a Jobs,
    /// Set while the host asked not to read the pipes ([`Jobs::pause`]).
    paused: Arc<AtomicBool>,
    child: Child,
    pid: Pid,
    started: Instant,
    deadline: Option<Instant>,
    timed_out: bool,
    /// Bytes that may still be forwarded (`max_output_bytes`).
    forward_left: u64,
    truncated: bool,
    stdout_bytes: u64,
    stderr_bytes: u64,
}

impl<'a> Runner<'a> {
    fn start(
        id: u64,
        request: ExecRequest,
        outbox: &'a Outbox,
        jobs: &'a Jobs,
    ) -> Result<Self, Failure> {
        let started = Instant::now();
        let mut child = spawn(
            &request.program,
            request.cwd.as_deref(),
            &request.env,
            request.stdin.is_some(),
        )
        .map_err(Failure::Reply)?;
        let pid = Pid::from_child(&child);
        jobs.started(id, pid);
        if let (Some(bytes), Some(mut stdin)) = (request.stdin, child.stdin.take()) {
            // Its own thread: a command that does not read its stdin must not block the
            // output. The thread ends when everything is written or the command closes the
            // pipe (EPIPE; the agent ignores SIGPIPE, as Rust programs do).
            let spawned = std::thread::Builder::new()
                .name(format!("stdin-{id}"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _ = stdin.write_all(&bytes);
                });
            if spawned.is_err() {
                // The pipe was moved into the closure and dropped: the command sees EOF.
                eprintln!("monza-agent: no thread for the stdin of request {id}");
            }
        }
        Ok(Self {
            id,
            paused: jobs.pause_flag(id),
            outbox,
            jobs,
            child,
            pid,
            started,
            deadline: request
                .timeout_ms
                .map(|ms| started + Duration::from_millis(ms)),
            timed_out: false,
            forward_left: request.max_output_bytes.unwrap_or(u64::MAX),
            truncated: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
        })
    }

    fn time_out(&mut self) {
        self.timed_out = true;
        self.jobs.signal(self.id, Signal::Kill);
    }

    /// Streams the pipes until the command exits and the pipes close (or the grace after the
    /// exit passes), then builds the exit.
    fn finish(mut self) -> Result<Exit, Failure> {
        let mut stdout = self.child.stdout.take();
        let mut stderr = self.child.stderr.take();
        let pidfd = pidfd_open(self.pid, PidfdFlags::empty()).ok();
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut status: Option<ExitStatus> = None;
        let mut drain_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if status.is_none() && !self.timed_out && self.deadline.is_some_and(|d| now >= d) {
                self.time_out();
            }
            // Paused by the host: the pipes are not read (the command blocks once they fill)
            // and the grace after the exit waits, so nothing is lost; checked again often.
            let paused = self.paused.load(Ordering::Acquire);
            if paused && let Some(until) = drain_until.as_mut() {
                *until = now + DRAIN_GRACE;
            }
            if status.is_some()
                && ((stdout.is_none() && stderr.is_none()) || drain_until.is_some_and(|d| now >= d))
            {
                break;
            }
            // How long poll may wait.
            let mut wait: Option<Duration> = None;
            let mut cap = |d: Duration| wait = Some(wait.map_or(d, |w| w.min(d)));
            if let Some(until) = drain_until {
                cap(until.saturating_duration_since(now));
            } else {
                if let Some(deadline) = self.deadline.filter(|_| !self.timed_out) {
                    cap(deadline.saturating_duration_since(now));
                }
                if pidfd.is_none() {
                    cap(EXIT_POLL);
                }
            }
            if paused {
                cap(PAUSE_POLL);
            }
            let ready = wait_ready(
                stdout.as_ref().filter(|_| !paused).map(AsFd::as_fd),
                stderr.as_ref().filter(|_| !paused).map(AsFd::as_fd),
                pidfd.as_ref().filter(|_| status.is_none()),
                wait,
            )
            .map_err(|e| self.broken(e))?;
            if ready.stdout
                && let Some(pipe) = stdout.as_mut()
                && !self.pump(pipe, Stream::Stdout, &mut buf)?
            {
                stdout = None;
            }
            if ready.stderr
                && let Some(pipe) = stderr.as_mut()
                && !self.pump(pipe, Stream::Stderr, &mut buf)?
            {
                stderr = None;
            }
            if status.is_none() && (ready.exited || pidfd.is_none()) {
                status = self
                    .jobs
                    .reap(self.id, &mut self.child)
                    .map_err(|e| self.broken(e))?;
                if status.is_some() && (stdout.is_some() || stderr.is_some()) {
                    drain_until = Some(Instant::now() + DRAIN_GRACE);
                }
            }
        }
        let (exit_code, signal) =
            code_and_signal(status.unwrap_or_else(|| ExitStatus::from_raw(0)));
        Ok(Exit {
            exit_code: if self.timed_out { 124 } else { exit_code },
            signal,
            timed_out: self.timed_out,
            truncated: self.truncated,
            stdout_bytes: self.stdout_bytes,
            stderr_bytes: self.stderr_bytes,
            duration_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        })
    }

    /// An OS error while watching the command: kill it and say why.
    fn broken(&mut self, e: io::Error) -> Failure {
        self.kill_and_reap();
        Failure::Reply(ErrorReply {
            code: ErrorCode::Started,
            message: format!("watching the command failed: {e}"),
            errno: e.raw_os_error(),
        })
    }

    /// Reads what a pipe holds and forwards it. False at end of file.
    fn pump(
        &mut self,
        pipe: &mut impl Read,
        stream: Stream,
        buf: &mut [u8],
    ) -> Result<bool, Failure> {
        let n = match pipe.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(self.broken(e)),
        };
        let total = match stream {
            Stream::Stdout => &mut self.stdout_bytes,
            Stream::Stderr => &mut self.stderr_bytes,
        };
        *total += n as u64;
        let take = usize::try_from(self.forward_left).map_or(n, |left| left.min(n));
        if take < n {
            self.truncated = true;
        }
        if take == 0 {
            return Ok(true);
        }
        self.forward_left -= take as u64;
        let frame = encode_to_vec(&Message::Output {
            id: self.id,
            stream,
            data: buf[..take].to_vec(),
        })
        .map_err(|e| self.broken(io::Error::other(e)))?;
        let deadline = self.deadline.filter(|_| !self.timed_out);
        let frame = match self.outbox.push(frame, deadline) {
            Ok(()) => return Ok(true),
            Err(PushError::TimedOut(frame)) => {
                // The host reads too slowly to let the command end in time.
                self.time_out();
                frame
            }
            Err(PushError::Closed) => return Err(self.disconnected()),
            Err(PushError::Encode(e)) => return Err(self.broken(io::Error::other(e))),
        };
        match self.outbox.push(frame, None) {
            Ok(()) => Ok(true),
            Err(_) => Err(self.disconnected()),
        }
    }

    fn disconnected(&mut self) -> Failure {
        self.kill_and_reap();
        Failure::Disconnected
    }

    /// Kills the command's group and waits for its main process.
    fn kill_and_reap(&mut self) {
        self.jobs.signal(self.id, Signal::Kill);
        let _ = self.child.wait();
    }
}

/// Spawns `program` with piped stdout and stderr in its own process group.
pub(crate) fn spawn(
    program: &Program,
    cwd: Option<&str>,
    env: &std::collections::BTreeMap<String, String>,
    piped_stdin: bool,
) -> Result<Child, ErrorReply> {
    let mut command = match program {
        Program::Argv(argv) => {
            let Some((program, args)) = argv.split_first() else {
                return Err(ErrorReply {
                    code: ErrorCode::BadRequest,
                    message: "argv is empty".into(),
                    errno: None,
                });
            };
            let mut command = Command::new(program);
            command.args(args);
            command
        }
        Program::Shell(line) => {
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(line);
            command
        }
    };
    command
        .env_remove(SOCKET_ENV)
        .env_remove(TOKEN_ENV)
        .envs(env)
        .stdin(if piped_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout or a signal reaches everything it started.
        // (A session would need `pre_exec`, i.e. unsafe code; the agent has no controlling
        // terminal for a command to inherit, so a group is as good.)
        .process_group(0);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    command.spawn().map_err(|e| ErrorReply {
        code: ErrorCode::Spawn,
        message: e.to_string(),
        errno: e.raw_os_error(),
    })
}

/// The exit code (128 + signal for a signal, as `sh` and Docker say) and the signal.
pub(crate) fn code_and_signal(status: ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (-1, None),
    }
}

#[derive(Default)]
pub(crate) struct Ready {
    pub stdout: bool,
    pub stderr: bool,
    pub exited: bool,
}

/// Waits until a pipe is readable (or closed), the pidfd says the process exited, or `wait`
/// passes.
pub(crate) fn wait_ready(
    stdout: Option<std::os::fd::BorrowedFd<'_>>,
    stderr: Option<std::os::fd::BorrowedFd<'_>>,
    pidfd: Option<&std::os::fd::OwnedFd>,
    wait: Option<Duration>,
) -> io::Result<Ready> {
    let readable = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
    let mut fds = Vec::with_capacity(3);
    let mut slots = [None; 3];
    if let Some(pipe) = stdout {
        slots[0] = Some(fds.len());
        fds.push(PollFd::from_borrowed_fd(pipe, PollFlags::IN));
    }
    if let Some(pipe) = stderr {
        slots[1] = Some(fds.len());
        fds.push(PollFd::from_borrowed_fd(pipe, PollFlags::IN));
    }
    if let Some(pidfd) = pidfd {
        slots[2] = Some(fds.len());
        fds.push(PollFd::from_borrowed_fd(pidfd.as_fd(), PollFlags::IN));
    }
    let timeout = match wait {
        Some(wait) => Some(Timespec::try_from(wait).map_err(io::Error::other)?),
        None => None,
    };
    match poll(&mut fds, timeout.as_ref()) {
        Ok(_) => {}
        Err(rustix::io::Errno::INTR) => return Ok(Ready::default()),
        Err(e) => return Err(e.into()),
    }
    let hit = |slot: Option<usize>| slot.is_some_and(|i| fds[i].revents().intersects(readable));
    Ok(Ready {
        stdout: hit(slots[0]),
        stderr: hit(slots[1]),
        exited: hit(slots[2]),
    })
}
