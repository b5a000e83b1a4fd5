//! monza's developer tasks. Run `cargo xtask help`.

mod arch;
mod bench;
mod env;
mod fuzz;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const HELP: &str = "\
cargo xtask <task>

Tasks:
  test        bring up Docker, PostgreSQL and the test images, install schemathesis,
              then run every test (the schema fuzzer on both stores among them)
  fuzz        only the schema fuzzer (monza-app's `schema_fuzz` target) on both stores
  ci          cargo fmt --check, cargo clippy -D warnings, `test`, `faults`, then
              `bench --quick`
  faults      the fault tests (monza-app's `faults` target: kill -9, docker rm -f, the
              engine and PostgreSQL stopped and started, two replicas, a soak), one at a
              time; they stop shared services, so `test` leaves them out
  bench       every benchmark, then the server's table into docs/BENCHMARKS.md;
              --quick: each scenario small, as a smoke test (the doc is left alone)
  env         only bring up Docker, PostgreSQL and the test images
  arch        check the crate dependency rules (also run as a test)
  help        this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let result = match task {
        "test" => test(&args[1..]),
        "ci" => ci(&args[1..]),
        "faults" => faults(&args[1..]),
        "fuzz" => fuzz(&args[1..]),
        "bench" => bench::bench(&args[1..]),
        "env" => env::ensure_all(),
        "arch" => arch::check_workspace(),
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(anyhow::anyhow!("unknown task {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Brings up what the tests need, then runs every test of the workspace.
fn test(extra: &[String]) -> Result<()> {
    env::ensure_all()?;
    let st = fuzz::ensure_schemathesis()?;
    let mut cmd = cargo();
    cmd.env(fuzz::ENV, st);
    if has_nextest() {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(extra);
    run(&mut cmd)
}

/// The schema fuzzer alone (it also runs in `test`).
fn fuzz(extra: &[String]) -> Result<()> {
    env::ensure_all()?;
    let st = fuzz::ensure_schemathesis()?;
    let mut cmd = cargo();
    cmd.env(fuzz::ENV, st);
    let selection = ["-p", "monza-app", "--test", "schema_fuzz", "--no-fail-fast"];
    if has_nextest() {
        cmd.args(["nextest", "run"]).args(selection);
    } else {
        cmd.arg("test").args(selection);
    }
    cmd.args(extra);
    run(&mut cmd)
}

/// The fault tests, serially: behind monza-app's `faults` feature so `test` never runs them
/// beside other tests (they stop Docker and PostgreSQL for a few seconds each).
fn faults(extra: &[String]) -> Result<()> {
    env::ensure_all()?;
    let mut cmd = cargo();
    let selection = [
        "-p",
        "monza-app",
        "--features",
        "faults",
        "--test",
        "faults",
        "--no-fail-fast",
    ];
    if has_nextest() {
        cmd.args(["nextest", "run"])
            .args(selection)
            .args(["--test-threads", "1"]);
        cmd.args(extra);
    } else {
        cmd.arg("test").args(selection).args(extra);
        cmd.args(["--", "--test-threads=1"]);
    }
    run(&mut cmd)
}

fn ci(extra: &[String]) -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    test(extra)?;
    // After the other tests, never beside them: they stop the engine and the database.
    faults(&[])?;
    // A smoke test of every benchmark scenario: fails on a broken scenario, not a slow one.
    bench::bench(&["--quick".to_owned()])
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a command with inherited output; a non-zero exit is an error naming it.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
