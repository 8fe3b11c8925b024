//! The bridge: one NATS connection, one reply inbox, and the two call patterns, behind a
//! circuit breaker per operation and measured in the bridge's metrics registry.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, publish::PublishAck};
use async_nats::{Client, HeaderMap, RequestErrorKind};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, warn};

use crate::breaker::{BreakerState, Breakers, CallVerdict};
use crate::catalogue::{Operation, Pattern};
use crate::config::BridgeConfig;
use crate::envelope::ResponseEnvelope;
use crate::error::{CallError, ConnectError};
use crate::headers;
use crate::inbox::ReplyInbox;
use crate::late::{LateReply, LateSink};
use crate::metrics::{BridgeMetrics, Registry};
use crate::request::OperationRequest;
use crate::stats::{Stats, StatsSnapshot};
use crate::streams::{self, StreamError, StreamPlan};
use crate::subjects;

/// What a reply lookup learnt (`X-Lookup: hit | pending | miss`).
enum LookupAnswer {
    /// The stored reply.
    Hit(ResponseEnvelope),
    /// A worker holds a live claim on the operation: not done yet, maybe at the processor.
    Pending,
    /// Nothing stored, nobody working on it (or no answer).
    Miss,
}

/// Longest pause between two reply lookups after a duplicate publish.
const MAX_LOOKUP_BACKOFF: Duration = Duration::from_secs(2);

/// The connector. Cheap to clone; clones share the connection and the inbox.
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

struct Inner {
    /// The one connection (reconnects by itself).
    client: Client,
    /// JetStream over that connection.
    js: jetstream::Context,
    /// Subjects, timeouts, streams.
    config: BridgeConfig,
    /// Where durable replies arrive.
    inbox: ReplyInbox,
    /// Counters.
    stats: Arc<Stats>,
    /// One circuit breaker per operation.
    breakers: Arc<Breakers>,
    /// The bridge's series in its registry.
    metrics: BridgeMetrics,
    /// Late replies, until the application takes the receiver.
    late_replies: Mutex<Option<mpsc::Receiver<LateReply>>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").field("base_url", &self.inner.config.base_url).finish()
    }
}

