//! The fault thread of a region: reads userfaultfd messages and turns each into
//! an IVY fault, run on the client's tokio runtime from this std thread
//! (`Handle::block_on`, this thread only), then installs the result under the
//! region's state lock. No lock is held while the fault waits on the network.
//!
//! - missing page → read (a page that does not exist yet: acquire, creating it)
//!   → the table's copy is copied in, write-protected unless the table owns it;
//! - store to a write-protected page → acquire (a write fault keeping the bytes)
//!   → write protection removed;
//! - a fault that cannot be served before the op's deadline poisons the region
//!   and the thread is given a zero page (or its page unprotected) so it goes on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use super::mapping::{Installed, Mapping};
use super::uffd::{FaultMsg, PAGE};
use super::LEASE_GUARD;
use crate::client::Client;
use crate::error::Error;

/// How often the thread looks at its stop flag while no fault comes.
const POLL_MS: i32 = 100;

/// Pause before installing again while the lease is being renewed.
const LEASE_WAIT: Duration = Duration::from_millis(20);

/// The fault thread's view of its region.
pub(super) struct Faulter {
    pub map: Arc<Mapping>,
    pub client: Arc<Client>,
    pub rt: Handle,
    pub stop: Arc<AtomicBool>,
}

impl Faulter {
    /// Serves faults until the stop flag is set.
    pub fn run(self) {
        while !self.stop.load(Ordering::SeqCst) {
            match self.map.uffd.next(POLL_MS) {
                Ok(Some(msg)) => self.serve(msg),
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!(region = self.map.name.as_str(), "reading userfaultfd: {e}");
                    return;
                }
            }
        }
    }

    fn serve(&self, msg: FaultMsg) {
        let (addr, missing) = match msg {
            FaultMsg::Missing { addr, .. } => (addr, true),
            FaultMsg::WriteProtected { addr } => (addr, false),
        };
        let i = (addr - self.map.base) / PAGE;
        if self.map.poisoned().is_some() {
            return self.map.detach(i, missing);
        }
        self.map.faulting(i, true);
        let served = if missing { self.missing(i) } else { self.upgrade(i) };
        self.map.faulting(i, false);
        if let Err(err) = served {
            self.map.poison(i, &err);
            self.map.detach(i, missing);
        }
    }

    fn give_up(&self) -> Instant {
        Instant::now() + self.client.op_timeout
    }

    /// A missing page: a read fault, then the table's copy installed.
    fn missing(&self, i: usize) -> Result<(), Error> {
        let page = self.map.page(i);
        let give_up = self.give_up();
        while Instant::now() < give_up {
            let (done, counter) = match self.rt.block_on(self.client.read_at(page.as_str())) {
                // The first touch of a page nobody wrote yet creates it.
                Err(Error::PageNotFound { .. }) => {
                    (self.rt.block_on(self.client.acquire(page.as_str())), &self.map.counters.write_faults)
                }
                other => (other, &self.map.counters.read_faults),
            };
            if done?.hit == crate::protocol::Hit::Fault {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            if self.install(i)? {
                return Ok(());
            }
        }
        Err(Error::Unavailable(format!("{page}: the copy was superseded until the deadline")))
    }

    /// Installs page `i` from the table; false when the table lost it meanwhile.
    fn install(&self, i: usize) -> Result<bool, Error> {
        let shared = &self.client.shared;
        let mut st = self.map.state();
        if st[i] != Installed::Missing {
            self.map.uffd.wake(self.map.addr(i));
            return Ok(true);
        }
        if !shared.lease.valid_for(LEASE_GUARD) {
            drop(st);
            std::thread::sleep(LEASE_WAIT);
            return Ok(false);
        }
        let table = shared.table();
        self.map.install(&mut st, i, &table).map_err(|e| Error::Internal(format!("UFFDIO_COPY: {e}")))
    }

    /// A store to a write-protected page: an acquire, then the page unprotected.
    fn upgrade(&self, i: usize) -> Result<(), Error> {
        let page = self.map.page(i);
        let give_up = self.give_up();
        while Instant::now() < give_up {
            let done = self.rt.block_on(self.client.acquire(page.as_str()))?;
            if done.hit == crate::protocol::Hit::Fault {
                self.map.counters.write_faults.fetch_add(1, Ordering::Relaxed);
            }
            if !self.client.shared.lease.valid_for(LEASE_GUARD) {
                std::thread::sleep(LEASE_WAIT);
                continue;
            }
            let mut st = self.map.state();
            if st[i] != Installed::ReadOnly {
                // Zapped meanwhile (the store faults again as missing), or done.
                self.map.uffd.wake(self.map.addr(i));
                return Ok(());
            }
            let table = self.client.shared.table();
            if self
                .map
                .unprotect(&mut st, i, &table)
                .map_err(|e| Error::Internal(format!("UFFDIO_WRITEPROTECT: {e}")))?
            {
                return Ok(());
            }
        }
        Err(Error::Unavailable(format!("{page}: write access was taken away until the deadline")))
    }
}
