//! The heartbeat-sync baseline (`--mode heartbeat`) on an in-process primary and
//! backup: same results as Raft without faults, takeover, reclaim, and the known
//! loss of changes acknowledged after the backup's last copy.

mod support;

use std::time::Duration;

use anyhow::{ensure, Result};
use ivy_harness::cluster::{Cluster, ClusterMode};
use ivy_raft::client::Client;
use ivy_raft::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

const PRIMARY: u64 = 1;
const BACKUP: u64 = 2;

fn heartbeat(pulse_ms: u64) -> ClusterMode {
    ClusterMode::heartbeat(Duration::from_millis(pulse_ms))
}

async fn client(cluster: &Cluster) -> Result<Client> {
    support::client(cluster, Duration::from_secs(5)).await
}

/// Waits until the backup's copy is as new as the primary's directory.
async fn wait_synced(cluster: &Cluster) -> Result<()> {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let primary = cluster.node(PRIMARY).expect("primary runs").status().last_log_index;
        let backup = cluster.node(BACKUP).expect("backup runs").status().last_log_index;
        if primary == backup {
            return Ok(());
        }
        ensure!(Instant::now() < give_up, "backup never caught up: {backup} < {primary}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn role(cluster: &Cluster, id: u64) -> String {
    cluster.node(id).map_or("down".into(), |n| n.status().role.to_string())
}

/// A fixed sequential workload over 3 clients; returns every answer as text.
async fn scripted_workload(mode: ClusterMode) -> Result<Vec<String>> {
    let cluster = Cluster::start(mode).await?;
    let clients = [client(&cluster).await?, client(&cluster).await?, client(&cluster).await?];
    let mut rng = StdRng::seed_from_u64(7);
    let mut answers = Vec::new();
    for i in 0..90 {
        let c = &clients[rng.gen_range(0..clients.len())];
        let page = format!("P{}", rng.gen_range(1..=6));
        let answer = if rng.gen_bool(0.5) {
            c.write(&page, format!("v{i}").as_bytes()).await.map(|_| "ok".to_string())
        } else {
            c.read(&page).await.map(|(v, _)| String::from_utf8_lossy(&v).into_owned())
        };
        answers.push(match answer {
            Ok(text) => format!("{page} {text}"),
            Err(err) => format!("{page} error: {err}"),
        });
    }
    cluster.shutdown().await;
    Ok(answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_faults_gives_the_same_results_as_raft() -> Result<()> {
    let raft = scripted_workload(ClusterMode::raft()).await?;
    let baseline = scripted_workload(heartbeat(200)).await?;
    assert!(raft.iter().any(|a| a.contains("error: page")), "the workload reads unwritten pages too");
    assert_eq!(raft, baseline);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_takes_over_and_the_restarted_primary_reclaims() -> Result<()> {
    const PULSE_MS: u64 = 200;
    let mut cluster = Cluster::start(heartbeat(PULSE_MS)).await?;
    let (c1, c2) = (client(&cluster).await?, client(&cluster).await?);
    c1.write("P1", b"one").await?;
    wait_synced(&cluster).await?;
    assert_eq!((role(&cluster, PRIMARY), role(&cluster, BACKUP)), ("primary".into(), "backup".into()));

    // Kill the primary: the backup takes over within about two pulses.
    cluster.kill(PRIMARY).await;
    let killed = Instant::now();
    assert_eq!(c2.read("P1").await?.0, b"one", "the synced page survives");
    let resumed = killed.elapsed();
    println!("faults resumed {} ms after the primary died", resumed.as_millis());
    assert!(resumed < Duration::from_millis(3 * PULSE_MS + 500), "took {resumed:?}");
    assert_eq!(role(&cluster, BACKUP), "acting-primary");
    c1.write("P2", b"written on the backup").await?;

    // Restart the primary: it takes the backup's directory, reclaims the title,
    // and the clients follow it.
    cluster.restart(PRIMARY).await?;
    assert_eq!((role(&cluster, PRIMARY), role(&cluster, BACKUP)), ("primary".into(), "backup".into()));
    let before = cluster.node(PRIMARY).unwrap().status().last_log_index;
    assert_eq!(c2.read("P2").await?.0, b"written on the backup");
    c2.write("P3", b"after the reclaim").await?;
    let after = cluster.node(PRIMARY).unwrap().status().last_log_index;
    assert!(after > before, "the faults went to the primary ({before} -> {after})");
    assert_eq!(c1.read("P3").await?.0, b"after the reclaim");
    cluster.shutdown().await;
    Ok(())
}

/// The original design's Case 3: a change acknowledged after the backup's last
/// copy is gone once the primary dies. This documents the baseline's weakness.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_after_the_last_pulse_are_lost_and_reported() -> Result<()> {
    const PULSE_MS: u64 = 500;
    let mut cluster = Cluster::start(heartbeat(PULSE_MS)).await?;
    let (c1, c2) = (client(&cluster).await?, client(&cluster).await?);
    c1.write("SYNCED", b"before the pulse").await?;
    wait_synced(&cluster).await?;
    // Acknowledged, then the primary dies before the next pulse.
    c1.write("LOST", b"after the pulse").await?;
    cluster.kill(PRIMARY).await;

    assert_eq!(c2.read("SYNCED").await?.0, b"before the pulse");
    let lost = c2.read("LOST").await.expect_err("the change after the last pulse is gone");
    assert_eq!(lost, Error::PageNotFound { page: "LOST".into() });
    let backup = cluster.node(BACKUP).unwrap().status();
    assert_eq!(backup.role.name(), "acting-primary");
    let age = backup.last_sync().expect("the backup reports the age of its copy");
    println!("lost 1 acknowledged write: {lost}; the backup's copy was {} ms old", age.as_millis());
    // The writer still holds its own copy: the directory and the client now disagree.
    assert_eq!(c1.read("LOST").await?.0, b"after the pulse");
    cluster.shutdown().await;
    Ok(())
}
