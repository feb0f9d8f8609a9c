//! The `PageHolder` gRPC service every client serves: the manager's invalidate
//! and forward requests, and page bytes sent by an owner.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Shared;
use crate::error::Error;
use crate::protocol::{check_size, FaultKind, PageName, Transfer};
use crate::rpc::pb::page_holder_client::PageHolderClient;
use crate::rpc::{self, pb};

/// A client's PageHolder service.
pub struct HolderService {
    shared: Arc<Shared>,
}

impl HolderService {
    /// Serves the page table in `shared`.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        HolderService { shared }
    }

    /// Sends a forwarded page to the requester (or installs it here when we asked).
    async fn send(&self, page: &PageName, requester: u64, addr: &str, t: Transfer, seq: u64) -> Result<(), Status> {
        if requester == self.shared.id() {
            self.shared.table().receive(page, t.epoch, t.access, t.content, seq);
            return Ok(());
        }
        let unreachable =
            |reason: String| Error::ClientUnreachable { client: requester, addr: addr.to_string(), reason };
        let channel = self.shared.peers.get(addr).map_err(|e| rpc::status_from_error(&e))?;
        let mode = if t.access == crate::protocol::Access::Write { FaultKind::Write } else { FaultKind::Read };
        let req = pb::SendPageRequest {
            page: page.to_string(),
            epoch: t.epoch,
            mode: rpc::mode(mode).into(),
            content: t.content,
            from: self.shared.id(),
            seq,
        };
        let sent = PageHolderClient::new(channel).send_page(Request::new(req)).await;
        sent.map_err(|s| rpc::status_from_error(&unreachable(s.message().to_string())))?;
        Ok(())
    }
}

#[allow(clippy::result_large_err)]
fn positive_epoch(epoch: u64) -> Result<u64, Status> {
    if epoch == 0 {
        return Err(rpc::status_from_error(&Error::Malformed("epoch 0 is not a page epoch".into())));
    }
    Ok(epoch)
}

#[tonic::async_trait]
impl pb::page_holder_server::PageHolder for HolderService {
    async fn forward(&self, req: Request<pb::ForwardRequest>) -> Result<Response<pb::ForwardReply>, Status> {
        let req = req.into_inner();
        let page = rpc::page_name(&req.page)?;
        let kind = rpc::fault_kind(req.mode)?;
        let epoch = positive_epoch(req.epoch)?;
        let transfer = self.shared.table().forward(&page, epoch, kind, req.created);
        let transfer = transfer.map_err(|e| rpc::status_from_error(&e))?;
        self.send(&page, req.requester, &req.requester_addr, transfer, req.seq).await?;
        Ok(Response::new(pb::ForwardReply {}))
    }

    async fn send_page(&self, req: Request<pb::SendPageRequest>) -> Result<Response<pb::SendPageReply>, Status> {
        let req = req.into_inner();
        let page = rpc::page_name(&req.page)?;
        let access = rpc::fault_kind(req.mode)?.access();
        let epoch = positive_epoch(req.epoch)?;
        check_size(&page, req.content.len(), self.shared.max_page_bytes).map_err(|e| rpc::status_from_error(&e))?;
        self.shared.table().receive(&page, epoch, access, req.content, req.seq);
        Ok(Response::new(pb::SendPageReply {}))
    }

    async fn confirm(&self, req: Request<pb::ConfirmRequest>) -> Result<Response<pb::ConfirmReply>, Status> {
        let req = req.into_inner();
        let page = rpc::page_name(&req.page)?;
        let epoch = positive_epoch(req.epoch)?;
        let confirmed = self.shared.table().confirm(&page, epoch, req.created, req.seq);
        confirmed.map_err(|e| rpc::status_from_error(&e))?;
        Ok(Response::new(pb::ConfirmReply {}))
    }

    async fn change_cm(&self, req: Request<pb::ChangeCmRequest>) -> Result<Response<pb::ChangeCmReply>, Status> {
        let addr = req.into_inner().addr;
        if addr.parse::<std::net::SocketAddr>().is_err() {
            let err = Error::Malformed(format!("CM address {addr:?} is not host:port"));
            return Err(rpc::status_from_error(&err));
        }
        tracing::info!("CHANGE_CM: faults now go to {addr}");
        self.shared.cm.prefer(&addr);
        Ok(Response::new(pb::ChangeCmReply {}))
    }

    async fn invalidate(&self, req: Request<pb::InvalidateRequest>) -> Result<Response<pb::InvalidateReply>, Status> {
        let req = req.into_inner();
        let page = rpc::page_name(&req.page)?;
        let epoch = positive_epoch(req.epoch)?;
        self.shared.table().invalidate(&page, epoch);
        Ok(Response::new(pb::InvalidateReply {}))
    }
}
