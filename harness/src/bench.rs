//! `harness bench`: the bridge's authorize round trip beside a raw async-nats JetStream
//! publish + inbox reply, measured in the same run against the same responder.
//!
//! Phase 1 alternates blocks of raw and bridge round trips, both answered by one minimal echo
//! responder (pull consumer, reply to `X-Reply-To`, ack), so the difference is the bridge's own
//! cost. Phase 2 measures the full path: bridge, mock worker (result store, processor call).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use nats_bridge::{catalogue::ops, headers, OperationRequest};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::cli::CliError;
use crate::env::{Environment, EnvironmentConfig};
use crate::nats::EnvConfig;
use crate::stats::{ms, percentiles, unix_time, Percentiles};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Measured round trips per path.
    pub iterations: usize,
    /// Unmeasured round trips per path first.
    pub warmup: usize,
    /// Raw and bridge round trips alternate in blocks of this size.
    pub block: usize,
    /// Run on the 3-node cluster.
    pub cluster: bool,
    /// Where `bench-<time>/` goes.
    pub report_dir: PathBuf,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            iterations: 2000,
            warmup: 200,
            block: 100,
            cluster: false,
            report_dir: PathBuf::from("reports"),
        }
    }
}

/// The measured numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Backend and node count.
    pub nats: String,
    /// Raw async-nats JetStream publish + inbox reply, minimal message (2 headers, small body).
    pub raw_minimal: Percentiles,
    /// Raw async-nats JetStream publish + inbox reply carrying the bridge's own headers and body
    /// (built before the clock starts): the baseline for the bridge's code overhead.
    pub raw: Percentiles,
    /// The bridge's durable call against the same echo responder.
    pub bridge_echo: Percentiles,
    /// The bridge's durable call through the mock worker and processor.
    pub bridge_full: Percentiles,
    /// raw (same message) p50 / bridge p50: 1.0 means no overhead; the target is >= 0.8.
    pub ratio_p50: f64,
    /// raw p99 / bridge p99.
    pub ratio_p99: f64,
    /// Where the report was written.
    pub report: PathBuf,
}

async fn echo(client: Client, consumer: PullConsumer) -> JoinHandle<()> {
    let mut messages = consumer.messages().await.expect("echo pull");
    tokio::spawn(async move {
        while let Some(Ok(msg)) = messages.next().await {
            let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
            let reply = json!({
                "status": "success",
                "correlation_id": body["correlation_id"],
                "merchant_id": body["merchant_id"],
                "payment_id": body["payment_id"],
            });
            if let Some(to) = msg.headers.as_ref().and_then(|h| h.get(headers::REPLY_TO)) {
                let _ = client.publish(to.as_str().to_string(), Bytes::from(reply.to_string())).await;
            }
            let _ = msg.ack().await;
        }
    })
}

async fn echo_consumer(js: &jetstream::Context, stream: &str, filter: &str) -> Result<PullConsumer, CliError> {
    Ok(js
        .get_stream(stream)
        .await?
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bench_echo".into()),
            filter_subject: filter.into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?)
}

