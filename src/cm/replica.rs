//! How a CM node replicates its directory: the one thing the two modes differ in.
//!
//! The request server asks its [`Replica`] whether it may serve (`ensure_leader`)
//! and to commit each directory command; everything else (planning,
//! invalidation, forwarding, confirmation) is the same code in both modes.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::heartbeat::HeartbeatReplica;
use crate::protocol::{Applied, DirCmd};
use crate::raft::RaftReplica;
use crate::status::{NodeStatus, Role};

/// A heartbeat backup counts as part of a working cluster while its copy of the
/// directory is at most this many pulses old.
pub const BACKUP_FRESH_PULSES: u32 = 3;

/// The directory's replication on this node.
#[allow(clippy::large_enum_variant)] // one per node, never moved after start
pub enum Replica {
    /// Committed through openraft on a majority of CM nodes.
    Raft(RaftReplica),
    /// Held by the acting primary, copied by the backup every pulse.
    Heartbeat(Arc<HeartbeatReplica>),
}

impl Replica {
    /// Fails with `NotLeader` (naming the leader) unless this node may serve faults.
    pub async fn ensure_leader(&self) -> Result<(), Error> {
        match self {
            Replica::Raft(r) => r.ensure_leader().await,
            Replica::Heartbeat(h) => h.ensure_leader(),
        }
    }

    /// Commits one directory command and returns what applying it did.
    pub async fn commit(&self, cmd: DirCmd) -> Result<Applied, Error> {
        match self {
            Replica::Raft(r) => r.proposer().propose(cmd).await,
            Replica::Heartbeat(h) => h.commit(&cmd),
        }
    }

    /// A number that changes whenever this node starts leading, while it leads
    /// (the Raft term; heartbeat: a count of claims).
    pub fn leader_term(&self) -> Option<u64> {
        match self {
            Replica::Raft(r) => r.leader_term(),
            Replica::Heartbeat(h) => h.leader_term(),
        }
    }

    /// Returns once this node's leadership is confirmed by a majority since
    /// `since` (Raft); the heartbeat baseline has no such check.
    pub async fn confirm_leadership(&self, since: tokio::time::Instant) -> Result<(), Error> {
        match self {
            Replica::Raft(r) => r.confirm_leadership(since).await,
            Replica::Heartbeat(h) => h.ensure_leader(),
        }
    }

    /// True while this node is part of a working cluster (readiness): Raft, a
    /// leader with a fresh quorum or a follower with a fresh leader (see
    /// [`crate::raft::freshness`]); heartbeat, the acting primary, or a backup
    /// whose last copy is at most `BACKUP_FRESH_PULSES` pulses old.
    pub fn in_working_cluster(&self, pulse: Duration) -> bool {
        match self {
            Replica::Raft(r) => r.standing().in_working_cluster(),
            Replica::Heartbeat(h) => match h.role() {
                Role::Primary | Role::ActingPrimary => true,
                Role::Backup => h.sync_age().is_some_and(|age| age <= pulse * BACKUP_FRESH_PULSES),
                _ => false,
            },
        }
    }

    /// This node's status (the directory counts are left at zero).
    pub fn status(&self) -> NodeStatus {
        match self {
            Replica::Raft(r) => r.status(),
            Replica::Heartbeat(h) => h.status(),
        }
    }

    /// Stops replication, so requests still in flight fail fast.
    pub async fn shutdown(&self) {
        if let Replica::Raft(r) = self {
            r.shutdown().await;
        }
    }

    /// Returns, with the reason, once replication has stopped by itself (a Raft
    /// core that panicked or hit a storage error); never in heartbeat mode.
    pub async fn stopped(&self) -> Error {
        match self {
            Replica::Raft(r) => r.core_stopped().await,
            Replica::Heartbeat(_) => std::future::pending().await,
        }
    }
}
