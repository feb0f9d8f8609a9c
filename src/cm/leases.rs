//! Client leases, as the leader keeps them: leader-local timers, never in the log.
//!
//! Every registered client renews its lease by a keepalive. The leader records
//! when it *received* each client's last renewal and evicts a client only once
//! the lease plus a margin has passed since then; the client, for its part,
//! serves local hits only until the lease has passed since it *sent* the renewal.
//! The receive time is later than the send time, and the margin covers a bounded
//! difference in clock rates, so the leader never evicts a client that may still
//! trust its copies (docs/DESIGN.md gives the argument).
//!
//! A node that starts leading (a new term) gives every client a full fresh lease
//! counted from then, so a CM failover never evicts a live client.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::ClientId;

/// Default client lease.
pub const DEFAULT_CLIENT_LEASE: Duration = Duration::from_millis(2000);

/// The share of the lease added as a margin before eviction: the clocks of the
/// leader and a client may run at rates that differ by up to about a tenth
/// (margin ≥ 2·drift·lease).
pub const LEASE_MARGIN_SHARE: u32 = 4;

/// The leases of one leader.
#[derive(Debug)]
pub struct Leases {
    lease: Duration,
    margin: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The term these timers belong to, and when this node started leading it.
    term: Option<(u64, Instant)>,
    /// When the last renewal of each client was received in this term.
    renewed: HashMap<ClientId, Instant>,
}

impl Leases {
    /// Leases of `lease` each, evicted `lease / LEASE_MARGIN_SHARE` after they run out.
    pub fn new(lease: Duration) -> Self {
        Leases { lease, margin: lease / LEASE_MARGIN_SHARE, inner: Mutex::default() }
    }

    /// The lease a client holds after each renewal.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The lease plus the margin: how long after a renewal the leader may evict.
    pub fn eviction_delay(&self) -> Duration {
        self.lease + self.margin
    }

    /// Records a renewal by `client` received at `received`, while leading `term`.
    pub fn renew(&self, term: u64, client: ClientId, received: Instant) {
        let mut inner = self.inner(term);
        let last = inner.renewed.entry(client).or_insert(received);
        *last = (*last).max(received);
    }

    /// How long until `client` may be evicted (zero: now).
    pub fn remaining(&self, term: u64, client: ClientId, now: Instant) -> Duration {
        let inner = self.inner(term);
        (inner.since(client) + self.eviction_delay()).saturating_duration_since(now)
    }

    /// The clients among `registered` whose lease has run out, margin included.
    pub fn expired(&self, term: u64, registered: impl Iterator<Item = ClientId>, now: Instant) -> Vec<ClientId> {
        let inner = self.inner(term);
        registered.filter(|c| inner.since(*c) + self.eviction_delay() <= now).collect()
    }

    /// Time since the last renewal of `client` this node received, if it leads `term`.
    pub fn age(&self, term: u64, client: ClientId, now: Instant) -> Duration {
        now.saturating_duration_since(self.inner(term).since(client))
    }

    /// Forgets an evicted or departed client.
    pub fn forget(&self, client: ClientId) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).renewed.remove(&client);
    }

    /// The timers of `term`: a new term starts every lease afresh.
    fn inner(&self, term: u64) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.term.map(|(t, _)| t) != Some(term) {
            inner.term = Some((term, Instant::now()));
            inner.renewed.clear();
        }
        inner
    }
}

impl Inner {
    /// When the lease of `client` was last renewed: its last renewal, or the
    /// start of the term.
    fn since(&self, client: ClientId) -> Instant {
        let started = self.term.map_or_else(Instant::now, |(_, at)| at);
        self.renewed.get(&client).copied().unwrap_or(started).max(started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_runs_out_after_the_margin_and_a_new_term_renews_all() {
        let leases = Leases::new(Duration::from_millis(2000));
        let t0 = Instant::now();
        leases.renew(5, 1, t0);
        tokio::time::advance(Duration::from_millis(2400)).await;
        assert!(leases.expired(5, [1, 2].into_iter(), Instant::now()).is_empty(), "not before lease + margin");
        assert_eq!(leases.remaining(5, 1, Instant::now()), Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(leases.expired(5, [1, 2].into_iter(), Instant::now()), vec![1, 2]);
        // A new term starts every lease afresh.
        assert!(leases.expired(6, [1, 2].into_iter(), Instant::now()).is_empty());
        assert_eq!(leases.age(6, 1, Instant::now()), Duration::ZERO);
    }
}
