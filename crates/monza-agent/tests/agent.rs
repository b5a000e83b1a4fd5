#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The static agent in a real container (`monza-test/busybox:latest`: no libc), run as
//! 1000:1000 with every capability dropped, connected out to a socket this test owns.

mod common;

use std::time::{Duration, Instant};

use common::sandbox;
use monza_agent_protocol::{
    AttachRequest, CaughtUp, ErrorCode, ExecRequest, Message, PROTOCOL_VERSION, ProcessInfo,
    PtySize, Signal, Span, StartRequest, Stream, encode_to_vec,
};

#[test]
fn commands_run_as_the_sandbox_user_with_their_exit_codes_stdin_cwd_and_env() {
    let Some(mut sb) = sandbox() else { return };
    let conn = &mut sb.conn;
    assert_eq!(conn.hello.protocol, PROTOCOL_VERSION);
    assert_eq!((conn.hello.uid, conn.hello.gid), (1000, 1000));
    assert!(conn.hello.pid > 1, "tini is pid 1, the agent its child");

    conn.send(&Message::Ping { id: 77 });
    assert_eq!(conn.recv(), Message::Pong { id: 77 });

    let out = conn.exec(ExecRequest::argv(["true"]));
    assert_eq!(out.exit().exit_code, 0);
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    assert!(!out.exit().timed_out && !out.exit().truncated);

    assert_eq!(conn.sh("echo hi").stdout_text(), "hi\n");
    let out = conn.sh("echo out; echo oops >&2; exit 3");
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"oops\n"[..])
    );
    assert_eq!(out.exit().exit_code, 3);
    assert_eq!((out.exit().stdout_bytes, out.exit().stderr_bytes), (4, 5));

    let out = conn.exec(ExecRequest::argv(["echo", "two  spaces", "$HOME"]));
    assert_eq!(
        out.stdout_text(),
        "two  spaces $HOME\n",
        "argv is not re-parsed"
    );

    let out = conn.sh("kill -TERM $$");
    assert_eq!((out.exit().exit_code, out.exit().signal), (143, Some(15)));

    let out = conn.sh("id -u; id -g");
    assert_eq!(out.stdout_text(), "1000\n1000\n");

    // stdin: fed then closed; a large one does not deadlock against the output.
    let mut request = ExecRequest::argv(["cat"]);
    request.stdin = Some(b"line 1\nline 2 without newline".to_vec());
    assert_eq!(
        conn.exec(request).stdout_text(),
        "line 1\nline 2 without newline"
    );
    let mut request = ExecRequest::argv(["cat"]);
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    request.stdin = Some(big.clone());
    assert_eq!(conn.exec(request).stdout, big);
    assert_eq!(conn.sh("cat").stdout, b"", "no stdin is /dev/null");

    let mut request = ExecRequest::argv(["pwd"]);
    request.cwd = Some("/tmp".into());
    assert_eq!(conn.exec(request).stdout_text(), "/tmp\n");

    let mut request = ExecRequest::shell("printf '%s|%s' \"$FOO\" \"$MONZA_AGENT_SOCKET\"");
    request.env.insert("FOO".into(), "bar baz".into());
    assert_eq!(
        conn.exec(request).stdout_text(),
        "bar baz|",
        "the request's env is set, the agent's socket variable is not passed on"
    );

    // Requests that cannot run answer with an error, and the connection goes on.
    let out = conn.exec(ExecRequest::argv(["/no/such/program"]));
    let error = out.error.expect("spawn error");
    assert_eq!((error.code, error.errno), (ErrorCode::Spawn, Some(2)));
    let mut request = ExecRequest::argv(["true"]);
    request.cwd = Some("/no/such/dir".into());
    assert_eq!(
        conn.exec(request).error.expect("bad cwd").code,
        ErrorCode::Spawn
    );
    let out = conn.exec(ExecRequest::argv(Vec::<String>::new()));
    assert_eq!(out.error.expect("empty argv").code, ErrorCode::BadRequest);
    conn.send(&Message::Exec {
        id: 0,
        request: ExecRequest::argv(["true"]),
    });
    match conn.recv() {
        Message::Error { id: 0, error } => assert_eq!(error.code, ErrorCode::BadRequest),
        other => panic!("expected an error, got {other:?}"),
    }

    // A frame kind from a newer host is refused, not fatal.
    let mut frame = encode_to_vec(&Message::Ping { id: 500 }).unwrap();
    frame[5] = 0x7e;
    conn.send_raw(&frame);
    match conn.recv() {
        Message::Error { id: 500, error } => assert_eq!(error.code, ErrorCode::Unsupported),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(conn.sh("echo still here").stdout_text(), "still here\n");
}

