//! The Docker backend: one container per node, through testcontainers.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use testcontainers::bollard::models::MountVolumeOptions;
use testcontainers::bollard::models::{NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest};
use testcontainers::bollard::query_parameters::{KillContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use testcontainers::core::{IntoContainerPort, Mount};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, CopyTargetOptions, GenericImage, ImageExt};

use super::docker::{engine, ENV_LABEL};
use super::image::ImageRef;
use super::{ports, reaper, server_config, NatsError, NodeSpec};

/// Client port inside the container.
pub const CLIENT_PORT: u16 = 4222;
/// Route (cluster) port inside the container.
pub const CLUSTER_PORT: u16 = 6222;
/// Monitoring port inside the container.
pub const MONITORING_PORT: u16 = 8222;
/// JetStream store directory inside the container. Every container gets an
/// anonymous Docker volume mounted here (a plain directory under the
/// engine's data root, labelled like the container), not a directory of
/// the container's overlay filesystem (slow copy-on-write; here even
/// fuse-overlayfs). The volume belongs to the container: it stays across
/// stop, kill and start, and goes when the container is removed (with
/// `v`, as testcontainers and the [`reaper`] remove them).
pub const STORE_DIR: &str = "/data";

/// Whether a Docker engine is usable: the `docker` cli is installed (it
/// builds the image) and the engine answers a ping. `Err` says why not.
pub(crate) async fn available() -> Result<(), String> {
    let on_path = std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join("docker").is_file())).unwrap_or(false);
    if !on_path {
        return Err("the docker cli is not installed (not found in PATH)".into());
    }
    let client = testcontainers::core::client::docker_client_instance().await.map_err(|e| format!("cannot create a docker client: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(5), client.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the docker engine does not answer: {e}")),
        Err(_) => Err("the docker engine did not answer a ping within 5s".into()),
    }
}

/// Why a container on the host network cannot be partitioned.
pub(crate) const HOST_NETWORK_PARTITION: &str = "the container runs on the host network \
     (EnvConfig::host_network), so there is no docker network to detach it from; \
     start the environment without host_network to cut a node off";

/// A node running in a container.
pub(crate) struct DockerNode {
    pub(crate) container: ContainerAsync<GenericImage>,
    pub(crate) container_name: String,
    /// Runs on the host's network (see [`start`]), not the environment's.
    pub(crate) host_network: bool,
}

impl std::fmt::Debug for DockerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerNode")
            .field("container_id", &self.container.id())
            .field("container_name", &self.container_name)
            .field("host_network", &self.host_network)
            .finish()
    }
}

impl DockerNode {
    /// `Err` when the container is no longer running.
    pub(crate) async fn check_alive(&self, node: &str) -> Result<(), NatsError> {
        let running =
            self.container.is_running().await.map_err(|e| NatsError::container(format!("failed to inspect container of {node}"), e))?;
        if running {
            return Ok(());
        }
        let status = match self.container.exit_code().await {
            Ok(Some(code)) => format!("container exited with code {code}"),
            _ => "container is not running".to_owned(),
        };
        Err(NatsError::NodeExited { node: node.to_owned(), status, log_tail: self.log_tail(20).await })
    }

    /// Stops the container: SIGTERM, then SIGKILL after `grace`. Returns
    /// when the engine reports it stopped.
    pub(crate) async fn stop(&self, node: &str, grace: Duration) -> Result<(), NatsError> {
        let seconds = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
        self.container
            .stop_with_timeout(Some(seconds))
            .await
            .map_err(|e| NatsError::container(format!("failed to stop the container of {node}"), e))
    }

    /// Starts the stopped container again (same container, so the same
    /// published ports and the same `/data`).
    pub(crate) async fn start(&self, node: &str) -> Result<(), NatsError> {
        self.container.start().await.map_err(|e| NatsError::container(format!("failed to start the container of {node}"), e))
    }

    /// Sends SIGKILL to the container's process (`docker kill`).
    pub(crate) async fn kill(&self, node: &str) -> Result<(), NatsError> {
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        engine()
            .await?
            .kill_container(self.container.id(), Some(options))
            .await
            .map_err(|source| NatsError::DockerApi { context: format!("failed to kill the container of {node}"), source })
    }

