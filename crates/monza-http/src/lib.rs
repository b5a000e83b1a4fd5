//! monza's REST API: actix-web handlers over the domain's [`SandboxService`].
//!
//! # Usage
//!
//! The app crate builds a [`SandboxService`] from concrete adapters and hands a clone to
//! every worker:
//!
//! ```no_run
//! # async fn run(service: monza_domain::SandboxService) -> std::io::Result<()> {
//! use actix_web::{App, HttpServer};
//!
//! let auth = monza_http::Auth::Disabled; // or Auth::Tokens(token_service)
//! HttpServer::new(move || {
//!     App::new().configure(monza_http::configure(service.clone(), auth.clone()))
//! })
//!     .bind(("127.0.0.1", 8080))?
//!     .run()
//!     .await
//! # }
//! ```
//!
//! [`configure_with`] takes an [`HttpConfig`] to change the limits (JSON body size, size of
//! the upload form's `path` field, where uploads are spooled). The upload size limit is the
//! domain's [`monza_domain::ServiceConfig::max_upload_bytes`] (100 MiB by default).
//!
//! `configure` owns the whole URL space: it mounts one scope at `/` that logs every request
//! (method, path, status, duration, request id; the id is returned as `X-Request-Id`) and
//! answers unknown routes with a JSON 404 and wrong methods with a JSON 405.
//!
//! # Routes
//!
//! Every `/api/...` route except `GET /api/openapi.json` needs `Authorization: Bearer
//! <token>` (see [`Auth`]); `/health`, `/hello`, `/ready` and the OpenAPI document are
//! public (they hold no tenant data).
//!
//! | route | success |
//! |---|---|
//! | `GET /health` | 200 `{"status":"ok"}` |
//! | `GET /hello` | 200 `{"message":"hello, world"}` |
//! | `GET /ready` | 200 `{"status":"ok","database":"ok","docker":"ok"}`, or 503 naming the dependency that is `unavailable` |
//! | `GET /api/openapi.json` | 200, the OpenAPI 3.1 document |
//! | `GET /api/sandboxes?status=live\|all\|<status>` | 200 array, newest first |
//! | `POST /api/sandboxes` | 201 sandbox with `Location` |
//! | `GET /api/sandboxes/{id}` | 200 sandbox (404 once deleted) |
//! | `DELETE /api/sandboxes/{id}` | 204 |
//! | `POST /api/sandboxes/{id}/heartbeat` | 204 |
//! | `POST /api/sandboxes/{id}/execute` | 200 `{"output","exitCode","truncated",…}` |
//! | `GET /api/sandboxes/{id}/events` | 200 the sandbox's event log, oldest first |
//! | `POST /api/sandboxes/{id}/files/upload` | 200 `{"status":"ok","path":…}` |
//! | `GET /api/sandboxes/{id}/files/download?path=…` | 200 the file's bytes (`application/octet-stream`) |
//! | `PUT /api/sandboxes/{id}/files?path=…[&mode=…][&parents=true]` | 200 `{"path","size","mode"}` |
//! | `GET /api/sandboxes/{id}/files?path=…` (`Range`) | 200 or 206 the file's bytes |
//! | `HEAD /api/sandboxes/{id}/files?path=…` | 200, type, mode, size, last change in headers |
//! | `GET /api/sandboxes/{id}/files/stat?path=…` | 200 `{"path","name","type","size","mode","modified_at","link_target"}` |
//! | `DELETE /api/sandboxes/{id}/files?path=…[&recursive=true]` | 200 `{"path","removed"}` |
//! | `GET /api/sandboxes/{id}/files/list?path=…[&recursive=true][&limit=N]` | 200 `{"path","entries","truncated"}` |
//! | `GET /api/sandboxes/{id}/files/lines?path=…[&offset=N][&limit=N]` | 200 `{"path","offset","lines","next_offset"}` |
//! | `POST /api/sandboxes/{id}/files/mkdir?path=…[&parents=true]` | 200 the directory's entry |
//! | `POST /api/sandboxes/{id}/files/move?from=…&to=…[&overwrite=true]` | 200 the entry at its new path |
//! | `POST /api/sandboxes/{id}/files/search[?path=…]` `{"pattern" or "regex",…}` | 200 `{"matches":[{"path","line","text"}],"truncated"}` |
//! | `POST /api/sandboxes/{id}/files/glob[?path=…]` `{"pattern",…}` | 200 `{"paths","truncated"}` |
//! | `POST /api/sandboxes/{id}/files/edit?path=…` `{"old_string","new_string",…}` | 200 `{"path","replacements"}` |
//! | `PUT /api/sandboxes/{id}/files/archive?path=…` (a tar or tar.gz) | 200 `{"path","files","directories","links","bytes"}` |
//! | `GET /api/sandboxes/{id}/files/archive?path=…[&gzip=true]` | 200 a tar (or tar.gz) of the directory's contents |
//! | `POST /api/sandboxes/{id}/files/batch/upload[?parents=true][&mode=…]` (multipart, a `file` part per file, its filename the path) | 200 `{"results":[{"path","size","mode","error"}]}` |
//! | `POST /api/sandboxes/{id}/files/batch/download` `{"paths":[…]}` | 200 `{"results":[{"path","size","mode","content_base64","error"}]}` |
//! | `POST /api/sandboxes/{id}/processes` | 201 background process with `Location` |
//! | `GET /api/sandboxes/{id}/processes` | 200 array of processes, by pid |
//! | `GET /api/sandboxes/{id}/processes/{pid}` | 200 process |
//! | `DELETE /api/sandboxes/{id}/processes/{pid}` | 204 (its process group killed) |
//! | `GET /api/sandboxes/{id}/processes/{pid}/output?offset=…&follow=…` | 200 NDJSON (or SSE) output from the offsets |
//! | `POST /api/sandboxes/{id}/processes/{pid}/stdin?close=…` | 204 (the raw body written) |
//! | `POST /api/sandboxes/{id}/processes/{pid}/signal` | 204 |
//! | `GET /api/sandboxes/{id}/processes/{pid}/pty` | 101, a WebSocket to the process's terminal |
//!
//! Every error is `{"error":{"code","message"}}` ([`ApiError`]): `invalid_input` 400,
//! `unauthorized` 401 (with `WWW-Authenticate: Bearer`), `not_found` 404, `method_not_allowed` 405, `conflict` 409, `too_large` 413,
//! `request_timeout` 408 (a body slower than [`HttpConfig`] allows), `unsupported_media_type` 415,
//! `limit_exceeded` 429, `internal` 500 (generic message; the
//! cause is logged), `unavailable` 503.
//!
//! # Access
//!
//! Every `/api` handler takes a [`Caller`], resolved in one place (`access::resolve`, run by
//! the `access::authenticate` middleware on each protected route, after routing and before
//! the body is read): with [`Auth::Tokens`] an admin token is
//! [`monza_domain::Access::Admin`] and any other token [`monza_domain::Access::Tenant`];
//! with [`Auth::Disabled`] every caller is an admin. Another tenant's sandbox is a 404 on
//! every route that names it and absent from lists (the domain decides).

