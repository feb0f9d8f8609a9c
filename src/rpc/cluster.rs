//! The `Cluster` service: membership, join probes, hand-over and backups, with
//! its server adapter, its handler trait and its client.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert::{error_from_status, positive, reply};
use super::net::Channels;
use super::pb;
use super::pb::cluster_client::ClusterClient as PbClient;
use crate::config::parse_addr;
use crate::error::Error;
use crate::members::{JoinState, Member, Members};

/// Largest backup a `SaveSnapshot` answer may carry.
pub const MAX_BACKUP_BYTES: usize = 256 * 1024 * 1024;

/// What a CM node does with cluster operations, in domain types.
#[tonic::async_trait]
pub trait ClusterApi: Send + Sync + 'static {
    /// The membership with each member's replication (leader only).
    async fn members(&self) -> Result<Members, Error>;
    /// Adds node `id` at `addr` as a learner; returns at once.
    async fn add_learner(&self, id: u64, addr: String) -> Result<Members, Error>;
    /// Makes learner `id` a voter.
    async fn promote(&self, id: u64) -> Result<Members, Error>;
    /// Removes voter or learner `id` (not the leader itself).
    async fn remove(&self, id: u64) -> Result<Members, Error>;
    /// Hands leadership to the most up-to-date follower; returns the new leader.
    async fn handover(&self) -> Result<u64, Error>;
    /// Whether this node belongs to a cluster.
    async fn join_state(&self) -> Result<JoinState, Error>;
    /// A backup file's bytes, taken linearizably on the leader.
    async fn save_snapshot(&self) -> Result<Vec<u8>, Error>;
}

/// The tonic server for `api`.
pub(super) fn server(api: Arc<dyn ClusterApi>) -> pb::cluster_server::ClusterServer<Adapter> {
    pb::cluster_server::ClusterServer::new(Adapter(api))
        .max_decoding_message_size(super::manager::MAX_MANAGER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_BACKUP_BYTES)
}

