//! Shared virtual memory: regions mapped over DSM pages with userfaultfd.

mod support;

use std::sync::Arc;

use anyhow::Result;
use ivy_harness::cluster::{Cluster, ClusterMode};
use ivy_raft::client::Region;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_store_then_load() -> Result<()> {
    let cluster = Cluster::start(ClusterMode::raft()).await?;
    let a = Arc::new(cluster.client().await?);
    let b = Arc::new(cluster.client().await?);
    let ra = Region::map(&a, "m", 4)?;
    let rb = Region::map(&b, "m", 4)?;
    let (ra, rb) = tokio::task::spawn_blocking(move || -> Result<_> {
        ra.store_u64(0, 42)?;
        ra.store_u64(600, 7)?;
        assert_eq!(rb.load_u64(0)?, 42);
        assert_eq!(rb.load_u64(600)?, 7);
        rb.store_u64(1, 43)?;
        assert_eq!(ra.load_u64(1)?, 43);
        assert_eq!(ra.load_u64(0)?, 42);
        ra.store_u64(0, 44)?;
        assert_eq!(rb.load_u64(0)?, 44);
        println!("a {:?}\nb {:?}", ra.stats(), rb.stats());
        Ok((ra, rb))
    })
    .await??;
    tokio::task::spawn_blocking(move || drop((ra, rb))).await?;
    Ok(())
}
