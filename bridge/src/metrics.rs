//! Metrics rendered in the Prometheus text exposition format (version 0.0.4), without global
//! state.
//!
//! Each [`Bridge`](crate::Bridge) owns one [`Registry`], shared as an `Arc` through
//! [`Bridge::metrics`](crate::Bridge::metrics): the application registers its own counters and
//! gauges in it (get-or-create by name and labels) and serves [`Registry::render`] on
//! `GET /metrics` with [`CONTENT_TYPE`].
//!
//! ```
//! let registry = nats_bridge::metrics::Registry::new();
//! let recovered = registry.counter("nats_recovery_job_recovered_count", "attempts the recovery job settled", &[]);
//! recovered.inc();
//! assert!(registry.render().contains("nats_recovery_job_recovered_count 1\n"));
//! ```
//!
//! The bridge's own metrics ([`names`]) use the seeds' names. Per-operation series appear once an
//! operation is first called; the breaker gauge covers every operation from the start.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crate::breaker::Breakers;
use crate::catalogue::{self, Operation, Pattern};
use crate::envelope::ResponseStatus;

/// The `Content-Type` of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of `nats_request_duration_seconds`, in seconds: 0.5 ms to 30 s (the durable budget).
pub const DURATION_BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Names of the bridge's metrics (seed names first).
pub mod names {
    /// Histogram, label `operation`: a call's duration, from sending to reply or error, for every
    /// call the breaker let through.
    pub const REQUEST_DURATION: &str = "nats_request_duration_seconds";
    /// Counter, label `operation`: calls that ended in a timeout (reply, query, or no publish ack).
    pub const TIMEOUTS: &str = "nats_timeout_count";
    /// Counter, label `operation`: JetStream publish attempts that failed (no ack, error, no
    /// stream); each retry counts.
    pub const PUBLISH_ERRORS: &str = "nats_jetstream_publish_errors";
    /// Counter, labels `operation`, `status`: worker replies returned to the caller, by the
    /// reply's status (`success`, `failure`, `processing`, `requires_customer_action`).
    pub const WORKER_RESPONSES: &str = "nats_worker_response_success";
    /// Counter, label `operation`: JetStream publish acks received (duplicates included).
    pub const ACKS: &str = "nats_jetstream_ack_success";
    /// Counter, label `operation`: publishes JetStream reported as duplicates.
    pub const DUPLICATES: &str = "nats_jetstream_publish_duplicates";
    /// Counter, label `operation`: replies refused (undecodable, or not matching the request).
    pub const REJECTED_REPLIES: &str = "nats_rejected_replies";
    /// Counter, no label: replies that reached the inbox after their call gave up.
    pub const LATE_REPLIES: &str = "nats_late_replies";
    /// Counter, no label: late replies not handed to the application (buffer full or receiver gone).
    pub const LATE_REPLIES_DROPPED: &str = "nats_late_replies_dropped";
    /// Counter, label `reason`: replies nobody waited for that were refused (oversized,
    /// undecodable, without a message id, or sent to another message's inbox address).
    pub const LATE_REPLIES_REJECTED: &str = "nats_late_replies_rejected";
    /// Gauge, label `operation`: 0 closed, 1 open, 2 half-open.
    pub const BREAKER_STATE: &str = "nats_circuit_breaker_state";
    /// Counter, label `operation`: calls refused because the breaker was open.
    pub const BREAKER_REJECTIONS: &str = "nats_circuit_breaker_rejected_calls";
}

/// Why a metric could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// The name does not match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {0:?}")]
    InvalidName(String),
    /// A label name is malformed, reserved (`__*`, `le` on histograms) or repeated.
    #[error("invalid label name {label:?} on metric {metric}")]
    InvalidLabel {
        /// The metric.
        metric: String,
        /// The label.
        label: String,
    },
    /// The name is taken by a metric of another type.
    #[error("metric {name} is a {existing}, not a {requested}")]
    KindConflict {
        /// The metric.
        name: String,
        /// Its registered type.
        existing: MetricKind,
        /// The type asked for.
        requested: MetricKind,
    },
    /// The name is registered with other label names.
    #[error("metric {name} has labels {existing:?}, not {requested:?}")]
    LabelConflict {
        /// The metric.
        name: String,
        /// Its label names.
        existing: Vec<String>,
        /// The label names asked for.
        requested: Vec<String>,
    },
    /// Histogram buckets must be finite and strictly increasing, and stay the same per name.
    #[error("histogram {0}: buckets must be non-empty, finite, strictly increasing and the same for every series")]
    InvalidBuckets(String),
}

