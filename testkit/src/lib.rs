//! Real NATS servers for tests, for any crate of the workspace (as a dev-dependency) and for
//! the harness's CLI.
//!
//! [`NatsEnv`] starts a single JetStream-enabled `nats-server` or a 3-node
//! JetStream cluster and waits until it is usable. Two backends exist:
//!
//! * **Docker** ([`Backend::Docker`]): one container per node from the
//!   locally built `hs-nats:<version>` image (see [`image`]), each
//!   environment on its own Docker network, client and monitoring ports
//!   published on 127.0.0.1, the JetStream store on an anonymous volume of
//!   the container (not its overlay filesystem; see [`STORE_DIR`]). Cluster
//!   nodes route to each other by container name and run with
//!   `--no_advertise`, so clients only ever see the published loopback
//!   ports. A single node can instead run on the host's network
//!   ([`EnvConfig::host_network`]): no Docker network, nothing published,
//!   the server listening on 127.0.0.1 itself, so clients do not go
//!   through Docker's userland proxy.
//! * **Process** ([`Backend::Process`]): local `nats-server` processes on
//!   loopback ports, with store directories and logs in a temporary
//!   directory.
//!
//! The backend is chosen by [`EnvConfig::backend`]; with
//! [`BackendChoice::Auto`] the `HARNESS_NATS_BACKEND` environment variable
//! (`auto`, `docker` or `process`) decides, and `auto` uses Docker when an
//! engine answers and processes otherwise.
//!
//! Everything is torn down when the [`NatsEnv`] is dropped: containers and
//! the network are removed, processes are killed, temporary directories are
//! deleted. Containers and networks of a test process that was killed
//! before it could do so are removed by the next Docker-backed start (see
//! [`reaper`]).
//!
//! With [`EnvConfig::sync_always`] every node runs with JetStream
//! `sync_interval: always` (fsync on every write) instead of nats-server's
//! default of a sync every two minutes; [`NatsEnv::sync_always`] tells which
//! profile an environment runs.
//!
//! Faults are injected with a small set of verbs (see [`faults`]):
//! [`NatsEnv::stop`], [`NatsEnv::start_node`], [`NatsEnv::restart`],
//! [`NatsEnv::kill`], [`NatsEnv::pause`], [`NatsEnv::unpause`],
//! [`NatsEnv::partition`], [`NatsEnv::heal`], [`NatsEnv::restart_all`] and
//! [`NatsEnv::rolling_restart`]; the per-node ones also exist on
//! [`NatsNode`].
//!
//! Between a client and a server, [`netfault::Proxy`] injects latency,
//! jitter, cuts and black holes on the TCP path.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nats_testkit::NatsError> {
//! use nats_testkit::NatsEnv;
//!
//! let env = NatsEnv::cluster().await?;
//! let client = env.connect().await?;
//! let js = async_nats::jetstream::new(client);
//! // create streams with `num_replicas: env.replicas()`
//! # let _ = js;
//! # Ok(())
//! # }
//! ```

pub mod binary;
mod container;
mod docker;
mod error;
pub mod faults;
pub mod image;
pub mod netfault;
mod ports;
mod process;
mod ready;
pub mod reaper;
pub mod security;
mod server_config;
pub mod support;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use testcontainers::{ContainerAsync, GenericImage};

pub use binary::{NatsBinary, BINARY_ENV};
pub use container::{CLIENT_PORT, CLUSTER_PORT, MONITORING_PORT, STORE_DIR};
pub use docker::ENV_LABEL;
pub use error::NatsError;
pub use faults::NodeState;
pub use image::{ensure_image, ImageRef};
pub use reaper::{reap_leftovers, Reaped, OWNER_PID_LABEL, OWNER_SCOPE_LABEL, OWNER_START_LABEL};
pub use security::{Credential, NatsUser, Permissions, SecurityFiles, ServerTls};

/// Environment variable selecting the backend: `auto` (default), `docker`
/// or `process`.
pub const BACKEND_ENV: &str = "HARNESS_NATS_BACKEND";

/// Number of nodes in the cluster started by [`NatsEnv::cluster`].
pub const CLUSTER_SIZE: usize = 3;

/// How often readiness is polled: quickly at first (a single local server
/// is up within tens of milliseconds), then less often.
const FAST_POLL_INTERVAL: Duration = Duration::from_millis(25);
const FAST_POLL_PERIOD: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How often, while waiting, nodes are checked for having exited.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(250);

