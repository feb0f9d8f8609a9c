//! An in-process 3-CM cluster on loopback: IVY semantics, failover, bad input.

mod support;

use support::client;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ivy_harness::cluster::{Cluster, ClusterMode};
use ivy_raft::client::Hit;
use ivy_raft::Error;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_writes_across_clients() -> Result<()> {
    let cluster = Cluster::start(ClusterMode::raft()).await?;
    let (c1, c2, c3) = (cluster.client().await?, cluster.client().await?, cluster.client().await?);

    assert_eq!(c1.write("P1", b"a").await?, Hit::Fault, "the first write creates the page");
    assert_eq!(c1.write("P1", b"a2").await?, Hit::Local, "the owner writes locally");
    assert_eq!(c2.read("P1").await?, (b"a2".to_vec(), Hit::Fault));
    assert_eq!(c2.read("P1").await?, (b"a2".to_vec(), Hit::Local));
    assert_eq!(c1.read("P1").await?, (b"a2".to_vec(), Hit::Local), "a downgraded owner still reads locally");

    assert_eq!(c3.write("P1", b"b").await?, Hit::Fault);
    assert_eq!(c1.read("P1").await?, (b"b".to_vec(), Hit::Fault), "the old owner was invalidated");
    assert_eq!(c2.read("P1").await?, (b"b".to_vec(), Hit::Fault), "the old copy was invalidated");
    assert_eq!(c3.read("P1").await?, (b"b".to_vec(), Hit::Local));

    // The directory agrees on every node once applied.
    let leader = cluster.leader().expect("a leader");
    assert!(cluster.node(leader).is_some());
    cluster.shutdown().await;
    Ok(())
}

