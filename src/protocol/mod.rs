//! The IVY protocol core: pure state transitions, no IO.
//!
//! - [`Directory`] is the central manager's replicated state (owner, copy set and
//!   epoch per page; the client registry; client sessions for exactly-once). It is
//!   what the Raft state machine applies.
//! - [`Directory::plan_fault`] says what a manager must do to serve a fault.
//! - [`PageTable`] is one client's pages and the client side of every message.
//!
//! The transport (tonic), replication (openraft) and storage (sled) layers drive
//! these types; the data-driven scripts under `src/protocol/testdata` run whole
//! fault sequences through them with no network and no disk.

mod directory;
mod page_table;
mod plan;
#[cfg(test)]
mod script;
mod types;

pub use directory::{ClientInfo, DirCmd, Directory, Grant, Outcome, PageEntry, Session};
pub use page_table::{LocalPage, PageTable, Transfer};
pub use plan::{FaultPlan, Forward, Plan};
pub use types::{check_size, Access, ClientId, Epoch, FaultKind, PageName, DEFAULT_MAX_PAGE_BYTES, MAX_PAGE_NAME};
