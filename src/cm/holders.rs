//! The manager's calls to clients' PageHolder services.

use tonic::Request;

use crate::error::Error;
use crate::protocol::{ClientId, Epoch, FaultKind, Grant, PageName};
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
    pub async fn confirm(&self, channels: &Channels, page: &PageName, grant: Grant) -> Result<(), Error> {
        let mut client = PageHolderClient::new(channels.get(&self.addr)?);
        let req = pb::ConfirmRequest { page: page.to_string(), epoch: grant.epoch, created: grant.created };
        client.confirm(Request::new(req)).await.map_err(|s| self.error(&s))?;
        Ok(())
    }

    /// Asks the owner to send `page` (held at `epoch`) to `requester`.
    pub async fn forward(
        &self,
        channels: &Channels,
        page: &PageName,
        epoch: Epoch,
        kind: FaultKind,
        requester: &Holder,
    ) -> Result<(), Error> {
        let mut client = PageHolderClient::new(channels.get(&self.addr)?);
        let req = pb::ForwardRequest {
            page: page.to_string(),
            epoch,
            requester: requester.id,
            requester_addr: requester.addr.clone(),
            mode: rpc::mode(kind).into(),
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
