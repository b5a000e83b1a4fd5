//! Small extractors and parsers shared by the handlers: the sandbox id, JSON bodies (bounded
//! in size and in time, objects only, no NUL in any text), strict query strings, and the
//! pace a streamed body must keep.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use bytes::{Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use futures::{Stream, StreamExt};
use monza_domain::SandboxId;
use monza_domain::error::json_kind;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::{Instant, Sleep};

use crate::HttpConfig;
use crate::error::ApiError;

/// The `{id}` path segment as a sandbox id, for every route that names one: a malformed id
/// is a 400 before the handler runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathId(pub SandboxId);

impl FromRequest for PathId {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // From the match info rather than `web::Path<String>`, which takes a route's only
        // parameter: the process routes have a second one.
        let id = req
            .match_info()
            .get("id")
            .unwrap_or_default()
            .parse::<SandboxId>()
            .map_err(ApiError::from);
        Box::pin(async move { Ok(Self(id?)) })
    }
}

/// The `{pid}` path segment of the process routes: a process id, 1 to 4294967295; anything
/// else is a 400 before the handler runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathPid(pub u32);

impl FromRequest for PathPid {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let raw = req.match_info().get("pid").unwrap_or_default();
        let pid = raw
            .parse::<u32>()
            .ok()
            .filter(|pid| *pid > 0 && raw.bytes().all(|b| b.is_ascii_digit()))
            .map(Self)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "{raw:?} is not a process id (a whole number from 1 to {})",
                    u32::MAX
                ))
                .into()
            });
        std::future::ready(pid)
    }
}

/// A body taken as raw bytes, whatever its type (a process's stdin), read within
/// [`HttpConfig::body_timeout`] and [`HttpConfig::max_command_bytes`].
#[derive(Debug)]
pub(crate) struct CommandBytes(pub Bytes);

impl FromRequest for CommandBytes {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let config = config_of(req, Limit::Command);
        let announced = announced_length(req);
        let payload = payload.take();
        Box::pin(async move {
            if let Some(length) = announced
                && length > config.max_json_bytes as u64
            {
                return Err(ApiError::too_large(format!(
                    "the body is {length} bytes; the limit is {} bytes{}",
                    config.max_json_bytes, config.setting
                ))
                .into());
            }
            Ok(Self(read_all(payload, &config).await?))
        })
    }
}

/// The body's length as its `Content-Length` announces it.
pub(crate) fn announced_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
}

/// Execute's body, a JSON object carrying a command: read within
/// [`HttpConfig::body_timeout`] and [`HttpConfig::max_command_bytes`] (a command may carry a
/// file edit or a stdin), then checked before it is decoded: it must be an object, and no
/// string in it (key or value) may hold a NUL byte. The body is read as JSON whatever its
/// `Content-Type` says, as the Go service monza replaces did, so `curl -d '{…}'` (which sends
/// form encoding) works; a body that is not JSON is a 400.
#[derive(Debug)]
pub(crate) struct CommandJson<T>(pub T);

/// A JSON object body read and checked like [`CommandJson`]'s within
/// [`HttpConfig::max_json_bytes`], which may be absent: an empty body (`curl -X POST …`, or
/// `Content-Length: 0` whatever the type) or a JSON `null` gives `None`.
#[derive(Debug)]
pub(crate) struct JsonOrEmpty<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for CommandJson<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = object(read_json(req, payload, Limit::Command));
        Box::pin(async move { Ok(Self(body.await?)) })
    }
}

/// A body that must be there: `null` is refused.
async fn object<T>(
    body: LocalBoxFuture<'static, Result<Option<T>, ApiError>>,
) -> Result<T, ApiError> {
    body.await?
        .ok_or_else(|| ApiError::invalid("the body must be a JSON object, not null"))
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonOrEmpty<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if has_no_body(req) {
            return Box::pin(async { Ok(Self(None)) });
        }
        let body = read_json(req, payload, Limit::Json);
        Box::pin(async move { Ok(Self(body.await?)) })
    }
}

/// Reads and checks a JSON body; `None` for `null`.
fn read_json<T: DeserializeOwned + 'static>(
    req: &HttpRequest,
    payload: &mut Payload,
    limit: Limit,
) -> LocalBoxFuture<'static, Result<Option<T>, ApiError>> {
    let config = config_of(req, limit);
    let announced = announced_length(req);
    let payload = payload.take();
    Box::pin(async move {
        if let Some(length) = announced
            && length > config.max_json_bytes as u64
        {
            return Err(ApiError::too_large(format!(
                "the JSON body is {length} bytes; the limit is {} bytes{}",
                config.max_json_bytes, config.setting
            )));
        }
        let bytes = read_all(payload, &config).await?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
        match &value {
            Value::Null => return Ok(None),
            Value::Object(_) => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "the body must be a JSON object, not {}",
                    json_kind(other)
                )));
            }
        }
        if let Some(field) = nul_in(&value, "") {
            return Err(ApiError::invalid(format!(
                "{field} contains a NUL byte, which no text field accepts"
            )));
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
    })
}

