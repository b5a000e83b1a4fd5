//! A background process's terminal over a WebSocket (`GET …/processes/{pid}/pty`).
//!
//! Binary frames are the terminal's bytes both ways: from the server, what the terminal
//! shows (first what it still holds from the offset asked, then as it comes); from the
//! client, what is typed. Text frames are JSON control messages: the client sends
//! `{"type":"resize","cols":N,"rows":M}`; the server sends `{"type":"exit","exitCode",…}`
//! when the process ends (then closes normally), or `{"type":"error","error":{…}}` when
//! something failed (a bad control message; or a fatal one, then it closes with an error).
//! The server pings every [`PING_EVERY`] and closes a connection silent for
//! [`SILENT_LIMIT`], so a client that vanished does not keep the sandbox alive.

use std::time::Duration;

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use futures::StreamExt;
use monza_domain::{ProcessEvent, ProcessEvents, Terminal, TerminalSize};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::error::{ApiError, ErrorDetail};
use crate::stream::exit_object;

/// The largest frame a client may send (what is typed, or a paste).
pub(crate) const MAX_FRAME: usize = 1024 * 1024;
/// How often the server pings.
const PING_EVERY: Duration = Duration::from_secs(10);
/// How long a client may stay silent (no frame, no pong) before it is closed.
const SILENT_LIMIT: Duration = Duration::from_secs(30);

/// A control message from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Control {
    Resize { cols: u64, rows: u64 },
}

/// Relays between the terminal and the WebSocket until either ends.
pub(crate) async fn relay(
    terminal: Terminal,
    mut events: ProcessEvents,
    mut session: Session,
    messages: actix_ws::MessageStream,
) {
    let mut messages = messages
        .max_frame_size(MAX_FRAME)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME);
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut heard = Instant::now();
    let close = loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(ProcessEvent::Output { data, .. })) => {
                    if session.binary(data).await.is_err() {
                        return;
                    }
                }
                Some(Ok(ProcessEvent::Exit(exit))) => {
                    let _ = session.text(exit_object(&exit).to_string()).await;
                    break CloseReason::from(CloseCode::Normal);
                }
                Some(Ok(ProcessEvent::CaughtUp { .. })) | None => {
                    break CloseReason::from(CloseCode::Normal);
                }
                Some(Err(e)) => {
                    let _ = session.text(error_text(&ApiError::from(e))).await;
                    break CloseReason::from(CloseCode::Error);
                }
            },
            message = messages.next() => {
                heard = Instant::now();
                match message {
                    Some(Ok(AggregatedMessage::Binary(data))) => {
                        if let Err(e) = terminal.input(data).await {
                            let _ = session.text(error_text(&ApiError::from(e))).await;
                            break CloseReason::from(CloseCode::Error);
                        }
                    }
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        let resized = match serde_json::from_str::<Control>(&text) {
                            Ok(Control::Resize { cols, rows }) => match TerminalSize::new(cols, rows) {
                                Ok(size) => terminal.resize(size).await,
                                Err(e) => Err(e),
                            },
                            Err(e) => Err(monza_domain::Error::invalid(format!(
                                "a text frame must be a control message, \
                                 {{\"type\":\"resize\",\"cols\":N,\"rows\":M}} (what is typed \
                                 goes in binary frames): {e}"
                            ))),
                        };
                        if let Err(e) = resized {
                            // Said, and the terminal goes on.
                            if session.text(error_text(&ApiError::from(e))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Close(_))) | None => {
                        break CloseReason::from(CloseCode::Normal);
                    }
                    Some(Err(e)) => {
                        let e = ApiError::invalid(format!("WebSocket protocol error: {e}"));
                        let _ = session.text(error_text(&e)).await;
                        break CloseReason::from(CloseCode::Protocol);
                    }
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > SILENT_LIMIT {
                    break CloseReason::from(CloseCode::Away);
                }
                if session.ping(b"").await.is_err() {
                    return;
                }
            }
        }
    };
    let _ = session.close(Some(close)).await;
}

/// `{"type":"error","error":{"code","message"}}`.
fn error_text(e: &ApiError) -> String {
    let detail = ErrorDetail {
        code: e.code(),
        message: e.message().to_owned(),
    };
    json!({"type": "error", "error": detail}).to_string()
}
