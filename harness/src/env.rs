//! A whole environment: NATS, the mock processor, streams, workers and a bridge.
//!
//! Tests and the `harness up` command start one with [`Environment::start`]; everything stops
//! when it is dropped.

use std::net::SocketAddr;

use mock_processor::{Processor, ProcessorConfig};
use mock_worker::{WorkerConfig, WorkerHandle};
use nats_bridge::{Bridge, BridgeConfig};
use tokio::sync::oneshot;
use tracing::info;

use crate::nats::{EnvConfig, NatsEnv, NatsError};
use crate::netfault::ProxiedLink;

/// Why an environment could not start.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// NATS did not start.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The processor could not bind.
    #[error("cannot start the processor: {0}")]
    Processor(String),
    /// The bridge could not start or provision streams.
    #[error("bridge: {0}")]
    Bridge(String),
    /// A worker could not start.
    #[error("worker: {0}")]
    Worker(String),
    /// The gateway could not start.
    #[error("gateway: {0}")]
    Gateway(String),
    /// A fault proxy could not start or connect.
    #[error("fault proxy: {0}")]
    Proxy(String),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct EnvironmentConfig {
    /// One node or the 3-node cluster (streams get 3 replicas there).
    pub nats: EnvConfig,
    /// Bridge settings; `base_url` and `jetstream.replicas` are filled from the NATS servers.
    pub bridge: BridgeConfig,
    /// Template for every in-process worker; URLs are filled in.
    pub worker: WorkerConfig,
    /// In-process workers to start (0 for none, e.g. when workers run as processes).
    pub workers: usize,
    /// Processor settings.
    pub processor: ProcessorConfig,
    /// Which clients reach NATS through fault proxies (network latency and cuts).
    pub proxied: ProxiedLinks,
    /// Where the processor, the workers and the gateways run; the caller's runtime by default.
    pub placement: Placement,
}

/// The tokio runtimes the environment's roles run on. A role given its own runtime (with
/// named threads) can be measured apart from the others in one process: the load test reads
/// each thread's CPU time by its name to report what each role costs per request.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The processor's HTTP server.
    pub processor: Option<tokio::runtime::Handle>,
    /// In-process workers: their connections and tasks.
    pub workers: Option<tokio::runtime::Handle>,
    /// Gateways: their bridge connection, HTTP server and background jobs.
    pub gateways: Option<tokio::runtime::Handle>,
}

/// Runs `future` on `handle` when one is given (so everything it spawns lives there), else here.
async fn run_on<F>(handle: Option<&tokio::runtime::Handle>, future: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match handle {
        Some(h) => h.spawn(future).await.expect("a placed task panicked"),
        None => future.await,
    }
}

/// Which clients' links to NATS go through fault proxies ([`ProxiedLink`]). Off by default: a
/// proxy adds a hop, so only runs with network faults pay for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxiedLinks {
    /// Gateways started by [`Environment::start_gateway`] and friends.
    pub gateway: bool,
    /// In-process workers.
    pub workers: bool,
    /// Seeds the proxies' jitter.
    pub seed: u64,
}

impl Default for EnvironmentConfig {
    fn default() -> Self {
        EnvironmentConfig {
            nats: EnvConfig::default(),
            bridge: BridgeConfig::default(),
            worker: WorkerConfig::default(),
            workers: 1,
            processor: ProcessorConfig::default(),
            proxied: ProxiedLinks::default(),
            placement: Placement::default(),
        }
    }
}

/// A running environment.
pub struct Environment {
    /// The servers (dropped last: fields drop in declaration order, so workers and the bridge go first).
    workers: Vec<WorkerHandle>,
    /// The bridge under test.
    bridge: Bridge,
    /// The processor, in this process so its ledger can be read directly.
    processor: Processor,
    /// Where the processor listens.
    processor_addr: SocketAddr,
    /// Stops the processor's server.
    processor_stop: Option<oneshot::Sender<()>>,
    /// Worker settings, for starting more workers.
    worker_config: WorkerConfig,
    /// Bridge settings as used.
    bridge_config: BridgeConfig,
    /// The gateways' fault proxies, when asked for.
    gateway_link: Option<ProxiedLink>,
    /// The in-process workers' fault proxies, when asked for.
    workers_link: Option<ProxiedLink>,
    /// Where the roles run.
    placement: Placement,
    /// NATS.
    nats: NatsEnv,
}