/// How often a start is attempted when the picked ports turn out to be taken.
const START_ATTEMPTS: usize = 3;

/// Where the servers of an environment run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Docker containers from the `hs-nats` image.
    Docker,
    /// Local `nats-server` processes.
    Process,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Docker => "docker",
            Backend::Process => "process",
        })
    }
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendChoice {
    /// Follow `HARNESS_NATS_BACKEND`; if it is unset or `auto`, use Docker
    /// when an engine answers and local processes otherwise (with a warning).
    #[default]
    Auto,
    /// Docker only; an error if no engine answers.
    Docker,
    /// Local processes only.
    Process,
}

impl BackendChoice {
    /// Reads `HARNESS_NATS_BACKEND`; unset or empty means [`BackendChoice::Auto`].
    pub fn from_env() -> Result<Self, NatsError> {
        match std::env::var(BACKEND_ENV) {
            Ok(value) if !value.trim().is_empty() => value.parse(),
            _ => Ok(BackendChoice::Auto),
        }
    }
}

impl FromStr for BackendChoice {
    type Err = NatsError;

    /// Parses `auto`, `docker` or `process` (case-insensitive).
    fn from_str(value: &str) -> Result<Self, NatsError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "docker" => Ok(BackendChoice::Docker),
            "process" => Ok(BackendChoice::Process),
            _ => Err(NatsError::InvalidBackend { var: BACKEND_ENV, value: value.to_owned() }),
        }
    }
}

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvConfig {
    /// Number of nodes: 1 (single server) or 3 (JetStream cluster).
    pub nodes: usize,
    /// Backend selection.
    pub backend: BackendChoice,
    /// Server names, one per node; empty means `n1`, `n2`, ... Names may use
    /// ASCII letters, digits, `-` and `_`.
    pub server_names: Vec<String>,
    /// Cluster name (clusters only); `None` means `hs-<environment id>`.
    pub cluster_name: Option<String>,
    /// How long the servers may take to become ready once started (image
    /// building is not included).
    pub startup_timeout: Duration,
    /// Run JetStream with `sync_interval: always`: every node fsyncs its
    /// store on every write, so an acknowledged message survives a node
    /// losing power, at a cost in latency. `false` (the default) keeps
    /// nats-server's default of a sync every two minutes. nats-server has no
    /// flag for this, so the nodes get a small configuration file with `-c`
    /// (kept across the fault verbs); the servers' `/varz` then reports
    /// `jetstream.config.sync_always: true`.
    pub sync_always: bool,
    /// TLS on the client port (`None`, the default: plain text). A CA, a
    /// server certificate for `127.0.0.1`/`localhost` and a client
    /// certificate are generated at start (see [`security`]); clients find
    /// them through [`NatsEnv::security`]. Single-node environments only.
    pub tls: Option<ServerTls>,
    /// Users of an `authorization { users = [...] }` block, with passwords
    /// or generated NKeys and optional per-user permissions; empty (the
    /// default) means no authentication. Single-node environments only.
    pub users: Vec<NatsUser>,
    /// Docker backend, single node: run the container on the host's
    /// network (`--network host`), nats-server listening on 127.0.0.1 at
    /// the environment's ports itself, instead of on the environment's own
    /// Docker network with its ports published. Published loopback ports go
    /// through Docker's userland proxy, a `docker-proxy` process per port
    /// that copies every byte between two sockets (CPU and latency on every
    /// message, and a process outside the server whose CPU nobody counts);
    /// on the host network clients reach the server as they reach a local
    /// process. `false` (the default) keeps the own network.
    ///
    /// The price: there is no Docker network to detach the node from, so
    /// [`NatsEnv::partition`] and [`NatsEnv::heal`] return
    /// [`NatsError::Unsupported`] (every other fault verb works, and the
    /// store is kept as usual), and the engine must share this machine's
    /// network (a local Linux engine; a remote one or Docker Desktop's VM
    /// has its own). Clusters are refused with [`NatsError::InvalidConfig`]
    /// (their nodes route to each other by name over their network). The
    /// process backend ignores it: its servers are on the host anyway.
    pub host_network: bool,
    /// `GOMAXPROCS` for every node's nats-server: set in its environment
    /// (process backend) or the container's (Docker backend), and kept
    /// across the fault verbs. `None` (the default) leaves Go's own choice,
    /// one per CPU. Under load on a small machine a good part of the
    /// server's CPU can go to the Go scheduler spinning between its threads
    /// (nanosleep, futex); fewer may cost less. Must be at least 1; the
    /// servers' `/varz` reports it as `gomaxprocs`.
    pub gomaxprocs: Option<usize>,
}

