//! The gateway's HTTP API end to end: real HTTP, real NATS, workers and the processor.

mod common;

#[allow(dead_code)]
#[path = "../../docs/examples/minimal_worker.rs"]
mod minimal_worker;

use std::collections::HashMap;
use std::time::Duration;

use common::{GatewayHandle, TestEnv};
use gateway::config::GatewayConfig;
use serde_json::{json, Value};

fn config(dir: &tempdir::Dir) -> GatewayConfig {
    GatewayConfig {
        database: dir.path().join("gateway.db"),
        api_keys: HashMap::from([("key_m1".to_string(), "m1".to_string()), ("key_m2".to_string(), "m2".to_string())]),
        ..Default::default()
    }
}

mod tempdir {
    pub use super::common::TempDir as Dir;
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn new(g: &GatewayHandle) -> Client {
        Client { http: reqwest::Client::new(), url: g.url.clone() }
    }
    async fn send(&self, method: reqwest::Method, path: &str, key: &str, idem: Option<&str>, body: Option<&str>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.url)).header("api-key", key);
        if let Some(i) = idem {
            r = r.header("Idempotency-Key", i);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, key, None, Some(&body.to_string())).await
    }
    async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, key, None, None).await
    }
}

async fn setup(workers: usize) -> (TestEnv, GatewayHandle, Client, tempdir::Dir) {
    let env = common::single(workers).await;
    let dir = tempdir::Dir::new("gw");
    let g = env.start_gateway(config(&dir)).await.unwrap();
    let c = Client::new(&g);
    (env, g, c, dir)
}

fn card() -> Value {
    json!({ "card": { "card_number": "4242424242424242", "card_cvc": "123", "card_exp_month": "12", "card_exp_year": "30" } })
}

#[tokio::test]
async fn manual_capture_partial_capture_refund_retrieve() {
    let (env, _g, c, _dir) = setup(1).await;
    let (s, p) = c
        .post("/payments", "key_m1", json!({ "payment_id": "pay_gw_1", "amount": 1000, "currency": "USD", "capture_method": "manual", "confirm": true, "payment_method": "card", "payment_method_data": card() }))
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["status"], "requires_capture");
    assert_eq!(p["amount_capturable"], 1000);
    let (s, p) = c.post("/payments/pay_gw_1/capture", "key_m1", json!({ "amount_to_capture": 400 })).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["status"], "partially_captured_and_capturable");
    assert_eq!(p["amount_received"], 400);
    assert_eq!(p["amount_capturable"], 600);
    let (s, r) = c.post("/refunds", "key_m1", json!({ "payment_id": "pay_gw_1", "refund_id": "ref_gw_1", "amount": 300 })).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "succeeded");
    let (s, p) = c.get("/payments/pay_gw_1?force_sync=true", "key_m1").await;
    assert_eq!(s, 200);
    assert_eq!(p["amount_refunded"], 300);
    let (s, r) = c.get("/refunds/ref_gw_1", "key_m1").await;
    assert_eq!((s, r["amount"].clone()), (200, json!(300)));
    let account = env.processor().account("m1", "pay_gw_1").unwrap();
    assert_eq!((account.authorized, account.captured, account.refunded), (1000, 400, 300));
    assert_eq!(env.processor().ledger().len(), 3);
}

#[tokio::test]
async fn automatic_capture_charges_in_one_call() {
    let (env, g, c, _dir) = setup(1).await;
    let (s, p) =
        c.post("/payments", "key_m1", json!({ "payment_id": "pay_auto", "amount": 700, "currency": "EUR", "confirm": true })).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["status"], "succeeded");
    assert_eq!(
        (p["attempt_status"].as_str(), p["amount_received"].as_i64(), p["amount_capturable"].as_i64()),
        (Some("charged"), Some(700), Some(0))
    );
    // One bus operation: the authorization, which the processor charged in one effect.
    let gateway = &g.running.state.gateway;
    assert_eq!(gateway.bridge.stats().published, 1, "one JetStream publish");
    let ops: Vec<_> = gateway.store.operations_of("m1", "pay_auto").unwrap().into_iter().map(|o| o.operation).collect();
    assert_eq!(ops, ["payments.authorize"]);
    let ledger = env.processor().ledger();
    assert_eq!(ledger.len(), 1, "one effect: {ledger:?}");
    assert_eq!((ledger[0].operation.as_str(), ledger[0].amount, ledger[0].captured_amount), ("payments.authorize", Some(700), Some(700)));
    let account = env.processor().account("m1", "pay_auto").unwrap();
    assert_eq!((account.authorized, account.captured), (700, 700));
    assert_eq!(gateway.bridge.metrics().counter("gateway_capture_fallbacks", "", &[]).get(), 0);
}

