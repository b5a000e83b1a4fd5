//! The handlers of the health and sandbox routes. Each one parses, calls one
//! [`SandboxService`] use case and maps the result; no rule lives here.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use monza_domain::{Error, ExecuteCommand, SandboxFilter, SandboxService, StatusFilter};

use crate::HttpConfig;
use crate::access::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{CommandJson, JsonOrEmpty, PathId, query_param, strict_query};
use crate::model::{
    CreateSandboxRequest, EventResponse, ExecuteEvent, ExecuteRequest, ExecuteResponse,
    HealthResponse, HelloResponse, ListQuery, ReadyResponse, SandboxResponse,
};
use crate::output_budget::Reservation;
use crate::stream::{self, Framing};

/// How long `/ready` waits for each dependency.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Liveness: the process answers. Public.
#[utoipa::path(
    get, path = "/health", tag = "health",
    responses((status = 200, description = "The server is alive", body = HealthResponse))
)]
pub(crate) async fn get_health() -> web::Json<HealthResponse> {
    web::Json(HealthResponse {
        status: "ok".to_owned(),
    })
}

/// A greeting, to check the API is reachable. Public.
#[utoipa::path(
    get, path = "/hello", tag = "health",
    responses((status = 200, description = "A greeting", body = HelloResponse))
)]
pub(crate) async fn get_hello() -> web::Json<HelloResponse> {
    web::Json(HelloResponse {
        message: "hello, world".to_owned(),
    })
}

/// Readiness: the store and the Docker engine both answer. Public.
#[utoipa::path(
    get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Every dependency answers", body = ReadyResponse),
        (status = 503, description = "A dependency does not answer; its field says `unavailable`", body = ReadyResponse),
    )
)]
pub(crate) async fn get_ready(service: web::Data<SandboxService>) -> HttpResponse {
    let readiness = service
        .readiness(|| tokio::time::sleep(READY_TIMEOUT))
        .await;
    let word = |result: &monza_domain::Result<()>, dependency: &str| match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            tracing::warn!(dependency, error = %e, "readiness check failed");
            "unavailable".to_owned()
        }
    };
    let body = ReadyResponse {
        status: if readiness.is_ready() {
            "ok"
        } else {
            "unavailable"
        }
        .to_owned(),
        database: word(&readiness.database, "database"),
        docker: word(&readiness.docker, "docker"),
    };
    if readiness.is_ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Lists the caller's sandboxes, newest first.
