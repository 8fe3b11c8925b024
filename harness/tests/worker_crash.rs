//! Worker processes that really die (SIGKILL at a crash point) in the middle of a durable
//! operation: before the processor call, after it, after the reply. Each time the operation
//! must complete exactly once: a success reply reaches the bridge (after a redelivery when the
//! reply had not gone out) and the processor ledger holds one effect for the idempotency key.
//!
//! Needs the workspace binaries: `cargo build --workspace --bins` (the worker runs as a process).

mod common;
#[path = "../src/workers.rs"]
#[allow(dead_code)]
mod workers;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{eventually, money};
use harness::nats::EnvConfig;
use mock_processor::ProcessorConfig;
use mock_worker::{CrashPoint, WorkerConfig};
use nats_bridge::{catalogue, OperationRequest, ResponseStatus};
use workers::{signal_of, WorkerPool, WorkerSpec};

const M: &str = "merchant_crash";
/// Short, so the redelivery after a death comes quickly.
const ACK_WAIT_MS: u64 = 1000;
const SIGKILL: i32 = 9;

fn authorize(payment: &str, amount: i64) -> OperationRequest {
    OperationRequest::new(catalogue::find("payments.authorize").expect("authorize"), M, payment, format!("{payment}_1"))
        .router_data(money(amount))
}

/// Who takes over the operation once the crashing worker is dead.
#[derive(Debug, Clone, Copy)]
enum TakeOver {
    /// The same worker, restarted without its crash point.
    Restart,
    /// A second, healthy worker process started after the death (started later so the first
    /// delivery cannot go to it).
    SecondWorker,
}

struct Scenario {
    point: CrashPoint,
    /// Die on the N-th operation reaching the point (earlier ones complete normally).
    crash_after: u64,
    /// Off: only the worker's own store and lookup stand between a redelivery and a second charge.
    processor_idempotency: bool,
    take_over: TakeOver,
}

