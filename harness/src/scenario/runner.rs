//! Runs a scenario: environment up, workload with the fault timeline, faults stopped, quiesce
//! (recovery included), observations collected, checkers run, report written.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway::config::GatewayConfig;
use mock_processor::ProcessorConfig;
use mock_worker::WorkerConfig;
use nats_bridge::{BridgeConfig, SubjectScheme};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::checkers;
use super::history::{Kind, Recorder};
use super::observe::{self, ObserveError};
use super::report::{self, RunReport};
use super::spec::{CrashPoint, DuplicateKind, Link, Scenario, Scheme, Verb};
use super::workload::{self, Client};
use crate::env::{EnvError, Environment, EnvironmentConfig, ProxiedLinks};
use crate::nats::EnvConfig;
use crate::stats::unix_time;
use crate::workers::{WorkerPool, WorkerSpec};

use super::timing;

/// Why a scenario could not be run or judged.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The environment or the gateway could not be started.
    #[error(transparent)]
    Environment(#[from] EnvError),
    /// Faults of the timeline could not be applied (or the timeline stopped), one line each.
    #[error("faults could not be applied: {}", .0.join("; "))]
    Faults(Vec<String>),
    /// What the run left behind could not be read.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// The report directory or the report could not be written.
    #[error(transparent)]
    Report(#[from] std::io::Error),
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Where `<scenario>-<seed>-<time>/` goes.
    pub report_dir: PathBuf,
    /// Run against a deliberately broken variant (see `harness defects`).
    pub defect: Option<DefectSwitches>,
}

/// A deliberately broken variant of the system, as the configuration a run takes: the
/// defect catalogue ([`crate::defects`]) fills it in, so the runner knows no catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefectSwitches {
    /// The defect's name, printed when the run starts.
    pub name: String,
    /// What is wrong, printed beside the name.
    pub description: String,
    /// The bridge's switches.
    pub bridge: nats_bridge::defects::Defects,
    /// The gateway's switches.
    pub gateway: gateway::config::GatewayDefects,
    /// The workers' switches, crash workers' included.
    pub worker: mock_worker::config::WorkerDefects,
}

fn bridge_config(s: &Scenario) -> BridgeConfig {
    let mut b = BridgeConfig::default();
    b.subjects.scheme = match s.topology.subject_scheme {
        Scheme::Shared => SubjectScheme::Shared,
        Scheme::PerMerchant => SubjectScheme::PerMerchant,
    };
    b.ack_timeout_ms = timing::ACK_MS;
    b.request_timeout_ms = timing::REQUEST_MS;
    b.query_timeout_ms = timing::QUERY_MS;
    b.circuit_breaker.open_ms = timing::BREAKER_OPEN_MS;
    b
}

/// Republishes the latest `count` messages of the durable streams with their original headers
/// (`Nats-Msg-Id` included), as a bridge retrying a publish would. Returns how many were sent
/// and how many JetStream reported as duplicates.
async fn republish(env: &Environment, count: usize) -> Result<(usize, usize), String> {
    let js = env.bridge().jetstream();
    let config = env.bridge_config();
    let mut latest = Vec::new();
    for family in nats_bridge::catalogue::durable_families() {
        let name = config.stream_name(family);
        let mut stream = js.get_stream(&name).await.map_err(|e| format!("stream {name}: {e}"))?;
        let info = stream.info().await.map_err(|e| format!("stream {name}: {e}"))?;
        let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
        for seq in (first..=last).rev().take(count) {
            if let Ok(m) = stream.get_raw_message(seq).await {
                latest.push(m);
            }
        }
    }
    latest.sort_by_key(|m| std::cmp::Reverse(m.time));
    latest.truncate(count);
    let (mut sent, mut duplicates) = (0, 0);
    for m in latest {
        let ack = js
            .publish_with_headers(m.subject.to_string(), m.headers.clone(), m.payload.clone())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        sent += 1;
        duplicates += usize::from(ack.duplicate);
    }
    Ok((sent, duplicates))
}

