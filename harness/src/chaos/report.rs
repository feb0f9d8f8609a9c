//! The run's report: counts, faults, the longest unavailability and the verdict.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::checker::{not_clean as not_clean_reasons, write_verdict_line, Verdict};
use super::history::{History, Op, Outcome};
use super::netns_run::CutRecovery;
use super::ChaosConfig;
use anyhow::{anyhow, Result};

/// The summary of one chaos run, also written as `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "raft" or "heartbeat".
    pub mode: String,
    /// The schedule's seed.
    pub seed: u64,
    /// Workload duration, seconds.
    pub duration_s: u64,
    /// Client processes and workers each.
    pub clients: usize,
    /// Workers per client.
    pub workers: usize,
    /// Pages.
    pub pages: usize,
    /// Workload operations that succeeded.
    pub ops_ok: usize,
    /// Workload operations that returned an error.
    pub ops_failed: usize,
    /// Workload operations with no answer in time.
    pub ops_unknown: usize,
    /// Final reads that succeeded, of all final reads.
    pub final_reads_ok: usize,
    /// Final reads attempted.
    pub final_reads: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Longest time with no successful operation during the workload, ms.
    pub longest_unavailability_ms: f64,
    /// True when a leader was back after healing.
    pub recovered: bool,
    /// What the checker found.
    pub verdict: Verdict,
    /// True when the run passes: recovered, every final read answered, clean verdict.
    pub clean: bool,
    /// Why the run does not pass, one reason per failed condition (empty when clean).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_clean: Vec<String>,
    /// The first final reads that failed, each with its page, client and error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub final_read_failures: Vec<String>,
    /// Each real partition of a `--net netns` run and the recovery after it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cuts: Vec<CutRecovery>,
}

impl Report {
    /// Summarises a run.
    pub fn new(cfg: &ChaosConfig, history: &History, verdict: Verdict, recovered: bool) -> Self {
        let (ops, faults) = (&history.ops, &history.faults);
        let work: Vec<&Op> = ops.iter().filter(|o| !o.last).collect();
        let count = |o: Outcome| work.iter().filter(|op| op.outcome == o).count();
        let finals: Vec<&Op> = ops.iter().filter(|o| o.last).collect();
        let final_ok = finals.iter().filter(|o| o.outcome == Outcome::Ok).count();
        let mut by_kind = BTreeMap::new();
        for f in faults {
            *by_kind.entry(f.kind.clone()).or_insert(0) += 1;
        }
        let mut not_clean = Vec::new();
        if !recovered {
            not_clean.push("no CM node led after healing".to_string());
        }
        not_clean.extend(not_clean_reasons(&verdict, final_ok, finals.len()));
        let final_read_failures = finals
            .iter()
            .filter(|o| o.outcome != Outcome::Ok)
            .take(MAX_FAILURES_SHOWN)
            .map(|o| {
                let error = o.error.as_deref().unwrap_or("no answer");
                format!("{} by client {}: {error}", o.page, o.process)
            })
            .collect();
        Report {
            mode: cfg.mode.name().to_string(),
            seed: cfg.seed,
            duration_s: cfg.duration.as_secs(),
            clients: cfg.clients,
            workers: cfg.workers,
            pages: cfg.pages,
            ops_ok: count(Outcome::Ok),
            ops_failed: count(Outcome::Fail),
            ops_unknown: count(Outcome::Unknown),
            final_reads_ok: final_ok,
            final_reads: finals.len(),
            faults: by_kind,
            longest_unavailability_ms: longest_gap(&work, cfg.duration.as_nanos() as u64),
            recovered,
            verdict,
            clean: not_clean.is_empty(),
            not_clean,
            final_read_failures,
            cuts: Vec::new(),
        }
    }

    /// Writes `report.json`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| anyhow!("encode report: {e}"))?;
        std::fs::write(path, json).map_err(|e| anyhow!("{}: {e}", path.display()))
    }
}

/// How many failed final reads a report names.
const MAX_FAILURES_SHOWN: usize = 8;

/// The longest stretch of the workload with no operation returning success.
fn longest_gap(work: &[&Op], duration_ns: u64) -> f64 {
    let mut done: Vec<u64> = work.iter().filter(|o| o.outcome == Outcome::Ok).filter_map(|o| o.return_ns).collect();
    done.sort_unstable();
    let start = work.iter().map(|o| o.invoke_ns).min().unwrap_or(0);
    let mut last = start;
    let mut longest = 0;
    for t in done.iter().copied().chain(std::iter::once(start + duration_ns)) {
        longest = longest.max(t.saturating_sub(last));
        last = last.max(t);
    }
    longest as f64 / 1e6
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "chaos report: {} mode, seed {}, {} s, {} clients x {} workers, {} pages",
            self.mode, self.seed, self.duration_s, self.clients, self.workers, self.pages
        )?;
        writeln!(
            f,
            "  ops: {} ok, {} failed, {} unknown; final reads {}/{} ok",
            self.ops_ok, self.ops_failed, self.ops_unknown, self.final_reads_ok, self.final_reads
        )?;
        for failure in &self.final_read_failures {
            writeln!(f, "    final read of {failure}")?;
        }
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "  faults: {}", if faults.is_empty() { "none".into() } else { faults.join(", ") })?;
        writeln!(
            f,
            "  longest unavailability: {:.0} ms; recovered: {}",
            self.longest_unavailability_ms, self.recovered
        )?;
        writeln!(f, "{}", self.verdict)?;
        write_cuts(f, &self.cuts)?;
        write_verdict_line(f, &self.not_clean)
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("none".into(), |ms| format!("{ms:.0} ms"))
}

/// The cuts of a netns run, then median and max per kind.
fn write_cuts(f: &mut std::fmt::Formatter<'_>, cuts: &[CutRecovery]) -> std::fmt::Result {
    for c in cuts {
        writeln!(
            f,
            "  cut at {:.1} s: {} held {} ms; first fault after the cut {}, after the heal {}; leader changed after the heal: {}",
            c.at_s, c.kind, c.held_ms, ms(c.after_cut_ms), ms(c.after_heal_ms), c.leader_changed_after_heal
        )?;
    }
    let mut kinds: Vec<&str> = cuts.iter().map(|c| c.kind.as_str()).collect();
    kinds.dedup();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        let of = |pick: fn(&CutRecovery) -> Option<f64>| {
            let mut v: Vec<f64> = cuts.iter().filter(|c| c.kind == kind).filter_map(pick).collect();
            v.sort_by(f64::total_cmp);
            (v.get(v.len().saturating_sub(1) / 2).copied(), v.last().copied())
        };
        let ((cut_med, cut_max), (heal_med, heal_max)) = (of(|c| c.after_cut_ms), of(|c| c.after_heal_ms));
        let changes = cuts.iter().filter(|c| c.kind == kind && c.leader_changed_after_heal).count();
        writeln!(
            f,
            "  {kind}: after the cut median {} max {}; after the heal median {} max {}; leader changes after heals {changes}",
            ms(cut_med), ms(cut_max), ms(heal_med), ms(heal_max)
        )?;
    }
    Ok(())
}
