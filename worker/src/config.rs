//! Worker configuration: a `[worker]` table (and the subject and stream names of the
//! `[nats_bridge]` table, [`Naming`]) in a TOML file, overridden by `WORKER_*` environment
//! variables (and the naming `NATS_BRIDGE_*` ones).
//!
//! The worker's own connection takes TLS and credentials from `[worker.tls]` (`required`,
//! `ca_file`, `cert_file`, `key_file`) and `[worker.auth]` (`user` + `password`, `token`,
//! `nkey_seed_file`, `creds_file`), or from `WORKER_TLS_<KEY>` / `WORKER_AUTH_<KEY>`
//! (`WORKER_TLS_CA_FILE`, `WORKER_AUTH_PASSWORD`, ...), plus `connection_timeout_ms`
//! (`WORKER_CONNECTION_TIMEOUT_MS`).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use nats_protocol::connection::{self, AuthConfig, TlsConfig};
use nats_protocol::{catalogue, Naming};
use serde::{Deserialize, Serialize};

use crate::profile::Profile;

/// Errors while loading worker configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Malformed TOML, unknown keys, bad values.
    #[error("invalid worker config: {0}")]
    Invalid(String),
    /// The names of the `[nats_bridge]` table, a `NATS_BRIDGE_*` variable or the connection
    /// security are invalid.
    #[error(transparent)]
    Bridge(#[from] nats_protocol::ConfigError),
}

/// Where a worker process kills itself (SIGKILL, nothing flushed, nothing acked), for chaos
/// scenarios. In-process workers must leave it unset: the point kills the host process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum CrashPoint {
    /// After the key is marked `started`, before the processor is asked (reached even when the
    /// worker's profile then declines or fails the operation without asking it).
    BeforeProcessor,
    /// After the processor call, before the result is stored or the reply published.
    AfterProcessor,
    /// After the reply was published and flushed to the server, before the ack (reached by every
    /// answered delivery, stored-result re-sends and refusals included).
    AfterReply,
}

impl CrashPoint {
    /// Every point, in the order a delivery reaches them.
    pub const ALL: [CrashPoint; 3] = [CrashPoint::BeforeProcessor, CrashPoint::AfterProcessor, CrashPoint::AfterReply];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::BeforeProcessor => "before_processor",
            CrashPoint::AfterProcessor => "after_processor",
            CrashPoint::AfterReply => "after_reply",
        }
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CrashPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CrashPoint::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown crash point {s:?} (expected before_processor, after_processor or after_reply)"))
    }
}

impl TryFrom<String> for CrashPoint {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<CrashPoint> for String {
    fn from(p: CrashPoint) -> String {
        p.name().to_string()
    }
}

/// Deliberate defects, so the harness can prove it catches them. All off by default; never
/// turn one on outside the harness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerDefects {
    /// Ack each message as soon as it arrives, before the processor call and the reply.
    pub ack_before_processor: bool,
    /// Answer reply lookups `miss` while a delivery holds a live claim on the key, so a
    /// recovering caller may fail an operation the processor is about to perform.
    pub lookup_ignores_claims: bool,
}

