//! [`ProcessorClient`]: a small HTTP client for the processor's API, used by
//! workers, checkers and tests.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::types::{
    Account, ApiError, Effect, EffectRequest, LedgerView, ProcessorConfig, IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_REPLAYED_HEADER,
};

/// Per-request timeout of a client made with [`ProcessorClient::new`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the processor failed.
///
/// For [`ProcessorClient::create_effect`] the variants differ in what they say
/// about the effect: after [`Rejected`](Self::Rejected) it was certainly not
/// performed; after [`Timeout`](Self::Timeout), and after
/// [`Transport`](Self::Transport) unless [`ClientError::is_connect`], it may have
/// been — look it up with [`ProcessorClient::effects_by_key`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The processor answered with an error status and an [`ApiError`] body:
    /// a rule violation (409/422), a malformed request (400), an unknown
    /// resource (404)...
    #[error("processor rejected the request with {status} {code}: {message}")]
    Rejected {
        /// HTTP status code.
        status: u16,
        /// [`ApiError::code`].
        code: String,
        /// [`ApiError::message`].
        message: String,
    },
    /// No complete answer arrived within the timeout.
    #[error("processor did not answer in time")]
    Timeout(#[source] reqwest::Error),
    /// The request or its answer failed on the way (connection refused or
    /// reset, ...).
    #[error("transport error talking to the processor")]
    Transport(#[source] reqwest::Error),
    /// The processor answered something this client does not understand.
    #[error("unexpected answer from the processor ({status}): {detail}")]
    UnexpectedResponse {
        /// HTTP status code.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
    /// The base URL cannot be used to build request URLs.
    #[error("invalid processor url {url}: {reason}")]
    InvalidUrl {
        /// URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
}

impl ClientError {
    /// Whether the connection could not even be opened, so the request
    /// certainly did not reach the processor.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Transport(e) if e.is_connect())
    }

    /// The [`ApiError::code`] of a [`Rejected`](Self::Rejected) answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }

    fn from_reqwest(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout(error)
        } else {
            Self::Transport(error)
        }
    }
}

/// A successful `POST /v1/effects`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The effect, performed now or earlier under the same idempotency key.
    pub effect: Effect,
    /// Whether the answer was replayed from an earlier request with the same
    /// idempotency key (header `Idempotent-Replayed: true`).
    pub replayed: bool,
}

/// HTTP client of one processor.
#[derive(Debug, Clone)]
pub struct ProcessorClient {
    /// Root of the API, e.g. `http://127.0.0.1:4000`; paths are appended to it.
    base: Url,
    /// Shared connection pool.
    http: reqwest::Client,
    /// Applied to every request, covering connect, send and reading the body.
    timeout: Duration,
}