#[test]
fn output_is_capped_and_bytes_that_are_not_utf8_arrive_intact() {
    let Some(mut sb) = sandbox() else { return };
    let conn = &mut sb.conn;
    // Every byte value, through printf's octal escapes, on both streams.
    let escapes: String = (0..=255u8).map(|b| format!("\\{b:03o}")).collect();
    let out = conn.sh(&format!("printf '{escapes}'; printf '{escapes}' >&2"));
    let every_byte: Vec<u8> = (0..=255u8).collect();
    assert_eq!(out.stdout, every_byte);
    assert_eq!(out.stderr, every_byte);

    let mut request = ExecRequest::shell("head -c 300000 /dev/zero; echo done >&2");
    request.max_output_bytes = Some(1000);
    let out = conn.exec(request);
    assert_eq!(out.stdout.len() + out.stderr.len(), 1000);
    let exit = out.exit();
    assert!(exit.truncated);
    assert_eq!(
        (exit.exit_code, exit.stdout_bytes, exit.stderr_bytes),
        (0, 300_000, 5)
    );
}

/// `ps` inside the sandbox, through the agent: the live processes whose command line
/// contains `needle`.
fn processes_matching(conn: &mut common::Conn, needle: &str) -> Vec<String> {
    let out = conn.sh("ps -o pid,stat,args");
    assert_eq!(
        out.exit().exit_code,
        0,
        "ps: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout_text()
        .lines()
        .filter(|line| line.contains(needle) && !line.contains("ps -o"))
        // Z: a zombie, already dead.
        .filter(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|stat| !stat.starts_with('Z'))
        })
        .map(str::to_owned)
        .collect()
}

