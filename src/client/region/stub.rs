//! Regions where userfaultfd does not exist: [`Region::map`] says so.

use std::sync::Arc;

use super::{RegionOptions, RegionStats};
use crate::client::Client;
use crate::error::Error;

/// DSM pages mapped into memory: only on Linux.
pub struct Region {
    _never: std::convert::Infallible,
}

impl Region {
    /// Fails: shared virtual memory needs Linux's userfaultfd.
    pub fn map(client: &Arc<Client>, name: &str, pages: usize) -> Result<Region, Error> {
        Region::map_with(client, name, pages, RegionOptions::default())
    }

    /// Fails: shared virtual memory needs Linux's userfaultfd.
    pub fn map_with(_: &Arc<Client>, _: &str, _: usize, _: RegionOptions) -> Result<Region, Error> {
        Err(Error::SvmUnavailable("regions need Linux's userfaultfd (Linux 5.7 or later)".into()))
    }

    /// Never called: no region exists here.
    pub fn stats(&self) -> RegionStats {
        match self._never {}
    }
}
