//! [`ApiError`]: every failure a client sees, as `{"error":{"code","message"}}`, and the
//! handlers that turn actix-web's own extractor errors into the same shape.

use std::fmt;

use actix_web::error::{PathError, QueryPayloadError};
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use monza_domain::{Error, FileProblem};
use serde::Serialize;
use utoipa::ToSchema;

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and message of an error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code: `unauthorized`, `not_found`, `invalid_input`, `conflict`, `too_large`,
    /// `limit_exceeded`, `unavailable`, `internal`, `unsupported_media_type`,
    /// `method_not_allowed`, `request_timeout`, `upgrade_required`; for a path inside a
    /// sandbox, `file_not_found` (404), `is_directory` (409), `not_a_directory` (409),
    /// `invalid_path` (400), `permission_denied` (403), `range_not_satisfiable` (416),
    /// `already_exists` (409), `directory_not_empty` (409), and for an edit `no_match` (409)
    /// and `ambiguous_match` (409). The
    /// `X-Monza-Error-Code` header of the answer carries the same code.
    #[schema(example = "not_found")]
    pub code: &'static str,
    /// What was wrong, in words meant for the client.
    #[schema(example = "sandbox 0b6f0e0e-2a7c-4d47-9d1c-7d1f2f3e4a5b not found")]
    pub message: String,
}

/// A failure as the client sees it: a status, a stable code and a message.
///
/// Built from a domain [`Error`] (its kind picks the status and code) or from a rejected
/// request (bad JSON, wrong content type, oversized body, ...). An internal error's cause is
/// logged when the `ApiError` is made and never reaches the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Headers the answer carries besides the usual ones (a 416's `Content-Range`).
    headers: Vec<(&'static str, String)>,
}

/// The header every error answer carries its code in, so a client of `HEAD` (whose answer
/// has no body) can tell `not_found` from `file_not_found`.
pub const ERROR_CODE_HEADER: &str = "X-Monza-Error-Code";

/// The `WWW-Authenticate` value of every 401.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"monza\"";

/// The message a client gets for a 500, whatever the cause.
pub const INTERNAL_MESSAGE: &str = "internal server error";

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// The same error, answered with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// 400 `invalid_input`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 401 `unauthorized`, answered with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 408 `request_timeout`: the body did not arrive in time. The connection is closed
    /// after the answer, since the rest of the body may still be on its way.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    /// 426 `upgrade_required`, answered with `Upgrade: websocket`: a plain request to a
    /// WebSocket route.
    pub fn upgrade_required(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UPGRADE_REQUIRED, "upgrade_required", message)
    }

    /// 413 `too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 500 `internal`: logs `cause` and tells the client nothing more.
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            INTERNAL_MESSAGE,
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The client-facing message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => return Self::internal(&error),
            Error::File { problem, .. } => match problem {
                FileProblem::NotFound => StatusCode::NOT_FOUND,
                // What the sandbox holds, not the request, is in the way: the same request
                // succeeds once the path is a directory (RFC 9110's 409).
                FileProblem::IsDirectory | FileProblem::NotADirectory => StatusCode::CONFLICT,
                FileProblem::InvalidPath => StatusCode::BAD_REQUEST,
                FileProblem::PermissionDenied => StatusCode::FORBIDDEN,
                FileProblem::AlreadyExists
                | FileProblem::NotEmpty
                | FileProblem::NoMatch
                | FileProblem::AmbiguousMatch => StatusCode::CONFLICT,
            },
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %error, "dependency unavailable");
        }
        Self::new(status, error.code(), error.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response.insert_header((ERROR_CODE_HEADER, self.code));
        for (name, value) in &self.headers {
            response.insert_header((*name, value.as_str()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme the client must use.
            response.insert_header((header::WWW_AUTHENTICATE, WWW_AUTHENTICATE));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            response.force_close();
        }
        if self.status == StatusCode::UPGRADE_REQUIRED {
            // RFC 9110: a 426 names the protocol to upgrade to.
            response.insert_header((header::UPGRADE, "websocket"));
            response.insert_header((header::CONNECTION, "Upgrade"));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        })
    }
}

/// `QueryConfig::error_handler`.
pub(crate) fn query_error(error: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::invalid(format!("invalid query string: {error}")).into()
}

/// `PathConfig::error_handler`.
pub(crate) fn path_error(error: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::invalid(format!("invalid path parameter: {error}")).into()
}

/// The default service: an unknown route is a JSON 404.
pub(crate) async fn route_not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}

/// A known path with the wrong method: a JSON 405 with `Allow`.
pub(crate) fn method_not_allowed(req: &HttpRequest, allowed: &[Method]) -> HttpResponse {
    let allow = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; allowed: {allow}",
            req.method(),
            req.path()
        ),
    );
    let mut response = error.error_response();
    if let Ok(value) = header::HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_domain_kind_has_its_status_and_code() {
        let cases = [
            (Error::not_found("x"), 404, "not_found"),
            (Error::invalid("x"), 400, "invalid_input"),
            (Error::conflict("x"), 409, "conflict"),
            (Error::TooLarge("x".into()), 413, "too_large"),
            (Error::LimitExceeded("x".into()), 429, "limit_exceeded"),
            (Error::unauthorized("x"), 401, "unauthorized"),
            (Error::unavailable("docker", "x"), 503, "unavailable"),
            (Error::internal("x"), 500, "internal"),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from(error);
            assert_eq!(api.status().as_u16(), status, "{api}");
            assert_eq!(api.code(), code);
        }
    }

    #[test]
    fn an_internal_error_hides_its_cause() {
        let api = ApiError::from(Error::internal("password=hunter2 in the DSN"));
        assert_eq!(api.message(), INTERNAL_MESSAGE);
        assert!(!api.to_string().contains("hunter2"));
    }
}
