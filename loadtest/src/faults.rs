//! Chaos during the load: a NATS restart or a crash of the in-process workers at a given second
//! of the schedule, and the disruption each caused.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::scenario::faults;
use harness::scenario::spec::Verb;
use harness::Environment;
use serde::Serialize;
use tokio::sync::Mutex;

use harness::schedule::Schedule;

/// Parses `500ms`, `20s`, `1.5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("invalid duration {s:?} (expected e.g. 500ms, 20s, 1.5s, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid duration {s:?}: must be a non-negative number"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultKind {
    /// Restarts every NATS node, store kept (the scenario verb `nats_restart`).
    NatsRestart,
    /// Kills every in-process worker and starts as many again after `down` (the scenario verb
    /// `worker_kill` and its undo).
    WorkerCrash {
        /// How long no worker runs.
        #[serde(with = "secs")]
        down: Duration,
    },
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// A fault and when to apply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FaultSpec {
    /// What.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// When, from the start of the schedule.
    #[serde(rename = "at_s", with = "secs")]
    pub at: Duration,
}

impl FromStr for FaultSpec {
    type Err = String;

    /// `nats-restart@20s`, `worker-crash@20s` (restarted at once) or `worker-crash@20s+3s`
    /// (restarted 3 s later).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, when) =
            s.split_once('@').ok_or_else(|| format!("fault {s:?} must be KIND@TIME, e.g. nats-restart@20s or worker-crash@20s+3s"))?;
        let (at, down) = match when.split_once('+') {
            Some((at, down)) => (at, Some(down)),
            None => (when, None),
        };
        let at = parse_duration(at)?;
        let kind = match (kind.trim(), down) {
            ("nats-restart", None) => FaultKind::NatsRestart,
            ("nats-restart", Some(_)) => {
                return Err("nats-restart takes no +DOWN time: the restart itself takes as long as it takes".into())
            }
            ("worker-crash", down) => FaultKind::WorkerCrash { down: down.map(parse_duration).transpose()?.unwrap_or(Duration::ZERO) },
            (other, _) => return Err(format!("unknown fault {other:?} (expected nats-restart or worker-crash)")),
        };
        Ok(FaultSpec { kind, at })
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::NatsRestart => write!(f, "nats-restart@{}s", self.at.as_secs_f64()),
            FaultKind::WorkerCrash { down } if down.is_zero() => write!(f, "worker-crash@{}s", self.at.as_secs_f64()),
            FaultKind::WorkerCrash { down } => write!(f, "worker-crash@{}s+{}s", self.at.as_secs_f64(), down.as_secs_f64()),
        }
    }
}

/// A fault as it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedFault {
    /// What was asked for.
    pub spec: FaultSpec,
    /// When it began, s from the start of the schedule.
    pub started_s: f64,
    /// When it was over (NATS back, workers started again), s.
    pub finished_s: f64,
    /// Why it could not be applied, if so.
    pub error: Option<String>,
}

/// Applies `faults` on the schedule's clock; `workers` in-process workers are restarted after a
/// crash. Returns when the last one is over.
pub async fn timeline(
    env: Arc<Mutex<Environment>>,
    workers: usize,
    mut faults: Vec<FaultSpec>,
    schedule: Arc<Schedule>,
) -> Vec<AppliedFault> {
    faults.sort_by_key(|f| f.at);
    let t0 = schedule.started().await;
    let since = |i: Instant| i.saturating_duration_since(t0).as_secs_f64();
    let mut out = Vec::new();
    for spec in faults {
        tokio::time::sleep_until((t0 + spec.at).into()).await;
        let started = Instant::now();
        tracing::info!(fault = %spec, "applying fault");
        let result = apply(&env, workers, spec.kind).await;
        if let Err(e) = &result {
            tracing::warn!(fault = %spec, error = %e, "fault failed");
        }
        out.push(AppliedFault { spec, started_s: since(started), finished_s: since(Instant::now()), error: result.err() });
    }
    out
}