/// How a worker runs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// NATS server URLs, comma-separated.
    pub nats_url: String,
    /// Base URL of the processor.
    pub processor_url: String,
    /// Instance name, in logs and the NATS connection name.
    pub name: String,
    /// How long JetStream waits for an ack before redelivering (ms).
    pub ack_wait_ms: u64,
    /// Deliveries before a message is dead-lettered.
    pub max_deliver: i64,
    /// Messages processed at once per worker.
    pub max_in_flight: usize,
    /// JetStream key-value bucket holding results by idempotency key.
    pub results_bucket: String,
    /// Queue group for queries and reply lookups (load-balanced across workers).
    pub queue_group: String,
    /// Prefix of the durable consumer names (`<prefix>_<family>_<action>`). Workers sharing a
    /// prefix share the work; a new prefix is a fresh consumer that receives the streams'
    /// messages again (a replay).
    pub consumer_prefix: String,
    /// Stream sequence a fresh consumer starts from (replays of a range); unset: the start of
    /// the stream. Ignored by consumers that already exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_from_seq: Option<u64>,
    /// Operations to serve (catalogue names); empty means all.
    pub operations: Vec<String>,
    /// A durable request older than this (by its envelope timestamp) is refused with
    /// `REQUEST_EXPIRED` instead of reaching the processor. Keep it below the gateway's recovery
    /// threshold (5 min): once recovery has failed an operation, it must never happen later.
    /// 0 disables the check.
    pub max_request_age_ms: u64,
    /// How long one processor call may take before the worker gives up on it (the message is
    /// given back and retried: the processor de-duplicates by idempotency key).
    pub processor_timeout_ms: u64,
    /// Latency, declines, errors.
    pub profile: Profile,
    /// Chaos: kill this process (SIGKILL) when a durable operation reaches this point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_at: Option<CrashPoint>,
    /// Chaos: die on the N-th durable delivery reaching `crash_at` (counted per process from 1;
    /// a redelivery counts again).
    pub crash_after: u64,
    /// Deliberate defects (harness only).
    pub defects: WorkerDefects,
    /// How long the first connection (TCP, TLS, authentication) may take before the start
    /// fails; it is not retried.
    pub connection_timeout_ms: u64,
    /// TLS of the worker's connection (`[worker.tls]`: `required`, `ca_file`, `cert_file`,
    /// `key_file`).
    pub tls: TlsConfig,
    /// Credentials of the worker's connection (`[worker.auth]`: `user` + `password`, `token`,
    /// `nkey_seed_file` or `creds_file`).
    pub auth: AuthConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            processor_url: "http://127.0.0.1:8090".into(),
            name: "mock-worker".into(),
            ack_wait_ms: 30_000,
            max_deliver: 5,
            max_in_flight: 256,
            results_bucket: "hs_results".into(),
            queue_group: "hs-workers".into(),
            consumer_prefix: "worker".into(),
            deliver_from_seq: None,
            operations: Vec::new(),
            max_request_age_ms: 240_000,
            processor_timeout_ms: 10_000,
            profile: Profile::default(),
            crash_at: None,
            crash_after: 1,
            defects: WorkerDefects::default(),
            connection_timeout_ms: 5_000,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    worker: WorkerConfig,
    #[serde(default)]
    nats_bridge: Option<toml::Value>,
    /// The gateway's table, when one file configures the whole environment.
    #[serde(default)]
    #[allow(dead_code)]
    gateway: Option<toml::Value>,
}

