//! `ivy bench --suite idle`: leader elections in an idle cluster on a loaded
//! machine.
//!
//! Starts 3 Raft CM processes and `--idle-clients` `ivy client --json`
//! processes that only register and renew their leases, then runs `--burners`
//! CPU-burning threads (bounded by the duration) for `--duration` while a
//! sampler asks every node's status every 100 ms. It counts elections started
//! (the nodes' `election` log events), term changes and leader changes, and
//! records the machine's load average. The target is no election at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

use super::procs::{start_clients, start_cms};
use ivy_raft::rpc::{Channels, ManagerClient};

/// What an idle run does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleConfig {
    /// How long, s.
    pub duration_s: u64,
    /// Idle client processes.
    pub clients: usize,
    /// CPU-burning threads.
    pub burners: usize,
    /// Extra flags for every `ivy cm` (e.g. Raft timers).
    pub cm_args: Vec<String>,
}

/// The result of an idle run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleResult {
    /// What ran.
    pub config: IdleConfig,
    /// Elections started on any node (its `election` log events) during the run.
    pub elections: usize,
    /// Pre-votes a node won (each followed by an election) during the run.
    pub prevotes_won: usize,
    /// Highest term seen at the start and at the end.
    pub term_start: u64,
    /// See `term_start`.
    pub term_end: u64,
    /// Times the serving node changed, by the 100 ms samples.
    pub leader_changes: usize,
    /// Samples in which no node served.
    pub samples_without_leader: usize,
    /// Samples taken (per node).
    pub samples: usize,
    /// One-minute load average: mean and highest of the samples (every 5 s).
    pub load_mean: f64,
    /// See `load_mean`.
    pub load_max: f64,
    /// Burner loop iterations per thread per second (how much CPU they got).
    pub burner_rate: f64,
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// One CPU burner: spins until `stop` or `until`; returns its iterations.
fn burn(stop: Arc<AtomicBool>, until: Instant) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        n += 1;
        std::hint::black_box(x);
    }
    n
}

/// Counts the lines of `log` from byte `from` on that contain `needle`.
fn count_in(log: &Path, from: u64, needle: &str) -> usize {
    let text = std::fs::read(log).unwrap_or_default();
    let tail = text.get(from as usize..).unwrap_or_default();
    String::from_utf8_lossy(tail).lines().filter(|l| l.contains(needle)).count()
}

/// Runs the suite; writes `idle.{json,txt}` under `out`.
pub async fn run(bin: &Path, out: &Path, cfg: &IdleConfig) -> Result<IdleResult> {
    let dir = out.join("runs").join("idle");
    std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let (cms, addrs) = start_cms(bin, &dir, &cfg.cm_args).await?;
    let clients = start_clients(bin, &dir, &addrs, cfg.clients, 5000).await?;
    // Let the start-up election and registrations settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs: Vec<_> = cms.0.keys().map(|id| dir.join(format!("cm-{id}.log"))).collect();
    let offsets: Vec<u64> = logs.iter().map(|l| std::fs::metadata(l).map_or(0, |m| m.len())).collect();
    let rpc = ManagerClient::new(Channels::new(Duration::from_millis(500), Default::default()));
    let by_id: BTreeMap<u64, String> = cms.0.iter().map(|(id, c)| (*id, c.addr.clone())).collect();
    let duration = Duration::from_secs(cfg.duration_s);
    let until = Instant::now() + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..cfg.burners)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || burn(stop, until))
        })
        .collect();
    let (mut term_start, mut term_end) = (None, 0u64);
    let (mut leader, mut leader_changes, mut without, mut samples) = (None, 0usize, 0usize, 0usize);
    let mut loads = Vec::new();
    let mut next_load = Instant::now();
    while Instant::now() < until {
        let mut serving = None;
        for (id, addr) in &by_id {
            if let Ok(s) = rpc.status(addr).await {
                term_start.get_or_insert(s.term);
                term_end = term_end.max(s.term);
                if s.serving {
                    serving = Some(*id);
                }
            }
        }
        samples += 1;
        match serving {
            None => without += 1,
            Some(id) if leader.is_some_and(|l| l != id) => {
                leader_changes += 1;
                leader = Some(id);
            }
            Some(id) => leader = Some(id),
        }
        if Instant::now() >= next_load {
            loads.extend(loadavg());
            next_load += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let iterations: u64 = burners.into_iter().map(|b| b.join().unwrap_or(0)).sum();
    let elections = logs.iter().zip(&offsets).map(|(l, o)| count_in(l, *o, "event=\"election\"")).sum();
    let prevotes_won = logs.iter().zip(&offsets).map(|(l, o)| count_in(l, *o, "pre-vote won by a majority")).sum();
    for c in &clients {
        c.quit().await;
    }
    cms.kill_all().await;
    let result = IdleResult {
        config: cfg.clone(),
        elections,
        prevotes_won,
        term_start: term_start.unwrap_or(0),
        term_end,
        leader_changes,
        samples_without_leader: without,
        samples,
        load_mean: loads.iter().sum::<f64>() / loads.len().max(1) as f64,
        load_max: loads.iter().copied().fold(0.0, f64::max),
        burner_rate: iterations as f64 / cfg.burners.max(1) as f64 / duration.as_secs_f64().max(1e-9),
    };
    let io = |p: &Path, e: std::io::Error| anyhow!("{}: {e}", p.display());
    for (name, body) in [
        ("idle.txt", text(&result)),
        ("idle.json", serde_json::to_string_pretty(&result).map_err(|e| anyhow!("json: {e}"))?),
    ] {
        let path = out.join(name);
        std::fs::write(&path, body).map_err(|e| io(&path, e))?;
    }
    Ok(result)
}

/// The text summary.
pub fn text(r: &IdleResult) -> String {
    let c = &r.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== idle: 3 Raft CM processes, {} idle client processes, {} CPU burners, {} s",
        c.clients, c.burners, c.duration_s
    );
    if !c.cm_args.is_empty() {
        let _ = writeln!(out, "CM flags: {}", c.cm_args.join(" "));
    }
    let _ = writeln!(out, "load average (1 min): mean {:.2}, max {:.2}", r.load_mean, r.load_max);
    let _ = writeln!(
        out,
        "elections started: {} (pre-votes won: {}); term {} -> {}; leader changes: {}",
        r.elections, r.prevotes_won, r.term_start, r.term_end, r.leader_changes
    );
    let _ = writeln!(out, "status samples with no serving node: {} of {}", r.samples_without_leader, r.samples);
    out
}