/// Converts requests, calls the handler, converts answers.
pub(super) struct Adapter(Arc<dyn ClusterApi>);

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Adapter {
    async fn members(&self, _req: Request<pb::MembersRequest>) -> Result<Response<pb::MembersReply>, Status> {
        reply(self.0.members().await.map(members_reply))
    }

    async fn add_learner(&self, req: Request<pb::AddLearnerRequest>) -> Result<Response<pb::MembersReply>, Status> {
        let req = req.into_inner();
        let added = async {
            let id = positive("node id", req.id)?;
            let addr =
                parse_addr(&req.addr).map_err(|_| Error::Malformed(format!("{:?} is not host:port", req.addr)))?;
            self.0.add_learner(id, addr).await
        };
        reply(added.await.map(members_reply))
    }

    async fn promote(&self, req: Request<pb::MemberRequest>) -> Result<Response<pb::MembersReply>, Status> {
        let promoted = async { self.0.promote(positive("node id", req.into_inner().id)?).await };
        reply(promoted.await.map(members_reply))
    }

    async fn remove(&self, req: Request<pb::MemberRequest>) -> Result<Response<pb::MembersReply>, Status> {
        let removed = async { self.0.remove(positive("node id", req.into_inner().id)?).await };
        reply(removed.await.map(members_reply))
    }

    async fn handover(&self, _req: Request<pb::HandoverRequest>) -> Result<Response<pb::HandoverReply>, Status> {
        reply(self.0.handover().await.map(|leader| pb::HandoverReply { leader }))
    }

    async fn join_state(&self, _req: Request<pb::JoinStateRequest>) -> Result<Response<pb::JoinStateReply>, Status> {
        let state = self.0.join_state().await.map(|s| pb::JoinStateReply {
            id: s.id,
            initialized: s.initialized,
            join_mode: s.join_mode,
            voters: s.voters,
            leader: s.leader.unwrap_or(0),
            in_use: s.in_use,
        });
        reply(state)
    }

    async fn save_snapshot(
        &self,
        _req: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<pb::SaveSnapshotReply>, Status> {
        reply(self.0.save_snapshot().await.map(|data| pb::SaveSnapshotReply { data }))
    }
}

fn members_reply(m: Members) -> pb::MembersReply {
    pb::MembersReply {
        leader: m.leader,
        term: m.term,
        last_log_index: m.last_log_index,
        members: m
            .members
            .into_iter()
            .map(|m| pb::Member {
                id: m.id,
                addr: m.addr,
                voter: m.voter,
                has_matched: m.matched.is_some(),
                matched: m.matched.unwrap_or(0),
            })
            .collect(),
    }
}

pub(super) fn members(r: pb::MembersReply) -> Members {
    Members {
        leader: r.leader,
        term: r.term,
        last_log_index: r.last_log_index,
        members: r
            .members
            .into_iter()
            .map(|m| Member { id: m.id, addr: m.addr, voter: m.voter, matched: m.has_matched.then_some(m.matched) })
            .collect(),
    }
}

/// Calls to the `Cluster` service of any CM node.
#[derive(Clone)]
pub struct ClusterClient {
    channels: Channels,
}

impl ClusterClient {
    /// A client whose calls give up after the channels' timeout (or `timeout`
    /// for the calls that take one).
    pub fn new(channels: Channels) -> Self {
        ClusterClient { channels }
    }

    fn stub(&self, addr: &str) -> Result<PbClient<super::security::AuthChannel>, Error> {
        Ok(PbClient::new(self.channels.get(addr)?).max_decoding_message_size(MAX_BACKUP_BYTES))
    }

    fn failed(&self, status: &Status, addr: &str) -> Error {
        self.channels.note(addr, status);
        error_from_status(status, &format!("CM {addr}"))
    }

    /// The membership, from the leader at `addr`.
    pub async fn members(&self, addr: &str) -> Result<Members, Error> {
        let reply = self.stub(addr)?.members(pb::MembersRequest {}).await;
        Ok(members(reply.map_err(|s| self.failed(&s, addr))?.into_inner()))
    }

    /// Asks the leader at `addr` to add node `id` at `node_addr` as a learner.
    pub async fn add_learner(&self, addr: &str, id: u64, node_addr: &str) -> Result<Members, Error> {
        let req = pb::AddLearnerRequest { id, addr: node_addr.to_string() };
        let reply = self.stub(addr)?.add_learner(with_timeout(req, MEMBERSHIP_CALL_TIMEOUT)).await;
        Ok(members(reply.map_err(|s| self.failed(&s, addr))?.into_inner()))
    }

    /// Asks the leader at `addr` to make learner `id` a voter.
    pub async fn promote(&self, addr: &str, id: u64) -> Result<Members, Error> {
        let reply = self.stub(addr)?.promote(with_timeout(pb::MemberRequest { id }, MEMBERSHIP_CALL_TIMEOUT)).await;
        Ok(members(reply.map_err(|s| self.failed(&s, addr))?.into_inner()))
    }

    /// Asks the leader at `addr` to remove member `id`.
    pub async fn remove(&self, addr: &str, id: u64) -> Result<Members, Error> {
        let reply = self.stub(addr)?.remove(with_timeout(pb::MemberRequest { id }, MEMBERSHIP_CALL_TIMEOUT)).await;
        Ok(members(reply.map_err(|s| self.failed(&s, addr))?.into_inner()))
    }

    /// Asks the leader at `addr` to hand over; returns the new leader's id.
    pub async fn handover(&self, addr: &str) -> Result<u64, Error> {
        let reply = self.stub(addr)?.handover(with_timeout(pb::HandoverRequest {}, MEMBERSHIP_CALL_TIMEOUT)).await;
        Ok(reply.map_err(|s| self.failed(&s, addr))?.into_inner().leader)
    }

    /// The join state of the node at `addr`.
    pub async fn join_state(&self, addr: &str) -> Result<JoinState, Error> {
        let reply = self.stub(addr)?.join_state(pb::JoinStateRequest {}).await;
        let r = reply.map_err(|s| self.failed(&s, addr))?.into_inner();
        let leader = (r.leader != 0).then_some(r.leader);
        Ok(JoinState {
            id: r.id,
            initialized: r.initialized,
            join_mode: r.join_mode,
            voters: r.voters,
            leader,
            in_use: r.in_use,
        })
    }

    /// A backup from the leader at `addr`.
    pub async fn save_snapshot(&self, addr: &str) -> Result<Vec<u8>, Error> {
        let req = with_timeout(pb::SaveSnapshotRequest {}, MEMBERSHIP_CALL_TIMEOUT);
        let reply = self.stub(addr)?.save_snapshot(req).await;
        Ok(reply.map_err(|s| self.failed(&s, addr))?.into_inner().data)
    }
}

/// Deadline of a membership change, a hand-over or a backup (each waits for
/// commits, a membership change for two).
pub const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(15);

fn with_timeout<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    req
}