async fn pull_consumer_settled(js: &jetstream::Context) -> Option<()> {
    let mut consumer: jetstream::consumer::PullConsumer =
        js.get_stream("HYPERSWITCH_PAYMENTS").await.ok()?.get_consumer("worker_payments_authorize").await.ok()?;
    let info = consumer.info().await.ok()?;
    (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
}

async fn run(s: Scenario) {
    let started = Instant::now();
    let point = s.point;
    // First, so a missing binary fails before anything starts.
    let mut pool = WorkerPool::new().unwrap_or_else(|e| panic!("{e}"));
    let env = common::start(EnvConfig::single(), 0, WorkerConfig::default()).await;
    if !s.processor_idempotency {
        env.processor().set_config(ProcessorConfig { idempotency: false, ..Default::default() });
    }
    let healthy = WorkerSpec::new(
        env.nats().client_url(),
        env.processor_url(),
        WorkerConfig { name: format!("crash-{point}"), ack_wait_ms: ACK_WAIT_MS, ..Default::default() },
    )
    .replicas(env.nats().replicas())
    .env("RUST_LOG", "info");
    let crashing = healthy.clone().with(|c| {
        c.crash_at = Some(point);
        c.crash_after = s.crash_after;
    });
    pool.spawn(crashing).await.unwrap_or_else(|e| panic!("{e}"));
    let pid = pool[0].pid();

    // Operations before the N-th pass the point unharmed.
    for i in 1..s.crash_after {
        let r = authorize(&format!("pay_{point}_warm{i}"), 100);
        let reply = env.bridge().call(&r).await.expect("an operation before the crash");
        assert_eq!(reply.status, ResponseStatus::Success);
        assert!(pool[0].is_running(), "operation {i} of {} must not kill the worker", s.crash_after);
    }

    let r = authorize(&format!("pay_{point}"), 1500);
    let key = r.envelope().idempotency_key.clone();
    let sent = Instant::now();
    let bridge = env.bridge().clone();
    let call = tokio::spawn(async move {
        let result = bridge.call(&r).await;
        (result, sent.elapsed())
    });

    let status = pool[0].wait_exit(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e}"));
    let died_after = sent.elapsed();
    let log = pool[0].log_tail(40);
    assert_eq!(signal_of(&status), Some(SIGKILL), "pid {pid} killed itself with SIGKILL, got {status}; log:\n{log}");
    assert!(
        log.contains(&format!("crash point {point} reached by durable operation #{}", s.crash_after)),
        "the last words are logged:\n{log}"
    );

    // What the dead worker left behind.
    let charged_at_death = env.processor().effects_by_key(&key).len();
    match point {
        CrashPoint::BeforeProcessor => assert_eq!(charged_at_death, 0, "died before the processor"),
        CrashPoint::AfterProcessor | CrashPoint::AfterReply => assert_eq!(charged_at_death, 1, "died after the processor"),
    }
    if point != CrashPoint::AfterReply {
        assert!(!call.is_finished(), "no reply can have left before {point}");
    }

    let took_over = Instant::now();
    match s.take_over {
        TakeOver::Restart => pool[0].restart_without_crash().await.unwrap_or_else(|e| panic!("{e}")),
        TakeOver::SecondWorker => {
            pool.spawn(healthy.clone()).await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let restart_ms = took_over.elapsed().as_millis();
    let survivor = pool.len() - 1;
    assert!(pool[survivor].is_running());

    let (result, answered_after) = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap_or_else(|_| panic!("no reply within 20s after a crash at {point}; logs:\n{}", pool.log_tails(30)))
        .expect("call task");
    let reply = result.unwrap_or_else(|e| panic!("the operation fails after a crash at {point}: {e}; logs:\n{}", pool.log_tails(30)));
    assert_eq!(reply.status, ResponseStatus::Success, "{reply:?}");
    // Who answered: the dead worker's flushed reply comes at once; any other comes with the
    // redelivery, after the ack wait.
    let redelivery = Duration::from_millis(ACK_WAIT_MS - 100);
    match point {
        CrashPoint::AfterReply => assert!(answered_after < redelivery, "the reply that left before the death: {answered_after:?}"),
        _ => assert!(answered_after >= redelivery, "answered by the redelivery: {answered_after:?}"),
    }

    // The redelivery is answered and acked too: nothing left pending.
    let js = env.bridge().jetstream().clone();
    eventually("the redelivered message acked", Duration::from_secs(10), || pull_consumer_settled(&js)).await;

    let effects = env.processor().effects_by_key(&key);
    assert_eq!(effects.len(), 1, "exactly one processor effect for {key} after a crash at {point}: {effects:?}");
    assert_eq!(reply.transaction_id.as_deref(), Some(effects[0].effect_id.as_str()), "the reply names that effect");
    let survivor_log = pool[survivor].log_tail(40);
    match point {
        // The survivor found the key started, asked the processor, and used the effect it found.
        CrashPoint::AfterProcessor => assert!(survivor_log.contains("earlier delivery reached the processor"), "{survivor_log}"),
        // The survivor re-sent the stored result to an inbox nobody waits on any more.
        CrashPoint::AfterReply => {
            assert!(survivor_log.contains("re-sending stored result"), "{survivor_log}");
            let bridge = env.bridge().clone();
            eventually("the re-sent reply seen as late", Duration::from_secs(5), || {
                let bridge = bridge.clone();
                async move { (bridge.stats().orphan_replies >= 1).then_some(()) }
            })
            .await;
        }
        CrashPoint::BeforeProcessor => {}
    }
    eprintln!(
        "crash at {point} (operation #{}, processor idempotency {}, {:?}): died {} ms after the send, take-over ready in {restart_ms} ms, reply {} ms after the send, {} effect; test {} ms",
        s.crash_after,
        if s.processor_idempotency { "on" } else { "off" },
        s.take_over,
        died_after.as_millis(),
        answered_after.as_millis(),
        effects.len(),
        started.elapsed().as_millis(),
    );
}

#[tokio::test]
async fn crash_before_the_processor_call_then_a_second_worker_completes_it() {
    run(Scenario { point: CrashPoint::BeforeProcessor, crash_after: 1, processor_idempotency: true, take_over: TakeOver::SecondWorker })
        .await;
}

#[tokio::test]
async fn crash_after_the_processor_call_charges_once_without_processor_idempotency() {
    run(Scenario { point: CrashPoint::AfterProcessor, crash_after: 1, processor_idempotency: false, take_over: TakeOver::Restart }).await;
}

#[tokio::test]
async fn crash_after_the_reply_on_the_second_operation_resends_the_stored_result() {
    run(Scenario { point: CrashPoint::AfterReply, crash_after: 2, processor_idempotency: false, take_over: TakeOver::Restart }).await;
}

#[tokio::test]
async fn worker_processes_start_stop_cleanly_and_report_bad_config() {
    workers::worker_binary().unwrap_or_else(|e| panic!("{e}"));
    let env = common::start(EnvConfig::single(), 0, WorkerConfig::default()).await;
    let spec = WorkerSpec::new(env.nats().client_url(), env.processor_url(), WorkerConfig { name: "pool".into(), ..Default::default() })
        .replicas(env.nats().replicas());
    let mut pool = WorkerPool::start(2, spec.clone()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pool.len(), 2);
    assert_eq!((pool[0].name(), pool[1].name()), ("pool-1", "pool-2"));
    assert_ne!(pool[0].pid(), pool[1].pid());

    // SIGTERM: a clean exit (status 0). SIGKILL: death by signal 9.
    let status = pool[0].terminate(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}");
    let status = pool[1].kill().await.unwrap();
    assert_eq!(signal_of(&status), Some(SIGKILL));
    let old = pool[1].pid();
    pool[1].restart().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(pool[1].is_running() && pool[1].pid() != old && pool[1].starts() == 2);
    let r = authorize("pay_pool", 200);
    assert_eq!(env.bridge().call(&r).await.unwrap().status, ResponseStatus::Success);
    assert!(pool[1].log_tail(100).contains("start #2"), "{}", pool[1].log_tail(100));

    // A worker that cannot start is reported with its own words.
    let err = pool.spawn(spec.clone().env("WORKER_CRASH_AT", "after_ack")).await.expect_err("an unknown crash point is refused");
    let text = err.to_string();
    assert!(text.contains("exited before it was ready") && text.contains("unknown crash point \"after_ack\""), "{text}");
}
