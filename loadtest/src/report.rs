//! Turns what a run recorded into a verdict (validity, gates, disruption) and writes
//! `reports/<run-id>/`: `summary.json`, `summary.md`, `index.html`, `<op>.hgrm` and `<op>.hlog`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use harness::scenario::checkers::{Invariant, Verdict, Violation};
use harness::stats::Percentiles;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::faults::{self, AppliedFault, Disruption};
use crate::hgrm;
use crate::html::{self, FaultMark, HtmlReport, OpRow, Series};
use crate::ops::StatusClass;
use crate::record::{Recorded, Second};

/// The thresholds a run is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Our p99 target for every operation, ms.
    pub p99_target_ms: f64,
    /// p99 above which a second counts as disrupted, ms.
    pub disruption_p99_ms: f64,
    /// Errors allowed over the run.
    pub max_errors: u64,
    /// Validity: largest p99 lag of actual behind intended send time, ms.
    pub max_lag_p99_ms: f64,
    /// Validity: smallest achieved / target rate.
    pub min_rate_ratio: f64,
}

/// What the run was, besides what it recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// `load-<seed>-<unix time>`.
    pub run_id: String,
    /// The seed.
    pub seed: u64,
    /// Requests per second asked for.
    pub target_rate: f64,
    /// Length of the schedule, s.
    pub duration_s: f64,
    /// Requests in the schedule.
    pub scheduled: u64,
    /// Goose users.
    pub users: u64,
    /// The mix, `op=weight,...`.
    pub mix: String,
    /// The gateway loaded.
    pub url: String,
    /// What was loaded: the environment started here, or an external gateway.
    pub target: String,
    /// The command line.
    pub command: String,
    /// Wall-clock time of the schedule's start.
    #[serde(skip)]
    pub started: Option<SystemTime>,
}

/// The invariant checks after the load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Invariants {
    /// Whether every checked invariant held; `None` when none could be checked.
    pub passed: Option<bool>,
    /// Invariants checked.
    pub checked: Vec<Invariant>,
    /// Why the run could not be judged (a source that could not be read): a failure, never a pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What broke.
    pub violations: Vec<Violation>,
    /// Payments, operations and refunds still open when the checks ran.
    pub open_after_settle: usize,
    /// How long the system took to settle, s.
    pub settle_s: f64,
    /// Why nothing was checked, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Processor effects, gateway payments and stream messages the checkers read.
    pub observed: BTreeMap<String, usize>,
}

impl Invariants {
    /// From a checker verdict.
    pub fn from_verdict(v: &Verdict, open: usize, settle_s: f64, observed: BTreeMap<String, usize>) -> Invariants {
        Invariants {
            passed: Some(v.passed()),
            checked: v.checked.clone(),
            error: None,
            violations: v.violations.clone(),
            open_after_settle: open,
            settle_s,
            skipped: None,
            observed,
        }
    }

    /// Not judged: a source could not be read. The run fails with `reason`.
    pub fn unobserved(reason: String) -> Invariants {
        Invariants { passed: Some(false), error: Some(reason), ..Default::default() }
    }

    /// The checked invariants' names, comma-separated.
    pub fn checked_names(&self) -> String {
        self.checked.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
    }

    /// Nothing checked, for `reason`.
    pub fn skipped(reason: &str) -> Invariants {
        Invariants { skipped: Some(reason.to_string()), ..Default::default() }
    }
}

/// One operation in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    /// Requests.
    pub count: u64,
    /// Requests that did not end ok.
    pub errors: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Largest, µs.
    pub max_us: u64,
    /// Requests by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Requests by status class.
    pub status_classes: BTreeMap<String, u64>,
    /// Sent in place of another operation (no payment to act on).
    pub fallbacks: u64,
    /// The seeds' p99 target, ms.
    pub seed_target_ms: Option<f64>,
}

/// A threshold and how the run fared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    /// What is checked.
    pub name: String,
    /// The limit, in words.
    pub limit: String,
    /// What was measured.
    pub actual: String,
    /// Whether it held.
    pub passed: bool,
}

