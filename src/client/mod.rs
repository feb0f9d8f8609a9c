//! The client node: holds pages, serves them to others, faults to the CM.
//!
//! Every read and write is a [`ClientOp`] stepped to its end: the op decides
//! (local hit, wait for the turn, fault, install, fault again); this module only
//! waits for the turn, sends the fault through [`CmConn`] (which retries the same
//! (client id, seq) across CM nodes until the op's deadline) and feeds the answer
//! back. One fault runs at a time per page, faults on different pages run at
//! once, and local hits never wait for them.
//!
//! A background task renews the client's lease every third of it ([`lease`]);
//! local hits are served only while the lease is valid. A client that learns it
//! was evicted drops its copies, registers again and announces a
//! [`ClientEvent::Evicted`].

mod cm_conn;
mod holder_service;
pub mod lease;
pub mod region;
pub mod repl;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::protocol::Hit;
pub use cm_conn::{status_of, CmConn, STATUS_TIMEOUT};
use holder_service::HolderService;
pub use lease::{ClientEvent, LeaseView};
use region::Regions;
pub use region::{Region, RegionOptions, RegionStats};

use crate::error::Error;
use crate::metrics::{self, OpResult};
use crate::protocol::{
    check_size, ClientId, ClientOp, Epoch, FaultKind, FaultRequest, Grant, LocalPage, OpDone, OpEvent, OpStep,
    PageName, PageTable, DEFAULT_MAX_PAGE_BYTES,
};
use crate::rpc::{holder_router, Channels, HolderClient, Removal, Security, Server};

/// Deadline of one RPC from a client.
pub const CLIENT_RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// Deadline of an owner's page send to a requester (inside the manager's forward).
pub const PAGE_SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Default deadline of a whole operation, retries included.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client needs to start.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// CM node addresses, any order.
    pub cms: Vec<String>,
    /// Where to serve the PageHolder service (port 0: any free port).
    pub listen: String,
    /// The address the CM and other clients reach the PageHolder service at
    /// (default: the bound listen address; set it behind NAT or a proxy).
    pub advertise: Option<String>,
    /// Follow a `NotLeader` hint to a CM address not in `cms` (for a `cms` that
    /// is one load-balanced name).
    pub follow_hints: bool,
    /// Largest page content accepted.
    pub max_page_bytes: usize,
    /// Deadline of one read or write, retries included.
    pub op_timeout: Duration,
    /// Keep every write grant's epoch (for exactly-once checks; grows with use).
    pub record_grants: bool,
    /// TLS and token for every connection, to the CM and between clients.
    pub security: Security,
    /// Testing only: serve local hits after the lease ran out (a broken build the
    /// chaos checker must catch).
    pub unsafe_ignore_lease: bool,
    /// Testing only: install a fault's late reply even after an invalidation or
    /// a release superseded its copy (a broken build the chaos checker must catch).
    pub unsafe_late_install: bool,
    /// Connections to other clients' page holders shared with the other clients
    /// of this process (default: this client's own).
    pub peer_channels: Option<PeerChannels>,
}

/// Connections to page holders that several clients of one process share, as
/// clients on one machine would share one connection per peer if they were one
/// process: without it, N clients in one process open about N² connections to
/// each other, 2N² sockets (both ends are here), and a 100-client process ran
/// into its open-files limit. Every client given the same `PeerChannels` must
/// use the `security` it was made with.
#[derive(Clone)]
pub struct PeerChannels(Channels);

impl std::fmt::Debug for PeerChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerChannels")
    }
}

impl PeerChannels {
    /// An empty set of shared connections, secured as `security` says.
    pub fn new(security: &Security) -> Self {
        PeerChannels(Channels::new(PAGE_SEND_TIMEOUT, security.clone()))
    }
}

impl ClientConfig {
    /// A config for the CM nodes at `cms`, with every default.
    pub fn new(cms: Vec<String>) -> Self {
        ClientConfig {
            cms,
            listen: "127.0.0.1:0".into(),
            advertise: None,
            follow_hints: false,
            max_page_bytes: DEFAULT_MAX_PAGE_BYTES,
            op_timeout: DEFAULT_OP_TIMEOUT,
            record_grants: false,
            security: Security::default(),
            unsafe_ignore_lease: false,
            unsafe_late_install: false,
            peer_channels: None,
        }
    }
}

