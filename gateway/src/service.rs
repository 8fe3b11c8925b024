//! The payment flows: each one records its operation, calls the bridge, and applies what the
//! worker (or the bridge's error) says, through the store's single `apply` path.

use std::sync::Arc;

use nats_bridge::{catalogue, Bridge, CallError, OperationRequest, Outcome, ResponseEnvelope, ResponseStatus};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::model::{AttemptStatus, CaptureMethod};
use crate::store::{now_ms, OpStatus, OperationRecord, Payment, Refund, Resolution, Store, StoreError};

/// An error answered to an API client: HTTP status, stable code, message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// A 4xx/5xx error.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::new(404, "not_found", format!("{what} not found")),
            StoreError::Exists(what) => ApiError::new(409, "duplicate", format!("{what} already exists")),
            StoreError::State { what, current } => {
                ApiError::new(409, "invalid_state", format!("{what} is {current}, which does not allow this operation"))
            }
            StoreError::Amount(m) => ApiError::new(422, "invalid_amount", m),
            StoreError::Sqlite(e) => ApiError::new(500, "store_error", e.to_string()),
            e @ StoreError::Checkpointer(_) => ApiError::new(500, "store_error", e.to_string()),
        }
    }
}

/// What a new payment needs.
#[derive(Debug, Clone)]
pub struct NewPayment {
    /// Client-chosen id, or generated.
    pub payment_id: Option<String>,
    /// Minor units.
    pub amount: i64,
    /// ISO currency.
    pub currency: String,
    /// Automatic or manual.
    pub capture_method: CaptureMethod,
    /// Payment method and the rest, passed to the worker.
    pub router_data: Value,
}

/// Who asked for a flow, as far as the flows care: the HTTP API builds one per request, so the
/// flows read nothing of HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The correlation id of the request (its `x-correlation-id`), carried by every operation
    /// the flow sends; `None` leaves each operation its own.
    pub correlation_id: Option<String>,
}

/// The gateway's core, shared by the HTTP handlers, the late-reply task and the recovery job.
pub struct Gateway {
    /// The attempt store.
    pub store: Arc<Store>,
    /// The bridge to the workers.
    pub bridge: Bridge,
    /// Deliberate defect (harness only): recovery fails stuck operations without asking.
    pub recovery_without_asking: bool,
}

/// What the processor captured with an effect besides what its operation names: the
/// `captured_amount` of an authorization charged in one call (automatic capture). `effect` is
/// the processor's effect as a worker passes it on (`connector_response`) or a payment sync
/// lists it.
pub fn captured_with(effect: &Value) -> Option<i64> {
    effect.get("captured_amount").and_then(Value::as_i64)
}

/// The authorization of a payment: its router data plus amount, currency and capture method.
fn authorize_request(cx: &RequestContext, p: &Payment) -> OperationRequest {
    let mut router_data = p.router_data.clone();
    if let Value::Object(m) = &mut router_data {
        m.insert("amount".into(), json!(p.amount));
        m.insert("currency".into(), json!(p.currency));
        m.insert("capture_method".into(), json!(p.capture_method.as_str()));
    }
    new_request(cx, catalogue::ops::authorize(), &p.merchant_id, &p.payment_id, &p.attempt_id).router_data(router_data)
}

/// What a call returned, as the store understands it.
pub fn resolution(result: &Result<ResponseEnvelope, CallError>) -> Resolution {
    match result {
        Ok(r) => match r.status {
            ResponseStatus::Success => {
                Resolution::Succeeded { transaction_id: r.transaction_id.clone(), captured: captured_with(&r.connector_response) }
            }
            ResponseStatus::Failure => {
                let (code, message) = r
                    .error
                    .as_ref()
                    .map(|e| (e.code.clone(), e.message.clone()))
                    .unwrap_or_else(|| ("WORKER_ERROR".into(), "the worker reported a failure".into()));
                Resolution::Failed { code, message }
            }
            ResponseStatus::Processing => Resolution::Processing,
            ResponseStatus::RequiresCustomerAction => Resolution::RequiresCustomerAction,
        },
        Err(e) if e.outcome() == Outcome::NotApplied => {
            let m = e.mapping();
            Resolution::Failed { code: m.code, message: m.message }
        }
        Err(e) => Resolution::Unknown { reason: e.to_string() },
    }
}

