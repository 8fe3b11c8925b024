//! Subject and stream names, which a bridge and its workers must agree on: the `subjects` and
//! `jetstream` tables of `[nats_bridge]` and the operations' `subject` overrides.
//!
//! ```toml
//! [nats_bridge.subjects]
//! prefix = "hyperswitch"
//! scheme = "shared"            # or "per_merchant": hyperswitch.<family>.{merchant_id}.<op>
//!
//! [nats_bridge.jetstream]
//! stream_prefix = "HYPERSWITCH"
//! replicas = 1
//! duplicate_window_ms = 300000
//!
//! [nats_bridge.operations."payments.sync"]
//! subject = "hyperswitch.payments.sync"
//! ```
//!
//! The variables are `NATS_BRIDGE_SUBJECT_PREFIX`, `NATS_BRIDGE_SUBJECT_SCHEME`,
//! `NATS_BRIDGE_STREAM_PREFIX`, `NATS_BRIDGE_REPLICAS` and `NATS_BRIDGE_DUPLICATE_WINDOW_MS`.
//! The bridge's configuration holds these tables among its own; a worker reads a [`Naming`] from
//! the same `[nats_bridge]` table ([`Naming::from_table`]) and the same variables
//! ([`Naming::apply_env`]), so one file configures both.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::catalogue::{self, Family, Operation, Pattern};
use crate::error::ConfigError;
use crate::subjects;

/// How subjects carry the merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubjectScheme {
    /// `hyperswitch.<family>.<operation>`; merchant id in a header and in the body.
    #[default]
    Shared,
    /// `hyperswitch.<family>.{merchant_id}.<operation>`, for subject-based merchant isolation.
    PerMerchant,
}

/// Subject settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubjectConfig {
    /// First token of every subject; lets two deployments share a NATS account.
    pub prefix: String,
    /// Shared or per-merchant subjects.
    pub scheme: SubjectScheme,
}

impl Default for SubjectConfig {
    fn default() -> Self {
        SubjectConfig { prefix: "hyperswitch".into(), scheme: SubjectScheme::Shared }
    }
}

impl SubjectConfig {
    /// The subject template of an operation (placeholders `{merchant_id}`, `{connector}`):
    /// `subject_override` (the operation's `operations.<name>.subject`) when set, else the
    /// scheme's.
    pub fn template(&self, op: Operation, subject_override: Option<&str>) -> String {
        if let Some(t) = subject_override {
            return t.to_string();
        }
        let p = &self.prefix;
        match self.scheme {
            SubjectScheme::Shared => format!("{p}.{}.{}", op.family, op.action),
            SubjectScheme::PerMerchant if op.per_connector => {
                format!("{p}.{}.{{merchant_id}}.{{connector}}.{}", op.family, op.action)
            }
            SubjectScheme::PerMerchant => format!("{p}.{}.{{merchant_id}}.{}", op.family, op.action),
        }
    }

    /// The subject template workers answer reply lookups on (used after a duplicate publish).
    pub fn lookup_template(&self) -> String {
        let p = &self.prefix;
        match self.scheme {
            SubjectScheme::Shared => format!("{p}.replies.lookup"),
            SubjectScheme::PerMerchant => format!("{p}.replies.{{merchant_id}}.lookup"),
        }
    }

    /// The dead-letter subject of an operation.
    pub fn dlq_subject(&self, op: Operation) -> String {
        format!("{}.dlq.{}.{}", self.prefix, op.family, op.action)
    }

    /// Checks that the prefix is one subject token.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !subjects::is_valid_token(&self.prefix) {
            return Err(ConfigError::Invalid(format!("subjects.prefix {:?} is not a single subject token", self.prefix)));
        }
        Ok(())
    }
}

/// Where JetStream keeps messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// On disk: survives a server restart (the default, and what payments need).
    #[default]
    File,
    /// In memory: for throw-away benchmarks only.
    Memory,
}

