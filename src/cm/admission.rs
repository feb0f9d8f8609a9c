//! What the leader admits: the caps it commits to the directory, and a bound on
//! the faults it runs at once.
//!
//! The caps themselves are checked where they are exact, in `Directory::apply`
//! (see [`Caps`]); the leader only commits its flags' caps before its first
//! registration or fault, and refuses at once what the directory would refuse,
//! so a flood of refused requests does not grow the log.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;
use crate::protocol::Caps;

/// Most faults one node runs at once; a fault task keeps its page's lock until
/// its run ends, even after its caller gave up, so without a bound a flood of
/// faults on one page would queue tasks without end.
pub const MAX_FAULTS_IN_FLIGHT: usize = 10_000;

/// The leader's admission: the caps from its flags and the fault permits.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    faults: Arc<Semaphore>,
}

impl Admission {
    /// Admission under `caps`.
    pub fn new(caps: Caps) -> Self {
        Admission { caps, faults: Arc::new(Semaphore::new(MAX_FAULTS_IN_FLIGHT)) }
    }

    /// The caps this node's flags set.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// A permit for one more fault, held until its run ends; `Unavailable`
    /// (retryable) when [`MAX_FAULTS_IN_FLIGHT`] are running.
    pub fn fault(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.faults.clone().try_acquire_owned().map_err(|_| {
            Error::Unavailable(format!("this CM node is running {MAX_FAULTS_IN_FLIGHT} faults already; try again"))
        })
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(Caps::UNLIMITED)
    }
}
