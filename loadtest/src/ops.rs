//! The operations of the load mix, their default weights, the seeds' latency targets, and how a
//! response is judged.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

/// One kind of request the load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `POST /payments` with `confirm` and automatic capture: charged, the whole amount, by one
    /// authorization that the processor captures in the same call.
    AuthorizeAuto,
    /// `POST /payments` with `confirm` and manual capture: authorized, waiting for a capture.
    AuthorizeManual,
    /// `POST /payments/{id}/capture` of a payment this user authorized (manual capture).
    Capture,
    /// `POST /payments/{id}/cancel` of a payment this user authorized (manual capture).
    Void,
    /// `GET /payments/{id}?force_sync=true`: asks the workers for the payment's state.
    Sync,
    /// `POST /refunds` of a charged payment of this user.
    Refund,
    /// `GET /refunds/{id}` of a refund of this user.
    RefundSync,
}

impl Operation {
    /// Every operation, in the order the reports list them.
    pub const ALL: [Operation; 7] = [
        Operation::AuthorizeAuto,
        Operation::AuthorizeManual,
        Operation::Capture,
        Operation::Void,
        Operation::Sync,
        Operation::Refund,
        Operation::RefundSync,
    ];

    /// Name in reports, goose metrics and file names.
    pub fn name(self) -> &'static str {
        match self {
            Operation::AuthorizeAuto => "authorize_auto",
            Operation::AuthorizeManual => "authorize_manual",
            Operation::Capture => "capture",
            Operation::Void => "void",
            Operation::Sync => "sync",
            Operation::Refund => "refund",
            Operation::RefundSync => "refund_sync",
        }
    }

    /// Weight in the default mix: authorizations feed the captures, voids and refunds that
    /// need an authorized payment, so there are more of them.
    pub fn default_weight(self) -> usize {
        match self {
            Operation::AuthorizeAuto => 2,
            Operation::AuthorizeManual => 3,
            Operation::Capture => 2,
            Operation::Void => 1,
            Operation::Sync => 2,
            Operation::Refund => 1,
            Operation::RefundSync => 1,
        }
    }

    /// The seeds' p99 target (docs/architecture.md section 7), in ms: authorize < 2 s, capture < 1 s,
    /// sync < 500 ms, refund < 3 s. A refund sync is a sync. The seeds name none for a void.
    pub fn seed_target_ms(self) -> Option<f64> {
        match self {
            Operation::AuthorizeAuto | Operation::AuthorizeManual => Some(2_000.0),
            Operation::Capture => Some(1_000.0),
            Operation::Sync | Operation::RefundSync => Some(500.0),
            Operation::Refund => Some(3_000.0),
            Operation::Void => None,
        }
    }

    /// Judges a 2xx answer by its body: the status this operation should reach.
    pub fn judge(self, body: &Value) -> Outcome {
        let status = body["status"].as_str().unwrap_or_default();
        // The gateway answers `processing` (a refund: `pending`) when the outcome is unknown.
        if status == "processing" || (matches!(self, Operation::Refund) && status == "pending") {
            return Outcome::Undecided;
        }
        let ok = match self {
            // Charged in full (a gateway that does not say what it received is taken at its word).
            Operation::AuthorizeAuto => status == "succeeded" && body.get("amount_received").is_none_or(|r| *r == body["amount"]),
            Operation::AuthorizeManual => status == "requires_capture",
            Operation::Capture => matches!(status, "succeeded" | "partially_captured_and_capturable"),
            Operation::Void => status == "cancelled",
            Operation::Refund => status == "succeeded",
            // A read answers whatever state the object is in.
            Operation::Sync | Operation::RefundSync => !status.is_empty(),
        };
        if ok {
            Outcome::Ok
        } else {
            Outcome::Refused
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Operation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Operation::ALL.into_iter().find(|o| o.name() == s).ok_or_else(|| format!("unknown operation {s:?} (expected one of: {})", names()))
    }
}

fn names() -> String {
    Operation::ALL.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx and the operation reached the state it aims at.
    Ok,
    /// 2xx, but the outcome is unknown (`processing`, a `pending` refund).
    Undecided,
    /// 2xx, but in another state (e.g. `failed`: no workers, circuit open).
    Refused,
    /// A 4xx answer.
    ClientError,
    /// A 5xx answer.
    ServerError,
    /// No answer: connection refused or reset, client timeout.
    Transport,
}

impl Outcome {
    /// Everything but [`Outcome::Ok`] counts as an error: the mix only sends requests that a
    /// healthy system completes.
    pub fn is_error(self) -> bool {
        self != Outcome::Ok
    }

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Undecided => "undecided",
            Outcome::Refused => "refused",
            Outcome::ClientError => "http_4xx",
            Outcome::ServerError => "http_5xx",
            Outcome::Transport => "transport_error",
        }
    }
}

