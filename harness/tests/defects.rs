//! The defect catalogue: every deliberately broken variant fails the scenario it names, with a
//! violation of the invariant it names; the correct system passes those scenarios.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use harness::defects::{Defect, DEFECTS};
use harness::scenario::report::RunReport;
use harness::scenario::runner::{run, RunOptions};
use harness::scenario::spec::Scenario;

/// Runs a scenario (scaled down); returns its report and summary (the directory is removed).
async fn run_scenario(name: &str, defect: Option<&'static Defect>) -> (RunReport, String) {
    common::init_tracing();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(format!("{name}.toml"));
    let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}")).scaled(0.6);
    let dir = common::TempDir::new(&format!("defect-{name}"));
    let report = run(&scenario, &RunOptions { seed: None, report_dir: dir.path().to_path_buf(), defect: defect.map(Defect::switches) })
        .await
        .expect("the scenario runs");
    let summary = std::fs::read_to_string(report.dir.join("summary.md")).expect("summary written");
    (report, summary)
}

async fn caught(name: &str) {
    let defect = harness::defects::find(name).expect("catalogued");
    let (report, summary) = run_scenario(defect.caught_by, Some(defect)).await;
    assert!(!report.verdict.passed(), "{name} was not caught by {}:\n{summary}", defect.caught_by);
    assert!(
        report.verdict.violations.iter().any(|v| v.invariant == defect.invariant),
        "{name}: expected a {} violation, got {:?}",
        defect.invariant,
        report.verdict.violations.iter().map(|v| (v.invariant, v.message.as_str())).take(5).collect::<Vec<_>>()
    );
}

#[test]
fn the_catalogue_is_consistent() {
    let names: BTreeSet<_> = DEFECTS.iter().map(|d| d.name).collect();
    assert_eq!(names.len(), DEFECTS.len());
    for d in DEFECTS {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(format!("{}.toml", d.caught_by));
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", d.name));
        assert!(s.expect.invariants.contains(&d.invariant), "{}: {} does not check {}", d.name, d.caught_by, d.invariant);
    }
}

#[tokio::test]
async fn the_correct_system_passes_the_catching_scenarios() {
    let scenarios: BTreeSet<_> = DEFECTS.iter().map(|d| d.caught_by).collect();
    for name in scenarios {
        let (report, summary) = run_scenario(name, None).await;
        assert!(report.verdict.passed(), "{name} fails without any defect:\n{summary}");
    }
}

#[tokio::test]
async fn duplicate_waits_for_reply() {
    caught("duplicate-waits-for-reply").await;
}

#[tokio::test]
async fn reuse_authorize_message_id() {
    caught("reuse-authorize-message-id").await;
}

#[tokio::test]
async fn reserved_reply_header() {
    caught("reserved-reply-header").await;
}

#[tokio::test]
async fn stream_captures_queries() {
    caught("stream-captures-queries").await;
}

#[tokio::test]
async fn card_data_in_headers() {
    caught("card-data-in-headers").await;
}

#[tokio::test]
async fn manual_capture_as_charged() {
    caught("manual-capture-as-charged").await;
}

#[tokio::test]
async fn late_reply_overwrites_terminal() {
    caught("late-reply-overwrites-terminal").await;
}

#[tokio::test]
async fn recovery_without_asking() {
    caught("recovery-without-asking").await;
}

#[tokio::test]
async fn ack_before_processor() {
    caught("ack-before-processor").await;
}

#[tokio::test]
async fn lookup_ignores_claims() {
    caught("lookup-ignores-claims").await;
}
