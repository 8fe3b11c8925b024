//! Wire types shared by the HTTP API and [`crate::client::ProcessorClient`].
//!
//! Every type serialises with snake_case field names. Amounts are integers in
//! minor units (cents), never floats.

use serde::{Deserialize, Serialize};

/// Name of the request header that carries the idempotency key on `POST /v1/effects`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// Name of the response header set to `true` when a stored response is replayed.
pub const IDEMPOTENT_REPLAYED_HEADER: &str = "Idempotent-Replayed";

/// A request to perform one side effect at the processor (`POST /v1/effects`).
///
/// Unknown fields are rejected, so a misspelt field is a 400 instead of a
/// silently ignored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectRequest {
    /// Catalogue name of the operation, e.g. `payments.authorize`; selects the
    /// amount rules that apply.
    pub operation: String,
    /// Merchant the effect is performed for; first half of the account key.
    pub merchant_id: String,
    /// Payment the effect belongs to; second half of the account key.
    pub payment_id: String,
    /// Identifier of the sub-object the effect creates or acts on (capture id,
    /// refund id, payout id, mandate id...); lets checkers and workers look
    /// effects up by business identity rather than by key.
    #[serde(default)]
    pub reference: Option<String>,
    /// Amount in minor units, where the operation moves money.
    #[serde(default)]
    pub amount: Option<i64>,
    /// ISO currency code; must match the account's currency once it has one.
    #[serde(default)]
    pub currency: Option<String>,
    /// Free-form data the processor stores but does not interpret; it takes part
    /// in the idempotency comparison like every other field.
    #[serde(default)]
    pub details: serde_json::Value,
    /// How the payment is captured; only `payments.authorize` reads it. With
    /// [`CaptureMethod::Automatic`] the authorization also captures the whole
    /// authorized amount, in the same effect (a charge in one call); absent or
    /// [`CaptureMethod::Manual`], it only authorizes. Omitted from the JSON when
    /// absent, and part of the idempotency comparison like every other field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_method: Option<CaptureMethod>,
}

/// Capture method of a `payments.authorize` request ([`EffectRequest::capture_method`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethod {
    /// Authorize and capture the whole amount in one effect.
    Automatic,
    /// Authorize only; captures come later (`payments.capture`).
    Manual,
}

impl CaptureMethod {
    /// The wire name (`automatic`, `manual`).
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Automatic => "automatic",
            CaptureMethod::Manual => "manual",
        }
    }

    /// Parses a wire name; `None` for any other.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "automatic" => Some(CaptureMethod::Automatic),
            "manual" => Some(CaptureMethod::Manual),
            _ => None,
        }
    }
}

impl EffectRequest {
    /// A request for `operation` on the account `(merchant_id, payment_id)` with
    /// no reference, amount, currency or details.
    pub fn new(operation: impl Into<String>, merchant_id: impl Into<String>, payment_id: impl Into<String>) -> Self {
        Self {
            operation: operation.into(),
            merchant_id: merchant_id.into(),
            payment_id: payment_id.into(),
            reference: None,
            amount: None,
            currency: None,
            details: serde_json::Value::Null,
            capture_method: None,
        }
    }

    /// Sets the reference (capture id, refund id, payout id...).
    pub fn reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }

    /// Sets the amount in minor units.
    pub fn amount(mut self, amount: i64) -> Self {
        self.amount = Some(amount);
        self
    }

    /// Sets the currency code.
    pub fn currency(mut self, currency: impl Into<String>) -> Self {
        self.currency = Some(currency.into());
        self
    }

    /// Sets the free-form details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// Sets the capture method (read by `payments.authorize` only).
    pub fn capture_method(mut self, capture_method: CaptureMethod) -> Self {
        self.capture_method = Some(capture_method);
        self
    }
}

