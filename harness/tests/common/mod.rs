//! Shared helpers of the harness's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use harness::nats::EnvConfig;
use harness::{Environment, EnvironmentConfig};
use mock_worker::WorkerConfig;
use serde_json::{json, Value};

/// Logs to the test's captured output.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

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

/// Polls `check` until it returns `Some` or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A directory removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new, empty, uniquely named directory.
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("hs-{name}-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
