//! The two ways this crate talks to the engine: docker-api for what it covers, and plain
//! HTTP requests over the same socket for what docker-api 0.14 cannot express:
//!
//! - container create: its `ContainerCreateOpts` builder has no `CapDrop`, `PidsLimit`,
//!   `Init`, `ShmSize` or `Mounts`, and hardening needs them;
//! - image build: it has no build args and tars the context itself, unbounded;
//! - archive (files): `copy_to` would take a whole body, `copy_from` borrows the client, and
//!   we need `'static` streams both ways.

use std::path::PathBuf;

use hyper::body::Bytes;
use hyper::client::HttpConnector;
use hyper::{Body, Client, Method, Request, Response, StatusCode};
use hyperlocal::UnixConnector;
use monza_domain::{Error, Result};

use crate::error::Failure;

/// Where the engine is, parsed from `DOCKER_HOST`.
#[derive(Debug, Clone)]
pub(crate) enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    pub(crate) fn parse(host: &str) -> Result<Self> {
        let invalid = || {
            Error::invalid(format!(
                "DOCKER_HOST {host:?} is not unix:///path, tcp://host:port or http://host:port"
            ))
        };
        if let Some(path) = host.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(invalid());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let authority = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
            .ok_or_else(invalid)?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(invalid());
        }
        Ok(Self::Tcp(authority.to_owned()))
    }
}

/// Plain HTTP to the engine, for the endpoints docker-api does not serve well.
#[derive(Debug, Clone)]
pub(crate) enum RawClient {
    Unix {
        client: Client<UnixConnector>,
        path: PathBuf,
    },
    Tcp {
        client: Client<HttpConnector>,
        authority: String,
    },
}

impl RawClient {
    pub(crate) fn new(address: &Address) -> Self {
        match address {
            Address::Unix(path) => Self::Unix {
                client: Client::builder().build(UnixConnector),
                path: path.clone(),
            },
            Address::Tcp(authority) => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                Self::Tcp {
                    client: Client::builder().build(connector),
                    authority: authority.clone(),
                }
            }
        }
    }

    /// Sends a request to `endpoint` (path and query) and returns the response if its status
    /// is a success; an error status becomes [`Failure::Status`] with the engine's message.
    pub(crate) async fn send(
        &self,
        method: Method,
        endpoint: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> Result<Response<Body>, Failure> {
        let uri: hyper::Uri = match self {
            Self::Unix { path, .. } => hyperlocal::Uri::new(path, endpoint).into(),
            Self::Tcp { authority, .. } => format!("http://{authority}{endpoint}")
                .parse()
                .map_err(|e| Failure::Other(format!("bad request URI: {e}")))?,
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(body)
            .map_err(|e| Failure::Other(format!("bad request: {e}")))?;
        let response = match self {
            Self::Unix { client, .. } => client.request(request).await,
            Self::Tcp { client, .. } => client.request(request).await,
        }?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status();
        Err(Failure::Status {
            code: code.as_u16(),
            message: error_message(code, response.into_body()).await,
        })
    }
}

impl RawClient {
    /// POSTs the JSON `body` to `endpoint` and returns the `Id` the engine answers with
    /// (a created container or exec).
    pub(crate) async fn post_for_id(
        &self,
        endpoint: &str,
        body: String,
    ) -> Result<String, Failure> {
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        let bytes = self.post_json(endpoint, body).await?;
        serde_json::from_slice::<Created>(&bytes)
            .map(|created| created.id)
            .map_err(|e| Failure::Other(format!("unexpected answer: {e}")))
    }

    /// POSTs the JSON `body` to `endpoint` and returns the whole answer.
    pub(crate) async fn post_json(&self, endpoint: &str, body: String) -> Result<Bytes, Failure> {
        let response = self
            .send(
                Method::POST,
                endpoint,
                Some("application/json"),
                Body::from(body),
            )
            .await?;
        Ok(hyper::body::to_bytes(response.into_body()).await?)
    }
}

/// The `message` of an engine error body (`{"message": "..."}`), bounded.
async fn error_message(code: StatusCode, body: Body) -> String {
    use futures::StreamExt;
    const MAX: usize = 64 * 1024;
    let mut bytes = Vec::new();
    let mut body = body;
    while let Some(Ok(chunk)) = body.next().await {
        let room = MAX.saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() >= MAX {
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(&bytes) {
        Ok(m) => m.message.trim().to_owned(),
        Err(_) if bytes.is_empty() => code.canonical_reason().unwrap_or("error").to_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).trim().to_owned(),
    }
}

/// Percent-encodes a query value.
pub(crate) fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_unix_and_tcp_hosts_and_refuses_others() {
        assert!(
            matches!(Address::parse("unix:///var/run/docker.sock"), Ok(Address::Unix(p)) if p == Path::new("/var/run/docker.sock"))
        );
        assert!(
            matches!(Address::parse("tcp://127.0.0.1:2375"), Ok(Address::Tcp(a)) if a == "127.0.0.1:2375")
        );
        assert!(
            matches!(Address::parse("http://docker:2375/"), Ok(Address::Tcp(a)) if a == "docker:2375")
        );
        for bad in [
            "",
            "ssh://host",
            "unix://relative",
            "tcp://",
            "/var/run/docker.sock",
        ] {
            assert!(
                matches!(Address::parse(bad), Err(Error::InvalidInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("/a b/ü&x=1"), "/a%20b/%C3%BC%26x%3D1");
    }
}
