//! How the manager serves a fault: the steps, computed from the directory alone.
//!
//! `Directory::plan_fault` turns a request into a [`Plan`]: either the cached grant
//! of a retried request, or the invalidations and the forward to run (IO done by
//! the caller, in this order), then the command to commit, then the holders to
//! release (their kept bytes may go) once the commit names a new owner. Every step carries the page epoch and
//! is idempotent, so a new leader may redo a plan an old leader left unfinished.

use super::directory::{Applied, DirCmd, Directory, Grant, PageState};
use super::types::{ClientId, Epoch, FaultKind, PageName};
use crate::error::{Error, Result};

/// Ask the owner to send the page to the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The owner the directory names.
    pub owner: ClientId,
    /// The epoch the owner holds the page at.
    pub epoch: Epoch,
    /// What the requester asked for.
    pub kind: FaultKind,
    /// The request's seq, carried to the transfer so the requester installs the
    /// copy sent for this request and no other.
    pub seq: u64,
    /// The owner created the page (see [`PageEntry::created`](super::PageEntry)).
    pub created: bool,
}

/// The steps of one fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPlan {
    /// Copy holders to invalidate first, all with `invalidate_epoch`.
    pub invalidate: Vec<ClientId>,
    /// Copies older than this epoch are invalid.
    pub invalidate_epoch: Epoch,
    /// The transfer, absent when the write fault creates the page.
    pub forward: Option<Forward>,
    /// The command that commits the fault.
    pub commit: DirCmd,
    /// Holders whose kept bytes may go once the commit is applied: the old
    /// owner and the invalidated copy holders of a write fault.
    pub release: Vec<ClientId>,
}

/// What the manager does for a fault request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The request was granted before: answer again, do nothing.
    Cached(Grant),
    /// Run these steps.
    Run(FaultPlan),
}

impl Directory {
    /// Plans fault `seq` of `client` on `page`; an error changes nothing.
    pub fn plan_fault(&self, client: ClientId, seq: u64, page: &PageName, kind: FaultKind) -> Result<Plan> {
        match self.session_answer(client, seq, page, kind) {
            Some(Applied::Granted(grant)) => return Ok(Plan::Cached(grant)),
            Some(Applied::Rejected(err)) => return Err(err),
            _ => {}
        }
        if self.client(client).is_none() {
            return Err(self.unknown_client(client));
        }
        let commit = |seen| DirCmd::Fault { client, seq, page: page.clone(), kind, seen };
        let Some(entry) = self.page(page) else {
            return match kind {
                FaultKind::Read => Err(Error::PageNotFound { page: page.to_string() }),
                FaultKind::Write => Ok(Plan::Run(FaultPlan {
                    invalidate: Vec::new(),
                    invalidate_epoch: 0,
                    forward: None,
                    commit: commit(None),
                    release: Vec::new(),
                })),
            };
        };
        let owner = match entry.state {
            PageState::Owned { owner } => owner,
            // The bytes left with a removed client: a read is an error; a write
            // starts the page afresh, as the first write would.
            PageState::Lost { with } if kind == FaultKind::Read => {
                return Err(Error::PageLost { page: page.to_string(), client: with, epoch: entry.epoch });
            }
            PageState::Lost { .. } => {
                return Ok(Plan::Run(FaultPlan {
                    invalidate: Vec::new(),
                    invalidate_epoch: entry.epoch + 1,
                    forward: None,
                    commit: commit(Some(entry.epoch)),
                    release: Vec::new(),
                }))
            }
        };
        let forward = Some(Forward { owner, epoch: entry.epoch, kind, seq, created: entry.created });
        let plan = match kind {
            FaultKind::Read => FaultPlan {
                invalidate: Vec::new(),
                invalidate_epoch: 0,
                forward,
                commit: commit(Some(entry.epoch)),
                release: Vec::new(),
            },
            FaultKind::Write => {
                let invalidate: Vec<ClientId> =
                    entry.copy_set.iter().copied().filter(|c| *c != client && *c != owner).collect();
                let mut release = invalidate.clone();
                if owner != client {
                    release.push(owner);
                }
                FaultPlan {
                    invalidate,
                    invalidate_epoch: entry.epoch + 1,
                    forward,
                    commit: commit(Some(entry.epoch)),
                    release,
                }
            }
        };
        Ok(Plan::Run(plan))
    }
}
