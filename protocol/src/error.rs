//! The error of reading or checking configuration shared by the bridge and its workers (the
//! `[nats_bridge]` table, `NATS_BRIDGE_*` variables, connection security).

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
