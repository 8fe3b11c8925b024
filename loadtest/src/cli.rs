//! Command-line options.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use harness::nats::BackendChoice;

use crate::faults::{parse_duration, FaultSpec};
use crate::ops::Mix;

/// Open-model load test of the gateway: a fixed-rate schedule of payment requests (goose users),
/// latency from each request's intended send time in microsecond HdrHistograms, optional chaos,
/// invariant checks after the load, and a report in REPORT_DIR/<run-id>/.
///
/// Exit status: 0 when the run was valid and every gate and invariant held; 1 otherwise (the
/// reasons are printed); 2 for bad options.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version)]
pub struct Options {
    /// Requests per second of the schedule (all operations together).
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate)]
    pub rate: f64,

    /// Length of the schedule: 60, 60s, 500ms, 2m.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    pub duration: Duration,

    /// Seed of every random choice (payment data, picks); random when left out, printed first.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Load an already running gateway (loopback only) instead of starting an environment.
    /// Invariants are not checked then: the ledger and store are out of reach.
    #[arg(long, value_parser = parse_loopback_url)]
    pub url: Option<String>,

    /// API key for --url.
    #[arg(long, default_value = "dev_key_merchant_1", requires = "url")]
    pub api_key: String,

    /// Goose users; default: the rate (the schedule holds while answers take up to 1 s), three
    /// times the rate with --fault (up to 3 s, while a fault stalls answers). Each user walks
    /// the mix in goose's round-robin order with its own payments, so a user needs a dozen
    /// requests or more to get through the mix once: more users, more fallbacks.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub users: Option<u64>,

    /// In-process workers of the environment started here.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64), conflicts_with = "url")]
    pub workers: u64,

    /// NATS of the environment started here: process (a local nats-server, the default),
    /// docker, or auto (docker when an engine answers). The container runs on the host
    /// network (no userland port proxy) with its store on a volume (not the overlay).
    #[arg(long, default_value = "process", value_parser = parse_backend, conflicts_with = "url")]
    pub nats_backend: BackendChoice,

    /// GOMAXPROCS of the environment's nats-server: a number of threads running Go code, or
    /// `auto` for Go's default (one per CPU). Default 1: the server gets one core, as with a
    /// one-CPU container limit, and the other is left to the gateway, workers and generator.
    /// On two cores this measured about 30% less server CPU per request than `auto` (Go's
    /// scheduler otherwise spins and hands work between its threads) with the same latency.
    #[arg(long, default_value = "1", value_parser = parse_gomaxprocs, conflicts_with = "url")]
    pub nats_gomaxprocs: GoMaxProcs,

    /// Directory of the reports.
    #[arg(long, default_value = "reports")]
    pub report_dir: PathBuf,

    /// Our p99 target per operation, ms (docs/architecture.md section 7: 20). The seeds' targets are checked too.
    #[arg(long, default_value_t = 20.0, value_parser = parse_positive_ms)]
    pub p99_target_ms: f64,

    /// A second counts as disrupted (around a fault) when it has an error or an operation's
    /// p99 above this, ms; default: --p99-target-ms. Raise it where the p99 is above target
    /// without any fault, or every second counts.
    #[arg(long, value_parser = parse_positive_ms)]
    pub disruption_p99_ms: Option<f64>,

    /// Errors allowed over the whole run (docs/architecture.md section 7: zero).
    #[arg(long, default_value_t = 0)]
    pub max_errors: u64,

    /// The run is invalid when the p99 lag of actual behind intended send time exceeds this, ms.
    #[arg(long, default_value_t = 10.0, value_parser = parse_positive_ms)]
    pub max_lag_p99_ms: f64,

    /// The run is invalid when the achieved rate is below this share of --rate.
    #[arg(long, default_value_t = 0.95, value_parser = parse_ratio)]
    pub min_rate_ratio: f64,

    /// Weights of the mix, op=weight,...: authorize_auto, authorize_manual, capture, void,
    /// sync, refund, refund_sync (default 2,3,2,1,2,1,1).
    #[arg(long, default_value_t = Mix::default())]
    pub mix: Mix,

    /// A fault during the load: nats-restart@20s, worker-crash@20s (workers restarted at once)
    /// or worker-crash@20s+3s (restarted 3 s later). Repeatable; not with --url.
    #[arg(long = "fault", conflicts_with = "url")]
    pub faults: Vec<FaultSpec>,

    /// After the load, how long to wait for every payment, operation and refund to settle.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub settle_timeout: Duration,

    /// Record a CPU profile (perf, DWARF call graphs) of up to 15 s of the steady part of the
    /// run and draw it as flamegraph.svg in the report directory; without perf the run goes on
    /// and the report says why. perf's sampling adds to the run's CPU numbers.
    #[arg(long)]
    pub profile: bool,

    /// After the schedule, how long requests may still run before the run is stopped.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub drain: Duration,
}

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    s.parse().map_err(|_| format!("nats backend must be process, docker or auto, got {s:?}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("rate must be a number of requests per second, got {s:?}"))?;
    if !(v.is_finite() && v > 0.0 && v <= 100_000.0) {
        return Err(format!("rate must be above 0 and at most 100000 requests per second, got {s}"));
    }
    Ok(v)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("duration must be above 0".into());
    }
    Ok(d)
}