#[utoipa::path(
    get, path = "/api/sandboxes", tag = "sandboxes",
    params(ListQuery),
    responses(
        (status = 200, description = "Sandboxes, newest first", body = Vec<SandboxResponse>),
        (status = 400, description = "Unknown status filter", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_sandboxes(
    service: web::Data<SandboxService>,
    caller: Caller,
    req: HttpRequest,
) -> Result<web::Json<Vec<SandboxResponse>>, ApiError> {
    let query = strict_query(&req)?;
    let status = query_param(&query, "status")?
        .as_deref()
        .map(str::parse::<StatusFilter>)
        .transpose()?
        .unwrap_or_default();
    let filter = SandboxFilter {
        status,
        ..SandboxFilter::default()
    };
    let sandboxes = service.list(&caller.0, filter).await?;
    Ok(web::Json(sandboxes.into_iter().map(Into::into).collect()))
}

/// Creates a sandbox from a template and returns it `running`.
#[utoipa::path(
    post, path = "/api/sandboxes", tag = "sandboxes",
    request_body(content = Option<CreateSandboxRequest>, description = "Optional: no body, an empty one or `null` uses the defaults"),
    responses(
        (status = 201, description = "Created and running", body = SandboxResponse,
            headers(("Location" = String, description = "/api/sandboxes/{id}"))),
        (status = 400, description = "Invalid JSON, name or template; unknown template (the message lists the available ones); a lifecycle command failed", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 429, description = "The tenant's limit on live sandboxes is reached", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn create_sandbox(
    service: web::Data<SandboxService>,
    caller: Caller,
    body: JsonOrEmpty<CreateSandboxRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.0.unwrap_or_default().into_domain()?;
    let sandbox = service.create(&caller.0, request).await?;
    let location = format!("/api/sandboxes/{}", sandbox.id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(SandboxResponse::from(sandbox)))
}

/// One sandbox, in any status but `deleted` (a deleted one is listed with
/// `?status=deleted`).
#[utoipa::path(
    get, path = "/api/sandboxes/{id}", tag = "sandboxes",
    responses(
        (status = 200, description = "The sandbox", body = SandboxResponse),
        (status = 404, description = "Unknown or deleted sandbox", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_sandbox(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<web::Json<SandboxResponse>, ApiError> {
    Ok(web::Json(service.show(&caller.0, id).await?.into()))
}

/// Deletes a sandbox and removes its container. Deleting again is a success.
#[utoipa::path(
    delete, path = "/api/sandboxes/{id}", tag = "sandboxes",
    responses(
        (status = 204, description = "Deleted (or already ended)"),
        (status = 404, description = "Unknown sandbox", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn delete_sandbox(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<HttpResponse, ApiError> {
    service.delete(&caller.0, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Keeps a running sandbox alive: its expiry moves to now + TTL.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/heartbeat", tag = "sandboxes",
    responses(
        (status = 204, description = "Expiry extended"),
        (status = 404, description = "Unknown sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn heartbeat_sandbox(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<HttpResponse, ApiError> {
    service.heartbeat(&caller.0, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Runs a shell command (`/bin/sh -c`) in a running sandbox, to completion or timeout.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/execute", tag = "sandboxes",
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "The command ran (whatever its exit code). With `Accept: application/x-ndjson` (or `text/event-stream`) the answer starts at once and streams one `ExecuteEvent` per line (or per server-sent event) as output arrives, ending with its `exit` (or an `error`); every byte is streamed (`max_output_bytes` does not apply), and a client that disconnects kills the command", content(
            (ExecuteResponse = "application/json"),
            (ExecuteEvent = "application/x-ndjson"),
            (ExecuteEvent = "text/event-stream"),
        )),
        (status = 400, description = "Malformed id or JSON, missing or empty `command`, relative `workdir`, bad env name", body = ErrorBody),
        (status = 404, description = "Unknown sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 413, description = "Body over MONZA_MAX_COMMAND_BYTES (1 MiB by default)", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable, or the server's output budget is spent (retry shortly)", body = ErrorBody),
    )
)]
pub(crate) async fn execute_command(
    service: web::Data<SandboxService>,
    config: web::Data<HttpConfig>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
    body: CommandJson<ExecuteRequest>,
) -> Result<HttpResponse, ApiError> {
    let command: ExecuteCommand = body.0.into();
    let framing = Framing::of(&req);
    if framing != Framing::Whole {
        let events = service.execute_stream(&caller.0, id, command).await?;
        let content_type = match framing {
            Framing::EventStream => stream::EVENT_STREAM,
            Framing::Ndjson | Framing::Whole => stream::NDJSON,
        };
        return Ok(HttpResponse::Ok()
            .content_type(content_type)
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            // Proxies that buffer (nginx) would hold the stream back.
            .insert_header(("X-Accel-Buffering", "no"))
            .streaming(stream::body(events, framing)));
    }
    // The answer holds the combined output and the stream it came from: twice the cap.
    let cap = service
        .config()
        .exec_limits
        .output_cap(command.max_output_bytes);
    let wanted = 2 * cap as u64;
    let budget = &config.exec_output_budget;
    let reservation = budget.try_reserve(wanted).ok_or_else(|| {
        ApiError::from(Error::unavailable(
            "exec output budget",
            format!(
                "other commands hold {} of the server's {} bytes of output buffers \
                 (MONZA_EXEC_OUTPUT_BUDGET); retry shortly, or ask for a smaller \
                 max_output_bytes",
                budget.used(),
                budget.limit()
            ),
        ))
    })?;
    let output = service.execute(&caller.0, id, command).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(streamed_json(ExecuteResponse::from(output), reservation)))
}

/// Bytes of text escaped per chunk of a streamed answer.
const TEXT_CHUNK: usize = 64 * 1024;

/// One piece of a streamed JSON answer.
enum Piece {
    Raw(String),
    Text(String),
}

/// The answer's JSON, written piece by piece as the client reads it: the texts are escaped
/// a chunk at a time and each is freed once sent, so no second copy of the output is ever
/// built. Byte for byte what `serde_json::to_vec` writes. The reservation is held until the
/// last byte is sent.
fn streamed_json(
    response: ExecuteResponse,
    reservation: Reservation,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let ExecuteResponse {
        output,
        exit_code,
        truncated,
        stdout,
        stderr,
        timed_out,
        duration_ms,
    } = response;
    let pieces = VecDeque::from([
        Piece::Raw("{\"output\":".into()),
        Piece::Text(output),
        Piece::Raw(format!(
            ",\"exitCode\":{exit_code},\"truncated\":{truncated},\"stdout\":"
        )),
        Piece::Text(stdout),
        Piece::Raw(",\"stderr\":".into()),
        Piece::Text(stderr),
        Piece::Raw(format!(
            ",\"timed_out\":{timed_out},\"duration_ms\":{duration_ms}}}"
        )),
    ]);
    futures::stream::unfold(
        (pieces, 0usize, Some(reservation)),
        |(mut pieces, offset, mut reservation)| async move {
            let Some(piece) = pieces.front() else {
                drop(reservation.take());
                return None;
            };
            let (chunk, next) = match piece {
                Piece::Raw(raw) => (Bytes::from(raw.clone()), None),
                Piece::Text(text) => {
                    let mut end = (offset + TEXT_CHUNK).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    let escaped = serde_json::to_string(&text[offset..end]).unwrap_or_default();
                    // Without the quotes but at the text's two ends.
                    let inner = escaped
                        .get(1..escaped.len().saturating_sub(1))
                        .unwrap_or("");
                    let mut out = String::with_capacity(inner.len() + 2);
                    if offset == 0 {
                        out.push('"');
                    }
                    out.push_str(inner);
                    let done = end == text.len();
                    if done {
                        out.push('"');
                    }
                    (Bytes::from(out), (!done).then_some(end))
                }
            };
            let offset = match next {
                Some(end) => end,
                None => {
                    pieces.pop_front();
                    0
                }
            };
            Some((Ok(chunk), (pieces, offset, reservation)))
        },
    )
}

/// A sandbox's event log, oldest first: created, started, executed, uploaded, downloaded,
/// deleted, expired, failed (heartbeats are not logged). For operators.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/events", tag = "sandboxes",
    responses(
        (status = 200, description = "Events, oldest first", body = Vec<EventResponse>),
        (status = 404, description = "Unknown or deleted sandbox", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_events(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<web::Json<Vec<EventResponse>>, ApiError> {
    let events = service.events(&caller.0, id).await?;
    Ok(web::Json(events.into_iter().map(Into::into).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn the_streamed_answer_is_what_serde_writes_and_frees_its_reservation() {
        let budget = crate::OutputBudget::new(1000);
        let long: String = "é\"\\\n\u{1}x".repeat(TEXT_CHUNK / 3);
        for (output, stdout, stderr) in [
            (String::new(), String::new(), String::new()),
            ("a\"b".to_owned(), "a\"b".to_owned(), String::new()),
            (long.clone(), long.clone(), "e\u{0}".to_owned()),
        ] {
            let response = ExecuteResponse {
                output,
                exit_code: -1,
                truncated: true,
                stdout,
                stderr,
                timed_out: false,
                duration_ms: 12,
            };
            let expected = serde_json::to_vec(&response).unwrap();
            let reservation = budget.try_reserve(500).unwrap();
            let chunks: Vec<Bytes> = futures::executor::block_on(
                streamed_json(response, reservation)
                    .map(|c| c.unwrap())
                    .collect(),
            );
            assert_eq!(chunks.concat(), expected);
            assert_eq!(budget.used(), 0);
        }
    }
}
