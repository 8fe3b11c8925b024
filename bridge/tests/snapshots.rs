//! Message-format snapshots: for every catalogue operation, the subject (both schemes), the
//! headers and the request envelope the bridge sends, and the worker's replies (success,
//! failure, processing; plus requires-customer-action where 3DS applies), with volatile
//! values redacted. The snapshots live in `<workspace>/snapshots/<operation>.snap`.
//!
//! A change to any of them fails `cargo test` with a diff; in CI (`CI` set) insta writes
//! nothing and fails, locally it leaves a `.snap.new` beside the snapshot for review. How to
//! review and accept a change: `snapshots/README.md`.
//!
//! The requests come from `hs-fixtures` with a fixed seed and go through the constructor the
//! gateway uses, so the only volatile values are the correlation id, the timestamp and the
//! reply inbox; each is checked (format, and equal wherever it is repeated) before it is
//! replaced by a `[placeholder]`.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use hs_fixtures::{operations, Fixtures, Sample};
use nats_bridge::{catalogue, subjects, Bridge, BridgeConfig, Operation, Pattern, SubjectScheme};
use serde_json::{json, Value};

/// The fixtures' seed: changing it changes every snapshot.
const SEED: u64 = 20_250_601;

/// `<workspace>/snapshots`.
fn snapshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../snapshots");
    dir.canonicalize().unwrap_or(dir)
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(snapshot_dir());
    s.set_prepend_module_to_snapshot(false);
    // serde_json's map order depends on a cargo feature another crate may switch on: sort.
    s.set_sort_maps(true);
    s.set_omit_expression(true);
    s
}

/// Insta in CI must compare only: refuse settings that would accept changes silently.
fn refuse_updates_in_ci() {
    let ci = std::env::var("CI").map(|v| !matches!(v.as_str(), "" | "0" | "false")).unwrap_or(false);
    if !ci {
        return;
    }
    let update = std::env::var("INSTA_UPDATE").unwrap_or_default();
    assert!(
        !matches!(update.as_str(), "always" | "1" | "force" | "unseen"),
        "INSTA_UPDATE={update} in CI would accept snapshot changes without review"
    );
    assert!(std::env::var_os("INSTA_FORCE_PASS").is_none(), "INSTA_FORCE_PASS in CI would hide snapshot changes");
}

