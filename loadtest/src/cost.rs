//! What a request costs: CPU time per role and NATS traffic, over the steady part of a run.
//!
//! The environment started here runs each role on its own tokio runtime with named threads
//! (see [`SutRuntimes`]), so one process can tell the generator's CPU from the gateway's, the
//! workers' and the processor's: each thread's time on CPU is read from
//! `/proc/self/task/<tid>/schedstat` and summed by thread name. nats-server's CPU comes from
//! its process (`/proc/<pid>/stat`; for a container, the pid Docker reports), its messages
//! from `/varz` and JetStream's stream writes from `/jsz` (the sum of every stream's last
//! sequence). Two samples, at the start and the end of the window, give the deltas; dividing
//! by the requests intended in the window gives the cost of one request.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Thread-name prefixes of the roles run in this process, and the role each stands for.
/// Linux keeps 15 bytes of a thread's name.
pub const THREAD_ROLES: [(&str, &str); 5] = [
    ("load-generator", "generator"),
    ("sut-gateway", "gateway"),
    ("gateway-wal", "gateway"),
    ("sut-workers", "workers"),
    ("sut-processor", "processor"),
];

/// The role of nats-server's process in the tables.
pub const NATS_ROLE: &str = "nats-server";

/// Threads of this process that belong to no role (the main thread, helper threads).
pub const OTHER_ROLE: &str = "other";

/// The runtimes of the system under test: one per role, each with its own named threads.
/// Dropped outside any runtime's context, or shut down in the background when dropped inside one.
pub struct SutRuntimes {
    /// Gateways: HTTP server, bridge, recovery.
    pub gateway: Option<tokio::runtime::Runtime>,
    /// In-process workers.
    pub workers: Option<tokio::runtime::Runtime>,
    /// The processor's HTTP server.
    pub processor: Option<tokio::runtime::Runtime>,
}

fn runtime(name: &str, threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        // Blocking-pool threads that exit take their CPU time with them: keep them for the run.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
}

impl SutRuntimes {
    /// Builds the runtimes, one thread each: like separate processes on a small machine, and
    /// on two cores more threads per role measured slower (more wake-ups, same work).
    pub fn new() -> std::io::Result<SutRuntimes> {
        Ok(SutRuntimes {
            gateway: Some(runtime("sut-gateway", 1)?),
            workers: Some(runtime("sut-workers", 1)?),
            processor: Some(runtime("sut-processor", 1)?),
        })
    }

    /// Where the environment's roles go.
    pub fn placement(&self) -> harness::env::Placement {
        harness::env::Placement {
            processor: self.processor.as_ref().map(|r| r.handle().clone()),
            workers: self.workers.as_ref().map(|r| r.handle().clone()),
            gateways: self.gateway.as_ref().map(|r| r.handle().clone()),
        }
    }
}

impl Drop for SutRuntimes {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused inside another runtime.
        for rt in [self.gateway.take(), self.workers.take(), self.processor.take()].into_iter().flatten() {
            rt.shutdown_background();
        }
    }
}

/// Where nats-server's numbers come from.
#[derive(Debug, Clone)]
pub struct NatsProbe {
    /// The server's process, when it can be found.
    pub pid: Option<u32>,
    /// `http://127.0.0.1:<port>` of its monitoring endpoints.
    pub monitoring_url: String,
}

impl NatsProbe {
    /// The first node of an environment: its pid (the process backend's, or the container's
    /// as Docker reports it) and its monitoring URL.
    pub async fn of(env: &harness::Environment) -> Option<NatsProbe> {
        let node = env.nats().nodes().first()?;
        let pid = match (node.pid(), node.container_id()) {
            (Some(pid), _) => Some(pid),
            (None, Some(id)) => {
                let id = id.to_string();
                tokio::task::spawn_blocking(move || container_pid(&id)).await.ok().flatten()
            }
            (None, None) => None,
        };
        Some(NatsProbe { pid, monitoring_url: node.monitoring_url() })
    }
}

/// The host pid of a running container's main process.
fn container_pid(id: &str) -> Option<u32> {
    let out = std::process::Command::new("docker").args(["inspect", "--format", "{{.State.Pid}}", id]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok().filter(|p| *p > 0)
}

/// One reading of every counter.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Nanoseconds on CPU per role, for this process's threads.
    pub threads_ns: BTreeMap<String, u64>,
    /// nats-server's pid and CPU time (ns), when readable.
    pub nats_cpu: Option<(u32, u64)>,
    /// `/varz`: messages in to and out of the server.
    pub nats_msgs: Option<(u64, u64)>,
    /// `/jsz`: the sum of every stream's last sequence (one per stored write).
    pub stream_writes: Option<u64>,
}

/// The role of a thread, by its name.
pub fn role_of(thread_name: &str) -> &'static str {
    THREAD_ROLES.iter().find(|(prefix, _)| thread_name.starts_with(prefix)).map_or(OTHER_ROLE, |(_, role)| role)
}

