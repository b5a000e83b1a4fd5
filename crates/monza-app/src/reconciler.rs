//! The reconciler: one [`SandboxService::reconcile`] pass at start-up, then one every
//! interval. Each pass logs one summary line with its counts; a pass that cannot reach the
//! engine or the store is logged and skipped (the next tick retries). The loop only ends
//! when cancelled.

use std::time::Duration;

use monza_domain::SandboxService;
use tokio_util::sync::CancellationToken;

use crate::periodic;

pub async fn run(service: SandboxService, interval: Duration, cancel: CancellationToken) {
    let service = &service;
    periodic::every("reconciler", interval, cancel, move || async move {
        match service.reconcile().await {
            Ok(report) => tracing::info!(
                containers = report.containers,
                running = report.running,
                orphans_removed = report.orphans_removed,
                vanished = report.vanished,
                restarted = report.restarted,
                restart_failed = report.restart_failed,
                stale_creating = report.stale_creating,
                lease_lapsed = report.lease_lapsed,
                creating_in_grace = report.creating_in_grace,
                failures = report.failures,
                "reconcile pass"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "reconcile pass skipped; retrying on the next tick");
            }
        }
    })
    .await;
}
