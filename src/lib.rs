//! ivy-raft: IVY distributed shared memory with a Raft-replicated central manager.
//!
//! Layers, each depending only on the ones above it:
//!
//! - [`protocol`]: the IVY core (directory, fault plans, client page table), no IO.
//! - [`storage`]: the Raft log and the directory state machine in sled.
//! - [`replication`]: openraft wiring: type config, network, batching proposer.
//! - [`rpc`]: the generated gRPC types and the one place they are converted.
//! - [`cm`] and [`client`]: the manager node and the client node.
//! - [`cluster`] and [`demo`]: an in-process cluster and the demo built on it.

pub mod error;
pub mod protocol;

pub use error::{Error, Result};
pub mod bench;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod cm;
pub mod config;
pub mod demo;
mod op_counter;
pub mod replication;
pub mod rpc;
pub mod storage;
