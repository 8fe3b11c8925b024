//! Checking that a configuration makes a working bridge.

use nats_protocol::naming;

use super::{validate_security, BridgeConfig, ConfigError, MAX_LATE_REPLY_BUFFER, MAX_OPEN_MS, MAX_REPLY_BYTES};
use crate::catalogue::Pattern;

impl BridgeConfig {
    /// Checks that the configuration makes a working bridge: known operations, valid subjects,
    /// sane timeouts, and no stream subject capturing a query subject.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.base_url.trim().is_empty() {
            return invalid("base_url is empty".into());
        }
        self.subjects.validate()?;
        if self.connection_timeout_ms == 0 {
            return invalid("connection_timeout_ms must be positive".into());
        }
        validate_security("nats_bridge", &self.tls, &self.auth)?;
        if self.ack_timeout_ms == 0 || self.query_timeout_ms == 0 {
            return invalid("timeouts must be positive".into());
        }
        if self.request_timeout_ms <= self.ack_timeout_ms {
            return invalid(format!(
                "request_timeout_ms ({}) must exceed ack_timeout_ms ({})",
                self.request_timeout_ms, self.ack_timeout_ms
            ));
        }
        if !(1..=MAX_LATE_REPLY_BUFFER).contains(&self.late_reply_buffer) {
            return invalid(format!("late_reply_buffer must be 1..={MAX_LATE_REPLY_BUFFER}, got {}", self.late_reply_buffer));
        }
        if !(1024..=MAX_REPLY_BYTES).contains(&self.max_reply_bytes) {
            return invalid(format!("max_reply_bytes must be 1024..={MAX_REPLY_BYTES}, got {}", self.max_reply_bytes));
        }
        let cb = &self.circuit_breaker;
        if cb.failure_threshold == 0 {
            return invalid("circuit_breaker.failure_threshold must be at least 1, got 0".into());
        }
        if !(1..=MAX_OPEN_MS).contains(&cb.open_ms) {
            return invalid(format!("circuit_breaker.open_ms must be 1..={MAX_OPEN_MS} (one day), got {}", cb.open_ms));
        }
        if cb.half_open_probes == 0 {
            return invalid("circuit_breaker.half_open_probes must be at least 1, got 0".into());
        }
        self.jetstream.validate()?;
        for (name, o) in &self.operations {
            let op = naming::validate_override(name, o.subject.as_deref())?;
            if op.pattern == Pattern::Query && o.ack_timeout_ms.is_some() {
                return invalid(format!("operations.{name}.ack_timeout_ms: {name} is a query, it has no publish ack"));
            }
            let t = self.timeouts(op);
            if let Some(ack) = t.ack {
                if t.reply.is_zero() || ack.is_zero() {
                    return invalid(format!("operations.{name}: timeout_ms must exceed ack_timeout_ms"));
                }
            }
        }
        // A stream must never capture a query subject, nor the reply-lookup subject.
        self.naming().check_overlaps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OperationOverride;

    #[test]
    fn a_stream_capturing_a_query_is_refused() {
        // The seeds' mistake: a durable subject with a wildcard over the family.
        let mut c = BridgeConfig::default();
        c.operations.insert(
            "payments.authorize".into(),
            OperationOverride { subject: Some("hyperswitch.payments.>".into()), ..Default::default() },
        );
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("capture the query"), "{err}");
    }

    #[test]
    fn bad_breaker_and_buffer_values_are_refused_with_the_key_named() {
        type Mutation = fn(&mut BridgeConfig);
        let cases: [(Mutation, &str); 15] = [
            (|c| c.base_url = " ".into(), "base_url is empty"),
            (|c| c.connection_timeout_ms = 0, "connection_timeout_ms must be positive"),
            (|c| c.ack_timeout_ms = 0, "timeouts must be positive"),
            (|c| c.query_timeout_ms = 0, "timeouts must be positive"),
            (|c| c.request_timeout_ms = c.ack_timeout_ms, "request_timeout_ms (2000) must exceed ack_timeout_ms (2000)"),
            (|c| c.max_reply_bytes = 1023, "max_reply_bytes must be 1024..=67108864, got 1023"),
            (|c| c.max_reply_bytes = MAX_REPLY_BYTES + 1, "max_reply_bytes must be"),
            (
                |c| {
                    let o = super::super::OperationOverride { ack_timeout_ms: Some(100), ..Default::default() };
                    c.operations.insert("payments.sync".into(), o);
                },
                "operations.payments.sync.ack_timeout_ms: payments.sync is a query",
            ),
            (
                |c| {
                    let o = super::super::OperationOverride { timeout_ms: Some(500), ack_timeout_ms: Some(500), ..Default::default() };
                    c.operations.insert("payments.capture".into(), o);
                },
                "operations.payments.capture: timeout_ms must exceed ack_timeout_ms",
            ),
            (|c| c.circuit_breaker.failure_threshold = 0, "circuit_breaker.failure_threshold must be at least 1"),
            (|c| c.circuit_breaker.open_ms = 0, "circuit_breaker.open_ms must be"),
            (|c| c.circuit_breaker.open_ms = MAX_OPEN_MS + 1, "circuit_breaker.open_ms must be"),
            (|c| c.circuit_breaker.half_open_probes = 0, "circuit_breaker.half_open_probes must be at least 1"),
            (|c| c.late_reply_buffer = 0, "late_reply_buffer must be"),
            (|c| c.late_reply_buffer = MAX_LATE_REPLY_BUFFER + 1, "late_reply_buffer must be"),
        ];
        for (mutate, expected) in cases {
            let mut c = BridgeConfig::default();
            mutate(&mut c);
            let err = c.validate().unwrap_err();
            assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err} does not say {expected:?}");
        }
        // The bounds themselves are accepted.
        for bytes in [1024, MAX_REPLY_BYTES] {
            BridgeConfig { max_reply_bytes: bytes, ..Default::default() }.validate().unwrap();
        }
        BridgeConfig { late_reply_buffer: MAX_LATE_REPLY_BUFFER, ..Default::default() }.validate().unwrap();
        // A disabled breaker is still validated: its values must make sense when re-enabled.
        let mut c = BridgeConfig::default();
        c.circuit_breaker.enabled = false;
        c.validate().unwrap();
    }

    #[test]
    fn inconsistent_security_is_refused_with_the_key_named() {
        type Mutation = fn(&mut BridgeConfig);
        let cases: [(Mutation, &str); 6] = [
            (|c| c.tls.cert_file = Some("c.pem".into()), "nats_bridge.tls.cert_file is set without nats_bridge.tls.key_file"),
            (|c| c.tls.key_file = Some("k.pem".into()), "nats_bridge.tls.key_file is set without nats_bridge.tls.cert_file"),
            (|c| c.auth.user = Some("u".into()), "nats_bridge.auth.user is set without nats_bridge.auth.password"),
            (|c| c.auth.password = Some("p".into()), "nats_bridge.auth.password is set without nats_bridge.auth.user"),
            (
                |c| {
                    c.auth.token = Some("t".into());
                    c.auth.creds_file = Some("x.creds".into());
                },
                "set only one of",
            ),
            (|c| c.connection_timeout_ms = 0, "connection_timeout_ms must be positive"),
        ];
        for (mutate, expected) in cases {
            let mut c = BridgeConfig::default();
            mutate(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err} does not say {expected:?}");
        }
    }
}
