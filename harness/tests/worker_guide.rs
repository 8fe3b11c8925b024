//! The worked example of `docs/worker-guide.md` (`docs/examples/minimal_worker.rs`) against a
//! real NATS server and the real bridge: durable reply and ack, duplicate publish answered by
//! the reply lookup, a redelivered message answered from the stored result, a reused
//! idempotency key refused, a transient failure retried, a query, and a poison message in the
//! dead-letter stream. And the guide shows the example unchanged.

mod common;

#[path = "../../docs/examples/minimal_worker.rs"]
mod minimal_worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use harness::nats::EnvConfig;
use nats_bridge::catalogue::ops;
use nats_bridge::{headers, Bridge, BridgeConfig, OperationRequest, ResponseEnvelope, ResponseStatus};
use serde_json::json;

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

#[test]
fn the_guide_shows_the_tested_example() {
    let guide = std::fs::read_to_string(docs().join("worker-guide.md")).expect("docs/worker-guide.md");
    let example = std::fs::read_to_string(docs().join("examples/minimal_worker.rs")).expect("the example");
    assert!(
        guide.contains(&format!("```rust\n{example}```")),
        "docs/worker-guide.md must show docs/examples/minimal_worker.rs verbatim in a rust block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_worker_speaks_the_protocol() {
    let nats = common::start_nats(EnvConfig::single()).await;
    let mut config = BridgeConfig { base_url: nats.client_url(), ..Default::default() };
    config.jetstream.replicas = nats.replicas();
    let bridge = Bridge::with_client(nats.connect().await.expect("connect"), config.clone()).await.expect("bridge");
    bridge.ensure_streams().await.expect("streams");

    // The "processor": counts its calls; fails transiently twice for payment `pay_flaky`.
    let calls = Arc::new(AtomicUsize::new(0));
    let flaky = Arc::new(AtomicUsize::new(2));
    let process: minimal_worker::Process = {
        let (calls, flaky) = (calls.clone(), flaky.clone());
        Arc::new(move |env| {
            if env.payment_id == "pay_flaky" && flaky.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Err("processor unreachable".into());
            }
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mut r = ResponseEnvelope::reply_to(env, ResponseStatus::Success);
            r.transaction_id = Some(format!("txn_{n}"));
            Ok(r)
        })
    };
    let worker = nats.connect().await.expect("worker connection");
    let capture = ops::capture();
    let sync = ops::payment_sync();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(minimal_worker::serve_durable(worker.clone(), config.clone(), capture, process.clone()));
    tasks.spawn(minimal_worker::serve_query(worker.clone(), config.clone(), sync, process.clone()));
    tasks.spawn(minimal_worker::serve_lookups(worker.clone(), config.clone()));

    // A durable call: reply on the inbox, then ack.
    let request =
        OperationRequest::new(capture, "merchant_guide", "pay_1", "pay_1_cap_1").router_data(json!({ "amount": 700, "currency": "USD" }));
    let first = bridge.call(&request).await.expect("capture");
    assert_eq!(first.status, ResponseStatus::Success);
    assert_eq!(first.correlation_id, request.envelope().correlation_id);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The same instance again: JetStream drops the duplicate, the bridge asks the lookup.
    let again = bridge.call(&request).await.expect("duplicate capture");
    assert_eq!(again.transaction_id, first.transaction_id);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a duplicate is not processed again");

    // A redelivery (or a replay) of the same request: the stored result, not a second charge.
    let js = bridge.jetstream();
    let inbox = worker.new_inbox();
    let mut replies = worker.subscribe(inbox.clone()).await.expect("inbox");
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::NATS_MSG_ID, "replayed-copy");
    h.insert(headers::REPLY_TO, inbox.as_str());
    let subject = bridge.subject(&request).expect("subject");
    js.publish_with_headers(subject, h, serde_json::to_vec(request.envelope()).unwrap().into()).await.unwrap().await.unwrap();
    let replayed: ResponseEnvelope = serde_json::from_slice(
        &tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("a reply").expect("a message").payload,
    )
    .unwrap();
    assert_eq!(replayed.transaction_id, first.transaction_id);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a redelivery is answered from the stored result");

    // The same idempotency key for another request is refused.
    let reused = OperationRequest::new(capture, "merchant_guide", "pay_1", "pay_1_cap_2")
        .router_data(json!({ "amount": 300, "currency": "USD" }))
        .idempotency_key(&request.envelope().idempotency_key);
    let refused = bridge.call(&reused).await.expect("reused key");
    assert_eq!(refused.status, ResponseStatus::Failure);
    assert_eq!(refused.error.map(|e| e.code).as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));

    // A transient failure is given back (nak) and retried until it works.
    let flaky_request = OperationRequest::new(capture, "merchant_guide", "pay_flaky", "pay_flaky_cap_1")
        .router_data(json!({ "amount": 5, "currency": "USD" }));
    let recovered = bridge.call(&flaky_request).await.expect("flaky capture");
    assert_eq!(recovered.status, ResponseStatus::Success);
    assert_eq!(flaky.load(Ordering::SeqCst), 0, "both transient failures happened");

    // A query: answered on the request's reply subject.
    let q = OperationRequest::new(sync, "merchant_guide", "pay_1", "pay_1_sync_1");
    assert_eq!(bridge.call(&q).await.expect("sync").status, ResponseStatus::Success);

    // A poison message ends in the dead-letter stream.
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::NATS_MSG_ID, "poison-1");
    js.publish_with_headers(bridge.subject(&request).unwrap(), h, "not json".into()).await.unwrap().await.unwrap();
    let dlq = config.dlq_stream_name();
    common::eventually("the poison message in the dead letters", Duration::from_secs(10), || {
        let js = js.clone();
        let dlq = dlq.clone();
        async move {
            let mut s = js.get_stream(&dlq).await.ok()?;
            let info = s.info().await.ok()?;
            (info.state.messages == 1).then_some(())
        }
    })
    .await;
    tasks.abort_all();
}
