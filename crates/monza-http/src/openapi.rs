//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations.
//!
//! What every protected route shares is added in one place ([`Protected`], from
//! [`crate::is_protected`], the rule the router applies): the bearer security requirement and
//! the 401 and 503 of authentication. Likewise what every route with a sandbox `{id}` shares
//! ([`SandboxIds`], from the [`crate::extract::PathId`] each of them takes): the `id`
//! parameter and the 400 of a malformed one. The served document also lists the server's
//! templates (`CreateSandboxRequest.template`'s `enum`), so a client that follows it names one
//! that exists.

use actix_web::web;
use monza_domain::SandboxService;
use serde_json::Value;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, Ref, RefOr, Required, ResponseBuilder, Schema,
    schema::{AdditionalProperties, KnownFormat, ObjectBuilder, SchemaFormat, Type},
};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::model::{
    ArchiveResponse, BatchDownloadRequest, BatchDownloadResponse, BatchDownloadResult,
    BatchUploadForm, BatchUploadResponse, BatchUploadResult, CreateSandboxRequest, EditRequestBody,
    EditResponse, EventResponse, ExecuteEvent, ExecuteRequest, ExecuteResponse, FileEntryResponse,
    FileLinesResponse, FileListResponse, FileStatResponse, GlobRequestBody, GlobResponse,
    HealthResponse, HelloResponse, OpenApiDocument, OutputSpanResponse, PortMappingResponse,
    ProcessOutputEvent, ProcessResponse, PtyRequest, ReadyResponse, RemovedResponse,
    SandboxResponse, SearchMatchResponse, SearchRequestBody, SearchResponse, SignalRequest,
    StartProcessRequest, UploadForm, UploadResponse, WrittenFileResponse,
};

/// The API description. Its paths come from the one list of operations the router mounts
/// (`operations!` in the crate root), added by [`Operations`] before [`SandboxIds`] and
/// [`Protected`] run.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "monza",
        description = "Short-lived Docker development sandboxes over a REST API. Every error \
                       is `{\"error\":{\"code\",\"message\"}}` with a stable code. Every \
                       `/api` route but this document needs `Authorization: Bearer <token>`. \
                       A method a path does not list is answered 405 with `Allow`; an unknown \
                       path 404.",
    ),
    modifiers(&Operations, &SandboxIds, &Protected),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        CreateSandboxRequest,
        SandboxResponse,
        PortMappingResponse,
        EventResponse,
        ExecuteRequest,
        ExecuteResponse,
        ExecuteEvent,
        UploadForm,
        UploadResponse,
        WrittenFileResponse,
        FileStatResponse,
        FileEntryResponse,
        FileListResponse,
        RemovedResponse,
        FileLinesResponse,
        SearchRequestBody,
        SearchMatchResponse,
        SearchResponse,
        GlobRequestBody,
        GlobResponse,
        EditRequestBody,
        EditResponse,
        ArchiveResponse,
        BatchUploadForm,
        BatchUploadResponse,
        BatchUploadResult,
        BatchDownloadRequest,
        BatchDownloadResponse,
        BatchDownloadResult,
        StartProcessRequest,
        PtyRequest,
        ProcessResponse,
        OutputSpanResponse,
        SignalRequest,
        ProcessOutputEvent,
        HealthResponse,
        HelloResponse,
        ReadyResponse,
        OpenApiDocument,
    )),
    tags(
        (name = "health", description = "Liveness and readiness (public)"),
        (name = "sandboxes", description = "Sandbox lifecycle and commands"),
        (name = "files", description = "File transfer in and out of a sandbox"),
        (name = "processes", description = "Background processes of a sandbox: they outlive their request and the server, their output kept in the sandbox and read from any offset"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The name of the bearer security scheme.
pub const BEARER: &str = "bearer";

/// Puts the paths of every operation the router mounts into the document.
struct Operations;

impl Modify for Operations {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.paths = crate::documented_paths();
    }
}

/// Every operation of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// Adds to every operation on a route with a sandbox `{id}` what its
/// [`crate::extract::PathId`] means for it: the `id` path parameter (first), and a 400 for a
/// malformed id unless the operation describes its 400 more fully.
struct SandboxIds;

impl Modify for SandboxIds {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.contains("{id}") {
                continue;
            }
            for operation in operations(item) {
                let id = ParameterBuilder::new()
                    .name("id")
                    .parameter_in(ParameterIn::Path)
                    .description(Some("The sandbox id (a UUID)"))
                    .required(Required::True)
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
                    ))
                    .build();
                operation
                    .parameters
                    .get_or_insert_with(Vec::new)
                    .insert(0, RefOr::T(id));
                operation
                    .responses
                    .responses
                    .entry("400".to_owned())
                    .or_insert_with(|| error_response("Malformed id"));
            }
        }
    }
}

