//! ivy-raft: IVY distributed shared memory with a Raft-replicated central manager.
//!
//! Rooms, each depending only on the ones listed before it:
//!
//! - [`protocol`]: the IVY core, no IO: the directory, fault plans, a client's
//!   page table, and the two state machines that order a fault's steps
//!   ([`protocol::FaultRun`] on the manager, [`protocol::ClientOp`] on a client).
//! - [`rpc`]: the gRPC edge: the generated code and the one place it is converted
//!   to and from domain types; connections and servers.
//! - [`raft`]: the directory replicated through openraft; the log in a file of
//!   its own, synced before anything counts, snapshots in sled.
//! - [`heartbeat`]: the baseline: the original primary/backup replication.
//! - [`cm`] and [`client`]: the manager node and the client node, executors of
//!   the protocol's state machines.
//!
//! [`error`], [`config`] and [`status`] are the shared vocabulary: the error
//! type, typed settings, and what a node says about itself; [`metrics`] names
//! every Prometheus metric and serves them.

pub mod client;
pub mod cm;
pub mod config;
pub mod error;
pub mod heartbeat;
pub mod members;
pub mod metrics;
pub mod protocol;
pub mod raft;
pub mod rpc;
pub mod status;

pub use error::{Error, Result};
