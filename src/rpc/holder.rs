//! The `PageHolder` service every client serves: its server adapter, its
//! handler trait and its client (used by the manager and by owners sending pages).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{
    access_mode, epoch, error_from_status, fault_kind, mode, page_name, released, releases, reply, socket_addr,
};
use super::net::{Channels, Server};
use super::pb;
use super::pb::page_holder_client::PageHolderClient as PbClient;
use super::security::{require_node, AuthChannel, Callers, Security};
use crate::error::Error;
use crate::protocol::{ClientId, Epoch, Forward, PageName, Release, Transfer};

/// A client as others reach it: its id and its PageHolder address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderRef {
    /// The client's id.
    pub id: ClientId,
    /// Its PageHolder address.
    pub addr: String,
}

/// What a client does with the manager's and other clients' requests.
#[tonic::async_trait]
pub trait HolderApi: Send + Sync + 'static {
    /// This client's id: requests addressed to another client are refused.
    fn me(&self) -> ClientId;
    /// The manager asks this owner to send `page` at `fwd.epoch` to `requester`.
    async fn forward(&self, page: PageName, fwd: Forward, requester: HolderRef) -> Result<(), Error>;
    /// An owner sent bytes for this client's fault with request number `seq`.
    async fn send_page(&self, page: PageName, copy: Transfer, seq: u64) -> Result<(), Error>;
    /// Copies of `page` older than `epoch` are invalid (their bytes are kept).
    async fn invalidate(&self, page: PageName, epoch: Epoch) -> Result<(), Error>;
    /// A later epoch of `page` is committed: copies older than `epoch` may go.
    /// Releases arrive late, batched and out of order with other messages
    /// (the protocol allows it: [`crate::protocol::Releases`]).
    async fn release(&self, page: PageName, epoch: Epoch) -> Result<(), Error>;
    /// Heartbeat mode: faults now go to the CM at `addr` (CHANGE_CM).
    async fn change_cm(&self, addr: String) -> Result<(), Error>;
}

/// Room in a holder's message for everything but a page's bytes: a
/// `SendPage`'s fields, or a forward's or an invalidation's with the releases
/// it carries (at most 32 of at most 79 bytes each).
pub const PAGE_ENVELOPE_BYTES: usize = 4096;

/// Serves `api` as a client's PageHolder service on `listener`, to members of
/// the cluster only, decoding no message larger than a page of
/// `max_page_bytes` and its envelope.
pub fn holder_router(
    api: Arc<dyn HolderApi>,
    listener: tokio::net::TcpListener,
    security: &Security,
    max_page_bytes: usize,
) -> Result<Server, Error> {
    let adapter = Adapter { api, tls: security.is_tls() };
    let service = pb::page_holder_server::PageHolderServer::new(adapter)
        .max_decoding_message_size(max_page_bytes.saturating_add(PAGE_ENVELOPE_BYTES));
    let guarded = tonic::service::interceptor::InterceptedService::new(service, security.guard(Callers::Members));
    Ok(Server::spawn(security.server()?.add_service(guarded), listener))
}

/// Converts requests, calls the handler, converts answers.
pub(super) struct Adapter {
    pub(super) api: Arc<dyn HolderApi>,
    /// With TLS, the manager's calls must come with a node certificate.
    pub(super) tls: bool,
}

impl Adapter {
    /// Refuses a request meant for another client (0: unaddressed).
    fn addressed(&self, to: ClientId) -> Result<(), Error> {
        let me = self.api.me();
        if to != 0 && to != me {
            return Err(Error::Unavailable(format!("client {to} is not here (client {me} serves this address)")));
        }
        Ok(())
    }

    /// The page and epoch of an invalidation (or a single release) addressed to
    /// this client, once everything in it is valid and the releases it
    /// carries are applied.
    async fn page_epoch(&self, r: pb::InvalidateRequest) -> Result<(PageName, Epoch), Error> {
        self.addressed(r.to)?;
        let (page, epoch, carried) = (page_name(&r.page)?, epoch(r.epoch)?, releases(r.released)?);
        self.apply(carried).await?;
        Ok((page, epoch))
    }

    /// Applies releases that came with a manager's request, before the request itself.
    async fn apply(&self, releases: Vec<Release>) -> Result<(), Error> {
        for r in releases {
            self.api.release(r.page, r.epoch).await?;
        }
        Ok(())
    }

