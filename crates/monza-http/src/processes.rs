//! The handlers of a sandbox's background processes: `…/processes` and
//! `…/processes/{pid}[/output|/stdin|/signal]`. Each one parses, calls one
//! [`SandboxService`] use case and maps the result.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use monza_domain::{ProcessSignal, SandboxService, StartProcess};
use utoipa::IntoParams;

use crate::access::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{
    CommandBytes, CommandJson, PathId, PathPid, flag, number, only, strict_query,
};
use crate::model::{ProcessOutputEvent, ProcessResponse, SignalRequest, StartProcessRequest};
use crate::stream::{self, Framing};
use crate::terminal;

/// The `{pid}` path parameter, for the document.
#[derive(Debug, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Path)]
struct PidPath {
    /// The process id, as `POST …/processes` answered it (1 to 4294967295).
    #[param(minimum = 1, maximum = 4294967295_u64)]
    pid: u32,
}

/// Starts a background process in a running sandbox: it runs on after the request, and
/// after a restart of the server, until it exits, is killed or the sandbox ends.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/processes", tag = "processes",
    request_body = StartProcessRequest,
    responses(
        (status = 201, description = "Started", body = ProcessResponse,
            headers(("Location" = String, description = "/api/sandboxes/{id}/processes/{pid}"))),
        (status = 400, description = "Malformed id or JSON, missing or empty `command`, relative `cwd`, bad env name, `output_limit_bytes` out of range", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or its `cwd` does not exist or is not a directory (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent (created without it, or the server runs with MONZA_AGENT=off)", body = ErrorBody),
        (status = 413, description = "Body over MONZA_MAX_COMMAND_BYTES (1 MiB by default)", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable (retry shortly)", body = ErrorBody),
    )
)]
pub(crate) async fn start_process(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    body: CommandJson<StartProcessRequest>,
) -> Result<HttpResponse, ApiError> {
    let start: StartProcess = body.0.into_domain()?;
    let process = service.start_process(&caller.0, id, start).await?;
    let location = format!("/api/sandboxes/{id}/processes/{}", process.pid);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(ProcessResponse::from(process)))
}

