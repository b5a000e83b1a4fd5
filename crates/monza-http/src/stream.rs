//! Execute's streamed answers: one JSON object per event as the command's output arrives,
//! as NDJSON (`Accept: application/x-ndjson`) or as server-sent events
//! (`Accept: text/event-stream`).
//!
//! Each output chunk is `{"type":"stdout"|"stderr","data":…}` with the bytes as text when
//! they are UTF-8, or `{"type":…,"data_base64":…}` when they are not, so no byte is lost. A
//! character split between two chunks is carried to the next one rather than sent broken.
//! The last object is `{"type":"exit","exitCode","timed_out","duration_ms"}`, or
//! `{"type":"error","error":{"code","message"}}` when the command's output could not be read
//! to its end. After 5 s without output a `{"type":"keepalive"}` line (an SSE comment) is
//! sent, so a client that went away is noticed (see [`KEEPALIVE`]): the stream is then
//! dropped, which kills the command.

use std::collections::HashMap;

use actix_web::HttpRequest;
use actix_web::http::header;
use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use monza_domain::{ExecEvent, ExecEvents, OutputStream, ProcessEvent, ProcessEvents};
use serde_json::{Value, json};

use crate::error::{ApiError, ErrorDetail};
use crate::model::millis;

/// `Accept: application/x-ndjson`.
pub(crate) const NDJSON: &str = "application/x-ndjson";
/// `Accept: text/event-stream`.
pub(crate) const EVENT_STREAM: &str = "text/event-stream";

/// How execute answers, from the request's `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One JSON object once the command ended (the default, and `application/json`).
    Whole,
    /// NDJSON lines as output comes.
    Ndjson,
    /// Server-sent events as output comes.
    EventStream,
}

impl Framing {
    /// The first of the request's `Accept` media types that names a streamed form; the
    /// whole answer when none does (no `Accept`, `*/*`, `application/json`).
    pub(crate) fn of(req: &HttpRequest) -> Self {
        let accept = req
            .headers()
            .get_all(header::ACCEPT)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for range in accept {
            let media = range.split(';').next().unwrap_or("").trim();
            if media.eq_ignore_ascii_case(NDJSON) {
                return Self::Ndjson;
            }
            if media.eq_ignore_ascii_case(EVENT_STREAM) {
                return Self::EventStream;
            }
        }
        Self::Whole
    }
}

/// The body of a streamed answer in `framing` (not [`Framing::Whole`]). It ends after the
/// exit or the first error; a stream that ends without either ends with an error object.
pub(crate) fn body(
    events: ExecEvents,
    framing: Framing,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    framed(events, framing, Texts::default(), |text, next| match next {
        Some(Ok(ExecEvent::Output { stream, data })) => (text.chunk(stream, &data), false),
        Some(Ok(ExecEvent::Exit {
            exit_code,
            timed_out,
            duration,
        })) => {
            let mut objects = text.rest();
            objects.push(json!({
                "type": "exit",
                "exitCode": exit_code,
                "timed_out": timed_out,
                "duration_ms": millis(duration),
            }));
            (objects, true)
        }
        Some(Err(e)) => (error_objects(text.rest(), &ApiError::from(e)), true),
        None => (ended_early(text.rest(), "a command's output stream"), true),
    })
}

/// The body of a background process's output in `framing`: each chunk with the `offset`
/// of its first byte; then its exit, or `caught_up` when not following, each with the
/// offsets to read on from; or an error.
pub(crate) fn process_body(
    events: ProcessEvents,
    framing: Framing,
    offsets: (u64, u64),
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let state = Offsets {
        text: Texts::default(),
        next: [offsets.0, offsets.1],
    };
    framed(events, framing, state, |state, next| match next {
        Some(Ok(ProcessEvent::Output {
            stream,
            offset,
            data,
        })) => (state.chunk(stream, offset, &data), false),
        Some(Ok(ProcessEvent::Exit(exit))) => {
            let mut objects = state.rest();
            let mut object = exit_object(&exit);
            if let Some(map) = object.as_object_mut() {
                map.insert("stdout_offset".into(), json!(state.next[0]));
                map.insert("stderr_offset".into(), json!(state.next[1]));
            }
            objects.push(object);
            (objects, true)
        }
        Some(Ok(ProcessEvent::CaughtUp {
            stdout_offset,
            stderr_offset,
        })) => {
            // An unfinished character is sent as it is (base64) rather than held: the
            // client reads on from these offsets, past it.
            let mut objects = state.rest();
            objects.push(json!({
                "type": "caught_up",
                "stdout_offset": stdout_offset,
                "stderr_offset": stderr_offset,
            }));
            (objects, true)
        }
        Some(Err(e)) => (error_objects(state.rest(), &ApiError::from(e)), true),
        None => (ended_early(state.rest(), "a process's output stream"), true),
    })
}

