//! `DockerRuntime` against raw docker-api calls doing the same work, in one run, interleaved
//! A/B (the order alternates every iteration) against the real engine.
//!
//! - create+start: the adapter's `create` + `start` (image check, hardened create, start,
//!   inspect for ports) vs docker-api `create` + `start` + `inspect` of an equivalent
//!   container (docker-api cannot express `CapDrop`/`PidsLimit`; the rest is the same);
//! - exec round-trip of `true`: the adapter's `exec` through Docker exec (with its timeout
//!   wrapper), and through the sandbox agent, each vs docker-api exec create + start + drain +
//!   inspect;
//! - copy of 100 MiB in and out: the adapter's streaming `upload`/`download` vs docker-api's
//!   `copy_file_into` (whole file in memory, as its API takes it) and `copy_from`; throughput,
//!   and peak RSS growth of this process during the operation (`VmHWM` after resetting it
//!   through `/proc/self/clear_refs`).
//!
//! `cargo bench -p monza-docker --bench docker` (full) or with `-- --quick` /
//! `MONZA_BENCH_QUICK=1` (a few iterations, for CI).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is the report

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use docker_api::Docker;
use docker_api::opts::{
    ContainerCreateOpts, ContainerRemoveOpts, ExecCreateOpts, ExecStartOpts, PublishPort,
};
use futures::{Stream, StreamExt};
use monza_docker::{DockerRuntime, DockerSettings, SANDBOX_CAPABILITIES};
use monza_domain::testing::fixtures::{self, random_bytes};
use monza_domain::testing::in_ci;
use monza_domain::{
    Command, ContainerRuntime, ContainerSpec, ExecRequest, RunOptions, SandboxId, Template,
    UploadFile,
};

const IMAGE: &str = "monza-test/busybox:latest";
const COPY_BYTES: u64 = 100 * 1024 * 1024;
const KEEP_ALIVE: &str = "trap 'exit 0' TERM INT\nwhile sleep 1000 & wait $!; do :; done";

