//! The gRPC edge: generated types, conversions to the domain, and connections.
//!
//! Protobuf types never enter the protocol core. This module is the one place
//! that turns them into domain values (validating names, epochs and sizes) and
//! turns an [`Error`](crate::Error) into a `tonic::Status` and back: the status
//! carries the error itself (JSON in its details), so a client sees exactly the
//! error the manager raised, leader hint included.

mod convert;
mod net;
mod raft_transport;

/// Code generated from `proto/ivy.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("ivy");
}

pub use convert::{error_from_status, fault_kind, mode, page_name, status_from_error};
pub use net::{channel, serve, Channels, Server, RPC_CONNECT_TIMEOUT, SERVER_STOP_GRACE};
pub use raft_transport::{NetworkFactory, PeerNetwork, TransportService};
