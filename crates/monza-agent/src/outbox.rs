//! The frames waiting for the socket, bounded in bytes.
//!
//! Every producer (a command's output, its exit, a pong) pushes encoded frames here and one
//! writer thread drains them into the socket. The queue holds at most `budget` bytes (one
//! frame over it when it is empty, so a frame is never refused for its size): when the host
//! reads slowly, the socket fills, the writer blocks, the queue fills and the command threads
//! block in [`Outbox::push`], so they stop reading their pipes and the commands block on
//! write. The agent's memory for output is therefore the budget plus one read buffer per
//! running command, whatever the commands write.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use monza_agent_protocol::{EncodeError, Message, encode_to_vec};

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Signalled when bytes leave the queue.
    space: Condvar,
    /// Signalled when a frame arrives or the outbox closes.
    ready: Condvar,
    budget: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: bool,
}

#[derive(Debug)]
pub enum PushError {
    /// The connection is gone: nothing will be sent any more.
    Closed,
    /// The deadline passed while the queue was full; the frame was not queued.
    TimedOut(Vec<u8>),
    Encode(EncodeError),
}

impl Outbox {
    pub fn new(budget: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            space: Condvar::new(),
            ready: Condvar::new(),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame`, waiting for room until `deadline` (for ever when `None`).
    pub fn push(&self, frame: Vec<u8>, deadline: Option<Instant>) -> Result<(), PushError> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(PushError::Closed);
            }
            if state.frames.is_empty() || state.bytes + frame.len() <= self.budget {
                state.bytes += frame.len();
                state.frames.push_back(frame);
                self.ready.notify_one();
                return Ok(());
            }
            state = match deadline {
                None => self
                    .space
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(PushError::TimedOut(frame));
                    }
                    self.space
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Encodes and queues a message, waiting for room as long as it takes.
    pub fn send(&self, message: &Message) -> Result<(), PushError> {
        let frame = encode_to_vec(message).map_err(PushError::Encode)?;
        self.push(frame, None)
    }

    /// The next frame for the socket; `None` once the outbox is closed.
    pub fn pop(&self) -> Option<Vec<u8>> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(frame) = state.frames.pop_front() {
                state.bytes -= frame.len();
                self.space.notify_all();
                return Some(frame);
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Drops what is queued and refuses every later push: the connection is gone.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.frames.clear();
        state.bytes = 0;
        self.space.notify_all();
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_full_outbox_blocks_producers_until_the_writer_drains_it() {
        let outbox = Arc::new(Outbox::new(10));
        outbox.push(vec![0; 8], None).unwrap();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(matches!(
            outbox.push(vec![1; 8], Some(deadline)),
            Err(PushError::TimedOut(frame)) if frame == vec![1; 8]
        ));
        let producer = {
            let outbox = Arc::clone(&outbox);
            std::thread::spawn(move || outbox.push(vec![2; 8], None).is_ok())
        };
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(outbox.pop(), Some(vec![0; 8]));
        assert!(producer.join().unwrap());
        assert_eq!(outbox.pop(), Some(vec![2; 8]));
    }

    #[test]
    fn an_oversized_frame_passes_alone_and_close_wakes_everyone() {
        let outbox = Arc::new(Outbox::new(4));
        outbox.push(vec![0; 100], None).unwrap();
        let producer = {
            let outbox = Arc::clone(&outbox);
            std::thread::spawn(move || outbox.push(vec![1], None))
        };
        std::thread::sleep(Duration::from_millis(20));
        outbox.close();
        assert!(matches!(producer.join().unwrap(), Err(PushError::Closed)));
        assert_eq!(outbox.pop(), None);
    }
}
