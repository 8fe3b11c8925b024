//! Model-based test of the gateway's payments API.
//!
//! Random sequences of API calls (create, confirm, capture, cancel, refund, retrieve, repeats
//! under the same `Idempotency-Key` or the same client-chosen id, unknown ids, another
//! merchant's requests) go through the gateway, the bridge, real NATS, the workers and the
//! processor. A reference model (plain Rust, below) predicts every response: HTTP status, the
//! error code of a 4xx, the intent status and the amounts of a payment, the refund. After every
//! step the processor's ledger must hold exactly the effects the model expects (one per
//! successful operation instance, none for a refused request; an automatic-capture confirm is
//! one authorization that captured too, no separate capture) and each processor account the
//! authorized, captured and refunded amounts of the model.
//!
//! One environment and one gateway serve every case; each case (and each rerun while
//! shrinking) uses its own payment ids, refund ids and idempotency keys. `PROPTEST_CASES` sets
//! the number of cases (default 64), `PROPTEST_RNG_SEED` fixes the generated sequences.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{GatewayHandle, TestEnv};
use gateway::config::GatewayConfig;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{contextualize_config, Config, TestError, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use serde_json::{json, Value};

/// Default number of cases (`PROPTEST_CASES` overrides it).
const DEFAULT_CASES: u32 = 64;
/// Most transitions in one case.
const MAX_STEPS: usize = 12;

// ---------------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Currency {
    Usd,
    Eur,
}

impl Currency {
    fn code(self) -> &'static str {
        match self {
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
        }
    }
}

/// The payment statuses a fault-free environment reaches (no declines, no timeouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Started,
    Authorized,
    PartialCharged,
    Charged,
    Voided,
}

impl Status {
    /// The intent status a client sees.
    fn intent(self) -> &'static str {
        match self {
            Status::Started => "requires_confirmation",
            Status::Authorized => "requires_capture",
            Status::PartialCharged => "partially_captured_and_capturable",
            Status::Charged => "succeeded",
            Status::Voided => "cancelled",
        }
    }

    fn is_terminal(self) -> bool {
        matches!(self, Status::Charged | Status::Voided)
    }
}

#[derive(Clone, Debug)]
struct PaymentModel {
    amount: i64,
    currency: Currency,
    manual: bool,
    status: Status,
    authorized: i64,
    captured: i64,
    refunded: i64,
}

impl PaymentModel {
    fn view(&self, payment: usize) -> Expect {
        Expect::Payment {
            payment,
            status: self.status,
            amount: self.amount,
            currency: self.currency,
            manual: self.manual,
            capturable: if self.status.is_terminal() { 0 } else { self.authorized - self.captured },
            received: self.captured,
            refunded: self.refunded,
        }
    }
}

/// A refund made with a client-chosen id (so it can be asked for again by that id).
#[derive(Clone, Debug)]
struct RefundModel {
    payment: usize,
    refund_no: usize,
    amount: i64,
}

/// A processor effect the model expects.
#[derive(Clone, Debug, PartialEq)]
struct Effect {
    payment: usize,
    operation: &'static str,
    amount: Option<i64>,
    /// What the effect captured besides its operation's amount (an authorization with
    /// automatic capture).
    captured: Option<i64>,
}

/// Which payment a request names.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Payment(usize),
    /// An id no payment of this case has.
    Unknown,
}

/// A request with every id and amount resolved (ids are numbers; the system under test turns
/// them into this case's strings).
#[derive(Clone, Debug)]
enum Call {
    Create {
        payment: usize,
        amount: i64,
        currency: Currency,
        manual: bool,
        confirm: bool,
    },
    Confirm(Target),
    Capture(Target, Option<i64>),
    Cancel(Target),
    Refund {
        target: Target,
        refund_no: Option<usize>,
        amount: Option<i64>,
    },
    Retrieve {
        target: Target,
        force_sync: bool,
    },
    RetrieveRefund(usize),
    /// The request first sent with idempotency key `key`, again under that key, with the same
    /// body or another one.
    Replay {
        key: usize,
        same_body: bool,
    },
}

/// The response the model predicts.
#[derive(Clone, Debug)]
enum Expect {
    Payment {
        payment: usize,
        status: Status,
        amount: i64,
        currency: Currency,
        manual: bool,
        capturable: i64,
        received: i64,
        refunded: i64,
    },
    Refund {
        payment: usize,
        refund_no: Option<usize>,
        amount: i64,
        currency: Currency,
    },
    Error {
        status: u16,
        code: &'static str,
    },
    /// Exactly the first response to the request sent with this key.
    Replay {
        key: usize,
    },
}

fn error(status: u16, code: &'static str) -> Expect {
    Expect::Error { status, code }
}

