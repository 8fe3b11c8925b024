//! A payment service provider (PSP) simulator: it performs "effects"
//! (authorizations, captures, refunds, payouts...), records each one in a ledger
//! and honours `Idempotency-Key` the way Stripe does — or, when told to, ignores
//! it, to emulate a processor that would charge twice.
//!
//! Workers call it over HTTP; checkers read its ledger afterwards. It runs as its
//! own process (binary `mock-processor`) or as a task of the test harness, never
//! inside a worker, so a killed worker does not take the ledger with it.
//!
//! Modules:
//! - [`types`] — wire types shared by server and client: [`EffectRequest`],
//!   [`CaptureMethod`], [`Effect`], [`Account`], [`ApiError`], [`ProcessorConfig`];
//! - [`ledger`] — state and rules, pure and synchronous: amount rules per
//!   account, payout states, idempotent replay;
//! - [`processor`] — [`Processor`], the shared handle on one ledger and its
//!   settings;
//! - [`api`] — the axum routes ([`router`]), [`serve`] and [`spawn`] (on a free port);
//! - [`client`] — [`ProcessorClient`], the reqwest client workers use.

#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod ledger;
pub mod processor;
pub mod types;

pub use api::{router, serve, spawn, Served};
pub use client::{ClientError, Created, ProcessorClient};
pub use ledger::{Ledger, RuleViolation, Submission};
pub use processor::Processor;
pub use types::{Account, AccountStatus, ApiError, CaptureMethod, Effect, EffectRequest, LedgerView, ProcessorConfig};
