//! Releases on the leader: queued per holder, carried on the next forward or
//! invalidation to that holder, or sent in one `ReleaseBatch` per holder when a
//! message's worth waits or the next flush comes (docs/DESIGN.md, "Releases
//! ride along").

use std::sync::Arc;
use std::time::Duration;

use super::{ticks, RequestServer};
use crate::metrics::{self, ReleaseVia};
use crate::protocol::{ClientId, Epoch, PageName, Release, Releases};

/// How often releases that found no forward or invalidation to ride on leave
/// in a batch of their own: the longest a release waits in the queue (one
/// that is lost on the way is not sent again).
const RELEASE_FLUSH: Duration = Duration::from_millis(100);

impl RequestServer {
    /// Tells holders, best effort and without waiting, that their kept bytes
    /// may go: queued, to ride on the next request to each holder; a holder
    /// with a message's worth waiting gets them at once.
    pub(super) fn release(&self, holders: &[ClientId], page: &PageName, epoch: Epoch) {
        if self.skip_invalidation {
            return;
        }
        for id in holders {
            let full = self.queued(|q| q.add(*id, page.clone(), epoch));
            if full {
                self.send_releases(*id);
            }
        }
    }

    /// Runs `f` on the queue of this node's current stretch of leadership. A
    /// node that stopped serving, or serves a new term, drops what it queued
    /// before: a heartbeat takeover can undo a primary's commits, and a
    /// release that never comes costs memory only (docs/DESIGN.md, "Releases
    /// ride along").
    fn queued<T>(&self, f: impl FnOnce(&mut Releases) -> T) -> T {
        let term = self.replica.leader_term();
        let mut queue = self.releases.lock().unwrap_or_else(|e| e.into_inner());
        let (queued_in, releases) = &mut *queue;
        if *queued_in != term {
            *releases = Releases::default();
            *queued_in = term;
        }
        f(releases)
    }

    /// The releases to carry on the next message to `holder`.
    pub(super) fn take_releases(&self, holder: ClientId) -> Vec<Release> {
        self.queued(|q| q.take(holder))
    }

    /// Sends one batch of `holder`'s waiting releases, without waiting for it.
    fn send_releases(&self, id: ClientId) {
        let holder = match self.holder(id) {
            Ok(holder) => holder,
            Err(_) => return self.queued(|q| q.forget(id)),
        };
        let batch = self.take_releases(id);
        if batch.is_empty() {
            return;
        }
        let rpc = self.holders.clone();
        metrics::releases_sent(ReleaseVia::Release, batch.len());
        tokio::spawn(async move {
            if let Err(err) = rpc.release(&holder, &batch).await {
                tracing::debug!("{} releases at client {}: {err}", batch.len(), holder.id);
            }
        });
    }

    /// Every `RELEASE_FLUSH` (100 ms), sends each holder the releases that found no
    /// request to ride on; returns once the server is dropped.
    pub async fn deliver_releases(self: Arc<Self>) {
        let mut ticks = ticks(RELEASE_FLUSH);
        while self.next_tick(&mut ticks).await {
            for id in self.queued(|q| q.holders()) {
                self.send_releases(id);
            }
        }
    }
}
