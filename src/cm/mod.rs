//! The central manager node: one member of the replicated CM cluster.
//!
//! A node serves the client-facing `Manager` service and its replication's peer
//! service on one listener. In Raft mode it opens its store (`raft.wal` and
//! sled), starts openraft and serves `RaftTransport`; on first start (an empty
//! store) every node proposes the same initial membership, which openraft
//! accepts once, and restarting is running the same command again. In heartbeat
//! mode (the baseline) it serves `Heartbeat`: the backup polls the primary every
//! pulse and takes over when a pulse is missed; a restarted primary reclaims the
//! title first.
//!
//! [`RequestServer`] serves registrations, keepalives and faults on the leader
//! and evicts clients whose lease ran out ([`Leases`]); [`Replica`] is the one
//! place the two modes differ.

mod admission;
mod cluster;
mod leases;
mod replica;
mod request_server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use admission::{Admission, MAX_FAULTS_IN_FLIGHT};
pub use cluster::{formation, ClusterHandler, Formation, FORMATION_WAIT, JOIN_PROBE_TIMEOUT};
pub use leases::{Leases, DEFAULT_CLIENT_LEASE, LEASE_MARGIN_SHARE};
pub use replica::Replica;
pub use request_server::{ManagerHandler, RequestServer, FAULT_REPLY_DEADLINE};

use crate::config::ReplicationMode;
use crate::error::Error;
use crate::heartbeat::service::{poll_primary, reclaim, Links, PulseHandler};
use crate::heartbeat::HeartbeatReplica;
use crate::protocol::{Applied, Caps, DirCmd};
use crate::raft::network::TransportHandler;
use crate::raft::node::RaftStart;
use crate::raft::store::SyncPolicy;
use crate::raft::{RaftTimers, SNAPSHOT_EVERY};
use crate::rpc::{
    Channels, Health, HeartbeatClient, HolderClient, PeerService, RaftClient, Security, Server, MANAGER_SERVICE,
};
use crate::status::{NodeStatus, Role};

/// Deadline of one call from the manager to a client or a peer.
pub const HOLDER_RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a node re-judges its readiness (`ivy.Manager` health) and samples
/// the directory gauges.
pub const HEALTH_REFRESH: Duration = Duration::from_millis(100);

/// Default heartbeat-mode pulse: the original design's 1 s.
pub const DEFAULT_PULSE: Duration = Duration::from_secs(1);

/// Default `--max-clients`: registered clients a directory admits.
pub const DEFAULT_MAX_CLIENTS: u64 = 10_000;

/// Default `--max-pages`: pages a directory admits.
pub const DEFAULT_MAX_PAGES: u64 = 1_000_000;

/// Shortest client lease accepted (a keepalive every third of it must fit
/// several round trips).
pub const MIN_CLIENT_LEASE: Duration = Duration::from_millis(300);

/// What a CM node needs to start.
#[derive(Debug, Clone)]
pub struct CmConfig {
    /// This node's id (a key of `peers`).
    pub id: u64,
    /// Every CM node's id and address.
    pub peers: BTreeMap<u64, String>,
    /// Where the store (`raft.wal` and sled) lives (Raft mode).
    pub data_dir: PathBuf,
    /// How the directory is replicated.
    pub mode: ReplicationMode,
    /// Raft mode: the timers.
    pub timers: RaftTimers,
    /// Raft mode: log entries between snapshots.
    pub snapshot_every: u64,
    /// Heartbeat mode: how often the backup polls the primary.
    pub pulse: Duration,
    /// The lease each client holds after each keepalive.
    pub client_lease: Duration,
    /// How many clients and pages the directory admits (committed by the leader).
    pub caps: Caps,
    /// TLS and token for every connection.
    pub security: Security,
    /// Start without ever initialising a cluster: wait to be added by a leader
    /// (`ivy member add`). `peers` need not name this node then.
    pub join: bool,
    /// Testing only: skip invalidations, breaking coherence on purpose so the
    /// chaos harness can show it catches a broken build.
    pub unsafe_skip_invalidation: bool,
    /// Testing only: the store never syncs, so a power cut can lose what was
    /// acknowledged (the broken build the power-loss test must catch).
    pub unsafe_skip_sync: bool,
}