/// Lag of the actual behind the intended send time.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Lag {
    /// Largest, µs.
    pub max_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 99th percentile outside fault disruptions (what validity uses), µs.
    pub p99_outside_disruption_us: u64,
}

/// A fault in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct FaultSummary {
    /// The fault and when it happened.
    #[serde(flatten)]
    pub applied: AppliedFault,
    /// The disruption it caused: first to last second with errors or a p99 above target.
    pub disruption: Option<Disruption>,
}

/// One second of the run in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SecondSummary {
    /// Seconds from the start of the schedule.
    pub second: u64,
    /// Counters of the second.
    #[serde(flatten)]
    pub counts: Second,
    /// Per operation: (p50, p99) of the requests intended in this second, µs.
    pub latency_us: BTreeMap<String, (u64, u64)>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// What ran.
    #[serde(flatten)]
    pub info: RunInfo,
    /// Requests sent per second over the schedule.
    pub achieved_rate: f64,
    /// Whether the generator kept to its schedule (see `validity`).
    pub valid: bool,
    /// Why the run is invalid (empty when valid).
    pub validity: Vec<String>,
    /// Whether the run was valid, every gate held and no invariant broke.
    pub passed: bool,
    /// Requests sent.
    pub sent: u64,
    /// Requests that did not end ok.
    pub errors: u64,
    /// The generator's lag.
    pub lag: Lag,
    /// The thresholds.
    pub thresholds: Thresholds,
    /// Per operation.
    pub operations: BTreeMap<String, OpSummary>,
    /// Latency per status class, all operations.
    pub status_classes: BTreeMap<String, Percentiles>,
    /// Every gate.
    pub gates: Vec<Gate>,
    /// Faults applied.
    pub faults: Vec<FaultSummary>,
    /// The invariant checks.
    pub invariants: Invariants,
    /// Second by second: requests sent (by actual send time), intended, errors and the
    /// largest lag (by intended time), and each operation's p50 and p99.
    pub timeline: Vec<SecondSummary>,
    /// CPU and NATS traffic per request over the steady part of the run (see [`crate::cost`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<crate::cost::Cost>,
    /// The CPU profile, with `--profile` (see [`crate::profile`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::Profile>,
    /// Files of the report.
    pub files: Vec<String>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Whether second `s` was bad: an error, or some operation's p99 above `target_us`.
fn bad_second(rec: &Recorded, s: u64, target_us: u64) -> bool {
    rec.seconds.get(&s).is_some_and(|x| x.errors > 0)
        || rec.ops.values().any(|o| o.seconds.get(&s).is_some_and(|h| h.value_at_quantile(0.99) > target_us))
}