/// Turns one event (or the end of the events, `None`) into the objects to send, and says
/// whether they are the last.
type Step<S, E> = fn(&mut S, Option<monza_domain::Result<E>>) -> (Vec<Value>, bool);

/// `{"type":"exit","exitCode","timed_out","duration_ms","signal"?}` for a background
/// process, as its output stream and its terminal both end.
pub(crate) fn exit_object(exit: &monza_domain::ProcessExit) -> Value {
    let mut object = json!({
        "type": "exit",
        "exitCode": exit.exit_code,
        "timed_out": exit.timed_out,
        "duration_ms": millis(exit.duration),
    });
    if let (Some(signal), Some(map)) = (exit.signal, object.as_object_mut()) {
        map.insert("signal".into(), json!(signal));
    }
    object
}

/// Frames each event's objects as they come, with a keepalive after [`KEEPALIVE`] of
/// silence; `step` turns an event (or the end, `None`) into objects and says whether it
/// was the last.
fn framed<E, S>(
    events: futures::stream::BoxStream<'static, monza_domain::Result<E>>,
    framing: Framing,
    state: S,
    step: Step<S, E>,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>>
where
    E: 'static,
    S: 'static,
{
    futures::stream::unfold(
        (events, state, false),
        move |(mut events, mut state, done)| async move {
            if done {
                return None;
            }
            let Ok(next) = tokio::time::timeout(KEEPALIVE, events.next()).await else {
                let bytes = frame(&json!({"type": "keepalive"}), framing);
                return Some((Ok(Bytes::from(bytes)), (events, state, false)));
            };
            let (objects, last) = step(&mut state, next);
            let mut bytes = Vec::new();
            for object in &objects {
                bytes.extend_from_slice(&frame(object, framing));
            }
            Some((Ok(Bytes::from(bytes)), (events, state, last)))
        },
    )
    .filter(|chunk| futures::future::ready(!matches!(chunk, Ok(b) if b.is_empty())))
}

/// What is still carried, then an internal error: the events ended without their last.
fn ended_early(carried: Vec<Value>, what: &str) -> Vec<Value> {
    let e = ApiError::from(monza_domain::Error::internal(format!(
        "{what} ended without its last event"
    )));
    error_objects(carried, &e)
}

/// What is still carried, then the error.
fn error_objects(mut objects: Vec<Value>, e: &ApiError) -> Vec<Value> {
    let detail = ErrorDetail {
        code: e.code(),
        message: e.message().to_owned(),
    };
    objects.push(json!({"type": "error", "error": detail}));
    objects
}

/// How long a stream stays silent before a `keepalive` object is sent. actix-web notices a
/// client that went away only when it writes to it (actix-web#1313), and the command is
/// killed only once the stream is dropped: without this, a silent command would outlive its
/// client by as long as it stays silent.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// One object in its framing: a line of NDJSON, or an SSE event named by its type (a
/// keepalive is an SSE comment, which clients ignore).
fn frame(object: &Value, framing: Framing) -> Vec<u8> {
    let json = object.to_string();
    match framing {
        Framing::EventStream => {
            let kind = object["type"].as_str().unwrap_or("message");
            if kind == "keepalive" {
                return b": keepalive\n\n".to_vec();
            }
            format!("event: {kind}\ndata: {json}\n\n").into_bytes()
        }
        Framing::Ndjson | Framing::Whole => (json + "\n").into_bytes(),
    }
}

/// Turns each stream's chunks into text objects, carrying a character split between two
/// chunks over to the next one.
#[derive(Debug, Default)]
struct Texts {
    carry: HashMap<OutputStream, Vec<u8>>,
}

impl Texts {
    /// The objects for one chunk: none when it only starts a character, else one.
    fn chunk(&mut self, stream: OutputStream, data: &[u8]) -> Vec<Value> {
        let mut bytes = self.carry.remove(&stream).unwrap_or_default();
        bytes.extend_from_slice(data);
        match std::str::from_utf8(&bytes) {
            Ok(_) => {}
            // Valid but for a character the next chunk finishes: that part waits for it.
            Err(e) if e.error_len().is_none() => {
                let rest = bytes.split_off(e.valid_up_to());
                self.carry.insert(stream, rest);
            }
            Err(_) => return vec![object(stream, bytes)],
        }
        if bytes.is_empty() {
            Vec::new()
        } else {
            vec![object(stream, bytes)]
        }
    }

    /// What is still carried when the output ends (an unfinished character: not UTF-8).
    fn rest(&mut self) -> Vec<Value> {
        let mut rest: Vec<(OutputStream, Vec<u8>)> = self.carry.drain().collect();
        rest.sort_by_key(|(stream, _)| stream.as_str());
        rest.into_iter()
            .filter(|(_, bytes)| !bytes.is_empty())
            .map(|(stream, bytes)| object(stream, bytes))
            .collect()
    }
}

/// [`Texts`] with the offset of each stream's next byte, for a background process's chunks.
struct Offsets {
    text: Texts,
    /// Where stdout and stderr go on: past the last byte sent or carried.
    next: [u64; 2],
}

impl Offsets {
    /// The objects for a chunk starting at `offset`, each with the offset of its first
    /// byte. A carried character not continued by this chunk (bytes were dropped between
    /// them) is sent on its own first.
    fn chunk(&mut self, stream: OutputStream, offset: u64, data: &[u8]) -> Vec<Value> {
        let i = usize::from(stream == OutputStream::Stderr);
        let carried = self.text.carry.get(&stream).map_or(0, Vec::len) as u64;
        let mut objects = Vec::new();
        let mut from = offset.saturating_sub(carried);
        if carried > 0 && self.next[i] != offset {
            if let Some(bytes) = self.text.carry.remove(&stream) {
                objects.push(at(
                    object(stream, bytes),
                    self.next[i].saturating_sub(carried),
                ));
            }
            from = offset;
        }
        for text in self.text.chunk(stream, data) {
            objects.push(at(text, from));
        }
        self.next[i] = offset + data.len() as u64;
        objects
    }

    /// What is still carried, each with its offset.
    fn rest(&mut self) -> Vec<Value> {
        let mut rest: Vec<(OutputStream, Vec<u8>)> = self.text.carry.drain().collect();
        rest.sort_by_key(|(stream, _)| stream.as_str());
        rest.into_iter()
            .filter(|(_, bytes)| !bytes.is_empty())
            .map(|(stream, bytes)| {
                let i = usize::from(stream == OutputStream::Stderr);
                let from = self.next[i].saturating_sub(bytes.len() as u64);
                at(object(stream, bytes), from)
            })
            .collect()
    }
}

/// `object` with its `offset`.
fn at(mut object: Value, offset: u64) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.insert("offset".into(), json!(offset));
    }
    object
}