/// A bridge over a connection that never connects: enough to compute subjects and headers.
async fn offline_bridge(config: BridgeConfig) -> Bridge {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(Some(1))
        .connect("nats://127.0.0.1:1")
        .await
        .expect("a lazy client");
    Bridge::with_client(client, config).await.expect("bridge over a lazy client")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// Replaces the volatile values of one operation's messages, after checking them.
fn redact(op: Operation, mut v: Value) -> Value {
    let body = &mut v["request"]["body"];
    let correlation = body["correlation_id"].as_str().expect("correlation id").to_string();
    assert!(is_uuid(&correlation), "{}: correlation id {correlation:?} is not a uuid", op.name);
    let ts = body["timestamp"].as_u64().expect("timestamp is an integer");
    assert!(now_ms().abs_diff(ts) < 3_600_000, "{}: timestamp {ts} is not the time of creation", op.name);
    body["correlation_id"] = json!("[correlation_id]");
    body["timestamp"] = json!("[timestamp]");

    let headers = &mut v["request"]["headers"];
    assert_eq!(headers["X-Correlation-Id"], json!(correlation), "{}: header and body correlation ids differ", op.name);
    headers["X-Correlation-Id"] = json!("[correlation_id]");
    if op.pattern == Pattern::Durable {
        let inbox = headers["X-Reply-To"].as_str().expect("durable requests carry X-Reply-To").to_string();
        assert!(inbox.starts_with("_INBOX."), "{}: reply inbox {inbox:?}", op.name);
        headers["X-Reply-To"] = json!("[reply_inbox]");
    }

    for (name, reply) in v["responses"].as_object_mut().expect("responses").iter_mut() {
        assert_eq!(reply["correlation_id"], json!(correlation), "{}: {name} reply does not echo the correlation id", op.name);
        reply["correlation_id"] = json!("[correlation_id]");
    }
    v
}

/// Everything about one operation's messages, volatile values still in.
fn messages(bridge: &Bridge, per_merchant: &BridgeConfig, op: Operation, sample: &Sample) -> Value {
    let request = operations::request(op, sample);
    let env = request.envelope();
    let subject = bridge.subject(&request).expect("subject");
    let subject_per_merchant =
        subjects::render(&per_merchant.subject_template(op), &env.merchant_id, env.connector.as_deref().unwrap_or("default"))
            .expect("per-merchant subject");
    // The inbox a durable call would wait on: random per bridge, redacted below.
    let reply_to = (op.pattern == Pattern::Durable).then(|| format!("_INBOX.hsb.{}.token", uuid::Uuid::new_v4().simple()));
    let mut headers = BTreeMap::new();
    for (name, values) in bridge.headers(&request, reply_to.as_deref()).iter() {
        assert_eq!(values.len(), 1, "{}: header {name} has {} values", op.name, values.len());
        headers.insert(name.to_string(), values[0].as_str().to_string());
    }
    // The published contract lists exactly the headers the bridge sets.
    let names: BTreeSet<&str> = headers.keys().map(String::as_str).collect();
    let contract: BTreeSet<&str> = nats_bridge::asyncapi::request_headers(op.pattern).into_iter().collect();
    assert_eq!(names, contract, "{}: headers differ from the contract's", op.name);
    let responses: BTreeMap<&str, Value> = operations::responses(op, sample, env)
        .into_iter()
        .map(|(name, r)| (name, serde_json::to_value(r).expect("reply serializes")))
        .collect();
    let config = bridge.config();
    json!({
        "operation": op.name,
        "pattern": op.pattern,
        "stream": (op.pattern == Pattern::Durable).then(|| config.stream_name(op.family)),
        "dead_letter_subject": (op.pattern == Pattern::Durable).then(|| config.dlq_subject(op)),
        "subject": subject,
        "subject_per_merchant": subject_per_merchant,
        "request": {
            "headers": headers,
            "body": serde_json::to_value(env).expect("request serializes"),
        },
        "responses": responses,
    })
}

#[tokio::test]
async fn every_operation_matches_its_snapshot() {
    refuse_updates_in_ci();
    let bridge = offline_bridge(BridgeConfig::default()).await;
    let mut per_merchant = BridgeConfig::default();
    per_merchant.subjects.scheme = SubjectScheme::PerMerchant;
    let sample = Fixtures::new(SEED).sample();
    let settings = settings();
    let mut failed = Vec::new();
    for op in catalogue::all() {
        let value = redact(op, messages(&bridge, &per_merchant, op, &sample));
        // Every operation is compared (and every changed one gets its diff and `.snap.new`),
        // then the test fails naming them all.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            settings.bind(|| insta::assert_json_snapshot!(op.name, value));
        }));
        if outcome.is_err() {
            failed.push(op.name);
        }
    }
    assert!(
        failed.is_empty(),
        "{} message snapshot(s) changed: {failed:?}. If the change is intended, review it (snapshots/README.md) and commit the updated snapshots together with a note for worker authors.",
        failed.len()
    );
}

#[test]
fn snapshot_files_match_the_catalogue() {
    if matches!(std::env::var("INSTA_UPDATE").as_deref(), Ok("always" | "1" | "force")) {
        // The other test is writing the snapshots right now; run again to check them.
        return;
    }
    let dir = snapshot_dir();
    // Pending `.snap.new` files are insta's business: a passing comparison removes its own,
    // and git ignores them (snapshots/.gitignore).
    let mut snaps = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(op) = name.strip_suffix(".snap") {
            snaps.insert(op.to_string());
        }
    }
    let expected: BTreeSet<String> = catalogue::all().map(|op| op.name.to_string()).collect();
    let stale: Vec<_> = snaps.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&snaps).collect();
    assert!(stale.is_empty(), "snapshots of operations the catalogue no longer has: {stale:?}; delete them");
    assert!(missing.is_empty(), "operations without a snapshot: {missing:?}");
}
