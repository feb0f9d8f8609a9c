//! The tools around ivy-raft, kept out of the core library: the `ivy` binary's
//! demo, chaos harness and benchmark, and the in-process cluster the tests and
//! benches start.
//!
//! - [`certs`]: `ivy certs init`: a CA, node and client certificates, a token.
//! - [`cluster`]: CM nodes in this process on ephemeral loopback ports.
//! - [`demo`]: the original experiment on an in-process cluster.
//! - [`chaos`]: real processes, injected faults, a history and its checker.
//! - [`bench`]: Raft against the heartbeat baseline on CM processes.
//! - [`lazyfs`]: a FUSE filesystem that keeps writes in memory until they are
//!   synced and drops them on a simulated power cut.
//! - [`secure`]: the security flags every subcommand shares, and `ivy certs`.
//! - [`flood`]: a bounded flood of registrations and page creations (caps, RSS).
//! - [`workload`]: the workload shape the demo and the bench share.
//! - [`netns`]: a network of Linux namespaces with silent partitions, for tests
//!   that cut real links.
//! - [`svm`]: `ivy vm`, a parallel matrix multiply across processes over one
//!   mapped region (shared virtual memory), and the region shell the tests drive.
//! - [`logging`]: `--log-format`, `--log-level` and `RUST_LOG` for every subcommand.
//! - [`probe`]: `ivy health`, a gRPC health check with probe exit codes.
//! - [`multihost`]: CM nodes and clients in containers on a private Docker
//!   network, faults between hosts, the chaos checker on the history.

pub mod bench;
pub mod certs;
pub mod chaos;
pub mod cluster;
pub mod demo;
pub mod flood;
pub mod lazyfs;
pub mod logging;
pub mod multihost;
pub mod netns;
mod op_counter;
pub mod ops;
pub mod probe;
pub mod secure;
pub mod svm;
pub mod workload;