impl Default for EnvConfig {
    fn default() -> Self {
        EnvConfig {
            nodes: 1,
            backend: BackendChoice::Auto,
            server_names: Vec::new(),
            cluster_name: None,
            startup_timeout: Duration::from_secs(60),
            sync_always: false,
            tls: None,
            users: Vec::new(),
            host_network: false,
            gomaxprocs: None,
        }
    }
}

impl EnvConfig {
    /// One server, default settings.
    pub fn single() -> Self {
        EnvConfig::default()
    }

    /// A 3-node JetStream cluster, default settings.
    pub fn cluster() -> Self {
        EnvConfig { nodes: CLUSTER_SIZE, ..EnvConfig::default() }
    }

    /// Sets the backend choice.
    pub fn with_backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the server names, one per node.
    pub fn with_server_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.server_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the name of a single server (shorthand for one-element
    /// [`EnvConfig::with_server_names`]).
    pub fn with_server_name(self, name: impl Into<String>) -> Self {
        self.with_server_names([name.into()])
    }

    /// Sets the cluster name.
    pub fn with_cluster_name(mut self, name: impl Into<String>) -> Self {
        self.cluster_name = Some(name.into());
        self
    }

    /// Sets the readiness deadline.
    pub fn with_startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Sets [`EnvConfig::sync_always`] (JetStream fsync on every write).
    pub fn with_sync_always(mut self, sync_always: bool) -> Self {
        self.sync_always = sync_always;
        self
    }

    /// Sets [`EnvConfig::tls`].
    pub fn with_tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets [`EnvConfig::users`].
    pub fn with_users(mut self, users: impl IntoIterator<Item = NatsUser>) -> Self {
        self.users = users.into_iter().collect();
        self
    }

    /// Sets [`EnvConfig::host_network`] (Docker backend, single node).
    pub fn with_host_network(mut self, host_network: bool) -> Self {
        self.host_network = host_network;
        self
    }

    /// Sets [`EnvConfig::gomaxprocs`].
    pub fn with_gomaxprocs(mut self, gomaxprocs: usize) -> Self {
        self.gomaxprocs = Some(gomaxprocs);
        self
    }

    /// Environment variables every server runs with.
    fn server_env(&self) -> Vec<(String, String)> {
        self.gomaxprocs.map(|n| ("GOMAXPROCS".to_owned(), n.to_string())).into_iter().collect()
    }

    /// Whether TLS or users are configured.
    fn secured(&self) -> bool {
        self.tls.is_some() || !self.users.is_empty()
    }

    /// Checks the configuration and returns the server names to use.
    fn resolved_names(&self) -> Result<Vec<String>, NatsError> {
        if self.secured() && self.nodes != 1 {
            return Err(NatsError::InvalidConfig("tls and users are supported on single-node environments only".into()));
        }
        if self.host_network && self.nodes != 1 {
            return Err(NatsError::InvalidConfig(
                "host_network is supported on single-node environments only: cluster nodes \
                 route to each other over their own docker network"
                    .into(),
            ));
        }
        if self.nodes != 1 && self.nodes != CLUSTER_SIZE {
            return Err(NatsError::InvalidConfig(format!("unsupported node count {}: expected 1 or {CLUSTER_SIZE}", self.nodes)));
        }
        if self.gomaxprocs == Some(0) {
            return Err(NatsError::InvalidConfig("gomaxprocs must be at least 1".into()));
        }
        if self.startup_timeout.is_zero() {
            return Err(NatsError::InvalidConfig("startup timeout must not be zero".into()));
        }
        if self.server_names.is_empty() {
            return Ok((1..=self.nodes).map(|i| format!("n{i}")).collect());
        }
        if self.server_names.len() != self.nodes {
            return Err(NatsError::InvalidConfig(format!("{} server names given for {} nodes", self.server_names.len(), self.nodes)));
        }
        for (i, name) in self.server_names.iter().enumerate() {
            let valid = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(NatsError::InvalidConfig(format!("invalid server name {name:?}: use 1-64 ascii letters, digits, '-' or '_'")));
            }
            if self.server_names[..i].contains(name) {
                return Err(NatsError::InvalidConfig(format!("duplicate server name {name:?}")));
            }
        }
        if let Some(cluster) = &self.cluster_name {
            if cluster.is_empty() || cluster.chars().any(|c| c.is_whitespace()) {
                return Err(NatsError::InvalidConfig(format!("invalid cluster name {cluster:?}")));
            }
        }
        Ok(self.server_names.clone())
    }
}