/// Which size limit a JSON body has.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// [`HttpConfig::max_json_bytes`].
    Json,
    /// [`HttpConfig::max_command_bytes`].
    Command,
}

/// The JSON body limits in force: size and arrival time (the defaults outside `configure`).
struct JsonLimits {
    max_json_bytes: usize,
    /// Where the size limit is set, for the 413's message (empty: not settable).
    setting: &'static str,
    body_timeout: Duration,
}

fn config_of(req: &HttpRequest, limit: Limit) -> JsonLimits {
    let limits = |c: &HttpConfig| {
        let (max_json_bytes, setting) = match limit {
            Limit::Json => (c.max_json_bytes, ""),
            Limit::Command => (c.max_command_bytes, " (MONZA_MAX_COMMAND_BYTES)"),
        };
        JsonLimits {
            max_json_bytes,
            setting,
            body_timeout: c.body_timeout,
        }
    };
    match req.app_data::<web::Data<HttpConfig>>() {
        Some(config) => limits(config),
        None => limits(&HttpConfig::default()),
    }
}

/// The first place in `value` where a string holds a NUL byte, named for the client
/// (`field \`env.A\``, or `a key in \`env\``).
fn nul_in(value: &Value, at: &str) -> Option<String> {
    let name = |at: &str| {
        if at.is_empty() {
            "the body".to_owned()
        } else {
            format!("field `{at}`")
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(name(at)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in(v, &format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some(format!("a key in {}", name(at)));
            }
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            nul_in(v, &path)
        }),
        _ => None,
    }
}

/// The whole body, refused past the size limit (413) or past the body timeout (408).
async fn read_all(payload: Payload, limits: &JsonLimits) -> Result<Bytes, ApiError> {
    let (limit, setting, timeout) = (limits.max_json_bytes, limits.setting, limits.body_timeout);
    let read = async move {
        let mut payload = payload;
        let mut buf = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(payload_error)?;
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::too_large(format!(
                    "the body is over the limit of {limit} bytes{setting}"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(body_timeout(timeout)),
    }
}

/// The answer to a body that did not arrive in time.
pub(crate) fn body_timeout(timeout: Duration) -> ApiError {
    ApiError::request_timeout(format!(
        "the request body did not arrive within {}s",
        timeout.as_secs_f64()
    ))
}

/// A failed read of the body: a timeout from [`Paced`] is a 408, anything else a 400.
pub(crate) fn payload_error(error: PayloadError) -> ApiError {
    match error {
        PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
            ApiError::request_timeout(e.to_string())
        }
        PayloadError::Overflow => ApiError::too_large("the body is over the size limit"),
        other => ApiError::invalid(format!("could not read the request body: {other}")),
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

/// The query string as `(name, value)` pairs, percent-decoded strictly: a value that is not
/// UTF-8 once decoded, or that holds a NUL byte, is a 400 naming the parameter (the lenient
/// decoders replace such bytes with U+FFFD, which would name another path).
pub(crate) fn strict_query(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |raw: &str, what: &str| -> Result<String, ApiError> {
        let spaced = raw.replace('+', " ");
        let text = percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map_err(|_| {
                ApiError::invalid(format!("query {what} is not valid UTF-8 once decoded"))
            })?;
        if text.contains('\0') {
            return Err(ApiError::invalid(format!(
                "query {what} contains a NUL byte"
            )));
        }
        Ok(text.into_owned())
    };
    req.query_string()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name, "parameter name")?;
            let value = decode(value, &format!("parameter `{name}`"))?;
            Ok((name, value))
        })
        .collect()
}

/// The one value of query parameter `name`: `None` when absent, a 400 when repeated.
pub(crate) fn query_param(
    pairs: &[(String, String)],
    name: &str,
) -> Result<Option<String>, ApiError> {
    let mut values = pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
    let first = values.next().cloned();
    if values.next().is_some() {
        return Err(ApiError::invalid(format!(
            "query parameter `{name}` is given more than once"
        )));
    }
    Ok(first)
}

/// The one value of query parameter `name`, which must be there (a 400 when absent).
pub(crate) fn required(pairs: &[(String, String)], name: &str) -> Result<String, ApiError> {
    query_param(pairs, name)?
        .ok_or_else(|| ApiError::invalid(format!("query parameter `{name}` is required")))
}