/// A new operation instance, carrying the request's correlation id when there is one.
fn new_request(cx: &RequestContext, op: nats_bridge::Operation, merchant_id: &str, payment_id: &str, object_id: &str) -> OperationRequest {
    let request = OperationRequest::new(op, merchant_id, payment_id, object_id);
    match &cx.correlation_id {
        Some(id) => request.correlation_id(id.clone()),
        None => request,
    }
}

fn record(request: &OperationRequest, object_id: &str, amount: Option<i64>) -> OperationRecord {
    let env = request.envelope();
    OperationRecord {
        message_id: request.message_id().to_string(),
        merchant_id: env.merchant_id.clone(),
        payment_id: env.payment_id.clone(),
        operation: env.operation.clone(),
        object_id: object_id.to_string(),
        amount,
        status: OpStatus::InFlight,
        request: serde_json::to_string(env).unwrap_or_default(),
        transaction_id: None,
        error_code: None,
        error_message: None,
        created_ms: now_ms(),
        updated_ms: now_ms(),
    }
}

fn money(amount: i64, currency: &str) -> Value {
    json!({ "amount": amount, "currency": currency })
}

impl Gateway {
    /// A gateway over a store and a bridge.
    pub fn new(store: Arc<Store>, bridge: Bridge) -> Self {
        Gateway { store, bridge, recovery_without_asking: false }
    }

    /// Calls the bridge for a recorded operation and applies the outcome.
    async fn execute(&self, request: &OperationRequest) -> Result<ResponseEnvelope, CallError> {
        let span = tracing::info_span!(
            "operation",
            operation = %request.envelope().operation,
            correlation_id = %request.envelope().correlation_id,
            message_id = %request.message_id(),
        );
        let result = tracing::Instrument::instrument(self.bridge.call(request), span.clone()).await;
        let _entered = span.enter();
        let res = resolution(&result);
        if let Err(e) = self.store.apply(request.message_id(), &res) {
            warn!(message_id = request.message_id(), error = %e, "cannot apply outcome");
        }
        result
    }

    /// Creates a payment; with `confirm` it authorizes (and charges, if automatic).
    pub async fn create(&self, cx: &RequestContext, merchant_id: &str, new: NewPayment, confirm: bool) -> Result<Payment, ApiError> {
        let payment_id = new.payment_id.unwrap_or_else(|| format!("pay_{}", uuid::Uuid::new_v4().simple()));
        let payment = Payment::new(merchant_id, &payment_id, new.amount, &new.currency, new.capture_method, new.router_data);
        // Created and confirmed at once: the payment and its authorization in one commit.
        let authorization = confirm.then(|| authorize_request(cx, &payment));
        let inserted = match &authorization {
            Some(request) => {
                self.store.insert_payment_and_begin(&payment, &record(request, &payment.attempt_id, Some(payment.amount))).map(|_| ())
            }
            None => self.store.insert_payment(&payment),
        };
        match inserted {
            Ok(()) => {}
            // A client-chosen id is an idempotency key too: the same payment again is answered
            // with its current state (confirmed if asked and not yet), another one is refused.
            Err(StoreError::Exists(what)) => {
                let existing = self.store.payment(merchant_id, &payment_id)?;
                let same = existing.amount == payment.amount
                    && existing.currency == payment.currency
                    && existing.capture_method == payment.capture_method;
                if !same {
                    return Err(ApiError::new(409, "duplicate", format!("{what} already exists with other parameters")));
                }
                if confirm && existing.status == AttemptStatus::Started {
                    return self.confirm(cx, merchant_id, &payment_id).await;
                }
                return Ok(existing);
            }
            Err(e) => return Err(e.into()),
        }
        match authorization {
            Some(request) => self.authorize(cx, merchant_id, &payment_id, request).await,
            None => Ok(self.store.payment(merchant_id, &payment_id)?),
        }
    }

