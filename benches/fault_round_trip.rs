//! Criterion benchmark of whole faults on an in-process 3-CM Raft cluster on
//! loopback: each iteration is one write fault (ownership moves) and one read
//! fault (the new owner downgrades), both committed through Raft and sled.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ivy_harness::cluster::{Cluster, ClusterMode};

fn fault_round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (cluster, a, b) = rt.block_on(async {
        let cluster = Cluster::start(ClusterMode::raft()).await.expect("cluster");
        let a = cluster.client().await.expect("client a");
        let b = cluster.client().await.expect("client b");
        a.write("P1", b"seed").await.expect("seed");
        (cluster, a, b)
    });
    let mut group = c.benchmark_group("in-process 3-CM Raft cluster");
    group.measurement_time(Duration::from_secs(10));
    let mut n = 0u64;
    group.bench_function("write fault + read fault", |bench| {
        bench.iter(|| {
            n += 1;
            rt.block_on(async {
                let (writer, reader) = if n.is_multiple_of(2) { (&a, &b) } else { (&b, &a) };
                writer.write("P1", format!("v{n}").as_bytes()).await.expect("write fault");
                reader.read("P1").await.expect("read fault");
            })
        })
    });
    group.finish();
    rt.block_on(cluster.shutdown());
}

criterion_group!(benches, fault_round_trip);
criterion_main!(benches);
