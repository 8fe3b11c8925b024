//! Worker configuration: a `[worker]` table (and the `[nats_bridge]` table for subjects and
//! streams) in a TOML file, overridden by `WORKER_*` environment variables.

use std::path::Path;

use nats_bridge::BridgeConfig;
use serde::Deserialize;

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
    /// The bridge part is invalid.
    #[error(transparent)]
    Bridge(#[from] nats_bridge::config::ConfigError),
}

/// How a worker runs.
#[derive(Debug, Clone, Deserialize)]
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
    /// Operations to serve (catalogue names); empty means all.
    pub operations: Vec<String>,
    /// A durable request older than this (by its envelope timestamp) is refused with
    /// `REQUEST_EXPIRED` instead of reaching the processor. Keep it below the gateway's recovery
    /// threshold (5 min): once recovery has failed an operation, it must never happen later.
    /// 0 disables the check.
    pub max_request_age_ms: u64,
    /// Latency, declines, errors.
    pub profile: Profile,
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
            operations: Vec::new(),
            max_request_age_ms: 240_000,
            profile: Profile::default(),
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
        for name in &self.operations {
            if nats_bridge::catalogue::find(name).is_none() {
                return bad(format!("operations: unknown operation {name:?}"));
            }
        }
        self.profile.validate().map_err(ConfigError::Invalid)
    }

    /// Loads both tables from a file (or defaults), then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<(WorkerConfig, BridgeConfig), ConfigError> {
        let (mut worker, mut bridge) = match path {
            None => (WorkerConfig::default(), BridgeConfig::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Self::from_toml(&text)?
            }
        };
        worker.apply_env(std::env::vars())?;
        bridge.apply_env(std::env::vars())?;
        worker.validate()?;
        bridge.validate()?;
        Ok((worker, bridge))
    }

    /// Parses a document with `[worker]` and optional `[nats_bridge]` tables.
    pub fn from_toml(text: &str) -> Result<(WorkerConfig, BridgeConfig), ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let bridge = BridgeConfig::from_table(file.nats_bridge)?;
        file.worker.validate()?;
        Ok((file.worker, bridge))
    }

    /// Applies `WORKER_*` overrides.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ConfigError> {
            v.parse()
                .map_err(|_| ConfigError::Invalid(format!("{name}={v}: expected a number")))
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
                "SEED" => self.profile.seed = num(&name, &value)?,
                "DECLINE_RATE" => self.profile.decline_rate = num(&name, &value)?,
                "ERROR_RATE" => self.profile.error_rate = num(&name, &value)?,
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
}