/// An older worker that does not pass `capture_method` on: the processor only authorizes, so the
/// gateway captures with a second operation, and the payment still ends charged.
#[tokio::test]
async fn automatic_capture_falls_back_to_a_capture_when_the_authorization_did_not_capture() {
    let (env, g, c, _dir) = setup(0).await;
    let processor = env.processor().clone();
    let old_worker: minimal_worker::Process = std::sync::Arc::new(move |env| {
        let rd = &env.router_data;
        let mut request = mock_processor::EffectRequest::new(&env.operation, &env.merchant_id, &env.payment_id).reference(&env.attempt_id);
        request.amount = rd["amount"].as_i64();
        request.currency = rd["currency"].as_str().map(str::to_string);
        match processor.submit(&request, Some(&env.idempotency_key)) {
            mock_processor::Submission::Processed(Ok(effect)) | mock_processor::Submission::Replayed(Ok(effect)) => {
                let mut r = nats_bridge::ResponseEnvelope::reply_to(env, nats_bridge::ResponseStatus::Success);
                r.transaction_id = Some(effect.effect_id.clone());
                r.connector_response = serde_json::to_value(&effect).unwrap();
                Ok(r)
            }
            other => Ok(nats_bridge::ResponseEnvelope::failure(env, "refused", format!("{other:?}"))),
        }
    });
    let client = env.nats().connect().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for op in [nats_bridge::catalogue::ops::authorize(), nats_bridge::catalogue::ops::capture()] {
        tasks.spawn(minimal_worker::serve_durable(client.clone(), env.bridge_config().clone(), op, old_worker.clone()));
    }
    let (s, p) = c
        .post(
            "/payments",
            "key_m1",
            json!({ "payment_id": "pay_old", "amount": 700, "currency": "EUR", "capture_method": "automatic", "confirm": true }),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!((p["status"].as_str(), p["amount_received"].as_i64()), (Some("succeeded"), Some(700)), "{p}");
    let gateway = &g.running.state.gateway;
    let ops: Vec<_> = gateway.store.operations_of("m1", "pay_old").unwrap().into_iter().map(|o| o.operation).collect();
    assert_eq!(ops, ["payments.authorize", "payments.capture"]);
    assert_eq!(gateway.bridge.stats().published, 2);
    assert_eq!(gateway.bridge.metrics().counter("gateway_capture_fallbacks", "", &[]).get(), 1);
    let ledger: Vec<_> = env.processor().ledger().into_iter().map(|e| (e.operation, e.captured_amount)).collect();
    assert_eq!(ledger, [("payments.authorize".to_string(), None), ("payments.capture".to_string(), None)]);
    let account = env.processor().account("m1", "pay_old").unwrap();
    assert_eq!((account.authorized, account.captured), (700, 700));
    tasks.abort_all();
}

#[tokio::test]
async fn validation_errors_change_nothing() {
    let (env, _g, c, _dir) = setup(1).await;
    c.post(
        "/payments",
        "key_m1",
        json!({ "payment_id": "pay_v", "amount": 500, "currency": "USD", "capture_method": "manual", "confirm": true }),
    )
    .await;
    let before = (env.processor().ledger().len(), c.get("/payments/pay_v", "key_m1").await.1);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/payments/pay_v/capture", json!({ "amount_to_capture": 501 }), 422, "invalid_amount"),
        ("/payments/pay_v/capture", json!({ "amount_to_capture": -1 }), 422, "invalid_amount"),
        ("/refunds", json!({ "payment_id": "pay_v", "amount": 10 }), 409, "invalid_state"),
        ("/payments/nope/capture", json!({}), 404, "not_found"),
        ("/payments", json!({ "amount": 100, "currency": "XYZ" }), 422, "invalid_currency"),
        ("/payments", json!({ "amount": 0, "currency": "USD" }), 422, "invalid_amount"),
        ("/payments", json!({ "amount": 100, "currency": "USD", "ammount": 1 }), 400, "invalid_json"),
        ("/payments", json!({ "payment_id": "pay_v", "amount": 100, "currency": "USD" }), 409, "duplicate"),
    ];
    for (path, body, status, code) in cases {
        let (s, e) = c.post(path, "key_m1", body.clone()).await;
        assert_eq!((s, e["error"]["code"].as_str()), (status, Some(code)), "{path} {body}: {e}");
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, e) = c.send(reqwest::Method::POST, "/payments", "key_m1", None, Some("{not json")).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_json")));
    let (s, _) = c.post("/payments", "wrong_key", json!({ "amount": 1, "currency": "USD" })).await;
    assert_eq!(s, 401);
    // Capture fully, then a void and a refund above the captured amount are refused.
    let (s, _) = c.post("/payments/pay_v/capture", "key_m1", json!({})).await;
    assert_eq!(s, 200);
    let mid = env.processor().ledger().len();
    let (s, e) = c.post("/payments/pay_v/cancel", "key_m1", json!({})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("invalid_state")), "{e}");
    let (s, e) = c.post("/refunds", "key_m1", json!({ "payment_id": "pay_v", "amount": 501 })).await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("invalid_amount")), "{e}");
    assert_eq!(env.processor().ledger().len(), mid, "refused requests reach no processor");
    assert_eq!(before.0 + 1, mid);
}