fn assert_gone(conn: &mut common::Conn, needle: &str) {
    let mut left = Vec::new();
    for _ in 0..50 {
        left = processes_matching(conn, needle);
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("still running: {left:?}");
}

#[test]
fn a_timeout_kills_the_whole_process_group_and_answers_124() {
    let Some(mut sb) = sandbox() else { return };
    let conn = &mut sb.conn;
    let mut request = ExecRequest::shell("echo started; sleep 100 & sleep 101");
    request.timeout_ms = Some(300);
    let began = Instant::now();
    let out = conn.exec(request);
    let exit = out.exit();
    assert!(exit.timed_out);
    assert_eq!((exit.exit_code, exit.signal), (124, Some(9)));
    assert_eq!(out.stdout_text(), "started\n");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    assert!(exit.duration_us >= 300_000, "{}", exit.duration_us);
    assert_gone(conn, "sleep 10");

    // The host's signal reaches the group too.
    let id = conn.start(ExecRequest::shell("sleep 102 & sleep 103"));
    std::thread::sleep(Duration::from_millis(200));
    conn.send(&Message::Signal {
        id,
        signal: Signal::Kill,
    });
    match conn.recv() {
        Message::Exit { id: got, exit } => {
            assert_eq!(got, id);
            assert_eq!(
                (exit.exit_code, exit.signal, exit.timed_out),
                (137, Some(9), false)
            );
        }
        other => panic!("expected the exit, got {other:?}"),
    }
    assert_gone(conn, "sleep 10");

    // A command that leaves something in the background holding its pipes answers soon
    // after its main process exits; the background process is left running.
    let began = Instant::now();
    let out = conn.sh("sleep 105 & echo bg");
    assert_eq!(
        (out.stdout_text().as_str(), out.exit().exit_code),
        ("bg\n", 0)
    );
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(processes_matching(conn, "sleep 105").len(), 1);

    conn.send(&Message::Signal {
        id: 999,
        signal: Signal::Term,
    });
    match conn.recv() {
        Message::Error { id: 999, error } => assert_eq!(error.code, ErrorCode::NotFound),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_timeout_fires_while_the_host_is_not_reading() {
    let Some(mut sb) = sandbox() else { return };
    let mut request = ExecRequest::argv(["yes"]);
    request.timeout_ms = Some(300);
    let id = sb.conn.start(request);
    // The outbox and the socket fill; the agent's command thread waits on them.
    std::thread::sleep(Duration::from_millis(1500));
    let mut received = 0usize;
    let exit = loop {
        match sb.conn.recv() {
            Message::Output { data, .. } => received += data.len(),
            Message::Exit { id: got, exit } => {
                assert_eq!(got, id);
                break exit;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(exit.timed_out, "{exit:?}");
    assert_eq!(exit.exit_code, 124);
    assert!(received > 0 && received < 16 << 20, "{received} bytes");
    assert_eq!(sb.conn.sh("echo next").stdout_text(), "next\n");
}

#[test]
fn fifty_concurrent_execs_share_one_connection() {
    let Some(mut sb) = sandbox() else { return };
    let conn = &mut sb.conn;
    let ids: Vec<u64> = (0..50)
        .map(|i| {
            conn.start(ExecRequest::shell(format!(
                "sleep 1; echo out-{i}; echo err-{i} >&2; exit {}",
                i % 7
            )))
        })
        .collect();
    // A ping sent after them is answered while they all still run.
    conn.send(&Message::Ping { id: 10_000 });
    let mut pong_before = None;
    let mut outcomes: std::collections::HashMap<u64, common::Outcome> = Default::default();
    let mut exits = 0;
    while exits < ids.len() {
        match conn.recv() {
            Message::Pong { id: 10_000 } => pong_before = Some(exits),
            message => {
                let id = message.id();
                let done = matches!(message, Message::Exit { .. } | Message::Error { .. });
                let outcome = outcomes.entry(id).or_default();
                match message {
                    Message::Output {
                        stream: Stream::Stdout,
                        data,
                        ..
                    } => outcome.stdout.extend(data),
                    Message::Output {
                        stream: Stream::Stderr,
                        data,
                        ..
                    } => outcome.stderr.extend(data),
                    Message::Exit { exit, .. } => outcome.exit = Some(exit),
                    Message::Error { error, .. } => outcome.error = Some(error),
                    other => panic!("unexpected {other:?}"),
                }
                exits += usize::from(done);
            }
        }
    }
    assert!(
        pong_before.is_some_and(|n| n < ids.len()),
        "pong after {pong_before:?} exits"
    );
    for (i, id) in ids.iter().enumerate() {
        let out = &outcomes[id];
        assert_eq!(out.stdout_text(), format!("out-{i}\n"));
        assert_eq!(out.stderr, format!("err-{i}\n").into_bytes());
        assert_eq!(out.exit().exit_code, i32::try_from(i % 7).unwrap());
    }
    // Reusing an id that is still running is refused.
    let id = conn.start(ExecRequest::shell("sleep 0.5"));
    conn.send(&Message::Exec {
        id,
        request: ExecRequest::argv(["true"]),
    });
    let refused = conn.gather(&[id]).remove(&id).unwrap();
    assert_eq!(
        refused.error.expect("duplicate id").code,
        ErrorCode::BadRequest
    );
    match conn.recv() {
        Message::Exit { id: got, exit } => assert_eq!((got, exit.exit_code), (id, 0)),
        other => panic!("expected the first exec's exit, got {other:?}"),
    }
}

fn vm_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
fn sixty_four_mib_of_output_stream_through_bounded_agent_memory() {
    const TOTAL: usize = 64 << 20;
    let Some(mut sb) = sandbox() else { return };
    let status_path = format!("/proc/{}/status", sb.conn.hello.pid);
    let rss_before = vm_kib(&sb.container.cat(&status_path), "VmRSS:");
    let id = sb.conn.start(ExecRequest::shell(format!(
        "yes 0123456789abcdef | head -c {TOTAL}"
    )));
    let mut received = 0usize;
    let mut next_sample = 0usize;
    let mut samples = Vec::new();
    loop {
        match sb.conn.recv() {
            Message::Output {
                id: got,
                stream: Stream::Stdout,
                data,
            } => {
                assert_eq!(got, id);
                if received == 0 {
                    assert!(data.starts_with(b"0123456789abcdef\n"));
                }
                received += data.len();
            }
            Message::Exit { exit, .. } => {
                assert_eq!((exit.exit_code, exit.stdout_bytes), (0, TOTAL as u64));
                assert!(!exit.truncated);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
        // A slow host: stop reading now and then, long enough for the agent's queue and the
        // socket to fill; the agent must stop reading the pipe instead of buffering.
        if received >= next_sample {
            std::thread::sleep(Duration::from_millis(300));
            samples.push(vm_kib(&sb.container.cat(&status_path), "VmRSS:"));
            next_sample += 8 << 20;
        }
    }
    assert_eq!(received, TOTAL);
    let peak = vm_kib(&sb.container.cat(&status_path), "VmHWM:");
    eprintln!(
        "agent VmRSS before {rss_before} KiB, while streaming {samples:?} KiB, peak {peak} KiB"
    );
    assert!(samples.len() >= 8, "{samples:?}");
    assert!(
        peak < rss_before + 8 * 1024,
        "the agent's peak RSS {peak} KiB grew more than 8 MiB over {rss_before} KiB"
    );
}

#[test]
fn the_agent_reconnects_when_the_host_restarts_and_kills_the_old_connections_commands() {
    let Some(mut sb) = sandbox() else { return };
    let pid = sb.conn.hello.pid;
    sb.conn.start(ExecRequest::shell("sleep 104"));
    std::thread::sleep(Duration::from_millis(200));
    // The server goes away: its connection and its listening socket.
    let common::Sandbox {
        conn,
        mut host,
        container,
    } = sb;
    drop(conn);
    host.restart();
    let mut conn = host
        .accept(Duration::from_secs(10))
        .expect("the agent reconnects");
    assert_eq!(conn.hello.pid, pid, "the same agent, reconnected");
    assert_eq!(conn.sh("echo back").stdout_text(), "back\n");
    assert_gone(&mut conn, "sleep 104");
    // And once more, with the listener gone for a while (the backoff is bounded).
    drop(conn);
    host.restart();
    std::thread::sleep(Duration::from_millis(100));
    let mut conn = host
        .accept(Duration::from_secs(10))
        .expect("reconnects again");
    assert_eq!(conn.sh("echo again").stdout_text(), "again\n");
    drop(container);
}

fn start(conn: &mut common::Conn, request: StartRequest) -> u32 {
    let id = conn.fresh_id();
    conn.send(&Message::Start { id, request });
    match conn.recv() {
        Message::Started { id: got, started } => {
            assert_eq!(got, id);
            started.pid
        }
        other => panic!("expected started, got {other:?}"),
    }
}

/// Everything an attach sends until its exit or caught-up frame, as
/// (stdout, stderr, first offsets, last frame).
fn attach(
    conn: &mut common::Conn,
    pid: u32,
    offsets: (u64, u64),
    follow: bool,
) -> (Vec<u8>, Vec<u8>, Vec<u64>, Message) {
    let id = conn.fresh_id();
    conn.send(&Message::Attach {
        id,
        request: AttachRequest {
            pid,
            stdout_offset: offsets.0,
            stderr_offset: offsets.1,
            follow,
        },
    });
    let (mut out, mut err, mut firsts) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let message = conn.recv();
        assert_eq!(message.id(), id);
        match message {
            Message::ProcessOutput {
                stream,
                offset,
                data,
                ..
            } => {
                let buf = if stream == Stream::Stdout {
                    &mut out
                } else {
                    &mut err
                };
                if buf.is_empty() {
                    firsts.push(offset);
                }
                buf.extend(data);
            }
            last => return (out, err, firsts, last),
        }
    }
}

fn list(conn: &mut common::Conn) -> Vec<ProcessInfo> {
    let id = conn.fresh_id();
    conn.send(&Message::List { id });
    match conn.recv() {
        Message::Processes { list, .. } => list.processes,
        other => panic!("expected the list, got {other:?}"),
    }
}

fn expect_ok(conn: &mut common::Conn, id: u64) {
    match conn.recv() {
        Message::Ok { id: got } => assert_eq!(got, id),
        other => panic!("expected ok for {id}, got {other:?}"),
    }
}

#[test]
fn background_processes_keep_their_output_and_take_stdin() {
    let Some(mut sb) = sandbox() else { return };
    let conn = &mut sb.conn;
    let mut request = StartRequest::shell(
        "echo begin; echo warn >&2; while read line; do echo \"got $line\"; done; exit 5",
    );
    request.stdin = true;
    let pid = start(conn, request);

    // Not following: what is there now, then where it stopped.
    let mut seen = Vec::new();
    for _ in 0..100 {
        let (out, _, _, last) = attach(conn, pid, (0, 0), false);
        assert!(matches!(last, Message::CaughtUp { .. }), "{last:?}");
        seen = out;
        if seen == b"begin\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen, b"begin\n");

    let id = conn.fresh_id();
    conn.send(&Message::Stdin {
        id,
        pid,
        close: false,
        data: b"one\n".to_vec(),
    });
    expect_ok(conn, id);

    // Following from an offset: only what comes after it, then the exit once stdin closes.
    let attach_id = conn.fresh_id();
    conn.send(&Message::Attach {
        id: attach_id,
        request: AttachRequest {
            pid,
            stdout_offset: 6,
            stderr_offset: 0,
            follow: true,
        },
    });
    let stdin_id = conn.fresh_id();
    conn.send(&Message::Stdin {
        id: stdin_id,
        pid,
        close: true,
        data: b"two\n".to_vec(),
    });
    let (mut out, mut err, mut offsets, mut ok) = (Vec::new(), Vec::new(), Vec::new(), false);
    let exit = loop {
        match conn.recv() {
            Message::Ok { id } if id == stdin_id => ok = true,
            Message::ProcessOutput {
                id,
                stream,
                offset,
                data,
            } => {
                assert_eq!(id, attach_id);
                offsets.push((stream, offset));
                match stream {
                    Stream::Stdout => out.extend(data),
                    Stream::Stderr => err.extend(data),
                }
            }
            Message::Exit { id, exit } => {
                assert_eq!(id, attach_id);
                break exit;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(ok, "the stdin write was acknowledged");
    assert_eq!(out, b"got one\ngot two\n");
    assert_eq!(err, b"warn\n");
    // Stdout from the offset asked (stderr's warn may come first or after: it was written
    // before, stdout's lines only once the shell has read its input).
    assert_eq!(
        offsets.iter().find(|(stream, _)| *stream == Stream::Stdout),
        Some(&(Stream::Stdout, 6)),
        "{offsets:?}"
    );
    assert_eq!(
        offsets.iter().find(|(stream, _)| *stream == Stream::Stderr),
        Some(&(Stream::Stderr, 0)),
        "{offsets:?}"
    );
    assert_eq!(
        (exit.exit_code, exit.stdout_bytes, exit.stderr_bytes),
        (5, 22, 5)
    );

    let info = list(conn)
        .into_iter()
        .find(|p| p.pid == pid)
        .expect("listed");
    assert_eq!(info.exit.map(|e| e.exit_code), Some(5));
    assert_eq!(info.stdout, Span { start: 0, end: 22 });

    // stdin is closed now; an unknown pid is not found.
    let id = conn.fresh_id();
    conn.send(&Message::Stdin {
        id,
        pid,
        close: false,
        data: b"late\n".to_vec(),
    });
    assert!(
        matches!(conn.recv(), Message::Error { error, .. } if error.code == ErrorCode::NotFound)
    );
    let id = conn.fresh_id();
    conn.send(&Message::SignalProcess {
        id,
        pid: 999_999,
        signal: Signal::Term,
    });
    assert!(
        matches!(conn.recv(), Message::Error { error, .. } if error.code == ErrorCode::NotFound)
    );

    // The ring keeps the newest bytes and says where they start.
    let mut request = StartRequest::shell("yes abcdefghi | head -c 5000");
    request.output_limit = Some(1000);
    let pid = start(conn, request);
    // Following while it writes: whatever the ring holds when asked, then the rest.
    let (_, _, _, last) = attach(conn, pid, (0, 0), true);
    assert!(matches!(last, Message::Exit { .. }), "{last:?}");
    // Once it ended: only the last 1000 bytes are left, and the offset says so.
    let (out, _, firsts, last) = attach(conn, pid, (0, 0), false);
    let Message::Exit { exit, .. } = last else {
        panic!("expected the exit, got {last:?}")
    };
    assert!(exit.truncated);
    assert_eq!(exit.stdout_bytes, 5000);
    assert_eq!(firsts, [4000]);
    assert_eq!(out.len(), 1000);
    assert!(out.ends_with(b"abcdefghi\n"));
}

#[test]
fn background_processes_outlive_the_connection_and_are_signalled() {
    let Some(mut sb) = sandbox() else { return };
    let ticker = start(
        &mut sb.conn,
        StartRequest::shell("for i in 0 1 2 3; do echo tick$i; sleep 0.2; done"),
    );
    let sleeper = start(&mut sb.conn, StartRequest::shell("sleep 106"));
    let common::Sandbox {
        conn,
        mut host,
        container,
    } = sb;
    drop(conn);
    host.restart();
    let mut conn = host.accept(Duration::from_secs(10)).expect("reconnects");
    let pids: Vec<u32> = list(&mut conn).iter().map(|p| p.pid).collect();
    assert!(
        pids.contains(&ticker) && pids.contains(&sleeper),
        "{pids:?}"
    );
    assert_eq!(processes_matching(&mut conn, "sleep 106").len(), 1);

    // Everything it wrote, also what it wrote while nobody was connected.
    let (out, _, _, last) = attach(&mut conn, ticker, (0, 0), true);
    assert_eq!(out, b"tick0\ntick1\ntick2\ntick3\n");
    assert!(matches!(last, Message::Exit { exit, .. } if exit.exit_code == 0));

    // A follow with nothing to say ends when detached.
    let id = conn.fresh_id();
    conn.send(&Message::Attach {
        id,
        request: AttachRequest {
            pid: sleeper,
            stdout_offset: 0,
            stderr_offset: 0,
            follow: true,
        },
    });
    std::thread::sleep(Duration::from_millis(100));
    conn.send(&Message::Detach { id });
    assert_eq!(
        conn.recv(),
        Message::CaughtUp {
            id,
            offsets: CaughtUp {
                stdout_offset: 0,
                stderr_offset: 0
            }
        }
    );

    let id = conn.fresh_id();
    conn.send(&Message::SignalProcess {
        id,
        pid: sleeper,
        signal: Signal::Kill,
    });
    expect_ok(&mut conn, id);
    let (_, _, _, last) = attach(&mut conn, sleeper, (0, 0), true);
    assert!(
        matches!(&last, Message::Exit { exit, .. } if exit.signal == Some(9)),
        "{last:?}"
    );
    assert_gone(&mut conn, "sleep 106");
    drop(container);
}

#[test]
fn a_background_process_past_its_timeout_is_killed_with_its_group() {
    let Some(mut sb) = sandbox() else { return };
    let conn = &mut sb.conn;
    let mut request = StartRequest::shell("sleep 107 & echo started; sleep 108");
    request.timeout_ms = Some(300);
    request.keep_alive = true;
    request.stdin = true;
    let pid = start(conn, request);
    let listed = list(conn);
    let info = listed.iter().find(|p| p.pid == pid).expect("listed");
    assert!(info.keep_alive && info.stdin_open, "{info:?}");
    let (out, _, _, last) = attach(conn, pid, (0, 0), true);
    assert_eq!(out, b"started\n");
    let Message::Exit { exit, .. } = last else {
        panic!("expected the exit, got {last:?}")
    };
    assert!(exit.timed_out, "{exit:?}");
    assert_eq!(exit.exit_code, 124);
    // The child it started in the background went with it.
    assert_gone(conn, "sleep 107");
    let listed = list(conn);
    let info = listed.iter().find(|p| p.pid == pid).expect("still listed");
    assert!(!info.stdin_open, "an exited process has no stdin");
}

/// Waits (10 s at most) until the process's output holds `needle`; what it holds then.
fn output_until(conn: &mut common::Conn, pid: u32, needle: &str) -> String {
    let mut text = String::new();
    for _ in 0..200 {
        let (out, _, _, _) = attach(conn, pid, (0, 0), false);
        text = String::from_utf8_lossy(&out).into_owned();
        if text.contains(needle) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{needle:?} never came; the output is {text:?}");
}

#[test]
fn a_process_on_a_terminal_is_its_session_leader_sized_resized_and_interrupted() {
    let Some(mut sb) = sandbox() else { return };
    let conn = &mut sb.conn;
    let mut request = StartRequest::shell("tty; stty size; read a; echo \"got $a\"; stty size");
    request.pty = Some(PtySize { cols: 80, rows: 24 });
    let pid = start(conn, request);
    let listed = list(conn);
    assert!(listed.iter().any(|p| p.pid == pid && p.pty), "{listed:?}");
    let text = output_until(conn, pid, "24 80");
    assert!(text.starts_with("/dev/pts/"), "{text:?}");

    let id = conn.fresh_id();
    conn.send(&Message::Resize {
        id,
        pid,
        size: PtySize {
            cols: 100,
            rows: 30,
        },
    });
    expect_ok(conn, id);
    let id = conn.fresh_id();
    // Enter on a terminal is a carriage return; the line discipline echoes what is typed.
    conn.send(&Message::Stdin {
        id,
        pid,
        close: false,
        data: b"hello\r".to_vec(),
    });
    expect_ok(conn, id);
    let (out, err, _, last) = attach(conn, pid, (0, 0), true);
    let text = String::from_utf8_lossy(&out);
    assert!(err.is_empty(), "a terminal has one stream");
    assert!(text.contains("hello\r\n"), "echoed: {text:?}");
    assert!(text.contains("got hello\r\n30 100"), "{text:?}");
    assert!(
        matches!(&last, Message::Exit { exit, .. } if exit.exit_code == 0),
        "{last:?}"
    );

    // ^C reaches the foreground job through the terminal: the terminal is the controlling
    // one of its session.
    let mut request = StartRequest::shell("echo ready; sleep 109");
    request.pty = Some(PtySize { cols: 80, rows: 24 });
    let pid = start(conn, request);
    output_until(conn, pid, "ready");
    let id = conn.fresh_id();
    conn.send(&Message::Stdin {
        id,
        pid,
        close: false,
        data: vec![0x03],
    });
    expect_ok(conn, id);
    let (_, _, _, last) = attach(conn, pid, (0, 0), true);
    let Message::Exit { exit, .. } = last else {
        panic!("expected the exit, got {last:?}")
    };
    assert_eq!(exit.signal, Some(2), "{exit:?}");
    assert_gone(conn, "sleep 109");

    // A job-control shell puts its jobs in groups of their own: a kill still reaches them,
    // through the session.
    let mut request = StartRequest::shell("set -m; sleep 112 & echo started; wait");
    request.pty = Some(PtySize { cols: 80, rows: 24 });
    let pid = start(conn, request);
    output_until(conn, pid, "started");
    let id = conn.fresh_id();
    conn.send(&Message::SignalProcess {
        id,
        pid,
        signal: Signal::Kill,
    });
    expect_ok(conn, id);
    assert_gone(conn, "sleep 112");

    // A process without a terminal cannot be resized.
    let plain = start(conn, StartRequest::shell("sleep 110"));
    let id = conn.fresh_id();
    conn.send(&Message::Resize {
        id,
        pid: plain,
        size: PtySize { cols: 1, rows: 1 },
    });
    assert!(
        matches!(conn.recv(), Message::Error { error, .. } if error.code == ErrorCode::BadRequest)
    );
}
