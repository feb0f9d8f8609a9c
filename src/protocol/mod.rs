//! The IVY protocol core: pure state transitions, no IO.
//!
//! - [`Directory`] is the central manager's replicated state (owner, copy set and
//!   epoch per page; the client registry; client sessions for exactly-once). It is
//!   what replication applies, identically on every CM node.
//! - [`Directory::plan_fault`] says what a manager must do to serve a fault, and
//!   [`FaultRun`] is the manager's side of one fault as a state machine: it owns
//!   the order of the steps (invalidate, forward, commit, release, confirm) and
//!   the replans; the leader only performs each step's IO.
//! - [`PageTable`] is one client's pages and the client side of every message, and
//!   [`ClientOp`] is one read or write as a state machine over it: local hit, wait
//!   for the turn, intend, fault, install or apply, fault again when superseded.
//!
//! The data-driven scripts under `src/protocol/testdata` step the very same
//! machines, with direct calls where the running system makes RPCs, so a change
//! of order in the running code changes what the scripts print.

mod client_op;
mod directory;
mod fault_run;
mod page_table;
mod plan;
#[cfg(test)]
mod proptests;
mod random_ops;
mod releases;
#[cfg(test)]
mod script;
mod types;

pub use client_op::{ClientOp, OpDone, OpEvent, OpStep, MAX_FAULT_ROUNDS};
pub use directory::{
    Applied, Caps, ClientInfo, DirCmd, Directory, Grant, PageEntry, PageState, Session, SharedDirectory,
};
pub use fault_run::{FaultEvent, FaultRequest, FaultRun, FaultStep, MAX_REPLANS, REPLAN_BACKOFF};
pub use page_table::{LocalPage, PageTable, Transfer};
pub use plan::{FaultPlan, Forward, Plan};
pub use random_ops::{RandomOp, RandomOps};
pub use releases::{Release, Releases, RELEASES_PER_MESSAGE};
pub use types::{check_size, Access, ClientId, Epoch, FaultKind, Hit, PageName, DEFAULT_MAX_PAGE_BYTES, MAX_PAGE_NAME};
