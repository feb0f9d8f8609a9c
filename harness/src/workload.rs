//! The shape of a random read/write workload, shared by the demo and the bench.

use serde::{Deserialize, Serialize};

/// Clients running random reads and writes on pages `P1..Pn` at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// A short name for tables ("original", "scale", "read-heavy", "custom").
    pub label: String,
    /// Clients, all running at once.
    pub clients: usize,
    /// Pages P1..=Pn.
    pub pages: usize,
    /// Operations per client (with `duration_ms`, the most a client issues).
    pub ops: usize,
    /// Probability that an operation is a read.
    pub read_ratio: f64,
    /// A fixed-duration workload: each client issues operations until this many
    /// milliseconds have passed (at most `ops`), and the scenario's kills fall at
    /// fractions of the duration instead of fractions of the operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Runs of each (mode, scenario), the modes alternated run by run; the bench
    /// reports the run with the median throughput and every run's throughput.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub repeat: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Workload {
    /// The original experiment: 10 clients × 10 coin-flip operations on P1..P10.
    pub fn original() -> Self {
        Workload {
            label: "original".into(),
            clients: 10,
            pages: 10,
            ops: 10,
            read_ratio: 0.5,
            duration_ms: None,
            repeat: 1,
        }
    }

    /// The timeline workload: 10 clients on P1..P10, coin-flip reads and
    /// writes, for 24 s (at most 200,000 operations each).
    pub fn timeline() -> Self {
        Workload { label: "timeline".into(), ops: 200_000, duration_ms: Some(24_000), ..Workload::original() }
    }
}