impl CmConfig {
    /// A Raft-mode config with default timers.
    pub fn new(id: u64, peers: BTreeMap<u64, String>, data_dir: PathBuf) -> Self {
        CmConfig {
            id,
            peers,
            data_dir,
            mode: ReplicationMode::Raft,
            timers: RaftTimers::default(),
            snapshot_every: SNAPSHOT_EVERY,
            pulse: DEFAULT_PULSE,
            client_lease: DEFAULT_CLIENT_LEASE,
            caps: Caps { max_clients: DEFAULT_MAX_CLIENTS, max_pages: DEFAULT_MAX_PAGES },
            security: Security::default(),
            join: false,
            unsafe_skip_invalidation: false,
            unsafe_skip_sync: false,
        }
    }

    /// Checks the id is among the peers, the peers are addresses, and the mode's
    /// settings are usable.
    pub fn validate(&self) -> Result<(), Error> {
        if self.join && self.mode != ReplicationMode::Raft {
            return Err(Error::InvalidConfig("--join needs --mode raft".into()));
        }
        if !self.peers.contains_key(&self.id) && !self.join {
            let ids: Vec<_> = self.peers.keys().collect();
            return Err(Error::InvalidConfig(format!("--id {} is not among the peers {ids:?}", self.id)));
        }
        for (id, addr) in &self.peers {
            // A name (a Kubernetes pod's stable DNS name) or an address.
            crate::config::parse_addr(addr)
                .map_err(|_| Error::InvalidConfig(format!("peer {id} address {addr:?} is not host:port")))?;
        }
        if self.caps.max_clients == 0 || self.caps.max_pages == 0 {
            return Err(Error::InvalidConfig("--max-clients and --max-pages must be positive".into()));
        }
        if self.client_lease < MIN_CLIENT_LEASE {
            return Err(Error::InvalidConfig(format!(
                "the client lease must be at least {} ms, not {} ms",
                MIN_CLIENT_LEASE.as_millis(),
                self.client_lease.as_millis()
            )));
        }
        match self.mode {
            ReplicationMode::Raft => self.timers.config(self.snapshot_every).map(|_| ()),
            ReplicationMode::Heartbeat if self.pulse.is_zero() => {
                Err(Error::InvalidConfig("the pulse must be positive".into()))
            }
            ReplicationMode::Heartbeat => HeartbeatReplica::new(self.id, &self.peers).map(|_| ()),
        }
    }
}

/// A running CM node; dropping it stops the node.
pub struct CmNode {
    /// The address it serves on.
    pub addr: std::net::SocketAddr,
    server: Arc<RequestServer>,
    poller: Option<JoinHandle<()>>,
    lease_watch: JoinHandle<()>,
    release_flush: JoinHandle<()>,
    health: Health,
    watcher: JoinHandle<()>,
    grpc: Server,
}

