//! The handlers of the health and sandbox routes. Each one parses, calls one
//! [`SandboxService`] use case and maps the result; no rule lives here.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use monza_domain::{Error, SandboxFilter, SandboxService, StatusFilter};

use crate::access::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonOrEmpty, sandbox_id};
use crate::model::{
    CreateSandboxRequest, EventResponse, ExecuteRequest, ExecuteResponse, HealthResponse,
    HelloResponse, ListQuery, ReadyResponse, SandboxResponse,
};

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
    let (database, docker) = futures::join!(
        ping("database", service.repository().ping()),
        ping("docker", service.runtime().ping()),
    );
    let ready = database && docker;
    let word = |ok: bool| if ok { "ok" } else { "unavailable" }.to_owned();
    let body = ReadyResponse {
        status: word(ready),
        database: word(database),
        docker: word(docker),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn ping(dependency: &str, check: impl Future<Output = monza_domain::Result<()>>) -> bool {
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(dependency, error = %e, "readiness check failed");
            false
        }
        Err(_) => {
            tracing::warn!(dependency, timeout = ?READY_TIMEOUT, "readiness check timed out");
            false
        }
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
    query: web::Query<ListQuery>,
) -> Result<web::Json<Vec<SandboxResponse>>, ApiError> {
    let status = query
        .status
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
        (status = 415, description = "Body is not JSON", body = ErrorBody),
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
    let sandbox = service
        .create(&caller.0, request)
        .await
        .map_err(|e| match e {
            // Nothing exists yet that could be "not found" but the template the client
            // named: that is bad input (the message lists the available templates).
            Error::NotFound(message) => ApiError::invalid(message),
            other => other.into(),
        })?;
    let location = format!("/api/sandboxes/{}", sandbox.id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(SandboxResponse::from(sandbox)))
}

/// One sandbox, in any status but `deleted` (a deleted one is listed with
/// `?status=deleted`).
#[utoipa::path(
    get, path = "/api/sandboxes/{id}", tag = "sandboxes",
    params(("id" = Uuid, Path, description = "The sandbox id (a UUID)")),
    responses(
        (status = 200, description = "The sandbox", body = SandboxResponse),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "Unknown or deleted sandbox", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_sandbox(
    service: web::Data<SandboxService>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<SandboxResponse>, ApiError> {
    let id = sandbox_id(&id)?;
    Ok(web::Json(service.show(&caller.0, id).await?.into()))
}

/// Deletes a sandbox and removes its container. Deleting again is a success.
#[utoipa::path(
    delete, path = "/api/sandboxes/{id}", tag = "sandboxes",
    params(("id" = Uuid, Path, description = "The sandbox id (a UUID)")),
    responses(
        (status = 204, description = "Deleted (or already ended)"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "Unknown sandbox", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn delete_sandbox(
    service: web::Data<SandboxService>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = sandbox_id(&id)?;
    service.delete(&caller.0, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Keeps a running sandbox alive: its expiry moves to now + TTL.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/heartbeat", tag = "sandboxes",
    params(("id" = Uuid, Path, description = "The sandbox id (a UUID)")),
    responses(
        (status = 204, description = "Expiry extended"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "Unknown sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn heartbeat_sandbox(
    service: web::Data<SandboxService>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = sandbox_id(&id)?;
    service.heartbeat(&caller.0, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Runs a shell command (`/bin/sh -c`) in a running sandbox, to completion or timeout.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/execute", tag = "sandboxes",
    params(("id" = Uuid, Path, description = "The sandbox id (a UUID)")),
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "The command ran (whatever its exit code)", body = ExecuteResponse),
        (status = 400, description = "Malformed id or JSON, missing or empty `command`, relative `workdir`, bad env name", body = ErrorBody),
        (status = 404, description = "Unknown sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn execute_command(
    service: web::Data<SandboxService>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<ExecuteRequest>,
) -> Result<web::Json<ExecuteResponse>, ApiError> {
    let id = sandbox_id(&id)?;
    let output = service
        .execute(&caller.0, id, body.into_inner().into())
        .await?;
    Ok(web::Json(output.into()))
}

/// A sandbox's event log, oldest first: created, started, executed, uploaded, downloaded,
/// deleted, expired, failed (heartbeats are not logged). For operators.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/events", tag = "sandboxes",
    params(("id" = Uuid, Path, description = "The sandbox id (a UUID)")),
    responses(
        (status = 200, description = "Events, oldest first", body = Vec<EventResponse>),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "Unknown or deleted sandbox", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_events(
    service: web::Data<SandboxService>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<Vec<EventResponse>>, ApiError> {
    let id = sandbox_id(&id)?;
    let events = service.events(&caller.0, id).await?;
    Ok(web::Json(events.into_iter().map(Into::into).collect()))
}
