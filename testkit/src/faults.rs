//! Fault verbs: a small set of operations that break NATS nodes on purpose
//! and put them back.
//!
//! | verb | Docker backend | process backend | returns once |
//! |------|----------------|-----------------|--------------|
//! | [`stop`](NatsNode::stop) | `docker stop` (SIGTERM, SIGKILL after [`STOP_GRACE`]) | SIGTERM, SIGKILL after [`STOP_GRACE`] | the container / process is gone |
//! | [`start`](NatsNode::start) | `docker start` of the same container | the same command line again | `/healthz` answers 200 |
//! | [`restart`](NatsNode::restart) | stop, then start | stop, then start | `/healthz` answers 200 |
//! | [`kill`](NatsNode::kill) | `docker kill` (SIGKILL) | SIGKILL | the container / process is gone |
//! | [`pause`](NatsNode::pause) | `docker pause` (cgroup freezer) | SIGSTOP | the engine / kernel reports it frozen |
//! | [`unpause`](NatsNode::unpause) | `docker unpause` | SIGCONT | `/healthz` answers 200 |
//! | [`partition`](NatsEnv::partition) | `docker network disconnect` (unsupported on the host network) | unsupported | no route, no client port |
//! | [`heal`](NatsEnv::heal) | `docker network connect` (unsupported on the host network) | unsupported | the environment is ready, replicas current |
//! | [`restart_all`](NatsEnv::restart_all) | every node stopped, then started | same | the environment is ready, replicas current |
//! | [`rolling_restart`](NatsEnv::rolling_restart) | one node at a time | same | the same, after each node |
//!
//! The JetStream store survives every verb: a container keeps its `/data`
//! (an anonymous volume of that container, see [`STORE_DIR`](super::STORE_DIR))
//! across stop, kill and start (it is the same container), a process is
//! started again on the same store directory. Host ports never change.
//!
//! The per-node verbs exist on [`NatsNode`] (post-condition: that node) and
//! on [`NatsEnv`] by server name; the [`NatsEnv`] versions of the verbs that
//! bring a node back (`start_node`, `restart`, `unpause`, `heal`) and the
//! environment-wide ones additionally wait until the environment is ready
//! again ([`NatsEnv::wait_ready`]: for a cluster, a meta leader that sees
//! every running peer as current) and every replicated stream's replicas on
//! running nodes are current ([`NatsEnv::wait_streams_current`]).
//! `NatsEnv::start` is the constructor, so starting a node by name is
//! [`NatsEnv::start_node`]. Verbs that do not apply to a node's
//! [`NodeState`] (pausing a stopped node, starting a running one) fail with
//! [`NatsError::InvalidState`]; verbs on one node never interleave.
//!
//! # What `partition` cuts
//!
//! Docker only. The container is detached from the environment's network,
//! its only network, so it loses its routes to the other nodes (they
//! cannot resolve or reach it, nor it them). Docker also withdraws the
//! published ports of a detached container: on the host, the client and
//! monitoring ports stop accepting connections, and client connections
//! that were open through them are closed (with Docker's userland proxy,
//! the default for loopback bindings, the proxy process exits and the
//! client reads EOF at once, as seen with Docker 20.10), so clients
//! reconnect to the other nodes. The verb checks this: it returns only once neither port completes a NATS
//! greeting or an HTTP request, and fails otherwise. The node itself keeps
//! running (its raft state goes stale); [`NatsEnv::heal`] attaches it
//! again, which also restores the published ports.
//!
//! On the process backend all nodes share the host's loopback interface;
//! cutting one off would need packet filtering (root) or proxies between
//! the nodes, so `partition` and `heal` return [`NatsError::Unsupported`].
//! So do they for a container on the host network
//! ([`EnvConfig::host_network`](super::EnvConfig::host_network)): it has no
//! Docker network of its own to be detached from.
//!
//! Every verb logs a `tracing` info line when it begins and one when its
//! post-condition holds, with the verb, the node and the backend.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::ErrorCode;
use futures::future::join_all;
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;

use super::container::{DockerNode, HOST_NETWORK_PARTITION};
use super::{ready, NatsEnv, NatsError, NatsNode, NodeRuntime};

