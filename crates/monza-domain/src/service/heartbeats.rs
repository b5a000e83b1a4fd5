//! Group commit for heartbeats.
//!
//! A heartbeat is one durable write, and a durable write costs a flush to disk (SQLite's WAL
//! fsync, PostgreSQL's WAL flush). Done one by one, concurrent heartbeats queue behind each
//! other's flush. Instead, each heartbeat joins a queue; whoever holds one of the
//! [`LEADERS`] leader slots takes everything queued (each sandbox at most once) and writes
//! it with one [`SandboxRepository::touch_many`], then answers every heartbeat in the batch.
//! Under load a batch holds every heartbeat that arrived during the previous flush; alone, a
//! heartbeat is a batch of one and costs what it did before.
//!
//! Invariant: a queued heartbeat is either still in the queue or in the batch of a leader
//! who holds its slot until it has answered it (or was cancelled, which drops the answer
//! and makes the heartbeat queue itself again). So a heartbeat that gets a slot finds its
//! answer waiting, leads a batch that holds it, or waits for the leader carrying it.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use futures::channel::oneshot;
use futures::future::Either;
use futures::lock::Mutex as AsyncMutex;

use crate::error::{Error, Result};
use crate::ports::{SandboxRepository, Touch};
use crate::sandbox::SandboxId;

/// How many batches may be written at once.
pub(crate) const LEADERS: usize = 2;

/// The most heartbeats one write carries (bounds the statement and the leader's work).
pub(crate) const MAX_BATCH: usize = 256;

struct Queued {
    touch: Touch,
    answer: oneshot::Sender<Result<bool>>,
}

/// The queue and the leader lock; one per [`super::SandboxService`].
#[derive(Default)]
pub(crate) struct Heartbeats {
    queue: Mutex<Vec<Queued>>,
    /// One slot per batch that may be in flight at once: while one batch commits, the next
    /// one forms and is written, so a heartbeat waits for at most its own batch's flush
    /// and part of another's, not a whole queue of them.
    leaders: [AsyncMutex<()>; LEADERS],
}

impl Heartbeats {
    /// Writes `touch`, batched with whatever heartbeats are concurrent with it, and returns
    /// whether it changed a row (see [`SandboxRepository::touch`]).
    pub(crate) async fn touch(&self, repo: &dyn SandboxRepository, touch: Touch) -> Result<bool> {
        'submit: loop {
            let (answer, mut answered) = oneshot::channel();
            self.queue().push(Queued {
                touch: touch.clone(),
                answer,
            });
            loop {
                // An answer or a free leader slot, whichever comes first: a heartbeat another
                // leader carried returns as soon as it is answered, without waiting for a slot.
                let slot = futures::future::select_all(self.leaders.iter().map(AsyncMutex::lock));
                let _leader = match futures::future::select(&mut answered, slot).await {
                    Either::Left((Ok(result), _)) => return result,
                    // A leader took it and was cancelled (its request dropped) before
                    // answering: whether it was written is unknown; writing it again is
                    // harmless.
                    Either::Left((Err(oneshot::Canceled), _)) => continue 'submit,
                    Either::Right(((guard, _, _), _)) => guard,
                };
                match answered.try_recv() {
                    Ok(Some(result)) => return result,
                    Err(oneshot::Canceled) => continue 'submit,
                    Ok(None) => {}
                }
                if !self.lead(repo).await {
                    // Ours is in another leader's batch, in flight: its answer is coming.
                    drop(_leader);
                    match answered.await {
                        Ok(result) => return result,
                        Err(oneshot::Canceled) => continue 'submit,
                    }
                }
                if let Ok(Some(result)) = answered.try_recv() {
                    return result;
                }
                // Ours was not in this batch (a repeat of a sandbox in it, past
                // MAX_BATCH, or in another leader's): wait again.
            }
        }
    }

    /// Takes one batch from the queue, writes it and answers each heartbeat in it; `false`
    /// when the queue was empty.
    async fn lead(&self, repo: &dyn SandboxRepository) -> bool {
        let batch = self.take_batch();
        if batch.is_empty() {
            return false;
        }
        let (touches, answers): (Vec<Touch>, Vec<_>) =
            batch.into_iter().map(|q| (q.touch, q.answer)).unzip();
        let result = write(repo, &touches).await;
        for (i, answer) in answers.into_iter().enumerate() {
            // A heartbeat whose request was dropped no longer listens; that is fine.
            let _ = answer.send(match &result {
                Ok(changed) => Ok(changed[i]),
                Err(e) => Err(e.clone()),
            });
        }
        true
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        // The queue is a plain Vec: a panic elsewhere cannot leave it inconsistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Up to [`MAX_BATCH`] queued heartbeats, oldest first, each sandbox at most once (a
    /// repeat stays queued for the next batch, so every answer maps to one row).
    fn take_batch(&self) -> Vec<Queued> {
        let mut queue = self.queue();
        let mut seen: HashSet<SandboxId> = HashSet::new();
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for queued in queue.drain(..) {
            if batch.len() < MAX_BATCH && seen.insert(queued.touch.id) {
                batch.push(queued);
            } else {
                rest.push(queued);
            }
        }
        *queue = rest;
        batch
    }
}

