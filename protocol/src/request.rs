//! An operation instance ready to send: envelope plus its stable message id.
//!
//! Build one `OperationRequest` per logical operation instance (an authorization attempt, a
//! capture, a refund...) and pass the same value to every transport retry: the message id,
//! correlation id, idempotency key and timestamp then stay identical, which is what lets
//! JetStream and the worker recognise the retry.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::catalogue::Operation;
use crate::envelope::RequestEnvelope;

/// One operation instance.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRequest {
    /// The catalogue row: selects subject, pattern and timeouts.
    operation: Operation,
    /// The body sent to the worker.
    envelope: RequestEnvelope,
    /// JetStream de-duplication id, derived from merchant, payment, operation and instance.
    message_id: String,
}

/// The message id of an operation instance. Distinct for authorize, each capture, each void,
/// each refund and each attempt (they differ in operation or instance), equal across retries.
pub fn message_id(merchant_id: &str, payment_id: &str, operation: Operation, attempt_id: &str) -> String {
    format!("{merchant_id}:{payment_id}:{}:{attempt_id}", operation.name)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl OperationRequest {
    /// A new instance of `operation` for a payment. `attempt_id` names the instance: the
    /// attempt id for an authorization, the capture id for a capture, the refund id...
    /// A fresh correlation id is drawn; the idempotency key defaults to the message id.
    pub fn new(operation: Operation, merchant_id: impl Into<String>, payment_id: impl Into<String>, attempt_id: impl Into<String>) -> Self {
        let merchant_id = merchant_id.into();
        let payment_id = payment_id.into();
        let attempt_id = attempt_id.into();
        let message_id = message_id(&merchant_id, &payment_id, operation, &attempt_id);
        OperationRequest {
            operation,
            envelope: RequestEnvelope {
                operation: operation.name.to_string(),
                merchant_id,
                payment_id,
                attempt_id,
                correlation_id: uuid::Uuid::new_v4().to_string(),
                idempotency_key: message_id.clone(),
                timestamp: now_ms(),
                connector: None,
                router_data: serde_json::Value::Null,
                metadata: BTreeMap::new(),
            },
            message_id,
        }
    }

    /// Sets the router data (amounts, currency, payment method).
    pub fn router_data(mut self, router_data: serde_json::Value) -> Self {
        self.envelope.router_data = router_data;
        self
    }

    /// Sets the correlation id (e.g. the orchestrator's request id).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.envelope.correlation_id = id.into();
        self
    }

    /// Sets the processor idempotency key (default: the message id).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.envelope.idempotency_key = key.into();
        self
    }

    /// Sets the connector name.
    pub fn connector(mut self, connector: impl Into<String>) -> Self {
        self.envelope.connector = Some(connector.into());
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envelope.metadata.insert(key.into(), value.into());
        self
    }

    /// Rebuilds a request from an envelope (a worker replaying a stored message, a gateway
    /// re-sending an attempt after restart).
    pub fn from_envelope(operation: Operation, envelope: RequestEnvelope) -> Self {
        let message_id = message_id(&envelope.merchant_id, &envelope.payment_id, operation, &envelope.attempt_id);
        OperationRequest { operation, envelope, message_id }
    }

    /// The catalogue row.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// The body.
    pub fn envelope(&self) -> &RequestEnvelope {
        &self.envelope
    }

    /// The de-duplication id.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::ops;

    #[test]
    fn instances_get_distinct_ids_and_clones_keep_them() {
        let auth = OperationRequest::new(ops::authorize(), "m", "p", "p_1");
        let cap1 = OperationRequest::new(ops::capture(), "m", "p", "cap_1");
        let cap2 = OperationRequest::new(ops::capture(), "m", "p", "cap_2");
        let void = OperationRequest::new(ops::void(), "m", "p", "void_1");
        let ids = [auth.message_id(), cap1.message_id(), cap2.message_id(), void.message_id()];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let retry = cap1.clone();
        assert_eq!(retry.message_id(), cap1.message_id());
        assert_eq!(retry.envelope().correlation_id, cap1.envelope().correlation_id);
    }
}