use std::path::PathBuf;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, Route, web};
use monza_domain::SandboxService;
use utoipa::openapi::path::HttpMethod;

mod access;
mod batch;
mod error;
mod extract;
mod files;
mod fs;
mod fsops;
mod handlers;
mod model;
mod openapi;
mod output_budget;
mod processes;
mod request_log;
mod stream;
mod terminal;

pub use access::{Auth, Caller};
pub use error::{ApiError, ErrorBody, ErrorDetail, INTERNAL_MESSAGE, WWW_AUTHENTICATE};
pub use model::{
    CreateSandboxRequest, EventResponse, ExecuteEvent, ExecuteRequest, ExecuteResponse,
    HealthResponse, HelloResponse, PortMappingResponse, ReadyResponse, SandboxResponse,
    UploadResponse,
};
pub use openapi::ApiDoc;
pub use output_budget::{OutputBudget, Reservation};
pub use request_log::{REQUEST_ID_HEADER, RequestId};

/// Limits and places of the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Largest JSON request body but execute's, in bytes (64 KiB); more is a 413.
    pub max_json_bytes: usize,
    /// Largest execute body, in bytes (1 MiB): a command may carry a whole file edit, or a
    /// stdin; more is a 413.
    pub max_command_bytes: usize,
    /// Largest text field of the upload form (`path`), in bytes (8 KiB); more is a 400.
    pub max_form_field_bytes: usize,
    /// Directory where uploads are spooled before going into the sandbox (the system's
    /// temporary directory). The files have no name there and vanish with the request.
    pub upload_dir: PathBuf,
    /// How long a JSON body may take to arrive in full (30 s); past it, a 408.
    pub body_timeout: Duration,
    /// The slowest pace an upload body may keep once [`HttpConfig::body_timeout`] has passed,
    /// in bytes per second (64 KiB/s): at any moment `t` it must have delivered
    /// `rate × (t − body_timeout)` bytes, else a 408.
    pub upload_min_bytes_per_sec: u64,
    /// Command output held in memory at once by all executes together (256 MiB; each
    /// reserves twice its output cap while it runs and until its answer is sent); past it,
    /// an execute is a 503. Clones share the budget.
    pub exec_output_budget: OutputBudget,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_json_bytes: 64 * 1024,
            max_command_bytes: 1024 * 1024,
            max_form_field_bytes: 8 * 1024,
            upload_dir: std::env::temp_dir(),
            body_timeout: Duration::from_secs(30),
            upload_min_bytes_per_sec: 64 * 1024,
            exec_output_budget: OutputBudget::new(256 * 1024 * 1024),
        }
    }
}