/// Stream settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Stream names are `<stream_prefix>_<FAMILY>`.
    pub stream_prefix: String,
    /// Replicas of every stream: 1 on one node, 3 on a cluster.
    pub replicas: usize,
    /// Window in which JetStream drops a message whose id it has seen (seed: 5 minutes).
    pub duplicate_window_ms: u64,
    /// Storage of every stream.
    pub storage: Storage,
    /// Retention per family in days, overriding the defaults (payments 30, refunds 90, ...).
    pub retention_days: BTreeMap<String, u64>,
    /// Retention of the dead-letter stream in days (seed: 7).
    pub dlq_retention_days: u64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream_prefix: "HYPERSWITCH".into(),
            replicas: 1,
            duplicate_window_ms: 5 * 60 * 1000,
            storage: Storage::File,
            retention_days: BTreeMap::new(),
            dlq_retention_days: 7,
        }
    }
}

impl JetStreamConfig {
    /// Name of a family's stream.
    pub fn stream_name(&self, family: Family) -> String {
        format!("{}_{}", self.stream_prefix, family.as_str().to_uppercase())
    }

    /// Name of the dead-letter stream.
    pub fn dlq_stream_name(&self) -> String {
        format!("{}_DLQ", self.stream_prefix)
    }

    /// Retention of a family's stream.
    pub fn retention(&self, family: Family) -> Duration {
        self.retention_days.get(family.as_str()).map(|d| Duration::from_secs(d * 86_400)).unwrap_or_else(|| family.default_retention())
    }

    /// Checks replicas, the stream prefix and the families named by `retention_days`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=5).contains(&self.replicas) {
            return invalid(format!("jetstream.replicas must be 1..=5, got {}", self.replicas));
        }
        if !subjects::is_valid_token(&self.stream_prefix) {
            return invalid(format!("jetstream.stream_prefix {:?} is invalid", self.stream_prefix));
        }
        for family in self.retention_days.keys() {
            if !Family::ALL.iter().any(|f| f.as_str() == family) {
                return invalid(format!("jetstream.retention_days: unknown family {family:?}"));
            }
        }
        Ok(())
    }
}

/// Applies one naming variable (`key` without its `NATS_BRIDGE_` prefix): `Ok(false)` if the
/// key is not one of them, `Err` with the reason for a bad value.
pub fn apply_env_var(key: &str, value: &str, subjects: &mut SubjectConfig, jetstream: &mut JetStreamConfig) -> Result<bool, String> {
    fn num<T: std::str::FromStr>(value: &str) -> Result<T, String> {
        value.parse().map_err(|_| "expected a non-negative integer".to_string())
    }
    match key {
        "SUBJECT_PREFIX" => subjects.prefix = value.to_string(),
        "SUBJECT_SCHEME" => {
            subjects.scheme = match value {
                "shared" => SubjectScheme::Shared,
                "per_merchant" => SubjectScheme::PerMerchant,
                _ => return Err("expected shared or per_merchant".into()),
            }
        }
        "STREAM_PREFIX" => jetstream.stream_prefix = value.to_string(),
        "REPLICAS" => jetstream.replicas = num(value)?,
        "DUPLICATE_WINDOW_MS" => jetstream.duplicate_window_ms = num(value)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// Checks the name and the subject of an `operations.<name>` entry; the operation it names.
pub fn validate_override(name: &str, subject: Option<&str>) -> Result<Operation, ConfigError> {
    let Some(op) = catalogue::find(name) else {
        return Err(ConfigError::Invalid(format!("operations: unknown operation {name:?}")));
    };
    if let Some(t) = subject {
        subjects::validate_template(t).map_err(|e| ConfigError::Invalid(format!("operations.{name}.subject: {e}")))?;
    }
    Ok(op)
}

/// The names of a deployment: what a worker needs from the `[nats_bridge]` table to find its
/// streams and subjects. The bridge's configuration converts into one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Naming {
    /// Subject prefix and scheme.
    pub subjects: SubjectConfig,
    /// Stream names and settings.
    pub jetstream: JetStreamConfig,
    /// Subject templates by operation name (`operations.<name>.subject`).
    pub subject_overrides: BTreeMap<String, String>,
}

/// The parts of a `[nats_bridge]` table that name things; the bridge's other keys are the
/// bridge's to check.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Table {
    subjects: SubjectConfig,
    jetstream: JetStreamConfig,
    operations: BTreeMap<String, OperationSubject>,
}

