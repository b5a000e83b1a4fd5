//! Who is calling: the one place a request's [`Access`] is decided.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use monza_domain::Access;

use crate::error::ApiError;

/// The caller of an `/api` route, as the domain sees it. Every `/api` handler takes one and
/// passes `&caller.0` to the service, so authentication changes only [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Access);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(resolve(req).map(Caller))
    }
}

/// Decides the caller's access from the request.
///
/// Authentication is not implemented yet (issue 6): every caller is an admin. Bearer tokens
/// go here: read `Authorization`, look the token up through state kept in app data, and
/// return `Access::Tenant` or a 401 `ApiError`.
fn resolve(_req: &HttpRequest) -> Result<Access, ApiError> {
    Ok(Access::Admin)
}
