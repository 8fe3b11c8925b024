//! What a worker does with one operation: idempotency first, then the processor.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mock_processor::{CaptureMethod, ClientError, Effect, EffectRequest, ProcessorClient};
use nats_protocol::{catalogue::Pattern, Operation, RequestEnvelope, ResponseEnvelope, ResponseStatus};
use serde_json::json;
use tracing::{info, warn};

use crate::config::CrashPoint;
use crate::crash::CrashPlan;
use crate::profile::Profile;
use crate::store::{fingerprint, Record, ResultStore};

/// Fault knobs for tests, changeable while the worker runs.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next N durable operations stop right after the processor call: nothing stored, no
    /// reply, no ack, as if the worker died there. JetStream redelivers after the ack wait.
    pub stall_after_processor: AtomicU32,
    /// Extra delay before each ack (ms), to provoke redelivery of processed messages.
    pub ack_delay_ms: AtomicU64,
    /// Replaces the profile's latency while set (chaos: worker latency).
    pub latency: std::sync::Mutex<Option<crate::profile::Latency>>,
    /// Behave as if the processor could not be reached: durable operations are nak'ed and
    /// redelivered (until `max_deliver` sends them to the dead-letter stream).
    pub processor_unavailable: std::sync::atomic::AtomicBool,
    /// Replaces the profile's error rate while set (chaos: worker errors). An error is a
    /// definite failure reply; the processor is not asked.
    pub error_rate: std::sync::Mutex<Option<f64>>,
    /// Every reply is published twice (chaos: duplicate worker replies); callers must apply
    /// one and ignore the other.
    pub duplicate_replies: std::sync::atomic::AtomicBool,
    /// Replies are not published (lost in transit, as core NATS may lose them); the result is
    /// still stored and the message acked (chaos: lost replies).
    pub drop_replies: std::sync::atomic::AtomicBool,
}

