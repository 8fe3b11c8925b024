//! Open-model load test of the gateway, built on goose.
//!
//! Goose alone measures from after its throttle and rounds to milliseconds. Here every request
//! has an intended send time on a fixed-rate global schedule (request `i` at `t0 + i/rate`);
//! goose users take the next slot, wait for its time and send, and latency is measured from the
//! intended time into microsecond HdrHistograms, per operation and per status class, beside
//! goose's own metrics. After the load the system settles and the harness's invariant checkers
//! run over the processor ledger, the gateway store and the streams.
//!
//! Map of the crate:
//! - [`cli`]: the options.
//! - [`ops`]: the operations of the mix, their weights and targets, how an answer is judged.
//! - [`data`]: seeded `fake` payment data per request slot.
//! - [`schedule`]: the fixed-rate schedule (the harness's, shared with its scenarios and bench).
//! - [`cost`]: CPU per request per role and NATS traffic per request; the roles' runtimes.
//! - [`profile`]: `--profile`, a flame graph of the run (perf + inferno).
//! - [`flows`]: the goose scenario and per-user payment state.
//! - [`record`]: the histograms.
//! - [`faults`]: NATS restart and worker crash during the load; disruption windows.
//! - [`report`]: verdict and report files; [`html`]: `index.html`; [`hgrm`]: HdrHistogram text formats.

#![warn(missing_docs)]

pub mod cli;
pub mod cost;
pub mod data;
pub mod faults;
pub mod flows;
pub mod hgrm;
pub mod html;
pub mod ops;
pub mod profile;
pub mod record;
pub mod report;
pub use harness::schedule;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gateway::config::{GatewayConfig, RecoveryConfig};
use goose::client::GooseClientBuilder;
use goose::config::GooseConfiguration;
use goose::prelude::*;
use harness::env::GatewayHandle;
use harness::nats::EnvConfig;
use harness::scenario::checkers::{self, Invariant};
use harness::scenario::observe;
use harness::scenario::timing;
use harness::{Environment, EnvironmentConfig};
use mock_worker::WorkerConfig;
use nats_bridge::BridgeConfig;
use tokio::sync::Mutex;

pub use cli::Options;

/// Why a run could not be carried out (a breach or violation is not an error: see [`RunOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Inconsistent options.
    #[error("{0}")]
    Options(String),
    /// The environment did not start.
    #[error("cannot start the environment: {0}")]
    Environment(#[from] harness::env::EnvError),
    /// Goose refused or failed.
    #[error("goose: {0}")]
    Goose(String),
    /// The runtimes of the system under test could not be built.
    #[error("cannot start the runtimes of the system under test: {0}")]
    Runtime(std::io::Error),
    /// Writing the report failed.
    #[error("cannot write the report: {0}")]
    Io(#[from] std::io::Error),
}

/// What a run found.
#[derive(Debug)]
pub struct RunOutcome {
    /// `reports/<run-id>/`.
    pub dir: PathBuf,
    /// The verdict and every number.
    pub summary: report::Summary,
}

impl RunOutcome {
    /// 0 when the run passed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.summary.passed {
            0
        } else {
            1
        }
    }
}

/// The API key and merchant of the gateway started here.
const API_KEY: (&str, &str) = ("loadtest_key", "merchant_load");

/// The invariants checked after a load run: those that need no client history (a load run
/// keeps none), without the scenario-only ones (liveness, the breaker, dead letters).
pub const INVARIANTS: [Invariant; 6] = [
    Invariant::NoDoubleEffect,
    Invariant::Amounts,
    Invariant::ZeroStuck,
    Invariant::Agreement,
    Invariant::Integrity,
    Invariant::NoCardData,
];

/// The start of the run left out of the cost per request (connections, caches, users starting).
const WARMUP: Duration = Duration::from_secs(5);

/// How far ahead of the first slot taken the schedule starts, so goose can start every user.
const LEAD: Duration = Duration::from_secs(1);

/// A gateway under load: started here (with its environment), or given by URL.
// One per run: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Target {
    Own { env: Arc<Mutex<Environment>>, gateway: GatewayHandle, description: String, runtimes: cost::SutRuntimes },
    External { url: String },
}

impl Target {
    fn url(&self) -> String {
        match self {
            Target::Own { gateway, .. } => gateway.url.clone(),
            Target::External { url } => url.clone(),
        }
    }
}

