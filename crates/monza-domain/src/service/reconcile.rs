//! Reconciliation: the Docker engine and the store are two sources of truth that drift apart
//! (a crash between "container created" and "row updated", a container removed by hand, an
//! engine restart). One pass compares the containers carrying monza's labels with the
//! sandboxes the store says are alive, and moves both towards agreement.
//!
//! The rules, per pass:
//! - a managed container whose sandbox is unknown, `deleted`, `expired` or `error` is removed;
//! - a `running` sandbox whose container is gone becomes `error` ("container vanished");
//! - a `running` sandbox whose container stopped is started again, and becomes `error` if
//!   that fails;
//! - a sandbox `creating` whose create lease lapsed (its creator is gone, see
//!   [`super::leases`]) becomes `error` and its container is removed;
//! - a sandbox `creating` without a lease (written by an older monza) for longer than
//!   [`ServiceConfig::create_timeout`] becomes `error` and its container is removed;
//! - a container whose sandbox is `creating` under a live lease, or without a lease within
//!   the timeout, is never touched (another replica may be creating it right now), nor is a
//!   container without monza's labels (the runtime lists only labelled ones; one whose
//!   sandbox label does not parse is left alone too).
//!
//! [`ServiceConfig::create_timeout`]: super::ServiceConfig::create_timeout

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::SandboxService;
use crate::error::{Error, FileProblem, Result};
use crate::lifecycle::{self, LifecycleEvent};
use crate::ports::StatusChange;
use crate::runtime::{ContainerState, PublishedPort};
use crate::sandbox::{
    EventAction, NewEvent, Sandbox, SandboxFilter, SandboxId, SandboxStatus, StatusFilter,
};

/// What one reconciliation pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Containers with monza's labels found on the engine.
    pub containers: usize,
    /// Sandboxes the store holds as `running`.
    pub running: usize,
    /// Containers removed because their sandbox is unknown, `deleted`, `expired` or `error`.
    pub orphans_removed: usize,
    /// Running sandboxes whose container was gone, now `error`.
    pub vanished: usize,
    /// Running sandboxes whose stopped container was started again.
    pub restarted: usize,
    /// Running sandboxes whose stopped container would not start, now `error`.
    pub restart_failed: usize,
    /// Sandboxes `creating` without a lease for longer than the create timeout, now `error`.
    pub stale_creating: usize,
    /// Sandboxes `creating` whose lease lapsed (their creator is gone), now `error`.
    pub lease_lapsed: usize,
    /// Containers left alone because their sandbox is being created (live lease, or no lease
    /// within the create timeout).
    pub creating_in_grace: usize,
    /// Actions that failed (a dependency error); retried on the next pass.
    pub failures: usize,
}

impl ReconcileReport {
    /// Whether the pass changed anything or hit a failure.
    pub fn acted(&self) -> bool {
        self.orphans_removed
            + self.vanished
            + self.restarted
            + self.restart_failed
            + self.stale_creating
            + self.lease_lapsed
            + self.failures
            > 0
    }
}

/// Every sandbox in `status`, of any tenant.
pub(super) fn only(status: SandboxStatus) -> SandboxFilter {
    SandboxFilter {
        tenant: None,
        status: StatusFilter::Only(status),
        limit: None,
    }
}

/// The reason a sandbox whose container disappeared is given.
fn vanished_reason(container_id: &str) -> String {
    format!(
        "container vanished: container {} no longer exists on the Docker engine",
        short(container_id)
    )
}

/// `(container port, host port)` pairs in order, to compare two sets of published ports.
fn port_pairs(ports: impl Iterator<Item = (u16, u16)>) -> Vec<(u16, u16)> {
    let mut pairs: Vec<(u16, u16)> = ports.collect();
    pairs.sort_unstable();
    pairs
}

fn short(container_id: &str) -> &str {
    container_id.get(..12).unwrap_or(container_id)
}