/// Every route, with the defaults of [`HttpConfig`]. See the crate docs for usage.
pub fn configure(service: SandboxService, auth: Auth) -> impl FnOnce(&mut web::ServiceConfig) {
    configure_with(service, auth, HttpConfig::default())
}

/// Every route, with explicit limits.
pub fn configure_with(
    service: SandboxService,
    auth: Auth,
    config: HttpConfig,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let mut scope = web::scope("")
            .wrap(from_fn(request_log::log_request))
            .app_data(web::Data::new(service))
            .app_data(web::Data::new(auth))
            .app_data(web::Data::new(config))
            .app_data(web::QueryConfig::default().error_handler(error::query_error))
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            .default_service(web::to(error::route_not_found));
        for (path, endpoints) in grouped(endpoints()) {
            let allowed: Vec<Method> = endpoints.iter().map(|e| e.method.clone()).collect();
            let mut resource = web::resource(path.as_str());
            for endpoint in endpoints {
                resource = resource.route((endpoint.to)(web::method(endpoint.method)));
            }
            resource = resource.default_service(web::to(move |req: HttpRequest| {
                let allowed = allowed.clone();
                async move { error::method_not_allowed(&req, &allowed) }
            }));
            // Decided on the matched route, not on the raw path, so no spelling of a URL
            // reaches a protected handler unauthenticated.
            if is_protected(&path) {
                scope = scope.service(resource.wrap(from_fn(access::authenticate)));
            } else {
                scope = scope.service(resource);
            }
        }
        cfg.service(scope);
    }
}

/// One registered operation: its method and path come from the handler's
/// `#[utoipa::path]`, so the router and the OpenAPI document name the same routes.
struct Endpoint {
    method: Method,
    path: String,
    to: fn(Route) -> Route,
}

macro_rules! endpoint {
    ($handler:path, $doc:ty) => {{
        let methods = <$doc as utoipa::Path>::methods();
        let path = <$doc as utoipa::Path>::path();
        let to: fn(Route) -> Route = |route| route.to($handler);
        methods.into_iter().filter_map(move |m| {
            Some(Endpoint {
                method: http_method(&m)?,
                path: path.clone(),
                to,
            })
        })
    }};
}

/// Declares the API's operations once: each `(handler, its utoipa path type)` is both mounted
/// by the router ([`endpoints`]) and listed in the OpenAPI document ([`documented_paths`]), so
/// the two cannot disagree and a route is written in one place.
macro_rules! operations {
    ($(($handler:path, $doc:ty)),+ $(,)?) => {
        /// Every operation the API serves, in registration order.
        fn endpoints() -> Vec<Endpoint> {
            let mut all = Vec::new();
            $(all.extend(endpoint!($handler, $doc));)+
            all
        }

        /// The document's paths, from the same list.
        pub(crate) fn documented_paths() -> utoipa::openapi::Paths {
            utoipa::openapi::path::PathsBuilder::new()
                $(.path_from::<$doc>())+
                .build()
        }
    };
}