    /// Freezes the container (`docker pause`, the cgroup freezer).
    pub(crate) async fn pause(&self, node: &str) -> Result<(), NatsError> {
        self.container.pause().await.map_err(|e| NatsError::container(format!("failed to pause the container of {node}"), e))
    }

    /// Thaws a paused container.
    pub(crate) async fn unpause(&self, node: &str) -> Result<(), NatsError> {
        self.container.unpause().await.map_err(|e| NatsError::container(format!("failed to unpause the container of {node}"), e))
    }

    /// Detaches the container from `network` (`docker network disconnect`).
    /// Refused on the host network: detaching a container from `host`
    /// would not cut it off, the engine refuses it anyway.
    pub(crate) async fn disconnect(&self, node: &str, network: &str) -> Result<(), NatsError> {
        self.refuse_on_host_network("disconnect")?;
        let request = NetworkDisconnectRequest { container: self.container.id().to_owned(), force: Some(true) };
        engine().await?.disconnect_network(network, request).await.map_err(|source| NatsError::DockerApi {
            context: format!("failed to disconnect the container of {node} from {network}"),
            source,
        })
    }

    /// Attaches the container to `network` again (`docker network connect`).
    /// Refused on the host network, like [`DockerNode::disconnect`].
    pub(crate) async fn connect(&self, node: &str, network: &str) -> Result<(), NatsError> {
        self.refuse_on_host_network("connect")?;
        let request = NetworkConnectRequest { container: self.container.id().to_owned(), endpoint_config: None };
        engine()
            .await?
            .connect_network(network, request)
            .await
            .map_err(|source| NatsError::DockerApi { context: format!("failed to connect the container of {node} to {network}"), source })
    }

    fn refuse_on_host_network(&self, verb: &'static str) -> Result<(), NatsError> {
        if self.host_network {
            return Err(NatsError::Unsupported { verb, backend: super::Backend::Docker, reason: HOST_NETWORK_PARTITION });
        }
        Ok(())
    }

    /// What the engine says about the container now.
    pub(crate) async fn inspect(&self, node: &str) -> Result<ContainerFacts, NatsError> {
        let info = engine()
            .await?
            .inspect_container(self.container.id(), None)
            .await
            .map_err(|source| NatsError::DockerApi { context: format!("failed to inspect the container of {node}"), source })?;
        let state = info.state.unwrap_or_default();
        Ok(ContainerFacts {
            running: state.running.unwrap_or(false),
            paused: state.paused.unwrap_or(false),
            networks: info.network_settings.and_then(|n| n.networks).map(|n| n.into_keys().collect()).unwrap_or_default(),
        })
    }

    /// The last `lines` lines the server logged (nats-server logs to stderr).
    pub(crate) async fn log_tail(&self, lines: usize) -> String {
        match self.container.stderr_to_vec().await {
            Ok(bytes) => super::tail(&String::from_utf8_lossy(&bytes), lines),
            Err(e) => format!("(logs unavailable: {e})"),
        }
    }
}

/// The parts of `docker inspect` the fault verbs check.
#[derive(Debug, Clone)]
pub(crate) struct ContainerFacts {
    /// The container's process runs (also while it is paused).
    pub(crate) running: bool,
    /// The container is frozen.
    pub(crate) paused: bool,
    /// Names of the networks the container is attached to.
    pub(crate) networks: Vec<String>,
}

/// Names derived from the environment id.
pub(crate) fn network_name(env_id: &str) -> String {
    format!("hs-nats-{env_id}")
}

fn container_name(env_id: &str, server_name: &str) -> String {
    format!("hs-nats-{env_id}-{server_name}")
}

