//! Starts a worker: a pull consumer per durable operation, a queue subscription per query
//! subject, the reply-lookup responder and the dead-letter mover.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use mock_processor::ProcessorClient;
use nats_protocol::{catalogue, connection, headers, request, subjects, Naming, Operation, Pattern, RequestEnvelope, ResponseEnvelope};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::{CrashPoint, WorkerConfig};
use crate::crash::CrashPlan;
use crate::handler::{Faults, Handled, Handler, Lookup};
use crate::store::ResultStore;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// NATS connection failed.
    #[error("cannot connect to nats at {url}: {reason}")]
    Connect {
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The processor URL is invalid.
    #[error("invalid processor url: {0}")]
    Processor(String),
    /// Streams, consumers, buckets or subscriptions could not be set up.
    #[error("cannot set up {what}: {reason}")]
    Setup {
        /// What.
        what: String,
        /// Why.
        reason: String,
    },
}

fn setup(what: impl Into<String>) -> impl FnOnce(String) -> StartError {
    let what = what.into();
    move |reason| StartError::Setup { what, reason }
}

/// A running worker. Dropping it (or [`WorkerHandle::kill`]) stops every task at once, without
/// acking what is in flight, as a crash would; [`WorkerHandle::shutdown`] drains first.
pub struct WorkerHandle {
    /// The worker's own connection.
    client: Client,
    /// Its tasks.
    tasks: JoinSet<()>,
    /// Fault knobs.
    faults: Arc<Faults>,
}

impl WorkerHandle {
    /// The fault knobs.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Stops at once: in-flight messages stay unacked and will be redelivered.
    pub fn kill(mut self) {
        self.tasks.abort_all();
    }

