//! Microsecond HdrHistograms of every request: per operation (whole run and per 1 s interval of
//! intended time), per status class, and the generator's lag behind its schedule.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::ops::{Operation, Outcome, StatusClass};

/// Largest value the whole-run histograms track: one hour, in µs. Larger values are clamped.
pub const MAX_US: u64 = 3_600_000_000;

/// Significant digits of every histogram.
pub const SIGFIG: u8 = 3;

/// One completed request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The operation actually sent.
    pub op: Operation,
    /// Intended send time, from `t0`.
    pub intended: Duration,
    /// Actual send time, from `t0`.
    pub sent: Duration,
    /// From the intended send time to the whole answer read (or the failure).
    pub latency: Duration,
    /// HTTP status class.
    pub class: StatusClass,
    /// What became of it.
    pub outcome: Outcome,
    /// The user had no payment for the planned operation and sent this one instead.
    pub fallback: bool,
}

impl Sample {
    /// How late the request left: actual minus intended send time.
    pub fn lag(&self) -> Duration {
        self.sent.saturating_sub(self.intended)
    }
}

/// A whole-run histogram (fixed range, no resizing while recording).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, SIGFIG).expect("valid histogram bounds")
}

/// A 1 s interval histogram: starts small and grows to the largest value recorded, as most
/// intervals hold a narrow range.
pub fn interval_histogram() -> Histogram<u64> {
    Histogram::new(SIGFIG).expect("valid histogram")
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

/// What was recorded about one operation.
#[derive(Debug, Clone)]
pub struct OpRecord {
    /// Every latency.
    pub total: Histogram<u64>,
    /// Latencies by second of intended send time.
    pub seconds: BTreeMap<u64, Histogram<u64>>,
    /// Requests by outcome.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Requests by status class.
    pub classes: BTreeMap<StatusClass, u64>,
    /// Requests sent in place of another operation (see [`Sample::fallback`]).
    pub fallbacks: u64,
}

impl OpRecord {
    fn new() -> OpRecord {
        OpRecord { total: histogram(), seconds: BTreeMap::new(), outcomes: BTreeMap::new(), classes: BTreeMap::new(), fallbacks: 0 }
    }

    /// Requests that did not end [`Outcome::Ok`].
    pub fn errors(&self) -> u64 {
        self.outcomes.iter().filter(|(o, _)| o.is_error()).map(|(_, n)| n).sum()
    }
}

/// Counters of one second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Second {
    /// Requests actually sent in this second.
    pub sent: u64,
    /// Requests intended in this second.
    pub intended: u64,
    /// Requests intended in this second that ended in an error.
    pub errors: u64,
    /// Largest lag of a request intended in this second, µs.
    pub max_lag_us: u64,
}

/// Everything recorded in a run.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Per operation.
    pub ops: BTreeMap<Operation, OpRecord>,
    /// Latencies per status class, all operations.
    pub classes: BTreeMap<StatusClass, Histogram<u64>>,
    /// Lag of the actual behind the intended send time, µs.
    pub lag: Histogram<u64>,
    /// Lag by second of intended send time, µs (to leave out a fault's disruption).
    pub lag_seconds: BTreeMap<u64, Histogram<u64>>,
    /// Per second of the run (index: whole seconds from `t0`).
    pub seconds: BTreeMap<u64, Second>,
    /// Requests sent.
    pub sent: u64,
    /// Latest actual send time, from `t0`.
    pub last_sent: Duration,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            ops: BTreeMap::new(),
            classes: BTreeMap::new(),
            lag: histogram(),
            lag_seconds: BTreeMap::new(),
            seconds: BTreeMap::new(),
            sent: 0,
            last_sent: Duration::ZERO,
        }
    }
}

impl Recorded {
    /// Adds one sample.
    pub fn add(&mut self, s: &Sample) {
        let latency = us(s.latency);
        let op = self.ops.entry(s.op).or_insert_with(OpRecord::new);
        op.total.saturating_record(latency);
        let second = s.intended.as_secs();
        // Interval histograms grow as needed: `record` resizes them, `saturating_record` would
        // clamp to their initial (tiny) range.
        let _ = op.seconds.entry(second).or_insert_with(interval_histogram).record(latency);
        *op.outcomes.entry(s.outcome).or_default() += 1;
        *op.classes.entry(s.class).or_default() += 1;
        op.fallbacks += u64::from(s.fallback);
        self.classes.entry(s.class).or_insert_with(histogram).saturating_record(latency);
        let lag = s.lag().as_micros() as u64;
        // Zero lag is recorded as 1 µs: the histogram's lowest value.
        self.lag.saturating_record(lag.clamp(1, MAX_US));
        let _ = self.lag_seconds.entry(second).or_insert_with(interval_histogram).record(lag.clamp(1, MAX_US));
        let at = self.seconds.entry(second).or_default();
        at.intended += 1;
        at.errors += u64::from(s.outcome.is_error());
        at.max_lag_us = at.max_lag_us.max(lag);
        self.seconds.entry(s.sent.as_secs()).or_default().sent += 1;
        self.sent += 1;
        self.last_sent = self.last_sent.max(s.sent);
    }

    /// Requests that ended in an error, all operations.
    pub fn errors(&self) -> u64 {
        self.ops.values().map(OpRecord::errors).sum()
    }
}

/// Collects samples from every user.
#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<Recorded>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Records one completed request.
    pub fn record(&self, s: &Sample) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).add(s);
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Recorded {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use harness::stats::Percentiles;

    use super::*;

    fn sample(op: Operation, intended_ms: u64, sent_ms: u64, latency_ms: u64, outcome: Outcome) -> Sample {
        Sample {
            op,
            intended: Duration::from_millis(intended_ms),
            sent: Duration::from_millis(sent_ms),
            latency: Duration::from_millis(latency_ms),
            class: if outcome == Outcome::Transport { StatusClass::Transport } else { StatusClass::Success },
            outcome,
            fallback: false,
        }
    }

    #[test]
    fn samples_land_in_their_intended_second() {
        let r = Recorder::new();
        r.record(&sample(Operation::Capture, 100, 101, 5, Outcome::Ok));
        r.record(&sample(Operation::Capture, 1_900, 2_100, 300, Outcome::Transport));
        r.record(&sample(Operation::Sync, 2_000, 2_000, 1, Outcome::Ok));
        let rec = r.snapshot();
        assert_eq!(rec.sent, 3);
        assert_eq!(rec.errors(), 1);
        let cap = &rec.ops[&Operation::Capture];
        assert_eq!(cap.total.len(), 2);
        assert_eq!(cap.seconds.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(rec.seconds[&1].intended, 1);
        assert_eq!(rec.seconds[&1].errors, 1);
        assert_eq!(rec.seconds[&1].max_lag_us, 200_000);
        assert_eq!(rec.seconds[&2].sent, 2, "sent in second 2: the late one and the sync");
        assert_eq!(rec.last_sent, Duration::from_millis(2_100));
        let p = Percentiles::of_histogram(&rec.classes[&StatusClass::Transport]);
        assert_eq!(p.count, 1);
        assert!(p.max_us >= 300_000 && p.max_us < 300_500, "{p:?}");
    }
}
