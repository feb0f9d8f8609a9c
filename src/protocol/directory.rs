//! The central manager's directory: the replicated state machine.
//!
//! Every CM node applies the same [`DirCmd`]s in log order and reaches the same
//! [`Directory`]. `apply` is deterministic (BTreeMaps, no clocks, no randomness):
//! the manager does the IO of a fault (invalidate, forward) first, then commits one
//! command that checks the page is still at the epoch it saw and records the new
//! owner and copy set. The session table answers a retried request (same client id
//! and seq) with its first result, so nothing is applied twice.
//!
//! Removing a client (it left, or its lease ran out and the leader evicted it)
//! takes it out of every copy set and hands each page it owned to the copy holder
//! with the smallest id (promotion), at the same epoch: once a page has a copy,
//! its owner holds it read-only, so every copy at that epoch has the same bytes and
//! no transfer is needed. A page with no copy is *lost*: reads fail naming the
//! client and the epoch, and the next write creates the page afresh.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::types::{ClientId, Epoch, FaultKind, PageName};
use crate::error::Error;

/// The directory shared between its writer (replication) and its readers (the
/// leader's request server); never hold its lock across an `.await`.
pub type SharedDirectory = Arc<RwLock<Directory>>;

/// Who holds a page's authoritative bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageState {
    /// The owner holds them.
    Owned {
        /// The owning client.
        owner: ClientId,
    },
    /// They left with this client, which was removed holding the only copy.
    Lost {
        /// The client the page was lost with.
        with: ClientId,
    },
}

/// What the directory knows of one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageEntry {
    /// Who holds the authoritative bytes.
    pub state: PageState,
    /// Clients holding read-only copies (never the owner; empty when lost).
    pub copy_set: BTreeSet<ClientId>,
    /// Grows by one on every ownership change.
    pub epoch: Epoch,
    /// The owner got the page by creating it (no bytes were sent): a forward
    /// tells it so, and an owner that never saw its confirmation starts it empty.
    pub created: bool,
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Address of the client's PageHolder service.
    pub addr: String,
    /// The registration nonce, so a retried registration returns the same id.
    pub nonce: u64,
}

/// The last granted request of a client (Raft dissertation §6.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The request's sequence number.
    pub seq: u64,
    /// The page it faulted on.
    pub page: PageName,
    /// Its kind.
    pub kind: FaultKind,
    /// The answer it was given.
    pub grant: Grant,
}

/// A granted fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The epoch the requester holds its copy at.
    pub epoch: Epoch,
    /// True when the write fault created the page.
    pub created: bool,
}

/// One command in the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirCmd {
    /// Add a client to the registry.
    Register { addr: String, nonce: u64 },
    /// Remove a client that left: it leaves every copy set; each page it owned
    /// passes to a copy holder, or is lost when it had none.
    Unregister { client: ClientId },
    /// Remove a client whose lease ran out (or that an operator evicted), with
    /// the same promotion as `Unregister`; later requests under its id are refused.
    Evict { client: ClientId },
    /// Commit a fault whose transfer is done; `seen` is the epoch the manager
    /// acted on (`None` for a write fault that creates the page).
    Fault { client: ClientId, seq: u64, page: PageName, kind: FaultKind, seen: Option<Epoch> },
}

/// What applying one [`DirCmd`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The client's id.
    Registered { client: ClientId },
    /// The client was removed (or was not there): pages promoted to a copy
    /// holder, and pages lost.
    Removed { promoted: usize, lost: usize },
    /// The fault is committed.
    Granted(Grant),
    /// The command changed nothing.
    Rejected(Error),
}

/// The replicated directory: pages, clients and sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    pages: BTreeMap<PageName, PageEntry>,
    clients: BTreeMap<ClientId, ClientInfo>,
    sessions: BTreeMap<ClientId, Session>,
    next_client: ClientId,
    /// Clients removed by eviction, so their later requests get a clear answer.
    evicted: BTreeSet<ClientId>,
}

impl PageEntry {
    /// The owner, unless the page is lost.
    pub fn owner(&self) -> Option<ClientId> {
        match self.state {
            PageState::Owned { owner } => Some(owner),
            PageState::Lost { .. } => None,
        }
    }
}

impl Directory {
    /// Applies one command; the same commands in the same order give the same state.
    pub fn apply(&mut self, cmd: &DirCmd) -> Applied {
        match cmd {
            DirCmd::Register { addr, nonce } => self.register(addr, *nonce),
            DirCmd::Unregister { client } => self.remove_client(*client),
            DirCmd::Evict { client } => {
                self.evicted.insert(*client);
                self.remove_client(*client)
            }
            DirCmd::Fault { client, seq, page, kind, seen } => self.fault(*client, *seq, page, *kind, *seen),
        }
    }

    /// The entry of `page`, if it exists.
    pub fn page(&self, page: &PageName) -> Option<&PageEntry> {
        self.pages.get(page)
    }

    /// All pages, in name order.
    pub fn pages(&self) -> impl Iterator<Item = (&PageName, &PageEntry)> {
        self.pages.iter()
    }

    /// The registered client `id`, if any.
    pub fn client(&self, id: ClientId) -> Option<&ClientInfo> {
        self.clients.get(&id)
    }

