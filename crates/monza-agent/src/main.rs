//! `monza-agent`: runs inside a sandbox, connects out to the unix socket monza listens on,
//! and runs commands for it. See the crate's README for the protocol and the reasoning.
//!
//! Usage: `monza-agent [--socket PATH]`; the path defaults to `$MONZA_AGENT_SOCKET`, then to
//! `/.monza/agent.sock`.

mod exec;
mod fs;
mod outbox;
mod processes;
mod pty;
mod threads;

use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use monza_agent_protocol::{
    DecodeError, ErrorCode, FsOutcome, Hello, MAX_FRAME_LEN, Message, PROTOCOL_VERSION, ReadError,
    read_message, write_message,
};

use crate::exec::Jobs;
use crate::outbox::Outbox;
use crate::processes::{Attaches, Processes};
use crate::threads::{Done, Threads};

/// The environment variable naming the socket; removed from the commands' environment.
pub const SOCKET_ENV: &str = "MONZA_AGENT_SOCKET";
/// The environment variable holding this start's secret, sent in the hello; removed from the
/// commands' environment (never passed to anything the agent runs).
pub const TOKEN_ENV: &str = "MONZA_AGENT_TOKEN";

/// The exit status when the host refused this agent (a stale token, another protocol): a
/// newer start has replaced it, so retrying would only pile up agents.
const EXIT_REFUSED: i32 = 3;
const DEFAULT_SOCKET: &str = "/.monza/agent.sock";

/// Bytes of encoded frames that may wait for the socket, across all commands.
const OUTBOX_BUDGET: usize = 1024 * 1024;

/// Reconnection backoff: doubles from the first to the last, then stays there.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long the host has to answer the hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a command's thread waits for the next command before it ends, and how many
/// wait at most (`threads`): about what a busy client's commands need between them.
const THREAD_KEEP: Duration = Duration::from_secs(30);
const THREADS_IDLE: usize = 8;

