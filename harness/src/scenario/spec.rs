//! Scenario scripts as data: a TOML file with a topology, a workload, a fault timeline and
//! expectations. The format is documented in `scenarios/README.md`.
//!
//! ```toml
//! name = "worker-crash-after-processor"
//! description = "a worker dies after charging, before replying"
//! seed = 7                       # optional; `--seed` overrides
//!
//! [topology]
//! nodes = 1                      # 1 or 3 (JetStream cluster, R3 streams)
//! workers = 2
//! subject_scheme = "shared"      # or "per_merchant"
//! sync_interval = "default"      # or "always" (JetStream fsync on every write)
//!
//! [workload]
//! payments_per_s = 20
//! duration_s = 10
//! concurrency = 32
//! mix = { manual = 3, automatic = 2, void = 1, refund = 2, sync = 2 }
//!
//! [[faults]]
//! at_s = 2.0
//! until_s = 6.0
//! verb = "worker_latency"
//! latency = { kind = "fixed", ms = 500 }
//!
//! [expect]
//! invariants = ["no_double_effect", "amounts", "zero_stuck", "agreement", "accounting", "integrity", "no_card_data"]
//! quiesce_s = 30
//! [expect.p99_ms]
//! "payments.authorize" = 2000
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use super::checkers::Invariant;
use serde::Deserialize;
use toml::Spanned;

/// Errors of a scenario file; each names the file and, where known, the line.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Unreadable file.
    #[error("{path}: cannot read: {reason}")]
    Read {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// Malformed TOML or a key or value the format does not have.
    #[error("{path}: {message}")]
    Syntax {
        /// File.
        path: String,
        /// The parser's message (it names line and column).
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// How subjects carry the merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// `hyperswitch.<family>.<operation>`.
    #[default]
    Shared,
    /// `hyperswitch.<family>.{merchant_id}.<operation>`.
    PerMerchant,
}

/// JetStream's `sync_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncInterval {
    /// The server's default (periodic fsync).
    #[default]
    Default,
    /// fsync on every write.
    Always,
}

/// What runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topology {
    /// 1 node or a 3-node cluster.
    pub nodes: usize,
    /// Worker processes.
    pub workers: usize,
    /// Subject scheme.
    pub subject_scheme: Scheme,
    /// JetStream fsync policy.
    pub sync_interval: SyncInterval,
    /// Whether the processor honours Idempotency-Key.
    pub processor_idempotency: bool,
    /// How long JetStream waits for a worker's ack before redelivering (ms). Longer than the
    /// gateway's recovery threshold (8 s in scenario runs) makes recovery, not redelivery,
    /// resolve an operation whose reply was lost.
    pub worker_ack_wait_ms: u64,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            nodes: 1,
            workers: 2,
            subject_scheme: Scheme::Shared,
            sync_interval: SyncInterval::Default,
            processor_idempotency: true,
            worker_ack_wait_ms: 2_000,
        }
    }
}

/// The client load.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// New payments started per second (open model: on schedule, whatever the latency).
    pub payments_per_s: f64,
    /// How long payments are started.
    pub duration_s: f64,
    /// Payments in flight at most.
    pub concurrency: usize,
    /// Relative weights of payment flows: `manual` (authorize, capture in parts), `automatic`
    /// (one authorization with automatic capture: charged in one call), `void`, `refund` (capture then refund), `sync` (retrieve with
    /// force_sync), `retry` (the same request twice with one Idempotency-Key), `concurrent`
    /// (the same request sent concurrently with one key).
    pub mix: BTreeMap<String, u32>,
    /// How long the scenario's HTTP client waits for each call; a timeout is recorded as
    /// unknown. The default outlasts the bridge's whole durable call, so a timeout is rare;
    /// a shorter one makes clients give up while work goes on.
    pub client_timeout_ms: u64,
}

/// Flow names the mix may use.
pub const FLOWS: [&str; 7] = ["manual", "automatic", "void", "refund", "sync", "retry", "concurrent"];

impl Default for Workload {
    fn default() -> Self {
        Workload {
            payments_per_s: 20.0,
            duration_s: 10.0,
            concurrency: 32,
            mix: BTreeMap::from([
                ("manual".to_string(), 3),
                ("automatic".to_string(), 2),
                ("refund".to_string(), 2),
                ("void".to_string(), 1),
            ]),
            client_timeout_ms: super::timing::CLIENT_TIMEOUT_MS,
        }
    }
}

