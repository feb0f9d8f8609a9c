//! The manager's side of one fault, as a pure state machine.
//!
//! A [`FaultRun`] owns the order of a fault's steps; the leader's request server
//! only performs the IO each [`FaultStep`] names and feeds the answer back as a
//! [`FaultEvent`]. The golden scripts in `testdata/` drive the very same machine
//! with direct calls instead of RPCs, so reordering a step here changes what the
//! scripts print.
//!
//! The order, from a plan of the committed directory:
//!
//! 1. `Invalidate` every copy holder a write fault must remove (new epoch);
//! 2. `Forward`: the owner sends the page to the requester, who keeps it pending;
//! 3. `Commit` the fault command (nothing is promised to anyone before it lands);
//! 4. `Release` the kept bytes of the old owner and of the invalidated copy
//!    holders (best effort, not awaited);
//! 5. `Done`: the grant is the fault's reply, and the page's lock goes with it.
//!
//! There is no separate confirmation round: the reply is the confirmation. The
//! next fault on the page may therefore reach the requester before its reply
//! does. The requester's page table makes that safe (docs/DESIGN.md, "The reply
//! is the confirmation"): a forward naming the granted epoch proves the commit,
//! so the owner installs its pending copy and applies its write first; an
//! invalidation supersedes a pending copy older than it and marks the epoch, so a
//! late reply cannot install a superseded copy with access.
//!
//! A commit that finds the page moved (`EpochMoved`) or an owner that does not
//! hold the epoch the plan named (`NotHeld`) makes the run plan again from the
//! directory (`Replan`), with the same (client, seq), a bounded number of times.
//! A holder that does not answer (`ClientUnreachable`) makes the run wait on it
//! (`HolderDown`): the executor evicts it once its lease has run out, or waits a
//! little, and the run plans again; the directory then no longer names an evicted
//! holder, so the fault goes on without it.
//! A request granted before is answered from the session table: the run is
//! `Done` at once.

use std::time::Duration;

use super::directory::{Applied, DirCmd, Directory, Grant};
use super::plan::{FaultPlan, Forward, Plan};
use super::types::{ClientId, Epoch, FaultKind, PageName};
use crate::error::Error;

/// How many times a fault is planned again when its page moved or its owner was not ready.
pub const MAX_REPLANS: u32 = 8;

/// Pause before a replan, times the replan's number.
pub const REPLAN_BACKOFF: Duration = Duration::from_millis(10);

/// One fault request as the manager receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRequest {
    /// The requesting client.
    pub client: ClientId,
    /// Its request sequence number (a retry reuses it).
    pub seq: u64,
    /// The page.
    pub page: PageName,
    /// Read or write.
    pub kind: FaultKind,
}

/// What the executor must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultStep {
    /// Tell each holder that its copies of the page older than `epoch` are invalid.
    Invalidate {
        /// The copy holders.
        holders: Vec<ClientId>,
        /// Copies older than this epoch are invalid.
        epoch: Epoch,
    },
    /// Ask the owner to send the page to the requester.
    Forward(Forward),
    /// Commit this command through replication.
    Commit(DirCmd),
    /// Tell these holders, without waiting, that their kept bytes may go.
    Release {
        /// The old owner and the invalidated copy holders.
        holders: Vec<ClientId>,
        /// Copies older than this epoch may be dropped.
        epoch: Epoch,
    },
    /// A holder did not answer: evict it if its lease has run out, or wait a
    /// little, then feed [`FaultEvent::HolderAwaited`]; or give up with
    /// [`FaultEvent::HolderGaveUp`].
    HolderDown {
        /// The client that did not answer.
        client: ClientId,
        /// What the call said.
        error: Error,
    },
    /// Wait `backoff`, then call [`FaultRun::replan`] with the current directory.
    Replan {
        /// How long to wait first.
        backoff: Duration,
    },
    /// The run is over.
    Done(Result<Grant, Error>),
}

/// The answer to the last step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultEvent {
    /// Every holder of an `Invalidate` answered (or the first failure).
    Invalidated(Result<(), Error>),
    /// The owner of a `Forward` sent the page (or why not).
    Forwarded(Result<(), Error>),
    /// The `Commit` resolved: applied with this result, or failed to commit.
    Committed(Result<Applied, Error>),
    /// The `Release` was handed off.
    Released,
    /// The holder of a `HolderDown` was evicted or waited for: plan again.
    HolderAwaited,
    /// The holder of a `HolderDown` stayed down past the executor's patience.
    HolderGaveUp(Error),
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Invalidating(FaultPlan),
    Forwarding(FaultPlan),
    Committing(FaultPlan),
    Releasing(Grant),
    AwaitingHolder,
    Finished,
}

