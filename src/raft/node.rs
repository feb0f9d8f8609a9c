//! Starting the Raft side of a CM node, and what the node asks of Raft while it
//! serves: may I serve (the read barrier), and how do I stand (status).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use openraft::{BasicNode, ServerState};

use super::freshness::{Contact, Standing};
use super::network::NetworkFactory;
use super::store::{SyncCounter, SyncPolicy};
use super::{leader_of, not_leader, raft_error, role, store, Proposer, Raft, RaftTimers};
use crate::config::ReplicationMode;
use crate::error::Error;
use crate::protocol::SharedDirectory;
use crate::rpc::RaftClient;
use crate::status::NodeStatus;

/// What the Raft side of a node needs to start.
pub struct RaftStart<'a> {
    /// This node's id.
    pub id: u64,
    /// Every CM node's id and the address this node reaches it at.
    pub peers: &'a BTreeMap<u64, String>,
    /// Where the store (`raft.wal` and sled) lives.
    pub data_dir: &'a Path,
    /// Whether the store syncs (always, outside tests of the power-loss checker).
    pub sync: SyncPolicy,
    /// The timers.
    pub timers: RaftTimers,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// The transport to peers.
    pub transport: RaftClient,
}

/// Opens the store and starts openraft; returns the replica and the directory
/// it applies to. A node with an empty store holds no membership until
/// [`RaftReplica::initialize`] (a new cluster) or a leader adds it (a join).
pub async fn start(s: RaftStart<'_>) -> Result<(RaftReplica, SharedDirectory), Error> {
    let mut store = store::open(s.data_dir, s.sync)?;
    if store.log.restart_as_follower(s.id) {
        tracing::info!(node = s.id, "was leader before the restart: starting as a follower of its own old term");
    }
    let dir = store.state_machine.directory();
    let network = NetworkFactory::new(s.transport.clone(), s.peers.clone());
    let raft = Raft::new(s.id, s.timers.config(s.snapshot_every)?, network, store.log, store.state_machine)
        .await
        .map_err(|e| Error::Internal(format!("raft start: {e}")))?;
    let proposer = Proposer::spawn(raft.clone());
    let contact = Arc::new(Contact::default());
    let campaigner =
        super::prevote::campaign(raft.clone(), s.id, s.peers.clone(), s.transport.clone(), contact.clone());
    tokio::spawn(campaigner);
    tokio::spawn(super::observe::observe(raft.clone(), contact.clone()));
    let replica = RaftReplica {
        raft,
        proposer,
        deadline: s.timers.commit_deadline(),
        contact,
        ready_term: AtomicU64::new(0),
        confirmed: Default::default(),
        fresh: s.timers.freshness_window(),
        period: Default::default(),
        syncs: store.syncs,
        transport: s.transport,
        peers: s.peers.clone(),
        data_dir: s.data_dir.to_path_buf(),
    };
    Ok((replica, dir))
}

/// How long a leadership confirmation round may take before the node reports
/// that it could not reach a majority.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);

/// The Raft side of a running node: a proposer for commits, a once-per-term read
/// barrier, and leadership confirmations shared by concurrent callers.
pub struct RaftReplica {
    raft: Raft,
    proposer: Proposer,
    deadline: Duration,
    contact: Arc<Contact>,
    ready_term: AtomicU64,
    /// When the last successful confirmation round started; one round at a time.
    confirmed: tokio::sync::Mutex<Option<Instant>>,
    /// A leader that has not heard from a majority for this long is not leading.
    fresh: Duration,
    period: std::sync::Mutex<Period>,
    syncs: SyncCounter,
    /// For the hand-over's call to a follower.
    pub(super) transport: RaftClient,
    /// Addresses this node reaches peers at, where they differ from the membership's.
    pub(super) peers: BTreeMap<u64, String>,
    data_dir: std::path::PathBuf,
}

/// A stretch of leadership with a majority behind it: a term, split wherever the
/// leader lost touch with its majority.
#[derive(Debug, Default)]
struct Period {
    term: u64,
    count: u64,
    with_quorum: bool,
}

