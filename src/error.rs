//! The library's error type: one variant per way a request can fail.
//!
//! Every variant names the thing that failed (the page, the client, the node) so a
//! user reading the message knows what to fix. `is_retryable` tells the client
//! which errors a retry with the same (client id, seq) may cure.

use serde::{Deserialize, Serialize};

use crate::protocol::{ClientId, Epoch};

/// A failed IVY request, from bad input to a lost quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// The page name is not 1-64 characters of `[A-Za-z0-9_.-]`.
    #[error("bad page name {name:?}: a page name is 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadPageName { name: String },
    /// The content is larger than `max_page_bytes`.
    #[error("content for page {page} is {len} bytes; the limit is {max} bytes")]
    TooLarge { page: String, len: usize, max: usize },
    /// A read of a page that was never written.
    #[error("page {page} does not exist")]
    PageNotFound { page: String },
    /// The client id is not in the directory's client registry.
    #[error("client {client} is not registered with the central manager")]
    UnknownClient { client: ClientId },
    /// The page's only copy left with a client that was removed (it left, or
    /// its lease ran out); the next write creates the page afresh.
    #[error("page {page} was lost with client {client} at epoch {epoch}")]
    PageLost { page: String, client: ClientId, epoch: Epoch },
    /// The client was evicted (its lease ran out, or an operator evicted it);
    /// it must register again as a new client.
    #[error("client {client} was evicted from the directory; it must register again")]
    Evicted { client: ClientId },
    /// A client (owner or copy holder) did not answer the manager.
    #[error("client {client} at {addr} did not answer: {reason}{}", eviction_hint(.evict_in_ms))]
    ClientUnreachable { client: ClientId, addr: String, reason: String, evict_in_ms: Option<u64> },
    /// This CM node is not the leader; `leader` names the one it knows of.
    #[error("CM node is not the leader{}", leader_hint(.leader))]
    NotLeader { leader: Option<(u64, String)> },
    /// The CM cluster could not commit: no majority of nodes answered in time.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// A request older than the client's last applied one.
    #[error("request {seq} of client {client} is older than its last applied request {last}")]
    StaleRequest { client: ClientId, seq: u64, last: u64 },
    /// The page changed epoch between the manager's read and its commit.
    #[error("page {page} moved to epoch {epoch} during the fault")]
    EpochMoved { page: String, epoch: Epoch },
    /// A holder was asked for a page copy it does not have.
    #[error("client {client} does not hold page {page} at epoch {epoch}")]
    NotHeld { client: ClientId, page: String, epoch: Epoch },
    /// A page transfer was lost before its fault was acknowledged.
    #[error("page {page}: the copy for epoch {epoch} did not arrive")]
    TransferLost { page: String, epoch: Epoch },
    /// A node or service did not answer, or answered that it cannot serve now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A request was not well formed.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Local storage failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// Another process or node holds the data dir (its store is locked).
    #[error("data dir {path} is in use by another process or CM node; stop it first or choose another --data-dir")]
    DataDirInUse { path: String },
    /// The caller's credentials (token, or node certificate) were missing or wrong.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A registration beyond `--max-clients`; nothing was registered.
    #[error("the directory already holds {max} clients, the cap set by --max-clients; a client must leave or be evicted first")]
    TooManyClients { max: u64 },
    /// A page creation beyond `--max-pages`; nothing was created.
    #[error("cannot create page {page}: the directory already holds {max} pages, the cap set by --max-pages")]
    TooManyPages { page: String, max: u64 },
    /// A fault on a mapped region could not be served (no quorum past the
    /// deadline, the page lost): the region's memory no longer follows the cluster.
    #[error("region {region} is poisoned: a fault on page {page} could not be served ({cause}); its memory no longer follows the cluster, so unmap it")]
    RegionPoisoned { region: String, page: String, cause: String },
    /// Shared virtual memory cannot be set up on this machine (userfaultfd missing or refused).
    #[error("shared virtual memory unavailable: {0}")]
    SvmUnavailable(String),
    /// A setting (flag, environment variable, peer list) is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Something that should not happen did: a bug, or the process is shutting down.
    #[error("internal error: {0}")]
    Internal(String),
}

fn eviction_hint(evict_in_ms: &Option<u64>) -> String {
    match evict_in_ms {
        Some(0) => "; its lease has run out and it is being evicted".to_string(),
        Some(ms) => format!("; it will be evicted in {:.1} s unless it renews its lease", *ms as f64 / 1000.0),
        None => String::new(),
    }
}

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("; the leader is node {id} at {addr}"),
        None => "; no leader is known yet".to_string(),
    }
}

impl Error {
    /// True when the same request may succeed if retried (same client id and seq).
    /// `NotHeld` is not: the manager already redoes the forward a few times, so
    /// what reaches a client is a holder out of step with the directory.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::NoQuorum(_)
                | Error::EpochMoved { .. }
                | Error::TransferLost { .. }
                | Error::Unavailable(_)
                | Error::ClientUnreachable { .. }
        )
    }

    /// The variant's name in snake case: the `kind` label of `ivy_errors_total`
    /// and of failed faults in `ivy_fault_duration_seconds`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadPageName { .. } => "bad_page_name",
            Error::TooLarge { .. } => "too_large",
            Error::PageNotFound { .. } => "page_not_found",
            Error::UnknownClient { .. } => "unknown_client",
            Error::PageLost { .. } => "page_lost",
            Error::Evicted { .. } => "evicted",
            Error::ClientUnreachable { .. } => "client_unreachable",
            Error::NotLeader { .. } => "not_leader",
            Error::NoQuorum(_) => "no_quorum",
            Error::StaleRequest { .. } => "stale_request",
            Error::EpochMoved { .. } => "epoch_moved",
            Error::NotHeld { .. } => "not_held",
            Error::TransferLost { .. } => "transfer_lost",
            Error::Unavailable(_) => "unavailable",
            Error::Malformed(_) => "malformed",
            Error::Storage(_) => "storage",
            Error::DataDirInUse { .. } => "data_dir_in_use",
            Error::InvalidConfig(_) => "invalid_config",
            Error::Internal(_) => "internal",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::TooManyClients { .. } => "too_many_clients",
            Error::TooManyPages { .. } => "too_many_pages",
            Error::RegionPoisoned { .. } => "region_poisoned",
            Error::SvmUnavailable(_) => "svm_unavailable",
        }
    }
}

/// Shorthand for results with the library's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