/// One fault of the timeline: a verb applied at `at_s`, undone at `until_s` when it has an undo.
#[derive(Debug, Clone, PartialEq, Deserialize)]
// Unknown keys are refused by the flattened verb (serde cannot deny them on both levels).
pub struct FaultSpec {
    /// Seconds after the workload starts.
    pub at_s: f64,
    /// When the fault is undone (heal, release, restart...); required for verbs with an undo.
    #[serde(default)]
    pub until_s: Option<f64>,
    /// The verb.
    #[serde(flatten)]
    pub verb: Verb,
}

/// Worker latency distribution for `worker_latency`: the worker profile's own type
/// (`kind = "fixed" | "normal" | "long_tail"`).
pub use mock_worker::Latency as LatencySpec;

/// Where a worker dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashPoint {
    /// After marking the key started, before the processor call.
    BeforeProcessor,
    /// After the processor call, before storing and replying.
    AfterProcessor,
    /// After the reply, before the ack.
    AfterReply,
}

fn first_sequence() -> u64 {
    1
}

/// Which duplicates the `duplicates` verb sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateKind {
    /// Client retries through the gateway (same payment id and key).
    #[default]
    ClientRetry,
    /// Stream messages republished with their original headers.
    Publish,
}

/// A client's network link to NATS, for network faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// The gateway's bridge connection.
    Gateway,
    /// Every worker's connection.
    Workers,
}

/// The fault verbs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
pub enum Verb {
    /// Workers add latency until `until_s`.
    WorkerLatency {
        /// The distribution.
        latency: LatencySpec,
    },
    /// A worker process dies (as by SIGKILL) at a point of its next operation, then is restarted.
    WorkerCrash {
        /// Where.
        point: CrashPoint,
    },
    /// Every worker process is SIGKILLed now and restarted at `until_s`.
    WorkerKill,
    /// The NATS server (or cluster node `node`) restarts with its store kept.
    NatsRestart {
        /// Cluster node name (`n1`..`n3`); all nodes of a single-node topology otherwise.
        #[serde(default)]
        node: Option<String>,
    },
    /// A cluster node is killed now and started again at `until_s`.
    NodeKill {
        /// Node name.
        node: String,
    },
    /// A cluster node is cut off from the others and from clients until `until_s`.
    Partition {
        /// Node name.
        node: String,
    },
    /// A node is paused (SIGSTOP / docker pause) until `until_s`.
    Pause {
        /// Node name.
        node: String,
    },
    /// Every node restarts, one at a time.
    RollingRestart,
    /// Duplicates of requests already sent: `client_retry` (default) resends earlier payment
    /// creations with the same payment id and Idempotency-Key through the gateway; `publish`
    /// republishes the streams' latest messages with their headers (same `Nats-Msg-Id`), as a
    /// bridge retrying a publish would.
    Duplicates {
        /// How many.
        count: usize,
        /// Which duplicates.
        #[serde(default)]
        kind: DuplicateKind,
    },
    /// The durable streams are delivered again, from stream sequence `from_seq`, to a fresh
    /// worker consumer (as after a consumer reset or a stream restore).
    Replay {
        /// First stream sequence replayed (default 1: everything).
        #[serde(default = "first_sequence")]
        from_seq: u64,
    },
    /// Workers answer a fraction of durable operations with a worker error (a definite
    /// failure, the processor untouched) until `until_s`.
    WorkerErrors {
        /// Fraction of operations, 0..=1.
        rate: f64,
    },
    /// Workers publish every reply twice until `until_s`.
    DuplicateReplies,
    /// Workers store their results and ack, but their replies are lost in transit, until
    /// `until_s`: callers time out and must learn the outcome by asking.
    DropReplies,
    /// Latency (and jitter) on a client's network link to NATS until `until_s`.
    NetLatency {
        /// Whose link.
        link: Link,
        /// Added to every chunk forwarded, each direction (ms).
        base_ms: u64,
        /// Uniform extra delay in [0, jitter_ms], drawn from the run's seed.
        #[serde(default)]
        jitter_ms: u64,
    },
    /// A client's connections to NATS are cut, and new ones refused, until `until_s`.
    NetCut {
        /// Whose link.
        link: Link,
    },
    /// A client's link to NATS silently stops forwarding (a black hole) until `until_s`.
    NetHold {
        /// Whose link.
        link: Link,
    },
    /// Malformed messages are published to durable subjects (they must be dead-lettered).
    Poison {
        /// How many.
        count: usize,
    },
    /// The processor cannot be reached until `until_s` (consecutive failures: the breaker opens).
    ProcessorDown,
    /// Every processor call waits `ms` before the effect is performed, until `until_s` (a slow
    /// acquirer): the worker is at the processor while callers time out and recovery looks for
    /// the outcome and finds none yet.
    ProcessorLatency {
        /// Added to every call (ms).
        ms: u64,
    },
}

