//! The goose side: one scenario whose weighted transactions are the operations of the mix.
//! Each transaction takes the next slot of the global schedule, waits for its intended time,
//! sends one request and records it. Captures, voids and refunds use payments the same user
//! authorized earlier (per-user session data); a user without one sends the request that makes
//! one instead (a fallback, counted in the report).
//!
//! Goose's round-robin scheduler gives every user the same cycle of transactions from the same
//! start, which would make a short run with many users all authorizations. So user `n` first
//! skips `n mod cycle` transactions (without taking a slot): the users start spread over the
//! cycle and together follow the weights from the first second.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use goose::prelude::*;
use serde_json::{json, Value};

use crate::data::{DataGen, SlotData};
use crate::ops::{Mix, Operation, Outcome, StatusClass};
use crate::record::{Recorder, Sample};
use crate::schedule::{Schedule, Slot};

/// What every user shares.
#[derive(Debug)]
pub struct LoadContext {
    /// The global schedule.
    pub schedule: Arc<Schedule>,
    /// Where samples go.
    pub recorder: Recorder,
    /// Seeded payment data.
    pub data: DataGen,
    /// The gateway's API key.
    pub api_key: String,
    /// Makes payment and refund ids unique to this run (a rerun against the same gateway
    /// would otherwise hit the first run's payments).
    pub id_prefix: String,
    /// Length of the schedule.
    pub duration: Duration,
    /// After the schedule ends, how long requests may still run before the run is stopped.
    pub drain: Duration,
    /// Transactions in goose's round-robin cycle of the mix ([`cycle_len`]).
    pub cycle: usize,
}

/// The length of goose's round-robin cycle for `mix`: the weights divided by their greatest
/// common divisor, summed.
pub fn cycle_len(mix: &Mix) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let weights: Vec<usize> = mix.0.values().copied().filter(|w| *w > 0).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    weights.iter().map(|w| w / g).sum::<usize>().max(1)
}

/// Payments and refunds a user may act on; bounded, oldest dropped first.
#[derive(Debug, Clone, Default)]
pub struct UserState {
    /// Transactions still to skip at the start (see the module documentation).
    skip: usize,
    /// Authorized with manual capture, not yet captured or voided: (payment id, amount).
    authorized: VecDeque<(String, i64)>,
    /// Charged and not yet refunded: (payment id, amount captured).
    charged: VecDeque<(String, i64)>,
    /// Recent payments, for syncs.
    payments: VecDeque<String>,
    /// Recent refunds, for refund syncs.
    refunds: VecDeque<String>,
}

/// How many of each kind a user keeps.
const KEEP: usize = 32;

fn push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() >= KEEP {
        q.pop_front();
    }
    q.push_back(v);
}

/// One request, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What it does.
    pub op: Operation,
    /// Sent in place of the planned operation.
    pub fallback: bool,
    /// POST or GET.
    pub post: bool,
    /// Path and query.
    pub path: String,
    /// JSON body of a POST.
    pub body: Option<Value>,
    /// The payment (or refund) it concerns and the amount that matters for the state after.
    pub object: (String, i64),
}