/// One NATS node, the processor, the workers in this process, and a gateway with an API key.
/// Timeouts are the scenario runner's (short, ordered so recovery never races a waiting call),
/// so that whatever a fault leaves open settles within the run.
/// Each role runs on its own runtime (see [`cost::SutRuntimes`]) so its CPU can be measured.
async fn start_environment(
    workers: usize,
    backend: harness::nats::BackendChoice,
    gomaxprocs: Option<usize>,
    dir: &std::path::Path,
) -> Result<Target, LoadError> {
    let runtimes = cost::SutRuntimes::new().map_err(LoadError::Runtime)?;
    let mut bridge = BridgeConfig {
        ack_timeout_ms: timing::ACK_MS,
        request_timeout_ms: timing::REQUEST_MS,
        query_timeout_ms: timing::QUERY_MS,
        ..Default::default()
    };
    bridge.circuit_breaker.open_ms = timing::BREAKER_OPEN_MS;
    let worker = WorkerConfig { max_request_age_ms: timing::MAX_REQUEST_AGE_MS, ..Default::default() };
    // A Docker node runs on the host network (no userland port proxy); the process backend ignores it.
    let mut nats = EnvConfig::single().with_backend(backend).with_host_network(true);
    nats.gomaxprocs = gomaxprocs;
    let env =
        Environment::start(EnvironmentConfig { nats, bridge, worker, workers, placement: runtimes.placement(), ..Default::default() })
            .await?;
    let gateway = env
        .start_gateway(GatewayConfig {
            database: dir.join("gateway.db"),
            api_keys: HashMap::from([(API_KEY.0.to_string(), API_KEY.1.to_string())]),
            recovery: RecoveryConfig {
                interval_ms: timing::RECOVERY_INTERVAL_MS,
                stuck_after_ms: timing::STUCK_AFTER_MS,
                sync_stuck_after_ms: timing::STUCK_AFTER_MS / 2,
            },
            ..Default::default()
        })
        .await?;
    let network = if env.nats().host_network() { " (host network)" } else { "" };
    let procs = gomaxprocs.map_or_else(|| "auto".to_string(), |n| n.to_string());
    let description = format!(
        "environment started here: NATS {}{network} x{} (GOMAXPROCS {procs}), {workers} in-process worker(s), processor latency 0",
        env.nats().backend(),
        env.nats().node_count()
    );
    Ok(Target::Own { env: Arc::new(Mutex::new(env)), gateway, description, runtimes })
}

fn unix_time() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Goose's configuration: `users` started at once, one shared HTTP client, no console tables
/// (the summary is ours), its report files in `dir`, no controllers listening.
fn goose_config(url: &str, users: u64, dir: &std::path::Path) -> GooseConfiguration {
    let mut c = GooseConfiguration::default();
    c.host = Some(url.to_string());
    c.users = Some(users as usize);
    // Every user within ~250 ms, well before the schedule's lead time is up.
    c.increase_rate = Some((users * 4).to_string());
    c.no_reset_metrics = true;
    c.no_print_metrics = true;
    c.no_telnet = true;
    c.no_gzip = true;
    // Longer than the bridge's whole durable call, so a client timeout is rare.
    c.timeout = Some((timing::CLIENT_TIMEOUT_MS / 1000).to_string());
    c.report_file = vec![dir.join("goose-report.html").display().to_string(), dir.join("goose-report.md").display().to_string()];
    c.quiet = 1;
    c
}

