//! The lease keeper: one [`SandboxService::lease_pass`] every third of `MONZA_CREATE_LEASE`.
//! It renews the leases of the creates this process runs and settles the creates (of any
//! replica) whose creator stopped renewing theirs. A pass that acted logs one line; a pass
//! that cannot reach the store is logged and skipped (settling nothing, since this process
//! could not renew its own leases either). The loop only ends when cancelled, after the HTTP
//! server finished its in-flight requests, so a create that runs during shutdown keeps its
//! lease.
//!
//! Beside it, on the same cancellation, the activity keeper: one
//! [`SandboxService::activity_pass`] every third of the idle TTL, so the sandboxes whose
//! commands this process runs are not reaped while those commands run.

use monza_domain::SandboxService;
use tokio_util::sync::CancellationToken;

use crate::periodic;

pub async fn run(service: SandboxService, cancel: CancellationToken) {
    tokio::join!(leases(&service, cancel.clone()), activity(&service, cancel));
}

async fn activity(service: &SandboxService, cancel: CancellationToken) {
    let interval = service.activity_interval();
    periodic::every("activity keeper", interval, cancel, move || async move {
        match service.activity_pass().await {
            Ok(kept) => tracing::debug!(kept, "activity pass"),
            Err(e) => {
                tracing::warn!(error = %e, "activity pass failed; retrying on the next tick");
            }
        }
    })
    .await;
}

async fn leases(service: &SandboxService, cancel: CancellationToken) {
    let interval = service.lease_renewal_interval();
    periodic::every("lease keeper", interval, cancel, move || async move {
        match service.lease_pass().await {
            Ok(report) if report.acted() => tracing::info!(
                renewed = report.renewed,
                settled = report.settled,
                containers_removed = report.containers_removed,
                failures = report.failures,
                "lease pass"
            ),
            Ok(report) => tracing::debug!(renewed = report.renewed, "lease pass"),
            Err(e) => {
                tracing::warn!(error = %e, "lease pass skipped; retrying on the next tick");
            }
        }
    })
    .await;
}
