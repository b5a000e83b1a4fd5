use super::*;

fn samples() -> Vec<Message> {
    let mut exec = ExecRequest::shell("echo hi; cat");
    exec.cwd = Some("/tmp".into());
    exec.env.insert("FOO".into(), "bar baz".into());
    exec.timeout_ms = Some(1500);
    exec.max_output_bytes = Some(1 << 20);
    exec.stdin = Some(vec![0, 0xff, 0xfe, b'\n']);
    vec![
        Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            pid: 7,
            uid: 1000,
            gid: 1000,
            agent_version: "0.1.0".into(),
            token: None,
        }),
        Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            pid: 8,
            uid: 0,
            gid: 0,
            agent_version: "0.2.0".into(),
            token: Some("00ff".repeat(16)),
        }),
        Message::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
        }),
        Message::Exec {
            id: 1,
            request: exec,
        },
        Message::Exec {
            id: u64::MAX,
            request: ExecRequest::argv(["true"]),
        },
        Message::Exec {
            id: 3,
            request: ExecRequest {
                stdin: Some(Vec::new()),
                ..ExecRequest::argv(["cat"])
            },
        },
        Message::Ping { id: 2 },
        Message::Pong { id: 2 },
        Message::Pause { id: 1 },
        Message::Resume { id: 1 },
        Message::Signal {
            id: 1,
            signal: Signal::Term,
        },
        Message::Output {
            id: 1,
            stream: Stream::Stdout,
            data: vec![0xff, 0x00, 0xc3, 0x28],
        },
        Message::Output {
            id: 1,
            stream: Stream::Stderr,
            data: Vec::new(),
        },
        Message::Exit {
            id: 1,
            exit: Exit {
                exit_code: 124,
                signal: Some(9),
                timed_out: true,
                truncated: false,
                stdout_bytes: 3,
                stderr_bytes: 0,
                duration_us: 1_000_000,
            },
        },
        Message::Start {
            id: 20,
            request: StartRequest {
                stdin: true,
                output_limit: Some(4096),
                timeout_ms: Some(60_000),
                keep_alive: true,
                pty: Some(PtySize {
                    cols: 120,
                    rows: 40,
                }),
                ..StartRequest::shell("npm run dev")
            },
        },
        Message::Started {
            id: 20,
            started: Started {
                pid: 42,
                started_at_ms: 1_700_000_000_000,
            },
        },
        Message::List { id: 21 },
        Message::Forget { id: 26, pid: 42 },
        Message::Fs {
            id: 24,
            request: FsRequest::Search {
                path: "/workspaces/app".into(),
                pattern: "fn main\\(".into(),
                regex: true,
                ignore_case: false,
                glob: Some("**/*.rs".into()),
                max_results: 100,
                budget: WalkBudget {
                    max_visits: 1000,
                    max_ms: 5000,
                },
            },
        },
        Message::Fs {
            id: 25,
            request: FsRequest::Edit {
                path: "/a b/ü.txt".into(),
                old: "x\n".into(),
                new: String::new(),
                replace_all: true,
            },
        },
        Message::FsAnswer {
            id: 24,
            answer: FsAnswer::Entries {
                entries: vec![FsEntry {
                    path: "/tmp/l".into(),
                    kind: FsKind::Symlink,
                    size: 4,
                    mode: 0o777,
                    uid: 1000,
                    gid: 1000,
                    modified_ms: -5,
                    link_target: Some("../x".into()),
                }],
                truncated: true,
            },
        },
        Message::FsAnswer {
            id: 25,
            answer: FsAnswer::Lines {
                lines: vec!["a".into(), String::new()],
                next_offset: None,
            },
        },
        Message::WriteFile {
            id: 26,
            request: WriteFileRequest {
                path: "/w/ a\\b.sh".into(),
                mode: Some(0o755),
                parents: true,
            },
            data: vec![0, 0xff, b'\n'],
        },
        Message::WriteFile {
            id: 27,
            request: WriteFileRequest {
                path: "/w/empty".into(),
                mode: None,
                parents: false,
            },
            data: Vec::new(),
        },
        Message::ReadFile {
            id: 28,
            request: ReadFileRequest {
                path: "/w/x".into(),
                max_bytes: 1 << 20,
            },
        },
        Message::FileContent {
            id: 28,
            content: FileContent {
                entry: FsEntry {
                    path: "/w/x".into(),
                    kind: FsKind::File,
                    size: 2,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    modified_ms: 1,
                    link_target: None,
                },
                complete: true,
            },
            data: vec![0xfe, 0],
        },
        Message::Resize {
            id: 23,
            pid: 42,
            size: PtySize {
                cols: 100,
                rows: 30,
            },
        },
        Message::Processes {
            id: 21,
            list: ProcessList {
                processes: vec![ProcessInfo {
                    pid: 42,
                    program: Program::Argv(vec!["sleep".into(), "1".into()]),
                    started_at_ms: 5,
                    exit: None,
                    stdout: Span { start: 10, end: 20 },
                    stderr: Span { start: 0, end: 0 },
                    keep_alive: true,
                    stdin_open: false,
                    pty: true,
                }],
            },
        },
        Message::Attach {
            id: 22,
            request: AttachRequest {
                pid: 42,
                stdout_offset: 10,
                stderr_offset: 3,
                follow: true,
            },
        },
        Message::ProcessOutput {
            id: 22,
            stream: Stream::Stderr,
            offset: 1 << 40,
            data: vec![0xff, 0],
        },
        Message::CaughtUp {
            id: 22,
            offsets: CaughtUp {
                stdout_offset: 20,
                stderr_offset: 5,
            },
        },
        Message::Detach { id: 22 },
        Message::Stdin {
            id: 23,
            pid: 42,
            close: true,
            data: vec![0xfe, b'\n'],
        },
        Message::SignalProcess {
            id: 24,
            pid: 42,
            signal: Signal::Hup,
        },
        Message::Ok { id: 24 },
        Message::Error {
            id: 4,
            error: ErrorReply {
                code: ErrorCode::Spawn,
                message: "No such file or directory".into(),
                errno: Some(2),
            },
        },
    ]
}

