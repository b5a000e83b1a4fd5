//! The [`SandboxRepository`](monza_domain::SandboxRepository) and
//! [`TokenRepository`](monza_domain::TokenRepository) ports on SQL, one adapter for two
//! databases (the way lldap serves several from one SQL crate):
//!
//! - [`sqlite`] (feature `sqlite`): the embedded default store, used when `DATABASE_URL` is
//!   unset. Bundled SQLite behind diesel-async's `SyncConnectionWrapper`, each port call's
//!   statements run in one trip to a blocking thread; one writer with `BEGIN IMMEDIATE`
//!   transactions, WAL readers; ids as UUID text, timestamps as integer microseconds, JSON
//!   as text.
//! - [`postgres`] (feature `postgres`): the store for production and several replicas.
//!   diesel-async over tokio-postgres (no libpq) with a deadpool pool; `uuid`,
//!   `timestamptz` and `jsonb` columns.
//!
//! The queries, rows, tokens and the port implementations are written once, in `common`,
//! over diesel-async's `AsyncConnection`, and compiled once per backend (each backend
//! module includes them with its own schema, column types and connection, since diesel
//! checks every statement against the backend's column types). What really differs lives
//! in each backend's `specific` module: claiming expired rows (`FOR UPDATE SKIP LOCKED`
//! against SQLite's single writer), batched heartbeats, the locks of the tenant limit and
//! the first token, and how a connection is opened, migrated and made transactional.
//!
//! Both pass `monza_domain::testing`'s one contract suite. Every write is committed before
//! the call returns. No diesel, driver or pool type leaves the crate.

// `common/` is compiled once per backend on purpose (see above).
#![allow(clippy::duplicate_mod)]

/// Runs `$body` in a transaction (diesel's own `BEGIN`) on the connection `$conn` gives;
/// committed before it returns, rolled back on an error. Each backend builds its
/// `in_transaction!` / `in_read!` on it.
#[allow(unused_macros)]
macro_rules! transaction_on {
    ($conn:expr, |$c:ident| $body:expr) => {{
        let mut conn = $conn;
        let result: crate::error::Tx<_> =
            diesel_async::AsyncConnection::transaction(&mut *conn, async |$c: &mut super::Conn| {
                $body.await
            })
            .await;
        result.map_err(monza_domain::Error::from)
    }};
}

/// What a port call's statements take along, owned, as each backend's `in_transaction!` /
/// `in_read!` lists it (`[id, filter, row = row]`): `name` is `name.to_owned()`, `name =
/// value` is `value`. SQLite runs the statements on a blocking thread, which needs them
/// `'static`; PostgreSQL takes the same copies, small beside a round trip.
#[allow(unused_macros)]
macro_rules! owned {
    ($name:ident) => {
        $name.to_owned()
    };
    ($name:ident = $value:expr) => {
        $value
    };
}

mod error;
mod pool;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
