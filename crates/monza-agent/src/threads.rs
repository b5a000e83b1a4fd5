//! Threads for commands, kept a while after their command ends: a new thread costs about
//! 0.2 ms on a machine that was idle, a tenth of what a whole `true` through the agent
//! costs, so the next command takes a waiting one instead.
//!
//! A waiting thread has a one-slot channel of its own, listed in `idle`. A job is handed
//! over under the list's lock; a thread that waited long enough leaves under the same lock,
//! after one last look at its channel, so a job is never put in a channel nobody reads.
//! A channel whose thread left stays listed until a job finds it closed and moves on.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Stack of each thread: what an exec's runner needs, with room to spare.
const STACK: usize = 256 * 1024;

/// The threads of one agent.
#[derive(Debug)]
pub struct Threads {
    idle: Mutex<Vec<SyncSender<Job>>>,
    /// How long a thread waits for its next job before it ends.
    keep: Duration,
    /// Threads waiting at most; one more ends instead of waiting.
    max_idle: usize,
}

/// A job handed to [`Threads::run`]; [`Done::wait`] blocks until it ended.
#[derive(Debug)]
pub struct Done(Receiver<()>);

impl Done {
    /// Whether the job ended (or its thread died with it).
    pub fn is_finished(&self) -> bool {
        !matches!(self.0.try_recv(), Err(TryRecvError::Empty))
    }

    /// Waits for the job's end.
    pub fn wait(self) {
        let _ = self.0.recv();
    }
}

impl Threads {
    pub fn new(keep: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            keep,
            max_idle,
        })
    }

    fn idle(&self) -> MutexGuard<'_, Vec<SyncSender<Job>>> {
        // A list of channels: a panic elsewhere cannot leave it inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `job` on a waiting thread, or on a new one (named `name`) if none waits.
    pub fn run(
        self: &Arc<Self>,
        name: &str,
        job: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Done> {
        let (done, finished) = mpsc::sync_channel(1);
        let mut job: Job = Box::new(move || {
            job();
            // Dropped unsent when the job panics: `Done` sees that as finished too.
            let _ = done.send(());
        });
        {
            let mut idle = self.idle();
            while let Some(thread) = idle.pop() {
                // The slot is empty (a thread is listed only while it waits), so this never
                // blocks; it fails only when the thread has left.
                match thread.try_send(job) {
                    Ok(()) => return Ok(Done(finished)),
                    Err(
                        mpsc::TrySendError::Disconnected(back) | mpsc::TrySendError::Full(back),
                    ) => {
                        job = back;
                    }
                }
            }
        }
        let threads = Arc::clone(self);
        std::thread::Builder::new()
            .name(name.to_owned())
            .stack_size(STACK)
            .spawn(move || threads.work(job))?;
        Ok(Done(finished))
    }

    /// A thread's life: its first job, then whatever it is handed while it waits.
    fn work(&self, first: Job) {
        let mut job = first;
        loop {
            job();
            let (slot, jobs) = mpsc::sync_channel::<Job>(1);
            {
                let mut idle = self.idle();
                if idle.len() >= self.max_idle {
                    return;
                }
                idle.push(slot);
            }
            job = match jobs.recv_timeout(self.keep) {
                Ok(next) => next,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    let idle = self.idle();
                    match jobs.try_recv() {
                        // Handed over while the wait ended.
                        Ok(next) => {
                            drop(idle);
                            next
                        }
                        // Leaving under the lock: the channel is closed before the lock is
                        // let go, so a job handed over from now on comes back to its sender.
                        Err(_) => {
                            drop(jobs);
                            drop(idle);
                            return;
                        }
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    fn thread_id() -> std::thread::ThreadId {
        std::thread::current().id()
    }

    #[test]
    fn a_later_job_runs_on_the_thread_an_earlier_one_left() {
        let threads = Threads::new(Duration::from_secs(30), 4);
        let (tx, rx) = mpsc::channel();
        let first = {
            let tx = tx.clone();
            threads.run("t", move || tx.send(thread_id()).unwrap())
        }
        .unwrap();
        first.wait();
        let a = rx.recv().unwrap();
        // The thread lists itself after the job's end is signalled: wait for that.
        let deadline = Instant::now() + Duration::from_secs(10);
        while threads.idle().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the thread never waited for more"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        threads
            .run("t", move || tx.send(thread_id()).unwrap())
            .unwrap()
            .wait();
        assert_eq!(rx.recv().unwrap(), a);
    }

    #[test]
    fn concurrent_jobs_get_threads_of_their_own_and_all_run() {
        let threads = Threads::new(Duration::from_secs(30), 2);
        let ran = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(std::sync::Barrier::new(8));
        let done: Vec<Done> = (0..8)
            .map(|_| {
                let (ran, gate) = (Arc::clone(&ran), Arc::clone(&gate));
                threads
                    .run("t", move || {
                        // All eight at once: none waits for another's thread.
                        gate.wait();
                        ran.fetch_add(1, Ordering::SeqCst);
                    })
                    .unwrap()
            })
            .collect();
        for d in done {
            d.wait();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 8);
        // At most `max_idle` stay.
        std::thread::sleep(Duration::from_millis(50));
        assert!(threads.idle().len() <= 2);
    }

    #[test]
    fn a_thread_that_waited_too_long_leaves_and_the_next_job_still_runs() {
        let threads = Threads::new(Duration::from_millis(1), 4);
        threads.run("t", || {}).unwrap().wait();
        std::thread::sleep(Duration::from_millis(100));
        // Its channel is still listed, closed: the job moves on to a new thread.
        let (tx, rx) = mpsc::channel();
        threads
            .run("t", move || tx.send(7).unwrap())
            .unwrap()
            .wait();
        assert_eq!(rx.recv().unwrap(), 7);
    }

    #[test]
    fn a_job_that_panics_counts_as_finished() {
        let threads = Threads::new(Duration::from_secs(30), 4);
        let done = threads.run("t", || panic!("boom")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done.is_finished() {
            assert!(Instant::now() < deadline, "a panicked job never finished");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
