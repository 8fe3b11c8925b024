//! Replies that reach the inbox after their call gave up.
//!
//! A durable call that returned [`CallError::ReplyTimeout`](crate::CallError::ReplyTimeout) left
//! its message in the stream: a worker may still process it and reply. That reply finds no
//! waiter; the bridge decodes it into a [`LateReply`] and hands it to the application through
//! [`Bridge::late_replies`](crate::Bridge::late_replies), so the attempt whose outcome was
//! unknown can be settled.
//!
//! Only plausible replies are handed over: one larger than `max_reply_bytes`, undecodable,
//! without an `X-Message-Id`, or whose message id does not belong to the inbox address it was
//! sent to is refused and counted (`nats_late_replies_rejected{reason}`), never applied.
//!
//! A late reply can also repeat a reply that was already returned (a worker re-sends its stored
//! result when JetStream redelivers a message whose ack was late): apply late replies
//! idempotently, and never let one overwrite a terminal state.

use async_nats::HeaderMap;
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{debug, warn};

use crate::envelope::ResponseEnvelope;
use crate::headers;
use crate::metrics::Counter;
use crate::reply_token;

/// A reply that arrived with no call waiting for it.
#[derive(Debug, Clone, PartialEq)]
pub struct LateReply {
    /// `X-Message-Id` of the reply, when the worker sets it.
    pub message_id: Option<String>,
    /// `X-Idempotency-Key` of the reply: finds the attempt even without the message id.
    pub idempotency_key: Option<String>,
    /// `X-Correlation-Id` of the reply, or else the body's `correlation_id`.
    pub correlation_id: Option<String>,
    /// The decoded body, or why it could not be decoded.
    pub response: Result<ResponseEnvelope, String>,
}

impl LateReply {
    /// Decodes a reply from its headers and body.
    pub fn decode(headers: Option<&HeaderMap>, payload: &[u8]) -> LateReply {
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_string()).filter(|v| !v.is_empty());
        let response = serde_json::from_slice::<ResponseEnvelope>(payload).map_err(|e| format!("undecodable reply: {e}"));
        let correlation_id =
            header(headers::CORRELATION_ID).or_else(|| response.as_ref().ok().map(|r| r.correlation_id.clone()).filter(|c| !c.is_empty()));
        LateReply { message_id: header(headers::MESSAGE_ID), idempotency_key: header(headers::IDEMPOTENCY_KEY), correlation_id, response }
    }
}

/// What became of a reply nobody waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Handed to the application.
    Handed,
    /// Plausible, but the buffer was full or nobody reads.
    Dropped,
    /// Refused for this reason.
    Rejected(&'static str),
}