impl Verb {
    /// Verbs that hold until `until_s`.
    pub fn needs_until(&self) -> bool {
        matches!(
            self,
            Verb::WorkerLatency { .. }
                | Verb::WorkerKill
                | Verb::NodeKill { .. }
                | Verb::Partition { .. }
                | Verb::Pause { .. }
                | Verb::ProcessorDown
                | Verb::ProcessorLatency { .. }
                | Verb::WorkerErrors { .. }
                | Verb::DuplicateReplies
                | Verb::DropReplies
                | Verb::NetLatency { .. }
                | Verb::NetCut { .. }
                | Verb::NetHold { .. }
        )
    }

    /// Verbs that need the 3-node cluster.
    pub fn needs_cluster(&self) -> bool {
        matches!(self, Verb::NodeKill { .. } | Verb::Partition { .. } | Verb::Pause { .. } | Verb::RollingRestart)
    }

    /// The verb's name.
    pub fn name(&self) -> &'static str {
        match self {
            Verb::WorkerLatency { .. } => "worker_latency",
            Verb::WorkerCrash { .. } => "worker_crash",
            Verb::WorkerKill => "worker_kill",
            Verb::NatsRestart { .. } => "nats_restart",
            Verb::NodeKill { .. } => "node_kill",
            Verb::Partition { .. } => "partition",
            Verb::Pause { .. } => "pause",
            Verb::RollingRestart => "rolling_restart",
            Verb::Duplicates { .. } => "duplicates",
            Verb::Replay { .. } => "replay",
            Verb::Poison { .. } => "poison",
            Verb::ProcessorDown => "processor_down",
            Verb::ProcessorLatency { .. } => "processor_latency",
            Verb::WorkerErrors { .. } => "worker_errors",
            Verb::DuplicateReplies => "duplicate_replies",
            Verb::DropReplies => "drop_replies",
            Verb::NetLatency { .. } => "net_latency",
            Verb::NetCut { .. } => "net_cut",
            Verb::NetHold { .. } => "net_hold",
        }
    }
}

/// What must hold.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// Invariants to check (default: [`DEFAULT_INVARIANTS`]). `liveness` (no operation failed
    /// because of the system) is for faults a correct system masks completely;
    /// `circuit_breaker` and `dead_letter` for scenarios whose faults must provoke them.
    pub invariants: Vec<Invariant>,
    /// How long the system may take to settle after the faults stop (recovery included).
    pub quiesce_s: f64,
    /// p99 latency targets by operation, ms.
    pub p99_ms: BTreeMap<String, f64>,
}

/// The invariants checked when a scenario names none: every safety invariant (liveness is
/// opted into by scenarios whose faults a correct system masks completely).
pub const DEFAULT_INVARIANTS: [Invariant; 8] = [
    Invariant::NoDoubleEffect,
    Invariant::Amounts,
    Invariant::ZeroStuck,
    Invariant::Agreement,
    Invariant::Accounting,
    Invariant::Integrity,
    Invariant::Latency,
    Invariant::NoCardData,
];

