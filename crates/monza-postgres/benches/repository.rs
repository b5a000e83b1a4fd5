//! The repository benchmark on PostgreSQL (a fresh database on `TEST_DATABASE_URL`,
//! default `postgres://postgres:postgres@127.0.0.1:5432/postgres`, dropped afterwards).
//!
//! `cargo bench -p monza-postgres --bench repository` (add `-- --quick`, or set
//! `MONZA_BENCH_QUICK=1`, for a tiny run).

fn main() {}
