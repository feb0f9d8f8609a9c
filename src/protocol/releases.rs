//! Releases waiting to reach their holders, batched per holder.
//!
//! A release says that a fault at some epoch is committed, so a holder's copies
//! of the page older than that epoch (the bytes an old owner or an invalidated
//! reader kept) may go. It is a fact about the committed directory and it is
//! idempotent and monotone on the client (the floor and the mark only grow, and
//! only copies strictly older than the epoch go), so it may arrive late, twice,
//! out of order with any other message, or never, as a best-effort message
//! always could (docs/DESIGN.md, "Releases ride along"). The leader therefore
//! does not send one RPC per release: it queues them here, per holder, and they
//! leave with the next forward or invalidation it sends that holder, or in one
//! `ReleaseBatch` message per holder when [`RELEASES_PER_MESSAGE`] are waiting or the
//! next flush comes. A later release of a page supersedes an earlier one for the
//! same holder: only the newest epoch is kept.

use std::collections::BTreeMap;

use super::types::{ClientId, Epoch, PageName};

/// Most releases one message carries (a forward, an invalidation or a
/// `ReleaseBatch`): with page names of at most 64 bytes, under 3 KiB of the
/// envelope a holder accepts beyond a page.
pub const RELEASES_PER_MESSAGE: usize = 32;

/// One release: copies of `page` older than `epoch` may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The page.
    pub page: PageName,
    /// The epoch of the committed fault; older copies may go.
    pub epoch: Epoch,
}

/// The releases not yet sent, per holder.
#[derive(Debug, Clone, Default)]
pub struct Releases {
    waiting: BTreeMap<ClientId, BTreeMap<PageName, Epoch>>,
}

impl Releases {
    /// Queues a release of `page` below `epoch` for `holder`; true when a whole
    /// message's worth now waits for it.
    pub fn add(&mut self, holder: ClientId, page: PageName, epoch: Epoch) -> bool {
        let queue = self.waiting.entry(holder).or_default();
        let newest = queue.entry(page).or_default();
        *newest = (*newest).max(epoch);
        queue.len() >= RELEASES_PER_MESSAGE
    }

    /// Takes up to [`RELEASES_PER_MESSAGE`] of the releases waiting for `holder`.
    pub fn take(&mut self, holder: ClientId) -> Vec<Release> {
        let Some(queue) = self.waiting.get_mut(&holder) else { return Vec::new() };
        let mut taken = Vec::with_capacity(queue.len().min(RELEASES_PER_MESSAGE));
        while taken.len() < RELEASES_PER_MESSAGE {
            let Some((page, epoch)) = queue.pop_first() else { break };
            taken.push(Release { page, epoch });
        }
        if queue.is_empty() {
            self.waiting.remove(&holder);
        }
        taken
    }

    /// The holders with releases waiting.
    pub fn holders(&self) -> Vec<ClientId> {
        self.waiting.keys().copied().collect()
    }

    /// Drops what waits for `holder` (it left the directory).
    pub fn forget(&mut self, holder: ClientId) {
        self.waiting.remove(&holder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(name: &str) -> PageName {
        PageName::new(name).unwrap()
    }

    #[test]
    fn a_newer_release_of_a_page_supersedes_an_older_one() {
        let mut r = Releases::default();
        r.add(1, page("P1"), 5);
        r.add(1, page("P1"), 3);
        r.add(1, page("P2"), 2);
        assert_eq!(r.take(1), vec![Release { page: page("P1"), epoch: 5 }, Release { page: page("P2"), epoch: 2 }]);
        assert!(r.take(1).is_empty());
        assert!(r.holders().is_empty());
    }

    #[test]
    fn holders_are_kept_apart_and_a_full_message_is_reported() {
        let mut r = Releases::default();
        for i in 0..RELEASES_PER_MESSAGE - 1 {
            assert!(!r.add(7, page(&format!("P{i}")), 1));
        }
        assert!(!r.add(8, page("Q"), 1));
        assert!(r.add(7, page("last"), 1));
        assert_eq!(r.holders(), vec![7, 8]);
        assert_eq!(r.take(7).len(), RELEASES_PER_MESSAGE);
        assert_eq!(r.holders(), vec![8]);
        r.forget(8);
        assert!(r.holders().is_empty());
    }

    #[test]
    fn a_take_carries_at_most_one_message() {
        let mut r = Releases::default();
        for i in 0..RELEASES_PER_MESSAGE + 3 {
            r.add(2, page(&format!("P{i}")), 1);
        }
        assert_eq!(r.take(2).len(), RELEASES_PER_MESSAGE);
        assert_eq!(r.take(2).len(), 3);
        assert!(r.take(2).is_empty());
    }
}