/// Ports and name of one node, as planned before it starts.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    pub(crate) name: String,
    /// Host port for clients.
    pub(crate) client_port: u16,
    /// Host port for monitoring.
    pub(crate) monitoring_port: u16,
    /// Host port for routes (process clusters only; containers route over
    /// their network).
    pub(crate) cluster_port: Option<u16>,
}

/// One server of a [`NatsEnv`].
#[derive(Debug)]
pub struct NatsNode {
    name: String,
    client_port: u16,
    monitoring_port: u16,
    runtime: NodeRuntime,
    /// What the fault verbs did to the node last.
    state: std::sync::Mutex<NodeState>,
    /// Held for the whole of a fault verb, so verbs on one node never
    /// interleave.
    op: tokio::sync::Mutex<()>,
    /// How long a node may take to answer `/healthz` after starting.
    ready_timeout: Duration,
}

impl NatsNode {
    fn new(spec: NodeSpec, runtime: NodeRuntime, ready_timeout: Duration) -> NatsNode {
        NatsNode {
            name: spec.name,
            client_port: spec.client_port,
            monitoring_port: spec.monitoring_port,
            runtime,
            state: std::sync::Mutex::new(NodeState::Running),
            op: tokio::sync::Mutex::new(()),
            ready_timeout,
        }
    }
}

#[derive(Debug)]
enum NodeRuntime {
    Docker(Box<container::DockerNode>),
    Process(process::ProcessNode),
}

impl NatsNode {
    /// The server name (`--server_name`), e.g. `n1`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which backend runs this node.
    pub fn backend(&self) -> Backend {
        match self.runtime {
            NodeRuntime::Docker(_) => Backend::Docker,
            NodeRuntime::Process(_) => Backend::Process,
        }
    }

    /// `nats://127.0.0.1:<port>` for clients.
    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// The client port on 127.0.0.1 (stays the same across container or
    /// process restarts).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// `http://127.0.0.1:<port>`, the base of the monitoring endpoints.
    pub fn monitoring_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitoring_port)
    }

    /// The monitoring port on 127.0.0.1.
    pub fn monitoring_port(&self) -> u16 {
        self.monitoring_port
    }

    /// The container, for the Docker backend (stop, start, pause, ...).
    pub fn container(&self) -> Option<&ContainerAsync<GenericImage>> {
        match &self.runtime {
            NodeRuntime::Docker(d) => Some(&d.container),
            NodeRuntime::Process(_) => None,
        }
    }

    /// The container id, for the Docker backend.
    pub fn container_id(&self) -> Option<&str> {
        self.container().map(|c| c.id())
    }

    /// The container name (also its host name on the environment's
    /// network, if it has one), for the Docker backend.
    pub fn container_name(&self) -> Option<&str> {
        match &self.runtime {
            NodeRuntime::Docker(d) => Some(&d.container_name),
            NodeRuntime::Process(_) => None,
        }
    }

    /// The process id of the latest start, for the process backend (it
    /// changes when the node is started again).
    pub fn pid(&self) -> Option<u32> {
        match &self.runtime {
            NodeRuntime::Process(p) => Some(p.pid()),
            NodeRuntime::Docker(_) => None,
        }
    }

    /// The binary and arguments the process was started with, for the
    /// process backend; running them again (with `GOMAXPROCS` set as in
    /// [`EnvConfig::gomaxprocs`], if it is) restarts the node with the same
    /// ports and store.
    pub fn command_line(&self) -> Option<(&Path, &[String])> {
        match &self.runtime {
            NodeRuntime::Process(p) => Some((&p.binary, &p.args)),
            NodeRuntime::Docker(_) => None,
        }
    }

    /// The JetStream store directory on the host, for the process backend.
    pub fn store_dir(&self) -> Option<&Path> {
        match &self.runtime {
            NodeRuntime::Process(p) => Some(&p.store_dir),
            NodeRuntime::Docker(_) => None,
        }
    }

    /// The log file on the host, for the process backend.
    pub fn log_path(&self) -> Option<&Path> {
        match &self.runtime {
            NodeRuntime::Process(p) => Some(&p.log_path),
            NodeRuntime::Docker(_) => None,
        }
    }

    /// The last `lines` lines the server logged.
    pub async fn log_tail(&self, lines: usize) -> String {
        match &self.runtime {
            NodeRuntime::Docker(d) => d.log_tail(lines).await,
            NodeRuntime::Process(p) => p.log_tail(lines),
        }
    }

    async fn check_alive(&self) -> Result<(), NatsError> {
        match &self.runtime {
            NodeRuntime::Docker(d) => d.check_alive(&self.name).await,
            NodeRuntime::Process(p) => p.check_alive(&self.name),
        }
    }
}

