//! The client-facing `Manager` service: its server adapter, its handler trait
//! and its client.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert::{error_from_status, lease, page_name, positive, reply, socket_addr};
use super::net::Channels;
use super::pb;
use super::pb::manager_client::ManagerClient as PbClient;
use super::security::AuthChannel;
use crate::config::ReplicationMode;
use crate::error::Error;
use crate::protocol::{ClientId, FaultKind, FaultRequest, Grant, PageName};
use crate::status::{ClientLease, LeaderRef, NodeStatus, PageState, PageView, PagesReport, Role};

/// How long before a fault caller's deadline (the `wait` it sends) the CM
/// answers a slow fault with why it is slow. An attempt with less time than
/// this left can only hear that the fault did not complete in no time, which
/// says nothing: callers do not start one.
pub const FAULT_REPLY_MARGIN: Duration = Duration::from_millis(50);

/// What removing a client did to the pages it owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Removal {
    /// Pages handed to a copy holder.
    pub promoted: u64,
    /// Pages lost (no copy existed).
    pub lost: u64,
}

/// What a CM node does with client requests, in domain types.
#[tonic::async_trait]
pub trait ManagerApi: Send + Sync + 'static {
    /// Registers a client serving its pages at `addr`; a retry with the same
    /// `nonce` gets the same id. Returns the id and the lease it holds from now.
    async fn register(&self, addr: String, nonce: u64) -> Result<(ClientId, Duration), Error>;
    /// Removes a client that leaves.
    async fn unregister(&self, client: ClientId) -> Result<Removal, Error>;
    /// Renews a client's lease; returns the lease, counted from when it was sent.
    async fn keep_alive(&self, client: ClientId) -> Result<Duration, Error>;
    /// Evicts a client at once (operator override).
    async fn evict(&self, client: ClientId) -> Result<Removal, Error>;
    /// Serves one fault; the caller waits at most `reply_within` for the answer
    /// (so an answer that names why the fault is slow should come before it).
    async fn fault(&self, request: FaultRequest, reply_within: Option<Duration>) -> Result<Grant, Error>;
    /// This node's status.
    async fn status(&self) -> Result<NodeStatus, Error>;
    /// The directory's entries for `pages` (every page when empty), read
    /// linearizably on the leader.
    async fn pages(&self, pages: Vec<PageName>) -> Result<PagesReport, Error>;
}

/// Largest request the manager decodes: its requests carry ids and page names,
/// never page bytes (a `pages` request naming 10,000 pages is under 1 MiB).
pub const MAX_MANAGER_MESSAGE_BYTES: usize = 1024 * 1024;

/// The tonic server for `api`.
pub(super) fn server(api: Arc<dyn ManagerApi>) -> pb::manager_server::ManagerServer<Adapter> {
    pb::manager_server::ManagerServer::new(Adapter(api)).max_decoding_message_size(MAX_MANAGER_MESSAGE_BYTES)
}

/// Converts requests, calls the handler, converts answers.
pub(super) struct Adapter(pub(super) Arc<dyn ManagerApi>);

impl Adapter {
    async fn fault(&self, req: Request<pb::FaultRequest>, kind: FaultKind) -> Result<pb::FaultReply, Error> {
        let reply_within = grpc_timeout(req.metadata());
        let req = req.into_inner();
        let request = FaultRequest {
            client: positive("client id", req.client)?,
            seq: positive("request seq", req.seq)?,
            page: page_name(&req.page)?,
            kind,
        };
        let grant = self.0.fault(request, reply_within).await?;
        Ok(pb::FaultReply { epoch: grant.epoch, created: grant.created })
    }
}

#[tonic::async_trait]
impl pb::manager_server::Manager for Adapter {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let req = req.into_inner();
        let registered = async {
            let addr = socket_addr("client address", &req.addr)?;
            let (client, lease) = self.0.register(addr, req.nonce).await?;
            Ok(pb::RegisterReply { client, lease_ms: lease.as_millis() as u64 })
        };
        answer(registered.await)
    }

    async fn unregister(&self, req: Request<pb::UnregisterRequest>) -> Result<Response<pb::UnregisterReply>, Status> {
        let removed = self.0.unregister(req.into_inner().client).await;
        answer(removed.map(|r| pb::UnregisterReply { promoted: r.promoted, lost: r.lost }))
    }

    async fn keep_alive(&self, req: Request<pb::KeepAliveRequest>) -> Result<Response<pb::KeepAliveReply>, Status> {
        let renewed = async { self.0.keep_alive(positive("client id", req.into_inner().client)?).await };
        answer(renewed.await.map(|lease| pb::KeepAliveReply { lease_ms: lease.as_millis() as u64 }))
    }

    async fn evict(&self, req: Request<pb::EvictRequest>) -> Result<Response<pb::EvictReply>, Status> {
        let evicted = async { self.0.evict(positive("client id", req.into_inner().client)?).await };
        answer(evicted.await.map(|r| pb::EvictReply { promoted: r.promoted, lost: r.lost }))
    }

    async fn read_fault(&self, req: Request<pb::FaultRequest>) -> Result<Response<pb::FaultReply>, Status> {
        answer(self.fault(req, FaultKind::Read).await)
    }

    async fn write_fault(&self, req: Request<pb::FaultRequest>) -> Result<Response<pb::FaultReply>, Status> {
        answer(self.fault(req, FaultKind::Write).await)
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        answer(self.0.status().await.map(status_reply))
    }

    async fn pages(&self, req: Request<pb::PagesRequest>) -> Result<Response<pb::PagesReply>, Status> {
        let asked = async {
            let names = req.into_inner().pages.iter().map(|p| page_name(p)).collect::<Result<Vec<_>, _>>()?;
            self.0.pages(names).await
        };
        reply(asked.await.map(|r| pb::PagesReply { pages: r.pages.into_iter().map(page_info).collect(), more: r.more }))
    }
}

