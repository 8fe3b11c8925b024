//! `gateway [--config FILE]`: serves the payments API until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use clap::Parser;

/// mimalloc: per-request allocations (headers, envelopes, JSON) led glibc malloc/free in the
/// load profile (loadtest/README.md, "Cost of a request").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Hyperswitch-like payments API over the NATS bridge.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML file with `[gateway]` and `[nats_bridge]` tables.
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (config, bridge_config) = gateway::config::GatewayConfig::load(args.config.as_deref())?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let running = gateway::start(config, bridge_config).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    gateway::api::serve(listener, running.state.clone(), shutdown).await?;
    drop(running);
    Ok(())
}