/// Starts one container per node on the environment's own network (created
/// here, labelled like the containers; the caller removes it, see
/// [`remove_network_blocking`]), with the client and monitoring ports
/// published on 127.0.0.1 at the host ports in `specs` and the store on an
/// anonymous volume (see [`STORE_DIR`]).
///
/// With `host_network` (a single node only) no network is created: the
/// container runs on the host's network namespace (`--network host`) and
/// nats-server itself listens on 127.0.0.1 at the host ports in `specs`,
/// with nothing published. Published ports reach the container through
/// Docker's userland proxy (a `docker-proxy` process per port copying
/// every byte between two sockets); on the host network clients reach the
/// server as they reach a local process.
///
/// With
/// `server_config`, that text is copied into every container at
/// [`server_config::CONTAINER_PATH`] before it starts and passed with `-c`;
/// it stays there across stop and start; so do `files` (path in the
/// container, contents: certificates and keys the configuration names).
/// `env` is set in every container's environment. Readiness is not awaited
/// here.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    env_id: &str,
    image: &ImageRef,
    specs: &[NodeSpec],
    cluster_name: Option<&str>,
    server_config: Option<&str>,
    files: &[(String, Vec<u8>)],
    env: &[(String, String)],
    host_network: bool,
    startup_timeout: Duration,
) -> Result<Vec<DockerNode>, NatsError> {
    if host_network && (specs.len() != 1 || cluster_name.is_some()) {
        return Err(NatsError::InvalidConfig("host_network is supported on single-node environments only".into()));
    }
    let network = network_name(env_id);
    let owner_labels = reaper::owner_labels();
    if !host_network {
        create_network(&network, env_id, &owner_labels).await?;
    }

    let mut volume_labels: HashMap<String, String> = owner_labels.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    volume_labels.insert(ENV_LABEL.to_owned(), env_id.to_owned());

    let starts = specs.iter().map(|spec| {
        let name = container_name(env_id, &spec.name);
        let volume_labels = volume_labels.clone();
        // Routes to the other nodes only: listing a node's own address makes
        // it dial itself, and the resulting route churn regularly made the
        // first meta leader election fail (costing a 4-9s election timeout).
        let routes = specs
            .iter()
            .filter(|other| other.name != spec.name)
            .map(|other| format!("nats://{}:{CLUSTER_PORT}", container_name(env_id, &other.name)))
            .collect::<Vec<_>>()
            .join(",");
        // On the host network the server binds the host ports itself, on
        // loopback only (`--addr` also applies to the monitoring port).
        let (client_port, monitoring_port) = match host_network {
            true => (spec.client_port, spec.monitoring_port),
            false => (CLIENT_PORT, MONITORING_PORT),
        };
        let mut cmd: Vec<String> = [
            "--jetstream",
            "--store_dir",
            STORE_DIR,
            "--port",
            &client_port.to_string(),
            "--http_port",
            &monitoring_port.to_string(),
            "--server_name",
            &spec.name,
        ]
        .map(String::from)
        .to_vec();
        if host_network {
            cmd.extend(["--addr", "127.0.0.1"].map(String::from));
        }
        if server_config.is_some() {
            cmd.extend(["-c", server_config::CONTAINER_PATH].map(String::from));
        }
        if let Some(cluster_name) = cluster_name {
            cmd.extend(
                [
                    "--cluster",
                    &format!("nats://0.0.0.0:{CLUSTER_PORT}"),
                    "--cluster_name",
                    cluster_name,
                    "--routes",
                    &routes,
                    "--no_advertise",
                ]
                .map(String::from),
            );
        }
        let mut request = GenericImage::new(image.name.as_str(), image.tag.as_str())
            .with_cmd(cmd)
            .with_container_name(name.clone())
            .with_network(if host_network { "host".to_owned() } else { network.clone() })
            .with_label(ENV_LABEL, env_id)
            .with_labels(owner_labels.iter().cloned())
            .with_label("hs.nats.server", spec.name.clone())
            // An empty volume name makes the engine create an anonymous
            // volume, removed with the container.
            .with_mount(Mount::volume_mount("", STORE_DIR));
        if !host_network {
            request =
                request.with_mapped_port(spec.client_port, CLIENT_PORT.tcp()).with_mapped_port(spec.monitoring_port, MONITORING_PORT.tcp());
        }
        request = request
            .with_host_config_modifier(move |host_config| {
                if host_network {
                    // Nothing to publish (testcontainers would ask the
                    // engine to publish every exposed port).
                    host_config.publish_all_ports = Some(false);
                    host_config.port_bindings = None;
                }
                // Publish on loopback only.
                if let Some(bindings) = host_config.port_bindings.as_mut() {
                    for binding in bindings.values_mut().flatten().flatten() {
                        binding.host_ip = Some("127.0.0.1".into());
                    }
                }
                // Label the store volume like the container, so the reaper
                // finds it should it ever outlive its container.
                for mount in host_config.mounts.iter_mut().flatten() {
                    if mount.target.as_deref() == Some(STORE_DIR) {
                        mount.volume_options = Some(MountVolumeOptions { labels: Some(volume_labels.clone()), ..Default::default() });
                    }
                }
            })
            .with_startup_timeout(startup_timeout);
        for (key, value) in env {
            request = request.with_env_var(key.as_str(), value.as_str());
        }
        if let Some(text) = server_config {
            request =
                request.with_copy_to(CopyTargetOptions::new(server_config::CONTAINER_PATH).with_mode(0o644), text.as_bytes().to_vec());
        }
        for (path, bytes) in files {
            request = request.with_copy_to(CopyTargetOptions::new(path.as_str()).with_mode(0o644), bytes.clone());
        }
        async move {
            match request.start().await {
                Ok(container) => Ok(DockerNode { container, container_name: name, host_network }),
                Err(e) => {
                    // A container that was created but failed to start is
                    // not owned by anything yet: remove it by name.
                    remove_by_name(&name).await;
                    Err(NatsError::container(format!("failed to start container {name}"), e))
                }
            }
        }
    });

    let mut nodes = Vec::with_capacity(specs.len());
    let mut first_error = None;
    for result in join_all(starts).await {
        match result {
            Ok(node) => nodes.push(node),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => {
            // Dropping the started containers removes them; then the
            // network can go.
            drop(nodes);
            if !host_network {
                remove_network(&network).await;
            }
            Err(e)
        }
        None => Ok(nodes),
    }
}

/// Creates the environment's network with the environment and owner
/// labels. testcontainers then finds it existing and leaves its removal to
/// us (it would create an unlabelled one otherwise).
async fn create_network(name: &str, env_id: &str, owner_labels: &[(&'static str, String)]) -> Result<(), NatsError> {
    let mut labels: HashMap<String, String> = owner_labels.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    labels.insert(ENV_LABEL.to_owned(), env_id.to_owned());
    let request = NetworkCreateRequest { name: name.to_owned(), labels: Some(labels), ..Default::default() };
    engine()
        .await?
        .create_network(request)
        .await
        .map_err(|source| NatsError::DockerApi { context: format!("failed to create network {name}"), source })?;
    Ok(())
}

async fn remove_network(name: &str) {
    let Ok(client) = testcontainers::core::client::docker_client_instance().await else {
        return;
    };
    if let Err(e) = client.remove_network(name).await {
        tracing::warn!(network = name, error = %e, "network not removed after failed start");
    }
}

/// Removes the network `name` from a `Drop` (no async available there) with
/// `docker network rm`, once its containers are gone. Failures are logged;
/// a network left behind is removed by a later run's reaper.
pub(crate) fn remove_network_blocking(name: &str) {
    let output = std::process::Command::new("docker").args(["network", "rm", name]).stdin(std::process::Stdio::null()).output();
    match output {
        Ok(o) if o.status.success() => {}
        Ok(o) => tracing::warn!(network = name, "failed to remove nats network: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => tracing::warn!(network = name, error = %e, "failed to run docker network rm"),
    }
}

async fn remove_by_name(name: &str) {
    let Ok(client) = testcontainers::core::client::docker_client_instance().await else {
        return;
    };
    let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
    if let Err(e) = client.remove_container(name, Some(options)).await {
        tracing::debug!(container = name, error = %e, "container not removed after failed start");
    }
}

/// Whether a start failure was a host port taken by someone else.
pub(crate) fn is_port_conflict(error: &NatsError) -> bool {
    let text = match error {
        NatsError::Container { source, .. } => source.to_string(),
        _ => return false,
    }
    .to_ascii_lowercase();
    text.contains("port is already allocated") || text.contains("address already in use")
}

pub(crate) fn allocate_ports(count: usize) -> Result<Vec<u16>, NatsError> {
    ports::free_ports(count).map_err(|e| NatsError::io("failed to pick free ports", e))
}