/// Runs the load described by `opts` and writes the report. `command` is recorded in it.
pub async fn run(opts: &Options, command: &str) -> Result<RunOutcome, LoadError> {
    opts.validate().map_err(LoadError::Options)?;
    let seed = opts.seed.unwrap_or_else(|| {
        unix_time()
            ^ (u64::from(std::process::id()) << 32)
            ^ u64::from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0))
    });
    println!("seed: {seed}");
    let started_at = unix_time();
    let run_id = format!("load-{seed}-{started_at}");
    let dir = opts.report_dir.join(&run_id);
    std::fs::create_dir_all(&dir)?;

    let target = match &opts.url {
        Some(url) => Target::External { url: url.clone() },
        None => start_environment(opts.workers as usize, opts.nats_backend, opts.nats_gomaxprocs.0, &dir).await?,
    };
    let (api_key, target_text) = match &target {
        Target::Own { description, .. } => (API_KEY.0.to_string(), description.clone()),
        Target::External { .. } => (opts.api_key.clone(), "external gateway".to_string()),
    };
    let url = target.url();
    let users = opts.users();
    println!("target: {target_text} at {url}");
    println!("schedule: {} req/s for {} s, {users} goose users, report in {}", opts.rate, opts.duration.as_secs_f64(), dir.display());

    let schedule = Arc::new(schedule::Schedule::new(opts.rate, opts.duration).map_err(|e| LoadError::Options(e.to_string()))?.lead(LEAD));
    let ctx = Arc::new(flows::LoadContext {
        schedule: schedule.clone(),
        recorder: record::Recorder::new(),
        data: data::DataGen::new(seed),
        api_key,
        id_prefix: format!("{started_at:x}{:04x}", seed & 0xffff),
        duration: opts.duration,
        drain: opts.drain,
        cycle: flows::cycle_len(&opts.mix),
    });

    let nats_probe = match &target {
        Target::Own { env, .. } => cost::NatsProbe::of(&*env.lock().await).await,
        Target::External { .. } => None,
    };
    let profiling = match opts.profile {
        true => {
            let pids: Vec<u32> = std::iter::once(std::process::id()).chain(nats_probe.as_ref().and_then(|n| n.pid)).collect();
            let (schedule, dir, title) = (schedule.clone(), dir.clone(), format!("loadtest {run_id}: {} req/s", opts.rate));
            Some(tokio::spawn(async move {
                let (from, to) = cost::window(schedule.offset(schedule.total()), WARMUP);
                let t0 = schedule.started().await;
                tokio::time::sleep_until((t0 + from).into()).await;
                let seconds = profile::seconds_for(to - from);
                println!("profiling {seconds} s with perf");
                tokio::task::spawn_blocking(move || profile::record(&dir, &pids, seconds, &title)).await.ok()
            }))
        }
        false => None,
    };
    let measuring = tokio::spawn(cost::measure(schedule.clone(), nats_probe, WARMUP));
    let timeline = match (&target, opts.faults.is_empty()) {
        (Target::Own { env, .. }, false) => {
            Some(tokio::spawn(faults::timeline(env.clone(), opts.workers as usize, opts.faults.clone(), schedule.clone())))
        }
        _ => None,
    };
    let attack = GooseAttack::initialize_with_config(goose_config(&url, users, &dir))
        .map_err(|e| LoadError::Goose(e.to_string()))?
        // One client, one connection pool for every user: per-user clients would each keep
        // their own pool (and their own connections) for nothing.
        .set_client_builder_without_cookies(
            GooseClientBuilder::new()
                .without_cookies()
                .timeout(Duration::from_millis(timing::CLIENT_TIMEOUT_MS))
                .gzip(false)
                .user_agent("loadtest"),
        )
        .map_err(|e| LoadError::Goose(e.to_string()))?
        .register_scenario(flows::scenario(ctx.clone(), &opts.mix).map_err(|e| LoadError::Goose(e.to_string()))?)
        // Round robin keeps each user's sequence of operations fixed (no unseeded shuffle).
        .set_scheduler(GooseScheduler::RoundRobin);
    let goose_result = attack.execute().await;
    let applied = match timeline {
        Some(t) => t.await.unwrap_or_default(),
        None => Vec::new(),
    };
    if let Err(e) = goose_result {
        measuring.abort();
        if let Some(p) = &profiling {
            p.abort();
        }
        return Err(LoadError::Goose(e.to_string()));
    }
    // The window ends with the schedule, which goose has outlived.
    let cost = if measuring.is_finished() {
        measuring.await.ok()
    } else {
        tokio::time::timeout(Duration::from_secs(5), measuring).await.ok().and_then(Result::ok)
    };
    let recorded = ctx.recorder.snapshot();
    let t0_wall = schedule.t0().map(|t0| SystemTime::now() - Instant::now().saturating_duration_since(t0));
    println!("load done: {} requests sent, {} errors", recorded.sent, recorded.errors());

    let goose_files = ["goose-report.html", "goose-report.md"];
    let invariants = match &target {
        Target::Own { env, gateway, .. } => {
            let store = gateway.running.state.gateway.store.clone();
            println!("settling, then checking invariants");
            // Goose's markdown report is scanned for card data too (its HTML holds long float
            // literals that pass the Luhn check).
            let texts =
                std::fs::read_to_string(dir.join("goose-report.md")).map(|t| vec![("goose-report.md".to_string(), t)]).unwrap_or_default();
            let env = env.lock().await;
            let observed = async {
                let (open, waited) = observe::settle(&env, &store, opts.settle_timeout).await?;
                let o = observe::collect(&env, gateway, Vec::new(), recorded.sent as usize, texts, 0).await?;
                Ok::<_, observe::ObserveError>((open, waited, o))
            };
            match observed.await {
                Ok((open, waited, o)) => {
                    let verdict = checkers::check(&o, &INVARIANTS, &BTreeMap::new(), |_| None);
                    let observed = BTreeMap::from([
                        ("processor effects".to_string(), o.ledger.len()),
                        ("gateway payments".to_string(), o.payments.len()),
                        ("gateway operations".to_string(), o.operations.len()),
                        ("gateway refunds".to_string(), o.refunds.len()),
                        ("stream messages".to_string(), o.audit.len()),
                    ]);
                    report::Invariants::from_verdict(&verdict, open, waited.as_secs_f64(), observed)
                }
                Err(e) => report::Invariants::unobserved(e.to_string()),
            }
        }
        Target::External { .. } => report::Invariants::skipped("an external gateway: its processor ledger and store are out of reach"),
    };

    let info = report::RunInfo {
        run_id,
        seed,
        target_rate: opts.rate,
        duration_s: opts.duration.as_secs_f64(),
        scheduled: schedule.total(),
        users,
        mix: opts.mix.to_string(),
        url,
        target: target_text,
        command: command.to_string(),
        started: t0_wall,
    };
    let thresholds = report::Thresholds {
        p99_target_ms: opts.p99_target_ms,
        disruption_p99_ms: opts.disruption_p99_ms.unwrap_or(opts.p99_target_ms),
        max_errors: opts.max_errors,
        max_lag_p99_ms: opts.max_lag_p99_ms,
        min_rate_ratio: opts.min_rate_ratio,
    };
    let mut summary = report::summarize(info, &recorded, thresholds, applied, invariants);
    summary.cost = cost;
    if let Some(p) = profiling {
        println!("drawing the flame graph");
        summary.profile = p.await.ok().flatten();
    }
    let extra: Vec<String> = goose_files
        .iter()
        .chain(["flamegraph.svg", "profile.folded"].iter())
        .filter(|f| dir.join(f).exists())
        .map(|f| f.to_string())
        .collect();
    report::write_all(&dir, &mut summary, &recorded, &extra)?;
    if let Target::Own { gateway, env, runtimes, .. } = target {
        drop(gateway);
        drop(env);
        drop(runtimes);
        // The attempt store is only needed for the checks; it would dwarf the report.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("gateway.db{suffix}")));
        }
    }
    Ok(RunOutcome { dir, summary })
}

