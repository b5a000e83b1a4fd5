//! Background processes through the agent, seen from the host. The agent owns them (they
//! outlive the connection, and monza), keeps their output in a bounded ring per stream, and
//! answers one request at a time: start, list, signal, stdin. Reading output is an attach,
//! which streams chunks tagged with their offsets; an attach whose reader falls behind by
//! more than [`PAUSE_ABOVE`] is detached (its bytes stay in the agent's ring) and attached
//! again from where the reader got to, so a slow client holds host memory bounded.
//!
//! Only the agent runs background processes: with `MONZA_AGENT=off`, or for a sandbox
//! created without the agent, every request is refused with a clear error; nothing falls
//! back to Docker exec (whose processes die with their request).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use monza_agent_protocol::{
    self as protocol, AttachRequest, MAX_CHUNK, Message, Program, Signal, Stream,
};
use monza_domain::{
    Error, FileProblem, OutputSpan, OutputStream, ProcessEvent, ProcessEvents, ProcessExit,
    ProcessInfo, ProcessRequest, ProcessSignal, Result, TerminalSize,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::{ADOPT_WAIT, Agents, Conn, Flow, Slot, Waiter, lock, program_of};

use crate::errno::{EAGAIN, EMFILE, ENFILE, ENOENT, ENOMEM, ENOTDIR};

impl Agents {
    /// The container's slot and live connection, for a background-process request: waits
    /// for an agent that was just (re)started, and restarts a dead one (then waits for it).
    async fn process_conn(&self, container_id: &str) -> Result<(Arc<Slot>, Arc<Conn>)> {
        if !self.enabled() {
            return Err(Error::conflict(
                "background processes need the sandbox agent, and this server runs with \
                 MONZA_AGENT=off",
            ));
        }
        let slot = self.slot_adopted(container_id).await.ok_or_else(|| {
            Error::conflict(
                "background processes need the sandbox agent, and this sandbox was created \
                 without it",
            )
        })?;
        if let Some(conn) = slot.connection_within(ADOPT_WAIT).await {
            return Ok((slot, conn));
        }
        slot.restart_in_background();
        match slot.connection_within(ADOPT_WAIT).await {
            Some(conn) => Ok((slot, conn)),
            None => Err(Error::unavailable(
                "agent",
                "the sandbox's agent is not connected (it is being started again); retry shortly",
            )),
        }
    }

    /// The container's slot; while its adoption is in flight (a restarted monza adopting it
    /// in the background), waits for it, [`ADOPT_WAIT`] at most.
    async fn slot_adopted(&self, container_id: &str) -> Option<Arc<Slot>> {
        let until = tokio::time::Instant::now() + ADOPT_WAIT;
        loop {
            if let Some(slot) = self.get(container_id) {
                return Some(slot);
            }
            let adopting = lock(&self.adopted).contains(container_id);
            if !adopting || tokio::time::Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts a background process; see [`monza_domain::ContainerRuntime::start_process`].
    pub(crate) async fn start_process(
        &self,
        container_id: &str,
        request: &ProcessRequest,
    ) -> Result<ProcessInfo> {
        let (slot, conn) = self.process_conn(container_id).await?;
        if request.user != slot.user {
            return Err(Error::conflict(format!(
                "background processes run as the sandbox's agent user ({}), not as {}",
                slot.user.as_deref().unwrap_or("the image's user"),
                request.user.as_deref().unwrap_or("the image's user")
            )));
        }
        let program = program_of(&request.command);
        let start = protocol::StartRequest {
            program: program.clone(),
            cwd: request.workdir.clone(),
            env: request.env.clone(),
            stdin: request.stdin,
            output_limit: Some(request.output_limit),
            timeout_ms: request
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            keep_alive: request.keep_alive,
            pty: request.pty.map(|size| protocol::PtySize {
                cols: size.cols,
                rows: size.rows,
            }),
        };
        let answer = conn
            .call(self.request_timeout, |id| Message::Start {
                id,
                request: start,
            })
            .await?;
        match answer {
            Message::Started { started, .. } => {
                if request.keep_alive {
                    lock(&slot.keep_alive).insert(started.pid);
                }
                Ok(ProcessInfo {
                    pid: started.pid,
                    command: command_text(&program),
                    started_at: from_millis(started.started_at_ms),
                    exit: None,
                    stdout: OutputSpan::default(),
                    stderr: OutputSpan::default(),
                    keep_alive: request.keep_alive,
                    stdin_open: request.stdin || request.pty.is_some(),
                    pty: request.pty.is_some(),
                })
            }
            // The shell itself is there: a start that finds no file found no working
            // directory (or a component of it is a file), which is the client's to fix.
            Message::Error { error, .. }
                if error.code == protocol::ErrorCode::Spawn
                    && matches!(error.errno, Some(ENOENT | ENOTDIR)) =>
            {
                // `file_not_found`, not `not_found`: the sandbox is there, and a client must
                // not take this for a sandbox that is gone.
                Err(Error::file(
                    FileProblem::NotFound,
                    format!(
                        "the working directory {} does not exist in the sandbox, or is not a \
                         directory",
                        request.workdir.as_deref().unwrap_or("(the agent's)")
                    ),
                ))
            }
            Message::Error { error, .. } => Err(reply_error(error, "starting the process")),
            other => Err(unexpected(&other)),
        }
    }

    /// The container's background processes, by pid.
    pub(crate) async fn processes(&self, container_id: &str) -> Result<Vec<ProcessInfo>> {
        let (slot, conn) = self.process_conn(container_id).await?;
        list(&slot, &conn, self.request_timeout).await
    }

    /// Signals a background process's group.
    pub(crate) async fn signal_process(
        &self,
        container_id: &str,
        pid: u32,
        signal: ProcessSignal,
    ) -> Result<()> {
        let (_, conn) = self.process_conn(container_id).await?;
        let signal = match signal {
            ProcessSignal::Term => Signal::Term,
            ProcessSignal::Int => Signal::Int,
            ProcessSignal::Kill => Signal::Kill,
            ProcessSignal::Hup => Signal::Hup,
        };
        let answer = conn
            .call(self.request_timeout, |id| Message::SignalProcess {
                id,
                pid,
                signal,
            })
            .await?;
        ok_or_error(answer, "signalling the process")
    }

    /// Kills a background process's group and drops it; later requests for it are not
    /// found.
    pub(crate) async fn forget_process(&self, container_id: &str, pid: u32) -> Result<()> {
        let (slot, conn) = self.process_conn(container_id).await?;
        let answer = conn
            .call(self.request_timeout, |id| Message::Forget { id, pid })
            .await?;
        ok_or_error(answer, "removing the process")?;
        lock(&slot.keep_alive).remove(&pid);
        Ok(())
    }

    /// Writes to a background process's stdin (and closes it when `close`).
    pub(crate) async fn process_stdin(
        &self,
        container_id: &str,
        pid: u32,
        data: Vec<u8>,
        close: bool,
    ) -> Result<()> {
        let (_, conn) = self.process_conn(container_id).await?;
        // In pieces the agent's frames hold, each written before the next is sent; the
        // close goes with the last (an empty write when there are no bytes).
        let mut pieces: Vec<&[u8]> = data.chunks(MAX_CHUNK).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            let answer = conn
                .call(self.request_timeout, |id| Message::Stdin {
                    id,
                    pid,
                    close: close && i == last,
                    data: piece.to_vec(),
                })
                .await
                .map_err(|e| match e {
                    Error::Unavailable {
                        dependency,
                        message,
                    } => Error::Unavailable {
                        dependency,
                        message: format!(
                            "{message} (a process that does not read its stdin blocks the \
                             write; the bytes may be partly written)"
                        ),
                    },
                    other => other,
                })?;
            ok_or_error(answer, "writing to the process's stdin")?;
        }
        Ok(())
    }

    /// Resizes a background process's terminal.
    pub(crate) async fn resize_process(
        &self,
        container_id: &str,
        pid: u32,
        size: TerminalSize,
    ) -> Result<()> {
        let (_, conn) = self.process_conn(container_id).await?;
        let size = protocol::PtySize {
            cols: size.cols,
            rows: size.rows,
        };
        let answer = conn
            .call(self.request_timeout, |id| Message::Resize { id, pid, size })
            .await?;
        ok_or_error(answer, "resizing the process's terminal")
    }

    /// Streams a background process's output from `offsets`; see [`ProcessEvents`].
    pub(crate) async fn process_output(
        &self,
        container_id: &str,
        pid: u32,
        offsets: (u64, u64),
        follow: bool,
    ) -> Result<ProcessEvents> {
        let (slot, conn) = self.process_conn(container_id).await?;
        // Known now, so an unknown pid is this call's error (a 404), while the stream itself
        // is answered at once: a silent process may send nothing for a long time.
        if !list(&slot, &conn, self.request_timeout)
            .await?
            .iter()
            .any(|p| p.pid == pid)
        {
            return Err(Error::not_found(format!("no background process {pid}")));
        }
        let mut attach = Attach {
            conn,
            pid,
            offsets: [offsets.0, offsets.1],
            attached_at: [offsets.0, offsets.1],
            follow,
            current: None,
            done: false,
        };
        attach.attach().await?;
        let stream = futures::stream::unfold(attach, |mut attach| async move {
            let event = attach.next().await?;
            Some((event, attach))
        });
        Ok(stream.boxed())
    }

    /// The sandboxes with a `keep_alive` background process running, asking each
    /// connected agent (at once, each within the request timeout): one whose agent is
    /// connected but does not answer keeps what was last seen; one whose agent is gone keeps
    /// nothing (its processes went with it, or run on unwatched), and the agent is started
    /// again.
    pub(crate) async fn kept_alive(&self) -> Vec<String> {
        let timeout = self.request_timeout;
        let asks = self.slots().into_iter().map(|slot| async move {
            let conn = slot.conn.borrow().clone().filter(|c| !c.is_closed());
            match conn {
                Some(conn) => {
                    if let Err(e) = list(&slot, &conn, timeout).await {
                        tracing::debug!(sandbox_id = %slot.sandbox_id, error = %e,
                            "listing background processes for keep-alive failed");
                    }
                }
                None if !slot.recently_started() => {
                    let had = std::mem::take(&mut *lock(&slot.keep_alive));
                    if !had.is_empty() {
                        slot.restart_in_background();
                    }
                }
                None => {}
            }
            let alive = !lock(&slot.keep_alive).is_empty();
            alive.then(|| slot.sandbox_id.clone())
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Lists the agent's processes and records which `keep_alive` ones run.
async fn list(slot: &Slot, conn: &Arc<Conn>, timeout: Duration) -> Result<Vec<ProcessInfo>> {
    let answer = conn.call(timeout, |id| Message::List { id }).await?;
    let list = match answer {
        Message::Processes { list, .. } => list,
        Message::Error { error, .. } => return Err(reply_error(error, "listing processes")),
        other => return Err(unexpected(&other)),
    };
    let processes: Vec<ProcessInfo> = list.processes.into_iter().map(info).collect();
    *lock(&slot.keep_alive) = processes
        .iter()
        .filter(|p| p.keep_alive && p.exit.is_none())
        .map(|p| p.pid)
        .collect();
    Ok(processes)
}

impl Conn {
    /// Sends one request and waits for its one answer, each within `timeout`.
    pub(super) async fn call(
        self: &Arc<Self>,
        timeout: Duration,
        make: impl FnOnce(u64) -> Message,
    ) -> Result<Message> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut rx = self.register(id);
        let _registered = Registered { conn: self, id };
        let exchange = async {
            self.outbox.send(make(id)).await.map_err(|_| gone())?;
            rx.recv().await.ok_or_else(gone)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Error::unavailable(
                    "agent",
                    format!(
                        "the sandbox's agent did not answer within {} s",
                        timeout.as_secs_f64()
                    ),
                ))
            })
    }

    /// Files a waiter for the frames of request `id`.
    fn register(&self, id: u64) -> mpsc::UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.waiters).insert(
            id,
            Waiter {
                tx,
                flow: Arc::new(Flow::default()),
            },
        );
        rx
    }
}

/// Removes a request's waiter however its call ends.
struct Registered<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.conn.waiters).remove(&self.id);
    }
}

