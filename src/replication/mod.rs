//! Replication: the directory's commands committed through openraft.
//!
//! - [`RaftTimers`] turns the timer flags into an openraft `Config`.
//! - [`Proposer`] batches directory commands into log entries: openraft 0.9 waits
//!   for each log flush before the next append, so one entry carrying every
//!   command that arrived meanwhile raises throughput.
//! - [`heartbeat`] is the baseline: the original primary/backup design, whose
//!   backup copies the directory every pulse.
//! - [`leader_of`] and [`not_leader`] read who leads from the Raft metrics, so the
//!   manager can point a client at the leader.

pub mod heartbeat;
mod proposer;

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ForwardToLeader, RaftError};
use openraft::{BasicNode, Config, RaftMetrics, SnapshotPolicy};

pub use proposer::Proposer;

use crate::error::Error;
use crate::storage::TypeConfig;

/// A running openraft node of the CM cluster.
pub type Raft = openraft::Raft<TypeConfig>;

/// Log entries between snapshots; bounds the log replayed at restart.
pub const SNAPSHOT_EVERY: u64 = 1000;

/// Raft timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTimers {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    pub election_max_ms: u64,
}

impl Default for RaftTimers {
    /// Tuned for fast failover on a LAN: about 0.2-0.3 s from leader death to a new leader.
    fn default() -> Self {
        RaftTimers { heartbeat_ms: 25, election_min_ms: 100, election_max_ms: 200 }
    }
}

impl RaftTimers {
    /// The openraft configuration for these timers, validated.
    pub fn config(&self) -> Result<Arc<Config>, Error> {
        let config = Config {
            cluster_name: "ivy-cm".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            max_in_snapshot_log_to_keep: SNAPSHOT_EVERY,
            ..Default::default()
        };
        let config = config.validate().map_err(|e| Error::Malformed(format!("raft timers: {e}")))?;
        Ok(Arc::new(config))
    }
}

/// The leader (id, address) the metrics name, if any.
pub fn leader_of(metrics: &RaftMetrics<u64, BasicNode>) -> Option<(u64, String)> {
    let id = metrics.current_leader?;
    let addr = metrics.membership_config.nodes().find(|(n, _)| **n == id)?.1.addr.clone();
    Some((id, addr))
}

/// `Error::NotLeader` naming the leader this node knows of.
pub fn not_leader(raft: &Raft) -> Error {
    Error::NotLeader { leader: leader_of(&raft.metrics().borrow()) }
}

/// Maps an openraft API error to ours: a forward becomes `NotLeader`.
pub fn raft_error<E>(raft: &Raft, err: RaftError<u64, E>) -> Error
where
    E: std::error::Error + openraft::TryAsRef<ForwardToLeader<u64, BasicNode>>,
{
    match err.forward_to_leader() {
        Some(fwd) => {
            let leader = fwd.leader_id.zip(fwd.leader_node.as_ref().map(|n| n.addr.clone()));
            let leader = leader.or_else(|| leader_of(&raft.metrics().borrow()));
            Error::NotLeader { leader }
        }
        None => Error::Unavailable(format!("raft: {err}")),
    }
}

/// How long a commit may take before the manager reports a lost quorum.
pub fn commit_deadline(timers: &RaftTimers) -> Duration {
    const MIN_COMMIT_DEADLINE: Duration = Duration::from_millis(1500);
    MIN_COMMIT_DEADLINE.max(Duration::from_millis(timers.election_max_ms * 5))
}