/// Judges a run.
pub fn summarize(info: RunInfo, rec: &Recorded, t: Thresholds, applied: Vec<AppliedFault>, invariants: Invariants) -> Summary {
    let target_us = (t.disruption_p99_ms * 1000.0) as u64;
    // Seconds of intended send time: 0 to the end of the schedule.
    let seconds = info.duration_s.ceil() as u64;
    // Each fault's disruption looks no further than the next fault.
    let mut faults = Vec::new();
    for (i, f) in applied.iter().enumerate() {
        let until = applied.get(i + 1).map(|n| n.spec.at.as_secs()).unwrap_or(seconds);
        let d = faults::disruption(f.spec.at.as_secs_f64(), until, |s| bad_second(rec, s, target_us));
        faults.push(FaultSummary { applied: f.clone(), disruption: d });
    }
    let disrupted = |s: u64| faults.iter().filter_map(|f| f.disruption).any(|d| (d.start_s..d.end_s).contains(&s));
    let mut outside: Histogram<u64> = crate::record::histogram();
    for (s, h) in &rec.lag_seconds {
        if !disrupted(*s) {
            let _ = outside.add(h);
        }
    }
    let lag = Lag {
        max_us: rec.lag.max(),
        p99_us: rec.lag.value_at_quantile(0.99),
        p50_us: rec.lag.value_at_quantile(0.5),
        p99_outside_disruption_us: outside.value_at_quantile(0.99),
    };
    // Sent over the schedule's length, or longer when the last send came later.
    let span = info.duration_s.max(rec.last_sent.as_secs_f64());
    let achieved_rate = if span > 0.0 { rec.sent as f64 / span } else { 0.0 };

    let mut validity = Vec::new();
    if rec.sent < info.scheduled {
        validity.push(format!("only {} of {} scheduled requests were sent", rec.sent, info.scheduled));
    }
    if achieved_rate < info.target_rate * t.min_rate_ratio {
        validity.push(format!(
            "achieved {achieved_rate:.1} req/s, below {:.0}% of the target {} req/s",
            t.min_rate_ratio * 100.0,
            info.target_rate
        ));
    }
    if ms(lag.p99_outside_disruption_us) > t.max_lag_p99_ms {
        validity.push(format!(
            "the generator fell behind its schedule: p99 lag {:.3} ms > {} ms (max {:.3} ms)",
            ms(lag.p99_outside_disruption_us),
            t.max_lag_p99_ms,
            ms(lag.max_us)
        ));
    }

    let mut operations = BTreeMap::new();
    let mut gates = Vec::new();
    for (op, r) in &rec.ops {
        let p = Percentiles::of_histogram(&r.total);
        operations.insert(
            op.name().to_string(),
            OpSummary {
                count: p.count,
                errors: r.errors(),
                p50_us: p.p50_us,
                p99_us: p.p99_us,
                p999_us: p.p999_us,
                max_us: p.max_us,
                outcomes: r.outcomes.iter().map(|(o, n)| (o.name().to_string(), *n)).collect(),
                status_classes: r.classes.iter().map(|(c, n)| (c.name().to_string(), *n)).collect(),
                fallbacks: r.fallbacks,
                seed_target_ms: op.seed_target_ms(),
            },
        );
        if let Some(seed) = op.seed_target_ms() {
            gates.push(Gate {
                name: format!("{op} p99 (seeds)"),
                limit: format!("< {seed} ms"),
                actual: format!("{:.3} ms", ms(p.p99_us)),
                passed: ms(p.p99_us) < seed,
            });
        }
        gates.push(Gate {
            name: format!("{op} p99 (ours)"),
            limit: format!("<= {} ms", t.p99_target_ms),
            actual: format!("{:.3} ms", ms(p.p99_us)),
            passed: ms(p.p99_us) <= t.p99_target_ms,
        });
    }
    let errors = rec.errors();
    gates.push(Gate {
        name: "errors".into(),
        limit: format!("<= {}", t.max_errors),
        actual: errors.to_string(),
        passed: errors <= t.max_errors,
    });
    let status_classes = rec.classes.iter().map(|(c, h)| (c.name().to_string(), Percentiles::of_histogram(h))).collect();
    let valid = validity.is_empty();
    let passed = valid && gates.iter().all(|g| g.passed) && invariants.passed != Some(false);
    let timeline = rec
        .seconds
        .iter()
        .map(|(second, counts)| SecondSummary {
            second: *second,
            counts: *counts,
            latency_us: rec
                .ops
                .iter()
                .filter_map(|(op, r)| {
                    r.seconds.get(second).map(|h| (op.name().to_string(), (h.value_at_quantile(0.5), h.value_at_quantile(0.99))))
                })
                .collect(),
        })
        .collect();
    Summary {
        info,
        achieved_rate,
        valid,
        validity,
        passed,
        sent: rec.sent,
        errors,
        lag,
        thresholds: t,
        operations,
        status_classes,
        gates,
        faults,
        invariants,
        timeline,
        cost: None,
        profile: None,
        files: Vec::new(),
    }
}

impl Summary {
    /// Why the run did not pass, one line each (empty when it passed).
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self.validity.iter().map(|v| format!("invalid run: {v}")).collect();
        for g in self.gates.iter().filter(|g| !g.passed) {
            out.push(format!("gate breached: {} is {}, limit {}", g.name, g.actual, g.limit));
        }
        if let Some(e) = &self.invariants.error {
            out.push(format!("invariants not judged: {e}"));
        }
        for v in &self.invariants.violations {
            out.push(format!("invariant violated: {}: {}", v.invariant, v.message));
        }
        out
    }
}

