//! Small extractors and parsers shared by the handlers.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;
use monza_domain::SandboxId;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Parses the `{id}` path segment; a malformed id is a 400.
pub(crate) fn sandbox_id(raw: &str) -> Result<SandboxId, ApiError> {
    Ok(raw.parse::<SandboxId>()?)
}

/// A JSON body that may also be absent: an empty body (`curl -X POST …`, or
/// `Content-Length: 0` whatever the type) gives `None`; anything else must be valid JSON
/// under the [`web::JsonConfig`] in force (size limit, content type, error shape).
#[derive(Debug)]
pub(crate) struct JsonOrEmpty<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for JsonOrEmpty<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if has_no_body(req) {
            return Box::pin(async { Ok(Self(None)) });
        }
        let json = web::Json::<T>::from_request(req, payload);
        Box::pin(async move { Ok(Self(Some(json.await?.into_inner()))) })
    }
}

fn has_no_body(req: &HttpRequest) -> bool {
    let headers = req.headers();
    match headers.get(header::CONTENT_LENGTH) {
        Some(length) => length.to_str().is_ok_and(|l| l.trim() == "0"),
        // Without a length, a body is announced by chunked encoding (HTTP/1.1) or, over
        // HTTP/2, at least by its content type.
        None => {
            !headers.contains_key(header::TRANSFER_ENCODING)
                && !headers.contains_key(header::CONTENT_TYPE)
        }
    }
}
