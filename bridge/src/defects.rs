//! Deliberate defects, so the harness can prove it catches each class of bug this bridge was
//! built to avoid (docs/architecture.md section 8). They can be set only from code, never from a config file
//! or the environment, and are all off by default. Never turn one on outside the harness.

/// The bridge's defect switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Defects {
    /// Every durable operation of a payment carries the authorization's message id, so
    /// JetStream drops captures, voids and refunds as duplicates.
    pub reuse_authorize_message_id: bool,
    /// The reply inbox travels in a custom `Nats-Reply-To` header (reserved prefix).
    pub reserved_reply_header: bool,
    /// Streams take whole families (`hyperswitch.payments.>`), capturing query subjects.
    pub stream_captures_queries: bool,
    /// The card number is copied into a header.
    pub card_data_in_headers: bool,
    /// A publish that JetStream reports as a duplicate waits for the worker's reply with no
    /// deadline and no reply lookup: when the first reply went to a caller that gave up, the
    /// call waits forever for a reply that will never come.
    pub duplicate_waits_for_reply: bool,
}