impl Default for Expect {
    fn default() -> Self {
        Expect { invariants: DEFAULT_INVARIANTS.to_vec(), quiesce_s: 30.0, p99_ms: BTreeMap::new() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    topology: Topology,
    #[serde(default)]
    workload: Workload,
    #[serde(default)]
    faults: Vec<Spanned<FaultSpec>>,
    #[serde(default)]
    expect: Expect,
}

/// A parsed, checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Short name (report directory names use it).
    pub name: String,
    /// One line for people.
    pub description: String,
    /// Seed from the file, if any.
    pub seed: Option<u64>,
    /// What runs.
    pub topology: Topology,
    /// The client load.
    pub workload: Workload,
    /// The fault timeline, by start time.
    pub faults: Vec<FaultSpec>,
    /// What must hold.
    pub expect: Expect,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

impl Scenario {
    /// Whether a network fault of the timeline acts on `link` (its client then reaches NATS
    /// through fault proxies).
    pub fn uses_link(&self, link: Link) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f.verb, Verb::NetLatency { link: l, .. } | Verb::NetCut { link: l } | Verb::NetHold { link: l } if l == link))
    }

    /// A shorter variant for the test suite: the workload and the fault timeline scaled by
    /// `factor` (0 < factor <= 1), the rate kept.
    pub fn scaled(&self, factor: f64) -> Scenario {
        let mut s = self.clone();
        s.workload.duration_s *= factor;
        for f in &mut s.faults {
            f.at_s *= factor;
            f.until_s = f.until_s.map(|u| u * factor);
        }
        s
    }

    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, SpecError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| SpecError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses and checks scenario text; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Scenario, SpecError> {
        let raw: Raw = toml::from_str(text)
            .map_err(|e| SpecError::Syntax { path: path.into(), message: e.to_string().trim_end().replace('\n', " | ") })?;
        let invalid = |line: usize, message: String| SpecError::Invalid { path: path.into(), line, message };
        let line_for = |key: &str| text.lines().position(|l| l.trim_start().starts_with(key)).map(|i| i + 1).unwrap_or(1);
        if raw.name.trim().is_empty() || !raw.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(invalid(line_for("name"), format!("name {:?} must be letters, digits, '-' or '_'", raw.name)));
        }
        let t = &raw.topology;
        if t.nodes != 1 && t.nodes != 3 {
            return Err(invalid(line_for("nodes"), format!("topology.nodes must be 1 or 3, got {}", t.nodes)));
        }
        if t.workers == 0 {
            return Err(invalid(line_for("workers"), "topology.workers must be at least 1".into()));
        }
        let w = &raw.workload;
        if !(w.payments_per_s > 0.0 && w.payments_per_s <= 5000.0) {
            return Err(invalid(
                line_for("payments_per_s"),
                format!("workload.payments_per_s must be in (0, 5000], got {}", w.payments_per_s),
            ));
        }
        if !(w.duration_s > 0.0 && w.duration_s <= 3600.0) {
            return Err(invalid(line_for("duration_s"), format!("workload.duration_s must be in (0, 3600], got {}", w.duration_s)));
        }
        if w.client_timeout_ms == 0 {
            return Err(invalid(line_for("client_timeout_ms"), "workload.client_timeout_ms must be at least 1".into()));
        }
        if w.concurrency == 0 {
            return Err(invalid(line_for("concurrency"), "workload.concurrency must be at least 1".into()));
        }
        for (flow, weight) in &w.mix {
            if !FLOWS.contains(&flow.as_str()) {
                return Err(invalid(line_for("mix"), format!("workload.mix: unknown flow {flow:?} (known: {})", FLOWS.join(", "))));
            }
            let _ = weight;
        }
        if w.mix.values().sum::<u32>() == 0 {
            return Err(invalid(line_for("mix"), "workload.mix: weights sum to zero".into()));
        }
        let mut faults = Vec::new();
        for f in raw.faults {
            let line = line_of(text, f.span().start);
            let f = f.into_inner();
            if f.at_s < 0.0 {
                return Err(invalid(line, format!("{}: at_s must not be negative", f.verb.name())));
            }
            match (f.verb.needs_until(), f.until_s) {
                (true, None) => return Err(invalid(line, format!("{} needs until_s (when it is undone)", f.verb.name()))),
                (_, Some(u)) if u <= f.at_s => {
                    return Err(invalid(line, format!("{}: until_s ({u}) must be after at_s ({})", f.verb.name(), f.at_s)))
                }
                _ => {}
            }
            if f.verb.needs_cluster() && t.nodes != 3 {
                return Err(invalid(line, format!("{} needs topology.nodes = 3", f.verb.name())));
            }
            if let Verb::NodeKill { node } | Verb::Partition { node } | Verb::Pause { node } = &f.verb {
                if !["n1", "n2", "n3"].contains(&node.as_str()) {
                    return Err(invalid(line, format!("{}: node must be n1, n2 or n3, got {node:?}", f.verb.name())));
                }
            }
            match &f.verb {
                Verb::WorkerErrors { rate } if !(0.0..=1.0).contains(rate) => {
                    return Err(invalid(line, format!("worker_errors: rate must be within 0..=1, got {rate}")));
                }
                Verb::Replay { from_seq: 0 } => {
                    return Err(invalid(line, "replay: from_seq must be at least 1 (stream sequences start at 1)".into()))
                }
                Verb::Duplicates { count: 0, .. } | Verb::Poison { count: 0 } => {
                    return Err(invalid(line, format!("{}: count must be at least 1", f.verb.name())));
                }
                _ => {}
            }
            faults.push(f);
        }
        faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        for op in raw.expect.p99_ms.keys() {
            if nats_bridge::catalogue::find(op).is_none() {
                return Err(invalid(line_for(&format!("\"{op}\"")), format!("expect.p99_ms: unknown operation {op:?}")));
            }
        }
        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            seed: raw.seed,
            topology: raw.topology,
            workload: raw.workload,
            faults,
            expect: raw.expect,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "crash-after-processor"
