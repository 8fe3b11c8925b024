//! `harness demo`: a seeded payment workload through the whole stack, checked and reported.
//!
//! Each payment is authorized, then voided or captured (fully or in two parts), sometimes
//! refunded, then synced. Afterwards the ledger is checked: one processor effect per operation
//! instance, amounts within bounds, every reply agreeing with the ledger, nothing unknown.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nats_bridge::{catalogue::ops, OperationRequest, Outcome, ResponseStatus};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::env::{EnvError, Environment, EnvironmentConfig};
use crate::nats::EnvConfig;
use crate::scenario::checkers::{self, Invariant, Violation};
use crate::stats::{ms, unix_time, Percentiles};

/// Why the demo stopped before its report.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The environment could not be started.
    #[error(transparent)]
    Environment(#[from] EnvError),
    /// The limit on payments in flight was closed.
    #[error(transparent)]
    Concurrency(#[from] tokio::sync::AcquireError),
    /// The report could not be encoded.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] std::io::Error),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Payments to run.
    pub payments: usize,
    /// Payments in flight at once.
    pub concurrency: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// On the 3-node cluster.
    pub cluster: bool,
    /// In-process workers.
    pub workers: usize,
    /// Where `demo-<seed>-<time>/` goes.
    pub report_dir: PathBuf,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { payments: 200, concurrency: 16, seed: 1, cluster: false, workers: 2, report_dir: PathBuf::from("reports") }
    }
}

/// One finished call.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    /// Operation name.
    pub operation: &'static str,
    /// Idempotency key of the instance.
    pub key: String,
    /// `ok` (worker replied), `failed` (definitely not applied) or `unknown`.
    pub outcome: &'static str,
    /// Reply status when ok.
    pub status: Option<ResponseStatus>,
    /// Processor reference when the worker reported one.
    pub transaction_id: Option<String>,
    /// Round trip.
    pub latency_us: u64,
}

/// The result of a demo run.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Seed.
    pub seed: u64,
    /// NATS backend and size.
    pub nats: String,
    /// Payments run.
    pub payments: usize,
    /// Wall time.
    pub duration_s: f64,
    /// Calls by outcome.
    pub outcomes: BTreeMap<String, usize>,
    /// Latency by operation.
    pub latency: BTreeMap<String, Percentiles>,
    /// Invariant violations (empty: passed).
    pub violations: Vec<Violation>,
    /// Effects in the ledger.
    pub effects: usize,
    /// The bridge's counters.
    pub bridge: nats_bridge::StatsSnapshot,
    /// Report directory.
    pub report: PathBuf,
}

async fn call(bridge: &nats_bridge::Bridge, r: &OperationRequest, log: &Mutex<Vec<Call>>) -> Option<nats_bridge::ResponseEnvelope> {
    let t = Instant::now();
    let result = bridge.call(r).await;
    let latency_us = t.elapsed().as_micros() as u64;
    let (outcome, reply) = match &result {
        Ok(reply) => ("ok", Some(reply.clone())),
        Err(e) if e.outcome() == Outcome::NotApplied => ("failed", None),
        Err(_) => ("unknown", None),
    };
    if let Err(e) = &result {
        tracing::warn!(operation = r.operation().name, error = %e, "call did not return a reply");
    }
    log.lock().expect("log").push(Call {
        operation: r.operation().name,
        key: r.envelope().idempotency_key.clone(),
        outcome,
        status: reply.as_ref().map(|r| r.status),
        transaction_id: reply.as_ref().and_then(|r| r.transaction_id.clone()),
        latency_us,
    });
    reply
}

fn ok(reply: &Option<nats_bridge::ResponseEnvelope>) -> bool {
    reply.as_ref().is_some_and(|r| r.status == ResponseStatus::Success)
}

