//! The bridge end to end against real NATS (a container where Docker answers), real workers
//! and the processor's ledger.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{eventually, money, sample, single};
use mock_processor::ProcessorConfig;
use mock_worker::WorkerConfig;
use nats_bridge::catalogue::{self, ops, Pattern};
use nats_bridge::metrics::names;
use nats_bridge::{headers, streams, BridgeConfig, CallError, OperationRequest, Outcome, ResponseStatus};
use serde_json::json;

const M: &str = "merchant_e2e";

fn req(op: &str, payment: &str, attempt: &str, router_data: serde_json::Value) -> OperationRequest {
    OperationRequest::new(catalogue::find(op).expect(op), M, payment, attempt).router_data(router_data)
}

#[tokio::test]
async fn every_catalogue_operation_end_to_end() {
    let env = single(1).await;
    let bridge = env.bridge();
    assert_eq!(bridge.config().base_url, env.nats().client_url(), "the bridge keeps the settings it started with");
    let usd = |amount: i64| json!({ "amount": amount, "currency": "USD" });
    let plan = vec![
        req("payments.authorize", "pay_1", "pay_1_1", money(1000)),
        req("payments.complete_authorize", "pay_1", "pay_1_1", json!({})),
        req("payments.approve", "pay_1", "approve_1", json!({})),
        req("payments.reject", "pay_1", "reject_1", json!({})),
        req("payments.incremental_auth", "pay_1", "inc_1", usd(200)),
        req("payments.update_metadata", "pay_1", "meta_1", json!({ "metadata": { "order": "42" } })),
        req("payments.capture", "pay_1", "cap_1", usd(700)),
        req("refunds.execute", "pay_1", "ref_1", usd(300)),
        req("refunds.update", "pay_1", "ref_1", json!({ "reason": "customer request" })),
        req("payments.sync", "pay_1", "sync_1", json!({})),
        req("refunds.sync", "pay_1", "rsync_1", json!({ "refund_id": "ref_1" })),
        req("payments.session", "pay_1", "session_1", json!({})),
        req("payments.post_session_tokens", "pay_1", "pst_1", json!({})),
        req("payments.authorize", "pay_2", "pay_2_1", money(500)),
        req("payments.void", "pay_2", "void_1", json!({})),
        req("mandates.setup", "pay_3", "mandate_1", json!({ "mandate_type": "multi_use" })),
        req("mandates.update", "pay_3", "mandate_1", json!({ "max_amount": 5000 })),
        req("mandates.revoke", "pay_3", "mandate_1", json!({})),
        req("tokens.create", "pay_4", "token_1", json!({})),
        req("tokens.validate", "pay_4", "token_1", json!({})),
        req("tokens.delete", "pay_4", "token_1", json!({})),
        req("auth.external", "pay_5", "3ds_1", json!({})),
        req("auth.access_token", "pay_5", "at_1", json!({})),
        req("auth.auth_token", "pay_5", "aut_1", json!({})),
        req("disputes.accept", "pay_6", "dp_1", json!({})),
        req("disputes.defend", "pay_6", "dp_2", json!({})),
        req("disputes.evidence", "pay_6", "dp_2", json!({ "evidence": "receipt" })),
        req("webhooks.incoming", "pay_7", "wh_1", json!({ "event": "charge.succeeded" })).connector("stripe"),
        req("webhooks.verify", "pay_7", "wh_1", json!({})),
        req("payouts.create", "payout_1", "po_1", usd(500)),
        req("payouts.fulfill", "payout_1", "po_1", json!({})),
        req("payouts.sync", "payout_1", "po_sync_1", json!({ "payout_id": "po_1" })),
        req("payouts.create", "payout_2", "po_2", usd(100)),
        req("payouts.cancel", "payout_2", "po_2", json!({})),
        req("tax.calculate", "pay_8", "tax_1", usd(1000)),
        req("fraud.check", "pay_8", "fraud_1", json!({})),
        req("giftcard.balance", "pay_8", "gc_1", json!({})),
    ];
    let mut covered = BTreeSet::new();
    for r in &plan {
        let op = r.operation();
        let before = env.processor().ledger().len();
        let reply = bridge.call(r).await.unwrap_or_else(|e| panic!("{}: {e}", op.name));
        assert_eq!(reply.status, ResponseStatus::Success, "{}: {:?}", op.name, reply.error);
        assert_eq!(reply.correlation_id, r.envelope().correlation_id);
        let effects = env.processor().effects_by_key(&r.envelope().idempotency_key);
        match op.pattern {
            Pattern::Durable => {
                assert_eq!(effects.len(), 1, "{}: one effect", op.name);
                assert_eq!(effects[0].operation, op.name);
                assert_eq!(reply.transaction_id.as_deref(), Some(effects[0].effect_id.as_str()));
                assert_eq!(env.processor().ledger().len(), before + 1);
            }
            Pattern::Query => {
                assert!(effects.is_empty(), "{}: a query leaves no effect", op.name);
                assert_eq!(env.processor().ledger().len(), before, "{}", op.name);
            }
        }
        covered.insert(op.name);
    }
    let all: BTreeSet<_> = catalogue::all().map(|o| o.name).collect();
    assert_eq!(covered, all, "every catalogue operation exercised");
    // The sync query reads the processor's state, which the durable operations built.
    let sync = bridge.call(&req("payments.sync", "pay_1", "sync_2", json!({}))).await.unwrap();
    assert_eq!(sync.connector_response["captured"], 700);
    assert_eq!(sync.connector_response["authorized"], 1200);
    assert_eq!(sync.connector_response["refunded"], 300);
}

