//! Criterion benchmarks of whole faults on in-process CM clusters on loopback,
//! Raft (3 nodes, log synced with `fdatasync`) side by side with the heartbeat
//! baseline (2 nodes, nothing synced), one client acting at a time:
//!
//! - **read fault**: a client with no copy reads the page the other client owns
//!   (forward, downgrade, commit, confirm). The write that sets it up is not timed.
//! - **write fault**: the two clients take turns writing one page, so every write
//!   moves ownership (invalidate, forward, commit, confirm).
//! - **commit of one command** (Raft only): one directory command on the leader,
//!   alone in its log entry; no fault around it.
//! - **commit of a batch** (Raft only): 16 directory commands proposed at once on
//!   the leader, which the proposer packs into log entries; no fault around them.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::future::join_all;
use ivy_harness::cluster::{Cluster, ClusterMode};
use ivy_raft::client::Client;
use ivy_raft::protocol::{Caps, DirCmd};

/// Commands in one batch of the commit benchmark.
const BATCH: usize = 16;

struct Setup {
    cluster: Cluster,
    a: Client,
    b: Client,
}

async fn setup(mode: ClusterMode) -> Setup {
    let cluster = Cluster::start(mode).await.expect("cluster");
    let a = cluster.client().await.expect("client a");
    let b = cluster.client().await.expect("client b");
    a.write("P1", b"seed").await.expect("seed");
    Setup { cluster, a, b }
}

fn modes() -> [(&'static str, ClusterMode); 2] {
    [("raft", ClusterMode::raft()), ("heartbeat", ClusterMode::heartbeat(ivy_raft::cm::DEFAULT_PULSE))]
}

fn faults(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut group = c.benchmark_group("fault, in-process cluster");
    group.measurement_time(Duration::from_secs(8));
    for (name, mode) in modes() {
        let s = rt.block_on(setup(mode));
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new("read fault", name), |bench| {
            bench.iter_custom(|iters| {
                rt.block_on(async {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        n += 1;
                        let (owner, reader) = if n.is_multiple_of(2) { (&s.a, &s.b) } else { (&s.b, &s.a) };
                        owner.write("P1", format!("v{n}").as_bytes()).await.expect("write fault");
                        let start = Instant::now();
                        reader.read("P1").await.expect("read fault");
                        spent += start.elapsed();
                    }
                    spent
                })
            })
        });
        group.bench_function(BenchmarkId::new("write fault", name), |bench| {
            bench.iter(|| {
                n += 1;
                let writer = if n.is_multiple_of(2) { &s.a } else { &s.b };
                rt.block_on(writer.write("P1", format!("v{n}").as_bytes())).expect("write fault");
            })
        });
        rt.block_on(s.cluster.shutdown());
    }
    group.finish();
}

fn commit_batch(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cluster = rt.block_on(Cluster::start(ClusterMode::raft())).expect("cluster");
    let leader = rt.block_on(cluster.wait_leader(Duration::from_secs(10))).expect("leader");
    let node = cluster.node(leader).expect("leader node");
    let mut group = c.benchmark_group("Raft commit, in-process cluster");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("one command", |bench| {
        bench.iter(|| rt.block_on(node.commit(DirCmd::SetCaps { caps: Caps::default() })).expect("commit"))
    });
    group.bench_function(format!("batch of {BATCH} commands"), |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let cmds = (0..BATCH).map(|_| node.commit(DirCmd::SetCaps { caps: Caps::default() }));
                for applied in join_all(cmds).await {
                    applied.expect("commit");
                }
            })
        })
    });
    group.finish();
    rt.block_on(cluster.shutdown());
}

criterion_group!(benches, faults, commit_batch);
criterion_main!(benches);
