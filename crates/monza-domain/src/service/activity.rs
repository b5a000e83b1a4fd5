//! Commands keep their sandbox alive while they run. An execute, buffered or streamed,
//! registers its sandbox in [`Busy`] (by a guard dropped when the command's future or stream
//! is, however it ends), and the activity pass records activity for every registered sandbox
//! every third of the idle TTL, batched like heartbeats. So a command that runs longer than the TTL (a build, a test
//! suite, a streamed dev server's output) is never reaped under its client, on any replica:
//! the store's `expires_at` keeps moving, and each replica keeps its own commands' sandboxes
//! alive. Background processes started with `keep_alive` keep theirs alive the same way,
//! found by asking the runtime each pass (see [`crate::ContainerRuntime::kept_alive`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration as StdDuration;

use super::SandboxService;
use super::heartbeats::MAX_BATCH;
use crate::error::Result;
use crate::lifecycle;
use crate::ports::Touch;
use crate::sandbox::SandboxId;

/// The sandboxes whose commands this process runs, with how many each.
#[derive(Debug, Default)]
pub(crate) struct Busy(Mutex<HashMap<SandboxId, usize>>);

impl Busy {
    /// Registers one command of `id` until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>, id: SandboxId) -> BusyGuard {
        *self.map().entry(id).or_default() += 1;
        BusyGuard {
            busy: self.clone(),
            id,
        }
    }

    /// The sandboxes with a command running now.
    pub(crate) fn ids(&self) -> Vec<SandboxId> {
        let mut ids: Vec<SandboxId> = self.map().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn map(&self) -> MutexGuard<'_, HashMap<SandboxId, usize>> {
        // Each change is one step: the map stays consistent whatever panicked.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps one command registered in [`Busy`] while it lives.
#[derive(Debug)]
pub(crate) struct BusyGuard {
    busy: Arc<Busy>,
    id: SandboxId,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut map = self.busy.map();
        if let Some(count) = map.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.id);
            }
        }
    }
}

impl SandboxService {
    /// How often the activity pass runs: a third of the idle TTL (so a running command
    /// moves its sandbox's expiry twice before it could pass), at least every second and at
    /// most every minute.
    pub fn activity_interval(&self) -> StdDuration {
        StdDuration::try_from(self.config.ttl / 3)
            .unwrap_or(StdDuration::from_secs(60))
            .clamp(StdDuration::from_secs(1), StdDuration::from_secs(60))
    }

    /// One activity pass: records activity (no event) for every sandbox with a command
    /// running in this process (or an output stream followed), or a `keep_alive` background
    /// process running, in one store transaction per [`MAX_BATCH`] of them (as
    /// heartbeats are). A sandbox that ended meanwhile is skipped; a store failure is
    /// returned. The number of sandboxes kept alive.
    pub async fn activity_pass(&self) -> Result<usize> {
        let now = self.clock.now();
        let expires_at = lifecycle::expires_at(now, self.config.ttl);
        let mut ids = self.busy.ids();
        // And the sandboxes whose agent runs a `keep_alive` background process (a runtime
        // that cannot say keeps only the commands' sandboxes alive this pass).
        match self.runtime.kept_alive().await {
            Ok(kept) => ids.extend(kept),
            Err(e) => {
                tracing::warn!(error = %e, "finding the keep-alive background processes failed")
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let touches: Vec<Touch> = ids
            .into_iter()
            .map(|id| Touch {
                id,
                tenant: None,
                at: now,
                expires_at,
            })
            .collect();
        let mut kept = 0;
        for batch in touches.chunks(MAX_BATCH) {
            // `false`: deleted or expired under its command, nothing to keep alive.
            kept += self
                .repo
                .touch_many(batch)
                .await?
                .into_iter()
                .filter(|touched| *touched)
                .count();
        }
        Ok(kept)
    }
}