impl Faults {
    /// Takes one "stall" token if any is left.
    pub(crate) fn take_stall(&self) -> bool {
        self.stall_after_processor.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

/// The answer to a reply lookup (`X-Lookup: hit | pending | miss`).
#[derive(Debug)]
pub enum Lookup {
    /// The stored reply.
    Hit(ResponseEnvelope),
    /// A delivery holds a live claim on the key: it may be at the processor right now.
    Pending,
    /// No result and no live claim.
    Miss,
}

/// Outcome of handling one message.
#[derive(Debug)]
pub enum Handled {
    /// Reply with this (and ack, for durable messages).
    Reply(ResponseEnvelope),
    /// Stop here without replying or acking (a simulated crash).
    Stalled,
}

/// A failure that should be retried later (nak): nothing definite was learnt.
#[derive(Debug, thiserror::Error)]
#[error("transient: {0}")]
pub struct Transient(pub String);

/// The handler shared by a worker's tasks.
pub struct Handler {
    /// The processor.
    processor: ProcessorClient,
    /// Results by idempotency key.
    store: ResultStore,
    /// Latency, declines, errors.
    profile: Profile,
    /// Fault knobs.
    faults: Arc<Faults>,
    /// Instance name for logs.
    name: String,
    /// Requests older than this are refused before the processor (0: no limit).
    max_request_age_ms: u64,
    /// Where this process kills itself, if anywhere.
    crash: Option<CrashPlan>,
    /// How long a claim on a key holds without renewal: a dead holder's claim expires this long
    /// after its last renewal (the ack wait, so it has expired by the time JetStream redelivers).
    lease_ms: u64,
    /// Numbers claims, so every delivery's claim has its own owner id.
    claims: AtomicU64,
    /// The `lookup-ignores-claims` defect: lookups never answer `pending`.
    lookup_ignores_claims: bool,
}

/// How long a delivery waits for another delivery's live claim on the same key before giving
/// the message back (nak) — a live holder normally finishes long before.
const CLAIM_WAIT: Duration = Duration::from_secs(300);

/// What claiming a key gave.
enum Claim {
    /// No work to do: answer with this (a stored result, a refusal).
    Reply(ResponseEnvelope),
    /// This delivery holds the key and may call the processor.
    Held(Lease),
}

/// A held claim, renewed in the background until dropped.
struct Lease {
    /// Set when a renewal found the key changed by someone else: the claim was taken over and
    /// this delivery must not call the processor.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// The key's revision after our last write.
    revision: Arc<AtomicU64>,
    /// The claim record, for releasing it.
    record: Record,
    /// Whether an earlier delivery's expired claim was taken over (it may have reached the
    /// processor).
    took_over: bool,
    /// The renewal task.
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

fn amount(env: &RequestEnvelope) -> Option<i64> {
    env.router_data.get("amount").and_then(|v| v.as_i64())
}

fn currency(env: &RequestEnvelope) -> Option<String> {
    env.router_data.get("currency").and_then(|v| v.as_str()).map(str::to_string)
}

/// The capture method of an authorization, passed on to the processor so that an automatic
/// one is charged in one call (authorized and captured in one effect). Only `automatic` and
/// `manual` are known; any other value, or none, is not passed on (the processor then only
/// authorizes, and the orchestrator captures separately).
fn capture_method(op: Operation, env: &RequestEnvelope) -> Option<CaptureMethod> {
    if op.name != "payments.authorize" {
        return None;
    }
    env.router_data.get("capture_method").and_then(|v| v.as_str()).and_then(CaptureMethod::parse)
}

/// The processor request for a durable operation: the operation instance (`attempt_id`) as the
/// reference, the amount and currency of `router_data`, and for an authorization its capture
/// method.
pub fn effect_request(op: Operation, env: &RequestEnvelope) -> EffectRequest {
    EffectRequest {
        operation: op.name.to_string(),
        merchant_id: env.merchant_id.clone(),
        payment_id: env.payment_id.clone(),
        reference: Some(env.attempt_id.clone()),
        amount: amount(env),
        currency: currency(env),
        details: serde_json::Value::Null,
        capture_method: capture_method(op, env),
    }
}

/// Whether a request sent at `sent_ms` is older than `max_age_ms` at `now_ms` (0: no limit). A
/// request exactly `max_age_ms` old is still served; one from the future (a sender's clock
/// ahead) is not expired.
fn request_expired(max_age_ms: u64, sent_ms: u64, now_ms: u64) -> bool {
    max_age_ms > 0 && now_ms.saturating_sub(sent_ms) > max_age_ms
}

/// Operations that move money, subject to declines.
fn moves_money(op: Operation) -> bool {
    matches!(
        op.name,
        "payments.authorize"
            | "payments.capture"
            | "payments.incremental_auth"
            | "payments.complete_authorize"
            | "refunds.execute"
            | "payouts.create"
            | "payouts.fulfill"
    )
}

fn success(env: &RequestEnvelope, effect: &Effect) -> ResponseEnvelope {
    let mut r = ResponseEnvelope::reply_to(env, ResponseStatus::Success);
    r.transaction_id = Some(effect.effect_id.clone());
    r.connector_response = serde_json::to_value(effect).unwrap_or_default();
    r
}

impl Handler {
    /// A handler over a processor and a result store.
    pub fn new(processor: ProcessorClient, store: ResultStore, profile: Profile, faults: Arc<Faults>, name: String) -> Self {
        Handler {
            processor,
            store,
            profile,
            faults,
            name,
            max_request_age_ms: 0,
            crash: None,
            lease_ms: 30_000,
            claims: AtomicU64::new(0),
            lookup_ignores_claims: false,
        }
    }

    /// How long a claim on a key holds without renewal (set it to the consumers' ack wait).
    pub fn with_lease(mut self, ms: u64) -> Self {
        self.lease_ms = ms.max(1);
        self
    }

    /// Claims `key` for this delivery: the stored result or a refusal if there is nothing to
    /// do, else a lease. Another delivery's live claim is waited out (the message is kept in
    /// progress meanwhile); an expired one is taken over by compare-and-set.
    async fn claim(&self, env: &RequestEnvelope, key: &str, fp: &str) -> Result<Claim, Transient> {
        let store_err = |e: crate::store::StoreError| Transient(e.to_string());
        let owner = format!("{}:{}:{}", self.name, std::process::id(), self.claims.fetch_add(1, Ordering::Relaxed));
        let mine = |lease_until_ms| Record::Started { fingerprint: fp.to_string(), owner: owner.clone(), lease_until_ms };
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        let mut waited = false;
        // Nearly every key is new: try to create the claim before reading anything, one
        // round trip instead of two. Only when the key exists is its record read.
        let mut fresh = if self.expired(env) {
            None
        } else {
            self.store.create(key, &mine(crate::store::now_ms() + self.lease_ms)).await.map_err(store_err)?
        };
        loop {
            if let Some(revision) = fresh.take() {
                return Ok(Claim::Held(self.lease(key, fp, &owner, revision, false)));
            }
            let entry = self.store.entry(key).await.map_err(store_err)?;
            if let Some((record, _)) = &entry {
                if record.fingerprint() != fp {
                    return Ok(Claim::Reply(ResponseEnvelope::failure(
                        env,
                        "IDEMPOTENCY_KEY_REUSED",
                        format!("idempotency key {key} was used for a different request"),
                    )));
                }
            }
            let now = crate::store::now_ms();
            let (written, took_over) = match entry {
                Some((Record::Done { mut response, .. }, _)) => {
                    // Same request: the first result, whoever asks.
                    response.correlation_id = env.correlation_id.clone();
                    info!(worker = %self.name, key, "re-sending stored result");
                    return Ok(Claim::Reply(response));
                }
                Some((Record::Started { owner: holder, lease_until_ms, .. }, _)) if lease_until_ms > now => {
                    // Another delivery is working on it (a replay, a second consumer): wait
                    // for its result rather than race it to the processor.
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Transient(format!("key {key} still held by {holder}")));
                    }
                    if !waited {
                        info!(worker = %self.name, key, %holder, "key held by another delivery; waiting for its result");
                        waited = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Some((Record::Started { .. }, revision)) => {
                    (self.store.update(key, &mine(now + self.lease_ms), revision).await.map_err(store_err)?, true)
                }
                None if self.expired(env) => {
                    // Too old to act on: the caller has given up and may have failed it already.
                    let response = ResponseEnvelope::failure(
                        env,
                        "REQUEST_EXPIRED",
                        "the request is older than the worker's max_request_age_ms; nothing was done",
                    );
                    let done = Record::Done { fingerprint: fp.to_string(), response: response.clone() };
                    if self.store.create(key, &done).await.map_err(store_err)?.is_none() {
                        continue;
                    }
                    warn!(worker = %self.name, key, "refusing an expired request");
                    return Ok(Claim::Reply(response));
                }
                None => (self.store.create(key, &mine(now + self.lease_ms)).await.map_err(store_err)?, false),
            };
            // `None`: someone else wrote the key meanwhile; look again.
            let Some(revision) = written else { continue };
            return Ok(Claim::Held(self.lease(key, fp, &owner, revision, took_over)));
        }
    }

    /// A lease on `key`, written at `revision`, renewed in the background until dropped.
    fn lease(&self, key: &str, fp: &str, owner: &str, revision: u64, took_over: bool) -> Lease {
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let revision = Arc::new(AtomicU64::new(revision));
        let renewer = {
            let (store, key, lost, revision, lease_ms) =
                (self.store.clone(), key.to_string(), lost.clone(), revision.clone(), self.lease_ms);
            let (fp, owner) = (fp.to_string(), owner.to_string());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis((lease_ms / 3).max(1))).await;
                    let renewed = Record::Started {
                        fingerprint: fp.clone(),
                        owner: owner.clone(),
                        lease_until_ms: crate::store::now_ms() + lease_ms,
                    };
                    match store.update(&key, &renewed, revision.load(Ordering::SeqCst)).await {
                        Ok(Some(r)) => revision.store(r, Ordering::SeqCst),
                        Ok(None) => {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // Try again next round; the lease has margin.
                        Err(e) => warn!(key, error = %e, "lease renewal failed"),
                    }
                }
            })
        };
        let record = Record::Started { fingerprint: fp.to_string(), owner: owner.to_string(), lease_until_ms: 0 };
        Lease { lost, revision, record, took_over, renewer }
    }

