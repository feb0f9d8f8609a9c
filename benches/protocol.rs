//! Micro-benchmark of the IVY protocol core: plan and apply directory commands
//! with no IO. Run with `cargo bench`; it prints operations per second.

use std::hint::black_box;
use std::time::Instant;

use ivy_raft::protocol::{DirCmd, Directory, FaultKind, Outcome, PageName, Plan};

const CLIENTS: u64 = 100;
const PAGES: usize = 1000;
const FAULTS: u64 = 200_000;

fn main() {
    let mut dir = Directory::default();
    for c in 1..=CLIENTS {
        dir.apply(&DirCmd::Register { addr: format!("127.0.0.1:{}", 10_000 + c), nonce: c });
    }
    let pages: Vec<PageName> = (0..PAGES).map(|p| PageName::new(&format!("P{p}")).unwrap()).collect();
    let mut seqs = vec![0u64; CLIENTS as usize + 1];
    let start = Instant::now();
    let mut granted = 0u64;
    for i in 0..FAULTS {
        let client = i % CLIENTS + 1;
        let page = &pages[(i as usize * 7919) % PAGES];
        let kind = if i % 3 == 0 { FaultKind::Write } else { FaultKind::Read };
        seqs[client as usize] += 1;
        let seq = seqs[client as usize];
        let plan = match dir.plan_fault(client, seq, page, kind) {
            Ok(Plan::Run(plan)) => plan,
            _ => continue,
        };
        if let Outcome::Granted(_) = dir.apply(black_box(&plan.commit)) {
            granted += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "protocol core: {FAULTS} faults planned+applied ({granted} granted) in {:.3} s: {:.0} faults/s",
        secs,
        FAULTS as f64 / secs
    );
}
