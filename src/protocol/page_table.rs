//! A client's page table: its copies, their access and epoch, and pending transfers.
//!
//! The table is pure: each method is one step of the IVY protocol on the client
//! side. A page sent by an owner is held as *pending* until the fault that asked
//! for it is granted for that epoch (commit point 4); an invalidation supersedes
//! older pending copies too (a read copy's bytes are kept with no access, as an
//! installed copy's are), so a grant that arrives after a later invalidation cannot
//! install a stale copy (the client faults again instead). A copy is accepted only
//! for an epoch newer than the one the client holds, so a delayed duplicate of a
//! transfer can never overwrite newer bytes. An invalidated copy keeps its bytes,
//! with no access, until a committed later epoch releases it.
//!
//! The fault's reply is its confirmation, and the manager takes the next fault on
//! the page as soon as the commit lands, so the next fault's request may reach the
//! requester before its own reply does. A write op records its value as an
//! *intent* before it faults. A forward naming the epoch of a pending write copy
//! proves that the fault committed (the manager plans only from the committed
//! directory), so the owner *confirms* it then: it installs the copy and applies
//! the intent before it hands the page on; the op, when its reply comes, finds the
//! value applied. An invalidation that comes first supersedes an older pending
//! copy and marks its epoch, so a late reply can never install a copy that a newer fault
//! superseded with access (the op faults again, or gets its bytes without access).
//! An owner that hands its page away keeps the bytes with no access until a later
//! epoch invalidates them (commit point 3), so a redone fault can be served; it
//! marks the epoch the page moves to, as an invalidation does, so no older copy
//! that reaches it afterwards gets access, with or without the release.
//! A copy holder can be promoted to owner when its owner is evicted, even one
//! whose read reply never came: a forward naming a pending copy's epoch confirms
//! it too, and an invalidated pending read copy keeps its bytes, so it can serve.

use std::collections::BTreeMap;

use serde::Serialize;

use super::types::{Access, ClientId, Epoch, FaultKind, PageName};
use crate::error::{Error, Result};

/// A client's copy of one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalPage {
    /// What the client may do with the copy without a fault.
    pub access: Access,
    /// The epoch the copy belongs to.
    pub epoch: Epoch,
    /// The bytes; kept with `Access::Invalid` by an owner that handed the page away.
    pub content: Option<Vec<u8>>,
}

/// Bytes received for a fault that is not yet granted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    /// The seq of the fault the copy was sent for.
    seq: u64,
    epoch: Epoch,
    access: Access,
    content: Vec<u8>,
}

/// A write op's value, waiting for its fault to be confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Intent {
    value: Vec<u8>,
    /// The write fault it rides on, once sent: only a confirmation of that
    /// request applies it (not one of an older fault whose op gave up).
    seq: Option<u64>,
}

/// What an owner must send after a forward request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The epoch the requester will hold the copy at.
    pub epoch: Epoch,
    /// The access the requester will get.
    pub access: Access,
    /// The page bytes.
    pub content: Vec<u8>,
}

/// One client's pages.
#[derive(Debug, Clone, Default)]
pub struct PageTable {
    me: ClientId,
    pages: BTreeMap<PageName, LocalPage>,
    pending: BTreeMap<PageName, Pending>,
    intents: BTreeMap<PageName, Intent>,
    confirmed: BTreeMap<PageName, (Epoch, Vec<u8>)>,
    /// Per page, the latest epoch a committed fault released our copies below:
    /// no copy older than it may be installed again (a late reply or
    /// confirmation of a fault that another has since superseded).
    released: BTreeMap<PageName, Epoch>,
    /// Per page, the newest epoch an invalidation (or release) named: a copy of
    /// an older epoch installed afterwards gets no access. Its transfer may
    /// arrive after the invalidation (a fault begun under a deposed leader), and
    /// the directory no longer lists us as its holder, so nothing would
    /// invalidate it again; the op that faulted for it still gets its bytes.
    invalid_below: BTreeMap<PageName, Epoch>,
    /// Testing only: invalidations and releases leave pending copies, floors
    /// and marks alone, and a write forward leaves no mark, so a late reply
    /// installs a superseded copy with access
    /// (a broken build the chaos checker must catch).
    unsafe_late_install: bool,
}

impl PageTable {
    /// An empty table for client `me`.
    pub fn new(me: ClientId) -> Self {
        PageTable { me, ..Default::default() }
    }

    /// Testing only: a late reply may install a copy that an invalidation or a
    /// release already superseded (a broken build the chaos checker must catch).
    pub fn set_unsafe_late_install(&mut self, on: bool) {
        self.unsafe_late_install = on;
    }

