//! The history of a run, Jepsen style: every client operation is recorded when invoked and
//! again when it completes (`ok`, `failed`, or `unknown` — a timeout is unknown, never failed),
//! with fault events interleaved. Checkers read it after the run; it is written to
//! `history.jsonl`, one event per line.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A client sent a request.
    Invoke,
    /// It completed and did what it says.
    Ok,
    /// It completed and definitely did nothing.
    Failed,
    /// It may or may not have happened (timeout, connection cut, 5xx).
    Unknown,
    /// A fault started or stopped.
    Fault,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Order in the history.
    pub index: u64,
    /// Microseconds since the run started.
    pub time_us: u64,
    /// The client (one per payment flow) that made the call; 0 for faults.
    pub process: u64,
    /// Invoke, completion or fault.
    pub kind: Kind,
    /// The call (`create`, `confirm`, `capture`, `cancel`, `refund`, `retrieve`) or fault verb.
    pub f: String,
    /// The payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// The merchant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    /// The Idempotency-Key sent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When the call was meant to start (open-model schedule), µs since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_us: Option<u64>,
    /// Request (on invoke) or response summary (on completion): amounts, status, error code.
    /// Never card data.
    #[serde(default)]
    pub value: serde_json::Value,
}

impl Event {
    /// Whether this completes an invocation.
    pub fn is_completion(&self) -> bool {
        matches!(self.kind, Kind::Ok | Kind::Failed | Kind::Unknown)
    }
}

/// A shared, append-only history.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { start: Instant::now(), events: Arc::default() }
    }
}

/// Builder-ish data of one event, before the recorder stamps it.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// Client.
    pub process: u64,
    /// Call or verb.
    pub f: String,
    /// Payment.
    pub payment_id: Option<String>,
    /// Merchant.
    pub merchant_id: Option<String>,
    /// Idempotency key.
    pub key: Option<String>,
    /// Intended start, µs since start.
    pub intended_us: Option<u64>,
    /// Details.
    pub value: serde_json::Value,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self::default()
    }

    /// Microseconds since the start.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The start instant (for open-model schedules).
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Appends an event.
    pub fn record(&self, kind: Kind, entry: Entry) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let index = events.len() as u64;
        events.push(Event {
            index,
            time_us: self.now_us(),
            process: entry.process,
            kind,
            f: entry.f,
            payment_id: entry.payment_id,
            merchant_id: entry.merchant_id,
            key: entry.key,
            intended_us: entry.intended_us,
            value: entry.value,
        });
    }

    /// A fault event (`value.phase` = `start` or `stop`).
    pub fn fault(&self, verb: &str, phase: &str, detail: serde_json::Value) {
        self.record(
            Kind::Fault,
            Entry { f: verb.to_string(), value: serde_json::json!({ "phase": phase, "detail": detail }), ..Default::default() },
        );
    }

    /// A copy of the history so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The history as JSON lines.
pub fn to_jsonl(events: &[Event]) -> String {
    events.iter().map(|e| serde_json::to_string(e).unwrap_or_default() + "\n").collect()
}

/// Pairs each completion with its invocation (same process and call, the latest open invoke).
pub fn pairs(events: &[Event]) -> Vec<(&Event, &Event)> {
    let mut open: std::collections::HashMap<(u64, &str), Vec<&Event>> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in events {
        match e.kind {
            Kind::Invoke => open.entry((e.process, e.f.as_str())).or_default().push(e),
            Kind::Ok | Kind::Failed | Kind::Unknown => {
                if let Some(inv) = open.get_mut(&(e.process, e.f.as_str())).and_then(Vec::pop) {
                    out.push((inv, e));
                }
            }
            Kind::Fault => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_pair_up_and_round_trip() {
        let r = Recorder::new();
        let e = |f: &str| Entry { process: 1, f: f.into(), payment_id: Some("p".into()), ..Default::default() };
        r.record(Kind::Invoke, e("create"));
        r.fault("nats_restart", "start", serde_json::json!({}));
        r.record(Kind::Unknown, e("create"));
        let events = r.events();
        assert_eq!(events.len(), 3);
        let p = pairs(&events);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1.kind, Kind::Unknown);
        let text = to_jsonl(&events);
        let back: Vec<Event> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(back, events);
    }
}