    /// Authorizes a created payment. With automatic capture that one operation charges it: the
    /// authorization carries `capture_method`, the processor captures in the same call, and
    /// the reply's effect says so (`captured_amount`), so the payment is `charged`. Should a
    /// successful authorization come back without a capture (a worker that does not pass
    /// `capture_method` on to the processor), the capture is sent as a second operation, so that
    /// no automatic payment is left authorized but not captured.
    pub async fn confirm(&self, cx: &RequestContext, merchant_id: &str, payment_id: &str) -> Result<Payment, ApiError> {
        let p = self.store.payment(merchant_id, payment_id)?;
        let request = authorize_request(cx, &p);
        self.store.begin_operation(&record(&request, &p.attempt_id, Some(p.amount)))?;
        self.authorize(cx, merchant_id, payment_id, request).await
    }

    /// Sends a begun authorization and applies its outcome (see [`Gateway::confirm`]).
    async fn authorize(
        &self,
        cx: &RequestContext,
        merchant_id: &str,
        payment_id: &str,
        request: OperationRequest,
    ) -> Result<Payment, ApiError> {
        self.execute(&request).await.ok();
        let p = self.store.payment(merchant_id, payment_id)?;
        if p.capture_method == CaptureMethod::Automatic && p.status == AttemptStatus::Authorized {
            // Authorized only: the processor was not asked to capture (or did not say it did).
            warn!(merchant_id, payment_id, "automatic capture: the authorization captured nothing; capturing separately");
            self.bridge
                .metrics()
                .counter(
                    "gateway_capture_fallbacks",
                    "automatic-capture payments whose authorization captured nothing, captured by a separate payments.capture",
                    &[],
                )
                .inc();
            return self.capture(cx, merchant_id, payment_id, None).await;
        }
        Ok(p)
    }

    /// Captures `amount` (default: all that is capturable).
    pub async fn capture(
        &self,
        cx: &RequestContext,
        merchant_id: &str,
        payment_id: &str,
        amount: Option<i64>,
    ) -> Result<Payment, ApiError> {
        let p = self.store.payment(merchant_id, payment_id)?;
        let amount = amount.unwrap_or(p.amount_authorized - p.amount_captured);
        let n = self.store.count_operations(merchant_id, payment_id, "payments.capture")?;
        let capture_id = format!("{payment_id}_cap_{}", n + 1);
        let request =
            new_request(cx, catalogue::ops::capture(), merchant_id, payment_id, &capture_id).router_data(money(amount, &p.currency));
        self.store.begin_operation(&record(&request, &capture_id, Some(amount)))?;
        self.execute(&request).await.ok();
        Ok(self.store.payment(merchant_id, payment_id)?)
    }

    /// Voids the authorization.
    pub async fn cancel(&self, cx: &RequestContext, merchant_id: &str, payment_id: &str) -> Result<Payment, ApiError> {
        let p = self.store.payment(merchant_id, payment_id)?;
        let void_id = format!("{payment_id}_void");
        let request =
            new_request(cx, catalogue::ops::void(), merchant_id, payment_id, &void_id).router_data(json!({ "currency": p.currency }));
        self.store.begin_operation(&record(&request, &void_id, None))?;
        self.execute(&request).await.ok();
        Ok(self.store.payment(merchant_id, payment_id)?)
    }

