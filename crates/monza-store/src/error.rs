//! Translating diesel's and the pool's errors into the domain's, at the port boundary (one
//! mapping for both backends).

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError as ManagerError;
use diesel_async::pooled_connection::deadpool::PoolError;
use monza_domain::Error;

pub(crate) const DEPENDENCY: &str = "database";

/// What a query can fail with: a database error (translated later) or a domain refusal
/// (not-found, conflict), both rolling the transaction back.
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

/// A query's result, its error not yet translated.
pub(crate) type Tx<T> = Result<T, TxError>;

/// diesel `NotFound` → not-found, unique violation → conflict, a lost connection, a broken
/// transaction or a locked SQLite file → unavailable, anything else → internal.
pub(crate) fn db_error(e: DieselError) -> Error {
    match e {
        DieselError::NotFound => Error::not_found("not found"),
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            Error::conflict(info.message().to_owned())
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            info,
        ) => unavailable(format!(
            "lost the connection to the database: {}",
            info.message()
        )),
        DieselError::DatabaseError(_, info) if is_busy(info.message()) => {
            unavailable(format!("SQLite is busy: {}", info.message()))
        }
        DieselError::BrokenTransactionManager => {
            unavailable("the database connection was left in a broken transaction")
        }
        other => Error::internal(format!("database: {other}")),
    }
}

/// SQLite's "another connection holds the lock" (past the busy timeout).
fn is_busy(message: &str) -> bool {
    message.contains("database is locked") || message.contains("database is busy")
}

/// Pool timeouts and failed connects → unavailable.
pub(crate) fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Timeout(kind) => unavailable(format!(
            "timed out waiting for a database connection ({kind:?})"
        )),
        PoolError::Backend(ManagerError::ConnectionError(e)) => {
            unavailable(format!("cannot connect to the database: {e}"))
        }
        PoolError::Backend(ManagerError::QueryError(e)) => db_error(e),
        PoolError::Closed => unavailable("the database pool is closed"),
        other => Error::internal(format!("database pool: {other}")),
    }
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
