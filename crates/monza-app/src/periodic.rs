//! Background tasks that run one pass every interval until cancelled: the reaper and the
//! reconciler.

use std::future::Future;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Runs `pass` at once and then every `interval` (a late tick delays the next ones rather
/// than bunching them), until `cancel` fires, which also interrupts a pass in progress.
/// `pass` logs its own outcome; `task` names the task in the start and stop lines.
pub async fn every<F, Fut>(
    task: &'static str,
    interval: Duration,
    cancel: CancellationToken,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!(interval_secs = interval.as_secs_f64(), "{task} started");
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = pass() => {}
        }
    }
    tracing::info!("{task} stopped");
}
