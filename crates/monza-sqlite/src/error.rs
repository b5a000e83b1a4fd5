//! Translating diesel's and the pool's errors into the domain's, at the port boundary.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use monza_domain::Error;

const DEPENDENCY: &str = "database";

/// What a query closure can fail with: a database error (translated later) or a domain
/// refusal (not-found, conflict), both rolling the transaction back.
#[derive(Debug)]
pub(crate) enum TxError {
    Db(DieselError),
    Domain(Error),
}

impl From<DieselError> for TxError {
    fn from(e: DieselError) -> Self {
        Self::Db(e)
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        Self::Domain(e)
    }
}

impl From<TxError> for Error {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Db(e) => db_error(e),
            TxError::Domain(e) => e,
        }
    }
}

/// diesel `NotFound` → not-found, unique violation → conflict, a locked or unreachable
/// database → unavailable, anything else → internal.
pub(crate) fn db_error(e: DieselError) -> Error {
    match e {
        DieselError::NotFound => Error::not_found("not found"),
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            Error::conflict(info.message().to_owned())
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            info,
        ) => Error::unavailable(DEPENDENCY, info.message().to_owned()),
        DieselError::DatabaseError(_, info) if is_busy(info.message()) => {
            Error::unavailable(DEPENDENCY, format!("SQLite is busy: {}", info.message()))
        }
        other => Error::internal(format!("SQLite: {other}")),
    }
}

fn is_busy(message: &str) -> bool {
    message.contains("database is locked") || message.contains("database is busy")
}

pub(crate) fn unavailable(message: impl Into<String>) -> Error {
    Error::unavailable(DEPENDENCY, message)
}

/// Maps a unique-constraint violation to a conflict saying `message`; other errors pass.
pub(crate) fn unique_conflict(message: String) -> impl FnOnce(DieselError) -> TxError {
    move |e| match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
            Error::conflict(message).into()
        }
        other => other.into(),
    }
}