#[tokio::test]
async fn no_stream_captures_a_query_subject() {
    let env = single(1).await;
    // Ask the server, not the config.
    let streams_seen = env.bridge().verify_streams().await.expect("no capture");
    assert!(streams_seen >= 9, "{streams_seen} streams");
    let js = env.bridge().jetstream();
    for op in catalogue::all() {
        let subject = nats_bridge::subjects::wildcard(&env.bridge_config().subject_template(op));
        let owner = js.stream_by_subject(subject.clone()).await;
        match op.pattern {
            Pattern::Durable => assert!(owner.is_ok(), "{} has a stream", op.name),
            Pattern::Query => assert!(owner.is_err(), "{} captured by {:?}", op.name, owner),
        }
    }
    // The seeds' mistake, reproduced on another prefix, is detected and breaks the query.
    js.create_stream(jetstream::stream::Config {
        name: "BAD_PAYMENTS".into(),
        subjects: vec!["bad.payments.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut bad = BridgeConfig::default();
    bad.subjects.prefix = "bad".into();
    let err = streams::verify_no_query_capture(js, &bad).await.unwrap_err().to_string();
    assert!(err.contains("BAD_PAYMENTS") && err.contains("bad.payments.sync"), "{err}");
    let bad_bridge = nats_bridge::Bridge::with_client(env.nats().connect().await.unwrap(), bad).await.unwrap();
    let got = bad_bridge.call(&req("payments.sync", "pay_x", "s1", json!({}))).await;
    assert!(matches!(got, Err(CallError::InvalidReply(_))), "a publish ack is not a reply: {got:?}");
}

#[tokio::test]
async fn message_ids_distinct_per_instance_equal_across_retries() {
    let env = single(1).await;
    let bridge = env.bridge();
    let usd = |amount: i64| json!({ "amount": amount, "currency": "USD" });
    let instances = [
        req("payments.authorize", "pay_ids", "pay_ids_1", money(1000)),
        req("payments.capture", "pay_ids", "cap_1", usd(300)),
        req("payments.capture", "pay_ids", "cap_2", usd(200)),
        req("payments.void", "pay_ids", "void_1", json!({})),
        req("refunds.execute", "pay_ids", "ref_1", usd(100)),
        req("refunds.execute", "pay_ids", "ref_2", usd(50)),
    ];
    let mut replies = Vec::new();
    for r in &instances {
        replies.push(bridge.call(r).await.unwrap());
    }
    // The void after capture is refused by the processor, but it is its own instance.
    assert_eq!(replies[3].status, ResponseStatus::Failure);
    assert_eq!(replies[3].error.as_ref().unwrap().code, "already_captured");
    for (i, r) in replies.iter().enumerate() {
        if i != 3 {
            assert_eq!(r.status, ResponseStatus::Success, "{i}: {:?}", r.error);
        }
    }

    // Read what the server stored.
    let js = bridge.jetstream();
    let mut stored = Vec::new();
    for name in ["HYPERSWITCH_PAYMENTS", "HYPERSWITCH_REFUNDS"] {
        let mut stream = js.get_stream(name).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        for seq in 1..=last {
            stored.push(stream.get_raw_message(seq).await.unwrap());
        }
    }
    assert_eq!(stored.len(), instances.len());
    let ids: BTreeSet<String> =
        stored.iter().map(|m| m.headers.get(headers::NATS_MSG_ID).expect("Nats-Msg-Id").as_str().to_string()).collect();
    assert_eq!(ids.len(), instances.len(), "distinct ids: {ids:?}");
    for m in &stored {
        for (name, _) in m.headers.iter() {
            assert!(!headers::misuses_reserved_prefix(name.as_ref()), "custom header {name} uses the reserved Nats- prefix");
        }
        let reply_to = m.headers.get(headers::REPLY_TO).expect("reply inbox header");
        assert!(reply_to.as_str().starts_with("_INBOX."));
    }

    // A transport retry of the second capture: same id, stored once, same answer.
    let retry = instances[2].clone();
    assert_eq!(retry.message_id(), instances[2].message_id());
    let again = bridge.call(&retry).await.unwrap();
    assert_eq!(again.transaction_id, replies[2].transaction_id);
    assert_eq!(bridge.stats().duplicates, 1);
    let mut payments = js.get_stream("HYPERSWITCH_PAYMENTS").await.unwrap();
    assert_eq!(payments.info().await.unwrap().state.messages, 4, "the retry was not stored again");
    assert_eq!(env.processor().effects_by_key(&retry.envelope().idempotency_key).len(), 1);
}

#[tokio::test]
async fn duplicate_publish_returns_the_original_result_promptly() {
    let env = single(1).await;
    let original = req("payments.authorize", "pay_dup", "pay_dup_1", money(1200));
    let first = env.bridge().call(&original).await.unwrap();
    assert_eq!(first.status, ResponseStatus::Success);
    // Another gateway instance (own inbox) retries: the original's reply went elsewhere.
    let other = env.bridge_with(env.bridge_config().clone()).await;
    let started = Instant::now();
    let second = other.call(&original).await.expect("resolves instead of hanging");
    let took = started.elapsed();
    assert_eq!(second.transaction_id, first.transaction_id);
    assert_eq!(second.status, first.status);
    assert_eq!(other.stats().duplicates, 1);
    assert!(other.stats().lookups >= 1);
    assert!(took < Duration::from_secs(5), "took {took:?}, the reply timeout is 28s");
    assert_eq!(env.processor().effects_by_key(&original.envelope().idempotency_key).len(), 1);
}

#[tokio::test]
async fn worker_dying_after_the_processor_call_does_not_charge_twice() {
    let worker = WorkerConfig { ack_wait_ms: 1000, ..Default::default() };
    let env = common::start(1, worker).await;
    // A processor that ignores idempotency keys: only the worker's own care protects us.
    env.processor().set_config(ProcessorConfig { idempotency: false, ..Default::default() });
    env.workers()[0].faults().stall_after_processor.store(1, Ordering::SeqCst);
    let r = req("payments.authorize", "pay_crash", "pay_crash_1", money(800));
    let started = Instant::now();
    let call = tokio::spawn({
        let (bridge, r) = (env.bridge().clone(), r.clone());
        async move { bridge.call(&r).await }
    });
    // The call waits on the inbox while the stalled worker's message waits for redelivery.
    let bridge = env.bridge().clone();
    eventually("one call in flight", Duration::from_secs(5), || {
        let bridge = bridge.clone();
        async move { (bridge.in_flight() == 1).then_some(()) }
    })
    .await;
    let reply = call.await.unwrap().expect("answered after redelivery");
    assert!(started.elapsed() >= Duration::from_millis(900), "answered by the redelivery");
    assert_eq!(env.bridge().in_flight(), 0, "the answered call no longer waits");
    assert_eq!(reply.status, ResponseStatus::Success);
    let effects = env.processor().effects_by_key(&r.envelope().idempotency_key);
    assert_eq!(effects.len(), 1, "one charge: {effects:?}");
    assert_eq!(reply.transaction_id.as_deref(), Some(effects[0].effect_id.as_str()));
}

#[tokio::test]
async fn late_ack_redelivery_resends_the_stored_result() {
    let worker = WorkerConfig { ack_wait_ms: 1000, ..Default::default() };
    let env = common::start(1, worker).await;
    env.processor().set_config(ProcessorConfig { idempotency: false, ..Default::default() });
    let faults = env.workers()[0].faults().clone();
    faults.ack_delay_ms.store(1500, Ordering::SeqCst);
    let r = req("payments.authorize", "pay_late", "pay_late_1", money(900));
    let reply = env.bridge().call(&r).await.unwrap();
    assert_eq!(reply.status, ResponseStatus::Success);
    // The redelivery re-sends the stored reply to the inbox, where nobody waits any more.
    let bridge = env.bridge().clone();
    eventually("a redelivered reply", Duration::from_secs(10), || {
        let bridge = bridge.clone();
        async move { (bridge.stats().orphan_replies >= 1).then_some(()) }
    })
    .await;
    faults.ack_delay_ms.store(0, Ordering::SeqCst);
    let js = env.bridge().jetstream().clone();
    let info = eventually("the message acked", Duration::from_secs(15), || {
        let js = js.clone();
        async move {
            let mut c: jetstream::consumer::PullConsumer =
                js.get_stream("HYPERSWITCH_PAYMENTS").await.ok()?.get_consumer("worker_payments_authorize").await.ok()?;
            let info = c.info().await.ok()?.clone();
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
        }
    })
    .await;
    assert!(info.num_redelivered >= 1 || info.delivered.consumer_sequence >= 2, "{info:?}");
    assert_eq!(env.processor().effects_by_key(&r.envelope().idempotency_key).len(), 1);
}

#[tokio::test]
async fn without_workers_a_query_fails_at_once_and_a_durable_call_is_unknown() {
    let mut env = single(0).await;
    let started = Instant::now();
    let err = env.bridge().call(&req("payments.sync", "pay_nw", "s1", json!({}))).await.unwrap_err();
    assert!(matches!(err, CallError::NoResponders { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "no responders is immediate");
    assert_eq!(err.outcome(), Outcome::NotApplied);
    assert_eq!(err.mapping().http_status, 503);

    let mut config = env.bridge_config().clone();
    config.operations.insert(
        "payments.authorize".into(),
        nats_bridge::config::OperationOverride { timeout_ms: Some(1500), ack_timeout_ms: Some(500), ..Default::default() },
    );
    let short = nats_bridge::Bridge::with_client(env.nats().connect().await.unwrap(), config).await.unwrap();
    let r = req("payments.authorize", "pay_nw", "pay_nw_1", money(100));
    let err = short.call(&r).await.unwrap_err();
    assert!(matches!(err, CallError::ReplyTimeout { .. }), "{err}");
    assert_eq!(err.outcome(), Outcome::Unknown, "stored in the stream: it may still happen");
    assert_eq!(err.mapping().http_status, 504);
    // Only the timeout counts as one: no responders is a definite answer.
    let timeouts = |bridge: &nats_bridge::Bridge, op: &str| sample(&bridge.metrics().render(), names::TIMEOUTS, &[("operation", op)]);
    assert_eq!(timeouts(&short, "payments.authorize"), Some(1.0));
    assert_eq!(timeouts(env.bridge(), "payments.sync").unwrap_or(0.0), 0.0);
    // And it does happen once a worker comes: the late reply finds nobody waiting.
    env.start_worker().await.unwrap();
    let key = r.envelope().idempotency_key.clone();
    let processor = env.processor().clone();
    eventually("the late effect", Duration::from_secs(10), || {
        let n = processor.effects_by_key(&key).len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let _ = ops::authorize();
}

#[tokio::test]
async fn an_expired_request_never_reaches_the_processor() {
    let env = single(1).await;
    let fresh = req("payments.authorize", "pay_old", "pay_old_1", money(100));
    let mut envelope = fresh.envelope().clone();
    envelope.timestamp -= 10 * 60 * 1000; // older than the worker's 4-minute limit
    let old = OperationRequest::from_envelope(fresh.operation(), envelope);
    let reply = env.bridge().call(&old).await.unwrap();
    assert_eq!(reply.status, ResponseStatus::Failure);
    assert_eq!(reply.error.unwrap().code, "REQUEST_EXPIRED");
    assert!(env.processor().ledger().is_empty());
}

#[tokio::test]
async fn a_publish_nobody_stores_is_retried_with_backoff_then_not_applied() {
    let env = single(0).await;
    env.bridge().jetstream().delete_stream("HYPERSWITCH_PAYMENTS").await.expect("stream deleted");
    let bridge = env.bridge_with(BridgeConfig { max_retries: 2, ..env.bridge_config().clone() }).await;
    let started = Instant::now();
    let err = bridge.call(&req("payments.authorize", "pay_ns", "pay_ns_1", money(100))).await.unwrap_err();
    assert!(matches!(err, CallError::NoStream { .. }), "{err}");
    assert_eq!(err.outcome(), Outcome::NotApplied, "every attempt was answered: nothing stored");
    assert_eq!(bridge.stats().publish_retries, 2, "max_retries retries after the first attempt");
    assert!(started.elapsed() >= Duration::from_millis(750), "250 ms then 500 ms between attempts: {:?}", started.elapsed());
    assert_eq!(bridge.stats().published, 0);
}

#[tokio::test]
async fn a_request_larger_than_the_server_takes_is_refused_at_once_and_not_retried() {
    let env = single(0).await;
    let big = json!({ "amount": 100, "currency": "USD", "metadata": { "blob": "x".repeat(2 * 1024 * 1024) } });
    let err = env.bridge().call(&req("payments.authorize", "pay_big", "pay_big_1", big)).await.unwrap_err();
    assert!(matches!(err, CallError::InvalidRequest(_)), "{err}");
    assert_eq!(err.outcome(), Outcome::NotApplied);
    assert_eq!(env.bridge().stats().publish_retries, 0, "a request too large for the server is not retried");
}

#[tokio::test]
async fn a_retry_while_a_worker_holds_the_operation_times_out_in_progress() {
    let env = single(1).await;
    *env.workers()[0].faults().latency.lock().unwrap() = Some(mock_worker::profile::Latency::Fixed { ms: 6000 });
    let mut config = env.bridge_config().clone();
    config.operations.insert(
        "payments.authorize".into(),
        nats_bridge::config::OperationOverride { timeout_ms: Some(1500), ack_timeout_ms: Some(500), ..Default::default() },
    );
    let bridge = env.bridge_with(config).await;
    let r = req("payments.authorize", "pay_ip", "pay_ip_1", money(100));
    let first = bridge.call(&r).await.unwrap_err();
    assert!(matches!(first, CallError::ReplyTimeout { .. }) && !first.in_progress(), "no lookup on a first send: {first}");
    // The retry is a duplicate: the lookup finds the worker's live claim.
    let again = bridge.call(&r).await.unwrap_err();
    assert!(again.in_progress(), "the lookup answered pending: {again}");
    assert_eq!(again.outcome(), Outcome::Unknown);
}
