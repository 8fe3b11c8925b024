//! The harness around the bridge: real NATS, the mock processor and workers, and the CLI.
//!
//! Map of the crate:
//! - [`nats`]: NATS servers in containers (image built locally) or local processes; one node
//!   or a 3-node JetStream cluster; readiness by the monitoring endpoint; cleanup on drop. The
//!   crate `nats-testkit`, re-exported under its old name.
//! - [`netfault`]: a TCP proxy between a client and NATS injecting latency, jitter and cuts
//!   (`nats_testkit::netfault`).
//! - [`client_security`]: the bridge's and workers' TLS and credential settings for the users
//!   of a secured [`nats`] environment.
//! - [`env`]: a whole environment (NATS + processor + streams + workers + bridge).
//! - [`cli`]: the `harness` command (`catalogue`, `up`, `demo`, `bench`).
//! - [`conform`]: the worker conformance kit, run against any worker program.
//! - [`defects`]: deliberately broken variants, and the scenario that catches each.
//! - [`demo`]: a seeded payment workload with invariant checks and a report.
//! - [`bench`]: bridge round trip beside raw async-nats, maximum sustainable rate, memory with
//!   10,000 calls in flight, NATS connections per bridge.
//! - [`scenario`]: scenario scripts, history, invariant checkers.
//! - [`schedule`]: the open-model schedule (intended send times from a rate and a duration)
//!   of the scenarios, the bench's rate ladder and the load test.
//! - [`stats`]: the latency percentiles of every report, the load test's included.
//! - [`store_bench`]: transitions per second of the gateway's attempt store.
//! - [`workers`]: mock-worker processes (spawn, kill, restart) for crash faults.

pub mod bench;
pub mod cli;
pub mod client_security;
pub mod conform;
pub mod defects;
pub mod demo;
pub mod env;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod store_bench;
pub mod workers;

pub use env::{Environment, EnvironmentConfig};
pub use nats_testkit as nats;
pub use nats_testkit::netfault;
