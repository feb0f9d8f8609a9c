//! Shared virtual memory: regions mapped over DSM pages with userfaultfd, in
//! separate `ivy svm-shell` processes over an in-process CM cluster, and the
//! `ivy vm` computation with the CM leader killed mid-way. Skipped, saying
//! so, where userfaultfd is unavailable.

mod support;

use std::process::Command;
use std::sync::Arc;

use anyhow::Result;
use ivy_harness::cluster::{Cluster, ClusterMode};
use ivy_raft::client::Region;
use ivy_raft::Error;
use serde_json::Value;
use support::{ClientProc, IVY};

/// Words per region page.
const PAGE_WORDS: u64 = 512;

/// True when this machine can map regions; says why not otherwise.
async fn svm_available(cluster: &Cluster) -> Result<bool> {
    let client = Arc::new(cluster.client().await?);
    match Region::map(&client, "probe", 1) {
        Ok(region) => {
            tokio::task::spawn_blocking(move || drop(region)).await?;
            Ok(true)
        }
        Err(err @ Error::SvmUnavailable(_)) => {
            eprintln!("SKIPPED: {err}");
            Ok(false)
        }
        Err(err) => Err(err.into()),
    }
}

/// A fresh in-process Raft cluster, or `None` (said why) where this machine
/// cannot map regions.
async fn svm_cluster() -> Result<Option<Cluster>> {
    let cluster = Cluster::start(ClusterMode::raft()).await?;
    Ok(svm_available(&cluster).await?.then_some(cluster))
}

/// An `ivy svm-shell` process on region `r` of `cluster`.
fn shell(cluster: &Cluster, extra: &[&str]) -> Result<ClientProc> {
    let mut cmd = Command::new(IVY);
    cmd.args(["svm-shell", "--cm", &cluster.addrs().join(","), "--region", "r", "--pages", "4"]).args(extra);
    Ok(ClientProc::spawn(cmd)?.0)
}

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], true, "{v}");
    &v["value"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_share_one_region() -> Result<()> {
    let Some(cluster) = svm_cluster().await? else { return Ok(()) };
    let mut a = shell(&cluster, &[])?;
    let mut b = shell(&cluster, &[])?;
    // A stores, B loads the same bytes; B stores to the same page, A loads both.
    ok(&a.cmd("store 0 7")?);
    assert_eq!(ok(&b.cmd("load 0")?), 7);
    ok(&b.cmd("store 1 8")?);
    assert_eq!(ok(&a.cmd("load 1")?), 8);
    assert_eq!(ok(&a.cmd("load 0")?), 7);
    // Another page, and a word at the end of the region.
    ok(&a.cmd(&format!("store {} 9", 4 * PAGE_WORDS - 1))?);
    assert_eq!(ok(&b.cmd(&format!("load {}", 4 * PAGE_WORDS - 1))?), 9);

    // B keeps loading word 0 while A stores to it: B's copy is zapped by the
    // invalidation, its next load faults and sees the new value.
    assert_eq!(ok(&b.cmd("load 0")?), 7);
    b.send("await 0 99 20000")?;
    ok(&a.cmd("store 0 99")?);
    let seen = b.next()?;
    assert_eq!((ok(&seen), &seen["timed_out"]), (&99.into(), &Value::Null), "{seen}");
    let stats = b.cmd("stats")?;
    assert!(stats["stats"]["zaps"].as_u64() >= Some(1), "{stats}");
    Ok(())
}

/// A store loop and a load loop on one word: every store takes the page from
/// the loader's copy and every load takes it back, so each round races a
/// grant against the next fault's forward or invalidation. Both must finish
/// (no region poisoned by "the copy was superseded"), and the loader must see
/// the last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_loop_and_a_load_loop_on_one_page_both_finish() -> Result<()> {
    const STORES: u64 = 150;
    let Some(cluster) = svm_cluster().await? else { return Ok(()) };
    let mut a = shell(&cluster, &[])?;
    let mut b = shell(&cluster, &[])?;
    ok(&a.cmd("store 0 0")?);
    assert_eq!(ok(&b.cmd("load 0")?), 0);
    b.send(&format!("await 0 {STORES} 60000"))?;
    for k in 1..=STORES {
        ok(&a.cmd(&format!("store 0 {k}"))?);
    }
    let seen = b.next()?;
    assert_eq!((ok(&seen), &seen["timed_out"]), (&STORES.into(), &Value::Null), "{seen}");
    assert_eq!(ok(&a.cmd("load 0")?), STORES);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_build_keeping_stale_mappings_is_caught() -> Result<()> {
    let Some(cluster) = svm_cluster().await? else { return Ok(()) };
    let mut a = shell(&cluster, &[])?;
    let mut b = shell(&cluster, &["--unsafe-keep-stale"])?;
    ok(&a.cmd("store 0 7")?);
    assert_eq!(ok(&b.cmd("load 0")?), 7);
    ok(&a.cmd("store 0 99")?);
    let stale = b.cmd("await 0 99 1500")?;
    assert_eq!(
        (ok(&stale), &stale["timed_out"]),
        (&7.into(), &true.into()),
        "the broken build was not caught: {stale}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_lost_with_its_client_poisons_the_others_region() -> Result<()> {
    let Some(cluster) = svm_cluster().await? else { return Ok(()) };
    let mut a = shell(&cluster, &[])?;
    let mut b = shell(&cluster, &["--timeout-ms", "20000"])?;
    ok(&b.cmd("store 0 1")?);
    // A alone holds page r.2; then it dies.
    ok(&a.cmd(&format!("store {} 5", 2 * PAGE_WORDS))?);
    drop(a);
    let lost = b.cmd(&format!("load {}", 2 * PAGE_WORDS))?;
    let err = lost["error"].as_str().unwrap_or_default();
    assert!(lost["ok"] == false && err.contains("region r is poisoned") && err.contains("page r.2 was lost"), "{lost}");
    // Every later call of the region says so too.
    let next = b.cmd("load 0")?;
    assert_eq!(next["error"].as_str(), Some(err), "{next}");
    Ok(())
}

#[test]
fn parallel_multiply_is_right_with_the_leader_killed_mid_way() -> Result<()> {
    let out = Command::new(IVY)
        .args(["vm", "--workers", "3", "--n", "64", "--scenarios", "kill-leader", "--json"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("shared virtual memory unavailable") {
        eprintln!("SKIPPED: {stderr}");
        return Ok(());
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    assert_eq!((&r["scenario"], &r["checked"]), (&"kill-leader".into(), &(64 * 64).into()), "{r}");
    assert!(r["leader_killed_ms_before_end"].is_number(), "the leader was not killed mid-way: {r}");
    Ok(())
}
