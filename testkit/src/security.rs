//! TLS and authorization for the servers (see [`EnvConfig::tls`] and
//! [`EnvConfig::users`]).
//!
//! Everything is generated when the environment starts: a CA, a server
//! certificate for `127.0.0.1` and `localhost`, a client certificate (for
//! mutual TLS), both signed by the CA (with `rcgen`), and an NKey pair per
//! NKey user (with `nkeys`). The files live in a temporary directory on the
//! host, deleted with the environment, so clients (the bridge, workers) can
//! point their `tls.ca_file`, `tls.cert_file`, `tls.key_file` and
//! `auth.nkey_seed_file` settings at them, or take ready-made async-nats
//! options from [`SecurityFiles::client_options`]; the server's own files are
//! copied into each container (Docker backend) or read in place (process
//! backend).
//!
//! [`EnvConfig::tls`]: super::EnvConfig::tls
//! [`EnvConfig::users`]: super::EnvConfig::users

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::NatsError;

/// TLS on the servers' client port. With it, nats-server refuses plain-text
/// clients (`tls_required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerTls {
    /// Mutual TLS: clients must present a certificate signed by the
    /// generated CA (nats-server's `verify: true`).
    pub verify: bool,
}

/// How a user proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `user` + `password`.
    Password(String),
    /// An NKey pair generated at start; the server knows the public key,
    /// the client gets the seed file ([`SecurityFiles::nkey_seed_file`]).
    Nkey,
}

/// Subjects a user may publish and subscribe to (nats-server's
/// `permissions { publish { allow }, subscribe { allow } }`). Anything not
/// listed is denied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Subjects (wildcards allowed) the user may publish to.
    pub publish: Vec<String>,
    /// Subjects (wildcards allowed) the user may subscribe to.
    pub subscribe: Vec<String>,
    /// Let the user reply to any request it received, whatever its inbox
    /// subject (nats-server's `allow_responses`).
    pub allow_responses: bool,
}

/// A user of the servers' `authorization { users = [...] }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUser {
    /// The name: the user name for passwords, a label for NKey users.
    pub name: String,
    /// Password or NKey.
    pub credential: Credential,
    /// Restrictions; `None` lets the user publish and subscribe anywhere.
    pub permissions: Option<Permissions>,
}

impl NatsUser {
    /// A user with a password and no restrictions.
    pub fn password(name: impl Into<String>, password: impl Into<String>) -> Self {
        NatsUser { name: name.into(), credential: Credential::Password(password.into()), permissions: None }
    }

    /// An NKey user (key pair generated at start), no restrictions.
    pub fn nkey(name: impl Into<String>) -> Self {
        NatsUser { name: name.into(), credential: Credential::Nkey, permissions: None }
    }

    /// Restricts the user to `permissions`.
    pub fn with_permissions(mut self, permissions: Permissions) -> Self {
        self.permissions = Some(permissions);
        self
    }
}

/// The files generated for an environment, in a host temporary directory
/// removed when the environment is dropped.
#[derive(Debug)]
pub struct SecurityFiles {
    dir: PathBuf,
    tls: Option<ServerTls>,
    users: Vec<NatsUser>,
    /// NKey users: name -> (public key, seed file).
    nkeys: BTreeMap<String, (String, PathBuf)>,
}

/// File names inside the directory (and below [`CONTAINER_DIR`]).
const CA: &str = "ca.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";
const CLIENT_CERT: &str = "client.pem";
const CLIENT_KEY: &str = "client-key.pem";

/// Where the server's files are copied inside a container.
pub(crate) const CONTAINER_DIR: &str = "/hs-tls";

impl SecurityFiles {
    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the servers run with TLS.
    pub fn tls(&self) -> Option<ServerTls> {
        self.tls
    }

