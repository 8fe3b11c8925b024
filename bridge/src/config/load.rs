//! Reading the configuration: the `[nats_bridge]` table of a TOML file, then `NATS_BRIDGE_*`
//! variables (the keys and variables are listed in the [module documentation](super)).

use std::path::Path;

use nats_protocol::naming;
use serde::Deserialize;

use super::{apply_security_env, BridgeConfig, ConfigError};

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
                "CONNECTION_TIMEOUT_MS" => self.connection_timeout_ms = num(&name, &value)?,
                // Connection security, or the subject and stream names the workers share.
                _ => {
                    let applied = if key.starts_with("TLS_") || key.starts_with("AUTH_") {
                        apply_security_env(key, &value, &mut self.tls, &mut self.auth)
                    } else {
                        naming::apply_env_var(key, &value, &mut self.subjects, &mut self.jetstream)
                    };
                    match applied {
                        Ok(true) => {}
                        Ok(false) => return Err(ConfigError::Env { name, value, reason: "unknown NATS_BRIDGE_ variable".into() }),
                        Err(reason) => return Err(ConfigError::Env { name, value, reason }),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::catalogue::ops;
    use crate::config::{CircuitBreakerConfig, SubjectScheme};

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
    fn every_plain_env_variable_sets_its_key() {
        let mut c = BridgeConfig::default();
        c.apply_env(
            [
                ("NATS_BRIDGE_BASE_URL", "nats://x:1,nats://y:2"),
                ("NATS_BRIDGE_CONNECTION_NAME", "bridge-7"),
                ("NATS_BRIDGE_REQUEST_TIMEOUT_MS", "9000"),
                ("NATS_BRIDGE_ACK_TIMEOUT_MS", "900"),
                ("NATS_BRIDGE_QUERY_TIMEOUT_MS", "800"),
                ("NATS_BRIDGE_MAX_RETRIES", "5"),
                ("NATS_BRIDGE_MAX_REPLY_BYTES", "4096"),
                ("NATS_BRIDGE_CIRCUIT_BREAKER_ENABLED", "0"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        assert_eq!(c.server_urls(), ["nats://x:1", "nats://y:2"]);
        assert_eq!(c.connection_name, "bridge-7");
        assert_eq!((c.request_timeout_ms, c.ack_timeout_ms, c.query_timeout_ms), (9000, 900, 800));
        assert_eq!((c.max_retries, c.max_reply_bytes), (5, 4096));
        assert!(!c.circuit_breaker.enabled);
        c.apply_env([("NATS_BRIDGE_CIRCUIT_BREAKER_ENABLED".to_string(), "1".to_string())]).unwrap();
        assert!(c.circuit_breaker.enabled);
        let err = c.apply_env([("NATS_BRIDGE_MAX_RETRIES".to_string(), "-1".to_string())]).unwrap_err();
        assert!(err.to_string().contains("expected a non-negative integer"), "{err}");
    }

    #[test]
    fn a_table_of_a_larger_file_is_read_and_validated() {
        let absent = BridgeConfig::from_table(None).unwrap();
        assert_eq!((absent.base_url, absent.max_retries), (BridgeConfig::default().base_url, BridgeConfig::default().max_retries));
        let table: toml::Value = toml::from_str("base_url = \"nats://t:9\"\nmax_retries = 1\n").unwrap();
        let c = BridgeConfig::from_table(Some(table)).unwrap();
        assert_eq!((c.base_url.as_str(), c.max_retries), ("nats://t:9", 1));
        let table: toml::Value = toml::from_str("max_reply_bytes = 1\n").unwrap();
        let err = BridgeConfig::from_table(Some(table)).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "validated: {err}");
        let table: toml::Value = toml::from_str("base_ulr = \"x\"\n").unwrap();
        let err = BridgeConfig::from_table(Some(table)).unwrap_err();
        assert!(err.to_string().contains("[nats_bridge]: unknown field `base_ulr`"), "{err}");
    }

    #[test]
    fn load_reads_the_file_and_names_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("bridge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bridge.toml");
        std::fs::write(&path, "[nats_bridge]\nmax_retries = 4\n").unwrap();
        assert_eq!(BridgeConfig::load(Some(&path)).unwrap().max_retries, 4);
        std::fs::write(&path, "[nats_bridge]\nmax_reply_bytes = 1\n").unwrap();
        assert!(matches!(BridgeConfig::load(Some(&path)), Err(ConfigError::Invalid(_))));
        let missing = dir.join("missing.toml");
        let err = BridgeConfig::load(Some(&missing)).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }) && err.to_string().contains("missing.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
