//! The HTTP API, Hyperswitch-like: payments, refunds, and the remaining flows.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::model::CaptureMethod;
use crate::service::{ApiError, Gateway, NewPayment, RequestContext};
use crate::store::{KeyState, Payment, Refund};

/// Currencies the gateway accepts.
pub const CURRENCIES: [&str; 10] = ["USD", "EUR", "GBP", "INR", "JPY", "AUD", "CAD", "CHF", "SGD", "BRL"];

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The flows.
    pub gateway: Arc<Gateway>,
    /// API key -> merchant id.
    pub api_keys: Arc<HashMap<String, String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.status >= 500 { "api_error" } else { "invalid_request_error" };
        let body = json!({ "error": { "type": kind, "code": self.code, "message": self.message } });
        (StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(body)).into_response()
    }
}

fn payment_json(p: &Payment) -> Value {
    json!({
        "payment_id": p.payment_id,
        "merchant_id": p.merchant_id,
        "status": p.status.intent_status(),
        "attempt_id": p.attempt_id,
        "attempt_status": p.status,
        "amount": p.amount,
        "currency": p.currency,
        "capture_method": p.capture_method,
        "amount_capturable": if p.status.is_terminal() { 0 } else { p.amount_authorized - p.amount_captured },
        "amount_received": p.amount_captured,
        "amount_refunded": p.amount_refunded,
        "connector_transaction_id": p.connector_transaction_id,
        "error_code": p.error_code,
        "error_message": p.error_message,
        "created": p.created_ms,
    })
}

fn refund_json(r: &Refund) -> Value {
    json!({
        "refund_id": r.refund_id,
        "payment_id": r.payment_id,
        "merchant_id": r.merchant_id,
        "amount": r.amount,
        "currency": r.currency,
        "status": r.status.as_str(),
        "reason": r.reason,
        "connector_refund_id": r.connector_refund_id,
        "error_code": r.error_code,
        "error_message": r.error_message,
        "created_at": r.created_ms,
    })
}

fn merchant(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let key =
        headers.get("api-key").and_then(|v| v.to_str().ok()).ok_or_else(|| ApiError::new(401, "unauthorized", "missing api-key header"))?;
    state.api_keys.get(key).cloned().ok_or_else(|| ApiError::new(401, "unauthorized", "invalid api-key"))
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, "invalid_json", format!("invalid request body: {e}")))
}