/// The `subject` key of an `operations.<name>` entry.
#[derive(Deserialize, Default)]
#[serde(default)]
struct OperationSubject {
    subject: Option<String>,
}

impl Naming {
    /// Reads the names of a `[nats_bridge]` table (defaults when the table is absent), then
    /// validates them.
    pub fn from_table(table: Option<toml::Value>) -> Result<Self, ConfigError> {
        let Some(value) = table else { return Ok(Self::default()) };
        let table: Table = value.try_into().map_err(|e: toml::de::Error| ConfigError::Parse(format!("[nats_bridge]: {e}")))?;
        // In the bridge's order: subjects, streams, every operations entry, overlaps.
        table.subjects.validate()?;
        table.jetstream.validate()?;
        let mut subject_overrides = BTreeMap::new();
        for (name, o) in table.operations {
            validate_override(&name, o.subject.as_deref())?;
            if let Some(subject) = o.subject {
                subject_overrides.insert(name, subject);
            }
        }
        let naming = Naming { subjects: table.subjects, jetstream: table.jetstream, subject_overrides };
        naming.check_overlaps()?;
        Ok(naming)
    }

    /// Applies the naming `NATS_BRIDGE_*` variables among `vars`; other variables, the bridge's
    /// own included, are ignored.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("NATS_BRIDGE_") else { continue };
            if let Err(reason) = apply_env_var(key, &value, &mut self.subjects, &mut self.jetstream) {
                return Err(ConfigError::Env { name, value, reason });
            }
        }
        Ok(())
    }

    /// Checks the names: valid tokens and templates, known operations and families, and no
    /// stream subject capturing a query subject.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.subjects.validate()?;
        self.jetstream.validate()?;
        for (name, subject) in &self.subject_overrides {
            validate_override(name, Some(subject))?;
        }
        self.check_overlaps()
    }

    /// Checks that no durable subject (which a stream captures) overlaps a query subject, the
    /// reply-lookup subject or another durable subject.
    pub fn check_overlaps(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let durable: Vec<(Operation, String)> = catalogue::all()
            .filter(|o| o.pattern == Pattern::Durable)
            .map(|o| (o, subjects::wildcard(&self.subject_template(o))))
            .collect();
        let mut queries: Vec<(String, String)> = catalogue::all()
            .filter(|o| o.pattern == Pattern::Query)
            .map(|o| (o.name.to_string(), subjects::wildcard(&self.subject_template(o))))
            .collect();
        queries.push(("reply lookup".into(), subjects::wildcard(&self.lookup_template())));
        for (d, filter) in &durable {
            for (q, qs) in &queries {
                if subjects::overlap(filter, qs) {
                    return invalid(format!(
                        "subject of {} ({filter}) overlaps query {q} ({qs}): the stream would capture the query",
                        d.name
                    ));
                }
            }
            for (d2, f2) in &durable {
                if d.name != d2.name && subjects::overlap(filter, f2) {
                    return invalid(format!("subjects of {} and {} overlap ({filter}, {f2})", d.name, d2.name));
                }
            }
        }
        Ok(())
    }

    /// The subject template of an operation (placeholders `{merchant_id}`, `{connector}`).
    pub fn subject_template(&self, op: Operation) -> String {
        self.subjects.template(op, self.subject_overrides.get(op.name).map(String::as_str))
    }

    /// The subject template workers answer reply lookups on (used after a duplicate publish).
    pub fn lookup_template(&self) -> String {
        self.subjects.lookup_template()
    }

    /// The dead-letter subject of an operation.
    pub fn dlq_subject(&self, op: Operation) -> String {
        self.subjects.dlq_subject(op)
    }

    /// Name of a family's stream.
    pub fn stream_name(&self, family: Family) -> String {
        self.jetstream.stream_name(family)
    }

    /// Name of the dead-letter stream.
    pub fn dlq_stream_name(&self) -> String {
        self.jetstream.dlq_stream_name()
    }

    /// Retention of a family's stream.
    pub fn retention(&self, family: Family) -> Duration {
        self.jetstream.retention(family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::ops;

    #[test]
    fn defaults_are_the_seeds() {
        let n = Naming::default();
        n.validate().unwrap();
        assert_eq!(n.subject_template(ops::authorize()), "hyperswitch.payments.authorize");
        assert_eq!(n.lookup_template(), "hyperswitch.replies.lookup");
        assert_eq!(n.dlq_subject(ops::capture()), "hyperswitch.dlq.payments.capture");
        assert_eq!(n.stream_name(Family::Payments), "HYPERSWITCH_PAYMENTS");
        assert_eq!(n.dlq_stream_name(), "HYPERSWITCH_DLQ");
        assert_eq!(n.retention(Family::Refunds), Duration::from_secs(90 * 86_400));
        assert_eq!(n.jetstream.duplicate_window_ms, 300_000);
    }

    #[test]
    fn per_merchant_scheme() {
        let mut n = Naming::default();
        n.subjects.scheme = SubjectScheme::PerMerchant;
        n.validate().unwrap();
        assert_eq!(n.subject_template(ops::capture()), "hyperswitch.payments.{merchant_id}.capture");
        let webhook = catalogue::find("webhooks.incoming").unwrap();
        assert_eq!(n.subject_template(webhook), "hyperswitch.webhooks.{merchant_id}.{connector}.incoming");
        assert_eq!(n.lookup_template(), "hyperswitch.replies.{merchant_id}.lookup");
    }

    #[test]
    fn the_names_of_a_bridge_table_and_nothing_else() {
        let table: toml::Value = toml::from_str(
            "request_timeout_ms = 1000\n[subjects]\nprefix = \"acme\"\n[jetstream]\nreplicas = 3\nstream_prefix = \"ACME\"\n[operations.\"payments.sync\"]\ntimeout_ms = 700\n[operations.\"payments.capture\"]\nsubject = \"acme.pay.{merchant_id}.capture\"\n",
        )
        .unwrap();
        let n = Naming::from_table(Some(table)).unwrap();
        assert_eq!(n.subjects.prefix, "acme");
        assert_eq!((n.jetstream.replicas, n.stream_name(Family::Refunds)), (3, "ACME_REFUNDS".to_string()));
        assert_eq!(n.subject_template(ops::capture()), "acme.pay.{merchant_id}.capture");
        assert_eq!(n.subject_template(ops::payment_sync()), "acme.payments.sync");
        assert_eq!(Naming::from_table(None).unwrap(), Naming::default());

        let bad = |text: &str| Naming::from_table(Some(toml::from_str(text).unwrap())).unwrap_err().to_string();
        assert!(bad("[subjects]\nprefx = \"x\"\n").contains("prefx"));
        assert!(bad("[operations.\"payments.nope\"]\nsubject = \"x.y\"\n").contains("payments.nope"));
        assert!(bad("[jetstream]\nreplicas = 7\n").contains("jetstream.replicas must be 1..=5"));
        let err = bad("[operations.\"payments.authorize\"]\nsubject = \"hyperswitch.payments.>\"\n");
        assert!(err.contains("capture the query"), "{err}");
    }

    #[test]
    fn env_overrides_only_the_names() {
        let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let mut n = Naming::default();
        n.apply_env(env(&[
            ("NATS_BRIDGE_REPLICAS", "3"),
            ("NATS_BRIDGE_SUBJECT_SCHEME", "per_merchant"),
            ("NATS_BRIDGE_STREAM_PREFIX", "HS"),
            ("NATS_BRIDGE_REQUEST_TIMEOUT_MS", "9"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!((n.jetstream.replicas, n.subjects.scheme), (3, SubjectScheme::PerMerchant));
        assert_eq!(n.dlq_stream_name(), "HS_DLQ");
        let err = n.apply_env(env(&[("NATS_BRIDGE_REPLICAS", "three")])).unwrap_err().to_string();
        assert!(err.contains("NATS_BRIDGE_REPLICAS") && err.contains("expected a non-negative integer"), "{err}");
        let err = n.apply_env(env(&[("NATS_BRIDGE_SUBJECT_SCHEME", "own")])).unwrap_err().to_string();
        assert!(err.contains("expected shared or per_merchant"), "{err}");
    }
}