/// Every thread of this process: CPU ns by role.
fn threads_ns() -> BTreeMap<String, u64> {
    let mut by_role = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return by_role };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()));
        if let Some(ns) = ns {
            *by_role.entry(role_of(name.trim()).to_string()).or_insert(0) += ns;
        }
    }
    by_role
}

/// A process's user + system CPU time in ns (all its threads), from `/proc/<pid>/stat`.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(ticks * 1_000_000_000 / hz)
}

/// Every stream's last sequence, summed, from `/jsz`.
fn stream_writes(jsz: &serde_json::Value) -> Option<u64> {
    let accounts = jsz.get("account_details")?.as_array()?;
    let mut total = 0;
    for account in accounts {
        for stream in account.get("stream_detail").and_then(|s| s.as_array()).into_iter().flatten() {
            total += stream.pointer("/state/last_seq").and_then(|v| v.as_u64()).unwrap_or(0);
        }
    }
    Some(total)
}

/// Reads every counter now.
pub async fn sample(http: &reqwest::Client, nats: Option<&NatsProbe>) -> Sample {
    let mut s = Sample { threads_ns: threads_ns(), ..Default::default() };
    let Some(nats) = nats else { return s };
    s.nats_cpu = nats.pid.and_then(|pid| process_cpu_ns(pid).map(|ns| (pid, ns)));
    let get = |path: &str| {
        let url = format!("{}{path}", nats.monitoring_url);
        let http = http.clone();
        async move { http.get(url).timeout(Duration::from_secs(2)).send().await.ok()?.json::<serde_json::Value>().await.ok() }
    };
    if let Some(varz) = get("/varz").await {
        s.nats_msgs = varz["in_msgs"].as_u64().zip(varz["out_msgs"].as_u64());
    }
    if let Some(jsz) = get("/jsz?accounts=true&streams=true").await {
        s.stream_writes = stream_writes(&jsz);
    }
    s
}

/// CPU and traffic per request over a window of the run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Cost {
    /// The window, seconds of the schedule (intended send time).
    pub window_s: [f64; 2],
    /// Requests intended in the window.
    pub requests: u64,
    /// Milliseconds of CPU per request, per role (`generator`, `gateway`, `workers`,
    /// `processor`, `other`, `nats-server`).
    pub cpu_ms_per_request: BTreeMap<String, f64>,
    /// Their sum: the whole stack's CPU per request.
    pub total_cpu_ms_per_request: f64,
    /// Of that, the system under test's (everything but the generator).
    pub sut_cpu_ms_per_request: f64,
    /// Cores busy on average over the window, all roles together.
    pub cores_busy: f64,
    /// NATS messages received by the server per request (`/varz` in_msgs).
    pub nats_in_msgs_per_request: Option<f64>,
    /// NATS messages sent by the server per request (`/varz` out_msgs).
    pub nats_out_msgs_per_request: Option<f64>,
    /// Messages stored by JetStream per request (requests, claims, results, every stream).
    pub stream_writes_per_request: Option<f64>,
    /// What could not be measured, and why.
    pub notes: Vec<String>,
}

/// The cost of one request between two samples `elapsed` apart, with `requests` intended
/// between them.
pub fn cost(a: &Sample, b: &Sample, elapsed: Duration, window_s: [f64; 2], requests: u64) -> Cost {
    let mut c = Cost { window_s, requests, ..Default::default() };
    if requests == 0 {
        c.notes.push("no request in the window".into());
        return c;
    }
    let per = |delta: u64| delta as f64 / requests as f64;
    let mut total_ns = 0u64;
    for (role, end) in &b.threads_ns {
        let delta = end.saturating_sub(a.threads_ns.get(role).copied().unwrap_or(0));
        total_ns += delta;
        c.cpu_ms_per_request.insert(role.clone(), per(delta) / 1e6);
    }
    match (a.nats_cpu, b.nats_cpu) {
        (Some((pa, na)), Some((pb, nb))) if pa == pb => {
            let delta = nb.saturating_sub(na);
            total_ns += delta;
            c.cpu_ms_per_request.insert(NATS_ROLE.into(), per(delta) / 1e6);
        }
        (Some(_), Some(_)) => c.notes.push("nats-server restarted in the window: its CPU is left out".into()),
        _ => c.notes.push("nats-server's process could not be read: its CPU is left out".into()),
    }
    c.total_cpu_ms_per_request = per(total_ns) / 1e6;
    c.sut_cpu_ms_per_request = c.total_cpu_ms_per_request - c.cpu_ms_per_request.get("generator").copied().unwrap_or(0.0);
    c.cores_busy = if elapsed.is_zero() { 0.0 } else { total_ns as f64 / 1e9 / elapsed.as_secs_f64() };
    match (a.nats_msgs, b.nats_msgs) {
        (Some((ia, oa)), Some((ib, ob))) if ib >= ia && ob >= oa => {
            c.nats_in_msgs_per_request = Some(per(ib - ia));
            c.nats_out_msgs_per_request = Some(per(ob - oa));
        }
        _ => c.notes.push("nats-server's /varz could not be read (or its counters restarted): no message counts".into()),
    }
    match (a.stream_writes, b.stream_writes) {
        (Some(wa), Some(wb)) if wb >= wa => c.stream_writes_per_request = Some(per(wb - wa)),
        _ => c.notes.push("nats-server's /jsz could not be read: no stream write counts".into()),
    }
    c
}

