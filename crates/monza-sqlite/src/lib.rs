//! The [`SandboxRepository`](monza_domain::SandboxRepository) port on SQLite: monza's
//! embedded default store, used when `DATABASE_URL` is unset.
//!
//! diesel's SQLite backend (libsqlite3 compiled in) behind diesel-async's
//! `SyncConnectionWrapper`; the schema comes from `migrations/sqlite`, embedded and applied
//! when the repository opens. Ids are stored as UUID text, timestamps as integer
//! microseconds since the Unix epoch (finer precision is truncated), JSON as text.
//!
//! The same repository is also the [`TokenRepository`](monza_domain::TokenRepository) port
//! (table `api_tokens`: ids, tenants, flags, times and SHA-256 hashes, never a token).
//!
//! Durability: every write is committed in its own `BEGIN IMMEDIATE` transaction before
//! the call returns. With [`Synchronous::Full`] (the default) the commit is fsynced, so it
//! survives a power loss; [`Synchronous::Normal`] survives a crash of monza only.

mod error;
mod queries;
mod repository;
mod rows;
mod schema;
mod tokens;

pub use repository::{
    SqliteLocation, SqliteOptions, SqliteSandboxRepository, Synchronous, parse_sqlite_url,
};
