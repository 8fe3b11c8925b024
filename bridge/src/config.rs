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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catalogue::{self, Family, Operation, Pattern};
use crate::subjects;

/// Errors while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped keys.
    #[error("invalid config: {0}")]
    Parse(String),
    /// An environment variable has a value of the wrong type.
    #[error("invalid environment variable {name}={value}: {reason}")]
    Env {
        /// Variable name.
        name: String,
        /// Its value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// The values are individually fine but do not make a working bridge.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A file named by the configuration (a certificate, a key, a seed, a creds file) is
    /// missing, unreadable or does not hold what the key says.
    #[error("{key} {path}: {reason}")]
    File {
        /// The configuration key naming the file (`tls.ca_file`).
        key: String,
        /// The file.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// TLS settings of a NATS connection (`[nats_bridge.tls]`, `[worker.tls]`). All off by default:
/// the connection then follows the server (TLS if the server requires it, trusting only the
/// system's root certificates).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Refuse to talk to a server that does not do TLS.
    pub required: bool,
    /// PEM file of the CA(s) that signed the server certificate (added to the system roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether any TLS setting is made.
    pub fn is_configured(&self) -> bool {
        self.required || self.ca_file.is_some() || self.cert_file.is_some()
    }
}

/// Credentials of a NATS connection (`[nats_bridge.auth]`, `[worker.auth]`): at most one of
/// user + password, token, NKey seed file, `.creds` file. None by default.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// User name (with `password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password of `user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Authentication token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding an NKey user seed (`SU...`), as written by `nk -gen user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT + seed), as written by `nsc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<hidden>");
        f.debug_struct("AuthConfig")
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .finish()
    }
}

impl AuthConfig {
    /// The configured method's name, for error messages; `None` without credentials.
    pub fn method(&self) -> Option<&'static str> {
        if self.user.is_some() {
            Some("user and password")
        } else if self.token.is_some() {
            Some("token")
        } else if self.nkey_seed_file.is_some() {
            Some("nkey")
        } else if self.creds_file.is_some() {
            Some("creds file")
        } else {
            None
        }
    }
}

/// Connection security: TLS and credentials, checked without touching the network.
/// `table` is the configuration table the settings came from (`nats_bridge`, `worker`), used
/// in messages.
pub fn validate_security(table: &str, tls: &TlsConfig, auth: &AuthConfig) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => return invalid(format!("{table}.tls.cert_file is set without {table}.tls.key_file")),
        (None, Some(_)) => return invalid(format!("{table}.tls.key_file is set without {table}.tls.cert_file")),
        _ => {}
    }
    for (key, path) in [("ca_file", &tls.ca_file), ("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return invalid(format!("{table}.tls.{key} is empty"));
        }
    }
    let methods =
        [auth.user.is_some() || auth.password.is_some(), auth.token.is_some(), auth.nkey_seed_file.is_some(), auth.creds_file.is_some()];
    if methods.iter().filter(|m| **m).count() > 1 {
        return invalid(format!("{table}.auth: set only one of user + password, token, nkey_seed_file, creds_file"));
    }
    match (&auth.user, &auth.password) {
        (Some(u), _) if u.is_empty() => return invalid(format!("{table}.auth.user is empty")),
        (Some(_), None) => return invalid(format!("{table}.auth.user is set without {table}.auth.password")),
        (None, Some(_)) => return invalid(format!("{table}.auth.password is set without {table}.auth.user")),
        _ => {}
    }
    if auth.token.as_deref() == Some("") {
        return invalid(format!("{table}.auth.token is empty"));
    }
    Ok(())
}

/// Reads a file named by key `key`, with an error naming both.
fn read_named(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        key: key.into(),
        path: path.display().to_string(),
        reason: format!("cannot read: {e}"),
    })
}

