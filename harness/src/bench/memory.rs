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

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use nats_bridge::{catalogue::ops, subjects, Bridge, BridgeConfig, OperationRequest, ResponseStatus};
use serde_json::json;
use tokio::time::Instant;

use super::connz::{self, ConnCount, ConnzError};

/// Marks the probe's result line on its standard output.
const RESULT_PREFIX: &str = "memory-probe ";

/// Why the probe (the child process) could not measure.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The configuration passed on the command line is not a probe configuration.
    #[error("invalid memory probe config: {0}")]
    InvalidConfig(serde_json::Error),
    /// The bridge configuration built from it is invalid.
    #[error(transparent)]
    BridgeConfig(nats_bridge::config::ConfigError),
    /// The authorize subject could not be rendered for the probe's merchant.
    #[error("{0}")]
    Subject(String),
    /// The responder could not connect to NATS.
    #[error(transparent)]
    Connect(async_nats::ConnectError),
    /// The payments stream could not be read.
    #[error(transparent)]
    Stream(jetstream::context::GetStreamError),
    /// The responder's consumer could not be created.
    #[error(transparent)]
    Consumer(jetstream::stream::ConsumerError),
    /// The bridge under test could not connect.
    #[error(transparent)]
    Bridge(nats_bridge::ConnectError),
    /// `/proc/self/status` could not be read.
    #[error("cannot read /proc/self/status: {0}")]
    ReadStatus(std::io::Error),
    /// `/proc/self/status` has no such field.
    #[error("no {0} in /proc/self/status")]
    StatusField(String),
    /// A call ended while its reply was held back.
    #[error("call {0} ended while its reply was held back")]
    CallEnded(usize),
    /// Something the probe waits for did not happen in time.
    #[error("timed out waiting for {0}")]
    TimedOut(String),
    /// The bridge's connections could not be counted.
    #[error(transparent)]
    Connections(ConnzError),
    /// Not every call completed within the deadline once the replies were released.
    #[error("not every call completed within {0:?} of the release")]
    NotDrained(Duration),
    /// The report could not be encoded.
    #[error(transparent)]
    Encode(serde_json::Error),
}

/// Why the probe process could not be run or read.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The probe configuration could not be encoded.
    #[error(transparent)]
    Encode(serde_json::Error),
    /// The probe process could not be started.
    #[error("cannot start the memory probe {}: {source}", .exe.display())]
    Start {
        /// The harness executable run as the probe.
        exe: PathBuf,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// The probe process did not finish in time.
    #[error("the memory probe did not finish within {0:?}")]
    Unfinished(Duration),
    /// Waiting for the probe process failed.
    #[error(transparent)]
    Wait(std::io::Error),
    /// The probe process failed; it printed its errors on standard error.
    #[error("the memory probe failed ({0}); its errors are above")]
    Failed(ExitStatus),
    /// The probe process printed no result line.
    #[error("the memory probe printed no result")]
    NoResult,
    /// The probe process's result line could not be read.
    #[error("unreadable memory probe result: {0}")]
    UnreadableResult(serde_json::Error),
}

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
pub fn rss_kib() -> Result<(u64, u64), ProbeError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(ProbeError::ReadStatus)?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| ProbeError::StatusField(name.to_string()))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Polls `check` every 10 ms until it returns `Ok(true)`, fails, or `deadline` passes.
async fn poll(deadline: Instant, what: &str, mut check: impl FnMut() -> Result<bool, ProbeError>) -> Result<(), ProbeError> {
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ProbeError::TimedOut(what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The probe itself: runs in the child process and returns its numbers.
pub async fn probe(config: ProbeConfig) -> Result<MemoryReport, ProbeError> {
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
    bridge_config.validate().map_err(ProbeError::BridgeConfig)?;

    // Everything that is not the bridge exists before the baseline.
    let op = ops::authorize();
    let subject = subjects::render(&bridge_config.subject_template(op), &config.merchant, "default").map_err(ProbeError::Subject)?;
    let stream_name = bridge_config.stream_name(op.family);
    let responder = async_nats::ConnectOptions::new()
        .name(format!("{}-responder", config.connection_name))
        .ignore_discovered_servers()
        .connect(bridge_config.server_urls())
        .await
        .map_err(ProbeError::Connect)?;
    let js = jetstream::new(responder.clone());
    let stream = js.get_stream(&stream_name).await.map_err(ProbeError::Stream)?;
    let durable = format!("bench_mem_{}", std::process::id());
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: subject,
            deliver_policy: DeliverPolicy::New,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(ProbeError::Consumer)?;
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

    let bridge = Bridge::connect(bridge_config).await.map_err(ProbeError::Bridge)?;
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
                return Err(ProbeError::CallEnded(done));
            }
            Ok(bridge.stats().published >= started as u64 && bridge.in_flight() >= started)
        })
        .await?;
    }
    let fill_ms = fill_started.elapsed().as_millis() as u64;
    let waiting_at_sample = bridge.in_flight();
    let published_at_sample = bridge.stats().published;
    let (rss_in_flight_kib, hwm_in_flight_kib) = rss_kib()?;
    let connections = connz::count(&config.monitoring_urls, &config.connection_name).await.map_err(ProbeError::Connections)?;

    // Release: the responder starts pulling; every held call must complete.
    let released = Instant::now();
    let echo = super::echo(responder.clone(), consumer).await;
    let joined = tokio::time::timeout(deadline, futures::future::join_all(calls)).await.map_err(|_| ProbeError::NotDrained(deadline))?;
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
pub async fn probe_main(json: &str) -> Result<(), ProbeError> {
    let config: ProbeConfig = serde_json::from_str(json).map_err(ProbeError::InvalidConfig)?;
    let report = probe(config).await?;
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&report).map_err(ProbeError::Encode)?);
    Ok(())
}

/// Starts `exe bench --memory-probe <config>` and reads its result.
pub async fn measure(exe: &Path, config: &ProbeConfig) -> Result<MemoryReport, MeasureError> {
    let child = tokio::process::Command::new(exe)
        .arg("bench")
        .arg("--memory-probe")
        .arg(serde_json::to_string(config).map_err(MeasureError::Encode)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MeasureError::Start { exe: exe.to_path_buf(), source })?;
    // Filling and draining each have the deadline; startup and connect get a minute more.
    let limit = Duration::from_secs(config.deadline_secs * 2 + 60);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| MeasureError::Unfinished(limit))?
        .map_err(MeasureError::Wait)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(MeasureError::Failed(out.status));
    }
    let line = stdout.lines().find_map(|l| l.strip_prefix(RESULT_PREFIX)).ok_or(MeasureError::NoResult)?;
    serde_json::from_str(line).map_err(MeasureError::UnreadableResult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_before_they_were_typed() {
        let not_found = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let start = MeasureError::Start { exe: "/x/harness".into(), source: not_found() };
        assert_eq!(start.to_string(), format!("cannot start the memory probe /x/harness: {}", not_found()));
        assert_eq!(MeasureError::Unfinished(Duration::from_secs(300)).to_string(), "the memory probe did not finish within 300s");
        assert_eq!(ProbeError::StatusField("VmRSS:".into()).to_string(), "no VmRSS: in /proc/self/status");
        assert_eq!(ProbeError::NotDrained(Duration::from_secs(120)).to_string(), "not every call completed within 120s of the release");
        assert_eq!(ProbeError::CallEnded(7).to_string(), "call 7 ended while its reply was held back");
    }
}
