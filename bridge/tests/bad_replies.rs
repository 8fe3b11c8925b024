//! Bad input at the bus: replies that are malformed, truncated, oversized, for another request
//! or merchant, or sent to an inbox nobody waits on are refused, counted in metrics, and never
//! applied; the call they tried to disturb still gets its real reply.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use async_nats::HeaderMap;
use futures::StreamExt;
use mock_worker::WorkerConfig;
use nats_bridge::{catalogue, headers, OperationRequest, RequestEnvelope, ResponseEnvelope, ResponseStatus};

/// A hand-driven worker: the next authorize message, its reply address and envelope.
async fn take_request(js: &jetstream::Context, stream: &str, subject: &str) -> (jetstream::Message, String, RequestEnvelope) {
    let consumer: pull::Stream = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(pull::Config { durable_name: Some("bad_replies".into()), filter_subject: subject.into(), ..Default::default() })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap();
    let mut consumer = consumer;
    let msg = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.expect("the request arrives").unwrap().unwrap();
    let reply_to = msg.headers.as_ref().and_then(|h| h.get(headers::REPLY_TO)).expect("a reply address").to_string();
    let env: RequestEnvelope = serde_json::from_slice(&msg.payload).unwrap();
    (msg, reply_to, env)
}

/// An authorize call for `payment_id` through `bridge`, in flight, and the message a
/// hand-driven worker took for it (its reply address and envelope): the test answers it.
struct HeldCall {
    /// The call, waiting for its reply.
    call: tokio::task::JoinHandle<Result<ResponseEnvelope, nats_bridge::CallError>>,
    /// What was sent.
    request: OperationRequest,
    /// The stored message, acked by the test once it has replied.
    msg: jetstream::Message,
    /// Where replies go (the bridge's inbox).
    reply_to: String,
    /// The envelope as the worker decoded it.
    envelope: RequestEnvelope,
}

async fn held_authorize(env: &common::TestEnv, bridge: &nats_bridge::Bridge, payment_id: &str) -> HeldCall {
    let op = catalogue::ops::authorize();
    let request = OperationRequest::new(op, "merchant_a", payment_id, "att_1").router_data(common::money(1000));
    let call = {
        let (bridge, request) = (bridge.clone(), request.clone());
        tokio::spawn(async move { bridge.call(&request).await })
    };
    let config = env.bridge_config();
    let (msg, reply_to, envelope) = take_request(bridge.jetstream(), &config.stream_name(op.family), &config.subject_template(op)).await;
    HeldCall { call, request, msg, reply_to, envelope }
}

fn reply_headers(message_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::MESSAGE_ID, message_id);
    h
}