impl SandboxService {
    /// One reconciliation pass (see the module docs). Fails as a whole only when it cannot
    /// read the store or list the engine's containers (the caller skips the tick); a failed
    /// single action is counted in [`ReconcileReport::failures`] and retried on the next
    /// pass.
    #[tracing::instrument(skip_all, err)]
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        // Rows before containers: a row is written before its container exists, so every
        // container listed below whose sandbox is in neither list either ended or is
        // confirmed with `get`, never mistaken for unknown.
        let creating = self.repo.list(&only(SandboxStatus::Creating)).await?;
        let running = self.repo.list(&only(SandboxStatus::Running)).await?;
        let containers = self.runtime.list_managed().await?;
        let now = self.clock.now();
        let mut report = ReconcileReport {
            containers: containers.len(),
            running: running.len(),
            ..ReconcileReport::default()
        };

        let by_id: HashMap<&str, bool> = containers
            .iter()
            .map(|c| (c.id.as_str(), c.running))
            .collect();
        for sandbox in &running {
            let Some(cid) = sandbox.container_id.as_deref() else {
                continue;
            };
            match by_id.get(cid) {
                Some(true) => {}
                Some(false) => self.restart(sandbox, cid, &mut report).await,
                None => self.check_vanished(sandbox, cid, &mut report).await,
            }
        }

        let mut given_up: HashSet<SandboxId> = HashSet::new();
        for sandbox in &creating {
            // A lapsed lease settles the create at once; without one, only its timeout does.
            let (settled, count, failure) = if lifecycle::lease_lapsed(sandbox, now) {
                (
                    self.settle_lapsed(sandbox, now).await,
                    &mut report.lease_lapsed,
                    SETTLE_FAILED,
                )
            } else if lifecycle::create_timed_out(sandbox, now, self.config.create_timeout) {
                (
                    self.give_up_creating(sandbox.id).await,
                    &mut report.stale_creating,
                    "could not fail a sandbox stuck in creating",
                )
            } else {
                continue;
            };
            if settled_now(settled, sandbox.id, &mut report.failures, failure) {
                *count += 1;
                given_up.insert(sandbox.id);
            }
        }

