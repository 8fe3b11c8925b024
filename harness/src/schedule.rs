//! The open-model schedule of every load generator here (the scenarios' payments, the bench's
//! rate ladder, the load test): send `i` is intended at `t0 + i / rate`, whoever sends it and
//! however long earlier sends take. A sender takes the next slot, waits for its intended time
//! and sends; latency counts from the intended time, so a stalled system cannot hide its stall
//! by slowing the generator down (coordinated omission).
//!
//! The times are fixed by the rate and the duration alone: nothing in them is random, so the
//! same rate and duration always give the same slots, and a caller's seeded choices per slot
//! (a scenario's flow, the load test's payment data) depend only on the seed and the slot index.
//! Slots are handed out in index order, from one loop or shared by many senders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Why a schedule cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// The rate is not a finite number above 0.
    #[error("the rate must be a finite number of sends per second above 0, got {0}")]
    Rate(f64),
    /// The duration is not a finite number of seconds, at least 0.
    #[error("the duration must be a finite number of seconds, at least 0, got {0}")]
    Duration(f64),
    /// `rate * duration` sends do not fit in a `u64`.
    #[error("{rate} sends per second for {secs} s is more sends than a schedule can hold")]
    TooMany {
        /// Sends per second asked for.
        rate: f64,
        /// Seconds asked for.
        secs: f64,
    },
}

/// One send of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Position in the schedule, from 0: what a caller's seeded per-send choices key on.
    pub index: u64,
    /// When it should be sent, so lateness is measured against it.
    pub intended: Instant,
    /// `intended - t0`, for records kept relative to the schedule's start.
    pub offset: Duration,
}

/// A fixed-rate schedule of `rate * duration` sends (rounded), whose slots may be taken by one
/// loop or by many senders at once (each slot exactly once, in index order).
#[derive(Debug)]
pub struct Schedule {
    /// Sends per second.
    rate: f64,
    /// Slots in the run.
    total: u64,
    /// How far after the first take `t0` is set, when no start was given.
    lead: Duration,
    /// Start of the schedule: given up front, or set by the first slot taken.
    t0: OnceLock<Instant>,
    /// Tells waiters (a fault timeline, a cost window) when `t0` is set.
    started: watch::Sender<Option<Instant>>,
    /// Next slot to hand out.
    next: AtomicU64,
    /// Slots whose send completed (answered or failed).
    completed: AtomicU64,
}

impl Schedule {
    /// `rate` sends per second for `duration`: `round(rate * duration)` slots.
    pub fn new(rate: f64, duration: Duration) -> Result<Schedule, ScheduleError> {
        Schedule::for_secs(rate, duration.as_secs_f64())
    }