/// `{"type":"stdout","data":"…"}`, or `data_base64` when the bytes are not UTF-8.
fn object(stream: OutputStream, bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(text) => json!({"type": stream.as_str(), "data": text}),
        Err(e) => json!({
            "type": stream.as_str(),
            "data_base64": base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_web::test::TestRequest;
    use monza_domain::Error;

    use super::*;

    fn out(stream: OutputStream, data: &'static [u8]) -> monza_domain::Result<ExecEvent> {
        Ok(ExecEvent::Output {
            stream,
            data: Bytes::from_static(data),
        })
    }

    async fn lines(events: Vec<monza_domain::Result<ExecEvent>>, framing: Framing) -> String {
        let chunks: Vec<Bytes> = body(futures::stream::iter(events).boxed(), framing)
            .map(Result::unwrap)
            .collect()
            .await;
        String::from_utf8(chunks.concat()).unwrap()
    }

    #[tokio::test]
    async fn split_characters_are_carried_and_bytes_that_are_not_utf8_go_as_base64() {
        let euro = "€".as_bytes(); // 3 bytes
        let text = lines(
            vec![
                out(OutputStream::Stdout, b"a\xe2"),
                out(OutputStream::Stderr, b"err"),
                out(OutputStream::Stdout, b"\x82\xacb"),
                out(OutputStream::Stdout, b"\xff\xfe"),
                out(OutputStream::Stderr, &[0xe2, 0x82]),
                Ok(ExecEvent::Exit {
                    exit_code: 124,
                    timed_out: true,
                    duration: Duration::from_millis(1500),
                }),
            ],
            Framing::Ndjson,
        )
        .await;
        assert_eq!(euro, [0xe2, 0x82, 0xac]);
        let objects: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            objects,
            [
                json!({"type": "stdout", "data": "a"}),
                json!({"type": "stderr", "data": "err"}),
                json!({"type": "stdout", "data": "€b"}),
                json!({"type": "stdout", "data_base64": "//4="}),
                json!({"type": "stderr", "data_base64": "4oI="}),
                json!({"type": "exit", "exitCode": 124, "timed_out": true, "duration_ms": 1500}),
            ]
        );
    }

    #[tokio::test]
    async fn an_error_is_the_last_event_and_sse_names_each_event() {
        let text = lines(
            vec![
                out(OutputStream::Stdout, b"x"),
                Err(Error::unavailable("agent", "went away")),
                out(OutputStream::Stdout, b"never"),
            ],
            Framing::EventStream,
        )
        .await;
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 2, "{text}");
        assert_eq!(
            events[0],
            r#"event: stdout
data: {"data":"x","type":"stdout"}"#
        );
        assert!(events[1].starts_with("event: error\ndata: {"), "{text}");
        assert!(events[1].contains(r#""code":"unavailable""#), "{text}");
    }

    async fn process_lines(
        events: Vec<monza_domain::Result<ProcessEvent>>,
        offsets: (u64, u64),
    ) -> Vec<Value> {
        let chunks: Vec<Bytes> = process_body(
            futures::stream::iter(events).boxed(),
            Framing::Ndjson,
            offsets,
        )
        .map(Result::unwrap)
        .collect()
        .await;
        String::from_utf8(chunks.concat())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn chunk(
        stream: OutputStream,
        offset: u64,
        data: &'static [u8],
    ) -> monza_domain::Result<ProcessEvent> {
        Ok(ProcessEvent::Output {
            stream,
            offset,
            data: Bytes::from_static(data),
        })
    }

    #[tokio::test]
    async fn a_process_chunk_says_the_offset_of_its_first_byte_also_when_a_character_is_carried() {
        let objects = process_lines(
            vec![
                chunk(OutputStream::Stdout, 10, b"a\xe2"),
                chunk(OutputStream::Stdout, 12, b"\x82\xacb"),
                // Bytes 15..20 were dropped: the carried start of a character goes alone.
                chunk(OutputStream::Stdout, 15, b"\xe2"),
                chunk(OutputStream::Stdout, 20, b"z"),
                chunk(OutputStream::Stderr, 0, b"e"),
                Ok(ProcessEvent::Exit(monza_domain::ProcessExit {
                    exit_code: 143,
                    signal: Some(15),
                    timed_out: false,
                    duration: Duration::from_millis(20),
                })),
            ],
            (10, 0),
        )
        .await;
        assert_eq!(
            objects,
            [
                json!({"type": "stdout", "offset": 10, "data": "a"}),
                json!({"type": "stdout", "offset": 11, "data": "€b"}),
                json!({"type": "stdout", "offset": 15, "data_base64": "4g=="}),
                json!({"type": "stdout", "offset": 20, "data": "z"}),
                json!({"type": "stderr", "offset": 0, "data": "e"}),
                json!({"type": "exit", "exitCode": 143, "signal": 15, "timed_out": false,
                    "duration_ms": 20, "stdout_offset": 21, "stderr_offset": 1}),
            ]
        );
    }

    #[tokio::test]
    async fn not_following_ends_with_the_offsets_to_read_on_from() {
        let objects = process_lines(
            vec![
                chunk(OutputStream::Stdout, 4, b"ok\xe2"),
                Ok(ProcessEvent::CaughtUp {
                    stdout_offset: 7,
                    stderr_offset: 3,
                }),
            ],
            (4, 3),
        )
        .await;
        assert_eq!(
            objects,
            [
                json!({"type": "stdout", "offset": 4, "data": "ok"}),
                json!({"type": "stdout", "offset": 6, "data_base64": "4g=="}),
                json!({"type": "caught_up", "stdout_offset": 7, "stderr_offset": 3}),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_command_gets_keepalives_so_a_gone_client_is_noticed() {
        let events = futures::stream::pending().boxed();
        let mut ndjson = Box::pin(body(events, Framing::Ndjson));
        let first = ndjson.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"{\"type\":\"keepalive\"}\n");
        let mut sse = Box::pin(body(
            futures::stream::pending().boxed(),
            Framing::EventStream,
        ));
        assert_eq!(&sse.next().await.unwrap().unwrap()[..], b": keepalive\n\n");
    }

    #[test]
    fn accept_picks_the_first_streamed_form_and_defaults_to_the_whole_answer() {
        let framing = |accept: Option<&str>| {
            let mut req = TestRequest::default();
            if let Some(accept) = accept {
                req = req.insert_header((header::ACCEPT, accept));
            }
            Framing::of(&req.to_http_request())
        };
        assert_eq!(framing(None), Framing::Whole);
        assert_eq!(framing(Some("*/*")), Framing::Whole);
        assert_eq!(framing(Some("application/json")), Framing::Whole);
        assert_eq!(framing(Some("application/x-ndjson")), Framing::Ndjson);
        assert_eq!(
            framing(Some("text/event-stream; q=0.9, application/x-ndjson")),
            Framing::EventStream
        );
        assert_eq!(framing(Some("Application/X-NDJSON")), Framing::Ndjson);
    }
}
