//! The `RaftTransport` service between CM nodes: openraft's RPCs as opaque
//! bytes (the Raft glue encodes them), with a server adapter, a handler trait
//! and a client that tells a timeout from an unreachable peer.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};

use super::convert::reply;
use super::net::Channels;
use super::pb;
use super::pb::raft_transport_client::RaftTransportClient as PbClient;
use crate::error::Error;

/// Largest Raft message accepted (entries, snapshots).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Which transport RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftCall {
    /// AppendEntries (and heartbeats).
    Append,
    /// RequestVote.
    Vote,
    /// InstallSnapshot.
    Snapshot,
    /// PreVote: would the peer vote for this node now? Changes nothing there.
    PreVote,
    /// The leader hands over: start an election now (empty payloads).
    Campaign,
}

/// What a node does with its peers' Raft RPCs: encoded request in, encoded reply out.
#[tonic::async_trait]
pub trait RaftApi: Send + Sync + 'static {
    /// Handles one RPC of kind `call`.
    async fn handle(&self, call: RaftCall, request: Vec<u8>) -> Result<Vec<u8>, Error>;
}

/// The tonic server for `api`.
pub(super) fn server(api: Arc<dyn RaftApi>) -> pb::raft_transport_server::RaftTransportServer<Adapter> {
    pb::raft_transport_server::RaftTransportServer::new(Adapter(api)).max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
}

/// Unwraps payloads and calls the handler.
pub(super) struct Adapter(Arc<dyn RaftApi>);

impl Adapter {
    async fn handle(&self, call: RaftCall, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        reply(self.0.handle(call, req.into_inner().data).await.map(|data| pb::RaftPayload { data }))
    }
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for Adapter {
    async fn append_entries(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        self.handle(RaftCall::Append, req).await
    }

    async fn vote(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        self.handle(RaftCall::Vote, req).await
    }

    async fn install_snapshot(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        self.handle(RaftCall::Snapshot, req).await
    }

    async fn pre_vote(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        self.handle(RaftCall::PreVote, req).await
    }

    async fn campaign(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        self.handle(RaftCall::Campaign, req).await
    }
}

/// Why a Raft RPC got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftCallError {
    /// No reply within the deadline: the peer may be slow, not gone.
    #[error("no reply from {addr} within {ms} ms")]
    Timeout { addr: String, ms: u128 },
    /// The peer could not be reached or refused the call.
    #[error("{addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
}

/// Calls to peers' `RaftTransport` services.
#[derive(Clone)]
pub struct RaftClient {
    channels: Channels,
}

impl RaftClient {
    /// A client reaching peers through `channels`.
    pub fn new(channels: Channels) -> Self {
        RaftClient { channels }
    }

    /// Sends one encoded RPC to the peer at `addr`, waiting at most `timeout`.
    pub async fn call(
        &self,
        addr: &str,
        call: RaftCall,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RaftCallError> {
        let unreachable = |reason: String| RaftCallError::Unreachable { addr: addr.to_string(), reason };
        let channel = self.channels.get(addr).map_err(|e| unreachable(e.to_string()))?;
        let mut stub = PbClient::new(channel).max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let mut req = Request::new(pb::RaftPayload { data });
        req.set_timeout(timeout);
        let sent = tokio::time::timeout(timeout, async {
            match call {
                RaftCall::Append => stub.append_entries(req).await,
                RaftCall::Vote => stub.vote(req).await,
                RaftCall::Snapshot => stub.install_snapshot(req).await,
                RaftCall::PreVote => stub.pre_vote(req).await,
                RaftCall::Campaign => stub.campaign(req).await,
            }
        });
        match sent.await {
            Ok(Ok(reply)) => Ok(reply.into_inner().data),
            Ok(Err(status)) if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                Err(RaftCallError::Timeout { addr: addr.to_string(), ms: timeout.as_millis() })
            }
            Ok(Err(status)) => Err(unreachable(status.message().to_string())),
            Err(_) => Err(RaftCallError::Timeout { addr: addr.to_string(), ms: timeout.as_millis() }),
        }
    }
}