    /// Gives a claim up at once (expired), so the redelivery of a failed attempt need not wait
    /// for the lease to run out. Best effort: an unreleased claim expires by itself.
    async fn release(&self, key: &str, lease: Lease) {
        lease.renewer.abort();
        let _ = self.store.update(key, &lease.record, lease.revision.load(Ordering::SeqCst)).await;
    }

    /// Kills the process when a durable operation reaches this crash point (see [`CrashPlan`]).
    pub fn with_crash(mut self, crash: Option<CrashPlan>) -> Self {
        self.crash = crash;
        self
    }

    /// Counts an operation reaching `point`; may kill the process.
    pub(crate) fn crash_point(&self, point: CrashPoint, key: &str) {
        if let Some(crash) = &self.crash {
            crash.reached(point, key);
        }
    }

    /// Whether the process may die at `point`.
    pub(crate) fn crash_armed(&self, point: CrashPoint) -> bool {
        self.crash.as_ref().is_some_and(|c| c.armed_at(point))
    }

    /// Refuses durable requests older than `ms` (by their envelope timestamp); 0 disables.
    pub fn with_max_request_age(mut self, ms: u64) -> Self {
        self.max_request_age_ms = ms;
        self
    }

    fn expired(&self, env: &RequestEnvelope) -> bool {
        request_expired(self.max_request_age_ms, env.timestamp, crate::store::now_ms())
    }

