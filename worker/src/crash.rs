//! Crash points: a worker process that kills itself, as SIGKILL would, when a durable operation
//! reaches a configured point (`crash_at`, on the `crash_after`-th operation to get there).
//!
//! Nothing is flushed, stored, replied or acked after the point: JetStream redelivers the
//! message after the ack wait, to whichever worker pulls next.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::CrashPoint;

/// When this process dies.
#[derive(Debug)]
pub struct CrashPlan {
    /// The point.
    point: CrashPoint,
    /// Die on the N-th operation reaching it (from 1).
    after: u64,
    /// Operations that reached it so far.
    reached: AtomicU64,
    /// Instance name, for the last log line.
    name: String,
}

impl CrashPlan {
    /// A plan from the configuration, if it names a point.
    pub fn new(point: Option<CrashPoint>, after: u64, name: &str) -> Option<CrashPlan> {
        point.map(|point| CrashPlan { point, after: after.max(1), reached: AtomicU64::new(0), name: name.to_string() })
    }

    /// Whether this plan can fire at `point` (to do work only needed there, like a flush).
    pub fn armed_at(&self, point: CrashPoint) -> bool {
        self.point == point && self.reached.load(Ordering::SeqCst) < self.after
    }

    /// Counts one operation (`key`) reaching `point`; on the configured one the process dies.
    pub fn reached(&self, point: CrashPoint, key: &str) {
        if point != self.point {
            return;
        }
        let n = self.reached.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.after {
            die(&format!(
                "worker {}: crash point {point} reached by durable operation #{n} (idempotency key {key}); killing the process (SIGKILL)",
                self.name
            ));
        }
    }
}

/// Writes one line to stderr (unbuffered), then kills this process with SIGKILL: no destructor,
/// no flush, no ack.
pub fn die(line: &str) -> ! {
    eprintln!("{line}");
    // SAFETY: getpid and kill have no memory-safety preconditions; SIGKILL cannot be caught, so
    // the process ends before the call returns to any Rust code that could observe it.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // Unreachable in practice; abort is the next closest thing to a kill.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_its_point_and_stops_being_armed_after_firing_count() {
        assert!(CrashPlan::new(None, 1, "w").is_none());
        let plan = CrashPlan::new(Some(CrashPoint::AfterReply), 3, "w").unwrap();
        assert!(plan.armed_at(CrashPoint::AfterReply));
        assert!(!plan.armed_at(CrashPoint::BeforeProcessor));
        // Other points never count, and the first two operations at the point survive.
        plan.reached(CrashPoint::BeforeProcessor, "k0");
        plan.reached(CrashPoint::AfterProcessor, "k0");
        plan.reached(CrashPoint::AfterReply, "k1");
        plan.reached(CrashPoint::AfterReply, "k2");
        assert_eq!(plan.reached.load(Ordering::SeqCst), 2);
        assert!(plan.armed_at(CrashPoint::AfterReply));
    }
}