    /// Stops taking work and closes the connection.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        let _ = self.client.drain().await;
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

fn served(config: &WorkerConfig) -> Vec<Operation> {
    catalogue::all().filter(|op| config.operations.is_empty() || config.operations.iter().any(|n| n == op.name)).collect()
}

/// The durable consumer name of an operation for a consumer prefix (shared by every worker
/// instance with that prefix; the default prefix is `worker`).
pub fn consumer_name(prefix: &str, op: Operation) -> String {
    format!("{prefix}_{}_{}", op.family, op.action)
}

/// Connects and starts serving. Streams must exist (the bridge provisions them); `naming`
/// gives their names and the subjects (a bridge configuration's `naming()`).
pub async fn start(config: WorkerConfig, naming: Naming) -> Result<WorkerHandle, StartError> {
    let fail = |reason: String| StartError::Connect { url: config.nats_url.clone(), reason };
    let timeout = Duration::from_millis(config.connection_timeout_ms.max(1));
    let options = async_nats::ConnectOptions::new().name(&config.name).connection_timeout(timeout).max_reconnects(None);
    let options = connection::apply_security("worker", options, &config.tls, &config.auth).await.map_err(|e| fail(e.to_string()))?;
    // Tried once per server: a bad certificate or password fails the start instead of looping.
    let urls = connection::split_urls(&config.nats_url);
    let bound = timeout * urls.len().max(1) as u32 + Duration::from_secs(1);
    let client = match tokio::time::timeout(bound, options.connect(urls)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(fail(connection::explain_connect_error(&e, &config.tls, &config.auth, timeout))),
        Err(_) => return Err(fail(format!("timed out after {}ms", timeout.as_millis()))),
    };
    start_with_client(client, config, naming).await
}

/// Starts serving over an existing connection.
pub async fn start_with_client(client: Client, config: WorkerConfig, naming: Naming) -> Result<WorkerHandle, StartError> {
    let js = jetstream::new(client.clone());
    let processor = ProcessorClient::new(&config.processor_url)
        .map_err(|e| StartError::Processor(e.to_string()))?
        .with_timeout(std::time::Duration::from_millis(config.processor_timeout_ms.max(1)));
    let store = ResultStore::open(&js, &config.results_bucket, naming.jetstream.replicas)
        .await
        .map_err(|e| setup("result bucket")(e.to_string()))?;
    let faults = Arc::new(Faults::default());
    let handler = Arc::new(
        Handler::new(processor, store, config.profile.clone(), faults.clone(), config.name.clone())
            .with_max_request_age(config.max_request_age_ms)
            .with_lease(config.ack_wait_ms)
            .with_crash(CrashPlan::new(config.crash_at, config.crash_after, &config.name))
            .with_lookup_ignoring_claims(config.defects.lookup_ignores_claims),
    );
    if let Some(point) = config.crash_at {
        warn!(worker = %config.name, %point, after = config.crash_after, "crash point armed: this process will kill itself");
    }
    let limit = Arc::new(Semaphore::new(config.max_in_flight));
    let naming = Arc::new(naming);
    let mut tasks = JoinSet::new();

    for op in served(&config) {
        let filter = subjects::wildcard(&naming.subject_template(op));
        match op.pattern {
            Pattern::Durable => {
                let stream_name = naming.stream_name(op.family);
                let stream = js.get_stream(&stream_name).await.map_err(|e| setup(format!("stream {stream_name}"))(e.to_string()))?;
                let name = consumer_name(&config.consumer_prefix, op);
                let deliver_policy = match config.deliver_from_seq {
                    Some(start_sequence) => jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence },
                    None => jetstream::consumer::DeliverPolicy::All,
                };
                let consumer: jetstream::consumer::PullConsumer = stream
                    .get_or_create_consumer(
                        &name,
                        pull::Config {
                            durable_name: Some(name.clone()),
                            deliver_policy,
                            filter_subject: filter.clone(),
                            ack_policy: jetstream::consumer::AckPolicy::Explicit,
                            ack_wait: Duration::from_millis(config.ack_wait_ms),
                            max_deliver: config.max_deliver,
                            max_ack_pending: 10_000,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| setup(format!("consumer {name}"))(e.to_string()))?;
                let mut messages = consumer.messages().await.map_err(|e| setup(format!("pull of {}", op.name))(e.to_string()))?;
                let (client, handler, limit, naming) = (client.clone(), handler.clone(), limit.clone(), naming.clone());
                let ack_first = config.defects.ack_before_processor;
                // Well inside the ack wait, so a live worker's message is never redelivered.
                let progress_every = Duration::from_millis((config.ack_wait_ms / 3).max(50));
                tasks.spawn(async move {
                    let mut inner = JoinSet::new();
                    while let Some(next) = messages.next().await {
                        let msg = match next {
                            Ok(msg) => msg,
                            Err(e) => {
                                warn!(operation = op.name, error = %e, "pull error");
                                continue;
                            }
                        };
                        let Ok(permit) = limit.clone().acquire_owned().await else { break };
                        let (client, handler, naming) = (client.clone(), handler.clone(), naming.clone());
                        inner.spawn(async move {
                            on_durable(&client, &handler, &naming, op, msg, ack_first, progress_every).await;
                            drop(permit);
                        });
                        while inner.try_join_next().is_some() {}
                    }
                });
            }
            Pattern::Query => {
                let mut sub = client
                    .queue_subscribe(filter.clone(), config.queue_group.clone())
                    .await
                    .map_err(|e| setup(format!("subscription {filter}"))(e.to_string()))?;
                let (client, handler) = (client.clone(), handler.clone());
                tasks.spawn(async move {
                    let mut inner = JoinSet::new();
                    while let Some(msg) = sub.next().await {
                        let (client, handler) = (client.clone(), handler.clone());
                        inner.spawn(async move { on_query(&client, &handler, op, msg).await });
                        while inner.try_join_next().is_some() {}
                    }
                });
            }
        }
    }

    // Reply lookups, asked by a bridge whose publish JetStream reported as a duplicate.
    let lookup = subjects::wildcard(&naming.lookup_template());
    let mut sub = client
        .queue_subscribe(lookup.clone(), config.queue_group.clone())
        .await
        .map_err(|e| setup(format!("subscription {lookup}"))(e.to_string()))?;
    {
        let (client, handler) = (client.clone(), handler.clone());
        tasks.spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply.clone() else { continue };
                let found = match serde_json::from_slice::<RequestEnvelope>(&msg.payload) {
                    Ok(env) => handler.lookup(&env).await,
                    Err(_) => Lookup::Miss,
                };
                let mut h = HeaderMap::new();
                let (answer, body) = match found {
                    Lookup::Hit(r) => ("hit", serde_json::to_vec(&r).unwrap_or_default()),
                    Lookup::Pending => ("pending", Vec::new()),
                    Lookup::Miss => ("miss", Vec::new()),
                };
                h.insert(headers::LOOKUP, answer);
                let _ = client.publish_with_headers(reply, h, body.into()).await;
            }
        });
    }

    // Dead letters: a message delivered max_deliver times is copied to the DLQ stream.
    // Subject wildcards match whole tokens only: take every stream's advisories, keep ours.
    let advisories = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.*.*".to_string();
    let mut sub = client
        .queue_subscribe(advisories.clone(), config.queue_group.clone())
        .await
        .map_err(|e| setup(format!("subscription {advisories}"))(e.to_string()))?;
    {
        let (js, naming) = (js.clone(), naming.clone());
        tasks.spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Err(e) = dead_letter_from_advisory(&js, &naming, &msg.payload).await {
                    error!(error = %e, "dead-letter move failed");
                }
            }
        });
    }
    client.flush().await.map_err(|e| setup("flush")(e.to_string()))?;
    info!(worker = %config.name, operations = served(&config).len(), "worker ready");
    Ok(WorkerHandle { client, tasks, faults })
}