        let running_containers: HashMap<SandboxId, Option<&str>> = running
            .iter()
            .map(|s| (s.id, s.container_id.as_deref()))
            .collect();
        let creating_ids: HashSet<SandboxId> = creating.iter().map(|s| s.id).collect();
        let mut orphans = Vec::new();
        for container in &containers {
            let Some(sandbox_id) = container.sandbox_id else {
                tracing::warn!(container_id = %container.id,
                    "container has monza's managed label but no valid sandbox id: left alone");
                continue;
            };
            if given_up.contains(&sandbox_id) {
                orphans.push(container.id.clone());
                continue;
            }
            if running_containers.get(&sandbox_id) == Some(&Some(container.id.as_str())) {
                continue;
            }
            if creating_ids.contains(&sandbox_id) {
                report.creating_in_grace += 1;
                continue;
            }
            // Not in the lists read above: ended, unknown, or changed since. Ask again.
            match self.repo.get(sandbox_id).await {
                Ok(sandbox) if sandbox.status() == SandboxStatus::Creating => {
                    report.creating_in_grace += 1;
                }
                Ok(sandbox)
                    if sandbox.status() == SandboxStatus::Running
                        && sandbox.container_id.as_deref() == Some(container.id.as_str()) => {}
                Ok(_) | Err(Error::NotFound(_)) => orphans.push(container.id.clone()),
                Err(e) => {
                    report.failures += 1;
                    tracing::warn!(sandbox_id = %sandbox_id, error = %e, "could not look up a container's sandbox");
                }
            }
        }
        let (removed, failed) = self.remove_all(orphans).await;
        report.orphans_removed += removed;
        report.failures += failed;
        Ok(report)
    }

    /// A running sandbox's container is not in the engine's list: confirms it is gone,
    /// then marks the sandbox `error`.
    async fn check_vanished(&self, sandbox: &Sandbox, cid: &str, report: &mut ReconcileReport) {
        match self.runtime.state(cid).await {
            Ok(ContainerState::Missing) => {}
            Ok(ContainerState::Running) => return,
            Ok(ContainerState::Stopped) => return self.restart(sandbox, cid, report).await,
            Err(e) => {
                report.failures += 1;
                tracing::warn!(sandbox_id = %sandbox.id, container_id = %cid, error = %e, "could not inspect a sandbox's container");
                return;
            }
        }
        if self.fail(sandbox, &vanished_reason(cid), report).await {
            report.vanished += 1;
            tracing::warn!(sandbox_id = %sandbox.id, container_id = %cid, "container vanished: sandbox is now error");
        }
    }

    /// Marks `sandbox` `error` with `reason` (also in its event log). Returns whether it
    /// changed; a store failure is counted in the report and retried on the next pass.
    async fn fail(&self, sandbox: &Sandbox, reason: &str, report: &mut ReconcileReport) -> bool {
        match self.fail_sandbox(sandbox.id, "reconcile", reason).await {
            Ok(changed) => changed.is_some(),
            Err(e) => {
                report.failures += 1;
                tracing::warn!(sandbox_id = %sandbox.id, error = %e, %reason, "could not mark a sandbox as error");
                false
            }
        }
    }

    /// A running sandbox's container stopped: starts it once; `error` if that fails.
    async fn restart(&self, sandbox: &Sandbox, cid: &str, report: &mut ReconcileReport) {
        let error = match self.runtime.start(cid).await {
            Ok(published) => {
                report.restarted += 1;
                tracing::info!(sandbox_id = %sandbox.id, container_id = %cid, "container had stopped: started it again");
                self.record_new_ports(sandbox, &published, report).await;
                return;
            }
            // The engine itself is away: not the sandbox's fault, retry on the next pass.
            Err(e @ Error::Unavailable { .. }) => {
                report.failures += 1;
                tracing::warn!(sandbox_id = %sandbox.id, container_id = %cid, error = %e, "could not restart a stopped container");
                return;
            }
            Err(e) => e,
        };
        let reason = if matches!(error, Error::NotFound(_)) {
            vanished_reason(cid)
        } else {
            format!("container stopped and could not be started again: {error}")
        };
        if self.fail(sandbox, &reason, report).await {
            report.restart_failed += 1;
            tracing::warn!(sandbox_id = %sandbox.id, container_id = %cid, %reason, "sandbox is now error");
        }
    }

    /// A container started again may publish its ports on other host ports (the engine
    /// picks free ones again): the store is brought up to date, so the API never hands out a
    /// stale port.
    async fn record_new_ports(
        &self,
        sandbox: &Sandbox,
        published: &[PublishedPort],
        report: &mut ReconcileReport,
    ) {
        let stored = port_pairs(
            sandbox
                .port_mappings
                .iter()
                .map(|m| (m.container_port, m.host_port)),
        );
        let now = port_pairs(published.iter().map(|p| (p.container_port, p.host_port)));
        if stored == now {
            return;
        }
        let mappings = super::port_mappings(sandbox.id, published);
        match self.repo.replace_port_mappings(sandbox.id, &mappings).await {
            Ok(true) => {
                tracing::info!(sandbox_id = %sandbox.id, ports = ?now, "restarted container publishes on new host ports: recorded");
            }
            // It ended meanwhile (deleted, reaped): its ports no longer matter.
            Ok(false) => {}
            Err(e) => {
                report.failures += 1;
                tracing::warn!(sandbox_id = %sandbox.id, error = %e, "could not record a restarted container's ports");
            }
        }
    }

    /// Marks a sandbox without a lease stuck in `creating` past the timeout as `error`. Reads
    /// it again first: a create that finished since the listing is left alone. Whether it was
    /// marked.
    async fn give_up_creating(&self, id: SandboxId) -> Result<bool> {
        let current = self.repo.get(id).await?;
        if !lifecycle::create_timed_out(&current, self.clock.now(), self.config.create_timeout) {
            return Ok(false);
        }
        let reason = format!(
            "creation did not finish within {}s (the server creating it probably stopped)",
            self.config.create_timeout.whole_seconds()
        );
        let failed = self.fail_sandbox(id, "reconcile", &reason).await?;
        if failed.is_some() {
            tracing::warn!(sandbox_id = %id, %reason, "sandbox stuck in creating is now error");
        }
        Ok(failed.is_some())
    }

    /// `Fail` with a `failed` event naming the `stage` that found the problem and the
    /// reason. `None` if the sandbox ended meanwhile (a conflict).
    async fn fail_sandbox(
        &self,
        id: SandboxId,
        stage: &str,
        reason: &str,
    ) -> Result<Option<Sandbox>> {
        let change = StatusChange {
            event: LifecycleEvent::Fail,
            at: self.clock.now(),
            reason: Some(reason.to_owned()),
            record: NewEvent::new(
                EventAction::Failed,
                json!({ "stage": stage, "error": reason }),
            ),
        };
        match self.repo.transition(id, &change).await {
            Ok(sandbox) => Ok(Some(sandbox)),
            Err(Error::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A runtime call's result for `sandbox`, its failure passed through
    /// [`Self::check_container`].
    pub(super) async fn or_vanished<T>(&self, sandbox: &Sandbox, result: Result<T>) -> Result<T> {
        match result {
            Ok(value) => Ok(value),
            Err(e) => Err(self.check_container(sandbox, e).await),
        }
    }

    /// A request on a running sandbox failed in the runtime. If the cause is that its
    /// container no longer exists, the sandbox becomes `error` and the caller gets the
    /// conflict that says so (with the reason); otherwise the error is returned as it was.
    async fn check_container(&self, sandbox: &Sandbox, error: Error) -> Error {
        if !matches!(
            error,
            Error::NotFound(_)
                | Error::Conflict(_)
                | Error::Internal(_)
                | Error::File {
                    problem: FileProblem::NotFound,
                    ..
                }
        ) {
            return error;
        }
        // Ended meanwhile (a concurrent delete removing the container under the request, the
        // reaper): whatever the engine said ("removal in progress", "no such container"),
        // the answer is the conflict an ended sandbox gets.
        match self.repo.get(sandbox.id).await {
            Ok(current) if current.status() != SandboxStatus::Running => {
                return lifecycle::check(&current, LifecycleEvent::Activity)
                    .err()
                    .unwrap_or(error);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(sandbox_id = %sandbox.id, error = %e,
                    "could not re-read a sandbox whose runtime call failed");
                return error;
            }
        }
        // The engine answers 404 for a missing container and a missing path alike.
        if !matches!(
            error,
            Error::NotFound(_)
                | Error::Conflict(_)
                | Error::File {
                    problem: FileProblem::NotFound,
                    ..
                }
        ) {
            return error;
        }
        let Some(cid) = sandbox.container_id.as_deref() else {
            return error;
        };
        if !matches!(self.runtime.state(cid).await, Ok(ContainerState::Missing)) {
            return error;
        }
        let reason = vanished_reason(cid);
        let ended = match self.fail_sandbox(sandbox.id, "request", &reason).await {
            Ok(Some(failed)) => {
                tracing::warn!(sandbox_id = %sandbox.id, container_id = %cid, "container vanished: sandbox is now error");
                failed
            }
            // Ended meanwhile: say what it is now.
            Ok(None) => match self.repo.get(sandbox.id).await {
                Ok(current) => current,
                Err(e) => return e,
            },
            Err(e) => return e,
        };
        lifecycle::check(&ended, LifecycleEvent::Activity)
            .err()
            .unwrap_or(error)
    }
}

/// What a failed settle of a lapsed lease is logged as.
pub(super) const SETTLE_FAILED: &str = "could not settle a create whose lease lapsed";

/// Whether a settle attempt for `sandbox` changed it; a failure is counted in `failures` and
/// logged as `failure` (the next pass retries it).
pub(super) fn settled_now(
    result: Result<bool>,
    sandbox: SandboxId,
    failures: &mut usize,
    failure: &str,
) -> bool {
    result.unwrap_or_else(|e| {
        *failures += 1;
        tracing::warn!(sandbox_id = %sandbox, error = %e, "{failure}");
        false
    })
}
