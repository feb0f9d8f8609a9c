//! The `Manager` gRPC service: validates requests at the edge and hands them to
//! the fault server.

use std::net::SocketAddr;
use std::sync::Arc;

use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::faults::Faults;
use crate::error::Error;
use crate::protocol::{DirCmd, FaultKind, Outcome};
use crate::rpc::{self, pb};

/// The client-facing service of one CM node.
pub struct ManagerService {
    faults: Arc<Faults>,
}

impl ManagerService {
    /// Serves clients with `faults`.
    pub fn new(faults: Arc<Faults>) -> Self {
        ManagerService { faults }
    }

    async fn fault(&self, req: Request<pb::FaultRequest>, kind: FaultKind) -> Result<Response<pb::FaultReply>, Status> {
        let req = req.into_inner();
        let page = rpc::page_name(&req.page)?;
        if req.client == 0 || req.seq == 0 {
            return Err(malformed("client id and seq must be positive"));
        }
        let grant = self.faults.fault(req.client, req.seq, &page, kind).await;
        let grant = grant.map_err(|e| rpc::status_from_error(&e))?;
        Ok(Response::new(pb::FaultReply { epoch: grant.epoch, created: grant.created }))
    }
}

fn malformed(what: &str) -> Status {
    rpc::status_from_error(&Error::Malformed(what.to_string()))
}

/// A role name for `ivy status`.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl pb::manager_server::Manager for ManagerService {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let req = req.into_inner();
        if req.addr.parse::<SocketAddr>().is_err() {
            return Err(malformed(&format!("client address {:?} is not host:port", req.addr)));
        }
        let cmd = DirCmd::Register { addr: req.addr, nonce: req.nonce };
        match self.faults.commit(cmd).await.map_err(|e| rpc::status_from_error(&e))? {
            Outcome::Registered { client } => Ok(Response::new(pb::RegisterReply { client })),
            other => Err(Status::internal(format!("registration gave {other:?}"))),
        }
    }

    async fn unregister(&self, req: Request<pb::UnregisterRequest>) -> Result<Response<pb::UnregisterReply>, Status> {
        let cmd = DirCmd::Unregister { client: req.into_inner().client };
        self.faults.commit(cmd).await.map_err(|e| rpc::status_from_error(&e))?;
        Ok(Response::new(pb::UnregisterReply {}))
    }

    async fn read_fault(&self, req: Request<pb::FaultRequest>) -> Result<Response<pb::FaultReply>, Status> {
        self.fault(req, FaultKind::Read).await
    }

    async fn write_fault(&self, req: Request<pb::FaultRequest>) -> Result<Response<pb::FaultReply>, Status> {
        self.fault(req, FaultKind::Write).await
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let st = self.faults.replica().status();
        let (leader, leader_addr) = st.leader.unwrap_or_default();
        let (pages, clients) = self.faults.read(|d| (d.pages().count() as u64, d.client_count() as u64));
        Ok(Response::new(pb::StatusReply {
            id: st.id,
            role: st.role,
            term: st.term,
            last_log_index: st.last_log_index,
            applied_index: st.applied_index,
            leader,
            leader_addr,
            pages,
            clients,
            mode: st.mode.to_string(),
            serving: st.serving,
            last_sync_ms: st.last_sync.map_or(-1, |d| d.as_millis() as i64),
        }))
    }
}