fn parse_positive_ms(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("expected a number of milliseconds, got {s:?}"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("milliseconds must be above 0, got {s}"));
    }
    Ok(v)
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("expected a ratio between 0 and 1, got {s:?}"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("ratio must be between 0 and 1, got {s}"));
    }
    Ok(v)
}

/// nats-server's `GOMAXPROCS`: a number of threads, or `None` for Go's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoMaxProcs(pub Option<usize>);

/// `auto` (Go's default) or a number of threads from 1 to 1024.
fn parse_gomaxprocs(s: &str) -> Result<GoMaxProcs, String> {
    if s == "auto" {
        return Ok(GoMaxProcs(None));
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(GoMaxProcs(Some(n))),
        _ => Err(format!("expected `auto` or a number of threads from 1 to 1024, got `{s}`")),
    }
}

/// Accepts `http://` URLs on a loopback address only: the load must not leave the machine.
fn parse_loopback_url(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| format!("url must start with http://, got {s:?}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!("url must point at a loopback address (localhost, 127.0.0.1, [::1]), got host {host:?}"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

impl Options {
    /// Checks what clap cannot: faults inside the schedule, at least one request.
    pub fn validate(&self) -> Result<(), String> {
        if (self.rate * self.duration.as_secs_f64()).round() < 1.0 {
            return Err(format!("--rate {} for --duration {:?} schedules no request", self.rate, self.duration));
        }
        for f in &self.faults {
            if f.at >= self.duration {
                return Err(format!("fault {f} is at or after the end of the {} s schedule", self.duration.as_secs_f64()));
            }
        }
        Ok(())
    }

    /// The users to start: --users, or enough for the rate.
    pub fn users(&self) -> u64 {
        self.users.unwrap_or_else(|| {
            // Users take their next slot as soon as they are free, so they hold slots up to
            // users/rate ahead: the schedule holds while answers take less than that.
            let per_second = if self.faults.is_empty() { 1.0 } else { 3.0 };
            ((self.rate * per_second).ceil() as u64).clamp(16, 10_000)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        let mut all = vec!["loadtest"];
        all.extend_from_slice(args);
        Options::try_parse_from(all).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.rate, 1000.0);
        assert_eq!(o.duration, Duration::from_secs(60));
        assert_eq!(o.users(), 1000);
        assert_eq!(o.p99_target_ms, 20.0);
        assert_eq!(o.max_errors, 0);
        assert_eq!(o.nats_backend, BackendChoice::Process);
        assert_eq!(o.nats_gomaxprocs, GoMaxProcs(Some(1)));
        assert!(o.validate().is_ok());
    }

    #[test]
    fn bad_input_is_explained() {
        assert!(parse(&["--rate", "0"]).unwrap_err().contains("rate must be above 0"));
        assert!(parse(&["--rate", "fast"]).unwrap_err().contains("requests per second"));
        assert!(parse(&["--duration", "0s"]).unwrap_err().contains("above 0"));
        assert!(parse(&["--url", "http://example.com:80"]).unwrap_err().contains("loopback"));
        assert!(parse(&["--url", "https://127.0.0.1"]).unwrap_err().contains("http://"));
        assert!(parse(&["--fault", "quake@1s"]).unwrap_err().contains("unknown fault"));
        assert!(parse(&["--url", "http://127.0.0.1:8080", "--fault", "nats-restart@1s"]).unwrap_err().contains("cannot be used with"));
        assert!(parse(&["--api-key", "k"]).unwrap_err().contains("--url"));
        assert!(parse(&["--min-rate-ratio", "2"]).unwrap_err().contains("between 0 and 1"));
        assert!(parse(&["--mix", "capture"]).unwrap_err().contains("op=weight"));
        assert!(parse(&["--nats-backend", "vm"]).unwrap_err().contains("process, docker or auto"));
        assert_eq!(parse(&["--nats-gomaxprocs", "auto"]).unwrap().nats_gomaxprocs, GoMaxProcs(None));
        assert_eq!(parse(&["--nats-gomaxprocs", "2"]).unwrap().nats_gomaxprocs, GoMaxProcs(Some(2)));
        for bad in ["0", "many", "1.5"] {
            assert!(parse(&["--nats-gomaxprocs", bad]).unwrap_err().contains("`auto` or a number of threads"), "{bad}");
        }
        let late = parse(&["--duration", "10s", "--fault", "nats-restart@10s"]).unwrap();
        assert!(late.validate().unwrap_err().contains("after the end"));
        let none = parse(&["--rate", "0.1", "--duration", "1s"]).unwrap();
        assert!(none.validate().unwrap_err().contains("schedules no request"));
    }

    #[test]
    fn loopback_urls() {
        for ok in ["http://127.0.0.1:8080", "http://localhost:1/", "http://[::1]:9000"] {
            assert!(parse_loopback_url(ok).is_ok(), "{ok}");
        }
        assert_eq!(parse_loopback_url("http://127.0.0.1:8080/").unwrap(), "http://127.0.0.1:8080");
        assert!(parse_loopback_url("http://10.0.0.1:8080").is_err());
    }

    #[test]
    fn users_follow_the_rate_and_faults() {
        assert_eq!(parse(&["--rate", "100"]).unwrap().users(), 100);
        assert_eq!(parse(&["--rate", "10"]).unwrap().users(), 16);
        assert_eq!(parse(&["--rate", "100", "--fault", "worker-crash@1s"]).unwrap().users(), 300);
        assert_eq!(parse(&["--users", "7"]).unwrap().users(), 7);
    }
}
