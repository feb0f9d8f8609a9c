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
    /// Operations per client.
    pub ops: usize,
    /// Probability that an operation is a read.
    pub read_ratio: f64,
}

impl Workload {
    /// The original experiment: 10 clients × 10 coin-flip operations on P1..P10.
    pub fn original() -> Self {
        Workload { label: "original".into(), clients: 10, pages: 10, ops: 10, read_ratio: 0.5 }
    }
}
