//! Connection options of a NATS client, bridge or worker: TLS, credentials, server URLs, and
//! connect errors that name their likely cause.
//!
//! Settings come from a table's `tls` and `auth` keys (`[nats_bridge.tls]`, `[worker.auth]`)
//! or from `<PREFIX>TLS_*` / `<PREFIX>AUTH_*` variables ([`apply_security_env`]); `table` in
//! every function is the name of that table, used in messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

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

/// Splits a comma-separated list of server URLs.
pub fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
