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
use monza_domain::{ExecEvent, ExecEvents, OutputStream};
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
    futures::stream::unfold(
        (events, Texts::default(), false),
        move |(mut events, mut text, done)| async move {
            if done {
                return None;
            }
            let Ok(next) = tokio::time::timeout(KEEPALIVE, events.next()).await else {
                let bytes = frame(&json!({"type": "keepalive"}), framing);
                return Some((Ok(Bytes::from(bytes)), (events, text, false)));
            };
            let (objects, last) = match next {
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
                Some(Err(e)) => (error_objects(&mut text, &ApiError::from(e)), true),
                None => {
                    let e = ApiError::from(monza_domain::Error::internal(
                        "a command's output stream ended without its exit",
                    ));
                    (error_objects(&mut text, &e), true)
                }
            };
            let mut bytes = Vec::new();
            for object in &objects {
                bytes.extend_from_slice(&frame(object, framing));
            }
            Some((Ok(Bytes::from(bytes)), (events, text, last)))
        },
    )
    .filter(|chunk| futures::future::ready(!matches!(chunk, Ok(b) if b.is_empty())))
}

/// What is still carried, then the error.
fn error_objects(text: &mut Texts, e: &ApiError) -> Vec<Value> {
    let mut objects = text.rest();
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