/// What the fault verbs act on.
struct FaultContext {
    /// The environment (NATS, workers, processor).
    env: Arc<Mutex<Environment>>,
    /// The history, for client-side faults.
    recorder: Recorder,
    /// The HTTP client, for client-side faults.
    client: Client,
    /// In-process workers to restart after a kill.
    workers: usize,
    /// Worker processes started by crash faults.
    crashers: Arc<Mutex<Option<WorkerPool>>>,
    /// Defects the crash workers inherit.
    defects: mock_worker::config::WorkerDefects,
    /// Ack wait of the crash workers.
    ack_wait_ms: u64,
    /// The in-process workers' configuration, for replay workers.
    worker: WorkerConfig,
    /// Replay workers started so far (each gets a fresh consumer prefix).
    replays: std::sync::atomic::AtomicUsize,
}

/// Applies one fault verb (`undo` = false) or undoes it (`undo` = true).
async fn apply(verb: &Verb, undo: bool, cx: &FaultContext) -> Result<(), String> {
    let (recorder, client, workers, crashers, defects, ack_wait_ms) =
        (&cx.recorder, &cx.client, cx.workers, &cx.crashers, cx.defects, cx.ack_wait_ms);
    let mut env = cx.env.lock().await;
    match (verb, undo) {
        (Verb::Duplicates { count, kind: DuplicateKind::Publish }, false) => {
            let (sent, duplicates) = republish(&env, *count).await?;
            info!(sent, duplicates, "republished stream messages with their message ids");
            recorder.fault(verb.name(), "result", serde_json::json!({ "republished": sent, "reported_duplicate": duplicates }));
            Ok(())
        }
        (Verb::Duplicates { count, kind: DuplicateKind::ClientRetry }, false) => {
            // Clients retry earlier creates with the same payment id (and key, if they had one):
            // the gateway must answer with the existing payment and the processor see nothing new.
            drop(env);
            let creates: Vec<_> =
                recorder.events().into_iter().filter(|e| e.kind == Kind::Invoke && e.f == "create").take(*count).collect();
            for (n, e) in creates.into_iter().enumerate() {
                let call = super::workload::Call {
                    process: 1_000_000 + n as u64,
                    f: "create",
                    payment_id: e.payment_id.clone().unwrap_or_default(),
                    method: reqwest::Method::POST,
                    path: "/payments".into(),
                    body: Some(e.value.clone()),
                    key: e.key.clone(),
                    intended_us: None,
                };
                client.call(call).await;
            }
            Ok(())
        }
        (Verb::WorkerCrash { point }, false) => {
            // A worker process that dies at `point` on its first operation; the in-process
            // workers take the redelivery.
            let point = match point {
                CrashPoint::BeforeProcessor => mock_worker::config::CrashPoint::BeforeProcessor,
                CrashPoint::AfterProcessor => mock_worker::config::CrashPoint::AfterProcessor,
                CrashPoint::AfterReply => mock_worker::config::CrashPoint::AfterReply,
            };
            let config = WorkerConfig {
                ack_wait_ms,
                max_request_age_ms: timing::MAX_REQUEST_AGE_MS,
                crash_at: Some(point),
                crash_after: 1,
                defects,
                ..Default::default()
            };
            let spec = WorkerSpec::new(env.nats().client_url(), env.processor_url(), config)
                .env("NATS_BRIDGE_REPLICAS", env.nats().replicas().to_string());
            let mut pool = crashers.lock().await;
            if pool.is_none() {
                *pool = Some(WorkerPool::new().map_err(|e| e.to_string())?);
            }
            pool.as_mut().expect("pool").spawn(spec).await.map_err(|e| e.to_string())?;
            Ok(())
        }
        (Verb::Replay { from_seq }, false) => {
            // A fresh consumer per durable operation, from `from_seq`: every message in range is
            // delivered again, to a worker that must answer from its stored results.
            let n = cx.replays.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let config = WorkerConfig {
                name: format!("replay-{n}"),
                consumer_prefix: format!("replay_{n}"),
                deliver_from_seq: Some(*from_seq),
                ..cx.worker.clone()
            };
            env.start_worker_with(config).await.map_err(|e| e.to_string())?;
            Ok(())
        }
        _ => super::faults::apply(verb, undo, &mut env, workers).await,
    }
}

