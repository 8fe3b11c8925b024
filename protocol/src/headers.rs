//! Header names of the bridge protocol.
//!
//! Our own headers use the `X-` prefix. The `Nats-` prefix is reserved by NATS: we set only
//! `Nats-Msg-Id`, the standard JetStream de-duplication header, and never invent `Nats-` names
//! (a custom `Nats-Reply-To` is one of the defects this project exists to catch).

/// JetStream de-duplication id: unique per operation instance, equal across transport retries.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// The message id again, on queries and replies too (which do not go through JetStream).
pub const MESSAGE_ID: &str = "X-Message-Id";
/// Catalogue name of the operation.
pub const OPERATION: &str = "X-Operation";
/// The merchant (copy of the body's field, for observability and routing).
pub const MERCHANT_ID: &str = "X-Merchant-Id";
/// The payment.
pub const PAYMENT_ID: &str = "X-Payment-Id";
/// The operation instance (attempt, capture, refund id).
pub const ATTEMPT_ID: &str = "X-Attempt-Id";
/// Correlation id of the logical operation.
pub const CORRELATION_ID: &str = "X-Correlation-Id";
/// The processor idempotency key.
pub const IDEMPOTENCY_KEY: &str = "X-Idempotency-Key";
/// Where a worker sends the reply to a durable message (JetStream keeps the message's own
/// reply subject for its ack, so the inbox travels in a header).
pub const REPLY_TO: &str = "X-Reply-To";
/// On a reply-lookup answer: `hit` (body is the stored reply) or `miss`.
pub const LOOKUP: &str = "X-Lookup";

/// Every header the bridge sets on a request.
pub const REQUEST_HEADERS: [&str; 9] =
    [NATS_MSG_ID, MESSAGE_ID, OPERATION, MERCHANT_ID, PAYMENT_ID, ATTEMPT_ID, CORRELATION_ID, IDEMPOTENCY_KEY, REPLY_TO];

/// `Nats-` headers that NATS itself defines and that a client may legitimately set or see.
pub const STANDARD_NATS_HEADERS: [&str; 9] = [
    "Nats-Msg-Id",
    "Nats-Expected-Stream",
    "Nats-Expected-Last-Msg-Id",
    "Nats-Expected-Last-Sequence",
    "Nats-Expected-Last-Subject-Sequence",
    "Nats-Rollup",
    "Nats-TTL",
    "Nats-Marker-Reason",
    "Nats-Schedule",
];

/// Whether a header name misuses the reserved `Nats-` prefix (a `Nats-` name NATS does not define).
pub fn misuses_reserved_prefix(name: &str) -> bool {
    name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-") && !STANDARD_NATS_HEADERS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_headers_respect_the_reserved_prefix() {
        for h in REQUEST_HEADERS {
            assert!(!misuses_reserved_prefix(h), "{h}");
        }
        assert!(misuses_reserved_prefix("Nats-Reply-To"));
        assert!(misuses_reserved_prefix("nats-reply-to"));
        assert!(!misuses_reserved_prefix("X-Reply-To"));
    }
}