/// Handles one delivery. While the handler works, the message is kept in progress (`+WPI`)
/// every `progress_every`: JetStream redelivers only when this worker stops answering (it died
/// or lost its link), never because an operation is slow. A slow operation redelivered to a
/// second worker would otherwise run twice at the processor whenever the processor ignores
/// idempotency keys.
async fn on_durable(
    client: &Client,
    handler: &Handler,
    naming: &Naming,
    op: Operation,
    msg: jetstream::Message,
    ack_first: bool,
    progress_every: Duration,
) {
    if ack_first {
        // The defect: the message is gone from JetStream's view before anything was done.
        let _ = msg.ack().await;
    }
    let env = match serde_json::from_slice::<RequestEnvelope>(&msg.payload) {
        Ok(env) if env.operation == op.name => env,
        Ok(env) => return poison(client, naming, op, &msg, &format!("operation {} on the subject of {}", env.operation, op.name)).await,
        Err(e) => return poison(client, naming, op, &msg, &format!("undecodable envelope: {e}")).await,
    };
    let reply_to = msg.headers.as_ref().and_then(|h| h.get(headers::REPLY_TO)).map(|v| v.as_str().to_string());
    let work = handler.durable(op, &env);
    tokio::pin!(work);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
    let handled = loop {
        tokio::select! {
            handled = &mut work => break handled,
            _ = progress.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    warn!(operation = op.name, error = %e, "in-progress ack failed");
                }
            }
        }
    };
    match handled {
        Ok(Handled::Reply(response)) => {
            if let Some(reply_to) = reply_to.filter(|_| !handler.drop_replies()) {
                send_reply(client, &reply_to, &env, &response).await;
                if handler.duplicate_replies() {
                    send_reply(client, &reply_to, &env, &response).await;
                }
            }
            if handler.crash_armed(CrashPoint::AfterReply) {
                // The reply must really have left: flush it to the server before dying.
                if let Err(e) = client.flush().await {
                    warn!(error = %e, "flush before the crash point failed");
                }
                handler.crash_point(CrashPoint::AfterReply, &env.idempotency_key);
            }
            let delay = handler.ack_delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // Ack last: the reply went out first on this same connection, and the result is stored.
            if let Err(e) = msg.ack().await {
                warn!(error = %e, "ack failed");
            }
        }
        Ok(Handled::Stalled) => {}
        Err(e) => {
            warn!(operation = op.name, key = %env.idempotency_key, error = %e, "will retry");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_millis(500)))).await;
        }
    }
}

async fn send_reply(client: &Client, reply_to: &str, env: &RequestEnvelope, response: &ResponseEnvelope) {
    let mut h = HeaderMap::new();
    h.insert(headers::CORRELATION_ID, env.correlation_id.as_str());
    h.insert(headers::IDEMPOTENCY_KEY, env.idempotency_key.as_str());
    h.insert(headers::OPERATION, env.operation.as_str());
    // The message id lets a caller that gave up match a late reply to its operation.
    if let Some(op) = catalogue::find(&env.operation) {
        h.insert(headers::MESSAGE_ID, request::message_id(&env.merchant_id, &env.payment_id, op, &env.attempt_id));
    }
    let body = Bytes::from(serde_json::to_vec(response).unwrap_or_default());
    if let Err(e) = client.publish_with_headers(reply_to.to_string(), h, body).await {
        warn!(error = %e, "reply publish failed");
    }
}

