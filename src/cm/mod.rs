//! The central manager node: one member of the replicated CM cluster.
//!
//! A node serves the client-facing `Manager` service and its replication's
//! service on one listener. In Raft mode it opens its sled store, starts openraft
//! and serves `RaftTransport`; on first start (an empty store) every node proposes
//! the same initial membership, which openraft accepts once, and restarting is
//! running the same command again. In heartbeat mode (the baseline) it serves
//! `Heartbeat`: the backup polls the primary every pulse and takes over when a
//! pulse is missed; a restarted primary reclaims the title first.

mod faults;
mod heartbeat;
mod holders;
mod manager;
mod raft_node;
mod replica;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::Faults;
pub use manager::{role_name, ManagerService};
pub use replica::{NodeStatus, Replica};

use crate::error::Error;
use crate::replication::heartbeat::{HeartbeatReplica, Role};
use crate::replication::{Raft, RaftTimers};
use crate::rpc::pb::heartbeat_server::HeartbeatServer;
use crate::rpc::pb::manager_server::ManagerServer;
use crate::rpc::pb::raft_transport_server::RaftTransportServer;
use crate::rpc::{Channels, Server, TransportService};

/// Deadline of one call from the manager to a client or a peer.
pub const HOLDER_RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest gRPC message a CM node accepts (Raft entries, snapshots, pulses).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Default heartbeat-mode pulse: the original design's 1 s.
pub const DEFAULT_PULSE: Duration = Duration::from_secs(1);

/// How the directory is replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Committed through openraft on every CM node, persisted in sled.
    Raft(RaftTimers),
    /// The baseline: the primary's memory, copied by the backup every `pulse`.
    Heartbeat {
        /// How often the backup polls the primary.
        pulse: Duration,
    },
}

/// What a CM node needs to start.
#[derive(Debug, Clone)]
pub struct CmConfig {
    /// This node's id (a key of `peers`).
    pub id: u64,
    /// Every CM node's id and address.
    pub peers: BTreeMap<u64, String>,
    /// Where the sled store lives (Raft mode).
    pub data_dir: PathBuf,
    /// The replication mode.
    pub mode: Mode,
    /// Testing only: skip invalidations, breaking coherence on purpose so the
    /// chaos harness can show it catches a broken build.
    pub unsafe_skip_invalidation: bool,
}

impl CmConfig {
    /// Checks the id is among the peers, the peers are addresses, and the mode's
    /// settings are usable.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.peers.contains_key(&self.id) {
            let ids: Vec<_> = self.peers.keys().collect();
            return Err(Error::Malformed(format!("--id {} is not among the peers {ids:?}", self.id)));
        }
        for (id, addr) in &self.peers {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(Error::Malformed(format!("peer {id} address {addr:?} is not host:port")));
            }
        }
        match self.mode {
            Mode::Raft(timers) => timers.config().map(|_| ()),
            Mode::Heartbeat { pulse } if pulse.is_zero() => Err(Error::Malformed("the pulse must be positive".into())),
            Mode::Heartbeat { .. } => HeartbeatReplica::new(self.id, &self.peers).map(|_| ()),
        }
    }
}

/// A running CM node; dropping it stops the node.
pub struct CmNode {
    /// The address it serves on.
    pub addr: std::net::SocketAddr,
    faults: Arc<Faults>,
    raft: Option<Raft>,
    poller: Option<JoinHandle<()>>,
    server: Server,
}

impl CmNode {
    /// Starts a node serving on `listener`.
    pub async fn start(config: CmConfig, listener: TcpListener) -> Result<CmNode, Error> {
        config.validate()?;
        let addr = listener.local_addr().map_err(|e| Error::Unavailable(format!("listener: {e}")))?;
        let channels = Channels::new(HOLDER_RPC_TIMEOUT);
        let mut builder = tonic::transport::Server::builder();
        let (faults, raft, poller, router) = match config.mode {
            Mode::Raft(timers) => {
                let (raft, replica, dir) = raft_node::start(&config, &timers, &channels).await?;
                let faults =
                    Arc::new(Faults::new(Replica::Raft(replica), dir, channels, config.unsafe_skip_invalidation));
                let transport = RaftTransportServer::new(TransportService::new(raft.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES);
                let router = builder.add_service(manager_server(&faults)).add_service(transport);
                (faults, Some(raft), None, router)
            }
            Mode::Heartbeat { pulse } => {
                let replica = Arc::new(HeartbeatReplica::new(config.id, &config.peers)?);
                let my_addr = config.peers[&config.id].clone();
                if replica.role() == Role::Primary {
                    heartbeat::reclaim(&replica, &my_addr, pulse, &channels).await;
                }
                let poller = (replica.role() == Role::Backup)
                    .then(|| tokio::spawn(heartbeat::poll_primary(replica.clone(), my_addr, pulse, channels.clone())));
                let service = HeartbeatServer::new(heartbeat::HeartbeatService::new(replica.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES);
                let faults = Arc::new(Faults::new(
                    Replica::Heartbeat(replica.clone()),
                    replica.directory(),
                    channels,
                    config.unsafe_skip_invalidation,
                ));
                let router = builder.add_service(manager_server(&faults)).add_service(service);
                (faults, None, poller, router)
            }
        };
        let server = Server::spawn(router, listener);
        tracing::info!(id = config.id, %addr, "CM node started");
        Ok(CmNode { addr, faults, raft, poller, server })
    }

    /// This node's status (role, term, indexes, leader).
    pub fn status(&self) -> NodeStatus {
        self.faults.replica().status()
    }

    /// Stops serving and shuts replication down, releasing the sled store.
    pub async fn shutdown(mut self) {
        // Replication first, so requests still in flight fail fast instead of committing.
        if let Some(raft) = &self.raft {
            let _ = raft.shutdown().await;
        }
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
        self.server.stop().await;
    }
}

impl Drop for CmNode {
    fn drop(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
        let Some(raft) = self.raft.clone() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
    }
}

fn manager_server(faults: &Arc<Faults>) -> ManagerServer<ManagerService> {
    ManagerServer::new(ManagerService::new(faults.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES)
}
