//! The manager's calls to clients' PageHolder services.

use tonic::Request;

use crate::error::Error;
use crate::protocol::{ClientId, Epoch, Forward, Grant, PageName};
use crate::rpc::pb::page_holder_client::PageHolderClient;
use crate::rpc::{self, pb, Channels};

/// A client as the manager reaches it.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The client's id.
    pub id: ClientId,
    /// Its PageHolder address.
    pub addr: String,
}

impl Holder {
    /// Tells the holder that its copies of `page` older than `epoch` are invalid.
    pub async fn invalidate(&self, channels: &Channels, page: &PageName, epoch: Epoch) -> Result<(), Error> {
        let mut client = PageHolderClient::new(channels.get(&self.addr)?);
        let req = pb::InvalidateRequest { page: page.to_string(), epoch };
        client.invalidate(Request::new(req)).await.map_err(|s| self.error(&s))?;
        Ok(())
    }

    /// Tells the requester its fault on `page` is committed at `epoch`.
    pub async fn confirm(&self, channels: &Channels, page: &PageName, grant: Grant, seq: u64) -> Result<(), Error> {
        let mut client = PageHolderClient::new(channels.get(&self.addr)?);
        let req = pb::ConfirmRequest { page: page.to_string(), epoch: grant.epoch, created: grant.created, seq };
        client.confirm(Request::new(req)).await.map_err(|s| self.error(&s))?;
        Ok(())
    }

    /// Asks the owner to send `page` to `requester`, as the plan's `fwd` says.
    pub async fn forward(
        &self,
        channels: &Channels,
        page: &PageName,
        fwd: &Forward,
        requester: &Holder,
    ) -> Result<(), Error> {
        let mut client = PageHolderClient::new(channels.get(&self.addr)?);
        let req = pb::ForwardRequest {
            page: page.to_string(),
            epoch: fwd.epoch,
            requester: requester.id,
            requester_addr: requester.addr.clone(),
            mode: rpc::mode(fwd.kind).into(),
            seq: fwd.seq,
            created: fwd.created,
        };
        client.forward(Request::new(req)).await.map_err(|s| self.error(&s))?;
        Ok(())
    }

    /// An ivy error the holder raised, or `ClientUnreachable` naming it.
    fn error(&self, status: &tonic::Status) -> Error {
        match rpc::error_from_status(status, &self.addr) {
            Error::Unavailable(reason) | Error::Malformed(reason) => {
                Error::ClientUnreachable { client: self.id, addr: self.addr.clone(), reason }
            }
            err => err,
        }
    }
}
