//! The bridge's memory with many durable calls in flight, measured in a process of its own.
//!
//! `harness bench` starts a second `harness` process (`bench --memory-probe <json>`, hidden)
//! that holds nothing but a tokio runtime, the pre-built requests, an idle responder connection
//! and the bridge under test. NATS, the processor, the workers and the rest of the benchmark
//! live elsewhere (the servers in their own processes or containers, the rest in the parent),
//! and the probe's heap has never served anything else, so freed memory of earlier phases
//! cannot hide the bridge's growth.
//!
//! The probe reads its resident set (`VmRSS`, and the high-water mark `VmHWM`, from
//! `/proc/self/status`) before the bridge connects, after it connects, and once every call is
//! published and waiting for its reply. Nobody answers until then: the responder's consumer
//! exists (created before the baseline, delivering only new messages) but is not pulled. Then
//! the responder starts, and every call must complete with a reply (the bridge's request
//! timeout is raised far above the time this takes, so no call times out while held).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use nats_bridge::{catalogue::ops, subjects, Bridge, BridgeConfig, OperationRequest, ResponseStatus};
use serde_json::json;
use tokio::time::Instant;

use super::connz::{self, ConnCount};
use crate::cli::CliError;

/// Marks the probe's result line on its standard output.
const RESULT_PREFIX: &str = "memory-probe ";

/// What the probe process does; passed to it as JSON.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbeConfig {
    /// NATS client URLs, comma-separated.
    pub nats_url: String,
    /// Monitoring URLs of every node, for `/connz`.
    pub monitoring_urls: Vec<String>,
    /// Stream replicas (1 or 3), as the environment provisioned them.
    pub replicas: usize,
    /// Durable calls to hold in flight at once.
    pub in_flight: usize,
    /// Calls started per wave; the next wave starts once this one is published (keeps
    /// publish acks from queueing behind thousands of others).
    pub wave: usize,
    /// The bridge's whole-call timeout while the replies are held back.
    pub request_timeout_ms: u64,
    /// The bridge's NATS connection name.
    pub connection_name: String,
    /// Merchant id of every request.
    pub merchant: String,
    /// How long filling, and then draining, may take before the probe gives up.
    pub deadline_secs: u64,
}

/// The probe's numbers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemoryReport {
    /// How the bridge's memory was isolated.
    pub method: String,
    /// Calls started.
    pub calls: usize,
    /// Calls the bridge reported waiting for a reply when the in-flight sample was taken.
    pub waiting_at_sample: usize,
    /// Publishes the bridge had acknowledged at that moment.
    pub published_at_sample: u64,
    /// The bridge's whole-call timeout during the probe, milliseconds.
    pub request_timeout_ms: u64,
    /// Resident set before the bridge connected (runtime, requests, idle responder), KiB.
    pub rss_base_kib: u64,
    /// Resident set with the bridge connected and idle, KiB.
    pub rss_connected_kib: u64,
    /// Resident set with every call in flight, KiB.
    pub rss_in_flight_kib: u64,
    /// Resident set after every reply was delivered, KiB.
    pub rss_after_kib: u64,
    /// High-water mark of the resident set at the baseline, KiB.
    pub hwm_base_kib: u64,
    /// High-water mark of the resident set at the in-flight sample, KiB.
    pub hwm_in_flight_kib: u64,
    /// The bridge's growth: in-flight resident set minus the baseline, KiB.
    pub growth_kib: u64,
    /// Upper bound including transient peaks while filling: high-water mark at the in-flight
    /// sample minus the baseline, KiB.
    pub peak_growth_kib: u64,
    /// An idle connected bridge: connected minus baseline, KiB.
    pub idle_bridge_kib: u64,
    /// Growth per call in flight beyond the idle bridge, bytes.
    pub per_call_bytes: u64,
    /// Size of one `Bridge::call` future (its state, held by the caller's task), bytes; the
    /// rest of `per_call_bytes` is heap the call allocates.
    pub call_future_bytes: usize,
    /// Milliseconds to start and publish every call.
    pub fill_ms: u64,
    /// Milliseconds from releasing the replies to the last call's completion.
    pub release_ms: u64,
    /// Calls that completed with a reply after the release.
    pub completed: usize,
    /// Of those, replies with status `success`.
    pub success: usize,
    /// Calls that ended in an error.
    pub errors: usize,
    /// The bridge's connections in `/connz` with every call in flight.
    pub connections: ConnCount,
}