/// The cost section: CPU per request per role, NATS traffic per request.
fn cost_markdown(m: &mut String, c: &crate::cost::Cost) {
    let _ = writeln!(m, "\n## Cost per request\n");
    let _ = writeln!(
        m,
        "Measured from {:.0} s to {:.0} s of the schedule ({} requests): each role's threads' time on CPU (nats-server: its process), divided by the requests.\n",
        c.window_s[0], c.window_s[1], c.requests
    );
    let _ = writeln!(m, "| role | CPU ms per request | share |");
    let _ = writeln!(m, "|---|---:|---:|");
    let mut roles: Vec<(&String, &f64)> = c.cpu_ms_per_request.iter().collect();
    roles.sort_by(|a, b| b.1.total_cmp(a.1));
    for (role, ms) in roles {
        let share = if c.total_cpu_ms_per_request > 0.0 { 100.0 * ms / c.total_cpu_ms_per_request } else { 0.0 };
        let _ = writeln!(m, "| {role} | {ms:.3} | {share:.0}% |");
    }
    let _ = writeln!(m, "| **total** | **{:.3}** | {:.2} cores busy |", c.total_cpu_ms_per_request, c.cores_busy);
    let _ = writeln!(m, "| system under test (all but the generator) | {:.3} | |", c.sut_cpu_ms_per_request);
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let _ = writeln!(
        m,
        "\nNATS per request: {} messages in, {} messages out, {} JetStream stream writes.",
        opt(c.nats_in_msgs_per_request),
        opt(c.nats_out_msgs_per_request),
        opt(c.stream_writes_per_request)
    );
    for n in &c.notes {
        let _ = writeln!(m, "\n- {n}");
    }
}