#[tokio::test]
async fn merchants_are_isolated() {
    let (_env, _g, c, _dir) = setup(1).await;
    c.post(
        "/payments",
        "key_m1",
        json!({ "payment_id": "pay_iso", "amount": 500, "currency": "USD", "capture_method": "manual", "confirm": true }),
    )
    .await;
    let (s, _) = c.get("/payments/pay_iso", "key_m2").await;
    assert_eq!(s, 404);
    let (s, _) = c.post("/payments/pay_iso/capture", "key_m2", json!({})).await;
    assert_eq!(s, 404);
    let (s, p) = c.get("/payments/pay_iso", "key_m1").await;
    assert_eq!((s, p["status"].as_str()), (200, Some("requires_capture")));
    // The same payment id is free for another merchant.
    let (s, _) = c.post("/payments", "key_m2", json!({ "payment_id": "pay_iso", "amount": 1, "currency": "USD" })).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn idempotency_keys_sequential_and_concurrent() {
    let (env, _g, c, _dir) = setup(1).await;
    let body = json!({ "amount": 900, "currency": "USD", "capture_method": "manual", "confirm": true }).to_string();
    let (s1, r1) = c.send(reqwest::Method::POST, "/payments", "key_m1", Some("k-1"), Some(&body)).await;
    let (s2, r2) = c.send(reqwest::Method::POST, "/payments", "key_m1", Some("k-1"), Some(&body)).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(r1, r2, "the first response, replayed");
    assert_eq!(env.processor().ledger().len(), 1);
    let other = json!({ "amount": 901, "currency": "USD", "confirm": true }).to_string();
    let (s, e) = c.send(reqwest::Method::POST, "/payments", "key_m1", Some("k-1"), Some(&other)).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("idempotency_key_reused")));
    // The same key from another merchant is another key.
    let (s, _) = c.send(reqwest::Method::POST, "/payments", "key_m2", Some("k-1"), Some(&body)).await;
    assert_eq!(s, 200);
    assert_eq!(env.processor().ledger().len(), 2);

    // Eight concurrent identical requests: one effect.
    let pid = r1["payment_id"].as_str().unwrap().to_string();
    let path = format!("/payments/{pid}/capture");
    let capture = json!({ "amount_to_capture": 300 }).to_string();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url, path, capture) = (c.http.clone(), c.url.clone(), path.clone(), capture.clone());
        tasks.push(tokio::spawn(async move {
            http.post(format!("{url}{path}"))
                .header("api-key", "key_m1")
                .header("Idempotency-Key", "cap-k")
                .header("content-type", "application/json")
                .body(capture)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 409), "{statuses:?}");
    assert!(statuses.contains(&200));
    let captures = env.processor().ledger().iter().filter(|e| e.operation == "payments.capture").count();
    assert_eq!(captures, 1, "{statuses:?}");
    let (_, p) = c.get(&format!("/payments/{pid}"), "key_m1").await;
    assert_eq!(p["amount_received"], 300);
}

