//! Real NATS servers through both backends: a single node and a 3-node
//! JetStream cluster each, with a stream round trip against every one.
//!
//! The Docker tests force the Docker backend: they fail (never skip) when no
//! engine answers or the image cannot be built.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use nats_testkit::{Backend, BackendChoice, EnvConfig, NatsEnv, ENV_LABEL};

/// Creates a stream with the environment's replica count, publishes one
/// message, reads it back by sequence and returns the stream info.
async fn stream_round_trip(env: &NatsEnv, name: &str) -> stream::Info {
    let client = env.connect().await.expect("connect");
    let js = jetstream::new(client);
    let mut stream = js
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            num_replicas: env.replicas(),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create stream {name} (R{}): {e}", env.replicas()));
    let ack = publish_when_stream_listens(&js, format!("{name}.greeting")).await;
    assert_eq!(ack.stream, name);
    let message = stream.get_raw_message(ack.sequence).await.expect("read back");
    assert_eq!(message.payload.as_ref(), b"hello");
    assert_eq!(message.subject.as_str(), format!("{name}.greeting"));
    let info = stream.info().await.expect("stream info").clone();
    assert_eq!(info.config.num_replicas, env.replicas());
    assert_eq!(info.state.messages, 1);
    info
}

/// Publishes `hello` to `subject` and returns the ack.
///
/// Right after an R3 stream is created, the node the client is connected to
/// may not have learned the stream leader's subject interest yet (it spreads
/// over the routes asynchronously), so a publish can briefly get "no
/// responders" (`StreamNotFound`). That case is retried until a deadline.
async fn publish_when_stream_listens(js: &jetstream::Context, subject: String) -> jetstream::publish::PublishAck {
    use jetstream::context::PublishErrorKind;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut retries = 0;
    loop {
        let result = match js.publish(subject.clone(), "hello".into()).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(ack) => {
                if retries > 0 {
                    eprintln!("publish to {subject} succeeded after {retries} no-responders retries");
                }
                return ack;
            }
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound && Instant::now() < deadline => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("publish to {subject}: {e}"),
        }
    }
}

fn assert_cluster_info(info: &stream::Info) {
    let cluster = info.cluster.as_ref().expect("cluster info");
    let leader = cluster.leader.as_deref().expect("stream leader");
    assert!(["n1", "n2", "n3"].contains(&leader), "leader {leader}");
    assert_eq!(cluster.replicas.len(), 2, "replicas: {:?}", cluster.replicas);
    assert!(cluster.replicas.iter().all(|r| r.name != leader));
}

fn docker_output(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().expect("run docker cli");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Drops the environment and checks that its containers, store volumes and
/// network are gone.
fn assert_docker_teardown(env: NatsEnv) {
    let id = env.id().to_owned();
    let network = env.network_name().expect("network").to_owned();
    let filter = format!("label={ENV_LABEL}={id}");
    let (ok, before) = docker_output(&["ps", "-aq", "--filter", &filter]);
    assert!(ok);
    assert_eq!(before.lines().count(), env.node_count());
    let (ok, volumes) = docker_output(&["volume", "ls", "-q", "--filter", &filter]);
    assert!(ok);
    assert_eq!(volumes.lines().count(), env.node_count(), "one store volume per node");
    drop(env);
    let (ok, after) = docker_output(&["ps", "-aq", "--filter", &filter]);
    assert!(ok);
    assert!(after.is_empty(), "containers left behind: {after}");
    let (ok, after) = docker_output(&["volume", "ls", "-q", "--filter", &filter]);
    assert!(ok);
    assert!(after.is_empty(), "store volumes left behind: {after}");
    let (exists, _) = docker_output(&["network", "inspect", &network]);
    assert!(!exists, "network {network} left behind");
}

/// Drops the environment and checks that its processes and files are gone.
fn assert_process_teardown(env: NatsEnv) {
    let pids: Vec<u32> = env.nodes().iter().map(|n| n.pid().expect("pid")).collect();
    let workdir = env.workdir().expect("workdir").to_owned();
    assert!(workdir.is_dir());
    drop(env);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} still running");
    }
    assert!(!workdir.exists(), "{} left behind", workdir.display());
}

