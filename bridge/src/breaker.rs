//! Circuit breakers, one per operation (seed: open after 5 consecutive failures, then a
//! half-open probe).
//!
//! ```text
//!            failure_threshold consecutive failures
//!   Closed ------------------------------------------> Open
//!     ^                                                 |  open_ms elapsed
//!     |  probe succeeds          probe fails            v
//!     +-------------------- HalfOpen -----------------> Open (again, for open_ms)
//! ```
//!
//! Only errors that say the transport or the workers are unhealthy count as failures
//! ([`CallError::trips_breaker`]): no responders, no stream, unacknowledged publish, reply or
//! query timeout, transport errors. A worker's reply, whatever its status, is a success: a
//! declined card means the system works. Invalid requests and invalid replies say nothing
//! about health and are ignored (invalid replies are counted by the `nats_rejected_replies`
//! metric).
//!
//! [`CircuitBreaker`] is the pure state machine: every method takes the current time, so it is
//! tested without NATS and without sleeping. Results are matched to the state they were
//! admitted in: a call admitted while closed that fails after the breaker opened does not
//! re-arm the open period, and only probes decide a half-open breaker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::catalogue::{self, Operation};
use crate::config::CircuitBreakerConfig;
use crate::error::CallError;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls are refused at once with [`CallError::CircuitOpen`] until the open period ends.
    Open,
    /// The open period ended: a limited number of probe calls go through, the rest are refused.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `nats_circuit_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }

    /// Lower-case name (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a finished call counts for its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerdict {
    /// The transport and a worker answered (any reply status).
    Healthy,
    /// The transport or the workers are unhealthy.
    Unhealthy,
    /// Says nothing about health (invalid request, invalid reply, call abandoned).
    Neutral,
}

impl CallVerdict {
    /// The verdict on a call's result.
    pub fn of<T>(result: &Result<T, CallError>) -> CallVerdict {
        match result {
            Ok(_) => CallVerdict::Healthy,
            Err(e) if e.trips_breaker() => CallVerdict::Unhealthy,
            Err(_) => CallVerdict::Neutral,
        }
    }
}

/// Permission to make one call, returned by [`CircuitBreaker::try_acquire`]; hand it back
/// with the call's verdict to [`CircuitBreaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The state period the call was admitted in.
    generation: u64,
    /// Whether the call is a half-open probe.
    probe: bool,
}

impl Ticket {
    /// Whether this call was admitted as a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probes: u32 },
}

/// One breaker: a pure state machine driven by the caller's clock.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    /// Consecutive failures that open it.
    threshold: u32,
    /// How long it stays open.
    open_for: Duration,
    /// Probes allowed at once while half-open.
    max_probes: u32,
    /// Where it stands.
    state: State,
    /// Bumped on every state change, so late results of an earlier period are ignored.
    generation: u64,
}

impl CircuitBreaker {
    /// A closed breaker with these settings (zeros are raised to 1).
    pub fn new(config: &CircuitBreakerConfig) -> Self {
        CircuitBreaker {
            threshold: config.failure_threshold.max(1),
            open_for: Duration::from_millis(config.open_ms.max(1)),
            max_probes: config.half_open_probes.max(1),
            state: State::Closed { failures: 0 },
            generation: 0,
        }
    }

    /// The state at `now`. An open breaker whose period has ended reports `HalfOpen`: the
    /// next call will be a probe.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Consecutive failures counted while closed.
    pub fn consecutive_failures(&self) -> u32 {
        match self.state {
            State::Closed { failures } => failures,
            _ => 0,
        }
    }

    /// Asks to make a call at `now`: `None` means refuse it (open, or half-open with every
    /// probe slot taken).
    pub fn try_acquire(&mut self, now: Instant) -> Option<Ticket> {
        if let State::Open { until } = self.state {
            if now < until {
                return None;
            }
            self.enter(State::HalfOpen { probes: 0 });
        }
        match &mut self.state {
            State::Closed { .. } => Some(Ticket { generation: self.generation, probe: false }),
            State::HalfOpen { probes } if *probes < self.max_probes => {
                *probes += 1;
                Some(Ticket { generation: self.generation, probe: true })
            }
            _ => None,
        }
    }