#[tokio::test]
async fn recovery_fails_an_operation_the_processor_never_saw() {
    // Workers that answer queries but never take authorizations: the attempt stays unknown.
    let worker = mock_worker::WorkerConfig { operations: vec!["payments.sync".into()], ..Default::default() };
    let env = common::start(1, worker).await;
    let dir = tempdir::Dir::new("gw-rec");
    let mut cfg = config(&dir);
    cfg.recovery.interval_ms = 3_600_000;
    cfg.recovery.stuck_after_ms = 1;
    let mut bridge_config = env.bridge_config().clone();
    bridge_config.operations.insert(
        "payments.authorize".into(),
        nats_bridge::config::OperationOverride { timeout_ms: Some(1000), ack_timeout_ms: Some(500), ..Default::default() },
    );
    let bridge = nats_bridge::Bridge::with_client(env.nats().connect().await.unwrap(), bridge_config).await.unwrap();
    let running = gateway::start_with(cfg.clone(), bridge).unwrap();
    let g = &running.state.gateway;
    let p = g
        .create(
            &gateway::service::RequestContext::default(),
            "m1",
            gateway::service::NewPayment {
                payment_id: Some("pay_rec".into()),
                amount: 300,
                currency: "USD".into(),
                capture_method: gateway::model::CaptureMethod::Manual,
                router_data: json!({}),
            },
            true,
        )
        .await
        .unwrap();
    assert_eq!(p.status, gateway::model::AttemptStatus::Pending, "timeout is pending, not failed");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let n = gateway::recovery::run_once(g, &cfg.recovery, &running.recovery).await;
    assert_eq!(n, 1);
    let p = g.store.payment("m1", "pay_rec").unwrap();
    assert_eq!(p.status, gateway::model::AttemptStatus::Failure);
    assert_eq!(p.error_code.as_deref(), Some("CONNECTOR_TIMEOUT"));
    assert!(env.processor().ledger().is_empty());
}

fn short_authorize(env: &TestEnv) -> nats_bridge::BridgeConfig {
    let mut b = env.bridge_config().clone();
    b.operations.insert(
        "payments.authorize".into(),
        nats_bridge::config::OperationOverride { timeout_ms: Some(1000), ack_timeout_ms: Some(500), ..Default::default() },
    );
    b
}

#[tokio::test]
async fn a_late_reply_lands_on_the_attempt() {
    let mut env = common::single(0).await;
    let dir = tempdir::Dir::new("gw-late");
    let g = env.start_gateway_with("127.0.0.1:0", config(&dir), short_authorize(&env)).await.unwrap();
    let c = Client::new(&g);
    let (s, p) = c
        .post(
            "/payments",
            "key_m1",
            json!({ "payment_id": "pay_late", "amount": 400, "currency": "USD", "capture_method": "manual", "confirm": true }),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["attempt_status"], "pending", "no worker yet: outcome unknown");
    assert_eq!(p["status"], "processing");
    env.start_worker().await.unwrap();
    let store = g.running.state.gateway.store.clone();
    common::eventually("the late reply applied", Duration::from_secs(15), || {
        let p = store.payment("m1", "pay_late").unwrap();
        async move { (p.status == gateway::model::AttemptStatus::Authorized).then_some(()) }
    })
    .await;
    let (_, p) = c.get("/payments/pay_late", "key_m1").await;
    assert_eq!(p["status"], "requires_capture");
    assert_eq!(env.processor().ledger().len(), 1);
}