    /// Completes a 3DS authorization.
    pub async fn complete_authorize(&self, cx: &RequestContext, merchant_id: &str, payment_id: &str) -> Result<Payment, ApiError> {
        let p = self.store.payment(merchant_id, payment_id)?;
        let id = format!("{}_complete", p.attempt_id);
        let op = catalogue::find("payments.complete_authorize").expect("catalogue row");
        let request = new_request(cx, op, merchant_id, payment_id, &id).router_data(money(p.amount, &p.currency));
        self.store.begin_operation(&record(&request, &id, Some(p.amount)))?;
        self.execute(&request).await.ok();
        Ok(self.store.payment(merchant_id, payment_id)?)
    }

    /// Increases the authorized amount.
    pub async fn incremental_authorization(
        &self,
        cx: &RequestContext,
        merchant_id: &str,
        payment_id: &str,
        amount: i64,
    ) -> Result<Payment, ApiError> {
        let p = self.store.payment(merchant_id, payment_id)?;
        let n = self.store.count_operations(merchant_id, payment_id, "payments.incremental_auth")?;
        let id = format!("{payment_id}_inc_{}", n + 1);
        let op = catalogue::find("payments.incremental_auth").expect("catalogue row");
        let request = new_request(cx, op, merchant_id, payment_id, &id).router_data(money(amount, &p.currency));
        self.store.begin_operation(&record(&request, &id, Some(amount)))?;
        self.execute(&request).await.ok();
        Ok(self.store.payment(merchant_id, payment_id)?)
    }

    /// Reads a payment; with `force_sync`, first resolves open operations with the workers.
    pub async fn retrieve(&self, merchant_id: &str, payment_id: &str, force_sync: bool) -> Result<Payment, ApiError> {
        let p = self.store.payment(merchant_id, payment_id)?;
        if force_sync {
            let open: Vec<_> = self.store.operations_of(merchant_id, payment_id)?.into_iter().filter(|o| !o.status.is_final()).collect();
            if open.is_empty() {
                // Nothing to resolve: the payment just read is current.
                return Ok(p);
            }
            for op in open {
                self.reconcile(&op, false).await;
            }
            return Ok(self.store.payment(merchant_id, payment_id)?);
        }
        Ok(p)
    }

    /// Creates a refund.
    pub async fn refund(
        &self,
        cx: &RequestContext,
        merchant_id: &str,
        payment_id: &str,
        refund_id: Option<String>,
        amount: Option<i64>,
        reason: Option<String>,
    ) -> Result<Refund, ApiError> {
        let p = self.store.payment(merchant_id, payment_id)?;
        let refund_id = refund_id.unwrap_or_else(|| format!("ref_{}", uuid::Uuid::new_v4().simple()));
        let amount = amount.unwrap_or(p.amount_captured - p.amount_refunded - p.amount_refund_pending);
        let request = new_request(cx, catalogue::ops::refund(), merchant_id, payment_id, &refund_id)
            .router_data(json!({ "amount": amount, "currency": p.currency, "refund_id": refund_id, "reason": reason }));
        let refund = Refund {
            merchant_id: merchant_id.to_string(),
            refund_id: refund_id.clone(),
            payment_id: payment_id.to_string(),
            amount,
            currency: p.currency.clone(),
            status: crate::model::RefundStatus::Pending,
            reason,
            connector_refund_id: None,
            error_code: None,
            error_message: None,
            created_ms: now_ms(),
            updated_ms: now_ms(),
        };
        match self.store.begin_refund(&refund, &record(&request, &refund_id, Some(amount))) {
            Ok(()) => {}
            // The same refund again (client-chosen id): its current state, no second refund.
            Err(StoreError::Exists(what)) => {
                let existing = self.store.refund(merchant_id, &refund_id)?;
                if existing.payment_id != payment_id || existing.amount != amount {
                    return Err(ApiError::new(409, "duplicate", format!("{what} already exists with other parameters")));
                }
                return Ok(existing);
            }
            Err(e) => return Err(e.into()),
        }
        self.execute(&request).await.ok();
        Ok(self.store.refund(merchant_id, &refund_id)?)
    }

