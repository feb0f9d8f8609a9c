//! Criterion benchmarks of one unary gRPC call on loopback: our channel
//! (`ivy_raft::rpc::net::channel`, which sends a call's HEADERS and DATA in one
//! write) side by side with tonic's own `Channel`, against the same tonic
//! server (the gRPC health service), one call at a time and 16 at once.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::future::join_all;
use ivy_raft::rpc::{net, Security, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Calls in flight at once in the concurrent benchmark.
const AT_ONCE: usize = 16;

async fn call<T>(client: &mut HealthClient<T>)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    client.check(HealthCheckRequest { service: String::new() }).await.expect("health check");
}

fn calls(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (_server, addr) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address").to_string();
        let (_, health) = tonic_health::server::health_reporter();
        (Server::spawn(tonic::transport::Server::builder().add_service(health), listener), addr)
    });
    let ours = rt.block_on(async { net::channel(&addr, Duration::from_secs(5), &Security::default()) });
    let ours = HealthClient::new(ours.expect("our channel"));
    let tonics = rt.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
        endpoint.tcp_nodelay(true).timeout(Duration::from_secs(5)).connect_lazy()
    });
    let tonics = HealthClient::new(tonics);
    let mut group = c.benchmark_group("unary call, loopback");
    group.measurement_time(Duration::from_secs(6));
    group.bench_function(BenchmarkId::new("one at a time", "ours"), |b| {
        b.iter_custom(|iters| rt.block_on(in_turn(&ours, iters)))
    });
    group.bench_function(BenchmarkId::new("one at a time", "tonic Channel"), |b| {
        b.iter_custom(|iters| rt.block_on(in_turn(&tonics, iters)))
    });
    group.bench_function(BenchmarkId::new("16 at once", "ours"), |b| {
        b.iter_custom(|iters| rt.block_on(at_once(&ours, iters)))
    });
    group.bench_function(BenchmarkId::new("16 at once", "tonic Channel"), |b| {
        b.iter_custom(|iters| rt.block_on(at_once(&tonics, iters)))
    });
    group.finish();
}

/// Time for `iters` calls, one after another.
async fn in_turn<T>(client: &HealthClient<T>, iters: u64) -> Duration
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut client = client.clone();
    let start = Instant::now();
    for _ in 0..iters {
        call(&mut client).await;
    }
    start.elapsed()
}

/// Time for `iters` rounds of [`AT_ONCE`] concurrent calls.
async fn at_once<T>(client: &HealthClient<T>, iters: u64) -> Duration
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let start = Instant::now();
    for _ in 0..iters {
        join_all((0..AT_ONCE).map(|_| {
            let mut client = client.clone();
            async move { call(&mut client).await }
        }))
        .await;
    }
    start.elapsed()
}

criterion_group!(benches, calls);
criterion_main!(benches);
