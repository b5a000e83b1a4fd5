//! The [`SandboxRepository`](monza_domain::SandboxRepository) port on PostgreSQL.
//!
//! diesel 2.3 with diesel-async (pure Rust, no libpq) and a deadpool pool. The schema comes
//! from `migrations/postgres`, embedded at build time and applied at start-up by
//! [`PgSandboxRepository::connect`], with retry. Timestamps are `timestamptz`: anything
//! finer than a microsecond is truncated. `claim_expired` uses `FOR UPDATE SKIP LOCKED`, so
//! several monza processes can reap one database.
//!
//! The same repository is also the [`TokenRepository`](monza_domain::TokenRepository) port
//! (table `api_tokens`: ids, tenants, flags, times and SHA-256 hashes, never a token).
//!
//! TLS is not supported yet (connections use `NoTls`).

mod error;
mod queries;
mod repository;
mod rows;
mod schema;
mod tokens;
mod url;

pub use repository::{PgOptions, PgSandboxRepository};
pub use url::{PgUrl, parse_postgres_url};
