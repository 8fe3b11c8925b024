//! The NATS fault verbs against real servers: restart and kill of a single
//! node (store kept, clients reconnect), and kill, partition, pause and a
//! rolling restart of one node of a 3-node cluster while publishes keep
//! succeeding and no acknowledged message is lost.
//!
//! The Docker tests force the Docker backend: they fail (never skip) when no
//! engine answers.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use nats_testkit::{BackendChoice, EnvConfig, NatsEnv, NatsError, NatsNode, NodeState};

/// A client that retries reconnecting every 100ms (the default backs off
/// up to 4s, which only makes the tests slower).
async fn fast_client(env: &NatsEnv) -> async_nats::Client {
    env.connect_with(async_nats::ConnectOptions::new().reconnect_delay_callback(|_| Duration::from_millis(100))).await.expect("connect")
}

/// Creates the stream, retrying for up to 20 s while a freshly started cluster settles (no
/// meta leader yet, peers not all current: the request times out or finds no peers), as the
/// bridge's own stream provisioning does.
async fn create_stream(js: &jetstream::Context, name: &str, replicas: usize) -> stream::Stream {
    let config = stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{}.>", name.to_lowercase())],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match js.create_stream(config.clone()).await {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("create stream {name} (R{replicas}): {e}; the cluster may still be settling, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("create stream {name} (R{replicas}) for 20 s: {e}"),
        }
    }
}

/// Publishes `count` messages without waiting between them, then awaits
/// every ack.
async fn publish_batch(js: &jetstream::Context, subject: &str, count: usize) {
    let mut acks = Vec::with_capacity(count);
    for i in 0..count {
        let ack = js.publish(subject.to_owned(), format!("m{i}").into()).await.expect("publish");
        acks.push(ack);
    }
    for ack in acks {
        ack.await.expect("ack");
    }
}

/// Failed publish attempts, counted by error message.
type Failures = BTreeMap<String, usize>;

fn total(failures: &Failures) -> usize {
    failures.values().sum()
}