#[tokio::test]
async fn bad_replies_are_refused_counted_and_never_applied() {
    let env = common::start(0, WorkerConfig::default()).await;
    let bridge = env.bridge().clone();
    let mut late = bridge.late_replies().expect("late replies not taken yet");
    let client = env.nats().connect().await.unwrap();
    let HeldCall { call, request, msg, reply_to, envelope: request_env } = held_authorize(&env, &bridge, "pay_bad_1").await;
    let good = ResponseEnvelope::reply_to(&request_env, ResponseStatus::Success);
    let good_json = serde_json::to_vec(&good).unwrap();
    let mut wrong_correlation = good.clone();
    wrong_correlation.correlation_id = "someone-else".into();
    let mut other_merchant = good.clone();
    other_merchant.merchant_id = Some("merchant_b".into());
    let mut oversized = serde_json::to_value(&good).unwrap();
    oversized["connector_response"] = serde_json::json!({ "blob": "x".repeat(300 * 1024) });
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\x01not json at all".to_vec()),
        ("truncated", good_json[..good_json.len() / 2].to_vec()),
        ("oversized", serde_json::to_vec(&oversized).unwrap()),
        ("wrong correlation id", serde_json::to_vec(&wrong_correlation).unwrap()),
        ("another merchant", serde_json::to_vec(&other_merchant).unwrap()),
    ];
    for (_, body) in &bad {
        client.publish_with_headers(reply_to.clone(), reply_headers(request.message_id()), body.clone().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    // Only once all five are refused does the real reply go out.
    let expected = bad.len() as u64;
    common::eventually("the bad replies are refused", Duration::from_secs(10), || {
        let n = bridge.stats().rejected_replies;
        async move { (n >= expected).then_some(()) }
    })
    .await;
    assert!(!call.is_finished(), "a bad reply must not end the call");
    client.publish_with_headers(reply_to.clone(), reply_headers(request.message_id()), good_json.clone().into()).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call completes")
        .unwrap()
        .expect("the real reply is accepted");
    assert_eq!(reply.correlation_id, request.envelope().correlation_id);
    assert_eq!(reply.status, ResponseStatus::Success);
    msg.ack().await.unwrap();
    let text = bridge.metrics().render();
    assert_eq!(common::sample(&text, "nats_rejected_replies", &[("operation", "payments.authorize")]), Some(bad.len() as f64), "{text}");

    // Replies to an inbox nobody waits on any more.
    let other_id = nats_bridge::request::message_id("merchant_a", "pay_bad_2", catalogue::ops::authorize(), "att_1");
    let late_bad: Vec<(&str, Option<HeaderMap>, Vec<u8>)> = vec![
        ("undecodable", Some(reply_headers(request.message_id())), b"{\"status\":".to_vec()),
        ("no_message_id", None, good_json.clone()),
        ("wrong_inbox", Some(reply_headers(&other_id)), good_json.clone()),
        ("oversized", Some(reply_headers(request.message_id())), serde_json::to_vec(&oversized).unwrap()),
    ];
    for (_, h, body) in &late_bad {
        match h {
            Some(h) => client.publish_with_headers(reply_to.clone(), h.clone(), body.clone().into()).await.unwrap(),
            None => client.publish(reply_to.clone(), body.clone().into()).await.unwrap(),
        }
    }
    // And one plausible late reply (a duplicate of the real one), which is handed over.
    client.publish_with_headers(reply_to.clone(), reply_headers(request.message_id()), good_json.clone().into()).await.unwrap();
    client.flush().await.unwrap();
    let handed = tokio::time::timeout(Duration::from_secs(10), late.recv()).await.expect("the plausible late reply arrives").unwrap();
    assert_eq!(handed.message_id.as_deref(), Some(request.message_id()));
    let text = bridge.metrics().render();
    for (reason, _, _) in &late_bad {
        assert_eq!(common::sample(&text, "nats_late_replies_rejected", &[("reason", reason)]), Some(1.0), "{reason}:\n{text}");
    }
    assert!(late.try_recv().is_err(), "nothing refused reaches the application");
}

mod decoding {
    //! Reply decoding never panics on any bytes, refuses every truncation of a valid reply, and
    //! tells a reply for another request, merchant or payment from the real one.

    use nats_bridge::late::LateReply;
    use nats_bridge::{catalogue, OperationRequest, ResponseEnvelope, ResponseStatus};
    use proptest::prelude::*;

    fn request() -> OperationRequest {
        OperationRequest::new(catalogue::ops::capture(), "merchant_a", "pay_1", "cap_1")
            .router_data(serde_json::json!({ "amount": 500, "currency": "USD" }))
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let decoded = LateReply::decode(None, &bytes);
            if let Ok(env) = decoded.response {
                // Whatever decodes re-encodes: nothing half-built is handed over.
                prop_assert!(serde_json::to_vec(&env).is_ok());
            }
        }

        #[test]
        fn every_truncation_of_a_valid_reply_is_refused(cut in 0usize..10_000) {
            let req = request();
            let body = serde_json::to_vec(&ResponseEnvelope::reply_to(req.envelope(), ResponseStatus::Success)).unwrap();
            let cut = cut % body.len();
            prop_assert!(LateReply::decode(None, &body[..cut]).response.is_err());
            prop_assert!(LateReply::decode(None, &body).response.is_ok());
        }

        #[test]
        fn replies_for_someone_else_are_told_apart(
            correlation in "[a-z0-9-]{1,36}",
            merchant in "[a-z_]{1,12}",
            payment in "[a-z0-9_]{1,12}",
        ) {
            let req = request();
            let env = req.envelope();
            let good = ResponseEnvelope::reply_to(env, ResponseStatus::Success);
            prop_assert!(good.mismatch(env).is_none());
            let mut r = good.clone();
            r.correlation_id = correlation.clone();
            prop_assert_eq!(r.mismatch(env).is_some(), correlation != env.correlation_id);
            let mut r = good.clone();
            r.merchant_id = Some(merchant.clone());
            prop_assert_eq!(r.mismatch(env).is_some(), merchant != env.merchant_id);
            let mut r = good;
            r.payment_id = Some(payment.clone());
            prop_assert_eq!(r.mismatch(env).is_some(), payment != env.payment_id);
        }
    }
}