struct Plan {
    create: usize,
    exec: usize,
    copy: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("MONZA_BENCH_QUICK").is_ok_and(|v| v == "1" || v == "true");
    let plan = if quick {
        Plan {
            create: 4,
            exec: 20,
            copy: 2,
        }
    } else {
        Plan {
            create: 30,
            exec: 300,
            copy: 10,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(plan, quick));
}

async fn run(plan: Plan, quick: bool) {
    let settings = DockerSettings {
        agent: false,
        ..DockerSettings::from_docker_host_env()
    };
    let adapter = DockerRuntime::new(settings.clone()).unwrap();
    if let Err(e) = adapter.ping().await {
        eprintln!(
            "!!! SKIPPED: Docker engine at {} is unavailable ({e})",
            settings.host
        );
        if in_ci() {
            std::process::exit(1);
        }
        return;
    }
    let docker = Docker::new(&settings.host).unwrap();
    println!(
        "monza-docker benchmark ({} mode), engine {}, image {IMAGE}",
        if quick { "quick" } else { "full" },
        settings.host
    );
    println!();
    println!(
        "| operation | n | adapter median | p90 | p99 | raw median | p90 | p99 | adapter/raw |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");

    // Warm-up: one of each, unmeasured.
    let id = adapter.create(&spec()).await.unwrap().id;
    adapter.start(&id).await.unwrap();
    adapter.remove(&id).await.unwrap();
    let id = raw_create_start(&docker).await;
    raw_remove(&docker, &id).await;

    // create + start
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..plan.create {
        for adapter_turn in order(i) {
            if adapter_turn {
                let started = Instant::now();
                let id = adapter.create(&spec()).await.unwrap().id;
                adapter.start(&id).await.unwrap();
                a.push(started.elapsed());
                adapter.remove(&id).await.unwrap();
            } else {
                let started = Instant::now();
                let id = raw_create_start(&docker).await;
                b.push(started.elapsed());
                raw_remove(&docker, &id).await;
            }
        }
    }
    row("create+start", &a, &b);

    // exec `true`, in one long-lived sandbox made with the agent, through Docker exec and
    // through the agent. The agent's binary and sockets live in a directory removed after.
    let agent_dir = tempfile::Builder::new()
        .prefix("monza-bench-agent-")
        .tempdir()
        .unwrap();
    let with_agent = DockerRuntime::new(DockerSettings {
        agent: true,
        agent_dir: agent_dir.path().to_owned(),
        ..settings.clone()
    })
    .unwrap();
    with_agent.install_agent().expect("installing the agent");
    let id = with_agent.create(&spec()).await.unwrap().id;
    with_agent.start(&id).await.unwrap();
    let connected = Instant::now();
    while !with_agent.agent_connected(&id) {
        assert!(
            connected.elapsed() < Duration::from_secs(30),
            "the agent never connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let request = ExecRequest {
        command: Command::Argv(vec!["true".into()]),
        workdir: None,
        env: BTreeMap::new(),
        user: None,
        max_output_bytes: 64 * 1024,
        timeout: Some(Duration::from_secs(60)),
        stdin: None,
    };
    for (label, runtime) in [
        ("exec `true` (Docker exec)", &adapter),
        ("exec `true` (agent)", &with_agent),
    ] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..plan.exec {
            for adapter_turn in order(i) {
                let started = Instant::now();
                if adapter_turn {
                    let out = runtime.exec(&id, &request).await.unwrap();
                    assert_eq!(out.exit_code, 0);
                    a.push(started.elapsed());
                } else {
                    assert_eq!(raw_exec_true(&docker, &id).await, 0);
                    b.push(started.elapsed());
                }
            }
        }
        row(label, &a, &b);
    }
    assert!(
        with_agent.agent_execs(&id) >= plan.exec as u64,
        "the agent row did not go through the agent"
    );

    // copy 100 MiB in and out.
    let pattern = Bytes::from(random_bytes(1024 * 1024, 7));
    let whole: Vec<u8> = pattern
        .iter()
        .copied()
        .cycle()
        .take(COPY_BYTES as usize)
        .collect();
    let [mut a_in, mut b_in, mut a_out, mut b_out]: [Copies; 4] = Default::default();
    for i in 0..plan.copy {
        for adapter_turn in order(i) {
            if adapter_turn {
                a_in.measure(async {
                    adapter
                        .upload(&id, "/workspace", upload(&pattern))
                        .await
                        .unwrap();
                })
                .await;
                a_out
                    .measure(async {
                        let download = adapter.download(&id, "/workspace/bench.bin").await;
                        assert_eq!(byte_count(download.unwrap().content).await, COPY_BYTES);
                    })
                    .await;
            } else {
                let container = docker.containers().get(&id);
                b_in.measure(async {
                    container
                        .copy_file_into("/workspace/raw.bin", &whole)
                        .await
                        .unwrap();
                })
                .await;
                b_out
                    .measure(async {
                        let tar = container.copy_from("/workspace/raw.bin");
                        assert!(byte_count(tar).await >= COPY_BYTES);
                    })
                    .await;
            }
        }
    }
    with_agent.remove(&id).await.unwrap();
    row("copy in 100 MiB", &a_in.times, &b_in.times);
    row("copy out 100 MiB", &a_out.times, &b_out.times);
    println!();
    println!(
        "| copy | adapter MiB/s (median) | raw MiB/s (median) | adapter/raw throughput | adapter peak RSS growth | raw peak RSS growth |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, a, b) in [("in", &a_in, &b_in), ("out", &a_out, &b_out)] {
        let ta = throughput(median(&a.times));
        let tb = throughput(median(&b.times));
        println!(
            "| {name} | {ta:.0} | {tb:.0} | {:.0} % | {:.1} MiB | {:.1} MiB |",
            100.0 * ta / tb,
            mib(a.rss_growth),
            mib(b.rss_growth)
        );
    }
}

/// One side's copies in one direction: how long each took, and the largest growth of this
/// process's peak RSS during one.
#[derive(Default)]
struct Copies {
    times: Vec<Duration>,
    rss_growth: u64,
}

impl Copies {
    /// Runs one copy, timing it and measuring how much the peak RSS grows meanwhile.
    async fn measure(&mut self, copy: impl Future<Output = ()>) {
        let base = reset_peak();
        let started = Instant::now();
        copy.await;
        self.times.push(started.elapsed());
        self.rss_growth = self.rss_growth.max(peak().saturating_sub(base));
    }
}

/// Reads a stream of chunks to its end; how many bytes it gave.
async fn byte_count<C: AsRef<[u8]>, E: std::fmt::Debug>(
    chunks: impl Stream<Item = Result<C, E>>,
) -> u64 {
    let mut chunks = std::pin::pin!(chunks);
    let mut n = 0u64;
    while let Some(chunk) = chunks.next().await {
        n += chunk.unwrap().as_ref().len() as u64;
    }
    n
}

/// Adapter first on even iterations, raw first on odd ones.
fn order(i: usize) -> [bool; 2] {
    if i.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    }
}

