//! The chaos run's history: every operation, every injected fault and what
//! happened to each client process, on one monotonic clock (nanoseconds since
//! the run started), written as JSON lines.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use anyhow::{anyhow, Result};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It returned success.
    Ok,
    /// It returned an error (a failed write may still have taken effect).
    Fail,
    /// No answer arrived in time.
    Unknown,
}

/// The operation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A read of a page.
    Read,
    /// A write of a unique value.
    Write,
}

/// One operation as the harness saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client slot (its index in the run).
    pub client: usize,
    /// The directory id of the client process that ran it.
    #[serde(default)]
    pub process: u64,
    /// Read or write.
    pub kind: OpKind,
    /// The page.
    pub page: String,
    /// The written value, or the value a successful read returned (`None`: the
    /// page did not exist).
    pub value: Option<String>,
    /// When the harness sent it.
    pub invoke_ns: u64,
    /// When the answer arrived (`None` when it never did).
    pub return_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// The epoch of the copy it used, when it succeeded.
    pub epoch: Option<u64>,
    /// The error text of a failed operation.
    pub error: Option<String>,
    /// True for the final reads after everything healed.
    pub last: bool,
    /// A read that found the page lost with this client (its only copy left
    /// with it when it was removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_with: Option<u64>,
}

/// What happened to a client process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifeKind {
    /// It registered: a new process, or the same process after an eviction of
    /// the client `was`.
    Registered {
        /// The id it had before, when it registered again after an eviction.
        was: Option<u64>,
    },
    /// The harness killed it (kill -9).
    Killed,
    /// The harness stopped it or cut it off; it may be evicted meanwhile.
    Stopped,
}

/// One event in a client's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifeEvent {
    /// When it happened (or was seen).
    pub at_ns: u64,
    /// The client slot.
    pub slot: usize,
    /// The directory id it concerns (the new id, for a registration).
    pub client: u64,
    /// What happened.
    pub kind: LifeKind,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// When it started.
    pub at_ns: u64,
    /// When it was healed (`None`: at the end of the run).
    pub healed_ns: Option<u64>,
    /// Its kind (kill, restart-all, pause, partition, client-pause).
    pub kind: String,
    /// What it did, in words.
    pub detail: String,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// An operation.
    Op(Op),
    /// A fault.
    Fault(FaultEvent),
    /// A client process's life.
    Life(LifeEvent),
}

/// Everything a run recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The operations.
    pub ops: Vec<Op>,
    /// The injected faults.
    pub faults: Vec<FaultEvent>,
    /// What happened to client processes.
    pub lives: Vec<LifeEvent>,
}

/// Writes the history as JSON lines.
pub fn write(path: &Path, h: &History) -> Result<()> {
    let io = |e: std::io::Error| anyhow!("{}: {e}", path.display());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let lines = h.faults.iter().cloned().map(Line::Fault);
    let lines = lines.chain(h.lives.iter().cloned().map(Line::Life)).chain(h.ops.iter().cloned().map(Line::Op));
    for line in lines {
        let json = serde_json::to_string(&line).map_err(|e| anyhow!("encode history: {e}"))?;
        writeln!(out, "{json}").map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Reads a history written by [`write`].
pub fn read(path: &Path) -> Result<History> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut h = History::default();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(Line::Op(op)) => h.ops.push(op),
            Ok(Line::Fault(f)) => h.faults.push(f),
            Ok(Line::Life(l)) => h.lives.push(l),
            Err(e) => return Err(anyhow!("{} line {}: {e}", path.display(), n + 1)),
        }
    }
    Ok(h)
}
