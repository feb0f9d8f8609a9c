//! The chaos harness on real processes: a short run with every kind of fault
//! must be clean, and a deliberately broken build must be caught.

use std::time::Duration;

use anyhow::Result;
use ivy_harness::chaos::{self, ChaosConfig, Nemesis};
use ivy_raft::config::ReplicationMode;

fn config(out: &std::path::Path, duration: Duration) -> ChaosConfig {
    ChaosConfig {
        bin: env!("CARGO_BIN_EXE_ivy").into(),
        mode: ReplicationMode::Raft,
        duration,
        seed: 42,
        clients: 4,
        workers: 2,
        pages: 16,
        faults: Nemesis::all(),
        out: out.to_path_buf(),
        pulse_ms: 1000,
        unsafe_skip_invalidation: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smoke_run_with_every_fault_kind_is_clean() -> Result<()> {
    let out = tempfile::tempdir()?;
    let report = chaos::run(&config(out.path(), Duration::from_secs(30))).await?;
    println!("{report}");
    for kind in Nemesis::all() {
        assert!(report.faults.get(&kind.name()).is_some_and(|n| *n > 0), "no {} fault injected", kind.name());
    }
    assert!(report.ops_ok > 100, "the workload ran: {} ops", report.ops_ok);
    assert!(report.clean, "verdict: {:?}", report.verdict);
    assert!(out.path().join("history.jsonl").exists() && out.path().join("report.json").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_build_is_caught() -> Result<()> {
    let out = tempfile::tempdir()?;
    let mut cfg = config(out.path(), Duration::from_secs(6));
    cfg.faults.clear();
    cfg.pages = 4;
    cfg.unsafe_skip_invalidation = true;
    let report = chaos::run(&cfg).await?;
    println!("{report}");
    assert!(!report.clean, "skipping invalidations must be caught");
    assert!(!report.verdict.not_linearizable.is_empty(), "{:?}", report.verdict);
    Ok(())
}
