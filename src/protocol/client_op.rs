//! A client's read or write, as a pure state machine over its [`PageTable`].
//!
//! A [`ClientOp`] owns the client side of the protocol's order; the client only
//! waits for its turn on the page, sends the fault the [`OpStep`] names, and feeds
//! the answer back as an [`OpEvent`]. The golden scripts drive the same machine.
//!
//! The order:
//!
//! 1. A valid local copy (read) or write access (write) answers at once, but
//!    only while the client's lease is valid: a client whose lease ran out may
//!    have been evicted, and its copies superseded, without its knowing.
//! 2. Otherwise the op waits for its turn (one fault per page at a time), looks
//!    again (another op may have brought the page meanwhile), records what it
//!    intends (a write's value) and takes a fault.
//! 3. A grant is *confirmed* when the manager's confirmation already installed the
//!    copy and applied the value; otherwise the op installs the pending copy of
//!    the granted epoch itself and, for a write, applies its value.
//! 4. A grant whose copy was superseded before it could be installed (a later
//!    fault moved the page on) costs another round, up to [`MAX_FAULT_ROUNDS`].
//!
//! An *acquire* (the store of a mapped region, see `client::region`) is a write
//! fault with no value of its own: it takes ownership and keeps the bytes the
//! owner sent, so a store to one word of a page never overwrites what another
//! client wrote to the rest of it. It hits locally only with write access.
//!
//! The unknown-outcome rule: a write that fails for a reason a retry might cure
//! (no CM answered in time, no quorum) may still commit, so its value stays
//! intended and a late confirmation applies it; a page it created is never left
//! empty. A definite failure drops the intent.

use super::directory::Grant;
use super::page_table::PageTable;
use super::types::{Epoch, FaultKind, Hit, PageName};
use crate::error::Error;

/// Most faults one operation takes before giving up (each superseded grant costs one).
pub const MAX_FAULT_ROUNDS: usize = 8;

/// What the operation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Read,
    Write(Vec<u8>),
    /// Write access, keeping the current bytes.
    Own,
}

/// A finished operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpDone {
    /// Whether it was served from the local copy.
    pub hit: Hit,
    /// The epoch of the copy it used.
    pub epoch: Epoch,
    /// The bytes read (`None` for a write).
    pub value: Option<Vec<u8>>,
    /// True when the op's write fault created the page.
    pub created: bool,
}

/// What the executor must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpStep {
    /// Wait until no other fault of this client is in flight on the page, then
    /// feed [`OpEvent::Turn`].
    WaitTurn,
    /// Send a fault of this kind (a fresh seq; retries of it reuse that seq).
    Fault(FaultKind),
    /// The operation is over.
    Done(Result<OpDone, Error>),
}

/// The answer to the last step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpEvent {
    /// The op's turn on the page has come.
    Turn,
    /// The fault with request number `seq` was granted.
    Granted {
        /// The grant.
        grant: Grant,
        /// The request it answers.
        seq: u64,
    },
    /// The fault failed.
    Failed(Error),
}

/// One read or write of one page by one client.
#[derive(Debug, Clone)]
pub struct ClientOp {
    page: PageName,
    want: Want,
    rounds: usize,
    lease_valid: bool,
}

impl ClientOp {
    /// A read of `page`.
    pub fn read(page: PageName) -> Self {
        ClientOp { page, want: Want::Read, rounds: 0, lease_valid: false }
    }

    /// A write of `content` to `page` (size already checked).
    pub fn write(page: PageName, content: Vec<u8>) -> Self {
        ClientOp { page, want: Want::Write(content), rounds: 0, lease_valid: false }
    }

    /// An acquire of `page`: write access with the bytes the owner has.
    pub fn acquire(page: PageName) -> Self {
        ClientOp { page, want: Want::Own, rounds: 0, lease_valid: false }
    }

    /// The page the op is on.
    pub fn page(&self) -> &PageName {
        &self.page
    }

    /// The executor sends this op's fault as request `seq`: a write binds its
    /// intended value to that request.
    pub fn sent(&self, table: &mut PageTable, seq: u64) {
        if matches!(self.want, Want::Write(_)) {
            table.bind_intent(&self.page, seq);
        }
    }

    /// True for a write or an acquire (both take write faults).
    pub fn is_write(&self) -> bool {
        matches!(self.want, Want::Write(_) | Want::Own)
    }