/// Installs rustls's `ring` crypto provider as the process default, once, if none is set.
/// async-nats builds its TLS configuration from the process default, and rustls refuses to
/// choose one itself when the build enables more than one provider (other crates bring
/// `aws-lc-rs`): without this, the first TLS connection would panic.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// Applies TLS and credential settings to connection options, after checking that every file
/// they name exists and holds what it should (so a typo fails at start, naming the file).
pub async fn apply_security(
    table: &str,
    mut options: async_nats::ConnectOptions,
    tls: &TlsConfig,
    auth: &AuthConfig,
) -> Result<async_nats::ConnectOptions, ConfigError> {
    validate_security(table, tls, auth)?;
    install_crypto_provider();
    let pem = |key: &str, path: &Path, marker: &str| -> Result<(), ConfigError> {
        let text = read_named(key, path)?;
        if !text.contains(marker) {
            return Err(ConfigError::File {
                key: key.into(),
                path: path.display().to_string(),
                reason: format!("not a pem file with a {}", marker.trim_start_matches("-----BEGIN ").to_lowercase()),
            });
        }
        Ok(())
    };
    if let Some(ca) = &tls.ca_file {
        pem(&format!("{table}.tls.ca_file"), ca, "-----BEGIN CERTIFICATE")?;
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        pem(&format!("{table}.tls.cert_file"), cert, "-----BEGIN CERTIFICATE")?;
        pem(&format!("{table}.tls.key_file"), key, "PRIVATE KEY")?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if tls.required {
        options = options.require_tls(true);
    }
    if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &auth.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &auth.nkey_seed_file {
        let key = format!("{table}.auth.nkey_seed_file");
        let text = read_named(&key, path)?;
        let seed = text.lines().map(str::trim).find(|l| l.starts_with("SU")).ok_or_else(|| ConfigError::File {
            key: key.clone(),
            path: path.display().to_string(),
            reason: "no nkey user seed (a line starting with SU) in the file".into(),
        })?;
        options = options.nkey(seed.to_string());
    }
    if let Some(path) = &auth.creds_file {
        let key = format!("{table}.auth.creds_file");
        read_named(&key, path)?;
        options = options.credentials_file(path).await.map_err(|e| ConfigError::File {
            key,
            path: path.display().to_string(),
            reason: format!("not a usable creds file: {e}"),
        })?;
    }
    Ok(options)
}

/// Explains why the first connection failed, naming the likely cause (TLS, credentials,
/// timeout) so a misconfiguration reads as one.
pub fn explain_connect_error(err: &async_nats::ConnectError, tls: &TlsConfig, auth: &AuthConfig, timeout: Duration) -> String {
    use async_nats::ConnectErrorKind as K;
    let text = err.to_string();
    let lower = text.to_lowercase();
    let tls_hint = if tls.ca_file.is_none() { " (is tls.ca_file set to the server's CA?)" } else { "" };
    match err.kind() {
        K::AuthorizationViolation => {
            format!("authorization violation: the server refused the credentials ({})", auth.method().unwrap_or("none configured"))
        }
        K::Authentication => format!("authentication failed: cannot sign the server's nonce ({text})"),
        K::TimedOut => format!(
            "timed out after {}ms (server unreachable, or a tls/plain-text mismatch between client and server)",
            timeout.as_millis()
        ),
        K::Tls => format!("tls error: {}{tls_hint}", lower),
        _ if tls.required && (lower.contains("corrupt message") || lower.contains("invalidcontenttype")) => {
            format!("tls handshake failed: the server does not speak tls, but tls.required is set ({lower})")
        }
        _ if ["certificate", "tls", "handshake", "alert", "corrupt message"].iter().any(|w| lower.contains(w)) => {
            format!("tls handshake failed: {lower}{tls_hint}")
        }
        _ if lower.contains("authorization") => {
            format!("authorization violation: the server refused the credentials ({})", auth.method().unwrap_or("none configured"))
        }
        _ => lower,
    }
}

/// How subjects carry the merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubjectScheme {
    /// `hyperswitch.<family>.<operation>`; merchant id in a header and in the body.
    #[default]
    Shared,
    /// `hyperswitch.<family>.{merchant_id}.<operation>`, for subject-based merchant isolation.
    PerMerchant,
}