    /// The result store.
    pub fn store(&self) -> &ResultStore {
        &self.store
    }

    /// Handles a durable operation at most once per idempotency key.
    pub async fn durable(&self, op: Operation, env: &RequestEnvelope) -> Result<Handled, Transient> {
        let fp = fingerprint(env);
        let key = env.idempotency_key.as_str();
        let lease = match self.claim(env, key, &fp).await? {
            Claim::Reply(response) => return Ok(Handled::Reply(response)),
            Claim::Held(lease) => lease,
        };
        match self.work(op, env, key, &fp, &lease).await {
            Err(e) => {
                self.release(key, lease).await;
                Err(e)
            }
            done => done,
        }
    }

    /// The work under a held claim.
    async fn work(&self, op: Operation, env: &RequestEnvelope, key: &str, fp: &str, lease: &Lease) -> Result<Handled, Transient> {
        if lease.took_over {
            // An earlier delivery died holding the key: it may have reached the processor.
            // Ask before calling again.
            let found = self.processor.effects_by_key(key).await.map_err(|e| Transient(e.to_string()))?;
            if let Some(effect) = found.first() {
                warn!(worker = %self.name, key, "earlier delivery reached the processor; using its effect");
                let response = success(env, effect);
                self.finish(key, fp, &response).await?;
                return Ok(Handled::Reply(response));
            }
        }
        let draw = self.draw(key);
        if !draw.latency.is_zero() {
            tokio::time::sleep(draw.latency).await;
        }
        if self.faults.processor_unavailable.load(Ordering::SeqCst) {
            return Err(Transient("processor unavailable (fault)".into()));
        }
        if self.expired(env) {
            // Checked again after the work before the call: a slow worker must not charge after
            // the gateway's recovery may have concluded that nothing happened.
            let response = ResponseEnvelope::failure(
                env,
                "REQUEST_EXPIRED",
                "the request grew older than the worker's max_request_age_ms before the processor call; nothing was done",
            );
            warn!(worker = %self.name, key, "request expired before the processor call");
            self.finish(key, fp, &response).await?;
            return Ok(Handled::Reply(response));
        }
        if lease.lost() {
            // Our claim expired while we worked and another delivery took the key over.
            return Err(Transient(format!("claim on {key} lost before the processor call")));
        }
        // The key is marked started; the processor has not been asked yet.
        self.crash_point(CrashPoint::BeforeProcessor, key);
        let response = if draw.error {
            ResponseEnvelope::failure(env, "WORKER_ERROR", "the worker failed to process the operation")
        } else if draw.decline && moves_money(op) {
            ResponseEnvelope::failure(env, "card_declined", "the issuer declined the operation")
        } else {
            let request = effect_request(op, env);
            match self.processor.create_effect(&request, Some(key)).await {
                Ok(effect) => success(env, &effect),
                Err(ClientError::Rejected { code, message, .. }) => ResponseEnvelope::failure(env, code, message),
                Err(e) => return Err(Transient(format!("processor: {e}"))),
            }
        };
        // The processor may have acted; nothing is stored or replied yet.
        self.crash_point(CrashPoint::AfterProcessor, key);
        if self.faults.take_stall() {
            warn!(worker = %self.name, key, "fault: stalling after the processor call");
            return Ok(Handled::Stalled);
        }
        self.finish(key, fp, &response).await?;
        Ok(Handled::Reply(response))
    }