#[test]
fn every_message_round_trips_through_the_pure_codec() {
    for message in samples() {
        let frame = encode_to_vec(&message).unwrap();
        let (decoded, used) = decode(&frame).unwrap().unwrap();
        assert_eq!(decoded, message);
        assert_eq!(used, frame.len());
        assert_eq!(decoded.id(), message.id());
    }
}

#[test]
fn a_stream_of_frames_round_trips_through_read_and_write() {
    let mut wire = Vec::new();
    for message in samples() {
        write_message(&mut wire, &message).unwrap();
    }
    let mut reader = wire.as_slice();
    for message in samples() {
        assert_eq!(read_message(&mut reader).unwrap(), Some(message));
    }
    assert!(read_message(&mut reader).unwrap().is_none(), "clean EOF");
}

#[test]
fn a_partial_frame_asks_for_more_bytes() {
    let frame = encode_to_vec(&samples()[2]).unwrap();
    for cut in 0..frame.len() {
        assert!(decode(&frame[..cut]).unwrap().is_none(), "cut at {cut}");
    }
}

#[test]
fn a_frame_cut_by_the_end_of_the_stream_is_truncated() {
    let frame = encode_to_vec(&samples()[2]).unwrap();
    for cut in [1, 3, 4, 9, frame.len() - 1] {
        let err = read_message(&mut &frame[..cut]).unwrap_err();
        assert!(
            matches!(err, ReadError::Decode(DecodeError::Truncated { .. })),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}

#[test]
fn an_oversized_length_is_refused_before_the_body_arrives() {
    let len = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
    let err = decode(&len).unwrap_err();
    assert!(matches!(err, DecodeError::Oversized { .. }), "{err}");
    assert!(err.to_string().contains("over the maximum"), "{err}");
    let err = read_message(&mut &len[..]).unwrap_err();
    assert!(
        matches!(err, ReadError::Decode(DecodeError::Oversized { .. })),
        "{err}"
    );
    let err = decode(&[0, 0, 0, 3, 1, 0x11, 0]).unwrap_err();
    assert!(matches!(err, DecodeError::Undersized { .. }), "{err}");
}

#[test]
fn oversized_messages_are_not_encoded() {
    let mut out = vec![1, 2, 3];
    let big = Message::Output {
        id: 1,
        stream: Stream::Stdout,
        data: vec![0; MAX_FRAME_LEN],
    };
    let err = encode(&big, &mut out).unwrap_err();
    assert!(matches!(err, EncodeError::Oversized { .. }), "{err}");
    assert_eq!(out, [1, 2, 3], "the buffer is left as it was");
    let mut exec = ExecRequest::argv(["cat"]);
    exec.stdin = Some(vec![0; MAX_FRAME_LEN]);
    let err = encode(
        &Message::Exec {
            id: 1,
            request: exec,
        },
        &mut out,
    )
    .unwrap_err();
    assert!(matches!(err, EncodeError::Oversized { .. }), "{err}");
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn another_version_is_refused_as_soon_as_its_byte_is_in() {
    let mut frame = encode_to_vec(&Message::Ping { id: 5 }).unwrap();
    frame[4] = PROTOCOL_VERSION + 1;
    let err = decode(&frame[..5]).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnsupportedVersion { found, supported }
            if found == PROTOCOL_VERSION + 1 && supported == PROTOCOL_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("version 2"), "{err}");
    assert!(read_message(&mut frame.as_slice()).is_err());
}

#[test]
fn unknown_kinds_and_bad_bodies_keep_the_stream_in_step() {
    let mut wire = encode_to_vec(&Message::Ping { id: 9 }).unwrap();
    wire[5] = 0x7e;
    let mut bad_json = encode_to_vec(&Message::Exit {
        id: 10,
        exit: Exit {
            exit_code: 0,
            signal: None,
            timed_out: false,
            truncated: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
            duration_us: 0,
        },
    })
    .unwrap();
    let last = bad_json.len() - 1;
    bad_json[last] = b'!';
    wire.extend_from_slice(&bad_json);
    wire.extend_from_slice(&encode_to_vec(&Message::Pong { id: 11 }).unwrap());

    let mut reader = wire.as_slice();
    let err = read_message(&mut reader).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Decode(DecodeError::UnknownKind { kind: 0x7e, id: 9 })
        ),
        "{err}"
    );
    let err = read_message(&mut reader).unwrap_err();
    assert!(
        matches!(err, ReadError::Decode(DecodeError::BadBody { id: 10, .. })),
        "{err}"
    );
    assert_eq!(
        read_message(&mut reader).unwrap(),
        Some(Message::Pong { id: 11 })
    );
}