/// `good` with a `connector_response` padding it to exactly `len` bytes of JSON.
fn padded(good: &ResponseEnvelope, len: usize) -> Vec<u8> {
    let mut value = serde_json::to_value(good).unwrap();
    value["connector_response"] = serde_json::json!({ "blob": "" });
    let bare = serde_json::to_vec(&value).unwrap().len();
    value["connector_response"] = serde_json::json!({ "blob": "x".repeat(len - bare) });
    let body = serde_json::to_vec(&value).unwrap();
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn a_reply_of_exactly_max_reply_bytes_is_accepted_one_byte_more_is_not() {
    let env = common::start(0, WorkerConfig::default()).await;
    let bridge = env.bridge_with(nats_bridge::BridgeConfig { max_reply_bytes: 4096, ..env.bridge_config().clone() }).await;
    let client = env.nats().connect().await.unwrap();
    let HeldCall { call, request, msg, reply_to, envelope: request_env } = held_authorize(&env, &bridge, "pay_size_1").await;
    let good = ResponseEnvelope::reply_to(&request_env, ResponseStatus::Success);
    client.publish_with_headers(reply_to.clone(), reply_headers(request.message_id()), padded(&good, 4097).into()).await.unwrap();
    client.flush().await.unwrap();
    common::eventually("the reply one byte too big is refused", Duration::from_secs(10), || {
        let n = bridge.stats().rejected_replies;
        async move { (n == 1).then_some(()) }
    })
    .await;
    assert!(!call.is_finished(), "a refused reply must not end the call");
    client.publish_with_headers(reply_to.clone(), reply_headers(request.message_id()), padded(&good, 4096).into()).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), call).await.expect("the call completes").unwrap().expect("accepted");
    assert_eq!(reply.status, ResponseStatus::Success);
    assert_eq!(bridge.stats().rejected_replies, 1);
    msg.ack().await.unwrap();
    // The same bound for a late reply (nobody waits any more): handed over at the limit only.
    let mut late = bridge.late_replies().expect("late replies not taken yet");
    client.publish_with_headers(reply_to.clone(), reply_headers(request.message_id()), padded(&good, 4097).into()).await.unwrap();
    client.publish_with_headers(reply_to, reply_headers(request.message_id()), padded(&good, 4096).into()).await.unwrap();
    let handed = tokio::time::timeout(Duration::from_secs(10), late.recv()).await.expect("the late reply at the limit arrives").unwrap();
    assert_eq!(handed.message_id.as_deref(), Some(request.message_id()));
    let text = bridge.metrics().render();
    assert_eq!(common::sample(&text, "nats_late_replies_rejected", &[("reason", "oversized")]), Some(1.0), "{text}");
    assert!(late.try_recv().is_err(), "the oversized one is not handed over");
}

#[tokio::test]
async fn a_dropped_bridge_leaves_no_inbox_subscription_behind() {
    let env = common::start(0, WorkerConfig::default()).await;
    // The bridge's own connection, kept open after the bridge is dropped.
    let connection = env.nats().connect().await.unwrap();
    let bridge = nats_bridge::Bridge::with_client(connection.clone(), env.bridge_config().clone()).await.unwrap();
    let HeldCall { call, reply_to, .. } = held_authorize(&env, &bridge, "pay_drop_1").await;
    call.abort();
    let _ = call.await;
    drop(bridge);
    // Nobody subscribes to the inbox any more: a request to it has no responders.
    let client = env.nats().connect().await.unwrap();
    common::eventually("the inbox unsubscribed", Duration::from_secs(5), || {
        let (client, reply_to) = (client.clone(), reply_to.clone());
        async move {
            let asked = client.send_request(reply_to, async_nats::Request::new().timeout(Some(Duration::from_millis(200)))).await;
            matches!(asked, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders).then_some(())
        }
    })
    .await;
    drop(connection);
}
