//! `mock-worker`: serves every bridge operation against the mock processor.
//!
//! Map of the crate:
//! - [`config`]: `[worker]` TOML table + `WORKER_*` env.
//! - [`profile`]: seeded latency / decline / error draws.
//! - [`store`]: results by idempotency key in a JetStream key-value bucket.
//! - [`crash`]: crash points (`crash_at`): the process kills itself, for chaos scenarios.
//! - [`handler`]: idempotency first, then the processor; fault knobs for tests.
//! - [`runner`]: consumers, subscriptions, reply lookups, dead letters; [`WorkerHandle`].
//!
//! The protocol a worker follows (any language): pull from the operation's durable consumer;
//! look the idempotency key up; call the processor with that key; store the result; publish
//! the reply to the `X-Reply-To` header's subject; only then ack.

pub mod config;
pub mod crash;
pub mod handler;
pub mod profile;
pub mod runner;
pub mod store;

pub use config::{CrashPoint, WorkerConfig};
pub use handler::Faults;
pub use profile::{Latency, Profile};
pub use runner::{start, start_with_client, StartError, WorkerHandle};
