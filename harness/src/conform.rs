//! Worker conformance kit: the worker-facing checks, run against any worker program.
//!
//! [`run`] starts one NATS node, the mock processor and the bridge (streams provisioned), then
//! starts the worker as a shell command with `NATS_URL` and `PROCESSOR_URL` in its environment,
//! waits until it has a consumer on every durable subject and answers a query, and runs the
//! checks in order:
//!
//! | check | what must hold |
//! |---|---|
//! | `ready` | the worker consumes every durable subject and answers queries within the deadline |
//! | `durable_operations` | each durable operation answers `success`, echoing the correlation, merchant and payment ids, with exactly one processor effect under its idempotency key |
//! | `automatic_capture` | a `payments.authorize` with `capture_method: automatic` is charged in one call: `success`, one processor effect that authorized and captured the whole amount, and the reply's `connector_response` says so (`captured_amount`) |
//! | `queries` | each query answers `success` on the request's reply subject, with no processor effect |
//! | `duplicate_lookup` | the same operation published again (a JetStream duplicate) gets the first result through the reply lookup, with no new effect |
//! | `redelivery` | a stored request delivered again gets the stored result, with no new effect |
//! | `reused_key` | the same idempotency key for another request is refused (`IDEMPOTENCY_KEY_REUSED`), with no effect |
//! | `replay` | every stored request of the run delivered again, in order: the same results, no new effect |
//! | `dead_letter` | a message that is not a request reaches the dead-letter stream with its reason, and is terminated |
//! | `ack_after_reply` | every durable message was acked, and only after its reply was published |
//! | `worker_alive` | the worker process ran to the end |
//!
//! `ack_after_reply` reads a tap: one subscription to `>` on its own connection, which sees the
//! replies and the `$JS.ACK` messages in the order the server routed them. A reply published
//! and flushed before the ack is routed first, whatever connections the worker uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use hs_fixtures::{operations, CaptureMethod, Fixtures};
use mock_processor::ProcessorConfig;
use nats_bridge::catalogue::{self, Pattern};
use nats_bridge::{headers, subjects, Bridge, BridgeConfig, Operation, OperationRequest, ResponseEnvelope, ResponseStatus};
use serde::Serialize;
use tracing::info;

use crate::env::{Environment, EnvironmentConfig};
use crate::nats::EnvConfig;
use crate::scenario::checkers::AuditMessage;
use crate::scenario::observe;