    /// The client's id changed (it registered again).
    pub fn set_me(&mut self, me: ClientId) {
        self.me = me;
    }

    /// The local copy of `page`, when access allows a read without a fault.
    pub fn read(&self, page: &PageName) -> Option<&[u8]> {
        self.read_at(page).map(|(v, _)| v)
    }

    /// The local copy of `page` and its epoch, when access allows a read.
    pub fn read_at(&self, page: &PageName) -> Option<(&[u8], Epoch)> {
        let local = self.pages.get(page)?;
        match local.access {
            Access::Invalid => None,
            Access::Read | Access::Write => local.content.as_deref().map(|v| (v, local.epoch)),
        }
    }

    /// The local copy of `page` and its epoch, when the client owns it with write access.
    pub fn owned(&self, page: &PageName) -> Option<(&[u8], Epoch)> {
        let local = self.pages.get(page).filter(|l| l.access == Access::Write)?;
        local.content.as_deref().map(|v| (v, local.epoch))
    }

    /// Writes `content` locally when the client owns the page with write access.
    pub fn write(&mut self, page: &PageName, content: &[u8]) -> bool {
        self.write_at(page, content).is_some()
    }

    /// Writes locally like [`PageTable::write`] and returns the copy's epoch.
    pub fn write_at(&mut self, page: &PageName, content: &[u8]) -> Option<Epoch> {
        match self.pages.get_mut(page) {
            Some(local) if local.access == Access::Write => {
                local.content = Some(content.to_vec());
                Some(local.epoch)
            }
            _ => None,
        }
    }

    /// The local copies, in page order.
    pub fn pages(&self) -> impl Iterator<Item = (&PageName, &LocalPage)> {
        self.pages.iter()
    }

    /// The manager invalidates copies older than `epoch`: they lose their access
    /// but keep their bytes until released (a holder may be promoted to owner when
    /// the owner is removed, and an invalidation may come from a fault that never
    /// commits).
    pub fn invalidate(&mut self, page: &PageName, epoch: Epoch) {
        if !self.unsafe_late_install {
            self.mark_invalid_below(page, epoch);
            self.keep_pending_older(page, epoch);
        }
        if let Some(local) = self.pages.get_mut(page).filter(|l| l.epoch < epoch) {
            local.access = Access::Invalid;
        }
    }

    /// A fault at `epoch` is committed: copies older than it, kept or not, go.
    pub fn release(&mut self, page: &PageName, epoch: Epoch) {
        if !self.unsafe_late_install {
            let floor = self.released.entry(page.clone()).or_default();
            *floor = (*floor).max(epoch);
            self.mark_invalid_below(page, epoch);
            self.take_pending_older(page, epoch);
        }
        if self.pages.get(page).is_some_and(|l| l.epoch < epoch) {
            self.pages.remove(page);
        }
    }

    /// Forgets every copy, kept bytes, pending transfer and intent (the client
    /// was evicted and starts again under a new id).
    pub fn clear(&mut self) {
        let (me, unsafe_late_install) = (self.me, self.unsafe_late_install);
        *self = PageTable { me, unsafe_late_install, ..Default::default() };
    }

    /// An invalidation supersedes a pending copy older than `epoch`: no grant may
    /// install it with access any more. A read copy's bytes are kept, with no
    /// access, like an installed copy's: the directory may have committed the
    /// read it was sent for, and the invalidating fault may never commit; if our
    /// owner is then evicted, we are promoted at the copy's epoch and must serve
    /// it. A write copy goes: its bytes are the page before our write, which is
    /// not the page of its epoch.
    fn keep_pending_older(&mut self, page: &PageName, epoch: Epoch) {
        let Some(pending) = self.take_pending_older(page, epoch) else { return };
        let is_read = pending.access == Access::Read;
        if is_read && self.pages.get(page).is_none_or(|l| l.epoch < pending.epoch) {
            let kept = LocalPage { access: Access::Invalid, epoch: pending.epoch, content: Some(pending.content) };
            self.pages.insert(page.clone(), kept);
        }
    }

    /// Takes the pending copy of `page` out when it is older than `epoch`.
    fn take_pending_older(&mut self, page: &PageName, epoch: Epoch) -> Option<Pending> {
        if self.pending.get(page).is_some_and(|p| p.epoch < epoch) {
            return self.pending.remove(page);
        }
        None
    }