    async fn finish(&self, key: &str, fp: &str, response: &ResponseEnvelope) -> Result<(), Transient> {
        self.store
            .put(key, &Record::Done { fingerprint: fp.to_string(), response: response.clone() })
            .await
            .map_err(|e| Transient(e.to_string()))
    }

    /// Answers a query; never records a processor effect.
    pub async fn query(&self, op: Operation, env: &RequestEnvelope) -> ResponseEnvelope {
        debug_assert_eq!(op.pattern, Pattern::Query);
        let draw = self.draw(&env.idempotency_key);
        if !draw.latency.is_zero() {
            tokio::time::sleep(draw.latency).await;
        }
        let reference = |field: &str| env.router_data.get(field).and_then(|v| v.as_str()).unwrap_or(&env.attempt_id).to_string();
        let mut ok = ResponseEnvelope::reply_to(env, ResponseStatus::Success);
        match op.name {
            "payments.sync" => match self.processor.account(&env.merchant_id, &env.payment_id).await {
                Ok(Some(account)) => {
                    // The effects too, so a caller can tell which operation instances happened.
                    let effects = self.processor.ledger(Some(&env.merchant_id), Some(&env.payment_id)).await.unwrap_or_default();
                    let mut body = serde_json::to_value(account).unwrap_or_default();
                    body["effects"] = serde_json::to_value(effects).unwrap_or_default();
                    ok.connector_response = body;
                }
                Ok(None) => return ResponseEnvelope::failure(env, "payment_not_found", "the processor has no record of this payment"),
                Err(e) => return ResponseEnvelope::failure(env, "processor_unavailable", e.to_string()),
            },
            "refunds.sync" | "payouts.sync" => {
                let field = if op.name == "refunds.sync" { "refund_id" } else { "payout_id" };
                let reference = reference(field);
                match self.processor.by_reference(&env.merchant_id, &reference).await {
                    Ok(effects) if !effects.is_empty() => {
                        ok.transaction_id = effects.last().map(|e| e.effect_id.clone());
                        ok.connector_response = json!({ "reference": reference, "effects": effects });
                    }
                    Ok(_) => return ResponseEnvelope::failure(env, "not_found", format!("the processor has no record of {reference}")),
                    Err(e) => return ResponseEnvelope::failure(env, "processor_unavailable", e.to_string()),
                }
            }
            "tax.calculate" => {
                let amount = amount(env).unwrap_or(0);
                ok.connector_response = json!({ "order_tax_amount": amount * 8 / 100, "rate_bps": 800 });
            }
            "giftcard.balance" => {
                ok.connector_response = json!({ "balance": 10_000, "currency": currency(env).unwrap_or_else(|| "USD".into()) })
            }
            "tokens.validate" => ok.connector_response = json!({ "valid": true }),
            "webhooks.verify" => ok.connector_response = json!({ "verified": true }),
            other => {
                ok.connector_response = json!({ "token": format!("{}_{}", other.replace('.', "_"), fingerprint(env)), "expires_in": 900 });
            }
        }
        ok
    }

