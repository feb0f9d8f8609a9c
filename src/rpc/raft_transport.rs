//! openraft's RPCs over gRPC: the network factory (client side) and the
//! `RaftTransport` service (server side). Payloads are openraft's own serde types
//! in bincode; a reply carries `Result<response, RaftError>` so a remote Raft
//! error reaches the caller's openraft as a remote error, not a network one.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use std::collections::BTreeMap;

use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::net::Channels;
use super::pb;
use super::pb::raft_transport_client::RaftTransportClient;
use crate::replication::Raft;
use crate::storage::TypeConfig;

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;

/// Creates a [`PeerNetwork`] per target CM node, sharing one channel cache.
/// Peers are reached at the address this node was configured with for their id
/// (its `--peers`), not the one stored in the Raft membership: each node may see
/// its peers through different addresses (the chaos harness puts a proxy on every
/// link), while the membership is shared.
pub struct NetworkFactory {
    channels: Channels,
    peers: BTreeMap<u64, String>,
}

impl NetworkFactory {
    /// A factory reaching `peers` through `channels`.
    pub fn new(channels: Channels, peers: BTreeMap<u64, String>) -> Self {
        NetworkFactory { channels, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerNetwork {
        PeerNetwork {
            target,
            addr: self.peers.get(&target).cloned().unwrap_or_else(|| node.addr.clone()),
            channels: self.channels.clone(),
        }
    }
}

/// The connection from this CM node to one peer.
pub struct PeerNetwork {
    target: u64,
    addr: String,
    channels: Channels,
}

/// Which transport RPC to call.
#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(&self, rpc: Rpc, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self.channels.get(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftTransportClient::new(channel);
        let mut request = Request::new(pb::RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| RPCError::Unreachable(Unreachable::new(&s)))?.into_inner();
        let result: Result<Resp, E> =
            bincode::deserialize(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> RpcResult<VoteResponse<u64>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// The server side: hands each RPC to the local Raft node.
pub struct TransportService {
    raft: Raft,
}

impl TransportService {
    /// Serves RPCs for `raft`.
    pub fn new(raft: Raft) -> Self {
        TransportService { raft }
    }
}

#[allow(clippy::result_large_err)]
fn decode<T: DeserializeOwned>(req: Request<pb::RaftPayload>) -> Result<T, Status> {
    bincode::deserialize(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

#[allow(clippy::result_large_err)]
fn encode<T: Serialize>(value: &T) -> Result<Response<pb::RaftPayload>, Status> {
    let data = bincode::serialize(value).map_err(|e| Status::internal(format!("encode: {e}")))?;
    Ok(Response::new(pb::RaftPayload { data }))
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for TransportService {
    async fn append_entries(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: VoteRequest<u64> = decode(req)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