/// Resident set and its high-water mark of this process, KiB, from `/proc/self/status`.
pub fn rss_kib() -> Result<(u64, u64), CliError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no {name} in /proc/self/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Polls `check` every 10 ms until it returns `Ok(true)`, fails, or `deadline` passes.
async fn poll(deadline: Instant, what: &str, mut check: impl FnMut() -> Result<bool, String>) -> Result<(), CliError> {
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The probe itself: runs in the child process and returns its numbers.
pub async fn probe(config: ProbeConfig) -> Result<MemoryReport, CliError> {
    let n = config.in_flight;
    let deadline = Duration::from_secs(config.deadline_secs);
    let mut bridge_config = BridgeConfig {
        base_url: config.nats_url.clone(),
        connection_name: config.connection_name.clone(),
        request_timeout_ms: config.request_timeout_ms,
        // Waves keep acks fast; a generous ack timeout keeps a slow disk from causing retries.
        ack_timeout_ms: (config.request_timeout_ms / 4).max(2_000),
        ..BridgeConfig::default()
    };
    bridge_config.jetstream.replicas = config.replicas;
    bridge_config.circuit_breaker.enabled = false;
    bridge_config.validate()?;

    // Everything that is not the bridge exists before the baseline.
    let op = ops::authorize();
    let subject = subjects::render(&bridge_config.subject_template(op), &config.merchant, "default")?;
    let stream_name = bridge_config.stream_name(op.family);
    let responder = async_nats::ConnectOptions::new()
        .name(format!("{}-responder", config.connection_name))
        .ignore_discovered_servers()
        .connect(bridge_config.server_urls())
        .await?;
    let js = jetstream::new(responder.clone());
    let stream = js.get_stream(&stream_name).await?;
    let durable = format!("bench_mem_{}", std::process::id());
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: subject,
            deliver_policy: DeliverPolicy::New,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    // The requests stay where they are; each call's task holds only a shared pointer and an
    // index besides the bridge's call itself, so the caller adds nothing but the task header.
    let requests: Arc<Vec<OperationRequest>> = Arc::new(
        (0..n)
            .map(|i| {
                OperationRequest::new(op, config.merchant.as_str(), format!("mem_{i}"), format!("mem_{i}_1"))
                    .router_data(json!({ "amount": 100, "currency": "USD" }))
            })
            .collect(),
    );
    let mut calls = Vec::with_capacity(n);
    let (rss_base_kib, hwm_base_kib) = rss_kib()?;

    let bridge = Bridge::connect(bridge_config).await?;
    let (rss_connected_kib, _) = rss_kib()?;
    let call_future_bytes = requests.first().map_or(0, |r| std::mem::size_of_val(&bridge.call(r)));

    let fill_started = Instant::now();
    let fill_deadline = fill_started + deadline;
    let mut started = 0usize;
    while started < n {
        let wave = config.wave.max(1).min(n - started);
        for i in started..started + wave {
            let bridge = bridge.clone();
            let requests = requests.clone();
            calls.push(tokio::spawn(async move { bridge.call(&requests[i]).await.map(|r| r.status == ResponseStatus::Success) }));
        }
        started += wave;
        poll(fill_deadline, "every call of the wave to be published", || {
            if let Some(done) = calls.iter().position(|c| c.is_finished()) {
                return Err(format!("call {done} ended while its reply was held back"));
            }
            Ok(bridge.stats().published >= started as u64 && bridge.in_flight() >= started)
        })
        .await?;
    }
    let fill_ms = fill_started.elapsed().as_millis() as u64;
    let waiting_at_sample = bridge.in_flight();
    let published_at_sample = bridge.stats().published;
    let (rss_in_flight_kib, hwm_in_flight_kib) = rss_kib()?;
    let connections = connz::count(&config.monitoring_urls, &config.connection_name).await?;

    // Release: the responder starts pulling; every held call must complete.
    let released = Instant::now();
    let echo = super::echo(responder.clone(), consumer).await;
    let joined = tokio::time::timeout(deadline, futures::future::join_all(calls))
        .await
        .map_err(|_| format!("not every call completed within {deadline:?} of the release"))?;
    let release_ms = released.elapsed().as_millis() as u64;
    let (mut completed, mut success, mut errors) = (0, 0, 0);
    for result in joined {
        match result {
            Ok(Ok(ok)) => {
                completed += 1;
                success += usize::from(ok);
            }
            Ok(Err(e)) => {
                errors += 1;
                tracing::warn!(error = %e, "held call failed");
            }
            Err(_) => errors += 1,
        }
    }
    let (rss_after_kib, _) = rss_kib()?;
    echo.abort();
    let _ = stream.delete_consumer(&durable).await;

    let growth_kib = rss_in_flight_kib.saturating_sub(rss_base_kib);
    Ok(MemoryReport {
        method: format!(
            "a separate harness process holding only the bridge under test, {n} pre-built requests, \
             an idle responder connection and the tokio runtime; NATS, the processor and the \
             workers run in other processes; each call runs in its own task holding the call's \
             future and an index into the pre-built requests; growth = resident set (VmRSS) with \
             every call published and waiting for its reply minus the resident set before the \
             bridge connected"
        ),
        calls: n,
        waiting_at_sample,
        published_at_sample,
        request_timeout_ms: config.request_timeout_ms,
        rss_base_kib,
        rss_connected_kib,
        rss_in_flight_kib,
        rss_after_kib,
        hwm_base_kib,
        hwm_in_flight_kib,
        growth_kib,
        peak_growth_kib: hwm_in_flight_kib.saturating_sub(rss_base_kib),
        idle_bridge_kib: rss_connected_kib.saturating_sub(rss_base_kib),
        call_future_bytes,
        per_call_bytes: rss_in_flight_kib.saturating_sub(rss_connected_kib) * 1024 / n.max(1) as u64,
        fill_ms,
        release_ms,
        completed,
        success,
        errors,
        connections,
    })
}

/// Runs the probe in the child process and prints its result line.
pub async fn probe_main(json: &str) -> Result<(), CliError> {
    let config: ProbeConfig = serde_json::from_str(json).map_err(|e| format!("invalid memory probe config: {e}"))?;
    let report = probe(config).await?;
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Starts `exe bench --memory-probe <config>` and reads its result.
pub async fn measure(exe: &Path, config: &ProbeConfig) -> Result<MemoryReport, CliError> {
    let child = tokio::process::Command::new(exe)
        .arg("bench")
        .arg("--memory-probe")
        .arg(serde_json::to_string(config)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the memory probe {}: {e}", exe.display()))?;
    // Filling and draining each have the deadline; startup and connect get a minute more.
    let limit = Duration::from_secs(config.deadline_secs * 2 + 60);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("the memory probe did not finish within {limit:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("the memory probe failed ({}); its errors are above", out.status).into());
    }
    let line = stdout.lines().find_map(|l| l.strip_prefix(RESULT_PREFIX)).ok_or("the memory probe printed no result")?;
    Ok(serde_json::from_str(line).map_err(|e| format!("unreadable memory probe result: {e}"))?)
}