/// Runs the benchmark and writes `summary.md` and `summary.json`.
pub async fn run(config: BenchConfig) -> Result<BenchReport, CliError> {
    let mut env = Environment::start(EnvironmentConfig {
        nats: if config.cluster { EnvConfig::cluster() } else { EnvConfig::single() },
        workers: 0,
        ..Default::default()
    })
    .await?;
    let bridge = env.bridge().clone();
    let js = bridge.jetstream().clone();
    let plan = nats_bridge::streams::plan(bridge.config());
    let mut raw_stream = plan[0].to_config();
    raw_stream.name = "BENCH_RAW".into();
    raw_stream.subjects = vec!["bench.raw".into()];
    js.create_or_update_stream(raw_stream).await?;
    let auth_subject = bridge.config().subject_template(ops::authorize());
    let responder = env.nats().connect().await?;
    let echo_bridge = echo(responder.clone(), echo_consumer(&js, "HYPERSWITCH_PAYMENTS", &auth_subject).await?).await;
    let echo_raw = echo(responder.clone(), echo_consumer(&js, "BENCH_RAW", "bench.raw").await?).await;

    // The raw client: one inbox subscription, publish with headers, await ack, await reply.
    let raw_client = env.nats().connect().await?;
    let raw_js = jetstream::new(raw_client.clone());
    let inbox = raw_client.new_inbox();
    let mut replies = raw_client.subscribe(inbox.clone()).await?;
    let mut n = 0u64;
    let mut raw_once = || {
        n += 1;
        let id = format!("raw-{n}");
        let mut h = HeaderMap::new();
        h.insert(headers::NATS_MSG_ID, id.as_str());
        h.insert(headers::REPLY_TO, inbox.as_str());
        let body = json!({ "correlation_id": id, "merchant_id": "bench", "payment_id": id, "router_data": { "amount": 100 } });
        (h, Bytes::from(body.to_string()))
    };
    let mut k = 0u64;
    let mut bridge_req = || {
        k += 1;
        OperationRequest::new(ops::authorize(), "bench", format!("pay_{k}"), format!("pay_{k}_1"))
            .router_data(json!({ "amount": 100, "currency": "USD" }))
    };

    let mut raw_minimal = Vec::with_capacity(config.iterations);
    let mut raw = Vec::with_capacity(config.iterations);
    let mut via_bridge = Vec::with_capacity(config.iterations);
    let total = config.warmup + config.iterations;
    let mut done = 0;
    while done < total {
        let size = config.block.min(total - done);
        for _ in 0..size {
            let (h, body) = raw_once();
            let t = Instant::now();
            raw_js.publish_with_headers("bench.raw", h, body).await?.await?;
            tokio::time::timeout(Duration::from_secs(5), replies.next()).await?.ok_or("raw inbox closed")?;
            if done >= config.warmup {
                raw_minimal.push(t.elapsed());
            }
        }
        for _ in 0..size {
            let r = bridge_req();
            let h = bridge.headers(&r, Some(&inbox));
            let body = Bytes::from(serde_json::to_vec(r.envelope())?);
            let t = Instant::now();
            raw_js.publish_with_headers("bench.raw", h, body).await?.await?;
            tokio::time::timeout(Duration::from_secs(5), replies.next()).await?.ok_or("raw inbox closed")?;
            if done >= config.warmup {
                raw.push(t.elapsed());
            }
        }
        for _ in 0..size {
            let r = bridge_req();
            let t = Instant::now();
            bridge.call(&r).await?;
            if done >= config.warmup {
                via_bridge.push(t.elapsed());
            }
        }
        done += size;
    }
    echo_bridge.abort();
    echo_raw.abort();
    js.get_stream("HYPERSWITCH_PAYMENTS").await?.delete_consumer("bench_echo").await?;
    js.get_stream("HYPERSWITCH_PAYMENTS").await?.purge().await?;

    // Phase 2: the full path through a mock worker and the processor.
    env.start_worker().await?;
    let mut full = Vec::with_capacity(config.iterations);
    for i in 0..total {
        let r = bridge_req();
        let t = Instant::now();
        bridge.call(&r).await?;
        if i >= config.warmup {
            full.push(t.elapsed());
        }
    }

    let raw_minimal = percentiles(&raw_minimal);
    let raw = percentiles(&raw);
    let bridge_echo = percentiles(&via_bridge);
    let bridge_full = percentiles(&full);
    let dir = config.report_dir.join(format!("bench-{}", unix_time()));
    let report = BenchReport {
        nats: format!("{} x{}", env.nats().backend(), env.nats().node_count()),
        raw_minimal,
        raw,
        bridge_echo,
        bridge_full,
        ratio_p50: raw.p50_us as f64 / bridge_echo.p50_us.max(1) as f64,
        ratio_p99: raw.p99_us as f64 / bridge_echo.p99_us.max(1) as f64,
        report: dir.clone(),
    };
    write(&dir, &report)?;
    Ok(report)
}

/// The report as Markdown.
pub fn markdown(r: &BenchReport) -> String {
    let row = |name: &str, p: &Percentiles| {
        format!("| {name} | {} | {} | {} | {} | {} |\n", p.count, ms(p.p50_us), ms(p.p99_us), ms(p.p999_us), ms(p.max_us))
    };
    let mut s = format!("# Authorize round trip\n\nNATS: {}. Sequential calls, one at a time.\n\n", r.nats);
    s.push_str("| path | count | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n");
    s.push_str(&row("raw async-nats, minimal message: JetStream publish + inbox reply (echo responder)", &r.raw_minimal));
    s.push_str(&row("raw async-nats, the bridge's headers and body (same echo responder)", &r.raw));
    s.push_str(&row("bridge durable call (same echo responder)", &r.bridge_echo));
    s.push_str(&row("bridge durable call (mock worker + processor)", &r.bridge_full));
    s.push_str(&format!(
        "\nraw (same message) / bridge: p50 {:.2}, p99 {:.2} (1.0 = no overhead; target >= 0.8)\n",
        r.ratio_p50, r.ratio_p99
    ));
    s
}

fn write(dir: &Path, r: &BenchReport) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.md"), markdown(r))?;
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(r)?)?;
    Ok(())
}
