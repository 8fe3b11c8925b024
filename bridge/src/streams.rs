//! Stream provisioning: creates the streams the protocol plans ([`nats_protocol::streams`]: one
//! per family that has durable operations, plus the dead-letter stream), and asks the server
//! that none captures a query subject.
//!
//! Stream subjects are the durable operations' own subjects (placeholders as `*`), never a
//! family wildcard such as `hyperswitch.payments.>`: that would capture `payments.sync`, and a
//! core request there would get JetStream's publish ack instead of the worker's reply.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;

use crate::catalogue::{self, Pattern};
use crate::config::BridgeConfig;
use crate::subjects;

pub use nats_protocol::streams::StreamPlan;

/// Errors while provisioning or verifying streams.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The server refused to create or update a stream.
    #[error("cannot create or update stream {name}: {reason}")]
    Provision {
        /// The stream.
        name: String,
        /// Why.
        reason: String,
    },
    /// The server could not list its streams.
    #[error("cannot list streams: {0}")]
    List(String),
    /// A stream on the server captures a query subject.
    #[error("stream {stream} subject {stream_subject} captures query subject {query_subject} ({operation})")]
    CapturesQuery {
        /// The stream.
        stream: String,
        /// Its subject.
        stream_subject: String,
        /// The captured query subject.
        query_subject: String,
        /// The query operation.
        operation: String,
    },
}

/// The streams the configuration calls for ([`nats_protocol::streams::plan`] of its names),
/// with the `stream_captures_queries` defect applied when set.
pub fn plan(config: &BridgeConfig) -> Vec<StreamPlan> {
    let mut plans = nats_protocol::streams::plan(&config.naming());
    if config.defects.stream_captures_queries {
        // The family streams come first, in the order of the durable families.
        for (p, family) in plans.iter_mut().zip(catalogue::durable_families()) {
            p.subjects = vec![format!("{}.{}.>", config.subjects.prefix, family)];
        }
    }
    plans
}

/// How long a new replicated stream may take to elect its leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long stream creation is retried while the cluster is still settling.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether a stream creation error is the cluster settling (a peer not yet known or
/// briefly seen as offline, no meta leader, a request lost to an election) rather than a
/// refusal of the configuration: worth another try.
fn transient(error: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as Kind;
    use jetstream::ErrorCode;
    match error.kind() {
        Kind::TimedOut | Kind::JetStreamUnavailable => true,
        Kind::JetStream(e) => {
            matches!(e.error_code(), ErrorCode::CLUSTER_NO_PEERS | ErrorCode::CLUSTER_NOT_AVAILABLE | ErrorCode::INSUFFICIENT_RESOURCES)
        }
        _ => false,
    }
}

/// Creates or updates one stream, retrying with backoff while the cluster settles (a freshly
/// started or just-healed cluster refuses replicated streams with "no suitable peers for
/// placement" for a moment); a refusal of the configuration fails at once.
async fn create_or_update(js: &jetstream::Context, p: &StreamPlan) -> Result<stream::Info, jetstream::context::CreateStreamError> {
    settle(SETTLE_TIMEOUT, &p.name, || js.create_or_update_stream(p.to_config())).await
}

