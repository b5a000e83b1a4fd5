//! Translation of engine failures into the domain's error kinds, at the port boundary.
//!
//! Docker 404 → not found, 409 → conflict, a connection that cannot be made (or breaks) or
//! a call that outlives its bound → unavailable (with the engine's address), anything else
//! → internal. No docker-api or hyper type leaves this crate.

use std::error::Error as StdError;
use std::fmt::Display;
use std::time::Duration;

use monza_domain::Error;

/// A failed engine call, before it is given the words of a domain error.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The engine answered with an error status.
    Status { code: u16, message: String },
    /// The engine could not be reached, or the connection broke.
    Transport(String),
    /// The call outlived its bound.
    Timeout(Duration),
    /// Anything else: an answer we could not understand, a bug.
    Other(String),
}

impl Failure {
    /// The domain error for this failure of `what` (e.g. "starting container abc") against
    /// the engine at `addr`.
    pub(crate) fn into_domain(self, addr: &str, what: impl Display) -> Error {
        match self {
            Self::Status { code: 404, message } => Error::not_found(format!("{what}: {message}")),
            Self::Status { code: 409, message } => Error::conflict(format!("{what}: {message}")),
            Self::Status { code, message } => {
                Error::internal(format!("{what}: docker answered {code}: {message}"))
            }
            Self::Transport(message) => Error::unavailable(
                "docker",
                format!("{what}: cannot reach the Docker engine at {addr}: {message}"),
            ),
            Self::Timeout(after) => Error::unavailable(
                "docker",
                format!(
                    "{what}: the Docker engine at {addr} did not answer within {:.1}s",
                    after.as_secs_f64()
                ),
            ),
            Self::Other(message) => Error::internal(format!("{what}: {message}")),
        }
    }

    /// Whether the engine said the thing does not exist.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { code: 404, .. })
    }
}

impl From<docker_api::Error> for Failure {
    fn from(e: docker_api::Error) -> Self {
        use docker_api::Error as E;
        match e {
            E::Fault { code, message } => Self::Status {
                code: code.as_u16(),
                message: message.trim().to_owned(),
            },
            E::Error(e) => Self::from(e),
            E::Hyper(e) => Self::from(e),
            E::IO(e) => Self::Transport(e.to_string()),
            other => Self::Other(chain(&other)),
        }
    }
}

impl From<docker_api::conn::Error> for Failure {
    fn from(e: docker_api::conn::Error) -> Self {
        use docker_api::conn::Error as C;
        match e {
            C::Fault { code, message } => Self::Status {
                code: code.as_u16(),
                message: message.trim().to_owned(),
            },
            C::Hyper(e) => Self::from(e),
            C::IO(e) => Self::Transport(e.to_string()),
            other => Self::Other(chain(&other)),
        }
    }
}

impl From<hyper::Error> for Failure {
    fn from(e: hyper::Error) -> Self {
        if e.is_user() {
            Self::Other(chain(&e))
        } else {
            Self::Transport(chain(&e))
        }
    }
}

/// An error and its sources, on one line.
pub(crate) fn chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Runs `call` within `bound`, translating both its failure and its timeout.
pub(crate) async fn bounded<T, E, F>(bound: Duration, call: F) -> Result<T, Failure>
where
    F: Future<Output = Result<T, E>>,
    E: Into<Failure>,
{
    match tokio::time::timeout(bound, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Failure::Timeout(bound)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds_and_transport_names_the_address() {
        let not_found = Failure::Status {
            code: 404,
            message: "no such container: x".into(),
        };
        assert!(
            matches!(not_found.into_domain("unix:///s", "starting x"), Error::NotFound(m) if m.contains("no such container"))
        );
        let conflict = Failure::Status {
            code: 409,
            message: "is not running".into(),
        };
        assert!(matches!(
            conflict.into_domain("a", "exec"),
            Error::Conflict(_)
        ));
        let other = Failure::Status {
            code: 500,
            message: "boom".into(),
        };
        assert!(matches!(other.into_domain("a", "exec"), Error::Internal(m) if m.contains("500")));
        let down = Failure::Transport("connection refused".into());
        match down.into_domain("tcp://127.0.0.1:1", "ping") {
            Error::Unavailable {
                dependency,
                message,
            } => {
                assert_eq!(dependency, "docker");
                assert!(message.contains("tcp://127.0.0.1:1"), "{message}");
            }
            e => panic!("unexpected {e:?}"),
        }
        let slow = Failure::Timeout(Duration::from_secs(3));
        assert!(
            matches!(slow.into_domain("unix:///s", "ping"), Error::Unavailable { message, .. } if message.contains("unix:///s") && message.contains("3.0s"))
        );
    }
}
