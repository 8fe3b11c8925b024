//! `harness bench`: the bridge's authorize round trip beside a raw async-nats JetStream
//! publish + inbox reply, measured in the same run against the same responder; the bridge's
//! maximum sustainable authorize rate; its memory with many calls in flight; and its NATS
//! connection count. Every number goes to `reports/bench-<time>/summary.{md,json}` with the
//! targets of docs/architecture.md section 7 and a PASS/FAIL per target.
//!
//! Phases, in order, on one environment (NATS, processor, streams):
//! 1. Raw and bridge round trips alternate in blocks, both answered by one minimal echo
//!    responder (pull consumer, reply to `X-Reply-To`, ack), so the difference is the bridge's
//!    own cost.
//! 2. [`rate`]: open-model ladder against the echo responder (the bridge and NATS alone).
//! 3. [`memory`]: a separate process holds `in_flight` durable calls whose replies are held
//!    back, reads its resident set, then releases the replies and checks every call completes.
//! 4. The full path, sequential: bridge, mock worker (result store, processor call).
//! 5. [`rate`]: the ladder again through the mock worker and processor.
//!
//! The rate ladders use a bridge built by [`Bridge::connect`] (the production path) with a
//! connection name unique to the run; [`connz`] counts the connections carrying that name.
//!
//! Everything runs on the same machine: the load generator, the bridge, the mock worker and
//! processor and NATS share its cores, so the rates are lower bounds for a bridge on its own
//! machine.

pub mod connz;
pub mod memory;
pub mod rate;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use nats_bridge::{catalogue::ops, headers, Bridge, OperationRequest};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::env::{EnvError, Environment, EnvironmentConfig};
use crate::nats::{EnvConfig, NatsError};
use crate::stats::{ms, unix_time, Percentiles};

pub use connz::{ConnCount, ConnzError};
pub use memory::{MeasureError, MemoryReport, ProbeError};
pub use rate::{RateConfig, RateLadder, RatePath};

/// The bridge must be at least this fast relative to raw async-nats (raw / bridge).
pub const RATIO_TARGET: f64 = 0.8;
/// The seeds' rate per gateway instance, requests per second.
pub const RATE_TARGET_RPS: u32 = 1000;
/// NATS connections per bridge.
pub const CONNECTIONS_TARGET: usize = 1;
/// In-flight operations of the memory target (the seeds' concurrent operations).
pub const MEMORY_TARGET_CALLS: usize = 10_000;

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
    /// The rate ladders; no paths means no ladder.
    pub rate: RateConfig,
    /// The bridge's whole-call timeout in the rate ladders, so an overloaded step ends.
    pub rate_request_timeout: Duration,
    /// Durable calls held in flight by the memory probe; 0 skips the probe.
    pub in_flight: usize,
    /// The memory target for the bridge with `in_flight` calls, MiB.
    pub memory_limit_mib: u64,
    /// The `harness` binary that runs the memory probe; `None` means this executable (right
    /// for the CLI; tests pass `env!("CARGO_BIN_EXE_harness")`).
    pub harness_exe: Option<PathBuf>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            iterations: 2000,
            warmup: 200,
            block: 100,
            cluster: false,
            report_dir: PathBuf::from("reports"),
            rate: RateConfig::default(),
            rate_request_timeout: Duration::from_secs(10),
            in_flight: MEMORY_TARGET_CALLS,
            memory_limit_mib: 64,
            harness_exe: None,
        }
    }
}

/// One target of docs/architecture.md section 7 and whether this run met it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetCheck {
    /// What is measured.
    pub name: String,
    /// The target, as text.
    pub target: String,
    /// The measured value, as text.
    pub measured: String,
    /// Met or not.
    pub pass: bool,
}

