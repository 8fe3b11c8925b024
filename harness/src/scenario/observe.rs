//! Collects what a run observed, for the checkers: the processor's ledger and accounts, the
//! gateway's store, and the durable streams' messages (the audit trail).

use std::collections::BTreeSet;

use async_nats::jetstream;
use nats_bridge::catalogue;

use super::checkers::{AuditMessage, Observations};
use super::history::Event;
use crate::env::{Environment, GatewayHandle};

/// Payments, operations and refunds of the gateway's store not yet in a final state: what a run
/// waits on before it is judged.
pub fn open_items(store: &gateway::store::Store) -> usize {
    store.transitional_payments().map(|v| v.len()).unwrap_or(0)
        + store.unresolved_operations(i64::MAX).map(|v| v.len()).unwrap_or(0)
        + store.all_refunds().map(|v| v.iter().filter(|r| r.status == gateway::model::RefundStatus::Pending).count()).unwrap_or(0)
}

/// Messages the durable consumers of the streams have not finished: not yet delivered, or
/// delivered and not acked (a worker may be at the processor right now). A run is judged only
/// once this is 0 too: a payment failed by recovery must not be charged after the checkers ran.
pub async fn unfinished_deliveries(env: &Environment) -> usize {
    let js = env.bridge().jetstream();
    let config = env.bridge_config();
    let mut total = 0;
    for family in catalogue::durable_families() {
        let name = config.stream_name(family);
        let Ok(stream) = js.get_stream(&name).await else { continue };
        let mut consumers = stream.consumers();
        while let Some(Ok(info)) = futures::StreamExt::next(&mut consumers).await {
            total += info.num_pending as usize + info.num_ack_pending;
        }
    }
    total
}

/// Reads every message of the bridge's durable streams.
pub async fn audit(env: &Environment) -> Vec<AuditMessage> {
    let js = env.bridge().jetstream();
    let config = env.bridge_config();
    let mut out = Vec::new();
    for family in catalogue::durable_families() {
        let name = config.stream_name(family);
        out.extend(stream_messages(js, &name).await);
    }
    out
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> Vec<AuditMessage> {
    let Ok(mut stream) = js.get_stream(name).await else { return Vec::new() };
    let Ok(info) = stream.info().await else { return Vec::new() };
    let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first..=last {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        let headers: Vec<(String, String)> =
            m.headers.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_string()))).collect();
        out.push(AuditMessage {
            stream: name.to_string(),
            seq,
            subject: m.subject.to_string(),
            message_id: m.headers.get(nats_bridge::headers::NATS_MSG_ID).map(|v| v.as_str().to_string()),
            headers,
        });
    }
    out
}

/// Messages in the dead-letter stream (0 when it cannot be read).
pub async fn dead_letters(env: &Environment) -> usize {
    let js = env.bridge().jetstream();
    let Ok(mut stream) = js.get_stream(env.bridge_config().dlq_stream_name()).await else { return 0 };
    stream.info().await.map(|i| i.state.messages as usize).unwrap_or(0)
}

/// Everything the checkers need; `poisoned` is how many poison messages the faults published.
pub async fn collect(
    env: &Environment,
    gateway: &GatewayHandle,
    history: Vec<Event>,
    texts: Vec<(String, String)>,
    poisoned: usize,
) -> Observations {
    let store = &gateway.running.state.gateway.store;
    let ledger = env.processor().ledger();
    let payments: BTreeSet<(String, String)> = ledger.iter().map(|e| (e.merchant_id.clone(), e.payment_id.clone())).collect();
    let accounts = payments.iter().filter_map(|(m, p)| env.processor().account(m, p)).collect();
    let rejected = env.bridge().stats().rejected_replies + gateway.running.state.gateway.bridge.stats().rejected_replies;
    Observations {
        history,
        ledger,
        accounts,
        payments: store.all_payments().unwrap_or_default(),
        operations: store.all_operations().unwrap_or_default(),
        refunds: store.all_refunds().unwrap_or_default(),
        audit: audit(env).await,
        rejected_replies: rejected,
        texts,
        stream_capture: env.bridge().verify_streams().await.err().map(|e| e.to_string()),
        poisoned,
        dead_letters: dead_letters(env).await,
    }
}