/// A running NATS environment: one server or a JetStream cluster.
///
/// Dropping it tears everything down (this blocks briefly while Docker
/// removes containers).
#[derive(Debug)]
pub struct NatsEnv {
    id: String,
    backend: Backend,
    nodes: Vec<NatsNode>,
    network: Option<String>,
    cluster_name: Option<String>,
    workdir: Option<WorkDir>,
    /// [`EnvConfig::startup_timeout`], also the deadline of the fault verbs'
    /// readiness waits.
    ready_timeout: Duration,
    /// [`EnvConfig::sync_always`].
    sync_always: bool,
    /// Generated certificates and keys ([`EnvConfig::tls`], [`EnvConfig::users`]).
    security: Option<SecurityFiles>,
    /// The container runs on the host network ([`EnvConfig::host_network`]).
    host_network: bool,
}

impl NatsEnv {
    /// Starts one JetStream-enabled server (backend per
    /// `HARNESS_NATS_BACKEND`, default auto).
    pub async fn single() -> Result<NatsEnv, NatsError> {
        NatsEnv::start(EnvConfig::single()).await
    }

    /// Starts a 3-node JetStream cluster (backend per
    /// `HARNESS_NATS_BACKEND`, default auto).
    pub async fn cluster() -> Result<NatsEnv, NatsError> {
        NatsEnv::start(EnvConfig::cluster()).await
    }

