//! The bridge's maximum sustainable authorize rate: open-model load in steps of rising rate.
//!
//! Each step sends requests at fixed intended times (`start + i / rate`, the harness's
//! [`Schedule`](crate::schedule::Schedule)), whatever the earlier
//! calls are doing, and measures every call's latency from its intended time, so a stalled
//! generator or a queue building up shows in the latency instead of silently lowering the load
//! (no coordinated omission). The ladder stops at the first step that is not sustainable: the
//! generator fell behind (offered rate below 95% of the step's rate), p99 above the limit, or
//! any call failed. On a shared machine a stall of another process can sink one step, so a
//! failed step is tried again (up to `attempts` times, every attempt reported) before the
//! ladder stops. An unrecorded warm-up at the first step's rate goes first.

use std::time::Duration;

use nats_bridge::{catalogue::ops, Bridge, OperationRequest, ResponseStatus};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::connz;
use crate::schedule::{Schedule, ScheduleError};
use crate::stats::Percentiles;

/// Below this share of the intended rate the generator "could not keep up".
pub const KEEP_UP: f64 = 0.95;

/// Which responder answers the calls of a ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RatePath {
    /// A minimal echo responder (pull consumer, reply, ack): the bridge and NATS alone.
    Echo,
    /// The mock worker (result store, processor call) and the mock processor.
    Full,
}

impl RatePath {
    /// A short description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            RatePath::Echo => "echo responder (bridge + NATS alone)",
            RatePath::Full => "mock worker + processor (whole path)",
        }
    }
}

/// The ladder's settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RateConfig {
    /// Intended rates in requests per second, in the order tried.
    pub steps: Vec<u32>,
    /// How long each step sends.
    pub step: Duration,
    /// A step whose p99 (from the intended time) exceeds this is not sustainable.
    pub p99_limit: Duration,
    /// Ladders to run, one per responder.
    pub paths: Vec<RatePath>,
    /// Tries of a step before the ladder stops at it (at least 1).
    pub attempts: u32,
    /// Unrecorded load at the first step's rate before the ladder.
    pub warmup: Duration,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            steps: vec![250, 500, 1000, 2000, 4000, 8000, 16000],
            step: Duration::from_secs(3),
            p99_limit: Duration::from_millis(20),
            paths: vec![RatePath::Echo, RatePath::Full],
            attempts: 2,
            warmup: Duration::from_secs(1),
        }
    }
}

/// One step of a ladder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RateStep {
    /// Intended rate, requests per second.
    pub target_rps: u32,
    /// Which try of this rate (1 = first).
    pub attempt: u32,
    /// Calls sent.
    pub sent: u64,
    /// Calls sent per second of sending: below 95% of the target, the generator fell behind.
    pub offered_rps: f64,
    /// Calls that succeeded per second, from the step's start to the last completion.
    pub achieved_rps: f64,
    /// Latency from each call's intended send time to its completion (failed calls included).
    pub latency: Percentiles,
    /// p99 of how late the generator sent a call after its intended time, microseconds.
    pub send_lag_p99_us: u64,
    /// Calls that returned an error (timeouts, publish failures, ...).
    pub errors: usize,
    /// Calls answered with a status other than `success` (not errors; counted for the record).
    pub not_success: usize,
    /// Open NATS connections carrying the bridge's name, read from `/connz` right after the
    /// step's last send (calls still in flight); `None` if the read failed.
    pub connections: Option<usize>,
    /// The generator kept up (offered >= 95% of the target).
    pub kept_up: bool,
    /// Kept up, p99 within the limit, no errors.
    pub sustainable: bool,
    /// Why the step is not sustainable (empty when it is).
    pub reason: String,
}

/// A whole ladder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RateLadder {
    /// Who answered.
    pub path: RatePath,
    /// The p99 limit of a sustainable step, milliseconds.
    pub p99_limit_ms: f64,
    /// Seconds each step sent for.
    pub step_secs: f64,
    /// Tries of a rate before the ladder stops at it.
    pub attempts: u32,
    /// The steps run, in order, every attempt; the last one is the first unsustainable one
    /// unless every rate passed.
    pub steps: Vec<RateStep>,
    /// The highest sustainable step's rate (0 when even the first step failed).
    pub max_sustainable_rps: u32,
    /// Every step passed: the real maximum is at least `max_sustainable_rps`, possibly more.
    pub ceiling_not_reached: bool,
}

/// What the ladder calls and where it reads connection counts.
pub struct RateTarget<'a> {
    /// The bridge under load.
    pub bridge: &'a Bridge,
    /// Merchant id of every request (distinct per ladder, so message ids never collide).
    pub merchant: String,
    /// Monitoring URLs of every node, for `/connz`.
    pub monitoring_urls: &'a [String],
    /// The bridge's connection name.
    pub connection_name: &'a str,
}