    /// `rate` sends per second for `secs` seconds, for callers whose duration is a number.
    pub fn for_secs(rate: f64, secs: f64) -> Result<Schedule, ScheduleError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ScheduleError::Rate(rate));
        }
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(ScheduleError::Duration(secs));
        }
        let total = (rate * secs).round();
        // 2^64 (u64::MAX as f64) is the first count that does not fit.
        if total >= u64::MAX as f64 {
            return Err(ScheduleError::TooMany { rate, secs });
        }
        Ok(Schedule {
            rate,
            total: total as u64,
            lead: Duration::ZERO,
            t0: OnceLock::new(),
            started: watch::channel(None).0,
            next: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        })
    }

    /// Sets `t0` to `lead` after the first slot is taken, so senders started together (goose
    /// users) are all ready before the first intended time. Ignored once a start is given.
    pub fn lead(mut self, lead: Duration) -> Schedule {
        self.lead = lead;
        self
    }

    /// Fixes `t0` now, for a generator whose clock started before its first send (a
    /// scenario's history, a bench step built ahead).
    pub fn starting_at(mut self, t0: Instant) -> Schedule {
        self.t0 = OnceLock::from(t0);
        self.started.send_replace(Some(t0));
        self
    }

    /// At least `count` slots, for a caller that must send something however short the run.
    pub fn at_least(mut self, count: u64) -> Schedule {
        self.total = self.total.max(count);
        self
    }

    /// Sends per second, for rates derived from the schedule (requests in a window).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Slots in the run, for counts of what should have been sent.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When send `index` is intended, relative to `t0`: `index / rate`, for any index
    /// (`offset(total())` is the end of the schedule); saturates at `Duration::MAX`.
    pub fn offset(&self, index: u64) -> Duration {
        Duration::try_from_secs_f64(index as f64 / self.rate).unwrap_or(Duration::MAX)
    }

    /// Start of the schedule, once known, for deadlines relative to it.
    pub fn t0(&self) -> Option<Instant> {
        self.t0.get().copied()
    }

    /// Waits until the schedule has started and returns `t0`, for timelines on its clock.
    pub async fn started(&self) -> Instant {
        let mut rx = self.started.subscribe();
        loop {
            if let Some(t0) = *rx.borrow_and_update() {
                return t0;
            }
            // The sender lives as long as `self`, so this only fails if it was dropped.
            if rx.changed().await.is_err() {
                return self.t0().unwrap_or_else(Instant::now);
            }
        }
    }

    /// Takes the next slot (setting `t0` on the first take, unless given); `None` once every
    /// slot is handed out, or for a slot whose time an `Instant` cannot hold.
    pub fn take(&self) -> Option<Slot> {
        let t0 = *self.t0.get_or_init(|| {
            let now = Instant::now();
            let t0 = now.checked_add(self.lead).unwrap_or(now);
            self.started.send_replace(Some(t0));
            t0
        });
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        if index >= self.total {
            return None;
        }
        let offset = self.offset(index);
        Some(Slot { index, intended: t0.checked_add(offset)?, offset })
    }

    /// Records that a slot's send completed; true for the last one, so the run can stop.
    pub fn complete(&self) -> bool {
        self.completed.fetch_add(1, Ordering::AcqRel) + 1 == self.total
    }

    /// Slots completed so far, for what is still running.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Slots handed out so far, for what was sent.
    pub fn taken(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.total)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn slots(s: &Schedule) -> Vec<Slot> {
        std::iter::from_fn(|| s.take()).collect()
    }

    #[test]
    fn slots_follow_the_rate_and_end() {
        let s = Schedule::new(100.0, Duration::from_millis(50)).unwrap();
        assert_eq!(s.total(), 5);
        let taken = slots(&s);
        assert_eq!(taken.len(), 5);
        let t0 = s.t0().unwrap();
        for (i, slot) in taken.iter().enumerate() {
            assert_eq!(slot.index, i as u64);
            assert_eq!(slot.offset, Duration::from_millis(10 * i as u64));
            assert_eq!(slot.intended, t0 + slot.offset);
        }
        assert!(s.take().is_none());
        assert_eq!(s.taken(), 5);
        assert_eq!(s.offset(s.total()), Duration::from_millis(50), "the end of the schedule");
        assert!(!s.complete());
        for _ in 0..3 {
            s.complete();
        }
        assert!(s.complete(), "the fifth completion is the last");
        assert_eq!(s.completed(), 5);
    }

    #[test]
    fn the_count_is_rate_times_duration_rounded() {
        let count = |rate: f64, secs: f64| Schedule::for_secs(rate, secs).unwrap().total();
        assert_eq!(count(150.0, 5.0), 750);
        assert_eq!(count(2.5, 1.0), 3, "half rounds away from zero");
        assert_eq!(count(2.4, 1.0), 2);
        assert_eq!(count(1000.0, 0.0), 0);
        assert_eq!(count(0.1, 4.0), 0, "less than half a send");
        assert_eq!(Schedule::new(3.0, Duration::from_millis(500)).unwrap().total(), 2);
    }

    #[test]
    fn at_least_raises_an_empty_schedule() {
        let s = Schedule::new(250.0, Duration::ZERO).unwrap().at_least(1);
        assert_eq!(s.total(), 1);
        assert_eq!(slots(&s).iter().map(|x| x.offset).collect::<Vec<_>>(), vec![Duration::ZERO]);
        assert_eq!(Schedule::new(250.0, Duration::from_secs(1)).unwrap().at_least(1).total(), 250, "never lowers");
    }

    #[test]
    fn a_given_start_is_kept() {
        let t0 = Instant::now() + Duration::from_secs(3);
        let s = Schedule::new(4.0, Duration::from_secs(1)).unwrap().lead(Duration::from_secs(60)).starting_at(t0);
        assert_eq!(s.t0(), Some(t0));
        let taken = slots(&s);
        assert_eq!(
            taken.iter().map(|x| x.intended).collect::<Vec<_>>(),
            (0..4).map(|i| t0 + Duration::from_millis(250 * i)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_lead_delays_t0_after_the_first_take() {
        let s = Schedule::new(10.0, Duration::from_secs(1)).unwrap().lead(Duration::from_secs(5));
        assert_eq!(s.t0(), None, "not started before a take");
        let before = Instant::now();
        let first = s.take().unwrap();
        assert!(first.intended >= before + Duration::from_secs(5));
        assert_eq!(s.t0(), Some(first.intended));
    }

    #[test]
    fn bad_input_is_an_error() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(Schedule::for_secs(rate, 1.0), Err(ScheduleError::Rate(_))), "{rate}");
        }
        for secs in [-0.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(Schedule::for_secs(10.0, secs), Err(ScheduleError::Duration(_))), "{secs}");
        }
        assert!(matches!(Schedule::for_secs(1e10, 1e10), Err(ScheduleError::TooMany { .. })));
        assert!(matches!(Schedule::new(f64::MAX, Duration::MAX), Err(ScheduleError::TooMany { .. })));
        let e = Schedule::for_secs(0.0, 1.0).unwrap_err().to_string();
        assert!(e.contains("above 0, got 0"), "{e}");
    }

    #[test]
    fn extreme_but_valid_input_does_not_panic() {
        // A tiny rate: offsets beyond what a Duration holds saturate.
        let s = Schedule::for_secs(f64::MIN_POSITIVE, 0.0).unwrap();
        assert_eq!(s.offset(1), Duration::MAX);
        // A slot whose time an Instant cannot hold ends the schedule instead of panicking.
        let s = Schedule::for_secs(1e-12, 1e12).unwrap().starting_at(Instant::now());
        assert_eq!(s.total(), 1);
        assert!(s.take().is_some(), "slot 0 is at t0");
        // Slot 1 is 1e19 s after t0: a Duration, but past any Instant.
        let s = Schedule::for_secs(1e-19, 2e19).unwrap().starting_at(Instant::now());
        assert_eq!(s.total(), 2);
        assert_eq!(slots(&s).len(), 1);
    }

    #[test]
    fn the_same_rate_and_duration_give_the_same_slots() {
        let t0 = Instant::now();
        let offsets = |rate: f64| -> Vec<(u64, Duration)> {
            let s = Schedule::for_secs(rate, 7.3).unwrap().starting_at(t0);
            slots(&s).into_iter().map(|x| (x.index, x.offset)).collect()
        };
        for rate in [1.0, 3.0, 33.3, 999.0] {
            assert_eq!(offsets(rate), offsets(rate));
        }
    }

    #[test]
    fn concurrent_takers_get_every_slot_once() {
        let s = Arc::new(Schedule::new(1000.0, Duration::from_secs(2)).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || slots(&s).into_iter().map(|x| x.index).collect::<Vec<_>>())
            })
            .collect();
        let mut all = BTreeSet::new();
        for t in threads {
            for i in t.join().unwrap() {
                assert!(all.insert(i), "slot {i} handed out twice");
            }
        }
        assert_eq!(all, (0..2000).collect::<BTreeSet<_>>());
    }

    #[tokio::test]
    async fn started_reports_t0() {
        let s = Arc::new(Schedule::new(10.0, Duration::from_secs(1)).unwrap().lead(Duration::from_millis(5)));
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.started().await }
        });
        let first = s.take().unwrap();
        assert_eq!(waiter.await.unwrap(), first.intended);
        let given = Instant::now();
        assert_eq!(Schedule::new(1.0, Duration::from_secs(1)).unwrap().starting_at(given).started().await, given);
    }

    proptest! {
        /// Any valid rate and duration: `round(rate * secs)` slots, spaced `1 / rate` apart,
        /// in order, the last one no later than the duration.
        #[test]
        fn slots_are_evenly_spaced_within_the_duration(rate in 0.5f64..5000.0, secs in 0.0f64..20.0) {
            let t0 = Instant::now();
            let s = Schedule::for_secs(rate, secs).unwrap().starting_at(t0);
            prop_assert_eq!(s.total(), (rate * secs).round() as u64);
            let taken = slots(&s);
            prop_assert_eq!(taken.len() as u64, s.total());
            for (i, slot) in taken.iter().enumerate() {
                prop_assert_eq!(slot.index, i as u64);
                prop_assert_eq!(slot.intended, t0 + slot.offset);
                // Within a nanosecond (rounding) of i / rate.
                let exact = i as f64 / rate;
                prop_assert!((slot.offset.as_secs_f64() - exact).abs() <= 1e-9 + exact * 1e-15, "{} vs {}", slot.offset.as_secs_f64(), exact);
            }
            for w in taken.windows(2) {
                prop_assert!(w[0].offset < w[1].offset);
            }
            if let Some(last) = taken.last() {
                prop_assert!(last.offset.as_secs_f64() <= secs + 1e-9);
            }
            prop_assert!(s.take().is_none());
        }
    }
}