/// One fault on the leader, from its request to its answer.
#[derive(Debug, Clone)]
pub struct FaultRun {
    request: FaultRequest,
    stage: Stage,
    replans: u32,
}

impl FaultRun {
    /// Starts serving `request` from the directory as it is now.
    pub fn start(request: FaultRequest, dir: &Directory) -> (FaultRun, FaultStep) {
        let mut run = FaultRun { request, stage: Stage::Finished, replans: 0 };
        let step = run.plan(dir);
        (run, step)
    }

    /// The request being served.
    pub fn request(&self) -> &FaultRequest {
        &self.request
    }

    /// Plans again after a `Replan` step, from the directory as it is now.
    pub fn replan(&mut self, dir: &Directory) -> FaultStep {
        self.plan(dir)
    }

    /// Takes the answer to the last step and returns the next one.
    pub fn on(&mut self, event: FaultEvent) -> FaultStep {
        let stage = std::mem::replace(&mut self.stage, Stage::Finished);
        match (stage, event) {
            (Stage::Invalidating(plan), FaultEvent::Invalidated(Ok(()))) => self.forward(plan),
            (Stage::Forwarding(plan), FaultEvent::Forwarded(Ok(()))) => self.commit(plan),
            (Stage::Invalidating(_), FaultEvent::Invalidated(Err(err)))
            | (Stage::Forwarding(_), FaultEvent::Forwarded(Err(err))) => self.failed(err),
            (Stage::Committing(plan), FaultEvent::Committed(result)) => self.committed(plan, result),
            (Stage::Releasing(grant), FaultEvent::Released) => FaultStep::Done(Ok(grant)),
            (Stage::AwaitingHolder, FaultEvent::HolderAwaited) => FaultStep::Replan { backoff: Duration::ZERO },
            (Stage::AwaitingHolder, FaultEvent::HolderGaveUp(err)) => FaultStep::Done(Err(err)),
            (stage, event) => {
                let what = format!("fault run got {event:?} while {stage:?}");
                FaultStep::Done(Err(Error::Internal(what)))
            }
        }
    }

    fn plan(&mut self, dir: &Directory) -> FaultStep {
        let r = &self.request;
        match dir.plan_fault(r.client, r.seq, &r.page, r.kind) {
            Ok(Plan::Cached(grant)) => FaultStep::Done(Ok(grant)),
            Ok(Plan::Run(plan)) => self.invalidate(plan),
            Err(err) => FaultStep::Done(Err(err)),
        }
    }

    fn invalidate(&mut self, plan: FaultPlan) -> FaultStep {
        if plan.invalidate.is_empty() {
            return self.forward(plan);
        }
        let step = FaultStep::Invalidate { holders: plan.invalidate.clone(), epoch: plan.invalidate_epoch };
        self.stage = Stage::Invalidating(plan);
        step
    }

    fn forward(&mut self, plan: FaultPlan) -> FaultStep {
        let Some(fwd) = plan.forward.clone() else {
            return self.commit(plan);
        };
        self.stage = Stage::Forwarding(plan);
        FaultStep::Forward(fwd)
    }

    fn commit(&mut self, plan: FaultPlan) -> FaultStep {
        let step = FaultStep::Commit(plan.commit.clone());
        self.stage = Stage::Committing(plan);
        step
    }

    fn committed(&mut self, plan: FaultPlan, result: Result<Applied, Error>) -> FaultStep {
        let grant = match result {
            Ok(Applied::Granted(grant)) => grant,
            Ok(Applied::Rejected(err)) => return self.failed(err),
            Ok(other) => return FaultStep::Done(Err(Error::Internal(format!("fault commit gave {other:?}")))),
            Err(err) => return FaultStep::Done(Err(err)),
        };
        if plan.release.is_empty() {
            return FaultStep::Done(Ok(grant));
        }
        self.stage = Stage::Releasing(grant);
        FaultStep::Release { holders: plan.release, epoch: grant.epoch }
    }

    /// A step failed: wait on a holder that did not answer, plan again when the
    /// directory may have moved under it.
    fn failed(&mut self, err: Error) -> FaultStep {
        if let Error::ClientUnreachable { client, .. } = err {
            self.stage = Stage::AwaitingHolder;
            return FaultStep::HolderDown { client, error: err };
        }
        let moved = matches!(err, Error::EpochMoved { .. } | Error::NotHeld { .. });
        if !moved || self.replans >= MAX_REPLANS {
            return FaultStep::Done(Err(err));
        }
        self.replans += 1;
        FaultStep::Replan { backoff: REPLAN_BACKOFF * self.replans }
    }
}