    /// Records the verdict on a call admitted with `ticket`, finishing at `now`.
    pub fn record(&mut self, ticket: Ticket, verdict: CallVerdict, now: Instant) {
        if ticket.generation != self.generation {
            // Admitted in an earlier period: the state has moved on since.
            return;
        }
        match (&mut self.state, verdict) {
            (State::Closed { failures }, CallVerdict::Healthy) => *failures = 0,
            (State::Closed { failures }, CallVerdict::Unhealthy) => {
                *failures += 1;
                if *failures >= self.threshold {
                    self.open(now);
                }
            }
            (State::HalfOpen { .. }, CallVerdict::Healthy) => self.enter(State::Closed { failures: 0 }),
            (State::HalfOpen { .. }, CallVerdict::Unhealthy) => self.open(now),
            (State::HalfOpen { probes }, CallVerdict::Neutral) => *probes = probes.saturating_sub(1),
            (State::Closed { .. }, CallVerdict::Neutral) | (State::Open { .. }, _) => {}
        }
    }

    fn open(&mut self, now: Instant) {
        let until = now.checked_add(self.open_for).unwrap_or(now);
        self.enter(State::Open { until });
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
    }
}

/// The breakers of every catalogue operation.
pub(crate) struct Breakers {
    /// When false, every call is admitted and nothing is tracked.
    enabled: bool,
    /// One breaker per operation name.
    by_operation: HashMap<&'static str, Mutex<CircuitBreaker>>,
}

impl Breakers {
    pub(crate) fn new(config: &CircuitBreakerConfig) -> Self {
        Breakers {
            enabled: config.enabled,
            by_operation: catalogue::all().map(|op| (op.name, Mutex::new(CircuitBreaker::new(config)))).collect(),
        }
    }

    /// Admits a call of `op`, or refuses it with `CircuitOpen`.
    pub(crate) fn acquire(&self, op: Operation) -> Result<Permit<'_>, CallError> {
        let Some(cell) = self.cell(op) else {
            return Ok(Permit { slot: None, op });
        };
        let mut breaker = cell.lock().expect("breaker lock");
        match breaker.try_acquire(Instant::now()) {
            Some(ticket) => {
                if ticket.probe {
                    info!(operation = op.name, "circuit breaker half-open: probing");
                }
                Ok(Permit { slot: Some((cell, ticket)), op })
            }
            None => Err(CallError::CircuitOpen { operation: op.name.to_string() }),
        }
    }

    /// The state of `op`'s breaker now (`Closed` when breakers are disabled).
    pub(crate) fn state(&self, op: Operation) -> BreakerState {
        self.cell(op).map(|c| c.lock().expect("breaker lock").state(Instant::now())).unwrap_or(BreakerState::Closed)
    }

    fn cell(&self, op: Operation) -> Option<&Mutex<CircuitBreaker>> {
        if !self.enabled {
            return None;
        }
        self.by_operation.get(op.name)
    }
}

/// An admitted call; dropped without [`Permit::finish`] (the call was abandoned), it counts
/// as neutral and frees its probe slot.
pub(crate) struct Permit<'a> {
    slot: Option<(&'a Mutex<CircuitBreaker>, Ticket)>,
    op: Operation,
}