/// The window measured: from `warmup` (at most a quarter of the run) to the end of the schedule.
pub fn window(duration: Duration, warmup: Duration) -> (Duration, Duration) {
    (warmup.min(duration / 4), duration)
}

/// Samples at the start and the end of the window (relative to the schedule's start) and
/// returns the cost of one request in it.
pub async fn measure(schedule: std::sync::Arc<crate::schedule::Schedule>, nats: Option<NatsProbe>, warmup: Duration) -> Cost {
    let http = reqwest::Client::new();
    let duration = schedule.offset(schedule.total());
    let (from, to) = window(duration, warmup);
    let t0 = schedule.started().await;
    tokio::time::sleep_until((t0 + from).into()).await;
    let a = sample(&http, nats.as_ref()).await;
    let started = std::time::Instant::now();
    tokio::time::sleep_until((t0 + to).into()).await;
    let b = sample(&http, nats.as_ref()).await;
    let requests = ((to - from).as_secs_f64() * schedule.rate()).round() as u64;
    cost(&a, &b, started.elapsed(), [from.as_secs_f64(), to.as_secs_f64()], requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_told_apart_by_name() {
        assert_eq!(role_of("load-generator"), "generator");
        assert_eq!(role_of("sut-gateway"), "gateway");
        assert_eq!(role_of("sut-workers"), "workers");
        assert_eq!(role_of("sut-processor"), "processor");
        assert_eq!(role_of("loadtest"), OTHER_ROLE);
    }

    #[test]
    fn this_process_and_its_threads_are_read() {
        let mine = threads_ns();
        assert!(mine.values().sum::<u64>() > 0, "{mine:?}");
        assert!(process_cpu_ns(std::process::id()).is_some());
    }

    #[test]
    fn cost_divides_deltas_by_requests() {
        let a = Sample {
            threads_ns: BTreeMap::from([("generator".into(), 1_000_000), ("gateway".into(), 0)]),
            nats_cpu: Some((7, 0)),
            nats_msgs: Some((10, 20)),
            stream_writes: Some(5),
        };
        let b = Sample {
            threads_ns: BTreeMap::from([("generator".into(), 101_000_000), ("gateway".into(), 300_000_000)]),
            nats_cpu: Some((7, 200_000_000)),
            nats_msgs: Some((1010, 3020)),
            stream_writes: Some(305),
        };
        let c = cost(&a, &b, Duration::from_secs(1), [5.0, 6.0], 1000);
        assert_eq!(c.cpu_ms_per_request["generator"], 0.1);
        assert_eq!(c.cpu_ms_per_request["gateway"], 0.3);
        assert_eq!(c.cpu_ms_per_request[NATS_ROLE], 0.2);
        assert!((c.total_cpu_ms_per_request - 0.6).abs() < 1e-9);
        assert!((c.sut_cpu_ms_per_request - 0.5).abs() < 1e-9);
        assert!((c.cores_busy - 0.6).abs() < 1e-9);
        assert_eq!(c.nats_in_msgs_per_request, Some(1.0));
        assert_eq!(c.nats_out_msgs_per_request, Some(3.0));
        assert_eq!(c.stream_writes_per_request, Some(0.3));
        assert!(c.notes.is_empty());
    }

    #[test]
    fn a_restarted_server_is_left_out_and_said() {
        let a = Sample { nats_cpu: Some((7, 0)), ..Default::default() };
        let b = Sample { nats_cpu: Some((8, 5)), ..Default::default() };
        let c = cost(&a, &b, Duration::from_secs(1), [0.0, 1.0], 10);
        assert!(!c.cpu_ms_per_request.contains_key(NATS_ROLE));
        assert!(c.notes.iter().any(|n| n.contains("restarted")), "{:?}", c.notes);
    }

    #[test]
    fn stream_writes_sum_every_stream() {
        let jsz = serde_json::json!({"account_details": [{"stream_detail": [{"state": {"last_seq": 3}}, {"state": {"last_seq": 4}}]}, {"stream_detail": [{"state": {"last_seq": 10}}]}]});
        assert_eq!(stream_writes(&jsz), Some(17));
        assert_eq!(stream_writes(&serde_json::json!({})), None);
    }
}
