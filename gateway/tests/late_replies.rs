//! Late replies the gateway refuses: a reply that does not match the request it claims to answer
//! (another correlation id, another merchant, an operation never sent) changes nothing.

mod common;

use nats_bridge::{RequestEnvelope, ResponseEnvelope, ResponseStatus};

#[tokio::test]
async fn the_gateway_applies_no_late_reply_that_does_not_match_its_request() {
    let env = common::single(1).await;
    let dir = common::TempDir::new("bad-late-replies");
    let gateway = env
        .start_gateway(gateway::config::GatewayConfig {
            api_keys: [("key_a".to_string(), "merchant_a".to_string())].into(),
            database: dir.path().join("gateway.db"),
            ..Default::default()
        })
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{}/payments", gateway.url))
        .header("api-key", "key_a")
        .json(&serde_json::json!({ "payment_id": "pay_late_1", "amount": 1000, "currency": "USD", "capture_method": "manual", "confirm": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["status"], "requires_capture", "{created}");
    let store = gateway.running.state.gateway.store.clone();
    let ops = store.operations_of("merchant_a", "pay_late_1").unwrap();
    let authorize = ops.iter().find(|o| o.operation == "payments.authorize").expect("the authorize operation");
    let request: RequestEnvelope = serde_json::from_str(&authorize.request).unwrap();

    // Feed forged late replies straight to the gateway's applier.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let applier = tokio::spawn(gateway::service::apply_late_replies(gateway.running.state.gateway.clone(), rx));
    let mut forged = ResponseEnvelope::failure(&request, "card_declined", "forged");
    forged.correlation_id = "not-the-request".into();
    let late = |message_id: &str, response: ResponseEnvelope| nats_bridge::late::LateReply {
        message_id: Some(message_id.to_string()),
        idempotency_key: None,
        correlation_id: Some(response.correlation_id.clone()),
        response: Ok(response),
    };
    tx.send(late(&authorize.message_id, forged)).await.unwrap();
    let mut other_merchant = ResponseEnvelope::failure(&request, "card_declined", "forged");
    other_merchant.merchant_id = Some("merchant_b".into());
    tx.send(late(&authorize.message_id, other_merchant)).await.unwrap();
    tx.send(late("merchant_a:pay_late_1:payments.capture:never_sent", ResponseEnvelope::reply_to(&request, ResponseStatus::Success)))
        .await
        .unwrap();
    drop(tx);
    applier.await.unwrap();
    let text = gateway.running.state.gateway.bridge.metrics().render();
    assert_eq!(common::sample(&text, "gateway_late_replies_refused", &[]), Some(3.0), "{text}");
    let payment: serde_json::Value =
        http.get(format!("{}/payments/pay_late_1", gateway.url)).header("api-key", "key_a").send().await.unwrap().json().await.unwrap();
    assert_eq!(payment["status"], "requires_capture", "forged replies changed nothing: {payment}");
}
