//! `loadtest`: the command over the [`loadtest`] library.

use clap::Parser;

/// mimalloc: per-request allocations (headers, envelopes, JSON) led glibc malloc/free in the
/// load profile (loadtest/README.md, "Cost of a request").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let opts = loadtest::Options::parse();
    // Inconsistent options are usage errors, as clap's own are.
    if let Err(e) = opts.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match loadtest::run(&opts, &command).await {
        Ok(outcome) => {
            print!("{}", loadtest::console_summary(&outcome));
            std::process::exit(outcome.exit_code());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
