//! Stream plans, derived from the catalogue: one stream per family that has durable
//! operations, plus the dead-letter stream.
//!
//! Stream subjects are the durable operations' own subjects (placeholders as `*`), never a
//! family wildcard such as `hyperswitch.payments.>`: that would capture `payments.sync`, and a
//! core request there would get JetStream's publish ack instead of the worker's reply.

use std::time::Duration;

use async_nats::jetstream::stream;

use crate::catalogue::{self, Family, Pattern};
use crate::naming::{Naming, Storage};
use crate::subjects;

/// What one stream should look like.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPlan {
    /// Stream name.
    pub name: String,
    /// Its subjects.
    pub subjects: Vec<String>,
    /// How long messages are kept.
    pub max_age: Duration,
    /// Replicas.
    pub replicas: usize,
    /// De-duplication window.
    pub duplicate_window: Duration,
    /// File or memory.
    pub storage: Storage,
}

impl StreamPlan {
    /// The JetStream configuration for this plan.
    pub fn to_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            retention: stream::RetentionPolicy::Limits,
            max_age: self.max_age,
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            discard: stream::DiscardPolicy::Old,
            description: Some("payment bridge operations".into()),
            ..Default::default()
        }
    }
}

/// The streams the names call for: the durable families' streams in catalogue order, then
/// the dead-letter stream.
pub fn plan(naming: &Naming) -> Vec<StreamPlan> {
    let window = Duration::from_millis(naming.jetstream.duplicate_window_ms);
    let mut plans: Vec<StreamPlan> = catalogue::durable_families()
        .map(|family: Family| StreamPlan {
            name: naming.stream_name(family),
            subjects: catalogue::family(family)
                .filter(|op| op.pattern == Pattern::Durable)
                .map(|op| subjects::wildcard(&naming.subject_template(op)))
                .collect(),
            max_age: naming.retention(family),
            replicas: naming.jetstream.replicas,
            duplicate_window: window,
            storage: naming.jetstream.storage,
        })
        .collect();
    plans.push(StreamPlan {
        name: naming.dlq_stream_name(),
        subjects: vec![format!("{}.dlq.>", naming.subjects.prefix)],
        max_age: Duration::from_secs(naming.jetstream.dlq_retention_days * 86_400),
        replicas: naming.jetstream.replicas,
        duplicate_window: window,
        storage: naming.jetstream.storage,
    });
    plans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::SubjectScheme;

    #[test]
    fn plan_covers_every_durable_operation_and_no_query() {
        for scheme in [SubjectScheme::Shared, SubjectScheme::PerMerchant] {
            let mut n = Naming::default();
            n.subjects.scheme = scheme;
            let plans = plan(&n);
            assert_eq!(plans.len(), 9);
            let all: Vec<&String> = plans.iter().flat_map(|p| &p.subjects).collect();
            for op in catalogue::all() {
                let s = subjects::wildcard(&n.subject_template(op));
                let captured = all.iter().any(|f| subjects::overlap(f, &s));
                assert_eq!(captured, op.pattern == Pattern::Durable, "{}", op.name);
            }
            let payments = &plans[0];
            assert_eq!(payments.name, "HYPERSWITCH_PAYMENTS");
            assert_eq!(payments.max_age, Duration::from_secs(30 * 86_400));
            assert_eq!(plans.last().unwrap().name, "HYPERSWITCH_DLQ");
        }
    }
}