    /// Starts the servers described by `config` and waits until they are
    /// ready: every `/healthz` answers 200 and, for a cluster, all nodes
    /// agree on a JetStream meta leader that sees every peer, and a
    /// throwaway in-memory stream with [`NatsEnv::replicas`] replicas
    /// (`HS_READY_<id>`) could be created and deleted, so callers can create
    /// replicated streams right away.
    pub async fn start(config: EnvConfig) -> Result<NatsEnv, NatsError> {
        // Clients of a TLS server need a crypto provider chosen before they connect.
        security::install_crypto_provider();
        let names = config.resolved_names()?;
        let backend = resolve_backend(config.backend).await?;
        let prepared = match backend {
            Backend::Docker => {
                let (image, reaped) = tokio::join!(ensure_image(), reap_leftovers());
                if let Err(e) = reaped {
                    tracing::warn!(error = %e, "could not check for leftover nats containers");
                }
                Prepared::Image(image?)
            }
            Backend::Process => Prepared::Binary(
                tokio::task::spawn_blocking(binary::locate)
                    .await
                    .map_err(|e| NatsError::io("binary lookup task failed", std::io::Error::other(e)))??,
            ),
        };

        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let result = match &prepared {
                Prepared::Image(image) => NatsEnv::start_docker(image, &names, &config).await,
                Prepared::Binary(binary) => NatsEnv::start_processes(binary, &names, &config).await,
            };
            match result {
                Ok(env) => {
                    let sync = if env.sync_always { "always" } else { "default" };
                    tracing::info!(
                        backend = %env.backend,
                        nodes = env.nodes.len(),
                        id = %env.id,
                        sync_interval = sync,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "nats environment ready in {:.2?} (jetstream sync_interval: {sync})",
                        started.elapsed()
                    );
                    return Ok(env);
                }
                Err(e) if attempt < START_ATTEMPTS && is_port_conflict(&e) => {
                    tracing::warn!(error = %e, attempt, "port taken while starting nats; retrying with new ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_docker(image: &ImageRef, names: &[String], config: &EnvConfig) -> Result<NatsEnv, NatsError> {
        let begun = Instant::now();
        let id = new_env_id();
        let cluster_name = cluster_name_for(&id, names, config);
        let ports = container::allocate_ports(2 * names.len())?;
        let security = generate_security(&id, config)?;
        let security_text = security.as_ref().map(|s| s.render(true));
        let files = match &security {
            Some(s) => s.container_files()?,
            None => Vec::new(),
        };
        let specs: Vec<NodeSpec> = names
            .iter()
            .zip(ports.chunks(2))
            .map(|(name, p)| NodeSpec { name: name.clone(), client_port: p[0], monitoring_port: p[1], cluster_port: None })
            .collect();
        let started = container::start(
            &id,
            image,
            &specs,
            cluster_name.as_deref(),
            server_config::render(config, security_text.as_deref()).as_deref(),
            &files,
            &config.server_env(),
            config.host_network,
            config.startup_timeout,
        )
        .await?;
        tracing::debug!(id = %id, "containers running after {:.2?}", begun.elapsed());
        let nodes = specs
            .into_iter()
            .zip(started)
            .map(|(spec, node)| NatsNode::new(spec, NodeRuntime::Docker(Box::new(node)), config.startup_timeout))
            .collect();
        let env = NatsEnv {
            network: (!config.host_network).then(|| container::network_name(&id)),
            id,
            backend: Backend::Docker,
            nodes,
            cluster_name,
            workdir: None,
            ready_timeout: config.startup_timeout,
            sync_always: config.sync_always,
            security,
            host_network: config.host_network,
        };
        env.wait_ready(config.startup_timeout).await?;
        Ok(env)
    }

    async fn start_processes(binary: &NatsBinary, names: &[String], config: &EnvConfig) -> Result<NatsEnv, NatsError> {
        let id = new_env_id();
        let cluster_name = cluster_name_for(&id, names, config);
        let workdir = WorkDir::create(std::env::temp_dir().join(format!("hs-nats-{id}")))?;
        let security = generate_security(&id, config)?;
        let security_text = security.as_ref().map(|s| s.render(false));
        let per_node = if cluster_name.is_some() { 3 } else { 2 };
        let ports = container::allocate_ports(per_node * names.len())?;
        let specs: Vec<NodeSpec> = names
            .iter()
            .zip(ports.chunks(per_node))
            .map(|(name, p)| NodeSpec { name: name.clone(), client_port: p[0], monitoring_port: p[1], cluster_port: p.get(2).copied() })
            .collect();
        let started = process::start(
            &binary.path,
            &workdir.0,
            &specs,
            cluster_name.as_deref(),
            server_config::render(config, security_text.as_deref()).as_deref(),
            &config.server_env(),
        )?;
        let nodes = specs
            .into_iter()
            .zip(started)
            .map(|(spec, node)| NatsNode::new(spec, NodeRuntime::Process(node), config.startup_timeout))
            .collect();
        let env = NatsEnv {
            id,
            backend: Backend::Process,
            nodes,
            network: None,
            cluster_name,
            workdir: Some(workdir),
            ready_timeout: config.startup_timeout,
            sync_always: config.sync_always,
            security,
            host_network: false,
        };
        env.wait_ready(config.startup_timeout).await?;
        Ok(env)
    }

    /// Polls until the environment is ready (see [`NatsEnv::start`]) or
    /// `timeout` passes. Fails early when a node has exited. Useful again
    /// after restarting nodes.
    ///
    /// Nodes a fault verb has taken down (any [`NodeState`] other than
    /// [`NodeState::Running`]) are left out: the others must be healthy
    /// and agree on a meta leader that sees them as current. The
    /// replicated-stream probe runs only while every node is up.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), NatsError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let http = ready::http_client();
        let up: Vec<&NatsNode> = self.nodes.iter().filter(|n| n.state() == NodeState::Running).collect();
        let all_up = up.len() == self.nodes.len();
        let targets: Vec<(String, String)> = up.iter().map(|n| (n.name.clone(), n.monitoring_url())).collect();
        let mut last_detail = String::new();
        let mut last_liveness_check: Option<Instant> = None;
        loop {
            let mut result = ready::check(&http, &targets).await;
            if result.is_ok() && self.nodes.len() > 1 && all_up {
                result = ready::probe_replicated_stream(&self.client_urls(), &self.id, self.replicas()).await;
            }
            let detail = match result {
                Ok(()) => return Ok(()),
                Err(detail) => detail,
            };
            // A node that exited will never become ready: fail early. (Not
            // on every poll, as that costs an engine call per container.)
            if last_liveness_check.is_none_or(|t| t.elapsed() >= LIVENESS_INTERVAL) {
                for node in &up {
                    node.check_alive().await?;
                }
                last_liveness_check = Some(Instant::now());
            }
            if detail != last_detail {
                tracing::debug!(id = %self.id, "nats not ready yet: {detail}");
                last_detail.clone_from(&detail);
            }
            if Instant::now() >= deadline {
                return Err(NatsError::NotReady { timeout, detail, log_tail: self.log_tails(10).await });
            }
            let interval = if started.elapsed() < FAST_POLL_PERIOD { FAST_POLL_INTERVAL } else { POLL_INTERVAL };
            tokio::time::sleep(interval).await;
        }
    }

    /// The last `lines` log lines of every node, each block headed by the
    /// node name.
    pub async fn log_tails(&self, lines: usize) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            text.push_str(&format!("--- {} ---\n{}\n", node.name, node.log_tail(lines).await));
        }
        text
    }