/// The address to register: `advertise` when given, else the bound address;
/// never an unspecified address (0.0.0.0 or [::]), which others cannot dial.
fn advertised_addr(advertise: Option<&str>, bound: SocketAddr) -> Result<String, Error> {
    let addr: SocketAddr = match advertise {
        Some(a) => a.parse().map_err(|_| Error::InvalidConfig(format!("--advertise {a:?} is not host:port")))?,
        None => bound,
    };
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(Error::InvalidConfig(format!(
            "this client would register {addr}, which others cannot dial; give --advertise HOST:PORT"
        )));
    }
    Ok(addr.to_string())
}

/// A page's turn to fault, held until the op is done.
type Turn = tokio::sync::OwnedMutexGuard<()>;

/// Most client events kept for a slow listener.
const EVENT_BACKLOG: usize = 64;

/// State shared by the client, its PageHolder service and its keepalive task.
pub(crate) struct Shared {
    id: AtomicU64,
    /// The address others reach this client at.
    advertised: String,
    cm: CmConn,
    table: Mutex<PageTable>,
    peers: HolderClient,
    max_page_bytes: usize,
    lease: LeaseView,
    events: broadcast::Sender<ClientEvent>,
    /// Held while the client registers again, so it happens once per eviction.
    rejoining: tokio::sync::Mutex<()>,
    /// The regions mapped over this client's pages.
    regions: Regions,
}

impl Shared {
    fn id(&self) -> ClientId {
        self.id.load(Ordering::SeqCst)
    }

    fn table(&self) -> MutexGuard<'_, PageTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The CM no longer knows client `old` (evicted, or a baseline that lost its
    /// directory): drop every copy and register again under a new id.
    async fn rejoin(&self, old: ClientId) -> Result<(), Error> {
        let _once = self.rejoining.lock().await;
        if self.id() != old {
            return Ok(());
        }
        self.lease.end();
        self.regions.revoke_all(self);
        self.table().clear();
        let sent = Instant::now();
        let (new, lease) = self.cm.register(&self.advertised).await?;
        self.lease.extend(sent, lease);
        self.id.store(new, Ordering::SeqCst);
        self.table().set_me(new);
        tracing::warn!(
            old,
            new,
            "the CM evicted client {old}; dropped every copy and registered again as client {new}"
        );
        let _ = self.events.send(ClientEvent::Evicted { client: old, now: new });
        Ok(())
    }

    /// Renews the lease every third of it until the task is aborted.
    async fn keep_alive(self: Arc<Self>) {
        loop {
            let me = self.id();
            let sent = Instant::now();
            let lease = self.lease.remaining().unwrap_or(lease::RENEW_RETRY);
            match self.cm.keep_alive(me, sent + lease.max(lease::RENEW_RETRY)).await {
                Ok(lease) => {
                    self.lease.extend(sent, lease);
                    tokio::time::sleep(lease / lease::RENEWALS_PER_LEASE).await;
                }
                Err(Error::Evicted { client } | Error::UnknownClient { client }) if client == me => {
                    if let Err(err) = self.rejoin(me).await {
                        tracing::warn!("could not register again after eviction: {err}");
                        tokio::time::sleep(lease::RENEW_RETRY).await;
                    }
                }
                Err(err) => {
                    tracing::debug!("keepalive of client {me}: {err}");
                    tokio::time::sleep(lease::RENEW_RETRY).await;
                }
            }
        }
    }
}

/// A running client; dropping it stops its server (as a crash would).
pub struct Client {
    shared: Arc<Shared>,
    addr: SocketAddr,
    seq: AtomicU64,
    op_timeout: Duration,
    /// One fault at a time per page: the page's turn.
    turns: Mutex<HashMap<PageName, Arc<tokio::sync::Mutex<()>>>>,
    grants: Option<Mutex<Vec<(PageName, Epoch)>>>,
    server: tokio::sync::Mutex<Server>,
    keepalive: JoinHandle<()>,
}

