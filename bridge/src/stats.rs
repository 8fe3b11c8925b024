//! Counters of what the bridge saw; cheap atomics, read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) published: AtomicU64,
    pub(crate) publish_retries: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) replies: AtomicU64,
    pub(crate) orphan_replies: AtomicU64,
    pub(crate) late_replies_dropped: AtomicU64,
    pub(crate) rejected_replies: AtomicU64,
    pub(crate) reply_timeouts: AtomicU64,
    pub(crate) lookups: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) circuit_rejections: AtomicU64,
}

/// A snapshot of the bridge's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// JetStream publishes acknowledged.
    pub published: u64,
    /// Publishes re-sent (same message id) after a missing ack.
    pub publish_retries: u64,
    /// Publishes JetStream reported as duplicates.
    pub duplicates: u64,
    /// Replies routed to a waiting call.
    pub replies: u64,
    /// Replies that arrived with nobody waiting (late or stray); each is offered to the
    /// application as a late reply.
    pub orphan_replies: u64,
    /// Late replies not handed to the application (buffer full or receiver dropped).
    pub late_replies_dropped: u64,
    /// Replies refused (wrong correlation id, merchant or payment).
    pub rejected_replies: u64,
    /// Durable calls that ended without a reply.
    pub reply_timeouts: u64,
    /// Reply lookups sent after duplicate publishes.
    pub lookups: u64,
    /// Core requests sent.
    pub queries: u64,
    /// Calls refused at once because the operation's circuit breaker was open.
    pub circuit_rejections: u64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            published: g(&self.published),
            publish_retries: g(&self.publish_retries),
            duplicates: g(&self.duplicates),
            replies: g(&self.replies),
            orphan_replies: g(&self.orphan_replies),
            late_replies_dropped: g(&self.late_replies_dropped),
            rejected_replies: g(&self.rejected_replies),
            reply_timeouts: g(&self.reply_timeouts),
            lookups: g(&self.lookups),
            queries: g(&self.queries),
            circuit_rejections: g(&self.circuit_rejections),
        }
    }
}