/// Where the inbox puts late replies: a bounded channel, never blocking the inbox.
pub(crate) struct LateSink {
    tx: mpsc::Sender<LateReply>,
    /// Larger replies are refused unread.
    max_bytes: usize,
    /// `nats_late_replies_rejected`, by reason.
    rejected: [(&'static str, Counter); 4],
    /// `nats_late_replies`.
    arrived: Counter,
    /// `nats_late_replies_dropped`.
    dropped: Counter,
}

impl LateSink {
    /// A sink with room for `capacity` unread replies, and its receiver.
    pub(crate) fn new(
        capacity: usize,
        max_bytes: usize,
        arrived: Counter,
        dropped: Counter,
        rejected: [(&'static str, Counter); 4],
    ) -> (Self, mpsc::Receiver<LateReply>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (LateSink { tx, max_bytes, rejected, arrived, dropped }, rx)
    }

    /// Checks a reply that reached inbox address `token` with no waiter, and hands it over;
    /// drops it (counted) when the buffer is full or nobody reads.
    pub(crate) fn offer(&self, token: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Offered {
        self.arrived.inc();
        let reject = |reason: &'static str| {
            if let Some((_, c)) = self.rejected.iter().find(|(r, _)| *r == reason) {
                c.inc();
            }
            warn!(reason, bytes = payload.len(), "late reply refused");
            Offered::Rejected(reason)
        };
        if payload.len() > self.max_bytes {
            return reject("oversized");
        }
        let reply = LateReply::decode(headers, payload);
        if reply.response.is_err() {
            return reject("undecodable");
        }
        let Some(message_id) = reply.message_id.as_deref() else {
            return reject("no_message_id");
        };
        if reply_token::token(message_id) != token {
            // Sent to the address of another message: misrouted, or forged.
            return reject("wrong_inbox");
        }
        debug!(key = ?reply.idempotency_key, correlation_id = ?reply.correlation_id, "late reply");
        match self.tx.try_send(reply) {
            Ok(()) => Offered::Handed,
            Err(TrySendError::Full(reply)) => {
                self.dropped.inc();
                warn!(key = ?reply.idempotency_key, "late reply dropped: buffer full");
                Offered::Dropped
            }
            Err(TrySendError::Closed(_)) => {
                self.dropped.inc();
                Offered::Dropped
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ResponseStatus;

    #[test]
    fn decodes_headers_and_body() {
        let mut h = HeaderMap::new();
        h.insert(headers::CORRELATION_ID, "c1");
        h.insert(headers::IDEMPOTENCY_KEY, "m:p:payments.authorize:a1");
        let body = br#"{"status":"success","correlation_id":"c1","transaction_id":"t1"}"#;
        let r = LateReply::decode(Some(&h), body);
        assert_eq!(r.message_id, None);
        assert_eq!(r.idempotency_key.as_deref(), Some("m:p:payments.authorize:a1"));
        assert_eq!(r.correlation_id.as_deref(), Some("c1"));
        let env = r.response.unwrap();
        assert_eq!((env.status, env.transaction_id.as_deref()), (ResponseStatus::Success, Some("t1")));

        let r = LateReply::decode(None, br#"{"status":"failure","correlation_id":"c2"}"#);
        assert_eq!(r.correlation_id.as_deref(), Some("c2"), "falls back to the body");
        let r = LateReply::decode(Some(&h), b"not json");
        assert!(r.response.unwrap_err().starts_with("undecodable reply"));
        assert_eq!(r.correlation_id.as_deref(), Some("c1"));
    }

    fn rejections() -> [(&'static str, Counter); 4] {
        ["oversized", "undecodable", "no_message_id", "wrong_inbox"].map(|r| (r, Counter::default()))
    }

    fn with_id(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(headers::MESSAGE_ID, id);
        h
    }

    const OK: &[u8] = br#"{"status":"success","correlation_id":"c1"}"#;

    #[test]
    fn a_full_buffer_or_a_dropped_receiver_drops_and_counts() {
        let (arrived, dropped) = (Counter::default(), Counter::default());
        let (sink, mut rx) = LateSink::new(1, 1024, arrived.clone(), dropped.clone(), rejections());
        let (h, token) = (with_id("m:p:payments.capture:c1"), reply_token::token("m:p:payments.capture:c1"));
        assert_eq!(sink.offer(&token, Some(&h), OK), Offered::Handed);
        assert_eq!(sink.offer(&token, Some(&h), OK), Offered::Dropped);
        assert_eq!((arrived.get(), dropped.get()), (2, 1));
        assert!(rx.try_recv().is_ok());
        drop(rx);
        assert_eq!(sink.offer(&token, Some(&h), OK), Offered::Dropped);
        assert_eq!((arrived.get(), dropped.get()), (3, 2));
    }

    #[test]
    fn implausible_replies_are_refused_by_reason_and_never_handed_over() {
        let rejected = rejections();
        let (sink, mut rx) = LateSink::new(8, 64, Counter::default(), Counter::default(), rejected.clone());
        let id = "m:p:payments.capture:c1";
        let (h, token) = (with_id(id), reply_token::token(id));
        assert_eq!(sink.offer(&token, Some(&h), &[b' '; 65]), Offered::Rejected("oversized"));
        assert_eq!(sink.offer(&token, Some(&h), b"{\"status\":\"succ"), Offered::Rejected("undecodable"));
        assert_eq!(sink.offer(&token, None, OK), Offered::Rejected("no_message_id"));
        let other = reply_token::token("m:p:payments.capture:c2");
        assert_eq!(sink.offer(&other, Some(&h), OK), Offered::Rejected("wrong_inbox"));
        assert!(rx.try_recv().is_err(), "nothing refused reaches the application");
        assert!(rejected.iter().all(|(_, c)| c.get() == 1), "each reason counted once");
    }
}