fn fnv(parts: &[&[u8]]) -> String {
    let mut h = 0xcbf29ce484222325u64;
    for p in parts {
        for b in *p {
            h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Runs a mutating handler under the request's `Idempotency-Key`, if any: the same key with the
/// same request replays the first response; with another request it is a 409.
async fn idempotent<F, Fut>(
    state: &AppState,
    merchant_id: &str,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    body: &Bytes,
    run: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(u16, Value), ApiError>>,
{
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return respond(run().await);
    };
    if key.is_empty() || key.len() > 255 {
        return ApiError::new(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters").into_response();
    }
    let fingerprint = fnv(&[method.as_str().as_bytes(), uri.path().as_bytes(), body]);
    let store = &state.gateway.store;
    match store.claim_key(merchant_id, &key, &fingerprint) {
        Err(e) => ApiError::from(e).into_response(),
        Ok(KeyState::Mismatch) => {
            ApiError::new(409, "idempotency_key_reused", "this Idempotency-Key was used with a different request").into_response()
        }
        Ok(KeyState::InProgress) => {
            ApiError::new(409, "idempotency_key_in_use", "a request with this Idempotency-Key is in progress").into_response()
        }
        Ok(KeyState::Done { status, body }) => {
            let mut r = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
            r.headers_mut().insert("content-type", "application/json".parse().expect("header"));
            r.headers_mut().insert("idempotent-replayed", "true".parse().expect("header"));
            r
        }
        Ok(KeyState::New) => {
            let result = run().await;
            let (status, value) = match &result {
                Ok((s, v)) => (*s, v.clone()),
                Err(e) => (e.status, json!({ "error": { "type": "invalid_request_error", "code": e.code, "message": e.message } })),
            };
            let stored = if status >= 500 {
                store.release_key(merchant_id, &key)
            } else {
                store.finish_key(merchant_id, &key, status, &value.to_string())
            };
            if let Err(e) = stored {
                tracing::warn!(error = %e, "cannot store idempotent response");
            }
            respond(result)
        }
    }
}

fn respond(result: Result<(u16, Value), ApiError>) -> Response {
    match result {
        Ok((status, body)) => (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePayment {
    payment_id: Option<String>,
    amount: i64,
    currency: String,
    #[serde(default)]
    capture_method: Option<CaptureMethod>,
    #[serde(default)]
    confirm: bool,
    #[serde(default)]
    payment_method: Option<String>,
    #[serde(default)]
    payment_method_data: Option<Value>,
    #[serde(default)]
    customer_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

fn valid_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(400, "invalid_id", format!("{what} must be 1-64 characters of letters, digits, '_' or '-'")))
    }
}

fn valid_amount(field: &str, amount: i64) -> Result<(), ApiError> {
    if amount <= 0 {
        return Err(ApiError::new(422, "invalid_amount", format!("{field} must be positive, got {amount}")));
    }
    Ok(())
}

async fn create_payment(
    State(s): State<AppState>,
    Extension(cx): Extension<RequestContext>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let merchant_id = match merchant(&s, &headers) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let run = || async {
        let req: CreatePayment = parse(&body)?;
        if let Some(id) = &req.payment_id {
            valid_id("payment_id", id)?;
        }
        valid_amount("amount", req.amount)?;
        if !CURRENCIES.contains(&req.currency.as_str()) {
            return Err(ApiError::new(422, "invalid_currency", format!("currency {:?} is not supported", req.currency)));
        }
        let router_data = json!({
            "payment_method": req.payment_method,
            "payment_method_data": req.payment_method_data,
            "customer_id": req.customer_id,
            "description": req.description,
            "metadata": req.metadata,
        });
        let p = s
            .gateway
            .create(
                &cx,
                &merchant_id,
                NewPayment {
                    payment_id: req.payment_id,
                    amount: req.amount,
                    currency: req.currency,
                    capture_method: req.capture_method.unwrap_or_default(),
                    router_data,
                },
                req.confirm,
            )
            .await?;
        Ok((200, payment_json(&p)))
    };
    idempotent(&s, &merchant_id, &headers, &method, &uri, &body, run).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CaptureBody {
    amount_to_capture: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[allow(dead_code)]
    cancellation_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrementalBody {
    amount: i64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn payment_action(
    State(s): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Extension(cx): Extension<RequestContext>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let merchant_id = match merchant(&s, &headers) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let run = || async {
        let g = &s.gateway;
        let p = match action.as_str() {
            "confirm" => {
                parse::<Empty>(&body)?;
                g.confirm(&cx, &merchant_id, &id).await?
            }
            "capture" => {
                let b: CaptureBody = parse(&body)?;
                if let Some(a) = b.amount_to_capture {
                    valid_amount("amount_to_capture", a)?;
                }
                g.capture(&cx, &merchant_id, &id, b.amount_to_capture).await?
            }
            "cancel" => {
                parse::<CancelBody>(&body)?;
                g.cancel(&cx, &merchant_id, &id).await?
            }
            "complete_authorize" => {
                parse::<Empty>(&body)?;
                g.complete_authorize(&cx, &merchant_id, &id).await?
            }
            "incremental_authorization" => {
                let b: IncrementalBody = parse(&body)?;
                valid_amount("amount", b.amount)?;
                g.incremental_authorization(&cx, &merchant_id, &id, b.amount).await?
            }
            other => return Err(ApiError::new(404, "not_found", format!("no payment action {other}"))),
        };
        Ok((200, payment_json(&p)))
    };
    idempotent(&s, &merchant_id, &headers, &method, &uri, &body, run).await
}

#[derive(Deserialize)]
struct RetrieveQuery {
    #[serde(default)]
    force_sync: bool,
}

async fn retrieve_payment(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RetrieveQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let merchant_id = merchant(&s, &headers)?;
        let p = s.gateway.retrieve(&merchant_id, &id, q.force_sync).await?;
        Ok((200, payment_json(&p)))
    }
    .await;
    respond(result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRefund {
    payment_id: String,
    refund_id: Option<String>,
    amount: Option<i64>,
    reason: Option<String>,
}

async fn create_refund(
    State(s): State<AppState>,
    Extension(cx): Extension<RequestContext>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let merchant_id = match merchant(&s, &headers) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let run = || async {
        let req: CreateRefund = parse(&body)?;
        if let Some(id) = &req.refund_id {
            valid_id("refund_id", id)?;
        }
        if let Some(a) = req.amount {
            valid_amount("amount", a)?;
        }
        let r = s.gateway.refund(&cx, &merchant_id, &req.payment_id, req.refund_id, req.amount, req.reason).await?;
        Ok((200, refund_json(&r)))
    };
    idempotent(&s, &merchant_id, &headers, &method, &uri, &body, run).await
}

async fn retrieve_refund(State(s): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let result = async {
        let merchant_id = merchant(&s, &headers)?;
        let r = s.gateway.store.refund(&merchant_id, &id)?;
        Ok((200, refund_json(&r)))
    }
    .await;
    respond(result)
}

#[derive(Deserialize)]
struct FlowBody {
    payment_id: String,
    object_id: String,
    #[serde(default)]
    data: Value,
}

/// Any other catalogue operation: `POST /flows/{operation}` with `{payment_id, object_id, data}`.
async fn run_flow(
    State(s): State<AppState>,
    Path(operation): Path<String>,
    Extension(cx): Extension<RequestContext>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let merchant_id = match merchant(&s, &headers) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let run = || async {
        let req: FlowBody = parse(&body)?;
        valid_id("payment_id", &req.payment_id)?;
        valid_id("object_id", &req.object_id)?;
        let reply = s.gateway.flow(&cx, &merchant_id, &operation, &req.payment_id, &req.object_id, req.data).await?;
        Ok((200, serde_json::to_value(reply).unwrap_or_default()))
    };
    idempotent(&s, &merchant_id, &headers, &method, &uri, &body, run).await
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn metrics(State(s): State<AppState>) -> Response {
    let body = s.gateway.bridge.metrics().render();
    ([("content-type", nats_bridge::metrics::CONTENT_TYPE)], body).into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(404, "not_found", format!("no route for {}", uri.path()))
}

/// Gives every request a correlation id (the client's `x-correlation-id` or a new one): it
/// is on every log line of the request, on every operation it sends to the workers (the
/// handlers pass it to the flows in a [`RequestContext`]), and echoed in the response.
async fn correlate(mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = request
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), correlation_id = %id);
    request.extensions_mut().insert(RequestContext { correlation_id: Some(id.clone()) });
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(v) = id.parse() {
        response.headers_mut().insert("x-correlation-id", v);
    }
    response
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/payments", post(create_payment))
        .route("/payments/{id}", get(retrieve_payment))
        .route("/payments/{id}/{action}", post(payment_action))
        .route("/refunds", post(create_refund))
        .route("/refunds/{id}", get(retrieve_refund))
        .route("/flows/{operation}", post(run_flow))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(correlate))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves.
///
/// Every connection gets `TCP_NODELAY` (axum leaves Nagle's algorithm on): an answer written
/// while the previous one waits for its delayed acknowledgement would otherwise wait up to
/// 40 ms.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
