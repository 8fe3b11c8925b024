//! Bridge configuration: a `[nats_bridge]` table in a TOML file, overridden by
//! `NATS_BRIDGE_*` environment variables, with the seeds' defaults.
//!
//! ```toml
//! [nats_bridge]
//! base_url = "nats://127.0.0.1:4222"
//! request_timeout_ms = 30000   # whole durable call: publish ack + worker reply
//! ack_timeout_ms = 2000        # JetStream publish ack, per attempt
//! query_timeout_ms = 5000      # core request/reply
//! max_retries = 3              # publish retries (same message id) when no ack came
//! late_reply_buffer = 1024     # replies that came after their call gave up, kept until the
//!                              # application reads them (Bridge::late_replies); more are dropped
//!                              # and counted
//! max_reply_bytes = 262144     # larger replies are refused unread (counted)
//!
//! [nats_bridge.subjects]
//! prefix = "hyperswitch"
//! scheme = "shared"            # or "per_merchant": hyperswitch.<family>.{merchant_id}.<op>
//!
//! [nats_bridge.jetstream]
//! replicas = 1
//! duplicate_window_ms = 300000
//!
//! [nats_bridge.operations."payments.sync"]
//! timeout_ms = 2000
//!
//! [nats_bridge.circuit_breaker]   # one breaker per operation
//! enabled = true
//! failure_threshold = 5        # consecutive transport / worker-health failures that open it
//! open_ms = 30000              # how long it stays open before letting a probe through
//! half_open_probes = 1         # probe calls allowed at once while half-open
//!
//! [nats_bridge.tls]              # all optional; see TlsConfig
//! required = true               # refuse a connection that is not TLS
//! ca_file = "/etc/hs/ca.pem"    # trust this CA for the server certificate
//! cert_file = "/etc/hs/client.pem"  # client certificate (mutual TLS), with key_file
//! key_file = "/etc/hs/client-key.pem"
//!
//! [nats_bridge.auth]             # at most one method; see AuthConfig
//! user = "bridge"
//! password = "secret"
//! # token = "..." | nkey_seed_file = "/etc/hs/bridge.nk" | creds_file = "/etc/hs/bridge.creds"
//! ```
//!
//! Every key can also come from the environment: `NATS_BRIDGE_<KEY>` for top-level keys
//! (`NATS_BRIDGE_LATE_REPLY_BUFFER`), `NATS_BRIDGE_CIRCUIT_BREAKER_<KEY>` for the breaker
//! (`NATS_BRIDGE_CIRCUIT_BREAKER_OPEN_MS`), plus `NATS_BRIDGE_SUBJECT_PREFIX`,
//! `NATS_BRIDGE_SUBJECT_SCHEME`, `NATS_BRIDGE_STREAM_PREFIX`, `NATS_BRIDGE_REPLICAS` and
//! `NATS_BRIDGE_DUPLICATE_WINDOW_MS`; `NATS_BRIDGE_TLS_<KEY>` for the TLS table
//! (`NATS_BRIDGE_TLS_REQUIRED`, `NATS_BRIDGE_TLS_CA_FILE`, `NATS_BRIDGE_TLS_CERT_FILE`,
//! `NATS_BRIDGE_TLS_KEY_FILE`) and `NATS_BRIDGE_AUTH_<KEY>` for credentials
//! (`NATS_BRIDGE_AUTH_USER`, `NATS_BRIDGE_AUTH_PASSWORD`, `NATS_BRIDGE_AUTH_TOKEN`,
//! `NATS_BRIDGE_AUTH_NKEY_SEED_FILE`, `NATS_BRIDGE_AUTH_CREDS_FILE`). Unknown keys and unknown `NATS_BRIDGE_` variables are
//! errors.
//!
//! This module holds the structures and their defaults; `load` reads the file and the
//! variables, `validate` checks the values, `names` derives subjects and stream names. The TLS,
//! credential, subject and stream types belong to the protocol the workers share
//! ([`nats_protocol::connection`], [`nats_protocol::naming`]) and are re-exported here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::catalogue::{Operation, Pattern};

mod load;
mod names;
mod validate;

pub use nats_protocol::connection::{
    apply_security, apply_security_env, explain_connect_error, install_crypto_provider, split_urls, validate_security, AuthConfig,
    TlsConfig,
};
pub use nats_protocol::error::ConfigError;
pub use nats_protocol::naming::{JetStreamConfig, Naming, Storage, SubjectConfig, SubjectScheme};

/// Per-operation overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperationOverride {
    /// Subject template; may use `{merchant_id}` and `{connector}`.
    pub subject: Option<String>,
    /// Durable: publish ack timeout per attempt.
    pub ack_timeout_ms: Option<u64>,
    /// Durable: whole call (ack + reply); query: the request timeout.
    pub timeout_ms: Option<u64>,
}

/// Circuit breaker settings, the same for every operation (each operation has its own breaker).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Whether calls are refused while an operation's breaker is open.
    pub enabled: bool,
    /// Consecutive failures (transport or worker health, not declines) that open the breaker (seed: 5).
    pub failure_threshold: u32,
    /// How long the breaker stays open before a half-open probe is let through.
    pub open_ms: u64,
    /// Probe calls allowed at once while half-open.
    pub half_open_probes: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig { enabled: true, failure_threshold: 5, open_ms: 30_000, half_open_probes: 1 }
    }
}