    /// The manager asks this client, owner of `page` at `epoch`, to hand a copy to
    /// another client (or itself); returns what to send.
    /// `created` says the directory gave us the page by creating it: if we never
    /// saw that confirmation, we start the page now, empty (with our own pending
    /// write applied, if the creating write's value is still intended).
    pub fn forward(&mut self, page: &PageName, epoch: Epoch, kind: FaultKind, created: bool) -> Result<Transfer> {
        self.confirm_pending_at(page, epoch);
        if created && self.pages.get(page).is_none_or(|l| l.epoch < epoch) {
            // The creating request's seq is not known here: the write intent,
            // sent or not, is the creating write's (the page must not start
            // empty under a value no write wrote).
            let seq = self.intents.get(page).and_then(|i| i.seq).unwrap_or(0);
            self.bind_intent(page, seq);
            let _ = self.confirm(page, epoch, true, seq);
        }
        let me = self.me;
        let not_held = || Error::NotHeld { client: me, page: page.to_string(), epoch };
        let local = self.pages.get_mut(page).ok_or_else(not_held)?;
        if local.epoch != epoch {
            return Err(not_held());
        }
        let content = local.content.clone().ok_or_else(not_held)?;
        let (access, sent_epoch) = match kind {
            FaultKind::Read => {
                // Never raise access: an owner that handed its page away keeps it
                // invalid, or it could read locally after a new owner's write.
                local.access = local.access.min(Access::Read);
                (Access::Read, epoch)
            }
            FaultKind::Write => {
                local.access = Access::Invalid;
                (Access::Write, epoch + 1)
            }
        };
        if kind == FaultKind::Write && !self.unsafe_late_install {
            // The page moves on to `epoch + 1`: a copy of an older epoch that
            // arrives later (a deposed leader's forward to ourselves, a
            // delayed transfer) gets no access, as an invalidated holder's
            // would, whether or not the release ever comes.
            self.mark_invalid_below(page, epoch + 1);
        }
        Ok(Transfer { epoch: sent_epoch, access, content })
    }

    /// An owner sent `content` for a fault of ours; it stays pending until granted.
    /// Returns false when the copy is stale and was dropped.
    /// `seq` is the request the owner was forwarded for: only the copy sent for
    /// the request being granted is ever installed, so a transfer left over from
    /// an older request (a deposed leader's, a delayed one) cannot be.
    pub fn receive(&mut self, page: &PageName, epoch: Epoch, access: Access, content: Vec<u8>, seq: u64) -> bool {
        let local = self.pages.get(page).map(|l| (l.epoch, l.access));
        let older =
            self.pending.get(page).is_some_and(|p| (seq, epoch) < (p.seq, p.epoch)) || self.released_past(page, epoch);
        // A copy of the epoch already held is accepted only by a holder with no
        // access (an owner reading back the page it kept after a handoff).
        let stale = match local {
            Some((e, a)) => epoch < e || (epoch == e && a != Access::Invalid),
            None => false,
        };
        if stale || older {
            return false;
        }
        self.pending.insert(page.clone(), Pending { seq, epoch, access, content });
        true
    }

    /// True when bytes sent for a fault of ours on `page` wait for its grant.
    pub fn has_pending(&self, page: &PageName) -> bool {
        self.pending.contains_key(page)
    }

    /// The manager granted our fault on `page` at `epoch`: install the pending copy
    /// (or create the page) and return the bytes the fault was for.
    pub fn grant(&mut self, page: &PageName, epoch: Epoch, created: bool, seq: u64) -> Result<Vec<u8>> {
        // A later committed fault released this epoch's copies: installing one now
        // would hand us access the directory has since given to another client.
        // A pending copy stays: it may be for a newer fault of ours.
        if self.released_past(page, epoch) {
            return Err(self.lost(page, epoch));
        }
        if created && self.pages.get(page).is_none_or(|l| l.epoch < epoch) {
            let local =
                LocalPage { access: self.access_at(page, epoch, Access::Write), epoch, content: Some(Vec::new()) };
            self.pages.insert(page.clone(), local);
            self.pending.remove(page);
            return Ok(Vec::new());
        }
        if let Some(local) = self.pages.get(page) {
            // Already installed: a forward for this epoch promoted it first.
            if local.epoch == epoch && local.access >= Access::Read {
                return local.content.clone().ok_or_else(|| self.lost(page, epoch));
            }
        }
        let pending = match self.pending.remove(page) {
            Some(p) if p.epoch == epoch && p.seq == seq => p,
            Some(p) => {
                self.pending.insert(page.clone(), p);
                return Err(self.lost(page, epoch));
            }
            None => return Err(self.lost(page, epoch)),
        };
        let content = pending.content.clone();
        self.install(page, pending);
        Ok(content)
    }

