//! The claim logic and the queries of [`Handler`] against a real NATS server (JetStream
//! key-value result store) and an in-process mock processor on a loopback port.
//!
//! Most tests turn the processor's own idempotency off, so that only the worker's claim on the
//! idempotency key can keep an operation from being performed twice: the processor ledger then
//! counts every call the worker made.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use mock_processor::{ProcessorClient, ProcessorConfig, Served};
use mock_worker::handler::{effect_request, Handled, Handler, Lookup};
use mock_worker::store::{fingerprint, now_ms, Record, ResultStore};
use mock_worker::{Faults, Latency, Profile};
use nats_protocol::{catalogue::ops, OperationRequest, RequestEnvelope, ResponseEnvelope, ResponseStatus};
use nats_testkit::{EnvConfig, NatsEnv};
use serde_json::json;

/// NATS, the processor and a result store bucket.
struct Env {
    /// Kept alive for the test's duration.
    _nats: NatsEnv,
    /// The processor, in this process: its ledger is read directly. Stops on drop.
    processor: Served,
    /// The bucket every handler of the test shares.
    store: ResultStore,
}

/// Starts a single NATS node and a processor with `config`, and opens the result bucket.
async fn start(config: ProcessorConfig) -> Env {
    nats_testkit::support::init_tracing();
    let nats = NatsEnv::start(EnvConfig::single()).await.expect("start nats");
    let processor = mock_processor::spawn(config).await.expect("processor starts");
    let js = jetstream::new(nats.connect().await.expect("connect"));
    let store = ResultStore::open(&js, "claims_test_results", nats.replicas()).await.expect("open result store");
    Env { _nats: nats, processor, store }
}

/// The processor with its idempotency off: every call is a new effect.
fn forgetful_processor() -> ProcessorConfig {
    ProcessorConfig { idempotency: false, ..ProcessorConfig::default() }
}

impl Env {
    fn client(&self) -> ProcessorClient {
        ProcessorClient::new(&self.processor.url).expect("processor client")
    }

    /// A handler (one worker) over the shared store, with no latency, declines or errors.
    fn handler(&self, name: &str) -> Handler {
        self.handler_with(name, Arc::new(Faults::default()))
    }

    fn handler_with(&self, name: &str, faults: Arc<Faults>) -> Handler {
        Handler::new(self.client(), self.store.clone(), Profile::default(), faults, name.to_string())
    }

    /// Effects the processor recorded under `key`.
    fn effects(&self, key: &str) -> usize {
        self.processor.effects_by_key(key).len()
    }
}

/// An authorization of `amount` USD for `payment` (attempt `<payment>_1`).
fn authorize(payment: &str, amount: i64) -> RequestEnvelope {
    OperationRequest::new(ops::authorize(), "m1", payment, format!("{payment}_1"))
        .router_data(json!({ "amount": amount, "currency": "USD" }))
        .envelope()
        .clone()
}

/// The same request again, as a retry would send it: a fresh correlation id and timestamp.
fn resent(env: &RequestEnvelope) -> RequestEnvelope {
    let mut again = authorize(&env.payment_id, env.router_data["amount"].as_i64().expect("amount"));
    again.idempotency_key = env.idempotency_key.clone();
    assert_ne!(again.correlation_id, env.correlation_id);
    assert_eq!(fingerprint(&again), fingerprint(env), "a retry is the same request");
    again
}

fn reply(handled: Result<Handled, mock_worker::handler::Transient>) -> ResponseEnvelope {
    match handled.expect("durable") {
        Handled::Reply(r) => r,
        Handled::Stalled => panic!("unexpected stall"),
    }
}

fn hit(lookup: Lookup) -> ResponseEnvelope {
    match lookup {
        Lookup::Hit(r) => r,
        other => panic!("expected a hit, got {other:?}"),
    }
}

