//! The `harness` command line.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use clap::{Parser, Subcommand};
use nats_bridge::{catalogue, BridgeConfig, Pattern};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::env::{Environment, EnvironmentConfig};
use crate::nats::EnvConfig;

/// Proves a NATS payment bridge safe: real NATS, mock workers and processor.
#[derive(Debug, Parser)]
#[command(name = "harness", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Action,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Lists the operation catalogue.
    Catalogue {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Bridge config file (`[nats_bridge]` table) whose subjects and timeouts to show.
        #[arg(long, env = "BRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Starts NATS, the processor and workers, prints their addresses, then `ready`.
    Up {
        /// A 3-node JetStream cluster (streams with 3 replicas) instead of one node.
        #[arg(long)]
        cluster: bool,
        /// Worker processes to start.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Config file with `[nats_bridge]`, `[worker]` and `[gateway]` tables.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        gateway_addr: String,
    },
    /// Runs a seeded payment workload through the whole stack and writes a report.
    Demo {
        /// Payments to run.
        #[arg(long, default_value_t = 200)]
        payments: usize,
        /// Seed of every random choice (printed first, written to the report).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Payments in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// On the 3-node cluster.
        #[arg(long)]
        cluster: bool,
        /// Where `demo-<seed>-<time>/` is written.
        #[arg(long, default_value = "reports")]
        report_dir: PathBuf,
    },
    /// Runs scenario files one after the other; exits non-zero when an invariant fails.
    Run {
        /// Scenario files (TOML).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Overrides each scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Where `<scenario>-<seed>-<time>/` is written.
        #[arg(long, default_value = "reports")]
        report_dir: PathBuf,
        /// Run against a deliberately broken variant (`harness defects` lists them).
        #[arg(long)]
        defect: Option<String>,
    },
    /// Worker conformance kit: runs the worker-facing checks (every operation, ack only after
    /// the reply, duplicates, redelivery, replay, reused keys, dead letters) against any worker
    /// program and prints a pass/fail table; exits 1 when a check fails.
    ///
    /// The command runs under `sh -c` with `NATS_URL` and `PROCESSOR_URL` set; streams exist,
    /// subjects are `hyperswitch.<family>.<action>` (see docs/worker-guide.md).
    Conform {
        /// The worker program, e.g. `.venv/bin/python docs/examples/python_worker/worker.py`.
        #[arg(long)]
        worker_cmd: String,
        /// Seed of the payment data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds the worker may take to subscribe and answer a first query.
        #[arg(long, default_value_t = 60)]
        ready_timeout: u64,
        /// Seconds one call may wait for its reply.
        #[arg(long, default_value_t = 10)]
        call_timeout: u64,
        /// Where `conform-<time>/` (summary.md, summary.json, worker.log) is written.
        #[arg(long, default_value = "reports")]
        report_dir: PathBuf,
        /// Prints the report as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Lists the deliberate defects and the scenario that catches each.
    Defects {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Measures the gateway attempt store: committed transitions per second on a real file.
    StoreBench {
        /// Payments (five transitions each).
        #[arg(long, default_value_t = 5000)]
        payments: usize,
        /// Threads driving them.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Directory for the database file (removed afterwards).
        #[arg(long, default_value = "reports")]
        dir: PathBuf,
    },
    /// Measures the bridge against docs/architecture.md section 7: authorize round trip beside raw
    /// async-nats (same run), maximum sustainable authorize rate (open-model steps), memory with
    /// many calls in flight, NATS connections per bridge; exits non-zero when a target fails.
    Bench {
        /// Measured round trips per path.
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
        /// On the 3-node cluster.
        #[arg(long)]
        cluster: bool,
        /// Where `bench-<time>/` is written.
        #[arg(long, default_value = "reports")]
        report_dir: PathBuf,
        /// Intended rates of the rate ladder, req/s, tried in order until one is not sustainable.
        #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,4000,8000,16000")]
        rate_steps: Vec<u32>,
        /// Seconds each rate step sends for.
        #[arg(long, default_value_t = 3.0)]
        rate_step_secs: f64,
        /// A rate step whose p99 (from the intended send time) exceeds this is not sustainable.
        #[arg(long, default_value_t = 20.0)]
        rate_p99_ms: f64,
        /// Which responders the rate ladder runs against (comma-separated): `echo` (the bridge
        /// and NATS alone), `full` (mock worker + processor).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "echo,full")]
        rate_path: Vec<crate::bench::RatePath>,
        /// Tries of a rate step before the ladder stops at it (a stall elsewhere on a shared
        /// machine can sink one try; every try is reported).
        #[arg(long, default_value_t = 2)]
        rate_attempts: u32,
        /// Skips the rate ladders.
        #[arg(long)]
        no_rate: bool,
        /// Durable calls held in flight by the memory probe (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        in_flight: usize,
        /// Memory target for the bridge with the calls in flight, MiB.
        #[arg(long, default_value_t = 64)]
        memory_limit_mib: u64,
        /// Internal: run as the memory probe with this JSON configuration.
        #[arg(long, hide = true)]
        memory_probe: Option<String>,
    },
}

/// A failure the CLI reports and exits non-zero on.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Action::Catalogue { json, config } => {
            let config = BridgeConfig::load(config.as_deref())?;
            print!("{}", catalogue_text(&config, json));
            Ok(())
        }
        Action::Up { cluster, workers, config, gateway_addr } => up(cluster, workers, config.as_deref(), &gateway_addr).await,
        Action::Demo { payments, seed, concurrency, cluster, report_dir } => {
            let report =
                crate::demo::run(crate::demo::DemoConfig { payments, seed, concurrency, cluster, report_dir, ..Default::default() })
                    .await?;
            print!("{}", crate::demo::markdown(&report));
            println!("report: {}", report.report.display());
            if report.violations.is_empty() {
                Ok(())
            } else {
                Err(format!("{} invariant violation(s)", report.violations.len()).into())
            }
        }
        Action::Conform { worker_cmd, seed, ready_timeout, call_timeout, report_dir, json } => {
            if worker_cmd.trim().is_empty() {
                return Err("--worker-cmd is empty: give the command that starts the worker".into());
            }
            if ready_timeout == 0 || call_timeout == 0 {
                return Err("--ready-timeout and --call-timeout must be at least 1 second".into());
            }
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let dir = report_dir.join(format!("conform-{stamp}"));
            let report = crate::conform::run(crate::conform::ConformConfig {
                worker_cmd,
                dir: dir.clone(),
                seed,
                ready_timeout: std::time::Duration::from_secs(ready_timeout),
                call_timeout: std::time::Duration::from_secs(call_timeout),
                ..Default::default()
            })
            .await?;
            report.write(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
                println!("report: {}", dir.join("summary.md").display());
            }
            if report.passed() {
                Ok(())
            } else {
                let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).map(|c| c.name).collect();
                Err(format!("the worker does not conform: {}", failed.join(", ")).into())
            }
        }
        Action::Defects { json } => {
            for d in crate::defects::DEFECTS {
                if json {
                    println!("{}", serde_json::to_string(&d)?);
                } else {
                    println!("{:<32} {:<8} caught by {} ({}): {}", d.name, d.component, d.caught_by, d.invariant, d.description);
                }
            }
            Ok(())
        }
        Action::Run { scenarios, seed, report_dir, defect } => {
            let defect = match defect {
                Some(name) => {
                    let found = crate::defects::find(&name).ok_or_else(|| {
                        let known: Vec<_> = crate::defects::DEFECTS.iter().map(|d| d.name).collect();
                        format!("unknown defect {name:?} (known: {})", known.join(", "))
                    })?;
                    Some(found.switches())
                }
                None => None,
            };
            // Check every file first: a typo in the fifth file should not wait for four runs.
            let parsed = scenarios.iter().map(|p| crate::scenario::spec::Scenario::load(p)).collect::<Result<Vec<_>, _>>()?;
            let mut failed = Vec::new();
            for s in &parsed {
                let options = crate::scenario::runner::RunOptions { seed, report_dir: report_dir.clone(), defect: defect.clone() };
                // A run that could not be judged (an unreadable source, a fault that could
                // not be applied) fails with its reason; the next scenario still runs.
                let report = match crate::scenario::runner::run(s, &options).await {
                    Ok(report) => report,
                    Err(e) => {
                        println!("ERROR {}: {e}", s.name);
                        failed.push(s.name.clone());
                        continue;
                    }
                };
                let verdict = if report.verdict.passed() { "PASS" } else { "FAIL" };
                println!("{verdict} {} (seed {}): {}", s.name, report.seed, report.dir.join("summary.md").display());
                for v in &report.verdict.violations {
                    println!("  {}: {}", v.invariant, v.message);
                }
                if !report.verdict.passed() {
                    failed.push(s.name.clone());
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(format!("failed or could not be judged: {}", failed.join(", ")).into())
            }
        }
        Action::StoreBench { payments, threads, dir } => {
            let r = crate::store_bench::run(&dir, payments, threads)?;
            println!(
                "{} transitions ({} payments, {} thread(s)) in {:.2}s: {:.0} transitions/s",
                r.transitions, r.payments, r.threads, r.seconds, r.per_second
            );
            Ok(())
        }
        Action::Bench {
            iterations,
            cluster,
            report_dir,
            rate_steps,
            rate_step_secs,
            rate_p99_ms,
            rate_path,
            rate_attempts,
            no_rate,
            in_flight,
            memory_limit_mib,
            memory_probe,
        } => {
            if let Some(probe) = memory_probe {
                return Ok(crate::bench::memory::probe_main(&probe).await?);
            }
            let positive = |x: f64| x > 0.0 && x.is_finite();
            if !positive(rate_step_secs) || !positive(rate_p99_ms) {
                return Err("--rate-step-secs and --rate-p99-ms must be positive".into());
            }
            let report = crate::bench::run(crate::bench::BenchConfig {
                iterations,
                warmup: (iterations / 10).max(10),
                cluster,
                report_dir,
                rate: crate::bench::RateConfig {
                    steps: rate_steps,
                    step: std::time::Duration::from_secs_f64(rate_step_secs),
                    p99_limit: std::time::Duration::from_secs_f64(rate_p99_ms / 1000.0),
                    paths: if no_rate { Vec::new() } else { rate_path },
                    attempts: rate_attempts.max(1),
                    ..Default::default()
                },
                in_flight,
                memory_limit_mib,
                ..Default::default()
            })
            .await?;
            print!("{}", crate::bench::markdown(&report));
            println!("report: {}", report.report.display());
            if report.passed {
                Ok(())
            } else {
                let failed: Vec<_> = report.targets.iter().filter(|t| !t.pass).map(|t| t.name.as_str()).collect();
                Err(format!("targets failed: {}", failed.join("; ")).into())
            }
        }
    }
}