impl Environment {
    /// Starts NATS, the processor, the bridge (streams provisioned) and the workers.
    pub async fn start(mut config: EnvironmentConfig) -> Result<Environment, EnvError> {
        let nats = NatsEnv::start(config.nats.clone()).await?;
        let processor = Processor::new(config.processor.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| EnvError::Processor(e.to_string()))?;
        let processor_addr = listener.local_addr().map_err(|e| EnvError::Processor(e.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = mock_processor::serve(listener, processor.clone(), async move {
            let _ = stopped.await;
        });
        match &config.placement.processor {
            Some(h) => drop(h.spawn(serve)),
            None => drop(tokio::spawn(serve)),
        }

        config.bridge.base_url = nats.client_url();
        config.bridge.jetstream.replicas = nats.replicas();
        let client = nats.connect().await?;
        let bridge = Bridge::with_client(client, config.bridge.clone()).await.map_err(|e| EnvError::Bridge(e.to_string()))?;
        bridge.ensure_streams().await.map_err(|e| EnvError::Bridge(e.to_string()))?;

        config.worker.nats_url = nats.client_url();
        config.worker.processor_url = format!("http://{processor_addr}");
        let link = |name: &'static str, wanted: bool| {
            let urls = nats.client_urls();
            let seed = config.proxied.seed ^ u64::from(name == "workers");
            async move {
                match wanted {
                    true => ProxiedLink::start_for_urls(name, &urls, seed).await.map(Some).map_err(|e| EnvError::Proxy(e.to_string())),
                    false => Ok(None),
                }
            }
        };
        let gateway_link = link("gateway", config.proxied.gateway).await?;
        let workers_link = link("workers", config.proxied.workers).await?;
        let mut env = Environment {
            workers: Vec::new(),
            bridge,
            processor,
            processor_addr,
            processor_stop: Some(stop),
            worker_config: config.worker,
            bridge_config: config.bridge,
            gateway_link,
            workers_link,
            placement: config.placement,
            nats,
        };
        for _ in 0..config.workers {
            env.start_worker().await?;
        }
        info!(nats = %env.nats.client_url(), processor = %env.processor_url(), workers = env.workers.len(), "environment ready");
        Ok(env)
    }

    /// Starts one more in-process worker with the environment's worker settings.
    pub async fn start_worker(&mut self) -> Result<&WorkerHandle, EnvError> {
        self.start_worker_with(self.worker_config.clone()).await
    }

    /// Starts one more in-process worker with custom settings (URLs are filled in).
    pub async fn start_worker_with(&mut self, mut config: WorkerConfig) -> Result<&WorkerHandle, EnvError> {
        config.nats_url = self.nats.client_url();
        config.processor_url = self.processor_url();
        config.name = format!("{}-{}", config.name, self.workers.len() + 1);
        let handle = match &self.placement.workers {
            None => {
                let client = match &self.workers_link {
                    Some(link) => link.connect().await.map_err(|e| EnvError::Proxy(e.to_string()))?,
                    None => self.nats.connect().await?,
                };
                mock_worker::start_with_client(client, config, self.bridge_config.naming()).await
            }
            Some(runtime) => {
                // Connected there too: the connection's own task runs where it was made.
                let (options, urls) = self.connector(self.workers_link.as_ref());
                let naming = self.bridge_config.naming();
                let started = run_on(Some(runtime), async move {
                    let client = connect(options, urls).await.map_err(EnvError::Worker)?;
                    Ok::<_, EnvError>(mock_worker::start_with_client(client, config, naming).await)
                });
                started.await?
            }
        }
        .map_err(|e| EnvError::Worker(e.to_string()))?;
        self.workers.push(handle);
        Ok(self.workers.last().expect("just pushed"))
    }

    /// How a client of a role connects, to be done on that role's runtime: through its fault
    /// proxies when it has them, else to the servers as [`NatsEnv::connect`] does.
    fn connector(&self, link: Option<&ProxiedLink>) -> (async_nats::ConnectOptions, Vec<String>) {
        match link {
            Some(link) => (link.connect_options(), link.urls()),
            None => (async_nats::ConnectOptions::new().ignore_discovered_servers(), self.nats.client_urls()),
        }
    }

    /// Where the roles run.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The bridge.
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// A second bridge on its own connection (own reply inbox), as another gateway instance.
    pub async fn new_bridge(&self) -> Result<Bridge, EnvError> {
        let client = self.nats.connect().await?;
        Bridge::with_client(client, self.bridge_config.clone()).await.map_err(|e| EnvError::Bridge(e.to_string()))
    }

    /// The bridge settings in use.
    pub fn bridge_config(&self) -> &BridgeConfig {
        &self.bridge_config
    }

    /// The processor (ledger, config).
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// The processor's base URL.
    pub fn processor_url(&self) -> String {
        format!("http://{}", self.processor_addr)
    }

    /// NATS.
    pub fn nats(&self) -> &NatsEnv {
        &self.nats
    }

    /// The running in-process workers.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// The fault proxies of a link, if this environment has them.
    pub fn link(&self, gateway: bool) -> Option<&ProxiedLink> {
        if gateway {
            self.gateway_link.as_ref()
        } else {
            self.workers_link.as_ref()
        }
    }

    /// Removes a worker (to kill or shut it down).
    pub fn take_worker(&mut self, index: usize) -> WorkerHandle {
        self.workers.remove(index)
    }
}

/// A gateway serving the HTTP API in this process.
pub struct GatewayHandle {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The running gateway (store, bridge, recovery counters).
    pub running: gateway::Running,
    /// Stops the HTTP server.
    stop: Option<oneshot::Sender<()>>,
    /// The server task.
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl GatewayHandle {
    /// Stops the server and the background tasks at once, as a kill would (nothing is
    /// flushed beyond what the store already committed).
    pub fn kill(mut self) {
        self.task.abort();
        self.stop.take();
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Environment {
    /// Starts a gateway on 127.0.0.1 (dynamic port) with its own bridge connection.
    pub async fn start_gateway(&self, config: gateway::config::GatewayConfig) -> Result<GatewayHandle, EnvError> {
        self.start_gateway_on("127.0.0.1:0", config).await
    }

    /// Starts a gateway listening on `addr`, with its own bridge connection.
    pub async fn start_gateway_on(&self, addr: &str, config: gateway::config::GatewayConfig) -> Result<GatewayHandle, EnvError> {
        self.start_gateway_with(addr, config, self.bridge_config.clone()).await
    }

    /// Starts a gateway on `addr` whose bridge uses `bridge_config` (e.g. short timeouts).
    pub async fn start_gateway_with(
        &self,
        addr: &str,
        config: gateway::config::GatewayConfig,
        bridge_config: BridgeConfig,
    ) -> Result<GatewayHandle, EnvError> {
        let client = match (&self.placement.gateways, &self.gateway_link) {
            (None, Some(link)) => Some(link.connect().await.map_err(|e| EnvError::Proxy(e.to_string()))?),
            (None, None) => Some(self.nats.connect().await?),
            // Connected on the gateways' runtime below.
            (Some(_), _) => None,
        };
        let (options, urls) = self.connector(self.gateway_link.as_ref());
        let addr = addr.to_string();
        run_on(self.placement.gateways.as_ref(), async move {
            let client = match client {
                Some(c) => c,
                None => connect(options, urls).await.map_err(EnvError::Gateway)?,
            };
            let bridge = Bridge::with_client(client, bridge_config).await.map_err(|e| EnvError::Bridge(e.to_string()))?;
            let running = gateway::start_with(config, bridge).map_err(|e| EnvError::Gateway(e.to_string()))?;
            let listener =
                tokio::net::TcpListener::bind(&addr).await.map_err(|e| EnvError::Gateway(format!("cannot listen on {addr}: {e}")))?;
            let url = format!("http://{}", listener.local_addr().map_err(|e| EnvError::Gateway(e.to_string()))?);
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(gateway::api::serve(listener, running.state.clone(), async move {
                let _ = stopped.await;
            }));
            Ok(GatewayHandle { url, running, stop: Some(stop), task })
        })
        .await
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        if let Some(stop) = self.processor_stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Connects with `options` to `urls` (see [`Environment::connector`]).
async fn connect(options: async_nats::ConnectOptions, urls: Vec<String>) -> Result<async_nats::Client, String> {
    let first = urls.first().cloned().unwrap_or_default();
    options.connect(urls).await.map_err(|e| format!("cannot connect to nats at {first}: {e}"))
}
