//! Timeouts of a scenario run: short, so that unknown outcomes and recovery happen within the
//! run, and ordered so that recovery never races a call still waiting.

/// Bridge: JetStream publish ack, per attempt.
pub const ACK_MS: u64 = 1_000;
/// Bridge: whole durable call.
pub const REQUEST_MS: u64 = 5_000;
/// Bridge: queries.
pub const QUERY_MS: u64 = 2_000;
/// Gateway: recovery pass interval.
pub const RECOVERY_INTERVAL_MS: u64 = 1_000;
/// Gateway: an operation unresolved this long is reconciled (longer than a call).
pub const STUCK_AFTER_MS: u64 = 8_000;
/// Workers refuse requests older than this (below the recovery threshold).
pub const MAX_REQUEST_AGE_MS: u64 = 6_000;
/// HTTP clients give up after this (longer than a call, so a timeout is rare): the
/// default of a scenario's `workload.client_timeout_ms`.
pub const CLIENT_TIMEOUT_MS: u64 = 12_000;
/// Bridge: how long an open circuit breaker refuses calls before a half-open probe.
pub const BREAKER_OPEN_MS: u64 = 3_000;
/// Workers' processor call timeout: longer than the bridge's call and the recovery
/// threshold together, so a slow acquirer can still be performing an effect while
/// recovery looks for it (`slow-processor`).
pub const PROCESSOR_TIMEOUT_MS: u64 = 30_000;
