//! The bridge's and workers' connection settings for a secured NATS environment.
//!
//! A [`NatsEnv`](crate::nats::NatsEnv) started with TLS or users generates a CA, certificates
//! and NKey seeds ([`SecurityFiles`]); [`ClientSecurity`] turns them into the `tls` and `auth`
//! settings of a [`BridgeConfig`](nats_bridge::BridgeConfig) or a worker. It lives here, not in
//! `nats-testkit`, because those settings are the bridge's types.
//!
//! ```no_run
//! # async fn demo() -> Result<(), harness::nats::NatsError> {
//! use harness::client_security::ClientSecurity;
//! use harness::nats::{EnvConfig, NatsEnv, NatsUser, ServerTls};
//!
//! let env = NatsEnv::start(EnvConfig::single().with_tls(ServerTls::default()).with_users([NatsUser::nkey("bridge")])).await?;
//! let security = env.security().expect("tls and users");
//! let (tls, auth) = (security.client_tls(), security.client_auth("bridge"));
//! # let _ = (tls, auth);
//! # Ok(())
//! # }
//! ```

use nats_bridge::config::{AuthConfig, TlsConfig};

use crate::nats::{Credential, SecurityFiles};

/// Client settings of the bridge and workers from an environment's generated files.
pub trait ClientSecurity {
    /// Client TLS settings for the bridge or a worker: the CA, and the client certificate when
    /// the servers verify clients; all off without TLS.
    fn client_tls(&self) -> TlsConfig;

    /// Client credentials of `user` (password or NKey seed file); `None` for an unknown user.
    fn client_auth(&self, user: &str) -> Option<AuthConfig>;
}

impl ClientSecurity for SecurityFiles {
    fn client_tls(&self) -> TlsConfig {
        match self.tls() {
            None => TlsConfig::default(),
            Some(tls) => TlsConfig {
                required: true,
                ca_file: Some(self.ca_file()),
                cert_file: tls.verify.then(|| self.client_cert_file()),
                key_file: tls.verify.then(|| self.client_key_file()),
            },
        }
    }

    fn client_auth(&self, user: &str) -> Option<AuthConfig> {
        let u = self.user(user)?;
        Some(match &u.credential {
            Credential::Password(p) => AuthConfig { user: Some(u.name.clone()), password: Some(p.clone()), ..AuthConfig::default() },
            Credential::Nkey => AuthConfig { nkey_seed_file: Some(self.nkey_seed_file(user)?.to_path_buf()), ..AuthConfig::default() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats::security::generate;
    use crate::nats::{NatsUser, ServerTls};

    #[test]
    fn settings_follow_the_generated_files() {
        let dir = std::env::temp_dir().join(format!("hs-client-sec-test-{}", uuid::Uuid::new_v4()));
        let users = [NatsUser::password("bridge", "pw"), NatsUser::nkey("w-a")];
        let files = generate(dir, Some(ServerTls { verify: true }), &users).unwrap();
        let tls = files.client_tls();
        assert!(tls.required);
        assert_eq!(tls.ca_file, Some(files.ca_file()));
        assert_eq!(tls.cert_file, Some(files.client_cert_file()));
        assert_eq!(tls.key_file, Some(files.client_key_file()));
        let bridge = files.client_auth("bridge").unwrap();
        assert_eq!((bridge.user.as_deref(), bridge.password.as_deref()), (Some("bridge"), Some("pw")));
        assert_eq!(files.client_auth("w-a").unwrap().nkey_seed_file.as_deref(), files.nkey_seed_file("w-a"));
        assert!(files.client_auth("nobody").is_none());

        let plain = generate(std::env::temp_dir().join(format!("hs-client-sec-test-{}", uuid::Uuid::new_v4())), None, &users).unwrap();
        assert_eq!(plain.client_tls(), TlsConfig::default());
    }
}
