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
//!
//! The directory also holds its [`Caps`]: how many clients and pages it admits.
//! They are replicated state, set by a `SetCaps` command the leader commits from
//! its flags, so every node refuses exactly the same registrations and page
//! creations whatever its own flags say, and a refused command changes nothing.

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

/// The last granted request of a client on one page (Raft dissertation §6.3,
/// kept per page because a client runs faults on different pages at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The request's sequence number.
    pub seq: u64,
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

/// How many clients and pages the directory admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Most registered clients (`--max-clients`).
    pub max_clients: u64,
    /// Most pages, lost ones included (`--max-pages`).
    pub max_pages: u64,
}

impl Caps {
    /// No cap at all: the directory a script or a fresh store starts with.
    pub const UNLIMITED: Caps = Caps { max_clients: u64::MAX, max_pages: u64::MAX };
}

impl Default for Caps {
    fn default() -> Self {
        Caps::UNLIMITED
    }
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
    /// Set the caps later registrations and page creations are checked against.
    SetCaps { caps: Caps },
    /// Replace an empty directory with a backup's (`ivy snapshot restore`); a
    /// directory that holds anything already is left as it is.
    Restore { directory: Box<Directory> },
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
    /// The caps are set.
    CapsSet,
    /// The backup's directory replaced the empty one (false: the directory held
    /// something already, or the backup broke an invariant; nothing changed).
    Restored(bool),
}

/// The replicated directory: pages, clients and sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    pages: BTreeMap<PageName, PageEntry>,
    clients: BTreeMap<ClientId, ClientInfo>,
    sessions: BTreeMap<(ClientId, PageName), Session>,
    next_client: ClientId,
    /// Clients removed by eviction, so their later requests get a clear answer.
    evicted: BTreeSet<ClientId>,
    /// What the directory admits.
    caps: Caps,
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
                // Only a registered client is marked: an id not handed out yet
                // must not be born evicted.
                if self.clients.contains_key(client) {
                    self.evicted.insert(*client);
                }
                self.remove_client(*client)
            }
            DirCmd::Fault { client, seq, page, kind, seen } => self.fault(*client, *seq, page, *kind, *seen),
            DirCmd::SetCaps { caps } => {
                self.caps = *caps;
                Applied::CapsSet
            }
            DirCmd::Restore { directory } => self.restore(directory),
        }
    }

    /// Takes `backup`'s pages, clients and sessions if this directory has none
    /// (its caps stay: the leader commits its own).
    fn restore(&mut self, backup: &Directory) -> Applied {
        let empty = self.pages.is_empty() && self.clients.is_empty() && self.sessions.is_empty();
        if !empty || backup.check().is_err() {
            return Applied::Restored(false);
        }
        let caps = self.caps;
        *self = backup.clone();
        self.caps = caps;
        Applied::Restored(true)
    }

    /// The caps registrations and page creations are checked against.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Number of pages, lost ones included.
    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// Fails with `TooManyClients` when registering `nonce` would add a client
    /// beyond the cap (a retried registration adds none).
    pub fn admits_client(&self, nonce: u64) -> Result<(), Error> {
        let known = self.clients.values().any(|c| c.nonce == nonce);
        if !known && self.clients.len() as u64 >= self.caps.max_clients {
            return Err(Error::TooManyClients { max: self.caps.max_clients });
        }
        Ok(())
    }

    /// Fails with `TooManyPages` when a write fault on `page` would create a
    /// page beyond the cap (a page that exists, even lost, adds none).
    pub fn admits_page(&self, page: &PageName) -> Result<(), Error> {
        if !self.pages.contains_key(page) && self.pages.len() as u64 >= self.caps.max_pages {
            return Err(Error::TooManyPages { page: page.to_string(), max: self.caps.max_pages });
        }
        Ok(())
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

    /// True when any client or page was ever committed and is still here (the
    /// directory is not the empty one of a cluster just formed).
    pub fn holds_data(&self) -> bool {
        !self.pages.is_empty() || !self.clients.is_empty()
    }

    /// Number of registered clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// What the session table says of request `seq` of `client` (a fault of `kind`
    /// on `page`): its first grant when it was granted, `StaleRequest` when the
    /// client has moved past it on that page, a refusal when the seq was granted
    /// to another request, nothing when it is new.
    ///
    /// Sessions are per (client, page): a client runs at most one fault per page
    /// at a time and numbers its requests in the order it starts them, so on one
    /// page a later seq always means the earlier request is over; across pages
    /// its faults commit in any order.
    pub fn session_answer(&self, client: ClientId, seq: u64, page: &PageName, kind: FaultKind) -> Option<Applied> {
        let session = self.sessions.get(&(client, page.clone()))?;
        if seq < session.seq {
            return Some(Applied::Rejected(Error::StaleRequest { client, seq, last: session.seq }));
        }
        if seq > session.seq {
            return None;
        }
        if session.kind != kind {
            let what = format!("request {seq} of client {client} was granted for another kind of fault");
            return Some(Applied::Rejected(Error::Malformed(what)));
        }
        Some(Applied::Granted(session.grant))
    }

    fn register(&mut self, addr: &str, nonce: u64) -> Applied {
        if let Some((id, _)) = self.clients.iter().find(|(_, c)| c.nonce == nonce) {
            return Applied::Registered { client: *id };
        }
        if let Err(err) = self.admits_client(nonce) {
            return Applied::Rejected(err);
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
        self.sessions.retain(|(c, _), _| *c != client);
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
                self.sessions.insert((client, page.clone()), Session { seq, grant, kind });
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
            self.admits_page(page)?;
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

impl Directory {
    /// Checks the invariants every directory built by `apply` keeps; a decoded
    /// snapshot or pulse that breaks one is corrupt. Says which one broke.
    pub fn check(&self) -> Result<(), String> {
        for (name, entry) in &self.pages {
            if entry.epoch == 0 {
                return Err(format!("page {name} has epoch 0"));
            }
            match entry.state {
                PageState::Owned { owner } if entry.copy_set.contains(&owner) => {
                    return Err(format!("page {name}: owner {owner} is in its own copy set"));
                }
                PageState::Owned { owner } if !self.clients.contains_key(&owner) => {
                    return Err(format!("page {name}: owner {owner} is not registered"));
                }
                PageState::Lost { .. } if !entry.copy_set.is_empty() => {
                    return Err(format!("page {name} is lost but has copies"));
                }
                _ => {}
            }
            if let Some(c) = entry.copy_set.iter().find(|c| !self.clients.contains_key(c)) {
                return Err(format!("page {name}: copy holder {c} is not registered"));
            }
        }
        self.check_clients()
    }

    fn check_clients(&self) -> Result<(), String> {
        if let Some((c, _)) = self.sessions.keys().find(|(c, _)| !self.clients.contains_key(c)) {
            return Err(format!("client {c} has a session but is not registered"));
        }
        if let Some(c) = self.clients.keys().find(|c| **c == 0 || **c > self.next_client) {
            return Err(format!("client id {c} was never handed out (next is {})", self.next_client + 1));
        }
        if let Some(c) = self.evicted.iter().find(|c| self.clients.contains_key(c)) {
            return Err(format!("client {c} is both evicted and registered"));
        }
        Ok(())
    }
}

fn lost(page: &PageName, with: ClientId, epoch: Epoch) -> Error {
    Error::PageLost { page: page.to_string(), client: with, epoch }
}

fn not_found(page: &PageName) -> Error {
    Error::PageNotFound { page: page.to_string() }
}
