//! Run reports: `history.jsonl`, `verdict.json` and a `summary.md` a person reads.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::checkers::Verdict;
use super::history::{to_jsonl, Event, Kind};
use super::workload::Pacing;
use crate::stats::ms;

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// The seed every random choice came from.
    pub seed: u64,
    /// NATS backend and size.
    pub nats: String,
    /// Wall time, seconds.
    pub duration_s: f64,
    /// How the generator kept to its schedule.
    pub schedule: Pacing,
    /// Client calls whose outcome was unknown when they completed (before reconciliation).
    pub unknown_before_reconciliation: usize,
    /// Worker processes that died at a crash point.
    pub worker_crashes: usize,
    /// The checkers' verdict.
    pub verdict: Verdict,
    /// Where the report is.
    pub dir: PathBuf,
}

/// The summary.
pub fn markdown(r: &RunReport, history: &[Event]) -> String {
    let v = &r.verdict;
    let mut s = format!(
        "# Scenario {}\n\n- verdict: **{}**\n- seed: {} (rerun with `--seed {}` for the same fault schedule and choices)\n- NATS: {}\n- duration: {:.1}s; payments started: {} (max lag behind schedule {} ms)\n- worker processes killed at a crash point: {}\n\n",
        r.scenario,
        if v.passed() { "PASS" } else { "FAIL" },
        r.seed,
        r.seed,
        r.nats,
        r.duration_s,
        r.schedule.started,
        ms(r.schedule.max_lag_us),
        r.worker_crashes,
    );
    let a = &v.accounting;
    s.push_str("## Operations\n\n| ok | failed | unknown | lost | unexpected | recovered |\n|---:|---:|---:|---:|---:|---:|\n");
    s.push_str(&format!("| {} | {} | {} | {} | {} | {} |\n\n", a.ok, a.failed, a.unknown, a.lost, a.unexpected, a.recovered));
    s.push_str("`unknown`: the call completed without a definite answer (timeout, 5xx); `recovered`: its payment settled afterwards; `lost`: answered done but absent from the final state; `unexpected`: answered failed but present.\n\n");
    let faults: Vec<&Event> = history.iter().filter(|e| e.kind == Kind::Fault).collect();
    if !faults.is_empty() {
        s.push_str("## Faults\n\n| at ms | verb | phase |\n|---:|---|---|\n");
        for f in faults {
            s.push_str(&format!("| {} | {} | {} |\n", ms(f.time_us), f.f, f.value["phase"].as_str().unwrap_or("")));
        }
        s.push('\n');
    }
    s.push_str("## Latency (p99 from the intended send time)\n\n| call | p99 ms |\n|---|---:|\n");
    for (op, p) in &v.p99_us {
        s.push_str(&format!("| {op} | {} |\n", ms(*p)));
    }
    s.push_str(&format!("\n## Invariants\n\nChecked: {}.\n\n", v.checked.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")));
    if v.violations.is_empty() {
        s.push_str("All held.\n");
    } else {
        for x in &v.violations {
            s.push_str(&format!("- **{}**: {} (payments: {})\n", x.invariant, x.message, x.payments.join(", ")));
        }
    }
    s
}

/// Writes the three files.
pub fn write(dir: &Path, r: &RunReport, history: &[Event]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("history.jsonl"), to_jsonl(history))?;
    std::fs::write(dir.join("verdict.json"), serde_json::to_string_pretty(r).unwrap_or_default())?;
    std::fs::write(dir.join("summary.md"), markdown(r, history))?;
    Ok(())
}
