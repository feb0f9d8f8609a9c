//! The chaos harness on real processes: a short run with every kind of fault
//! must be clean, and deliberately broken builds must be caught.

use std::time::Duration;

use anyhow::Result;
use ivy_harness::chaos::{self, ChaosConfig, Nemesis};

fn config(out: &std::path::Path, duration: Duration) -> ChaosConfig {
    ChaosConfig {
        duration,
        seed: 42,
        faults: Nemesis::all().into_iter().filter(|k| !k.needs_fuse()).collect(),
        ..ChaosConfig::new(env!("CARGO_BIN_EXE_ivy").into(), out.to_path_buf())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smoke_run_with_every_fault_kind_is_clean() -> Result<()> {
    let out = tempfile::tempdir()?;
    // Faults start 2-3 s apart, so every kind comes up within the run.
    let mut cfg = config(out.path(), Duration::from_secs(40));
    cfg.fault_gap_ms = (2000, 3000);
    let report = chaos::run(&cfg).await?;
    println!("{report}");
    for kind in &cfg.faults {
        assert!(report.faults.get(&kind.name()).is_some_and(|n| *n > 0), "no {} fault injected", kind.name());
    }
    assert!(report.ops_ok > 100, "the workload ran: {} ops", report.ops_ok);
    assert!(out.path().join("history.jsonl").exists() && out.path().join("report.json").exists());
    if !report.clean {
        // Keep the history and the logs for the post-mortem.
        let kept = out.keep();
        panic!("verdict: {:?}; history and logs kept in {}", report.verdict, kept.display());
    }
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

/// The lease's broken build: clients that keep serving local hits after their
/// lease ran out. A client cut off from everyone past its lease is evicted while
/// the others move its pages on; it must not serve its superseded copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_lease_build_is_caught() -> Result<()> {
    let out = tempfile::tempdir()?;
    let mut cfg = config(out.path(), Duration::from_secs(18));
    cfg.faults = vec![Nemesis::ClientIsolate];
    // Cut-offs back to back (each outlasts its gap): three or four in the run.
    cfg.fault_gap_ms = (1000, 1000);
    cfg.clients = 3;
    cfg.pages = 2;
    cfg.read_ratio = 0.9;
    // A short deadline frees the cut-off client's workers from the faults they
    // cannot finish, so they read again while the others move the pages on.
    cfg.client_timeout_ms = 700;
    // A short lease: each cut-off leaves more of its length to the time after
    // the eviction, when the others move the pages on.
    cfg.client_lease_ms = 1000;
    cfg.unsafe_ignore_lease = true;
    let report = chaos::run(&cfg).await?;
    println!("{report}");
    assert!(report.faults.get("client-isolate").is_some_and(|n| *n > 0), "a client was cut off");
    assert!(!report.clean, "serving local hits past the lease must be caught");
    let v = &report.verdict;
    assert!(!v.not_linearizable.is_empty() || v.epoch_regressions > 0, "{v:?}");
    Ok(())
}

/// The late-reply broken build: a fault's reply may now reach its requester after
/// the next fault on the page began (the page's lock goes at the commit). A
/// client whose replies are slow gets them after the next write fault on the
/// page has invalidated and released its copy; clients whose invalidations and
/// releases leave pending copies alone install such late copies with access and
/// serve reads the next write superseded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_late_install_build_is_caught() -> Result<()> {
    let out = tempfile::tempdir()?;
    let mut cfg = config(out.path(), Duration::from_secs(12));
    cfg.faults = vec![Nemesis::ClientSlow];
    cfg.fault_gap_ms = (1000, 1000);
    cfg.pages = 2;
    cfg.read_ratio = 0.7;
    cfg.unsafe_late_install = true;
    let report = chaos::run(&cfg).await?;
    println!("{report}");
    assert!(!report.clean, "installing superseded late copies must be caught");
    let v = &report.verdict;
    assert!(!v.not_linearizable.is_empty() || v.epoch_regressions > 0, "{v:?}");
    Ok(())
}

/// The membership path's broken procedure: voters whose data dirs were emptied
/// come back under their old id, never removed nor added back. With the leader
/// down meanwhile, the emptied pair forms a cluster without the acknowledged
/// writes; the checker must see them lost (or pages going back in epoch).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_rejoin_build_is_caught() -> Result<()> {
    let out = tempfile::tempdir()?;
    let mut cfg = config(out.path(), Duration::from_secs(12));
    cfg.faults = vec![Nemesis::Membership];
    cfg.fault_gap_ms = (2500, 3500);
    cfg.pages = 4;
    cfg.unsafe_rejoin_empty = true;
    let report = chaos::run(&cfg).await?;
    println!("{report}");
    assert!(report.faults.get("membership").is_some_and(|n| *n > 0), "voters were emptied");
    assert!(!report.clean, "emptied voters rejoining under their old id must be caught");
    let v = &report.verdict;
    assert!(v.lost_acknowledged_writes > 0 || v.epoch_regressions > 0 || !v.not_linearizable.is_empty(), "{v:?}");
    Ok(())
}
