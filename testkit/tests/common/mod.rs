//! Shared helpers of the kit's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use nats_testkit::{EnvConfig, NatsEnv};

/// Logs to the test's captured output.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Starts NATS, logging how long it took.
pub async fn start_nats(config: EnvConfig) -> NatsEnv {
    init_tracing();
    let nodes = config.nodes;
    let started = Instant::now();
    let env = NatsEnv::start(config).await.unwrap_or_else(|e| panic!("starting {nodes} nats node(s) failed: {e}"));
    eprintln!("{} backend: {} node(s) ready in {:.2?}", env.backend(), env.node_count(), started.elapsed());
    env
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