fn page_info(p: PageView) -> pb::PageInfo {
    let state = match p.state {
        PageState::Live => "live",
        PageState::Faulting => "faulting",
        PageState::Lost => "lost",
        PageState::Absent => "absent",
    };
    pb::PageInfo {
        page: p.page,
        state: state.into(),
        owner: p.owner,
        owner_addr: p.owner_addr.unwrap_or_default(),
        copy_set: p.copy_set,
        epoch: p.epoch,
    }
}

pub(super) fn page_view(p: pb::PageInfo) -> Result<PageView, Error> {
    let state = match p.state.as_str() {
        "live" => PageState::Live,
        "faulting" => PageState::Faulting,
        "lost" => PageState::Lost,
        "absent" => PageState::Absent,
        other => return Err(Error::Malformed(format!("unknown page state {other:?}"))),
    };
    let owner_addr = (!p.owner_addr.is_empty()).then_some(p.owner_addr);
    Ok(PageView { page: p.page, state, owner: p.owner, owner_addr, copy_set: p.copy_set, epoch: p.epoch })
}

/// [`reply`], counting an error in `ivy_errors_total` by its kind: every error
/// this node answers a client with passes here.
fn answer<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    if let Err(err) = &result {
        crate::metrics::error(err);
    }
    reply(result)
}

/// The caller's deadline, from the standard `grpc-timeout` header.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    super::link::parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

fn status_reply(st: NodeStatus) -> pb::StatusReply {
    let (leader, leader_addr) = st.leader.map_or((0, String::new()), |l| (l.id, l.addr));
    pb::StatusReply {
        id: st.id,
        role: st.role.name().to_string(),
        term: st.term,
        last_log_index: st.last_log_index,
        applied_index: st.applied_index,
        leader,
        leader_addr,
        pages: st.pages,
        clients: st.clients,
        mode: st.mode.name().to_string(),
        serving: st.serving,
        last_sync_ms: st.last_sync_ms.map_or(-1, |ms| ms as i64),
        client_list: st
            .client_list
            .into_iter()
            .map(|c| pb::ClientEntry {
                id: c.id,
                addr: c.addr,
                keepalive_age_ms: c.keepalive_age_ms.map_or(-1, |ms| ms as i64),
            })
            .collect(),
        syncs: st.syncs,
        version: st.version,
        uptime_ms: st.uptime_ms,
        data_dir_bytes: st.data_dir_bytes.map_or(-1, |b| b as i64),
    }
}

pub(super) fn node_status(r: pb::StatusReply) -> Result<NodeStatus, Error> {
    let role = Role::parse(&r.role).ok_or_else(|| Error::Malformed(format!("unknown role {:?}", r.role)))?;
    let mode = match r.mode.as_str() {
        "raft" => ReplicationMode::Raft,
        "heartbeat" => ReplicationMode::Heartbeat,
        other => return Err(Error::Malformed(format!("unknown replication mode {other:?}"))),
    };
    Ok(NodeStatus {
        id: r.id,
        role,
        serving: r.serving,
        term: r.term,
        last_log_index: r.last_log_index,
        applied_index: r.applied_index,
        leader: (r.leader != 0).then_some(LeaderRef { id: r.leader, addr: r.leader_addr }),
        mode,
        last_sync_ms: u64::try_from(r.last_sync_ms).ok(),
        pages: r.pages,
        clients: r.clients,
        client_list: r
            .client_list
            .into_iter()
            .map(|c| ClientLease { id: c.id, addr: c.addr, keepalive_age_ms: u64::try_from(c.keepalive_age_ms).ok() })
            .collect(),
        syncs: r.syncs,
        version: r.version,
        uptime_ms: r.uptime_ms,
        data_dir_bytes: u64::try_from(r.data_dir_bytes).ok(),
    })
}

