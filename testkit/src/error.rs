//! The error type of the `nats` module.

use std::path::PathBuf;
use std::time::Duration;

use super::{Backend, NodeState};

/// Everything that can go wrong while preparing or starting NATS servers.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// No `nats-server` binary was found in any of the searched places.
    #[error("nats-server binary not found (searched: {searched}); run scripts/setup.sh to install it")]
    BinaryNotFound {
        /// Human-readable list of the places that were searched.
        searched: String,
    },

    /// A `nats-server` binary was found but cannot be used.
    #[error("nats-server binary {path} is unusable: {reason}")]
    BinaryUnusable {
        /// Path of the rejected binary.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },

    /// The environment variable selecting the backend holds an unknown value.
    #[error("invalid value {value:?} for {var}: expected auto, docker or process")]
    InvalidBackend {
        /// Name of the environment variable.
        var: &'static str,
        /// The rejected value.
        value: String,
    },

    /// The requested configuration is not supported.
    #[error("invalid nats environment configuration: {0}")]
    InvalidConfig(String),

    /// The Docker backend was required but no Docker engine answered.
    #[error("docker is not available: {0}")]
    DockerUnavailable(String),

    /// Building the `hs-nats` image failed.
    #[error("failed to build image {image}: {detail}")]
    ImageBuild {
        /// The image reference that was being built.
        image: String,
        /// Output of the failed build, or the reason it could not run.
        detail: String,
    },

    /// A call to the Docker engine (through testcontainers) failed.
    #[error("{context}: {source}")]
    Container {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: testcontainers::TestcontainersError,
    },

    /// A direct call to the Docker API failed.
    #[error("{context}: {source}")]
    DockerApi {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: testcontainers::bollard::errors::Error,
    },

    /// A local file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A `nats-server` node stopped while it was expected to run.
    #[error("nats server {node} exited during startup ({status}); last log lines:\n{log_tail}")]
    NodeExited {
        /// Server name of the node.
        node: String,
        /// Exit status or container state.
        status: String,
        /// The last lines the server logged.
        log_tail: String,
    },

    /// The servers did not become ready before the deadline.
    #[error("nats servers not ready after {timeout:?}: {detail}{}", fmt_logs(.log_tail))]
    NotReady {
        /// How long was waited.
        timeout: Duration,
        /// The last readiness check result.
        detail: String,
        /// The last log lines of the nodes, if they could be collected.
        log_tail: String,
    },

    /// A fault verb cannot be carried out on this backend.
    #[error("{verb} is not supported on the {backend} backend: {reason}")]
    Unsupported {
        /// The verb, e.g. `partition`.
        verb: &'static str,
        /// The backend the environment runs on.
        backend: Backend,
        /// Why not, and what to use instead.
        reason: &'static str,
    },

    /// A fault verb named a node the environment does not have.
    #[error("no nats node named {name:?} (nodes: {known})")]
    UnknownNode {
        /// The name asked for.
        name: String,
        /// The environment's node names, comma-separated.
        known: String,
    },

    /// A fault verb does not apply to the node in its current state (for
    /// example pausing a stopped node, or starting a running one).
    #[error("cannot {verb} nats node {node}: it is {state}")]
    InvalidState {
        /// The verb.
        verb: &'static str,
        /// Server name of the node.
        node: String,
        /// The state the node is in.
        state: NodeState,
    },

    /// A fault verb's post-condition did not hold before its deadline.
    #[error("{verb} of nats node {node} did not complete within {timeout:?}: {detail}")]
    FaultTimeout {
        /// The verb.
        verb: &'static str,
        /// Server name of the node.
        node: String,
        /// How long was waited.
        timeout: Duration,
        /// What was still missing (and the node's last log lines, where
        /// they help).
        detail: String,
    },

    /// A client connection to the servers failed.
    #[error("failed to connect to nats at {url}: {source}")]
    Connect {
        /// The URL list that was used.
        url: String,
        /// The underlying error.
        #[source]
        source: async_nats::ConnectError,
    },
}

fn fmt_logs(log_tail: &str) -> String {
    if log_tail.is_empty() {
        String::new()
    } else {
        format!("; last log lines:\n{log_tail}")
    }
}

impl NatsError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        NatsError::Io { context: context.into(), source }
    }

    pub(crate) fn container(context: impl Into<String>, source: testcontainers::TestcontainersError) -> Self {
        NatsError::Container { context: context.into(), source }
    }
}
