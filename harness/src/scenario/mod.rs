//! Chaos scenarios: scripts as data ([`spec`]), the fault verbs ([`faults`]), the recorded
//! history ([`history`]), what a run left behind ([`observe`]) and the invariant checkers
//! ([`checkers`]), pure functions run after the faults stop; [`runner`] runs a scenario with
//! the timeouts of [`timing`].

pub mod checkers;
pub mod faults;
pub mod history;
pub mod observe;
pub mod report;
pub mod runner;
pub mod spec;
pub mod timing;
pub mod workload;