/// Runs the steps in order until one is not sustainable.
pub async fn ladder(path: RatePath, config: &RateConfig, target: &RateTarget<'_>) -> RateLadder {
    let mut steps = Vec::new();
    let mut max_sustainable_rps = 0;
    let mut seq = 0u64;
    let mut every_rate_passed = true;
    if let (Some(&first), false) = (config.steps.first(), config.warmup.is_zero()) {
        let warm = step(first, config.warmup, config, target, &mut seq).await;
        tracing::info!(?path, rate = first, p99_ms = warm.latency.p99_us as f64 / 1000.0, "rate warm-up (not recorded)");
    }
    'rates: for &rate in &config.steps {
        for attempt in 1..=config.attempts.max(1) {
            let mut s = step(rate, config.step, config, target, &mut seq).await;
            s.attempt = attempt;
            tracing::info!(
                ?path,
                rate,
                attempt,
                offered = s.offered_rps,
                achieved = s.achieved_rps,
                p50_ms = s.latency.p50_us as f64 / 1000.0,
                p99_ms = s.latency.p99_us as f64 / 1000.0,
                errors = s.errors,
                sustainable = s.sustainable,
                "rate step"
            );
            let ok = s.sustainable;
            steps.push(s);
            if ok {
                max_sustainable_rps = rate;
                continue 'rates;
            }
        }
        every_rate_passed = false;
        break;
    }
    let ceiling_not_reached = !steps.is_empty() && every_rate_passed;
    RateLadder {
        path,
        p99_limit_ms: config.p99_limit.as_secs_f64() * 1000.0,
        step_secs: config.step.as_secs_f64(),
        attempts: config.attempts.max(1),
        steps,
        max_sustainable_rps,
        ceiling_not_reached,
    }
}

/// One call's outcome: latency from its intended time, completion time, error, success status.
type Outcome = (Duration, Instant, bool, bool);

/// A step that could not run: `rate` for `length` is no schedule (more sends than fit a `u64`).
fn not_run(rate: u32, e: ScheduleError) -> RateStep {
    RateStep {
        target_rps: rate,
        attempt: 1,
        sent: 0,
        offered_rps: 0.0,
        achieved_rps: 0.0,
        latency: Percentiles::default(),
        send_lag_p99_us: 0,
        errors: 0,
        not_success: 0,
        connections: None,
        kept_up: false,
        sustainable: false,
        reason: format!("not run: {e}"),
    }
}

async fn step(rate: u32, length: Duration, config: &RateConfig, target: &RateTarget<'_>, seq: &mut u64) -> RateStep {
    let rate = rate.max(1);
    // Every step sends at least one call, however short.
    let schedule = match Schedule::new(rate as f64, length) {
        Ok(s) => s.at_least(1),
        Err(e) => return not_run(rate, e),
    };
    let n = schedule.total();
    // Requests are built ahead so the generator only stamps and spawns.
    let requests: Vec<OperationRequest> = (0..n)
        .map(|_| {
            *seq += 1;
            let k = *seq;
            OperationRequest::new(ops::authorize(), target.merchant.as_str(), format!("rate_{k}"), format!("rate_{k}_1"))
                .router_data(json!({ "amount": 100, "currency": "USD" }))
        })
        .collect();
    let mut calls: JoinSet<Outcome> = JoinSet::new();
    let mut lags = Vec::with_capacity(requests.len());
    let start = Instant::now() + Duration::from_millis(5);
    let schedule = schedule.starting_at(start.into_std());
    let mut last_send = start;
    let mut now = Instant::now();
    for request in requests {
        let Some(slot) = schedule.take() else { break };
        let due = Instant::from_std(slot.intended);
        // Everything already due goes out with one reading of the clock (the timer wakes at
        // millisecond granularity); a send not yet due waits for its time.
        if due > now {
            if due > Instant::now() {
                sleep_until(due).await;
            }
            now = Instant::now();
        }
        let bridge = target.bridge.clone();
        calls.spawn(async move {
            let result = bridge.call(&request).await;
            let done = Instant::now();
            let success = matches!(&result, Ok(r) if r.status == ResponseStatus::Success);
            (done.saturating_duration_since(due), done, result.is_err(), success)
        });
        lags.push(now.saturating_duration_since(due));
        last_send = now;
    }
    let connections = connz::count(target.monitoring_urls, target.connection_name)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "cannot read /connz"))
        .ok()
        .map(|c| c.named);
    let send_span = last_send.saturating_duration_since(start).as_secs_f64() + 1.0 / rate as f64;

    let mut latencies = Vec::with_capacity(lags.len());
    let (mut errors, mut not_success, mut ok) = (0, 0, 0usize);
    let mut last_done = start;
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok((latency, done, failed, success)) => {
                latencies.push(latency);
                last_done = last_done.max(done);
                if failed {
                    errors += 1;
                } else {
                    ok += 1;
                    if !success {
                        not_success += 1;
                    }
                }
            }
            Err(_) => errors += 1,
        }
    }
    let latency = Percentiles::of_samples(&latencies);
    let sent = lags.len() as u64;
    let offered_rps = sent as f64 / send_span;
    let achieved_rps = ok as f64 / last_done.saturating_duration_since(start).as_secs_f64().max(1e-3);
    let kept_up = offered_rps >= KEEP_UP * rate as f64;
    let p99_ok = Duration::from_micros(latency.p99_us) <= config.p99_limit;
    let mut reasons = Vec::new();
    if !kept_up {
        reasons.push(format!("generator fell behind ({offered_rps:.0} of {rate} req/s offered)"));
    }
    if !p99_ok {
        reasons.push(format!("p99 {:.3} ms above {} ms", latency.p99_us as f64 / 1000.0, config.p99_limit.as_millis()));
    }
    if errors > 0 {
        reasons.push(format!("{errors} error(s)"));
    }
    RateStep {
        target_rps: rate,
        attempt: 1,
        sent,
        offered_rps,
        achieved_rps,
        latency,
        send_lag_p99_us: Percentiles::of_samples(&lags).p99_us,
        errors,
        not_success,
        connections,
        kept_up,
        sustainable: reasons.is_empty(),
        reason: reasons.join("; "),
    }
}