    /// The CA certificate (PEM) that signed the server and client certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(CA)
    }

    /// The client certificate (PEM) for mutual TLS.
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.join(CLIENT_CERT)
    }

    /// The client certificate's private key (PEM).
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.join(CLIENT_KEY)
    }

    /// The seed file of an NKey user.
    pub fn nkey_seed_file(&self, user: &str) -> Option<&Path> {
        self.nkeys.get(user).map(|(_, p)| p.as_path())
    }

    /// The public key of an NKey user.
    pub fn nkey_public(&self, user: &str) -> Option<&str> {
        self.nkeys.get(user).map(|(k, _)| k.as_str())
    }

    /// The users of the servers' `authorization` block.
    pub fn users(&self) -> &[NatsUser] {
        &self.users
    }

    /// The user named `name`; `None` for an unknown user.
    pub fn user(&self, name: &str) -> Option<&NatsUser> {
        self.users.iter().find(|u| u.name == name)
    }

    /// async-nats options of a client connecting as `user`: TLS required,
    /// with the generated CA (and the client certificate when the servers
    /// verify clients) if the servers run with TLS, and the user's password
    /// or NKey seed.
    pub fn client_options(&self, user: &str) -> Result<async_nats::ConnectOptions, NatsError> {
        let u = self.user(user).ok_or_else(|| NatsError::InvalidConfig(format!("unknown nats user {user:?}")))?;
        install_crypto_provider();
        let mut options = async_nats::ConnectOptions::new();
        if let Some(tls) = self.tls {
            options = options.add_root_certificates(self.ca_file()).require_tls(true);
            if tls.verify {
                options = options.add_client_certificate(self.client_cert_file(), self.client_key_file());
            }
        }
        Ok(match &u.credential {
            Credential::Password(p) => options.user_and_password(u.name.clone(), p.clone()),
            Credential::Nkey => {
                let path = self.nkey_seed_file(user).ok_or_else(|| NatsError::InvalidConfig(format!("no nkey seed for {user:?}")))?;
                let seed = std::fs::read_to_string(path).map_err(|e| NatsError::io(format!("failed to read {}", path.display()), e))?;
                options.nkey(seed.trim().to_owned())
            }
        })
    }

    /// The server files to copy into a container: (path in the container, contents).
    pub(crate) fn container_files(&self) -> Result<Vec<(String, Vec<u8>)>, NatsError> {
        if self.tls.is_none() {
            return Ok(Vec::new());
        }
        [CA, SERVER_CERT, SERVER_KEY]
            .iter()
            .map(|name| {
                let path = self.dir.join(name);
                let bytes = std::fs::read(&path).map_err(|e| NatsError::io(format!("failed to read {}", path.display()), e))?;
                Ok((format!("{CONTAINER_DIR}/{name}"), bytes))
            })
            .collect()
    }

    /// The `tls { }` and `authorization { }` blocks of the server
    /// configuration; `in_container` says where the server reads the files.
    pub(crate) fn render(&self, in_container: bool) -> String {
        let path = |name: &str| {
            if in_container {
                format!("{CONTAINER_DIR}/{name}")
            } else {
                self.dir.join(name).display().to_string()
            }
        };
        let mut out = String::new();
        if let Some(tls) = self.tls {
            out.push_str(&format!(
                "# TLS on the client port (EnvConfig::tls); plain-text clients are refused.\n\
                 tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {}\n  timeout: 2\n}}\n",
                path(SERVER_CERT),
                path(SERVER_KEY),
                path(CA),
                tls.verify
            ));
        }
        if !self.users.is_empty() {
            out.push_str("# Users (EnvConfig::users); anyone else is refused.\nauthorization {\n  users = [\n");
            for u in &self.users {
                let who = match &u.credential {
                    Credential::Password(p) => format!("user: {:?}, password: {:?}", u.name, p),
                    Credential::Nkey => format!("nkey: {:?}", self.nkey_public(&u.name).unwrap_or_default()),
                };
                match &u.permissions {
                    None => out.push_str(&format!("    {{ {who} }}\n")),
                    Some(p) => {
                        let list = |s: &[String]| s.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
                        let responses = if p.allow_responses { ", allow_responses: true" } else { "" };
                        out.push_str(&format!(
                            "    {{ {who}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }}{responses} }} }}\n",
                            list(&p.publish),
                            list(&p.subscribe)
                        ));
                    }
                }
            }
            out.push_str("  ]\n}\n");
        }
        out
    }
}

impl Drop for SecurityFiles {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "failed to remove nats security directory");
        }
    }
}

