//! The subject and stream names of a bridge configuration, as the protocol derives them
//! ([`nats_protocol::naming`]): the bridge and its workers must agree on them.

use std::time::Duration;

use nats_protocol::naming::Naming;

use super::BridgeConfig;
use crate::catalogue::{Family, Operation};

impl BridgeConfig {
    /// The names a worker needs: subjects, streams and the operations' subject overrides.
    pub fn naming(&self) -> Naming {
        Naming {
            subjects: self.subjects.clone(),
            jetstream: self.jetstream.clone(),
            subject_overrides: self.operations.iter().filter_map(|(name, o)| Some((name.clone(), o.subject.clone()?))).collect(),
        }
    }

    /// The subject template of an operation (placeholders `{merchant_id}`, `{connector}`).
    pub fn subject_template(&self, op: Operation) -> String {
        self.subjects.template(op, self.operations.get(op.name).and_then(|o| o.subject.as_deref()))
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

impl From<&BridgeConfig> for Naming {
    fn from(config: &BridgeConfig) -> Naming {
        config.naming()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{self, ops};
    use crate::config::{OperationOverride, SubjectScheme};

    #[test]
    fn per_merchant_scheme() {
        let mut c = BridgeConfig::default();
        c.subjects.scheme = SubjectScheme::PerMerchant;
        c.validate().unwrap();
        assert_eq!(c.subject_template(ops::capture()), "hyperswitch.payments.{merchant_id}.capture");
        let webhook = catalogue::find("webhooks.incoming").unwrap();
        assert_eq!(c.subject_template(webhook), "hyperswitch.webhooks.{merchant_id}.{connector}.incoming");
    }

    #[test]
    fn the_naming_gives_the_same_names() {
        let mut c = BridgeConfig::default();
        c.subjects.scheme = SubjectScheme::PerMerchant;
        c.jetstream.stream_prefix = "HS".into();
        c.operations
            .insert("payments.capture".into(), OperationOverride { subject: Some("hs.cap.{merchant_id}".into()), ..Default::default() });
        c.operations.insert("payments.sync".into(), OperationOverride { timeout_ms: Some(700), ..Default::default() });
        let n = c.naming();
        assert_eq!(n.subject_overrides.len(), 1, "only subjects are names");
        for op in catalogue::all() {
            assert_eq!(n.subject_template(op), c.subject_template(op), "{}", op.name);
            assert_eq!(n.dlq_subject(op), c.dlq_subject(op));
        }
        for family in catalogue::Family::ALL {
            assert_eq!((n.stream_name(family), n.retention(family)), (c.stream_name(family), c.retention(family)));
        }
        assert_eq!((n.lookup_template(), n.dlq_stream_name()), (c.lookup_template(), c.dlq_stream_name()));
        assert_eq!(Naming::from(&c), n);
    }
}