async fn on_query(client: &Client, handler: &Handler, op: Operation, msg: async_nats::Message) {
    let Some(reply) = msg.reply.clone() else { return };
    let response = match serde_json::from_slice::<RequestEnvelope>(&msg.payload) {
        Ok(env) => {
            let r = handler.query(op, &env).await;
            send_reply(client, reply.as_str(), &env, &r).await;
            return;
        }
        Err(e) => {
            serde_json::json!({ "status": "failure", "correlation_id": "", "error": { "code": "INVALID_REQUEST", "message": e.to_string() } })
        }
    };
    let _ = client.publish(reply, Bytes::from(response.to_string())).await;
}

/// Copies an undecodable message to the dead-letter stream, then terminates it.
async fn poison(client: &Client, naming: &Naming, op: Operation, msg: &jetstream::Message, reason: &str) {
    warn!(operation = op.name, %reason, "poison message");
    let js = jetstream::new(client.clone());
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let mut h = msg.headers.clone().unwrap_or_default();
    h.insert(headers::NATS_MSG_ID, format!("dlq:{}:{seq}", naming.stream_name(op.family)));
    h.insert("X-Dlq-Reason", reason);
    h.insert("X-Dlq-Sequence", seq.to_string());
    let stored = match js.publish_with_headers(naming.dlq_subject(op), h, msg.payload.clone()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    match stored {
        true => {
            let _ = msg.ack_with(AckKind::Term).await;
        }
        false => {
            // Not copied: leave it for redelivery rather than lose it.
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
}

/// The operation a consumer named `<prefix>_<family>_<action>` serves, whatever its prefix
/// (the advisory may come from a replay consumer of another worker).
fn operation_of_consumer(consumer: &str) -> Option<Operation> {
    catalogue::all()
        .filter(|op| {
            let suffix = consumer_name("", op);
            consumer.len() > suffix.len() && consumer.ends_with(&suffix)
        })
        // The longest suffix wins (`..._complete_authorize` over `..._authorize`).
        .max_by_key(|op| op.family.to_string().len() + op.action.len())
}

async fn dead_letter_from_advisory(js: &jetstream::Context, naming: &Naming, payload: &[u8]) -> Result<(), String> {
    let adv: MaxDeliveries = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if !adv.stream.starts_with(&format!("{}_", naming.jetstream.stream_prefix)) || adv.stream == naming.dlq_stream_name() {
        return Ok(());
    }
    let op = operation_of_consumer(&adv.consumer).ok_or_else(|| format!("advisory for unknown consumer {}", adv.consumer))?;
    let stream = js.get_stream(&adv.stream).await.map_err(|e| e.to_string())?;
    let original = stream.get_raw_message(adv.stream_seq).await.map_err(|e| e.to_string())?;
    let mut h = original.headers.clone();
    h.insert(headers::NATS_MSG_ID, format!("dlq:{}:{}", adv.stream, adv.stream_seq));
    h.insert("X-Dlq-Reason", format!("max deliveries ({}) reached", adv.deliveries));
    h.insert("X-Dlq-Sequence", adv.stream_seq.to_string());
    js.publish_with_headers(naming.dlq_subject(op), h, original.payload.clone())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    warn!(stream = %adv.stream, seq = adv.stream_seq, "message dead-lettered");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_of_any_prefix_map_back_to_their_operation() {
        for op in catalogue::all().filter(|op| op.pattern == Pattern::Durable) {
            for prefix in ["worker", "replay_7", "a"] {
                let name = consumer_name(prefix, op);
                assert_eq!(operation_of_consumer(&name).map(|o| o.name), Some(op.name), "{name}");
            }
        }
        assert!(operation_of_consumer("_payments_authorize").is_none());
        assert!(operation_of_consumer("worker_nothing_here").is_none());
    }
}
