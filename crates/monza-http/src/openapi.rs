//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations.

use actix_web::web;
use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::files::{__path_download_file, __path_upload_file};
use crate::handlers::{
    __path_create_sandbox, __path_delete_sandbox, __path_execute_command, __path_get_health,
    __path_get_hello, __path_get_ready, __path_get_sandbox, __path_heartbeat_sandbox,
    __path_list_events, __path_list_sandboxes,
};
use crate::model::{
    CreateSandboxRequest, EventResponse, ExecuteRequest, ExecuteResponse, HealthResponse,
    HelloResponse, PortMappingResponse, ReadyResponse, SandboxResponse, UploadForm, UploadResponse,
};

/// The API description. Every route registered by [`crate::configure`] must appear in
/// `paths` (a test compares the two).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "monza",
        description = "Short-lived Docker development sandboxes over a REST API. Every error \
                       is `{\"error\":{\"code\",\"message\"}}` with a stable code.",
    ),
    paths(
        get_health,
        get_hello,
        get_ready,
        get_openapi,
        list_sandboxes,
        create_sandbox,
        get_sandbox,
        delete_sandbox,
        heartbeat_sandbox,
        execute_command,
        list_events,
        upload_file,
        download_file,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        CreateSandboxRequest,
        SandboxResponse,
        PortMappingResponse,
        EventResponse,
        ExecuteRequest,
        ExecuteResponse,
        UploadForm,
        UploadResponse,
        HealthResponse,
        HelloResponse,
        ReadyResponse,
    )),
    tags(
        (name = "health", description = "Liveness and readiness (public)"),
        (name = "sandboxes", description = "Sandbox lifecycle and commands"),
        (name = "files", description = "File transfer in and out of a sandbox"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// This document, as JSON.
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub(crate) async fn get_openapi() -> web::Json<utoipa::openapi::OpenApi> {
    web::Json(ApiDoc::openapi())
}