/// One step: what is sent, by whom, under which key, and what must come back.
#[derive(Clone, Debug)]
struct Step {
    /// Sent by the second merchant (which owns none of the payments).
    other_merchant: bool,
    call: Call,
    /// Idempotency key number, if the request carries one.
    key: Option<usize>,
    expect: Expect,
    /// The response is a replay of an earlier one under the same key.
    replayed: bool,
}

#[derive(Clone, Debug, Default)]
struct Model {
    payments: Vec<PaymentModel>,
    /// Successful refunds with a client-chosen id.
    refunds: Vec<RefundModel>,
    /// Client-chosen refund ids handed out.
    refund_ids: usize,
    /// Idempotency keys handed out.
    keys: usize,
    /// Keys of the first merchant that the second one used too, for a capture of this payment.
    other_keys: std::collections::BTreeMap<usize, usize>,
    /// Processor effects so far, in order.
    effects: Vec<Effect>,
    /// The last step, for the system under test to run and check.
    last: Option<Step>,
}

impl Model {
    fn key(&mut self, keyed: bool) -> Option<usize> {
        keyed.then(|| {
            self.keys += 1;
            self.keys - 1
        })
    }

    /// Authorizes a created payment; if automatic, the same single authorization captures all
    /// of it (one effect, no separate capture).
    fn confirm(&mut self, i: usize) -> Expect {
        let p = &mut self.payments[i];
        if p.status != Status::Started {
            return error(409, "invalid_state");
        }
        p.authorized = p.amount;
        p.status = Status::Authorized;
        let mut captured = None;
        if !p.manual {
            p.captured = p.authorized;
            p.status = Status::Charged;
            captured = Some(p.authorized);
        }
        self.effects.push(Effect { payment: i, operation: "payments.authorize", amount: Some(p.amount), captured });
        self.payments[i].view(i)
    }

    fn capture(&mut self, i: usize, amount: Option<i64>) -> Expect {
        if amount.is_some_and(|a| a <= 0) {
            return error(422, "invalid_amount");
        }
        let p = &mut self.payments[i];
        if !matches!(p.status, Status::Authorized | Status::PartialCharged) {
            return error(409, "invalid_state");
        }
        let capturable = p.authorized - p.captured;
        let amount = amount.unwrap_or(capturable);
        if amount <= 0 || amount > capturable {
            return error(422, "invalid_amount");
        }
        p.captured += amount;
        p.status = if p.captured >= p.authorized { Status::Charged } else { Status::PartialCharged };
        self.effects.push(Effect { payment: i, operation: "payments.capture", amount: Some(amount), captured: None });
        self.payments[i].view(i)
    }

    fn cancel(&mut self, i: usize) -> Expect {
        let p = &mut self.payments[i];
        if p.status != Status::Authorized {
            return error(409, "invalid_state");
        }
        p.status = Status::Voided;
        self.effects.push(Effect { payment: i, operation: "payments.void", amount: None, captured: None });
        self.payments[i].view(i)
    }

    fn refund(&mut self, i: usize, refund_no: Option<usize>, amount: Option<i64>) -> Expect {
        if amount.is_some_and(|a| a <= 0) {
            return error(422, "invalid_amount");
        }
        let p = &mut self.payments[i];
        if !matches!(p.status, Status::Charged | Status::PartialCharged) {
            return error(409, "invalid_state");
        }
        let refundable = p.captured - p.refunded;
        let amount = amount.unwrap_or(refundable);
        if amount <= 0 || amount > refundable {
            return error(422, "invalid_amount");
        }
        p.refunded += amount;
        let currency = p.currency;
        self.effects.push(Effect { payment: i, operation: "refunds.execute", amount: Some(amount), captured: None });
        if let Some(refund_no) = refund_no {
            self.refunds.push(RefundModel { payment: i, refund_no, amount });
        }
        Expect::Refund { payment: i, refund_no, amount, currency }
    }
}

/// An amount relative to what is available (capturable or refundable) when the step runs, so
/// that a shrunk sequence keeps the intent of each step.
#[derive(Clone, Copy, Debug)]
enum Amount {
    /// No amount in the request: the gateway takes all that is available.
    Omitted,
    /// All that is available, explicitly.
    Exact,
    /// This many thousandths of it (at least 1).
    Part(i64),
    /// This much more than is available.
    Over(i64),
    /// Zero: refused by validation.
    Zero,
}

