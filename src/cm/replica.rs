//! How a CM node replicates its directory: the one thing the two modes differ in.
//!
//! The fault server asks its [`Replica`] whether it may serve (`ensure_leader`) and
//! to commit each directory command; everything else (planning, invalidation,
//! forwarding, confirmation) is the same code in both modes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use super::manager::role_name;
use crate::error::Error;
use crate::protocol::{DirCmd, Outcome};
use crate::replication::heartbeat::{HeartbeatReplica, Role};
use crate::replication::{leader_of, not_leader, raft_error, Proposer, Raft};

/// The directory's replication on this node.
pub enum Replica {
    /// Committed through openraft on a majority of CM nodes.
    Raft(RaftReplica),
    /// Held by the acting primary, copied by the backup every pulse.
    Heartbeat(Arc<HeartbeatReplica>),
}

/// A node's view of itself, for `ivy status`.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// Node id.
    pub id: u64,
    /// Role name (leader, follower, candidate, primary, backup, acting-primary).
    pub role: String,
    /// True when this node serves faults.
    pub serving: bool,
    /// Raft term (0 in heartbeat mode).
    pub term: u64,
    /// Last log index (heartbeat mode: directory version).
    pub last_log_index: u64,
    /// Applied index (heartbeat mode: directory version).
    pub applied_index: u64,
    /// The leader this node knows (id, address).
    pub leader: Option<(u64, String)>,
    /// "raft" or "heartbeat".
    pub mode: &'static str,
    /// Heartbeat backup: age of its last copy.
    pub last_sync: Option<Duration>,
}

/// The Raft side: a proposer for commits and a once-per-term read barrier.
pub struct RaftReplica {
    raft: Raft,
    proposer: Proposer,
    deadline: Duration,
    ready_term: AtomicU64,
}

impl RaftReplica {
    /// Replication through `raft`, committing via `proposer` within `deadline`.
    pub fn new(raft: Raft, proposer: Proposer, deadline: Duration) -> Self {
        RaftReplica { raft, proposer, deadline, ready_term: AtomicU64::new(0) }
    }

    /// Fails with `NotLeader` unless this node leads; once per term, waits until
    /// the directory reflects every commit of earlier terms.
    async fn ensure_leader(&self) -> Result<(), Error> {
        let (state, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            return Err(not_leader(&self.raft));
        }
        if self.ready_term.load(Ordering::Acquire) == term {
            return Ok(());
        }
        match tokio::time::timeout(self.deadline, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {
                self.ready_term.store(term, Ordering::Release);
                Ok(())
            }
            Ok(Err(err)) => Err(raft_error(&self.raft, err)),
            Err(_) => Err(Error::NoQuorum(format!(
                "leader could not reach a majority within {} ms",
                self.deadline.as_millis()
            ))),
        }
    }

    fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        NodeStatus {
            id: m.id,
            role: role_name(m.state).to_string(),
            serving: m.state == ServerState::Leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            leader: leader_of(&m),
            mode: "raft",
            last_sync: None,
        }
    }
}

impl Replica {
    /// Fails with `NotLeader` (naming the leader) unless this node may serve faults.
    pub async fn ensure_leader(&self) -> Result<(), Error> {
        match self {
            Replica::Raft(r) => r.ensure_leader().await,
            Replica::Heartbeat(h) => h.ensure_leader(),
        }
    }

    /// Commits one directory command and returns its outcome.
    pub async fn commit(&self, cmd: DirCmd) -> Result<Outcome, Error> {
        match self {
            Replica::Raft(r) => r.proposer.propose(cmd).await,
            Replica::Heartbeat(h) => h.commit(&cmd),
        }
    }

    /// This node's status.
    pub fn status(&self) -> NodeStatus {
        match self {
            Replica::Raft(r) => r.status(),
            Replica::Heartbeat(h) => {
                let role = h.role();
                NodeStatus {
                    id: h.id(),
                    role: role.name().to_string(),
                    serving: role != Role::Backup,
                    term: 0,
                    last_log_index: h.version(),
                    applied_index: h.version(),
                    leader: Some(h.leader()),
                    mode: "heartbeat",
                    last_sync: h.sync_age(),
                }
            }
        }
    }
}