/// Subject settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubjectConfig {
    /// First token of every subject; lets two deployments share a NATS account.
    pub prefix: String,
    /// Shared or per-merchant subjects.
    pub scheme: SubjectScheme,
}

impl Default for SubjectConfig {
    fn default() -> Self {
        SubjectConfig { prefix: "hyperswitch".into(), scheme: SubjectScheme::Shared }
    }
}

/// Where JetStream keeps messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// On disk: survives a server restart (the default, and what payments need).
    #[default]
    File,
    /// In memory: for throw-away benchmarks only.
    Memory,
}

/// Stream settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Stream names are `<stream_prefix>_<FAMILY>`.
    pub stream_prefix: String,
    /// Replicas of every stream: 1 on one node, 3 on a cluster.
    pub replicas: usize,
    /// Window in which JetStream drops a message whose id it has seen (seed: 5 minutes).
    pub duplicate_window_ms: u64,
    /// Storage of every stream.
    pub storage: Storage,
    /// Retention per family in days, overriding the defaults (payments 30, refunds 90, ...).
    pub retention_days: BTreeMap<String, u64>,
    /// Retention of the dead-letter stream in days (seed: 7).
    pub dlq_retention_days: u64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream_prefix: "HYPERSWITCH".into(),
            replicas: 1,
            duplicate_window_ms: 5 * 60 * 1000,
            storage: Storage::File,
            retention_days: BTreeMap::new(),
            dlq_retention_days: 7,
        }
    }
}

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

/// Applies one `<PREFIX>TLS_*` / `<PREFIX>AUTH_*` variable (`key` without the prefix);
/// `Ok(false)` if the key is not one of them, `Err` with the reason for a bad value. An empty
/// value clears an optional setting.
pub fn apply_security_env(key: &str, value: &str, tls: &mut TlsConfig, auth: &mut AuthConfig) -> Result<bool, String> {
    let path = || (!value.is_empty()).then(|| PathBuf::from(value));
    let text = || (!value.is_empty()).then(|| value.to_string());
    match key {
        "TLS_REQUIRED" => {
            tls.required = match value.trim() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                _ => return Err("expected true or false".into()),
            }
        }
        "TLS_CA_FILE" => tls.ca_file = path(),
        "TLS_CERT_FILE" => tls.cert_file = path(),
        "TLS_KEY_FILE" => tls.key_file = path(),
        "AUTH_USER" => auth.user = text(),
        "AUTH_PASSWORD" => auth.password = text(),
        "AUTH_TOKEN" => auth.token = text(),
        "AUTH_NKEY_SEED_FILE" => auth.nkey_seed_file = path(),
        "AUTH_CREDS_FILE" => auth.creds_file = path(),
        _ => return Ok(false),
    }
    Ok(true)
}

/// The two timeouts of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Durable: how long to wait for each JetStream publish ack; `None` for queries.
    pub ack: Option<Duration>,
    /// Durable: how long to wait for the worker's reply after the ack; query: the request timeout.
    pub reply: Duration,
}

/// Splits a comma-separated list of server URLs.
pub fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    nats_bridge: BridgeConfig,
}