#[tokio::test]
async fn a_killed_gateway_restarted_loses_nothing() {
    let worker = mock_worker::WorkerConfig {
        profile: mock_worker::Profile { latency: mock_worker::Latency::Fixed { ms: 300 }, ..Default::default() },
        ..Default::default()
    };
    let env = common::start(2, worker).await;
    let dir = tempdir::Dir::new("gw-kill");
    let first = env.start_gateway(config(&dir)).await.unwrap();
    let c = Client::new(&first);
    let mut inflight = Vec::new();
    for i in 0..12 {
        let (http, url) = (c.http.clone(), c.url.clone());
        inflight.push(tokio::spawn(async move {
            let body = json!({ "payment_id": format!("pay_k{i}"), "amount": 100 + i, "currency": "USD", "confirm": true });
            let _ = http.post(format!("{url}/payments")).header("api-key", "key_m1").json(&body).send().await;
        }));
    }
    // Kill while authorizations (automatic capture: charges) are in flight.
    let store = first.running.state.gateway.store.clone();
    common::eventually("attempts in flight", Duration::from_secs(10), || {
        let n = store.transitional_payments().map(|v| v.len()).unwrap_or(0);
        async move { (n >= 3).then_some(()) }
    })
    .await;
    first.kill();
    for t in inflight {
        let _ = t.await;
    }
    drop(store);
    let mut cfg = config(&dir);
    cfg.recovery.interval_ms = 200;
    cfg.recovery.stuck_after_ms = 100;
    let second = env.start_gateway(cfg).await.unwrap();
    let store = second.running.state.gateway.store.clone();
    common::eventually("every attempt settled", Duration::from_secs(30), || {
        let open = store.transitional_payments().map(|v| v.len()).unwrap_or(usize::MAX);
        async move { (open == 0).then_some(()) }
    })
    .await;
    // Every payment agrees with the processor.
    for i in 0..12 {
        let id = format!("pay_k{i}");
        let Ok(p) = store.payment("m1", &id) else { continue };
        let account = env.processor().account("m1", &id);
        match p.status {
            gateway::model::AttemptStatus::Charged => {
                let a = account.expect("charged at the processor");
                assert_eq!((a.authorized, a.captured), (p.amount, p.amount), "{id}");
            }
            // Automatic capture is one operation: a payment is never left authorized only.
            gateway::model::AttemptStatus::Started => assert!(account.is_none(), "{id}: never sent"),
            other => panic!("{id}: unexpected {other:?} (processor: {account:?})"),
        }
    }
    let keys: std::collections::HashSet<_> = env.processor().ledger().iter().map(|e| e.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), env.processor().ledger().len(), "one effect per operation instance");
}

