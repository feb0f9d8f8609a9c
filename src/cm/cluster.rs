//! Cluster operations on a CM node (Raft mode): the `Cluster` service's handler,
//! the join probe a new node makes before it initialises, the hand-over on a
//! graceful stop, and the restore of a backup seeded by `ivy snapshot restore`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::replica::Replica;
use super::request_server::RequestServer;
use crate::error::Error;
use crate::members::{Backup, JoinState, Members};
use crate::protocol::{Applied, DirCmd};
use crate::raft::RaftReplica;
use crate::rpc::{Channels, ClusterApi, ClusterClient};

/// Deadline of one join probe.
pub const JOIN_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a node of a new cluster waits for another to form it (see
/// [`formation`]) before it initialises the cluster itself.
pub const FORMATION_WAIT: Duration = Duration::from_secs(1);

/// Pause between two rounds of join probes while another node forms the cluster.
pub const FORMATION_POLL: Duration = Duration::from_millis(50);

/// The `Cluster` service of one node.
pub struct ClusterHandler {
    server: Arc<RequestServer>,
    join: bool,
}

impl ClusterHandler {
    /// Serves cluster operations through `server`'s replica; `join`: the node was started with `--join`.
    pub fn new(server: Arc<RequestServer>, join: bool) -> Self {
        ClusterHandler { server, join }
    }

    fn raft(&self) -> Result<&RaftReplica, Error> {
        match self.server.replica() {
            Replica::Raft(r) => Ok(r),
            Replica::Heartbeat(_) => Err(Error::InvalidConfig("cluster operations need --mode raft".into())),
        }
    }
}

#[crate::rpc::async_trait]
impl ClusterApi for ClusterHandler {
    async fn members(&self) -> Result<Members, Error> {
        self.raft()?.members().await
    }

    async fn add_learner(&self, id: u64, addr: String) -> Result<Members, Error> {
        self.raft()?.add_learner(id, addr).await
    }

    async fn promote(&self, id: u64) -> Result<Members, Error> {
        self.raft()?.promote(id).await
    }

    async fn remove(&self, id: u64) -> Result<Members, Error> {
        self.raft()?.remove(id).await
    }

    async fn handover(&self) -> Result<u64, Error> {
        self.raft()?.handover().await
    }

    async fn join_state(&self) -> Result<JoinState, Error> {
        let in_use = self.server.read(|d| d.holds_data());
        Ok(self.raft()?.join_state(self.join, in_use))
    }

    async fn save_snapshot(&self) -> Result<Vec<u8>, Error> {
        let backup = self.raft()?.backup(|| self.server.read(|d| d.clone())).await?;
        backup.encode()
    }
}

/// What the peers of a node with an empty store say about forming its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formation {
    /// No peer holds a membership, and no peer with a lower id that could
    /// form the cluster answered: this node initialises it.
    Initialise,
    /// A peer runs this very cluster and knows its leader: this node waits for
    /// the leader's log (it started late).
    Join,
    /// A peer initialised moments ago and has no leader yet (it is being
    /// elected, with this node's vote), or a peer with a lower id answered and
    /// will initialise: ask again shortly.
    NotYet,
}

/// Asks every other listed peer whether it belongs to a cluster already,
/// before a node with an empty store (not `--join`) initialises a new one from
/// `peers`. An error when a peer belongs to another cluster. Of the nodes of a
/// new cluster only the one with the lowest id among those that answer
/// initialises; the others vote for it and take its log, so that they do not
/// all campaign at term 1 at once (a split vote, or a late campaign deposing
/// the first leader, costs a second election). An unreachable peer counts as
/// not initialised: the nodes of a new cluster start in any order.
pub async fn formation(id: u64, peers: &BTreeMap<u64, String>, channels: &Channels) -> Result<Formation, Error> {
    let client = ClusterClient::new(channels.clone());
    let mut asks = tokio::task::JoinSet::new();
    for (peer, addr) in peers.iter().filter(|(p, _)| **p != id) {
        let (client, peer, addr) = (client.clone(), *peer, addr.clone());
        asks.spawn(async move {
            let answer = tokio::time::timeout(JOIN_PROBE_TIMEOUT, client.join_state(&addr)).await;
            (peer, addr, answer)
        });
    }
    let wanted: Vec<u64> = peers.keys().copied().collect();
    // Peers that run this very cluster and know its leader, whether its
    // directory was used already, and whether some peer is forming it.
    let (mut running, mut in_use, mut forming) = (Vec::new(), false, false);
    while let Some(joined) = asks.join_next().await {
        let Ok((peer, addr, answer)) = joined else { continue };
        let Ok(Ok(state)) = answer else { continue };
        if !state.initialized {
            // A lower-numbered peer of this new cluster is the one to form it
            // (a `--join` node never does).
            forming |= peer < id && !state.join_mode;
            continue;
        }
        if state.voters != wanted {
            return Err(Error::InvalidConfig(format!(
                "node {peer} at {addr} already belongs to a cluster whose voters are {:?}, not the --peers {wanted:?}; \
                 this node's data dir is empty, so it does not set up a cluster of its own. To add it, start it with \
                 --join and run `ivy member add --id {id} --addr ADDR` against the cluster",
                state.voters
            )));
        }
        if state.leader.is_none() {
            // The peer initialised moments ago and is being elected: this
            // node's vote (it lets openraft decide while it has no membership,
            // `votes::refuse_vote`) helps elect it.
            forming = true;
            continue;
        }
        running.push(peer);
        in_use |= state.in_use;
    }
    running.sort_unstable();
    if running.is_empty() {
        return Ok(if forming { Formation::NotYet } else { Formation::Initialise });
    }
    if in_use {
        // Either this member starts for the first time after the others were
        // used (harmless), or it lost its data dir (it may have voted or held
        // entries it no longer has): only the operator knows which.
        tracing::warn!(
            "nodes {running:?} already run this cluster and its directory holds data; this node's data dir is \
             empty, so it does not initialise and waits for the leader's log. If this node held data before (a \
             lost or wiped data dir), stop it, run `ivy member remove --id {id}`, and add it again with --join"
        );
    } else {
        // The usual start of a new cluster whose other members were quicker.
        tracing::info!("nodes {running:?} formed this cluster moments ago; joining it as the member it lists");
    }
    Ok(Formation::Join)
}

/// Commits the backup seeded in `seed` once this node leads, unless the
/// directory holds something already; the seed is deleted either way.
pub async fn restore_seed(server: Arc<RequestServer>, seed: PathBuf, backup: Backup) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        if server.read(|d| d.holds_data()) {
            tracing::info!(event = "restore", "the directory holds data already; the restore seed is not needed");
            break;
        }
        if server.replica().leader_term().is_none() || server.replica().ensure_leader().await.is_err() {
            continue;
        }
        let cmd = DirCmd::Restore { directory: Box::new(backup.directory.clone()) };
        match server.replica().commit(cmd).await {
            Ok(Applied::Restored(done)) => {
                tracing::info!(
                    event = "restore",
                    restored = done,
                    applied_index = backup.applied_index,
                    "backup restored"
                );
                break;
            }
            Ok(other) => tracing::warn!("restore gave {other:?}"),
            Err(err) => tracing::warn!("restore not committed yet: {err}"),
        }
    }
    if let Err(err) = std::fs::remove_file(&seed) {
        tracing::warn!("cannot remove {}: {err}", seed.display());
    }
}