/// The catalogue as text: a table, or one JSON object per line.
pub fn catalogue_text(config: &BridgeConfig, json: bool) -> String {
    let mut out = String::new();
    if !json {
        out.push_str(&format!("{:<30} {:<8} {:<48} {:<22} {:>7} {:>8}\n", "NAME", "PATTERN", "SUBJECT", "STREAM", "ACK_MS", "REPLY_MS"));
    }
    for op in catalogue::all() {
        let t = config.timeouts(op);
        let subject = config.subject_template(op);
        let stream = (op.pattern == Pattern::Durable).then(|| config.stream_name(op.family));
        let ack_ms = t.ack.map(|d| d.as_millis() as u64);
        let reply_ms = t.reply.as_millis() as u64;
        if json {
            let line = json!({
                "name": op.name,
                "family": op.family,
                "subject": subject,
                "pattern": op.pattern,
                "stream": stream,
                "ack_timeout_ms": ack_ms,
                "reply_timeout_ms": reply_ms,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        } else {
            out.push_str(&format!(
                "{:<30} {:<8} {:<48} {:<22} {:>7} {:>8}\n",
                op.name,
                op.pattern.to_string(),
                subject,
                stream.unwrap_or_else(|| "-".into()),
                ack_ms.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                reply_ms
            ));
        }
    }
    out
}

async fn up(cluster: bool, workers: usize, config: Option<&Path>, gateway_addr: &str) -> Result<(), CliError> {
    let (worker_config, _) = mock_worker::WorkerConfig::load(config)?;
    let (mut gateway_config, bridge_config) = gateway::config::GatewayConfig::load(config)?;
    let binary = if workers > 0 { Some(crate::workers::worker_binary()?) } else { None };
    let env = Environment::start(EnvironmentConfig {
        nats: if cluster { EnvConfig::cluster() } else { EnvConfig::single() },
        bridge: bridge_config,
        worker: worker_config,
        workers: 0,
        ..Default::default()
    })
    .await?;
    println!("nats: {} ({}, {} node(s))", env.nats().client_url(), env.nats().backend(), env.nats().node_count());
    for url in env.nats().monitoring_urls() {
        println!("nats monitoring: {url}");
    }
    println!("processor: {}", env.processor_url());
    let mut children: Vec<Child> = Vec::new();
    for i in 0..workers {
        let mut cmd = Command::new(binary.as_ref().expect("binary"));
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd
            .env("WORKER_NATS_URL", env.nats().client_url())
            .env("WORKER_PROCESSOR_URL", env.processor_url())
            .env("WORKER_NAME", format!("worker-{}", i + 1))
            .env("NATS_BRIDGE_REPLICAS", env.nats().replicas().to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        wait_worker_ready(&mut child).await?;
        println!("worker {}: pid {}", i + 1, child.id().unwrap_or(0));
        children.push(child);
    }
    // A fresh store per run unless the config names one.
    let state_dir = std::env::temp_dir().join(format!("hs-up-{}", std::process::id()));
    if config.is_none() {
        std::fs::create_dir_all(&state_dir)?;
        gateway_config.database = state_dir.join("gateway.db");
    }
    let gateway = env.start_gateway_on(gateway_addr, gateway_config.clone()).await?;
    wait_http_ok(&format!("{}/health", gateway.url)).await?;
    println!("gateway: {} (store {})", gateway.url, gateway_config.database.display());
    for (key, merchant) in &gateway_config.api_keys {
        println!("api key {key}: merchant {merchant}");
    }
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping");
    for child in &mut children {
        let _ = child.kill().await;
    }
    drop(gateway);
    drop(env);
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
}

/// Polls `url` until it answers 200 (the gateway is serving), with a deadline.
async fn wait_http_ok(url: &str) -> Result<(), CliError> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{url} did not answer within 10s").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits for the worker's `ready` line (or its exit, which is an error).
async fn wait_worker_ready(child: &mut Child) -> Result<(), CliError> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let stdout = child.stdout.take().ok_or("worker stdout not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = std::time::Duration::from_secs(30);
    let ready = tokio::time::timeout(deadline, async {
        while let Some(line) = lines.next_line().await? {
            if line.ends_with("ready") {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    match ready {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(format!("worker exited before it was ready: {:?}", child.wait().await?).into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("worker not ready within 30s".into()),
    }
}
