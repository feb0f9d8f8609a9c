//! A count of finished operations that another task can wait on (the demo's and
//! the bench's fault injectors act when a share of the operations is done).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Longest a waiter sleeps between checks, should a wake-up be missed.
const RECHECK: Duration = Duration::from_millis(20);

/// Operations done so far, with wake-ups for waiters.
#[derive(Debug, Default)]
pub struct OpCounter {
    done: AtomicU64,
    tick: Notify,
}

impl OpCounter {
    /// Counts `n` more operations as done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::SeqCst);
        self.tick.notify_waiters();
    }

    /// Operations done so far.
    pub fn get(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until at least `target` operations are done.
    pub(crate) async fn reach(&self, target: u64) {
        while self.get() < target {
            let notified = self.tick.notified();
            if self.get() >= target {
                break;
            }
            let _ = tokio::time::timeout(RECHECK, notified).await;
        }
    }
}