impl CmNode {
    /// Starts a node serving on `listener`.
    pub async fn start(mut config: CmConfig, listener: TcpListener) -> Result<CmNode, Error> {
        config.validate()?;
        crate::metrics::cm_counters_at_zero();
        let addr = listener.local_addr().map_err(|e| Error::Internal(format!("listener: {e}")))?;
        // A node listening on port 0 is known to its peers by the port it got.
        let own = config.peers.get(&config.id);
        if own.is_none_or(|a| a.ends_with(":0")) {
            config.peers.insert(config.id, addr.to_string());
        }
        let channels = Channels::new(HOLDER_RPC_TIMEOUT, config.security.clone());
        let holders = HolderClient::new(channels.clone());
        let skip = config.unsafe_skip_invalidation;
        let leases = || Leases::new(config.client_lease);
        let mut seed = None;
        let (server, peers, poller) = match config.mode {
            ReplicationMode::Raft => {
                let start = RaftStart {
                    id: config.id,
                    peers: &config.peers,
                    data_dir: &config.data_dir,
                    sync: if config.unsafe_skip_sync { SyncPolicy::UnsafeSkip } else { SyncPolicy::Sync },
                    timers: config.timers,
                    snapshot_every: config.snapshot_every,
                    transport: RaftClient::new(channels.clone()),
                };
                let (replica, dir) = crate::raft::node::start(start).await?;
                seed = read_seed(&config.data_dir)?;
                let transport = TransportHandler::new(replica.raft().clone(), replica.contact(), config.join);
                let server = Arc::new(
                    RequestServer::new(Replica::Raft(replica), dir, holders, leases(), skip).with_caps(config.caps),
                );
                let cluster = Arc::new(ClusterHandler::new(server.clone(), config.join));
                let peers = PeerService::Raft(Arc::new(transport), cluster);
                (server, peers, None)
            }
            ReplicationMode::Heartbeat => {
                let replica = Arc::new(HeartbeatReplica::new(config.id, &config.peers)?);
                let links = Links { partner: HeartbeatClient::new(channels.clone()), holders: holders.clone() };
                let my_addr = config.peers[&config.id].clone();
                if replica.role() == Role::Primary {
                    reclaim(&replica, &my_addr, config.pulse, &links).await;
                }
                let poller = (replica.role() == Role::Backup)
                    .then(|| tokio::spawn(poll_primary(replica.clone(), my_addr, config.pulse, links)));
                let peers = PeerService::Heartbeat(Arc::new(PulseHandler::new(replica.clone())));
                let dir = replica.directory();
                let server = RequestServer::new(Replica::Heartbeat(replica), dir, holders, leases(), skip);
                (Arc::new(server.with_caps(config.caps)), peers, poller)
            }
        };
        let manager = Arc::new(ManagerHandler(server.clone()));
        let health = Health::new().await;
        let mut grpc = match crate::rpc::serve_cm(manager, peers, &health, listener, &config.security) {
            Ok(grpc) => grpc,
            Err(err) => {
                if let Some(poller) = &poller {
                    poller.abort();
                }
                server.replica().shutdown().await;
                return Err(err);
            }
        };
        // A new node decides whether to form its cluster while serving, so
        // that its peers' probes and votes get answers meanwhile.
        if let Replica::Raft(replica) = server.replica() {
            if let Err(err) = first_start(replica, &config, &channels).await {
                replica.shutdown().await;
                grpc.stop().await;
                return Err(err);
            }
        }
        config.security.warn_if_exposed(&format!("CM node {}", config.id), addr);
        let lease_watch = tokio::spawn(server.clone().watch_leases());
        let release_flush = tokio::spawn(server.clone().deliver_releases());
        if let Some((path, backup)) = seed {
            tokio::spawn(cluster::restore_seed(server.clone(), path, backup));
        }
        let watcher = tokio::spawn(watch(server.clone(), health.clone(), config.pulse));
        tracing::info!(id = config.id, %addr, mode = %config.mode, "CM node started");
        Ok(CmNode { addr, server, poller, lease_watch, release_flush, health, watcher, grpc })
    }

    /// This node's status (role, term, indexes, leader).
    pub fn status(&self) -> NodeStatus {
        self.server.replica().status()
    }

    /// Commits `cmd` through this node's replication (the leader only) with no
    /// fault around it: for benchmarks of the commit path alone.
    #[doc(hidden)]
    pub async fn commit(&self, cmd: DirCmd) -> Result<Applied, Error> {
        self.server.replica().commit(cmd).await
    }

    /// Returns, with the reason, once the node can no longer serve: its Raft core
    /// stopped without being asked to (a panic, or a storage error such as a
    /// failed sync). The process should then exit.
    pub async fn failed(&self) -> Error {
        self.server.replica().stopped().await
    }

