//! `harness`: see `harness --help`.

use clap::Parser;

/// mimalloc: per-request allocations (headers, envelopes, JSON) led glibc malloc/free in the
/// load profile (loadtest/README.md, "Cost of a request").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,async_nats=warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = harness::cli::Cli::parse();
    match harness::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
