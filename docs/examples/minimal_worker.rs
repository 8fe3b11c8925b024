//! A minimal worker: the worked example of `docs/worker-guide.md`.
//!
//! It serves one durable operation, one query and the reply lookup, with results stored by
//! idempotency key in a JetStream key-value bucket. `harness/tests/worker_guide.rs` runs this
//! file against a real NATS server and the real bridge, and checks that the guide shows it
//! unchanged.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, AckKind};
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use nats_bridge::{headers, subjects, BridgeConfig, ErrorBody, Operation, RequestEnvelope, ResponseEnvelope, ResponseStatus};

/// What the processor says about one request: `Ok` with a reply (success or a refusal),
/// `Err` when it could not be asked (network down...): nothing is known, try again later.
pub type Process = Arc<dyn Fn(&RequestEnvelope) -> Result<ResponseEnvelope, String> + Send + Sync>;

/// Any error of the loops.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The queue group every instance of this worker joins (one instance answers each query).
pub const QUEUE_GROUP: &str = "guide-workers";

/// The key-value bucket of results.
pub async fn results_bucket(js: &jetstream::Context) -> Result<kv::Store, Error> {
    Ok(js.create_key_value(kv::Config { bucket: "guide_results".into(), history: 1, ..Default::default() }).await?)
}

/// Bucket keys allow few characters: hex keeps every idempotency key exact and valid.
fn bucket_key(idempotency_key: &str) -> String {
    idempotency_key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// "The same request": the same operation instance with the same router data.
fn fingerprint(env: &RequestEnvelope) -> String {
    serde_json::json!([env.operation, env.merchant_id, env.payment_id, env.attempt_id, env.router_data]).to_string()
}

/// The stored result of `env`'s idempotency key, with the caller's correlation id; a key
/// stored for a different request is refused.
async fn stored(results: &kv::Store, env: &RequestEnvelope) -> Result<Option<ResponseEnvelope>, Error> {
    let Some(bytes) = results.get(bucket_key(&env.idempotency_key)).await? else { return Ok(None) };
    let (print, mut response): (String, ResponseEnvelope) = serde_json::from_slice(&bytes)?;
    if print != fingerprint(env) {
        return Ok(Some(ResponseEnvelope::failure(env, "IDEMPOTENCY_KEY_REUSED", "the key was used for another request")));
    }
    response.correlation_id = env.correlation_id.clone();
    Ok(Some(response))
}

/// Headers of a reply: echoes that let a caller match a late reply to its operation.
fn reply_headers(env: &RequestEnvelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::CORRELATION_ID, env.correlation_id.as_str());
    h.insert(headers::IDEMPOTENCY_KEY, env.idempotency_key.as_str());
    h.insert(headers::OPERATION, env.operation.as_str());
    h
}

/// Serves one durable operation until the connection closes.
pub async fn serve_durable(client: Client, config: BridgeConfig, op: Operation, process: Process) -> Result<(), Error> {
    let js = jetstream::new(client.clone());
    let results = results_bucket(&js).await?;
    // 1. One durable pull consumer per operation, shared by every instance of the worker.
    let stream = js.get_stream(config.stream_name(op.family)).await?;
    let name = format!("guide_{}_{}", op.family, op.action);
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subjects::wildcard(&config.subject_template(op)),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: 5,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        // 2. Decode. A message that can never be processed goes to the dead letters.
        let env = match serde_json::from_slice::<RequestEnvelope>(&msg.payload) {
            Ok(env) if env.operation == op.name => env,
            Ok(env) => {
                dead_letter(&js, &config, op, &msg, &format!("operation {} on the subject of {}", env.operation, op.name)).await?;
                continue;
            }
            Err(e) => {
                dead_letter(&js, &config, op, &msg, &format!("undecodable envelope: {e}")).await?;
                continue;
            }
        };
        // 3. Idempotency: a stored result is sent again; the processor is not asked twice.
        let response = match stored(&results, &env).await? {
            Some(response) => response,
            None => match process(&env) {
                // 4. Store the result before replying: a crash after this point re-sends it.
                Ok(response) => {
                    let record = serde_json::to_vec(&(fingerprint(&env), &response))?;
                    results.put(bucket_key(&env.idempotency_key), record.into()).await?;
                    response
                }
                // Nothing known: give the message back. After `max_deliver` deliveries
                // JetStream gives up and the dead-letter mover takes it (see the guide).
                Err(_) => {
                    msg.ack_with(AckKind::Nak(Some(Duration::from_millis(200)))).await?;
                    continue;
                }
            },
        };
        // 5. Reply to the inbox the request names, with core NATS.
        if let Some(reply_to) = msg.headers.as_ref().and_then(|h| h.get(headers::REPLY_TO)) {
            let body = serde_json::to_vec(&response)?;
            client.publish_with_headers(reply_to.as_str().to_string(), reply_headers(&env), body.into()).await?;
            client.flush().await?;
        }
        // 6. Ack last: the effect is recorded and the reply has left.
        msg.ack().await?;
    }
    Ok(())
}

