//! One mapped region: its memory, what each page of it holds, and the steps
//! that keep the memory in line with the client's page table.
//!
//! The state lock (`installed`) is taken before the page table's lock, never
//! after, by the holder service, the fault thread and the lease guard alike; so
//! an invalidation that lands while a fault is being served either comes first
//! (the fault thread finds no valid copy and faults again) or after (it zaps
//! what the fault installed). Nobody waits on the network under either lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::uffd::{self, Uffd, PAGE};
use super::RegionStats;
use crate::client::Shared;
use crate::error::Error;
use crate::protocol::{PageName, PageTable};

/// What the region's memory holds of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Installed {
    /// Not present: the next access is a missing fault.
    Missing,
    /// The table's bytes, write-protected: a store is a WP fault.
    ReadOnly,
    /// The owner's bytes, writable: the memory is newer than the table.
    Writable,
    /// Given to a faulting thread after the region was poisoned; follows nothing.
    Detached,
}

/// How long a page just put in memory for a faulting thread stays there before
/// a manager's forward or invalidation may take it: room for the faulting
/// load or store to run once (the window of Mirage; "Holding a granted page"
/// in docs/DESIGN.md).
pub(super) const HOLD: Duration = Duration::from_millis(2);

/// The longest a manager's forward or invalidation waits for a hold, far
/// inside the manager's deadline for the call.
pub(super) const HOLD_MAX: Duration = Duration::from_millis(20);

/// Whether the fault thread is serving a fault on a page, and until when a page
/// it put in memory is held for it.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    faulting: bool,
    until: Option<Instant>,
}

/// Counters of one region.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub read_faults: AtomicU64,
    pub write_faults: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub zaps: AtomicU64,
}

/// A region's memory and its state, shared by the [`super::Region`], its fault
/// thread and the client's holder service.
pub(crate) struct Mapping {
    pub(super) name: String,
    pub(super) base: usize,
    pub(super) pages: usize,
    pub(super) uffd: Uffd,
    installed: Mutex<Vec<Installed>>,
    holds: Mutex<Vec<Hold>>,
    /// Woken when a fault ends or a hold starts.
    held: Notify,
    poison: Mutex<Option<Error>>,
    pub(super) counters: Counters,
    /// Testing only: an invalidation leaves the stale page mapped (a broken build).
    keep_stale: bool,
}

/// The state lock of a region.
pub(super) type State<'a> = MutexGuard<'a, Vec<Installed>>;

impl Mapping {
    /// A mapping of `pages` pages at `base`, registered with `uffd`, all missing.
    pub(super) fn new(name: &str, base: usize, pages: usize, uffd: Uffd, keep_stale: bool) -> Self {
        let installed = Mutex::new(vec![Installed::Missing; pages]);
        let (holds, held) = (Mutex::new(vec![Hold::default(); pages]), Notify::new());
        let (poison, counters) = (Mutex::new(None), Counters::default());
        Mapping { name: name.to_string(), base, pages, uffd, installed, holds, held, poison, counters, keep_stale }
    }

    /// The index of `page` when it is one of this region's (`<name>.<index>`).
    pub(super) fn index(&self, page: &PageName) -> Option<usize> {
        let rest = page.as_str().strip_prefix(self.name.as_str())?.strip_prefix('.')?;
        let i: usize = rest.parse().ok()?;
        (i < self.pages && i.to_string() == rest).then_some(i)
    }

    /// The DSM page behind index `i`.
    pub(super) fn page(&self, i: usize) -> PageName {
        PageName::new(&format!("{}.{i}", self.name)).expect("region names are checked at map")
    }

    /// The address of page `i`.
    pub(super) fn addr(&self, i: usize) -> usize {
        self.base + i * PAGE
    }

    pub(super) fn state(&self) -> State<'_> {
        self.installed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn holds(&self) -> MutexGuard<'_, Vec<Hold>> {
        self.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fault thread starts (true) or ends (false) serving a fault on page `i`.
    pub(super) fn faulting(&self, i: usize, on: bool) {
        self.holds()[i].faulting = on;
        if !on {
            self.held.notify_waiters();
        }
    }

    /// Page `i` was just put in memory for the faulting thread: hold it there.
    fn hold(&self, i: usize) {
        self.holds()[i].until = Some(Instant::now() + HOLD);
        self.held.notify_waiters();
    }

    /// Waits, before a manager's forward or invalidation of page `i` is served,
    /// while the fault thread's fault on the page has its copy on the way (the
    /// table holds a pending copy: the fault reached its owner's transfer, so
    /// its grant follows its commit) and while a page it put in memory is held
    /// for it. Never longer than [`HOLD_MAX`]: a hold only delays the answer, as
    /// a slow network would.
    pub(super) async fn wait_hold(&self, shared: &Shared, i: usize) {
        let give_up = Instant::now() + HOLD_MAX;
        let page = self.page(i);
        loop {
            let woken = self.held.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let hold = self.holds()[i];
            let until = if hold.faulting && shared.table().has_pending(&page) {
                give_up
            } else {
                match hold.until {
                    Some(t) if t > Instant::now() => t.min(give_up),
                    _ => return,
                }
            };
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            if Instant::now() >= give_up {
                return;
            }
        }
    }

    /// Runs `f` on the table for page `i` with the memory brought in line before
    /// (stores stopped, their bytes in the table) and after (zapped when the
    /// table no longer holds a valid copy).
    pub(super) fn around<T>(&self, shared: &Shared, i: usize, f: impl FnOnce(&mut PageTable) -> T) -> T {
        let mut st = self.state();
        let mut table = shared.table();
        self.sync_out(&mut st, i, &mut table);
        let out = f(&mut table);
        self.follow(&mut st, i, &table);
        out
    }