#[tokio::test]
async fn docker_single_node() {
    let env = common::start_nats(EnvConfig::single().with_backend(BackendChoice::Docker).with_server_name("solo")).await;
    assert_eq!(env.backend(), Backend::Docker);
    assert_eq!((env.node_count(), env.replicas()), (1, 1));
    let node = &env.nodes()[0];
    assert_eq!(node.name(), "solo");
    assert!(node.container_id().is_some());
    assert!(node.container_name().unwrap().ends_with("-solo"));
    assert_eq!(env.client_url(), node.client_url());
    // Published on loopback only, at the ports the handle reports.
    let (ok, ports) = docker_output(&["port", node.container_id().unwrap()]);
    assert!(ok);
    let mut published: Vec<&str> = ports.lines().collect();
    published.sort_unstable();
    let client = format!("4222/tcp -> 127.0.0.1:{}", node.client_port());
    let monitoring = format!("8222/tcp -> 127.0.0.1:{}", node.monitoring_port());
    assert_eq!(published, [client.as_str(), monitoring.as_str()]);

    let client = env.connect().await.expect("connect");
    assert_eq!(client.server_info().server_name, "solo");
    let info = stream_round_trip(&env, "DOCKER_R1").await;
    assert!(info.cluster.as_ref().is_none_or(|c| c.replicas.is_empty()));

    assert_docker_teardown(env);
}

/// A single node on the host network: no Docker network or published
/// ports, the server itself on 127.0.0.1 at the reported ports, its store
/// on a volume kept across restart and kill/start, GOMAXPROCS passed on,
/// partition refused, and nothing left behind once dropped.
#[tokio::test]
async fn docker_host_network_single_node() {
    let env = common::start_nats(EnvConfig::single().with_backend(BackendChoice::Docker).with_host_network(true).with_gomaxprocs(1)).await;
    assert_eq!(env.backend(), Backend::Docker);
    assert!(env.host_network());
    assert_eq!(env.network_name(), None);
    let node = &env.nodes()[0];
    let id = node.container_id().expect("container").to_owned();
    let inspect = |format: &str| {
        let (ok, out) = docker_output(&["inspect", "--format", format, &id]);
        assert!(ok, "docker inspect {id}");
        out
    };
    assert_eq!(inspect("{{.HostConfig.NetworkMode}}"), "host");
    let (ok, published) = docker_output(&["port", &id]);
    assert!(ok && published.is_empty(), "published ports: {published}");
    assert_eq!(inspect("{{range .Mounts}}{{.Type}} {{.Destination}}{{end}}"), "volume /data");
    assert_eq!(env.client_url(), format!("nats://127.0.0.1:{}", node.client_port()));
    assert_eq!(varz_gomaxprocs(node).await, 1);

    stream_round_trip(&env, "HOST_R1").await;
    let kept = |verb: &'static str| {
        let env = &env;
        async move {
            let js = jetstream::new(env.connect().await.expect("connect"));
            let mut stream = js.get_stream("HOST_R1").await.unwrap_or_else(|e| panic!("stream after {verb}: {e}"));
            assert_eq!(stream.info().await.expect("info").state.messages, 1, "after {verb}");
            let message = stream.get_raw_message(1).await.expect("read back");
            assert_eq!(message.payload.as_ref(), b"hello", "after {verb}");
        }
    };
    env.restart("n1").await.expect("restart");
    kept("restart").await;
    env.kill("n1").await.expect("kill");
    env.start_node("n1").await.expect("start");
    kept("kill and start").await;
    env.pause("n1").await.expect("pause");
    env.unpause("n1").await.expect("unpause");
    assert_eq!(varz_gomaxprocs(node).await, 1);

    for error in
        [env.partition("n1").await.expect_err("partition on the host network"), env.heal("n1").await.expect_err("heal on the host network")]
    {
        assert!(matches!(error, nats_testkit::NatsError::Unsupported { backend: Backend::Docker, .. }), "{error:?}");
        assert!(error.to_string().contains("host network"), "{error}");
    }
    assert_eq!(node.state(), nats_testkit::NodeState::Running);

    // Dropping removes the container and its store volume.
    let filter = format!("label={ENV_LABEL}={}", env.id());
    let (ok, volumes) = docker_output(&["volume", "ls", "-q", "--filter", &filter]);
    assert!(ok);
    assert_eq!(volumes.lines().count(), 1, "one store volume");
    drop(env);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok_c, containers) = docker_output(&["ps", "-aq", "--filter", &filter]);
        let (ok_v, volumes) = docker_output(&["volume", "ls", "-q", "--filter", &filter]);
        assert!(ok_c && ok_v);
        if containers.is_empty() && volumes.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: containers [{containers}], volumes [{volumes}]");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster cannot run on the host network, whatever the backend.
