//! The JetStream `sync_interval: always` profile ([`EnvConfig::sync_always`])
//! and the reaper of leftover containers.
//!
//! The profile is proven by asking the servers themselves: `/varz` reports
//! `jetstream.config.sync_always: true` on every node with the profile, and
//! leaves it out (nats-server omits false) with the default, on a single
//! node and on a cluster, on both backends, also after fault verbs started
//! nodes again.
//!
//! The reaper test kills a child test process with SIGKILL while it holds a
//! Docker environment and checks that the next start removes exactly what
//! that process left behind.
//!
//! The Docker tests force the Docker backend: they fail (never skip) when no
//! engine answers.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nats_testkit::{BackendChoice, EnvConfig, NatsEnv, NatsNode, ENV_LABEL, OWNER_PID_LABEL, OWNER_SCOPE_LABEL, OWNER_START_LABEL};
use serde_json::Value;

/// Only one cluster of this file starts at a time (the machine is small).
static CLUSTER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `jetstream.config` of the node's `/varz`.
async fn jetstream_config(node: &NatsNode) -> Value {
    let url = format!("{}/varz", node.monitoring_url());
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().expect("http client");
    let varz: Value =
        http.get(&url).send().await.unwrap_or_else(|e| panic!("{url}: {e}")).json().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    varz["jetstream"]["config"].clone()
}

/// Checks every node's `/varz` for the expected profile and returns the
/// `sync_always` values seen, for the log.
async fn assert_profile(env: &NatsEnv, sync_always: bool, when: &str) -> Vec<Value> {
    assert_eq!(env.sync_always(), sync_always);
    let mut seen = Vec::new();
    for node in env.nodes() {
        let config = jetstream_config(node).await;
        // Guards against reading the wrong object (a default-profile check
        // would pass on anything without the field).
        assert!(
            config["store_dir"].is_string() && config["sync_interval"].is_number(),
            "{} ({when}): /varz has no jetstream config: {config}",
            node.name()
        );
        let reported = config["sync_always"].as_bool().unwrap_or(false);
        assert_eq!(reported, sync_always, "{} ({when}): /varz jetstream.config = {config}", node.name());
        seen.push(config["sync_always"].clone());
    }
    eprintln!(
        "{} backend, {} node(s), sync_always={sync_always} ({when}): /varz jetstream.config.sync_always = {seen:?}",
        env.backend(),
        env.node_count()
    );
    seen
}

/// Process backend: the command line carries `-c <file>` exactly when the
/// profile is on, and the file says `sync_interval: always`.
fn assert_process_command_line(env: &NatsEnv) {
    for node in env.nodes() {
        let (_, args) = node.command_line().expect("process backend");
        let config = args.iter().position(|a| a == "-c").map(|i| std::path::PathBuf::from(&args[i + 1]));
        match (env.sync_always(), config) {
            (true, Some(path)) => {
                assert!(path.starts_with(env.workdir().expect("workdir")));
                let text = std::fs::read_to_string(&path).expect("config file");
                assert!(text.contains("sync_interval: always"), "{text}");
            }
            (false, None) => {}
            (on, file) => panic!("{}: sync_always={on} but config file {file:?}", node.name()),
        }
    }
}

fn start_config(nodes: EnvConfig, backend: BackendChoice, sync_always: bool) -> EnvConfig {
    nodes.with_backend(backend).with_sync_always(sync_always)
}

/// Single node: the profile on (also after `kill` and `start`), then off.
async fn single(backend: BackendChoice) {
    let started = Instant::now();
    let env = common::start_nats(start_config(EnvConfig::single(), backend, true)).await;
    assert_profile(&env, true, "started").await;
    if backend == BackendChoice::Process {
        assert_process_command_line(&env);
    }
    env.kill("n1").await.expect("kill");
    env.start_node("n1").await.expect("start again");
    assert_profile(&env, true, "after kill and start").await;
    drop(env);

    let env = common::start_nats(start_config(EnvConfig::single(), backend, false)).await;
    assert_profile(&env, false, "started").await;
    if backend == BackendChoice::Process {
        assert_process_command_line(&env);
    }
    drop(env);
    eprintln!("{backend:?} single: {:.2?}", started.elapsed());
}

/// Cluster: the profile on every node (also after a rolling restart), then
/// off on every node.
async fn cluster(backend: BackendChoice) {
    let _one_cluster_at_a_time = CLUSTER_LOCK.lock().await;
    let started = Instant::now();
    let env = common::start_nats(start_config(EnvConfig::cluster(), backend, true)).await;
    assert_profile(&env, true, "started").await;
    if backend == BackendChoice::Process {
        assert_process_command_line(&env);
    }
    env.restart("n2").await.expect("restart n2");
    assert_profile(&env, true, "after restarting n2").await;
    drop(env);

    let env = common::start_nats(start_config(EnvConfig::cluster(), backend, false)).await;
    assert_profile(&env, false, "started").await;
    if backend == BackendChoice::Process {
        assert_process_command_line(&env);
    }
    drop(env);
    eprintln!("{backend:?} cluster: {:.2?}", started.elapsed());
}

