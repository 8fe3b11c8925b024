//! The client load of a scenario: payment flows over the gateway's HTTP API, started on an
//! open-model schedule, every call recorded in the history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::history::{Entry, Kind, Recorder};
use super::spec::Workload;
use crate::schedule::Schedule;

/// One client of the gateway.
#[derive(Clone)]
pub struct Client {
    /// HTTP client with the scenario's timeout.
    http: reqwest::Client,
    /// Gateway base URL.
    url: String,
    /// The merchant's API key.
    api_key: String,
    /// The merchant (recorded with every call).
    merchant_id: String,
    /// The history.
    recorder: Recorder,
}

/// Summary of a response kept in the history: never the request's card data.
fn summary(status: u16, body: &Value) -> Value {
    json!({
        "http": status,
        "status": body["status"],
        "attempt_status": body["attempt_status"],
        "payment_id": body["payment_id"],
        "merchant_id": body["merchant_id"],
        "refund_id": body["refund_id"],
        "amount": body["amount"],
        "amount_received": body["amount_received"],
        "amount_refunded": body["amount_refunded"],
        "error_code": body["error_code"].as_str().or(body["error"]["code"].as_str()),
    })
}

/// What a call's completion says about it.
fn classify(status: u16) -> Kind {
    match status {
        200..=299 => Kind::Ok,
        400..=499 => Kind::Failed,
        // A 5xx may have happened: the gateway or bridge does not know.
        _ => Kind::Unknown,
    }
}

/// A call to make.
pub struct Call {
    /// Client process.
    pub process: u64,
    /// Call name (`create`, `capture`, ...).
    pub f: &'static str,
    /// Payment.
    pub payment_id: String,
    /// HTTP method.
    pub method: reqwest::Method,
    /// Path.
    pub path: String,
    /// JSON body.
    pub body: Option<Value>,
    /// Idempotency-Key header.
    pub key: Option<String>,
    /// Intended start, µs since the run started.
    pub intended_us: Option<u64>,
}

impl Client {
    /// A client of `url` for one merchant.
    pub fn new(url: &str, api_key: &str, merchant_id: &str, timeout: Duration, recorder: Recorder) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).build().expect("http client");
        Client { http, url: url.to_string(), api_key: api_key.to_string(), merchant_id: merchant_id.to_string(), recorder }
    }

    /// Makes a call, recording its invocation and completion; returns the completion kind and
    /// the response body (null when there was none).
    pub async fn call(&self, c: Call) -> (Kind, Value) {
        let entry = |value: Value| Entry {
            process: c.process,
            f: c.f.to_string(),
            payment_id: Some(c.payment_id.clone()),
            merchant_id: Some(self.merchant_id.clone()),
            key: c.key.clone(),
            intended_us: c.intended_us,
            value,
        };
        // The request is recorded without its payment method (card data stays out of reports).
        let mut recorded = c.body.clone().unwrap_or(Value::Null);
        if let Value::Object(m) = &mut recorded {
            m.remove("payment_method_data");
        }
        self.recorder.record(Kind::Invoke, entry(recorded));
        let mut req = self.http.request(c.method.clone(), format!("{}{}", self.url, c.path)).header("api-key", &self.api_key);
        if let Some(k) = &c.key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = &c.body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                // A 2xx saying `processing` (or a pending refund) tells the client nothing yet.
                let undecided = body["status"] == "processing" || (c.f == "refund" && body["status"] == "pending");
                let kind = if undecided && classify(status) == Kind::Ok { Kind::Unknown } else { classify(status) };
                self.recorder.record(kind, entry(summary(status, &body)));
                (kind, body)
            }
            Err(e) => {
                self.recorder.record(Kind::Unknown, entry(json!({ "error": e.to_string() })));
                (Kind::Unknown, Value::Null)
            }
        }
    }
}

fn card() -> Value {
    json!({ "card": { "card_number": "4242424242424242", "card_exp_month": "12", "card_exp_year": "2030", "card_cvc": "123" } })
}

/// Picks a flow from the weighted mix.
fn pick<'a>(mix: &'a BTreeMap<String, u32>, rng: &mut StdRng) -> &'a str {
    let total: u32 = mix.values().sum();
    let mut x = rng.random_range(0..total.max(1));
    for (flow, w) in mix {
        if x < *w {
            return flow;
        }
        x -= w;
    }
    mix.keys().next().map(String::as_str).unwrap_or("manual")
}

