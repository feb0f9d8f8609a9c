//! Power loss: the CM nodes keep their data dirs on a lazyfs mount, and a few
//! times during a chaos workload the power is cut (every CM node killed with
//! kill -9, every write they did not sync dropped) and they are restarted. No
//! acknowledged write may be lost and every page history must stay
//! linearizable. The same run with the store's syncs switched off
//! (`--unsafe-skip-sync`) must be caught: either the nodes come back empty and
//! the checker finds lost acknowledged writes, or they refuse to start (their
//! vote is older than the snapshot that reached the disk) and the run reports
//! that the cluster did not recover. Both tests skip, saying why, where FUSE
//! cannot be mounted (they need root and /dev/fuse).

use std::time::Duration;

use anyhow::Result;
use ivy_harness::chaos::{self, ChaosConfig, Nemesis, Report};
use ivy_harness::lazyfs;

/// Long enough for two or three power cuts (one every 3-5 s).
const WORKLOAD: Duration = Duration::from_secs(12);

/// Snapshots this often (in log entries) make every cut land between snapshots,
/// purges and rewrites of the log file, not only appends and votes.
const SNAPSHOT_EVERY: u64 = 20;

fn config(out: &std::path::Path, unsafe_skip_sync: bool) -> ChaosConfig {
    ChaosConfig {
        duration: WORKLOAD,
        seed: 17,
        clients: 3,
        pages: 8,
        faults: vec![Nemesis::PowerCut],
        unsafe_skip_sync,
        snapshot_every: Some(SNAPSHOT_EVERY),
        ..ChaosConfig::new(env!("CARGO_BIN_EXE_ivy").into(), out.to_path_buf())
    }
}

/// True when FUSE can be mounted here; otherwise says why the test skips.
fn fuse_or_skip(test: &str) -> bool {
    match lazyfs::fuse_available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIP {test}: FUSE cannot be mounted here ({why}); power-loss tests need root and /dev/fuse");
            false
        }
    }
}

fn power_cuts(report: &Report) -> usize {
    report.faults.get(&Nemesis::PowerCut.name()).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_power_cuts() -> Result<()> {
    if !fuse_or_skip("acknowledged_writes_survive_power_cuts") {
        return Ok(());
    }
    let out = tempfile::tempdir()?;
    let report = chaos::run(&config(out.path(), false)).await?;
    println!("{report}");
    assert!(power_cuts(&report) >= 2, "only {} power cuts", power_cuts(&report));
    assert!(report.ops_ok > 100, "the workload ran: {} ops", report.ops_ok);
    assert!(report.clean, "verdict: {:?}", report.verdict);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skipping_syncs_is_caught_by_a_power_cut() -> Result<()> {
    if !fuse_or_skip("skipping_syncs_is_caught_by_a_power_cut") {
        return Ok(());
    }
    let out = tempfile::tempdir()?;
    let report = chaos::run(&config(out.path(), true)).await?;
    println!("{report}");
    assert!(power_cuts(&report) >= 1, "no power cut");
    let v = &report.verdict;
    let lost = v.lost_acknowledged_writes > 0 || !v.not_linearizable.is_empty() || v.epoch_regressions > 0;
    // A directory rolled back also shows as final reads that fail (the owner it
    // names holds a newer epoch); nodes that refuse to start, as no recovery.
    let unrecovered = !report.recovered || report.final_reads_ok < report.final_reads;
    assert!(lost || unrecovered, "a power cut with no syncs must lose acknowledged changes or the cluster: {v:?}");
    assert!(!report.clean);
    Ok(())
}