/// Polls `lookup` until `want` says yes, or panics after `timeout`.
async fn lookup_until(handler: &Handler, env: &RequestEnvelope, what: &str, timeout: Duration, want: impl Fn(&Lookup) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let found = handler.lookup(env).await;
        if want(&found) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for lookup to answer {what}; last: {found:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same envelope handled twice (and once more by another worker, and once as a retry with
/// a new correlation id) gives the same reply and one processor effect.
#[tokio::test]
async fn a_durable_operation_runs_once_per_idempotency_key() {
    let env = start(forgetful_processor()).await;
    let (w1, w2) = (env.handler("w1"), env.handler("w2"));
    let op = ops::authorize();
    let request = authorize("pay_once", 1500);
    let key = request.idempotency_key.clone();

    let first = reply(w1.durable(op, &request).await);
    assert_eq!(first.status, ResponseStatus::Success, "{first:?}");
    let effect_id = first.transaction_id.clone().expect("transaction id");
    assert_eq!(first.correlation_id, request.correlation_id);

    let second = reply(w1.durable(op, &request).await);
    assert_eq!(second, first, "the redelivery gets the stored reply");
    let other_worker = reply(w2.durable(op, &request).await);
    assert_eq!(other_worker, first, "another worker gets the stored reply");
    let retry = resent(&request);
    let retried = reply(w2.durable(op, &retry).await);
    assert_eq!(retried.correlation_id, retry.correlation_id, "the stored reply answers the retry's correlation id");
    assert_eq!(retried.transaction_id.as_deref(), Some(effect_id.as_str()));

    let effects = env.processor.effects_by_key(&key);
    assert_eq!(effects.len(), 1, "one processor effect: {effects:?}");
    assert_eq!(effects[0].effect_id, effect_id);
    assert_eq!(env.processor.ledger().len(), 1);
}

/// While one delivery holds the claim (its processor call is slow), `lookup` answers pending
/// and a second delivery of the same key, on another worker, waits instead of calling the
/// processor; it then answers with the first delivery's result.
#[tokio::test]
async fn a_live_claim_answers_pending_and_keeps_a_second_delivery_off_the_processor() {
    let env = start(ProcessorConfig { delay_before_effect_ms: 1500, ..forgetful_processor() }).await;
    let (w1, w2) = (Arc::new(env.handler("w1")), Arc::new(env.handler("w2")));
    let op = ops::authorize();
    let request = authorize("pay_pending", 2500);
    let key = request.idempotency_key.clone();
    assert!(matches!(w2.lookup(&request).await, Lookup::Miss), "nothing claimed yet");

    let first = tokio::spawn({
        let (w1, request) = (w1.clone(), request.clone());
        async move { reply(w1.durable(op, &request).await) }
    });
    lookup_until(&w2, &request, "pending", Duration::from_secs(5), |l| matches!(l, Lookup::Pending)).await;
    let retry = resent(&request);
    let second = tokio::spawn({
        let (w2, retry) = (w2.clone(), retry.clone());
        async move { reply(w2.durable(op, &retry).await) }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!first.is_finished(), "the first delivery is still at the (slow) processor");
    assert!(!second.is_finished(), "the second delivery waits for the claim");
    assert!(matches!(w2.lookup(&request).await, Lookup::Pending));

    let first = first.await.expect("first delivery");
    let second = tokio::time::timeout(Duration::from_secs(10), second).await.expect("second delivery finishes").expect("join");
    assert_eq!(first.status, ResponseStatus::Success, "{first:?}");
    assert_eq!(second.transaction_id, first.transaction_id, "the second delivery answers with the first one's result");
    assert_eq!(second.correlation_id, retry.correlation_id);
    assert_eq!(env.effects(&key), 1, "the processor was called once");
    assert_eq!(hit(w2.lookup(&request).await).transaction_id, first.transaction_id);
}

/// A live claim written by hand (as another worker would hold it): `lookup` answers pending,
/// `durable` waits without calling the processor and answers with what the holder stores.
#[tokio::test]
async fn a_live_claim_by_another_worker_is_waited_out_not_raced() {
    let env = start(forgetful_processor()).await;
    let worker = Arc::new(env.handler("w1"));
    let op = ops::authorize();
    let request = authorize("pay_held", 900);
    let key = request.idempotency_key.clone();
    let fp = fingerprint(&request);
    let claim = Record::Started { fingerprint: fp.clone(), owner: "elsewhere:1:0".into(), lease_until_ms: now_ms() + 60_000 };
    assert!(env.store.create(&key, &claim).await.expect("create claim").is_some());
    assert!(matches!(worker.lookup(&request).await, Lookup::Pending));

    let delivery = tokio::spawn({
        let (worker, request) = (worker.clone(), request.clone());
        async move { reply(worker.durable(op, &request).await) }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!delivery.is_finished(), "a live claim is waited out");
    assert_eq!(env.effects(&key), 0, "the processor was not called under another's claim");

    // The holder finishes.
    let mut stored = ResponseEnvelope::reply_to(&request, ResponseStatus::Success);
    stored.transaction_id = Some("eff_of_the_holder".into());
    stored.correlation_id = "holder-correlation".into();
    env.store.put(&key, &Record::Done { fingerprint: fp, response: stored }).await.expect("store result");

    let answered = tokio::time::timeout(Duration::from_secs(5), delivery).await.expect("delivery finishes").expect("join");
    assert_eq!(answered.transaction_id.as_deref(), Some("eff_of_the_holder"));
    assert_eq!(answered.correlation_id, request.correlation_id, "the stored reply answers this request");
    assert_eq!(env.effects(&key), 0);
    assert!(env.processor.ledger().is_empty());
}

/// After the operation, `lookup` answers hit with the stored reply; a different request under
/// the same idempotency key is refused and changes nothing.
#[tokio::test]
async fn after_the_operation_lookup_hits_and_a_different_request_is_refused() {
    let env = start(ProcessorConfig::default()).await;
    let worker = env.handler("w1");
    let op = ops::authorize();
    let request = authorize("pay_hit", 1200);
    let key = request.idempotency_key.clone();

    let done = reply(worker.durable(op, &request).await);
    assert_eq!(done.status, ResponseStatus::Success);
    assert_eq!(hit(worker.lookup(&request).await), done);
    let retry = resent(&request);
    let looked = hit(worker.lookup(&retry).await);
    assert_eq!(looked.correlation_id, retry.correlation_id);
    assert_eq!(looked.transaction_id, done.transaction_id);

    let mut other = authorize("pay_hit", 9900);
    other.idempotency_key = key.clone();
    assert_ne!(fingerprint(&other), fingerprint(&request));
    let refused = reply(worker.durable(op, &other).await);
    assert_eq!(refused.status, ResponseStatus::Failure, "{refused:?}");
    assert_eq!(refused.error.as_ref().map(|e| e.code.as_str()), Some("IDEMPOTENCY_KEY_REUSED"), "{refused:?}");
    assert_eq!(refused.correlation_id, other.correlation_id);
    assert!(refused.transaction_id.is_none());
    assert!(!matches!(worker.lookup(&other).await, Lookup::Hit(_)), "the other request has no result");

    assert_eq!(env.effects(&key), 1, "the refused request did not reach the processor");
    assert_eq!(hit(worker.lookup(&request).await), done, "the stored result is unchanged");
    assert_eq!(reply(worker.durable(op, &request).await), done);
}

/// An expired claim whose holder died after the processor call is taken over, and the processor
/// is asked first: its effect is reused, not repeated (the processor's idempotency is off, so
/// only the claim logic prevents a second effect).
#[tokio::test]
async fn an_expired_claim_is_taken_over_and_the_processor_asked_first() {
    let env = start(forgetful_processor()).await;
    let worker = env.handler("w2");
    let op = ops::authorize();
    let request = authorize("pay_takeover", 3100);
    let key = request.idempotency_key.clone();

    // The dead delivery: claimed, reached the processor, then stopped.
    let dead = Record::Started { fingerprint: fingerprint(&request), owner: "w1:1:0".into(), lease_until_ms: now_ms() - 1_000 };
    assert!(env.store.create(&key, &dead).await.expect("create claim").is_some());
    let effect = env.client().create_effect(&effect_request(op, &request), Some(&key)).await.expect("effect");
    assert!(matches!(worker.lookup(&request).await, Lookup::Miss), "an expired claim is not pending");

    let taken = reply(worker.durable(op, &request).await);
    assert_eq!(taken.status, ResponseStatus::Success, "{taken:?}");
    assert_eq!(taken.transaction_id.as_deref(), Some(effect.effect_id.as_str()), "the earlier effect is the result");
    assert_eq!(env.effects(&key), 1, "no second effect");
    assert_eq!(env.processor.ledger().len(), 1);
    match env.store.get(&key).await.expect("read record") {
        Some(Record::Done { response, .. }) => assert_eq!(response.transaction_id, taken.transaction_id),
        other => panic!("expected a done record, got {other:?}"),
    }
    assert_eq!(hit(worker.lookup(&request).await).transaction_id, taken.transaction_id);
}

/// An expired claim whose holder never reached the processor is taken over and processed once.
#[tokio::test]
async fn an_expired_claim_without_an_effect_is_taken_over_and_processed_once() {
    let env = start(forgetful_processor()).await;
    let worker = env.handler("w2");
    let op = ops::authorize();
    let request = authorize("pay_takeover_fresh", 4200);
    let key = request.idempotency_key.clone();
    let dead = Record::Started { fingerprint: fingerprint(&request), owner: "w1:1:0".into(), lease_until_ms: now_ms() - 1_000 };
    assert!(env.store.create(&key, &dead).await.expect("create claim").is_some());

    let taken = reply(worker.durable(op, &request).await);
    assert_eq!(taken.status, ResponseStatus::Success, "{taken:?}");
    let effects = env.processor.effects_by_key(&key);
    assert_eq!(effects.len(), 1, "{effects:?}");
    assert_eq!(taken.transaction_id.as_deref(), Some(effects[0].effect_id.as_str()));
    assert_eq!(reply(worker.durable(op, &request).await), taken);
    assert_eq!(env.effects(&key), 1);
}

/// A delivery stalls right after the processor call (nothing stored) under a short lease: the
/// claim answers pending until it expires, then the next delivery takes it over and reuses the
/// effect instead of charging again.
#[tokio::test]
async fn a_stalled_delivery_s_lease_expires_and_the_next_delivery_reuses_its_effect() {
    let env = start(forgetful_processor()).await;
    let faults = Arc::new(Faults::default());
    faults.stall_after_processor.store(1, Ordering::SeqCst);
    let worker = env.handler_with("w1", faults.clone()).with_lease(1_500);
    let op = ops::authorize();
    let request = authorize("pay_stall", 5300);
    let key = request.idempotency_key.clone();

    let started = Instant::now();
    assert!(matches!(worker.durable(op, &request).await.expect("durable"), Handled::Stalled));
    assert_eq!(faults.stall_after_processor.load(Ordering::SeqCst), 0);
    let effects = env.processor.effects_by_key(&key);
    assert_eq!(effects.len(), 1, "the stalled delivery reached the processor");
    if started.elapsed() < Duration::from_millis(1_000) {
        assert!(matches!(worker.lookup(&request).await, Lookup::Pending), "the dead delivery's lease still holds");
    }
    lookup_until(&worker, &request, "miss", Duration::from_secs(10), |l| matches!(l, Lookup::Miss)).await;

    let taken = reply(worker.durable(op, &request).await);
    assert_eq!(taken.status, ResponseStatus::Success, "{taken:?}");
    assert_eq!(taken.transaction_id.as_deref(), Some(effects[0].effect_id.as_str()));
    assert_eq!(env.effects(&key), 1, "no second effect after the takeover");
    assert_eq!(hit(worker.lookup(&request).await).transaction_id, taken.transaction_id);
}

/// Deliveries of one key racing on several workers at once: one claim wins, one effect, every
/// delivery answers with the same result.
#[tokio::test]
async fn concurrent_deliveries_of_one_key_make_one_effect() {
    let env = start(forgetful_processor()).await;
    let op = ops::authorize();
    let request = authorize("pay_race", 6400);
    let key = request.idempotency_key.clone();
    let deliveries: Vec<_> = (0..6)
        .map(|i| {
            let worker = env.handler(&format!("w{i}"));
            let request = resent(&request);
            tokio::spawn(async move { reply(worker.durable(op, &request).await) })
        })
        .collect();
    let mut ids = Vec::new();
    for delivery in deliveries {
        let answered = tokio::time::timeout(Duration::from_secs(20), delivery).await.expect("delivery finishes").expect("join");
        assert_eq!(answered.status, ResponseStatus::Success, "{answered:?}");
        ids.push(answered.transaction_id.expect("transaction id"));
    }
    let effects = env.processor.effects_by_key(&key);
    assert_eq!(effects.len(), 1, "{effects:?}");
    assert!(ids.iter().all(|id| *id == effects[0].effect_id), "{ids:?} vs {}", effects[0].effect_id);
}

/// A delivery whose claim is taken over while it works (here: overwritten by compare-and-set,
/// as a takeover would) notices at its next renewal and does not call the processor; giving up,
/// it does not clobber the new holder's claim.
#[tokio::test]
async fn a_delivery_that_lost_its_claim_does_not_call_the_processor() {
    let env = start(forgetful_processor()).await;
    let faults = Arc::new(Faults::default());
    *faults.latency.lock().unwrap() = Some(Latency::Fixed { ms: 1_500 });
    let worker = Arc::new(env.handler_with("w1", faults).with_lease(600));
    let op = ops::authorize();
    let request = authorize("pay_lost", 7500);
    let key = request.idempotency_key.clone();

    let delivery = tokio::spawn({
        let (worker, request) = (worker.clone(), request.clone());
        async move { worker.durable(op, &request).await }
    });
    lookup_until(&worker, &request, "pending", Duration::from_secs(5), |l| matches!(l, Lookup::Pending)).await;
    let taker = Record::Started { fingerprint: fingerprint(&request), owner: "w2:1:0".into(), lease_until_ms: now_ms() + 60_000 };
    let mut taken = false;
    for _ in 0..20 {
        let (_, revision) = env.store.entry(&key).await.expect("entry").expect("claimed");
        if env.store.update(&key, &taker, revision).await.expect("update").is_some() {
            taken = true;
            break;
        }
    }
    assert!(taken, "could not take the claim over");

    let outcome = tokio::time::timeout(Duration::from_secs(10), delivery).await.expect("delivery finishes").expect("join");
    let err = outcome.expect_err("a delivery that lost its claim gives the message back");
    assert!(err.0.contains("lost"), "{err}");
    assert_eq!(env.effects(&key), 0, "the processor was not called");
    assert_eq!(env.store.get(&key).await.expect("read"), Some(taker), "the new holder's claim is intact");
}

/// A delivery that fails transiently after claiming releases its claim: `lookup` no longer
/// answers pending, and the redelivery goes ahead at once instead of waiting out the lease.
#[tokio::test]
async fn a_failed_delivery_releases_its_claim_for_the_redelivery() {
    let env = start(forgetful_processor()).await;
    let faults = Arc::new(Faults::default());
    faults.processor_unavailable.store(true, Ordering::SeqCst);
    let worker = env.handler_with("w1", faults.clone());
    let op = ops::authorize();
    let request = authorize("pay_release", 8600);
    let key = request.idempotency_key.clone();

    worker.durable(op, &request).await.expect_err("processor unavailable (fault)");
    assert_eq!(env.effects(&key), 0);
    match env.store.get(&key).await.expect("read") {
        Some(Record::Started { lease_until_ms, .. }) => assert!(lease_until_ms <= now_ms(), "released claim still live"),
        other => panic!("expected a released claim, got {other:?}"),
    }
    assert!(matches!(worker.lookup(&request).await, Lookup::Miss));

    faults.processor_unavailable.store(false, Ordering::SeqCst);
    let started = Instant::now();
    let answered = reply(worker.durable(op, &request).await);
    assert!(started.elapsed() < Duration::from_secs(5), "the redelivery waited {:?}", started.elapsed());
    assert_eq!(answered.status, ResponseStatus::Success, "{answered:?}");
    assert_eq!(env.effects(&key), 1);
}

/// A request older than `max_request_age_ms` is refused before the processor, and the refusal
/// is the stored result of its key.
#[tokio::test]
async fn an_expired_request_is_refused_and_the_refusal_stored() {
    let env = start(forgetful_processor()).await;
    let worker = env.handler("w1").with_max_request_age(1_000);
    let op = ops::authorize();
    let mut request = authorize("pay_old", 9700);
    request.timestamp = now_ms() - 60_000;
    let key = request.idempotency_key.clone();

    let refused = reply(worker.durable(op, &request).await);
    assert_eq!(refused.error.as_ref().map(|e| e.code.as_str()), Some("REQUEST_EXPIRED"), "{refused:?}");
    assert_eq!(env.effects(&key), 0);
    assert_eq!(hit(worker.lookup(&request).await).error, refused.error);
    // Even a fresh retry of the same request gets the stored refusal, not a processor call.
    let retry = resent(&request);
    let again = reply(worker.durable(op, &retry).await);
    assert_eq!(again.error, refused.error);
    assert_eq!(env.effects(&key), 0);
}

/// The `lookup-ignores-claims` defect knob: a live claim answers miss.
#[tokio::test]
async fn the_lookup_defect_knob_hides_live_claims() {
    let env = start(forgetful_processor()).await;
    let (honest, defective) = (env.handler("w1"), env.handler("w2").with_lookup_ignoring_claims(true));
    let request = authorize("pay_knob", 1100);
    let claim = Record::Started { fingerprint: fingerprint(&request), owner: "w3:1:0".into(), lease_until_ms: now_ms() + 60_000 };
    assert!(env.store.create(&request.idempotency_key, &claim).await.expect("create claim").is_some());
    assert!(matches!(honest.lookup(&request).await, Lookup::Pending));
    assert!(matches!(defective.lookup(&request).await, Lookup::Miss));
}

/// An issuer that declines everything declines only what moves money: authorize and capture
/// end `card_declined` without a processor call, a void still reaches the processor.
#[tokio::test]
async fn declines_fall_on_money_moving_operations_only() {
    let env = start(ProcessorConfig::default()).await;
    let declining = Handler::new(
        env.client(),
        env.store.clone(),
        Profile { decline_rate: 1.0, ..Profile::default() },
        Arc::new(Faults::default()),
        "declining".to_string(),
    );
    let op_on = |op, attempt: &str| {
        OperationRequest::new(op, "m1", "pay_declines", attempt)
            .router_data(json!({ "amount": 700, "currency": "USD", "capture_method": "manual" }))
            .envelope()
            .clone()
    };
    let declined = reply(declining.durable(ops::authorize(), &op_on(ops::authorize(), "att_declined")).await);
    assert_eq!(declined.status, ResponseStatus::Failure, "{declined:?}");
    assert_eq!(declined.error.as_ref().map(|e| e.code.as_str()), Some("card_declined"));
    assert!(env.processor.ledger().is_empty(), "a declined authorization never reaches the processor");

    // Authorized by a worker that does not decline, then captured and voided by the one that does.
    let authorized = reply(env.handler("plain").durable(ops::authorize(), &op_on(ops::authorize(), "att_ok")).await);
    assert_eq!(authorized.status, ResponseStatus::Success, "{authorized:?}");
    let capture = reply(declining.durable(ops::capture(), &op_on(ops::capture(), "cap_1")).await);
    assert_eq!(capture.error.as_ref().map(|e| e.code.as_str()), Some("card_declined"), "{capture:?}");
    let void = reply(declining.durable(ops::void(), &op_on(ops::void(), "void_1")).await);
    assert_eq!(void.status, ResponseStatus::Success, "a void moves no money and is not declined: {void:?}");
    assert_eq!(env.processor.ledger().len(), 2, "the authorization and the void: {:?}", env.processor.ledger());
}

/// Watches `key`'s claim until `delivery` ends: every read of a claim `holder` owns must show a lease
/// that is live and at most one lease (plus a read's slack) ahead: neither already expired,
/// which would let another delivery take over a working holder, nor stretched, which would
/// keep a dead holder's key locked. Returns how many reads saw the claim.
async fn watch_lease<T>(store: &ResultStore, key: &str, holder: &str, lease_ms: u64, delivery: &tokio::task::JoinHandle<T>) -> usize {
    let mut seen = 0;
    while !delivery.is_finished() {
        let before = now_ms();
        if let Some(Record::Started { lease_until_ms, owner, .. }) = store.get(key).await.expect("read claim") {
            if !owner.starts_with(holder) {
                // The dead holder's claim, not taken over yet.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let after = now_ms();
            assert!(lease_until_ms > before, "the claim of a working holder expired: {lease_until_ms} <= {before}");
            assert!(lease_until_ms <= after + lease_ms, "the lease runs past one lease: {lease_until_ms} > {after} + {lease_ms}");
            seen += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// A holder working longer than its lease keeps the claim live by renewing it, whether it
/// created the claim or took over an expired one, and each renewal reaches one lease ahead.
#[tokio::test]
async fn a_working_holder_s_lease_stays_live_and_one_lease_ahead() {
    let env = start(forgetful_processor()).await;
    let lease_ms = 600;
    let faults = Arc::new(Faults::default());
    *faults.latency.lock().unwrap() = Some(Latency::Fixed { ms: 1_500 });
    let worker = Arc::new(env.handler_with("w1", faults).with_lease(lease_ms));
    let op = ops::authorize();
    for (payment, dead_claim) in [("pay_renewed", false), ("pay_taken_over", true)] {
        let request = authorize(payment, 2600);
        let key = request.idempotency_key.clone();
        if dead_claim {
            let dead = Record::Started { fingerprint: fingerprint(&request), owner: "w0:1:0".into(), lease_until_ms: now_ms() - 1_000 };
            assert!(env.store.create(&key, &dead).await.expect("create claim").is_some());
        }
        let delivery = tokio::spawn({
            let (worker, request) = (worker.clone(), request.clone());
            async move { worker.durable(op, &request).await }
        });
        let seen = watch_lease(&env.store, &key, "w1:", lease_ms, &delivery).await;
        // 1.5 s of work at one read per 50 ms or so, over two and more renewals.
        assert!(seen >= 10, "{payment}: the claim was seen {seen} times");
        let done = reply(delivery.await.expect("join"));
        assert_eq!(done.status, ResponseStatus::Success, "{payment}: {done:?}");
        assert_eq!(env.effects(&key), 1, "{payment}: one effect");
    }
}

/// Queries read the processor and never write: a sync of an unknown payment or refund is a
/// not-found failure; once effects exist, the payment sync returns the account and its effects,
/// a refund sync the last effect under its `refund_id`, a payout sync looks under `payout_id`;
/// tax is computed from the request.
#[tokio::test]
async fn queries_answer_from_the_processor_and_tell_unknown_from_known() {
    let env = start(ProcessorConfig::default()).await;
    let worker = env.handler("w1");
    let on = |name: &str, attempt: &str, router_data: serde_json::Value| {
        let op = nats_protocol::catalogue::find(name).expect(name);
        (op, OperationRequest::new(op, "m1", "pay_query", attempt).router_data(router_data).envelope().clone())
    };
    let code = |r: &ResponseEnvelope| r.error.as_ref().map(|e| e.code.clone());

    let (op, sync) = on("payments.sync", "sync_1", json!({}));
    assert_eq!(code(&worker.query(op, &sync).await).as_deref(), Some("payment_not_found"));
    let (op, refund_sync) = on("refunds.sync", "rsync_1", json!({ "refund_id": "ref_1" }));
    assert_eq!(code(&worker.query(op, &refund_sync).await).as_deref(), Some("not_found"));

    let money = json!({ "amount": 900, "currency": "USD", "capture_method": "automatic" });
    let (op, auth) = on("payments.authorize", "att_1", money.clone());
    assert_eq!(reply(worker.durable(op, &auth).await).status, ResponseStatus::Success);
    let (op, refund) = on("refunds.execute", "ref_1", json!({ "amount": 300, "currency": "USD" }));
    let refunded = reply(worker.durable(op, &refund).await);
    assert_eq!(refunded.status, ResponseStatus::Success, "{refunded:?}");
    let effects = env.processor.ledger().len();

    let (op, _) = on("payments.sync", "sync_1", json!({}));
    let synced = worker.query(op, &sync).await;
    assert_eq!(synced.status, ResponseStatus::Success, "{synced:?}");
    assert_eq!(synced.connector_response["effects"].as_array().map(Vec::len), Some(2), "{synced:?}");
    let (op, _) = on("refunds.sync", "rsync_1", json!({}));
    let found = worker.query(op, &refund_sync).await;
    assert_eq!(found.status, ResponseStatus::Success, "{found:?}");
    assert_eq!(found.transaction_id, refunded.transaction_id);
    // A payout sync reads `payout_id`, not `refund_id`: the same reference under the wrong
    // field falls back to the attempt id and is not found.
    let (op, payout_sync) = on("payouts.sync", "psync_1", json!({ "refund_id": "ref_1" }));
    assert_eq!(code(&worker.query(op, &payout_sync).await).as_deref(), Some("not_found"));
    let (op, payout_sync) = on("payouts.sync", "psync_1", json!({ "payout_id": "ref_1" }));
    assert_eq!(worker.query(op, &payout_sync).await.transaction_id, refunded.transaction_id);

    let (op, tax) = on("tax.calculate", "tax_1", json!({ "amount": 2_500, "currency": "USD" }));
    assert_eq!(worker.query(op, &tax).await.connector_response["order_tax_amount"], 200);
    assert_eq!(env.processor.ledger().len(), effects, "queries make no effect");
}

/// On a 3-node cluster the result bucket is file-backed, keeps one record per key and has a
/// replica per node, like the streams: losing a node loses no claim and no stored result.
#[tokio::test]
async fn the_result_bucket_is_replicated_on_disk() {
    nats_testkit::support::init_tracing();
    let nats = NatsEnv::start(EnvConfig::cluster()).await.expect("start a cluster");
    let js = jetstream::new(nats.connect().await.expect("connect"));
    ResultStore::open(&js, "replicated_results", nats.replicas()).await.expect("open result store");
    let stream = js.get_stream("KV_replicated_results").await.expect("the bucket's stream");
    let config = &stream.cached_info().config;
    assert_eq!(config.num_replicas, 3);
    assert_eq!(config.storage, jetstream::stream::StorageType::File);
    assert_eq!(config.max_messages_per_subject, 1, "one record per key");
}