/// Adds the bearer scheme, and to every protected operation its requirement and the answers
/// of authentication, so the document cannot forget a route the router protects.
struct Protected;

impl Modify for Protected {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        // Set first: the loop below borrows the paths.
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`monza token create`, or the bootstrap admin token)",
                    ))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            if !crate::is_protected(path) {
                continue;
            }
            for operation in operations(item) {
                operation.security =
                    Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                let responses = &mut operation.responses.responses;
                responses
                    .entry("401".to_owned())
                    .or_insert_with(unauthorized);
                responses.entry("503".to_owned()).or_insert_with(|| {
                    error_response("The store (which holds the tokens) is unavailable")
                });
            }
        }
        // The upload forms refuse fields they do not name (a misspelt `path` must not land
        // the file in the default directory).
        for name in ["UploadForm", "BatchUploadForm"] {
            if let Some(RefOr::T(Schema::Object(form))) = components.schemas.get_mut(name) {
                form.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
        // A search names exactly one of its literal `pattern` and its `regex`.
        if let Some(RefOr::T(search)) = components.schemas.remove("SearchRequestBody") {
            let one = |field: &str| ObjectBuilder::new().required(field).build();
            let either = utoipa::openapi::schema::OneOfBuilder::new()
                .item(one("pattern"))
                .item(one("regex"))
                .build();
            let all = utoipa::openapi::schema::AllOfBuilder::new()
                .item(search)
                .item(Schema::OneOf(either))
                .build();
            components
                .schemas
                .insert("SearchRequestBody".to_owned(), RefOr::T(Schema::AllOf(all)));
        }
        // The create body is optional: absent, empty or `null` means the defaults.
        if let Some(RefOr::T(body)) = doc
            .paths
            .paths
            .get_mut("/api/sandboxes")
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut())
        {
            body.required = Some(Required::False);
        }
    }
}

/// A response whose body is an [`ErrorBody`].
fn error_body(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    )
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    error_body(description).build().into()
}

fn unauthorized() -> RefOr<utoipa::openapi::Response> {
    error_body(
        "No, a malformed, an unknown or a revoked bearer token (checked before the body is \
         read)",
    )
    .header(
        "WWW-Authenticate",
        HeaderBuilder::new()
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([crate::WWW_AUTHENTICATE])),
            ))
            .description(Some("The scheme to use"))
            .build(),
    )
    .build()
    .into()
}

/// This document, as JSON, with the server's templates as the `enum` of a create's
/// `template`.
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = OpenApiDocument))
)]
pub(crate) async fn get_openapi(service: web::Data<SandboxService>) -> web::Json<Value> {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    match service.catalog().list().await {
        Ok(names) if !names.is_empty() => {
            let mut values: Vec<Value> = names
                .iter()
                .map(|n| Value::String(n.as_str().to_owned()))
                .collect();
            // The field is optional and may be null.
            values.push(Value::Null);
            if let Some(template) = doc
                .pointer_mut("/components/schemas/CreateSandboxRequest/properties/template")
                .and_then(Value::as_object_mut)
            {
                template.insert("enum".to_owned(), Value::Array(values));
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "listing templates for the OpenAPI document"),
    }
    web::Json(doc)
}
