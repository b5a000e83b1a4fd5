//! Where a running command's output goes, on either path (Docker exec or the agent): kept
//! in a [`Collector`] for a buffered exec, or sent as [`ExecEvent`]s through a bounded channel
//! for a streamed one.
//!
//! An exec loop reads its source only while the sink is [`Sink::ready`] and polls
//! [`Sink::drive`] beside its other branches, so a consumer that reads slowly holds the
//! command's output back (its pipe fills and it waits) without ever blocking the loop's
//! timeout, and a consumer that goes away is noticed at once, even while the command is
//! silent.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use monza_domain::{Error, ExecEvent, ExecOutput, OutputStream, Result};
use tokio::sync::mpsc;

use crate::exec::Collector;

/// Events a streamed exec may have in flight towards its consumer.
pub(crate) const STREAM_EVENTS: usize = 16;

/// How a command ended, as an exec loop saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finished {
    pub(crate) exit_code: i64,
    pub(crate) timed_out: bool,
    pub(crate) duration: Duration,
}

/// A command's output destination.
#[derive(Debug)]
pub(crate) enum Sink {
    /// Kept, capped, for one [`ExecOutput`].
    Collect(Collector),
    /// Sent as it comes.
    Send {
        tx: mpsc::Sender<Result<ExecEvent>>,
        /// Chunks taken from the source and not sent yet.
        pending: VecDeque<ExecEvent>,
    },
    /// The consumer went away: output is read and dropped until the command is killed.
    Gone,
}

impl Sink {
    /// A sink keeping at most `cap` bytes per buffer.
    pub(crate) fn collect(cap: usize) -> Self {
        Self::Collect(Collector::new(cap))
    }

    /// A sink sending every chunk through `tx`.
    pub(crate) fn send(tx: mpsc::Sender<Result<ExecEvent>>) -> Self {
        Self::Send {
            tx,
            pending: VecDeque::new(),
        }
    }

    /// Whether it takes a chunk now: a loop reads its source only then.
    pub(crate) fn ready(&self) -> bool {
        match self {
            Self::Collect(_) | Self::Gone => true,
            Self::Send { pending, .. } => pending.is_empty(),
        }
    }

    /// Takes a chunk: kept at once, or held until [`Sink::drive`] sends it.
    pub(crate) fn push(&mut self, stream: OutputStream, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match self {
            Self::Collect(collector) => collector.push(stream, &data),
            Self::Send { pending, .. } => pending.push_back(ExecEvent::Output { stream, data }),
            Self::Gone => {}
        }
    }

    /// Sends the oldest held chunk, or, with none held, waits for the consumer to go away.
    /// `false` once the consumer is gone, after which the sink is [`Sink::Gone`]. Never ends
    /// for a collecting sink, nor once gone. Cancel-safe: a chunk leaves `pending` only once
    /// its slot in the channel is reserved.
    pub(crate) async fn drive(&mut self) -> bool {
        let live = match self {
            Self::Collect(_) | Self::Gone => std::future::pending().await,
            Self::Send { tx, pending } => {
                if pending.is_empty() {
                    tx.closed().await;
                    false
                } else {
                    match tx.reserve().await {
                        Ok(permit) => {
                            if let Some(event) = pending.pop_front() {
                                permit.send(Ok(event));
                            }
                            true
                        }
                        Err(_) => false,
                    }
                }
            }
        };
        if !live {
            *self = Self::Gone;
        }
        live
    }

    /// What a buffered exec answers; `None` for a sending sink.
    pub(crate) fn into_output(self, finished: Finished) -> Option<ExecOutput> {
        match self {
            Self::Collect(collector) => {
                Some(collector.finish(finished.exit_code, finished.timed_out, finished.duration))
            }
            Self::Send { .. } | Self::Gone => None,
        }
    }

    /// Ends a sending sink: what is held, then the exit (or the error). Nothing for a
    /// collecting one. A consumer gone meanwhile is not an error.
    pub(crate) async fn end(self, result: Result<Finished>) {
        let Self::Send { tx, pending } = self else {
            return;
        };
        for event in pending {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        let last = result.map(|f| ExecEvent::Exit {
            exit_code: f.exit_code,
            timed_out: f.timed_out,
            duration: f.duration,
        });
        let _ = tx.send(last).await;
    }
}

/// The error an exec loop returns when its consumer went away (the command was killed).
pub(crate) fn consumer_gone() -> Error {
    Error::unavailable(
        "exec stream",
        "the client stopped reading the command's output; the command was killed",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_sending_sink_holds_a_chunk_until_its_slot_is_free_and_ends_with_the_exit() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut sink = Sink::send(tx);
        sink.push(OutputStream::Stdout, Bytes::from_static(b"a"));
        assert!(!sink.ready());
        assert!(sink.drive().await);
        assert!(sink.ready());
        sink.push(OutputStream::Stderr, Bytes::from_static(b"b"));
        // The channel is full: driving waits, and a drive given up keeps the chunk.
        assert!(sink.drive().now_or_never().is_none());
        assert!(!sink.ready());
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(
            first,
            ExecEvent::Output {
                stream: OutputStream::Stdout,
                data: Bytes::from_static(b"a")
            }
        );
        let finished = Finished {
            exit_code: 3,
            timed_out: false,
            duration: Duration::from_millis(5),
        };
        let ending = tokio::spawn(sink.end(Ok(finished)));
        let mut rest = Vec::new();
        while let Some(event) = rx.recv().await {
            rest.push(event.unwrap());
        }
        ending.await.unwrap();
        assert_eq!(
            rest,
            [
                ExecEvent::Output {
                    stream: OutputStream::Stderr,
                    data: Bytes::from_static(b"b")
                },
                ExecEvent::Exit {
                    exit_code: 3,
                    timed_out: false,
                    duration: Duration::from_millis(5)
                }
            ]
        );
    }

    #[tokio::test]
    async fn a_sending_sink_notices_its_consumer_leave_while_nothing_is_held() {
        let (tx, rx) = mpsc::channel(1);
        let mut sink = Sink::send(tx);
        assert!(sink.drive().now_or_never().is_none());
        drop(rx);
        assert!(!sink.drive().await);
        // Gone: output is dropped and the loop may keep reading until the command is killed.
        assert!(matches!(sink, Sink::Gone));
        sink.push(OutputStream::Stdout, Bytes::from_static(b"dropped"));
        assert!(sink.ready());
        assert!(sink.drive().now_or_never().is_none());
    }
}