    /// Refuses a call only the manager makes unless a CM node made it (TLS only;
    /// the token was checked before).
    fn only_manager<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.tls {
            require_node(req).map_err(|e| super::status_from_error(&e))?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::page_holder_server::PageHolder for Adapter {
    async fn forward(&self, req: Request<pb::ForwardRequest>) -> Result<Response<pb::ForwardReply>, Status> {
        self.only_manager(&req)?;
        let r = req.into_inner();
        let forwarded = async {
            self.addressed(r.to)?;
            let page = page_name(&r.page)?;
            let carried = releases(r.released)?;
            // The owner is this client: the handler knows itself.
            let fwd =
                Forward { owner: 0, epoch: epoch(r.epoch)?, kind: fault_kind(r.mode)?, seq: r.seq, created: r.created };
            let requester = HolderRef { id: r.requester, addr: socket_addr("requester address", &r.requester_addr)? };
            self.apply(carried).await?;
            self.api.forward(page, fwd, requester).await
        };
        reply(forwarded.await.map(|()| pb::ForwardReply {}))
    }

    async fn send_page(&self, req: Request<pb::SendPageRequest>) -> Result<Response<pb::SendPageReply>, Status> {
        let r = req.into_inner();
        let sent = async {
            self.addressed(r.to)?;
            let page = page_name(&r.page)?;
            let copy = Transfer { epoch: epoch(r.epoch)?, access: fault_kind(r.mode)?.access(), content: r.content };
            self.api.send_page(page, copy, r.seq).await
        };
        reply(sent.await.map(|()| pb::SendPageReply {}))
    }

    async fn invalidate(&self, req: Request<pb::InvalidateRequest>) -> Result<Response<pb::InvalidateReply>, Status> {
        self.only_manager(&req)?;
        let done = async {
            let (page, epoch) = self.page_epoch(req.into_inner()).await?;
            self.api.invalidate(page, epoch).await
        };
        reply(done.await.map(|()| pb::InvalidateReply {}))
    }

    async fn release(&self, req: Request<pb::InvalidateRequest>) -> Result<Response<pb::InvalidateReply>, Status> {
        self.only_manager(&req)?;
        let done = async {
            let (page, epoch) = self.page_epoch(req.into_inner()).await?;
            self.api.release(page, epoch).await
        };
        reply(done.await.map(|()| pb::InvalidateReply {}))
    }

    async fn release_batch(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::InvalidateReply>, Status> {
        self.only_manager(&req)?;
        let r = req.into_inner();
        let done = async {
            self.addressed(r.to)?;
            if r.released.is_empty() {
                return Err(Error::Malformed("a release message with no releases".into()));
            }
            self.apply(releases(r.released)?).await
        };
        reply(done.await.map(|()| pb::InvalidateReply {}))
    }

    async fn change_cm(&self, req: Request<pb::ChangeCmRequest>) -> Result<Response<pb::ChangeCmReply>, Status> {
        self.only_manager(&req)?;
        let r = req.into_inner();
        let done = async { self.api.change_cm(socket_addr("CM address", &r.addr)?).await };
        reply(done.await.map(|()| pb::ChangeCmReply {}))
    }
}

/// Calls to clients' PageHolder services, one connection per client.
#[derive(Clone)]
pub struct HolderClient {
    channels: Channels,
}

impl HolderClient {
    /// A client whose every call gives up after the channels' timeout.
    pub fn new(channels: Channels) -> Self {
        HolderClient { channels }
    }

    fn stub(&self, to: &HolderRef) -> Result<PbClient<AuthChannel>, Error> {
        Ok(PbClient::new(self.channels.get(&to.addr)?))
    }

    /// The error of a failed call; a call that timed out drops its channel.
    fn failed(&self, to: &HolderRef, status: &Status) -> Error {
        self.channels.note(&to.addr, status);
        holder_error(to, status)
    }

    /// Tells `to` that its copies of `page` older than `epoch` are invalid,
    /// after the `carried` releases.
    pub async fn invalidate(
        &self,
        to: &HolderRef,
        page: &PageName,
        epoch: Epoch,
        carried: &[Release],
    ) -> Result<(), Error> {
        let req = pb::InvalidateRequest { page: page.to_string(), epoch, to: to.id, released: released(carried) };
        self.stub(to)?.invalidate(req).await.map_err(|s| self.failed(to, &s))?;
        Ok(())
    }

    /// Tells `to` that its copies older than each release's epoch, kept bytes
    /// included, may go (at most [`crate::protocol::RELEASES_PER_MESSAGE`]).
    pub async fn release(&self, to: &HolderRef, releases: &[Release]) -> Result<(), Error> {
        let req = pb::ReleaseRequest { released: released(releases), to: to.id };
        self.stub(to)?.release_batch(req).await.map_err(|s| self.failed(to, &s))?;
        Ok(())
    }

    /// Asks owner `to` to send `page` to `requester`, as `fwd` says, after the
    /// `carried` releases.
    pub async fn forward(
        &self,
        to: &HolderRef,
        page: &PageName,
        fwd: &Forward,
        requester: &HolderRef,
        carried: &[Release],
    ) -> Result<(), Error> {
        let req = pb::ForwardRequest {
            page: page.to_string(),
            epoch: fwd.epoch,
            requester: requester.id,
            requester_addr: requester.addr.clone(),
            mode: mode(fwd.kind),
            seq: fwd.seq,
            created: fwd.created,
            to: to.id,
            released: released(carried),
        };
        self.stub(to)?.forward(req).await.map_err(|s| self.failed(to, &s))?;
        Ok(())
    }

    /// Sends `copy` of `page` from client `from` to requester `to` for its request `seq`.
    pub async fn send_page(
        &self,
        to: &HolderRef,
        page: &PageName,
        copy: Transfer,
        from: ClientId,
        seq: u64,
    ) -> Result<(), Error> {
        let req = pb::SendPageRequest {
            page: page.to_string(),
            epoch: copy.epoch,
            mode: access_mode(copy.access),
            content: copy.content,
            from,
            seq,
            to: to.id,
        };
        self.stub(to)?.send_page(req).await.map_err(|s| self.failed(to, &s))?;
        Ok(())
    }

    /// CHANGE_CM: tells `to` to send its faults to the CM at `cm_addr`.
    pub async fn change_cm(&self, to: &HolderRef, cm_addr: &str) -> Result<(), Error> {
        let req = pb::ChangeCmRequest { addr: cm_addr.to_string() };
        self.stub(to)?.change_cm(req).await.map_err(|s| self.failed(to, &s))?;
        Ok(())
    }
}

/// An ivy error the holder raised, or `ClientUnreachable` naming it.
fn holder_error(to: &HolderRef, status: &Status) -> Error {
    match error_from_status(status, &to.addr) {
        Error::Unavailable(reason) | Error::Malformed(reason) => {
            Error::ClientUnreachable { client: to.id, addr: to.addr.clone(), reason, evict_in_ms: None }
        }
        err => err,
    }
}