/// The lines printed after a run: the headline numbers and, when it failed, why.
pub fn console_summary(o: &RunOutcome) -> String {
    let s = &o.summary;
    let mut out = String::new();
    let ms = |us: u64| us as f64 / 1000.0;
    out.push_str(&format!(
        "achieved {:.1} req/s of {} ({} sent, {} errors); generator lag p99 {:.3} ms, max {:.3} ms; run {}\n",
        s.achieved_rate,
        s.info.target_rate,
        s.sent,
        s.errors,
        ms(s.lag.p99_us),
        ms(s.lag.max_us),
        if s.valid { "valid" } else { "INVALID" }
    ));
    for (name, op) in &s.operations {
        out.push_str(&format!(
            "  {name:<17} n={:<7} errors={:<5} p50={:>9.3} ms  p99={:>9.3} ms  p99.9={:>9.3} ms  max={:>9.3} ms\n",
            op.count,
            op.errors,
            ms(op.p50_us),
            ms(op.p99_us),
            ms(op.p999_us),
            ms(op.max_us)
        ));
    }
    for f in &s.faults {
        match f.disruption {
            Some(d) => out.push_str(&format!(
                "fault {}: disruption {} s to {} s, recovered {:.1} s after the fault{}\n",
                f.applied.spec,
                d.start_s,
                d.end_s,
                d.recovery_s,
                if d.recovered { "" } else { " (not by the end)" }
            )),
            None => out.push_str(&format!("fault {}: no disruption seen\n", f.applied.spec)),
        }
    }
    match (&s.invariants.skipped, s.invariants.passed) {
        (Some(why), _) => out.push_str(&format!("invariants: not checked ({why})\n")),
        (None, _) if s.invariants.error.is_some() => {
            out.push_str(&format!("invariants: not judged: {}\n", s.invariants.error.as_deref().unwrap_or_default()))
        }
        (None, Some(true)) => out.push_str(&format!("invariants: held ({})\n", s.invariants.checked_names())),
        _ => out.push_str(&format!("invariants: {} violation(s)\n", s.invariants.violations.len())),
    }
    out.push_str(&format!("report: {}\n", o.dir.join("index.html").display()));
    if s.passed {
        out.push_str("PASS\n");
    } else {
        out.push_str("FAIL:\n");
        for f in s.failures() {
            out.push_str(&format!("  {f}\n"));
        }
    }
    out
}
