//! The server-wide bound on command output held in memory at once.
//!
//! Each execute reserves what its answer can hold (twice its output cap: the combined
//! `output` and the stream it came from) before the command runs, and gives it back when
//! its answer has been sent. When the budget is spent, an execute is answered 503 at once,
//! before anything runs, so many large commands at once cannot exhaust the server's memory.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A shared byte budget; clones share it.
#[derive(Clone)]
pub struct OutputBudget {
    limit: u64,
    used: Arc<AtomicU64>,
}

impl OutputBudget {
    /// A budget of `limit` bytes (0: no bound).
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: Arc::default(),
        }
    }

    /// The bound, in bytes (0: none).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Reserves `bytes`, or `None` if that would pass the limit. A single request larger
    /// than the whole budget is still admitted when nothing else is reserved, so a limit
    /// set below the largest cap refuses nothing forever.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        if self.limit == 0 {
            return Some(Reservation {
                budget: self.clone(),
                bytes: 0,
            });
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(bytes)?;
                (after <= self.limit || used == 0).then_some(after)
            })
            .ok()
            .map(|_| Reservation {
                budget: self.clone(),
                bytes,
            })
    }
}

impl fmt::Debug for OutputBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputBudget")
            .field("limit", &self.limit)
            .field("used", &self.used())
            .finish()
    }
}

impl PartialEq for OutputBudget {
    fn eq(&self, other: &Self) -> bool {
        self.limit == other.limit
    }
}

impl Eq for OutputBudget {}

/// Bytes held from an [`OutputBudget`] until this is dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: OutputBudget,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_limit_and_returned_on_drop() {
        let budget = OutputBudget::new(100);
        let a = budget.try_reserve(60).unwrap();
        assert!(budget.try_reserve(60).is_none());
        let b = budget.try_reserve(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(budget.clone().try_reserve(60).is_some());
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn one_request_over_the_whole_budget_runs_alone() {
        let budget = OutputBudget::new(100);
        let big = budget.try_reserve(500).unwrap();
        assert!(budget.try_reserve(1).is_none());
        drop(big);
        assert_eq!(budget.used(), 0);
        assert!(OutputBudget::new(0).try_reserve(u64::MAX).is_some());
    }
}