/// Why the kit could not run (a worker that fails the checks is a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ConformError {
    /// NATS, the processor or the bridge did not start.
    #[error("cannot start the environment: {0}")]
    Environment(String),
    /// The worker command could not be started at all.
    #[error("cannot start the worker command {command:?}: {reason}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        reason: String,
    },
    /// The report directory could not be written.
    #[error("cannot write the report to {path}: {reason}")]
    Report {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ConformConfig {
    /// The worker program, run by `sh -c` in its own process group.
    pub worker_cmd: String,
    /// Where the worker's output and the report go.
    pub dir: PathBuf,
    /// How long the worker may take to subscribe and answer a first query.
    pub ready_timeout: Duration,
    /// How long one call may wait for its reply.
    pub call_timeout: Duration,
    /// Seeds the payment data.
    pub seed: u64,
    /// The NATS server (one node; the backend is chosen as everywhere else).
    pub nats: EnvConfig,
}

impl Default for ConformConfig {
    fn default() -> Self {
        ConformConfig {
            worker_cmd: String::new(),
            dir: std::env::temp_dir().join(format!("conform-{}", uuid::Uuid::new_v4().simple())),
            ready_timeout: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
            seed: 1,
            nats: EnvConfig::single(),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The check's name (see the module table).
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// What was seen: counts when it held, the named reason when not.
    pub detail: String,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ConformReport {
    /// The worker command.
    pub worker_cmd: String,
    /// The data seed.
    pub seed: u64,
    /// Every check, in the order run.
    pub checks: Vec<Check>,
    /// The worker's stdout and stderr.
    pub worker_log: PathBuf,
    /// Wall time of the run, seconds.
    pub duration_s: f64,
}

impl ConformReport {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The pass/fail table, for a terminal.
    pub fn table(&self) -> String {
        let mut out = format!("worker: {}\nseed: {}\n\n", self.worker_cmd, self.seed);
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(5).max(5);
        out.push_str(&format!("{:<width$}  result  detail\n", "check"));
        for c in &self.checks {
            let verdict = if c.passed { "PASS" } else { "FAIL" };
            out.push_str(&format!("{:<width$}  {verdict:<6}  {}\n", c.name, c.detail.replace('\n', "; ")));
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        out.push_str(&format!(
            "\n{}: {} of {} checks held ({:.1} s); worker log: {}\n",
            if self.passed() { "CONFORMS" } else { "DOES NOT CONFORM" },
            self.checks.len() - failed,
            self.checks.len(),
            self.duration_s,
            self.worker_log.display()
        ));
        out
    }

    /// Writes `summary.md` and `summary.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), ConformError> {
        let err = |e: std::io::Error| ConformError::Report { path: dir.display().to_string(), reason: e.to_string() };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut md = String::from("# Worker conformance\n\n");
        md.push_str(&format!(
            "- worker: `{}`\n- seed: {}\n- verdict: **{}**\n- duration: {:.1} s\n- worker log: `{}`\n\n",
            self.worker_cmd,
            self.seed,
            if self.passed() { "conforms" } else { "does not conform" },
            self.duration_s,
            self.worker_log.display()
        ));
        md.push_str("| check | result | detail |\n|---|---|---|\n");
        for c in &self.checks {
            md.push_str(&format!(
                "| `{}` | {} | {} |\n",
                c.name,
                if c.passed { "PASS" } else { "FAIL" },
                c.detail.replace('\n', "<br>").replace('|', "\\|")
            ));
        }
        std::fs::write(dir.join("summary.md"), md).map_err(err)?;
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "worker_cmd": self.worker_cmd,
            "seed": self.seed,
            "passed": self.passed(),
            "duration_s": self.duration_s,
            "checks": self.checks,
        }))
        .expect("a report serialises");
        std::fs::write(dir.join("summary.json"), json).map_err(err)?;
        Ok(())
    }
}

/// The worker program, in its own process group so the whole group can be stopped.
struct WorkerCommand {
    child: tokio::process::Child,
    /// The process group (the shell's pid): a shell that forks the worker exits on SIGTERM
    /// before the worker does, so the group, not the shell, is what must be gone.
    group: Option<u32>,
}

impl WorkerCommand {
    fn spawn(command: &str, log: &Path, nats_url: &str, processor_url: &str) -> Result<WorkerCommand, ConformError> {
        let spawn_err = |e: std::io::Error| ConformError::Spawn { command: command.to_string(), reason: e.to_string() };
        let out = std::fs::File::create(log).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("NATS_URL", nats_url)
            .env("PROCESSOR_URL", processor_url)
            .env("WORKER_NAME", "conform")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let group = child.id();
        Ok(WorkerCommand { child, group })
    }

    /// `None` while running; the exit status once it ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal_group(&self, signal: &str) -> bool {
        let Some(group) = self.group else { return false };
        std::process::Command::new("kill")
            .args([signal, "--", &format!("-{group}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM to the group, then SIGKILL if any of it is still there after a grace period.
    async fn stop(&mut self) {
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        // `kill -0` succeeds while any process of the group is alive.
        while self.signal_group("-0") && Instant::now() < deadline {
            let _ = self.child.try_wait();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.signal_group("-0") {
            self.signal_group("-KILL");
        }
        let _ = self.child.wait().await;
        self.group = None;
    }
}

impl Drop for WorkerCommand {
    fn drop(&mut self) {
        self.signal_group("-KILL");
    }
}

/// One message the tap saw, in routing order.
#[derive(Debug, Clone)]
struct Tapped {
    subject: String,
    /// `X-Correlation-Id` of replies, parsed from the body.
    correlation_id: Option<String>,
    /// The body, for acks (`+ACK`, `+WPI`, `-NAK`, `+TERM`...).
    ack_body: Option<String>,
}

/// Every message on the server, in order (acks, replies, deliveries, requests).
struct Tap {
    seen: Arc<Mutex<Vec<Tapped>>>,
    client: async_nats::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    async fn start(client: async_nats::Client) -> Result<Tap, String> {
        let mut sub = client.subscribe(">").await.map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        let seen: Arc<Mutex<Vec<Tapped>>> = Arc::default();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let subject = m.subject.to_string();
                let ack_body = subject.starts_with("$JS.ACK.").then(|| String::from_utf8_lossy(&m.payload).into_owned());
                let correlation_id = if subject.starts_with("_INBOX.") {
                    serde_json::from_slice::<ResponseEnvelope>(&m.payload).ok().map(|r| r.correlation_id)
                } else {
                    None
                };
                sink.lock().expect("tap").push(Tapped { subject, correlation_id, ack_body });
            }
        });
        Ok(Tap { seen, client, task })
    }

    /// Waits until the tap has seen everything published before this call.
    async fn drain(&self) -> Result<(), String> {
        let marker = format!("conform.marker.{}", uuid::Uuid::new_v4().simple());
        self.client.publish(marker.clone(), "".into()).await.map_err(|e| e.to_string())?;
        self.client.flush().await.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.seen.lock().expect("tap").iter().rev().any(|t| t.subject == marker) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("the tap did not catch up within 10 s".into())
    }

    fn snapshot(&self) -> Vec<Tapped> {
        self.seen.lock().expect("tap").clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(stream, stream sequence, body)` of an ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...`
/// (v1, 9 tokens) or `$JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>...` (v2).
fn parse_ack(subject: &str) -> Option<(String, u64)> {
    let t: Vec<&str> = subject.split('.').collect();
    let (stream, seq) = match t.len() {
        9 => (t[2], t[5]),
        n if n >= 11 => (t[4], t[7]),
        _ => return None,
    };
    Some((stream.to_string(), seq.parse().ok()?))
}

/// A final ack: the message is done (`+ACK`, empty) or terminated (`+TERM`). Progress and nak
/// are not final.
fn final_ack(body: &str) -> Option<&'static str> {
    let b = body.trim();
    if b.is_empty() || b.starts_with("+ACK") {
        Some("ack")
    } else if b.starts_with("+TERM") {
        Some("term")
    } else {
        None
    }
}

/// The durable operations no consumer of the worker covers yet.
async fn uncovered(js: &jetstream::Context, config: &BridgeConfig) -> Result<Vec<&'static str>, String> {
    let mut filters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for family in catalogue::durable_families() {
        let name = config.stream_name(family);
        let stream = js.get_stream(&name).await.map_err(|e| format!("stream {name}: {e}"))?;
        let mut consumers = stream.consumers();
        let entry = filters.entry(name.clone()).or_default();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| format!("consumers of {name}: {e}"))?;
            if info.config.filter_subject.is_empty() && info.config.filter_subjects.is_empty() {
                entry.push(">".into());
            }
            if !info.config.filter_subject.is_empty() {
                entry.push(info.config.filter_subject.clone());
            }
            entry.extend(info.config.filter_subjects.iter().cloned());
        }
    }
    Ok(catalogue::all()
        .filter(|op| op.pattern == Pattern::Durable)
        .filter(|op| {
            let subject = subjects::wildcard(&config.subject_template(op)).replace('*', "m");
            let fs = filters.get(&config.stream_name(op.family)).map(Vec::as_slice).unwrap_or(&[]);
            !fs.iter().any(|f| subjects::matches(f, &subject))
        })
        .map(|op| op.name)
        .collect())
}