#[tokio::test]
async fn recovery_confirms_an_operation_the_processor_did() {
    // The worker charges, then dies before replying (and JetStream would redeliver only after
    // the 30s ack wait): the attempt is unknown, but the processor has the effect.
    let env = common::single(1).await;
    env.workers()[0].faults().stall_after_processor.store(100, std::sync::atomic::Ordering::SeqCst);
    let dir = tempdir::Dir::new("gw-rec2");
    let mut cfg = config(&dir);
    cfg.recovery.interval_ms = 3_600_000;
    cfg.recovery.stuck_after_ms = 1;
    let g = env.start_gateway_with("127.0.0.1:0", cfg.clone(), short_authorize(&env)).await.unwrap();
    let c = Client::new(&g);
    let (_, p) = c
        .post(
            "/payments",
            "key_m1",
            json!({ "payment_id": "pay_rec2", "amount": 650, "currency": "USD", "capture_method": "manual", "confirm": true }),
        )
        .await;
    assert_eq!(p["attempt_status"], "pending", "{p}");
    assert_eq!(env.processor().ledger().len(), 1, "the processor did it");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gw = &g.running.state.gateway;
    assert_eq!(gateway::recovery::run_once(gw, &cfg.recovery, &g.running.recovery).await, 1);
    let (_, p) = c.get("/payments/pay_rec2", "key_m1").await;
    assert_eq!(p["attempt_status"], "authorized", "{p}");
    assert_eq!(g.running.recovery.recovered.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(env.processor().ledger().len(), 1, "recovery did not charge again");
}

#[tokio::test]
async fn recovery_finds_an_automatic_authorization_charged() {
    // As above with automatic capture: the processor authorized and captured in one effect, the
    // reply never came. Recovery learns it from the payment sync, and the payment is charged,
    // not merely authorized, with no capture sent.
    let env = common::single(1).await;
    env.workers()[0].faults().stall_after_processor.store(100, std::sync::atomic::Ordering::SeqCst);
    let dir = tempdir::Dir::new("gw-rec-auto");
    let mut cfg = config(&dir);
    cfg.recovery.interval_ms = 3_600_000;
    cfg.recovery.stuck_after_ms = 1;
    let g = env.start_gateway_with("127.0.0.1:0", cfg.clone(), short_authorize(&env)).await.unwrap();
    let c = Client::new(&g);
    let (_, p) = c
        .post(
            "/payments",
            "key_m1",
            json!({ "payment_id": "pay_rec_auto", "amount": 650, "currency": "USD", "capture_method": "automatic", "confirm": true }),
        )
        .await;
    assert_eq!((p["status"].as_str(), p["attempt_status"].as_str()), (Some("processing"), Some("pending")), "{p}");
    let account = env.processor().account("m1", "pay_rec_auto").expect("the processor did it");
    assert_eq!((account.authorized, account.captured), (650, 650));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gw = &g.running.state.gateway;
    assert_eq!(gateway::recovery::run_once(gw, &cfg.recovery, &g.running.recovery).await, 1);
    let (_, p) = c.get("/payments/pay_rec_auto", "key_m1").await;
    assert_eq!(
        (p["status"].as_str(), p["attempt_status"].as_str(), p["amount_received"].as_i64()),
        (Some("succeeded"), Some("charged"), Some(650)),
        "{p}"
    );
    let ops: Vec<_> = gw.store.operations_of("m1", "pay_rec_auto").unwrap().into_iter().map(|o| o.operation).collect();
    assert_eq!(ops, ["payments.authorize"], "no capture sent");
    assert_eq!(env.processor().ledger().len(), 1, "recovery did not charge again");
}

#[tokio::test]
async fn the_correlation_id_follows_the_request_to_the_workers() {
    let (_env, g, c, _dir) = setup(1).await;
    let resp = c
        .http
        .post(format!("{}/payments", c.url))
        .header("api-key", "key_m1")
        .header("x-correlation-id", "corr-42")
        .json(&json!({ "payment_id": "pay_corr", "amount": 10, "currency": "USD", "capture_method": "manual", "confirm": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-correlation-id"], "corr-42");
    let ops = g.running.state.gateway.store.operations_of("m1", "pay_corr").unwrap();
    assert_eq!(ops.len(), 1);
    let sent: nats_bridge::RequestEnvelope = serde_json::from_str(&ops[0].request).unwrap();
    assert_eq!(sent.correlation_id, "corr-42");
    // Without one, the gateway makes one up and says which.
    let (s, _) = c.get("/payments/pay_corr", "key_m1").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn every_catalogue_operation_is_reachable_over_http() {
    let (env, _g, c, _dir) = setup(1).await;
    // The dedicated routes.
    let (s, _) = c
        .post(
            "/payments",
            "key_m1",
            json!({ "payment_id": "pay_all", "amount": 1000, "currency": "USD", "capture_method": "manual", "confirm": true }),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(c.post("/payments/pay_all/incremental_authorization", "key_m1", json!({ "amount": 100 })).await.0, 200);
    assert_eq!(c.post("/payments/pay_all/capture", "key_m1", json!({ "amount_to_capture": 500 })).await.0, 200);
    assert_eq!(c.post("/refunds", "key_m1", json!({ "payment_id": "pay_all", "refund_id": "ref_all", "amount": 100 })).await.0, 200);
    let (s, _) = c
        .post(
            "/payments",
            "key_m1",
            json!({ "payment_id": "pay_void", "amount": 10, "currency": "USD", "capture_method": "manual", "confirm": true }),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(c.post("/payments/pay_void/cancel", "key_m1", json!({})).await.0, 200);
    // Everything else through /flows/{operation}; the dedicated ones are refused there.
    for op in nats_bridge::catalogue::all() {
        let dedicated = gateway::service::DEDICATED.iter().any(|(n, _)| *n == op.name);
        let data = match op.name {
            "payouts.create" => json!({ "amount": 300, "currency": "USD" }),
            "refunds.sync" => json!({ "refund_id": "ref_all" }),
            "payouts.sync" => json!({ "payout_id": "po_all" }),
            _ => json!({ "amount": 100, "currency": "USD" }),
        };
        let (payment, object) = match op.name {
            // A fulfilled payout cannot be cancelled: cancel a second one.
            "payouts.cancel" => {
                let create = json!({ "payment_id": "payout_2", "object_id": "po_2", "data": { "amount": 50, "currency": "USD" } });
                assert_eq!(c.post("/flows/payouts.create", "key_m1", create).await.0, 200);
                ("payout_2", "po_2")
            }
            _ if op.family == nats_bridge::Family::Payouts => ("payout_all", "po_all"),
            _ => ("pay_all", "obj_all"),
        };
        let (s, body) =
            c.post(&format!("/flows/{}", op.name), "key_m1", json!({ "payment_id": payment, "object_id": object, "data": data })).await;
        if dedicated {
            assert_eq!((s, body["error"]["code"].as_str()), (400, Some("use_dedicated_route")), "{}", op.name);
        } else {
            assert_eq!(s, 200, "{}: {body}", op.name);
            assert_eq!(body["status"], "success", "{}: {body}", op.name);
        }
    }
    let (s, e) = c.post("/flows/payments.nope", "key_m1", json!({ "payment_id": "p", "object_id": "o" })).await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("unknown_operation")));
    assert!(env.processor().ledger().len() >= 20);
}