/// Publishes one message with message id `id` (deduplicated by the stream)
/// until it is acknowledged or `deadline` passes. Returns the ack; failed
/// attempts are counted in `failures`.
async fn publish_acked(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    deadline: Instant,
    failures: &mut Failures,
) -> Result<jetstream::publish::PublishAck, String> {
    loop {
        let message = PublishMessage::build().payload(id.to_owned().into()).message_id(id);
        let result = match js.send_publish(subject.to_owned(), message).await {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(ack) => return Ok(ack),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{id} not acked before the deadline: {e} (earlier failures: {failures:?})"))
            }
            Err(e) => {
                *failures.entry(e).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Publishes `count` messages with ids `<prefix>-<i>`, each retried until
/// acked (at most 10s each); panics if one is not. Returns the failed
/// attempts.
async fn publish_each_acked(js: &jetstream::Context, prefix: &str, count: usize) -> Failures {
    let subject = format!("orders.{prefix}");
    let mut failures = Failures::new();
    for i in 0..count {
        let deadline = Instant::now() + Duration::from_secs(10);
        publish_acked(js, &subject, &format!("{prefix}-{i}"), deadline, &mut failures).await.unwrap_or_else(|e| panic!("{e}"));
    }
    failures
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.expect("get stream");
    stream.info().await.expect("stream info").state.messages
}

async fn wait_connected(client: &async_nats::Client, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while client.connection_state() != State::Connected {
        assert!(Instant::now() < deadline, "client did not reconnect within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(800)).build().unwrap()
}

/// How many messages `stream` holds in `node`'s own replica, from the
/// node's `/jsz` (not from the stream leader).
async fn replica_messages(node: &NatsNode, stream: &str) -> Option<u64> {
    let url = format!("{}/jsz?streams=true", node.monitoring_url());
    let jsz: serde_json::Value = http().get(url).send().await.ok()?.json().await.ok()?;
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == stream)
        .and_then(|s| s["state"]["messages"].as_u64())
}

/// Waits until `node`'s replica of `stream` holds `expected` messages.
async fn wait_caught_up(node: &NatsNode, stream: &str, expected: u64) {
    let started = Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(15) {
        seen = replica_messages(node, stream).await;
        if seen == Some(expected) {
            eprintln!("{}: replica caught up ({expected} messages) {:.2?} after the node was back", node.name(), started.elapsed());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{}: replica holds {seen:?} messages, expected {expected}", node.name());
}

/// A node that is neither the stream leader nor the server `client` is
/// connected to, so taking it down costs neither a leader election nor a
/// reconnect (which would only slow the test down).
async fn bystander(env: &NatsEnv, stream: &mut stream::Stream, client: &async_nats::Client) -> String {
    let info = stream.info().await.expect("stream info");
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("stream leader");
    let connected = client.server_info().server_name;
    env.nodes().iter().map(|n| n.name().to_owned()).find(|n| *n != leader && *n != connected).expect("a third node")
}

/// Single node: 100 messages survive `restart`, the stream accepts
/// publishes afterwards, and a client connected before the restart
/// reconnects by itself and publishes again.
async fn restart_keeps_store(env: &NatsEnv) {
    let early = env.connect().await.expect("connect");
    let js = jetstream::new(early.clone());
    create_stream(&js, "KEEP", 1).await;
    publish_batch(&js, "keep.before", 100).await;

    let started = Instant::now();
    env.restart("n1").await.expect("restart");
    eprintln!("{} restart: {:.2?}", env.backend(), started.elapsed());
    assert_eq!(env.nodes()[0].state(), NodeState::Running);

    let fresh = jetstream::new(env.connect().await.expect("connect after restart"));
    assert_eq!(stream_messages(&fresh, "KEEP").await, 100);
    let ack = fresh.publish("keep.after", "fresh".into()).await.expect("publish").await.expect("ack");
    assert_eq!(ack.sequence, 101);

    let reconnect = Instant::now();
    wait_connected(&early, Duration::from_secs(10)).await;
    eprintln!("early client reconnected {:.2?} after restart returned", reconnect.elapsed());
    let ack = js.publish("keep.after", "early".into()).await.expect("publish on the early client").await.expect("ack on the early client");
    assert_eq!(ack.sequence, 102);
    assert_eq!(stream_messages(&js, "KEEP").await, 102);
}

#[tokio::test]
async fn docker_single_restart_keeps_store() {
    let env = common::start_nats(EnvConfig::single().with_backend(BackendChoice::Docker)).await;
    restart_keeps_store(&env).await;
}

#[tokio::test]
async fn process_single_restart_keeps_store() {
    let env = common::start_nats(EnvConfig::single().with_backend(BackendChoice::Process)).await;
    let pid = env.nodes()[0].pid().expect("pid");
    restart_keeps_store(&env).await;
    assert_ne!(env.nodes()[0].pid(), Some(pid), "a new process");
    // Partitioning local processes is not supported, and says so.
    let error = env.partition("n1").await.expect_err("partition of a process");
    assert!(matches!(error, NatsError::Unsupported { verb: "partition", .. }), "{error}");
    assert!(error.to_string().starts_with("partition is not supported on the process backend"));

    // pause (SIGSTOP) and unpause (SIGCONT).
    let node = &env.nodes()[0];
    env.pause("n1").await.expect("pause");
    assert_eq!(node.state(), NodeState::Paused);
    assert!(http().get(format!("{}/healthz", node.monitoring_url())).send().await.is_err(), "a stopped process answered /healthz");
    env.unpause("n1").await.expect("unpause");

    // kill -9, then start: a new process on the same store.
    let pid = node.pid().expect("pid");
    let t = Instant::now();
    env.kill("n1").await.expect("kill");
    let kill_time = t.elapsed();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} still there");
    let t = Instant::now();
    env.start_node("n1").await.expect("start");
    eprintln!("process kill: {kill_time:.2?}, start: {:.2?}", t.elapsed());
    let js = jetstream::new(env.connect().await.expect("connect after start"));
    assert_eq!(stream_messages(&js, "KEEP").await, 102);
}

/// `restart_all` of a process cluster: every node down at once, then back
/// on its store; the R3 stream keeps its messages and accepts publishes.
#[tokio::test]
async fn process_cluster_restart_all() {
    let env = common::start_nats(EnvConfig::cluster().with_backend(BackendChoice::Process)).await;
    let js = jetstream::new(fast_client(&env).await);
    create_stream(&js, "ORDERS", 3).await;
    publish_each_acked(&js, "before", 50).await;
    let pids: Vec<Option<u32>> = env.nodes().iter().map(NatsNode::pid).collect();

    let t = Instant::now();
    env.restart_all().await.expect("restart all");
    eprintln!("process cluster restart_all: {:.2?}", t.elapsed());
    for (node, pid) in env.nodes().iter().zip(pids) {
        assert_eq!(node.state(), NodeState::Running);
        assert_ne!(node.pid(), pid, "{} was not restarted", node.name());
    }
    assert_eq!(stream_messages(&js, "ORDERS").await, 50);
    publish_each_acked(&js, "after", 10).await;
    assert_eq!(stream_messages(&js, "ORDERS").await, 60);
}

#[tokio::test]
async fn docker_single_kill_then_start() {
    let env = common::start_nats(EnvConfig::single().with_backend(BackendChoice::Docker)).await;
    let js = jetstream::new(env.connect().await.expect("connect"));
    create_stream(&js, "KILLED", 1).await;
    publish_batch(&js, "killed.before", 100).await;

    let started = Instant::now();
    env.kill("n1").await.expect("kill");
    let killed = started.elapsed();
    let node = &env.nodes()[0];
    assert_eq!(node.state(), NodeState::Killed);
    assert!(!node.container().unwrap().is_running().await.unwrap());
    // Verbs that do not apply to a killed node say so.
    let error = env.pause("n1").await.expect_err("pause of a killed node");
    assert_eq!(error.to_string(), "cannot pause nats node n1: it is killed");
    assert!(matches!(env.restart("n9").await, Err(NatsError::UnknownNode { .. })));

    let restarted = Instant::now();
    env.start_node("n1").await.expect("start");
    eprintln!("docker kill: {killed:.2?}, start: {:.2?}", restarted.elapsed());
    let js = jetstream::new(env.connect().await.expect("connect after start"));
    assert_eq!(stream_messages(&js, "KILLED").await, 100);
    let ack = js.publish("killed.after", "x".into()).await.expect("publish").await.expect("ack");
    assert_eq!(ack.sequence, 101);
}

/// Kill, partition and pause one node of an R3 stream's cluster in turn:
/// publishes keep succeeding on the other two, and the node catches up once
/// it is back. Then a rolling restart with a publisher running throughout:
/// every acknowledged message is in the stream afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_cluster_faults() {
    let test_started = Instant::now();
    let env = Arc::new(common::start_nats(EnvConfig::cluster().with_backend(BackendChoice::Docker)).await);
    let client = fast_client(&env).await;
    let js = jetstream::new(client.clone());
    let mut orders = create_stream(&js, "ORDERS", 3).await;
    let mut expected = 0u64;
    // Right after creation, the node the client is on may not know the
    // stream leader's interest yet: retried like any other failure.
    expected += 20;
    publish_each_acked(&js, "base", 20).await;

    // kill: quorum keeps accepting, the node catches up after start.
    let victim = bystander(&env, &mut orders, &client).await;
    let t = Instant::now();
    env.kill(&victim).await.expect("kill");
    let kill_time = t.elapsed();
    assert!(!env.node(&victim).unwrap().container().unwrap().is_running().await.unwrap());
    let failures = publish_each_acked(&js, "killed", 20).await;
    expected += 20;
    let t = Instant::now();
    env.start_node(&victim).await.expect("start");
    eprintln!(
        "cluster kill {victim}: {kill_time:.2?}, start (cluster ready): {:.2?}, failed publish attempts while down: {failures:?}",
        t.elapsed()
    );
    // start_node returns once the stream leader sees every replica as current.
    let info = orders.info().await.expect("stream info");
    let replicas = &info.cluster.as_ref().expect("cluster info").replicas;
    assert_eq!(replicas.len(), 2);
    assert!(
        replicas.iter().all(|r| r.current),
        "replicas once start returned: {:?}",
        replicas.iter().map(|r| (&r.name, r.current, r.lag)).collect::<Vec<_>>()
    );
    wait_caught_up(env.node(&victim).unwrap(), "ORDERS", expected).await;

    // partition: cut from the other nodes and from clients.
    let victim = bystander(&env, &mut orders, &client).await;
    let node = env.node(&victim).unwrap();
    let pinned = async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(node.client_url())
        .await
        .expect("connect to the victim only");
    let t = Instant::now();
    env.partition(&victim).await.expect("partition");
    let partition_time = t.elapsed();
    assert_eq!(node.state(), NodeState::Partitioned);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pinned.connection_state() == State::Connected {
        assert!(Instant::now() < deadline, "client of the partitioned node still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", node.client_port())).await.is_err(),
        "the partitioned node's client port accepts connections"
    );
    let failures = publish_each_acked(&js, "partitioned", 20).await;
    expected += 20;
    let t = Instant::now();
    env.heal(&victim).await.expect("heal");
    eprintln!(
        "cluster partition {victim}: {partition_time:.2?}, heal (cluster ready): {:.2?}, failed publish attempts while cut: {failures:?}",
        t.elapsed()
    );
    wait_caught_up(node, "ORDERS", expected).await;
    wait_connected(&pinned, Duration::from_secs(10)).await;
    drop(pinned);

    // pause: the frozen node answers nothing, the others carry on.
    let victim = bystander(&env, &mut orders, &client).await;
    let node = env.node(&victim).unwrap();
    let t = Instant::now();
    env.pause(&victim).await.expect("pause");
    let pause_time = t.elapsed();
    assert_eq!(node.state(), NodeState::Paused);
    assert!(http().get(format!("{}/healthz", node.monitoring_url())).send().await.is_err(), "a paused node answered /healthz");
    let failures = publish_each_acked(&js, "paused", 20).await;
    expected += 20;
    let t = Instant::now();
    env.unpause(&victim).await.expect("unpause");
    eprintln!(
        "cluster pause {victim}: {pause_time:.2?}, unpause (cluster ready): {:.2?}, failed publish attempts while paused: {failures:?}",
        t.elapsed()
    );
    wait_caught_up(node, "ORDERS", expected).await;
    assert_eq!(stream_messages(&js, "ORDERS").await, expected);

    // rolling restart with a publisher running throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(background_publisher(fast_client(&env).await, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    env.rolling_restart().await.expect("rolling restart");
    let rolling_time = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failures) = publisher.await.expect("publisher task");
    eprintln!(
        "rolling restart: {rolling_time:.2?}; {} messages acked, {} failed attempts during it: {failures:?}",
        acked.len(),
        total(&failures)
    );
    assert!(acked.len() >= 20, "only {} messages acked", acked.len());

    // No acknowledged message lost: each is in the stream, at the sequence
    // its ack named.
    let stored = read_ids(&js, "ORDERS").await;
    for (id, seq) in &acked {
        assert_eq!(stored.get(seq).map(String::as_str), Some(id.as_str()), "acked {id} at sequence {seq} is not in the stream");
    }
    let distinct: HashSet<&String> = stored.values().collect();
    eprintln!("stream holds {} messages, {} distinct ids; whole test {:.2?}", stored.len(), distinct.len(), test_started.elapsed());
}

/// Publishes `roll-<i>` messages one after the other, each retried with its
/// message id until acked, until `stop` is set. Returns the acked ids with
/// their sequences, and the failed attempts.
async fn background_publisher(client: async_nats::Client, stop: Arc<AtomicBool>) -> (Vec<(String, u64)>, Failures) {
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    let mut acked = Vec::new();
    let mut failures = Failures::new();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = format!("roll-{i}");
        let deadline = Instant::now() + Duration::from_secs(30);
        match publish_acked(&js, "orders.roll", &id, deadline, &mut failures).await {
            Ok(ack) => acked.push((id, ack.sequence)),
            Err(e) => panic!("background publisher: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (acked, failures)
}

/// Every message of `stream` by sequence: its `Nats-Msg-Id` (or payload).
async fn read_ids(js: &jetstream::Context, name: &str) -> HashMap<u64, String> {
    let mut stream = js.get_stream(name).await.expect("get stream");
    let last = stream.info().await.expect("stream info").state.last_sequence;
    let mut ids = HashMap::new();
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.expect("read message");
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| String::from_utf8_lossy(&message.payload).into_owned());
        ids.insert(seq, id);
    }
    ids
}