    /// Runs any other catalogue operation for a payment and returns the worker's reply.
    pub async fn flow(
        &self,
        cx: &RequestContext,
        merchant_id: &str,
        operation: &str,
        payment_id: &str,
        object_id: &str,
        router_data: Value,
    ) -> Result<ResponseEnvelope, ApiError> {
        let op = catalogue::find(operation).ok_or_else(|| ApiError::new(404, "unknown_operation", format!("no operation {operation}")))?;
        if let Some(route) = DEDICATED.iter().find(|(name, _)| *name == operation).map(|(_, r)| r) {
            // These move the payment's state: only their own routes keep the store in step.
            return Err(ApiError::new(400, "use_dedicated_route", format!("{operation} has its own route: {route}")));
        }
        let request = new_request(cx, op, merchant_id, payment_id, object_id).router_data(router_data);
        if op.pattern == catalogue::Pattern::Durable {
            self.store.record_operation(&record(&request, object_id, None))?;
            self.execute(&request).await.map_err(call_error)
        } else {
            self.bridge.call(&request).await.map_err(call_error)
        }
    }

    /// Resolves one open operation by asking the workers (reply lookup, then payment sync).
    /// With `give_up`, an operation the processor has no record of is failed with
    /// `CONNECTOR_TIMEOUT`. Returns the resolution applied, if any.
    pub async fn reconcile(&self, op: &OperationRecord, give_up: bool) -> Option<Resolution> {
        let operation = catalogue::find(&op.operation)?;
        if give_up && self.recovery_without_asking {
            let res = Resolution::Failed { code: "CONNECTOR_TIMEOUT".into(), message: "failed without asking (defect)".into() };
            return self.store.apply(&op.message_id, &res).ok().map(|_| res);
        }
        let envelope: nats_bridge::RequestEnvelope = serde_json::from_str(&op.request).ok()?;
        let request = OperationRequest::from_envelope(operation, envelope.clone());
        // Re-sending the same instance is safe: JetStream de-duplicates it within the window,
        // the worker answers from its result store, and the processor sees the same key.
        let again = self.bridge.call_unguarded(&request).await;
        // A worker holds the operation and may be at the processor right now: the processor
        // may confirm it, but failing it could fail a payment about to be charged.
        let in_progress = again.as_ref().err().is_some_and(CallError::in_progress);
        // The calls bypass the breaker: an open breaker must not keep recovery from learning.
        // A re-send that was not applied (no stream, invalid) says nothing about the original,
        // which may have been stored and performed: only the processor can tell.
        let resent = match &again {
            Err(e) if e.outcome() == Outcome::NotApplied => Resolution::Unknown { reason: format!("re-send not applied: {e}") },
            _ => resolution(&again),
        };
        let res = match resent {
            Resolution::Unknown { reason } => {
                // Ask the processor, through the workers, whether the effect exists.
                let sync =
                    OperationRequest::new(catalogue::ops::payment_sync(), &op.merchant_id, &op.payment_id, format!("sync_{}", now_ms()));
                match self.bridge.call_unguarded(&sync).await {
                    Ok(reply) if reply.status == ResponseStatus::Success && effect_of(&reply, &envelope.idempotency_key).is_some() => {
                        // An authorization charged in the same call (automatic capture) must
                        // come out charged, not merely authorized.
                        let captured = match op.operation.as_str() {
                            "payments.authorize" => captured_by_authorization(&reply, &envelope.idempotency_key),
                            _ => None,
                        };
                        Resolution::Succeeded { transaction_id: None, captured }
                    }
                    Ok(_) if give_up && in_progress => {
                        info!(message_id = %op.message_id, "recovery: no effect yet, but a worker is still working on it");
                        return None;
                    }
                    Ok(_) if give_up => Resolution::Failed {
                        code: "CONNECTOR_TIMEOUT".into(),
                        message: format!("no worker answered and the processor has no record ({reason})"),
                    },
                    _ => return None,
                }
            }
            other => other,
        };
        match self.store.apply(&op.message_id, &res) {
            Ok(_) => {
                info!(message_id = %op.message_id, resolution = ?res, "operation reconciled");
                Some(res)
            }
            Err(e) => {
                warn!(message_id = %op.message_id, error = %e, "cannot apply reconciliation");
                None
            }
        }
    }
}