/// Runs a scenario and writes its report.
pub async fn run(scenario: &Scenario, options: &RunOptions) -> Result<RunReport, RunError> {
    let seed = options.seed.or(scenario.seed).unwrap_or_else(|| unix_time() ^ u64::from(std::process::id()));
    println!("seed: {seed}");
    info!(scenario = %scenario.name, seed, "scenario starting");
    let t = &scenario.topology;
    let mut worker = WorkerConfig {
        ack_wait_ms: t.worker_ack_wait_ms,
        max_request_age_ms: timing::MAX_REQUEST_AGE_MS,
        processor_timeout_ms: timing::PROCESSOR_TIMEOUT_MS,
        ..Default::default()
    };
    let mut bridge = bridge_config(scenario);
    let mut gateway_config = GatewayConfig {
        api_keys: [("scenario_key".to_string(), "merchant_s".to_string())].into(),
        recovery: gateway::config::RecoveryConfig {
            interval_ms: timing::RECOVERY_INTERVAL_MS,
            stuck_after_ms: timing::STUCK_AFTER_MS,
            sync_stuck_after_ms: timing::STUCK_AFTER_MS / 2,
        },
        ..Default::default()
    };
    if let Some(defect) = &options.defect {
        println!("defect: {} ({})", defect.name, defect.description);
        bridge.defects = defect.bridge;
        gateway_config.defects = defect.gateway;
        worker.defects = defect.worker;
    }
    let crash_defects = worker.defects;
    let worker_base = worker.clone();
    let env = Environment::start(EnvironmentConfig {
        nats: if t.nodes == 3 { EnvConfig::cluster() } else { EnvConfig::single() }
            .with_sync_always(t.sync_interval == super::spec::SyncInterval::Always),
        bridge,
        worker,
        workers: t.workers,
        processor: ProcessorConfig { idempotency: t.processor_idempotency, ..Default::default() },
        proxied: ProxiedLinks { gateway: scenario.uses_link(Link::Gateway), workers: scenario.uses_link(Link::Workers), seed },
        ..Default::default()
    })
    .await?;
    let dir = options.report_dir.join(format!("{}-{seed}-{}", scenario.name, unix_time()));
    std::fs::create_dir_all(&dir)?;
    gateway_config.database = dir.join("gateway.db");
    let gateway = env.start_gateway(gateway_config).await?;
    let nats = format!(
        "{} x{}, jetstream sync_interval {}",
        env.nats().backend(),
        env.nats().node_count(),
        if env.nats().sync_always() { "always (fsync every write)" } else { "default" }
    );
    let env = Arc::new(Mutex::new(env));
    let recorder = Recorder::new();
    let client = Client::new(
        &gateway.url,
        "scenario_key",
        "merchant_s",
        Duration::from_millis(scenario.workload.client_timeout_ms),
        recorder.clone(),
    );

    // Worker processes started by crash faults; killed when the run ends.
    let crashers: Arc<Mutex<Option<WorkerPool>>> = Arc::default();
    // The fault timeline, on the same clock as the history.
    let timeline = {
        let faults = scenario.faults.clone();
        let recorder = recorder.clone();
        let cx = FaultContext {
            env: env.clone(),
            recorder: recorder.clone(),
            client: client.clone(),
            workers: t.workers,
            crashers: crashers.clone(),
            defects: crash_defects,
            ack_wait_ms: t.worker_ack_wait_ms,
            worker: worker_base,
            replays: Default::default(),
        };
        tokio::spawn(async move {
            let start = tokio::time::Instant::from_std(recorder.start());
            let mut steps: Vec<(f64, usize, bool)> = Vec::new();
            for (i, f) in faults.iter().enumerate() {
                steps.push((f.at_s, i, false));
                if let Some(u) = f.until_s {
                    steps.push((u, i, true));
                }
            }
            steps.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut errors = Vec::new();
            for (at, i, undo) in steps {
                tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
                let verb = &faults[i].verb;
                let phase = if undo { "stop" } else { "start" };
                recorder.fault(verb.name(), phase, serde_json::to_value(faults[i].at_s).unwrap_or_default());
                if let Err(e) = apply(verb, undo, &cx).await {
                    warn!(verb = verb.name(), error = %e, "fault failed");
                    errors.push(format!("{} ({phase}): {e}", verb.name()));
                }
            }
            errors
        })
    };
    let started = std::time::Instant::now();
    let schedule = workload::run(client.clone(), &scenario.workload, seed).await;
    // A timeline that panicked applied an unknown part of the faults: that is an error too.
    let fault_errors = timeline.await.unwrap_or_else(|e| vec![format!("the fault timeline stopped: {e}")]);
    // Worker processes that crash faults started: how many really died (by SIGKILL).
    let worker_crashes = {
        let mut pool = crashers.lock().await;
        let mut died = 0;
        if let Some(pool) = pool.as_mut() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            for p in pool.iter_mut() {
                // A crasher that got no operation yet is still alive: give it a moment.
                while p.try_status().is_none() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if p.try_status().as_ref().and_then(crate::workers::signal_of) == Some(9) {
                    died += 1;
                }
            }
        }
        died
    };
    if !fault_errors.is_empty() {
        return Err(RunError::Faults(fault_errors));
    }

    // Quiesce: wait for every attempt, operation and refund to settle (recovery included),
    // and for the workers to finish every delivery (an effect may still be on its way).
    let store = gateway.running.state.gateway.store.clone();
    observe::settle(&*env.lock().await, &store, Duration::from_secs_f64(scenario.expect.quiesce_s)).await?;

    let history = recorder.events();
    let unknown = history.iter().filter(|e| e.kind == Kind::Unknown).count();
    let texts = vec![("history.jsonl".to_string(), super::history::to_jsonl(&history))];
    let observations = {
        let env = env.lock().await;
        let poisoned = scenario.faults.iter().map(|f| if let Verb::Poison { count } = f.verb { count } else { 0 }).sum();
        let sent = observe::payments_sent(&history);
        observe::collect(&env, &gateway, history.clone(), sent, texts, poisoned).await?
    };
    let call_of = |f: &str| -> Option<&'static str> {
        Some(match f {
            "create" | "confirm" => "payments.authorize",
            "capture" => "payments.capture",
            "cancel" => "payments.void",
            "refund" => "refunds.execute",
            "retrieve" => "payments.sync",
            _ => return None,
        })
    };
    let verdict = checkers::check(&observations, &scenario.expect.invariants, &scenario.expect.p99_ms, call_of);
    let report = RunReport {
        scenario: scenario.name.clone(),
        seed,
        nats,
        duration_s: started.elapsed().as_secs_f64(),
        schedule,
        unknown_before_reconciliation: unknown,
        worker_crashes,
        verdict,
        dir: dir.clone(),
    };
    report::write(&dir, &report, &history)?;
    drop(gateway);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("gateway.db{suffix}")));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_errors_are_one_line() {
        let e = RunError::Faults(vec!["nats_kill (start): no node 4".into(), "heal (stop): gone".into()]);
        assert_eq!(e.to_string(), "faults could not be applied: nats_kill (start): no node 4; heal (stop): gone");
    }
}