/// How long a stopped server may take to exit after SIGTERM before it gets
/// SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a killed or stopped server may take to be gone.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `pause` and `partition` may take to show their effect.
const EFFECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often post-conditions are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// How often, while waiting for `/healthz`, the node is checked for having
/// exited.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(250);

/// How long a probe of a port that should be cut may take.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

const PROCESS_PARTITION: &str = "local processes share the loopback interface and cutting one off \
     would need root-only packet filtering; use the docker backend";

/// What the fault verbs last did to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Serving: after startup, `start`, `restart`, `unpause` and `heal`.
    Running,
    /// Stopped by `stop`; `start` brings it back.
    Stopped,
    /// Killed by `kill`; `start` brings it back.
    Killed,
    /// Frozen by `pause`; `unpause` resumes it.
    Paused,
    /// Cut off by `partition`; `heal` reconnects it.
    Partitioned,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Running => "running",
            NodeState::Stopped => "stopped",
            NodeState::Killed => "killed",
            NodeState::Paused => "paused",
            NodeState::Partitioned => "partitioned",
        })
    }
}

impl NatsNode {
    /// What the fault verbs last did to this node ([`NodeState::Running`]
    /// unless one of them took it down).
    pub fn state(&self) -> NodeState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, state: NodeState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after [`STOP_GRACE`])
    /// and returns once the container or process is gone. The store and
    /// ports are kept for [`NatsNode::start`].
    pub async fn stop(&self) -> Result<(), NatsError> {
        let _op = self.op.lock().await;
        let started = self.begin("stop", &[NodeState::Running])?;
        self.stop_now("stop").await?;
        self.finish("stop", started);
        Ok(())
    }

    /// Starts a stopped or killed server again, on the same store and
    /// ports, and returns once its `/healthz` answers 200 (in a cluster:
    /// it is in contact with the meta leader and its streams are current).
    pub async fn start(&self) -> Result<(), NatsError> {
        let _op = self.op.lock().await;
        let started = self.begin("start", &[NodeState::Stopped, NodeState::Killed])?;
        self.start_now("start").await?;
        self.finish("start", started);
        Ok(())
    }

    /// [`NatsNode::stop`] then [`NatsNode::start`]: returns once the node
    /// answers `/healthz` again.
    pub async fn restart(&self) -> Result<(), NatsError> {
        let _op = self.op.lock().await;
        let started = self.begin("restart", &[NodeState::Running])?;
        self.stop_now("restart").await?;
        self.start_now("restart").await?;
        self.finish("restart", started);
        Ok(())
    }

    /// Kills the server with SIGKILL (also when paused) and returns once
    /// the container or process is gone. Whatever it had written to its
    /// store stays on disk; [`NatsNode::start`] brings it back.
    pub async fn kill(&self) -> Result<(), NatsError> {
        let _op = self.op.lock().await;
        let started = self.begin("kill", &[NodeState::Running, NodeState::Paused])?;
        match &self.runtime {
            NodeRuntime::Docker(d) => {
                d.kill(&self.name).await?;
                self.wait_container_gone("kill", d).await?;
            }
            NodeRuntime::Process(p) => {
                p.sigkill();
                p.wait_exit("kill", &self.name, GONE_TIMEOUT).await?;
            }
        }
        self.set_state(NodeState::Killed);
        self.finish("kill", started);
        Ok(())
    }

    /// Freezes the server (Docker: `docker pause`; process: SIGSTOP) and
    /// returns once the engine or kernel reports it frozen. Its
    /// connections stay open but nothing answers on them.
    pub async fn pause(&self) -> Result<(), NatsError> {
        let _op = self.op.lock().await;
        let started = self.begin("pause", &[NodeState::Running])?;
        match &self.runtime {
            NodeRuntime::Docker(d) => {
                d.pause(&self.name).await?;
                poll_until("pause", &self.name, EFFECT_TIMEOUT, || async {
                    Ok(if d.inspect(&self.name).await?.paused {
                        Ok(())
                    } else {
                        Err("the engine does not report the container paused".to_owned())
                    })
                })
                .await?;
            }
            NodeRuntime::Process(p) => {
                p.signal(&self.name, "STOP")?;
                poll_until("pause", &self.name, EFFECT_TIMEOUT, || async {
                    // Without /proc there is nothing to check; SIGSTOP
                    // cannot be caught or ignored.
                    Ok(match p.is_stopped() {
                        Some(true) | None => Ok(()),
                        Some(false) => Err(format!("process {} is not stopped yet", p.pid())),
                    })
                })
                .await?;
            }
        }
        self.set_state(NodeState::Paused);
        self.finish("pause", started);
        Ok(())
    }

    /// Resumes a paused server (Docker: `docker unpause`; process:
    /// SIGCONT) and returns once its `/healthz` answers 200.
    pub async fn unpause(&self) -> Result<(), NatsError> {
        let _op = self.op.lock().await;
        let started = self.begin("unpause", &[NodeState::Paused])?;
        match &self.runtime {
            NodeRuntime::Docker(d) => d.unpause(&self.name).await?,
            NodeRuntime::Process(p) => p.signal(&self.name, "CONT")?,
        }
        self.set_state(NodeState::Running);
        self.wait_healthy("unpause").await?;
        self.finish("unpause", started);
        Ok(())
    }

    /// Checks that `verb` applies in the current state and logs its start.
    fn begin(&self, verb: &'static str, allowed: &[NodeState]) -> Result<Instant, NatsError> {
        let state = self.state();
        if !allowed.contains(&state) {
            return Err(NatsError::InvalidState { verb, node: self.name.clone(), state });
        }
        tracing::info!(
            verb,
            node = %self.name,
            backend = %self.backend(),
            "nats fault: {verb} {}",
            self.name
        );
        Ok(Instant::now())
    }

    /// Logs that `verb`'s post-condition holds.
    fn finish(&self, verb: &'static str, started: Instant) {
        let elapsed = started.elapsed();
        tracing::info!(
            verb,
            node = %self.name,
            backend = %self.backend(),
            elapsed_ms = elapsed.as_millis() as u64,
            "nats fault: {verb} {} done in {elapsed:.2?}",
            self.name
        );
    }

    async fn stop_now(&self, verb: &'static str) -> Result<(), NatsError> {
        let started = Instant::now();
        match &self.runtime {
            NodeRuntime::Docker(d) => {
                d.stop(&self.name, STOP_GRACE).await?;
                self.wait_container_gone(verb, d).await?;
            }
            NodeRuntime::Process(p) => p.stop(verb, &self.name, STOP_GRACE).await?,
        }
        self.set_state(NodeState::Stopped);
        tracing::debug!(verb, node = %self.name, "nats node stopped in {:.2?}", started.elapsed());
        Ok(())
    }

    async fn start_now(&self, verb: &'static str) -> Result<(), NatsError> {
        match &self.runtime {
            NodeRuntime::Docker(d) => d.start(&self.name).await?,
            NodeRuntime::Process(p) => p.respawn(&self.name)?,
        }
        self.set_state(NodeState::Running);
        self.wait_healthy(verb).await
    }

    async fn wait_container_gone(&self, verb: &'static str, d: &DockerNode) -> Result<(), NatsError> {
        poll_until(verb, &self.name, GONE_TIMEOUT, || async {
            Ok(if d.inspect(&self.name).await?.running { Err("the container is still running".to_owned()) } else { Ok(()) })
        })
        .await
    }

    /// Polls the node's `/healthz` until it answers 200, failing early if
    /// the server exits.
    async fn wait_healthy(&self, verb: &'static str) -> Result<(), NatsError> {
        let timeout = self.ready_timeout;
        let deadline = Instant::now() + timeout;
        let http = ready::http_client();
        let target = [(self.name.clone(), self.monitoring_url())];
        let mut last_liveness_check = Instant::now();
        let mut last_detail = String::new();
        loop {
            let detail = match ready::check(&http, &target).await {
                Ok(()) => return Ok(()),
                Err(detail) => detail,
            };
            if detail != last_detail {
                tracing::debug!(verb, node = %self.name, "nats node not healthy yet: {detail}");
                last_detail.clone_from(&detail);
            }
            if last_liveness_check.elapsed() >= LIVENESS_INTERVAL {
                self.check_alive().await?;
                last_liveness_check = Instant::now();
            }
            if Instant::now() >= deadline {
                return Err(NatsError::FaultTimeout {
                    verb,
                    node: self.name.clone(),
                    timeout,
                    detail: format!("{detail}; last log lines:\n{}", self.log_tail(10).await),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl NatsEnv {
    /// The node named `name`, or [`NatsError::UnknownNode`].
    fn node_named(&self, name: &str) -> Result<&NatsNode, NatsError> {
        self.node(name).ok_or_else(|| NatsError::UnknownNode {
            name: name.to_owned(),
            known: self.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    /// [`NatsNode::stop`] on the node named `node`.
    pub async fn stop(&self, node: &str) -> Result<(), NatsError> {
        self.node_named(node)?.stop().await
    }

    /// [`NatsNode::start`] on the node named `node`, then waits until the
    /// environment is ready again ([`NatsEnv::wait_ready`]) and stream
    /// replicas are current ([`NatsEnv::wait_streams_current`]).
    pub async fn start_node(&self, node: &str) -> Result<(), NatsError> {
        self.node_named(node)?.start().await?;
        self.wait_ready_after("start", node).await
    }

    /// [`NatsNode::restart`] on the node named `node` (its store kept),
    /// then waits until the environment is ready again and stream replicas
    /// are current.
    pub async fn restart(&self, node: &str) -> Result<(), NatsError> {
        self.node_named(node)?.restart().await?;
        self.wait_ready_after("restart", node).await
    }

    /// [`NatsNode::kill`] on the node named `node`.
    pub async fn kill(&self, node: &str) -> Result<(), NatsError> {
        self.node_named(node)?.kill().await
    }

    /// [`NatsNode::pause`] on the node named `node`.
    pub async fn pause(&self, node: &str) -> Result<(), NatsError> {
        self.node_named(node)?.pause().await
    }

    /// [`NatsNode::unpause`] on the node named `node`, then waits until the
    /// environment is ready again and stream replicas are current.
    pub async fn unpause(&self, node: &str) -> Result<(), NatsError> {
        self.node_named(node)?.unpause().await?;
        self.wait_ready_after("unpause", node).await
    }

    /// Cuts the node named `node` off from the other nodes and from
    /// clients (Docker only; see the [module documentation](self) for
    /// exactly what is cut). Returns once the container is off the
    /// environment's network and neither its client nor its monitoring
    /// port on 127.0.0.1 answers.
    pub async fn partition(&self, node: &str) -> Result<(), NatsError> {
        let target = self.node_named(node)?;
        let (docker, network) = self.docker_network("partition", target)?;
        let _op = target.op.lock().await;
        let started = target.begin("partition", &[NodeState::Running])?;
        docker.disconnect(node, network).await?;
        target.set_state(NodeState::Partitioned);
        let http = ready::http_client();
        poll_until("partition", node, EFFECT_TIMEOUT, || async {
            if docker.inspect(node).await?.networks.iter().any(|n| n == network) {
                return Ok(Err(format!("the container is still attached to {network}")));
            }
            if nats_greets(target.client_port).await {
                return Ok(Err(format!("the client port 127.0.0.1:{} still answers through the port mapping", target.client_port)));
            }
            if http.get(format!("{}/varz", target.monitoring_url())).send().await.is_ok() {
                return Ok(Err(format!("the monitoring port 127.0.0.1:{} still answers through the port mapping", target.monitoring_port)));
            }
            Ok(Ok(()))
        })
        .await?;
        target.finish("partition", started);
        Ok(())
    }

    /// Undoes [`NatsEnv::partition`]: attaches the container to the
    /// environment's network again (which also restores its published
    /// ports) and returns once the environment is ready again and stream
    /// replicas are current.
    pub async fn heal(&self, node: &str) -> Result<(), NatsError> {
        let target = self.node_named(node)?;
        let (docker, network) = self.docker_network("heal", target)?;
        {
            let _op = target.op.lock().await;
            let started = target.begin("heal", &[NodeState::Partitioned])?;
            docker.connect(node, network).await?;
            target.set_state(NodeState::Running);
            target.wait_healthy("heal").await?;
            target.finish("heal", started);
        }
        self.wait_ready_after("heal", node).await
    }

    /// Stops every node (concurrently), starts them all again on their
    /// stores and returns once the environment is ready and stream replicas
    /// are current. Every node must be running.
    pub async fn restart_all(&self) -> Result<(), NatsError> {
        let started = self.begin_all("restart_all")?;
        for result in join_all(self.nodes.iter().map(NatsNode::stop)).await {
            result?;
        }
        for result in join_all(self.nodes.iter().map(NatsNode::start)).await {
            result?;
        }
        self.wait_ready(self.ready_timeout).await?;
        self.wait_streams_current(self.ready_timeout).await?;
        self.finish_all("restart_all", started);
        Ok(())
    }

    /// Restarts the nodes one at a time, each time waiting until the
    /// environment is ready again (every node healthy, one meta leader that
    /// sees all peers as current, a replicated stream can be created) and
    /// every stream replica is current before the next. The meta leader goes last, so the meta group loses
    /// its leader only once. Every node must be running.
    pub async fn rolling_restart(&self) -> Result<(), NatsError> {
        let started = self.begin_all("rolling_restart")?;
        let leader = self.meta_leader().await;
        let mut order: Vec<&NatsNode> = self.nodes.iter().filter(|n| leader.as_deref() != Some(n.name())).collect();
        order.extend(self.nodes.iter().filter(|n| leader.as_deref() == Some(n.name())));
        for node in order {
            node.restart().await?;
            self.wait_ready_after("rolling_restart", node.name()).await?;
        }
        self.finish_all("rolling_restart", started);
        Ok(())
    }

    /// Polls until, for every stream with more than one replica, a leader
    /// is elected and each replica on a running node is `current` in the
    /// leader's view (stream info). Replicas on nodes that a fault took
    /// down are not waited for; a single server has nothing to wait for.
    ///
    /// `/healthz` answering 200 does not imply this: a node started again
    /// after missing writes reports healthy while the stream leader still
    /// lists its replica as behind, until the catch-up (about a raft
    /// heartbeat later) completes. The verbs that bring a node back call
    /// this after [`NatsEnv::wait_ready`].
    pub async fn wait_streams_current(&self, timeout: Duration) -> Result<(), NatsError> {
        if self.nodes.len() < 2 {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut client: Option<async_nats::Client> = None;
        let mut last_detail = String::new();
        loop {
            if client.is_none() {
                client = self.connect_running().await.ok();
            }
            let detail = match &client {
                Some(client) => match self.streams_current(client).await {
                    Ok(()) => return Ok(()),
                    Err(detail) => detail,
                },
                None => "no running node accepts a client connection".to_owned(),
            };
            if detail != last_detail {
                tracing::debug!(id = %self.id, "stream replicas not current yet: {detail}");
                last_detail.clone_from(&detail);
            }
            if Instant::now() >= deadline {
                return Err(NatsError::NotReady { timeout, detail, log_tail: String::new() });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// One round of [`NatsEnv::wait_streams_current`].
    async fn streams_current(&self, client: &async_nats::Client) -> Result<(), String> {
        let mut js = async_nats::jetstream::new(client.clone());
        // A stream without a leader leaves requests unanswered: poll again
        // soon rather than wait long.
        js.set_timeout(Duration::from_secs(1));
        let names: Vec<String> = js.stream_names().try_collect().await.map_err(|e| format!("listing streams failed: {e}"))?;
        let running: Vec<&str> = self.nodes.iter().filter(|n| n.state() == NodeState::Running).map(NatsNode::name).collect();
        for name in names {
            let stream = match js.get_stream(&name).await {
                Ok(stream) => stream,
                // Deleted since it was listed (e.g. the readiness probe).
                Err(e)
                    if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
                {
                    continue
                }
                Err(e) => return Err(format!("stream {name}: info failed: {e}")),
            };
            let info = stream.cached_info();
            if info.config.num_replicas < 2 {
                continue;
            }
            let Some(cluster) = &info.cluster else {
                return Err(format!("stream {name}: no cluster information"));
            };
            if cluster.leader.is_none() {
                return Err(format!("stream {name}: no leader"));
            }
            if let Some(peer) = cluster.replicas.iter().find(|p| running.contains(&p.name.as_str()) && !p.current) {
                return Err(format!("stream {name}: replica on {} is not current (lag {})", peer.name, peer.lag.unwrap_or_default()));
            }
        }
        Ok(())
    }

    /// A client connected to the running nodes only.
    async fn connect_running(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let urls: Vec<String> = self.nodes.iter().filter(|n| n.state() == NodeState::Running).map(NatsNode::client_url).collect();
        async_nats::ConnectOptions::new().ignore_discovered_servers().connection_timeout(Duration::from_secs(2)).connect(urls).await
    }

    /// The server name of the JetStream meta leader, as the first running
    /// node that knows one reports it; `None` for a single server or when
    /// no running node knows a leader.
    pub async fn meta_leader(&self) -> Option<String> {
        let http = ready::http_client();
        for node in self.nodes.iter().filter(|n| n.state() == NodeState::Running) {
            let url = format!("{}/jsz", node.monitoring_url());
            if let Ok(jsz) = ready::get_json(&http, &url).await {
                if let Some(leader) = jsz["meta_cluster"]["leader"].as_str() {
                    if !leader.is_empty() {
                        return Some(leader.to_owned());
                    }
                }
            }
        }
        None
    }

    /// The container of `node` and the environment's network, or
    /// [`NatsError::Unsupported`] on the process backend and on the host
    /// network.
    fn docker_network<'a>(&'a self, verb: &'static str, node: &'a NatsNode) -> Result<(&'a DockerNode, &'a str), NatsError> {
        let reason = match (&node.runtime, self.network.as_deref()) {
            (NodeRuntime::Docker(d), Some(network)) if !d.host_network => return Ok((d, network)),
            (NodeRuntime::Docker(_), _) => HOST_NETWORK_PARTITION,
            (NodeRuntime::Process(_), _) => PROCESS_PARTITION,
        };
        Err(NatsError::Unsupported { verb, backend: node.backend(), reason })
    }

    /// Waits for readiness and current stream replicas after `verb`
    /// brought `node` back, and logs it.
    async fn wait_ready_after(&self, verb: &'static str, node: &str) -> Result<(), NatsError> {
        let started = Instant::now();
        self.wait_ready(self.ready_timeout).await?;
        let ready = started.elapsed();
        self.wait_streams_current(self.ready_timeout).await?;
        tracing::debug!(verb, node, "environment ready after {ready:.2?}, stream replicas current after {:.2?}", started.elapsed());
        tracing::info!(
            verb,
            node,
            backend = %self.backend,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "nats fault: {verb} {node}: environment ready and stream replicas current {:.2?} after the node",
            started.elapsed()
        );
        Ok(())
    }

    /// Checks that every node runs and logs the start of an
    /// environment-wide verb.
    fn begin_all(&self, verb: &'static str) -> Result<Instant, NatsError> {
        if let Some(node) = self.nodes.iter().find(|n| n.state() != NodeState::Running) {
            return Err(NatsError::InvalidState { verb, node: node.name.clone(), state: node.state() });
        }
        tracing::info!(
            verb,
            node = "all",
            backend = %self.backend,
            "nats fault: {verb} of {} node(s)",
            self.nodes.len()
        );
        Ok(Instant::now())
    }

    fn finish_all(&self, verb: &'static str, started: Instant) {
        let elapsed = started.elapsed();
        tracing::info!(
            verb,
            node = "all",
            backend = %self.backend,
            elapsed_ms = elapsed.as_millis() as u64,
            "nats fault: {verb} done in {elapsed:.2?}"
        );
    }
}

/// Polls `check` every [`POLL_INTERVAL`] until it reports `Ok(Ok(()))`,
/// fails with `Err`, or `timeout` passes ([`NatsError::FaultTimeout`] with
/// the last `Ok(Err(detail))`).
async fn poll_until<F, Fut>(verb: &'static str, node: &str, timeout: Duration, mut check: F) -> Result<(), NatsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<(), String>, NatsError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let detail = match check().await? {
            Ok(()) => return Ok(()),
            Err(detail) => detail,
        };
        if Instant::now() >= deadline {
            return Err(NatsError::FaultTimeout { verb, node: node.to_owned(), timeout, detail });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether a NATS server greets (sends its `INFO` line) on 127.0.0.1:`port`
/// within [`PORT_PROBE_TIMEOUT`]. A proxy that accepts the connection but
/// has nothing behind it does not count.
async fn nats_greets(port: u16) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"INFO")
    };
    matches!(tokio::time::timeout(PORT_PROBE_TIMEOUT, probe).await, Ok(Some(true)))
}
