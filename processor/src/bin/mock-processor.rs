//! `mock-processor`: serves the processor API until Ctrl-C or SIGTERM.
//!
//! Prints `listening on http://ADDR` on stdout once bound, so a parent process
//! that asked for port 0 can read the address. Logs go to stderr (`RUST_LOG`).

use std::io::IsTerminal;
use std::net::SocketAddr;

use clap::Parser;
use mock_processor::{serve, Processor, ProcessorConfig};
use tracing_subscriber::EnvFilter;

/// mimalloc: per-request allocations (headers, envelopes, JSON) led glibc malloc/free in the
/// load profile (loadtest/README.md, "Cost of a request").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Payment service provider simulator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "PROCESSOR_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Ignore Idempotency-Key: process every request anew (the key is still
    /// recorded on the effect).
    #[arg(long)]
    no_idempotency: bool,
    /// Delay added before answering each effect request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let processor =
        Processor::new(ProcessorConfig { idempotency: !args.no_idempotency, latency_ms: args.latency_ms, ..Default::default() });
    println!("listening on http://{addr}");
    tracing::info!(%addr, idempotency = !args.no_idempotency, "mock processor started");

    serve(listener, processor, shutdown_signal()).await?;
    tracing::info!("mock processor stopped");
    Ok(())
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