/// Installs rustls's `ring` crypto provider as the process default, once, if
/// none is set. async-nats builds its TLS configuration from the process
/// default, and rustls refuses to choose one itself when the build enables
/// more than one provider: without this, the first TLS connection would
/// panic. [`NatsEnv::start`](super::NatsEnv::start) calls it, so clients of a
/// started environment need not.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// Generates certificates and keys for `tls` and `users` in a new directory
/// `dir` (which must not exist yet), as [`NatsEnv::start`](super::NatsEnv::start)
/// does for [`EnvConfig::tls`](super::EnvConfig::tls) and
/// [`EnvConfig::users`](super::EnvConfig::users). The directory is removed
/// when the returned files are dropped.
pub fn generate(dir: PathBuf, tls: Option<ServerTls>, users: &[NatsUser]) -> Result<SecurityFiles, NatsError> {
    std::fs::create_dir_all(&dir).map_err(|e| NatsError::io(format!("failed to create {}", dir.display()), e))?;
    // Built first so an error below removes the directory.
    let mut files = SecurityFiles { dir, tls, users: users.to_vec(), nkeys: BTreeMap::new() };
    let write = |name: &str, text: &str| {
        let path = files.dir.join(name);
        std::fs::write(&path, text).map_err(|e| NatsError::io(format!("failed to write {}", path.display()), e))
    };
    if tls.is_some() {
        let pki = generate_pki().map_err(|e| NatsError::InvalidConfig(format!("cannot generate certificates: {e}")))?;
        write(CA, &pki.ca)?;
        write(SERVER_CERT, &pki.server_cert)?;
        write(SERVER_KEY, &pki.server_key)?;
        write(CLIENT_CERT, &pki.client_cert)?;
        write(CLIENT_KEY, &pki.client_key)?;
    }
    for (i, u) in users.iter().enumerate() {
        if users[..i].iter().any(|o| o.name == u.name) {
            return Err(NatsError::InvalidConfig(format!("duplicate nats user {:?}", u.name)));
        }
        if u.credential == Credential::Nkey {
            let pair = nkeys::KeyPair::new_user();
            let seed = pair.seed().map_err(|e| NatsError::InvalidConfig(format!("cannot generate an nkey: {e}")))?;
            let name = format!("{}.nk", u.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
            write(&name, &format!("{seed}\n"))?;
            let path = files.dir.join(name);
            files.nkeys.insert(u.name.clone(), (pair.public_key(), path));
        }
    }
    Ok(files)
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn generate_pki() -> Result<Pki, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "hs harness test ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    server.distinguished_name.push(DnType::CommonName, "hs harness nats server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(vec!["hs-client".to_string()])?;
    client.distinguished_name.push(DnType::CommonName, "hs harness client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;

    Ok(Pki {
        ca: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tls_and_users() {
        let dir = std::env::temp_dir().join(format!("hs-sec-test-{}", uuid::Uuid::new_v4()));
        let users = [
            NatsUser::password("bridge", "pw"),
            NatsUser::nkey("w-a").with_permissions(Permissions {
                publish: vec!["a.>".into()],
                subscribe: vec!["_INBOX.>".into()],
                allow_responses: true,
            }),
        ];
        let files = generate(dir.clone(), Some(ServerTls { verify: true }), &users).unwrap();
        let text = files.render(true);
        assert!(text.contains("cert_file: \"/hs-tls/server.pem\""), "{text}");
        assert!(text.contains("verify: true"), "{text}");
        assert!(text.contains("{ user: \"bridge\", password: \"pw\" }"), "{text}");
        let public = files.nkey_public("w-a").unwrap();
        assert!(public.starts_with('U'), "{public}");
        assert!(text.contains(&format!("nkey: {public:?}, permissions: {{ publish: {{ allow: [\"a.>\"] }}")), "{text}");
        let seed = std::fs::read_to_string(files.nkey_seed_file("w-a").unwrap()).unwrap();
        assert!(seed.starts_with("SU"), "{seed}");
        assert!(std::fs::read_to_string(files.ca_file()).unwrap().contains("BEGIN CERTIFICATE"));
        assert_eq!(files.user("bridge").unwrap().credential, Credential::Password("pw".into()));
        assert!(files.user("nobody").is_none());
        assert!(files.client_options("bridge").is_ok());
        assert!(files.client_options("w-a").is_ok());
        assert!(matches!(files.client_options("nobody"), Err(NatsError::InvalidConfig(_))));
        assert_eq!(files.container_files().unwrap().len(), 3);
        drop(files);
        assert!(!dir.exists(), "the directory is removed with the files");
    }
}