impl Bridge {
    /// Connects to NATS with the configuration's settings and starts the reply inbox.
    pub async fn connect(config: BridgeConfig) -> Result<Bridge, ConnectError> {
        config.validate()?;
        let timeout = Duration::from_millis(config.connection_timeout_ms);
        let options = async_nats::ConnectOptions::new()
            .name(&config.connection_name)
            .connection_timeout(timeout)
            .ping_interval(Duration::from_secs(10))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => warn!("nats disconnected"),
                    async_nats::Event::Connected => debug!("nats connected"),
                    other => debug!(event = %other, "nats event"),
                }
            });
        let options = crate::config::apply_security("nats_bridge", options, &config.tls, &config.auth).await?;
        // The first connection is tried once per server (no retry_on_initial_connect): a bad
        // certificate or password is an error at start, not a reconnect loop. The outer timeout
        // bounds DNS and every server of the list together.
        let urls = config.server_urls();
        let bound = connect_bound(timeout, urls.len());
        let attempt = options.connect(urls);
        let client = match tokio::time::timeout(bound, attempt).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(ConnectError::Connect {
                    url: config.base_url.clone(),
                    reason: crate::config::explain_connect_error(&e, &config.tls, &config.auth, timeout),
                })
            }
            Err(_) => {
                return Err(ConnectError::Connect {
                    url: config.base_url.clone(),
                    reason: format!("timed out after {}ms", timeout.as_millis()),
                })
            }
        };
        Self::with_client(client, config).await
    }

    /// Builds a bridge over an existing connection.
    pub async fn with_client(client: Client, config: BridgeConfig) -> Result<Bridge, ConnectError> {
        config.validate()?;
        let stats = Arc::new(Stats::default());
        let breakers = Arc::new(Breakers::new(&config.circuit_breaker));
        let metrics = BridgeMetrics::new(Arc::new(Registry::new()), breakers.clone());
        let (late, late_rx) = LateSink::new(
            config.late_reply_buffer,
            config.max_reply_bytes,
            metrics.late_replies.clone(),
            metrics.late_replies_dropped.clone(),
            metrics.late_replies_rejected.clone(),
        );
        let inbox = ReplyInbox::start(&client, stats.clone(), late).await.map_err(ConnectError::Inbox)?;
        let js = jetstream::new(client.clone());
        Ok(Bridge {
            inner: Arc::new(Inner { client, js, config, inbox, stats, breakers, metrics, late_replies: Mutex::new(Some(late_rx)) }),
        })
    }

    /// The NATS connection.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// JetStream over the bridge's connection.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.inner.config
    }

    /// Counters since start.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Calls waiting for a durable reply now.
    pub fn in_flight(&self) -> usize {
        self.inner.inbox.waiting()
    }

    /// The state of an operation's circuit breaker now (always `Closed` when breakers are
    /// disabled). An open breaker whose open period has ended reports `HalfOpen`.
    pub fn breaker_state(&self, op: Operation) -> BreakerState {
        self.inner.breakers.state(op)
    }

    /// The bridge's metrics registry. Register the application's own metrics in it and serve
    /// [`Registry::render`] on `GET /metrics`.
    pub fn metrics(&self) -> Arc<Registry> {
        self.inner.metrics.registry().clone()
    }

    /// The replies that arrived after their call gave up (typically after a `ReplyTimeout`),
    /// decoded. The receiver is handed out once: `None` afterwards. Replies arriving before it is
    /// taken are kept, up to `late_reply_buffer`; beyond that, or once the receiver is dropped,
    /// they are dropped and counted (`nats_late_replies_dropped`).
    pub fn late_replies(&self) -> Option<mpsc::Receiver<LateReply>> {
        self.inner.late_replies.lock().expect("late replies lock").take()
    }

    /// Creates or updates the streams the catalogue calls for.
    pub async fn ensure_streams(&self) -> Result<Vec<StreamPlan>, StreamError> {
        streams::ensure(&self.inner.js, &self.inner.config).await
    }

    /// Asks the server whether a stream captures a query subject.
    pub async fn verify_streams(&self) -> Result<usize, StreamError> {
        streams::verify_no_query_capture(&self.inner.js, &self.inner.config).await
    }

    /// The concrete subject of a request.
    pub fn subject(&self, request: &OperationRequest) -> Result<String, CallError> {
        let env = request.envelope();
        let template = self.inner.config.subject_template(request.operation());
        subjects::render(&template, &env.merchant_id, env.connector.as_deref().unwrap_or("default")).map_err(CallError::InvalidRequest)
    }

    /// The headers of a request (`reply_to` only for durable calls).
    pub fn headers(&self, request: &OperationRequest, reply_to: Option<&str>) -> HeaderMap {
        let env = request.envelope();
        let mut h = HeaderMap::new();
        h.insert(headers::MESSAGE_ID, request.message_id());
        h.insert(headers::OPERATION, env.operation.as_str());
        h.insert(headers::MERCHANT_ID, env.merchant_id.as_str());
        h.insert(headers::PAYMENT_ID, env.payment_id.as_str());
        h.insert(headers::ATTEMPT_ID, env.attempt_id.as_str());
        h.insert(headers::CORRELATION_ID, env.correlation_id.as_str());
        h.insert(headers::IDEMPOTENCY_KEY, env.idempotency_key.as_str());
        let defects = self.inner.config.defects;
        if let Some(reply_to) = reply_to {
            h.insert(headers::NATS_MSG_ID, request.message_id());
            let name = if defects.reserved_reply_header { "Nats-Reply-To" } else { headers::REPLY_TO };
            h.insert(name, reply_to);
        }
        if defects.reuse_authorize_message_id && reply_to.is_some() {
            let first_attempt = format!("{}_1", env.payment_id);
            let id = crate::request::message_id(&env.merchant_id, &env.payment_id, crate::catalogue::ops::authorize(), &first_attempt);
            h.insert(headers::NATS_MSG_ID, id);
        }
        if defects.card_data_in_headers {
            if let Some(number) = env.router_data.pointer("/payment_method_data/card/card_number").and_then(|v| v.as_str()) {
                h.insert("X-Card-Number", number);
            }
        }
        h
    }

    /// Runs an operation with the pattern its catalogue row gives it. Pass the same request
    /// again to retry: it keeps its message id, so JetStream and the worker de-duplicate it.
    ///
    /// While the operation's circuit breaker is open the call is refused at once with
    /// [`CallError::CircuitOpen`], without touching NATS.
    pub async fn call(&self, request: &OperationRequest) -> Result<ResponseEnvelope, CallError> {
        let op = request.operation();
        let metrics = self.inner.metrics.op(op);
        let permit = self.inner.breakers.acquire(op).inspect_err(|_| {
            self.inner.stats.circuit_rejections.fetch_add(1, Ordering::Relaxed);
            metrics.breaker_rejections.inc();
        })?;
        let result = self.call_unguarded(request).await;
        permit.finish(CallVerdict::of(&result));
        result
    }

    /// [`Bridge::call`] that neither asks nor feeds the circuit breaker. For reconciliation:
    /// recovery must learn an operation's outcome however unhealthy the path looks, and its
    /// re-sends of operations nobody will answer any more (dead-lettered, expired) say nothing
    /// new about the path's health; counted in the breaker they keep it open.
    pub async fn call_unguarded(&self, request: &OperationRequest) -> Result<ResponseEnvelope, CallError> {
        let op = request.operation();
        let subject = self.subject(request)?;
        let metrics = self.inner.metrics.op(op);
        let started = Instant::now();
        let result = match op.pattern {
            Pattern::Durable => self.durable(request, subject).await,
            Pattern::Query => self.query(request, subject).await,
        };
        metrics.duration.observe_duration(started.elapsed());
        match &result {
            Ok(reply) => metrics.worker_response(reply.status).inc(),
            Err(e) if e.is_timeout() => metrics.timeouts.inc(),
            Err(_) => {}
        }
        result
    }

    fn payload(request: &OperationRequest) -> Result<Bytes, CallError> {
        serde_json::to_vec(request.envelope()).map(Bytes::from).map_err(|e| CallError::InvalidRequest(e.to_string()))
    }

    /// JetStream publish (short ack timeout, retried with the same id), then the reply inbox.
    async fn durable(&self, request: &OperationRequest, subject: String) -> Result<ResponseEnvelope, CallError> {
        let op = request.operation();
        let timeouts = self.inner.config.timeouts(op);
        let reply_subject = self.inner.inbox.subject_for(request.message_id());
        // Wait before publishing: a fast worker may reply before the ack arrives.
        let mut waiter = self.inner.inbox.register(request.message_id());
        let headers = self.headers(request, Some(&reply_subject));
        let payload = Self::payload(request)?;
        let ack = self.publish(op, &subject, headers, payload, timeouts.ack.unwrap_or(timeouts.reply), request.message_id()).await?;
        let deadline = Instant::now() + timeouts.reply;
        // A duplicate was stored earlier: its reply may have gone to a caller that gave up,
        // so ask the workers for the stored result instead of waiting for a reply that may
        // never come.
        let mut next_lookup = ack.duplicate.then(Instant::now);
        if ack.duplicate {
            self.inner.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            self.inner.metrics.op(op).duplicates.inc();
            debug!(message_id = request.message_id(), seq = ack.sequence, "duplicate publish");
        }
        if ack.duplicate && self.inner.config.defects.duplicate_waits_for_reply {
            // The defect: no lookup, no deadline.
            while let Some(msg) = waiter.recv().await {
                if let Ok(reply) = self.accept(request, &msg.payload) {
                    return Ok(reply);
                }
            }
        }
        let mut backoff = Duration::from_millis(100);
        // What the last reply lookup said: a worker holds the operation.
        let mut in_progress = false;
        loop {
            let wake = next_lookup.map_or(deadline, |l| l.min(deadline));
            tokio::select! {
                msg = waiter.recv() => {
                    let Some(msg) = msg else { break };
                    match self.accept(request, &msg.payload) {
                        Ok(reply) => return Ok(reply),
                        Err(_) => continue,
                    }
                }
                _ = sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        // A reply routed at the last instant is still ours.
                        while let Some(msg) = waiter.try_recv() {
                            if let Ok(reply) = self.accept(request, &msg.payload) {
                                return Ok(reply);
                            }
                        }
                        break;
                    }
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match self.lookup(request, remaining).await {
                        LookupAnswer::Hit(reply) => return Ok(reply),
                        LookupAnswer::Pending => in_progress = true,
                        LookupAnswer::Miss => in_progress = false,
                    }
                    next_lookup = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_LOOKUP_BACKOFF);
                }
            }
        }
        self.inner.stats.reply_timeouts.fetch_add(1, Ordering::Relaxed);
        Err(CallError::ReplyTimeout { message_id: request.message_id().to_string(), timeout: timeouts.reply, in_progress })
    }

    async fn publish(
        &self,
        op: Operation,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
        ack_timeout: Duration,
        message_id: &str,
    ) -> Result<PublishAck, CallError> {
        let attempts = self.inner.config.max_retries + 1;
        let metrics = self.inner.metrics.op(op);
        let mut reason = String::new();
        // Stays true while every attempt was answered "no stream": then nothing was stored.
        let mut nothing_stored = true;
        for attempt in 0..attempts {
            if attempt > 0 {
                self.inner.stats.publish_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(publish_backoff(attempt)).await;
            }
            let sent = self.inner.js.publish_with_headers(subject.to_string(), headers.clone(), payload.clone()).await;
            let ack_future = match sent {
                Ok(f) => f,
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => return Err(CallError::InvalidRequest(e.to_string())),
                Err(e) => {
                    metrics.publish_errors.inc();
                    nothing_stored = false;
                    reason = e.to_string();
                    continue;
                }
            };
            let acked = tokio::time::timeout(ack_timeout, ack_future).await;
            if !matches!(acked, Ok(Ok(_))) {
                metrics.publish_errors.inc();
            }
            match acked {
                Ok(Ok(ack)) => {
                    self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
                    metrics.acks.inc();
                    debug!(operation = op.name, message_id, stream = %ack.stream, seq = ack.sequence, "published");
                    return Ok(ack);
                }
                // Nothing stored by this attempt; retried, since JetStream may be starting.
                Ok(Err(e)) if e.kind() == PublishErrorKind::StreamNotFound => reason = e.to_string(),
                Ok(Err(e)) => {
                    nothing_stored = false;
                    reason = e.to_string();
                }
                Err(_) => {
                    nothing_stored = false;
                    reason = format!("no ack within {ack_timeout:?}");
                }
            }
            warn!(operation = op.name, message_id, attempt, %reason, "publish not acknowledged");
        }
        if nothing_stored {
            return Err(CallError::NoStream { subject: subject.to_string() });
        }
        Err(CallError::PublishUnacknowledged { message_id: message_id.to_string(), attempts, reason })
    }

    /// Decodes and checks a reply; `Err(why)` for one that is oversized, undecodable or not
    /// ours (counted in `nats_rejected_replies`, never applied).
    fn accept(&self, request: &OperationRequest, payload: &[u8]) -> Result<ResponseEnvelope, String> {
        let rejected = || {
            self.inner.stats.rejected_replies.fetch_add(1, Ordering::Relaxed);
            self.inner.metrics.op(request.operation()).rejected.inc();
        };
        // A bad message on our inbox must not end the wait: the real reply may still come.
        // Refused and counted; the call keeps waiting (and times out unknown if nothing else).
        let why = if payload.len() > self.inner.config.max_reply_bytes {
            format!("reply of {} bytes exceeds max_reply_bytes ({})", payload.len(), self.inner.config.max_reply_bytes)
        } else {
            match serde_json::from_slice::<ResponseEnvelope>(payload) {
                Err(e) => format!("undecodable reply: {e}"),
                Ok(reply) => match reply.mismatch(request.envelope()) {
                    None => return Ok(reply),
                    Some(why) => why,
                },
            }
        };
        rejected();
        warn!(message_id = request.message_id(), %why, "reply refused");
        Err(why)
    }

    /// Asks the workers for the stored reply of a message.
    async fn lookup(&self, request: &OperationRequest, remaining: Duration) -> LookupAnswer {
        self.inner.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let env = request.envelope();
        let Ok(subject) = subjects::render(&self.inner.config.lookup_template(), &env.merchant_id, "default") else {
            return LookupAnswer::Miss;
        };
        let timeout = remaining.min(Duration::from_millis(self.inner.config.query_timeout_ms));
        let Ok(payload) = Self::payload(request) else { return LookupAnswer::Miss };
        let req = async_nats::Request::new().headers(self.headers(request, None)).payload(payload).timeout(Some(timeout));
        let Ok(msg) = self.inner.client.send_request(subject, req).await else { return LookupAnswer::Miss };
        match msg.headers.as_ref().and_then(|h| h.get(headers::LOOKUP)).map(|v| v.as_str()) {
            Some("hit") => self.accept(request, &msg.payload).map_or(LookupAnswer::Miss, LookupAnswer::Hit),
            Some("pending") => LookupAnswer::Pending,
            _ => LookupAnswer::Miss,
        }
    }

    /// Core request/reply with the operation's timeout; no responders is reported at once.
    async fn query(&self, request: &OperationRequest, subject: String) -> Result<ResponseEnvelope, CallError> {
        self.inner.stats.queries.fetch_add(1, Ordering::Relaxed);
        let timeout = self.inner.config.timeouts(request.operation()).reply;
        let req = async_nats::Request::new().headers(self.headers(request, None)).payload(Self::payload(request)?).timeout(Some(timeout));
        match self.inner.client.send_request(subject.clone(), req).await {
            Ok(msg) => self.accept(request, &msg.payload).map_err(CallError::InvalidReply),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => CallError::NoResponders { subject },
                RequestErrorKind::TimedOut => CallError::QueryTimeout { subject, timeout },
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => CallError::InvalidRequest(e.to_string()),
                RequestErrorKind::Other => CallError::Transport(e.to_string()),
            }),
        }
    }
}

/// The pause before publish attempt `attempt` (1 for the first retry): 250 ms, 500 ms, 1 s, 2 s,
/// then 4 s each; long enough to ride out a JetStream restart or a stream leader election, which
/// answer "no stream" meanwhile.
fn publish_backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.saturating_sub(1).min(4))
}

/// How long the first connection may take in all: one connection timeout per server of the
/// list (each is tried once), and a second for DNS.
fn connect_bound(timeout: Duration, servers: usize) -> Duration {
    timeout * servers.max(1) as u32 + Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_retries_back_off_from_250_ms_to_4_s() {
        let pauses: Vec<u64> = (1..=7).map(|a| publish_backoff(a).as_millis() as u64).collect();
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000, 4000, 4000]);
    }

    #[test]
    fn the_first_connection_is_bounded_by_one_timeout_per_server_and_a_second() {
        let t = Duration::from_secs(5);
        assert_eq!(connect_bound(t, 3), Duration::from_secs(16));
        assert_eq!(connect_bound(t, 1), Duration::from_secs(6));
        assert_eq!(connect_bound(t, 0), Duration::from_secs(6), "an empty list still gets one timeout");
    }
}