async fn payment(bridge: nats_bridge::Bridge, seed: u64, i: usize, log: Arc<Mutex<Vec<Call>>>) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e3779b97f4a7c15) ^ i as u64);
    let merchant = format!("merchant_{}", i % 3);
    let pay = format!("pay_{seed}_{i}");
    let amount: i64 = rng.random_range(100..=5000);
    let money = |a: i64| json!({ "amount": a, "currency": "EUR" });
    let mut auth_data = money(amount);
    auth_data["payment_method"] = json!({ "card": { "number": "4111111111111111", "cvc": "737", "expiry": "03/30" } });
    let auth = OperationRequest::new(ops::authorize(), &merchant, &pay, format!("{pay}_1")).router_data(auth_data);
    if !ok(&call(&bridge, &auth, &log).await) {
        return;
    }
    let mut captured = 0;
    if rng.random_bool(0.15) {
        let void = OperationRequest::new(ops::void(), &merchant, &pay, "void_1");
        call(&bridge, &void, &log).await;
    } else {
        let parts = if rng.random_bool(0.3) { vec![amount / 2, amount - amount / 2] } else { vec![amount] };
        for (n, part) in parts.into_iter().enumerate() {
            let cap = OperationRequest::new(ops::capture(), &merchant, &pay, format!("cap_{}", n + 1)).router_data(money(part));
            if ok(&call(&bridge, &cap, &log).await) {
                captured += part;
            }
        }
        if captured > 0 && rng.random_bool(0.4) {
            let refund_amount = rng.random_range(1..=captured);
            let refund = OperationRequest::new(ops::refund(), &merchant, &pay, "ref_1").router_data(money(refund_amount));
            call(&bridge, &refund, &log).await;
        }
    }
    let sync = OperationRequest::new(ops::payment_sync(), &merchant, &pay, "sync_1");
    call(&bridge, &sync, &log).await;
}

/// Runs the demo and writes `summary.md` and `summary.json`.
pub async fn run(config: DemoConfig) -> Result<DemoReport, DemoError> {
    println!("seed: {}", config.seed);
    let env = Environment::start(EnvironmentConfig {
        nats: if config.cluster { EnvConfig::cluster() } else { EnvConfig::single() },
        workers: config.workers,
        ..Default::default()
    })
    .await?;
    let started = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let limit = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.payments {
        let permit = limit.clone().acquire_owned().await?;
        let (bridge, log) = (env.bridge().clone(), log.clone());
        tasks.spawn(async move {
            payment(bridge, config.seed, i, log).await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let duration = started.elapsed();
    let calls = std::mem::take(&mut *log.lock().expect("log"));
    let ledger = env.processor().ledger();
    let violations = check(&calls, &ledger, env.processor());

    let mut outcomes = BTreeMap::new();
    let mut by_op: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for c in &calls {
        *outcomes.entry(c.outcome.to_string()).or_insert(0) += 1;
        by_op.entry(c.operation.to_string()).or_default().push(Duration::from_micros(c.latency_us));
    }
    let dir = config.report_dir.join(format!("demo-{}-{}", config.seed, unix_time()));
    let report = DemoReport {
        seed: config.seed,
        nats: format!("{} x{}", env.nats().backend(), env.nats().node_count()),
        payments: config.payments,
        duration_s: duration.as_secs_f64(),
        outcomes,
        latency: by_op.iter().map(|(k, v)| (k.clone(), Percentiles::of_samples(v))).collect(),
        violations,
        effects: ledger.len(),
        bridge: env.bridge().stats(),
        report: dir.clone(),
    };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("summary.md"), markdown(&report))?;
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&report)?)?;
    let history: String = calls.iter().map(|c| serde_json::to_string(c).unwrap_or_default() + "\n").collect();
    std::fs::write(dir.join("calls.jsonl"), history)?;
    Ok(report)
}

/// The invariants, as a pure function of the calls and the ledger: the scenario checkers where
/// they apply (one effect per operation instance, amounts), and what a bridge-level run adds
/// (every reply agrees with the ledger; in a run without faults no outcome is left unknown).
fn check(calls: &[Call], ledger: &[mock_processor::Effect], processor: &mock_processor::Processor) -> Vec<Violation> {
    let mut violations = checkers::no_double_effect(ledger);
    let first_effect: HashMap<&str, &mock_processor::Effect> =
        ledger.iter().rev().filter_map(|e| Some((e.idempotency_key.as_deref()?, e))).collect();
    let broken = |invariant, message| Violation { invariant, payments: Vec::new(), message };
    for c in calls {
        match c.outcome {
            "unknown" => violations.push(broken(Invariant::Liveness, format!("unknown outcome for {} ({})", c.key, c.operation))),
            "ok" if c.operation != "payments.sync" => match (c.status, first_effect.get(c.key.as_str())) {
                (Some(ResponseStatus::Success), Some(e)) if c.transaction_id.as_deref() == Some(e.effect_id.as_str()) => {}
                (Some(ResponseStatus::Success), _) => {
                    violations.push(broken(Invariant::Agreement, format!("reply says success but the ledger disagrees for {}", c.key)))
                }
                (Some(ResponseStatus::Failure), Some(_)) => {
                    violations.push(broken(Invariant::Agreement, format!("reply says failure but the ledger has an effect for {}", c.key)))
                }
                _ => {}
            },
            _ => {}
        }
    }
    let payments: std::collections::BTreeSet<(&str, &str)> =
        ledger.iter().map(|e| (e.merchant_id.as_str(), e.payment_id.as_str())).collect();
    let accounts: Vec<_> = payments.into_iter().filter_map(|(m, p)| processor.account(m, p)).collect();
    violations.extend(checkers::amounts(&accounts));
    violations
}

