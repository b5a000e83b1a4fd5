//! The repository benchmark, shared by the adapter crates' `benches/repository.rs`.
//!
//! It fills a store with sandboxes, then measures get-by-id, the first page of a tenant's
//! live sandboxes, heartbeats from concurrent writers and claiming expired sandboxes, and
//! prints a Markdown table. Runtime-agnostic: concurrency comes from `futures`.

use std::fmt;
use std::time::{Duration as StdDuration, Instant};

use futures::StreamExt;
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};
use crate::ports::Admission;
use crate::sandbox::{SandboxFilter, SandboxId, SandboxStatus, StatusFilter, TenantId};
use crate::testing::repository_contract::{Repo, micros, sample_sandbox};

/// How much work the benchmark does.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Sandboxes written before measuring.
    pub sandboxes: usize,
    /// Tenants they are spread over.
    pub tenants: usize,
    /// `get` calls measured.
    pub gets: usize,
    /// `list` calls measured.
    pub lists: usize,
    /// First-page size of a listing.
    pub page: u32,
    /// Concurrent heartbeat writers.
    pub writers: usize,
    /// Heartbeats in total, over all writers.
    pub heartbeats: usize,
    /// `claim_expired` calls measured.
    pub claims: usize,
    /// Rows each claim takes.
    pub claim_batch: u32,
}

impl BenchConfig {
    /// The recorded run: 10,000 sandboxes.
    pub fn full() -> Self {
        Self {
            sandboxes: 10_000,
            tenants: 10,
            gets: 5_000,
            lists: 500,
            page: 50,
            writers: 16,
            heartbeats: 32_000,
            claims: 10,
            claim_batch: 100,
        }
    }

    /// A tiny run that only proves the benchmark works (CI).
    pub fn quick() -> Self {
        Self {
            sandboxes: 400,
            tenants: 4,
            gets: 100,
            lists: 20,
            page: 50,
            writers: 16,
            heartbeats: 320,
            claims: 2,
            claim_batch: 100,
        }
    }

    /// [`Self::quick`] when the command line has `--quick` or `MONZA_BENCH_QUICK=1`,
    /// else [`Self::full`].
    pub fn from_env() -> Self {
        let flag = std::env::args().any(|a| a == "--quick");
        let env = std::env::var("MONZA_BENCH_QUICK").is_ok_and(|v| v == "1" || v == "true");
        if flag || env {
            Self::quick()
        } else {
            Self::full()
        }
    }
}

/// One measured operation.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// What was measured.
    pub operation: String,
    /// How many calls.
    pub calls: usize,
    /// Median latency.
    pub median: StdDuration,
    /// 99th-percentile latency.
    pub p99: StdDuration,
    /// Calls per second of wall time, all concurrent callers together.
    pub per_second: f64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Which store.
    pub store: String,
    /// How many sandboxes were in it.
    pub sandboxes: usize,
    /// How long filling it took.
    pub fill: StdDuration,
    /// One row per operation.
    pub rows: Vec<Measurement>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "repository benchmark: {}, {} sandboxes (filled in {:.1} s)\n",
            self.store,
            self.sandboxes,
            self.fill.as_secs_f64()
        )?;
        writeln!(f, "| operation | calls | median | p99 | ops/s |")?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        for row in &self.rows {
            writeln!(
                f,
                "| {} | {} | {:.3} ms | {:.3} ms | {:.0} |",
                row.operation,
                row.calls,
                row.median.as_secs_f64() * 1e3,
                row.p99.as_secs_f64() * 1e3,
                row.per_second
            )?;
        }
        Ok(())
    }
}