    /// The first step: a local hit (only while `lease_valid`), or a wait for the
    /// turn to fault.
    pub fn start(&mut self, table: &mut PageTable, lease_valid: bool) -> OpStep {
        self.lease_valid = lease_valid;
        match self.local(table, Hit::Local) {
            Some(done) => OpStep::Done(Ok(done)),
            None => OpStep::WaitTurn,
        }
    }

    /// Takes the answer to the last step (and whether the client's lease is
    /// valid now) and returns the next one.
    pub fn on(&mut self, table: &mut PageTable, event: OpEvent, lease_valid: bool) -> OpStep {
        self.lease_valid = lease_valid;
        match event {
            OpEvent::Turn => self.round(table),
            OpEvent::Granted { grant, seq } => self.granted(table, grant, seq),
            OpEvent::Failed(err) => self.fail(table, err),
        }
    }

    /// Serves the op from the table when the lease and the access allow.
    fn local(&self, table: &mut PageTable, hit: Hit) -> Option<OpDone> {
        if !self.lease_valid {
            return None;
        }
        match &self.want {
            Want::Read => {
                let (value, epoch) = table.read_at(&self.page)?;
                Some(OpDone { hit, epoch, value: Some(value.to_vec()), created: false })
            }
            Want::Write(content) => {
                let epoch = table.write_at(&self.page, content)?;
                Some(OpDone { hit, epoch, value: None, created: false })
            }
            Want::Own => {
                let (value, epoch) = table.owned(&self.page)?;
                Some(OpDone { hit, epoch, value: Some(value.to_vec()), created: false })
            }
        }
    }

    /// One more fault, unless the page arrived meanwhile or the rounds ran out.
    fn round(&mut self, table: &mut PageTable) -> OpStep {
        if let Some(done) = self.local(table, Hit::Fault) {
            return OpStep::Done(Ok(done));
        }
        if self.rounds >= MAX_FAULT_ROUNDS {
            let what = match self.want {
                Want::Read => "read",
                Want::Write(_) | Want::Own => "write",
            };
            let err = format!("{what} of {}: the copy was superseded {MAX_FAULT_ROUNDS} times", self.page);
            return OpStep::Done(Err(Error::Unavailable(err)));
        }
        self.rounds += 1;
        match &self.want {
            Want::Read => {
                table.intend_read(&self.page);
                OpStep::Fault(FaultKind::Read)
            }
            Want::Write(content) => {
                table.intend_write(&self.page, content);
                OpStep::Fault(FaultKind::Write)
            }
            Want::Own => {
                table.intend_read(&self.page);
                OpStep::Fault(FaultKind::Write)
            }
        }
    }

    fn granted(&mut self, table: &mut PageTable, grant: Grant, seq: u64) -> OpStep {
        let page = &self.page;
        let done = |epoch, value| OpDone { hit: Hit::Fault, epoch, value, created: grant.created };
        let confirmed = table.take_confirmed(page, grant.epoch);
        let installed = match (&self.want, confirmed) {
            (Want::Read | Want::Own, Some(value)) => Ok(Some(done(grant.epoch, Some(value)))),
            (Want::Write(_), Some(_)) => Ok(Some(done(grant.epoch, None))),
            // No confirmation applied it: install from the reply ourselves.
            (Want::Read | Want::Own, None) => {
                table.grant(page, grant.epoch, grant.created, seq).map(|value| Some(done(grant.epoch, Some(value))))
            }
            (Want::Write(content), None) => table.grant(page, grant.epoch, grant.created, seq).map(|_| {
                let epoch = table.write_at(page, content)?;
                table.cancel_intent(page);
                Some(done(epoch, None))
            }),
        };
        match installed {
            Ok(Some(done)) => OpStep::Done(Ok(done)),
            // Access moved on before the value could be applied: fault again.
            Ok(None) => self.round(table),
            Err(err) if err.is_retryable() => self.round(table),
            Err(err) => self.fail(table, err),
        }
    }

    /// The unknown-outcome rule: only a definite failure drops a write's intent
    /// (a read leaves alone the intent an earlier write with an unknown outcome left).
    fn fail(&mut self, table: &mut PageTable, err: Error) -> OpStep {
        if matches!(self.want, Want::Write(_)) && !err.is_retryable() {
            table.cancel_intent(&self.page);
        }
        OpStep::Done(Err(err))
    }
}