/// The `summary.md` a person reads.
pub fn markdown(s: &Summary) -> String {
    let mut m = String::new();
    let i = &s.info;
    let _ = writeln!(m, "# Load run {}\n", i.run_id);
    let verdict = if s.passed { "PASS".to_string() } else { format!("FAIL ({} reason(s) below)", s.failures().len()) };
    let _ = writeln!(m, "**Verdict: {verdict}**\n");
    for f in s.failures() {
        let _ = writeln!(m, "- {f}");
    }
    if !s.passed {
        m.push('\n');
    }
    let _ = writeln!(m, "| | |\n|---|---|");
    let _ = writeln!(m, "| seed | {} (rerun with `--seed {}`) |", i.seed, i.seed);
    let _ = writeln!(m, "| command | `{}` |", i.command);
    let _ = writeln!(m, "| target | {} ({}) |", i.target, i.url);
    let _ =
        writeln!(m, "| schedule | {} req/s for {} s = {} requests, {} goose users |", i.target_rate, i.duration_s, i.scheduled, i.users);
    let _ = writeln!(m, "| mix (goose weights) | {} |", i.mix);
    let _ = writeln!(m, "| sent | {} ({} errors) |", s.sent, s.errors);
    let _ = writeln!(m, "| achieved rate | {:.1} req/s ({:.1}% of target) |", s.achieved_rate, 100.0 * s.achieved_rate / i.target_rate);
    let _ = writeln!(
        m,
        "| generator lag (actual - intended send) | p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; p99 outside fault disruptions {:.3} ms |",
        ms(s.lag.p50_us),
        ms(s.lag.p99_us),
        ms(s.lag.max_us),
        ms(s.lag.p99_outside_disruption_us)
    );
    let validity = if s.valid { "valid".to_string() } else { format!("INVALID: {}", s.validity.join("; ")) };
    let _ = writeln!(
        m,
        "| run | {validity} (valid: p99 lag <= {} ms and achieved >= {:.0}% of target, every request sent) |\n",
        s.thresholds.max_lag_p99_ms,
        s.thresholds.min_rate_ratio * 100.0
    );

    let _ = writeln!(m, "## Latency per operation\n");
    let _ = writeln!(m, "From each request's intended send time on the schedule to its whole answer, µs HdrHistograms (3 significant digits), shown in ms.\n");
    let _ = writeln!(m, "| operation | requests | errors | fallbacks | p50 ms | p99 ms | p99.9 ms | max ms | seeds' p99 | ours |");
    let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for (name, o) in &s.operations {
        let ours_ok = ms(o.p99_us) <= s.thresholds.p99_target_ms;
        let seed = match o.seed_target_ms {
            Some(t) if ms(o.p99_us) < t => format!("< {t} ms pass"),
            Some(t) => format!("< {t} ms **FAIL**"),
            None => "-".into(),
        };
        let _ = writeln!(
            m,
            "| {name} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {seed} | <= {} ms {} |",
            o.count,
            o.errors,
            o.fallbacks,
            ms(o.p50_us),
            ms(o.p99_us),
            ms(o.p999_us),
            ms(o.max_us),
            s.thresholds.p99_target_ms,
            if ours_ok { "pass" } else { "**FAIL**" }
        );
    }
    let _ = writeln!(m, "\nOutcomes: `ok` reached the state the operation aims at; errors are `undecided` (2xx `processing`/`pending`), `refused` (2xx in another state), `http_4xx`, `http_5xx`, `transport_error`. A fallback is a request sent in place of a capture, void, refund or read because its goose user had no payment to act on yet.\n");
    let _ = writeln!(m, "| operation | outcomes |\n|---|---|");
    for (name, o) in &s.operations {
        let outcomes: Vec<String> = o.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(m, "| {name} | {} |", outcomes.join(", "));
    }
    let _ = writeln!(m, "\n## By status class\n");
    let _ = writeln!(m, "| class | requests | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---:|---:|---:|---:|---:|");
    for (name, p) in &s.status_classes {
        let _ = writeln!(
            m,
            "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            p.count,
            ms(p.p50_us),
            ms(p.p99_us),
            ms(p.p999_us),
            ms(p.max_us)
        );
    }
    if !s.faults.is_empty() {
        let _ = writeln!(m, "\n## Faults\n");
        let _ = writeln!(m, "Disruption: first to last second (of intended send time) with an error or an operation's p99 above {} ms, from one second before the fault until {} good seconds in a row; recovery: from the fault to the end of the disruption.\n", s.thresholds.disruption_p99_ms, faults::QUIET_SECONDS);
        let _ = writeln!(m, "| fault | applied at s | over at s | disruption | time to recover |\n|---|---:|---:|---|---|");
        for f in &s.faults {
            let (window, recovery) = match f.disruption {
                Some(d) => (
                    format!("{} s to {} s", d.start_s, d.end_s),
                    if d.recovered { format!("{:.1} s", d.recovery_s) } else { format!("not recovered by {} s", d.end_s) },
                ),
                None => ("none seen".into(), "-".into()),
            };
            let error = f.applied.error.as_deref().map(|e| format!(" (failed: {e})")).unwrap_or_default();
            let _ = writeln!(
                m,
                "| {}{error} | {:.3} | {:.3} | {window} | {recovery} |",
                f.applied.spec, f.applied.started_s, f.applied.finished_s
            );
        }
    }
    if let Some(c) = &s.cost {
        cost_markdown(&mut m, c);
    }
    if let Some(p) = &s.profile {
        match &p.flamegraph {
            Some(svg) => {
                let _ = writeln!(
                    m,
                    "\nCPU profile: [`{svg}`]({svg}) (folded stacks in `{}`). perf's sampling adds to the CPU measured above.",
                    p.folded.as_deref().unwrap_or("-")
                );
            }
            None => {
                let _ = writeln!(m, "\nCPU profile: none.");
            }
        }
        for n in &p.notes {
            let _ = writeln!(m, "- {n}");
        }
    }
    let _ = writeln!(m, "\n## Invariants\n");
    let inv = &s.invariants;
    match (&inv.skipped, inv.passed) {
        (Some(why), _) => {
            let _ = writeln!(m, "Not checked: {why}.");
        }
        (None, _) if inv.error.is_some() => {
            let _ = writeln!(m, "NOT JUDGED: {}.", inv.error.as_deref().unwrap_or_default());
        }
        (None, passed) => {
            let word = if passed == Some(true) { "all held" } else { "VIOLATED" };
            let _ = writeln!(
                m,
                "{word}: {} — after {:.1} s of settling, {} item(s) still open.",
                inv.checked_names(),
                inv.settle_s,
                inv.open_after_settle
            );
            let observed: Vec<String> = inv.observed.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let _ = writeln!(m, "\nRead: {}.", observed.join(", "));
            for v in inv.violations.iter().take(50) {
                let _ = writeln!(m, "- {}: {} ({})", v.invariant, v.message, v.payments.join(", "));
            }
            if inv.violations.len() > 50 {
                let _ = writeln!(m, "- ... {} more in summary.json", inv.violations.len() - 50);
            }
        }
    }
    let _ = writeln!(m, "\n## Files\n");
    for f in &s.files {
        let _ = writeln!(m, "- `{f}`");
    }
    m
}

