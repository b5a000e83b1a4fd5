//! Rebuilds the crate when a migration changes, so `embed_migrations!` never embeds a stale
//! copy.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations/sqlite");
    println!("cargo:rerun-if-changed=../../migrations/postgres");
}
