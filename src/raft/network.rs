//! openraft's RPCs over the `RaftTransport` gRPC service: the network factory
//! (this node calling its peers) and the handler (peers calling this node).
//! Requests and replies are openraft's own serde types, postcard-encoded; a reply
//! carries `Result<response, RaftError>` so a remote Raft error reaches the
//! caller's openraft as a remote error, not a network one.
//!
//! A call that gets no reply in time is reported to openraft as a *timeout*, not
//! as *unreachable*: openraft backs off from an unreachable peer, which with its
//! default 500 ms under load turned one slow AppendEntries into a stalled
//! follower and a spurious election. A peer that is really unreachable (refused,
//! reset) is retried after a short back-off that grows to [`MAX_BACKOFF`], so a
//! restarted peer is caught up at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::freshness::Contact;
use super::store::codec;
use super::{Raft, TypeConfig};
use crate::error::Error;
use crate::rpc::{RaftApi, RaftCall, RaftCallError, RaftClient};

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;

/// First pause before retrying an unreachable peer; it doubles each time.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(25);

/// Longest pause between retries of an unreachable peer.
pub const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// Creates a [`PeerNetwork`] per target CM node, sharing one transport.
/// Peers are reached at the address this node was configured with for their id
/// (its `--peers`), else at the one stored in the Raft membership: each node may
/// see its peers through different addresses (the chaos harness puts a proxy on
/// every link), while the membership is shared.
pub struct NetworkFactory {
    transport: RaftClient,
    peers: BTreeMap<u64, String>,
}

impl NetworkFactory {
    /// A factory reaching `peers` through `transport`.
    pub fn new(transport: RaftClient, peers: BTreeMap<u64, String>) -> Self {
        NetworkFactory { transport, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerNetwork {
        PeerNetwork {
            target,
            addr: self.peers.get(&target).cloned().unwrap_or_else(|| node.addr.clone()),
            transport: self.transport.clone(),
        }
    }
}

/// The connection from this CM node to one peer.
pub struct PeerNetwork {
    target: u64,
    addr: String,
    transport: RaftClient,
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(&self, call: RaftCall, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
        let reply = self.transport.call(&self.addr, call, data, ttl).await.map_err(|e| match e {
            RaftCallError::Timeout { .. } => {
                let action = match call {
                    RaftCall::Append => openraft::network::RPCTypes::AppendEntries,
                    RaftCall::Vote | RaftCall::PreVote | RaftCall::Campaign => openraft::network::RPCTypes::Vote,
                    RaftCall::Snapshot => openraft::network::RPCTypes::InstallSnapshot,
                };
                RPCError::Timeout(Timeout { action, id: 0, target: self.target, timeout: ttl })
            }
            RaftCallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        })?;
        let result: Result<Resp, E> = codec::decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::successors(Some(FIRST_BACKOFF), |d| Some((*d * 2).min(MAX_BACKOFF))))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        self.call(RaftCall::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        self.call(RaftCall::Snapshot, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> RpcResult<VoteResponse<u64>> {
        self.call(RaftCall::Vote, &rpc, &option).await
    }
}

/// Peers' calls to this node: decode, hand to the local Raft node, encode.
/// Every AppendEntries or snapshot this node accepts from the leader of its
/// term is stamped on its [`Contact`] (a follower's freshness).
pub struct TransportHandler {
    raft: Raft,
    contact: Arc<Contact>,
    joining: bool,
}

impl TransportHandler {
    /// Serves RPCs for `raft`, stamping leader contact on `contact`; `joining`
    /// for a `--join` node, which votes for nobody until it is added.
    pub fn new(raft: Raft, contact: Arc<Contact>, joining: bool) -> Self {
        TransportHandler { raft, contact, joining }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    codec::decode(bytes).map_err(|e| Error::Malformed(format!("raft payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    codec::encode(value).map_err(|e| Error::Internal(format!("encode raft reply: {e}")))
}

#[crate::rpc::async_trait]
impl RaftApi for TransportHandler {
    async fn handle(&self, call: RaftCall, request: Vec<u8>) -> Result<Vec<u8>, Error> {
        match call {
            RaftCall::Append => {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&request)?;
                let reply = self.raft.append_entries(rpc).await;
                if matches!(&reply, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    self.contact.heard_leader();
                }
                encode(&reply)
            }
            RaftCall::Vote => {
                let rpc: VoteRequest<<TypeConfig as RaftTypeConfig>::NodeId> = decode(&request)?;
                if let Some(refusal) = super::votes::refuse_vote(&self.raft.metrics().borrow(), &rpc, self.joining) {
                    return encode(&Ok::<_, RaftError<u64>>(refusal));
                }
                let (term, candidate) = (rpc.vote.leader_id.term, rpc.vote.leader_id.node_id);
                self.contact.vote_asked(term, candidate);
                let reply = self.raft.vote(rpc).await;
                if !matches!(&reply, Ok(r) if r.vote_granted) {
                    self.contact.vote_refused(term, candidate);
                }
                encode(&reply)
            }
            RaftCall::PreVote => super::prevote::answer(&self.raft, &self.contact, &request).await,
            RaftCall::Campaign => {
                tracing::info!(event = "campaign", "the leader hands over to this node: campaigning now");
                self.raft.trigger().elect().await.map_err(|e| Error::Internal(format!("raft: {e}")))?;
                Ok(Vec::new())
            }
            RaftCall::Snapshot => {
                let rpc: InstallSnapshotRequest<TypeConfig> = decode(&request)?;
                let vote = rpc.vote;
                let reply = self.raft.install_snapshot(rpc).await;
                if matches!(&reply, Ok(r) if r.vote == vote) {
                    self.contact.heard_leader();
                }
                encode(&reply)
            }
        }
    }
}
