//! `nats-bridge`: runs every payment flow of a Hyperswitch-style orchestrator over NATS.
//!
//! Financial flows go through JetStream (persistent, de-duplicated by message id) and the
//! worker's reply comes back on the bridge's reply inbox; read-only queries use core NATS
//! request/reply. A timeout after a publish is "unknown", never "failed".
//!
//! Map of the crate:
//! - [`catalogue`], [`envelope`], [`headers`], [`request`], [`subjects`]: the protocol shared with
//!   the workers, re-exported from [`nats_protocol`] (the 35 operations, the bodies, the header
//!   names, an operation instance with its stable message id, subject templates).
//! - [`asyncapi`]: the worker protocol as an AsyncAPI 3.0 document, generated from the catalogue.
//! - [`config`]: `[nats_bridge]` TOML + `NATS_BRIDGE_*` env, seed defaults, validation.
//! - [`streams`]: stream plans per family + dead letters, provisioning and server-side checks.
//! - [`client`]: [`Bridge`], the hybrid durable call and the query call.
//! - [`breaker`]: a circuit breaker per operation (closed / open / half-open) and what counts as
//!   a failure.
//! - [`metrics`]: a Prometheus text-format registry per bridge, shared with the application.
//! - [`late`]: [`LateReply`], replies that arrive after their call gave up.
//! - [`defects`]: deliberate defects, settable only from code, for proving the harness.
//! - [`error`]: [`CallError`], outcome (not applied / unknown) and the seed error mapping.
//! - `inbox` (private): the one multiplexed reply subscription and its routing table.
//! - `reply_token` (private): the inbox address of a message id, shared by `inbox` and [`late`].
//! - `stats` (private): counters behind [`StatsSnapshot`].

pub mod asyncapi;
pub mod breaker;
pub mod client;
pub mod config;
pub mod defects;
pub mod error;
mod inbox;
pub mod late;
pub mod metrics;
mod reply_token;
mod stats;
pub mod streams;

pub use nats_protocol::{catalogue, envelope, headers, request, subjects};

pub use breaker::BreakerState;
pub use client::Bridge;
pub use config::{BridgeConfig, CircuitBreakerConfig, SubjectScheme};
pub use error::{AttemptStatusHint, CallError, ConnectError, ErrorMapping, Outcome};
pub use late::LateReply;
pub use metrics::Registry;
pub use nats_protocol::{
    ErrorBody, Family, Operation, OperationRequest, OperationSpec, Pattern, RequestEnvelope, ResponseEnvelope, ResponseStatus, CATALOGUE,
};
pub use stats::StatsSnapshot;