/// One side effect the processor has performed: an entry of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// Unique identifier, never reused during the life of the process (not even
    /// after a reset), so a worker can quote it as proof of the effect.
    pub effect_id: String,
    /// Position in the ledger, starting at 1 and increasing by one per effect;
    /// gives checkers a total order. Restarts at 1 after a reset.
    pub seq: u64,
    /// Operation as requested.
    pub operation: String,
    /// Merchant as requested.
    pub merchant_id: String,
    /// Payment as requested.
    pub payment_id: String,
    /// Reference as requested.
    #[serde(default)]
    pub reference: Option<String>,
    /// Amount as requested, in minor units.
    #[serde(default)]
    pub amount: Option<i64>,
    /// Currency as requested.
    #[serde(default)]
    pub currency: Option<String>,
    /// Details as requested; omitted from the JSON when null.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    /// Set only on a `payments.authorize` with automatic capture: the amount it
    /// captured in the same change, the whole authorized amount. Absent (and
    /// omitted from the JSON) on every other effect, `payments.capture` included,
    /// whose `amount` is what it captured. An authorization without it captured
    /// nothing: a caller that wanted automatic capture and gets none (a worker
    /// that did not pass `capture_method` on) must capture separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_amount: Option<i64>,
    /// `Idempotency-Key` the request carried, recorded even when idempotency is
    /// off so checkers can spot two effects made under one key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Wall-clock time the effect was recorded, in milliseconds since the Unix
    /// epoch; for humans reading a ledger, not for ordering (use `seq`).
    pub created_at_ms: u64,
}

/// JSON body of every 4xx and 5xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `amount_exceeds_capturable`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Body of `GET /v1/ledger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerView {
    /// Recorded effects in `seq` order.
    pub effects: Vec<Effect>,
}

/// Lifecycle status of an account, derived from its amounts.
///
/// The first matching rule wins:
/// 1. `voided` — the authorization was voided;
/// 2. `refunded` — something was refunded and refunded == captured;
/// 3. `partially_refunded` — something was refunded, less than captured;
/// 4. `captured` — something was captured and captured == authorized;
/// 5. `partially_captured` — something was captured, less than authorized;
/// 6. `authorized` — an authorization exists, nothing captured;
/// 7. `not_authorized` — the account only has effects that are not part of a
///    payment's lifecycle (payouts, uncatalogued operations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Authorized, nothing captured yet.
    Authorized,
    /// Part of the authorized amount captured.
    PartiallyCaptured,
    /// The whole authorized amount captured.
    Captured,
    /// Authorization voided.
    Voided,
    /// The whole captured amount refunded.
    Refunded,
    /// Part of the captured amount refunded.
    PartiallyRefunded,
    /// No authorization on this account.
    NotAuthorized,
}

/// Body of `GET /v1/accounts/{merchant_id}/{payment_id}`: the money state of one
/// payment, as the processor's rules see it.
///
/// An account exists once any effect was recorded for its
/// `(merchant_id, payment_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Merchant half of the account key.
    pub merchant_id: String,
    /// Payment half of the account key.
    pub payment_id: String,
    /// Currency of the authorization; every later effect that names a currency
    /// must name this one. `None` until the account is authorized.
    pub currency: Option<String>,
    /// Total authorized: authorization plus incremental authorizations.
    pub authorized: i64,
    /// Total captured.
    pub captured: i64,
    /// Total refunded.
    pub refunded: i64,
    /// Whether the authorization was voided.
    pub voided: bool,
    /// Status derived from the fields above, see [`AccountStatus`].
    pub status: AccountStatus,
}

/// Run-time settings of the processor (`GET`/`PUT /v1/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessorConfig {
    /// Whether `Idempotency-Key` is honoured. Off emulates a processor that
    /// ignores the key: every request is processed anew (the key is still
    /// recorded on the effect).
    pub idempotency: bool,
    /// Fixed delay, in milliseconds, added before answering `POST /v1/effects`.
    /// The effect is recorded before the delay, so a client that gives up early
    /// has still caused it — the case workers must recover from.
    pub latency_ms: u64,
    /// Fixed delay, in milliseconds, before `POST /v1/effects` performs the effect
    /// (a slow acquirer): a caller that asks about the payment meanwhile finds no
    /// effect, though one is on its way — the case recovery must not mistake for
    /// "never happened".
    #[serde(default)]
    pub delay_before_effect_ms: u64,
}

impl Default for ProcessorConfig {
    /// Idempotency on, no added latency.
    fn default() -> Self {
        Self { idempotency: true, latency_ms: 0, delay_before_effect_ms: 0 }
    }
}
