//! The client's side of its lease: how long it may trust its copies, and the
//! keepalive loop that renews the lease with the leading CM.
//!
//! The client counts its lease from when it *sent* the renewal the leader
//! acknowledged, so its view always ends before the leader's (which counts from
//! when it received the renewal, plus a margin). While the view is valid the
//! client serves local hits; once it has run out, every read and write faults.
//! A client that learns it was evicted drops every copy, registers again under a
//! new id, and says so (an [`ClientEvent::Evicted`]).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::protocol::ClientId;

/// Renewals per lease: a keepalive every third of it leaves room for two misses.
pub const RENEWALS_PER_LEASE: u32 = 3;

/// Pause before trying again after a renewal failed.
pub const RENEW_RETRY: Duration = Duration::from_millis(100);

/// Something that happened to the client on its own, not in answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ClientEvent {
    /// The CM evicted this client (its lease ran out); it dropped its copies and
    /// registered again.
    Evicted {
        /// The id it was evicted under.
        client: ClientId,
        /// The id it registered again under.
        now: ClientId,
    },
}

/// How long this client may trust its copies.
#[derive(Debug, Default)]
pub struct LeaseView {
    valid_until: Mutex<Option<Instant>>,
    /// Testing only: serve local hits whatever the lease says (a broken build).
    ignore: bool,
}

impl LeaseView {
    /// A view with no lease yet; `ignore` breaks it on purpose (testing only).
    pub fn new(ignore: bool) -> Self {
        if ignore {
            tracing::warn!("UNSAFE: local hits are served whether or not the lease is valid");
        }
        LeaseView { valid_until: Mutex::new(None), ignore }
    }

    /// True while local hits are allowed.
    pub fn valid(&self) -> bool {
        self.ignore || self.remaining().is_some()
    }

    /// True while local hits are allowed for at least `margin` more.
    pub fn valid_for(&self, margin: Duration) -> bool {
        self.ignore || self.remaining().is_some_and(|left| left > margin)
    }

    /// Time left on the lease, if it has not run out.
    pub fn remaining(&self) -> Option<Duration> {
        let until = (*self.lock())?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// A renewal sent at `sent` was acknowledged with a lease of `lease`.
    pub fn extend(&self, sent: Instant, lease: Duration) {
        let mut until = self.lock();
        *until = Some(until.map_or(sent + lease, |u| u.max(sent + lease)));
    }

    /// The lease is gone (the client was evicted).
    pub fn end(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }
}
