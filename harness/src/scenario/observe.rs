//! The one observation path: what a run left behind, read for the checkers (scenarios, the load
//! test and the conformance kit): the gateway's store, the processor's ledger and accounts, the
//! durable streams' messages (the audit trail) and the dead-letter stream.
//!
//! Every read returns a `Result`. A source that cannot be read makes the run's verdict an error
//! ("could not observe X: why"), never an empty answer a checker would pass over.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use nats_bridge::catalogue;

use super::checkers::{AuditMessage, Observations};
use super::history::{Event, Kind};
use crate::env::{Environment, GatewayHandle};

/// A source of observations could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not observe {what}: {reason}")]
pub struct ObserveError {
    /// What was being read (a stream, the gateway's payments...).
    pub what: String,
    /// Why it could not be.
    pub reason: String,
}

fn unreadable(what: impl Into<String>) -> impl FnOnce(String) -> ObserveError {
    let what = what.into();
    move |reason| ObserveError { what, reason }
}

/// How long the audit may wait for the next message of a stream it knows holds more.
const AUDIT_IDLE: Duration = Duration::from_secs(10);

/// Payments, operations and refunds of the gateway's store not yet in a final state: what a run
/// waits on before it is judged.
pub fn open_items(store: &gateway::store::Store) -> Result<usize, ObserveError> {
    let payments = store.transitional_payments().map_err(|e| unreadable("the gateway's payments")(e.to_string()))?;
    let operations = store.unresolved_operations(i64::MAX).map_err(|e| unreadable("the gateway's operations")(e.to_string()))?;
    let refunds = store.all_refunds().map_err(|e| unreadable("the gateway's refunds")(e.to_string()))?;
    Ok(payments.len() + operations.len() + refunds.iter().filter(|r| r.status == gateway::model::RefundStatus::Pending).count())
}

/// Messages the durable consumers of the streams have not finished: not yet delivered, or
/// delivered and not acked (a worker may be at the processor right now). A run is judged only
/// once this is 0 too: a payment failed by recovery must not be charged after the checkers ran.
pub async fn unfinished_deliveries(env: &Environment) -> Result<usize, ObserveError> {
    let js = env.bridge().jetstream();
    let config = env.bridge_config();
    let mut total = 0;
    for family in catalogue::durable_families() {
        let name = config.stream_name(family);
        let what = || format!("the consumers of stream {name}");
        let stream = js.get_stream(&name).await.map_err(|e| unreadable(what())(e.to_string()))?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| unreadable(what())(e.to_string()))?;
            total += info.num_pending as usize + info.num_ack_pending;
        }
    }
    Ok(total)
}

/// Polls until nothing is open in the store (recovery included) and the workers have finished
/// every delivery (an effect may still be on its way), or `timeout` passes. Returns what is
/// still open and how long it waited. A read that fails is retried until the deadline (a
/// fault may have just restarted the server); one still failing then is the error.
pub async fn settle(env: &Environment, store: &gateway::store::Store, timeout: Duration) -> Result<(usize, Duration), ObserveError> {
    let started = Instant::now();
    loop {
        let polled = match open_items(store) {
            Ok(0) => unfinished_deliveries(env).await.map(|busy| (0, busy)),
            Ok(open) => Ok((open, 0)),
            Err(e) => Err(e),
        };
        match polled {
            Ok((0, 0)) => return Ok((0, started.elapsed())),
            Ok((open, _)) if started.elapsed() >= timeout => return Ok((open, started.elapsed())),
            Err(e) if started.elapsed() >= timeout => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Reads every message of a stream with an ordered consumer: one pass instead of one request
/// per message, which matters with tens of thousands of messages.
async fn stream_messages(js: &jetstream::Context, name: &str) -> Result<Vec<AuditMessage>, ObserveError> {
    let fail = || unreadable(format!("stream {name}"));
    let mut stream = js.get_stream(name).await.map_err(|e| fail()(e.to_string()))?;
    let info = stream.info().await.map_err(|e| fail()(e.to_string()))?;
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
        .map_err(|e| fail()(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| fail()(e.to_string()))?;
    let mut out = Vec::with_capacity(count as usize);
    loop {
        let next = tokio::time::timeout(AUDIT_IDLE, messages.next())
            .await
            .map_err(|_| fail()(format!("no message for {} s after {} of {count}", AUDIT_IDLE.as_secs(), out.len())))?;
        let Some(m) = next else { break };
        let m = m.map_err(|e| fail()(e.to_string()))?;
        let seq = m.info().map(|i| i.stream_sequence).map_err(|e| fail()(e.to_string()))?;
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
pub async fn audit(env: &Environment) -> Result<Vec<AuditMessage>, ObserveError> {
    let js = env.bridge().jetstream();
    let config = env.bridge_config();
    let mut out = Vec::new();
    for family in catalogue::durable_families() {
        out.extend(stream_messages(js, &config.stream_name(family)).await?);
    }
    Ok(out)
}

/// Messages in the dead-letter stream.
pub async fn dead_letters(env: &Environment) -> Result<usize, ObserveError> {
    let name = env.bridge_config().dlq_stream_name();
    let fail = || unreadable(format!("the dead-letter stream {name}"));
    let mut stream = env.bridge().jetstream().get_stream(&name).await.map_err(|e| fail()(e.to_string()))?;
    let info = stream.info().await.map_err(|e| fail()(e.to_string()))?;
    Ok(info.state.messages as usize)
}

/// What a run sent, for the checkers: a history's payment creations.
pub fn payments_sent(history: &[Event]) -> usize {
    history.iter().filter(|e| e.kind == Kind::Invoke && e.f == "create").count()
}

/// Everything the checkers need. `history` is the clients' (empty for a load run), `sent` how
/// many payment calls the clients made, `texts` what to scan for card data, `poisoned` how many
/// poison messages the faults published.
pub async fn collect(
    env: &Environment,
    gateway: &GatewayHandle,
    history: Vec<Event>,
    sent: usize,
    texts: Vec<(String, String)>,
    poisoned: usize,
) -> Result<Observations, ObserveError> {
    let store = &gateway.running.state.gateway.store;
    let ledger = env.processor().ledger();
    let payments: BTreeSet<(String, String)> = ledger.iter().map(|e| (e.merchant_id.clone(), e.payment_id.clone())).collect();
    let accounts = payments.iter().filter_map(|(m, p)| env.processor().account(m, p)).collect();
    let rejected = env.bridge().stats().rejected_replies + gateway.running.state.gateway.bridge.stats().rejected_replies;
    let read = |what: &str| unreadable(format!("the gateway's {what}"));
    Ok(Observations {
        history,
        ledger,
        accounts,
        payments: store.all_payments().map_err(|e| read("payments")(e.to_string()))?,
        operations: store.all_operations().map_err(|e| read("operations")(e.to_string()))?,
        refunds: store.all_refunds().map_err(|e| read("refunds")(e.to_string()))?,
        audit: audit(env).await?,
        rejected_replies: rejected,
        texts,
        stream_capture: env.bridge().verify_streams().await.err().map(|e| e.to_string()),
        poisoned,
        dead_letters: dead_letters(env).await?,
        sent,
    })
}