/// The data of `index.html`.
pub fn html_data(s: &Summary, rec: &Recorded) -> HtmlReport {
    let mut latency = Vec::new();
    for (n, (op, r)) in rec.ops.iter().enumerate() {
        let color = html::PALETTE[n % html::PALETTE.len()].to_string();
        // A second's value is drawn at its middle.
        let at = |q: f64| -> Vec<(f64, f64)> { r.seconds.iter().map(|(s, h)| (*s as f64 + 0.5, ms(h.value_at_quantile(q)))).collect() };
        latency.push(Series { label: format!("{op} p99"), color: color.clone(), dashed: false, points: at(0.99) });
        latency.push(Series { label: format!("{op} p50"), color, dashed: true, points: at(0.5) });
    }
    let last = rec.seconds.keys().next_back().copied().unwrap_or(0);
    let per_second = |f: &dyn Fn(&crate::record::Second) -> u64| -> Vec<(f64, f64)> {
        (0..=last).map(|s| (s as f64 + 0.5, rec.seconds.get(&s).map(f).unwrap_or(0) as f64)).collect()
    };
    let faults = s
        .faults
        .iter()
        .map(|f| FaultMark {
            at_s: f.applied.started_s,
            label: f.applied.spec.to_string(),
            window: f.disruption.map(|d| (d.start_s as f64, d.end_s as f64)),
        })
        .collect();
    let table = s
        .operations
        .iter()
        .map(|(name, o)| {
            let target = o.seed_target_ms.map_or(s.thresholds.p99_target_ms, |t| t.min(s.thresholds.p99_target_ms));
            OpRow {
                name: name.clone(),
                count: o.count,
                errors: o.errors,
                p50_ms: ms(o.p50_us),
                p99_ms: ms(o.p99_us),
                p999_ms: ms(o.p999_us),
                max_ms: ms(o.max_us),
                target_ms: Some(target),
                passed: s.gates.iter().filter(|g| g.name.starts_with(&format!("{name} p99"))).all(|g| g.passed),
            }
        })
        .collect();
    let i = &s.info;
    let verdict = if s.passed {
        "PASS: valid run, every gate and invariant held".to_string()
    } else {
        format!("FAIL: {}", s.failures().first().cloned().unwrap_or_default())
    };
    HtmlReport {
        title: format!("Load run {}", i.run_id),
        verdict,
        passed: s.passed,
        facts: vec![
            ("seed".into(), i.seed.to_string()),
            ("command".into(), i.command.clone()),
            ("target".into(), format!("{} ({})", i.target, i.url)),
            ("schedule".into(), format!("{} req/s for {} s, {} requests, {} users", i.target_rate, i.duration_s, i.scheduled, i.users)),
            ("mix".into(), i.mix.clone()),
            ("achieved".into(), format!("{:.1} req/s, {} sent, {} errors", s.achieved_rate, s.sent, s.errors)),
            ("generator lag".into(), format!("p99 {:.3} ms, max {:.3} ms", ms(s.lag.p99_us), ms(s.lag.max_us))),
            ("valid".into(), if s.valid { "yes".into() } else { format!("no: {}", s.validity.join("; ")) }),
            (
                "invariants".into(),
                match (&s.invariants.skipped, s.invariants.passed) {
                    (Some(why), _) => format!("not checked: {why}"),
                    (None, _) if s.invariants.error.is_some() => {
                        format!("not judged: {}", s.invariants.error.as_deref().unwrap_or_default())
                    }
                    (None, Some(true)) => format!("held: {}", s.invariants.checked_names()),
                    _ => format!("{} violation(s)", s.invariants.violations.len()),
                },
            ),
        ],
        duration_s: i.duration_s,
        target_rate: i.target_rate,
        p99_target_ms: Some(s.thresholds.p99_target_ms),
        latency,
        achieved: per_second(&|x| x.sent),
        errors: per_second(&|x| x.errors),
        faults,
        table,
        notes: s.failures(),
        files: s.files.iter().map(|f| (f.clone(), describe(f))).collect(),
    }
}

