//! `ivy vm-worker` (hidden): one process of `ivy vm`. It maps the region, rank
//! 0 writes A and B, every worker computes its rows of C between two DSM
//! barriers, prints one JSON line per phase, and keeps serving its pages until
//! its stdin closes (the parent reads C from the workers' pages first).

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use ivy_raft::client::{Region, RegionOptions};
use serde_json::json;

use super::matmul::{self, Layout};
use super::{start_client, ClientArgs};

/// How long a barrier waits for the slowest worker (a leader kill included).
const BARRIER_TIMEOUT: Duration = Duration::from_secs(120);

/// Flags of `ivy vm-worker`.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// This worker's rank, 0-based.
    #[arg(long, env = "IVY_VM_RANK")]
    pub rank: usize,
    /// Worker processes in all.
    #[arg(long, env = "IVY_VM_WORKERS")]
    pub workers: usize,
    /// Matrix side.
    #[arg(long, env = "IVY_VM_N")]
    pub n: usize,
}

/// Runs one worker to its end.
pub async fn run(args: WorkerArgs) -> Result<()> {
    let client = Arc::new(start_client(&args.client).await?);
    let layout = Layout { n: args.n, workers: args.workers };
    let options = RegionOptions { unsafe_keep_stale: args.client.unsafe_keep_stale };
    let region = Region::map_with(&client, &args.client.region, layout.pages(), options)?;
    say(json!({"phase": "mapped", "client": client.id()}));
    let rank = args.rank;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let ran = work(&region, &layout, rank);
        if let Err(err) = &ran {
            say(json!({"phase": "failed", "error": format!("{err:#}")}));
        }
        // Serve this worker's pages until the parent closes stdin.
        for _ in std::io::stdin().lock().lines().map_while(Result::ok) {}
        drop(region);
        ran
    })
    .await?
}

fn work(region: &Region, layout: &Layout, rank: usize) -> Result<()> {
    if rank == 0 {
        matmul::init(region, layout).context("writing A and B")?;
    }
    matmul::barrier(region, layout, rank, 1, BARRIER_TIMEOUT)?;
    say(json!({"phase": "compute", "stats": region.stats()}));
    let started = Instant::now();
    matmul::compute(region, layout, rank).context("computing C")?;
    matmul::barrier(region, layout, rank, 2, BARRIER_TIMEOUT)?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    say(json!({"phase": "done", "compute_ms": ms, "stats": region.stats()}));
    Ok(())
}

/// One JSON line on stdout.
fn say(v: serde_json::Value) {
    println!("{v}");
}
