//! Shared helpers of the harness's integration tests.
#![allow(dead_code)]

use std::time::Instant;

use harness::nats::EnvConfig;
use harness::{Environment, EnvironmentConfig};
use mock_worker::WorkerConfig;
use serde_json::{json, Value};

// Not every test binary uses both.
#[allow(unused_imports)]
pub use nats_testkit::support::{eventually, init_tracing, TempDir};

/// One NATS node, the processor, streams and `workers` in-process workers.
pub async fn single(workers: usize) -> Environment {
    start(EnvConfig::single(), workers, WorkerConfig::default()).await
}

/// Like [`single`] with custom worker settings.
pub async fn start(nats: EnvConfig, workers: usize, worker: WorkerConfig) -> Environment {
    init_tracing();
    Environment::start(EnvironmentConfig { nats, workers, worker, ..Default::default() }).await.expect("environment starts")
}

/// Starts NATS alone (no processor, workers or gateway), logging how long it took.
pub async fn start_nats(config: EnvConfig) -> harness::nats::NatsEnv {
    init_tracing();
    let nodes = config.nodes;
    let started = Instant::now();
    let env = harness::nats::NatsEnv::start(config).await.unwrap_or_else(|e| panic!("starting {nodes} nats node(s) failed: {e}"));
    eprintln!("{} backend: {} node(s) ready in {:.2?}", env.backend(), env.node_count(), started.elapsed());
    env
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
