//! The seeded random-operation generator behind `x`, the demo, the bench and
//! the chaos workload: a read or a write by coin flip on pages `P1..Pn`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One generated operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RandomOp {
    /// Read this page.
    Read {
        /// `P1..Pn`.
        page: String,
    },
    /// Write this unique value to this page.
    Write {
        /// `P1..Pn`.
        page: String,
        /// `<prefix>-<n>`, where n counts the operations generated.
        value: String,
    },
}

impl RandomOp {
    /// The page the operation is on.
    pub fn page(&self) -> &str {
        match self {
            RandomOp::Read { page } | RandomOp::Write { page, .. } => page,
        }
    }
}

/// An endless, reproducible stream of random operations.
#[derive(Debug, Clone)]
pub struct RandomOps {
    rng: StdRng,
    pages: u64,
    read_ratio: f64,
    prefix: String,
    n: u64,
}

impl RandomOps {
    /// Operations on `P1..=P<pages>`, reads with probability `read_ratio`, write
    /// values `<prefix>-1`, `<prefix>-2`, ...; the same seed gives the same stream.
    pub fn new(seed: u64, pages: u64, read_ratio: f64, prefix: impl Into<String>) -> Self {
        let read_ratio = if read_ratio.is_finite() { read_ratio.clamp(0.0, 1.0) } else { 0.5 };
        RandomOps { rng: StdRng::seed_from_u64(seed), pages: pages.max(1), read_ratio, prefix: prefix.into(), n: 0 }
    }
}

impl Iterator for RandomOps {
    type Item = RandomOp;

    fn next(&mut self) -> Option<RandomOp> {
        self.n += 1;
        let page = format!("P{}", self.rng.gen_range(1..=self.pages));
        if self.rng.gen_bool(self.read_ratio) {
            return Some(RandomOp::Read { page });
        }
        Some(RandomOp::Write { page, value: format!("{}-{}", self.prefix, self.n) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<_> = RandomOps::new(7, 10, 0.5, "c1").take(50).collect();
        let b: Vec<_> = RandomOps::new(7, 10, 0.5, "c1").take(50).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|op| (1..=10).any(|p| op.page() == format!("P{p}"))));
        let writes: Vec<_> =
            a.iter().filter_map(|op| if let RandomOp::Write { value, .. } = op { Some(value) } else { None }).collect();
        let distinct: std::collections::BTreeSet<_> = writes.iter().collect();
        assert_eq!(distinct.len(), writes.len(), "write values are unique");
        assert!(RandomOps::new(1, 3, 1.0, "r").take(20).all(|op| matches!(op, RandomOp::Read { .. })));
    }
}
