//! What the gateway's own tests run against: one real NATS node (from `nats-testkit`), the
//! mock processor, the streams and in-process workers, and gateways started on a dynamic port.
//! Everything stops on drop.
#![allow(dead_code)]

use gateway::config::GatewayConfig;
use mock_processor::{Processor, ProcessorConfig, Served};
use mock_worker::{WorkerConfig, WorkerHandle};
use nats_bridge::{Bridge, BridgeConfig};
use nats_testkit::{EnvConfig, NatsEnv};
use tokio::sync::oneshot;

// Not every test binary uses both.
#[allow(unused_imports)]
pub use nats_testkit::support::{eventually, init_tracing, sample, TempDir};

/// NATS, the processor and the workers a gateway needs. Fields drop in order: workers first.
pub struct TestEnv {
    /// The workers serving every operation.
    workers: Vec<WorkerHandle>,
    /// The processor, in this process so its ledger can be read directly; stops on drop.
    processor: Served,
    /// The bridge settings gateways get (URL and replicas of these servers).
    bridge_config: BridgeConfig,
    /// The settings more workers start with.
    worker: WorkerConfig,
    /// NATS, dropped last.
    nats: NatsEnv,
}

/// A running gateway; stops on drop.
pub struct GatewayHandle {
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// The gateway's state (store, bridge) and recovery job.
    pub running: gateway::Running,
    /// Stops the HTTP server.
    stop: Option<oneshot::Sender<()>>,
    /// The HTTP server's task.
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

/// One NATS node, the processor, the streams and `workers` in-process workers.
pub async fn single(workers: usize) -> TestEnv {
    start(workers, WorkerConfig::default()).await
}

/// Like [`single`] with custom worker settings (the URLs are filled in).
pub async fn start(workers: usize, worker: WorkerConfig) -> TestEnv {
    init_tracing();
    let nats = NatsEnv::start(EnvConfig::single()).await.expect("nats starts");
    let processor = mock_processor::spawn(ProcessorConfig::default()).await.expect("processor starts");
    let mut bridge_config = BridgeConfig { base_url: nats.client_url(), ..Default::default() };
    bridge_config.jetstream.replicas = nats.replicas();
    let bridge = Bridge::with_client(nats.connect().await.expect("connect"), bridge_config.clone()).await.expect("bridge");
    bridge.ensure_streams().await.expect("streams");
    let worker = WorkerConfig { nats_url: nats.client_url(), processor_url: processor.url.clone(), ..worker };
    let mut env = TestEnv { workers: Vec::new(), processor, bridge_config, worker, nats };
    for _ in 0..workers {
        env.start_worker().await.expect("worker starts");
    }
    env
}

impl TestEnv {
    /// The processor (its ledger and accounts).
    pub fn processor(&self) -> &Processor {
        &self.processor.processor
    }

    /// NATS.
    pub fn nats(&self) -> &NatsEnv {
        &self.nats
    }

    /// The bridge settings of this environment.
    pub fn bridge_config(&self) -> &BridgeConfig {
        &self.bridge_config
    }

    /// The running workers (their fault knobs).
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// Starts one more in-process worker.
    pub async fn start_worker(&mut self) -> Result<&WorkerHandle, String> {
        let handle = mock_worker::start(self.worker.clone(), self.bridge_config.naming()).await.map_err(|e| e.to_string())?;
        self.workers.push(handle);
        Ok(self.workers.last().expect("just pushed"))
    }

    /// Starts a gateway on 127.0.0.1 (dynamic port) with its own bridge connection.
    pub async fn start_gateway(&self, config: GatewayConfig) -> Result<GatewayHandle, String> {
        self.start_gateway_with("127.0.0.1:0", config, self.bridge_config.clone()).await
    }

    /// Starts a gateway on `addr` whose bridge uses `bridge_config` (e.g. short timeouts).
    pub async fn start_gateway_with(
        &self,
        addr: &str,
        config: GatewayConfig,
        bridge_config: BridgeConfig,
    ) -> Result<GatewayHandle, String> {
        let client = self.nats.connect().await.map_err(|e| e.to_string())?;
        let bridge = Bridge::with_client(client, bridge_config).await.map_err(|e| e.to_string())?;
        let running = gateway::start_with(config, bridge).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| e.to_string())?;
        let url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::api::serve(listener, running.state.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(GatewayHandle { url, running, stop: Some(stop), task })
    }
}