seed = 7

[topology]
nodes = 1
workers = 2

[workload]
payments_per_s = 10
duration_s = 5
mix = { manual = 1, refund = 1 }

[[faults]]
at_s = 1.0
verb = "worker_crash"
point = "after_processor"

[[faults]]
at_s = 0.5
until_s = 2.0
verb = "worker_latency"
latency = { kind = "fixed", ms = 200 }

[expect]
quiesce_s = 10
[expect.p99_ms]
"payments.authorize" = 2000
"#;

    #[test]
    fn a_good_file_parses_and_faults_are_ordered() {
        let s = Scenario::parse("good.toml", GOOD).unwrap();
        assert_eq!(s.seed, Some(7));
        assert_eq!(s.faults.len(), 2);
        assert_eq!(s.faults[0].verb.name(), "worker_latency");
        assert_eq!(s.faults[1].verb, Verb::WorkerCrash { point: CrashPoint::AfterProcessor });
        assert_eq!(s.expect.invariants.len(), DEFAULT_INVARIANTS.len());
    }

    #[test]
    fn errors_name_the_line() {
        let bad_verb = GOOD.replace("verb = \"worker_crash\"", "verb = \"worker_crsh\"");
        let e = Scenario::parse("f.toml", &bad_verb).unwrap_err().to_string();
        assert!(e.contains("line") && e.contains("worker_crsh"), "{e}");
        let no_until = GOOD.replace("until_s = 2.0\n", "");
        let e = Scenario::parse("f.toml", &no_until).unwrap_err().to_string();
        assert!(e.starts_with("f.toml:19:") && e.contains("needs until_s"), "{e}");
        let typo = GOOD.replace("duration_s = 5", "duraton_s = 5");
        let e = Scenario::parse("f.toml", &typo).unwrap_err().to_string();
        assert!(e.contains("duraton_s") && e.contains("line"), "{e}");
        let cluster_only =
            GOOD.replace("verb = \"worker_crash\"\npoint = \"after_processor\"", "verb = \"partition\"\nnode = \"n2\"\nuntil_s = 3.0");
        let e = Scenario::parse("f.toml", &cluster_only).unwrap_err().to_string();
        assert!(e.contains("nodes = 3"), "{e}");
        let field = GOOD.replace("point = \"after_processor\"", "ponit = \"after_processor\"");
        let e = Scenario::parse("f.toml", &field).unwrap_err().to_string();
        assert!(e.contains("ponit") && e.contains("line"), "{e}");
        let op = GOOD.replace("\"payments.authorize\" = 2000", "\"payments.authorise\" = 2000");
        let e = Scenario::parse("f.toml", &op).unwrap_err().to_string();
        assert!(e.contains("payments.authorise") && e.starts_with("f.toml:"), "{e}");
        let timeout = GOOD.replace("duration_s = 5", "duration_s = 5\nclient_timeout_ms = 0");
        let e = Scenario::parse("f.toml", &timeout).unwrap_err().to_string();
        assert!(e.contains("client_timeout_ms must be at least 1") && e.starts_with("f.toml:"), "{e}");
        let timeout = GOOD.replace("duration_s = 5", "duration_s = 5\nclient_timeout_ms = 2500");
        assert_eq!(Scenario::parse("f.toml", &timeout).unwrap().workload.client_timeout_ms, 2500);
        let invariant = GOOD.replace("quiesce_s = 10", "quiesce_s = 10\ninvariants = [\"zero_stuk\"]");
        let e = Scenario::parse("f.toml", &invariant).unwrap_err().to_string();
        assert!(e.contains("zero_stuk") && e.contains("zero_stuck") && e.contains("line"), "{e}");
        let named = GOOD.replace("quiesce_s = 10", "quiesce_s = 10\ninvariants = [\"dead_letter\", \"liveness\"]");
        assert_eq!(Scenario::parse("f.toml", &named).unwrap().expect.invariants, [Invariant::DeadLetter, Invariant::Liveness]);
    }
}