/// What the run learnt about each answered durable operation.
#[derive(Debug, Clone)]
struct Answered {
    op: Operation,
    request: OperationRequest,
    response: ResponseEnvelope,
}

/// Everything the checks share.
struct Run {
    env: Environment,
    bridge: Bridge,
    js: jetstream::Context,
    /// The kit's own connection, for copies of stored requests and their replies.
    client: async_nats::Client,
    call_timeout: Duration,
}

impl Run {
    async fn call(&self, request: &OperationRequest) -> Result<ResponseEnvelope, String> {
        match tokio::time::timeout(self.call_timeout, self.bridge.call(request)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no reply within {} s", self.call_timeout.as_secs())),
        }
    }

    fn effects(&self) -> usize {
        self.env.processor().ledger().len()
    }

    /// Publishes copies of the stored messages `seqs` of `stream` (new message ids, replies to
    /// our own inbox) and returns each copy's reply, in order, or why it has none.
    async fn deliver_again(&self, stream: &str, seqs: &[u64]) -> Result<Vec<(u64, Result<ResponseEnvelope, String>)>, String> {
        let s = self.js.get_stream(stream).await.map_err(|e| format!("stream {stream}: {e}"))?;
        let prefix = format!("_INBOX.conform.{}", uuid::Uuid::new_v4().simple());
        let mut replies = self.client.subscribe(format!("{prefix}.>")).await.map_err(|e| e.to_string())?;
        // The copies go out on another connection: the server must know the subscription
        // before a worker can answer one.
        self.client.flush().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for (i, seq) in seqs.iter().enumerate() {
            let stored = s.get_raw_message(*seq).await.map_err(|e| format!("{stream} #{seq}: {e}"))?;
            let mut h = stored.headers.clone();
            let inbox = format!("{prefix}.{i}");
            h.insert(headers::NATS_MSG_ID, format!("conform-copy-{}-{seq}", uuid::Uuid::new_v4().simple()));
            h.insert(headers::REPLY_TO, inbox.as_str());
            let published = async { self.js.publish_with_headers(stored.subject.to_string(), h, stored.payload.clone()).await?.await };
            if let Err(e) = published.await {
                out.push((*seq, Err(format!("copy not stored: {e}"))));
                continue;
            }
            let reply = tokio::time::timeout(self.call_timeout, replies.next()).await;
            let reply = match reply {
                Ok(Some(m)) if m.subject.as_str() == inbox => {
                    serde_json::from_slice::<ResponseEnvelope>(&m.payload).map_err(|e| format!("reply is not a ResponseEnvelope: {e}"))
                }
                Ok(Some(m)) => Err(format!("a reply arrived on {} instead of {inbox}", m.subject)),
                Ok(None) => Err("the reply subscription closed".into()),
                Err(_) => Err(format!("no reply within {} s", self.call_timeout.as_secs())),
            };
            out.push((*seq, reply));
        }
        Ok(out)
    }
}

fn check(name: &'static str, failures: Vec<String>, ok: String) -> Check {
    if failures.is_empty() {
        Check { name, passed: true, detail: ok }
    } else {
        let shown: Vec<String> = failures.iter().take(3).cloned().collect();
        let more = failures.len().saturating_sub(shown.len());
        let mut detail = shown.join("\n");
        if more > 0 {
            detail.push_str(&format!("\n... and {more} more"));
        }
        Check { name, passed: false, detail }
    }
}

