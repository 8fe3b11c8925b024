//! `gateway`: a Hyperswitch-like payments API over the NATS bridge.
//!
//! Map of the crate:
//! - [`model`]: attempt, intent and refund statuses with Hyperswitch's names.
//! - [`store`]: the durable attempt store (SQLite); every change a compare-and-set.
//! - [`service`]: the flows (authorize, capture, void, refund...), one `apply` path for replies.
//! - [`api`]: the HTTP routes, API keys, idempotency keys, validation.
//! - [`config`]: `[gateway]` TOML table.
//! - [`recovery`]: the stuck-payment recovery job.

pub mod api;
pub mod config;
pub mod model;
pub mod recovery;
pub mod service;
pub mod store;

use std::sync::Arc;

use nats_bridge::{Bridge, BridgeConfig};

/// A started gateway: state for the HTTP API plus its background tasks.
pub struct Running {
    /// Handler state.
    pub state: api::AppState,
    /// Recovery counters.
    pub recovery: Arc<recovery::RecoveryCounters>,
    /// Background tasks (recovery job), aborted on drop.
    tasks: tokio::task::JoinSet<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The bridge could not connect.
    #[error(transparent)]
    Bridge(#[from] nats_bridge::ConnectError),
}

/// Opens the store, connects the bridge and starts the recovery job.
pub async fn start(config: config::GatewayConfig, bridge: BridgeConfig) -> Result<Running, StartError> {
    let bridge = Bridge::connect(bridge).await?;
    start_with(config, bridge)
}

/// Like [`start`] over an existing bridge.
pub fn start_with(config: config::GatewayConfig, bridge: Bridge) -> Result<Running, StartError> {
    let store = Arc::new(store::Store::open(&config.database)?.with_defects(config.defects));
    let mut gateway = service::Gateway::new(store, bridge);
    gateway.recovery_without_asking = config.defects.recovery_without_asking;
    let gateway = Arc::new(gateway);
    let counters = Arc::new(recovery::RecoveryCounters::default());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(recovery::run(gateway.clone(), config.recovery.clone(), counters.clone()));
    if let Some(late) = gateway.bridge.late_replies() {
        tasks.spawn(service::apply_late_replies(gateway.clone(), late));
    }
    recovery::register_metrics(&gateway.bridge.metrics(), &counters);
    Ok(Running { state: api::AppState { gateway, api_keys: Arc::new(config.api_keys.into_iter().collect()) }, recovery: counters, tasks })
}