/// Chooses the request for `planned` from the user's state and the slot's data: captures and
/// voids take an authorized payment, refunds a charged one, reads a recent one; without one,
/// the request that would make one is sent instead.
pub fn plan(planned: Operation, state: &mut UserState, data: &SlotData, slot: u64, prefix: &str) -> Request {
    let pid = format!("pay_{prefix}_{slot}");
    let authorize = |op: Operation, fallback: bool| {
        let manual = op == Operation::AuthorizeManual;
        Request {
            op,
            fallback,
            post: true,
            path: "/payments".into(),
            body: Some(json!({
                "payment_id": pid,
                "amount": data.amount,
                "currency": data.currency,
                "capture_method": if manual { "manual" } else { "automatic" },
                "confirm": true,
                "payment_method": "card",
                "payment_method_data": data.card(),
                "customer_id": data.customer_id,
                "description": format!("order {slot} of {}", data.customer_name),
                "metadata": { "customer_name": data.customer_name, "email": data.email },
            })),
            object: (pid.clone(), data.amount),
        }
    };
    let refund = |state: &mut UserState, fallback: bool| match state.charged.pop_front() {
        Some((id, captured)) => {
            let amount = (captured * data.refund_percent / 100).max(1);
            let rid = format!("ref_{prefix}_{slot}");
            Request {
                op: Operation::Refund,
                fallback,
                post: true,
                path: "/refunds".into(),
                body: Some(json!({ "payment_id": id, "refund_id": rid, "amount": amount, "reason": "requested_by_customer" })),
                object: (rid, amount),
            }
        }
        None => authorize(Operation::AuthorizeAuto, true),
    };
    match planned {
        Operation::AuthorizeAuto | Operation::AuthorizeManual => authorize(planned, false),
        Operation::Capture => match state.authorized.pop_front() {
            Some((id, amount)) => {
                let part = if data.capture_full { amount } else { (amount / 2).max(1) };
                Request {
                    op: Operation::Capture,
                    fallback: false,
                    post: true,
                    path: format!("/payments/{id}/capture"),
                    body: Some(json!({ "amount_to_capture": part })),
                    object: (id, part),
                }
            }
            None => authorize(Operation::AuthorizeManual, true),
        },
        Operation::Void => match state.authorized.pop_front() {
            Some((id, amount)) => Request {
                op: Operation::Void,
                fallback: false,
                post: true,
                path: format!("/payments/{id}/cancel"),
                body: Some(json!({ "cancellation_reason": "requested_by_customer" })),
                object: (id, amount),
            },
            None => authorize(Operation::AuthorizeManual, true),
        },
        Operation::Sync => match state.payments.len() {
            0 => authorize(Operation::AuthorizeManual, true),
            n => {
                let id = state.payments[data.pick % n].clone();
                Request {
                    op: Operation::Sync,
                    fallback: false,
                    post: false,
                    path: format!("/payments/{id}?force_sync=true"),
                    body: None,
                    object: (id, 0),
                }
            }
        },
        Operation::Refund => refund(state, false),
        Operation::RefundSync => match state.refunds.len() {
            0 => refund(state, true),
            n => {
                let id = state.refunds[data.pick % n].clone();
                Request {
                    op: Operation::RefundSync,
                    fallback: false,
                    post: false,
                    path: format!("/refunds/{id}"),
                    body: None,
                    object: (id, 0),
                }
            }
        },
    }
}

/// Updates the user's state after a request ended with `outcome`.
pub fn remember(state: &mut UserState, req: &Request, outcome: Outcome) {
    let (id, amount) = req.object.clone();
    match (req.op, outcome) {
        (Operation::AuthorizeAuto, Outcome::Ok) => {
            push(&mut state.charged, (id.clone(), amount));
            push(&mut state.payments, id);
        }
        (Operation::AuthorizeManual, Outcome::Ok) => {
            push(&mut state.authorized, (id.clone(), amount));
            push(&mut state.payments, id);
        }
        (Operation::Capture, Outcome::Ok) => push(&mut state.charged, (id, amount)),
        // A pending refund can still be read.
        (Operation::Refund, Outcome::Ok | Outcome::Undecided) => push(&mut state.refunds, id),
        _ => {}
    }
}

