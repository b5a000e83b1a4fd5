//! The connection pool both backends build (PostgreSQL's connections, SQLite's readers).

use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{Manager, Pool};
use monza_domain::{Error, Result};

/// A pool of at most `size` connections (at least one): a call waits up to `wait` for a
/// free one, opening or checking one may take up to `connect`, and every wait ends in an
/// error naming the database rather than a hang.
pub(crate) fn build<M: Manager>(
    manager: M,
    size: usize,
    wait: Duration,
    connect: Duration,
    database: &str,
) -> Result<Pool<M>> {
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(wait))
        .create_timeout(Some(connect))
        .recycle_timeout(Some(connect))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::internal(format!("building the {database} pool: {e}")))
}
