//! HTTP API: [`router`] maps the routes onto a [`Processor`], [`serve`] runs it, [`spawn`] runs
//! it on a free port of 127.0.0.1 in the background (for tests and embedding).
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/effects` | 201 + [`Effect`]; 400/409/422 + [`ApiError`] |
//! | `GET /v1/effects?idempotency_key=K` | 200 + effects made under `K` (possibly none) |
//! | `GET /v1/ledger[?merchant_id=M][&payment_id=P]` | 200 + [`LedgerView`] |
//! | `GET /v1/accounts/{merchant_id}/{payment_id}` | 200 + [`Account`]; 404 `not_found` |
//! | `GET /v1/references/{merchant_id}/{reference}` | 200 + effects; 404 `not_found` |
//! | `GET /v1/config`, `PUT /v1/config` | 200 + [`ProcessorConfig`] |
//! | `POST /v1/reset` | 204, ledger emptied |
//! | `GET /health` | 200 |
//!
//! Every 4xx and 5xx carries an [`ApiError`] body, including unknown routes
//! (404 `not_found`) and wrong methods (405 `method_not_allowed`).
//!
//! [`Effect`]: crate::types::Effect
//! [`Account`]: crate::types::Account

use std::future::Future;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::ledger::{RuleViolation, Submission};
use crate::processor::Processor;
use crate::types::{ApiError, EffectRequest, LedgerView, ProcessorConfig, IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_REPLAYED_HEADER};

/// Longest idempotency key accepted, in bytes (Stripe's limit).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The processor's routes, sharing `processor`.
pub fn router(processor: Processor) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/effects", post(create_effect).get(effects_by_key))
        .route("/v1/ledger", get(ledger))
        .route("/v1/accounts/{merchant_id}/{payment_id}", get(account))
        .route("/v1/references/{merchant_id}/{reference}", get(by_reference))
        .route("/v1/config", get(get_config).put(put_config))
        .route("/v1/reset", post(reset))
        .fallback(|| async { HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            HttpError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .with_state(processor)
}

/// Serves [`router`]`(processor)` on `listener` until `shutdown` completes, then
/// waits for requests in flight to finish.
///
/// The caller binds the listener (so it can bind port 0 and read the address
/// first) and owns the shutdown signal. Connections get `TCP_NODELAY` (axum
/// leaves Nagle's algorithm on, which can hold an answer up to 40 ms).
pub async fn serve(
    listener: tokio::net::TcpListener,
    processor: Processor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(processor)).with_graceful_shutdown(shutdown).await
}

/// A processor served by [`spawn`]: its handle, its URL, and the signal that stops the server
/// when this is dropped.
pub struct Served {
    /// The processor, shared with the server: its ledger can be read directly.
    pub processor: Processor,
    /// `http://127.0.0.1:<port>`, for clients.
    pub url: String,
    /// Dropping it ends [`serve`]'s shutdown future.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::ops::Deref for Served {
    type Target = Processor;

    /// The processor itself (its ledger, accounts and settings).
    fn deref(&self) -> &Processor {
        &self.processor
    }
}

/// Binds a free port of 127.0.0.1 and serves a new processor with `config` there in a task of
/// the current runtime until the returned [`Served`] is dropped.
pub async fn spawn(config: ProcessorConfig) -> std::io::Result<Served> {
    let processor = Processor::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, processor.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(Served { processor, url, _stop: stop })
}

/// An error answer: status plus [`ApiError`] body.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    body: ApiError,
}

