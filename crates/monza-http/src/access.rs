//! Who is calling: the one place a request's [`Access`] is decided.
//!
//! Every protected route (each `/api/...` route but the OpenAPI document) is wrapped in
//! [`authenticate`], which runs after routing and before any extractor: a request without a
//! valid `Authorization: Bearer <token>` is answered 401 before its body is read. The
//! resolved [`Access`] is left in the request's extensions, where [`Caller`] takes it.

use std::future::{Ready, ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use monza_domain::{Access, TokenService};

use crate::error::ApiError;

/// How callers prove who they are.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Every caller is an admin (`MONZA_AUTH=disabled`: local experiments only).
    Disabled,
    /// Every protected route needs a bearer token the [`TokenService`] accepts.
    Tokens(TokenService),
}

/// The caller of an `/api` route, as the domain sees it. Every `/api` handler takes one and
/// passes `&caller.0` to the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Access);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        // Fails closed: a handler mounted outside `authenticate` serves nobody.
        ready(
            req.extensions()
                .get::<Access>()
                .cloned()
                .map(Caller)
                .ok_or_else(|| {
                    ApiError::internal(format!(
                        "{} {} takes a Caller but is not behind authentication",
                        req.method(),
                        req.path()
                    ))
                }),
        )
    }
}

/// Middleware (for `actix_web::middleware::from_fn`) on every protected route: resolves the
/// caller or answers 401 (`WWW-Authenticate: Bearer`, JSON body).
pub(crate) async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let auth = req.app_data::<web::Data<Auth>>().cloned();
    match resolve(auth.as_ref().map(|a| a.get_ref()), req.headers()).await {
        Ok(access) => {
            req.extensions_mut().insert(access);
            Ok(next.call(req).await?.map_into_left_body())
        }
        Err(error) => {
            let response = error.error_response();
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

/// Decides the caller's access from the request's headers.
async fn resolve(auth: Option<&Auth>, headers: &HeaderMap) -> Result<Access, ApiError> {
    let tokens = match auth {
        Some(Auth::Tokens(tokens)) => tokens,
        Some(Auth::Disabled) => return Ok(Access::Admin),
        None => return Err(ApiError::internal("no Auth in the app data")),
    };
    let bearer = bearer_token(headers)?;
    Ok(tokens.authenticate(bearer).await?)
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750).
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(AUTHORIZATION);
    let value = values.next().ok_or_else(|| {
        ApiError::unauthorized(
            "this route needs an `Authorization: Bearer <token>` header; an operator creates \
             tokens with `monza token create`",
        )
    })?;
    if values.next().is_some() {
        return Err(ApiError::unauthorized(
            "send one Authorization header, not several",
        ));
    }
    let malformed =
        || ApiError::unauthorized("malformed Authorization header: expected `Bearer <token>`");
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_bearer_scheme_is_read_case_insensitively() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])).unwrap(), "abc");
        assert_eq!(bearer_token(&headers(&["bearer  abc "])).unwrap(), "abc");
    }

    #[test]
    fn missing_malformed_and_repeated_headers_are_401() {
        for case in [
            &[][..],
            &["Basic dXNlcjpwYXNz"][..],
            &["Bearer"][..],
            &["Bearer "][..],
            &["abc"][..],
            &["Bearer a", "Bearer b"][..],
        ] {
            let err = bearer_token(&headers(case)).unwrap_err();
            assert_eq!(err.status().as_u16(), 401, "{case:?}");
            assert_eq!(err.code(), "unauthorized");
        }
    }
}