    /// A write op is about to fault: its value waits to be applied by the confirmation.
    pub fn intend_write(&mut self, page: &PageName, content: &[u8]) {
        self.intents.insert(page.clone(), Intent { value: content.to_vec(), seq: None });
        self.confirmed.remove(page);
    }

    /// The write fault carrying the intent on `page` is sent as request `seq`:
    /// only a confirmation of that request applies the value.
    pub fn bind_intent(&mut self, page: &PageName, seq: u64) {
        if let Some(intent) = self.intents.get_mut(page) {
            intent.seq = Some(seq);
        }
    }

    /// A read op is about to fault: forget an old confirmation.
    pub fn intend_read(&mut self, page: &PageName) {
        // A write intent of an earlier op with an unknown outcome stays: only a
        // write grant applies it.
        self.confirmed.remove(page);
    }

    /// The op gave up: a late confirmation must not apply its value.
    pub fn cancel_intent(&mut self, page: &PageName) {
        self.intents.remove(page);
        self.confirmed.remove(page);
    }

    /// Our fault `seq` on `page` is confirmed at `epoch`: install the copy, apply
    /// the write intent bound to that request, and keep the resulting bytes for
    /// the waiting op. An intent of another request (a newer op's, or one not
    /// sent yet) stays: applying it here would apply a write at an epoch granted
    /// to an older fault, and again at its own.
    pub fn confirm(&mut self, page: &PageName, epoch: Epoch, created: bool, seq: u64) -> Result<()> {
        let mut content = self.grant(page, epoch, created, seq)?;
        if let Some(intent) = self.intents.remove(page) {
            if intent.seq == Some(seq) && self.write(page, &intent.value) {
                content = intent.value;
            } else {
                self.intents.insert(page.clone(), intent);
            }
        }
        self.confirmed.insert(page.clone(), (epoch, content));
        Ok(())
    }

    /// What the confirmation of our fault at `epoch` left: the bytes read, or for a
    /// write op, `Some` only when its value was applied.
    pub fn take_confirmed(&mut self, page: &PageName, epoch: Epoch) -> Option<Vec<u8>> {
        if self.intents.contains_key(page) || self.confirmed.get(page).is_none_or(|(e, _)| *e != epoch) {
            return None;
        }
        self.confirmed.remove(page).map(|(_, v)| v)
    }

    /// True when a committed fault released copies of `page` newer than `epoch`.
    fn released_past(&self, page: &PageName, epoch: Epoch) -> bool {
        self.released.get(page).is_some_and(|floor| epoch < *floor)
    }

    fn lost(&self, page: &PageName, epoch: Epoch) -> Error {
        Error::TransferLost { page: page.to_string(), epoch }
    }

    /// A forward for `epoch` proves the directory committed our ownership at that
    /// epoch, so a pending copy of that epoch is ours: confirm it (install it and
    /// apply a write intent bound to it) before the page is handed on. The
    /// directory names us owner at `epoch` in two ways only: a write fault of ours
    /// granted at `epoch` (a pending write copy), or a promotion, which picks a
    /// holder from the committed copy set, where only a committed read grant of
    /// ours at `epoch` puts us (a pending read copy whose reply never came: the op
    /// gave up, or the leader died after the commit). Every copy of one epoch has
    /// the same bytes, so the pending copy is the page whichever of our requests
    /// committed.
    fn confirm_pending_at(&mut self, page: &PageName, epoch: Epoch) {
        let seq = match self.pending.get(page) {
            Some(p) if p.epoch == epoch => p.seq,
            _ => return,
        };
        // Cannot fail: a release past `epoch` would have dropped the pending copy.
        let _ = self.confirm(page, epoch, false, seq);
    }

    fn install(&mut self, page: &PageName, pending: Pending) {
        let access = self.access_at(page, pending.epoch, pending.access);
        let local = LocalPage { access, epoch: pending.epoch, content: Some(pending.content) };
        self.pages.insert(page.clone(), local);
    }

    /// `access`, or none when an invalidation named a newer epoch than `epoch`.
    fn access_at(&self, page: &PageName, epoch: Epoch, access: Access) -> Access {
        if self.invalid_below.get(page).is_some_and(|mark| epoch < *mark) {
            return Access::Invalid;
        }
        access
    }

    fn mark_invalid_below(&mut self, page: &PageName, epoch: Epoch) {
        let mark = self.invalid_below.entry(page.clone()).or_default();
        *mark = (*mark).max(epoch);
    }
}
