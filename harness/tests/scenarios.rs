//! Fast variants of the scenario catalogue (`scenarios/*.toml`): each runs with its workload
//! and fault timeline scaled down, and must pass every invariant it names.

mod common;

use std::path::PathBuf;

use harness::scenario::runner::{run, RunOptions};
use harness::scenario::spec::Scenario;

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(format!("{name}.toml"));
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

async fn passes(name: &str, factor: f64) -> harness::scenario::report::RunReport {
    common::init_tracing();
    let s = scenario(name).scaled(factor);
    let dir = common::TempDir::new(&format!("scenario-{name}"));
    let report = run(&s, &RunOptions { seed: None, report_dir: dir.path().to_path_buf(), defect: None }).await.expect("the scenario runs");
    let summary = std::fs::read_to_string(report.dir.join("summary.md")).unwrap();
    assert!(report.verdict.passed(), "{name} failed:\n{summary}");
    assert!(report.dir.join("history.jsonl").exists() && report.dir.join("verdict.json").exists());
    assert!(report.verdict.accounting.ok > 0, "{name}: the workload ran");
    report
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
    let report = passes("worker-crash-after-processor", 0.6).await;
    assert!(report.worker_crashes >= 1, "a worker really died at the crash point");
}

#[tokio::test]
async fn nats_restart() {
    passes("nats-restart", 0.6).await;
}

#[tokio::test]
async fn cluster_partition() {
    let report = passes("cluster-partition", 0.6).await;
    assert!(report.verdict.checked.contains(&"zero_stuck"));
}

#[test]
fn every_scenario_file_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 3);
}