impl Amount {
    fn resolve(self, available: i64) -> Option<i64> {
        match self {
            Amount::Omitted => None,
            Amount::Exact => Some(available),
            Amount::Part(permille) => Some((available * permille / 1000).max(1)),
            Amount::Over(extra) => Some(available + extra),
            Amount::Zero => Some(0),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Confirm,
    Capture,
    Cancel,
    Refund,
    Retrieve,
}

#[derive(Clone, Debug)]
enum Transition {
    Retrieve {
        payment: usize,
        force_sync: bool,
    },
    Create {
        amount: i64,
        currency: Currency,
        manual: bool,
        confirm: bool,
        keyed: bool,
    },
    Confirm {
        payment: usize,
        keyed: bool,
    },
    Capture {
        payment: usize,
        amount: Amount,
        keyed: bool,
    },
    Cancel {
        payment: usize,
        keyed: bool,
    },
    Refund {
        payment: usize,
        amount: Amount,
        client_id: bool,
        keyed: bool,
    },
    /// The same idempotency key again, with the same body or another one.
    Replay {
        key: usize,
        same_body: bool,
    },
    /// A create with an existing client-chosen payment id, with the same parameters or not.
    CreateAgain {
        payment: usize,
        same: bool,
        confirm: bool,
        keyed: bool,
    },
    /// A refund with an existing client-chosen refund id, with the same amount or not.
    RefundAgain {
        refund: usize,
        same: bool,
    },
    /// A request naming a payment id that does not exist.
    UnknownPayment(Op),
    /// The second merchant reads a payment of the first.
    OtherMerchantRead {
        payment: usize,
    },
    /// The second merchant captures a payment of the first, perhaps under one of the first
    /// merchant's idempotency keys (keys are per merchant: no replay of the first's response).
    OtherMerchantCapture {
        payment: usize,
        key: Option<usize>,
    },
    /// A refund read by its client-chosen id, by its merchant or the other one.
    RetrieveRefund {
        refund: usize,
        other_merchant: bool,
    },
}

fn amounts() -> impl Strategy<Value = Amount> {
    prop_oneof![
        3 => Just(Amount::Omitted),
        2 => Just(Amount::Exact),
        4 => (1i64..1000).prop_map(Amount::Part),
        2 => (1i64..=500).prop_map(Amount::Over),
        1 => Just(Amount::Zero),
    ]
}

struct GatewayModel;

impl ReferenceStateMachine for GatewayModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        let currency = prop_oneof![Just(Currency::Usd), Just(Currency::Eur)];
        let create = (1i64..=5000, currency, prop::bool::weighted(0.7), prop::bool::weighted(0.75), any::<bool>())
            .prop_map(|(amount, currency, manual, confirm, keyed)| Transition::Create { amount, currency, manual, confirm, keyed })
            .boxed();
        let op = prop_oneof![Just(Op::Confirm), Just(Op::Capture), Just(Op::Cancel), Just(Op::Refund), Just(Op::Retrieve)];
        let unknown = op.prop_map(Transition::UnknownPayment).boxed();
        let n = state.payments.len();
        if n == 0 {
            return Union::new_weighted(vec![(6, create), (1, unknown)]).boxed();
        }
        // Mostly a payment the operation fits (the newest first), so that sequences go deep into
        // a payment's life; sometimes any payment.
        let fitting = |fits: fn(&PaymentModel) -> bool| {
            let ids: Vec<usize> = (0..n).rev().filter(|&i| fits(&state.payments[i])).collect();
            if ids.is_empty() {
                (0..n).boxed()
            } else {
                prop_oneof![3 => Just(ids[0]), 2 => prop::sample::select(ids), 2 => 0..n].boxed()
            }
        };
        let payment = || fitting(|_| true);
        let mut options: Vec<(u32, BoxedStrategy<Transition>)> = vec![
            (2, (payment(), any::<bool>()).prop_map(|(payment, force_sync)| Transition::Retrieve { payment, force_sync }).boxed()),
            (3, create),
            (
                2,
                (fitting(|p| p.status == Status::Started), any::<bool>())
                    .prop_map(|(payment, keyed)| Transition::Confirm { payment, keyed })
                    .boxed(),
            ),
            (
                5,
                (fitting(|p| p.authorized > p.captured && !p.status.is_terminal()), amounts(), any::<bool>())
                    .prop_map(|(payment, amount, keyed)| Transition::Capture { payment, amount, keyed })
                    .boxed(),
            ),
            (
                2,
                (fitting(|p| p.status == Status::Authorized), any::<bool>())
                    .prop_map(|(payment, keyed)| Transition::Cancel { payment, keyed })
                    .boxed(),
            ),
            (
                5,
                (fitting(|p| p.captured > p.refunded), amounts(), any::<bool>(), any::<bool>())
                    .prop_map(|(payment, amount, client_id, keyed)| Transition::Refund { payment, amount, client_id, keyed })
                    .boxed(),
            ),
            (
                1,
                (payment(), any::<bool>(), any::<bool>(), any::<bool>())
                    .prop_map(|(payment, same, confirm, keyed)| Transition::CreateAgain { payment, same, confirm, keyed })
                    .boxed(),
            ),
            (1, unknown),
            (1, payment().prop_map(|payment| Transition::OtherMerchantRead { payment }).boxed()),
        ];
        let k = state.keys;
        let key = if k > 0 { prop::option::of(prop_oneof![Just(k - 1), 0..k]).boxed() } else { Just(None).boxed() };
        options.push((1, (payment(), key).prop_map(|(payment, key)| Transition::OtherMerchantCapture { payment, key }).boxed()));
        if k > 0 {
            options.push((
                3,
                (prop_oneof![Just(k - 1), 0..k], prop::bool::weighted(0.6))
                    .prop_map(|(key, same_body)| Transition::Replay { key, same_body })
                    .boxed(),
            ));
        }
        if !state.refunds.is_empty() {
            let r = state.refunds.len();
            options.push((1, (0..r, any::<bool>()).prop_map(|(refund, same)| Transition::RefundAgain { refund, same }).boxed()));
            options.push((
                1,
                (0..r, prop::bool::weighted(0.3))
                    .prop_map(|(refund, other_merchant)| Transition::RetrieveRefund { refund, other_merchant })
                    .boxed(),
            ));
        }
        Union::new_weighted(options).boxed()
    }

