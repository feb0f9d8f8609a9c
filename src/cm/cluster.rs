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

/// Before a node with an empty store initialises a new cluster from `peers`:
/// asks every other listed peer whether it belongs to a cluster already.
/// Returns `Ok(true)` to initialise, `Ok(false)` when a peer already runs the
/// very cluster `peers` describes and knows its leader (this node is a member
/// that started late: it waits for the leader), and an error when a peer
/// belongs to another one. A peer of the same membership with no leader yet is
/// a node of this new cluster that initialised first: this one initialises too.
pub async fn may_initialize(id: u64, peers: &BTreeMap<u64, String>, channels: &Channels) -> Result<bool, Error> {
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
    // Peers that run this very cluster and know its leader, and whether its
    // directory was used already.
    let (mut running, mut in_use) = (Vec::new(), false);
    while let Some(joined) = asks.join_next().await {
        let Ok((peer, addr, answer)) = joined else { continue };
        let Ok(Ok(state)) = answer else { continue };
        if !state.initialized {
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
            // The peer initialised moments ago and has no leader yet: the nodes
            // of this new cluster are starting together. Without this node's
            // membership it would refuse every vote (members-only voting), and
            // with two late nodes out of three no one could be elected.
            continue;
        }
        running.push(peer);
        in_use |= state.in_use;
    }
    running.sort_unstable();
    if running.is_empty() {
        return Ok(true);
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
    Ok(false)
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
