//! Call errors, and the line they must never blur: "did not happen" versus "don't know yet".
//!
//! A timeout after a successful publish is [`Outcome::Unknown`]: the worker may have charged
//! the card. Only errors that prove nothing reached a worker are [`Outcome::NotApplied`].

use std::time::Duration;

/// What an error says about the operation's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing reached a worker: safe to report failure or to retry with a new instance.
    NotApplied,
    /// The operation may or may not have happened: keep it pending and reconcile.
    Unknown,
}

/// Attempt status the orchestrator should record for an error (seed error mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStatusHint {
    /// Outcome unknown: keep the attempt pending until a sync or the recovery job decides.
    Pending,
    /// Definitely failed.
    Failure,
}

/// An error as the orchestrator reports it (seeds: timeout -> 504 Pending, no workers ->
/// 503 Failure, worker error -> 400 Failure with the worker's code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMapping {
    /// Error code.
    pub code: String,
    /// Message.
    pub message: String,
    /// HTTP status the orchestrator answers with.
    pub http_status: u16,
    /// Attempt status to record.
    pub attempt_status: AttemptStatusHint,
}

/// Why a bridge call did not return a worker's reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The request cannot be sent as it is (bad merchant id for a subject, too large...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Core request with nobody subscribed: known at once, nothing happened.
    #[error("no workers subscribed to {subject}")]
    NoResponders {
        /// The subject.
        subject: String,
    },
    /// JetStream has no stream for the subject: nothing was stored.
    #[error("no stream accepts {subject}")]
    NoStream {
        /// The subject.
        subject: String,
    },
    /// The circuit breaker is open: the call was not attempted.
    #[error("circuit breaker open for {operation}")]
    CircuitOpen {
        /// The operation.
        operation: String,
    },
    /// No publish ack came back: the message may or may not be stored.
    #[error("publish of {message_id} not acknowledged after {attempts} attempts: {reason}")]
    PublishUnacknowledged {
        /// The message id.
        message_id: String,
        /// How many publishes were tried.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The message is stored but no reply came in time: the worker may still act.
    #[error("no reply for {message_id} within {timeout:?}{}", if *.in_progress { " (a worker holds it: the reply lookup answered pending)" } else { "" })]
    ReplyTimeout {
        /// The message id.
        message_id: String,
        /// The reply timeout.
        timeout: Duration,
        /// The last reply lookup answered `pending`: a worker holds a live claim on the
        /// operation and may be at the processor now. A caller must not conclude it never
        /// happened (recovery keeps such an operation open).
        in_progress: bool,
    },
    /// A query got no answer in time.
    #[error("query {subject} timed out after {timeout:?}")]
    QueryTimeout {
        /// The subject.
        subject: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A reply arrived that is not a response envelope.
    #[error("invalid reply: {0}")]
    InvalidReply(String),
    /// The connection failed in a way that leaves the outcome open.
    #[error("nats transport: {0}")]
    Transport(String),
}

impl CallError {
    /// Whether the operation definitely did not happen, or may have.
    pub fn outcome(&self) -> Outcome {
        match self {
            CallError::InvalidRequest(_) | CallError::NoResponders { .. } | CallError::NoStream { .. } | CallError::CircuitOpen { .. } => {
                Outcome::NotApplied
            }
            CallError::PublishUnacknowledged { .. }
            | CallError::ReplyTimeout { .. }
            | CallError::QueryTimeout { .. }
            | CallError::InvalidReply(_)
            | CallError::Transport(_) => Outcome::Unknown,
        }
    }

    /// Whether this error says the transport or the workers are unhealthy, and so counts as a
    /// failure for the operation's circuit breaker: no responders, no stream, unacknowledged
    /// publish, reply or query timeout, transport error. An invalid request or reply says
    /// nothing about health, and a refused call (circuit open) was never made.
    pub fn trips_breaker(&self) -> bool {
        match self {
            CallError::NoResponders { .. }
            | CallError::NoStream { .. }
            | CallError::PublishUnacknowledged { .. }
            | CallError::ReplyTimeout { .. }
            | CallError::QueryTimeout { .. }
            | CallError::Transport(_) => true,
            CallError::InvalidRequest(_) | CallError::InvalidReply(_) | CallError::CircuitOpen { .. } => false,
        }
    }

    /// Whether a worker said it is working on the operation (reply lookup `pending`).
    pub fn in_progress(&self) -> bool {
        matches!(self, CallError::ReplyTimeout { in_progress: true, .. })
    }

    /// Whether this is one of the timeouts.
    pub fn is_timeout(&self) -> bool {
        matches!(self, CallError::ReplyTimeout { .. } | CallError::QueryTimeout { .. } | CallError::PublishUnacknowledged { .. })
    }

    /// The seed error mapping.
    pub fn mapping(&self) -> ErrorMapping {
        let (code, http_status) = match self {
            CallError::InvalidRequest(_) => ("INVALID_REQUEST", 400),
            CallError::NoResponders { .. } | CallError::NoStream { .. } => ("NO_WORKERS_AVAILABLE", 503),
            CallError::CircuitOpen { .. } => ("CIRCUIT_OPEN", 503),
            CallError::PublishUnacknowledged { .. } | CallError::ReplyTimeout { .. } | CallError::QueryTimeout { .. } => {
                ("NATS_TIMEOUT", 504)
            }
            CallError::InvalidReply(_) => ("INVALID_WORKER_REPLY", 502),
            CallError::Transport(_) => ("NATS_TRANSPORT", 502),
        };
        ErrorMapping {
            code: code.into(),
            message: self.to_string(),
            http_status,
            attempt_status: match self.outcome() {
                Outcome::NotApplied => AttemptStatusHint::Failure,
                Outcome::Unknown => AttemptStatusHint::Pending,
            },
        }
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The NATS connection failed.
    #[error("cannot connect to nats at {url}: {reason}")]
    Connect {
        /// The URL(s).
        url: String,
        /// Why.
        reason: String,
    },
    /// The reply inbox subscription failed.
    #[error("cannot subscribe the reply inbox: {0}")]
    Inbox(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_mapping() {
        let t = CallError::ReplyTimeout { message_id: "m".into(), timeout: Duration::from_secs(1), in_progress: false };
        let m = t.mapping();
        assert_eq!((m.code.as_str(), m.http_status, m.attempt_status), ("NATS_TIMEOUT", 504, AttemptStatusHint::Pending));
        let n = CallError::NoResponders { subject: "s".into() }.mapping();
        assert_eq!((n.code.as_str(), n.http_status, n.attempt_status), ("NO_WORKERS_AVAILABLE", 503, AttemptStatusHint::Failure));
        assert_eq!(CallError::InvalidReply("x".into()).outcome(), Outcome::Unknown);
        let open = CallError::CircuitOpen { operation: "payments.sync".into() };
        let m = open.mapping();
        assert_eq!((m.code.as_str(), m.http_status, m.attempt_status), ("CIRCUIT_OPEN", 503, AttemptStatusHint::Failure));
        assert_eq!(open.outcome(), Outcome::NotApplied);
        assert_eq!(open.to_string(), "circuit breaker open for payments.sync");
    }

    #[test]
    fn every_error_is_classified() {
        let s = || "s".to_string();
        let d = Duration::from_secs(1);
        use AttemptStatusHint::{Failure, Pending};
        // error, outcome, code, HTTP status, attempt hint, timeout, trips the breaker
        let table = [
            (CallError::InvalidRequest(s()), Outcome::NotApplied, "INVALID_REQUEST", 400, Failure, false, false),
            (CallError::NoResponders { subject: s() }, Outcome::NotApplied, "NO_WORKERS_AVAILABLE", 503, Failure, false, true),
            (CallError::NoStream { subject: s() }, Outcome::NotApplied, "NO_WORKERS_AVAILABLE", 503, Failure, false, true),
            (CallError::CircuitOpen { operation: s() }, Outcome::NotApplied, "CIRCUIT_OPEN", 503, Failure, false, false),
            (
                CallError::PublishUnacknowledged { message_id: s(), attempts: 3, reason: s() },
                Outcome::Unknown,
                "NATS_TIMEOUT",
                504,
                Pending,
                true,
                true,
            ),
            (
                CallError::ReplyTimeout { message_id: s(), timeout: d, in_progress: true },
                Outcome::Unknown,
                "NATS_TIMEOUT",
                504,
                Pending,
                true,
                true,
            ),
            (CallError::QueryTimeout { subject: s(), timeout: d }, Outcome::Unknown, "NATS_TIMEOUT", 504, Pending, true, true),
            (CallError::InvalidReply(s()), Outcome::Unknown, "INVALID_WORKER_REPLY", 502, Pending, false, false),
            (CallError::Transport(s()), Outcome::Unknown, "NATS_TRANSPORT", 502, Pending, false, true),
        ];
        for (e, outcome, code, status, hint, timeout, trips) in table {
            let m = e.mapping();
            assert_eq!((e.outcome(), m.code.as_str(), m.http_status, m.attempt_status), (outcome, code, status, hint), "{e:?}");
            assert_eq!(m.message, e.to_string());
            assert_eq!((e.is_timeout(), e.trips_breaker()), (timeout, trips), "{e:?}");
            let held = matches!(e, CallError::ReplyTimeout { .. });
            assert_eq!(e.in_progress(), held, "only a reply timeout with a pending lookup is in progress: {e:?}");
        }
        let not_held = CallError::ReplyTimeout { message_id: s(), timeout: d, in_progress: false };
        assert!(!not_held.in_progress());
        assert!(!not_held.to_string().contains("a worker holds it"));
    }
}
