//! An in-process CM cluster on loopback, for the demo and the tests.
//!
//! Every node gets an ephemeral 127.0.0.1 port and a directory under one temp
//! dir. A Raft cluster has 3 nodes; a heartbeat pair has 2 (primary, backup). Nodes can be killed (Raft shut down, sled released) and restarted from
//! the same directory on the same address. Dropping the cluster stops every node
//! and removes the temp dir.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::client::{Client, ClientConfig};
use crate::cm::{CmConfig, CmNode, Mode};
use crate::error::Error;

/// How long to wait for a leader before giving up.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// An in-process cluster of CM nodes.
pub struct Cluster {
    nodes: BTreeMap<u64, Option<CmNode>>,
    peers: BTreeMap<u64, String>,
    mode: Mode,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the CM nodes of `mode` (ids 1..=3 for Raft, 1..=2 for heartbeat)
    /// and waits for a leader.
    pub async fn start(mode: Mode) -> Result<Cluster, Error> {
        let n = match mode {
            Mode::Raft(_) => 3,
            Mode::Heartbeat { .. } => 2,
        };
        let dir = tempfile::tempdir().map_err(|e| Error::Storage(format!("temp dir: {e}")))?;
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let listener =
                TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::Unavailable(format!("bind: {e}")))?;
            listeners.insert(id, listener);
        }
        let peers: BTreeMap<u64, String> =
            listeners.iter().map(|(id, l)| (*id, l.local_addr().map(|a| a.to_string()).unwrap_or_default())).collect();
        let mut cluster = Cluster { nodes: BTreeMap::new(), peers, mode, dir };
        for (id, listener) in listeners {
            let node = CmNode::start(cluster.config(id), listener).await?;
            cluster.nodes.insert(id, Some(node));
        }
        cluster.wait_leader(LEADER_WAIT).await?;
        Ok(cluster)
    }

    fn config(&self, id: u64) -> CmConfig {
        CmConfig {
            id,
            peers: self.peers.clone(),
            data_dir: self.dir.path().join(format!("cm-{id}")),
            mode: self.mode,
            unsafe_skip_invalidation: false,
        }
    }

    /// The CM addresses, for clients.
    pub fn addrs(&self) -> Vec<String> {
        self.peers.values().cloned().collect()
    }

    /// A running node.
    pub fn node(&self, id: u64) -> Option<&CmNode> {
        self.nodes.get(&id).and_then(|n| n.as_ref())
    }

    /// The id of the node that says it serves faults, among the running ones.
    pub fn leader(&self) -> Option<u64> {
        self.nodes.iter().find_map(|(id, n)| n.as_ref()?.status().serving.then_some(*id))
    }

    /// Waits until a running node leads and every running node knows it.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64, Error> {
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader() {
                return Ok(id);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(Error::NoQuorum(format!("no CM leader within {} ms", timeout.as_millis())));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops node `id` abruptly (as far as an in-process node can be killed).
    pub async fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id).and_then(Option::take) {
            node.shutdown().await;
        }
    }

    /// Restarts a killed node `id` from its data dir, on its old address.
    pub async fn restart(&mut self, id: u64) -> Result<(), Error> {
        let addr = self.peers.get(&id).cloned().ok_or_else(|| Error::Malformed(format!("no CM node {id}")))?;
        let listener = bind_again(&addr).await?;
        let node = CmNode::start(self.config(id), listener).await?;
        self.nodes.insert(id, Some(node));
        Ok(())
    }

    /// Starts a client of this cluster.
    pub async fn client(&self) -> Result<Client, Error> {
        Client::start(ClientConfig::new(self.addrs())).await
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }
}

/// Binds `addr` again after its node stopped; the port may take a moment to free.
async fn bind_again(addr: &str) -> Result<TcpListener, Error> {
    const TRIES: u32 = 50;
    for _ in 0..TRIES {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return Ok(listener);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::Unavailable(format!("cannot bind {addr} again")))
}
