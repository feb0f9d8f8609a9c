//! Shared virtual memory: DSM pages mapped into the process, kept coherent by
//! userfaultfd (Linux only; elsewhere [`Region::map`] fails).
//!
//! A [`Region`] of `n` pages reserves `n` × 4096 bytes of anonymous memory and
//! backs page `i` with the DSM page `<name>.<i>`. Memory faults become IVY
//! faults on a dedicated thread (`fault`): a load of a missing page is a read
//! fault whose copy is installed write-protected; a store to a write-protected
//! page is an *acquire* (a write fault that keeps the owner's bytes) after which
//! protection comes off. The client's holder service keeps the memory in line
//! with the manager's calls (`Regions::around`): an invalidation zaps the page,
//! a forward first write-protects the page and takes its bytes from memory (so
//! a read forward leaves it write-protected, a write forward zaps it).
//!
//! Local access is the lease's: a guard task zaps every page shortly before the
//! client's lease runs out, so no load is served from a copy the manager may
//! already have superseded. A fault the cluster cannot serve in time (no quorum,
//! the page lost) *poisons* the region: the faulting thread is given a zero page
//! and goes on, and every later call of the region returns
//! [`crate::error::Error::RegionPoisoned`] naming the page and the cause.

#[cfg(target_os = "linux")]
mod fault;
#[cfg(target_os = "linux")]
mod handle;
#[cfg(target_os = "linux")]
mod mapping;
#[cfg(target_os = "linux")]
mod uffd;

#[cfg(not(target_os = "linux"))]
mod stub;

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

#[cfg(target_os = "linux")]
pub use handle::Region;
#[cfg(target_os = "linux")]
pub(crate) use mapping::Mapping;
#[cfg(not(target_os = "linux"))]
pub use stub::Region;

use super::Shared;
use crate::protocol::{PageName, PageTable};

/// Bytes in one region page; each DSM page of a region holds exactly this many.
pub const REGION_PAGE: usize = 4096;

/// How long before the lease runs out the guard zaps every page (and faults
/// stop installing copies): room for the guard's own wake-up on a loaded machine.
pub const LEASE_GUARD: Duration = Duration::from_millis(150);

/// How a region is mapped.
#[derive(Debug, Clone, Default)]
pub struct RegionOptions {
    /// Testing only: an invalidation leaves the stale page mapped (a broken
    /// build the svm tests must catch).
    pub unsafe_keep_stale: bool,
}

/// What a region's faults have done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RegionStats {
    /// Missing-page faults that took an IVY read fault.
    pub read_faults: u64,
    /// Stores that took an IVY write fault (an acquire).
    pub write_faults: u64,
    /// Bytes copied into the memory by faults.
    pub bytes_in: u64,
    /// Bytes of stores copied out of the memory for the manager's forwards.
    pub bytes_out: u64,
    /// Pages zapped (invalidations, lease guard).
    pub zaps: u64,
}

#[cfg(target_os = "linux")]
type Entry = std::sync::Arc<Mapping>;
#[cfg(not(target_os = "linux"))]
type Entry = ();

/// The regions mapped over one client, for its holder service.
#[derive(Default)]
pub(crate) struct Regions {
    list: Mutex<Vec<Entry>>,
}

impl Regions {
    /// Runs `f` on the client's table for `page`, with the region memory that
    /// backs it (if any) brought in line before and after.
    pub(crate) fn around<T>(&self, shared: &Shared, page: &PageName, f: impl FnOnce(&mut PageTable) -> T) -> T {
        #[cfg(target_os = "linux")]
        if let Some((map, i)) = self.find(page) {
            return map.around(shared, i, f);
        }
        f(&mut shared.table())
    }

    /// Waits while a mapped page is held for its region's faulting thread
    /// (bounded; see `Mapping::wait_hold`). Returns at once for other pages.
    pub(crate) async fn hold(&self, _shared: &Shared, _page: &PageName) {
        #[cfg(target_os = "linux")]
        if let Some((map, i)) = self.find(_page) {
            map.wait_hold(_shared, i).await;
        }
    }

    /// True when a mapped region backs `page`.
    pub(crate) fn backs(&self, _page: &PageName) -> bool {
        #[cfg(target_os = "linux")]
        return self.find(_page).is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Every page of every region faults again (the client was evicted).
    pub(crate) fn revoke_all(&self, _shared: &Shared) {
        #[cfg(target_os = "linux")]
        for map in self.lock().iter() {
            map.revoke_all(_shared);
        }
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(target_os = "linux")]
    fn find(&self, page: &PageName) -> Option<(std::sync::Arc<Mapping>, usize)> {
        self.lock().iter().find_map(|m| m.index(page).map(|i| (m.clone(), i)))
    }

    #[cfg(target_os = "linux")]
    fn add(&self, map: std::sync::Arc<Mapping>) {
        self.lock().push(map);
    }

    #[cfg(target_os = "linux")]
    fn remove(&self, map: &std::sync::Arc<Mapping>) {
        self.lock().retain(|m| !std::sync::Arc::ptr_eq(m, map));
    }
}
