//! Request and response envelopes: the JSON bodies of every bridge message.
//!
//! Field names follow the connector overview seed. Decoding ignores unknown fields, so a
//! worker may add fields without breaking older bridges.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the bridge sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// Catalogue name of the operation (`payments.capture`).
    pub operation: String,
    /// The merchant; authoritative here (the header copy is for observability only).
    pub merchant_id: String,
    /// The payment the operation belongs to.
    pub payment_id: String,
    /// The operation instance: Hyperswitch's attempt id for an authorization, the capture id,
    /// the refund id... Part of the message id, so each instance is de-duplicated on its own.
    pub attempt_id: String,
    /// Traces one logical operation through bridge, worker and processor; the reply echoes it.
    pub correlation_id: String,
    /// The key the worker passes to the processor; the same key never moves money twice.
    pub idempotency_key: String,
    /// When the operation instance was created, unix epoch milliseconds; stable across retries.
    pub timestamp: u64,
    /// Connector name, for routing webhooks by connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    /// The orchestrator's router data: amounts, currency, payment method... (may hold card
    /// data, so it travels only in the body, never in headers or subjects).
    #[serde(default)]
    pub router_data: serde_json::Value,
    /// Free-form string metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Outcome a worker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    /// The processor did it.
    Success,
    /// The processor refused, or the worker failed definitely; `error` says why.
    Failure,
    /// Accepted but not final yet (asynchronous processor); sync later.
    Processing,
    /// The customer must act (3DS redirect); `connector_response` says how.
    RequiresCustomerAction,
}

/// An error reported by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (`card_declined`, `amount_exceeds_capturable`...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// What a worker sends back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    /// The outcome.
    pub status: ResponseStatus,
    /// Echo of the request's correlation id; a mismatch means the reply is not ours.
    pub correlation_id: String,
    /// Echo of the request's merchant, checked so a reply never crosses merchants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    /// Echo of the request's payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// The processor's reference for the effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// The processor's raw answer, passed through.
    #[serde(default)]
    pub connector_response: serde_json::Value,
    /// Set when `status` is `failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl ResponseEnvelope {
    /// A reply to `request` with the echo fields filled in.
    pub fn reply_to(request: &RequestEnvelope, status: ResponseStatus) -> Self {
        ResponseEnvelope {
            status,
            correlation_id: request.correlation_id.clone(),
            merchant_id: Some(request.merchant_id.clone()),
            payment_id: Some(request.payment_id.clone()),
            transaction_id: None,
            connector_response: serde_json::Value::Null,
            error: None,
        }
    }

    /// A failure reply to `request`.
    pub fn failure(request: &RequestEnvelope, code: impl Into<String>, message: impl Into<String>) -> Self {
        let mut r = Self::reply_to(request, ResponseStatus::Failure);
        r.error = Some(ErrorBody { code: code.into(), message: message.into() });
        r
    }

    /// Why this reply does not belong to `request`, if it does not.
    pub fn mismatch(&self, request: &RequestEnvelope) -> Option<String> {
        if self.correlation_id != request.correlation_id {
            return Some(format!("correlation id {} does not match {}", self.correlation_id, request.correlation_id));
        }
        if let Some(m) = &self.merchant_id {
            if *m != request.merchant_id {
                return Some(format!("reply for merchant {m} to a request of {}", request.merchant_id));
            }
        }
        if let Some(p) = &self.payment_id {
            if *p != request.payment_id {
                return Some(format!("reply for payment {p} to a request for {}", request.payment_id));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_optional_ones_default() {
        let r: ResponseEnvelope = serde_json::from_str(r#"{"status":"success","correlation_id":"c","extra":1}"#).unwrap();
        assert_eq!(r.status, ResponseStatus::Success);
        assert!(r.error.is_none());
        let s: ResponseStatus = serde_json::from_str("\"requires_customer_action\"").unwrap();
        assert_eq!(s, ResponseStatus::RequiresCustomerAction);
    }
}