impl BridgeConfig {
    /// Parses a TOML document with a `[nats_bridge]` table, then validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        file.nats_bridge.validate()?;
        Ok(file.nats_bridge)
    }

    /// Reads the `[nats_bridge]` table of a file that holds other tables too (a worker's or a
    /// gateway's); defaults when the table is absent.
    pub fn from_table(table: Option<toml::Value>) -> Result<Self, ConfigError> {
        let Some(value) = table else { return Ok(Self::default()) };
        let config: BridgeConfig = value.try_into().map_err(|e: toml::de::Error| ConfigError::Parse(format!("[nats_bridge]: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads `path` if given (defaults otherwise), applies `NATS_BRIDGE_*` variables, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
                Self::from_toml(&text)?
            }
            None => Self::default(),
        };
        config.apply_env(std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `NATS_BRIDGE_*` overrides from the given variables; others are ignored.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError> {
            value.parse().map_err(|_| ConfigError::Env {
                name: name.into(),
                value: value.into(),
                reason: "expected a non-negative integer".into(),
            })
        }
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("NATS_BRIDGE_") else {
                continue;
            };
            match key {
                "BASE_URL" => self.base_url = value,
                "CONNECTION_NAME" => self.connection_name = value,
                "REQUEST_TIMEOUT_MS" => self.request_timeout_ms = num(&name, &value)?,
                "ACK_TIMEOUT_MS" => self.ack_timeout_ms = num(&name, &value)?,
                "QUERY_TIMEOUT_MS" => self.query_timeout_ms = num(&name, &value)?,
                "MAX_RETRIES" => self.max_retries = num(&name, &value)?,
                "LATE_REPLY_BUFFER" => self.late_reply_buffer = num(&name, &value)?,
                "MAX_REPLY_BYTES" => self.max_reply_bytes = num(&name, &value)?,
                "CIRCUIT_BREAKER_ENABLED" => {
                    self.circuit_breaker.enabled = match value.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(ConfigError::Env { name, value, reason: "expected true or false".into() }),
                    }
                }
                "CIRCUIT_BREAKER_FAILURE_THRESHOLD" => self.circuit_breaker.failure_threshold = num(&name, &value)?,
                "CIRCUIT_BREAKER_OPEN_MS" => self.circuit_breaker.open_ms = num(&name, &value)?,
                "CIRCUIT_BREAKER_HALF_OPEN_PROBES" => self.circuit_breaker.half_open_probes = num(&name, &value)?,
                "SUBJECT_PREFIX" => self.subjects.prefix = value,
                "SUBJECT_SCHEME" => {
                    self.subjects.scheme = match value.as_str() {
                        "shared" => SubjectScheme::Shared,
                        "per_merchant" => SubjectScheme::PerMerchant,
                        _ => return Err(ConfigError::Env { name, value, reason: "expected shared or per_merchant".into() }),
                    }
                }
                "STREAM_PREFIX" => self.jetstream.stream_prefix = value,
                "REPLICAS" => self.jetstream.replicas = num(&name, &value)?,
                "DUPLICATE_WINDOW_MS" => self.jetstream.duplicate_window_ms = num(&name, &value)?,
                "CONNECTION_TIMEOUT_MS" => self.connection_timeout_ms = num(&name, &value)?,
                _ if key.starts_with("TLS_") || key.starts_with("AUTH_") => {
                    match apply_security_env(key, &value, &mut self.tls, &mut self.auth) {
                        Ok(true) => {}
                        Ok(false) => return Err(ConfigError::Env { name, value, reason: "unknown NATS_BRIDGE_ variable".into() }),
                        Err(reason) => return Err(ConfigError::Env { name, value, reason }),
                    }
                }
                _ => return Err(ConfigError::Env { name, value, reason: "unknown NATS_BRIDGE_ variable".into() }),
            }
        }
        Ok(())
    }

    /// Checks that the configuration makes a working bridge: known operations, valid subjects,
    /// sane timeouts, and no stream subject capturing a query subject.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.base_url.trim().is_empty() {
            return invalid("base_url is empty".into());
        }
        if !subjects::is_valid_token(&self.subjects.prefix) {
            return invalid(format!("subjects.prefix {:?} is not a single subject token", self.subjects.prefix));
        }
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
        if !(1..=5).contains(&self.jetstream.replicas) {
            return invalid(format!("jetstream.replicas must be 1..=5, got {}", self.jetstream.replicas));
        }
        if !subjects::is_valid_token(&self.jetstream.stream_prefix) {
            return invalid(format!("jetstream.stream_prefix {:?} is invalid", self.jetstream.stream_prefix));
        }
        for family in self.jetstream.retention_days.keys() {
            if !Family::ALL.iter().any(|f| f.as_str() == family) {
                return invalid(format!("jetstream.retention_days: unknown family {family:?}"));
            }
        }
        for (name, o) in &self.operations {
            let Some(op) = catalogue::find(name) else {
                return invalid(format!("operations: unknown operation {name:?}"));
            };
            if let Some(t) = &o.subject {
                subjects::validate_template(t).map_err(|e| ConfigError::Invalid(format!("operations.{name}.subject: {e}")))?;
            }
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
        let durable: Vec<(Operation, String)> = catalogue::all()
            .filter(|o| o.pattern == Pattern::Durable)
            .map(|o| (o, subjects::wildcard(&self.subject_template(o))))
            .collect();
        let mut queries: Vec<(String, String)> = catalogue::all()
            .filter(|o| o.pattern == Pattern::Query)
            .map(|o| (o.name.to_string(), subjects::wildcard(&self.subject_template(o))))
            .collect();
        queries.push(("reply lookup".into(), subjects::wildcard(&self.lookup_template())));
        for (d, filter) in &durable {
            for (q, qs) in &queries {
                if subjects::overlap(filter, qs) {
                    return invalid(format!(
                        "subject of {} ({filter}) overlaps query {q} ({qs}): the stream would capture the query",
                        d.name
                    ));
                }
            }
            for (d2, f2) in &durable {
                if d.name != d2.name && subjects::overlap(filter, f2) {
                    return invalid(format!("subjects of {} and {} overlap ({filter}, {f2})", d.name, d2.name));
                }
            }
        }
        Ok(())
    }

    /// The server URLs of `base_url` (comma-separated), trimmed.
    pub fn server_urls(&self) -> Vec<String> {
        split_urls(&self.base_url)
    }

    /// The subject template of an operation (placeholders `{merchant_id}`, `{connector}`).
    pub fn subject_template(&self, op: Operation) -> String {
        if let Some(t) = self.operations.get(op.name).and_then(|o| o.subject.clone()) {
            return t;
        }
        let p = &self.subjects.prefix;
        match self.subjects.scheme {
            SubjectScheme::Shared => format!("{p}.{}.{}", op.family, op.action),
            SubjectScheme::PerMerchant if op.per_connector => {
                format!("{p}.{}.{{merchant_id}}.{{connector}}.{}", op.family, op.action)
            }
            SubjectScheme::PerMerchant => format!("{p}.{}.{{merchant_id}}.{}", op.family, op.action),
        }
    }

    /// The subject template workers answer reply lookups on (used after a duplicate publish).
    pub fn lookup_template(&self) -> String {
        let p = &self.subjects.prefix;
        match self.subjects.scheme {
            SubjectScheme::Shared => format!("{p}.replies.lookup"),
            SubjectScheme::PerMerchant => format!("{p}.replies.{{merchant_id}}.lookup"),
        }
    }

    /// The dead-letter subject of an operation.
    pub fn dlq_subject(&self, op: Operation) -> String {
        format!("{}.dlq.{}.{}", self.subjects.prefix, op.family, op.action)
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

    /// Name of a family's stream.
    pub fn stream_name(&self, family: Family) -> String {
        format!("{}_{}", self.jetstream.stream_prefix, family.as_str().to_uppercase())
    }

    /// Name of the dead-letter stream.
    pub fn dlq_stream_name(&self) -> String {
        format!("{}_DLQ", self.jetstream.stream_prefix)
    }

    /// Retention of a family's stream.
    pub fn retention(&self, family: Family) -> Duration {
        self.jetstream
            .retention_days
            .get(family.as_str())
            .map(|d| Duration::from_secs(d * 86_400))
            .unwrap_or_else(|| family.default_retention())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::ops;

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
    fn per_merchant_scheme() {
        let mut c = BridgeConfig::default();
        c.subjects.scheme = SubjectScheme::PerMerchant;
        c.validate().unwrap();
        assert_eq!(c.subject_template(ops::capture()), "hyperswitch.payments.{merchant_id}.capture");
        let webhook = catalogue::find("webhooks.incoming").unwrap();
        assert_eq!(c.subject_template(webhook), "hyperswitch.webhooks.{merchant_id}.{connector}.incoming");
    }

    #[test]
    fn toml_with_overrides_and_unknown_keys() {
        let c = BridgeConfig::from_toml(
            "[nats_bridge]\nbase_url = \"nats://a:1\"\n[nats_bridge.operations.\"payments.sync\"]\ntimeout_ms = 700\n",
        )
        .unwrap();
        assert_eq!(c.timeouts(ops::payment_sync()).reply, Duration::from_millis(700));
        let err = BridgeConfig::from_toml("[nats_bridge]\nbase_ulr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("base_ulr"), "{err}");
        let err = BridgeConfig::from_toml("[nats_bridge.operations.\"payments.nope\"]\n").unwrap_err();
        assert!(err.to_string().contains("payments.nope"), "{err}");
    }

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
    fn env_overrides() {
        let mut c = BridgeConfig::default();
        c.apply_env([
            ("NATS_BRIDGE_REPLICAS".to_string(), "3".to_string()),
            ("NATS_BRIDGE_SUBJECT_SCHEME".to_string(), "per_merchant".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ])
        .unwrap();
        assert_eq!(c.jetstream.replicas, 3);
        assert_eq!(c.subjects.scheme, SubjectScheme::PerMerchant);
        let err = c.apply_env([("NATS_BRIDGE_REPLICAS".to_string(), "three".to_string())]).unwrap_err();
        assert!(err.to_string().contains("NATS_BRIDGE_REPLICAS"));
    }

    #[test]
    fn circuit_breaker_and_late_reply_keys() {
        let c = BridgeConfig::default();
        assert_eq!(c.circuit_breaker, CircuitBreakerConfig { enabled: true, failure_threshold: 5, open_ms: 30_000, half_open_probes: 1 });
        assert_eq!(c.late_reply_buffer, 1024);
        let c = BridgeConfig::from_toml(
            "[nats_bridge]\nlate_reply_buffer = 16\n[nats_bridge.circuit_breaker]\nfailure_threshold = 3\nopen_ms = 250\nhalf_open_probes = 2\n",
        )
        .unwrap();
        assert_eq!(c.late_reply_buffer, 16);
        assert_eq!(c.circuit_breaker, CircuitBreakerConfig { enabled: true, failure_threshold: 3, open_ms: 250, half_open_probes: 2 });
        let err = BridgeConfig::from_toml("[nats_bridge.circuit_breaker]\nthreshold = 3\n").unwrap_err();
        assert!(err.to_string().contains("threshold"), "{err}");
        let err = BridgeConfig::from_toml("[nats_bridge.circuit_breaker]\nopen_ms = -1\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)), "{err}");

        let mut c = BridgeConfig::default();
        c.apply_env([
            ("NATS_BRIDGE_CIRCUIT_BREAKER_ENABLED".to_string(), "false".to_string()),
            ("NATS_BRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD".to_string(), "7".to_string()),
            ("NATS_BRIDGE_CIRCUIT_BREAKER_OPEN_MS".to_string(), "1000".to_string()),
            ("NATS_BRIDGE_CIRCUIT_BREAKER_HALF_OPEN_PROBES".to_string(), "3".to_string()),
            ("NATS_BRIDGE_LATE_REPLY_BUFFER".to_string(), "8".to_string()),
        ])
        .unwrap();
        assert_eq!(c.circuit_breaker, CircuitBreakerConfig { enabled: false, failure_threshold: 7, open_ms: 1000, half_open_probes: 3 });
        assert_eq!(c.late_reply_buffer, 8);
        let err = c.apply_env([("NATS_BRIDGE_CIRCUIT_BREAKER_ENABLED".to_string(), "maybe".to_string())]).unwrap_err();
        assert!(err.to_string().contains("expected true or false"), "{err}");
    }

    #[test]
    fn bad_breaker_and_buffer_values_are_refused_with_the_key_named() {
        type Mutation = fn(&mut BridgeConfig);
        let cases: [(Mutation, &str); 6] = [
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
        // A disabled breaker is still validated: its values must make sense when re-enabled.
        let mut c = BridgeConfig::default();
        c.circuit_breaker.enabled = false;
        c.validate().unwrap();
    }

    #[test]
    fn tls_and_auth_from_toml_and_env() {
        let c = BridgeConfig::from_toml(
            "[nats_bridge]\nconnection_timeout_ms = 1500\n[nats_bridge.tls]\nrequired = true\nca_file = \"/x/ca.pem\"\ncert_file = \"/x/c.pem\"\nkey_file = \"/x/k.pem\"\n[nats_bridge.auth]\nuser = \"bridge\"\npassword = \"pw\"\n",
        )
        .unwrap();
        assert_eq!(c.connection_timeout_ms, 1500);
        assert!(c.tls.required);
        assert_eq!(c.tls.ca_file.as_deref(), Some(Path::new("/x/ca.pem")));
        assert_eq!(c.tls.key_file.as_deref(), Some(Path::new("/x/k.pem")));
        assert_eq!((c.auth.user.as_deref(), c.auth.password.as_deref()), (Some("bridge"), Some("pw")));
        assert!(!format!("{c:?}").contains("\"pw\""), "the password must not be printed");
        let err = BridgeConfig::from_toml("[nats_bridge.tls]\ncafile = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("cafile"), "{err}");

        let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let mut c = BridgeConfig::default();
        c.apply_env(env(&[
            ("NATS_BRIDGE_TLS_REQUIRED", "true"),
            ("NATS_BRIDGE_TLS_CA_FILE", "/y/ca.pem"),
            ("NATS_BRIDGE_AUTH_NKEY_SEED_FILE", "/y/b.nk"),
            ("NATS_BRIDGE_CONNECTION_TIMEOUT_MS", "900"),
        ]))
        .unwrap();
        assert!(c.tls.required);
        assert_eq!(c.tls.ca_file.as_deref(), Some(Path::new("/y/ca.pem")));
        assert_eq!(c.auth.nkey_seed_file.as_deref(), Some(Path::new("/y/b.nk")));
        assert_eq!(c.connection_timeout_ms, 900);
        c.validate().unwrap();
        let err = c.apply_env(env(&[("NATS_BRIDGE_TLS_REQUIRED", "yes")])).unwrap_err().to_string();
        assert!(err.contains("NATS_BRIDGE_TLS_REQUIRED") && err.contains("true or false"), "{err}");
        let err = c.apply_env(env(&[("NATS_BRIDGE_TLS_CAFILE", "x")])).unwrap_err().to_string();
        assert!(err.contains("unknown NATS_BRIDGE_ variable"), "{err}");
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

    #[tokio::test]
    async fn missing_or_wrong_files_are_named_at_start() {
        let dir = std::env::temp_dir().join(format!("hs-sec-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = TlsConfig { ca_file: Some(dir.join("nope.pem")), ..Default::default() };
        let err =
            apply_security("nats_bridge", async_nats::ConnectOptions::new(), &tls, &AuthConfig::default()).await.err().unwrap().to_string();
        assert!(err.contains("nats_bridge.tls.ca_file") && err.contains("nope.pem") && err.contains("cannot read"), "{err}");

        std::fs::write(dir.join("ca.pem"), "hello").unwrap();
        let tls = TlsConfig { ca_file: Some(dir.join("ca.pem")), ..Default::default() };
        let err =
            apply_security("worker", async_nats::ConnectOptions::new(), &tls, &AuthConfig::default()).await.err().unwrap().to_string();
        assert!(err.contains("worker.tls.ca_file") && err.contains("not a pem file with a certificate"), "{err}");

        std::fs::write(dir.join("seed.nk"), "not a seed\n").unwrap();
        let auth = AuthConfig { nkey_seed_file: Some(dir.join("seed.nk")), ..Default::default() };
        let err =
            apply_security("nats_bridge", async_nats::ConnectOptions::new(), &TlsConfig::default(), &auth).await.err().unwrap().to_string();
        assert!(err.contains("nats_bridge.auth.nkey_seed_file") && err.contains("no nkey user seed"), "{err}");

        let auth = AuthConfig { creds_file: Some(dir.join("missing.creds")), ..Default::default() };
        let err =
            apply_security("nats_bridge", async_nats::ConnectOptions::new(), &TlsConfig::default(), &auth).await.err().unwrap().to_string();
        assert!(err.contains("nats_bridge.auth.creds_file") && err.contains("missing.creds"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
