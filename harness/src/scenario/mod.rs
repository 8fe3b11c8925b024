//! Chaos scenarios: scripts as data ([`spec`]), the recorded history ([`history`]) and the
//! invariant checkers ([`checkers`]), pure functions run after the faults stop.

pub mod checkers;
pub mod history;
pub mod observe;
pub mod report;
pub mod runner;
pub mod spec;
pub mod workload;