impl Client {
    /// Binds the PageHolder service, registers with the CM cluster and serves.
    pub async fn start(config: ClientConfig) -> Result<Client, Error> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", config.listen)))?;
        let addr = listener.local_addr().map_err(|e| Error::Internal(format!("listener: {e}")))?;
        let advertised = advertised_addr(config.advertise.as_deref(), addr)?;
        let security = config.security.clone();
        let cm = CmConn::new(config.cms.clone(), CLIENT_RPC_TIMEOUT, config.op_timeout, security.clone())?
            .following_hints(config.follow_hints);
        let sent = Instant::now();
        let (id, lease) = cm.register(&advertised).await?;
        let mut table = PageTable::new(id);
        if config.unsafe_late_install {
            tracing::warn!("UNSAFE: late fault replies install superseded copies");
            table.set_unsafe_late_install(true);
        }
        let shared = Arc::new(Shared {
            id: AtomicU64::new(id),
            advertised,
            cm,
            table: Mutex::new(table),
            peers: HolderClient::new(match config.peer_channels {
                Some(PeerChannels(shared)) => shared,
                None => Channels::new(PAGE_SEND_TIMEOUT, security.clone()),
            }),
            max_page_bytes: config.max_page_bytes,
            lease: LeaseView::new(config.unsafe_ignore_lease),
            events: broadcast::channel(EVENT_BACKLOG).0,
            rejoining: tokio::sync::Mutex::new(()),
            regions: Regions::default(),
        });
        shared.lease.extend(sent, lease);
        let holder = Arc::new(HolderService::new(shared.clone()));
        let server = holder_router(holder, listener, &security, config.max_page_bytes)?;
        security.warn_if_exposed("this client's page holder", addr);
        let keepalive = tokio::spawn(shared.clone().keep_alive());
        tracing::info!(client = id, %addr, advertised = shared.advertised.as_str(), lease_ms = lease.as_millis() as u64, "client registered");
        Ok(Client {
            shared,
            addr,
            seq: AtomicU64::new(0),
            op_timeout: config.op_timeout,
            turns: Mutex::default(),
            grants: config.record_grants.then(Mutex::default),
            server: tokio::sync::Mutex::new(server),
            keepalive,
        })
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        self.shared.id()
    }

    /// The address of this client's PageHolder service.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address registered with the CM (where others call this client).
    pub fn advertised(&self) -> &str {
        &self.shared.advertised
    }

    /// The CM connection, for status queries.
    pub fn cm(&self) -> &CmConn {
        &self.shared.cm
    }

    /// Events this client announces on its own (eviction), from now on.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared.events.subscribe()
    }

    /// Time left on this client's lease, if it has not run out.
    pub fn lease_remaining(&self) -> Option<Duration> {
        self.shared.lease.remaining()
    }

    /// The local page table, in page order.
    pub fn pages(&self) -> Vec<(PageName, LocalPage)> {
        self.shared.table().pages().map(|(p, l)| (p.clone(), l.clone())).collect()
    }

    /// The epochs of the write faults granted to this client, when recorded.
    pub fn write_grants(&self) -> Vec<(PageName, Epoch)> {
        self.grants.as_ref().map_or_else(Vec::new, |g| g.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Reads `page`: locally when the copy is valid, else by a read fault.
    pub async fn read(&self, page: &str) -> Result<(Vec<u8>, Hit), Error> {
        let done = self.read_at(page).await?;
        Ok((done.value.unwrap_or_default(), done.hit))
    }

    /// Reads `page` like [`Client::read`], returning the epoch of the copy read too.
    pub async fn read_at(&self, page: &str) -> Result<OpDone, Error> {
        self.run(ClientOp::read(PageName::new(page)?)).await
    }

    /// Writes `content` to `page`: locally with write access, else by a write fault
    /// (the first write of a page creates it). A write that fails with a retryable
    /// error (unavailable, no quorum) has an unknown outcome: it may still apply.
    pub async fn write(&self, page: &str, content: &[u8]) -> Result<Hit, Error> {
        self.write_at(page, content).await.map(|done| done.hit)
    }

    /// Writes like [`Client::write`], returning the epoch of the copy written too.
    pub async fn write_at(&self, page: &str, content: &[u8]) -> Result<OpDone, Error> {
        let page = PageName::new(page)?;
        check_size(&page, content.len(), self.shared.max_page_bytes)?;
        if self.shared.regions.backs(&page) {
            return Err(Error::InvalidConfig(format!(
                "page {page} backs a region mapped over this client: store to the region's memory instead"
            )));
        }
        self.run(ClientOp::write(page, content.to_vec())).await
    }

    /// Takes write access to `page` keeping its bytes (a write fault unless the
    /// client owns it with write access already); returns the bytes. A page
    /// that does not exist is created empty.
    pub async fn acquire(&self, page: &str) -> Result<OpDone, Error> {
        self.run(ClientOp::acquire(PageName::new(page)?)).await
    }

    /// Steps one op to its end and counts how it was served.
    async fn run(&self, op: ClientOp) -> Result<OpDone, Error> {
        let write = op.is_write();
        let done = self.step(op).await;
        let result = match &done {
            Ok(d) if d.hit == Hit::Local => OpResult::Local,
            Ok(_) => OpResult::Fault,
            Err(_) => OpResult::Error,
        };
        metrics::client_op(write, result);
        done
    }

    /// Steps one op to its end, doing each step's waiting and IO.
    async fn step(&self, mut op: ClientOp) -> Result<OpDone, Error> {
        let lease = || self.shared.lease.valid();
        let mut step = op.start(&mut self.shared.table(), lease());
        let give_up = Instant::now() + self.op_timeout;
        // Held from the turn until the op returns.
        let mut _turn = None;
        loop {
            step = match step {
                OpStep::Done(result) => return result,
                OpStep::WaitTurn => {
                    _turn = Some(self.wait_turn(op.page(), give_up).await?);
                    op.on(&mut self.shared.table(), OpEvent::Turn, lease())
                }
                OpStep::Fault(kind) => {
                    let event = self.fault(&op, kind, give_up).await;
                    op.on(&mut self.shared.table(), event, lease())
                }
            };
        }
    }

    /// Waits until no other fault of this client is in flight on `page`, until
    /// the op's deadline; faults on other pages do not wait.
    async fn wait_turn(&self, page: &PageName, give_up: Instant) -> Result<Turn, Error> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            turns.retain(|_, l| Arc::strong_count(l) > 1);
            turns.entry(page.clone()).or_default().clone()
        };
        let turn = tokio::time::timeout_at(give_up, lock.lock_owned()).await;
        turn.map_err(|_| {
            Error::Unavailable(format!(
                "{page}: an earlier fault of this client on the page did not finish within this operation's deadline"
            ))
        })
    }

    /// One fault with a fresh seq, as an event for the op.
    async fn fault(&self, op: &ClientOp, kind: FaultKind, give_up: Instant) -> OpEvent {
        let page = op.page();
        let result = match self.fault_once(op, kind, give_up).await {
            // Only the heartbeat baseline, which can lose its directory, forgets a
            // client without evicting it: register again and fault again.
            Err(Error::UnknownClient { client }) if client == self.id() => match self.shared.rejoin(client).await {
                Ok(()) => self.fault_once(op, kind, give_up).await,
                Err(err) => Err(err),
            },
            // An evicted client registers again. A read is asked again under the
            // new id; a write fails, its outcome unknown (an earlier attempt may
            // have committed before the eviction).
            Err(Error::Evicted { client }) if client == self.id() => match self.shared.rejoin(client).await {
                Ok(()) if kind == FaultKind::Read => self.fault_once(op, kind, give_up).await,
                Ok(()) => Err(Error::Evicted { client }),
                Err(err) => Err(err),
            },
            other => other,
        };
        match result {
            Ok((grant, seq)) => {
                self.record_grant(page, kind, grant);
                OpEvent::Granted { grant, seq }
            }
            Err(err) => OpEvent::Failed(err),
        }
    }

    async fn fault_once(&self, op: &ClientOp, kind: FaultKind, give_up: Instant) -> Result<(Grant, u64), Error> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let request = FaultRequest { client: self.id(), seq, page: op.page().clone(), kind };
        // Bound before the request leaves: a forward may confirm it before the reply.
        op.sent(&mut self.shared.table(), seq);
        let started = Instant::now();
        let grant = self.shared.cm.fault(&request, give_up).await;
        metrics::client_fault(kind, metrics::outcome(&grant), started.elapsed());
        Ok((grant?, seq))
    }

    fn record_grant(&self, page: &PageName, kind: FaultKind, grant: Grant) {
        if let (Some(grants), FaultKind::Write) = (&self.grants, kind) {
            grants.lock().unwrap_or_else(|e| e.into_inner()).push((page.clone(), grant.epoch));
        }
    }

    /// Leaves the cluster: the directory removes this client (each page it owns
    /// passes to a copy holder, or is lost without one), then the server stops.
    pub async fn leave(self) -> Result<Removal, Error> {
        self.keepalive.abort();
        let left = self.shared.cm.unregister(self.id()).await;
        self.server.lock().await.stop().await;
        left
    }

    /// Stops serving and renewing without telling the CM, as a crashed client would.
    pub async fn crash(self) {
        self.halt().await;
    }

    /// Like [`Client::crash`], for a client others still hold: it stops serving
    /// and renewing (operations started afterwards must not be counted on).
    pub async fn halt(&self) {
        self.keepalive.abort();
        self.server.lock().await.stop().await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}