    fn preconditions(state: &Model, transition: &Transition) -> bool {
        let n = state.payments.len();
        match *transition {
            Transition::Create { .. } | Transition::UnknownPayment(_) => true,
            Transition::Retrieve { payment, .. }
            | Transition::Confirm { payment, .. }
            | Transition::Capture { payment, .. }
            | Transition::Cancel { payment, .. }
            | Transition::Refund { payment, .. }
            | Transition::CreateAgain { payment, .. }
            | Transition::OtherMerchantRead { payment } => payment < n,
            Transition::OtherMerchantCapture { payment, key } => payment < n && key.is_none_or(|k| k < state.keys),
            Transition::Replay { key, .. } => key < state.keys,
            Transition::RefundAgain { refund, .. } | Transition::RetrieveRefund { refund, .. } => refund < state.refunds.len(),
        }
    }

    fn apply(mut s: Model, transition: &Transition) -> Model {
        let mine = |call: Call, key: Option<usize>, expect: Expect| Step { other_merchant: false, call, key, expect, replayed: false };
        let step = match *transition {
            Transition::Retrieve { payment, force_sync } => {
                mine(Call::Retrieve { target: Target::Payment(payment), force_sync }, None, s.payments[payment].view(payment))
            }
            Transition::Create { amount, currency, manual, confirm, keyed } => {
                let key = s.key(keyed);
                let i = s.payments.len();
                s.payments.push(PaymentModel {
                    amount,
                    currency,
                    manual,
                    status: Status::Started,
                    authorized: 0,
                    captured: 0,
                    refunded: 0,
                });
                let expect = if confirm { s.confirm(i) } else { s.payments[i].view(i) };
                mine(Call::Create { payment: i, amount, currency, manual, confirm }, key, expect)
            }
            Transition::Confirm { payment, keyed } => {
                let key = s.key(keyed);
                let expect = s.confirm(payment);
                mine(Call::Confirm(Target::Payment(payment)), key, expect)
            }
            Transition::Capture { payment, amount, keyed } => {
                let key = s.key(keyed);
                let p = &s.payments[payment];
                let amount = amount.resolve(p.authorized - p.captured);
                let expect = s.capture(payment, amount);
                mine(Call::Capture(Target::Payment(payment), amount), key, expect)
            }
            Transition::Cancel { payment, keyed } => {
                let key = s.key(keyed);
                let expect = s.cancel(payment);
                mine(Call::Cancel(Target::Payment(payment)), key, expect)
            }
            Transition::Refund { payment, amount, client_id, keyed } => {
                let key = s.key(keyed);
                let refund_no = client_id.then(|| {
                    s.refund_ids += 1;
                    s.refund_ids - 1
                });
                let p = &s.payments[payment];
                let amount = amount.resolve(p.captured - p.refunded);
                let expect = s.refund(payment, refund_no, amount);
                mine(Call::Refund { target: Target::Payment(payment), refund_no, amount }, key, expect)
            }
            Transition::Replay { key, same_body } => {
                let expect = if same_body { Expect::Replay { key } } else { error(409, "idempotency_key_reused") };
                Step { replayed: same_body, ..mine(Call::Replay { key, same_body }, Some(key), expect) }
            }
            Transition::CreateAgain { payment, same, confirm, keyed } => {
                let key = s.key(keyed);
                let p = s.payments[payment].clone();
                let amount = if same { p.amount } else { p.amount + 1 };
                let expect = if !same {
                    error(409, "duplicate")
                } else if confirm && p.status == Status::Started {
                    s.confirm(payment)
                } else {
                    p.view(payment)
                };
                mine(Call::Create { payment, amount, currency: p.currency, manual: p.manual, confirm }, key, expect)
            }
            Transition::RefundAgain { refund, same } => {
                let r = s.refunds[refund].clone();
                let amount = if same { r.amount } else { r.amount + 1 };
                let expect = if same {
                    Expect::Refund { payment: r.payment, refund_no: Some(r.refund_no), amount, currency: s.payments[r.payment].currency }
                } else {
                    error(409, "duplicate")
                };
                mine(Call::Refund { target: Target::Payment(r.payment), refund_no: Some(r.refund_no), amount: Some(amount) }, None, expect)
            }
            Transition::UnknownPayment(op) => {
                let t = Target::Unknown;
                let call = match op {
                    Op::Confirm => Call::Confirm(t),
                    Op::Capture => Call::Capture(t, None),
                    Op::Cancel => Call::Cancel(t),
                    Op::Refund => Call::Refund { target: t, refund_no: None, amount: None },
                    Op::Retrieve => Call::Retrieve { target: t, force_sync: false },
                };
                mine(call, None, error(404, "not_found"))
            }
            Transition::OtherMerchantRead { payment } => {
                let call = Call::Retrieve { target: Target::Payment(payment), force_sync: false };
                Step { other_merchant: true, call, key: None, expect: error(404, "not_found"), replayed: false }
            }
            Transition::OtherMerchantCapture { payment, key } => {
                let call = Call::Capture(Target::Payment(payment), None);
                // The second merchant's own use of the key decides: first use, the same request
                // again (its own 404 replayed) or another request (key reused).
                let (expect, replayed) = match key.map(|k| (k, s.other_keys.get(&k).copied())) {
                    None => (error(404, "not_found"), false),
                    Some((k, None)) => {
                        s.other_keys.insert(k, payment);
                        (error(404, "not_found"), false)
                    }
                    Some((_, Some(first))) if first == payment => (error(404, "not_found"), true),
                    Some(_) => (error(409, "idempotency_key_reused"), false),
                };
                Step { other_merchant: true, call, key, expect, replayed }
            }
            Transition::RetrieveRefund { refund, other_merchant } => {
                let r = s.refunds[refund].clone();
                let expect = if other_merchant {
                    error(404, "not_found")
                } else {
                    Expect::Refund {
                        payment: r.payment,
                        refund_no: Some(r.refund_no),
                        amount: r.amount,
                        currency: s.payments[r.payment].currency,
                    }
                };
                Step { other_merchant, call: Call::RetrieveRefund(r.refund_no), key: None, expect, replayed: false }
            }
        };
        s.last = Some(step);
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test: one environment and gateway shared by every case.
// ---------------------------------------------------------------------------------------------

mod tempdir {
    pub use super::common::TempDir as Dir;
}

/// An HTTP response: status, whether it was an idempotent replay, JSON body.
#[derive(Debug)]
struct Reply {
    status: u16,
    replayed: bool,
    body: Value,
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        api_key: &str,
        idem: Option<&str>,
        body: Option<&str>,
    ) -> Result<Reply, String> {
        let mut r = self.http.request(method, format!("{}{path}", self.url)).header("api-key", api_key);
        if let Some(i) = idem {
            r = r.header("Idempotency-Key", i);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let resp = r.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
        let text = resp.text().await.map_err(|e| format!("{path}: {e}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply { status, replayed, body })
    }
}

struct Shared {
    /// Dropped before the environment.
    _gateway: GatewayHandle,
    env: TestEnv,
    client: Client,
    runtime: tokio::runtime::Handle,
    /// Distinguishes this run's ids.
    run: String,
    _dir: tempdir::Dir,
}

thread_local! {
    /// The environment of the running test, for the cases it runs.
    static SHARED: RefCell<Option<Rc<Shared>>> = const { RefCell::new(None) };
}

/// Cases started so far (shrinking reruns included): each gets its own ids.
static CASES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The step at which the last failing case failed. The last failing case is the minimal
    /// one the runner reports, whose later transitions were never run.
    static FAILED_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

thread_local! {
    /// How often each kind of request met each outcome, printed at the end.
    static OUTCOMES: RefCell<std::collections::BTreeMap<String, usize>> = const { RefCell::new(std::collections::BTreeMap::new()) };
}

fn tally(step: &Step) {
    let call = match &step.call {
        Call::Create { .. } => "create",
        Call::Confirm(_) => "confirm",
        Call::Capture(..) => "capture",
        Call::Cancel(_) => "cancel",
        Call::Refund { .. } => "refund",
        Call::Retrieve { .. } => "retrieve",
        Call::RetrieveRefund(_) => "get refund",
        Call::Replay { .. } => "replay",
    };
    let outcome = match &step.expect {
        Expect::Payment { status, .. } => format!("200 {}", status.intent()),
        Expect::Refund { .. } => "200 refund succeeded".to_string(),
        Expect::Error { status, code } => format!("{status} {code}"),
        Expect::Replay { .. } => "first response replayed".to_string(),
    };
    let who = if step.other_merchant { " (other merchant)" } else { "" };
    let replayed = if step.replayed && !matches!(step.call, Call::Replay { .. }) { ", replayed" } else { "" };
    OUTCOMES.with(|o| *o.borrow_mut().entry(format!("{call:10} -> {outcome}{replayed}{who}")).or_default() += 1);
}

/// A request as first sent under an idempotency key, and its response.
struct Sent {
    path: String,
    body: String,
    status: u16,
    response: Value,
}

struct Sut {
    shared: Rc<Shared>,
    /// Prefix of this case's ids.
    prefix: String,
    /// Steps run so far in this case.
    steps: usize,
    /// Requests sent with an idempotency key, by key number.
    sent: HashMap<usize, Sent>,
}

fn card() -> Value {
    json!({ "card": { "card_number": "4242424242424242", "card_cvc": "123", "card_exp_month": "12", "card_exp_year": "30" } })
}

/// Another body for the same endpoint: an amount one higher, or an extra field.
fn other_body(body: &str) -> String {
    let mut v: Value = serde_json::from_str(body).expect("a JSON body");
    let m = v.as_object_mut().expect("a JSON object");
    for field in ["amount", "amount_to_capture"] {
        if let Some(a) = m.get(field).and_then(Value::as_i64) {
            m.insert(field.into(), json!(a + 1));
            return v.to_string();
        }
    }
    m.insert("cancellation_reason".into(), json!("changed"));
    v.to_string()
}

impl Sut {
    fn payment_id(&self, i: usize) -> String {
        format!("{}p{i}", self.prefix)
    }

    fn target(&self, t: Target) -> String {
        match t {
            Target::Payment(i) => self.payment_id(i),
            Target::Unknown => format!("{}nope", self.prefix),
        }
    }

    fn refund_id(&self, n: usize) -> String {
        format!("{}r{n}", self.prefix)
    }

    fn key(&self, n: usize) -> String {
        format!("{}k{n}", self.prefix)
    }

    /// Method, path and body of a call.
    fn request(&self, call: &Call) -> (reqwest::Method, String, Option<String>) {
        use reqwest::Method;
        match call {
            Call::Create { payment, amount, currency, manual, confirm } => {
                let body = json!({
                    "payment_id": self.payment_id(*payment),
                    "amount": amount,
                    "currency": currency.code(),
                    "capture_method": if *manual { "manual" } else { "automatic" },
                    "confirm": confirm,
                    "payment_method": "card",
                    "payment_method_data": card(),
                });
                (Method::POST, "/payments".into(), Some(body.to_string()))
            }
            Call::Confirm(t) => (Method::POST, format!("/payments/{}/confirm", self.target(*t)), Some("{}".into())),
            Call::Capture(t, amount) => {
                let body = match amount {
                    Some(a) => json!({ "amount_to_capture": a }),
                    None => json!({}),
                };
                (Method::POST, format!("/payments/{}/capture", self.target(*t)), Some(body.to_string()))
            }
            Call::Cancel(t) => (Method::POST, format!("/payments/{}/cancel", self.target(*t)), Some("{}".into())),
            Call::Refund { target, refund_no, amount } => {
                let mut body = json!({ "payment_id": self.target(*target), "reason": "requested_by_customer" });
                if let Some(n) = refund_no {
                    body["refund_id"] = json!(self.refund_id(*n));
                }
                if let Some(a) = amount {
                    body["amount"] = json!(a);
                }
                (Method::POST, "/refunds".into(), Some(body.to_string()))
            }
            Call::Retrieve { target, force_sync } => {
                (Method::GET, format!("/payments/{}?force_sync={force_sync}", self.target(*target)), None)
            }
            Call::RetrieveRefund(n) => (Method::GET, format!("/refunds/{}", self.refund_id(*n)), None),
            Call::Replay { key, same_body } => {
                let sent = self.sent.get(key).unwrap_or_else(|| panic!("no request was sent with key {key}"));
                let body = if *same_body { sent.body.clone() } else { other_body(&sent.body) };
                (Method::POST, sent.path.clone(), Some(body))
            }
        }
    }

    fn fail(&self, why: &str) -> ! {
        FAILED_AT.set(self.steps);
        panic!("step {}: {why}", self.steps)
    }

    /// Sends the step's request and checks the response against the model's prediction.
    fn run(&mut self, step: &Step) {
        self.steps += 1;
        let (method, path, body) = self.request(&step.call);
        let api_key = if step.other_merchant { "key_m2" } else { "key_m1" };
        let key = step.key.map(|k| self.key(k));
        let shared = self.shared.clone();
        let reply = shared
            .runtime
            .block_on(shared.client.send(method.clone(), &path, api_key, key.as_deref(), body.as_deref()))
            .unwrap_or_else(|e| self.fail(&format!("{step:?}: request failed: {e}")));
        if let Err(why) = self.check(&step.expect, step.replayed, &reply) {
            self.fail(&format!("{why}\n{step:?}\nrequest {method} {path} key={key:?} body={body:?}\nreply {reply:?}"));
        }
        tally(step);
        // The first merchant's keyed requests, as first sent (the second merchant's keys are
        // another namespace, modelled in `Model::other_keys`).
        if let (Some(k), false) = (step.key, step.other_merchant || matches!(step.call, Call::Replay { .. })) {
            let sent = Sent { path, body: body.unwrap_or_default(), status: reply.status, response: reply.body };
            self.sent.insert(k, sent);
        }
    }

    fn check(&self, expect: &Expect, replayed: bool, reply: &Reply) -> Result<(), String> {
        if reply.replayed != replayed {
            return Err(format!("Idempotent-Replayed: expected {replayed}, got {}", reply.replayed));
        }
        let want = match expect {
            Expect::Replay { key } => {
                let sent = &self.sent[key];
                if (reply.status, &reply.body) != (sent.status, &sent.response) {
                    return Err(format!("replay differs from the first response {} {}", sent.status, sent.response));
                }
                return Ok(());
            }
            Expect::Error { status, code } => {
                (*status, json!({ "error": { "type": "invalid_request_error", "code": code, "message": NON_EMPTY } }))
            }
            Expect::Payment { payment, status, amount, currency, manual, capturable, received, refunded } => (
                200,
                json!({
                    "payment_id": self.payment_id(*payment),
                    "merchant_id": "m1",
                    "status": status.intent(),
                    "amount": amount,
                    "currency": currency.code(),
                    "capture_method": if *manual { "manual" } else { "automatic" },
                    "amount_capturable": capturable,
                    "amount_received": received,
                    "amount_refunded": refunded,
                    "error_code": null,
                }),
            ),
            Expect::Refund { payment, refund_no, amount, currency } => {
                let mut want = json!({
                    "payment_id": self.payment_id(*payment),
                    "merchant_id": "m1",
                    "amount": amount,
                    "currency": currency.code(),
                    "status": "succeeded",
                    "error_code": null,
                });
                match refund_no {
                    Some(n) => want["refund_id"] = json!(self.refund_id(*n)),
                    None if !reply.body["refund_id"].as_str().is_some_and(|id| id.starts_with("ref_")) => {
                        return Err("a generated refund id starts with ref_".into());
                    }
                    None => {}
                }
                (200, want)
            }
        };
        let (status, fields) = want;
        let mut wrong = Vec::new();
        if reply.status != status {
            wrong.push(format!("HTTP status: expected {status}, got {}", reply.status));
        }
        check_fields("", &fields, &reply.body, &mut wrong);
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("the gateway disagrees with the model:\n  {}", wrong.join("\n  ")))
        }
    }

    /// The processor's ledger and accounts for this case's payments against the model.
    fn check_ledger(&self, model: &Model) {
        let processor = self.shared.env.processor();
        let ledger = processor.ledger();
        let mine: Vec<_> = ledger.iter().filter(|e| e.payment_id.starts_with(&self.prefix)).collect();
        let got: Vec<_> =
            mine.iter().map(|e| (e.merchant_id.clone(), e.payment_id.clone(), e.operation.clone(), e.amount, e.captured_amount)).collect();
        let want: Vec<_> = model
            .effects
            .iter()
            .map(|e| ("m1".to_string(), self.payment_id(e.payment), e.operation.to_string(), e.amount, e.captured))
            .collect();
        let mut wrong = Vec::new();
        if got != want {
            wrong.push(format!(
                "processor effects (merchant, payment, operation, amount, captured_amount)\n    expected {want:?}\n    got      {got:?}"
            ));
        }
        let mut keys: Vec<_> = mine.iter().map(|e| e.idempotency_key.clone()).collect();
        keys.sort();
        keys.dedup();
        if keys.len() != mine.len() || keys.contains(&None) {
            wrong.push(format!("not one effect per operation instance (idempotency key): {keys:?}"));
        }
        for (i, p) in model.payments.iter().enumerate() {
            let id = self.payment_id(i);
            let account = processor.account("m1", &id);
            let has_effects = model.effects.iter().any(|e| e.payment == i);
            let got = account.as_ref().map(|a| (a.authorized, a.captured, a.refunded, a.voided));
            let want = has_effects.then_some((p.authorized, p.captured, p.refunded, p.status == Status::Voided));
            if got != want {
                wrong.push(format!("{id}: processor account (authorized, captured, refunded, voided): expected {want:?}, got {got:?}"));
            }
            if processor.account("m2", &id).is_some() {
                wrong.push(format!("{id}: the second merchant has a processor account"));
            }
        }
        if !wrong.is_empty() {
            self.fail(&format!("the processor disagrees with the model:\n  {}\nafter {:?}", wrong.join("\n  "), model.last));
        }
    }
}

/// In an expected body: any non-empty string.
const NON_EMPTY: &str = "<non-empty string>";

/// Compares the fields of `want` (recursively for objects) with `got`.
fn check_fields(at: &str, want: &Value, got: &Value, wrong: &mut Vec<String>) {
    match want {
        Value::Object(fields) => {
            for (name, w) in fields {
                check_fields(&format!("{at}/{name}"), w, &got[name.as_str()], wrong);
            }
        }
        Value::String(w) if w == NON_EMPTY && got.as_str().is_none_or(str::is_empty) => {
            wrong.push(format!("{at}: expected a non-empty string, got {got}"))
        }
        Value::String(w) if w == NON_EMPTY => {}
        w if w != got => wrong.push(format!("{at}: expected {w}, got {got}")),
        _ => {}
    }
}

struct GatewayTest;

impl StateMachineTest for GatewayTest {
    type SystemUnderTest = Sut;
    type Reference = GatewayModel;

    fn init_test(_: &Model) -> Sut {
        let shared = SHARED.with(|s| s.borrow().clone()).expect("the environment is started by the test");
        let case = CASES.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{}-c{case}-", shared.run);
        Sut { shared, prefix, steps: 0, sent: HashMap::new() }
    }

    fn apply(mut sut: Sut, state: &Model, _: Transition) -> Sut {
        sut.run(state.last.as_ref().expect("every transition leaves a step"));
        sut
    }

    fn check_invariants(sut: &Sut, state: &Model) {
        sut.check_ledger(state);
    }
}

fn gateway_config(dir: &tempdir::Dir) -> GatewayConfig {
    GatewayConfig {
        database: dir.path().join("gateway.db"),
        api_keys: HashMap::from([("key_m1".to_string(), "m1".to_string()), ("key_m2".to_string(), "m2".to_string())]),
        ..Default::default()
    }
}

#[test]
fn gateway_agrees_with_the_reference_model() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let shared = runtime.block_on(async {
        let env = common::single(1).await;
        let dir = tempdir::Dir::new("gw-model");
        let gateway = env.start_gateway(gateway_config(&dir)).await.expect("gateway starts");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
        let client = Client { http, url: gateway.url.clone() };
        Shared {
            _gateway: gateway,
            env,
            client,
            runtime: tokio::runtime::Handle::current(),
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            _dir: dir,
        }
    });
    SHARED.with(|s| *s.borrow_mut() = Some(Rc::new(shared)));

    let config =
        contextualize_config(Config { cases: DEFAULT_CASES, failure_persistence: None, max_shrink_iters: 2048, ..Config::default() });
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(&GatewayModel::sequential_strategy(1..=MAX_STEPS), |(initial, transitions, seen)| {
        GatewayTest::test_sequential(config.clone(), initial, transitions, seen);
        Ok(())
    });

    let shared = SHARED.with(|s| s.borrow_mut().take()).expect("the environment");
    let shared = Rc::try_unwrap(shared).ok().expect("no case holds the environment any more");
    runtime.block_on(async move { drop(shared) });
    drop(runtime);

    OUTCOMES.with(|o| {
        let lines: Vec<_> = o.borrow().iter().map(|(what, n)| format!("{n:6}  {what}")).collect();
        eprintln!("requests checked, by outcome:\n{}", lines.join("\n"));
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, (_, mut transitions, _))) => {
            transitions.truncate(FAILED_AT.get().max(1));
            panic!("{why}\nminimal failing sequence ({} steps):\n{transitions:#?}", transitions.len())
        }
        Err(e) => panic!("{e}"),
    }
}
