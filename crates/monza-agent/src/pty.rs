//! Background processes on a pseudo-terminal. The agent opens the terminal pair, and starts
//! the process through itself (`monza-agent --pty-exec PROGRAM ARGS…`, the agent's own
//! binary): that helper makes itself the leader of a new session whose controlling terminal
//! is the pty, then execs the program in place. So the program (same pid) gets job control,
//! `^C` from the terminal, `SIGWINCH` on a resize. A signal or a timeout goes to its process
//! group and to every process of its session ([`signal_session`]), so it reaches what it
//! started also when a job-control shell put that in groups of its own. No `unsafe` (no `pre_exec`): the
//! session is made by the helper, a process of its own, before its `exec`.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use monza_agent_protocol::{ErrorCode, ErrorReply, Program, PtySize, Signal};
use rustix::fs::{Mode, OFlags};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};

use crate::{SOCKET_ENV, TOKEN_ENV};

/// The argument that runs the agent as the helper (see the module docs).
pub const PTY_EXEC: &str = "--pty-exec";

fn failed(what: &str, e: impl std::fmt::Display, errno: Option<i32>) -> ErrorReply {
    ErrorReply {
        code: ErrorCode::Spawn,
        message: format!("{what}: {e}"),
        errno,
    }
}

/// Starts `program` on a new terminal of `size`: the child, and the terminal's master side.
pub fn spawn(
    program: &Program,
    cwd: Option<&str>,
    env: &std::collections::BTreeMap<String, String>,
    size: PtySize,
) -> Result<(Child, OwnedFd), ErrorReply> {
    let errno = |e: rustix::io::Errno| Some(e.raw_os_error());
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(|e| failed("opening a pseudo-terminal", e, errno(e)))?;
    grantpt(&master).map_err(|e| failed("granting the pseudo-terminal", e, errno(e)))?;
    unlockpt(&master).map_err(|e| failed("unlocking the pseudo-terminal", e, errno(e)))?;
    resize(&master, size).map_err(|e| failed("sizing the pseudo-terminal", e, errno(e)))?;
    let name = ptsname(&master, Vec::new())
        .map_err(|e| failed("naming the pseudo-terminal", e, errno(e)))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failed("opening the terminal's slave side", e, errno(e)))?;
    let helper = std::env::current_exe()
        .map_err(|e| failed("finding the agent's own binary", &e, e.raw_os_error()))?;
    let argv: Vec<OsString> = match program {
        Program::Argv(argv) if argv.is_empty() => {
            return Err(ErrorReply {
                code: ErrorCode::BadRequest,
                message: "argv is empty".into(),
                errno: None,
            });
        }
        Program::Argv(argv) => argv.iter().map(OsString::from).collect(),
        Program::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.into()],
    };
    let stdio = |fd: &OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|e| failed("sharing the terminal", &e, e.raw_os_error()))
    };
    let mut command = Command::new(helper);
    command
        .arg(PTY_EXEC)
        .args(argv)
        .env_remove(SOCKET_ENV)
        .env_remove(TOKEN_ENV)
        .envs(env)
        // The usual value for a terminal, unless the request says otherwise.
        .env(
            "TERM",
            env.get("TERM").map_or("xterm-256color", String::as_str),
        )
        .stdin(stdio(&slave)?)
        .stdout(stdio(&slave)?)
        .stderr(stdio(&slave)?);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let child = command.spawn().map_err(|e| ErrorReply {
        code: ErrorCode::Spawn,
        message: e.to_string(),
        errno: e.raw_os_error(),
    })?;
    // The child holds the slave side now; the agent keeps only the master.
    drop(slave);
    Ok((child, master))
}

/// Sets the terminal's size (the session gets `SIGWINCH`).
pub fn resize(master: &OwnedFd, size: PtySize) -> rustix::io::Result<()> {
    tcsetwinsize(
        master,
        Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
}

/// Sends `signal` to every process of the session `sid` (found in `/proc`), and to the
/// process group of each: what a job-control shell on a terminal started lives in groups of
/// its own, all in its session. Best effort: a process that ends meanwhile is skipped.
pub fn signal_session(sid: rustix::process::Pid, signal: Signal) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let sid = sid.as_raw_nonzero().get();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp session …`; comm may hold spaces and parentheses.
        let session = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3))
            .and_then(|field| field.parse::<i32>().ok());
        if session == Some(sid)
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            crate::exec::send(pid, signal);
        }
    }
}

/// The master side as a file, for reading its output or writing its input.
pub fn file(master: &OwnedFd) -> std::io::Result<File> {
    master.try_clone().map(File::from)
}

/// The helper's whole life: a new session, the terminal on stdin as its controlling
/// terminal, then `exec` of the program (same pid). Returns only on failure, with the exit
/// status to leave with (127, as a shell does for a program it cannot run).
pub fn exec_helper(mut args: impl Iterator<Item = OsString>) -> i32 {
    if let Err(e) = rustix::process::setsid() {
        eprintln!("monza-agent: setsid: {e}");
        return 127;
    }
    if let Err(e) = rustix::process::ioctl_tiocsctty(std::io::stdin()) {
        eprintln!("monza-agent: making the terminal the controlling one: {e}");
        return 127;
    }
    let Some(program) = args.next() else {
        eprintln!("monza-agent: {PTY_EXEC} needs a program");
        return 127;
    };
    let error = Command::new(&program).args(args).exec();
    eprintln!("monza-agent: {}: {error}", program.to_string_lossy());
    127
}
