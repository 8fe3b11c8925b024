//! Gateway configuration: a `[gateway]` table (with `[nats_bridge]` beside it) in a TOML file.
//!
//! ```toml
//! [gateway]
//! listen = "127.0.0.1:8080"
//! database = "gateway.db"
//! [gateway.api_keys]
//! "dev_key_merchant_1" = "merchant_1"
//! [gateway.recovery]
//! interval_ms = 60000           # seed: every minute
//! stuck_after_ms = 300000       # seed: stuck for 5 minutes
//! sync_stuck_after_ms = 120000  # seed: sync operations after 2 minutes
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nats_bridge::BridgeConfig;
use serde::Deserialize;

/// Recovery job settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// How often the job runs.
    pub interval_ms: u64,
    /// Age after which an unresolved operation is reconciled, and failed if the processor
    /// has no record of it.
    pub stuck_after_ms: u64,
    /// The same for sync operations.
    pub sync_stuck_after_ms: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig { interval_ms: 60_000, stuck_after_ms: 300_000, sync_stuck_after_ms: 120_000 }
    }
}

/// Deliberate defects, so the harness can prove it catches them (settable only from code,
/// never from a file; all off by default). Never turn one on outside the harness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayDefects {
    /// A successful manual-capture authorization is recorded as charged.
    pub manual_capture_as_charged: bool,
    /// A late or duplicate reply is applied to an operation that is already final.
    pub late_reply_overwrites_terminal: bool,
    /// The recovery job fails stuck operations without asking the workers or the processor.
    pub recovery_without_asking: bool,
}

/// The gateway's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Listen address.
    pub listen: String,
    /// SQLite file of the attempt store.
    pub database: PathBuf,
    /// API key -> merchant id.
    pub api_keys: HashMap<String, String>,
    /// Recovery job.
    pub recovery: RecoveryConfig,
    /// Deliberate defects (harness only).
    #[serde(skip)]
    pub defects: GatewayDefects,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            database: PathBuf::from("gateway.db"),
            api_keys: HashMap::from([("dev_key_merchant_1".to_string(), "merchant_1".to_string())]),
            recovery: RecoveryConfig::default(),
            defects: GatewayDefects::default(),
        }
    }
}

/// Errors of the gateway configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Bad TOML or values.
    #[error("invalid gateway config: {0}")]
    Invalid(String),
    /// Bad bridge table.
    #[error(transparent)]
    Bridge(#[from] nats_bridge::config::ConfigError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    gateway: GatewayConfig,
    #[serde(default)]
    nats_bridge: Option<toml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    worker: Option<toml::Value>,
}

impl GatewayConfig {
    /// Parses a document with `[gateway]` and `[nats_bridge]` tables.
    pub fn from_toml(text: &str) -> Result<(GatewayConfig, BridgeConfig), ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let bridge = BridgeConfig::from_table(file.nats_bridge)?;
        file.gateway.validate()?;
        Ok((file.gateway, bridge))
    }

    /// Loads a file (or defaults), then `NATS_BRIDGE_*` and `GATEWAY_LISTEN` / `GATEWAY_DATABASE`.
    pub fn load(path: Option<&Path>) -> Result<(GatewayConfig, BridgeConfig), ConfigError> {
        let (mut g, mut b) = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| ConfigError::Read { path: p.display().to_string(), reason: e.to_string() })?;
                Self::from_toml(&text)?
            }
            None => (GatewayConfig::default(), BridgeConfig::default()),
        };
        if let Ok(v) = std::env::var("GATEWAY_LISTEN") {
            g.listen = v;
        }
        if let Ok(v) = std::env::var("GATEWAY_DATABASE") {
            g.database = v.into();
        }
        b.apply_env(std::env::vars())?;
        b.validate()?;
        g.validate()?;
        Ok((g, b))
    }

    /// Checks values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api_keys.is_empty() {
            return Err(ConfigError::Invalid("api_keys is empty: no merchant could call the API".into()));
        }
        let r = &self.recovery;
        if r.interval_ms == 0 || r.stuck_after_ms == 0 || r.sync_stuck_after_ms == 0 {
            return Err(ConfigError::Invalid("recovery intervals must be positive".into()));
        }
        Ok(())
    }
}