impl RaftReplica {
    /// While this node leads with a majority that acknowledged it within an
    /// election timeout, a token of the current stretch of leadership: it changes
    /// with the term and whenever the leader regains its majority after losing it
    /// (lease timers start afresh then: clients could not renew meanwhile).
    pub fn leader_term(&self) -> Option<u64> {
        let (state, term, acked_ms) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term, m.millis_since_quorum_ack)
        };
        if state != ServerState::Leader {
            return None;
        }
        let fresh = acked_ms.is_some_and(|ms| u128::from(ms) <= self.fresh.as_millis());
        let mut period = self.period.lock().unwrap_or_else(|e| e.into_inner());
        if period.term != term {
            *period = Period { term, count: 0, with_quorum: true };
        }
        if !fresh {
            period.with_quorum = false;
            return None;
        }
        if !period.with_quorum {
            period.with_quorum = true;
            period.count += 1;
        }
        Some(term << 20 | (period.count & 0xF_FFFF))
    }

    /// Returns once a majority has acknowledged this node's leadership in a
    /// round that started at or after `since` (a read-index round: openraft's
    /// `get_read_log_id` sends a heartbeat and waits for a quorum). Concurrent callers
    /// share rounds: a round that started after a caller's `since` serves it too.
    pub async fn confirm_leadership(&self, since: Instant) -> Result<(), Error> {
        let mut confirmed = self.confirmed.lock().await;
        if confirmed.is_some_and(|t| t >= since) {
            return Ok(());
        }
        let started = Instant::now();
        match tokio::time::timeout(CONFIRM_TIMEOUT, self.raft.get_read_log_id()).await {
            Ok(Ok(_)) => {
                *confirmed = Some(started);
                Ok(())
            }
            Ok(Err(err)) => Err(raft_error(&self.raft, err)),
            Err(_) => Err(Error::NoQuorum(format!(
                "the leader could not confirm its leadership with a majority within {} ms",
                CONFIRM_TIMEOUT.as_millis()
            ))),
        }
    }

    /// True once the store holds a membership.
    pub async fn is_initialized(&self) -> Result<bool, Error> {
        self.raft.is_initialized().await.map_err(|e| Error::Internal(format!("raft: {e}")))
    }

    /// Proposes `peers` as the initial membership of a new cluster (every node
    /// of a new cluster proposes the same one; openraft accepts it once).
    pub async fn initialize(&self, peers: &BTreeMap<u64, String>) -> Result<(), Error> {
        if self.is_initialized().await? {
            return Ok(());
        }
        let members: BTreeMap<u64, BasicNode> =
            peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
        if let Err(err) = self.raft.initialize(members).await {
            tracing::info!("initial membership not proposed by this node: {err}");
        }
        Ok(())
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// When this node last heard from a majority or its leader (the transport
    /// stamps leader contact on it).
    pub fn contact(&self) -> Arc<Contact> {
        self.contact.clone()
    }

    /// Where this node stands now: leader with a fresh quorum, follower with a
    /// fresh leader, or neither (see [`super::freshness`]).
    pub fn standing(&self) -> Standing {
        super::freshness::standing(&self.raft.metrics().borrow(), &self.contact, self.fresh)
    }

    /// The batching proposer.
    pub fn proposer(&self) -> &Proposer {
        &self.proposer
    }

    /// Fails with `NotLeader` unless this node leads; once per term, waits until
    /// the directory reflects every commit of earlier terms.
    pub async fn ensure_leader(&self) -> Result<(), Error> {
        let (state, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            return Err(not_leader(&self.raft));
        }
        // A leader no majority has acknowledged lately (cut off, or deposed
        // without knowing it yet) sends clients on at once rather than stalling them.
        if let Standing::LeaderWithoutQuorum { quorum_ack } = self.standing() {
            let ago = quorum_ack.map_or("never".to_string(), |d| format!("{} ms ago", d.as_millis()));
            return Err(Error::NoQuorum(format!("this node leads but last heard from a majority {ago}")));
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

    /// This node's status (the directory counts are left at zero).
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        NodeStatus {
            id: m.id,
            role: role(m.state),
            // A leader serves only while a majority acknowledges it.
            serving: matches!(self.standing(), Standing::Leader { .. }),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            leader: leader_of(&m),
            mode: ReplicationMode::Raft,
            syncs: self.syncs.get(),
            data_dir_bytes: Some(dir_size(&self.data_dir)),
            ..Default::default()
        }
    }

    /// Stops openraft (requests in flight fail fast instead of committing).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// Returns once the Raft core has stopped, and why. Unless the node was
    /// asked to shut down, that is fatal: a panic, or a storage error such as a
    /// failed sync, after which the node must not go on (it could no longer keep
    /// what it acknowledged).
    pub async fn core_stopped(&self) -> Error {
        let mut metrics = self.raft.metrics();
        while metrics.borrow_and_update().state != ServerState::Shutdown {
            if metrics.changed().await.is_err() {
                break;
            }
        }
        match self.raft.is_initialized().await {
            Err(openraft::error::Fatal::StorageError(e)) => Error::Storage(format!("the Raft core stopped: {e}")),
            Err(fatal) => Error::Internal(format!("the Raft core stopped: {fatal}")),
            Ok(_) => Error::Internal("the Raft core stopped".into()),
        }
    }
}

/// Bytes in the files of `dir` and its subdirectories (what can be read).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