use batch::{__path_download_batch, __path_upload_batch, download_batch, upload_batch};
use files::{__path_download_file, __path_upload_file, download_file, upload_file};
use fs::{
    __path_get_file, __path_head_file, __path_put_file, __path_stat_file, get_file, head_file,
    put_file, stat_file,
};
use fsops::{
    __path_edit_file, __path_get_archive, __path_glob_files, __path_list_files,
    __path_make_directory, __path_move_path, __path_put_archive, __path_read_lines,
    __path_remove_file, __path_search_files, edit_file, get_archive, glob_files, list_files,
    make_directory, move_path, put_archive, read_lines, remove_file, search_files,
};
use handlers::{
    __path_create_sandbox, __path_delete_sandbox, __path_execute_command, __path_get_health,
    __path_get_hello, __path_get_ready, __path_get_sandbox, __path_heartbeat_sandbox,
    __path_list_events, __path_list_sandboxes, create_sandbox, delete_sandbox, execute_command,
    get_health, get_hello, get_ready, get_sandbox, heartbeat_sandbox, list_events, list_sandboxes,
};
use openapi::{__path_get_openapi, get_openapi};
use processes::{
    __path_attach_pty, __path_get_process, __path_kill_process, __path_list_processes,
    __path_process_output, __path_signal_process, __path_start_process, __path_write_stdin,
    attach_pty, get_process, kill_process, list_processes, process_output, signal_process,
    start_process, write_stdin,
};

operations! {
    (get_health, __path_get_health),
    (get_hello, __path_get_hello),
    (get_ready, __path_get_ready),
    (get_openapi, __path_get_openapi),
    (list_sandboxes, __path_list_sandboxes),
    (create_sandbox, __path_create_sandbox),
    (get_sandbox, __path_get_sandbox),
    (delete_sandbox, __path_delete_sandbox),
    (heartbeat_sandbox, __path_heartbeat_sandbox),
    (execute_command, __path_execute_command),
    (list_events, __path_list_events),
    (upload_file, __path_upload_file),
    (download_file, __path_download_file),
    (put_file, __path_put_file),
    (get_file, __path_get_file),
    (head_file, __path_head_file),
    (stat_file, __path_stat_file),
    (remove_file, __path_remove_file),
    (list_files, __path_list_files),
    (read_lines, __path_read_lines),
    (make_directory, __path_make_directory),
    (move_path, __path_move_path),
    (search_files, __path_search_files),
    (glob_files, __path_glob_files),
    (edit_file, __path_edit_file),
    (put_archive, __path_put_archive),
    (get_archive, __path_get_archive),
    (upload_batch, __path_upload_batch),
    (download_batch, __path_download_batch),
    (start_process, __path_start_process),
    (list_processes, __path_list_processes),
    (get_process, __path_get_process),
    (kill_process, __path_kill_process),
    (process_output, __path_process_output),
    (write_stdin, __path_write_stdin),
    (signal_process, __path_signal_process),
    (attach_pty, __path_attach_pty),
}

/// Whether a route needs a bearer token: every `/api/...` route but the OpenAPI document.
pub fn is_protected(path: &str) -> bool {
    path.starts_with("/api/") && path != "/api/openapi.json"
}

/// The (method, path) of every registered operation, e.g. `("GET", "/api/sandboxes/{id}")`.
pub fn registered_routes() -> Vec<(String, String)> {
    endpoints()
        .into_iter()
        .map(|e| (e.method.as_str().to_owned(), e.path))
        .collect()
}

/// Endpoints grouped by path, in first-registration order, so each path is one resource
/// that can answer 405 for the methods it lacks.
fn grouped(endpoints: Vec<Endpoint>) -> Vec<(String, Vec<Endpoint>)> {
    let mut groups: Vec<(String, Vec<Endpoint>)> = Vec::new();
    for endpoint in endpoints {
        match groups.iter_mut().find(|(path, _)| *path == endpoint.path) {
            Some((_, group)) => group.push(endpoint),
            None => groups.push((endpoint.path.clone(), vec![endpoint])),
        }
    }
    groups
}

/// The actix method of a documented one; `None` for one actix cannot route (which then
/// shows up as documented but unregistered in the OpenAPI test).
fn http_method(method: &HttpMethod) -> Option<Method> {
    Some(match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}