    /// Unique id of this environment (part of container, network and
    /// directory names).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The backend the servers run on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the nodes run JetStream with `sync_interval: always` (fsync
    /// on every write; see [`EnvConfig::sync_always`]) rather than
    /// nats-server's default.
    pub fn sync_always(&self) -> bool {
        self.sync_always
    }

    /// The nodes, in server-name order (`n1`, `n2`, ...).
    pub fn nodes(&self) -> &[NatsNode] {
        &self.nodes
    }

    /// The node with server name `name`.
    pub fn node(&self, name: &str) -> Option<&NatsNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Replica count streams should use: 1 for a single server, 3 for a
    /// cluster.
    pub fn replicas(&self) -> usize {
        if self.nodes.len() >= CLUSTER_SIZE {
            CLUSTER_SIZE
        } else {
            1
        }
    }

    /// `nats://127.0.0.1:<port>` per node; pass this to
    /// `async_nats::connect` (which takes a list, not a comma-separated
    /// string).
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsNode::client_url).collect()
    }

    /// The client URLs joined with commas, the form the `nats` CLI and most
    /// configuration files accept.
    pub fn client_url(&self) -> String {
        self.client_urls().join(",")
    }

    /// `http://127.0.0.1:<port>` per node.
    pub fn monitoring_urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsNode::monitoring_url).collect()
    }

    /// The Docker network of the environment (Docker backend only; `None`
    /// on the host network).
    pub fn network_name(&self) -> Option<&str> {
        self.network.as_deref()
    }

    /// Whether the container runs on the host's network
    /// ([`EnvConfig::host_network`]; always `false` on the process backend).
    pub fn host_network(&self) -> bool {
        self.host_network
    }

    /// The cluster name (clusters only).
    pub fn cluster_name(&self) -> Option<&str> {
        self.cluster_name.as_deref()
    }

    /// The temporary directory holding stores and logs (process backend
    /// only); deleted on drop.
    pub fn workdir(&self) -> Option<&Path> {
        self.workdir.as_ref().map(|w| w.0.as_path())
    }

    /// The generated certificates and keys, when the environment runs with
    /// [`EnvConfig::tls`] or [`EnvConfig::users`].
    pub fn security(&self) -> Option<&SecurityFiles> {
        self.security.as_ref()
    }

    /// Connects as `user` of [`EnvConfig::users`], over TLS with the
    /// generated CA (and client certificate, when the servers verify
    /// clients) if the environment runs with TLS.
    pub async fn connect_as(&self, user: &str) -> Result<async_nats::Client, NatsError> {
        let security =
            self.security.as_ref().ok_or_else(|| NatsError::InvalidConfig("connect_as: the environment has no tls or users".into()))?;
        if security.user(user).is_none() {
            return Err(NatsError::InvalidConfig(format!("connect_as: unknown user {user:?}")));
        }
        self.connect_with(security.client_options(user)?).await
    }

    /// Connects a client to all nodes, ignoring any servers the cluster
    /// might advertise (only the published loopback ports are reachable).
    pub async fn connect(&self) -> Result<async_nats::Client, NatsError> {
        self.connect_with(async_nats::ConnectOptions::new()).await
    }

    /// Like [`NatsEnv::connect`] with caller-provided options.
    pub async fn connect_with(&self, options: async_nats::ConnectOptions) -> Result<async_nats::Client, NatsError> {
        options
            .ignore_discovered_servers()
            .connect(self.client_urls())
            .await
            .map_err(|source| NatsError::Connect { url: self.client_url(), source })
    }
}