#[tokio::test]
async fn docker_single_sync_profile() {
    single(BackendChoice::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_cluster_sync_profile() {
    cluster(BackendChoice::Docker).await;
}

#[tokio::test]
async fn process_single_sync_profile() {
    single(BackendChoice::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_cluster_sync_profile() {
    cluster(BackendChoice::Process).await;
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("run docker cli");
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn network_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["network", "inspect", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run docker cli")
        .success()
}

/// Environment marker telling [`reaper_child`] that it runs as the child
/// process of [`reaper_removes_leftovers_of_a_killed_process`].
const REAPER_CHILD: &str = "HS_NATS_REAPER_CHILD";

/// What [`reaper_child`] prints once its environment runs.
const CHILD_READY: &str = "HS_REAPER_CHILD_ENV=";

/// A test process is killed with SIGKILL while it holds a Docker
/// environment; the next start removes its container and network and
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaper_removes_leftovers_of_a_killed_process() {
    common::init_tracing();
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "reaper_child", "--ignored", "--nocapture"])
        .env(REAPER_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test");
    let child_pid = child.id();
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(id) = line.strip_prefix(CHILD_READY) {
                let _ = tx.send(id.trim().to_owned());
            }
        }
    });
    let leftover_id = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(id) => id,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not report its environment: {e}");
        }
    };
    // SIGKILL: no destructor runs in the child.
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    eprintln!("child {child_pid} killed holding environment {leftover_id} after {:.2?}", started.elapsed());

    let filter = format!("label={ENV_LABEL}={leftover_id}");
    let network = format!("hs-nats-{leftover_id}");
    let leftover = docker(&["ps", "-aq", "--filter", &filter]);
    assert_eq!(leftover.lines().count(), 1, "the child's container");
    assert!(network_exists(&network), "the child's network {network}");
    let volumes = || docker(&["volume", "ls", "-q", "--filter", &filter]);
    assert_eq!(volumes().lines().count(), 1, "the child's store volume");
    let labels = docker(&[
        "inspect",
        "--format",
        &format!(
            "{{{{index .Config.Labels \"{OWNER_PID_LABEL}\"}}}} {{{{index .Config.Labels \"{OWNER_START_LABEL}\"}}}} {{{{index .Config.Labels \"{OWNER_SCOPE_LABEL}\"}}}}"
        ),
        &leftover,
    ]);
    eprintln!("leftover owner labels: {labels}");
    assert_eq!(labels.split(' ').next(), Some(child_pid.to_string().as_str()));
    let network_owner = docker(&["network", "inspect", "--format", &format!("{{{{index .Labels \"{OWNER_PID_LABEL}\"}}}}"), &network]);
    assert_eq!(network_owner, child_pid.to_string());

    // Starting an environment reaps. (Another test of this binary starting
    // one at the same time may get there first; either way they are gone.)
    let reap_started = Instant::now();
    let env = common::start_nats(EnvConfig::single().with_backend(BackendChoice::Docker)).await;
    eprintln!("docker start including the reaper: {:.2?}", reap_started.elapsed());
    assert_eq!(docker(&["ps", "-aq", "--filter", &filter]), "", "leftover container");
    assert!(!network_exists(&network), "leftover network {network}");
    assert_eq!(volumes(), "", "leftover store volume");

    // A live environment is never reaped.
    let reap_started = Instant::now();
    let reaped = nats_testkit::reap_leftovers().await.expect("reap");
    eprintln!("reap_leftovers with nothing of ours to reap: {:.2?} ({reaped:?})", reap_started.elapsed());
    let mine = format!("hs-nats-{}", env.id());
    assert!(!reaped.containers.iter().chain(&reaped.networks).any(|n| n.starts_with(&mine)), "reaped a live environment: {reaped:?}");
    let own = format!("label={ENV_LABEL}={}", env.id());
    assert_eq!(docker(&["ps", "-q", "--filter", &own]).lines().count(), 1);
    assert!(network_exists(&mine));
    env.connect().await.expect("the live environment still serves");
    eprintln!("reaper test: {:.2?}", started.elapsed());
}

/// The child of [`reaper_removes_leftovers_of_a_killed_process`]: starts a
/// Docker environment, reports its id and waits to be killed. Should the
/// parent die first, its end of stdin closes and the child cleans up.
#[tokio::test]
#[ignore = "run by reaper_removes_leftovers_of_a_killed_process"]
async fn reaper_child() {
    if std::env::var_os(REAPER_CHILD).is_none() {
        return;
    }
    let env = common::start_nats(EnvConfig::single().with_backend(BackendChoice::Docker)).await;
    println!("{CHILD_READY}{}", env.id());
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await
        .expect("stdin task")
        .expect("read stdin");
    drop(env);
}