impl ProcessorClient {
    /// A client of the processor at `base_url` (e.g. `http://127.0.0.1:4000`)
    /// with [`DEFAULT_TIMEOUT`].
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl { url: base_url.to_owned(), reason: reason.to_owned() };
        let base = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("not an http url"));
        }
        Ok(Self {
            base,
            // The processor is named by its URL: no proxy from the environment (HTTP_PROXY
            // would otherwise route even a loopback processor through it) and no redirects,
            // which also spares every call reqwest's proxy and redirect bookkeeping.
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| invalid(&format!("cannot build the http client: {e}")))?,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client with per-request timeout `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `POST /v1/effects`: asks the processor to perform `request`, under
    /// `idempotency_key` if given.
    pub async fn create_effect(&self, request: &EffectRequest, idempotency_key: Option<&str>) -> Result<Effect, ClientError> {
        Ok(self.submit_effect(request, idempotency_key).await?.effect)
    }

    /// Like [`create_effect`](Self::create_effect), also telling whether the
    /// answer was an idempotent replay.
    pub async fn submit_effect(&self, request: &EffectRequest, idempotency_key: Option<&str>) -> Result<Created, ClientError> {
        let mut builder = self.request(Method::POST, &["v1", "effects"], &[]).json(request);
        if let Some(key) = idempotency_key {
            builder = builder.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        let response = send(builder).await?;
        let replayed = response.headers().get(IDEMPOTENT_REPLAYED_HEADER).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let effect = decode(response).await?;
        Ok(Created { effect, replayed })
    }

    /// `GET /v1/effects?idempotency_key=K`: the effects made under `key`; empty
    /// if the processor never performed a request with it.
    pub async fn effects_by_key(&self, key: &str) -> Result<Vec<Effect>, ClientError> {
        self.get(&["v1", "effects"], &[("idempotency_key", key)]).await
    }

    /// `GET /v1/ledger`: every effect, optionally only those of `merchant_id`
    /// and/or `payment_id`, in `seq` order.
    pub async fn ledger(&self, merchant_id: Option<&str>, payment_id: Option<&str>) -> Result<Vec<Effect>, ClientError> {
        let query: Vec<(&str, &str)> = [("merchant_id", merchant_id), ("payment_id", payment_id)]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect();
        let view: LedgerView = self.get(&["v1", "ledger"], &query).await?;
        Ok(view.effects)
    }

    /// `GET /v1/accounts/{merchant_id}/{payment_id}`: the account, `None` if no
    /// effect was recorded for it.
    pub async fn account(&self, merchant_id: &str, payment_id: &str) -> Result<Option<Account>, ClientError> {
        none_if_not_found(self.get(&["v1", "accounts", merchant_id, payment_id], &[]).await)
    }

    /// `GET /v1/references/{merchant_id}/{reference}`: the effects with that
    /// reference (refund, payout...); empty if none.
    pub async fn by_reference(&self, merchant_id: &str, reference: &str) -> Result<Vec<Effect>, ClientError> {
        let found = self.get(&["v1", "references", merchant_id, reference], &[]).await;
        Ok(none_if_not_found(found)?.unwrap_or_default())
    }

    /// `GET /v1/config`: the current settings.
    pub async fn config(&self) -> Result<ProcessorConfig, ClientError> {
        self.get(&["v1", "config"], &[]).await
    }

    /// `PUT /v1/config`: replaces the settings; returns them as now in force.
    pub async fn set_config(&self, config: &ProcessorConfig) -> Result<ProcessorConfig, ClientError> {
        let builder = self.request(Method::PUT, &["v1", "config"], &[]).json(config);
        decode(send(builder).await?).await
    }

    /// `POST /v1/reset`: empties the ledger.
    pub async fn reset(&self) -> Result<(), ClientError> {
        send(self.request(Method::POST, &["v1", "reset"], &[])).await.map(drop)
    }

    /// `GET /health`: succeeds once the processor answers.
    pub async fn health(&self) -> Result<(), ClientError> {
        send(self.request(Method::GET, &["health"], &[])).await.map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &[&str], query: &[(&str, &str)]) -> Result<T, ClientError> {
        decode(send(self.request(Method::GET, path, query)).await?).await
    }

    /// A request to the base URL plus `path` (each segment percent-encoded)
    /// with `query`.
    fn request(&self, method: Method, path: &[&str], query: &[(&str, &str)]) -> RequestBuilder {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("checked in new: the base url can be a base").pop_if_empty().extend(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.http.request(method, url).timeout(self.timeout)
    }
}

/// Sends the request; an error status becomes [`ClientError::Rejected`] (or
/// [`ClientError::UnexpectedResponse`] if its body is no [`ApiError`]).
async fn send(builder: RequestBuilder) -> Result<Response, ClientError> {
    let response = builder.send().await.map_err(ClientError::from_reqwest)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.map_err(ClientError::from_reqwest)?;
    match serde_json::from_slice::<ApiError>(&body) {
        Ok(error) => Err(ClientError::Rejected { status: status.as_u16(), code: error.code, message: error.message }),
        Err(_) => Err(ClientError::UnexpectedResponse {
            status: status.as_u16(),
            detail: format!("error body is not an api error: {}", String::from_utf8_lossy(&body)),
        }),
    }
}

/// Reads a successful answer's JSON body.
async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
    let status = response.status();
    let body = response.bytes().await.map_err(ClientError::from_reqwest)?;
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::UnexpectedResponse { status: status.as_u16(), detail: format!("cannot decode body: {e}") })
}

/// Maps a 404 answer to `Ok(None)`.
fn none_if_not_found<T>(result: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(ClientError::Rejected { status, .. }) if status == StatusCode::NOT_FOUND.as_u16() => Ok(None),
        Err(e) => Err(e),
    }
}
