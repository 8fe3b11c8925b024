//! Fast variants of the scenario catalogue (`scenarios/*.toml`): each runs with its workload
//! and fault timeline scaled down, and must pass every invariant it names. The scenarios that
//! catch a defect run (correct system) in `defects.rs`; every other file runs here, and
//! `every_scenario_has_a_fast_variant` keeps the two lists complete.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use harness::scenario::history::Kind;
use harness::scenario::report::RunReport;
use harness::scenario::runner::{run, RunOptions};
use harness::scenario::spec::Scenario;

/// The scenarios this file runs.
const HERE: [&str; 22] = [
    "happy-path",
    "worker-kill",
    "processor-down",
    "worker-crash-after-processor",
    "worker-latency",
    "nats-restart",
    "cluster-node-kill",
    "cluster-partition",
    "cluster-pause",
    "rolling-restart",
    "timeout",
    "late-reply",
    "worker-error",
    "duplicate",
    "concurrent-duplicates",
    "idempotency",
    "replay",
    "dead-letter",
    "circuit-breaker",
    "network-failure",
    "network-latency",
    "sync-always",
];

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(format!("{name}.toml"));
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `name` scaled by `factor` and asserts it passes; returns the report and its history.
async fn passes(name: &str, factor: f64) -> (RunReport, Vec<harness::scenario::history::Event>) {
    common::init_tracing();
    let s = scenario(name).scaled(factor);
    let dir = common::TempDir::new(&format!("scenario-{name}"));
    let report = run(&s, &RunOptions { seed: None, report_dir: dir.path().to_path_buf(), defect: None }).await.expect("the scenario runs");
    let summary = std::fs::read_to_string(report.dir.join("summary.md")).unwrap();
    assert!(report.verdict.passed(), "{name} failed:\n{summary}");
    assert!(report.dir.join("history.jsonl").exists() && report.dir.join("verdict.json").exists());
    assert!(report.verdict.accounting.ok > 0, "{name}: the workload ran");
    let history = std::fs::read_to_string(report.dir.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("history lines parse"))
        .collect();
    for invariant in &s.expect.invariants {
        assert!(report.verdict.checked.iter().any(|c| c == invariant), "{name}: {invariant} was not checked");
    }
    (report, history)
}

/// The error codes of the history's completions.
fn error_codes(history: &[harness::scenario::history::Event]) -> Vec<String> {
    history.iter().filter(|e| e.is_completion()).filter_map(|e| e.value["error_code"].as_str().map(str::to_string)).collect()
}

#[tokio::test]
async fn happy_path() {
    passes("happy-path", 0.4).await;
}

#[tokio::test]
async fn worker_kill() {
    passes("worker-kill", 0.6).await;
}

#[tokio::test]
async fn processor_down() {
    passes("processor-down", 0.6).await;
}

#[tokio::test]
async fn worker_crash_after_processor() {
    let (report, _) = passes("worker-crash-after-processor", 0.6).await;
    assert!(report.worker_crashes >= 1, "a worker really died at the crash point");
}

#[tokio::test]
async fn worker_latency() {
    passes("worker-latency", 0.6).await;
}

#[tokio::test]
async fn nats_restart() {
    passes("nats-restart", 0.6).await;
}

#[tokio::test]
async fn cluster_node_kill() {
    passes("cluster-node-kill", 0.6).await;
}

#[tokio::test]
async fn cluster_partition() {
    let (report, _) = passes("cluster-partition", 0.6).await;
    assert!(report.verdict.checked.contains(&harness::scenario::checkers::Invariant::ZeroStuck));
}

#[tokio::test]
async fn cluster_pause() {
    passes("cluster-pause", 0.6).await;
}

#[tokio::test]
async fn rolling_restart() {
    passes("rolling-restart", 0.6).await;
}

#[tokio::test]
async fn timeout() {
    // The 12 s worker latency is not scaled: it must outlast the call and the recovery threshold.
    let (report, history) = passes("timeout", 0.6).await;
    assert!(report.unknown_before_reconciliation > 0, "calls timed out and were unknown");
    assert_eq!(report.verdict.accounting.recovered, report.unknown_before_reconciliation, "every unknown call settled");
    assert!(
        !history.iter().any(|e| e.kind == Kind::Failed && e.value["error_code"] == "CONNECTOR_TIMEOUT"),
        "a timeout is never reported failed to the caller"
    );
}

#[tokio::test]
async fn late_reply() {
    let (report, _) = passes("late-reply", 0.6).await;
    assert!(report.unknown_before_reconciliation > 0, "calls outlived the bridge's reply timeout");
}

#[tokio::test]
async fn worker_error() {
    let (_, history) = passes("worker-error", 0.6).await;
    assert!(error_codes(&history).iter().any(|c| c == "WORKER_ERROR"), "workers answered with errors");
}

#[tokio::test]
async fn duplicate() {
    let (_, history) = passes("duplicate", 0.6).await;
    let published = history.iter().find(|e| e.f == "duplicates" && e.value["phase"] == "result").expect("the publish duplicates ran");
    let detail = &published.value["detail"];
    assert!(detail["republished"].as_u64().unwrap() > 0);
    assert_eq!(detail["republished"], detail["reported_duplicate"], "JetStream dropped every republished message as a duplicate");
}

#[tokio::test]
async fn concurrent_duplicates() {
    passes("concurrent-duplicates", 0.6).await;
}

#[tokio::test]
async fn idempotency() {
    let (report, _) = passes("idempotency", 0.6).await;
    assert!(report.worker_crashes >= 1, "a worker died after charging");
}

#[tokio::test]
async fn replay() {
    passes("replay", 0.6).await;
}

#[tokio::test]
async fn dead_letter() {
    passes("dead-letter", 0.6).await;
}

#[tokio::test]
async fn circuit_breaker() {
    // Not scaled: the outage must outlast five consecutive call timeouts, and the workload the
    // breaker's open period.
    let (_, history) = passes("circuit-breaker", 1.0).await;
    assert!(error_codes(&history).iter().any(|c| c == "CIRCUIT_OPEN"));
}

#[tokio::test]
async fn network_failure() {
    passes("network-failure", 0.6).await;
}

#[tokio::test]
async fn network_latency() {
    passes("network-latency", 0.6).await;
}

#[tokio::test]
async fn sync_always() {
    let (report, _) = passes("sync-always", 0.6).await;
    assert!(report.nats.contains("sync_interval always"), "{}", report.nats);
}

#[test]
fn every_scenario_has_a_fast_variant() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(Some(s.name.as_str()), path.file_stem().and_then(|f| f.to_str()), "a scenario's name is its file name");
            files.insert(s.name);
        }
    }
    let mut covered: BTreeSet<String> = HERE.iter().map(|s| s.to_string()).collect();
    // Run (correct system) by defects.rs.
    covered.extend(harness::defects::DEFECTS.iter().map(|d| d.caught_by.to_string()));
    // The baseline of the sync pair: sync-always is its fast variant; the pair's comparison is a
    // report, not a test.
    covered.insert("sync-default".to_string());
    assert_eq!(files, covered, "scenario files and fast variants differ");
}
