//! `mock-worker [--config FILE]`: runs one worker until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use clap::Parser;

/// mimalloc: per-request allocations (headers, envelopes, JSON) led glibc malloc/free in the
/// load profile (loadtest/README.md, "Cost of a request").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves every bridge operation against the mock processor.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML file with `[worker]` and `[nats_bridge]` tables.
    #[arg(long, env = "WORKER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (config, naming) = match mock_worker::WorkerConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let name = config.name.clone();
    let handle = match mock_worker::start(config, naming).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("worker {name} ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.shutdown().await;
    std::process::ExitCode::SUCCESS
}