/// One writer per page (so the last acknowledged value is known), readers of
/// every page, and a leader kill in the middle of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_during_faults_loses_nothing() -> Result<()> {
    const CLIENTS: usize = 4;
    const OPS: usize = 60;
    let mut cluster = Cluster::start(ClusterMode::raft()).await?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Arc::new(client(&cluster, Duration::from_secs(10)).await?));
    }
    for (i, c) in clients.iter().enumerate() {
        c.write(&format!("W{i}"), b"0").await?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, bool)>();
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, tx) = (c.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut last_acked = String::new();
            for k in 1..=OPS {
                let started = Instant::now();
                let fault = if k % 2 == 0 {
                    let value = format!("{i}-{k}");
                    let hit = c.write(&format!("W{i}"), value.as_bytes()).await.expect("write");
                    last_acked = value;
                    hit == Hit::Fault
                } else {
                    let page = format!("W{}", (i + k) % CLIENTS);
                    let (v, hit) = c.read(&page).await.expect("read");
                    let v = String::from_utf8(v).unwrap();
                    assert!(v == "0" || v.starts_with(&page[1..]), "read of {page} gave {v:?}, never written there");
                    hit == Hit::Fault
                };
                let _ = tx.send((started, Instant::now(), fault));
            }
            last_acked
        }));
    }
    drop(tx);
    // Kill the leader once a third of the operations are done.
    let mut done = 0;
    while done < CLIENTS * OPS / 3 {
        rx.recv().await.expect("workers run");
        done += 1;
    }
    let old = cluster.leader().expect("a leader");
    let killed_at = Instant::now();
    cluster.kill(old).await;
    // Faults in flight at the kill may finish on the old leader: measure to the
    // first fault that started after the kill.
    let mut first_fault_after: Option<Duration> = None;
    while let Some((started, ended, fault)) = rx.recv().await {
        if fault && started >= killed_at {
            let gap = ended - killed_at;
            first_fault_after = Some(first_fault_after.map_or(gap, |g| g.min(gap)));
        }
    }
    let mut last = Vec::new();
    for t in tasks {
        last.push(t.await?);
    }
    let gap = first_fault_after.expect("faults resumed after the kill");
    println!("leader {old} killed; first fault served {} ms later", gap.as_millis());
    assert!(gap < Duration::from_secs(3), "faults resumed only after {gap:?}");

    // Every acknowledged write is read back, by a client that never held a copy.
    let reader = cluster.client().await?;
    for (i, value) in last.iter().enumerate() {
        let (v, _) = reader.read(&format!("W{i}")).await?;
        assert_eq!(String::from_utf8(v)?, *value, "last acknowledged write of W{i}");
    }
    // Exactly once: write grants of a page are 1, 2, ... with no gap or repeat; a
    // write fault applied twice would skip an epoch.
    let mut epochs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for c in &clients {
        for (page, epoch) in c.write_grants() {
            epochs.entry(page.to_string()).or_default().push(epoch);
        }
    }
    for (page, mut got) in epochs {
        got.sort_unstable();
        let want: Vec<u64> = (1..=got.len() as u64).collect();
        assert_eq!(got, want, "write grants of {page}");
    }
    cluster.restart(old).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_quorum_fails_within_deadline_then_recovers() -> Result<()> {
    let mut cluster = Cluster::start(ClusterMode::raft()).await?;
    let c = client(&cluster, Duration::from_secs(2)).await?;
    c.write("P1", b"before").await?;
    let leader = cluster.leader().expect("a leader");
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    cluster.kill(others[0]).await;
    cluster.kill(others[1]).await;
    assert_eq!(c.read("P1").await?.0, b"before", "a local copy is readable while the lease lasts");

    let start = Instant::now();
    let c2 = client(&cluster, Duration::from_secs(2)).await;
    let err = match c2 {
        Err(err) => err.downcast::<Error>()?,
        Ok(c2) => c2.read("P1").await.expect_err("no quorum, no read fault"),
    };
    let took = start.elapsed();
    println!("no quorum: {err} (after {took:?})");
    assert!(took < Duration::from_secs(4), "the error took {took:?}");
    assert!(matches!(err, Error::Unavailable(_) | Error::NoQuorum(_)), "{err:?}");
    // With no quorum the lease cannot be renewed: once it has run out, the local
    // copy is no longer trusted (it may have been superseded after an eviction).
    if let Some(left) = c.lease_remaining() {
        tokio::time::sleep(left).await;
    }
    let err = c.read("P1").await.expect_err("no local hit without a lease");
    assert!(matches!(err, Error::Unavailable(_) | Error::NoQuorum(_)), "{err:?}");

    cluster.restart(others[0]).await?;
    cluster.wait_leader(Duration::from_secs(10)).await?;
    let c3 = client(&cluster, Duration::from_secs(10)).await?;
    assert_eq!(c3.read("P1").await?.0, b"before");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_errors_and_changes_nothing() -> Result<()> {
    let cluster = Cluster::start(ClusterMode::raft()).await?;
    let c1 = client(&cluster, Duration::from_secs(2)).await?;
    let c2 = client(&cluster, Duration::from_secs(2)).await?;

    let err = c1.write("no/slash", b"x").await.unwrap_err();
    assert!(err.to_string().starts_with("bad page name \"no/slash\""), "{err}");
    let err = c1.write("P1", &vec![b'x'; 64 * 1024 + 1]).await.unwrap_err();
    assert_eq!(err.to_string(), "content for page P1 is 65537 bytes; the limit is 65536 bytes");
    c1.write("P1", &vec![b'x'; 64 * 1024]).await?;
    let err = c2.read("P9").await.unwrap_err();
    assert_eq!(err.to_string(), "page P9 does not exist");
    assert_eq!(c2.read("P1").await?.0.len(), 64 * 1024, "the oversized write changed nothing");

    // An owner that crashed: a clear error naming it, within the deadline.
    c1.write("P2", b"owned by c1").await?;
    let c1_id = c1.id();
    c1.crash().await;
    let start = Instant::now();
    let err = c2.write("P2", b"x").await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(4), "took {:?}", start.elapsed());
    assert!(err.to_string().contains(&format!("client {c1_id}")), "{err}");

    // An owner that left: its pages are reported lost, naming it.
    let c3 = client(&cluster, Duration::from_secs(2)).await?;
    c3.write("P3", b"v").await?;
    let c3_id = c3.id();
    c3.leave().await?;
    let err = c2.read("P3").await.unwrap_err();
    assert_eq!(err.to_string(), format!("page P3 was lost with client {c3_id} at epoch 1"));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_one_page_serialise() -> Result<()> {
    const WRITERS: usize = 4;
    const WRITES: usize = 25;
    let cluster = Cluster::start(ClusterMode::raft()).await?;
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(Arc::new(client(&cluster, Duration::from_secs(10)).await?));
    }
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..WRITES {
                c.write("HOT", format!("{i}-{k}").as_bytes()).await.expect("write");
                let (v, _) = c.read("HOT").await.expect("read");
                assert!(!v.is_empty(), "a read never sees an empty page");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let mut epochs: Vec<u64> = clients.iter().flat_map(|c| c.write_grants()).map(|(_, e)| e).collect();
    epochs.sort_unstable();
    let distinct: BTreeSet<u64> = epochs.iter().copied().collect();
    assert_eq!(distinct.len(), epochs.len(), "no epoch granted twice");
    let (v, _) = clients[0].read("HOT").await?;
    let v = String::from_utf8(v)?;
    assert!(v.ends_with(&format!("-{}", WRITES - 1)), "final value {v:?} is some writer's last write");
    cluster.shutdown().await;
    Ok(())
}

/// A client killed while holding a copy holds writes up only until its lease
/// runs out: the leader evicts it and the write goes on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_copy_holder_is_evicted_and_writes_go_on() -> Result<()> {
    let cluster = Cluster::start(ClusterMode::raft()).await?;
    let owner = client(&cluster, Duration::from_secs(10)).await?;
    let reader = client(&cluster, Duration::from_secs(10)).await?;
    owner.write("P1", b"v1").await?;
    assert_eq!(reader.read("P1").await?.0, b"v1");
    let dead = reader.id();
    reader.crash().await;

    let start = Instant::now();
    owner.write("P1", b"v2").await?;
    println!("write after the copy holder died: {:?}", start.elapsed());
    let status = owner.cm().status().await;
    let leader = status.cm.iter().find_map(|n| n.status.as_ref().filter(|s| s.serving)).expect("a leader");
    assert!(leader.client_list.iter().all(|c| c.id != dead), "client {dead} was evicted: {:?}", leader.client_list);
    cluster.shutdown().await;
    Ok(())
}