/// Applies replies that arrived after the bridge stopped waiting (the call returned a
/// timeout). A reply for an operation already final changes nothing.
/// A late reply must answer the operation it names: one whose correlation id, merchant or
/// payment differs from the stored request, or that names no operation we sent, is refused
/// (counted in `gateway_late_replies_refused`) and never applied.
pub async fn apply_late_replies(gateway: Arc<Gateway>, mut replies: tokio::sync::mpsc::Receiver<nats_bridge::late::LateReply>) {
    let refused = gateway.bridge.metrics().counter(
        "gateway_late_replies_refused",
        "late replies not applied: no such operation, or not matching its request (correlation id, merchant, payment)",
        &[],
    );
    while let Some(late) = replies.recv().await {
        let Some(message_id) = late.message_id.clone().or_else(|| late.idempotency_key.clone()) else {
            warn!("late reply without message id or idempotency key, ignored");
            refused.inc();
            continue;
        };
        let stored = gateway.store.operation(&message_id).ok().flatten();
        let request = stored.as_ref().and_then(|op| serde_json::from_str::<nats_bridge::RequestEnvelope>(&op.request).ok());
        let why = match (&request, &late.response) {
            (None, _) => Some("no operation with this message id was sent".to_string()),
            (Some(request), Ok(reply)) => reply.mismatch(request),
            (Some(_), Err(_)) => None,
        };
        if let Some(why) = why {
            warn!(%message_id, %why, "late reply refused");
            refused.inc();
            continue;
        }
        let res = resolution(&late.response.clone().map_err(CallError::InvalidReply));
        if matches!(res, Resolution::Unknown { .. }) {
            warn!(%message_id, "late reply is not a valid response envelope, ignored");
            continue;
        }
        match gateway.store.apply(&message_id, &res) {
            Ok(applied) => info!(%message_id, ?applied, correlation_id = ?late.correlation_id, "late reply applied"),
            Err(e) => warn!(%message_id, error = %e, "late reply not applied"),
        }
    }
}

/// Operations with their own routes, which keep the attempt store in step with the processor.
pub const DEDICATED: [(&str, &str); 6] = [
    ("payments.authorize", "POST /payments or /payments/{id}/confirm"),
    ("payments.capture", "POST /payments/{id}/capture"),
    ("payments.void", "POST /payments/{id}/cancel"),
    ("payments.complete_authorize", "POST /payments/{id}/complete_authorize"),
    ("payments.incremental_auth", "POST /payments/{id}/incremental_authorization"),
    ("refunds.execute", "POST /refunds"),
];

/// The effect made with this idempotency key that a payment sync reply lists, if any.
fn effect_of<'a>(reply: &'a ResponseEnvelope, key: &str) -> Option<&'a Value> {
    reply.connector_response["effects"].as_array()?.iter().find(|e| e["idempotency_key"] == key)
}

/// What the authorization made with this key captured, by a payment sync reply (the processor
/// account and its effects): the effect's own `captured_amount`, or else what the account has
/// captured beyond its `payments.capture` effects (an account is captured only by those and by
/// an authorization with automatic capture). `None` when it captured nothing.
fn captured_by_authorization(reply: &ResponseEnvelope, key: &str) -> Option<i64> {
    if let Some(captured) = effect_of(reply, key).and_then(captured_with) {
        return Some(captured);
    }
    let account = &reply.connector_response;
    let by_captures: i64 = account["effects"]
        .as_array()
        .map(|effects| effects.iter().filter(|e| e["operation"] == "payments.capture").filter_map(|e| e["amount"].as_i64()).sum())
        .unwrap_or(0);
    let captured = account["captured"].as_i64()? - by_captures;
    (captured > 0).then_some(captured)
}

