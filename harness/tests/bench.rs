//! `harness bench` in miniature: every part runs and lands in the report. No timing
//! assertions; the numbers themselves are for `cargo run --release -p harness -- bench`.

mod common;

use std::time::Duration;

use harness::bench::{BenchConfig, RateConfig, RatePath};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_round_trip_rate_memory_and_connections() {
    common::init_tracing();
    let dir = std::env::temp_dir().join(format!("hs-bench-test-{}", std::process::id()));
    let report = harness::bench::run(BenchConfig {
        iterations: 20,
        warmup: 5,
        block: 10,
        report_dir: dir.clone(),
        rate: RateConfig {
            steps: vec![50, 100],
            step: Duration::from_millis(500),
            // Generous: the test checks the plumbing, not the machine.
            p99_limit: Duration::from_secs(5),
            paths: vec![RatePath::Echo, RatePath::Full],
            attempts: 1,
            warmup: Duration::from_millis(200),
        },
        in_flight: 1000,
        harness_exe: Some(env!("CARGO_BIN_EXE_harness").into()),
        ..Default::default()
    })
    .await
    .expect("bench runs");

    // Warm-up is skipped block by block, so the counts are at most `iterations`.
    for p in [&report.raw_minimal, &report.raw, &report.bridge_echo, &report.bridge_full] {
        assert!(p.count > 0 && p.count <= 25, "{p:?}");
    }

    assert_eq!(report.rate.len(), 2);
    for ladder in &report.rate {
        assert!(!ladder.steps.is_empty(), "{:?}: no step ran", ladder.path);
        for step in &ladder.steps {
            assert!(step.sent > 0 && step.latency.count == step.sent, "{:?}: {step:?}", ladder.path);
        }
    }

    let memory = report.memory.as_ref().expect("memory probe ran");
    assert_eq!(memory.calls, 1000);
    assert_eq!(memory.waiting_at_sample, 1000, "every call was held in flight at the sample");
    assert_eq!((memory.completed, memory.errors), (1000, 0), "every held call completed after the release");
    assert!(memory.rss_base_kib > 0 && memory.rss_in_flight_kib > 0);
    assert_eq!(memory.connections.nodes, 1);

    // The connection counts were read from /connz (one server, the bridges are connected).
    assert_eq!(report.connections_after_load.nodes, 1);
    assert!(report.connections_after_load.total > 0);
    assert!(report.connections_max >= 1);
    assert!(report.targets.iter().any(|t| t.name.starts_with("NATS connections")));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.report.join("summary.json")).expect("summary.json")).expect("json");
    for key in ["raw", "bridge_echo", "ratio_p50", "rate", "memory", "connections_max", "targets", "passed"] {
        assert!(!json[key].is_null(), "summary.json lacks {key}");
    }
    let md = std::fs::read_to_string(report.report.join("summary.md")).expect("summary.md");
    for heading in
        ["## Targets", "## Authorize round trip", "## Maximum sustainable authorize rate", "## Memory with 1000", "## NATS connections"]
    {
        assert!(md.contains(heading), "summary.md lacks {heading}");
    }
    std::fs::remove_dir_all(dir).ok();
}