#[test]
fn exec_bodies_are_checked() {
    let frame = encode_to_vec(&Message::Exec {
        id: 1,
        request: ExecRequest::argv(["true"]),
    })
    .unwrap();
    // Trailing bytes after an exec without stdin.
    let mut extra = frame.clone();
    extra.push(b'x');
    let len = u32::try_from(extra.len() - 4).unwrap().to_be_bytes();
    extra[..4].copy_from_slice(&len);
    let err = decode(&extra).unwrap_err();
    assert!(matches!(err, DecodeError::BadBody { .. }), "{err}");
    // A JSON length past the end.
    let mut long = frame;
    long[14..18].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = decode(&long).unwrap_err();
    assert!(err.to_string().contains("past the body's end"), "{err}");
}

#[test]
fn the_exec_json_is_readable_by_other_implementations() {
    let mut request = ExecRequest::shell("ls");
    request.timeout_ms = Some(10);
    request.stdin = Some(b"in".to_vec());
    let frame = encode_to_vec(&Message::Exec { id: 1, request }).unwrap();
    let json_len = u32::from_be_bytes(frame[14..18].try_into().unwrap()) as usize;
    let json: serde_json::Value = serde_json::from_slice(&frame[18..18 + json_len]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"program": {"shell": "ls"}, "timeout_ms": 10, "stdin": true})
    );
    assert_eq!(&frame[18 + json_len..], b"in");
}

#[test]
fn a_hello_without_a_token_still_decodes_and_debug_never_shows_the_token() {
    // An older agent's hello (no token field) keeps decoding: the layout only grows.
    let body = br#"{"protocol":1,"pid":7,"uid":0,"gid":0,"agent_version":"0.1.0"}"#;
    let hello: Hello = serde_json::from_slice(body).unwrap();
    assert_eq!(hello.token, None);
    let with = Hello {
        token: Some("s3cret-token".into()),
        ..hello
    };
    let shown = format!("{with:?}");
    assert!(!shown.contains("s3cret-token"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn file_content_that_says_it_is_not_included_carries_no_bytes() {
    let entry = FsEntry {
        path: "/w/big".into(),
        kind: FsKind::File,
        size: 1 << 30,
        mode: 0o644,
        uid: 0,
        gid: 0,
        modified_ms: 0,
        link_target: None,
    };
    let not_included = Message::FileContent {
        id: 3,
        content: FileContent {
            entry: entry.clone(),
            complete: false,
        },
        data: Vec::new(),
    };
    let frame = encode_to_vec(&not_included).unwrap();
    assert_eq!(decode(&frame).unwrap().unwrap().0, not_included);
    // The same head with bytes after it is refused, not read as content.
    let mut lying = encode_to_vec(&Message::FileContent {
        id: 3,
        content: FileContent {
            entry,
            complete: false,
        },
        data: Vec::new(),
    })
    .unwrap();
    lying.extend_from_slice(b"xy");
    let len = u32::try_from(lying.len() - 4).unwrap();
    lying[..4].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(
        decode(&lying),
        Err(DecodeError::BadBody {
            kind: 0x37,
            id: 3,
            ..
        })
    ));
    // A JSON length past the body's end is refused too.
    let mut short = encode_to_vec(&Message::ReadFile {
        id: 4,
        request: ReadFileRequest {
            path: "/x".into(),
            max_bytes: 1,
        },
    })
    .unwrap();
    short[5] = 0x1e; // the kind of write-file, whose body starts with a JSON length
    assert!(matches!(
        decode(&short),
        Err(DecodeError::BadBody {
            kind: 0x1e,
            id: 4,
            ..
        })
    ));
}
