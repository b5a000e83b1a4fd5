//! Support for the adapter crates' tests (feature `testing`); never used in production.

use std::fmt::Display;

/// Whether this run is CI (`CI=true`), where a missing dependency is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Unwraps a connection to a dependency a test needs (Docker, PostgreSQL, ...).
///
/// In CI an unreachable dependency fails the test. Elsewhere the test is skipped with one
/// loud line on stderr saying what is missing; `cargo xtask test` brings everything up.
#[allow(clippy::panic)]
pub fn require<T, E: Display>(what: &str, result: Result<T, E>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e) if in_ci() => panic!("{what} is required in CI but unavailable: {e}"),
        Err(e) => {
            eprintln!(
                "!!! SKIPPED: {what} is unavailable ({e}); run `cargo xtask test` to bring it up"
            );
            None
        }
    }
}

pub mod fixtures;
pub mod repository_bench;
pub mod repository_contract;
pub mod token_contract;