/// Runs `attempt` until it succeeds, fails for good, or the next try would start after
/// `timeout`: a [`transient`] error is retried after 100 ms, 200 ms, 400 ms... at most 2 s.
async fn settle<T, F, Fut>(timeout: Duration, name: &str, mut attempt: F) -> Result<T, jetstream::context::CreateStreamError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, jetstream::context::CreateStreamError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if transient(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(stream = %name, error = %e, "stream not placed yet, retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates or updates every planned stream, and returns once each has a leader (a replicated
/// stream answers publishes with "no responders" until then).
pub async fn ensure(js: &jetstream::Context, config: &BridgeConfig) -> Result<Vec<StreamPlan>, StreamError> {
    let plans = plan(config);
    for p in &plans {
        let provision = |reason: String| StreamError::Provision { name: p.name.clone(), reason };
        let info = create_or_update(js, p).await.map_err(|e| provision(e.to_string()))?;
        let leader = |info: &stream::Info| info.cluster.as_ref().and_then(|c| c.leader.clone());
        let refresh = || async {
            let mut stream = js.get_stream(&p.name).await.map_err(|e| e.to_string())?;
            Ok(leader(stream.info().await.map_err(|e| e.to_string())?))
        };
        await_leader(p.replicas, leader(&info), LEADER_TIMEOUT, refresh).await.map_err(provision)?;
    }
    Ok(plans)
}

/// Returns once a stream of `replicas` has a leader: `first` as created, then what `refresh`
/// reads every 50 ms; an error after `timeout`. A single replica needs no election.
async fn await_leader<F, Fut>(replicas: usize, first: Option<String>, timeout: Duration, mut refresh: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut leader = first;
    while replicas > 1 && leader.is_none() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no leader elected within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader = refresh().await?;
    }
    Ok(())
}

/// Asks the server (not the config) whether any stream captures a query subject or the
/// reply-lookup subject.
pub async fn verify_no_query_capture(js: &jetstream::Context, config: &BridgeConfig) -> Result<usize, StreamError> {
    let infos: Vec<stream::Info> = js.streams().try_collect().await.map_err(|e| StreamError::List(e.to_string()))?;
    let mut queries: Vec<(String, String)> = catalogue::all()
        .filter(|op| op.pattern == Pattern::Query)
        .map(|op| (op.name.to_string(), subjects::wildcard(&config.subject_template(op))))
        .collect();
    queries.push(("reply lookup".into(), subjects::wildcard(&config.lookup_template())));
    for info in &infos {
        for s in &info.config.subjects {
            for (name, q) in &queries {
                if subjects::overlap(s, q) {
                    return Err(StreamError::CapturesQuery {
                        stream: info.config.name.clone(),
                        stream_subject: s.clone(),
                        query_subject: q.clone(),
                        operation: name.clone(),
                    });
                }
            }
        }
    }
    Ok(infos.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_the_protocols_unless_the_defect_widens_the_family_streams() {
        let mut c = BridgeConfig::default();
        let plans = plan(&c);
        assert_eq!(plans, nats_protocol::streams::plan(&c.naming()));
        c.defects.stream_captures_queries = true;
        let widened = plan(&c);
        assert_eq!(widened[0].subjects, vec!["hyperswitch.payments.>".to_string()]);
        assert_eq!(widened.last(), plans.last(), "the dead-letter stream is unchanged");
        assert!(widened.iter().zip(&plans).all(|(w, p)| w.name == p.name && w.max_age == p.max_age));
    }

    use jetstream::context::{CreateStreamError, CreateStreamErrorKind as Kind};
    use jetstream::ErrorCode;

    /// A JetStream API error with the given code, as the server sends it.
    fn api(code: ErrorCode) -> CreateStreamError {
        let body = serde_json::json!({ "code": 503, "err_code": code.0, "description": "test" });
        Kind::JetStream(serde_json::from_value(body).unwrap()).into()
    }

    #[test]
    fn only_a_settling_cluster_is_transient() {
        for e in [Kind::TimedOut.into(), Kind::JetStreamUnavailable.into()] {
            assert!(transient(&e), "{e}");
        }
        for code in [ErrorCode::CLUSTER_NO_PEERS, ErrorCode::CLUSTER_NOT_AVAILABLE, ErrorCode::INSUFFICIENT_RESOURCES] {
            assert!(transient(&api(code)), "{code:?}");
        }
        for e in [api(ErrorCode::STREAM_NAME_EXIST), api(ErrorCode::STREAM_SUBJECT_OVERLAP), Kind::InvalidStreamName.into()] {
            assert!(!transient(&e), "a refusal of the configuration: {e}");
        }
    }

    /// Runs `settle` over answers that fail transiently `failures` times, then succeed.
    async fn settle_after(failures: usize, timeout: Duration) -> (Result<(), CreateStreamError>, usize, Duration) {
        let started = tokio::time::Instant::now();
        let mut tries = 0;
        let result = settle(timeout, "S", || {
            tries += 1;
            let answer = if tries > failures { Ok(()) } else { Err(Kind::TimedOut.into()) };
            std::future::ready(answer)
        })
        .await;
        (result, tries, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_settling_cluster_is_retried_with_doubling_pauses() {
        let (result, tries, took) = settle_after(3, SETTLE_TIMEOUT).await;
        assert!(result.is_ok());
        assert_eq!((tries, took), (4, Duration::from_millis(100 + 200 + 400)));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_before_the_timeout_with_pauses_capped_at_2_s() {
        // Pauses 0.1, 0.2, 0.4, 0.8, 1.6, then 2 s each: the 13th retry starts at 19.1 s and
        // the next would start after 20 s.
        let (result, tries, took) = settle_after(usize::MAX, SETTLE_TIMEOUT).await;
        assert!(matches!(result.unwrap_err().kind(), Kind::TimedOut));
        assert_eq!((tries, took), (14, Duration::from_millis(19_100)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_retried() {
        let started = tokio::time::Instant::now();
        let mut tries = 0;
        let result: Result<(), _> = settle(SETTLE_TIMEOUT, "S", || {
            tries += 1;
            std::future::ready(Err(api(ErrorCode::STREAM_SUBJECT_OVERLAP)))
        })
        .await;
        assert!(result.is_err());
        assert_eq!((tries, started.elapsed()), (1, Duration::ZERO));
    }

    /// Runs `await_leader` over refreshes that find no leader `misses` times, then one.
    async fn leader_after(replicas: usize, misses: usize) -> (Result<(), String>, usize, Duration) {
        let started = tokio::time::Instant::now();
        let mut reads = 0;
        let result = await_leader(replicas, None, LEADER_TIMEOUT, || {
            reads += 1;
            std::future::ready(Ok((reads > misses).then(|| "n2".to_string())))
        })
        .await;
        (result, reads, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_replicated_stream_is_waited_on_until_it_has_a_leader() {
        assert_eq!(leader_after(3, 2).await, (Ok(()), 3, Duration::from_millis(150)));
        let known = await_leader(3, Some("n1".into()), LEADER_TIMEOUT, || std::future::ready(Ok(None))).await;
        assert_eq!(known, Ok(()), "a leader reported at creation ends the wait at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_replica_needs_no_election_and_a_missing_leader_times_out() {
        assert_eq!(leader_after(1, usize::MAX).await, (Ok(()), 0, Duration::ZERO));
        let (result, reads, took) = leader_after(3, usize::MAX).await;
        assert_eq!(result, Err("no leader elected within 10s".to_string()));
        assert_eq!((reads, took), (200, LEADER_TIMEOUT));
        let failed = await_leader(3, None, LEADER_TIMEOUT, || std::future::ready(Err("gone".to_string()))).await;
        assert_eq!(failed, Err("gone".to_string()));
    }
}