/// HTTP status class of an answer, for the per-class histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum StatusClass {
    /// 200-299.
    #[serde(rename = "2xx")]
    Success,
    /// 400-499.
    #[serde(rename = "4xx")]
    ClientError,
    /// 500-599 (and anything else unexpected).
    #[serde(rename = "5xx")]
    ServerError,
    /// No HTTP answer at all.
    #[serde(rename = "error")]
    Transport,
}

impl StatusClass {
    /// Every class, in report order.
    pub const ALL: [StatusClass; 4] = [StatusClass::Success, StatusClass::ClientError, StatusClass::ServerError, StatusClass::Transport];

    /// The class of an HTTP status, or of no answer (`None`).
    pub fn of(status: Option<u16>) -> StatusClass {
        match status {
            Some(200..=299) => StatusClass::Success,
            Some(400..=499) => StatusClass::ClientError,
            Some(_) => StatusClass::ServerError,
            None => StatusClass::Transport,
        }
    }

    /// Name in reports and file names.
    pub fn name(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Transport => "error",
        }
    }
}

/// Weights of the operations in the mix (goose transaction weights).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(pub BTreeMap<Operation, usize>);

impl Default for Mix {
    fn default() -> Self {
        Mix(Operation::ALL.into_iter().map(|o| (o, o.default_weight())).collect())
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `op=weight,op=weight,...`; operations left out keep their default weight, 0 removes one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = Mix::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (op, weight) = part.split_once('=').ok_or_else(|| format!("mix entry {part:?} is not op=weight"))?;
            let op: Operation = op.trim().parse()?;
            let weight: usize =
                weight.trim().parse().map_err(|_| format!("weight of {op} must be a whole number, got {:?}", weight.trim()))?;
            mix.0.insert(op, weight);
        }
        if mix.0.values().all(|w| *w == 0) {
            return Err("the mix has no operation with a weight above 0".into());
        }
        Ok(mix)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().filter(|(_, w)| **w > 0).map(|(o, w)| format!("{o}={w}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(op.name().parse::<Operation>(), Ok(op));
        }
        assert!("authorize".parse::<Operation>().unwrap_err().contains("unknown operation"));
    }

    #[test]
    fn answers_are_judged_by_the_state_reached() {
        assert_eq!(Operation::AuthorizeAuto.judge(&json!({"status": "succeeded"})), Outcome::Ok);
        assert_eq!(Operation::AuthorizeAuto.judge(&json!({"status": "succeeded", "amount": 700, "amount_received": 700})), Outcome::Ok);
        assert_eq!(
            Operation::AuthorizeAuto.judge(&json!({"status": "succeeded", "amount": 700, "amount_received": 300})),
            Outcome::Refused
        );
        assert_eq!(Operation::AuthorizeAuto.judge(&json!({"status": "requires_capture"})), Outcome::Refused);
        assert_eq!(Operation::AuthorizeAuto.judge(&json!({"status": "processing"})), Outcome::Undecided);
        assert_eq!(Operation::AuthorizeManual.judge(&json!({"status": "failed"})), Outcome::Refused);
        assert_eq!(Operation::Refund.judge(&json!({"status": "pending"})), Outcome::Undecided);
        assert_eq!(Operation::Sync.judge(&json!({"status": "requires_capture"})), Outcome::Ok);
        assert_eq!(Operation::Sync.judge(&json!(null)), Outcome::Refused);
    }

    #[test]
    fn mix_parses_and_rejects() {
        let m: Mix = "capture=5, void=0".parse().unwrap();
        assert_eq!(m.0[&Operation::Capture], 5);
        assert_eq!(m.0[&Operation::Void], 0);
        assert_eq!(m.0[&Operation::Sync], 2, "left out: default weight");
        assert!("capture".parse::<Mix>().unwrap_err().contains("op=weight"));
        assert!("capture=x".parse::<Mix>().unwrap_err().contains("whole number"));
        let all_zero = Operation::ALL.iter().map(|o| format!("{o}=0")).collect::<Vec<_>>().join(",");
        assert!(all_zero.parse::<Mix>().unwrap_err().contains("no operation"));
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(Some(200)), StatusClass::Success);
        assert_eq!(StatusClass::of(Some(409)), StatusClass::ClientError);
        assert_eq!(StatusClass::of(Some(503)), StatusClass::ServerError);
        assert_eq!(StatusClass::of(None), StatusClass::Transport);
    }
}