    /// The registered clients, by id.
    pub fn clients(&self) -> impl Iterator<Item = (&ClientId, &ClientInfo)> {
        self.clients.iter()
    }

    /// Number of registered clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// What the session table says of request `seq` of `client` (a fault of `kind`
    /// on `page`): its first grant when it was granted, `StaleRequest` when the
    /// client has moved past it, a refusal when the seq was granted to another
    /// request, nothing when it is new.
    pub fn session_answer(&self, client: ClientId, seq: u64, page: &PageName, kind: FaultKind) -> Option<Applied> {
        let session = self.sessions.get(&client)?;
        if seq < session.seq {
            return Some(Applied::Rejected(Error::StaleRequest { client, seq, last: session.seq }));
        }
        if seq > session.seq {
            return None;
        }
        if session.page != *page || session.kind != kind {
            let what = format!("request {seq} of client {client} was granted for another page or kind");
            return Some(Applied::Rejected(Error::Malformed(what)));
        }
        Some(Applied::Granted(session.grant))
    }

    fn register(&mut self, addr: &str, nonce: u64) -> Applied {
        if let Some((id, _)) = self.clients.iter().find(|(_, c)| c.nonce == nonce) {
            return Applied::Registered { client: *id };
        }
        self.next_client += 1;
        let client = self.next_client;
        self.clients.insert(client, ClientInfo { addr: addr.to_string(), nonce });
        Applied::Registered { client }
    }

    /// True when `client` was evicted (its id will not come back).
    pub fn was_evicted(&self, client: ClientId) -> bool {
        self.evicted.contains(&client)
    }

    /// The error for a request from an unregistered client.
    pub fn unknown_client(&self, client: ClientId) -> Error {
        if self.was_evicted(client) {
            return Error::Evicted { client };
        }
        Error::UnknownClient { client }
    }

    /// Takes `client` out of the directory: out of every copy set, and each page
    /// it owned promoted to a copy holder or lost.
    fn remove_client(&mut self, client: ClientId) -> Applied {
        self.clients.remove(&client);
        self.sessions.remove(&client);
        let (mut promoted, mut lost) = (0, 0);
        for entry in self.pages.values_mut() {
            entry.copy_set.remove(&client);
            if entry.owner() != Some(client) {
                continue;
            }
            match entry.copy_set.pop_first() {
                Some(holder) => {
                    entry.state = PageState::Owned { owner: holder };
                    entry.created = false;
                    promoted += 1;
                }
                None => {
                    entry.state = PageState::Lost { with: client };
                    lost += 1;
                }
            }
        }
        Applied::Removed { promoted, lost }
    }

    fn fault(&mut self, client: ClientId, seq: u64, page: &PageName, kind: FaultKind, seen: Option<Epoch>) -> Applied {
        if let Some(answer) = self.session_answer(client, seq, page, kind) {
            return answer;
        }
        if !self.clients.contains_key(&client) {
            return Applied::Rejected(self.unknown_client(client));
        }
        let granted = match kind {
            FaultKind::Read => self.grant_read(client, page, seen),
            FaultKind::Write => self.grant_write(client, page, seen),
        };
        match granted {
            Ok(grant) => {
                self.sessions.insert(client, Session { seq, grant, page: page.clone(), kind });
                Applied::Granted(grant)
            }
            Err(err) => Applied::Rejected(err),
        }
    }

    fn grant_read(&mut self, client: ClientId, page: &PageName, seen: Option<Epoch>) -> Result<Grant, Error> {
        let entry = self.pages.get_mut(page).ok_or_else(|| not_found(page))?;
        if Some(entry.epoch) != seen {
            return Err(Error::EpochMoved { page: page.to_string(), epoch: entry.epoch });
        }
        let owner = match entry.state {
            PageState::Owned { owner } => owner,
            PageState::Lost { with } => return Err(lost(page, with, entry.epoch)),
        };
        if owner != client {
            entry.copy_set.insert(client);
        }
        Ok(Grant { epoch: entry.epoch, created: false })
    }

    fn grant_write(&mut self, client: ClientId, page: &PageName, seen: Option<Epoch>) -> Result<Grant, Error> {
        let Some(entry) = self.pages.get_mut(page) else {
            if seen.is_some() {
                return Err(not_found(page));
            }
            let state = PageState::Owned { owner: client };
            let entry = PageEntry { state, copy_set: BTreeSet::new(), epoch: 1, created: true };
            self.pages.insert(page.clone(), entry);
            return Ok(Grant { epoch: 1, created: true });
        };
        if Some(entry.epoch) != seen {
            return Err(Error::EpochMoved { page: page.to_string(), epoch: entry.epoch });
        }
        // A page lost with its owner starts afresh.
        let created = matches!(entry.state, PageState::Lost { .. });
        entry.state = PageState::Owned { owner: client };
        entry.copy_set.clear();
        entry.epoch += 1;
        entry.created = created;
        Ok(Grant { epoch: entry.epoch, created })
    }
}

fn lost(page: &PageName, with: ClientId, epoch: Epoch) -> Error {
    Error::PageLost { page: page.to_string(), client: with, epoch }
}

fn not_found(page: &PageName) -> Error {
    Error::PageNotFound { page: page.to_string() }
}