/// Longest `circuit_breaker.open_ms` accepted: one day.
pub const MAX_OPEN_MS: u64 = 86_400_000;
/// Largest `max_reply_bytes` accepted: NATS's own largest payload (64 MiB).
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// Largest `late_reply_buffer` accepted.
pub const MAX_LATE_REPLY_BUFFER: usize = 1_000_000;

/// The bridge's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// NATS server URLs, comma-separated.
    pub base_url: String,
    /// Connection name shown by the server's monitoring.
    pub connection_name: String,
    /// Whole durable call budget (seed: 30s = 2s ack + 28s reply).
    pub request_timeout_ms: u64,
    /// JetStream publish ack timeout per attempt (seed: 2s).
    pub ack_timeout_ms: u64,
    /// Core request/reply timeout (seed: 5s).
    pub query_timeout_ms: u64,
    /// Publish retries with the same message id when no ack came (seed: 3).
    pub max_retries: u32,
    /// Late replies kept for the application until it reads them; more are dropped (counted).
    pub late_reply_buffer: usize,
    /// Replies larger than this (bytes) are refused unread and counted: a reply is an envelope,
    /// never a bulk payload, and decoding a huge one only costs memory.
    pub max_reply_bytes: usize,
    /// Subjects.
    pub subjects: SubjectConfig,
    /// Streams.
    pub jetstream: JetStreamConfig,
    /// Overrides by operation name (`payments.authorize`).
    pub operations: BTreeMap<String, OperationOverride>,
    /// Circuit breakers.
    pub circuit_breaker: CircuitBreakerConfig,
    /// How long the first connection (TCP, TLS, authentication) may take before the bridge
    /// gives up with an error; it is not retried.
    pub connection_timeout_ms: u64,
    /// TLS.
    pub tls: TlsConfig,
    /// Credentials.
    pub auth: AuthConfig,
    /// Deliberate defects (harness only; not read from files or the environment).
    #[serde(skip)]
    pub defects: crate::defects::Defects,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            base_url: "nats://127.0.0.1:4222".into(),
            connection_name: "hyperswitch-nats-bridge".into(),
            request_timeout_ms: 30_000,
            ack_timeout_ms: 2_000,
            query_timeout_ms: 5_000,
            max_retries: 3,
            late_reply_buffer: 1024,
            max_reply_bytes: 256 * 1024,
            subjects: SubjectConfig::default(),
            jetstream: JetStreamConfig::default(),
            operations: BTreeMap::new(),
            circuit_breaker: CircuitBreakerConfig::default(),
            connection_timeout_ms: 5_000,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            defects: crate::defects::Defects::default(),
        }
    }
}

/// The two timeouts of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Durable: how long to wait for each JetStream publish ack; `None` for queries.
    pub ack: Option<Duration>,
    /// Durable: how long to wait for the worker's reply after the ack; query: the request timeout.
    pub reply: Duration,
}

impl BridgeConfig {
    /// The server URLs of `base_url` (comma-separated), trimmed.
    pub fn server_urls(&self) -> Vec<String> {
        split_urls(&self.base_url)
    }

    /// The timeouts of an operation, with overrides applied.
    pub fn timeouts(&self, op: Operation) -> Timeouts {
        let o = self.operations.get(op.name);
        match op.pattern {
            Pattern::Durable => {
                let ack = o.and_then(|o| o.ack_timeout_ms).unwrap_or(self.ack_timeout_ms);
                let total = o.and_then(|o| o.timeout_ms).unwrap_or(self.request_timeout_ms);
                Timeouts { ack: Some(Duration::from_millis(ack)), reply: Duration::from_millis(total.saturating_sub(ack)) }
            }
            Pattern::Query => {
                Timeouts { ack: None, reply: Duration::from_millis(o.and_then(|o| o.timeout_ms).unwrap_or(self.query_timeout_ms)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{ops, Family};

    #[test]
    fn defaults_are_the_seeds() {
        let c = BridgeConfig::default();
        c.validate().unwrap();
        let t = c.timeouts(ops::authorize());
        assert_eq!(t.ack, Some(Duration::from_secs(2)));
        assert_eq!(t.reply, Duration::from_secs(28));
        assert_eq!(c.timeouts(ops::payment_sync()).reply, Duration::from_secs(5));
        assert_eq!(c.subject_template(ops::authorize()), "hyperswitch.payments.authorize");
        assert_eq!(c.stream_name(Family::Payments), "HYPERSWITCH_PAYMENTS");
        assert_eq!(c.jetstream.duplicate_window_ms, 300_000);
    }

    #[test]
    fn base_url_lists_servers_separated_by_commas() {
        let c = BridgeConfig { base_url: "nats://a:4222, nats://b:4222 ,nats://c:4222".into(), ..Default::default() };
        assert_eq!(c.server_urls(), ["nats://a:4222", "nats://b:4222", "nats://c:4222"]);
        assert_eq!(BridgeConfig::default().server_urls(), ["nats://127.0.0.1:4222"]);
        assert_eq!(MAX_REPLY_BYTES, 67_108_864, "NATS's largest payload, 64 MiB");
    }
}
