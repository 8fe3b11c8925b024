//! What the bridge's own end-to-end tests run against: one real NATS node (from
//! `nats-testkit`), the mock processor, the streams, in-process mock workers and a bridge.
//! Everything stops on drop.
#![allow(dead_code)]

use mock_processor::{Processor, ProcessorConfig, Served};
use mock_worker::{WorkerConfig, WorkerHandle};
use nats_bridge::{Bridge, BridgeConfig};
use nats_testkit::{EnvConfig, NatsEnv};
use serde_json::{json, Value};

// Not every test binary uses both.
#[allow(unused_imports)]
pub use nats_testkit::support::{eventually, init_tracing, sample, TempDir};

/// NATS, the processor, the workers and a bridge. Fields drop in order: workers first.
pub struct TestEnv {
    /// The workers serving every operation.
    workers: Vec<WorkerHandle>,
    /// The bridge under test, connected to `nats`.
    bridge: Bridge,
    /// The processor, in this process so its ledger can be read directly; stops on drop.
    processor: Served,
    /// The settings of `bridge` (URL and replicas of these servers), for more bridges.
    bridge_config: BridgeConfig,
    /// The settings more workers start with.
    worker: WorkerConfig,
    /// NATS, dropped last.
    nats: NatsEnv,
}

/// One NATS node, the processor, the streams and `workers` in-process workers.
pub async fn single(workers: usize) -> TestEnv {
    start(workers, WorkerConfig::default()).await
}

/// Like [`single`] with custom worker settings (the URLs are filled in).
pub async fn start(workers: usize, worker: WorkerConfig) -> TestEnv {
    start_on(EnvConfig::single(), workers, worker).await
}

/// Like [`start`] on the given NATS (a single node or a cluster; streams get its replica count).
pub async fn start_on(nats: EnvConfig, workers: usize, worker: WorkerConfig) -> TestEnv {
    init_tracing();
    let nats = NatsEnv::start(nats).await.expect("nats starts");
    let processor = mock_processor::spawn(ProcessorConfig::default()).await.expect("processor starts");
    let mut bridge_config = BridgeConfig { base_url: nats.client_url(), ..Default::default() };
    bridge_config.jetstream.replicas = nats.replicas();
    let bridge = Bridge::with_client(nats.connect().await.expect("connect"), bridge_config.clone()).await.expect("bridge");
    bridge.ensure_streams().await.expect("streams");
    let worker = WorkerConfig { nats_url: nats.client_url(), processor_url: processor.url.clone(), ..worker };
    let mut env = TestEnv { workers: Vec::new(), bridge, processor, bridge_config, worker, nats };
    for _ in 0..workers {
        env.start_worker().await.expect("worker starts");
    }
    env
}

impl TestEnv {
    /// The bridge every test shares.
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// A second bridge on its own connection, with the given settings.
    pub async fn bridge_with(&self, config: BridgeConfig) -> Bridge {
        Bridge::with_client(self.nats.connect().await.expect("connect"), config).await.expect("bridge")
    }

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
}

/// Router data with an amount, a currency and a test card (body only).
pub fn money(amount: i64) -> Value {
    json!({
        "amount": amount,
        "currency": "USD",
        "capture_method": "manual",
        "payment_method": { "card": { "number": "4242424242424242", "cvc": "123", "expiry": "12/30" } }
    })
}
