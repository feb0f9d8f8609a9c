//! The computation of `ivy vm`: C = A × B over n × n matrices of u64 (wrapping
//! arithmetic, so every run has one exact answer), laid out in one region,
//! and a barrier built on the region itself.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ivy_raft::client::Region;

/// Words per region page.
const WORDS_PER_PAGE: usize = 4096 / 8;

/// Pause between two looks at the barrier (lets other processes run on a busy machine).
const SPIN_PAUSE: Duration = Duration::from_micros(200);

/// Where A, B, C and the barrier slots live in the region, in words.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Matrix side.
    pub n: usize,
    /// Worker processes.
    pub workers: usize,
}

impl Layout {
    fn a(&self) -> usize {
        0
    }
    fn b(&self) -> usize {
        self.n * self.n
    }
    /// The first word of C.
    pub fn c(&self) -> usize {
        2 * self.n * self.n
    }
    /// Worker `r`'s barrier slot: the first word of a page of its own.
    fn slot(&self, r: usize) -> usize {
        let pages = (3 * self.n * self.n).div_ceil(WORDS_PER_PAGE);
        (pages + r) * WORDS_PER_PAGE
    }
    /// Region pages the layout needs.
    pub fn pages(&self) -> usize {
        self.slot(self.workers) / WORDS_PER_PAGE
    }
    /// The rows of C worker `r` computes.
    fn rows(&self, r: usize) -> std::ops::Range<usize> {
        let per = self.n.div_ceil(self.workers);
        (r * per).min(self.n)..((r + 1) * per).min(self.n)
    }
}

/// Entry (i, j) of A (`which` 0) or B (`which` 1).
pub fn input(which: u64, i: usize, j: usize) -> u64 {
    let x = (which << 40) ^ ((i as u64) << 20) ^ j as u64;
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48
}

/// C computed locally, row-major.
pub fn reference(n: usize) -> Vec<u64> {
    let mut c = vec![0u64; n * n];
    for i in 0..n {
        for k in 0..n {
            let a = input(0, i, k);
            for j in 0..n {
                c[i * n + j] = c[i * n + j].wrapping_add(a.wrapping_mul(input(1, k, j)));
            }
        }
    }
    c
}

/// Rank 0 writes A and B into the region.
pub fn init(region: &Region, l: &Layout) -> Result<()> {
    for i in 0..l.n {
        for j in 0..l.n {
            region.store_u64(l.a() + i * l.n + j, input(0, i, j))?;
            region.store_u64(l.b() + i * l.n + j, input(1, i, j))?;
        }
    }
    Ok(())
}

/// Worker `r` computes its rows of C, reading A and B from the region (plain
/// loads and stores on its memory; the region is checked once a row).
pub fn compute(region: &Region, l: &Layout, r: usize) -> Result<()> {
    let (n, m) = (l.n, region.u64s());
    let mut row = vec![0u64; n];
    for i in l.rows(r) {
        row.iter_mut().for_each(|x| *x = 0);
        for k in 0..n {
            let a = m[l.a() + i * n + k].load(Relaxed);
            let b = &m[l.b() + k * n..l.b() + (k + 1) * n];
            for (x, b) in row.iter_mut().zip(b) {
                *x = x.wrapping_add(a.wrapping_mul(b.load(Relaxed)));
            }
        }
        for (x, c) in row.iter().zip(&m[l.c() + i * n..l.c() + (i + 1) * n]) {
            c.store(*x, Relaxed);
        }
        region.check()?;
    }
    Ok(())
}

/// The DSM barrier: worker `r` stores `round` in its slot, then waits until every
/// slot holds `round` or more (each look at another's slot faults only when that
/// worker's store invalidated the copy).
pub fn barrier(region: &Region, l: &Layout, r: usize, round: u64, timeout: Duration) -> Result<()> {
    region.store_u64(l.slot(r), round)?;
    let give_up = Instant::now() + timeout;
    for other in 0..l.workers {
        while region.load_u64(l.slot(other))? < round {
            if Instant::now() > give_up {
                bail!("barrier {round}: worker {other} did not arrive within {timeout:?}");
            }
            std::thread::sleep(SPIN_PAUSE);
        }
    }
    Ok(())
}

/// Compares C in the region with the local computation; returns the words checked.
pub fn verify(region: &Region, l: &Layout) -> Result<usize> {
    let want = reference(l.n);
    for (idx, w) in want.iter().enumerate() {
        let got = region.load_u64(l.c() + idx)?;
        if got != *w {
            bail!("C[{}][{}] is {got}, the local computation says {w}", idx / l.n, idx % l.n);
        }
    }
    Ok(want.len())
}
