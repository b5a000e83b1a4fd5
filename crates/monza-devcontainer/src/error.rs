//! Why a devcontainer.json cannot become a template.

/// Why a devcontainer.json document cannot be read or turned into a [`monza_domain::Template`].
///
/// Every kind becomes the domain's invalid-input error at the port, with this message; the
/// kinds stay distinct here so `monza templates check` and the tests can tell a broken file
/// from a valid one that monza does not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON with comments, or not an object.
    #[error("malformed devcontainer.json: {message}")]
    Malformed {
        /// What is wrong, with the line and column when known.
        message: String,
    },
    /// A valid configuration that monza cannot run (docker compose).
    #[error("unsupported: {reason}")]
    Unsupported {
        /// Why.
        reason: String,
    },
    /// A field has the wrong type or value, or a required field is missing.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as a JSON path (`forwardPorts[1]`, `build.dockerfile`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A field asks for something monza refuses: an option that weakens isolation (allowed
    /// only when the operator allows unsafe templates) or one monza does not apply.
    #[error("{field}: refused: {reason}")]
    Refused {
        /// The field, or the `runArgs` flag.
        field: String,
        /// Why, and whether an operator can allow it.
        reason: String,
    },
}

impl ParseError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn refused(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Refused {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Whether this is the unsupported (compose) case rather than a broken file.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Unsupported { .. })
    }
}

/// The name of the operator setting that allows unsafe template options, for messages.
pub const ALLOW_UNSAFE_SETTING: &str = "MONZA_ALLOW_UNSAFE_TEMPLATES";