/// Runs one payment flow.
async fn flow(client: Client, name: String, seed: u64, i: u64, intended_us: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9e3779b97f4a7c15));
    let pid = format!("pay_{seed}_{i}");
    let amount: i64 = rng.random_range(100..=5000);
    let manual = matches!(name.as_str(), "manual" | "void" | "sync");
    let create = json!({
        "payment_id": pid, "amount": amount, "currency": "USD", "confirm": true,
        "capture_method": if manual { "manual" } else { "automatic" },
        "payment_method": "card", "payment_method_data": card(),
    });
    let process = i + 1;
    let call = |f: &'static str, method: reqwest::Method, path: String, body: Option<Value>, key: Option<String>, intended: Option<u64>| {
        Call { process, f, payment_id: pid.clone(), method, path, body, key, intended_us: intended }
    };
    let post = reqwest::Method::POST;
    match name.as_str() {
        "retry" | "concurrent" => {
            let key = format!("key_{pid}");
            let copies = if name == "retry" { 2 } else { 3 };
            let mut tasks = Vec::new();
            for n in 0..copies {
                let c = client.clone();
                let (body, key) = (create.clone(), key.clone());
                let sequential = name == "retry";
                let request = call("create", reqwest::Method::POST, "/payments".into(), Some(body), Some(key), Some(intended_us));
                let t = async move { c.call(request).await };
                if sequential {
                    let _ = t.await;
                } else {
                    tasks.push(tokio::spawn(t));
                }
                let _ = n;
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        _ => {
            let (kind, body) = client.call(call("create", post.clone(), "/payments".into(), Some(create), None, Some(intended_us))).await;
            if kind != Kind::Ok {
                return;
            }
            let status = body["status"].as_str().unwrap_or_default().to_string();
            match name.as_str() {
                "manual" if status == "requires_capture" => {
                    let parts = if rng.random_bool(0.5) { vec![amount / 2, amount - amount / 2] } else { vec![amount] };
                    for part in parts {
                        let body = json!({ "amount_to_capture": part });
                        client.call(call("capture", post.clone(), format!("/payments/{pid}/capture"), Some(body), None, None)).await;
                    }
                }
                "void" if status == "requires_capture" => {
                    client.call(call("cancel", post.clone(), format!("/payments/{pid}/cancel"), Some(json!({})), None, None)).await;
                }
                "refund" if status == "succeeded" => {
                    let refund = json!({ "payment_id": pid, "refund_id": format!("ref_{pid}"), "amount": rng.random_range(1..=amount) });
                    client.call(call("refund", post.clone(), "/refunds".into(), Some(refund), None, None)).await;
                }
                "sync" => {
                    client.call(call("retrieve", reqwest::Method::GET, format!("/payments/{pid}?force_sync=true"), None, None, None)).await;
                }
                _ => {}
            }
        }
    }
}

/// How the generator kept to its schedule.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Pacing {
    /// Payments started.
    pub started: u64,
    /// Largest lag behind the intended start, µs.
    pub max_lag_us: u64,
}

/// Starts payments at `payments_per_s` for `duration_s` (at most `concurrency` in flight) and
/// waits for every flow to end. Payment `i` is intended at `i / payments_per_s` after the
/// history's start; its flow is drawn from the seeded mix in slot order, so a seed gives the
/// same payments at the same intended times whatever the timing. A workload no schedule can
/// hold (refused by the spec's checks before this) starts nothing.
pub async fn run(client: Client, w: &Workload, seed: u64) -> Pacing {
    let recorder = client.recorder.clone();
    let schedule = match Schedule::for_secs(w.payments_per_s, w.duration_s) {
        Ok(s) => s.starting_at(recorder.start()),
        Err(e) => {
            tracing::warn!(error = %e, "no payments started");
            return Pacing::default();
        }
    };
    let limit = Arc::new(Semaphore::new(w.concurrency));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tasks = tokio::task::JoinSet::new();
    let mut pacing = Pacing::default();
    while let Some(slot) = schedule.take() {
        tokio::time::sleep_until(slot.intended.into()).await;
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let intended_us = slot.offset.as_micros() as u64;
        pacing.max_lag_us = pacing.max_lag_us.max(recorder.now_us().saturating_sub(intended_us));
        let name = pick(&w.mix, &mut rng).to_string();
        let c = client.clone();
        let i = slot.index;
        tasks.spawn(async move {
            flow(c, name, seed, i, intended_us).await;
            drop(permit);
        });
        pacing.started += 1;
    }
    while tasks.join_next().await.is_some() {}
    pacing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_fixes_the_flows_in_slot_order() {
        let w = Workload::default();
        let draw = |seed: u64| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200).map(|_| pick(&w.mix, &mut rng).to_string()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let flows = draw(7);
        for f in w.mix.keys() {
            assert!(flows.contains(f), "{f} is drawn");
        }
    }
}
