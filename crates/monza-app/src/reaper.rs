//! The reaper: every interval, one pass of [`SandboxService::reap_expired`]. A failed pass
//! is logged and retried on the next tick; the loop only ends when cancelled.

use std::time::Duration;

use monza_domain::{ReapReport, SandboxService};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

pub async fn run(service: SandboxService, interval: Duration, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!(interval_secs = interval.as_secs_f64(), "reaper started");
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            result = service.reap_expired() => match result {
                Ok(report) if report == ReapReport::default() => {
                    tracing::debug!("reaper pass: nothing to do");
                }
                Ok(report) => tracing::info!(
                    expired = report.expired,
                    removed = report.removed,
                    swept = report.swept,
                    failures = report.failures,
                    "reaper pass"
                ),
                Err(e) => tracing::warn!(error = %e, "reaper pass failed; retrying on the next tick"),
            }
        }
    }
    tracing::info!("reaper stopped");
}
