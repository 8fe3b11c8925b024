//! Shared helpers of the kit's integration tests.
#![allow(dead_code)]

use std::time::Instant;

use nats_testkit::{EnvConfig, NatsEnv};

// Not every test binary uses both.
#[allow(unused_imports)]
pub use nats_testkit::support::{eventually, init_tracing, TempDir};

/// Starts NATS, logging how long it took.
pub async fn start_nats(config: EnvConfig) -> NatsEnv {
    init_tracing();
    let nodes = config.nodes;
    let started = Instant::now();
    let env = NatsEnv::start(config).await.unwrap_or_else(|e| panic!("starting {nodes} nats node(s) failed: {e}"));
    eprintln!("{} backend: {} node(s) ready in {:.2?}", env.backend(), env.node_count(), started.elapsed());
    env
}
