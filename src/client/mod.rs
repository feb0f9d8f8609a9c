//! The client node: holds pages, serves them to others, faults to the CM.
//!
//! A read hits locally with a valid copy and a write with write access; anything
//! else is a fault to the CM leader. A fault is one request (client id, seq) that
//! [`CmConn`] retries across CM nodes until a deadline; the grant names the epoch
//! whose pending copy the page table then installs. One fault runs at a time per
//! client; local hits never wait for it.

mod cm_conn;
mod holder;
pub mod repl;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::Request;

pub use cm_conn::CmConn;
use holder::HolderService;

use crate::error::Error;
use crate::protocol::{
    check_size, ClientId, Epoch, FaultKind, Grant, LocalPage, PageName, PageTable, DEFAULT_MAX_PAGE_BYTES,
};
use crate::rpc::pb::page_holder_server::PageHolderServer;
use crate::rpc::{pb, Channels, Server};

/// Deadline of one RPC from a client.
pub const CLIENT_RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// Deadline of an owner's page send to a requester (inside the manager's forward).
pub const PAGE_SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Default deadline of a whole operation, retries included.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Most faults one operation takes before giving up (each superseded grant costs one).
const MAX_FAULT_ROUNDS: usize = 8;

/// What a client needs to start.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// CM node addresses, any order.
    pub cms: Vec<String>,
    /// Where to serve the PageHolder service (port 0: any free port).
    pub listen: String,
    /// Largest page content accepted.
    pub max_page_bytes: usize,
    /// Deadline of one read or write, retries included.
    pub op_timeout: Duration,
    /// Keep every write grant's epoch (for exactly-once checks; grows with use).
    pub record_grants: bool,
}

impl ClientConfig {
    /// A config for the CM nodes at `cms`, with every default.
    pub fn new(cms: Vec<String>) -> Self {
        ClientConfig {
            cms,
            listen: "127.0.0.1:0".into(),
            max_page_bytes: DEFAULT_MAX_PAGE_BYTES,
            op_timeout: DEFAULT_OP_TIMEOUT,
            record_grants: false,
        }
    }
}

/// Whether an operation was served from the local copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// No RPC was needed.
    Local,
    /// The client took a fault to the CM.
    Fault,
}

/// State shared by the client and its PageHolder service.
pub(crate) struct Shared {
    id: AtomicU64,
    cm: CmConn,
    table: Mutex<PageTable>,
    peers: Channels,
    max_page_bytes: usize,
}

impl Shared {
    fn id(&self) -> ClientId {
        self.id.load(Ordering::SeqCst)
    }

