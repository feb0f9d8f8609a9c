//! The gRPC edge: the generated code of `proto/ivy.proto`, and the one place it
//! is converted to and from domain types.
//!
//! Nothing outside this folder names a protobuf type. Each service has two
//! halves here:
//!
//! - a *server adapter* that validates and converts each request, calls a handler
//!   trait that speaks domain types ([`ManagerApi`], [`HolderApi`],
//!   [`HeartbeatApi`], [`RaftApi`]), and converts the answer back;
//! - a *client* with one method per RPC taking and returning domain types
//!   ([`ManagerClient`], [`HolderClient`], [`HeartbeatClient`], [`RaftClient`]).
//!
//! An [`Error`](crate::Error) crosses the wire inside the `tonic::Status` (JSON in
//! its details), so a client sees exactly the error the manager raised, leader
//! hint included. [`net`] keeps one HTTP/2 connection per peer (the calling side
//! is our own `link`, not tonic's channel: a call leaves in one write) and runs servers;
//! [`health`] carries the gRPC health statuses and reflection every CM serves.

mod accept;
mod cluster;
mod convert;
pub mod health;
mod heartbeat;
mod holder;
mod link;
mod manager;
pub mod net;
#[cfg(test)]
mod proptests;
mod raft;
mod security;
pub mod socket;
mod tls;

/// Code generated from `proto/ivy.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub(crate) mod pb {
    tonic::include_proto!("ivy");
}

pub use cluster::{ClusterApi, ClusterClient, MAX_BACKUP_BYTES, MEMBERSHIP_CALL_TIMEOUT};
pub use convert::{error_from_status, status_from_error};
pub use health::{Health, HealthState, MANAGER_SERVICE};
pub use heartbeat::{HeartbeatApi, HeartbeatClient, Pulse};
pub use holder::{holder_router, HolderApi, HolderClient, HolderRef};
pub use manager::{ManagerApi, ManagerClient, Removal, FAULT_REPLY_MARGIN};
pub use net::{Channels, Server};
pub use security::{
    Callers, Security, TlsFiles, CLIENT_ROLE_NAME, MAX_CONCURRENT_PER_CONNECTION, NODE_ROLE_NAME,
    SERVER_REQUEST_TIMEOUT, TLS_HANDSHAKE_TIMEOUT,
};
/// The attribute the handler traits are implemented with (async fns in a dyn-safe trait).
pub use tonic::async_trait;

pub use raft::{RaftApi, RaftCall, RaftCallError, RaftClient};

/// The cluster operations service (membership, join probe, hand-over, backup).
pub const CLUSTER_SERVICE: &str = "ivy.Cluster";

/// The service a CM node serves to its peers, besides `Manager`.
pub enum PeerService {
    /// Raft mode: openraft's RPCs between CM nodes, and the cluster operations.
    Raft(std::sync::Arc<dyn RaftApi>, std::sync::Arc<dyn ClusterApi>),
    /// Heartbeat mode: the pulse between primary and backup.
    Heartbeat(std::sync::Arc<dyn HeartbeatApi>),
}

/// Serves a CM node's services on `listener` until the returned server stops:
/// `Manager`, `Cluster` (Raft mode) and reflection to every member, the peer
/// service to CM nodes only,
/// and `grpc.health.v1.Health` with `health`'s statuses to anyone who may
/// connect (with TLS: a certificate of the CA; no token, so probes need none).
pub fn serve_cm(
    manager: std::sync::Arc<dyn ManagerApi>,
    peers: PeerService,
    health: &Health,
    listener: tokio::net::TcpListener,
    security: &Security,
) -> Result<Server, crate::Error> {
    use tonic::service::interceptor::InterceptedService;
    let (members, nodes) = (security.guard(Callers::Members), security.guard(Callers::Nodes));
    let members_guard = members.clone();
    let peer_services: &[&str] = match &peers {
        PeerService::Raft(..) => &[CLUSTER_SERVICE, "ivy.RaftTransport"],
        PeerService::Heartbeat(_) => &["ivy.Heartbeat"],
    };
    let mut listed = vec![MANAGER_SERVICE, health::HEALTH_SERVICE, health::REFLECTION_SERVICE];
    listed.extend_from_slice(peer_services);
    let (reflection_v1, reflection_v1alpha) = health::reflection(&listed)?;
    let health = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health.reporter()),
    );
    let router = security
        .server()?
        .add_service(InterceptedService::new(manager::server(manager), members.clone()))
        .add_service(health)
        .add_service(InterceptedService::new(reflection_v1, members.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, members));
    let router = match peers {
        PeerService::Raft(raft, cluster) => router
            .add_service(InterceptedService::new(raft::server(raft), nodes))
            .add_service(InterceptedService::new(cluster::server(cluster), members_guard)),
        PeerService::Heartbeat(hb) => router.add_service(InterceptedService::new(heartbeat::server(hb), nodes)),
    };
    Ok(Server::spawn(router, listener))
}
