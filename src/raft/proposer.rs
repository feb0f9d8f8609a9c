//! The batching proposer: one task owns `client_write`, commands queue to it.
//!
//! While one entry is being committed, the commands that arrive wait in the
//! channel; the next entry carries all of them (up to `MAX_BATCH`). Each caller
//! gets the outcome of its own command, once the commit has resolved: applied, or
//! refused because this node stopped leading. A caller that may not wait (an RPC
//! with a deadline) times out its own wait, while the fault server, holding a page
//! lock, waits for the outcome. Only a commit still unresolved after
//! `RESOLVE_TIMEOUT` (seen once in a long chaos run: a write proposed before the
//! node lost and regained leadership never answered) fails, as a lost quorum, so
//! one stuck write cannot stall every later one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex, OwnedMutexGuard};

use super::{raft_error, Batch, Raft};
use crate::error::Error;
use crate::protocol::{Applied, DirCmd};

/// How long one batch may stay unresolved before it is reported as a lost quorum.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most commands in one log entry.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Applied, Error>>;

/// A handle to the batching proposer task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(DirCmd, Reply)>,
    /// Held by the task while a batch is being committed, and by [`Proposer::pause`].
    gate: Arc<Mutex<()>>,
}

/// While held, the proposer commits nothing; commands wait in its queue.
pub type Paused = OwnedMutexGuard<()>;

impl Proposer {
    /// Starts the proposer for `raft`.
    pub fn spawn(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Mutex::new(()));
        tokio::spawn(run(raft, rx, gate.clone()));
        Proposer { tx, gate }
    }

    /// Waits until the batch being committed (if any) has resolved, then holds
    /// every later one until the guard is dropped: the log of a leader handing
    /// over must not outgrow its successor's.
    pub async fn pause(&self) -> Paused {
        self.gate.clone().lock_owned().await
    }

    /// Commits `cmd` and returns its outcome once applied on this (leader) node.
    pub async fn propose(&self, cmd: DirCmd) -> Result<Applied, Error> {
        let (reply, rx) = oneshot::channel();
        let stopped = || Error::Unavailable("the CM node is shutting down".into());
        self.tx.send((cmd, reply)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<(DirCmd, Reply)>, gate: Arc<Mutex<()>>) {
    while let Some(first) = rx.recv().await {
        let _committing = gate.lock().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (cmds, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let n = cmds.len();
        crate::metrics::proposer_batch(n);
        for (reply, result) in replies.into_iter().zip(commit(&raft, cmds).await) {
            let _ = reply.send(result);
        }
        tracing::trace!(commands = n, "committed batch");
    }
}

/// Commits one batch and splits its outcome per command.
async fn commit(raft: &Raft, cmds: Vec<DirCmd>) -> Vec<Result<Applied, Error>> {
    let n = cmds.len();
    let written = tokio::time::timeout(RESOLVE_TIMEOUT, raft.client_write(Batch(cmds))).await;
    let err = match written {
        Ok(Ok(resp)) if resp.data.0.len() == n => return resp.data.0.into_iter().map(Ok).collect(),
        Ok(Ok(resp)) => Error::Internal(format!("batch of {n} gave {} outcomes", resp.data.0.len())),
        Ok(Err(err)) => raft_error(raft, err),
        Err(_) => {
            tracing::warn!("a batch of {n} directory commands did not resolve within {:?}", RESOLVE_TIMEOUT);
            Error::NoQuorum(format!(
                "the directory change did not resolve within {} s; is a majority of CM nodes up?",
                RESOLVE_TIMEOUT.as_secs()
            ))
        }
    };
    vec![Err(err); n]
}