/// One reader of a process's output: the current attach, and the offsets reached.
struct Attach {
    conn: Arc<Conn>,
    pid: u32,
    /// Where stdout and stderr are read on from.
    offsets: [u64; 2],
    /// Where the current attach began.
    attached_at: [u64; 2],
    follow: bool,
    /// The attach's id, its frames, and its flow (`paused`: the reader detached it).
    current: Option<(u64, mpsc::UnboundedReceiver<Message>, Arc<Flow>)>,
    done: bool,
}

impl Attach {
    /// Attaches from the offsets reached.
    async fn attach(&mut self) -> Result<()> {
        self.end_current(true);
        self.attached_at = self.offsets;
        let id = self.conn.next_id.fetch_add(1, Ordering::Relaxed);
        let rx = self.conn.register(id);
        let flow = lock(&self.conn.waiters)
            .get(&id)
            .map(|w| w.flow.clone())
            .unwrap_or_default();
        self.current = Some((id, rx, flow));
        let message = Message::Attach {
            id,
            request: AttachRequest {
                pid: self.pid,
                stdout_offset: self.offsets[0],
                stderr_offset: self.offsets[1],
                follow: self.follow,
            },
        };
        self.conn.outbox.send(message).await.map_err(|_| gone())
    }

    /// The next event; `None` once the last was given.
    async fn next(&mut self) -> Option<Result<ProcessEvent>> {
        if self.done {
            return None;
        }
        loop {
            let (_, rx, flow) = self.current.as_mut()?;
            let Some(message) = rx.recv().await else {
                // The agent sent more than the host holds before the detach reached it; what
                // was held is read: on from where this reader is. Only after some progress:
                // an agent whose first frames already overflow would loop for ever.
                if flow.overflowed.load(Ordering::Acquire)
                    && !self.conn.is_closed()
                    && self.offsets != self.attached_at
                {
                    if let Err(e) = self.attach().await {
                        self.done = true;
                        return Some(Err(e));
                    }
                    continue;
                }
                self.done = true;
                self.end_current(true);
                return Some(Err(gone()));
            };
            match message {
                Message::ProcessOutput {
                    stream,
                    offset,
                    data,
                    ..
                } => {
                    flow.held.fetch_sub(data.len() as u64, Ordering::AcqRel);
                    let i = usize::from(stream == Stream::Stderr);
                    self.offsets[i] = offset + data.len() as u64;
                    let stream = match stream {
                        Stream::Stdout => OutputStream::Stdout,
                        Stream::Stderr => OutputStream::Stderr,
                    };
                    return Some(Ok(ProcessEvent::Output {
                        stream,
                        offset,
                        data: data.into(),
                    }));
                }
                Message::CaughtUp { offsets, .. } => {
                    self.offsets = [offsets.stdout_offset, offsets.stderr_offset];
                    if flow.paused.load(Ordering::Acquire) {
                        // Detached because this reader fell behind; it has caught up with
                        // what was sent: on from where it is.
                        // (The agent ended that attach with this frame.)
                        if let Err(e) = self.attach().await {
                            self.done = true;
                            return Some(Err(e));
                        }
                        continue;
                    }
                    self.done = true;
                    self.end_current(true);
                    return Some(Ok(ProcessEvent::CaughtUp {
                        stdout_offset: offsets.stdout_offset,
                        stderr_offset: offsets.stderr_offset,
                    }));
                }
                Message::Exit { exit, .. } => {
                    self.done = true;
                    self.end_current(true);
                    return Some(Ok(ProcessEvent::Exit(exit_of(&exit))));
                }
                Message::Error { error, .. } => {
                    self.done = true;
                    self.end_current(true);
                    return Some(Err(reply_error(error, "reading the process's output")));
                }
                other => {
                    self.done = true;
                    self.end_current(false);
                    return Some(Err(unexpected(&other)));
                }
            }
        }
    }

