//! The worker conformance kit (`harness conform`) against three workers: the Rust mock worker
//! and the Python sample worker pass; the mock worker with its ack-before-processor defect fails,
//! and the failed check names the reason.

mod common;

use std::path::PathBuf;

use harness::conform::{self, ConformConfig, ConformReport};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mock_worker() -> String {
    let binary = harness::workers::worker_binary().expect("the mock-worker binary (cargo build -p mock-worker)");
    format!("exec {}", binary.display())
}

async fn conform(worker_cmd: String) -> ConformReport {
    common::init_tracing();
    let report = conform::run(ConformConfig { worker_cmd, ..Default::default() }).await.expect("the kit runs");
    eprintln!("{}", report.table());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_worker_conforms() {
    let report = conform(mock_worker()).await;
    assert!(report.passed(), "the mock worker must conform:\n{}", report.table());
    // Not vacuous: every check ran.
    for name in [
        "ready",
        "durable_operations",
        "automatic_capture",
        "queries",
        "duplicate_lookup",
        "redelivery",
        "reused_key",
        "replay",
        "dead_letter",
        "ack_after_reply",
        "worker_alive",
    ] {
        assert!(report.check(name).is_some(), "check {name} did not run");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_acks_before_replying_fails_with_the_reason() {
    let report = conform(format!("WORKER_DEFECT_ACK_BEFORE_PROCESSOR=true {}", mock_worker())).await;
    assert!(!report.passed(), "an ack-first worker must not conform");
    let check = report.check("ack_after_reply").expect("the ack order was checked");
    assert!(!check.passed, "ack_after_reply must fail:\n{}", report.table());
    assert!(check.detail.starts_with("ack before reply:"), "the reason is named first: {}", check.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sample_worker_conforms() {
    let python = root().join(".venv/bin/python");
    let worker = root().join("docs/examples/python_worker/worker.py");
    let has_nats = std::process::Command::new(&python).args(["-c", "import nats"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(has_nats, "{} with nats-py is missing: run scripts/setup.sh", python.display());
    let report = conform(format!("exec {} {}", python.display(), worker.display())).await;
    assert!(report.passed(), "the Python sample worker must conform:\n{}", report.table());
}
