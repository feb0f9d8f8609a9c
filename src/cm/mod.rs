//! The central manager node: one member of the 3-node Raft-replicated CM cluster.
//!
//! A node opens its sled store, starts openraft, and serves two gRPC services on
//! one listener: `Manager` for clients and `RaftTransport` for its peers. On first
//! start (an empty store) every node proposes the same initial membership, which
//! openraft accepts once; restarting is running the same command again.

mod faults;
mod holders;
mod manager;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio::net::TcpListener;

pub use faults::Faults;
pub use manager::{role_name, ManagerService};

use crate::error::Error;
use crate::replication::{commit_deadline, Proposer, Raft, RaftTimers};
use crate::rpc::pb::manager_server::ManagerServer;
use crate::rpc::pb::raft_transport_server::RaftTransportServer;
use crate::rpc::{Channels, NetworkFactory, Server, TransportService};
use crate::storage;

/// Deadline of one call from the manager to a client or a peer.
pub const HOLDER_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest gRPC message a CM node accepts (Raft entries, snapshots).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What a CM node needs to start.
#[derive(Debug, Clone)]
pub struct CmConfig {
    /// This node's id (a key of `peers`).
    pub id: u64,
    /// Every CM node's id and address.
    pub peers: BTreeMap<u64, String>,
    /// Where the sled store lives.
    pub data_dir: PathBuf,
    /// Raft timers.
    pub timers: RaftTimers,
}

impl CmConfig {
    /// Checks the id is among the peers and the peers are addresses.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.peers.contains_key(&self.id) {
            let ids: Vec<_> = self.peers.keys().collect();
            return Err(Error::Malformed(format!(
                "--id {} is not among the peers {ids:?}",
                self.id
            )));
        }
        for (id, addr) in &self.peers {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(Error::Malformed(format!(
                    "peer {id} address {addr:?} is not host:port"
                )));
            }
        }
        self.timers.config().map(|_| ())
    }
}

/// A running CM node; dropping it stops the node.
pub struct CmNode {
    /// This node's Raft handle.
    pub raft: Raft,
    /// The address it serves on.
    pub addr: std::net::SocketAddr,
    server: Server,
}

impl CmNode {
    /// Starts a node serving on `listener`.
    pub async fn start(config: CmConfig, listener: TcpListener) -> Result<CmNode, Error> {
        config.validate()?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Unavailable(format!("listener: {e}")))?;
        let (log_store, state_machine) = open_store(&config).await?;
        let dir = state_machine.directory();
        let channels = Channels::new(HOLDER_RPC_TIMEOUT);
        let network = NetworkFactory::new(channels.clone());
        let raft_config = config.timers.config()?;
        let raft = Raft::new(config.id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| Error::Storage(format!("raft start: {e}")))?;
        initialize(&raft, &config.peers).await?;
        let deadline = commit_deadline(&config.timers);
        let proposer = Proposer::spawn(raft.clone(), deadline);
        let faults = Arc::new(Faults::new(raft.clone(), dir, proposer, channels, deadline));
        let router = tonic::transport::Server::builder()
            .add_service(
                ManagerServer::new(ManagerService::new(raft.clone(), faults))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                RaftTransportServer::new(TransportService::new(raft.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            );
        let server = Server::spawn(router, listener);
        tokio::spawn(log_role_changes(raft.clone()));
        tracing::info!(id = config.id, %addr, "CM node started");
        Ok(CmNode { raft, addr, server })
    }

    /// Stops serving and shuts Raft down, releasing the sled store.
    pub async fn shutdown(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        // Raft first, so requests still in flight fail fast instead of committing.
        let _ = self.raft.shutdown().await;
        self.server.stop().await;
    }
}

impl Drop for CmNode {
    fn drop(&mut self) {
        let raft = self.raft.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
    }
}

/// Logs every change of this node's role or of the leader it knows, until shutdown.
async fn log_role_changes(raft: Raft) {
    let mut metrics = raft.metrics();
    let mut seen = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_leader, m.current_term)
        };
        if seen.map(|(s, l, _)| (s, l)) != Some((now.0, now.1)) {
            let leader = now.1.map_or("none".to_string(), |l| l.to_string());
            tracing::info!("role {}, term {}, leader {leader}", role_name(now.0), now.2);
            seen = Some(now);
        }
        if now.0 == openraft::ServerState::Shutdown || metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Opens the sled store, waiting a little for a previous run in this process to release it.
async fn open_store(
    config: &CmConfig,
) -> Result<(storage::LogStore, storage::StateMachine), Error> {
    const TRIES: u32 = 50;
    const PAUSE: Duration = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match storage::open(&config.data_dir) {
            Err(err) if tries < TRIES && err.to_string().contains("in use") => {
                tries += 1;
                tokio::time::sleep(PAUSE).await;
            }
            opened => return opened,
        }
    }
}

/// Proposes the initial membership if this node's store is empty.
async fn initialize(raft: &Raft, peers: &BTreeMap<u64, String>) -> Result<(), Error> {
    let fatal = |e: openraft::error::Fatal<u64>| Error::Storage(format!("raft: {e}"));
    if raft.is_initialized().await.map_err(fatal)? {
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> = peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    if let Err(err) = raft.initialize(members).await {
        tracing::info!("initial membership not proposed by this node: {err}");
    }
    Ok(())
}