/// An owner killed while another client holds a copy: the copy holder is
/// promoted and the last acknowledged value is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_owners_page_passes_to_a_copy_holder() -> Result<()> {
    let cluster = Cluster::start(ClusterMode::raft()).await?;
    let owner = client(&cluster, Duration::from_secs(10)).await?;
    let holder = client(&cluster, Duration::from_secs(10)).await?;
    let later = client(&cluster, Duration::from_secs(10)).await?;
    owner.write("P1", b"last").await?;
    owner.write("P2", b"only here").await?;
    assert_eq!(holder.read("P1").await?.0, b"last");
    let dead = owner.id();
    owner.crash().await;

    assert_eq!(later.read("P1").await?.0, b"last", "the copy holder serves the page");
    // A page nobody else held is lost with its owner; a write starts it afresh.
    let err = later.read("P2").await.expect_err("lost");
    assert!(err.to_string().starts_with(&format!("page P2 was lost with client {dead} at epoch")), "{err}");
    assert!(later.write("P2", b"again").await.is_ok());
    assert_eq!(holder.read("P2").await?.0, b"again");
    cluster.shutdown().await;
    Ok(())
}

/// A fault held up by a silent owner says which client, and when it will be
/// evicted; an operator can evict it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_holder_is_named_and_can_be_evicted_at_once() -> Result<()> {
    let cluster = Cluster::start(ClusterMode::raft()).await?;
    let owner = client(&cluster, Duration::from_secs(5)).await?;
    let other = client(&cluster, Duration::from_millis(800)).await?;
    owner.write("P1", b"v").await?;
    let (dead, addr) = (owner.id(), owner.addr());
    owner.crash().await;

    let err = other.write("P1", b"w").await.expect_err("the owner does not answer yet");
    match &err {
        Error::ClientUnreachable { client, evict_in_ms: Some(_), .. } if *client == dead => {}
        other => panic!("expected the silent owner named with its eviction time, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&format!("client {dead} at {addr}")) && text.contains("evicted in"), "{text}");

    let removal = other.cm().evict(dead).await?;
    assert_eq!((removal.promoted, removal.lost), (0, 1));
    // The write that timed out had an unknown outcome: its fault went on at the
    // leader and, once the owner was evicted, created the lost page afresh.
    assert_eq!(other.read("P1").await?.0, b"w");
    let err = other.cm().evict(dead).await.expect_err("already gone");
    assert!(matches!(err, Error::UnknownClient { client } if client == dead), "{err:?}");
    cluster.shutdown().await;
    Ok(())
}

/// Faults run one at a time per page, not per client: a fault held up by a
/// silent holder does not hold up the same client's faults on other pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_page_does_not_stall_a_clients_other_pages() -> Result<()> {
    let cluster = Cluster::start(ClusterMode::raft()).await?;
    let silent = client(&cluster, Duration::from_secs(10)).await?;
    let alive = client(&cluster, Duration::from_secs(10)).await?;
    let busy = Arc::new(client(&cluster, Duration::from_secs(10)).await?);
    silent.write("SLOW", b"held by a client about to die").await?;
    alive.write("FAST", b"held by a live client").await?;
    silent.crash().await;

    let slow = {
        let busy = busy.clone();
        tokio::spawn(async move { busy.write("SLOW", b"w").await.map(|_| Instant::now()) })
    };
    // Once the slow fault has started, a fault on another page goes through.
    tokio::task::yield_now().await;
    let fast_started = Instant::now();
    busy.write("FAST", b"w").await?;
    let fast_done = Instant::now();
    let slow_done = slow.await??;
    println!("fast write {:?}, slow write done {:?} after it", fast_done - fast_started, slow_done - fast_done);
    assert!(fast_done < slow_done, "the write to FAST waited for the one held up on SLOW");
    cluster.shutdown().await;
    Ok(())
}