#[tokio::test]
async fn host_network_cluster_is_refused() {
    for backend in [BackendChoice::Docker, BackendChoice::Process] {
        let error = NatsEnv::start(EnvConfig::cluster().with_backend(backend).with_host_network(true))
            .await
            .expect_err("a host-network cluster must be refused");
        assert!(matches!(&error, nats_testkit::NatsError::InvalidConfig(m) if m.contains("host_network")), "{error:?}");
        assert!(error.to_string().contains("single-node environments only"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_cluster() {
    let env = common::start_nats(EnvConfig::cluster().with_backend(BackendChoice::Docker)).await;
    assert_eq!(env.backend(), Backend::Docker);
    assert_eq!((env.node_count(), env.replicas()), (3, 3));
    assert_eq!(env.client_urls().len(), 3);
    assert_eq!(env.client_url().split(',').count(), 3);
    assert!(env.network_name().is_some());

    // `--no_advertise`: clients are not told about container addresses.
    let client = env.connect().await.expect("connect");
    assert!(client.server_info().connect_urls.is_empty());

    let info = stream_round_trip(&env, "DOCKER_R3").await;
    assert_cluster_info(&info);

    assert_docker_teardown(env);
}

#[tokio::test]
async fn process_single_node() {
    let env = common::start_nats(EnvConfig::single().with_backend(BackendChoice::Process)).await;
    assert_eq!(env.backend(), Backend::Process);
    assert_eq!((env.node_count(), env.replicas()), (1, 1));
    assert_eq!(env.nodes()[0].name(), "n1");
    assert!(env.network_name().is_none());

    stream_round_trip(&env, "PROCESS_R1").await;

    assert_process_teardown(env);
}

#[tokio::test]
async fn process_cluster() {
    let env = common::start_nats(EnvConfig::cluster().with_backend(BackendChoice::Process)).await;
    assert_eq!(env.backend(), Backend::Process);
    assert_eq!((env.node_count(), env.replicas()), (3, 3));
    assert!(env.cluster_name().is_some());

    let client = env.connect().await.expect("connect");
    assert!(client.server_info().connect_urls.is_empty());

    let info = stream_round_trip(&env, "PROCESS_R3").await;
    assert_cluster_info(&info);

    assert_process_teardown(env);
}

/// `gomaxprocs` of the node's `/varz`: what its Go runtime runs with.
async fn varz_gomaxprocs(node: &nats_testkit::NatsNode) -> u64 {
    let varz: serde_json::Value =
        reqwest::get(format!("{}/varz", node.monitoring_url())).await.expect("varz").json().await.expect("varz json");
    varz["gomaxprocs"].as_u64().expect("gomaxprocs in /varz")
}

/// `EnvConfig::gomaxprocs` reaches the server, also after a restart.
#[tokio::test]
async fn process_gomaxprocs() {
    let env = common::start_nats(EnvConfig::single().with_backend(BackendChoice::Process).with_gomaxprocs(1)).await;
    let node = &env.nodes()[0];
    assert_eq!(varz_gomaxprocs(node).await, 1);
    env.restart(node.name()).await.expect("restart");
    assert_eq!(varz_gomaxprocs(node).await, 1);
}

/// Environment marker telling [`fallback_child`] that it runs as the child
/// process of [`auto_backend_falls_back_to_processes`].
const FALLBACK_CHILD: &str = "HS_NATS_FALLBACK_CHILD";

/// Runs [`fallback_child`] in a child process whose Docker endpoint points
/// nowhere (environment variables are process-wide, so this cannot be done
/// in-process next to the Docker tests).
#[test]
fn auto_backend_falls_back_to_processes() {
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "fallback_child", "--ignored", "--nocapture"])
        .env(FALLBACK_CHILD, "1")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env_remove("HARNESS_NATS_BACKEND")
        .output()
        .expect("run child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child did not run:\n{stdout}");
}

#[tokio::test]
#[ignore = "run by auto_backend_falls_back_to_processes"]
async fn fallback_child() {
    if std::env::var_os(FALLBACK_CHILD).is_none() {
        return;
    }
    common::init_tracing();
    let error =
        NatsEnv::start(EnvConfig::single().with_backend(BackendChoice::Docker)).await.expect_err("docker must be reported unavailable");
    assert!(matches!(error, nats_testkit::NatsError::DockerUnavailable(_)), "{error}");

    let env = common::start_nats(EnvConfig::single()).await;
    assert_eq!(env.backend(), Backend::Process);
    stream_round_trip(&env, "FALLBACK_R1").await;
}

/// Dropping a Docker environment after its runtime is gone still removes
/// the containers and the network.
#[test]
fn docker_drop_outside_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let env = runtime.block_on(common::start_nats(EnvConfig::single().with_backend(BackendChoice::Docker)));
    drop(runtime);
    assert_docker_teardown(env);
}
