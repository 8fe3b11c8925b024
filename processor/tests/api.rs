//! Drives a served processor over real HTTP through `ProcessorClient`.

use std::time::Duration;

use mock_processor::ledger::ops;
use mock_processor::{serve, AccountStatus, CaptureMethod, ClientError, EffectRequest, Processor, ProcessorClient, ProcessorConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const M: &str = "merchant-1";

/// A processor served on a free port; stops when dropped.
struct Server {
    client: ProcessorClient,
    processor: Processor,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(config: ProcessorConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let processor = Processor::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, processor.clone(), async {
            let _ = stopped.await;
        }));
        let client = ProcessorClient::new(&format!("http://{addr}")).unwrap();
        Self { client, processor, stop: Some(stop), task: Some(task) }
    }

    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("server stops").unwrap().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn req(operation: &str, payment_id: &str) -> EffectRequest {
    EffectRequest::new(operation, M, payment_id)
}

fn authorize(payment_id: &str, amount: i64) -> EffectRequest {
    req(ops::AUTHORIZE, payment_id).amount(amount).currency("EUR")
}

/// Asserts a rejection with `status` and `code`.
#[track_caller]
fn assert_rejected<T: std::fmt::Debug>(result: Result<T, ClientError>, status: u16, code: &str) {
    match result {
        Err(ClientError::Rejected { status: got_status, code: got_code, message }) => {
            assert_eq!((got_status, got_code.as_str()), (status, code), "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn payment_rules() {
    let server = Server::start(ProcessorConfig::default()).await;
    let c = &server.client;
    c.health().await.unwrap();

    assert_rejected(c.create_effect(&authorize("p1", 0), None).await, 422, "invalid_amount");
    assert_rejected(c.create_effect(&req(ops::AUTHORIZE, "p1").amount(10), None).await, 422, "currency_required");
    let auth = c.create_effect(&authorize("p1", 100), None).await.unwrap();
    assert_eq!((auth.seq, auth.amount, auth.idempotency_key), (1, Some(100), None));
    assert_rejected(c.create_effect(&authorize("p1", 100), None).await, 409, "already_authorized");

    let incr = req(ops::INCREMENTAL_AUTH, "p1").amount(20);
    c.create_effect(&incr, None).await.unwrap();
    assert_rejected(c.create_effect(&req(ops::INCREMENTAL_AUTH, "p9").amount(20), None).await, 422, "not_authorized");

    let capture = |amount| req(ops::CAPTURE, "p1").amount(amount);
    assert_rejected(c.create_effect(&capture(121), None).await, 422, "amount_exceeds_capturable");
    assert_rejected(c.create_effect(&capture(10).currency("USD"), None).await, 422, "currency_mismatch");
    c.create_effect(&capture(70).reference("cap-1"), None).await.unwrap();
    assert_rejected(c.create_effect(&req(ops::VOID, "p1"), None).await, 422, "already_captured");

    let refund = |amount, reference: &str| req(ops::REFUND, "p1").amount(amount).reference(reference);
    assert_rejected(c.create_effect(&req(ops::REFUND, "p1").amount(5), None).await, 422, "reference_required");
    assert_rejected(c.create_effect(&refund(71, "r1"), None).await, 422, "amount_exceeds_refundable");
    c.create_effect(&refund(30, "r1"), None).await.unwrap();

    let account = c.account(M, "p1").await.unwrap().unwrap();
    assert_eq!((account.authorized, account.captured, account.refunded, account.voided), (120, 70, 30, false));
    assert_eq!(account.currency.as_deref(), Some("EUR"));
    assert_eq!(account.status, AccountStatus::PartiallyRefunded);
    assert_eq!(c.account(M, "nope").await.unwrap(), None);

    c.create_effect(&authorize("p2", 50), None).await.unwrap();
    c.create_effect(&req(ops::VOID, "p2"), None).await.unwrap();
    assert_rejected(c.create_effect(&req(ops::VOID, "p2"), None).await, 422, "already_voided");
    assert_rejected(c.create_effect(&req(ops::CAPTURE, "p2").amount(1), None).await, 422, "already_voided");
    assert_eq!(c.account(M, "p2").await.unwrap().unwrap().status, AccountStatus::Voided);

    let other = req("mandates.create", "p3").reference("md-1").details(serde_json::json!({"k": 1}));
    let mandate = c.create_effect(&other, None).await.unwrap();
    assert_eq!(mandate.details, serde_json::json!({"k": 1}));

    // Refused requests recorded nothing; the ledger is in seq order.
    let ledger = c.ledger(None, None).await.unwrap();
    let ops: Vec<&str> = ledger.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(ops, [ops::AUTHORIZE, ops::INCREMENTAL_AUTH, ops::CAPTURE, ops::REFUND, ops::AUTHORIZE, ops::VOID, "mandates.create"]);
    assert!(ledger.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    assert_eq!(ledger, server.processor.ledger());
    assert_eq!(c.ledger(Some(M), Some("p2")).await.unwrap().len(), 2);
    assert_eq!(c.ledger(Some("other"), None).await.unwrap().len(), 0);

    assert_eq!(c.by_reference(M, "r1").await.unwrap().len(), 1);
    assert!(c.by_reference(M, "r-missing").await.unwrap().is_empty());

    c.reset().await.unwrap();
    assert!(c.ledger(None, None).await.unwrap().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn payout_rules() {
    let server = Server::start(ProcessorConfig::default()).await;
    let c = &server.client;
    let payout = |op: &str, reference: &str| req(op, "po").reference(reference);

    assert_rejected(c.create_effect(&payout(ops::PAYOUT_CREATE, "po1"), None).await, 422, "invalid_amount");
    assert_rejected(c.create_effect(&payout(ops::PAYOUT_FULFILL, "po1"), None).await, 422, "payout_not_found");
    c.create_effect(&payout(ops::PAYOUT_CREATE, "po1").amount(500), None).await.unwrap();
    c.create_effect(&payout(ops::PAYOUT_FULFILL, "po1"), None).await.unwrap();
    assert_rejected(c.create_effect(&payout(ops::PAYOUT_CANCEL, "po1"), None).await, 422, "payout_fulfilled");

    c.create_effect(&payout(ops::PAYOUT_CREATE, "po2").amount(500), None).await.unwrap();
    c.create_effect(&payout(ops::PAYOUT_CANCEL, "po2"), None).await.unwrap();
    assert_rejected(c.create_effect(&payout(ops::PAYOUT_FULFILL, "po2"), None).await, 422, "payout_cancelled");

    let po1: Vec<String> = c.by_reference(M, "po1").await.unwrap().into_iter().map(|e| e.operation).collect();
    assert_eq!(po1, [ops::PAYOUT_CREATE, ops::PAYOUT_FULFILL]);
    server.shutdown().await;
}

#[tokio::test]
async fn automatic_capture_is_one_effect_over_http() {
    let server = Server::start(ProcessorConfig::default()).await;
    let c = &server.client;
    let charge = authorize("p1", 250).capture_method(CaptureMethod::Automatic);
    let effect = c.create_effect(&charge, Some("k-auto")).await.unwrap();
    assert_eq!((effect.amount, effect.captured_amount), (Some(250), Some(250)));
    // The same request again: replayed, nothing more recorded or captured.
    let again = c.create_effect(&charge, Some("k-auto")).await.unwrap();
    assert_eq!(again, effect);
    assert_eq!(server.processor.ledger(), vec![effect]);
    let account = c.account(M, "p1").await.unwrap().expect("account");
    assert_eq!((account.authorized, account.captured, account.status), (250, 250, AccountStatus::Captured));
    // The wire names, and nothing sent for a request without a capture method.
    let json = serde_json::to_value(&charge).unwrap();
    assert_eq!(json["capture_method"], "automatic");
    assert!(serde_json::to_value(authorize("p2", 1)).unwrap().get("capture_method").is_none());
    let manual = c.create_effect(&authorize("p2", 90).capture_method(CaptureMethod::Manual), None).await.unwrap();
    assert_eq!(manual.captured_amount, None);
    let account = c.account(M, "p2").await.unwrap().expect("account");
    assert_eq!((account.captured, account.status), (0, AccountStatus::Authorized));
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let server = Server::start(ProcessorConfig::default()).await;
    let url = |path: &str| format!("{}{path}", server.client.base_url().as_str().trim_end_matches('/'));
    let http = reqwest::Client::new();
    let post = |body: &'static str| http.post(url("/v1/effects")).header("content-type", "application/json").body(body).send();
    for body in [
        "not json",
        r#"{"operation":"payments.authorize"}"#,
        r#"{"operation":"x","merchant_id":"m","payment_id":"p","ammount":5}"#,
        r#"{"operation":"","merchant_id":"m","payment_id":"p"}"#,
        r#"{"operation":"x","merchant_id":"m","payment_id":"p","amount":"5"}"#,
        r#"{"operation":"payments.authorize","merchant_id":"m","payment_id":"p","amount":5,"currency":"EUR","capture_method":"later"}"#,
    ] {
        let response = post(body).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: mock_processor::ApiError = response.json().await.unwrap();
        assert_eq!(error.code, "invalid_request", "{body}");
    }

    let response = http.get(url("/v1/effects")).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<mock_processor::ApiError>().await.unwrap().code, "invalid_request");
    let response = http.get(url("/v1/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<mock_processor::ApiError>().await.unwrap().code, "not_found");
    let response = http.delete(url("/v1/ledger")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.json::<mock_processor::ApiError>().await.unwrap().code, "method_not_allowed");

    assert_rejected(server.client.create_effect(&authorize("p1", 1), Some("")).await, 400, "invalid_idempotency_key");
    assert!(server.processor.ledger().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn same_key_same_body_replays() {
    let server = Server::start(ProcessorConfig::default()).await;
    let c = &server.client;
    let first = c.submit_effect(&authorize("p1", 100), Some("key-1")).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.effect.idempotency_key.as_deref(), Some("key-1"));
    let second = c.submit_effect(&authorize("p1", 100), Some("key-1")).await.unwrap();
    assert!(second.replayed);
    assert_eq!(second.effect, first.effect);
    assert_eq!(c.effects_by_key("key-1").await.unwrap(), vec![first.effect]);
    assert!(c.effects_by_key("key-unknown").await.unwrap().is_empty());

    // A refusal is stored under its key and replayed, even once the request
    // would pass.
    let capture = req(ops::CAPTURE, "p9").amount(10);
    assert_rejected(c.create_effect(&capture, Some("key-2")).await, 422, "not_authorized");
    c.create_effect(&authorize("p9", 100), None).await.unwrap();
    assert_rejected(c.create_effect(&capture, Some("key-2")).await, 422, "not_authorized");
    assert!(c.effects_by_key("key-2").await.unwrap().is_empty());

    // The same body with other JSON formatting is the same request.
    let http = reqwest::Client::new();
    let url = format!("{}v1/effects", c.base_url());
    let send = |body: &'static str| {
        http.post(&url).header("Idempotency-Key", "key-3").header("content-type", "application/json").body(body).send()
    };
    let a = send(r#"{"operation":"x.y","merchant_id":"m","payment_id":"p"}"#).await.unwrap();
    assert_eq!(a.status(), 201);
    assert!(a.headers().get("idempotent-replayed").is_none());
    let a = a.text().await.unwrap();
    let b = send(r#"{ "payment_id": "p", "merchant_id": "m", "operation": "x.y", "details": null }"#).await.unwrap();
    assert_eq!(b.status(), 201);
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    assert_eq!(b.text().await.unwrap(), a);
    server.shutdown().await;
}

#[tokio::test]
async fn same_key_other_body_is_409() {
    let server = Server::start(ProcessorConfig::default()).await;
    let c = &server.client;
    c.create_effect(&authorize("p1", 100), Some("key-1")).await.unwrap();
    assert_rejected(c.create_effect(&authorize("p1", 101), Some("key-1")).await, 409, "idempotency_key_reused");
    assert_rejected(c.create_effect(&authorize("p2", 100), Some("key-1")).await, 409, "idempotency_key_reused");
    assert_eq!(server.processor.ledger().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_make_one_effect() {
    let server = Server::start(ProcessorConfig { latency_ms: 20, ..Default::default() }).await;
    let c = &server.client;
    c.create_effect(&authorize("p1", 1000), None).await.unwrap();
    let capture = req(ops::CAPTURE, "p1").amount(10).reference("cap-1");

    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = c.clone();
            let capture = capture.clone();
            tokio::spawn(async move { client.submit_effect(&capture, Some("key-c")).await })
        })
        .collect();
    let mut effects = Vec::new();
    let mut fresh = 0;
    for task in tasks {
        let created = task.await.unwrap().unwrap();
        fresh += usize::from(!created.replayed);
        effects.push(created.effect);
    }
    assert_eq!(fresh, 1, "exactly one request was processed");
    assert!(effects.iter().all(|e| *e == effects[0]));
    assert_eq!(c.effects_by_key("key-c").await.unwrap().len(), 1);
    assert_eq!(c.account(M, "p1").await.unwrap().unwrap().captured, 10);
    server.shutdown().await;
}

#[tokio::test]
async fn idempotency_off_makes_two_effects() {
    let server = Server::start(ProcessorConfig { idempotency: false, ..Default::default() }).await;
    let c = &server.client;
    c.create_effect(&authorize("p1", 100), None).await.unwrap();
    let capture = req(ops::CAPTURE, "p1").amount(10);
    let first = c.submit_effect(&capture, Some("key-1")).await.unwrap();
    let second = c.submit_effect(&capture, Some("key-1")).await.unwrap();
    assert!(!first.replayed && !second.replayed);
    assert_ne!(first.effect.effect_id, second.effect.effect_id);
    let by_key = c.effects_by_key("key-1").await.unwrap();
    assert_eq!(by_key.len(), 2);
    assert!(by_key.iter().all(|e| e.idempotency_key.as_deref() == Some("key-1")));
    assert_eq!(c.account(M, "p1").await.unwrap().unwrap().captured, 20);

    // Switched on at run time, the key is honoured again.
    let config = c.set_config(&ProcessorConfig::default()).await.unwrap();
    assert!(config.idempotency);
    assert_eq!(c.config().await.unwrap(), config);
    let third = c.submit_effect(&capture, Some("key-2")).await.unwrap();
    let fourth = c.submit_effect(&capture, Some("key-2")).await.unwrap();
    assert!(fourth.replayed);
    assert_eq!(third.effect, fourth.effect);
    server.shutdown().await;
}

#[tokio::test]
async fn latency_makes_a_short_timeout_fire_after_the_effect() {
    let server = Server::start(ProcessorConfig { latency_ms: 500, ..Default::default() }).await;
    let impatient = server.client.clone().with_timeout(Duration::from_millis(100));
    let result = impatient.create_effect(&authorize("p1", 100), Some("key-t")).await;
    assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
    // The effect was recorded all the same; a retry finds it.
    let found = server.client.effects_by_key("key-t").await.unwrap();
    assert_eq!(found.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn unreachable_processor_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = ProcessorClient::new(&format!("http://{addr}")).unwrap();
    let err = client.ledger(None, None).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(ProcessorClient::new("not a url").is_err());
}
