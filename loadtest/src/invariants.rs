//! After the load: wait for the system to settle, fill the harness's [`Observations`] from the
//! processor ledger, the gateway store and the streams, and run the pure invariant checkers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use gateway::store::Store;
use harness::env::GatewayHandle;
use harness::scenario::checkers::{self, AuditMessage, Observations, Verdict};
use harness::Environment;
use nats_bridge::catalogue;

/// The invariants checked after a load run. The load keeps no history, so the checkers that
/// read one (accounting, latency, breaker) are not among them.
pub const INVARIANTS: [&str; 6] = ["no_double_effect", "amounts", "zero_stuck", "agreement", "integrity", "no_card_data"];

/// Payments, operations and refunds not yet in a final state (the scenario runner's count).
pub use harness::scenario::observe::open_items;

/// Polls until nothing is open (recovery included) and the workers have finished every
/// delivery (an effect may still be on its way), or `timeout` passes; returns what is still
/// open and how long it waited.
pub async fn settle(env: &harness::Environment, store: &Store, timeout: Duration) -> (usize, Duration) {
    let started = Instant::now();
    loop {
        let open = open_items(store);
        let busy = if open == 0 { harness::scenario::observe::unfinished_deliveries(env).await } else { 0 };
        if (open == 0 && busy == 0) || started.elapsed() >= timeout {
            return (open, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads every message of a stream with an ordered consumer: one pass instead of one request
/// per message, which matters with tens of thousands of messages.
async fn stream_messages(js: &jetstream::Context, name: &str) -> Result<Vec<AuditMessage>, String> {
    let mut stream = js.get_stream(name).await.map_err(|e| format!("stream {name}: {e}"))?;
    let info = stream.info().await.map_err(|e| format!("stream {name}: {e}"))?;
    let (count, last) = (info.state.messages, info.state.last_sequence);
    if count == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {name}: cannot read: {e}"))?;
    let mut messages = consumer.messages().await.map_err(|e| format!("stream {name}: cannot read: {e}"))?;
    let mut out = Vec::with_capacity(count as usize);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| format!("stream {name}: no message for 10 s after {} of {count}", out.len()))?;
        let Some(m) = next else { break };
        let m = m.map_err(|e| format!("stream {name}: {e}"))?;
        let seq = m.info().map(|i| i.stream_sequence).map_err(|e| format!("stream {name}: {e}"))?;
        let headers: Vec<(String, String)> = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_string())))
            .collect();
        out.push(AuditMessage {
            stream: name.to_string(),
            seq,
            subject: m.subject.to_string(),
            message_id: m.headers.as_ref().and_then(|h| h.get(nats_bridge::headers::NATS_MSG_ID)).map(|v| v.as_str().to_string()),
            headers,
        });
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

/// Every message of the bridge's durable streams.
pub async fn audit(env: &Environment) -> Result<Vec<AuditMessage>, String> {
    let js = env.bridge().jetstream();
    let config = env.bridge_config();
    let mut out = Vec::new();
    for family in catalogue::durable_families() {
        out.extend(stream_messages(js, &config.stream_name(family)).await?);
    }
    Ok(out)
}

/// What the checkers read: the ledger and accounts, the store, the audit trail; `texts` are
/// scanned for card data.
pub async fn observe(env: &Environment, gateway: &GatewayHandle, texts: Vec<(String, String)>) -> Result<Observations, String> {
    let store = &gateway.running.state.gateway.store;
    let ledger = env.processor().ledger();
    let payments: BTreeSet<(String, String)> = ledger.iter().map(|e| (e.merchant_id.clone(), e.payment_id.clone())).collect();
    let accounts = payments.iter().filter_map(|(m, p)| env.processor().account(m, p)).collect();
    let rejected = env.bridge().stats().rejected_replies + gateway.running.state.gateway.bridge.stats().rejected_replies;
    let read = |what: &str, e: gateway::store::StoreError| format!("cannot read the gateway's {what}: {e}");
    Ok(Observations {
        history: Vec::new(),
        ledger,
        accounts,
        payments: store.all_payments().map_err(|e| read("payments", e))?,
        operations: store.all_operations().map_err(|e| read("operations", e))?,
        refunds: store.all_refunds().map_err(|e| read("refunds", e))?,
        audit: audit(env).await?,
        rejected_replies: rejected,
        texts,
        stream_capture: env.bridge().verify_streams().await.err().map(|e| e.to_string()),
        poisoned: 0,
        dead_letters: 0,
    })
}

/// Runs [`INVARIANTS`] over `o`.
pub fn check(o: &Observations) -> Verdict {
    let names: Vec<String> = INVARIANTS.iter().map(|s| s.to_string()).collect();
    checkers::check(o, &names, &BTreeMap::new(), |_| None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_run_passes() {
        let v = check(&Observations::default());
        assert!(v.passed(), "{:?}", v.violations);
        assert_eq!(v.checked, INVARIANTS.to_vec());
    }

    #[test]
    fn card_numbers_in_texts_are_caught() {
        let o = Observations { texts: vec![("summary.md".into(), "card 4242424242424242".into())], ..Default::default() };
        let v = check(&o);
        assert!(!v.passed());
        assert_eq!(v.violations[0].invariant, "no_card_data");
    }
}