/// When every slot is taken: wait a little (goose asks again at once), and stop the run if
/// requests still run long after the schedule ended.
async fn idle(ctx: &LoadContext) -> TransactionResult {
    if let Some(t0) = ctx.schedule.t0() {
        if Instant::now() > t0 + ctx.duration + ctx.drain && !goose::is_killswitch_triggered() {
            let left = ctx.schedule.total() - ctx.schedule.completed();
            goose::trigger_killswitch(&format!("{left} request(s) still running {} s after the schedule ended", ctx.drain.as_secs()));
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// One transaction: the next slot, sent as `planned` (or its fallback).
async fn step(ctx: Arc<LoadContext>, user: &mut GooseUser, planned: Operation) -> TransactionResult {
    if user.get_session_data::<UserState>().is_none() {
        let skip = user.weighted_users_index % ctx.cycle;
        user.set_session_data(UserState { skip, ..Default::default() });
        if user.weighted_users_index < WARM_CONNECTIONS {
            warm_up(&ctx, user).await;
        }
    }
    if let Some(state) = user.get_session_data_mut::<UserState>() {
        if state.skip > 0 {
            state.skip -= 1;
            return Ok(());
        }
    }
    let Some(slot) = ctx.schedule.take() else {
        return idle(&ctx).await;
    };
    let data = ctx.data.slot(slot.index);
    let req = {
        let state = user.get_session_data_mut::<UserState>().expect("session data set above");
        plan(planned, state, &data, slot.index, &ctx.id_prefix)
    };
    let (outcome, class, sent, done) = send(&ctx, user, &req, &slot).await;
    let state = user.get_session_data_mut::<UserState>().expect("session data set above");
    remember(state, &req, outcome);
    let t0 = slot.intended - slot.offset;
    ctx.recorder.record(&Sample {
        op: req.op,
        intended: slot.offset,
        sent: sent.saturating_duration_since(t0),
        latency: done.saturating_duration_since(slot.intended),
        class,
        outcome,
        fallback: req.fallback,
    });
    if ctx.schedule.complete() {
        goose::trigger_killswitch("schedule complete: every request answered");
    }
    Ok(())
}

/// Connections opened before the schedule starts, by the first users (launched well inside the
/// schedule's lead): the shared client's pool starts empty, and without this the first second
/// paid a TCP connect (and the gateway a new connection) on most requests.
const WARM_CONNECTIONS: usize = 100;

/// One `GET /health` outside goose's metrics and ours: leaves an open connection in the pool.
async fn warm_up(ctx: &LoadContext, user: &mut GooseUser) {
    if ctx.schedule.t0().is_some_and(|t0| Instant::now() >= t0) {
        // Already on the clock: a slot is waiting.
        return;
    }
    if let Ok(builder) = user.get_request_builder(&GooseMethod::Get, "/health") {
        if let Ok(response) = builder.send().await {
            let _ = response.bytes().await;
        }
    }
}

/// Waits for the slot's time, sends, reads the whole answer; returns the outcome, the status
/// class, and when it was sent and done.
async fn send(ctx: &LoadContext, user: &mut GooseUser, req: &Request, slot: &Slot) -> (Outcome, StatusClass, Instant, Instant) {
    let method = if req.post { GooseMethod::Post } else { GooseMethod::Get };
    // Built before the wait, so the send is all that happens after it.
    let builder = match user.get_request_builder(&method, &req.path) {
        Ok(b) => b.header("api-key", &ctx.api_key),
        Err(_) => {
            let now = Instant::now();
            return (Outcome::Transport, StatusClass::Transport, now, now);
        }
    };
    let builder = match &req.body {
        Some(body) => builder.json(body),
        None => builder,
    };
    tokio::time::sleep_until(slot.intended.into()).await;
    let sent = Instant::now();
    let request = GooseRequest::builder().method(method).path(req.path.as_str()).name(req.op.name()).set_request_builder(builder).build();
    let response = match user.request(request).await {
        Ok(goose) => goose.response,
        Err(_) => return (Outcome::Transport, StatusClass::Transport, sent, Instant::now()),
    };
    let (outcome, class) = match response {
        Err(_) => (Outcome::Transport, StatusClass::Transport),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let class = StatusClass::of(Some(status));
            match resp.bytes().await {
                // The answer was cut off: no outcome, whatever the status said.
                Err(_) => (Outcome::Transport, class),
                Ok(body) => match class {
                    StatusClass::Success => (req.op.judge(&serde_json::from_slice(&body).unwrap_or(Value::Null)), class),
                    StatusClass::ClientError => (Outcome::ClientError, class),
                    _ => (Outcome::ServerError, class),
                },
            }
        }
    };
    (outcome, class, sent, Instant::now())
}

/// The goose scenario: one transaction per operation of the mix, with its weight.
pub fn scenario(ctx: Arc<LoadContext>, mix: &Mix) -> Result<Scenario, GooseError> {
    let mut scenario = Scenario::new("payments");
    for (op, weight) in mix.0.iter().filter(|(_, w)| **w > 0) {
        let (op, ctx) = (*op, ctx.clone());
        let function: TransactionFunction = Arc::new(move |user| {
            let ctx = ctx.clone();
            Box::pin(async move { step(ctx, user, op).await })
        });
        scenario = scenario.register_transaction(Transaction::new(function).set_name(op.name()).set_weight(*weight)?);
    }
    Ok(scenario)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> SlotData {
        DataGen::new(1).slot(0)
    }

    #[test]
    fn stateful_operations_fall_back_to_making_state() {
        let mut s = UserState::default();
        let d = data();
        let r = plan(Operation::Capture, &mut s, &d, 1, "t");
        assert_eq!((r.op, r.fallback), (Operation::AuthorizeManual, true));
        assert_eq!(r.body.as_ref().unwrap()["capture_method"], "manual");
        remember(&mut s, &r, Outcome::Ok);
        let r = plan(Operation::Capture, &mut s, &d, 2, "t");
        assert_eq!((r.op, r.fallback), (Operation::Capture, false));
        assert_eq!(r.path, "/payments/pay_t_1/capture");
        remember(&mut s, &r, Outcome::Ok);
        let r = plan(Operation::Void, &mut s, &d, 3, "t");
        assert_eq!(r.op, Operation::AuthorizeManual, "the only authorized payment was captured");
        let r = plan(Operation::Refund, &mut s, &d, 4, "t");
        assert_eq!(r.op, Operation::Refund);
        assert_eq!(r.body.as_ref().unwrap()["payment_id"], "pay_t_1");
        assert!(r.object.1 >= 1);
        remember(&mut s, &r, Outcome::Ok);
        let r = plan(Operation::RefundSync, &mut s, &d, 5, "t");
        assert_eq!((r.op, r.path.as_str()), (Operation::RefundSync, "/refunds/ref_t_4"));
        let r = plan(Operation::Sync, &mut s, &d, 6, "t");
        assert_eq!((r.op, r.path.as_str(), r.post), (Operation::Sync, "/payments/pay_t_1?force_sync=true", false));
    }

    #[test]
    fn failed_requests_leave_no_state() {
        let mut s = UserState::default();
        let r = plan(Operation::AuthorizeManual, &mut s, &data(), 1, "t");
        remember(&mut s, &r, Outcome::ServerError);
        assert!(s.authorized.is_empty() && s.payments.is_empty());
        let r = plan(Operation::RefundSync, &mut s, &data(), 2, "t");
        assert_eq!((r.op, r.fallback), (Operation::AuthorizeAuto, true), "no refund, no charged payment: authorize");
    }

    #[test]
    fn cycle_length_follows_goose() {
        assert_eq!(cycle_len(&Mix::default()), 12);
        assert_eq!(cycle_len(&"authorize_auto=4,authorize_manual=2,capture=2,void=0,sync=0,refund=0,refund_sync=0".parse().unwrap()), 4);
    }

    #[test]
    fn state_is_bounded() {
        let mut s = UserState::default();
        for i in 0..100 {
            let r = plan(Operation::AuthorizeAuto, &mut s, &data(), i, "t");
            remember(&mut s, &r, Outcome::Ok);
        }
        assert_eq!(s.charged.len(), KEEP);
        assert_eq!(s.payments.front().unwrap(), "pay_t_68");
    }
}
