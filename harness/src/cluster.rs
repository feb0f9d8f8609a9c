//! An in-process CM cluster on loopback, for the demo, the tests and the benches.
//!
//! Every node gets an ephemeral 127.0.0.1 port and a directory under one temp
//! dir. A Raft cluster has 3 nodes; a heartbeat pair has 2 (primary, backup).
//! Nodes can be killed (Raft shut down, sled released) and restarted from the
//! same directory on the same address. Dropping the cluster stops every node and
//! removes the temp dir.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ivy_raft::client::{Client, ClientConfig};
use ivy_raft::cm::{CmConfig, CmNode};
use ivy_raft::config::ReplicationMode;
use ivy_raft::protocol::Caps;
use ivy_raft::raft::RaftTimers;
use ivy_raft::rpc::Security;
use ivy_raft::Error;
use tokio::net::TcpListener;

/// How long to wait for a leader before giving up.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// How long a restarted node may wait for its predecessor in this process to
/// release the data dir (openraft drops the store in the background).
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How the nodes of an in-process cluster replicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterMode {
    /// Raft or the heartbeat baseline.
    pub mode: ReplicationMode,
    /// Raft timers.
    pub timers: RaftTimers,
    /// Heartbeat pulse.
    pub pulse: Duration,
}

impl ClusterMode {
    /// Three Raft nodes with default timers.
    pub fn raft() -> Self {
        ClusterMode { mode: ReplicationMode::Raft, timers: RaftTimers::default(), pulse: ivy_raft::cm::DEFAULT_PULSE }
    }

    /// A heartbeat pair pulsing every `pulse`.
    pub fn heartbeat(pulse: Duration) -> Self {
        ClusterMode { mode: ReplicationMode::Heartbeat, pulse, ..ClusterMode::raft() }
    }
}

/// What every node of an in-process cluster is configured with besides its mode.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Each node's security, by id (a missing id: none).
    pub security: BTreeMap<u64, Security>,
    /// The caps the nodes commit (default: the CM's defaults).
    pub caps: Option<Caps>,
    /// The security of the clients [`Cluster::client`] starts.
    pub client_security: Security,
}

/// An in-process cluster of CM nodes.
pub struct Cluster {
    nodes: BTreeMap<u64, Option<CmNode>>,
    peers: BTreeMap<u64, String>,
    mode: ClusterMode,
    options: ClusterOptions,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the CM nodes of `mode` (ids 1..=3 for Raft, 1..=2 for heartbeat)
    /// and waits for a leader.
    pub async fn start(mode: ClusterMode) -> Result<Cluster> {
        Cluster::start_with(mode, ClusterOptions::default()).await
    }

    /// Like [`Cluster::start`], with `options` (security, caps).
    pub async fn start_with(mode: ClusterMode, options: ClusterOptions) -> Result<Cluster> {
        let n = match mode.mode {
            ReplicationMode::Raft => 3,
            ReplicationMode::Heartbeat => 2,
        };
        let dir = tempfile::tempdir().context("creating the cluster's temp dir")?;
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?);
        }
        let mut peers = BTreeMap::new();
        for (id, l) in &listeners {
            peers.insert(*id, l.local_addr()?.to_string());
        }
        let mut cluster = Cluster { nodes: BTreeMap::new(), peers, mode, options, dir };
        for (id, listener) in listeners {
            let node = CmNode::start(cluster.config(id), listener).await?;
            cluster.nodes.insert(id, Some(node));
        }
        cluster.wait_leader(LEADER_WAIT).await?;
        Ok(cluster)
    }

    fn config(&self, id: u64) -> CmConfig {
        let mut config = CmConfig::new(id, self.peers.clone(), self.dir.path().join(format!("cm-{id}")));
        config.mode = self.mode.mode;
        config.timers = self.mode.timers;
        config.pulse = self.mode.pulse;
        config.security = self.options.security.get(&id).cloned().unwrap_or_default();
        if let Some(caps) = self.options.caps {
            config.caps = caps;
        }
        config
    }

    /// The config node `id` runs with, for a test that starts one like it.
    pub fn node_config(&self, id: u64) -> CmConfig {
        self.config(id)
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

    /// Waits until a running node serves faults.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader() {
                return Ok(id);
            }
            if tokio::time::Instant::now() >= give_up {
                bail!(Error::NoQuorum(format!("no CM leader within {} ms", timeout.as_millis())));
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
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        let addr = self.peers.get(&id).cloned().with_context(|| format!("no CM node {id}"))?;
        let give_up = tokio::time::Instant::now() + RELEASE_WAIT;
        loop {
            let listener = bind_again(&addr).await?;
            match CmNode::start(self.config(id), listener).await {
                Ok(node) => {
                    self.nodes.insert(id, Some(node));
                    return Ok(());
                }
                Err(Error::DataDirInUse { .. }) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Starts a client of this cluster.
    pub async fn client(&self) -> Result<Client, Error> {
        let mut config = ClientConfig::new(self.addrs());
        config.security = self.options.client_security.clone();
        Client::start(config).await
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
async fn bind_again(addr: &str) -> Result<TcpListener> {
    const TRIES: u32 = 50;
    for _ in 0..TRIES {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return Ok(listener);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("cannot bind {addr} again")
}