    /// What the result store says about a key, for a reply lookup: the stored reply, a live
    /// claim (a delivery is working on it: the caller must not conclude it never happened), or
    /// nothing.
    pub async fn lookup(&self, env: &RequestEnvelope) -> Lookup {
        let Ok(Some(record)) = self.store.get(&env.idempotency_key).await else { return Lookup::Miss };
        match record {
            Record::Done { fingerprint: fp, mut response } if fp == fingerprint(env) => {
                response.correlation_id = env.correlation_id.clone();
                Lookup::Hit(response)
            }
            Record::Started { fingerprint: fp, lease_until_ms, .. }
                if fp == fingerprint(env) && lease_until_ms > crate::store::now_ms() && !self.lookup_ignores_claims =>
            {
                Lookup::Pending
            }
            _ => Lookup::Miss,
        }
    }

    /// Answer lookups of claimed keys `miss` (a deliberate defect, for the harness).
    pub fn with_lookup_ignoring_claims(mut self, on: bool) -> Self {
        self.lookup_ignores_claims = on;
        self
    }

    /// The profile's draw, with the latency fault applied if one is set.
    fn draw(&self, key: &str) -> crate::profile::Draw {
        let latency = self.faults.latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let error_rate = *self.faults.error_rate.lock().unwrap_or_else(|p| p.into_inner());
        if latency.is_none() && error_rate.is_none() {
            return self.profile.draw(key);
        }
        crate::profile::Profile {
            latency: latency.unwrap_or_else(|| self.profile.latency.clone()),
            error_rate: error_rate.unwrap_or(self.profile.error_rate),
            ..self.profile.clone()
        }
        .draw(key)
    }

    /// Whether replies are dropped (the lost replies fault).
    pub(crate) fn drop_replies(&self) -> bool {
        self.faults.drop_replies.load(Ordering::Relaxed)
    }

    /// Whether replies go out twice (the duplicate replies fault).
    pub(crate) fn duplicate_replies(&self) -> bool {
        self.faults.duplicate_replies.load(Ordering::Relaxed)
    }

    /// The ack delay fault.
    pub(crate) fn ack_delay(&self) -> Duration {
        Duration::from_millis(self.faults.ack_delay_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nats_protocol::{catalogue, OperationRequest};

    fn envelope(op: Operation, router_data: serde_json::Value) -> RequestEnvelope {
        OperationRequest::new(op, "m1", "pay_1", "pay_1_1").router_data(router_data).envelope().clone()
    }

    #[test]
    fn an_authorization_passes_its_capture_method_on() {
        let op = catalogue::ops::authorize();
        for (method, want) in [("automatic", Some(CaptureMethod::Automatic)), ("manual", Some(CaptureMethod::Manual)), ("scheduled", None)]
        {
            let env = envelope(op, json!({ "amount": 700, "currency": "EUR", "capture_method": method }));
            let request = effect_request(op, &env);
            assert_eq!(request.capture_method, want, "{method}");
            assert_eq!(
                (request.amount, request.currency.as_deref(), request.reference.as_deref()),
                (Some(700), Some("EUR"), Some("pay_1_1"))
            );
        }
        let env = envelope(op, json!({ "amount": 700, "currency": "EUR" }));
        assert_eq!(effect_request(op, &env).capture_method, None);
    }

    #[test]
    fn a_request_expires_one_millisecond_past_its_max_age() {
        assert!(!request_expired(1_000, 5_000, 6_000), "exactly the max age");
        assert!(request_expired(1_000, 5_000, 6_001));
        assert!(!request_expired(0, 0, u64::MAX), "0 is no limit");
        assert!(!request_expired(1_000, 9_000, 6_000), "sent in the future");
    }

    #[test]
    fn other_operations_pass_no_capture_method() {
        let op = catalogue::ops::capture();
        let env = envelope(op, json!({ "amount": 700, "currency": "EUR", "capture_method": "automatic" }));
        let request = effect_request(op, &env);
        assert_eq!(request.capture_method, None);
        assert!(serde_json::to_value(&request).unwrap().get("capture_method").is_none());
    }
}