fn spec() -> ContainerSpec {
    fixtures::container_spec(Template {
        container_env: BTreeMap::from([("A".into(), "1".into())]),
        run_options: RunOptions {
            labels: BTreeMap::from([("monza.bench".into(), "true".into())]),
            ..RunOptions::default()
        },
        ..fixtures::template("bench", IMAGE)
    })
}

/// The same container through docker-api's builder, as far as it goes, then start and
/// inspect (to read the published port, as the adapter does).
async fn raw_create_start(docker: &Docker) -> String {
    let id = SandboxId::new_random();
    let opts = ContainerCreateOpts::builder()
        .name(format!("monza-raw-{id}"))
        .image(IMAGE)
        .labels([
            ("monza.sandbox_id", id.to_string()),
            ("monza.managed", "true".to_owned()),
            ("monza.bench", "true".to_owned()),
        ])
        .env(["A=1"])
        .working_dir("/workspace")
        .entrypoint(["/bin/sh"])
        .command(["-c", KEEP_ALIVE])
        .expose(
            PublishPort::tcp(8080),
            docker_api::opts::HostPort::with_ip(0, "127.0.0.1".into()),
        )
        .memory(512 * 1024 * 1024)
        .memory_swap(512 * 1024 * 1024)
        .nano_cpus(1_000_000_000)
        .privileged(false)
        .security_options(["no-new-privileges"])
        .capabilities(SANDBOX_CAPABILITIES.to_vec())
        .build();
    let container = docker.containers().create(&opts).await.unwrap();
    container.start().await.unwrap();
    let inspect = container.inspect().await.unwrap();
    assert!(inspect.network_settings.and_then(|n| n.ports).is_some());
    container.id().to_string()
}

async fn raw_remove(docker: &Docker, id: &str) {
    let opts = ContainerRemoveOpts::builder()
        .force(true)
        .volumes(true)
        .build();
    docker.containers().get(id).remove(&opts).await.unwrap();
}

async fn raw_exec_true(docker: &Docker, id: &str) -> isize {
    let opts = ExecCreateOpts::builder()
        .command(["true"])
        .attach_stdout(true)
        .attach_stderr(true)
        .build();
    let exec = docker_api::Exec::create(docker.clone(), id, &opts)
        .await
        .unwrap();
    let mut stream = exec.start(&ExecStartOpts::default()).await.unwrap();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    exec.inspect().await.unwrap().exit_code.unwrap_or(-1)
}

/// 100 MiB as 64 KiB slices of one 1 MiB pattern: the source holds no copy of the file.
fn upload(pattern: &Bytes) -> UploadFile {
    let pattern = pattern.clone();
    let chunks = (0..COPY_BYTES / (64 * 1024)).map(move |i| {
        let at = ((i * 64 * 1024) % pattern.len() as u64) as usize;
        Ok(pattern.slice(at..at + 64 * 1024))
    });
    UploadFile {
        options: monza_domain::WriteOptions::default(),
        name: "bench.bin".into(),
        size: COPY_BYTES,
        content: futures::stream::iter(chunks).boxed(),
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Resets the peak RSS to the current RSS and returns it.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5")
        .expect("resetting VmHWM via /proc/self/clear_refs");
    status_kib("VmRSS:")
}

fn peak() -> u64 {
    status_kib("VmHWM:")
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50.0)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn throughput(d: Duration) -> f64 {
    mib(COPY_BYTES) / d.as_secs_f64()
}

fn row(name: &str, a: &[Duration], b: &[Duration]) {
    println!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.3} |",
        a.len(),
        ms(median(a)),
        ms(percentile(a, 90.0)),
        ms(percentile(a, 99.0)),
        ms(median(b)),
        ms(percentile(b, 90.0)),
        ms(percentile(b, 99.0)),
        median(a).as_secs_f64() / median(b).as_secs_f64()
    );
}
