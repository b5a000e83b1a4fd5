//! Create leases: how a crash mid-create is settled in seconds without ever touching a create
//! another live replica is working on.
//!
//! A create writes its row `creating` with a [`CreateLease`]: this process's
//! [`InstanceId`] and an expiry [`ServiceConfig::create_lease`] ahead. While the create runs,
//! it is registered in [`InFlight`] (by a guard dropped with the create's future, however it
//! ends), and the lease pass renews the lease of every registered create every third of the
//! lease. So a lease lapses only when its creator stopped renewing it: the process died
//! (kill -9, OOM, power loss), lost the store for longer than a lease, or dropped the
//! create's future mid-way (a caller's timeout, a cancelled task). Such a create is settled by the same pass on any replica: marked
//! `error` atomically, only if its lease is still lapsed and it is still `creating`
//! ([`SandboxRepository::fail_lapsed_create`]), and its container removed. A create that was
//! settled under a creator that is still running fails at `mark_running` with a conflict and
//! removes its own container.
//!
//! Leases are compared with this process's clock: replicas' clocks must agree to well within
//! a lease (NTP does).
//!
//! [`ServiceConfig::create_lease`]: super::ServiceConfig::create_lease
//! [`SandboxRepository::fail_lapsed_create`]: crate::ports::SandboxRepository::fail_lapsed_create

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration as StdDuration;

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::SandboxService;
use super::reconcile::{SETTLE_FAILED, only, settled_now};
use crate::error::Result;
use crate::lifecycle::{self, LifecycleEvent};
use crate::ports::StatusChange;
use crate::sandbox::{CreateLease, EventAction, NewEvent, Sandbox, SandboxId, SandboxStatus};

/// The creates this process is running: the ones whose leases it renews.
#[derive(Debug, Default)]
pub(crate) struct InFlight(Mutex<HashSet<SandboxId>>);

impl InFlight {
    /// Registers a create until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>, id: SandboxId) -> InFlightGuard {
        self.set().insert(id);
        InFlightGuard {
            in_flight: self.clone(),
            id,
        }
    }

    /// The creates registered now.
    pub(crate) fn ids(&self) -> Vec<SandboxId> {
        let mut ids: Vec<SandboxId> = self.set().iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<SandboxId>> {
        // The set stays consistent whatever panicked while holding it (insert and remove
        // are single steps).
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps a create registered in [`InFlight`] while it lives.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    in_flight: Arc<InFlight>,
    id: SandboxId,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.in_flight.set().remove(&self.id);
    }
}

/// What one lease pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseReport {
    /// Leases of this process's creates in flight, renewed.
    pub renewed: u64,
    /// Creates whose lease had lapsed (their creator is gone), now `error`.
    pub settled: usize,
    /// Containers of those creates, removed.
    pub containers_removed: usize,
    /// Actions that failed (a dependency error); retried on the next pass.
    pub failures: usize,
}

impl LeaseReport {
    /// Whether the pass settled anything or hit a failure.
    pub fn acted(&self) -> bool {
        self.settled + self.containers_removed + self.failures > 0
    }
}

fn lapsed_reason(lease: &CreateLease) -> String {
    let lapsed = lease
        .expires_at
        .format(&Rfc3339)
        .unwrap_or_else(|_| lease.expires_at.unix_timestamp().to_string());
    format!(
        "creation did not finish: the server creating it (instance {}) stopped renewing its \
         lease, which lapsed at {lapsed}",
        lease.instance
    )
}

impl SandboxService {
    /// How often the lease pass runs: a third of the lease, so a live creator renews each
    /// lease twice before it could lapse.
    pub fn lease_renewal_interval(&self) -> StdDuration {
        StdDuration::try_from(self.config.create_lease / 3)
            .unwrap_or(StdDuration::from_secs(5))
            .max(StdDuration::from_millis(10))
    }

    /// One lease pass: renews the leases of the creates this process runs, then settles the
    /// creates (of any replica) whose lease lapsed. Fails as a whole, settling nothing, when
    /// the renewal fails: a process that cannot reach the store cannot tell a lapsed lease
    /// from one it failed to read renewed. (The caller logs a failed pass; it recurs every
    /// few seconds while the store is away.)
    #[tracing::instrument(skip_all)]
    pub async fn lease_pass(&self) -> Result<LeaseReport> {
        let renewed = self.renew_create_leases().await?;
        let mut report = self.settle_lapsed_creates().await?;
        report.renewed = renewed;
        Ok(report)
    }

    /// Moves the lease of every create in flight in this process to now + the lease. No
    /// store call when nothing is in flight.
    pub async fn renew_create_leases(&self) -> Result<u64> {
        let ids = self.in_flight.ids();
        if ids.is_empty() {
            return Ok(0);
        }
        let until = self.clock.now() + self.config.create_lease;
        self.repo.renew_leases(self.instance, &ids, until).await
    }

    /// Settles every `creating` sandbox whose lease lapsed ([`lifecycle::lease_lapsed`]) and
    /// removes its container. A create renewed or finished meanwhile is left alone (the store
    /// checks the lease again as it writes). Fails as a whole only when it cannot read the
    /// store; a failed single action is counted and retried on the next pass.
    pub async fn settle_lapsed_creates(&self) -> Result<LeaseReport> {
        let rows = self.repo.list(&only(SandboxStatus::Creating)).await?;
        let now = self.clock.now();
        let mut report = LeaseReport::default();
        let mut settled = HashSet::new();
        for sandbox in rows.iter().filter(|s| lifecycle::lease_lapsed(s, now)) {
            let result = self.settle_lapsed(sandbox, now).await;
            if settled_now(result, sandbox.id, &mut report.failures, SETTLE_FAILED) {
                settled.insert(sandbox.id);
            }
        }
        report.settled = settled.len();
        if settled.is_empty() {
            return Ok(report);
        }
        // A container made after this listing (a create dropped mid-call to the engine) is
        // removed by the reaper's sweep of ended sandboxes' containers, or reconciliation.
        let containers = match self.runtime.list_managed().await {
            Ok(containers) => containers,
            Err(e) => {
                report.failures += 1;
                tracing::warn!(error = %e, "could not list the containers of settled creates; the reaper retries");
                return Ok(report);
            }
        };
        let doomed: Vec<String> = containers
            .into_iter()
            .filter(|c| c.sandbox_id.is_some_and(|id| settled.contains(&id)))
            .map(|c| c.id)
            .collect();
        let (removed, failed) = self.remove_all(doomed).await;
        report.containers_removed = removed;
        report.failures += failed;
        Ok(report)
    }

    /// Marks one `creating` sandbox whose lease lapsed `error`, if it still is so when the
    /// store writes. Whether it did.
    pub(super) async fn settle_lapsed(
        &self,
        sandbox: &Sandbox,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let Some(lease) = &sandbox.create_lease() else {
            return Ok(false);
        };
        let reason = lapsed_reason(lease);
        let change = StatusChange {
            event: LifecycleEvent::Fail,
            at: now,
            reason: Some(reason.clone()),
            record: NewEvent::new(
                EventAction::Failed,
                json!({ "stage": "lease", "error": reason, "instance": lease.instance }),
            ),
        };
        let settled = self
            .repo
            .fail_lapsed_create(sandbox.id, now, &change)
            .await?;
        if settled.is_some() {
            tracing::warn!(sandbox_id = %sandbox.id, instance = %lease.instance, %reason, "create whose creator stopped renewing its lease is now error");
        }
        Ok(settled.is_some())
    }
}
