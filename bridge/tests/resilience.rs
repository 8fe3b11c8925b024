//! The bridge's resilience features against real NATS: circuit breaker, late replies, metrics.

mod common;

use std::time::{Duration, Instant};

use common::{money, sample, single};
use nats_bridge::catalogue::{self, ops};
use nats_bridge::config::OperationOverride;
use nats_bridge::metrics::names;
use nats_bridge::{BreakerState, Bridge, BridgeConfig, CallError, OperationRequest, ResponseStatus};
use serde_json::json;

const M: &str = "merchant_resilience";

fn req(op: &str, payment: &str, attempt: &str, router_data: serde_json::Value) -> OperationRequest {
    OperationRequest::new(catalogue::find(op).expect(op), M, payment, attempt).router_data(router_data)
}

async fn bridge_with(env: &common::TestEnv, config: BridgeConfig) -> Bridge {
    env.bridge_with(config).await
}

#[tokio::test]
async fn breaker_opens_after_five_no_responders_and_a_probe_closes_it() {
    let mut env = single(0).await;
    let mut config = env.bridge_config().clone();
    config.circuit_breaker.open_ms = 300;
    let bridge = bridge_with(&env, config).await;
    let sync = ops::payment_sync();

    for i in 0..5 {
        let err = bridge.call(&req("payments.sync", "pay_cb", &format!("s{i}"), json!({}))).await.unwrap_err();
        assert!(matches!(err, CallError::NoResponders { .. }), "call {i}: {err}");
    }
    assert_eq!(bridge.breaker_state(sync), BreakerState::Open);
    let started = Instant::now();
    let err = bridge.call(&req("payments.sync", "pay_cb", "s5", json!({}))).await.unwrap_err();
    assert!(matches!(&err, CallError::CircuitOpen { operation } if operation == "payments.sync"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(50), "refused at once: {:?}", started.elapsed());
    assert_eq!(err.mapping().code, "CIRCUIT_OPEN");
    assert_eq!(err.mapping().http_status, 503);
    assert_eq!(bridge.stats().queries, 5, "the refused call never reached nats");
    assert_eq!(bridge.stats().circuit_rejections, 1);
    // Breakers are per operation.
    assert_eq!(bridge.breaker_state(ops::refund_sync()), BreakerState::Closed);
    let err = bridge.call(&req("refunds.sync", "pay_cb", "rs1", json!({}))).await.unwrap_err();
    assert!(matches!(err, CallError::NoResponders { .. }), "{err}");

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(bridge.breaker_state(sync), BreakerState::HalfOpen);
    env.start_worker().await.unwrap();
    let reply = bridge.call(&req("payments.sync", "pay_cb", "s6", json!({}))).await.expect("the probe succeeds");
    assert!(!reply.correlation_id.is_empty());
    assert_eq!(bridge.breaker_state(sync), BreakerState::Closed);
    let again = bridge.call(&req("payments.sync", "pay_cb", "s7", json!({}))).await;
    assert!(again.is_ok(), "{again:?}");

    let text = bridge.metrics().render();
    let l = [("operation", "payments.sync")];
    assert_eq!(sample(&text, names::BREAKER_STATE, &l), Some(0.0));
    assert_eq!(sample(&text, names::BREAKER_REJECTIONS, &l), Some(1.0));
    assert_eq!(sample(&text, "nats_request_duration_seconds_count", &l), Some(7.0), "5 failures + 2 replies:\n{text}");
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker() {
    let env = single(0).await;
    let mut config = env.bridge_config().clone();
    config.circuit_breaker.open_ms = 200;
    config.circuit_breaker.failure_threshold = 2;
    let bridge = bridge_with(&env, config).await;
    let sync = ops::payment_sync();
    for i in 0..2 {
        let _ = bridge.call(&req("payments.sync", "pay_rp", &format!("s{i}"), json!({}))).await;
    }
    assert_eq!(bridge.breaker_state(sync), BreakerState::Open);
    let text = bridge.metrics().render();
    assert_eq!(sample(&text, names::BREAKER_STATE, &[("operation", "payments.sync")]), Some(1.0));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let err = bridge.call(&req("payments.sync", "pay_rp", "probe", json!({}))).await.unwrap_err();
    assert!(matches!(err, CallError::NoResponders { .. }), "the probe goes to nats: {err}");
    assert_eq!(bridge.breaker_state(sync), BreakerState::Open);
    let err = bridge.call(&req("payments.sync", "pay_rp", "after", json!({}))).await.unwrap_err();
    assert!(matches!(err, CallError::CircuitOpen { .. }), "{err}");
}

#[tokio::test]
async fn a_reply_after_the_timeout_is_handed_over_as_a_late_reply() {
    let mut env = single(0).await;
    let mut config = env.bridge_config().clone();
    config
        .operations
        .insert("payments.authorize".into(), OperationOverride { timeout_ms: Some(1500), ack_timeout_ms: Some(500), ..Default::default() });
    let bridge = bridge_with(&env, config).await;
    let mut late = bridge.late_replies().expect("first take");
    assert!(bridge.late_replies().is_none(), "handed out once");

    let r = req("payments.authorize", "pay_late", "pay_late_1", money(700));
    let err = bridge.call(&r).await.unwrap_err();
    assert!(matches!(err, CallError::ReplyTimeout { .. }), "{err}");
    assert_eq!(bridge.breaker_state(ops::authorize()), BreakerState::Closed, "one failure is below the threshold");

    env.start_worker().await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(15), late.recv()).await.expect("a late reply within 15s").expect("channel open");
    assert_eq!(reply.idempotency_key.as_deref(), Some(r.envelope().idempotency_key.as_str()));
    assert_eq!(reply.correlation_id.as_deref(), Some(r.envelope().correlation_id.as_str()));
    assert!(reply.message_id.is_none() || reply.message_id.as_deref() == Some(r.message_id()), "{:?}", reply.message_id);
    let response = reply.response.expect("decoded");
    assert_eq!(response.status, ResponseStatus::Success, "{:?}", response.error);
    let effects = env.processor().effects_by_key(&r.envelope().idempotency_key);
    assert_eq!(effects.len(), 1);
    assert_eq!(response.transaction_id.as_deref(), Some(effects[0].effect_id.as_str()));

    // Exactly one.
    let more = tokio::time::timeout(Duration::from_millis(500), late.recv()).await;
    assert!(more.is_err(), "a second late reply: {more:?}");
    let stats = bridge.stats();
    assert_eq!((stats.orphan_replies, stats.late_replies_dropped, stats.reply_timeouts), (1, 0, 1));
    let text = bridge.metrics().render();
    let l = [("operation", "payments.authorize")];
    assert_eq!(sample(&text, names::LATE_REPLIES, &[]), Some(1.0));
    assert_eq!(sample(&text, names::LATE_REPLIES_DROPPED, &[]), Some(0.0));
    assert_eq!(sample(&text, names::TIMEOUTS, &l), Some(1.0));
    assert_eq!(sample(&text, names::ACKS, &l), Some(1.0));
}

#[tokio::test]
async fn metrics_count_calls_by_operation_and_status() {
    let env = single(1).await;
    let bridge = env.bridge();
    let usd = |amount: i64| json!({ "amount": amount, "currency": "USD" });
    let auth = req("payments.authorize", "pay_m", "pay_m_1", money(1000));
    let calls = [
        auth.clone(),
        req("payments.capture", "pay_m", "cap_1", usd(1000)),
        req("payments.void", "pay_m", "void_1", json!({})),
        req("payments.sync", "pay_m", "sync_1", json!({})),
        req("payments.sync", "pay_m", "sync_2", json!({})),
        auth.clone(),
    ];
    let mut statuses = Vec::new();
    for r in &calls {
        statuses.push(bridge.call(r).await.unwrap().status);
    }
    // The void after a full capture is declined: a healthy answer, not a breaker failure.
    assert_eq!(statuses[2], ResponseStatus::Failure);
    assert_eq!(bridge.breaker_state(ops::void()), BreakerState::Closed);

    // The application registers its own series in the bridge's registry.
    let registry = bridge.metrics();
    registry.counter("nats_recovery_job_recovered_count", "attempts settled by the recovery job", &[]).inc_by(2);

    let text = registry.render();
    let op = |name: &'static str| [("operation", name)];
    for (name, kind) in [
        (names::REQUEST_DURATION, "histogram"),
        (names::TIMEOUTS, "counter"),
        (names::WORKER_RESPONSES, "counter"),
        (names::ACKS, "counter"),
        (names::DUPLICATES, "counter"),
        (names::PUBLISH_ERRORS, "counter"),
        (names::REJECTED_REPLIES, "counter"),
        (names::LATE_REPLIES, "counter"),
        (names::BREAKER_STATE, "gauge"),
        ("nats_recovery_job_recovered_count", "counter"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} {kind}:\n{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
    let hist = |suffix: &str, o: &'static str| sample(&text, &format!("{}{suffix}", names::REQUEST_DURATION), &op(o));
    assert_eq!(hist("_count", "payments.authorize"), Some(2.0));
    assert_eq!(hist("_count", "payments.sync"), Some(2.0));
    assert_eq!(hist("_count", "payments.capture"), Some(1.0));
    assert!(hist("_sum", "payments.authorize").unwrap() > 0.0);
    let inf = sample(&text, "nats_request_duration_seconds_bucket", &[("operation", "payments.sync"), ("le", "+Inf")]);
    assert_eq!(inf, Some(2.0));
    let ws = |o: &'static str, status: &'static str| sample(&text, names::WORKER_RESPONSES, &[("operation", o), ("status", status)]);
    assert_eq!(ws("payments.authorize", "success"), Some(2.0));
    assert_eq!(ws("payments.void", "failure"), Some(1.0));
    assert_eq!(ws("payments.void", "success"), Some(0.0));
    assert_eq!(ws("payments.sync", "success"), Some(2.0));
    assert_eq!(sample(&text, names::ACKS, &op("payments.authorize")), Some(2.0));
    assert_eq!(sample(&text, names::DUPLICATES, &op("payments.authorize")), Some(1.0));
    assert_eq!(sample(&text, names::PUBLISH_ERRORS, &op("payments.authorize")), Some(0.0));
    assert_eq!(sample(&text, names::TIMEOUTS, &op("payments.authorize")), Some(0.0));
    assert_eq!(sample(&text, names::ACKS, &op("payments.sync")), None, "no jetstream series for a query");
    assert_eq!(sample(&text, names::BREAKER_STATE, &op("payments.authorize")), Some(0.0));
    assert_eq!(sample(&text, names::BREAKER_STATE, &op("giftcard.balance")), Some(0.0), "every operation has a state");
    assert_eq!(sample(&text, "nats_recovery_job_recovered_count", &[]), Some(2.0));
    assert_eq!(
        sample(&text, "nats_request_duration_seconds_count", &op("giftcard.balance")),
        None,
        "no series for an operation never called"
    );
}