/// A running sandbox's background processes, running and recently exited, by pid.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/processes", tag = "processes",
    responses(
        (status = 200, description = "The processes, by pid", body = Vec<ProcessResponse>),
        (status = 404, description = "Unknown sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_processes(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<web::Json<Vec<ProcessResponse>>, ApiError> {
    let processes = service.processes(&caller.0, id).await?;
    Ok(web::Json(processes.into_iter().map(Into::into).collect()))
}

/// One background process.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/processes/{pid}", tag = "processes",
    params(PidPath),
    responses(
        (status = 200, description = "The process", body = ProcessResponse),
        (status = 400, description = "Malformed id or pid", body = ErrorBody),
        (status = 404, description = "Unknown sandbox or process (an exited one is kept until 16 more have exited)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_process(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    PathPid(pid): PathPid,
) -> Result<web::Json<ProcessResponse>, ApiError> {
    Ok(web::Json(service.process(&caller.0, id, pid).await?.into()))
}

/// Kills a background process and every process in its process group (`SIGKILL`), and
/// forgets it: from then on it is not found, its output gone. To kill it and still read its
/// output, send it `KILL` with `…/signal`.
#[utoipa::path(
    delete, path = "/api/sandboxes/{id}/processes/{pid}", tag = "processes",
    params(PidPath),
    responses(
        (status = 204, description = "Killed (or it had already exited) and forgotten"),
        (status = 400, description = "Malformed id or pid", body = ErrorBody),
        (status = 404, description = "Unknown sandbox or process", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn kill_process(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    PathPid(pid): PathPid,
) -> Result<HttpResponse, ApiError> {
    service.remove_process(&caller.0, id, pid).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Sends a signal to a background process's whole process group.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/processes/{pid}/signal", tag = "processes",
    params(PidPath),
    request_body = SignalRequest,
    responses(
        (status = 204, description = "Sent (nothing happens to a process that already exited)"),
        (status = 400, description = "Malformed id, pid or JSON; a signal other than TERM, INT, KILL, HUP", body = ErrorBody),
        (status = 404, description = "Unknown sandbox or process", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent", body = ErrorBody),
        (status = 413, description = "Body over MONZA_MAX_COMMAND_BYTES", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn signal_process(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    PathPid(pid): PathPid,
    body: CommandJson<SignalRequest>,
) -> Result<HttpResponse, ApiError> {
    let signal: ProcessSignal = body.0.signal.parse()?;
    service.signal_process(&caller.0, id, pid, signal).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST …/stdin`'s query.
#[derive(Debug, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
struct StdinQuery {
    /// `true`: close the process's stdin after these bytes (it then reads end of file).
    /// Default `false`.
    close: Option<bool>,
}

/// Writes the body, raw bytes of any type, to a background process's stdin (started with
/// `"stdin": true`); with `?close=true`, closes it afterwards. Answers once written.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/processes/{pid}/stdin", tag = "processes",
    params(PidPath, StdinQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bytes; may be empty (with `close=true`: only close)"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "Malformed id, pid or query; writing failed (the process closed its stdin)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox or process, or the process's stdin is not open", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent", body = ErrorBody),
        (status = 413, description = "Body over MONZA_MAX_COMMAND_BYTES", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable; or the process did not read its stdin in time", body = ErrorBody),
    )
)]
pub(crate) async fn write_stdin(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    PathPid(pid): PathPid,
    req: HttpRequest,
    body: CommandBytes,
) -> Result<HttpResponse, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["close"])?;
    let close = flag(&query, "close")?.unwrap_or(false);
    service
        .process_stdin(&caller.0, id, pid, body.0, close)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET …/output`'s query.
#[derive(Debug, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
struct OutputQuery {
    /// Byte offset to read both streams from (default 0); `stdout_offset` and
    /// `stderr_offset` override it per stream.
    #[param(minimum = 0, maximum = 18446744073709551615_u64)]
    offset: Option<u64>,
    /// Byte offset to read stdout from: the `stdout_offset` of the last `exit` or
    /// `caught_up` event, or the last chunk's offset plus its length, to go on exactly where
    /// a reader stopped.
    #[param(minimum = 0, maximum = 18446744073709551615_u64)]
    stdout_offset: Option<u64>,
    /// Byte offset to read stderr from.
    #[param(minimum = 0, maximum = 18446744073709551615_u64)]
    stderr_offset: Option<u64>,
    /// `true`: go on streaming output as it comes until the process exits (the sandbox is
    /// kept alive meanwhile). Default `false`: what there is now, then `caught_up`.
    follow: Option<bool>,
}

/// A background process's output from byte offsets on, as NDJSON (or server-sent events
/// with `Accept: text/event-stream`): each chunk with the `offset` of its first byte in its
/// stream; then `exit`, or `caught_up` when not following, each with the offsets to read on
/// from. Output older than the process's kept bytes was dropped: the first chunk's offset
/// then says where it starts. Disconnecting never stops the process.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/processes/{pid}/output", tag = "processes",
    params(PidPath, OutputQuery),
    responses(
        (status = 200, description = "The output, one `ProcessOutputEvent` per line (or per server-sent event)", content(
            (ProcessOutputEvent = "application/x-ndjson"),
            (ProcessOutputEvent = "text/event-stream"),
        )),
        (status = 400, description = "Malformed id, pid or query", body = ErrorBody),
        (status = 404, description = "Unknown sandbox or process", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn process_output(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    PathPid(pid): PathPid,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = strict_query(&req)?;
    only(
        &query,
        &["offset", "stdout_offset", "stderr_offset", "follow"],
    )?;
    let both = number(&query, "offset")?.unwrap_or(0);
    let offsets = (
        number(&query, "stdout_offset")?.unwrap_or(both),
        number(&query, "stderr_offset")?.unwrap_or(both),
    );
    let follow = flag(&query, "follow")?.unwrap_or(false);
    let framing = match Framing::of(&req) {
        Framing::EventStream => Framing::EventStream,
        Framing::Ndjson | Framing::Whole => Framing::Ndjson,
    };
    let events = service
        .process_output(&caller.0, id, pid, offsets, follow)
        .await?;
    let content_type = match framing {
        Framing::EventStream => stream::EVENT_STREAM,
        Framing::Ndjson | Framing::Whole => stream::NDJSON,
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream::process_body(events, framing, offsets)))
}

/// `GET …/pty`'s query.
#[derive(Debug, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
struct PtyQuery {
    /// Byte offset of the terminal's output to replay from (default 0: all it still holds);
    /// the output after it follows as it comes.
    #[param(minimum = 0, maximum = 18446744073709551615_u64)]
    offset: Option<u64>,
}

/// Attaches to the terminal of a background process started with `pty`, as a WebSocket:
/// binary frames both ways are the terminal's bytes (replayed from `offset`, then as they
/// come; what the client sends is typed); the client's text frame
/// `{"type":"resize","cols":N,"rows":M}` resizes it; when the process ends the server sends
/// `{"type":"exit","exitCode",…}` and closes. The sandbox stays alive while attached;
/// closing never stops the process.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/processes/{pid}/pty", tag = "processes",
    params(PidPath, PtyQuery),
    responses(
        (status = 101, description = "Switched to a WebSocket"),
        (status = 400, description = "A malformed id, pid or query, or a broken WebSocket handshake (no `Sec-WebSocket-Key`, a version other than 13)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox or process", body = ErrorBody),
        (status = 409, description = "The sandbox is not running or has no agent, or the process was not started with `pty`", body = ErrorBody),
        (status = 426, description = "Not a WebSocket request (`Upgrade: websocket` missing); answered with `Upgrade: websocket`", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn attach_pty(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    PathPid(pid): PathPid,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["offset"])?;
    let offset = number(&query, "offset")?.unwrap_or(0);
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return Err(ApiError::upgrade_required(
            "this route is a WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    }
    // The process is checked (it exists, it runs on a terminal) before the handshake.
    let (terminal, events) = service
        .attach_terminal(&caller.0, id, pid, (offset, 0))
        .await?;
    let (response, session, messages) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::invalid(format!("WebSocket handshake: {e}")))?;
    actix_web::rt::spawn(terminal::relay(terminal, events, session, messages));
    Ok(response)
}
