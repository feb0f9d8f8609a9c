//! What a client does with the requests it serves: the manager's invalidate,
//! forward and release, an owner's page bytes, and CHANGE_CM.

use std::sync::Arc;

use super::Shared;
use crate::error::Error;
use crate::protocol::{check_size, Epoch, Forward, PageName, Transfer};
use crate::rpc::{HolderApi, HolderRef};

/// A client's PageHolder handler over its page table.
pub struct HolderService {
    shared: Arc<Shared>,
}

impl HolderService {
    /// Serves the page table in `shared`.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        HolderService { shared }
    }
}

#[crate::rpc::async_trait]
impl HolderApi for HolderService {
    fn me(&self) -> crate::protocol::ClientId {
        self.shared.id()
    }

    async fn forward(&self, page: PageName, fwd: Forward, requester: HolderRef) -> Result<(), Error> {
        // A mapped page's stores are stopped and taken from memory first, after
        // the faulting thread had its turn with a page just granted to it
        // (unless this client's own fault asks: that is the thread itself).
        let regions = &self.shared.regions;
        if requester.id != self.shared.id() {
            regions.hold(&self.shared, &page).await;
        }
        let copy = regions.around(&self.shared, &page, |t| t.forward(&page, fwd.epoch, fwd.kind, fwd.created))?;
        if requester.id == self.shared.id() {
            // The requester is this client (an owner reading back what it kept).
            self.shared.table().receive(&page, copy.epoch, copy.access, copy.content, fwd.seq);
            return Ok(());
        }
        self.shared.peers.send_page(&requester, &page, copy, self.shared.id(), fwd.seq).await
    }

    async fn send_page(&self, page: PageName, copy: Transfer, seq: u64) -> Result<(), Error> {
        check_size(&page, copy.content.len(), self.shared.max_page_bytes)?;
        self.shared.table().receive(&page, copy.epoch, copy.access, copy.content, seq);
        Ok(())
    }

    async fn invalidate(&self, page: PageName, epoch: Epoch) -> Result<(), Error> {
        // A mapped page is zapped: the next access faults again.
        self.shared.regions.hold(&self.shared, &page).await;
        self.shared.regions.around(&self.shared, &page, |t| t.invalidate(&page, epoch));
        Ok(())
    }

    async fn release(&self, page: PageName, epoch: Epoch) -> Result<(), Error> {
        self.shared.regions.around(&self.shared, &page, |t| t.release(&page, epoch));
        Ok(())
    }

    async fn change_cm(&self, addr: String) -> Result<(), Error> {
        tracing::info!("CHANGE_CM: faults now go to {addr}");
        self.shared.cm.prefer(&addr);
        Ok(())
    }
}