/// Refuses a query parameter the route does not name.
pub(crate) fn only(query: &[(String, String)], known: &[&str]) -> Result<(), ApiError> {
    match query
        .iter()
        .find(|(name, _)| !known.contains(&name.as_str()))
    {
        Some((name, _)) => Err(ApiError::invalid(format!(
            "unknown query parameter `{name}` (this route takes {})",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => Ok(()),
    }
}

/// A `true`/`false` query parameter.
pub(crate) fn flag(query: &[(String, String)], name: &str) -> Result<Option<bool>, ApiError> {
    query_param(query, name)?
        .map(|v| match v.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(ApiError::invalid(format!(
                "query parameter `{name}` must be `true` or `false`, not {other:?}"
            ))),
        })
        .transpose()
}

/// A whole-number query parameter.
pub(crate) fn number(query: &[(String, String)], name: &str) -> Result<Option<u64>, ApiError> {
    query_param(query, name)?
        .map(|v| {
            v.parse::<u64>()
                .ok()
                .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "query parameter `{name}` must be a whole number from 0 to {}, not {v:?}",
                        u64::MAX
                    ))
                })
        })
        .transpose()
}

/// A body stream that must keep a pace: at any moment `t` after it starts it must have
/// delivered `min_rate × (t − grace)` bytes. A stall or a trickle past that ends the stream
/// with a `TimedOut` error (a 408 through [`payload_error`]), so a slow client cannot hold a
/// request (and a spooled file) open for ever.
pub(crate) struct Paced<S> {
    inner: S,
    started: Instant,
    received: u64,
    grace: Duration,
    min_rate: u64,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Paced<S> {
    /// An upload's body at the pace the server's settings ask of every upload
    /// (`MONZA_BODY_TIMEOUT` of grace, then `MONZA_UPLOAD_MIN_RATE`).
    pub(crate) fn upload(inner: S, config: &crate::HttpConfig) -> Self {
        Self::new(inner, config.body_timeout, config.upload_min_bytes_per_sec)
    }

    pub(crate) fn new(inner: S, grace: Duration, min_bytes_per_sec: u64) -> Self {
        let started = Instant::now();
        Self {
            inner,
            started,
            received: 0,
            grace,
            min_rate: min_bytes_per_sec.max(1),
            deadline: Box::pin(tokio::time::sleep_until(started + grace)),
        }
    }

    fn allowed(&self) -> Instant {
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        self.started + self.grace + earned
    }
}

impl<S> Stream for Paced<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.received += chunk.len() as u64;
                let allowed = self.allowed();
                self.deadline.as_mut().reset(allowed);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let message = format!(
                        "the request body arrived slower than {} bytes/s (after a {}s grace \
                         period): {} bytes in {:.1}s",
                        self.min_rate,
                        self.grace.as_secs_f64(),
                        self.received,
                        self.started.elapsed().as_secs_f64()
                    );
                    Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        message,
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_nul_is_found_in_values_and_keys_at_any_depth() {
        assert_eq!(nul_in(&json!({"command": "ok"}), ""), None);
        assert_eq!(
            nul_in(&json!({"command": "a\u{0}b"}), "").as_deref(),
            Some("field `command`")
        );
        assert_eq!(
            nul_in(&json!({"env": {"A": "x\u{0}"}}), "").as_deref(),
            Some("field `env.A`")
        );
        assert_eq!(
            nul_in(&json!({"env": {"A\u{0}": "x"}}), "").as_deref(),
            Some("a key in field `env`")
        );
        assert_eq!(
            nul_in(&json!({"l": ["a", "\u{0}"]}), "").as_deref(),
            Some("field `l[1]`")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_times_out_and_a_steady_one_does_not() {
        // One byte every 2 s against a floor of 1 KiB/s after 3 s: refused.
        let trickle = futures::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            (n < 100).then(|| (Ok::<_, PayloadError>(Bytes::from_static(b"x")), n + 1))
        });
        let mut paced = Paced::new(Box::pin(trickle), Duration::from_secs(3), 1024);
        let mut delivered = 0;
        let error = loop {
            match paced.next().await {
                Some(Ok(_)) => delivered += 1,
                Some(Err(e)) => break e,
                None => panic!("the trickle was never cut"),
            }
        };
        assert!(delivered <= 2, "{delivered}");
        assert_eq!(payload_error(error).status().as_u16(), 408);

        // 4 KiB every second against the same floor: all of it arrives.
        let steady = futures::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (n < 20).then(|| (Ok::<_, PayloadError>(Bytes::from(vec![0u8; 4096])), n + 1))
        });
        let paced = Paced::new(Box::pin(steady), Duration::from_secs(3), 1024);
        let chunks: Vec<_> = paced.collect().await;
        assert_eq!(chunks.len(), 20);
        assert!(chunks.iter().all(Result::is_ok));
    }
}
