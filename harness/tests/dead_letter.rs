//! Dead letters: poison messages and messages that exhausted their deliveries end up in the
//! dead-letter stream, with nothing lost.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use common::{eventually, money};
use mock_worker::WorkerConfig;
use nats_bridge::{catalogue::ops, headers, OperationRequest};

async fn dlq_messages(js: &jetstream::Context) -> Vec<jetstream::message::StreamMessage> {
    let Ok(mut stream) = js.get_stream("HYPERSWITCH_DLQ").await else { return Vec::new() };
    let Ok(info) = stream.info().await else { return Vec::new() };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first.max(1)..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_at_once() {
    let env = common::single(1).await;
    let js = env.bridge().jetstream().clone();
    js.publish("hyperswitch.payments.authorize", "{not an envelope".into()).await.unwrap().await.unwrap();
    let dead = eventually("the poison message in the DLQ", Duration::from_secs(10), || {
        let js = js.clone();
        async move {
            let m = dlq_messages(&js).await;
            (!m.is_empty()).then_some(m)
        }
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].subject.as_str(), "hyperswitch.dlq.payments.authorize");
    assert_eq!(&dead[0].payload[..], b"{not an envelope");
    let reason = dead[0].headers.get("X-Dlq-Reason").expect("reason header").as_str().to_string();
    assert!(reason.contains("undecodable"), "{reason}");
    assert!(env.processor().ledger().is_empty());
}

#[tokio::test]
async fn a_message_that_exhausts_its_deliveries_is_dead_lettered() {
    let worker = WorkerConfig { ack_wait_ms: 500, max_deliver: 2, ..Default::default() };
    let env = common::start(harness::nats::EnvConfig::single(), 1, worker).await;
    // The processor cannot be reached: every delivery is nak'ed.
    env.workers()[0].faults().processor_unavailable.store(true, Ordering::SeqCst);
    let mut config = env.bridge_config().clone();
    config.operations.insert(
        "payments.authorize".into(),
        nats_bridge::config::OperationOverride { timeout_ms: Some(1000), ack_timeout_ms: Some(500), ..Default::default() },
    );
    let bridge = nats_bridge::Bridge::with_client(env.nats().connect().await.unwrap(), config).await.unwrap();
    let r = OperationRequest::new(ops::authorize(), "m_dlq", "pay_dlq", "pay_dlq_1").router_data(money(100));
    assert!(bridge.call(&r).await.is_err());
    let js = env.bridge().jetstream().clone();
    let dead = eventually("the exhausted message in the DLQ", Duration::from_secs(15), || {
        let js = js.clone();
        async move {
            let m = dlq_messages(&js).await;
            (!m.is_empty()).then_some(m)
        }
    })
    .await;
    assert_eq!(dead.len(), 1, "copied once");
    let h = &dead[0].headers;
    assert_eq!(h.get(headers::MESSAGE_ID).unwrap().as_str(), r.message_id());
    assert!(h.get("X-Dlq-Reason").unwrap().as_str().contains("max deliveries"));
    // Nothing lost: the original is still in its stream too; nothing reached the processor.
    let mut payments = js.get_stream("HYPERSWITCH_PAYMENTS").await.unwrap();
    assert_eq!(payments.info().await.unwrap().state.messages, 1);
    assert!(env.processor().ledger().is_empty());
}