/// Copies a message to the dead-letter stream, then terminates it (no more redeliveries).
async fn dead_letter(
    js: &jetstream::Context,
    config: &BridgeConfig,
    op: Operation,
    msg: &jetstream::Message,
    reason: &str,
) -> Result<(), Error> {
    let seq = msg.info()?.stream_sequence;
    let mut h = msg.headers.clone().unwrap_or_default();
    h.insert(headers::NATS_MSG_ID, format!("dlq:{}:{seq}", config.stream_name(op.family)));
    h.insert("X-Dlq-Reason", reason);
    h.insert("X-Dlq-Sequence", seq.to_string());
    js.publish_with_headers(config.dlq_subject(op), h, msg.payload.clone()).await?.await?;
    msg.ack_with(AckKind::Term).await?;
    Ok(())
}

/// Serves one query until the connection closes: answer on the request's reply subject.
pub async fn serve_query(client: Client, config: BridgeConfig, op: Operation, process: Process) -> Result<(), Error> {
    let subject = subjects::wildcard(&config.subject_template(op));
    let mut requests = client.queue_subscribe(subject, QUEUE_GROUP.into()).await?;
    while let Some(msg) = requests.next().await {
        let Some(reply) = msg.reply.clone() else { continue };
        let (headers, response) = match serde_json::from_slice::<RequestEnvelope>(&msg.payload) {
            Ok(env) => {
                let response = process(&env).unwrap_or_else(|e| ResponseEnvelope::failure(&env, "PROCESSOR_UNAVAILABLE", e));
                (reply_headers(&env), response)
            }
            Err(e) => (
                HeaderMap::new(),
                ResponseEnvelope {
                    status: ResponseStatus::Failure,
                    correlation_id: String::new(),
                    merchant_id: None,
                    payment_id: None,
                    transaction_id: None,
                    connector_response: serde_json::Value::Null,
                    error: Some(ErrorBody { code: "INVALID_REQUEST".into(), message: e.to_string() }),
                },
            ),
        };
        client.publish_with_headers(reply, headers, serde_json::to_vec(&response)?.into()).await?;
    }
    Ok(())
}

/// Answers reply lookups: a bridge whose publish was a duplicate asks for the stored result.
pub async fn serve_lookups(client: Client, config: BridgeConfig) -> Result<(), Error> {
    let results = results_bucket(&jetstream::new(client.clone())).await?;
    let subject = subjects::wildcard(&config.lookup_template());
    let mut requests = client.queue_subscribe(subject, QUEUE_GROUP.into()).await?;
    while let Some(msg) = requests.next().await {
        let Some(reply) = msg.reply.clone() else { continue };
        let found = match serde_json::from_slice::<RequestEnvelope>(&msg.payload) {
            Ok(env) => stored(&results, &env).await?,
            Err(_) => None,
        };
        let mut h = HeaderMap::new();
        h.insert(headers::LOOKUP, if found.is_some() { "hit" } else { "miss" });
        let body = match found {
            Some(response) => serde_json::to_vec(&response)?,
            None => Vec::new(),
        };
        client.publish_with_headers(reply, h, body.into()).await?;
    }
    Ok(())
}
