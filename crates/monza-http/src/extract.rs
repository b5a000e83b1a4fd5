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

/// A JSON body that may also be absent: a request with no body and no `Content-Type`
/// (`curl -X POST …`) gives `None`; anything else must be valid JSON under the
/// [`web::JsonConfig`] in force (size limit, content type, error shape).
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
    if headers.contains_key(header::CONTENT_TYPE) || headers.contains_key(header::TRANSFER_ENCODING)
    {
        return false;
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => true,
        Some(length) => length.to_str().is_ok_and(|l| l.trim() == "0"),
    }
}