/// Calls to the `Manager` service of any CM node, one connection per node.
#[derive(Clone)]
pub struct ManagerClient {
    channels: Channels,
}

impl ManagerClient {
    /// A client whose every call gives up after the channels' timeout.
    pub fn new(channels: Channels) -> Self {
        ManagerClient { channels }
    }

    fn stub(&self, addr: &str) -> Result<PbClient<AuthChannel>, Error> {
        Ok(PbClient::new(self.channels.get(addr)?))
    }

    /// The error of a failed call; a call that timed out drops its channel.
    fn failed(&self, status: &Status, addr: &str) -> Error {
        self.channels.note(addr, status);
        self.error(status, addr)
    }

    /// Registers a client serving at `client_addr` with the CM at `addr`;
    /// returns its id and its lease.
    pub async fn register(&self, addr: &str, client_addr: &str, nonce: u64) -> Result<(ClientId, Duration), Error> {
        let req = pb::RegisterRequest { addr: client_addr.to_string(), nonce };
        let reply = self.stub(addr)?.register(req).await.map_err(|s| self.failed(&s, addr))?.into_inner();
        Ok((reply.client, lease(reply.lease_ms)))
    }

    /// Asks the CM at `addr` to remove `client`, which leaves.
    pub async fn unregister(&self, addr: &str, client: ClientId) -> Result<Removal, Error> {
        let req = pb::UnregisterRequest { client };
        let reply = self.stub(addr)?.unregister(req).await.map_err(|s| self.failed(&s, addr))?.into_inner();
        Ok(Removal { promoted: reply.promoted, lost: reply.lost })
    }

    /// Renews `client`'s lease with the CM at `addr`; returns the lease.
    pub async fn keep_alive(&self, addr: &str, client: ClientId) -> Result<Duration, Error> {
        let reply = self.stub(addr)?.keep_alive(pb::KeepAliveRequest { client }).await;
        Ok(lease(reply.map_err(|s| self.failed(&s, addr))?.into_inner().lease_ms))
    }

    /// Asks the CM at `addr` to evict `client` at once.
    pub async fn evict(&self, addr: &str, client: ClientId) -> Result<Removal, Error> {
        let reply = self.stub(addr)?.evict(pb::EvictRequest { client }).await;
        let reply = reply.map_err(|s| self.failed(&s, addr))?.into_inner();
        Ok(Removal { promoted: reply.promoted, lost: reply.lost })
    }

    /// Sends one fault request to the CM at `addr`, telling it the caller waits
    /// at most `wait` (so it can answer why before then: [`FAULT_REPLY_MARGIN`]
    /// before it).
    pub async fn fault(&self, addr: &str, request: &FaultRequest, wait: Duration) -> Result<Grant, Error> {
        let req = pb::FaultRequest { client: request.client, seq: request.seq, page: request.page.to_string() };
        let mut req = Request::new(req);
        req.set_timeout(wait);
        let mut stub = self.stub(addr)?;
        let reply = match request.kind {
            FaultKind::Read => stub.read_fault(req).await,
            FaultKind::Write => stub.write_fault(req).await,
        };
        let reply = reply.map_err(|s| self.failed(&s, addr))?.into_inner();
        Ok(Grant { epoch: reply.epoch, created: reply.created })
    }

    /// Asks the CM at `addr` for the directory's entries of `pages` (all when empty).
    pub async fn pages(&self, addr: &str, pages: &[String]) -> Result<PagesReport, Error> {
        let reply = self.stub(addr)?.pages(pb::PagesRequest { pages: pages.to_vec() }).await;
        let reply = reply.map_err(|s| self.failed(&s, addr))?.into_inner();
        let pages = reply.pages.into_iter().map(page_view).collect::<Result<Vec<_>, _>>()?;
        Ok(PagesReport { pages, more: reply.more })
    }

    /// Asks the CM at `addr` for its status.
    pub async fn status(&self, addr: &str) -> Result<NodeStatus, Error> {
        let reply = self.stub(addr)?.status(pb::StatusRequest {}).await.map_err(|s| self.failed(&s, addr))?;
        node_status(reply.into_inner())
    }
}

impl ManagerClient {
    /// The error a CM's status carries; a plaintext caller refused at the
    /// transport is told TLS may be what is missing.
    fn error(&self, status: &Status, addr: &str) -> Error {
        match error_from_status(status, &format!("CM {addr}")) {
            Error::Unavailable(why) if !self.channels.security().is_tls() && transport_refusal(status) => {
                Error::Unavailable(format!("{why} (if the cluster uses TLS, give --tls-ca, --tls-cert and --tls-key)"))
            }
            err => err,
        }
    }
}

/// True for the statuses a plaintext call to a TLS server ends with.
fn transport_refusal(status: &Status) -> bool {
    let message = status.message();
    message.contains("transport error") || message.contains("h2 protocol error")
}
