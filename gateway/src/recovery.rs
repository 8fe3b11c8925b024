//! The stuck-payment recovery job (seed: every minute; operations stuck for 5 minutes, sync
//! operations for 2). It asks the workers first, and fails an operation with
//! `CONNECTOR_TIMEOUT` only when the processor has no record of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::{info, warn};

use crate::config::RecoveryConfig;
use crate::service::Gateway;
use crate::store::{now_ms, Resolution};

/// Counters of the recovery job (seed metric names).
#[derive(Debug, Default)]
pub struct RecoveryCounters {
    /// Operations resolved (`nats_recovery_job_recovered_count`).
    pub recovered: AtomicU64,
    /// Operations marked failed with `CONNECTOR_TIMEOUT`.
    pub timed_out: AtomicU64,
    /// Operations the job could not resolve this round (`nats_recovery_job_failed_count`).
    pub failed: AtomicU64,
}

/// Exposes the counters on the bridge's registry, under the seeds' names.
pub fn register_metrics(registry: &nats_bridge::metrics::Registry, counters: &Arc<RecoveryCounters>) {
    let recovered = registry.gauge("nats_recovery_job_recovered_count", "operations the recovery job resolved", &[]);
    let failed = registry.gauge("nats_recovery_job_failed_count", "operations the recovery job could not resolve in a pass", &[]);
    let timed_out = registry.gauge("nats_recovery_job_connector_timeout_count", "operations failed with CONNECTOR_TIMEOUT", &[]);
    let c = counters.clone();
    registry.on_render(move || {
        recovered.set(c.recovered.load(Ordering::Relaxed) as f64);
        failed.set(c.failed.load(Ordering::Relaxed) as f64);
        timed_out.set(c.timed_out.load(Ordering::Relaxed) as f64);
    });
}

/// Operations reconciled at once in a pass.
const RECONCILE_CONCURRENCY: usize = 16;

/// Runs one pass: every unresolved operation older than its threshold is reconciled.
pub async fn run_once(gateway: &Gateway, config: &RecoveryConfig, counters: &RecoveryCounters) -> usize {
    let now = now_ms();
    let oldest = config.stuck_after_ms.min(config.sync_stuck_after_ms) as i64;
    let open = match gateway.store.unresolved_operations(now - oldest) {
        Ok(ops) => ops,
        Err(e) => {
            warn!(error = %e, "recovery: cannot read the store");
            return 0;
        }
    };
    let due: Vec<_> = open
        .into_iter()
        .filter(|op| {
            let threshold = if op.operation.ends_with(".sync") { config.sync_stuck_after_ms } else { config.stuck_after_ms } as i64;
            now - op.updated_ms >= threshold
        })
        .collect();
    let handled = due.len();
    // Several at once: an operation nobody answers any more costs a whole reply timeout to
    // find out, and one pass must not take that long for each of them in turn.
    let results: Vec<_> = futures::stream::iter(due)
        .map(|op| async move { gateway.reconcile(&op, true).await })
        .buffer_unordered(RECONCILE_CONCURRENCY)
        .collect()
        .await;
    for result in results {
        match result {
            Some(Resolution::Failed { code, .. }) if code == "CONNECTOR_TIMEOUT" => {
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                counters.recovered.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {
                counters.recovered.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if handled > 0 {
        info!(handled, "recovery pass");
    }
    handled
}

/// Runs the job every `interval_ms` until the task is dropped.
pub async fn run(gateway: Arc<Gateway>, config: RecoveryConfig, counters: Arc<RecoveryCounters>) {
    // First pass one interval after start: calls made right after start are still waiting.
    let period = Duration::from_millis(config.interval_ms);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        run_once(&gateway, &config, &counters).await;
    }
}