/// The type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Counts observations in buckets, with their sum.
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

impl std::fmt::Display for MetricKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A counter series. Cheap to clone; clones share the value. [`Counter::default`] is a counter
/// in no registry.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge series. Cheap to clone; clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds `d` (negative to subtract).
    pub fn add(&self, d: f64) {
        add_f64(&self.0, d);
    }

    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

fn add_f64(cell: &AtomicU64, d: f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + d).to_bits()));
}

/// A histogram series. Cheap to clone; clones share the counts.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCore>);

#[derive(Debug)]
struct HistogramCore {
    /// Upper bounds (`le`), strictly increasing, without `+Inf`.
    bounds: Arc<[f64]>,
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: Arc<[f64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramCore { bounds, counts, sum: AtomicU64::new(0) }))
    }

    /// Records one observation (NaN is ignored).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.0.bounds.partition_point(|b| *b < v);
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        add_f64(&self.0.sum, v);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observations so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: MetricKind,
    /// Label names, sorted.
    labels: Vec<String>,
    /// Histograms only.
    buckets: Option<Arc<[f64]>>,
    /// Series by label values (in `labels` order).
    series: BTreeMap<Vec<String>, Series>,
}

type Collector = Arc<dyn Fn() + Send + Sync>;

/// Metric families by name, rendered in the text exposition format. Share it as an `Arc`.
#[derive(Default)]
pub struct Registry {
    families: RwLock<BTreeMap<String, Family>>,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.families.read().map(|f| f.len()).unwrap_or(0);
        f.debug_struct("Registry").field("families", &n).finish()
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(label: &str) -> bool {
    let mut chars = label.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !label.starts_with("__")
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name` with these labels, created at 0 if new.
    ///
    /// # Panics
    /// On the misuses [`Registry::try_counter`] reports (a bad name, a name already used with
    /// another type or other label names).
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        self.try_counter(name, help, labels).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The counter `name` with these labels, created at 0 if new. The first registration's
    /// help text is kept.
    pub fn try_counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Result<Counter, MetricError> {
        match self.series(name, help, MetricKind::Counter, labels, None)? {
            Series::Counter(c) => Ok(c),
            _ => unreachable!("kind checked"),
        }
    }

    /// The gauge `name` with these labels, created at 0 if new.
    ///
    /// # Panics
    /// As [`Registry::counter`].
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        self.try_gauge(name, help, labels).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The gauge `name` with these labels, created at 0 if new.
    pub fn try_gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Result<Gauge, MetricError> {
        match self.series(name, help, MetricKind::Gauge, labels, None)? {
            Series::Gauge(g) => Ok(g),
            _ => unreachable!("kind checked"),
        }
    }

    /// The histogram `name` with these labels and bucket upper bounds (`+Inf` is implied).
    ///
    /// # Panics
    /// As [`Registry::counter`], and on invalid buckets.
    pub fn histogram(&self, name: &str, help: &str, labels: &[(&str, &str)], buckets: &[f64]) -> Histogram {
        self.try_histogram(name, help, labels, buckets).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The histogram `name` with these labels and bucket upper bounds (`+Inf` is implied).
    pub fn try_histogram(&self, name: &str, help: &str, labels: &[(&str, &str)], buckets: &[f64]) -> Result<Histogram, MetricError> {
        let ok = !buckets.is_empty() && buckets.iter().all(|b| b.is_finite()) && buckets.windows(2).all(|w| w[0] < w[1]);
        if !ok {
            return Err(MetricError::InvalidBuckets(name.to_string()));
        }
        match self.series(name, help, MetricKind::Histogram, labels, Some(buckets))? {
            Series::Histogram(h) => Ok(h),
            _ => unreachable!("kind checked"),
        }
    }

    /// Runs `collect` at the start of every [`Registry::render`], to set gauges that are read
    /// rather than pushed (a state, a queue length). It must not call `render`.
    pub fn on_render(&self, collect: impl Fn() + Send + Sync + 'static) {
        self.collectors.lock().expect("collectors lock").push(Arc::new(collect));
    }

    fn series(
        &self,
        name: &str,
        help: &str,
        kind: MetricKind,
        labels: &[(&str, &str)],
        buckets: Option<&[f64]>,
    ) -> Result<Series, MetricError> {
        if !valid_name(name) {
            return Err(MetricError::InvalidName(name.to_string()));
        }
        let mut sorted: Vec<(&str, &str)> = labels.to_vec();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (i, (label, _)) in sorted.iter().enumerate() {
            let repeated = i > 0 && sorted[i - 1].0 == *label;
            if !valid_label(label) || repeated || (kind == MetricKind::Histogram && *label == "le") {
                return Err(MetricError::InvalidLabel { metric: name.to_string(), label: label.to_string() });
            }
        }
        let values: Vec<String> = sorted.iter().map(|(_, v)| v.to_string()).collect();
        let check = |f: &Family| -> Result<(), MetricError> {
            if f.kind != kind {
                return Err(MetricError::KindConflict { name: name.to_string(), existing: f.kind, requested: kind });
            }
            if f.labels.len() != sorted.len() || f.labels.iter().zip(&sorted).any(|(a, (b, _))| a != b) {
                return Err(MetricError::LabelConflict {
                    name: name.to_string(),
                    existing: f.labels.clone(),
                    requested: sorted.iter().map(|(l, _)| l.to_string()).collect(),
                });
            }
            if f.buckets.as_deref() != buckets {
                return Err(MetricError::InvalidBuckets(name.to_string()));
            }
            Ok(())
        };
        {
            let families = self.families.read().expect("metrics lock");
            if let Some(f) = families.get(name) {
                check(f)?;
                if let Some(s) = f.series.get(&values) {
                    return Ok(s.clone());
                }
            }
        }
        let mut families = self.families.write().expect("metrics lock");
        let family = families.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            labels: sorted.iter().map(|(l, _)| l.to_string()).collect(),
            buckets: buckets.map(Arc::from),
            series: BTreeMap::new(),
        });
        check(family)?;
        let bounds = family.buckets.clone();
        let series = family.series.entry(values).or_insert_with(|| match kind {
            MetricKind::Counter => Series::Counter(Counter::default()),
            MetricKind::Gauge => Series::Gauge(Gauge::default()),
            MetricKind::Histogram => Series::Histogram(Histogram::new(bounds.expect("histogram buckets"))),
        });
        Ok(series.clone())
    }

    /// Every metric in the text exposition format, families sorted by name.
    pub fn render(&self) -> String {
        let collectors: Vec<Collector> = self.collectors.lock().expect("collectors lock").clone();
        for collect in collectors {
            collect();
        }
        let families = self.families.read().expect("metrics lock");
        let mut out = String::with_capacity(4096);
        for (name, f) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (values, series) in &f.series {
                let pairs: Vec<(&str, &str)> = f.labels.iter().map(String::as_str).zip(values.iter().map(String::as_str)).collect();
                match series {
                    Series::Counter(c) => {
                        let _ = writeln!(out, "{name}{} {}", label_set(&pairs, None), c.get());
                    }
                    Series::Gauge(g) => {
                        let _ = writeln!(out, "{name}{} {}", label_set(&pairs, None), fmt_f64(g.get()));
                    }
                    Series::Histogram(h) => {
                        let counts: Vec<u64> = h.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
                        let mut cumulative = 0;
                        for (bound, n) in h.0.bounds.iter().zip(&counts) {
                            cumulative += n;
                            let le = fmt_f64(*bound);
                            let _ = writeln!(out, "{name}_bucket{} {cumulative}", label_set(&pairs, Some(&le)));
                        }
                        let total: u64 = counts.iter().sum();
                        let _ = writeln!(out, "{name}_bucket{} {total}", label_set(&pairs, Some("+Inf")));
                        let _ = writeln!(out, "{name}_sum{} {}", label_set(&pairs, None), fmt_f64(h.sum()));
                        let _ = writeln!(out, "{name}_count{} {total}", label_set(&pairs, None));
                    }
                }
            }
        }
        out
    }
}

fn label_set(pairs: &[(&str, &str)], le: Option<&str>) -> String {
    if pairs.is_empty() && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().copied().chain(le.map(|le| ("le", le))).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape_value(v));
    }
    s.push('}');
    s
}

fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn status_label(status: ResponseStatus) -> &'static str {
    match status {
        ResponseStatus::Success => "success",
        ResponseStatus::Failure => "failure",
        ResponseStatus::Processing => "processing",
        ResponseStatus::RequiresCustomerAction => "requires_customer_action",
    }
}

const STATUSES: [ResponseStatus; 4] =
    [ResponseStatus::Success, ResponseStatus::Failure, ResponseStatus::Processing, ResponseStatus::RequiresCustomerAction];

/// The series of one operation, registered on its first call.
pub(crate) struct OpMetrics {
    pub(crate) duration: Histogram,
    pub(crate) timeouts: Counter,
    /// Durable operations only (detached for queries, so they do not render).
    pub(crate) publish_errors: Counter,
    pub(crate) acks: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) rejected: Counter,
    pub(crate) breaker_rejections: Counter,
    worker: [Counter; 4],
}

impl OpMetrics {
    fn new(registry: &Registry, op: Operation) -> Self {
        let l: &[(&str, &str)] = &[("operation", op.name)];
        let durable = op.pattern == Pattern::Durable;
        let js = |name: &str, help: &str| if durable { registry.counter(name, help, l) } else { Counter::default() };
        OpMetrics {
            duration: registry.histogram(
                names::REQUEST_DURATION,
                "duration of bridge calls that reached nats, from send to reply or error",
                l,
                &DURATION_BUCKETS,
            ),
            timeouts: registry.counter(names::TIMEOUTS, "calls that ended in a timeout (reply, query or publish ack)", l),
            publish_errors: js(names::PUBLISH_ERRORS, "jetstream publish attempts that failed (each retry counts)"),
            acks: js(names::ACKS, "jetstream publish acks received, duplicates included"),
            duplicates: js(names::DUPLICATES, "publishes jetstream reported as duplicates"),
            rejected: registry.counter(names::REJECTED_REPLIES, "replies refused: undecodable or not matching the request", l),
            breaker_rejections: registry.counter(names::BREAKER_REJECTIONS, "calls refused because the circuit breaker was open", l),
            worker: STATUSES.map(|s| {
                registry.counter(
                    names::WORKER_RESPONSES,
                    "worker replies returned to the caller, by reply status",
                    &[("operation", op.name), ("status", status_label(s))],
                )
            }),
        }
    }

    /// The counter of worker replies with `status`.
    pub(crate) fn worker_response(&self, status: ResponseStatus) -> &Counter {
        let i = STATUSES.iter().position(|s| *s == status).unwrap_or(0);
        &self.worker[i]
    }
}

/// The bridge's instruments in its registry.
pub(crate) struct BridgeMetrics {
    registry: Arc<Registry>,
    per_op: HashMap<&'static str, OnceLock<OpMetrics>>,
    pub(crate) late_replies: Counter,
    pub(crate) late_replies_dropped: Counter,
    /// By reason: `oversized`, `undecodable`, `no_message_id`, `wrong_inbox`.
    pub(crate) late_replies_rejected: [(&'static str, Counter); 4],
}

impl BridgeMetrics {
    /// Registers the bridge's metrics, with a collector that reads the breakers' states.
    pub(crate) fn new(registry: Arc<Registry>, breakers: Arc<Breakers>) -> Self {
        let gauges: Vec<(Operation, Gauge)> = catalogue::all()
            .map(|op| {
                (
                    op,
                    registry.gauge(names::BREAKER_STATE, "circuit breaker state: 0 closed, 1 open, 2 half-open", &[("operation", op.name)]),
                )
            })
            .collect();
        registry.on_render(move || {
            for (op, gauge) in &gauges {
                gauge.set(breakers.state(op).gauge_value());
            }
        });
        BridgeMetrics {
            late_replies: registry.counter(names::LATE_REPLIES, "replies that reached the inbox after their call gave up", &[]),
            late_replies_dropped: registry.counter(
                names::LATE_REPLIES_DROPPED,
                "late replies not handed to the application: buffer full or receiver dropped",
                &[],
            ),
            late_replies_rejected: ["oversized", "undecodable", "no_message_id", "wrong_inbox"].map(|reason| {
                (
                    reason,
                    registry.counter(
                        names::LATE_REPLIES_REJECTED,
                        "replies nobody waited for, refused: oversized, undecodable, without a message id, or sent to another message's inbox",
                        &[("reason", reason)],
                    ),
                )
            }),
            per_op: catalogue::all().map(|op| (op.name, OnceLock::new())).collect(),
            registry,
        }
    }

    /// The registry.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The series of `op`, registered on first use.
    pub(crate) fn op(&self, op: Operation) -> &OpMetrics {
        self.per_op.get(op.name).expect("catalogue operation").get_or_init(|| OpMetrics::new(&self.registry, op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CircuitBreakerConfig;

    /// Checks `text` line by line against the text exposition format; returns the samples.
    fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped = std::collections::HashSet::new();
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'), "ends with a newline");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("help text");
                assert!(valid_name(name), "{line}");
                assert!(helped.insert(name.to_string()), "one HELP per family: {line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("type");
                assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
                assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "one TYPE per family: {line}");
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("closing brace: {line}"));
                    let mut labels = BTreeMap::new();
                    let mut chars = body.chars().peekable();
                    while chars.peek().is_some() {
                        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                        assert!(valid_label(&key) || key == "le", "label {key:?} in {line}");
                        assert_eq!(chars.next(), Some('"'), "{line}");
                        let mut v = String::new();
                        loop {
                            match chars.next().unwrap_or_else(|| panic!("unterminated value: {line}")) {
                                '\\' => match chars.next() {
                                    Some('n') => v.push('\n'),
                                    Some(c @ ('\\' | '"')) => v.push(c),
                                    other => panic!("bad escape {other:?} in {line}"),
                                },
                                '"' => break,
                                c => v.push(c),
                            }
                        }
                        labels.insert(key, v);
                        match chars.next() {
                            Some(',') | None => {}
                            other => panic!("expected a comma, got {other:?} in {line}"),
                        }
                    }
                    (name.to_string(), labels)
                }
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|k| k == "histogram")))
                .unwrap_or(&name);
            assert!(types.contains_key(family), "TYPE before samples of {family}: {line}");
            if types[family] == "histogram" {
                assert_ne!(family, name, "histogram samples are _bucket, _sum or _count: {line}");
                assert_eq!(name.ends_with("_bucket"), labels.contains_key("le"), "le exactly on buckets: {line}");
            }
            samples.push((name, labels, value));
        }
        samples
    }

    fn sample(samples: &[(String, BTreeMap<String, String>, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        samples.iter().find(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| *v)
    }

    #[test]
    fn renders_counters_gauges_and_histograms_in_the_exposition_format() {
        let r = Registry::new();
        let c = r.counter("jobs_total", "jobs run", &[("kind", "a\"b\\c\nd")]);
        c.inc_by(3);
        r.counter("plain", "no labels", &[]).inc();
        r.gauge("queue_len", "items waiting", &[("queue", "q1")]).set(2.5);
        let h = r.histogram("latency_seconds", "latency\nsecond line", &[("operation", "payments.sync")], &DURATION_BUCKETS);
        h.observe(0.0004);
        h.observe(0.003);
        h.observe(0.003);
        h.observe_duration(Duration::from_secs(45));
        let text = r.render();
        let s = parse(&text);
        assert_eq!(sample(&s, "jobs_total", &[("kind", "a\"b\\c\nd")]), Some(3.0));
        assert_eq!(sample(&s, "plain", &[]), Some(1.0));
        assert_eq!(sample(&s, "queue_len", &[("queue", "q1")]), Some(2.5));
        let op = ("operation", "payments.sync");
        assert_eq!(sample(&s, "latency_seconds_bucket", &[op, ("le", "0.0005")]), Some(1.0));
        assert_eq!(sample(&s, "latency_seconds_bucket", &[op, ("le", "0.0025")]), Some(1.0));
        assert_eq!(sample(&s, "latency_seconds_bucket", &[op, ("le", "0.005")]), Some(3.0));
        assert_eq!(sample(&s, "latency_seconds_bucket", &[op, ("le", "30")]), Some(3.0));
        assert_eq!(sample(&s, "latency_seconds_bucket", &[op, ("le", "+Inf")]), Some(4.0));
        assert_eq!(sample(&s, "latency_seconds_count", &[op]), Some(4.0));
        let sum = sample(&s, "latency_seconds_sum", &[op]).unwrap();
        assert!((sum - 45.0064).abs() < 1e-9, "{sum}");
        // Buckets are cumulative and in increasing order of le.
        let buckets: Vec<f64> = s.iter().filter(|(n, _, _)| n == "latency_seconds_bucket").map(|(_, _, v)| *v).collect();
        assert_eq!(buckets.len(), DURATION_BUCKETS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert!(text.contains("# HELP latency_seconds latency\\nsecond line\n"), "{text}");
        assert!(text.contains("# TYPE latency_seconds histogram\n"));
        assert!(text.contains("latency_seconds_bucket{operation=\"payments.sync\",le=\"0.0005\"} 1\n"), "{text}");
    }

    #[test]
    fn get_or_create_shares_series_and_refuses_misuse() {
        let r = Registry::new();
        let a = r.counter("calls", "calls", &[("b", "2"), ("a", "1")]);
        let b = r.counter("calls", "ignored help", &[("a", "1"), ("b", "2")]);
        a.inc();
        assert_eq!(b.get(), 1, "same series whatever the label order");
        assert!(matches!(r.try_gauge("calls", "x", &[("a", "1"), ("b", "2")]), Err(MetricError::KindConflict { .. })));
        assert!(matches!(r.try_counter("calls", "x", &[("a", "1")]), Err(MetricError::LabelConflict { .. })));
        assert!(matches!(r.try_counter("bad-name", "x", &[]), Err(MetricError::InvalidName(_))));
        assert!(matches!(r.try_counter("ok", "x", &[("__x", "1")]), Err(MetricError::InvalidLabel { .. })));
        assert!(matches!(r.try_counter("ok", "x", &[("a", "1"), ("a", "2")]), Err(MetricError::InvalidLabel { .. })));
        assert!(matches!(r.try_histogram("h", "x", &[("le", "1")], &[1.0]), Err(MetricError::InvalidLabel { .. })));
        assert!(matches!(r.try_histogram("h", "x", &[], &[2.0, 1.0]), Err(MetricError::InvalidBuckets(_))));
        r.histogram("h", "x", &[], &[1.0, 2.0]);
        assert!(matches!(r.try_histogram("h", "x", &[], &[1.0, 3.0]), Err(MetricError::InvalidBuckets(_))));
        let err = r.try_counter("bad-name", "x", &[]).unwrap_err().to_string();
        assert_eq!(err, "invalid metric name \"bad-name\"");
        assert!(r.render().contains("# HELP calls calls\n"), "first help kept");
    }

    #[test]
    fn bridge_metrics_cover_every_operation_state_and_register_lazily() {
        let registry = Arc::new(Registry::new());
        let breakers = Arc::new(Breakers::new(&CircuitBreakerConfig { failure_threshold: 1, ..Default::default() }));
        let m = BridgeMetrics::new(registry.clone(), breakers.clone());
        let sync = catalogue::ops::payment_sync();
        let auth = catalogue::ops::authorize();
        let s = parse(&registry.render());
        let states = s.iter().filter(|(n, _, _)| n == names::BREAKER_STATE).count();
        assert_eq!(states, catalogue::all().count());
        assert!(s.iter().all(|(n, _, _)| !n.starts_with(names::REQUEST_DURATION)), "no series before a call");

        breakers.acquire(sync).unwrap().finish(crate::breaker::CallVerdict::Unhealthy);
        m.op(sync).duration.observe(0.002);
        m.op(sync).worker_response(ResponseStatus::Failure).inc();
        m.op(auth).acks.inc();
        m.op(auth).duplicates.inc();
        m.late_replies.inc();
        let s = parse(&registry.render());
        let op = |o: Operation| ("operation", o.name);
        assert_eq!(sample(&s, names::BREAKER_STATE, &[op(sync)]), Some(1.0));
        assert_eq!(sample(&s, names::BREAKER_STATE, &[op(auth)]), Some(0.0));
        assert_eq!(sample(&s, "nats_request_duration_seconds_count", &[op(sync)]), Some(1.0));
        assert_eq!(sample(&s, names::WORKER_RESPONSES, &[op(sync), ("status", "failure")]), Some(1.0));
        assert_eq!(sample(&s, names::WORKER_RESPONSES, &[op(sync), ("status", "success")]), Some(0.0));
        assert_eq!(sample(&s, names::ACKS, &[op(auth)]), Some(1.0));
        assert_eq!(sample(&s, names::DUPLICATES, &[op(auth)]), Some(1.0));
        assert_eq!(sample(&s, names::ACKS, &[op(sync)]), None, "no jetstream series for a query");
        assert_eq!(sample(&s, names::LATE_REPLIES, &[]), Some(1.0));
        assert_eq!(sample(&s, names::TIMEOUTS, &[op(sync)]), Some(0.0));
    }
}
