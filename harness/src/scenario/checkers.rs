//! The invariants (docs/architecture.md section 5) as pure functions over what a run observed: the history,
//! the processor's ledger, the gateway's store and the streams' audit trail. They run after the
//! faults stop and the system has settled.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gateway::model::RefundStatus;
use gateway::store::{OpStatus, OperationRecord, Payment, Refund};
use mock_processor::{Account, Effect};
use serde::Serialize;

use super::history::{pairs, Event, Kind};

/// An invariant: one name each, the same in scenario files, checkers, reports and the load test
/// (docs/architecture.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    /// At most one processor effect per operation instance.
    NoDoubleEffect,
    /// Captured within authorized, refunded within captured, per payment.
    Amounts,
    /// Nothing left in a transitional state once the run has settled.
    ZeroStuck,
    /// The gateway's final state agrees with the processor's accounts.
    Agreement,
    /// Jepsen-style: nothing reported done is lost, nothing reported failed happened.
    Accounting,
    /// One stored request per operation instance, with its protocol headers.
    Integrity,
    /// p99 latency per operation within the scenario's targets.
    Latency,
    /// No card number in logs, reports or stored messages.
    NoCardData,
    /// No operation failed because of the system (faults a correct system masks completely).
    Liveness,
    /// The breaker opened, refused calls, and a probe closed it again.
    CircuitBreaker,
    /// Every poison message reached the dead-letter stream.
    DeadLetter,
}

impl Invariant {
    /// Every invariant, in the order checkers run and reports list them.
    pub const ALL: [Invariant; 11] = [
        Invariant::NoDoubleEffect,
        Invariant::Amounts,
        Invariant::ZeroStuck,
        Invariant::Agreement,
        Invariant::Accounting,
        Invariant::Integrity,
        Invariant::Latency,
        Invariant::NoCardData,
        Invariant::Liveness,
        Invariant::CircuitBreaker,
        Invariant::DeadLetter,
    ];

    /// The name used in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::NoDoubleEffect => "no_double_effect",
            Invariant::Amounts => "amounts",
            Invariant::ZeroStuck => "zero_stuck",
            Invariant::Agreement => "agreement",
            Invariant::Accounting => "accounting",
            Invariant::Integrity => "integrity",
            Invariant::Latency => "latency",
            Invariant::NoCardData => "no_card_data",
            Invariant::Liveness => "liveness",
            Invariant::CircuitBreaker => "circuit_breaker",
            Invariant::DeadLetter => "dead_letter",
        }
    }

    /// Whether the checker reads the client history (a load run keeps none).
    pub fn needs_history(self) -> bool {
        matches!(self, Invariant::Accounting | Invariant::Latency | Invariant::CircuitBreaker)
    }
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown invariant {0:?} (known: {known})", known = Invariant::ALL.map(Invariant::name).join(", "))]
pub struct UnknownInvariant(pub String);

impl std::str::FromStr for Invariant {
    type Err = UnknownInvariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Invariant::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| UnknownInvariant(s.to_string()))
    }
}

impl PartialEq<&str> for Invariant {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// One stored message of a stream, as the audit trail sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditMessage {
    /// Stream.
    pub stream: String,
    /// Sequence.
    pub seq: u64,
    /// Subject.
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub message_id: Option<String>,
    /// Every header, name and value.
    pub headers: Vec<(String, String)>,
}

/// Everything a run observed.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// The client history.
    pub history: Vec<Event>,
    /// The processor's ledger.
    pub ledger: Vec<Effect>,
    /// Processor accounts of every payment the ledger names.
    pub accounts: Vec<Account>,
    /// The gateway's payments.
    pub payments: Vec<Payment>,
    /// The gateway's operations.
    pub operations: Vec<OperationRecord>,
    /// The gateway's refunds.
    pub refunds: Vec<Refund>,
    /// The durable streams' messages.
    pub audit: Vec<AuditMessage>,
    /// Replies the bridges refused (wrong correlation id, merchant or payment).
    pub rejected_replies: u64,
    /// Texts to scan for card data: (where, content) — logs, reports.
    pub texts: Vec<(String, String)>,
    /// What the server said when asked whether a stream captures a query subject (`None`: none does).
    pub stream_capture: Option<String>,
    /// Poison messages the faults published.
    pub poisoned: usize,
    /// Messages in the dead-letter stream.
    pub dead_letters: usize,
    /// Payment calls the clients sent (from the history, or the load generator's count): a run
    /// that sent work and read nothing back has checked nothing.
    pub sent: usize,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// The invariant.
    pub invariant: Invariant,
    /// The payments involved.
    pub payments: Vec<String>,
    /// What is wrong.
    pub message: String,
}