    /// Forgets the current attach; unless it `ended` in the agent (its last frame came, or
    /// the connection is gone), the agent is told to end it.
    fn end_current(&mut self, ended: bool) {
        if let Some((id, _, _)) = self.current.take() {
            lock(&self.conn.waiters).remove(&id);
            if !ended
                && let Err(mpsc::error::TrySendError::Full(detach)) =
                    self.conn.outbox.try_send(Message::Detach { id })
            {
                // Not left to stream on to nobody: sent once the outbox has room.
                let outbox = self.conn.outbox.clone();
                tokio::spawn(async move {
                    let _ = outbox.send(detach).await;
                });
            }
        }
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        // Dropped before its last frame: the client went away.
        self.end_current(false);
    }
}

fn info(process: protocol::ProcessInfo) -> ProcessInfo {
    ProcessInfo {
        pid: process.pid,
        command: command_text(&process.program),
        started_at: from_millis(process.started_at_ms),
        exit: process.exit.as_ref().map(exit_of),
        stdout: span(process.stdout),
        stderr: span(process.stderr),
        keep_alive: process.keep_alive,
        stdin_open: process.stdin_open,
        pty: process.pty,
    }
}

fn span(span: protocol::Span) -> OutputSpan {
    OutputSpan {
        start: span.start,
        end: span.end,
    }
}