    /// Stops the node; a Raft leader first hands leadership to its most
    /// up-to-date follower, so the cluster goes on without an election timeout.
    pub async fn stop_gracefully(self) {
        if let Replica::Raft(r) = self.server.replica() {
            if r.status().role == Role::Leader {
                match r.handover().await {
                    Ok(to) => tracing::info!(event = "handover", to, "handed leadership over to node {to}"),
                    Err(err) => tracing::warn!("no hand-over before stopping: {err}"),
                }
            }
        }
        self.shutdown().await;
    }

    /// Stops serving and shuts replication down, releasing the store.
    pub async fn shutdown(mut self) {
        self.watcher.abort();
        self.health.shutting_down().await;
        // Replication first, so requests still in flight fail fast instead of committing.
        self.lease_watch.abort();
        self.release_flush.abort();
        self.server.replica().shutdown().await;
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
        self.grpc.stop().await;
    }
}

impl Drop for CmNode {
    fn drop(&mut self) {
        self.lease_watch.abort();
        self.release_flush.abort();
        self.watcher.abort();
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
        let server = self.server.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { server.replica().shutdown().await });
        }
    }
}

/// On a store with no membership: a `--join` node waits to be added; a node of
/// a new cluster asks its peers ([`formation`]) until one of them forms the
/// cluster (its log then reaches this node), a leader is known, or this node is
/// the one to initialise it; after [`FORMATION_WAIT`] with none of these, it
/// initialises the cluster itself.
async fn first_start(replica: &crate::raft::RaftReplica, config: &CmConfig, channels: &Channels) -> Result<(), Error> {
    if replica.is_initialized().await? {
        return Ok(());
    }
    if config.join {
        tracing::info!(event = "join", id = config.id, "waiting to be added to a cluster (ivy member add)");
        return Ok(());
    }
    let give_up = tokio::time::Instant::now() + FORMATION_WAIT;
    // Until the forming peer's log brings this node its membership.
    while !replica.has_membership() {
        match formation(config.id, &config.peers, channels).await? {
            Formation::Join => return Ok(()),
            Formation::Initialise => break,
            Formation::NotYet if tokio::time::Instant::now() >= give_up => {
                tracing::info!("no peer formed the cluster within {FORMATION_WAIT:?}; this node initialises it");
                break;
            }
            Formation::NotYet => tokio::time::sleep(cluster::FORMATION_POLL).await,
        }
    }
    replica.initialize(&config.peers).await
}

/// The backup `ivy snapshot restore` seeded in `data_dir`, if any.
fn read_seed(data_dir: &std::path::Path) -> Result<Option<(PathBuf, crate::members::Backup)>, Error> {
    let path = data_dir.join(crate::members::RESTORE_SEED_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Storage(format!("cannot read {}: {e}", path.display()))),
    };
    let backup =
        crate::members::Backup::decode(&bytes).map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
    Ok(Some((path, backup)))
}

/// Every [`HEALTH_REFRESH`]: reports `ivy.Manager` SERVING exactly while the node
/// is part of a working cluster, and sets the directory gauges.
async fn watch(server: Arc<RequestServer>, health: Health, pulse: Duration) {
    let mut every = request_server::ticks(HEALTH_REFRESH);
    let mut was = None;
    loop {
        every.tick().await;
        let ready = server.replica().in_working_cluster(pulse);
        if was != Some(ready) {
            health.set(MANAGER_SERVICE, ready).await;
            tracing::info!(
                event = "readiness",
                ready,
                "{MANAGER_SERVICE} {}",
                if ready { "SERVING" } else { "NOT_SERVING" }
            );
            was = Some(ready);
        }
        let (pages, clients) = server.read(|d| (d.pages().count(), d.client_count()));
        crate::metrics::directory(pages, clients);
    }
}