fn main() {
    let mut socket = std::env::var_os(SOCKET_ENV).map(PathBuf::from);
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().and_then(|a| a.to_str()) == Some(pty::PTY_EXEC) {
        args.next();
        std::process::exit(pty::exec_helper(args));
    }
    if args.peek().and_then(|a| a.to_str()) == Some(FS_ONCE) {
        std::process::exit(fs_once());
    }
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--socket") => match args.next() {
                Some(path) => socket = Some(PathBuf::from(path)),
                None => usage("--socket needs a path"),
            },
            Some("--version") => {
                println!(
                    "monza-agent {} (protocol {PROTOCOL_VERSION})",
                    env!("CARGO_PKG_VERSION")
                );
                return;
            }
            _ => usage(&format!("unknown argument {arg:?}")),
        }
    }
    let socket = socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    // Read once; the commands never see it (`exec::spawn` removes it from their environment).
    let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());

    // Background processes belong to the agent, not to a connection: they outlive it.
    let processes = Arc::new(Processes::default());
    let threads = Threads::new(THREAD_KEEP, THREADS_IDLE);
    let mut backoff = BACKOFF_FIRST;
    let mut last_error = String::new();
    loop {
        match UnixStream::connect(&socket) {
            Ok(stream) => {
                last_error.clear();
                match serve(stream, token.as_deref(), &processes, &threads, &mut backoff) {
                    Ok(()) => eprintln!("monza-agent: the host closed the connection"),
                    Err(Ended::Refused(why)) => {
                        eprintln!("monza-agent: the host refused this agent: {why}; exiting");
                        std::process::exit(EXIT_REFUSED);
                    }
                    Err(Ended::Broken(e)) => eprintln!("monza-agent: connection ended: {e}"),
                }
            }
            Err(e) => {
                // Said once per kind of failure, not on every retry.
                let error = e.to_string();
                if error != last_error {
                    eprintln!(
                        "monza-agent: cannot connect to {}: {error}; retrying",
                        socket.display()
                    );
                    last_error = error;
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// `monza-agent --fs`: one file operation, its request as JSON on stdin, its
/// [`FsOutcome`] as JSON on stdout; for a host whose agent is not connected.
const FS_ONCE: &str = "--fs";

/// The largest request `--fs` reads.
const FS_REQUEST_MAX: u64 = MAX_FRAME_LEN as u64;

fn fs_once() -> i32 {
    use std::io::Read;
    let mut input = Vec::new();
    let outcome = match std::io::stdin()
        .take(FS_REQUEST_MAX + 1)
        .read_to_end(&mut input)
    {
        Err(e) => FsOutcome::Error(exec::error(
            ErrorCode::BadRequest,
            format!("cannot read the request: {e}"),
        )),
        Ok(_) if input.len() as u64 > FS_REQUEST_MAX => FsOutcome::Error(exec::error(
            ErrorCode::BadRequest,
            format!("the request is over {FS_REQUEST_MAX} bytes"),
        )),
        Ok(_) => match serde_json::from_slice(&input) {
            Ok(request) => match fs::run(request) {
                Ok(answer) => FsOutcome::Ok(answer),
                Err(error) => FsOutcome::Error(error),
            },
            Err(e) => FsOutcome::Error(exec::error(
                ErrorCode::BadRequest,
                format!("the request does not parse: {e}"),
            )),
        },
    };
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer(&mut out, &outcome) {
        Ok(()) if out.flush().is_ok() => 0,
        _ => 1,
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("monza-agent: {problem}\nusage: monza-agent [--socket PATH]");
    std::process::exit(2)
}

/// How a connection ended, when not cleanly.
enum Ended {
    /// The host answered the hello with an error: this agent will never be served.
    Refused(String),
    /// Anything else: worth reconnecting.
    Broken(String),
}

impl From<String> for Ended {
    fn from(e: String) -> Self {
        Self::Broken(e)
    }
}

/// Does a request's work on a pooled thread (a file operation blocks on the file system
/// while the connection's other requests go on) and sends the message it makes.
fn answer_on_thread(
    threads: &Arc<Threads>,
    commands: &mut Vec<Done>,
    outbox: &Arc<Outbox>,
    name: &str,
    id: u64,
    work: impl FnOnce() -> Message + Send + 'static,
) {
    commands.retain(|handle| !handle.is_finished());
    let sender = Arc::clone(outbox);
    match threads.run(name, move || {
        // An answer that cannot be framed (over the frame limit) is still an answer: the
        // host must not wait for it until its timeout.
        if let Err(outbox::PushError::Encode(e)) = sender.send(&work()) {
            exec::refuse(id, ErrorCode::BadRequest, e.to_string(), &sender);
        }
    }) {
        Ok(handle) => commands.push(handle),
        Err(e) => exec::refuse(id, ErrorCode::Spawn, format!("no thread: {e}"), outbox),
    }
}

/// Says hello, waits for the welcome, then serves requests until the connection ends.
/// `Ok` when the host closed it cleanly. A welcome resets the reconnection `backoff`; a host
/// that closes without one leaves it growing; one that answers with an error refuses it.
fn serve(
    stream: UnixStream,
    token: Option<&str>,
    processes: &Arc<Processes>,
    threads: &Arc<Threads>,
    backoff: &mut Duration,
) -> Result<(), Ended> {
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    write_message(
        &mut writer,
        &Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            pid: rustix::process::getpid()
                .as_raw_nonzero()
                .get()
                .unsigned_abs(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            token: token.map(str::to_owned),
        }),
    )
    .map_err(|e| format!("sending the hello: {e}"))?;
    reader
        .get_ref()
        .set_read_timeout(Some(WELCOME_TIMEOUT))
        .map_err(|e| e.to_string())?;
    match read_message(&mut reader) {
        Ok(Some(Message::Welcome(welcome))) if welcome.protocol == PROTOCOL_VERSION => {}
        Ok(Some(Message::Error { id: 0, error })) => {
            return Err(Ended::Refused(error.message));
        }
        Ok(Some(Message::Welcome(welcome))) => {
            return Err(Ended::Refused(format!(
                "the host speaks protocol {}, this agent {PROTOCOL_VERSION}",
                welcome.protocol
            )));
        }
        Ok(Some(other)) => return Err(format!("expected a welcome, got {other:?}").into()),
        Ok(None) => {
            return Err("the host closed the connection before its welcome"
                .to_owned()
                .into());
        }
        Err(e) => return Err(format!("waiting for the welcome: {e}").into()),
    }
    *backoff = BACKOFF_FIRST;
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(|e| e.to_string())?;

    let outbox = Arc::new(Outbox::new(OUTBOX_BUDGET));
    let jobs = Arc::new(Jobs::default());
    let attaches = Attaches::default();
    let writer_thread = {
        let outbox = Arc::clone(&outbox);
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                while let Some(frame) = outbox.pop() {
                    if writer.write_all(&frame).is_err() {
                        break;
                    }
                }
                outbox.close();
                // Wakes the reader if the host vanished.
                let _ = writer.shutdown(Shutdown::Both);
            })
            .map_err(|e| e.to_string())?
    };

    let mut commands: Vec<Done> = Vec::new();
    let mut attach_threads: Vec<JoinHandle<()>> = Vec::new();
    let result =
        loop {
            let message = match read_message(&mut reader) {
                Ok(Some(message)) => message,
                Ok(None) => break Ok(()),
                Err(ReadError::Decode(DecodeError::UnknownKind { kind, id })) => {
                    exec::refuse(
                        id,
                        ErrorCode::Unsupported,
                        format!("this agent does not know frame kind {kind:#04x}"),
                        &outbox,
                    );
                    continue;
                }
                Err(ReadError::Decode(e @ DecodeError::BadBody { id, .. })) => {
                    exec::refuse(id, ErrorCode::BadRequest, e.to_string(), &outbox);
                    continue;
                }
                Err(e) => break Err(Ended::Broken(e.to_string())),
            };
            match message {
                Message::Exec { id, request } => {
                    commands.retain(|handle| !handle.is_finished());
                    if id == 0 {
                        exec::refuse(
                            id,
                            ErrorCode::BadRequest,
                            "request id 0 is the connection's own".into(),
                            &outbox,
                        );
                        continue;
                    }
                    if !jobs.reserve(id) {
                        exec::refuse(
                            id,
                            ErrorCode::BadRequest,
                            format!("request id {id} is already running"),
                            &outbox,
                        );
                        continue;
                    }
                    let spawned = {
                        let (outbox, jobs) = (Arc::clone(&outbox), Arc::clone(&jobs));
                        threads.run("exec", move || exec::run(id, request, &outbox, &jobs))
                    };
                    match spawned {
                        Ok(handle) => commands.push(handle),
                        Err(e) => {
                            jobs.remove(id);
                            exec::refuse(id, ErrorCode::Spawn, format!("no thread: {e}"), &outbox);
                        }
                    }
                }
                Message::Ping { id } => {
                    let _ = outbox.send(&Message::Pong { id });
                }
                Message::Pause { id } => jobs.pause(id, true),
                Message::Resume { id } => jobs.pause(id, false),
                Message::Signal { id, signal } => {
                    if !jobs.signal(id, signal) {
                        exec::refuse(
                            id,
                            ErrorCode::NotFound,
                            format!("request id {id} runs nothing"),
                            &outbox,
                        );
                    }
                }
                Message::Start { id, request } => {
                    let answer = match processes.start(request) {
                        Ok(started) => Message::Started { id, started },
                        Err(error) => Message::Error { id, error },
                    };
                    let _ = outbox.send(&answer);
                }
                Message::List { id } => {
                    let list = processes.list();
                    let _ = outbox.send(&Message::Processes { id, list });
                }
                Message::Attach { id, request } => {
                    attach_threads.retain(|handle| !handle.is_finished());
                    match processes.attach(id, &request, &outbox, &attaches) {
                        Ok(handle) => attach_threads.push(handle),
                        Err(error) => {
                            let _ = outbox.send(&Message::Error { id, error });
                        }
                    }
                }
                Message::Detach { id } => {
                    if !attaches.detach(id) {
                        exec::refuse(id, ErrorCode::NotFound, format!("no attach {id}"), &outbox);
                    }
                }
                Message::Stdin {
                    id,
                    pid,
                    close,
                    data,
                } => {
                    if let Err(error) = processes.stdin(id, pid, data, close, &outbox) {
                        let _ = outbox.send(&Message::Error { id, error });
                    }
                }
                Message::SignalProcess { id, pid, signal } => {
                    let answer = match processes.signal(pid, signal) {
                        Ok(()) => Message::Ok { id },
                        Err(error) => Message::Error { id, error },
                    };
                    let _ = outbox.send(&answer);
                }
                Message::Fs { id, request } => {
                    answer_on_thread(threads, &mut commands, &outbox, "fs", id, move || {
                        match fs::run(request) {
                            Ok(answer) => Message::FsAnswer { id, answer },
                            Err(error) => Message::Error { id, error },
                        }
                    });
                }
                Message::WriteFile { id, request, data } => {
                    answer_on_thread(threads, &mut commands, &outbox, "write", id, move || {
                        match fs::write_file(&request, &data) {
                            Ok(answer) => Message::FsAnswer { id, answer },
                            Err(error) => Message::Error { id, error },
                        }
                    });
                }
                Message::ReadFile { id, request } => {
                    answer_on_thread(threads, &mut commands, &outbox, "read", id, move || {
                        match fs::read_file(&request) {
                            Ok((content, data)) => Message::FileContent { id, content, data },
                            Err(error) => Message::Error { id, error },
                        }
                    });
                }
                Message::Forget { id, pid } => {
                    let answer = match processes.forget(pid) {
                        Ok(()) => Message::Ok { id },
                        Err(error) => Message::Error { id, error },
                    };
                    let _ = outbox.send(&answer);
                }
                Message::Resize { id, pid, size } => {
                    let answer = match processes.resize(pid, size) {
                        Ok(()) => Message::Ok { id },
                        Err(error) => Message::Error { id, error },
                    };
                    let _ = outbox.send(&answer);
                }
                other => exec::refuse(
                    other.id(),
                    ErrorCode::BadRequest,
                    "the agent does not accept this message from the host".into(),
                    &outbox,
                ),
            }
        };

    // Whatever ended the connection, its commands end with it.
    outbox.close();
    jobs.kill_all();
    attaches.detach_all();
    let _ = reader.get_ref().shutdown(Shutdown::Both);
    for done in commands {
        done.wait();
    }
    for handle in attach_threads {
        let _ = handle.join();
    }
    let _ = writer_thread.join();
    result
}