    fn table(&self) -> MutexGuard<'_, PageTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running client; dropping it stops its server (as a crash would).
pub struct Client {
    shared: Arc<Shared>,
    addr: SocketAddr,
    seq: AtomicU64,
    op_timeout: Duration,
    faulting: tokio::sync::Mutex<()>,
    grants: Option<Mutex<Vec<(PageName, Epoch)>>>,
    server: Server,
}

impl Client {
    /// Binds the PageHolder service, registers with the CM cluster and serves.
    pub async fn start(config: ClientConfig) -> Result<Client, Error> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", config.listen)))?;
        let addr = listener.local_addr().map_err(|e| Error::Unavailable(format!("listener: {e}")))?;
        let cm = CmConn::new(config.cms.clone(), CLIENT_RPC_TIMEOUT, config.op_timeout)?;
        let id = register(&cm, addr).await?;
        let shared = Arc::new(Shared {
            id: AtomicU64::new(id),
            cm,
            table: Mutex::new(PageTable::new(id)),
            peers: Channels::new(PAGE_SEND_TIMEOUT),
            max_page_bytes: config.max_page_bytes,
        });
        let router =
            tonic::transport::Server::builder().add_service(PageHolderServer::new(HolderService::new(shared.clone())));
        let server = Server::spawn(router, listener);
        tracing::info!(client = id, %addr, "client registered");
        Ok(Client {
            shared,
            addr,
            seq: AtomicU64::new(0),
            op_timeout: config.op_timeout,
            faulting: tokio::sync::Mutex::new(()),
            grants: config.record_grants.then(Mutex::default),
            server,
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

    /// The CM connection, for status queries.
    pub fn cm(&self) -> &CmConn {
        &self.shared.cm
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
        self.read_at(page).await.map(|(v, hit, _)| (v, hit))
    }

    /// Reads `page` like [`Client::read`] and also returns the epoch of the copy read.
    pub async fn read_at(&self, page: &str) -> Result<(Vec<u8>, Hit, Epoch), Error> {
        let page = PageName::new(page)?;
        if let Some((v, epoch)) = self.shared.table().read_at(&page) {
            return Ok((v.to_vec(), Hit::Local, epoch));
        }
        let give_up = Instant::now() + self.op_timeout;
        let _one_fault = self.wait_turn(&page, give_up).await?;
        for _ in 0..MAX_FAULT_ROUNDS {
            {
                let mut table = self.shared.table();
                if let Some((v, epoch)) = table.read_at(&page) {
                    return Ok((v.to_vec(), Hit::Fault, epoch));
                }
                table.intend_read(&page);
            }
            let (grant, seq) = self.fault(&page, FaultKind::Read, give_up).await?;
            let mut table = self.shared.table();
            if let Some(v) = table.take_confirmed(&page, grant.epoch) {
                return Ok((v, Hit::Fault, grant.epoch));
            }
            match table.grant(&page, grant.epoch, grant.created, seq) {
                Ok(v) => return Ok((v, Hit::Fault, grant.epoch)),
                Err(err) if err.is_retryable() => {
                    tracing::debug!("read of {page}: {err}; faulting again")
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::Unavailable(format!("read of {page}: the copy was superseded {MAX_FAULT_ROUNDS} times")))
    }

    /// Writes `content` to `page`: locally with write access, else by a write fault
    /// (the first write of a page creates it). A write that fails with a retryable
    /// error (unavailable, no quorum) has an unknown outcome: it may still apply.
    pub async fn write(&self, page: &str, content: &[u8]) -> Result<Hit, Error> {
        self.write_at(page, content).await.map(|(hit, _)| hit)
    }

    /// Writes like [`Client::write`] and also returns the epoch of the copy written.
    pub async fn write_at(&self, page: &str, content: &[u8]) -> Result<(Hit, Epoch), Error> {
        let page = PageName::new(page)?;
        check_size(&page, content.len(), self.shared.max_page_bytes)?;
        if let Some(epoch) = self.shared.table().write_at(&page, content) {
            return Ok((Hit::Local, epoch));
        }
        let give_up = Instant::now() + self.op_timeout;
        let _one_fault = self.wait_turn(&page, give_up).await?;
        let written = self.write_by_fault(&page, content, give_up).await;
        // A write that failed for a reason a retry might cure (no CM answered in
        // time, no quorum) may still commit: its outcome is unknown, so the value
        // stays intended and a late confirmation applies it. In particular a page
        // this write created is never left empty. A definite failure drops it.
        if written.as_ref().is_err_and(|e| !e.is_retryable()) {
            self.shared.table().cancel_intent(&page);
        }
        written.map(|epoch| (Hit::Fault, epoch))
    }

    async fn write_by_fault(&self, page: &PageName, content: &[u8], give_up: Instant) -> Result<Epoch, Error> {
        for _ in 0..MAX_FAULT_ROUNDS {
            {
                let mut table = self.shared.table();
                if let Some(epoch) = table.write_at(page, content) {
                    return Ok(epoch);
                }
                table.intend_write(page, content);
            }
            let (grant, seq) = self.fault(page, FaultKind::Write, give_up).await?;
            if let Some(grants) = &self.grants {
                grants.lock().unwrap_or_else(|e| e.into_inner()).push((page.clone(), grant.epoch));
            }
            let mut table = self.shared.table();
            if table.take_confirmed(page, grant.epoch).is_some() {
                return Ok(grant.epoch);
            }
            // No confirmation applied the value: install from the reply ourselves.
            match table.grant(page, grant.epoch, grant.created, seq) {
                Ok(_) => match table.write_at(page, content) {
                    Some(epoch) => {
                        table.cancel_intent(page);
                        return Ok(epoch);
                    }
                    None => tracing::debug!("write of {page}: access moved on before the write; faulting again"),
                },
                Err(err) if err.is_retryable() => {
                    tracing::debug!("write of {page}: {err}; faulting again")
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::Unavailable(format!("write of {page}: ownership was superseded {MAX_FAULT_ROUNDS} times")))
    }

    /// One fault request, retried with the same seq until granted or the deadline.
    /// Waits for this client's previous fault to finish, until the op's deadline.
    async fn wait_turn(&self, page: &PageName, give_up: Instant) -> Result<tokio::sync::MutexGuard<'_, ()>, Error> {
        let turn = tokio::time::timeout_at(give_up, self.faulting.lock()).await;
        turn.map_err(|_| Error::Unavailable(format!("{page}: this client's earlier fault did not finish in time")))
    }

    /// One fault; returns the grant and the seq of the request that got it.
    async fn fault(&self, page: &PageName, kind: FaultKind, give_up: Instant) -> Result<(Grant, u64), Error> {
        match self.fault_once(page, kind, give_up).await {
            Err(Error::UnknownClient { client }) if client == self.id() => {
                self.register_again().await?;
                self.fault_once(page, kind, give_up).await
            }
            other => other,
        }
    }

    async fn fault_once(&self, page: &PageName, kind: FaultKind, give_up: Instant) -> Result<(Grant, u64), Error> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let req = pb::FaultRequest { client: self.id(), seq, page: page.to_string() };
        let what = format!("{} fault on {page}", if kind == FaultKind::Read { "read" } else { "write" });
        let reply = self
            .shared
            .cm
            .call_until(&what, give_up, |mut cm| {
                let req = Request::new(req.clone());
                async move {
                    match kind {
                        FaultKind::Read => cm.read_fault(req).await,
                        FaultKind::Write => cm.write_fault(req).await,
                    }
                }
            })
            .await?;
        Ok((Grant { epoch: reply.epoch, created: reply.created }, seq))
    }

    /// The directory no longer knows this client (only the heartbeat baseline,
    /// which can lose its directory, gets here): register again under a new id.
    async fn register_again(&self) -> Result<(), Error> {
        let old = self.id();
        let new = register(&self.shared.cm, self.addr).await?;
        self.shared.id.store(new, Ordering::SeqCst);
        self.shared.table().set_me(new);
        tracing::warn!("the CM forgot client {old} (its directory was lost); registered again as client {new}");
        Ok(())
    }

    /// Leaves the cluster: the directory forgets this client, then the server stops.
    pub async fn leave(mut self) -> Result<(), Error> {
        let client = self.id();
        let left =
            self.shared
                .cm
                .call("unregister", |mut cm| async move {
                    cm.unregister(Request::new(pb::UnregisterRequest { client })).await
                })
                .await;
        self.stop_server().await;
        left.map(|_| ())
    }

    /// Stops serving without telling the CM, as a crashed client would.
    pub async fn crash(mut self) {
        self.stop_server().await;
    }

    async fn stop_server(&mut self) {
        self.server.stop().await;
    }
}

/// Registers the PageHolder address; the random nonce makes a retry return the same id.
async fn register(cm: &CmConn, addr: SocketAddr) -> Result<ClientId, Error> {
    let nonce = rand::random::<u64>();
    let req = pb::RegisterRequest { addr: addr.to_string(), nonce };
    let reply = cm
        .call("register", |mut c| {
            let req = Request::new(req.clone());
            async move { c.register(req).await }
        })
        .await?;
    Ok(reply.client)
}