fn exit_of(exit: &protocol::Exit) -> ProcessExit {
    ProcessExit {
        exit_code: i64::from(exit.exit_code),
        signal: exit.signal,
        timed_out: exit.timed_out,
        duration: Duration::from_micros(exit.duration_us),
    }
}

fn command_text(program: &Program) -> String {
    match program {
        Program::Shell(line) => line.clone(),
        Program::Argv(argv) => argv.join(" "),
    }
}

fn from_millis(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn ok_or_error(answer: Message, what: &str) -> Result<()> {
    match answer {
        Message::Ok { .. } => Ok(()),
        Message::Error { error, .. } => Err(reply_error(error, what)),
        other => Err(unexpected(&other)),
    }
}

/// The domain's error for an agent's refusal.
pub(super) fn reply_error(error: protocol::ErrorReply, what: &str) -> Error {
    use protocol::ErrorCode;
    match error.code {
        ErrorCode::NotFound => Error::not_found(error.message),
        // Out of processes, memory or descriptors inside the sandbox: its limits, not the
        // request, are the cause; it may pass.
        ErrorCode::Spawn if matches!(error.errno, Some(EAGAIN | ENOMEM | EMFILE | ENFILE)) => {
            Error::unavailable(
                "sandbox",
                format!(
                    "{what}: the sandbox is out of processes, memory or files ({}); retry \
                     once some have ended",
                    error.message
                ),
            )
        }
        // The agent could not set the process up (a thread, a terminal): not the request.
        ErrorCode::Spawn if error.errno.is_none() => {
            Error::unavailable("agent", format!("{what}: {}", error.message))
        }
        ErrorCode::Spawn | ErrorCode::BadRequest => {
            Error::invalid(format!("{what}: {}", error.message))
        }
        ErrorCode::Unsupported => Error::unavailable(
            "agent",
            format!(
                "{what}: the sandbox's agent is older than this server: {}",
                error.message
            ),
        ),
        ErrorCode::Started => Error::unavailable("agent", format!("{what}: {}", error.message)),
        // File operations' codes, which their own caller words; here they are a refusal.
        ErrorCode::Fs | ErrorCode::NoMatch | ErrorCode::AmbiguousMatch => {
            Error::invalid(format!("{what}: {}", error.message))
        }
    }
}

pub(super) fn unexpected(message: &Message) -> Error {
    Error::internal(format!(
        "the agent answered with an unexpected frame (id {})",
        message.id()
    ))
}

fn gone() -> Error {
    Error::unavailable("agent", "the sandbox's agent went away; retry shortly")
}

#[cfg(test)]
mod tests {
    use futures::SinkExt;
    use monza_agent_protocol::{AgentCodec, Exit};
    use tokio::net::UnixStream;
    use tokio_util::codec::{FramedRead, FramedWrite};

    use super::*;

    const CHUNK: u64 = 64 * 1024;
    /// Past the host's hold limit (4 MiB) with room to spare.
    const TOTAL: u64 = 6 * 1024 * 1024;

    /// The byte at `offset` of the fake process's output.
    fn byte_at(offset: u64) -> u8 {
        (offset % 251) as u8
    }

    fn chunk(id: u64, offset: u64) -> Message {
        let len = CHUNK.min(TOTAL - offset);
        Message::ProcessOutput {
            id,
            stream: Stream::Stdout,
            offset,
            data: (offset..offset + len).map(byte_at).collect(),
        }
    }

    /// An agent that ignores the host's detach (as any agent does until the detach reaches
    /// it) sends more than the host holds for one attach: the host stops holding it, and its
    /// reader, once it took what was held, attaches again from exactly where it got to. No
    /// byte is lost or repeated, and the request does not fail.
    #[tokio::test]
    async fn an_attach_that_outruns_the_host_is_read_on_from_where_its_reader_got_to() {
        let (host, agent) = UnixStream::pair().unwrap();
        let conn = Conn::serve_for_test(host);
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        let fake = tokio::spawn(async move {
            let (read, write) = agent.into_split();
            let mut from_host = FramedRead::new(read, AgentCodec);
            let mut to_host = FramedWrite::new(write, AgentCodec);
            let Some(Ok(Message::Attach { id, request })) = from_host.next().await else {
                panic!("expected an attach");
            };
            assert_eq!((request.pid, request.stdout_offset), (7, 0));
            let mut offset = 0;
            while offset < TOTAL {
                to_host.send(chunk(id, offset)).await.unwrap();
                offset += CHUNK;
            }
            sent_tx.send(()).unwrap();
            // The detach is ignored; the next attach says where the reader is.
            loop {
                match from_host.next().await {
                    Some(Ok(Message::Detach { .. })) => {}
                    Some(Ok(Message::Attach { id, request })) => {
                        let from = request.stdout_offset;
                        let mut offset = from;
                        while offset < TOTAL {
                            to_host.send(chunk(id, offset)).await.unwrap();
                            offset += CHUNK;
                        }
                        let exit = Exit {
                            exit_code: 0,
                            signal: None,
                            timed_out: false,
                            truncated: false,
                            stdout_bytes: TOTAL,
                            stderr_bytes: 0,
                            duration_us: 1,
                        };
                        to_host.send(Message::Exit { id, exit }).await.unwrap();
                        return from;
                    }
                    other => panic!("unexpected from the host: {other:?}"),
                }
            }
        });

        let mut attach = Attach {
            conn,
            pid: 7,
            offsets: [0, 0],
            attached_at: [0, 0],
            follow: true,
            current: None,
            done: false,
        };
        attach.attach().await.unwrap();
        // Nothing is read until the agent sent it all: the host held what it could.
        sent_rx.await.unwrap();
        let mut next = 0u64;
        let exit = loop {
            match attach.next().await.expect("events until the exit").unwrap() {
                ProcessEvent::Output { offset, data, .. } => {
                    assert_eq!(offset, next, "no gap, no repeat");
                    assert!(
                        data.iter()
                            .enumerate()
                            .all(|(i, b)| *b == byte_at(offset + i as u64))
                    );
                    next += data.len() as u64;
                }
                ProcessEvent::Exit(exit) => break exit,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(next, TOTAL);
        assert_eq!(exit.exit_code, 0);
        let reattached_at = fake.await.unwrap();
        assert!(
            reattached_at > 0 && reattached_at < TOTAL,
            "the second attach started at {reattached_at}: the host held part, not all"
        );
    }

    /// An agent whose very first frame is over the hold limit makes no progress to read on
    /// from: the read fails (once), is not attached again for ever, and the agent is told to
    /// stop.
    #[tokio::test]
    async fn an_attach_whose_first_frame_overflows_fails_instead_of_looping() {
        let (host, agent) = UnixStream::pair().unwrap();
        let conn = Conn::serve_for_test(host);
        let fake = tokio::spawn(async move {
            let (read, write) = agent.into_split();
            let mut from_host = FramedRead::new(read, AgentCodec);
            let mut to_host = FramedWrite::new(write, AgentCodec);
            let Some(Ok(Message::Attach { id, .. })) = from_host.next().await else {
                panic!("expected an attach");
            };
            let big = Message::ProcessOutput {
                id,
                stream: Stream::Stdout,
                offset: 0,
                data: vec![b'a'; 5 * 1024 * 1024],
            };
            to_host.send(big).await.unwrap();
            // The host asks it to stop; nothing else comes.
            match from_host.next().await {
                Some(Ok(Message::Detach { id: detached })) => assert_eq!(detached, id),
                other => panic!("expected a detach, got {other:?}"),
            }
            tokio::time::timeout(Duration::from_millis(300), from_host.next())
                .await
                .expect_err("no second attach");
        });
        let mut attach = Attach {
            conn,
            pid: 7,
            offsets: [0, 0],
            attached_at: [0, 0],
            follow: true,
            current: None,
            done: false,
        };
        attach.attach().await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), attach.next())
            .await
            .expect("an answer, not a loop");
        assert!(matches!(event, Some(Err(_))), "{event:?}");
        fake.await.unwrap();
    }
}