impl Permit<'_> {
    /// Records the call's verdict.
    pub(crate) fn finish(mut self, verdict: CallVerdict) {
        self.record(verdict);
    }

    fn record(&mut self, verdict: CallVerdict) {
        let Some((cell, ticket)) = self.slot.take() else { return };
        let now = Instant::now();
        let mut breaker = cell.lock().expect("breaker lock");
        let before = breaker.state(now);
        breaker.record(ticket, verdict, now);
        let after = breaker.state(now);
        drop(breaker);
        if before != after {
            match after {
                BreakerState::Open => warn!(operation = self.op.name, "circuit breaker opened"),
                BreakerState::Closed => info!(operation = self.op.name, "circuit breaker closed"),
                BreakerState::HalfOpen => {}
            }
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.record(CallVerdict::Neutral);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(threshold: u32, open_ms: u64, probes: u32) -> CircuitBreakerConfig {
        CircuitBreakerConfig { enabled: true, failure_threshold: threshold, open_ms, half_open_probes: probes }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn states_have_their_documented_names_and_gauge_values() {
        let states = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen];
        let names: Vec<String> = states.iter().map(|s| s.to_string()).collect();
        assert_eq!(names, ["closed", "open", "half_open"]);
        assert_eq!(states.map(BreakerState::gauge_value), [0.0, 1.0, 2.0]);
    }

    /// Runs one call to completion at `now`; `None` if refused.
    fn call(b: &mut CircuitBreaker, now: Instant, verdict: CallVerdict) -> Option<()> {
        let t = b.try_acquire(now)?;
        b.record(t, verdict, now);
        Some(())
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(&config(5, 30_000, 1));
        for i in 1..=4 {
            call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
            assert_eq!(b.state(t0), BreakerState::Closed);
            assert_eq!(b.consecutive_failures(), i);
        }
        call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(b.try_acquire(t0 + ms(29_999)).is_none(), "refused while open");
        assert_eq!(b.state(t0 + ms(29_999)), BreakerState::Open);
        assert_eq!(b.state(t0 + ms(30_000)), BreakerState::HalfOpen);
    }

    #[test]
    fn a_success_resets_the_count_and_neutral_results_do_not_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(&config(3, 1000, 1));
        for _ in 0..2 {
            call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
        }
        call(&mut b, t0, CallVerdict::Neutral).unwrap();
        assert_eq!(b.consecutive_failures(), 2, "neutral neither counts nor resets");
        call(&mut b, t0, CallVerdict::Healthy).unwrap();
        assert_eq!(b.consecutive_failures(), 0);
        for _ in 0..2 {
            call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn a_successful_probe_closes_it() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(&config(1, 300, 1));
        call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
        let t1 = t0 + ms(300);
        let probe = b.try_acquire(t1).expect("probe admitted");
        assert!(probe.is_probe());
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.try_acquire(t1).is_none(), "one probe at a time");
        b.record(probe, CallVerdict::Healthy, t1 + ms(5));
        assert_eq!(b.state(t1 + ms(5)), BreakerState::Closed);
        let next = b.try_acquire(t1 + ms(5)).unwrap();
        assert!(!next.is_probe());
    }

    #[test]
    fn a_failed_probe_reopens_it_for_a_full_period() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(&config(2, 1000, 1));
        call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
        call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
        let t1 = t0 + ms(1500);
        let probe = b.try_acquire(t1).unwrap();
        b.record(probe, CallVerdict::Unhealthy, t1 + ms(100));
        assert_eq!(b.state(t1 + ms(100)), BreakerState::Open);
        assert!(b.try_acquire(t1 + ms(1099)).is_none(), "open again from the probe's failure");
        assert!(b.try_acquire(t1 + ms(1100)).is_some());
    }

    #[test]
    fn half_open_admits_the_configured_number_of_probes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(&config(1, 10, 2));
        call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
        let t1 = t0 + ms(10);
        let p1 = b.try_acquire(t1).unwrap();
        let p2 = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_none());
        // A neutral probe frees its slot and decides nothing.
        b.record(p1, CallVerdict::Neutral, t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        let p3 = b.try_acquire(t1).expect("slot freed");
        b.record(p2, CallVerdict::Healthy, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        // The other probe finishing later belongs to the half-open period: ignored.
        b.record(p3, CallVerdict::Unhealthy, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn results_of_calls_admitted_before_a_state_change_are_ignored() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(&config(2, 1000, 1));
        // Three calls in flight while closed.
        let tickets: Vec<_> = (0..3).map(|_| b.try_acquire(t0).unwrap()).collect();
        b.record(tickets[0], CallVerdict::Unhealthy, t0);
        b.record(tickets[1], CallVerdict::Unhealthy, t0 + ms(10));
        assert_eq!(b.state(t0 + ms(10)), BreakerState::Open);
        // The third fails later: it must not push the end of the open period.
        b.record(tickets[2], CallVerdict::Unhealthy, t0 + ms(900));
        assert!(b.try_acquire(t0 + ms(1010)).is_some(), "open period counted from the opening failure");
        // A success of a closed-period call does not close a half-open breaker either.
        let mut b = CircuitBreaker::new(&config(1, 100, 1));
        let old = b.try_acquire(t0).unwrap();
        call(&mut b, t0, CallVerdict::Unhealthy).unwrap();
        let _probe = b.try_acquire(t0 + ms(100)).unwrap();
        b.record(old, CallVerdict::Healthy, t0 + ms(100));
        assert_eq!(b.state(t0 + ms(100)), BreakerState::HalfOpen);
    }

    #[test]
    fn verdicts_follow_the_failure_classes() {
        let unhealthy = [
            CallError::NoResponders { subject: "s".into() },
            CallError::NoStream { subject: "s".into() },
            CallError::PublishUnacknowledged { message_id: "m".into(), attempts: 4, reason: "r".into() },
            CallError::ReplyTimeout { message_id: "m".into(), timeout: ms(1), in_progress: false },
            CallError::QueryTimeout { subject: "s".into(), timeout: ms(1) },
            CallError::Transport("t".into()),
        ];
        for e in unhealthy {
            assert_eq!(CallVerdict::of::<()>(&Err(e.clone())), CallVerdict::Unhealthy, "{e}");
        }
        let neutral = [
            CallError::InvalidRequest("x".into()),
            CallError::InvalidReply("x".into()),
            CallError::CircuitOpen { operation: "payments.sync".into() },
        ];
        for e in neutral {
            assert_eq!(CallVerdict::of::<()>(&Err(e.clone())), CallVerdict::Neutral, "{e}");
        }
        assert_eq!(CallVerdict::of::<()>(&Ok(())), CallVerdict::Healthy);
    }

    #[test]
    fn breakers_are_per_operation_and_an_abandoned_probe_frees_its_slot() {
        let breakers = Breakers::new(&config(1, 60_000, 1));
        let sync = catalogue::ops::payment_sync();
        let refund_sync = catalogue::ops::refund_sync();
        breakers.acquire(sync).unwrap().finish(CallVerdict::Unhealthy);
        assert_eq!(breakers.state(sync), BreakerState::Open);
        assert_eq!(breakers.state(refund_sync), BreakerState::Closed);
        match breakers.acquire(sync) {
            Err(CallError::CircuitOpen { operation }) => assert_eq!(operation, "payments.sync"),
            other => panic!("expected circuit open, got {:?}", other.err()),
        }
        assert!(breakers.acquire(refund_sync).is_ok());

        let breakers = Breakers::new(&config(1, 1, 1));
        breakers.acquire(sync).unwrap().finish(CallVerdict::Unhealthy);
        std::thread::sleep(ms(5));
        drop(breakers.acquire(sync).expect("probe"));
        assert!(breakers.acquire(sync).is_ok(), "the abandoned probe freed its slot");
    }

    #[test]
    fn disabled_breakers_admit_everything() {
        let mut c = config(1, 60_000, 1);
        c.enabled = false;
        let breakers = Breakers::new(&c);
        let sync = catalogue::ops::payment_sync();
        for _ in 0..10 {
            breakers.acquire(sync).unwrap().finish(CallVerdict::Unhealthy);
        }
        assert_eq!(breakers.state(sync), BreakerState::Closed);
    }
}
