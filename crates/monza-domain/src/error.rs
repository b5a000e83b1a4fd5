//! The domain's error type, shared by the ports and the use cases.
//!
//! Adapters translate their library errors into these kinds at the port boundary, so no
//! diesel, docker-api or actix type ever reaches the domain or its callers.

/// Everything that can go wrong in a use case or a port, by kind.
///
/// The kind decides how a caller reacts (the HTTP layer maps it to a status code); the
/// message says what was wrong in words meant for the client, except for
/// [`Error::Internal`], whose message is for the operator's log only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The thing named does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The caller sent something malformed or out of range.
    #[error("{0}")]
    InvalidInput(String),
    /// The request is well-formed but the thing is in the wrong state for it.
    #[error("{0}")]
    Conflict(String),
    /// The caller sent more than a limit allows.
    #[error("{0}")]
    TooLarge(String),
    /// The caller did not prove who it is: no credentials, malformed, unknown or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller has reached a quota.
    #[error("{0}")]
    LimitExceeded(String),
    /// A dependency (the database, the Docker engine, ...) cannot be reached: retry later.
    #[error("{dependency} is unavailable: {message}")]
    Unavailable {
        /// Which dependency: "database", "docker", ...
        dependency: String,
        /// What happened, without secrets.
        message: String,
    },
    /// A bug or an unexpected answer from a dependency. The message is for the log.
    #[error("internal error: {0}")]
    Internal(String),
    /// A path inside a sandbox is not what a file operation needs: the client's to act on,
    /// with a code of its own so that "no such file" is never mistaken for "no such
    /// sandbox".
    #[error("{message}")]
    File {
        /// What is wrong with the path.
        problem: FileProblem,
        /// Which path, and what was found there.
        message: String,
    },
}

/// What a file operation found wrong with a path inside a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileProblem {
    /// Nothing is there (or a directory on the way is missing).
    NotFound,
    /// A directory is where a file was asked for.
    IsDirectory,
    /// A component of the path is a file, not a directory.
    NotADirectory,
    /// The path or name cannot be stored exactly as given.
    InvalidPath,
    /// The sandbox's file system refused it (permissions, read-only).
    PermissionDenied,
    /// Something is already at the path (a move without overwrite, a directory made twice).
    AlreadyExists,
    /// A directory removed without `recursive` has entries.
    NotEmpty,
    /// An edit's old text is not in the file.
    NoMatch,
    /// An edit of one occurrence found its old text more than once.
    AmbiguousMatch,
}

impl FileProblem {
    /// The stable code clients see.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotFound => "file_not_found",
            Self::IsDirectory => "is_directory",
            Self::NotADirectory => "not_a_directory",
            Self::InvalidPath => "invalid_path",
            Self::PermissionDenied => "permission_denied",
            Self::AlreadyExists => "already_exists",
            Self::NotEmpty => "directory_not_empty",
            Self::NoMatch => "no_match",
            Self::AmbiguousMatch => "ambiguous_match",
        }
    }
}

impl Error {
    /// A not-found error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// An invalid-input error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// A conflict (wrong state) error.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }

    /// An unauthorized (not authenticated) error.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(message.into())
    }

    /// An unavailable-dependency error.
    pub fn unavailable(dependency: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unavailable {
            dependency: dependency.into(),
            message: message.into(),
        }
    }

    /// A file operation's path problem.
    pub fn file(problem: FileProblem, message: impl Into<String>) -> Self {
        Self::File {
            problem,
            message: message.into(),
        }
    }

    /// An internal error; the message goes to the log, never to a client.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// Whether the caller caused it (bad input, unknown or ended thing, a limit): the
    /// request log already says so; nothing for an operator to act on, so never logged at
    /// ERROR. `Unavailable` and `Internal` are the operator's.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Unavailable { .. } | Self::Internal(_))
    }

    /// A short stable code for the kind, used in API error bodies and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::InvalidInput(_) => "invalid_input",
            Self::Conflict(_) => "conflict",
            Self::TooLarge(_) => "too_large",
            Self::Unauthorized(_) => "unauthorized",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
            Self::File { problem, .. } => problem.code(),
        }
    }
}

/// Shorthand for results in the domain.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A JSON value's kind, as messages about bad input name it ("must be a string, not a
/// number"), the same in every adapter.
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
