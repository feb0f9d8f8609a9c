//! Raft replication of the CM directory: everything openraft touches, in one place.
//!
//! - [`TypeConfig`] and [`Raft`]: the openraft types of the CM cluster; log entries
//!   carry [`Batch`]es of directory commands.
//! - [`store`]: the log and vote in `raft.wal` (one `fdatasync` per append and
//!   per vote), the directory state machine and its snapshots in sled.
//! - [`node`]: start-up (open the store, start openraft, propose the initial
//!   membership, log role changes) and [`RaftReplica`], the read barrier and
//!   status of one node.
//! - [`Proposer`]: batches directory commands into log entries (openraft 0.9
//!   waits for each log flush before the next append).
//! - [`network`]: openraft's RPCs over the `RaftTransport` gRPC service.
//! - [`prevote`]: the campaigner that starts an election only once a majority
//!   has lost the leader (openraft's own election timer is off).
//! - [`freshness`]: whether this node stands in a working cluster right now
//!   (readiness, status), judged in one place.
//! - `observe`: structured logs of role, election and membership changes, and
//!   the Prometheus gauges, from openraft's metrics.
//! - [`RaftTimers`]: the timer flags turned into an openraft `Config`.

pub mod freshness;
pub mod members;
pub mod network;
pub mod node;
mod observe;
pub mod prevote;
mod proposer;
pub mod store;
pub mod votes;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ForwardToLeader, RaftError};
use openraft::{BasicNode, Config, RaftMetrics, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

pub use freshness::{standing, Contact, Standing};
pub use node::RaftReplica;
pub use proposer::Proposer;
pub use store::{Batch, BatchOutcome};

use crate::error::Error;
use crate::status::{LeaderRef, Role};

openraft::declare_raft_types!(
    /// The openraft type configuration of the CM cluster.
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A running openraft node of the CM cluster.
pub type Raft = openraft::Raft<TypeConfig>;

/// Default log entries between snapshots (`--snapshot-every`); bounds the log
/// replayed at restart and kept in memory.
pub const SNAPSHOT_EVERY: u64 = 1000;

/// Raft timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The openraft configuration for these timers and a snapshot every
    /// `snapshot_every` log entries, validated.
    pub fn config(&self, snapshot_every: u64) -> Result<Arc<Config>, Error> {
        if snapshot_every == 0 {
            return Err(Error::InvalidConfig("--snapshot-every must be at least 1".into()));
        }
        let config = Config {
            cluster_name: "ivy-cm".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
            max_in_snapshot_log_to_keep: snapshot_every,
            // Elections are started by the pre-vote campaigner (`prevote`), never
            // by openraft's timer, which would raise the term without asking.
            enable_elect: false,
            ..Default::default()
        };
        let config = config.validate().map_err(|e| Error::InvalidConfig(format!("raft timers: {e}")))?;
        Ok(Arc::new(config))
    }

    /// The freshness window: a leader must have heard from a majority, and a
    /// follower from its leader, within one (maximum) election timeout.
    pub fn freshness_window(&self) -> Duration {
        Duration::from_millis(self.election_max_ms)
    }

    /// How long a commit may take before the manager reports a lost quorum.
    pub fn commit_deadline(&self) -> Duration {
        const MIN_COMMIT_DEADLINE: Duration = Duration::from_millis(1500);
        MIN_COMMIT_DEADLINE.max(Duration::from_millis(self.election_max_ms * 5))
    }
}

/// The role a Raft server state is shown as.
pub fn role(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

/// The leader the metrics name, if any.
pub fn leader_of(metrics: &RaftMetrics<u64, BasicNode>) -> Option<LeaderRef> {
    let id = metrics.current_leader?;
    let addr = metrics.membership_config.nodes().find(|(n, _)| **n == id)?.1.addr.clone();
    Some(LeaderRef { id, addr })
}

/// `Error::NotLeader` naming the leader this node knows of.
pub fn not_leader(raft: &Raft) -> Error {
    Error::NotLeader { leader: leader_of(&raft.metrics().borrow()).map(|l| (l.id, l.addr)) }
}

/// Maps an openraft API error to ours: a forward becomes `NotLeader`.
pub fn raft_error<E>(raft: &Raft, err: RaftError<u64, E>) -> Error
where
    E: std::error::Error + openraft::TryAsRef<ForwardToLeader<u64, BasicNode>>,
{
    match err.forward_to_leader() {
        Some(fwd) => {
            let leader = fwd.leader_id.zip(fwd.leader_node.as_ref().map(|n| n.addr.clone()));
            match leader {
                Some(leader) => Error::NotLeader { leader: Some(leader) },
                None => not_leader(raft),
            }
        }
        None => Error::Unavailable(format!("raft: {err}")),
    }
}