    /// Write-protects a writable page and copies its bytes into the table.
    fn sync_out(&self, st: &mut State<'_>, i: usize, table: &mut PageTable) {
        if st[i] != Installed::Writable {
            return;
        }
        if let Err(e) = self.uffd.write_protect(self.addr(i), true) {
            tracing::error!(region = self.name.as_str(), page = i, "cannot write-protect: {e}");
        }
        let mut bytes = vec![0u8; PAGE];
        // SAFETY: page `i` is present (Writable) and write-protected now, so no
        // store changes it during the copy; the source is inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.addr(i) as *const u8, bytes.as_mut_ptr(), PAGE) };
        let page = self.page(i);
        if !table.write(&page, &bytes) {
            tracing::error!(region = self.name.as_str(), page = i, "a writable page the table does not own");
        }
        self.counters.bytes_out.fetch_add(PAGE as u64, Ordering::Relaxed);
        st[i] = Installed::ReadOnly;
    }

    /// Zaps page `i` when the table no longer holds a valid copy of it.
    fn follow(&self, st: &mut State<'_>, i: usize, table: &PageTable) {
        let present = matches!(st[i], Installed::ReadOnly | Installed::Writable);
        if present && table.read(&self.page(i)).is_none() && !self.keep_stale {
            self.zap(st, i);
        }
    }

    fn zap(&self, st: &mut State<'_>, i: usize) {
        if let Err(e) = uffd::zap(self.addr(i)) {
            tracing::error!(region = self.name.as_str(), page = i, "cannot zap: {e}");
        }
        self.counters.zaps.fetch_add(1, Ordering::Relaxed);
        st[i] = Installed::Missing;
    }

    /// The lease ran out or the client was evicted: every page faults again
    /// (a writable page's bytes are kept in the table first).
    pub(super) fn revoke_all(&self, shared: &Shared) {
        let mut st = self.state();
        let mut table = shared.table();
        for i in 0..self.pages {
            if matches!(st[i], Installed::ReadOnly | Installed::Writable) {
                self.sync_out(&mut st, i, &mut table);
                self.zap(&mut st, i);
            }
        }
    }

    /// Installs the table's valid copy of page `i` (writable when the table owns
    /// it with write access). False: the table holds no valid copy (invalidated
    /// since the fault was served), so the caller faults again.
    pub(super) fn install(&self, st: &mut State<'_>, i: usize, table: &PageTable) -> std::io::Result<bool> {
        let page = self.page(i);
        let (bytes, writable) = match (table.owned(&page), table.read(&page)) {
            (Some((b, _)), _) => (b, true),
            (None, Some(b)) => (b, false),
            (None, None) => return Ok(false),
        };
        let mut buf = Box::new([0u8; PAGE]);
        let n = bytes.len().min(PAGE);
        buf[..n].copy_from_slice(&bytes[..n]);
        self.uffd.copy(self.addr(i), &buf, !writable)?;
        st[i] = if writable { Installed::Writable } else { Installed::ReadOnly };
        self.hold(i);
        self.counters.bytes_in.fetch_add(PAGE as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// After an acquire: removes write protection from page `i` when the table
    /// owns it with the bytes the memory shows (else zaps it to be faulted in
    /// afresh). False: the table does not own the page (it moved on meanwhile).
    pub(super) fn unprotect(&self, st: &mut State<'_>, i: usize, table: &PageTable) -> std::io::Result<bool> {
        let Some((bytes, _)) = table.owned(&self.page(i)) else { return Ok(false) };
        // SAFETY: page `i` is present (ReadOnly, the caller checked) and
        // write-protected, so it cannot change while it is compared.
        let shown = unsafe { std::slice::from_raw_parts(self.addr(i) as *const u8, PAGE) };
        let same =
            bytes.len() <= PAGE && shown[..bytes.len()] == *bytes && shown[bytes.len()..].iter().all(|b| *b == 0);
        if same {
            self.uffd.write_protect(self.addr(i), false)?;
            st[i] = Installed::Writable;
            self.hold(i);
        } else {
            self.zap(st, i);
            self.uffd.wake(self.addr(i));
        }
        Ok(true)
    }

    /// Gives a thread whose fault cannot be served some memory (a zero page, or
    /// the page made writable) so it goes on; the region is poisoned by then.
    pub(super) fn detach(&self, i: usize, missing: bool) {
        let mut st = self.state();
        let done = if missing {
            self.uffd.copy(self.addr(i), &[0u8; PAGE], false).map(|_| ())
        } else {
            self.uffd.write_protect(self.addr(i), false)
        };
        if let Err(e) = done {
            tracing::error!(region = self.name.as_str(), page = i, "cannot release a faulting thread: {e}");
        }
        st[i] = Installed::Detached;
    }

    /// Marks the region poisoned by a fault on page `i` that failed with `err`.
    pub(super) fn poison(&self, i: usize, err: &Error) {
        let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            tracing::error!(region = self.name.as_str(), page = i, "region poisoned: {err}");
            let cause = err.to_string();
            *p = Some(Error::RegionPoisoned { region: self.name.clone(), page: self.page(i).to_string(), cause });
        }
    }

    /// The poisoning error, if any.
    pub(super) fn poisoned(&self) -> Option<Error> {
        self.poison.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The region's counters now.
    pub(super) fn stats(&self) -> RegionStats {
        let c = &self.counters;
        RegionStats {
            read_faults: c.read_faults.load(Ordering::Relaxed),
            write_faults: c.write_faults.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            zaps: c.zaps.load(Ordering::Relaxed),
        }
    }
}