/// The measured numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Backend and node count.
    pub nats: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run started: other work on the machine.
    pub load_before: String,
    /// `/proc/loadavg` when the run ended.
    pub load_after: String,
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
    /// The rate ladders run, one per responder.
    pub rate: Vec<RateLadder>,
    /// The memory probe, unless skipped.
    pub memory: Option<MemoryReport>,
    /// The memory target, MiB.
    pub memory_limit_mib: u64,
    /// The rate ladders' bridge in `/connz` after the ladders (still connected, idle).
    pub connections_after_load: ConnCount,
    /// The most connections carrying one bridge's name seen in any sample (each rate step,
    /// the memory probe with every call in flight, after the load).
    pub connections_max: usize,
    /// Every target with PASS/FAIL.
    pub targets: Vec<TargetCheck>,
    /// Every target passed.
    pub passed: bool,
    /// Where the report was written.
    pub report: PathBuf,
}

/// Why the benchmark stopped before its report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The environment (NATS, processor, streams, a worker) could not be started.
    #[error(transparent)]
    Environment(#[from] EnvError),
    /// A client could not connect to NATS.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The raw round trip's stream could not be created.
    #[error(transparent)]
    CreateStream(#[from] jetstream::context::CreateStreamError),
    /// A stream could not be read.
    #[error(transparent)]
    GetStream(#[from] jetstream::context::GetStreamError),
    /// The echo responder's consumer could not be created or deleted.
    #[error(transparent)]
    Consumer(#[from] jetstream::stream::ConsumerError),
    /// The payments stream could not be purged between phases.
    #[error(transparent)]
    Purge(#[from] jetstream::stream::PurgeError),
    /// The rate ladders' bridge could not connect.
    #[error(transparent)]
    Bridge(#[from] nats_bridge::ConnectError),
    /// The raw client could not subscribe to its inbox.
    #[error(transparent)]
    Subscribe(#[from] async_nats::SubscribeError),
    /// A raw publish was not acknowledged.
    #[error(transparent)]
    Publish(#[from] jetstream::context::PublishError),
    /// A raw round trip's reply did not come within 5 s.
    #[error(transparent)]
    ReplyTimeout(#[from] tokio::time::error::Elapsed),
    /// The raw client's inbox subscription ended.
    #[error("raw inbox closed")]
    RawInboxClosed,
    /// A bridge call failed.
    #[error(transparent)]
    Call(#[from] nats_bridge::CallError),
    /// The harness executable to run the memory probe with is unknown.
    #[error(transparent)]
    HarnessExe(std::io::Error),
    /// The memory probe could not be run or read.
    #[error(transparent)]
    MemoryProbe(#[from] MeasureError),
    /// The bridge's connections could not be counted.
    #[error(transparent)]
    Connections(#[from] ConnzError),
    /// A request or the report could not be encoded.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] std::io::Error),
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

async fn echo_consumer(js: &jetstream::Context, stream: &str, filter: &str) -> Result<PullConsumer, BenchError> {
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
pub async fn run(config: BenchConfig) -> Result<BenchReport, BenchError> {
    let load_before = load_average();
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
    let payments_stream = bridge.config().stream_name(ops::authorize().family);
    let responder = env.nats().connect().await?;
    let echo_bridge = echo(responder.clone(), echo_consumer(&js, &payments_stream, &auth_subject).await?).await;
    let echo_raw = echo(responder.clone(), echo_consumer(&js, "BENCH_RAW", "bench.raw").await?).await;
    let monitoring_urls = env.nats().monitoring_urls();

    // The rate ladders' bridge: the production connect path, a name unique to this run.
    let connection_name = format!("harness-bench-{}-{}", std::process::id(), unix_time());
    let mut rate_config = env.bridge_config().clone();
    rate_config.connection_name = connection_name.clone();
    rate_config.request_timeout_ms = config.rate_request_timeout.as_millis() as u64;
    rate_config.ack_timeout_ms = rate_config.ack_timeout_ms.min(rate_config.request_timeout_ms / 2);
    // An overloaded step must not open a breaker that refuses the next ladder's calls.
    rate_config.circuit_breaker.enabled = false;
    let rate_bridge = Bridge::connect(rate_config).await?;
    let rate_target = |path: RatePath| rate::RateTarget {
        bridge: &rate_bridge,
        merchant: format!("bench-rate-{path:?}").to_lowercase(),
        monitoring_urls: &monitoring_urls,
        connection_name: &connection_name,
    };

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

    // Phase 1: raw versus bridge, same echo responder.
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
            tokio::time::timeout(Duration::from_secs(5), replies.next()).await?.ok_or(BenchError::RawInboxClosed)?;
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
            tokio::time::timeout(Duration::from_secs(5), replies.next()).await?.ok_or(BenchError::RawInboxClosed)?;
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
    echo_raw.abort();

    // Phase 2: the rate ladder against the echo responder.
    let mut ladders = Vec::new();
    if config.rate.paths.contains(&RatePath::Echo) {
        ladders.push(rate::ladder(RatePath::Echo, &config.rate, &rate_target(RatePath::Echo)).await);
    }
    echo_bridge.abort();
    let payments = js.get_stream(&payments_stream).await?;
    payments.delete_consumer("bench_echo").await?;
    payments.purge().await?;

    // Phase 3: memory with many calls in flight, in a process of its own; no worker exists yet,
    // so nothing answers until the probe releases its own responder.
    let memory = if config.in_flight > 0 {
        let exe = match &config.harness_exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().map_err(BenchError::HarnessExe)?,
        };
        let probe = memory::ProbeConfig {
            nats_url: env.nats().client_url(),
            monitoring_urls: monitoring_urls.clone(),
            replicas: env.nats().replicas(),
            in_flight: config.in_flight,
            wave: 1000,
            request_timeout_ms: 600_000,
            connection_name: format!("harness-bench-mem-{}-{}", std::process::id(), unix_time()),
            merchant: "bench-mem".into(),
            deadline_secs: 120,
        };
        let report = memory::measure(&exe, &probe).await?;
        payments.purge().await?;
        Some(report)
    } else {
        None
    };

    // Phase 4: the full path through a mock worker and the processor.
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

    // Phase 5: the rate ladder through the mock worker and the processor.
    if config.rate.paths.contains(&RatePath::Full) {
        ladders.push(rate::ladder(RatePath::Full, &config.rate, &rate_target(RatePath::Full)).await);
    }
    let connections_after_load = connz::count(&monitoring_urls, &connection_name).await?;

    let raw_minimal = Percentiles::of_samples(&raw_minimal);
    let raw = Percentiles::of_samples(&raw);
    let bridge_echo = Percentiles::of_samples(&via_bridge);
    let bridge_full = Percentiles::of_samples(&full);
    let dir = config.report_dir.join(format!("bench-{}", unix_time()));
    let connections_max = ladders
        .iter()
        .flat_map(|l| l.steps.iter().filter_map(|s| s.connections))
        .chain(memory.iter().map(|m| m.connections.named))
        .chain([connections_after_load.named])
        .max()
        .unwrap_or(0);
    let mut report = BenchReport {
        nats: format!("{} x{}", env.nats().backend(), env.nats().node_count()),
        cpus: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        load_before,
        load_after: load_average(),
        raw_minimal,
        raw,
        bridge_echo,
        bridge_full,
        ratio_p50: raw.p50_us as f64 / bridge_echo.p50_us.max(1) as f64,
        ratio_p99: raw.p99_us as f64 / bridge_echo.p99_us.max(1) as f64,
        rate: ladders,
        memory,
        memory_limit_mib: config.memory_limit_mib,
        connections_after_load,
        connections_max,
        targets: Vec::new(),
        passed: false,
        report: dir.clone(),
    };
    report.targets = targets(&report);
    report.passed = report.targets.iter().all(|t| t.pass);
    write(&dir, &report)?;
    Ok(report)
}

/// The targets of docs/architecture.md section 7 that this benchmark measures, with PASS/FAIL.
pub fn targets(r: &BenchReport) -> Vec<TargetCheck> {
    let mut t = Vec::new();
    for (name, ratio) in [("p50", r.ratio_p50), ("p99", r.ratio_p99)] {
        t.push(TargetCheck {
            name: format!("round trip, raw async-nats / bridge, {name}"),
            target: format!(">= {RATIO_TARGET}"),
            measured: format!("{ratio:.2}"),
            pass: ratio >= RATIO_TARGET,
        });
    }
    for l in &r.rate {
        let bound = if l.ceiling_not_reached { " (every step passed: a lower bound)" } else { "" };
        t.push(TargetCheck {
            name: format!("max sustainable authorize rate, {} (p99 <= {} ms, no errors)", l.path.describe(), l.p99_limit_ms),
            target: format!(">= {RATE_TARGET_RPS} req/s (seeds: per instance)"),
            measured: format!("{} req/s{bound}", l.max_sustainable_rps),
            pass: l.max_sustainable_rps >= RATE_TARGET_RPS,
        });
    }
    if let Some(m) = &r.memory {
        let limit_kib = r.memory_limit_mib * 1024;
        let at = if m.calls == MEMORY_TARGET_CALLS {
            String::new()
        } else {
            format!(" (the target is set at {MEMORY_TARGET_CALLS}; this run held {})", m.calls)
        };
        t.push(TargetCheck {
            name: format!("bridge memory growth with {} calls in flight (resident set){at}", m.calls),
            target: format!("<= {} MiB", r.memory_limit_mib),
            measured: format!("{} (peak {})", mib(m.growth_kib), mib(m.peak_growth_kib)),
            pass: m.growth_kib <= limit_kib && m.peak_growth_kib <= limit_kib,
        });
        t.push(TargetCheck {
            name: "every held call completes once the replies are released".into(),
            target: format!("{} of {}", m.calls, m.calls),
            measured: format!("{} completed, {} errors", m.completed, m.errors),
            pass: m.completed == m.calls && m.errors == 0,
        });
    }
    t.push(TargetCheck {
        name: "NATS connections per bridge (/connz, by connection name, most seen in any sample)".into(),
        target: format!("== {CONNECTIONS_TARGET}"),
        measured: r.connections_max.to_string(),
        pass: r.connections_max == CONNECTIONS_TARGET,
    });
    t
}

/// The 1, 5 and 15 minute load averages, or `unknown`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn rps(x: f64) -> String {
    format!("{x:.0}")
}

/// The report as Markdown.
pub fn markdown(r: &BenchReport) -> String {
    let row = |name: &str, p: &Percentiles| {
        format!("| {name} | {} | {} | {} | {} | {} |\n", p.count, ms(p.p50_us), ms(p.p99_us), ms(p.p999_us), ms(p.max_us))
    };
    let mut s = format!(
        "# Bridge benchmark\n\nNATS: {}. Everything on one machine (loopback), sharing its {} CPU(s) with whatever else runs \
         there: load average (1/5/15 min) {} at the start, {} at the end.\n\n",
        r.nats, r.cpus, r.load_before, r.load_after
    );
    s.push_str("## Targets\n\n| target | goal | measured | verdict |\n|---|---|---|---|\n");
    for t in &r.targets {
        s.push_str(&format!("| {} | {} | {} | {} |\n", t.name, t.target, t.measured, if t.pass { "PASS" } else { "FAIL" }));
    }
    s.push_str(&format!("\nOverall: {}\n", if r.passed { "PASS" } else { "FAIL" }));

    s.push_str("\n## Authorize round trip\n\nSequential calls, one at a time.\n\n");
    s.push_str("| path | count | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n");
    s.push_str(&row("raw async-nats, minimal message: JetStream publish + inbox reply (echo responder)", &r.raw_minimal));
    s.push_str(&row("raw async-nats, the bridge's headers and body (same echo responder)", &r.raw));
    s.push_str(&row("bridge durable call (same echo responder)", &r.bridge_echo));
    s.push_str(&row("bridge durable call (mock worker + processor)", &r.bridge_full));
    s.push_str(&format!(
        "\nraw (same message) / bridge: p50 {:.2}, p99 {:.2} (1.0 = no overhead; target >= {RATIO_TARGET})\n",
        r.ratio_p50, r.ratio_p99
    ));

    for l in &r.rate {
        s.push_str(&format!(
            "\n## Maximum sustainable authorize rate: {}\n\nOpen model: calls sent at fixed intended times, \
             latency from the intended time; {} s per step; a step is sustainable when the generator \
             kept up (>= {:.0}% of the rate offered), p99 <= {} ms and no call failed; a rate is tried \
             up to {} time(s) before the ladder stops. The load generator runs in the bridge's process.\n\n",
            l.path.describe(),
            l.step_secs,
            rate::KEEP_UP * 100.0,
            l.p99_limit_ms,
            l.attempts
        ));
        s.push_str(
            "| rate req/s | try | sent | offered req/s | achieved req/s | p50 ms | p99 ms | max ms | send lag p99 ms | errors | not success | connections | verdict |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for st in &l.steps {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                st.target_rps,
                st.attempt,
                st.sent,
                rps(st.offered_rps),
                rps(st.achieved_rps),
                ms(st.latency.p50_us),
                ms(st.latency.p99_us),
                ms(st.latency.max_us),
                ms(st.send_lag_p99_us),
                st.errors,
                st.not_success,
                st.connections.map(|c| c.to_string()).unwrap_or_else(|| "unread".into()),
                if st.sustainable { "sustainable".to_string() } else { format!("not sustainable: {}", st.reason) }
            ));
        }
        s.push_str(&format!(
            "\nMaximum sustainable rate: {} req/s{}\n",
            l.max_sustainable_rps,
            if l.ceiling_not_reached { " (every step passed; the real maximum is higher)" } else { "" }
        ));
    }

    if let Some(m) = &r.memory {
        s.push_str(&format!("\n## Memory with {} durable calls in flight\n\nMethod: {}.\n\n", m.calls, m.method));
        s.push_str("| measure | value |\n|---|---:|\n");
        let kib = |v: u64| format!("{v} KiB ({})", mib(v));
        for (name, v) in [
            ("resident set before the bridge connected", kib(m.rss_base_kib)),
            ("resident set, bridge connected and idle", kib(m.rss_connected_kib)),
            ("resident set, every call in flight", kib(m.rss_in_flight_kib)),
            ("resident set after every reply was delivered", kib(m.rss_after_kib)),
            ("bridge growth (in flight - before)", kib(m.growth_kib)),
            ("peak growth (high-water mark - before)", kib(m.peak_growth_kib)),
            ("idle bridge (connected - before)", kib(m.idle_bridge_kib)),
            ("per call in flight", format!("{} bytes", m.per_call_bytes)),
            ("of which the call's future (its state)", format!("{} bytes", m.call_future_bytes)),
            ("calls waiting for a reply at the sample", m.waiting_at_sample.to_string()),
            ("publishes acknowledged at the sample", m.published_at_sample.to_string()),
            ("bridge request timeout while held", format!("{} ms", m.request_timeout_ms)),
            ("time to start and publish every call", format!("{} ms", m.fill_ms)),
            ("time from release to the last completion", format!("{} ms", m.release_ms)),
            ("completed after release (success status)", format!("{} ({})", m.completed, m.success)),
            ("errors", m.errors.to_string()),
            ("bridge connections in /connz, every call in flight", m.connections.named.to_string()),
        ] {
            s.push_str(&format!("| {name} | {v} |\n"));
        }
        s.push_str(&format!("\nTarget: <= {} MiB.\n", r.memory_limit_mib));
    }

    s.push_str(&format!(
        "\n## NATS connections\n\n`/connz` on {} node(s), connections named `{}` (the rate ladders' bridge) after the load: {} \
         (of {} client connections in the run). Most seen for one bridge in any sample: {} (target {CONNECTIONS_TARGET}).\n",
        r.connections_after_load.nodes,
        r.connections_after_load.name,
        r.connections_after_load.named,
        r.connections_after_load.total,
        r.connections_max
    ));
    s
}

fn write(dir: &Path, r: &BenchReport) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.md"), markdown(r))?;
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(r)?)?;
    Ok(())
}