fn call_error(e: CallError) -> ApiError {
    let m = e.mapping();
    let code: &'static str = match m.http_status {
        // The request itself was refused before anything was sent: the caller's to fix.
        400 => "invalid_request",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ => "bad_gateway",
    };
    ApiError::new(m.http_status, code, format!("{}: {}", m.code, m.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nats_bridge::OperationRequest;

    fn reply(connector_response: Value) -> ResponseEnvelope {
        let request = OperationRequest::new(catalogue::ops::authorize(), "m", "p", "p_1");
        let mut r = ResponseEnvelope::reply_to(request.envelope(), ResponseStatus::Success);
        r.transaction_id = Some("eff_1".into());
        r.connector_response = connector_response;
        r
    }

    #[test]
    fn a_request_the_bridge_refuses_is_the_callers_error() {
        let e = call_error(CallError::InvalidRequest("router_data must be an object".into()));
        assert_eq!((e.status, e.code), (400, "invalid_request"));
        let e = call_error(CallError::InvalidReply("not json".into()));
        assert_eq!((e.status, e.code), (502, "bad_gateway"));
    }

    #[test]
    fn a_reply_says_what_the_authorization_captured() {
        let charged = reply(json!({ "effect_id": "eff_1", "operation": "payments.authorize", "amount": 700, "captured_amount": 700 }));
        assert_eq!(resolution(&Ok(charged)), Resolution::Succeeded { transaction_id: Some("eff_1".into()), captured: Some(700) });
        let authorized = reply(json!({ "effect_id": "eff_1", "operation": "payments.authorize", "amount": 700 }));
        assert_eq!(resolution(&Ok(authorized)), Resolution::Succeeded { transaction_id: Some("eff_1".into()), captured: None });
        assert_eq!(resolution(&Ok(reply(Value::Null))), Resolution::Succeeded { transaction_id: Some("eff_1".into()), captured: None });
    }

    #[test]
    fn a_payment_sync_says_what_an_authorization_captured() {
        let effect = |key: &str, op: &str, amount: i64, captured: Option<i64>| {
            let mut e = json!({ "idempotency_key": key, "operation": op, "amount": amount });
            if let Some(c) = captured {
                e["captured_amount"] = json!(c);
            }
            e
        };
        let sync = |captured: i64, effects: Vec<Value>| reply(json!({ "authorized": 700, "captured": captured, "effects": effects }));
        // By the effect.
        let charged = sync(700, vec![effect("k_auth", "payments.authorize", 700, Some(700))]);
        assert_eq!(captured_by_authorization(&charged, "k_auth"), Some(700));
        // By the account, when the effect does not say: captured beyond the captures.
        let by_account = sync(700, vec![effect("k_auth", "payments.authorize", 700, None)]);
        assert_eq!(captured_by_authorization(&by_account, "k_auth"), Some(700));
        // Authorized only, or captured by a separate capture: nothing captured by the authorization.
        let authorized = sync(0, vec![effect("k_auth", "payments.authorize", 700, None)]);
        assert_eq!(captured_by_authorization(&authorized, "k_auth"), None);
        let captured_later =
            sync(700, vec![effect("k_auth", "payments.authorize", 700, None), effect("k_cap", "payments.capture", 700, None)]);
        assert_eq!(captured_by_authorization(&captured_later, "k_auth"), None);
        assert!(effect_of(&captured_later, "k_cap").is_some() && effect_of(&captured_later, "k_other").is_none());
    }
}
