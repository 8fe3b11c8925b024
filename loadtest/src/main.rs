//! `loadtest`: the command over the [`loadtest`] library.

use clap::Parser;

/// mimalloc: per-request allocations (headers, envelopes, JSON) led glibc malloc/free in the
/// load profile (loadtest/README.md, "Cost of a request").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // The generator's threads carry a name of their own, so the report can tell their CPU from
    // the system under test's (loadtest::cost).
    // One thread: the generator needs about a sixth of a core at 1000 req/s, and a second
    // thread only added wake-ups (loadtest/README.md, "Cost of a request").
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(loadtest::cost::THREAD_ROLES[0].0)
        .thread_keep_alive(std::time::Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
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