impl WorkerConfig {
    /// Checks values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.ack_wait_ms == 0 {
            return bad("ack_wait_ms must be positive".into());
        }
        if self.max_deliver < 1 {
            return bad("max_deliver must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be positive".into());
        }
        if self.consumer_prefix.is_empty() || !self.consumer_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return bad(format!("consumer_prefix {:?} must be non-empty ASCII letters, digits, '_' or '-'", self.consumer_prefix));
        }
        if self.deliver_from_seq == Some(0) {
            return bad("deliver_from_seq must be at least 1 (stream sequences start at 1)".into());
        }
        if self.connection_timeout_ms == 0 {
            return bad("connection_timeout_ms must be positive".into());
        }
        connection::validate_security("worker", &self.tls, &self.auth).map_err(|e| match e {
            nats_protocol::ConfigError::Invalid(m) => ConfigError::Invalid(m),
            other => ConfigError::Bridge(other),
        })?;
        if self.crash_after == 0 {
            return bad("crash_after must be at least 1 (the first operation reaching crash_at is number 1)".into());
        }
        for name in &self.operations {
            if catalogue::find(name).is_none() {
                return bad(format!("operations: unknown operation {name:?}"));
            }
        }
        self.profile.validate().map_err(ConfigError::Invalid)
    }

    /// Loads the `[worker]` table and the names of the `[nats_bridge]` table from a file (or
    /// defaults), then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<(WorkerConfig, Naming), ConfigError> {
        let (mut worker, mut naming) = match path {
            None => (WorkerConfig::default(), Naming::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
                Self::from_toml(&text)?
            }
        };
        if path.is_none() {
            worker.apply_generic_env(std::env::vars());
        }
        worker.apply_env(std::env::vars())?;
        naming.apply_env(std::env::vars())?;
        worker.validate()?;
        naming.validate()?;
        Ok((worker, naming))
    }

    /// Parses a document with `[worker]` and optional `[nats_bridge]` tables; of the latter only
    /// the names are read (the bridge checks its other keys).
    pub fn from_toml(text: &str) -> Result<(WorkerConfig, Naming), ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let naming = Naming::from_table(file.nats_bridge)?;
        file.worker.validate()?;
        Ok((file.worker, naming))
    }

    /// The `[worker]` table as a TOML document, readable by [`WorkerConfig::from_toml`] (to hand
    /// a whole configuration to a worker process).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        #[derive(Serialize)]
        struct Doc<'a> {
            worker: &'a WorkerConfig,
        }
        toml::to_string(&Doc { worker: self }).map_err(|e| ConfigError::Invalid(format!("cannot write the config as TOML: {e}")))
    }

    /// Applies `NATS_URL` and `PROCESSOR_URL`, the variables `harness conform` gives any worker
    /// program, so the mock worker runs under the conformance kit as is. Only used without a
    /// config file; `WORKER_NATS_URL` and `WORKER_PROCESSOR_URL` still win.
    pub fn apply_generic_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in vars {
            match name.as_str() {
                "NATS_URL" => self.nats_url = value,
                "PROCESSOR_URL" => self.processor_url = value,
                _ => {}
            }
        }
    }

    /// Applies `WORKER_*` overrides.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ConfigError> {
            v.parse().map_err(|_| ConfigError::Invalid(format!("{name}={v}: expected a number")))
        }
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("WORKER_") else { continue };
            match key {
                "NATS_URL" => self.nats_url = value,
                "PROCESSOR_URL" => self.processor_url = value,
                "NAME" => self.name = value,
                "ACK_WAIT_MS" => self.ack_wait_ms = num(&name, &value)?,
                "MAX_DELIVER" => self.max_deliver = num(&name, &value)?,
                "MAX_IN_FLIGHT" => self.max_in_flight = num(&name, &value)?,
                "MAX_REQUEST_AGE_MS" => self.max_request_age_ms = num(&name, &value)?,
                "PROCESSOR_TIMEOUT_MS" => self.processor_timeout_ms = num(&name, &value)?,
                "SEED" => self.profile.seed = num(&name, &value)?,
                "DECLINE_RATE" => self.profile.decline_rate = num(&name, &value)?,
                "ERROR_RATE" => self.profile.error_rate = num(&name, &value)?,
                // Empty or `none` clears a point set by the file.
                "CRASH_AT" => {
                    self.crash_at = match value.trim() {
                        "" | "none" => None,
                        v => Some(v.parse().map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?),
                    }
                }
                "CRASH_AFTER" => self.crash_after = num(&name, &value)?,
                "CONSUMER_PREFIX" => self.consumer_prefix = value,
                "DELIVER_FROM_SEQ" => self.deliver_from_seq = Some(num(&name, &value)?),
                "CONNECTION_TIMEOUT_MS" => self.connection_timeout_ms = num(&name, &value)?,
                // A deliberate defect, for proving the conformance kit catches it.
                "DEFECT_ACK_BEFORE_PROCESSOR" => {
                    self.defects.ack_before_processor =
                        value.parse().map_err(|_| ConfigError::Invalid(format!("{name}={value}: expected true or false")))?
                }
                _ if key.starts_with("TLS_") || key.starts_with("AUTH_") => {
                    match connection::apply_security_env(key, &value, &mut self.tls, &mut self.auth) {
                        Ok(true) => {}
                        Ok(false) => return Err(ConfigError::Invalid(format!("unknown variable {name}"))),
                        Err(reason) => return Err(ConfigError::Invalid(format!("{name}={value}: {reason}"))),
                    }
                }
                // Read by the binary's `--config` flag.
                "CONFIG" => {}
                _ => return Err(ConfigError::Invalid(format!("unknown variable {name}"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_with_both_tables() {
        let (w, b) = WorkerConfig::from_toml(
            "[worker]\nack_wait_ms = 1000\n[worker.profile]\ndecline_rate = 0.1\n[worker.profile.latency]\nkind = \"fixed\"\nms = 5\n[nats_bridge.jetstream]\nreplicas = 3\n",
        )
        .unwrap();
        assert_eq!(w.ack_wait_ms, 1000);
        assert_eq!(b.jetstream.replicas, 3);
        let err = WorkerConfig::from_toml("[worker]\nack_wiat_ms = 1\n").unwrap_err();
        assert!(err.to_string().contains("ack_wiat_ms"), "{err}");
        let err = WorkerConfig::from_toml("[worker.profile]\ndecline_rate = 1.5\n").unwrap_err();
        assert!(err.to_string().contains("decline_rate"), "{err}");
    }

    #[test]
    fn the_names_come_from_the_bridge_table_and_its_other_keys_are_the_bridges() {
        let (_, n) = WorkerConfig::from_toml(
            "[nats_bridge]\nrequest_timeout_ms = 9000\n[nats_bridge.subjects]\nprefix = \"acme\"\n[nats_bridge.circuit_breaker]\nopen_ms = 5\n",
        )
        .unwrap();
        assert_eq!(n.subject_template(nats_protocol::catalogue::ops::authorize()), "acme.payments.authorize");
        let err = WorkerConfig::from_toml("[nats_bridge.subjects]\nprefx = \"acme\"\n").unwrap_err().to_string();
        assert!(err.contains("prefx"), "{err}");
        let err = WorkerConfig::from_toml("[nats_bridge.jetstream]\nreplicas = 0\n").unwrap_err().to_string();
        assert!(err.contains("jetstream.replicas"), "{err}");
    }

    #[test]
    fn crash_points_from_file_and_env() {
        let (w, _) = WorkerConfig::from_toml("[worker]\ncrash_at = \"after_processor\"\ncrash_after = 3\n").unwrap();
        assert_eq!(w.crash_at, Some(CrashPoint::AfterProcessor));
        assert_eq!(w.crash_after, 3);
        let (w, _) = WorkerConfig::from_toml("").unwrap();
        assert_eq!((w.crash_at, w.crash_after), (None, 1), "no crash unless asked");

        let err = WorkerConfig::from_toml("[worker]\ncrash_at = \"after_ack\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown crash point \"after_ack\"") && err.contains("before_processor"), "{err}");
        let err = WorkerConfig::from_toml("[worker]\ncrash_at = \"after_reply\"\ncrash_after = 0\n").unwrap_err().to_string();
        assert!(err.contains("crash_after"), "{err}");

        let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let mut w = WorkerConfig::default();
        w.apply_env(env(&[("WORKER_CRASH_AT", "before_processor"), ("WORKER_CRASH_AFTER", "2"), ("WORKER_CONFIG", "x.toml")])).unwrap();
        assert_eq!((w.crash_at, w.crash_after), (Some(CrashPoint::BeforeProcessor), 2));
        w.apply_env(env(&[("WORKER_CRASH_AT", "none")])).unwrap();
        assert_eq!(w.crash_at, None);
        let err = w.apply_env(env(&[("WORKER_CRASH_AT", "sometimes")])).unwrap_err().to_string();
        assert!(err.contains("WORKER_CRASH_AT") && err.contains("unknown crash point"), "{err}");
        for p in CrashPoint::ALL {
            assert_eq!(p.name().parse::<CrashPoint>(), Ok(p));
        }
    }

    #[test]
    fn to_toml_round_trips() {
        let mut w = WorkerConfig {
            ack_wait_ms: 1234,
            crash_at: Some(CrashPoint::AfterReply),
            crash_after: 2,
            operations: vec!["payments.authorize".into()],
            ..Default::default()
        };
        w.profile.latency = crate::Latency::LongTail { median_ms: 5.0, p99_ms: 50.0 };
        w.profile.seed = 7;
        let (back, _) = WorkerConfig::from_toml(&w.to_toml().unwrap()).unwrap();
        assert_eq!(back.to_toml().unwrap(), w.to_toml().unwrap());
        assert_eq!((back.ack_wait_ms, back.crash_at, back.crash_after), (1234, Some(CrashPoint::AfterReply), 2));
        assert_eq!(back.profile, w.profile);
        let plain = WorkerConfig::default().to_toml().unwrap();
        assert!(!plain.contains("crash_at"), "{plain}");
        assert_eq!(WorkerConfig::from_toml(&plain).unwrap().0.crash_at, None);
    }

    #[test]
    fn tls_and_auth_settings() {
        let (w, _) = WorkerConfig::from_toml(
            "[worker]\nconnection_timeout_ms = 800\n[worker.tls]\nca_file = \"/x/ca.pem\"\n[worker.auth]\ntoken = \"t\"\n",
        )
        .unwrap();
        assert_eq!(w.connection_timeout_ms, 800);
        assert_eq!(w.tls.ca_file.as_deref(), Some(Path::new("/x/ca.pem")));
        assert_eq!(w.auth.token.as_deref(), Some("t"));
        let (back, _) = WorkerConfig::from_toml(&w.to_toml().unwrap()).unwrap();
        assert_eq!((back.tls, back.auth), (w.tls.clone(), w.auth.clone()));

        let err = WorkerConfig::from_toml("[worker.auth]\nuser = \"u\"\n").unwrap_err().to_string();
        assert!(err.contains("worker.auth.user is set without worker.auth.password"), "{err}");

        let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let mut w = WorkerConfig::default();
        w.apply_env(env(&[
            ("WORKER_TLS_CERT_FILE", "/c.pem"),
            ("WORKER_TLS_KEY_FILE", "/k.pem"),
            ("WORKER_AUTH_USER", "w"),
            ("WORKER_AUTH_PASSWORD", "p"),
            ("WORKER_CONNECTION_TIMEOUT_MS", "300"),
        ]))
        .unwrap();
        w.validate().unwrap();
        assert_eq!(w.tls.cert_file.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(w.connection_timeout_ms, 300);
        let err = w.apply_env(env(&[("WORKER_TLS_REQUIRED", "maybe")])).unwrap_err().to_string();
        assert!(err.contains("WORKER_TLS_REQUIRED"), "{err}");
    }
}