impl HttpError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, body: ApiError { code: code.to_owned(), message: message.into() } }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<&RuleViolation> for HttpError {
    fn from(violation: &RuleViolation) -> Self {
        let status = if violation.is_conflict() { StatusCode::CONFLICT } else { StatusCode::UNPROCESSABLE_ENTITY };
        Self::new(status, violation.code(), violation.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// Turns an extractor rejection into a 400 `invalid_request` with a JSON body.
fn rejected(rejection: impl std::fmt::Display) -> HttpError {
    HttpError::bad_request(rejection.to_string().to_lowercase())
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn create_effect(State(processor): State<Processor>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let delay_ms = processor.config().delay_before_effect_ms;
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let response = process_effect(&processor, &headers, body).unwrap_or_else(IntoResponse::into_response);
    let latency_ms = processor.config().latency_ms;
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    response
}

/// Parses and submits one effect request.
fn process_effect(processor: &Processor, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Response, HttpError> {
    let key = idempotency_key(headers)?;
    let body = body.map_err(rejected)?;
    let request = parse_effect_request(&body)?;

    let (outcome, replayed) = match processor.submit(&request, key) {
        Submission::Processed(outcome) => (outcome, false),
        Submission::Replayed(outcome) => (outcome, true),
        Submission::KeyReused => {
            tracing::debug!(key, "idempotency key reused with another request");
            return Err(HttpError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "idempotency key was already used with a different request",
            ));
        }
    };
    let mut response = match &outcome {
        Ok(effect) => {
            if !replayed {
                tracing::debug!(
                    seq = effect.seq,
                    operation = %effect.operation,
                    merchant_id = %effect.merchant_id,
                    payment_id = %effect.payment_id,
                    key,
                    "effect recorded"
                );
            }
            (StatusCode::CREATED, Json(effect)).into_response()
        }
        Err(violation) => {
            tracing::debug!(operation = %request.operation, key, %violation, "request refused");
            HttpError::from(violation).into_response()
        }
    };
    if replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The `Idempotency-Key` header: absent is fine, empty, over-long or not text is not.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, HttpError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let invalid = |message: &str| HttpError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", message.to_owned());
    let key = value.to_str().map_err(|_| invalid("idempotency key must be visible ascii"))?;
    if key.is_empty() {
        return Err(invalid("idempotency key must not be empty"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(invalid("idempotency key is longer than 255 bytes"));
    }
    Ok(Some(key))
}

fn parse_effect_request(body: &[u8]) -> Result<EffectRequest, HttpError> {
    let request: EffectRequest =
        serde_json::from_slice(body).map_err(|e| HttpError::bad_request(format!("invalid effect request: {e}")))?;
    for (field, value) in [("operation", &request.operation), ("merchant_id", &request.merchant_id), ("payment_id", &request.payment_id)] {
        if value.is_empty() {
            return Err(HttpError::bad_request(format!("{field} must not be empty")));
        }
    }
    if request.reference.as_deref() == Some("") {
        return Err(HttpError::bad_request("reference must not be empty"));
    }
    Ok(request)
}

/// Query of `GET /v1/effects`.
#[derive(Debug, Deserialize)]
struct KeyQuery {
    idempotency_key: String,
}

async fn effects_by_key(
    State(processor): State<Processor>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let Query(query) = query.map_err(rejected)?;
    Ok(Json(processor.effects_by_key(&query.idempotency_key)))
}

/// Query of `GET /v1/ledger`.
#[derive(Debug, Deserialize)]
struct LedgerQuery {
    merchant_id: Option<String>,
    payment_id: Option<String>,
}

async fn ledger(
    State(processor): State<Processor>,
    query: Result<Query<LedgerQuery>, QueryRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let Query(query) = query.map_err(rejected)?;
    let effects = processor.effects_matching(query.merchant_id.as_deref(), query.payment_id.as_deref());
    Ok(Json(LedgerView { effects }))
}

async fn account(
    State(processor): State<Processor>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let Path((merchant_id, payment_id)) = path.map_err(rejected)?;
    processor
        .account(&merchant_id, &payment_id)
        .map(Json)
        .ok_or_else(|| HttpError::not_found(format!("no effect for payment {payment_id} of merchant {merchant_id}")))
}

async fn by_reference(
    State(processor): State<Processor>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let Path((merchant_id, reference)) = path.map_err(rejected)?;
    let effects = processor.effects_by_reference(&merchant_id, &reference);
    if effects.is_empty() {
        return Err(HttpError::not_found(format!("no effect with reference {reference} for merchant {merchant_id}")));
    }
    Ok(Json(effects))
}

async fn get_config(State(processor): State<Processor>) -> Json<ProcessorConfig> {
    Json(processor.config())
}

async fn put_config(
    State(processor): State<Processor>,
    config: Result<Json<ProcessorConfig>, JsonRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let Json(config) = config.map_err(rejected)?;
    tracing::info!(?config, "config changed");
    processor.set_config(config.clone());
    Ok(Json(config))
}

async fn reset(State(processor): State<Processor>) -> StatusCode {
    tracing::info!("ledger reset");
    processor.reset();
    StatusCode::NO_CONTENT
}