fn measurement(operation: String, mut samples: Vec<StdDuration>, wall: StdDuration) -> Measurement {
    samples.sort();
    let calls = samples.len();
    let at = |q: f64| {
        let rank = ((calls as f64) * q).ceil() as usize;
        samples
            .get(rank.saturating_sub(1).min(calls.saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Measurement {
        operation,
        calls,
        median: at(0.5),
        p99: at(0.99),
        per_second: calls as f64 / wall.as_secs_f64().max(f64::EPSILON),
    }
}

fn tenant(i: usize) -> Result<TenantId> {
    TenantId::new(&format!("tenant-{i}"))
}

/// What a store's benchmark program does: [`run`] with the configuration from the
/// environment ([`BenchConfig::from_env`]), its report printed as a Markdown table.
pub async fn run_and_print(store: &str, repo: Repo) -> Result<()> {
    let report = run(store, repo, &BenchConfig::from_env()).await?;
    println!("{report}");
    Ok(())
}

/// Fills `repo` (which must be empty) and measures it.
pub async fn run(store: &str, repo: Repo, config: &BenchConfig) -> Result<BenchReport> {
    let now = micros(OffsetDateTime::now_utc());
    let expired_rows = config.claims * config.claim_batch as usize;
    if expired_rows > config.sandboxes / 2 {
        return Err(Error::invalid("too few sandboxes for the claims asked for"));
    }

    // Fill: mostly running; `expired_rows` running but past expiry; some creating, error
    // and ended ones, over `tenants` tenants, created a second apart.
    let mut sandboxes = Vec::with_capacity(config.sandboxes);
    let mut running = Vec::new();
    for i in 0..config.sandboxes {
        let status = match i % 10 {
            _ if i < expired_rows => SandboxStatus::Running,
            0 => SandboxStatus::Creating,
            1 => SandboxStatus::Deleted,
            2 => SandboxStatus::Error,
            _ => SandboxStatus::Running,
        };
        let created = now - Duration::seconds((config.sandboxes - i) as i64);
        let mut sandbox = sample_sandbox(tenant(i % config.tenants)?.as_str(), status, created);
        if i < expired_rows {
            sandbox.expires_at = now - Duration::seconds(1 + i as i64);
        } else {
            sandbox.expires_at = now + Duration::hours(1);
            if status == SandboxStatus::Running {
                running.push(sandbox.id);
            }
        }
        sandboxes.push(sandbox);
    }
    let ids: Vec<SandboxId> = sandboxes.iter().map(|s| s.id).collect();
    let started = Instant::now();
    let results: Vec<Result<Admission>> = futures::stream::iter(&sandboxes)
        .map(|sandbox| repo.insert(sandbox, None))
        .buffer_unordered(config.writers)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<Admission>>>()?;
    let fill = started.elapsed();
    let mut rows = Vec::new();

    // get by id, one caller.
    let mut samples = Vec::with_capacity(config.gets);
    let started = Instant::now();
    for i in 0..config.gets {
        let id = ids[(i * 7_919) % ids.len()];
        let t = Instant::now();
        repo.get(id).await?;
        samples.push(t.elapsed());
    }
    rows.push(measurement("get by id".into(), samples, started.elapsed()));

    // First page of a tenant's live sandboxes, one caller.
    let mut samples = Vec::with_capacity(config.lists);
    let started = Instant::now();
    for i in 0..config.lists {
        let filter = SandboxFilter {
            tenant: Some(tenant(i % config.tenants)?),
            status: StatusFilter::Live,
            limit: Some(config.page),
        };
        let t = Instant::now();
        let page = repo.list(&filter).await?;
        samples.push(t.elapsed());
        if page.len() != config.page as usize {
            return Err(Error::internal(format!(
                "list returned {} rows, expected a full page",
                page.len()
            )));
        }
    }
    rows.push(measurement(
        format!("list live, first page of {} (one tenant)", config.page),
        samples,
        started.elapsed(),
    ));

    // Heartbeats from concurrent writers, each on its own sandboxes.
    let per_writer = config.heartbeats / config.writers;
    let started = Instant::now();
    let writers = (0..config.writers).map(|w| {
        let repo = repo.clone();
        let running = &running;
        async move {
            let mut samples = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let id = running[(w + i * config.writers) % running.len()];
                let at = micros(OffsetDateTime::now_utc());
                let t = Instant::now();
                repo.record_activity(id, at, at + Duration::hours(1), None)
                    .await?;
                samples.push(t.elapsed());
            }
            Ok::<_, Error>(samples)
        }
    });
    let samples: Vec<StdDuration> = futures::future::join_all(writers)
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .concat();
    rows.push(measurement(
        format!("heartbeat, {} concurrent writers", config.writers),
        samples,
        started.elapsed(),
    ));

    // Claims of `claim_batch` expired sandboxes.
    let mut samples = Vec::with_capacity(config.claims);
    let started = Instant::now();
    for _ in 0..config.claims {
        let t = Instant::now();
        let claimed = repo
            .claim_expired(&crate::ports::ExpiryClaim::new(now, config.claim_batch))
            .await?;
        samples.push(t.elapsed());
        if claimed.len() != config.claim_batch as usize {
            return Err(Error::internal(format!(
                "claim_expired returned {} rows, expected {}",
                claimed.len(),
                config.claim_batch
            )));
        }
    }
    rows.push(measurement(
        format!("claim expired, {} rows", config.claim_batch),
        samples,
        started.elapsed(),
    ));

    Ok(BenchReport {
        store: store.to_owned(),
        sandboxes: config.sandboxes,
        fill,
        rows,
    })
}
