//! Criterion micro-benchmarks of the IVY protocol core: planning and applying
//! directory commands, and a client page table's side of a fault, with no IO.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ivy_raft::protocol::{Applied, DirCmd, Directory, FaultKind, PageName, PageTable, Plan};

const CLIENTS: u64 = 100;
const PAGES: usize = 1000;

fn directory() -> (Directory, Vec<PageName>) {
    let mut dir = Directory::default();
    for c in 1..=CLIENTS {
        dir.apply(&DirCmd::Register { addr: format!("127.0.0.1:{}", 10_000 + c), nonce: c });
    }
    let pages: Vec<PageName> = (0..PAGES).map(|p| PageName::new(&format!("P{p}")).unwrap()).collect();
    let mut seq = 0;
    for page in &pages {
        seq += 1;
        if let Ok(Plan::Run(plan)) = dir.plan_fault(1, seq, page, FaultKind::Write) {
            dir.apply(&plan.commit);
        }
    }
    (dir, pages)
}

fn plan_and_apply(c: &mut Criterion) {
    let (mut dir, pages) = directory();
    let mut seqs = vec![1_000_000u64; CLIENTS as usize + 1];
    let mut i = 0usize;
    c.bench_function("directory: plan + apply one fault (100 clients, 1000 pages)", |b| {
        b.iter(|| {
            i += 1;
            let client = (i as u64 % CLIENTS) + 1;
            seqs[client as usize] += 1;
            let kind = if i.is_multiple_of(3) { FaultKind::Write } else { FaultKind::Read };
            let page = &pages[(i * 7919) % PAGES];
            let granted = match dir.plan_fault(client, seqs[client as usize], page, kind) {
                Ok(Plan::Run(plan)) => matches!(dir.apply(black_box(&plan.commit)), Applied::Granted(_)),
                _ => false,
            };
            black_box(granted)
        })
    });
}

fn page_table(c: &mut Criterion) {
    let page = PageName::new("P1").unwrap();
    let mut owner = PageTable::new(1);
    let mut reader = PageTable::new(2);
    let _ = owner.grant(&page, 1, true, 0);
    let content = vec![7u8; 4096];
    let mut epoch = 1;
    c.bench_function("page table: owner forward + requester receive/confirm (4 KiB page)", |b| {
        b.iter(|| {
            owner.write(&page, &content);
            let t = owner.forward(&page, epoch, FaultKind::Write, false).expect("owner holds the page");
            reader.receive(&page, t.epoch, t.access, t.content, t.epoch);
            reader.confirm(&page, t.epoch, false, t.epoch).expect("pending copy");
            std::mem::swap(&mut owner, &mut reader);
            epoch = t.epoch;
        })
    });
}

criterion_group!(benches, plan_and_apply, page_table);
criterion_main!(benches);