fn describe(file: &str) -> String {
    match file {
        "summary.json" => "every number of this page".into(),
        "summary.md" => "the same, to read".into(),
        f if f.starts_with("goose-report") => "goose's own report (its times start after its throttle, in whole ms)".into(),
        f if f.ends_with(".hgrm") => "percentile distribution (HdrHistogram outputPercentileDistribution, ms)".into(),
        f if f.ends_with(".hlog") => "1 s interval histograms (HdrHistogram log format, µs)".into(),
        _ => String::new(),
    }
}

/// Writes every file of the report into `dir`; returns their names.
pub fn write_all(dir: &Path, summary: &mut Summary, rec: &Recorded, extra: &[String]) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut texts: Vec<(String, String)> = Vec::new();
    for (op, r) in &rec.ops {
        texts.push((format!("{op}.hgrm"), hgrm::percentile_distribution(&r.total)));
        let start = summary.info.started.unwrap_or_else(SystemTime::now);
        let log = hgrm::interval_log(op.name(), start, &r.seconds).map_err(std::io::Error::other)?;
        texts.push((format!("{op}.hlog"), log));
    }
    for class in StatusClass::ALL {
        if let Some(h) = rec.classes.get(&class) {
            texts.push((format!("status-{}.hgrm", class.name()), hgrm::percentile_distribution(h)));
        }
    }
    texts.push(("lag.hgrm".into(), hgrm::percentile_distribution(&rec.lag)));
    let mut files: Vec<String> = vec!["index.html".into(), "summary.md".into(), "summary.json".into()];
    files.extend(texts.iter().map(|(n, _)| n.clone()));
    files.extend(extra.iter().cloned());
    summary.files = files;
    texts.push(("summary.md".into(), markdown(summary)));
    texts.push(("index.html".into(), html::render(&html_data(summary, rec))));
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    texts.push(("summary.json".into(), json + "\n"));
    let mut written = Vec::new();
    for (name, text) in texts {
        let path = dir.join(&name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{FaultKind, FaultSpec};
    use crate::ops::{Operation, Outcome};
    use crate::record::{Recorder, Sample};
    use std::time::Duration;

    fn info() -> RunInfo {
        RunInfo {
            run_id: "load-1-2".into(),
            seed: 1,
            target_rate: 10.0,
            duration_s: 10.0,
            scheduled: 100,
            users: 16,
            mix: "capture=1".into(),
            url: "http://127.0.0.1:1".into(),
            target: "test".into(),
            command: "loadtest".into(),
            started: None,
        }
    }

    fn thresholds() -> Thresholds {
        Thresholds { p99_target_ms: 20.0, disruption_p99_ms: 20.0, max_errors: 0, max_lag_p99_ms: 10.0, min_rate_ratio: 0.95 }
    }

    /// 10 req/s for 10 s; seconds 4 and 5 slow (50 ms) and second 4 with errors.
    fn recorded() -> Recorded {
        let r = Recorder::new();
        for i in 0..100u64 {
            let intended = Duration::from_millis(i * 100);
            let second = i / 10;
            let slow = second == 4 || second == 5;
            let outcome = if second == 4 && i % 2 == 0 { Outcome::ServerError } else { Outcome::Ok };
            r.record(&Sample {
                op: Operation::Capture,
                intended,
                sent: intended + Duration::from_micros(300),
                latency: Duration::from_millis(if slow { 50 } else { 2 }),
                class: if outcome == Outcome::Ok { StatusClass::Success } else { StatusClass::ServerError },
                outcome,
                fallback: false,
            });
        }
        r.snapshot()
    }

    #[test]
    fn gates_validity_and_disruption() {
        let rec = recorded();
        let fault = AppliedFault {
            spec: FaultSpec { kind: FaultKind::NatsRestart, at: Duration::from_millis(4_200) },
            started_s: 4.2,
            finished_s: 4.9,
            error: None,
        };
        let s = summarize(info(), &rec, thresholds(), vec![fault], Invariants::skipped("test"));
        assert!(s.valid, "{:?}", s.validity);
        assert!((s.achieved_rate - 10.0).abs() < 1e-9);
        assert_eq!(s.errors, 5);
        let cap = &s.operations["capture"];
        assert_eq!((cap.count, cap.errors), (100, 5));
        assert!(!s.passed);
        let failures = s.failures();
        assert!(failures.iter().any(|f| f.contains("capture p99 (ours)")), "{failures:?}");
        assert!(failures.iter().any(|f| f.contains("errors is 5")), "{failures:?}");
        assert!(!failures.iter().any(|f| f.contains("(seeds)")), "50 ms is within the seeds' 1 s");
        let d = s.faults[0].disruption.unwrap();
        assert_eq!((d.start_s, d.end_s), (4, 6));
        assert!((d.recovery_s - 1.8).abs() < 1e-9);
        assert_eq!(s.invariants.passed, None);
    }

    #[test]
    fn a_lagging_generator_makes_the_run_invalid() {
        let r = Recorder::new();
        for i in 0..50u64 {
            let intended = Duration::from_millis(i * 100);
            r.record(&Sample {
                op: Operation::Sync,
                intended,
                sent: intended + Duration::from_millis(40),
                latency: Duration::from_millis(41),
                class: StatusClass::Success,
                outcome: Outcome::Ok,
                fallback: false,
            });
        }
        let s = summarize(info(), &r.snapshot(), thresholds(), Vec::new(), Invariants::skipped("test"));
        assert!(!s.valid);
        assert!(s.validity.iter().any(|v| v.contains("only 50 of 100")), "{:?}", s.validity);
        assert!(s.validity.iter().any(|v| v.contains("p99 lag")), "{:?}", s.validity);
        assert!(s.validity.iter().any(|v| v.contains("below 95%")), "{:?}", s.validity);
    }

    #[test]
    fn files_are_written_and_the_json_has_the_fields() {
        let rec = recorded();
        let mut s = summarize(info(), &rec, thresholds(), Vec::new(), Invariants::skipped("test"));
        let dir = std::env::temp_dir().join(format!("loadtest-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_all(&dir, &mut s, &rec, &[]).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        for field in ["target_rate", "achieved_rate", "duration_s", "valid", "seed"] {
            assert!(!json[field].is_null(), "{field}");
        }
        for field in ["count", "errors", "p50_us", "p99_us", "p999_us", "max_us"] {
            assert!(json["operations"]["capture"][field].is_u64(), "{field}");
        }
        assert!(json["invariants"].get("passed").is_some() && json["invariants"]["violations"].is_array());
        assert_eq!(json["timeline"].as_array().unwrap().len(), 10);
        assert_eq!(json["timeline"][4]["errors"], 5);
        assert_eq!(json["timeline"][4]["latency_us"]["capture"][1].as_u64().unwrap() / 1000, 50);
        for f in ["index.html", "summary.md", "capture.hgrm", "capture.hlog", "lag.hgrm", "status-2xx.hgrm", "status-5xx.hgrm"] {
            assert!(dir.join(f).exists(), "{f}");
        }
        let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(md.contains("| capture | 100 | 5 |"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