/// Jepsen-style accounting of client operations.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Accounting {
    /// Completed and did it.
    pub ok: usize,
    /// Completed and definitely did nothing.
    pub failed: usize,
    /// Unknown when they completed.
    pub unknown: usize,
    /// Reported done (ok) but absent from the final state.
    pub lost: usize,
    /// Reported not done (failed) but present in the final state.
    pub unexpected: usize,
    /// Unknown ones whose payment settled to a definite state after reconciliation.
    pub recovered: usize,
}

/// The result of every checker.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    /// Invariants checked.
    pub checked: Vec<Invariant>,
    /// What broke.
    pub violations: Vec<Violation>,
    /// Operation accounting.
    pub accounting: Accounting,
    /// p99 (µs) per call, from the intended send time.
    pub p99_us: BTreeMap<String, u64>,
}

impl Verdict {
    /// Whether every checked invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

fn v(invariant: Invariant, payments: Vec<String>, message: String) -> Violation {
    Violation { invariant, payments, message }
}

/// Invariant 1: at most one processor effect per operation instance (by idempotency key, and
/// by instance reference for one operation of one payment).
pub fn no_double_effect(ledger: &[Effect]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut by_key: HashMap<&str, Vec<&Effect>> = HashMap::new();
    let mut by_instance: HashMap<(&str, &str, &str, &str), Vec<&Effect>> = HashMap::new();
    for e in ledger {
        if let Some(k) = e.idempotency_key.as_deref() {
            by_key.entry(k).or_default().push(e);
        }
        if let Some(r) = e.reference.as_deref() {
            by_instance.entry((&e.merchant_id, &e.payment_id, &e.operation, r)).or_default().push(e);
        }
    }
    let mut seen = BTreeSet::new();
    for (k, effects) in by_key {
        if effects.len() > 1 {
            seen.insert(k.to_string());
            out.push(v(
                Invariant::NoDoubleEffect,
                vec![effects[0].payment_id.clone()],
                format!("{} effects for idempotency key {k}", effects.len()),
            ));
        }
    }
    for ((_, p, op, r), effects) in by_instance {
        let keys: BTreeSet<_> = effects.iter().filter_map(|e| e.idempotency_key.clone()).collect();
        if effects.len() > 1 && !keys.iter().any(|k| seen.contains(k)) {
            out.push(v(Invariant::NoDoubleEffect, vec![p.to_string()], format!("{} {op} effects for instance {r}", effects.len())));
        }
    }
    out.sort_by(|a, b| a.message.cmp(&b.message));
    out
}

/// Invariant 2: Per payment: captured <= authorized, refunded <= captured.
pub fn amounts(accounts: &[Account]) -> Vec<Violation> {
    accounts
        .iter()
        .filter(|a| a.captured > a.authorized || a.refunded > a.captured)
        .map(|a| {
            v(
                Invariant::Amounts,
                vec![a.payment_id.clone()],
                format!("authorized {}, captured {}, refunded {}", a.authorized, a.captured, a.refunded),
            )
        })
        .collect()
}

/// Invariant 3: Nothing left in a transitional state after the recovery window.
pub fn zero_stuck(payments: &[Payment], operations: &[OperationRecord], refunds: &[Refund]) -> Vec<Violation> {
    let mut out: Vec<Violation> = payments
        .iter()
        .filter(|p| p.status.is_transitional())
        .map(|p| v(Invariant::ZeroStuck, vec![p.payment_id.clone()], format!("payment stuck in {}", p.status.as_str())))
        .collect();
    out.extend(
        operations.iter().filter(|o| !o.status.is_final()).map(|o| {
            v(Invariant::ZeroStuck, vec![o.payment_id.clone()], format!("operation {} ({}) unresolved", o.message_id, o.operation))
        }),
    );
    out.extend(
        refunds
            .iter()
            .filter(|r| r.status == RefundStatus::Pending)
            .map(|r| v(Invariant::ZeroStuck, vec![r.payment_id.clone()], format!("refund {} still pending", r.refund_id))),
    );
    out
}

/// Invariant 4: Gateway state == processor ledger == stream audit trail.
pub fn agreement(o: &Observations) -> Vec<Violation> {
    let mut out = Vec::new();
    let effect_by_key: HashMap<&str, &Effect> = o.ledger.iter().filter_map(|e| Some((e.idempotency_key.as_deref()?, e))).collect();
    let audited: BTreeSet<&str> = o.audit.iter().filter_map(|m| m.message_id.as_deref()).collect();
    for op in &o.operations {
        let effect = effect_by_key.get(op.message_id.as_str());
        match (op.status, effect) {
            (OpStatus::Succeeded, None) if op.operation != "payments.sync" => out.push(v(
                Invariant::Agreement,
                vec![op.payment_id.clone()],
                format!("{} succeeded in the gateway, no effect at the processor", op.message_id),
            )),
            (OpStatus::Failed, Some(_)) => out.push(v(
                Invariant::Agreement,
                vec![op.payment_id.clone()],
                format!("{} failed in the gateway, but the processor did it", op.message_id),
            )),
            _ => {}
        }
        if op.status == OpStatus::Succeeded && !audited.contains(op.message_id.as_str()) {
            out.push(v(
                Invariant::Agreement,
                vec![op.payment_id.clone()],
                format!("{} succeeded but is not in the stream audit trail", op.message_id),
            ));
        }
    }
    let accounts: HashMap<(&str, &str), &Account> =
        o.accounts.iter().map(|a| ((a.merchant_id.as_str(), a.payment_id.as_str()), a)).collect();
    for p in &o.payments {
        let (authorized, captured, refunded, voided) = match accounts.get(&(p.merchant_id.as_str(), p.payment_id.as_str())) {
            Some(a) => (a.authorized, a.captured, a.refunded, a.voided),
            None => (0, 0, 0, false),
        };
        // The status must say what the amounts say.
        use gateway::model::AttemptStatus as S;
        let consistent = match p.status {
            S::Authorized => p.amount_captured == 0,
            S::PartialCharged => p.amount_captured > 0 && p.amount_captured < p.amount_authorized,
            S::Charged => p.amount_captured > 0 && p.amount_captured >= p.amount_authorized,
            S::Voided => p.amount_captured == 0,
            _ => true,
        };
        if !consistent {
            out.push(v(
                Invariant::Agreement,
                vec![p.payment_id.clone()],
                format!(
                    "status {} contradicts its amounts (authorized {}, captured {})",
                    p.status.as_str(),
                    p.amount_authorized,
                    p.amount_captured
                ),
            ));
        }
        let ours = (p.amount_authorized, p.amount_captured, p.amount_refunded, p.status == gateway::model::AttemptStatus::Voided);
        if ours != (authorized, captured, refunded, voided) {
            out.push(v(
                Invariant::Agreement,
                vec![p.payment_id.clone()],
                format!(
                    "gateway (authorized {}, captured {}, refunded {}, voided {}) != processor (authorized {authorized}, captured {captured}, refunded {refunded}, voided {voided})",
                    ours.0, ours.1, ours.2, ours.3
                ),
            ));
        }
    }
    out
}

/// Invariant 5: Accounting: what clients were told against the final state.
pub fn accounting(o: &Observations) -> (Accounting, Vec<Violation>) {
    let mut acc = Accounting::default();
    let mut out = Vec::new();
    let payments: HashMap<&str, &Payment> = o.payments.iter().map(|p| (p.payment_id.as_str(), p)).collect();
    let mut effects: HashMap<(&str, &str), i64> = HashMap::new();
    for e in &o.ledger {
        *effects.entry((e.payment_id.as_str(), e.operation.as_str())).or_default() += 1;
    }
    let has = |p: &str, op: &str| effects.get(&(p, op)).copied().unwrap_or(0) > 0;
    // Payments the processor captured something of: by a capture, or by an authorization with
    // automatic capture (one effect that authorized and captured).
    let captured: BTreeSet<&str> = o
        .ledger
        .iter()
        .filter(|e| e.operation == "payments.capture" || (e.operation == "payments.authorize" && e.captured_amount.is_some_and(|c| c > 0)))
        .map(|e| e.payment_id.as_str())
        .collect();
    for (_, done) in pairs(&o.history) {
        let pid = done.payment_id.as_deref().unwrap_or_default();
        let intent = done.value["status"].as_str().unwrap_or_default();
        match done.kind {
            Kind::Ok => {
                acc.ok += 1;
                let lost = match done.f.as_str() {
                    "create" | "confirm" if intent == "succeeded" => !has(pid, "payments.authorize") || !captured.contains(pid),
                    "create" | "confirm" => intent == "requires_capture" && !has(pid, "payments.authorize"),
                    "capture" => matches!(intent, "succeeded" | "partially_captured_and_capturable") && !has(pid, "payments.capture"),
                    "cancel" => intent == "cancelled" && !has(pid, "payments.void"),
                    "refund" => intent == "succeeded" && !has(pid, "refunds.execute"),
                    _ => false,
                };
                if lost {
                    acc.lost += 1;
                    let missing =
                        if intent == "succeeded" && has(pid, "payments.authorize") { "captured nothing" } else { "has no such effect" };
                    out.push(v(
                        Invariant::Accounting,
                        vec![pid.to_string()],
                        format!("{} answered {intent} but the processor {missing}", done.f),
                    ));
                }
            }
            Kind::Failed => {
                acc.failed += 1;
                let authorized_anyway = matches!(done.f.as_str(), "create" | "confirm")
                    && done.value["error_code"].is_string()
                    && intent == "failed"
                    && has(pid, "payments.authorize");
                if authorized_anyway {
                    acc.unexpected += 1;
                    out.push(v(
                        Invariant::Accounting,
                        vec![pid.to_string()],
                        format!("{} answered failed but the processor authorized", done.f),
                    ));
                }
            }
            Kind::Unknown => {
                acc.unknown += 1;
                if payments.get(pid).is_some_and(|p| !p.status.is_transitional()) {
                    acc.recovered += 1;
                }
            }
            _ => {}
        }
    }
    (acc, out)
}

/// Invariant 6: Every reply matched its request; no reply crossed merchants or payments.
pub fn integrity(o: &Observations) -> Vec<Violation> {
    let mut out = Vec::new();
    for (inv, done) in pairs(&o.history) {
        if done.kind != Kind::Ok {
            continue;
        }
        let got_payment = done.value["payment_id"].as_str();
        let got_merchant = done.value["merchant_id"].as_str();
        if got_payment.is_some() && got_payment != inv.payment_id.as_deref() {
            out.push(v(
                Invariant::Integrity,
                vec![inv.payment_id.clone().unwrap_or_default()],
                format!("{} for {:?} answered for payment {:?}", inv.f, inv.payment_id, got_payment),
            ));
        }
        if got_merchant.is_some() && got_merchant != inv.merchant_id.as_deref() {
            out.push(v(
                Invariant::Integrity,
                vec![inv.payment_id.clone().unwrap_or_default()],
                format!("{} of merchant {:?} answered for merchant {:?}", inv.f, inv.merchant_id, got_merchant),
            ));
        }
    }
    // The protocol on the wire: no custom header with the reserved `Nats-` prefix.
    let misused: BTreeSet<&str> = o
        .audit
        .iter()
        .flat_map(|m| m.headers.iter().map(|(name, _)| name.as_str()))
        .filter(|name| nats_bridge::headers::misuses_reserved_prefix(name))
        .collect();
    for name in misused {
        out.push(v(Invariant::Integrity, vec![], format!("messages carry the custom header {name}, which uses the reserved Nats- prefix")));
    }
    if let Some(capture) = &o.stream_capture {
        out.push(v(Invariant::Integrity, vec![], format!("a stream captures a query subject: {capture}")));
    }
    if o.rejected_replies > 0 {
        out.push(v(
            Invariant::Integrity,
            vec![],
            format!("the bridges refused {} replies that did not match their request", o.rejected_replies),
        ));
    }
    out
}

/// Invariant 7: p99 per call from the intended send time, against targets (ms).
pub fn latency(
    history: &[Event],
    targets: &BTreeMap<String, f64>,
    call_of: impl Fn(&str) -> Option<&'static str>,
) -> (BTreeMap<String, u64>, Vec<Violation>) {
    let mut samples: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // Every completion counts, unknown ones too: a call that timed out kept its caller waiting
    // that long, and leaving it out would flatter the tail.
    for (inv, done) in pairs(history) {
        let start = inv.intended_us.unwrap_or(inv.time_us);
        let op = call_of(&inv.f).map(str::to_string).unwrap_or_else(|| inv.f.clone());
        samples.entry(op).or_default().push(done.time_us.saturating_sub(start));
    }
    let mut p99 = BTreeMap::new();
    let mut out = Vec::new();
    for (op, mut s) in samples {
        s.sort_unstable();
        let rank = ((0.99 * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
        let value = s[rank];
        if let Some(target) = targets.get(&op) {
            if value as f64 > target * 1000.0 {
                out.push(v(Invariant::Latency, vec![], format!("{op} p99 {:.1} ms exceeds {target} ms", value as f64 / 1000.0)));
            }
        }
        p99.insert(op, value);
    }
    (p99, out)
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut x = (*d - b'0') as u32;
        if i % 2 == 1 {
            x *= 2;
            if x > 9 {
                x -= 9;
            }
        }
        sum += x;
    }
    sum.is_multiple_of(10)
}

/// Card numbers in a text: runs of 13 to 19 digits, not part of a longer word, that pass the
/// Luhn check.
pub fn card_numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let run = &bytes[start..i];
            // A run inside a word (hex ids, tokens) is not a card number.
            let bounded =
                (start == 0 || !bytes[start - 1].is_ascii_alphanumeric()) && (i == bytes.len() || !bytes[i].is_ascii_alphanumeric());
            if bounded && (13..=19).contains(&run.len()) && luhn(run) {
                out.push(String::from_utf8_lossy(run).into_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Invariant 8: No card number or CVC in headers, logs or reports.
pub fn no_card_data(o: &Observations) -> Vec<Violation> {
    let mut out = Vec::new();
    for m in &o.audit {
        for (name, value) in &m.headers {
            let lower = name.to_ascii_lowercase();
            if !card_numbers(value).is_empty() || lower.contains("cvc") || lower.contains("card") {
                out.push(v(Invariant::NoCardData, vec![], format!("header {name} of {} #{} carries card data", m.stream, m.seq)));
            }
        }
        if !card_numbers(&m.subject).is_empty() {
            out.push(v(Invariant::NoCardData, vec![], format!("subject {} carries a card number", m.subject)));
        }
    }
    for (place, text) in &o.texts {
        let found = card_numbers(text);
        if !found.is_empty() {
            out.push(v(Invariant::NoCardData, vec![], format!("{place} contains {} card number(s)", found.len())));
        }
        if text.contains("\"cvc\"") || text.contains("card_cvc") {
            out.push(v(Invariant::NoCardData, vec![], format!("{place} contains a CVC field")));
        }
    }
    out
}

/// Failure codes that mean "the system could not do it", not "the payment was refused".
pub const SYSTEM_FAILURES: [&str; 9] = [
    "NATS_TIMEOUT",
    "CONNECTOR_TIMEOUT",
    "NO_WORKERS_AVAILABLE",
    "CIRCUIT_OPEN",
    "REQUEST_EXPIRED",
    "NATS_TRANSPORT",
    "INVALID_WORKER_REPLY",
    "INVALID_REPLY",
    "WORKER_ERROR",
];

/// Invariant 9 (for faults a correct system masks completely): no operation ended failed
/// because of the system; only refusals (declines, amount rules) may fail.
pub fn liveness(operations: &[OperationRecord]) -> Vec<Violation> {
    operations
        .iter()
        .filter(|o| o.status == OpStatus::Failed && o.error_code.as_deref().is_some_and(|c| SYSTEM_FAILURES.contains(&c)))
        .map(|o| {
            v(
                Invariant::Liveness,
                vec![o.payment_id.clone()],
                format!(
                    "{} failed with {} ({})",
                    o.message_id,
                    o.error_code.as_deref().unwrap_or(""),
                    o.error_message.as_deref().unwrap_or("")
                ),
            )
        })
        .collect()
}

/// The error code of a call refused by an open circuit breaker.
pub const CIRCUIT_OPEN: &str = "CIRCUIT_OPEN";

/// Circuit breaker: the faults opened it (some call was refused with `CIRCUIT_OPEN`), and for
/// every call refused, a later call of the same kind succeeded (a half-open probe closed it).
pub fn circuit_breaker(history: &[Event]) -> Vec<Violation> {
    let code = |e: &Event| e.value["error_code"].as_str().map(str::to_string);
    // By call: (index of the last refusal, its time, the payments refused).
    let mut last_refusal: BTreeMap<&str, (u64, u64, Vec<String>)> = BTreeMap::new();
    for e in history.iter().filter(|e| e.is_completion() && code(e).as_deref() == Some(CIRCUIT_OPEN)) {
        let entry = last_refusal.entry(e.f.as_str()).or_default();
        (entry.0, entry.1) = (e.index, e.time_us);
        entry.2.extend(e.payment_id.clone());
    }
    if last_refusal.is_empty() {
        return vec![v(
            Invariant::CircuitBreaker,
            Vec::new(),
            "no call was refused by an open circuit breaker: the faults never opened it".into(),
        )];
    }
    last_refusal
        .into_iter()
        .filter(|(f, (i, _, _))| !history.iter().any(|e| e.kind == Kind::Ok && e.f == *f && e.index > *i && code(e).is_none()))
        .map(|(f, (_, t, mut payments))| {
            payments.sort();
            payments.dedup();
            payments.truncate(10);
            v(
                Invariant::CircuitBreaker,
                payments,
                format!("no `{f}` call succeeded after the last refusal at {:.3} s: the breaker never closed", t as f64 / 1e6),
            )
        })
        .collect()
}

/// Dead letters: every poison message published reached the dead-letter stream.
pub fn dead_letter(o: &Observations) -> Vec<Violation> {
    if o.poisoned == 0 {
        return vec![v(Invariant::DeadLetter, Vec::new(), "no poison message was published: the scenario tests nothing".into())];
    }
    if o.dead_letters < o.poisoned {
        return vec![v(
            Invariant::DeadLetter,
            Vec::new(),
            format!("{} poison message(s) published, {} in the dead-letter stream", o.poisoned, o.dead_letters),
        )];
    }
    Vec::new()
}

/// What a checker of `invariant` reads was found empty although the run clearly did work:
/// the checker would pass over nothing, so this is the violation instead.
pub fn unobserved(o: &Observations, invariant: Invariant) -> Option<Violation> {
    let succeeded = o.operations.iter().filter(|op| op.status == OpStatus::Succeeded && op.operation != "payments.sync").count();
    let stored = o.operations.len();
    let empty = |what: &str, because: String| Some(v(invariant, Vec::new(), format!("nothing to check: {what} although {because}")));
    let sent = || format!("{} payment call(s) were sent", o.sent);
    match invariant {
        Invariant::NoDoubleEffect | Invariant::Amounts if succeeded > 0 && o.ledger.is_empty() => {
            empty("the processor's ledger is empty", format!("the gateway holds {succeeded} succeeded operation(s)"))
        }
        Invariant::ZeroStuck | Invariant::Agreement | Invariant::Liveness if o.sent > 0 && o.payments.is_empty() => {
            empty("the gateway's store holds no payment", sent())
        }
        Invariant::Integrity if stored > 0 && o.audit.is_empty() => {
            empty("no stream message was read", format!("the gateway holds {stored} bus operation(s)"))
        }
        Invariant::Integrity if o.sent > 0 && o.payments.is_empty() => empty("the gateway's store holds no payment", sent()),
        Invariant::NoCardData if o.sent > 0 && o.texts.is_empty() => empty("no log or report text was scanned", sent()),
        Invariant::Accounting | Invariant::Latency if o.sent > 0 && o.history.is_empty() => empty("the client history is empty", sent()),
        _ => None,
    }
}

/// Runs the named invariants. Each one whose input is empty although the run did work fails
/// with that reason ([`unobserved`]) instead of passing over nothing.
pub fn check(
    o: &Observations,
    invariants: &[Invariant],
    targets: &BTreeMap<String, f64>,
    call_of: impl Fn(&str) -> Option<&'static str>,
) -> Verdict {
    let mut verdict = Verdict::default();
    let (acc, acc_violations) = accounting(o);
    verdict.accounting = acc;
    let (p99, lat) = latency(&o.history, targets, call_of);
    verdict.p99_us = p99;
    let mut run = |invariant: Invariant, found: Vec<Violation>| {
        if invariants.contains(&invariant) {
            verdict.checked.push(invariant);
            verdict.violations.extend(unobserved(o, invariant));
            verdict.violations.extend(found);
        }
    };
    run(Invariant::NoDoubleEffect, no_double_effect(&o.ledger));
    run(Invariant::Amounts, amounts(&o.accounts));
    run(Invariant::ZeroStuck, zero_stuck(&o.payments, &o.operations, &o.refunds));
    run(Invariant::Agreement, agreement(o));
    run(Invariant::Accounting, acc_violations);
    run(Invariant::Integrity, integrity(o));
    run(Invariant::Latency, lat);
    run(Invariant::NoCardData, no_card_data(o));
    run(Invariant::Liveness, liveness(&o.operations));
    run(Invariant::CircuitBreaker, circuit_breaker(&o.history));
    run(Invariant::DeadLetter, dead_letter(o));
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::history::{Entry, Recorder};
    use gateway::model::{AttemptStatus, CaptureMethod};
    use mock_processor::AccountStatus;

    fn effect(key: &str, op: &str, payment: &str, reference: &str, amount: i64) -> Effect {
        serde_json::from_value(serde_json::json!({
            "effect_id": format!("eff_{key}"), "seq": 1, "operation": op, "merchant_id": "m", "payment_id": payment,
            "reference": reference, "amount": amount, "currency": "USD", "idempotency_key": key, "created_at_ms": 0
        }))
        .unwrap()
    }

    fn account(payment: &str, authorized: i64, captured: i64, refunded: i64) -> Account {
        Account {
            merchant_id: "m".into(),
            payment_id: payment.into(),
            currency: Some("USD".into()),
            authorized,
            captured,
            refunded,
            voided: false,
            status: AccountStatus::Authorized,
        }
    }

    #[test]
    fn invariants_have_one_name_each() {
        for i in Invariant::ALL {
            assert_eq!(i.name().parse::<Invariant>(), Ok(i));
            assert_eq!(serde_json::to_value(i).unwrap(), serde_json::json!(i.name()));
        }
        let e = "zero_stuk".parse::<Invariant>().unwrap_err().to_string();
        assert!(e.contains("zero_stuk") && e.contains("zero_stuck"), "{e}");
    }

    #[test]
    fn an_empty_observation_of_a_run_that_sent_work_fails() {
        let all = Invariant::ALL.to_vec();
        // Nothing sent, nothing read: nothing to complain about (the breaker and dead-letter
        // checkers aside: they want their faults to have happened).
        let quiet = check(&Observations::default(), &all, &BTreeMap::new(), |_| None);
        let wanting = [Invariant::CircuitBreaker, Invariant::DeadLetter];
        assert!(quiet.violations.iter().all(|v| wanting.contains(&v.invariant)), "{:?}", quiet.violations);
        // Work sent, nothing read back: every checker that reads the store, the history or the
        // texts says so instead of passing.
        let o = Observations { sent: 5, ..Default::default() };
        let v = check(&o, &all, &BTreeMap::new(), |_| None);
        for i in [
            Invariant::ZeroStuck,
            Invariant::Agreement,
            Invariant::Liveness,
            Invariant::Integrity,
            Invariant::NoCardData,
            Invariant::Accounting,
            Invariant::Latency,
        ] {
            let found = v.violations.iter().find(|x| x.invariant == i).unwrap_or_else(|| panic!("{i} passed over nothing"));
            assert!(found.message.starts_with("nothing to check:") && found.message.contains("5 payment call(s)"), "{}", found.message);
        }
        // Operations stored and succeeded, but no stream message and no ledger entry read.
        let op = OperationRecord {
            message_id: "msg_1".into(),
            merchant_id: "m".into(),
            payment_id: "p1".into(),
            operation: "payments.capture".into(),
            object_id: "cap_1".into(),
            amount: Some(10),
            status: OpStatus::Succeeded,
            request: String::new(),
            transaction_id: None,
            error_code: None,
            error_message: None,
            created_ms: 0,
            updated_ms: 0,
        };
        let o = Observations { operations: vec![op], ..Default::default() };
        let v = check(&o, &[Invariant::NoDoubleEffect, Invariant::Amounts, Invariant::Integrity], &BTreeMap::new(), |_| None);
        let reasons: Vec<(Invariant, &str)> = v.violations.iter().map(|x| (x.invariant, x.message.as_str())).collect();
        assert!(reasons.iter().any(|(i, m)| *i == Invariant::NoDoubleEffect && m.contains("ledger is empty")), "{reasons:?}");
        assert!(reasons.iter().any(|(i, m)| *i == Invariant::Amounts && m.contains("ledger is empty")), "{reasons:?}");
        assert!(reasons.iter().any(|(i, m)| *i == Invariant::Integrity && m.contains("no stream message")), "{reasons:?}");
    }

    #[test]
    fn double_effects_are_found_by_key_and_by_instance() {
        let ledger = vec![
            effect("k1", "payments.capture", "p1", "cap_1", 10),
            effect("k1", "payments.capture", "p1", "cap_1", 10),
            effect("k2", "payments.capture", "p2", "cap_1", 10),
            effect("k3", "payments.capture", "p2", "cap_1", 10),
            effect("k4", "payments.capture", "p3", "cap_1", 10),
        ];
        let found = no_double_effect(&ledger);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|v| v.payments == ["p1"]));
        assert!(found.iter().any(|v| v.payments == ["p2"]));
        assert!(no_double_effect(&ledger[4..]).is_empty());
    }

    #[test]
    fn amounts_out_of_bounds() {
        assert!(amounts(&[account("p", 100, 100, 100)]).is_empty());
        assert_eq!(amounts(&[account("p", 100, 101, 0)]).len(), 1);
        assert_eq!(amounts(&[account("p", 100, 50, 60)]).len(), 1);
    }

    #[test]
    fn stuck_and_disagreeing_payments() {
        let mut p = Payment::new("m", "p1", 100, "USD", CaptureMethod::Manual, serde_json::Value::Null);
        p.status = AttemptStatus::CaptureInitiated;
        assert_eq!(zero_stuck(&[p.clone()], &[], &[]).len(), 1);
        p.status = AttemptStatus::Authorized;
        p.amount_authorized = 100;
        assert!(zero_stuck(&[p.clone()], &[], &[]).is_empty());
        let o = Observations { payments: vec![p.clone()], accounts: vec![account("p1", 100, 0, 0)], ..Default::default() };
        assert!(agreement(&o).is_empty());
        let o = Observations { payments: vec![p], accounts: vec![account("p1", 100, 40, 0)], ..Default::default() };
        assert_eq!(agreement(&o).len(), 1);
    }

    #[test]
    fn accounting_counts_lost_and_recovered() {
        let r = Recorder::new();
        let e = |process, f: &str, p: &str, value| Entry {
            process,
            f: f.into(),
            payment_id: Some(p.into()),
            merchant_id: Some("m".into()),
            value,
            ..Default::default()
        };
        r.record(Kind::Invoke, e(1, "create", "p1", serde_json::Value::Null));
        r.record(
            Kind::Ok,
            e(1, "create", "p1", serde_json::json!({ "status": "requires_capture", "payment_id": "p1", "merchant_id": "m" })),
        );
        r.record(Kind::Invoke, e(2, "create", "p2", serde_json::Value::Null));
        r.record(Kind::Unknown, e(2, "create", "p2", serde_json::Value::Null));
        let mut p2 = Payment::new("m", "p2", 1, "USD", CaptureMethod::Manual, serde_json::Value::Null);
        p2.status = AttemptStatus::Failure;
        let o = Observations { history: r.events(), payments: vec![p2], ..Default::default() };
        let (acc, found) = accounting(&o);
        assert_eq!((acc.ok, acc.unknown, acc.lost, acc.recovered), (1, 1, 1, 1));
        assert_eq!(found.len(), 1, "p1 was answered authorized but nothing is in the ledger");
        assert!(integrity(&o).is_empty());
    }

    #[test]
    fn a_charge_answered_succeeded_needs_a_capture_at_the_processor() {
        let r = Recorder::new();
        let e = |process, p: &str, value| Entry {
            process,
            f: "create".into(),
            payment_id: Some(p.into()),
            merchant_id: Some("m".into()),
            value,
            ..Default::default()
        };
        for (process, p) in [(1, "p_one_call"), (2, "p_two_calls"), (3, "p_uncaptured")] {
            r.record(Kind::Invoke, e(process, p, serde_json::Value::Null));
            r.record(Kind::Ok, e(process, p, serde_json::json!({ "status": "succeeded", "payment_id": p, "merchant_id": "m" })));
        }
        let mut charged = effect("k1", "payments.authorize", "p_one_call", "p_one_call_1", 10);
        charged.captured_amount = Some(10);
        let ledger = vec![
            charged,
            effect("k2", "payments.authorize", "p_two_calls", "p_two_calls_1", 10),
            effect("k3", "payments.capture", "p_two_calls", "p_two_calls_cap_1", 10),
            effect("k4", "payments.authorize", "p_uncaptured", "p_uncaptured_1", 10),
        ];
        let o = Observations { history: r.events(), ledger, ..Default::default() };
        let (acc, found) = accounting(&o);
        assert_eq!((acc.ok, acc.lost), (3, 1), "{found:?}");
        assert_eq!(found[0].payments, ["p_uncaptured"]);
        assert!(found[0].message.contains("captured nothing"), "{found:?}");
    }

    #[test]
    fn card_numbers_are_found() {
        assert_eq!(card_numbers("x 4242424242424242 y"), ["4242424242424242"]);
        assert!(card_numbers("order 1234567890123").is_empty(), "not Luhn-valid");
        assert!(card_numbers("1795979586673").is_empty(), "a timestamp is not a card");
        assert!(card_numbers("_INBOX.hsb.ab4242424242424242cd").is_empty(), "digits inside a hex token");
        let o = Observations { texts: vec![("log".into(), "card 4111111111111111".into())], ..Default::default() };
        assert_eq!(no_card_data(&o).len(), 1);
    }

    #[test]
    fn the_breaker_must_open_and_close_again() {
        let r = Recorder::new();
        let done = |r: &Recorder, f: &str, kind: Kind, code: Option<&str>, p: &str| {
            r.record(
                kind,
                Entry { f: f.into(), payment_id: Some(p.into()), value: serde_json::json!({ "error_code": code }), ..Default::default() },
            )
        };
        done(&r, "create", Kind::Ok, None, "p1");
        let never_opened = circuit_breaker(&r.events());
        assert_eq!(never_opened.len(), 1);
        assert!(never_opened[0].message.contains("never opened"), "{never_opened:?}");
        done(&r, "create", Kind::Failed, Some(CIRCUIT_OPEN), "p2");
        let stuck_open = circuit_breaker(&r.events());
        assert_eq!(stuck_open.len(), 1);
        assert_eq!(stuck_open[0].payments, vec!["p2".to_string()]);
        assert!(stuck_open[0].message.contains("never closed"), "{stuck_open:?}");
        done(&r, "create", Kind::Ok, Some("card_declined"), "p3");
        assert_eq!(circuit_breaker(&r.events()).len(), 1, "a failed reply does not show the breaker closed");
        done(&r, "create", Kind::Ok, None, "p4");
        assert!(circuit_breaker(&r.events()).is_empty());
    }

    #[test]
    fn every_poison_message_must_be_dead_lettered() {
        assert_eq!(dead_letter(&Observations::default()).len(), 1, "no poison: nothing tested");
        assert_eq!(dead_letter(&Observations { poisoned: 3, dead_letters: 2, ..Default::default() }).len(), 1);
        assert!(dead_letter(&Observations { poisoned: 3, dead_letters: 3, ..Default::default() }).is_empty());
    }
}
