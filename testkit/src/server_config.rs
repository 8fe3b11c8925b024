//! The server configuration file, for settings nats-server has no
//! command-line flag for.
//!
//! Everything else stays on the command line. nats-server reads the file
//! given with `-c` first and then applies the command-line flags on top, so
//! the two combine (flags win where both set something); the file only holds
//! what flags cannot express.

use super::EnvConfig;

/// File name of the configuration file: in the environment's temporary
/// directory (process backend) and at the root of each container (Docker
/// backend).
pub(crate) const FILE_NAME: &str = "hs-nats.conf";

/// Where the configuration file is put inside a container.
pub(crate) const CONTAINER_PATH: &str = "/hs-nats.conf";

/// The configuration file `config` needs, or `None` when the command line
/// says everything (the default profile). `security` is the `tls { }` /
/// `authorization { }` text of [`super::security::SecurityFiles::render`],
/// when the environment has TLS or users.
pub(crate) fn render(config: &EnvConfig, security: Option<&str>) -> Option<String> {
    if !config.sync_always && security.is_none() {
        return None;
    }
    let mut text = String::from(
        "# Written by the harness (EnvConfig); all other settings are\n\
         # command-line flags, which override this file.\n",
    );
    if config.sync_always {
        text.push_str(
            "jetstream {\n  \
               # fsync the store on every write instead of every two minutes.\n  \
               sync_interval: always\n\
             }\n",
        );
    }
    if let Some(security) = security {
        text.push_str(security);
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sync_profile_needs_a_file() {
        assert_eq!(render(&EnvConfig::single(), None), None);
        let text = render(&EnvConfig::cluster().with_sync_always(true), None).expect("a file");
        assert!(text.contains("jetstream {\n  # fsync"), "unexpected layout:\n{text}");
        assert!(text.contains("\n  sync_interval: always\n}\n"), "{text}");
        let text = render(&EnvConfig::single(), Some("tls {\n}\n")).expect("a file");
        assert!(text.ends_with("tls {\n}\n") && !text.contains("sync_interval"), "{text}");
    }
}
