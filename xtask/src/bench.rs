//! `cargo xtask bench [--quick]`: every benchmark of the workspace, then the server's table
//! into docs/BENCHMARKS.md.
//!
//! Full: the adapter micro-benchmarks (their recorded sections in docs/BENCHMARKS.md are
//! kept as they are), then `crates/monza-app/benches/server`, whose markdown replaces the
//! part of docs/BENCHMARKS.md between the two markers below. `--quick`: every benchmark in
//! its quick mode, as a smoke test (fails only when a scenario breaks); the doc is untouched.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::{cargo, env, run};

const START: &str = "<!-- cargo xtask bench: start (generated, do not edit by hand) -->";
const END: &str = "<!-- cargo xtask bench: end -->";

const INTRO: &str = "\
## Server against the raw Docker engine

`crates/monza-app/benches/server` runs the real `monza` binary (release profile) as a child
process and measures it side by side with the Docker engine driven directly through
docker-api, doing the same work in the same run, interleaved A/B (which side goes first
alternates every iteration). The server uses SQLite unless the row says otherwise; the
bench template is the busybox test image with port 8080 published, and the raw side creates
the same container (docker-api's builder cannot express `CapDrop`/`PidsLimit`).

- **create → running**: `POST /api/sandboxes` until the 201 (template resolved, row
  written, container created, started and inspected, row marked running) vs docker-api
  create + start + inspect; one at a time, then 16 at once (each request's own latency).
  Deletion is outside the timing.
- **execute**: `POST …/execute` of `true` and of `yes aaaaaaa | head -c 1048576` (1 MiB of
  output) vs docker-api exec create + start + drain + inspect of `/bin/sh -c` the same
  command, in the same container (through the sandbox agent, `MONZA_AGENT=on`). Each
  monza sample there follows a raw exec (about 50 ms of engine work on the same 2 cores),
  so it is taken on a machine that was just busy or idle; the row “execute `true`, back to
  back” is the same pair in blocks of one side at a time (each block's first call not
  counted), as a client with work queued calls it. A streamed execute
  (`Accept: application/x-ndjson`) of a command that copies a FIFO to stdout: the
  bench writes a line into the FIFO from the host and times it to the client, vs the same
  through a raw attached exec. Then 200 executes of `echo ok` at once on one sandbox vs 200
  raw execs at once (each request's own latency; throughput in the targets).
- **upload / download**: the multipart upload route (spooled to disk first), `PUT
  …/files?path=` with a `Content-Length` (streamed straight in) and the download route vs the
  engine's archive endpoints (`copy_file_into`, `copy_from`), same container. Peak RSS growth is the
  server's `VmHWM` after the transfer minus its `VmRSS` before it (the peak is reset
  through `/proc/PID/clear_refs` before each transfer).
- **write / read 4 KiB at a path**: `PUT` and `GET …/files?path=` of a 4 KiB file (taken
  whole by the sandbox agent, one frame each way) vs the engine's archive endpoints
  (`copy_file_into`, `copy_from`), same container; the target is a p50 of 3 ms.
- **archive in / out**: a tar of 1,000 files of 1 KiB in 10 directories, `PUT` and `GET
  …/files/archive` (checked, rewritten for the sandbox's user, streamed) vs the engine's
  archive endpoints that `docker cp` uses (`copy_to` of the same tar, `copy_from` of
  `DIR/.`), a new directory each round.
- **control plane**: live rows inserted through the repository adapter, then 64 client
  connections (an async reqwest client in the bench, keep-alive, one request after another
  per connection) for 20 s per route, on SQLite (`synchronous = FULL`) and on a fresh
  PostgreSQL database; a 1 s warm-up first. The load generator shares the 2 cores with the
  server, so these figures are a floor.
- **reaper**: 100 sandboxes created, idle past their TTL, then one `reap_expired` pass
  (what each tick runs: claim, mark expired, remove the containers 16 at a time, sweep
  leftovers) in an in-process `Application` vs removing 100 raw containers all at once.
- **footprint**: `VmRSS` of the freshly started idle server, and of the same server idle
  with 100 running sandboxes (after creating them through the API); start-up is from
  spawning the binary to the first 200 from `/ready`, on an already-migrated store with the
  control plane's live rows, 10 times per store.

`cargo xtask bench --quick` runs every scenario small (CI's smoke test, in `cargo xtask
ci`): it fails only if a scenario breaks, never on a number, and does not touch this file.

```
CARGO_TARGET_DIR=/var/cache/monza/target cargo xtask bench
```
";

pub fn bench(args: &[String]) -> Result<()> {
    let mut quick = false;
    for arg in args {
        match arg.as_str() {
            "--quick" => quick = true,
            other => bail!("unknown argument {other:?}: cargo xtask bench [--quick]"),
        }
    }
    env::ensure_all()?;
    let mode: &[&str] = if quick { &["--", "--quick"] } else { &[] };
    for (package, bench) in [
        ("monza-docker", "docker"),
        ("monza-store", "sqlite"),
        ("monza-store", "postgres"),
    ] {
        run(cargo()
            .args(["bench", "-p", package, "--bench", bench])
            .args(mode))?;
    }
    let mut server = cargo();
    server
        .args(["bench", "-p", "monza-app", "--bench", "server"])
        .args(mode);
    if quick {
        return run(&mut server);
    }
    let report = std::env::temp_dir().join(format!("monza-bench-{}.md", std::process::id()));
    run(server.env("MONZA_BENCH_REPORT", &report))?;
    let table = std::fs::read_to_string(&report)
        .with_context(|| format!("the benchmark wrote no report at {}", report.display()))?;
    let _ = std::fs::remove_file(&report);
    let doc = docs_path();
    let text =
        std::fs::read_to_string(&doc).with_context(|| format!("reading {}", doc.display()))?;
    let section = format!("{START}\n{INTRO}\n{table}{END}");
    std::fs::write(&doc, splice(&text, &section))
        .with_context(|| format!("writing {}", doc.display()))?;
    eprintln!("xtask bench: wrote the table into {}", doc.display());
    Ok(())
}

fn docs_path() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR for the process: the checkout being worked on. The
    // compile-time value is only a fallback, because a target directory shared by several
    // checkouts can hand this checkout an xtask binary built in another one.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("docs/BENCHMARKS.md")
}

/// Replaces the generated section, or inserts it before the first `## ` heading.
fn splice(doc: &str, section: &str) -> String {
    if let (Some(start), Some(end)) = (doc.find(START), doc.find(END))
        && start < end
    {
        return format!("{}{section}{}", &doc[..start], &doc[end + END.len()..]);
    }
    match doc.find("\n## ") {
        Some(at) => format!("{}{section}\n\n{}", &doc[..=at], &doc[at + 1..]),
        None => format!("{doc}\n{section}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_goes_before_the_first_heading_then_is_replaced_in_place() {
        let doc = "# Benchmarks\n\nIntro.\n\n## Docker adapter\n\nFigures.\n";
        let once = splice(doc, &format!("{START}\nold\n{END}"));
        assert!(once.starts_with("# Benchmarks\n\nIntro.\n\n<!--"), "{once}");
        assert!(once.contains(&format!("{END}\n\n## Docker adapter\n\nFigures.\n")));
        let twice = splice(&once, &format!("{START}\nnew\n{END}"));
        assert!(twice.contains("new") && !twice.contains("old"), "{twice}");
        assert_eq!(twice.matches(START).count(), 1);
        assert!(twice.ends_with("## Docker adapter\n\nFigures.\n"));
    }
}
