//! The multi-host test (see `ivy_harness::multihost`): three CM containers on a
//! private Docker network, client containers, a leader killed, a node cut off
//! the network and reconnected, all three restarted; the history must be clean.
//!
//! It needs a Docker daemon and docker-compose, so `cargo test` leaves it out;
//! `.ci/run` runs it with `cargo test --test multihost -- --ignored`, where a
//! missing daemon fails it with a message saying so.

use std::path::PathBuf;

use anyhow::Result;
use ivy_harness::multihost::{self, MultihostConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker and docker-compose; run with --ignored (.ci/run does)"]
async fn containers_on_a_private_network_survive_kill_partition_and_restart() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/multihost");
    let _ = std::fs::remove_dir_all(&out);
    let cfg = MultihostConfig::new(root, env!("CARGO_BIN_EXE_ivy").into(), out.clone());
    let report = multihost::run(&cfg).await?;
    println!("{report}");
    assert!(report.ops_ok > 50, "the workload ran: {} ops ok", report.ops_ok);
    assert_eq!(report.final_reads_ok, report.final_reads, "every final read answered");
    assert!(report.leftovers.is_empty(), "docker-compose down -v left {:?}", report.leftovers);
    assert!(report.clean, "verdict: {:?} (history in {})", report.verdict, out.display());
    Ok(())
}