/// Applies a fault through the scenario verbs (`harness::scenario::faults`): a NATS restart is
/// `nats_restart`, a worker crash is `worker_kill` and, `down` later, its undo (the workers
/// start again).
async fn apply(env: &Mutex<Environment>, workers: usize, kind: FaultKind) -> Result<(), String> {
    match kind {
        FaultKind::NatsRestart => verb(env, &Verb::NatsRestart { node: None }, false, workers).await,
        FaultKind::WorkerCrash { down } => {
            verb(env, &Verb::WorkerKill, false, workers).await?;
            tokio::time::sleep(down).await;
            verb(env, &Verb::WorkerKill, true, workers).await
        }
    }
}

async fn verb(env: &Mutex<Environment>, verb: &Verb, undo: bool, workers: usize) -> Result<(), String> {
    let phase = if undo { "undo" } else { "apply" };
    faults::apply(verb, undo, &mut *env.lock().await, workers).await.map_err(|e| format!("{} ({phase}) failed: {e}", verb.name()))
}

/// Good seconds in a row that end a disruption.
pub const QUIET_SECONDS: u64 = 5;

/// The seconds a fault disrupted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Disruption {
    /// First disrupted second.
    pub start_s: u64,
    /// One past the last disrupted second.
    pub end_s: u64,
    /// From the fault to the end of the disruption, s.
    pub recovery_s: f64,
    /// Whether a good second followed before the run (or the next fault) ended.
    pub recovered: bool,
}

/// The disruption around a fault at `at_s`: from the first bad second (errors, or a p99 above
/// target), starting one second before the fault, to the last bad second followed by
/// [`QUIET_SECONDS`] good ones, looking no further than `until_s` (the next fault or the end).
/// `bad(s)` tells whether second `s` was bad. `None` when no second was.
pub fn disruption(at_s: f64, until_s: u64, bad: impl Fn(u64) -> bool) -> Option<Disruption> {
    let from = (at_s.floor() as u64).saturating_sub(1);
    let start = (from..until_s).find(|s| bad(*s))?;
    let mut last = start;
    for s in start + 1..until_s {
        if s - last > QUIET_SECONDS {
            break;
        }
        if bad(s) {
            last = s;
        }
    }
    let end = last + 1;
    Some(Disruption { start_s: start, end_s: end, recovery_s: (end as f64 - at_s).max(0.0), recovered: end < until_s })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("nats-restart@20s".parse(), Ok(FaultSpec { kind: FaultKind::NatsRestart, at: Duration::from_secs(20) }));
        assert_eq!(
            "worker-crash@1.5s+3s".parse(),
            Ok(FaultSpec { kind: FaultKind::WorkerCrash { down: Duration::from_secs(3) }, at: Duration::from_millis(1500) })
        );
        assert_eq!("worker-crash@20".parse::<FaultSpec>().unwrap().kind, FaultKind::WorkerCrash { down: Duration::ZERO });
        assert!("nats-restart".parse::<FaultSpec>().unwrap_err().contains("KIND@TIME"));
        assert!("disk-full@3s".parse::<FaultSpec>().unwrap_err().contains("unknown fault"));
        assert!("nats-restart@soon".parse::<FaultSpec>().unwrap_err().contains("invalid duration"));
        assert!("nats-restart@2s+1s".parse::<FaultSpec>().unwrap_err().contains("no +DOWN"));
        assert_eq!("worker-crash@2s+1s".parse::<FaultSpec>().unwrap().to_string(), "worker-crash@2s+1s");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 7 "), Ok(Duration::from_secs(7)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn disruption_window_and_recovery() {
        let bad = |s: u64| matches!(s, 20..=22 | 25);
        let d = disruption(20.3, 60, bad).unwrap();
        assert_eq!((d.start_s, d.end_s), (20, 26));
        assert!((d.recovery_s - 5.7).abs() < 1e-9);
        assert!(d.recovered);
        // A bad second long after the fault is not part of its disruption.
        let d = disruption(20.0, 60, |s| s == 21 || s == 40).unwrap();
        assert_eq!((d.start_s, d.end_s), (21, 22));
        assert!(disruption(20.0, 60, |_| false).is_none());
        // Still bad at the end: not recovered.
        let d = disruption(5.0, 10, |s| s >= 5).unwrap();
        assert_eq!((d.end_s, d.recovered), (10, false));
    }
}