impl Drop for NatsEnv {
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        tracing::debug!(id = %self.id, backend = %self.backend, "tearing down nats environment");
        // testcontainers removes containers through the current tokio
        // runtime; provide one when dropped outside of any.
        if self.backend == Backend::Docker && tokio::runtime::Handle::try_current().is_err() {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _guard = runtime.enter();
                drop(nodes);
            } else {
                drop(nodes);
            }
        } else {
            drop(nodes);
        }
        // The containers are gone (their drop waits for the engine), so the
        // network can go. `workdir` is removed after this, once the
        // processes are gone.
        if let Some(network) = self.network.take() {
            container::remove_network_blocking(&network);
        }
    }
}

/// What a backend needs before nodes can start.
enum Prepared {
    Image(ImageRef),
    Binary(NatsBinary),
}

/// A directory removed (recursively) on drop.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(path: PathBuf) -> Result<Self, NatsError> {
        std::fs::create_dir_all(&path).map_err(|e| NatsError::io(format!("failed to create {}", path.display()), e))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "failed to remove nats work directory");
        }
    }
}

/// Generates the security files of `config` in a new temporary directory,
/// if it asks for TLS or users.
fn generate_security(id: &str, config: &EnvConfig) -> Result<Option<SecurityFiles>, NatsError> {
    if !config.secured() {
        return Ok(None);
    }
    let dir = std::env::temp_dir().join(format!("hs-nats-sec-{id}"));
    security::generate(dir, config.tls, &config.users).map(Some)
}

/// Turns a [`BackendChoice`] into the backend to use.
async fn resolve_backend(choice: BackendChoice) -> Result<Backend, NatsError> {
    let choice = match choice {
        BackendChoice::Auto => BackendChoice::from_env()?,
        explicit => explicit,
    };
    match choice {
        BackendChoice::Process => Ok(Backend::Process),
        BackendChoice::Docker => {
            container::available().await.map_err(NatsError::DockerUnavailable)?;
            Ok(Backend::Docker)
        }
        BackendChoice::Auto => match container::available().await {
            Ok(()) => Ok(Backend::Docker),
            Err(reason) => {
                tracing::warn!("docker is not available ({reason}); using local nats-server processes instead");
                Ok(Backend::Process)
            }
        },
    }
}

fn new_env_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

fn cluster_name_for(id: &str, names: &[String], config: &EnvConfig) -> Option<String> {
    (names.len() > 1).then(|| config.cluster_name.clone().unwrap_or_else(|| format!("hs-{id}")))
}

fn is_port_conflict(error: &NatsError) -> bool {
    container::is_port_conflict(error) || process::is_port_conflict(error)
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_choice_parses() {
        assert_eq!("Docker".parse::<BackendChoice>().unwrap(), BackendChoice::Docker);
        assert_eq!(" process ".parse::<BackendChoice>().unwrap(), BackendChoice::Process);
        assert_eq!("auto".parse::<BackendChoice>().unwrap(), BackendChoice::Auto);
        assert!("podman".parse::<BackendChoice>().is_err());
    }

    #[test]
    fn config_validation() {
        assert_eq!(EnvConfig::single().resolved_names().unwrap(), ["n1"]);
        assert_eq!(EnvConfig::cluster().resolved_names().unwrap(), ["n1", "n2", "n3"]);
        assert_eq!(EnvConfig::single().with_server_name("alpha").resolved_names().unwrap(), ["alpha"]);
        let bad = [
            EnvConfig { nodes: 2, ..EnvConfig::default() },
            EnvConfig::cluster().with_server_names(["a", "b"]),
            EnvConfig::cluster().with_server_names(["a", "b", "a"]),
            EnvConfig::single().with_server_name("has space"),
            EnvConfig::single().with_startup_timeout(Duration::ZERO),
            EnvConfig::single().with_gomaxprocs(0),
            EnvConfig::cluster().with_host_network(true),
        ];
        for config in bad {
            assert!(config.resolved_names().is_err(), "{config:?} accepted");
        }
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
