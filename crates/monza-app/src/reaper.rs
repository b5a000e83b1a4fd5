//! The reaper: every interval, one pass of [`SandboxService::reap_expired`]. A failed pass
//! is logged and retried on the next tick; the loop only ends when cancelled.

use std::time::Duration;

use monza_domain::{ReapReport, SandboxService};
use tokio_util::sync::CancellationToken;

use crate::periodic;

pub async fn run(service: SandboxService, interval: Duration, cancel: CancellationToken) {
    let service = &service;
    periodic::every("reaper", interval, cancel, move || async move {
        match service.reap_expired().await {
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
    })
    .await;
}
