//! Translating diesel's and the pool's errors into the domain's, at the port boundary.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError as ManagerError;
use diesel_async::pooled_connection::deadpool::PoolError;
use monza_domain::Error;

pub(crate) const DEPENDENCY: &str = "database";

/// What a transaction can fail with: a database error (translated later) or a domain
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

/// diesel `NotFound` → not-found, unique violation → conflict, a lost connection →
/// unavailable, anything else → internal.
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
            "lost the connection to PostgreSQL: {}",
            info.message()
        )),
        DieselError::BrokenTransactionManager => {
            unavailable("the PostgreSQL connection was left in a broken transaction")
        }
        other => Error::internal(format!("PostgreSQL: {other}")),
    }
}

/// Pool timeouts and failed connects → unavailable.
pub(crate) fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Timeout(kind) => unavailable(format!(
            "timed out waiting for a PostgreSQL connection ({kind:?})"
        )),
        PoolError::Backend(ManagerError::ConnectionError(e)) => {
            unavailable(format!("cannot connect to PostgreSQL: {e}"))
        }
        PoolError::Backend(ManagerError::QueryError(e)) => db_error(e),
        PoolError::Closed => unavailable("the PostgreSQL pool is closed"),
        other => Error::internal(format!("PostgreSQL pool: {other}")),
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
