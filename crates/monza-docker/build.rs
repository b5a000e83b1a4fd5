#![allow(clippy::expect_used)] // a build script reports a failure by panicking
//! Builds the static sandbox agent (`monza-agent`) for `include_bytes!`, so that a plain
//! `cargo build`/`cargo run -p monza-app` carries it with no extra step.
//!
//! A nested `cargo build -p monza-agent --release --target x86_64-unknown-linux-gnu` with
//! `-C target-feature=+crt-static`, into a target directory under `OUT_DIR` (never the outer
//! build's, whose lock the outer cargo holds). The outer build's rustflags and clippy wrapper
//! are not passed on. `MONZA_AGENT_BIN=/path/to/static/monza-agent` skips the nested build
//! and embeds that file instead.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    println!("cargo::rerun-if-env-changed=MONZA_AGENT_BIN");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let embedded = out_dir.join("monza-agent");
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest_dir.join("../..");

    if let Some(prebuilt) = std::env::var_os("MONZA_AGENT_BIN").filter(|p| !p.is_empty()) {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo::rerun-if-changed={}", prebuilt.display());
        copy(&prebuilt, &embedded);
        return;
    }

    for watched in [
        "crates/monza-agent/src",
        "crates/monza-agent/Cargo.toml",
        "crates/monza-agent-protocol/src",
        "crates/monza-agent-protocol/Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out_dir.join("agent-target");
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "--locked",
            "--release",
            "--package",
            "monza-agent",
            "--bin",
            "monza-agent",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // The embedded copy needs no debug info: 8 MB → about 1 MB.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("running the nested cargo build of monza-agent");
    assert!(
        status.success(),
        "the nested build of the static monza-agent failed ({status}); \
         set MONZA_AGENT_BIN to a prebuilt static agent to skip it"
    );
    copy(
        &target_dir.join(TARGET).join("release").join("monza-agent"),
        &embedded,
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