/// The echo problems of a reply, if any.
fn echo_problems(request: &OperationRequest, r: &ResponseEnvelope) -> Vec<String> {
    let env = request.envelope();
    let mut out = Vec::new();
    if r.correlation_id != env.correlation_id {
        out.push(format!("correlation_id {:?} is not the request's", r.correlation_id));
    }
    if r.merchant_id.as_deref().is_some_and(|m| m != env.merchant_id) {
        out.push(format!("merchant_id {:?} is not the request's", r.merchant_id));
    }
    if r.payment_id.as_deref().is_some_and(|p| p != env.payment_id) {
        out.push(format!("payment_id {:?} is not the request's", r.payment_id));
    }
    out
}

fn status_text(r: &ResponseEnvelope) -> String {
    match &r.error {
        Some(e) => format!("{:?} ({}: {})", r.status, e.code, e.message),
        None => format!("{:?}", r.status),
    }
}

/// Runs the kit against `config.worker_cmd`. A worker that fails checks gives a report with
/// failed rows; an error means the kit itself could not run.
pub async fn run(config: ConformConfig) -> Result<ConformReport, ConformError> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.dir)
        .map_err(|e| ConformError::Report { path: config.dir.display().to_string(), reason: e.to_string() })?;
    let worker_log = config.dir.join("worker.log");
    let mut bridge_config = BridgeConfig::default();
    // Every check must reach the worker: a worker that times out must not close the breaker
    // on the checks that follow.
    bridge_config.circuit_breaker.enabled = false;
    let env = Environment::start(EnvironmentConfig {
        nats: config.nats.clone(),
        bridge: bridge_config,
        workers: 0,
        processor: ProcessorConfig::default(),
        ..Default::default()
    })
    .await
    .map_err(|e| ConformError::Environment(e.to_string()))?;
    let client = env.nats().connect().await.map_err(|e| ConformError::Environment(e.to_string()))?;
    let tap_client = env.nats().connect().await.map_err(|e| ConformError::Environment(e.to_string()))?;
    let tap = Tap::start(tap_client).await.map_err(ConformError::Environment)?;
    let bridge = env.bridge().clone();
    let run = Run { js: bridge.jetstream().clone(), bridge, client, env, call_timeout: config.call_timeout };
    info!(command = %config.worker_cmd, seed = config.seed, "conformance run");
    let mut worker = WorkerCommand::spawn(&config.worker_cmd, &worker_log, &run.env.nats().client_url(), &run.env.processor_url())?;

    let mut checks = Vec::new();
    let ready = wait_ready(&run, &mut worker, config.ready_timeout).await;
    let is_ready = ready.passed;
    checks.push(ready);
    if is_ready {
        let mut fx = Fixtures::new(config.seed);
        let sample = manual(fx.sample());
        let (answered, c) = durable_operations(&run, &sample, &mut fx).await;
        checks.push(c);
        checks.push(automatic_capture(&run, &mut fx).await);
        checks.push(queries(&run, &sample, &mut fx).await);
        checks.push(duplicate_lookup(&run, &answered).await);
        checks.push(redelivery(&run, &answered).await);
        checks.push(reused_key(&run, &answered).await);
        checks.push(replay(&run, &answered).await);
        checks.push(dead_letter(&run, &tap).await);
        checks.push(ack_after_reply(&run, &tap).await);
    }
    checks.push(match worker.exited() {
        None => Check { name: "worker_alive", passed: true, detail: "running at the end of the run".into() },
        Some(status) => {
            Check { name: "worker_alive", passed: false, detail: format!("the worker exited during the run ({status}); see its log") }
        }
    });
    worker.stop().await;
    Ok(ConformReport {
        worker_cmd: config.worker_cmd.clone(),
        seed: config.seed,
        checks,
        worker_log,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

async fn wait_ready(run: &Run, worker: &mut WorkerCommand, timeout: Duration) -> Check {
    let deadline = Instant::now() + timeout;
    let probe_op = catalogue::ops::payment_sync();
    let mut last;
    loop {
        if let Some(status) = worker.exited() {
            return Check {
                name: "ready",
                passed: false,
                detail: format!("the worker exited before it was ready ({status}); see its log"),
            };
        }
        match uncovered(&run.js, run.bridge.config()).await {
            Ok(missing) if missing.is_empty() => {
                let probe =
                    OperationRequest::new(probe_op, "merchant_conform", "pay_probe", format!("probe_{}", uuid::Uuid::new_v4().simple()));
                match tokio::time::timeout(Duration::from_secs(2), run.bridge.call(&probe)).await {
                    Ok(Ok(_)) => {
                        return Check {
                            name: "ready",
                            passed: true,
                            detail: format!(
                                "consumers on all durable subjects and a query answered after {:.1} s",
                                (timeout - deadline.saturating_duration_since(Instant::now())).as_secs_f64()
                            ),
                        }
                    }
                    Ok(Err(e)) => last = format!("the probe query failed: {e}"),
                    Err(_) => last = "the probe query was not answered within 2 s".into(),
                }
            }
            Ok(missing) => last = format!("no consumer covers {} durable operation(s), e.g. {}", missing.len(), missing[0]),
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Check { name: "ready", passed: false, detail: format!("not ready after {} s: {last}", timeout.as_secs()) };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `sample` with manual capture: the happy paths of capture and void need an authorization
/// that captured nothing (automatic capture is checked on its own, [`automatic_capture`]).
fn manual(mut sample: hs_fixtures::Sample) -> hs_fixtures::Sample {
    sample.payment.capture_method = CaptureMethod::Manual;
    sample
}

/// The request of `op`'s happy path and the calls that must succeed before it (on the mock
/// processor a void needs an uncaptured authorization, a payout must exist before it is
/// fulfilled, cancelled or read).
fn happy_path(op: Operation, sample: &hs_fixtures::Sample, fx: &mut Fixtures) -> (OperationRequest, Vec<OperationRequest>) {
    let payout = |s: &hs_fixtures::Sample| {
        let create = catalogue::find("payouts.create").expect("payouts.create is in the catalogue");
        OperationRequest::new(create, &s.merchant.merchant_id, operations::payment_id(create, s), operations::instance_id(op, s))
            .router_data(operations::router_data(create, s))
    };
    match op.name {
        "payments.void" => {
            let fresh = manual(fx.sample());
            (operations::request(op, &fresh), vec![operations::request(catalogue::ops::authorize(), &fresh)])
        }
        "payouts.fulfill" | "payouts.cancel" | "payouts.sync" => (operations::request(op, sample), vec![payout(sample)]),
        _ => (operations::request(op, sample), Vec::new()),
    }
}

/// Runs the prerequisites of a call; the reason when one did not succeed.
async fn prerequisites(run: &Run, op: Operation, calls: &[OperationRequest]) -> Result<(), String> {
    for p in calls {
        let name = p.operation().name;
        match run.call(p).await {
            Ok(r) if r.status == ResponseStatus::Success => {}
            Ok(r) => return Err(format!("{}: its prerequisite {name} answered {}", op.name, status_text(&r))),
            Err(e) => return Err(format!("{}: its prerequisite {name}: {e}", op.name)),
        }
    }
    Ok(())
}

async fn durable_operations(run: &Run, sample: &hs_fixtures::Sample, fx: &mut Fixtures) -> (Vec<Answered>, Check) {
    let mut answered = Vec::new();
    let mut failures = Vec::new();
    let durable: Vec<Operation> = catalogue::all().filter(|op| op.pattern == Pattern::Durable).collect();
    for op in &durable {
        let (request, before) = happy_path(op, sample, fx);
        if let Err(e) = prerequisites(run, op, &before).await {
            failures.push(e);
            continue;
        }
        match run.call(&request).await {
            Err(e) => failures.push(format!("{}: {e}", op.name)),
            Ok(r) => {
                let mut problems = echo_problems(&request, &r);
                let effects = run.env.processor().effects_by_key(&request.envelope().idempotency_key).len();
                if r.status != ResponseStatus::Success {
                    problems.push(format!("status {}", status_text(&r)));
                } else if effects != 1 {
                    problems.push(format!("{effects} processor effects under its idempotency key, expected 1"));
                }
                if problems.is_empty() {
                    answered.push(Answered { op, request, response: r });
                } else {
                    failures.push(format!("{}: {}", op.name, problems.join(", ")));
                }
            }
        }
    }
    let ok = format!("{} of {} answered success with one effect each", answered.len(), durable.len());
    (answered, check("durable_operations", failures, ok))
}

/// An authorization with automatic capture is a charge in one call: one effect that authorized
/// and captured the whole amount, and a reply that says so, since the orchestrator reads the
/// capture from it (`connector_response.captured_amount`) and would otherwise capture again.
async fn automatic_capture(run: &Run, fx: &mut Fixtures) -> Check {
    let mut sample = fx.sample();
    sample.payment.capture_method = CaptureMethod::Automatic;
    let op = catalogue::ops::authorize();
    let request = operations::request(op, &sample);
    let env = request.envelope();
    let amount = env.router_data["amount"].as_i64().unwrap_or_default();
    let mut failures = Vec::new();
    match run.call(&request).await {
        Err(e) => failures.push(format!("{}: {e}", op.name)),
        Ok(r) => {
            failures.extend(echo_problems(&request, &r));
            let effects = run.env.processor().effects_by_key(&env.idempotency_key);
            let account = run.env.processor().account(&env.merchant_id, &env.payment_id);
            let captured = account.as_ref().map(|a| (a.authorized, a.captured));
            if r.status != ResponseStatus::Success {
                failures.push(format!("status {}", status_text(&r)));
            } else if effects.len() != 1 {
                failures.push(format!("{} processor effects under its idempotency key, expected 1", effects.len()));
            } else if captured != Some((amount, amount)) {
                failures.push(format!(
                    "the processor account (authorized, captured) is {captured:?}, expected ({amount}, {amount}): was capture_method passed on to the processor?"
                ));
            } else if r.connector_response["captured_amount"].as_i64() != Some(amount) {
                failures.push(format!(
                    "the reply's connector_response.captured_amount is {}, expected {amount}: pass the processor's effect on as connector_response",
                    r.connector_response["captured_amount"]
                ));
            }
        }
    }
    check("automatic_capture", failures, format!("authorized and captured {amount} in one call, one effect"))
}

async fn queries(run: &Run, sample: &hs_fixtures::Sample, fx: &mut Fixtures) -> Check {
    let mut failures = Vec::new();
    let mut changed = 0;
    let queries: Vec<Operation> = catalogue::all().filter(|op| op.pattern == Pattern::Query).collect();
    for op in &queries {
        let (request, setup) = happy_path(op, sample, fx);
        if let Err(e) = prerequisites(run, op, &setup).await {
            failures.push(e);
            continue;
        }
        let before = run.effects();
        let result = run.call(&request).await;
        changed += run.effects() - before;
        match result {
            Err(e) => failures.push(format!("{}: {e}", op.name)),
            Ok(r) => {
                let mut problems = echo_problems(&request, &r);
                if r.status != ResponseStatus::Success {
                    problems.push(format!("status {}", status_text(&r)));
                }
                if !problems.is_empty() {
                    failures.push(format!("{}: {}", op.name, problems.join(", ")));
                }
            }
        }
    }
    if changed != 0 {
        failures.push(format!("queries added {changed} processor effect(s): a query must never move money"));
    }
    check("queries", failures, format!("{} of {} answered success, no processor effect", queries.len(), queries.len()))
}

fn first<'a>(answered: &'a [Answered], name: &str) -> Option<&'a Answered> {
    answered.iter().find(|a| a.op.name == name).or_else(|| answered.first())
}

async fn duplicate_lookup(run: &Run, answered: &[Answered]) -> Check {
    let Some(a) = first(answered, "payments.authorize") else {
        return Check { name: "duplicate_lookup", passed: false, detail: "no durable operation succeeded to repeat".into() };
    };
    let before = run.effects();
    let failures = match run.call(&a.request).await {
        Err(e) => vec![format!("{} repeated: {e}", a.op.name)],
        Ok(r) if r.transaction_id != a.response.transaction_id || r.status != a.response.status => vec![format!(
            "{} repeated: answered {} with transaction {:?}, the first answer was {} with {:?}",
            a.op.name,
            status_text(&r),
            r.transaction_id,
            status_text(&a.response),
            a.response.transaction_id
        )],
        Ok(_) if run.effects() != before => vec![format!("{} repeated: a new processor effect", a.op.name)],
        Ok(_) => Vec::new(),
    };
    check("duplicate_lookup", failures, format!("{} published again: the first result, no new effect", a.op.name))
}

/// A header of a stored message.
fn header<'a>(m: &'a AuditMessage, name: &str) -> Option<&'a str> {
    m.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The stream sequences of the answered requests, by stream, in publish order.
async fn stored_sequences(run: &Run, answered: &[Answered]) -> Result<BTreeMap<String, Vec<(u64, usize)>>, String> {
    let wanted: BTreeMap<&str, usize> =
        answered.iter().enumerate().map(|(i, a)| (a.request.envelope().correlation_id.as_str(), i)).collect();
    let mut out: BTreeMap<String, Vec<(u64, usize)>> = BTreeMap::new();
    for m in observe::audit(&run.env).await.map_err(|e| e.to_string())? {
        if let Some(i) = header(&m, headers::CORRELATION_ID).and_then(|cid| wanted.get(cid)) {
            out.entry(m.stream.clone()).or_default().push((m.seq, *i));
        }
    }
    Ok(out)
}

async fn redelivery(run: &Run, answered: &[Answered]) -> Check {
    let Some(a) = first(answered, "payments.capture") else {
        return Check { name: "redelivery", passed: false, detail: "no durable operation succeeded to deliver again".into() };
    };
    let one = std::slice::from_ref(a);
    let stored = match stored_sequences(run, one).await {
        Ok(stored) => stored,
        Err(e) => return Check { name: "redelivery", passed: false, detail: e },
    };
    let failures = match stored.iter().next() {
        None => vec![format!("the stored request of {} was not found", a.op.name)],
        Some((stream, list)) => {
            let before = run.effects();
            compare_again(run, stream, list, one, before).await
        }
    };
    check("redelivery", failures, format!("{} delivered again: the stored result, no new effect", a.op.name))
}

/// Delivers the stored requests again and compares each reply with the first answer.
async fn compare_again(run: &Run, stream: &str, list: &[(u64, usize)], answered: &[Answered], effects_before: usize) -> Vec<String> {
    let seqs: Vec<u64> = list.iter().map(|(s, _)| *s).collect();
    let mut failures = Vec::new();
    match run.deliver_again(stream, &seqs).await {
        Err(e) => failures.push(e),
        Ok(replies) => {
            for ((seq, reply), (_, i)) in replies.into_iter().zip(list) {
                let a = &answered[*i];
                match reply {
                    Err(e) => failures.push(format!("{} ({stream} #{seq}): {e}", a.op.name)),
                    Ok(r) if r.status != a.response.status || r.transaction_id != a.response.transaction_id => failures.push(format!(
                        "{} ({stream} #{seq}): answered {} with transaction {:?}, the first answer was {} with {:?}",
                        a.op.name,
                        status_text(&r),
                        r.transaction_id,
                        status_text(&a.response),
                        a.response.transaction_id
                    )),
                    Ok(_) => {}
                }
            }
        }
    }
    let after = run.effects();
    if after != effects_before {
        failures.push(format!("{} new processor effect(s): a second charge", after - effects_before));
    }
    failures
}

async fn reused_key(run: &Run, answered: &[Answered]) -> Check {
    let Some(a) = first(answered, "payments.authorize") else {
        return Check { name: "reused_key", passed: false, detail: "no durable operation succeeded to reuse the key of".into() };
    };
    let env = a.request.envelope();
    let amount = env.router_data.get("amount").and_then(|v| v.as_i64()).unwrap_or(100);
    let mut router_data = env.router_data.clone();
    if let Some(obj) = router_data.as_object_mut() {
        obj.insert("amount".into(), serde_json::json!(amount + 1));
    }
    let other = OperationRequest::new(a.op, &env.merchant_id, &env.payment_id, format!("{}_other", env.attempt_id))
        .router_data(router_data)
        .idempotency_key(&env.idempotency_key);
    let before = run.effects();
    let mut failures = Vec::new();
    match run.call(&other).await {
        Err(e) => failures.push(format!("{} with a reused key: {e}", a.op.name)),
        Ok(r) => {
            let code = r.error.as_ref().map(|e| e.code.as_str());
            if r.status != ResponseStatus::Failure || code != Some("IDEMPOTENCY_KEY_REUSED") {
                failures.push(format!(
                    "{} with a reused key answered {}, expected failure IDEMPOTENCY_KEY_REUSED",
                    a.op.name,
                    status_text(&r)
                ));
            }
        }
    }
    if run.effects() != before {
        failures.push("the reused key reached the processor".into());
    }
    check("reused_key", failures, "another request under a used key refused with IDEMPOTENCY_KEY_REUSED, no effect".into())
}

async fn replay(run: &Run, answered: &[Answered]) -> Check {
    if answered.is_empty() {
        return Check { name: "replay", passed: false, detail: "no durable operation succeeded to replay".into() };
    }
    let before = run.effects();
    let mut failures = Vec::new();
    let mut count = 0;
    let stored = match stored_sequences(run, answered).await {
        Ok(stored) => stored,
        Err(e) => return Check { name: "replay", passed: false, detail: e },
    };
    for (stream, list) in &stored {
        count += list.len();
        failures.extend(compare_again(run, stream, list, answered, before).await);
    }
    if count < answered.len() {
        failures.push(format!("only {count} of {} stored requests found to replay", answered.len()));
    }
    failures.dedup();
    check("replay", failures, format!("{count} stored requests delivered again: the same results, no new effect"))
}

async fn dead_letter(run: &Run, tap: &Tap) -> Check {
    let config = run.bridge.config();
    let op = catalogue::ops::authorize();
    let subject = subjects::wildcard(&config.subject_template(op)).replace('*', "merchant_conform");
    let stream = config.stream_name(op.family);
    let dlq_subject = config.dlq_subject(op).replace('*', "merchant_conform");
    let dlq = config.dlq_stream_name();
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::NATS_MSG_ID, format!("conform-poison-{}", uuid::Uuid::new_v4().simple()));
    let seq = match async { run.js.publish_with_headers(subject.clone(), h, "this is not a request".into()).await?.await }.await {
        Ok(ack) => ack.sequence,
        Err(e) => return Check { name: "dead_letter", passed: false, detail: format!("the poison message was not stored: {e}") },
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut found: Option<async_nats::HeaderMap> = None;
    let mut terminated = None;
    while Instant::now() < deadline {
        if found.is_none() {
            if let Ok(mut s) = run.js.get_stream(&dlq).await {
                let last = s.info().await.map(|i| i.state.last_sequence).unwrap_or(0);
                for dseq in 1..=last {
                    if let Ok(m) = s.get_raw_message(dseq).await {
                        let from = m.headers.get("X-Dlq-Sequence").map(|v| v.as_str().to_string());
                        if from.as_deref() == Some(seq.to_string().as_str()) && m.subject.as_str() == dlq_subject {
                            found = Some(m.headers.clone());
                        }
                    }
                }
            }
        }
        let _ = tap.drain().await;
        terminated = tap
            .snapshot()
            .iter()
            .filter_map(|t| Some((parse_ack(&t.subject)?, final_ack(t.ack_body.as_deref()?)?)))
            .find(|((s, q), _)| *s == stream && *q == seq)
            .map(|(_, kind)| kind);
        if found.is_some() && terminated.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut failures = Vec::new();
    match &found {
        None => failures.push(format!("{stream} #{seq} (not a request) did not reach {dlq_subject} in {dlq} within 15 s")),
        Some(h) => {
            if h.get("X-Dlq-Reason").map(|v| v.as_str().is_empty()).unwrap_or(true) {
                failures.push("the dead letter has no X-Dlq-Reason".into());
            }
        }
    }
    if terminated.is_none() {
        failures.push(format!("{stream} #{seq} was never terminated or acked: JetStream will deliver it again"));
    }
    check(
        "dead_letter",
        failures,
        format!(
            "{stream} #{seq} copied to {dlq_subject} with its reason and {}",
            terminated.map(|k| if k == "term" { "terminated" } else { "acked" }).unwrap_or("-")
        ),
    )
}

async fn ack_after_reply(run: &Run, tap: &Tap) -> Check {
    // Every stored request of the run: where its reply must go, and its correlation id (a
    // message without them, like the poison message, expects no reply).
    let audit = match observe::audit(&run.env).await {
        Ok(audit) => audit,
        Err(e) => return Check { name: "ack_after_reply", passed: false, detail: e.to_string() },
    };
    let requests: Vec<(String, u64, String, String, String)> = audit
        .into_iter()
        .filter_map(|m| {
            let reply_to = header(&m, headers::REPLY_TO)?.to_string();
            let cid = header(&m, headers::CORRELATION_ID)?.to_string();
            let op = header(&m, headers::OPERATION).unwrap_or(&m.subject).to_string();
            Some((m.stream, m.seq, reply_to, cid, op))
        })
        .collect();
    // Give the worker time to ack what it answered last.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failures;
    loop {
        let _ = tap.drain().await;
        let seen = tap.snapshot();
        let mut first_ack: BTreeMap<(String, u64), usize> = BTreeMap::new();
        let mut first_reply: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (i, t) in seen.iter().enumerate() {
            if let (Some(body), Some(key)) = (t.ack_body.as_deref(), parse_ack(&t.subject)) {
                if final_ack(body).is_some() {
                    first_ack.entry(key).or_insert(i);
                }
            } else if let Some(cid) = &t.correlation_id {
                first_reply.entry((t.subject.clone(), cid.clone())).or_insert(i);
            }
        }
        failures = Vec::new();
        let mut unacked = 0;
        for (stream, seq, reply_to, cid, op) in &requests {
            let ack = first_ack.get(&(stream.clone(), *seq));
            let reply = first_reply.get(&(reply_to.clone(), cid.clone()));
            match (reply, ack) {
                (Some(r), Some(a)) if a < r => failures.push(format!(
                    "ack before reply: {stream} #{seq} ({op}) was acked (tap event {a}) before its reply was published (event {r})"
                )),
                (None, Some(_)) => {
                    failures.push(format!("ack without reply: {stream} #{seq} ({op}) was acked but no reply reached {reply_to}"))
                }
                (Some(_), None) => {
                    unacked += 1;
                    failures.push(format!("never acked: {stream} #{seq} ({op}) was answered but not acked within 10 s"));
                }
                (None, None) => failures.push(format!("unanswered: {stream} #{seq} ({op}) got neither a reply nor an ack")),
                _ => {}
            }
        }
        if unacked == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if requests.is_empty() {
        // The kit sent durable requests before this check: none stored means nothing was read.
        failures.push("no stored request with a reply subject was read: nothing to check".into());
    }
    // Ack-order violations first: they name the defect.
    failures.sort_by_key(|f| !f.starts_with("ack before reply"));
    check("ack_after_reply", failures, format!("{} stored requests: each replied to, then acked", requests.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_of_both_versions() {
        assert_eq!(
            parse_ack("$JS.ACK.HYPERSWITCH_PAYMENTS.worker_payments_authorize.1.7.3.1700000000000000000.0"),
            Some(("HYPERSWITCH_PAYMENTS".into(), 7))
        );
        assert_eq!(
            parse_ack("$JS.ACK.hub.ACCHASH.HYPERSWITCH_PAYMENTS.worker_payments_authorize.2.9.4.1700000000000000000.0.tok"),
            Some(("HYPERSWITCH_PAYMENTS".into(), 9))
        );
        assert_eq!(parse_ack("$JS.ACK.short"), None);
        assert_eq!(final_ack("+ACK"), Some("ack"));
        assert_eq!(final_ack(""), Some("ack"));
        assert_eq!(final_ack("+TERM reason"), Some("term"));
        assert_eq!(final_ack("+WPI"), None);
        assert_eq!(final_ack("-NAK {\"delay\":1}"), None);
    }
}
