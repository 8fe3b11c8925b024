//! The open-model schedule: request `i` is intended at `t0 + i / rate`, whoever sends it and
//! however long earlier requests take. A free user takes the next slot, waits for its
//! intended time and sends; latency counts from the intended time, so a stalled system cannot
//! hide its stall by slowing the generator down (coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// One request slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Position in the schedule, from 0.
    pub index: u64,
    /// When it should be sent.
    pub intended: Instant,
    /// `intended - t0`.
    pub offset: Duration,
}

/// A fixed-rate global schedule shared by every user.
#[derive(Debug)]
pub struct Schedule {
    /// Requests per second.
    rate: f64,
    /// Slots in the run: `rate * duration`.
    total: u64,
    /// How far ahead of the first taker `t0` is set, so that goose can start every user.
    lead: Duration,
    /// Start of the schedule, set by the first slot taken.
    t0: OnceLock<Instant>,
    /// Tells waiters (the fault timeline) when `t0` is set.
    started: watch::Sender<Option<Instant>>,
    /// Next slot to hand out.
    next: AtomicU64,
    /// Slots whose request completed (answered or failed).
    completed: AtomicU64,
}

impl Schedule {
    /// `rate` requests per second for `duration`; `t0` is `lead` after the first slot is taken.
    pub fn new(rate: f64, duration: Duration, lead: Duration) -> Schedule {
        let total = (rate * duration.as_secs_f64()).round() as u64;
        Schedule {
            rate,
            total,
            lead,
            t0: OnceLock::new(),
            started: watch::channel(None).0,
            next: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        }
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Slots in the run.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Start of the schedule, once the first slot was taken.
    pub fn t0(&self) -> Option<Instant> {
        self.t0.get().copied()
    }

    /// Waits until the schedule has started and returns `t0`.
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

    /// When slot `index` is intended, relative to `t0`.
    pub fn offset(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// Takes the next slot; `None` once every slot is handed out.
    pub fn take(&self) -> Option<Slot> {
        let t0 = *self.t0.get_or_init(|| {
            let t0 = Instant::now() + self.lead;
            self.started.send_replace(Some(t0));
            t0
        });
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        if index >= self.total {
            return None;
        }
        let offset = self.offset(index);
        Some(Slot { index, intended: t0 + offset, offset })
    }

    /// Records that a slot's request completed; true for the last one.
    pub fn complete(&self) -> bool {
        self.completed.fetch_add(1, Ordering::AcqRel) + 1 == self.total
    }

    /// Slots completed so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Slots handed out so far.
    pub fn taken(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_rate_and_end() {
        let s = Schedule::new(100.0, Duration::from_millis(50), Duration::ZERO);
        assert_eq!(s.total(), 5);
        let slots: Vec<Slot> = std::iter::from_fn(|| s.take()).collect();
        assert_eq!(slots.len(), 5);
        let t0 = s.t0().unwrap();
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(slot.index, i as u64);
            assert_eq!(slot.offset, Duration::from_millis(10 * i as u64));
            assert_eq!(slot.intended, t0 + slot.offset);
        }
        assert!(s.take().is_none());
        assert_eq!(s.taken(), 5);
        assert!(!s.complete());
        for _ in 0..3 {
            s.complete();
        }
        assert!(s.complete(), "the fifth completion is the last");
    }

    #[tokio::test]
    async fn started_reports_t0() {
        let s = std::sync::Arc::new(Schedule::new(10.0, Duration::from_secs(1), Duration::from_millis(5)));
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.started().await }
        });
        let first = s.take().unwrap();
        assert_eq!(waiter.await.unwrap(), first.intended);
    }
}