/// One batch: a batch of one is the plain [`SandboxRepository::touch`].
async fn write(repo: &dyn SandboxRepository, touches: &[Touch]) -> Result<Vec<bool>> {
    if let [one] = touches {
        let changed = repo
            .touch(one.id, one.tenant.clone(), one.at, one.expires_at)
            .await?;
        return Ok(vec![changed]);
    }
    let changed = repo.touch_many(touches).await?;
    if changed.len() != touches.len() {
        return Err(Error::internal(format!(
            "the store answered {} of {} heartbeats",
            changed.len(),
            touches.len()
        )));
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use futures::future::join_all;
    use time::OffsetDateTime;

    use super::*;
    use crate::ports::MockSandboxRepository;

    fn touch(id: SandboxId) -> Touch {
        let at = OffsetDateTime::UNIX_EPOCH;
        Touch {
            id,
            tenant: None,
            at,
            expires_at: at,
        }
    }

    /// Runs `touches` concurrently while the leader lock is held, so they all queue before
    /// the first of them can lead: what concurrent requests look like during a flush.
    async fn queued_behind_a_flush(
        repo: &MockSandboxRepository,
        touches: Vec<Touch>,
    ) -> Vec<Result<bool>> {
        let heartbeats = Heartbeats::default();
        let mut flush = Vec::new();
        for leader in &heartbeats.leaders {
            flush.push(leader.lock().await);
        }
        let all = join_all(touches.into_iter().map(|t| heartbeats.touch(repo, t)));
        let release = async {
            tokio::task::yield_now().await;
            drop(flush);
        };
        let (answers, ()) = futures::join!(all, release);
        answers
    }

    #[tokio::test]
    async fn concurrent_heartbeats_are_one_write_and_each_gets_its_own_answer() {
        let ids: Vec<SandboxId> = (0..10).map(|_| SandboxId::new_random()).collect();
        let mut repo = MockSandboxRepository::new();
        let expected = ids.clone();
        repo.expect_touch_many()
            .withf(move |batch| batch.iter().map(|t| t.id).eq(expected.iter().copied()))
            .times(1)
            .returning(|batch| Ok((0..batch.len()).map(|i| i % 3 != 0).collect()));
        repo.expect_touch().never();
        let answers = queued_behind_a_flush(&repo, ids.iter().copied().map(touch).collect()).await;
        let answers: Vec<bool> = answers.into_iter().map(|a| a.unwrap()).collect();
        assert_eq!(answers, (0..10).map(|i| i % 3 != 0).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_repeated_sandbox_waits_for_the_next_batch() {
        let (a, b) = (SandboxId::new_random(), SandboxId::new_random());
        let mut repo = MockSandboxRepository::new();
        let mut seq = mockall::Sequence::new();
        repo.expect_touch_many()
            .withf(move |batch| batch.iter().map(|t| t.id).eq([a, b]))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![true, false]));
        repo.expect_touch()
            .withf(move |id, _, _, _| *id == a)
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _, _| Ok(false));
        let answers = queued_behind_a_flush(&repo, vec![touch(a), touch(b), touch(a)]).await;
        let answers: Vec<bool> = answers.into_iter().map(|a| a.unwrap()).collect();
        assert_eq!(answers, vec![true, false, false]);
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_heartbeat_it_carried() {
        let mut repo = MockSandboxRepository::new();
        repo.expect_touch_many()
            .times(1)
            .returning(|_| Err(Error::unavailable("SQLite", "store down")));
        let ids = (0..4).map(|_| touch(SandboxId::new_random())).collect();
        for answer in queued_behind_a_flush(&repo, ids).await {
            assert_eq!(answer, Err(Error::unavailable("SQLite", "store down")));
        }
    }

    #[tokio::test]
    async fn a_store_answering_the_wrong_count_is_an_error_not_a_panic() {
        let mut repo = MockSandboxRepository::new();
        repo.expect_touch_many()
            .times(1)
            .returning(|_| Ok(vec![true]));
        let ids = (0..3).map(|_| touch(SandboxId::new_random())).collect();
        for answer in queued_behind_a_flush(&repo, ids).await {
            assert!(answer.unwrap_err().to_string().contains("answered 1 of 3"));
        }
    }

    #[tokio::test]
    async fn a_lone_heartbeat_is_the_single_touch() {
        let id = SandboxId::new_random();
        let mut repo = MockSandboxRepository::new();
        repo.expect_touch()
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        repo.expect_touch_many().never();
        let heartbeats = Heartbeats::default();
        assert_eq!(heartbeats.touch(&repo, touch(id)).await, Ok(true));
    }

    #[tokio::test]
    async fn more_than_a_batch_is_split() {
        let n = MAX_BATCH + 5;
        let mut repo = MockSandboxRepository::new();
        let mut seq = mockall::Sequence::new();
        repo.expect_touch_many()
            .withf(|batch| batch.len() == MAX_BATCH)
            .times(1)
            .in_sequence(&mut seq)
            .returning(|batch| Ok(vec![true; batch.len()]));
        repo.expect_touch_many()
            .withf(|batch| batch.len() == 5)
            .times(1)
            .in_sequence(&mut seq)
            .returning(|batch| Ok(vec![true; batch.len()]));
        let ids = (0..n).map(|_| touch(SandboxId::new_random())).collect();
        let answers = queued_behind_a_flush(&repo, ids).await;
        assert_eq!(answers.len(), n);
        assert!(answers.into_iter().all(|a| a == Ok(true)));
    }
}