/// The report as Markdown.
pub fn markdown(r: &DemoReport) -> String {
    let mut s = format!(
        "# Demo run\n\n- seed: {}\n- NATS: {}\n- payments: {}\n- duration: {:.2}s\n- processor effects: {}\n- verdict: **{}**\n\n",
        r.seed,
        r.nats,
        r.payments,
        r.duration_s,
        r.effects,
        if r.violations.is_empty() { "PASS" } else { "FAIL" }
    );
    s.push_str("## Outcomes\n\n| outcome | calls |\n|---|---:|\n");
    for (k, v) in &r.outcomes {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    s.push_str("\n## Latency\n\n| operation | count | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n");
    for (op, p) in &r.latency {
        s.push_str(&format!("| {op} | {} | {} | {} | {} |\n", p.count, ms(p.p50_us), ms(p.p99_us), ms(p.max_us)));
    }
    s.push_str("\n## Invariants\n\n");
    s.push_str("One processor effect per operation instance; captured <= authorized and refunded <= captured per payment; every reply agrees with the ledger; no outcome left unknown.\n\n");
    if r.violations.is_empty() {
        s.push_str("All held.\n");
    } else {
        for v in &r.violations {
            s.push_str(&format!("- {}: {}\n", v.invariant, v.message));
        }
    }
    s.push_str(&format!(
        "\n## Bridge counters\n\npublished {}, duplicates {}, replies {}, orphan replies {}, rejected replies {}, reply timeouts {}, queries {}\n",
        r.bridge.published, r.bridge.duplicates, r.bridge.replies, r.bridge.orphan_replies, r.bridge.rejected_replies, r.bridge.reply_timeouts, r.bridge.queries
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(key: &str, id: &str) -> mock_processor::Effect {
        serde_json::from_value(json!({
            "effect_id": id, "seq": 1, "operation": "payments.authorize", "merchant_id": "m", "payment_id": "p",
            "reference": "att_1", "amount": 10, "currency": "USD", "idempotency_key": key, "created_at_ms": 0
        }))
        .unwrap()
    }

    fn call(key: &str, outcome: &'static str, status: Option<ResponseStatus>, transaction_id: Option<&str>) -> Call {
        Call {
            operation: "payments.authorize",
            key: key.into(),
            outcome,
            status,
            transaction_id: transaction_id.map(str::to_string),
            latency_us: 1,
        }
    }

    #[test]
    fn the_demo_names_the_invariant_each_violation_breaks() {
        let processor = mock_processor::Processor::new(Default::default());
        let good = [call("k1", "ok", Some(ResponseStatus::Success), Some("eff_1"))];
        assert!(check(&good, &[effect("k1", "eff_1")], &processor).is_empty());
        let found = |calls: &[Call], ledger: &[mock_processor::Effect]| -> Vec<Invariant> {
            check(calls, ledger, &processor).into_iter().map(|v| v.invariant).collect()
        };
        assert_eq!(found(&good, &[effect("k1", "eff_1"), effect("k1", "eff_2")]), [Invariant::NoDoubleEffect]);
        assert_eq!(found(&good, &[]), [Invariant::Agreement]);
        let failed = [call("k1", "ok", Some(ResponseStatus::Failure), None)];
        assert_eq!(found(&failed, &[effect("k1", "eff_1")]), [Invariant::Agreement]);
        assert_eq!(found(&[call("k1", "unknown", None, None)], &[]), [Invariant::Liveness]);
    }
}
