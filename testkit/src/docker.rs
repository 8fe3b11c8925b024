//! What the Docker backend's containers and the [`reaper`](super::reaper) of their leftovers
//! share: the engine client and the label that marks every object of an environment. A
//! module of its own, so that neither imports the other for it.

use super::NatsError;

/// Label put on every container and network (value: the environment id),
/// so leftovers of killed runs can be found with
/// `docker ps -a --filter label=hs.nats.env`. Next to it, the owner labels
/// of [`reaper`](super::reaper) let later runs remove leftovers whose
/// process is gone.
pub const ENV_LABEL: &str = "hs.nats.env";

/// The Docker engine client testcontainers uses.
pub(crate) async fn engine() -> Result<testcontainers::bollard::Docker, NatsError> {
    testcontainers::core::client::docker_client_instance()
        .await
        .map_err(|e| NatsError::DockerUnavailable(format!("cannot create a docker client: {e}")))
}
