//! The process backend: one local `nats-server` process per node, listening
//! on loopback only, each with its own store directory and log file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{server_config, NatsError, NodeSpec, NodeState};

/// How often a stopping process is checked for having exited.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A node running as a local process.
#[derive(Debug)]
pub(crate) struct ProcessNode {
    /// `None` once the process was reaped.
    child: Mutex<Option<Child>>,
    /// Process id of the latest spawn.
    pid: AtomicU32,
    /// The binary and arguments the process was started with, so it can be
    /// started again with the same ports and store.
    pub(crate) binary: PathBuf,
    pub(crate) args: Vec<String>,
    /// Environment variables set for the process on top of this one's
    /// (`GOMAXPROCS`, see [`super::EnvConfig::gomaxprocs`]).
    pub(crate) env: Vec<(String, String)>,
    pub(crate) store_dir: PathBuf,
    pub(crate) log_path: PathBuf,
}

impl ProcessNode {
    /// `Err` when the process has exited.
    pub(crate) fn check_alive(&self, node: &str) -> Result<(), NatsError> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let status = match guard.as_mut() {
            None => "process is not running".to_owned(),
            Some(child) => match child.try_wait() {
                Ok(None) => return Ok(()),
                Ok(Some(status)) => {
                    *guard = None;
                    format!("process exited with {status}")
                }
                Err(e) => format!("process state unknown: {e}"),
            },
        };
        drop(guard);
        Err(NatsError::NodeExited { node: node.to_owned(), status, log_tail: self.log_tail(20) })
    }

    /// The last `lines` lines of the node's log file.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => super::tail(&String::from_utf8_lossy(&bytes), lines),
            Err(e) => format!("(log {} unreadable: {e})", self.log_path.display()),
        }
    }

    /// Process id of the latest spawn (the process may have exited since).
    pub(crate) fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Whether the process has exited (reaping it if so).
    pub(crate) fn has_exited(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut().map(Child::try_wait) {
            None => true,
            Some(Ok(None)) => false,
            Some(Ok(Some(_)) | Err(_)) => {
                *guard = None;
                true
            }
        }
    }

    /// Sends `signal` (a name such as `TERM`, `STOP`, `CONT`) with the
    /// `kill` utility; std has no way to send signals other than SIGKILL.
    /// The child is not reaped while this runs, so the pid cannot have been
    /// reused.
    pub(crate) fn signal(&self, node: &str, signal: &str) -> Result<(), NatsError> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let running = guard.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)));
        let pid = match guard.as_ref() {
            Some(child) if running => child.id(),
            _ => {
                *guard = None;
                return Err(NatsError::NodeExited {
                    node: node.to_owned(),
                    status: format!("process is not running, cannot send SIG{signal}"),
                    log_tail: self.log_tail(20),
                });
            }
        };
        let output = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| NatsError::io(format!("failed to run kill -s {signal} {pid}"), e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(NatsError::io(
                format!("kill -s {signal} {pid} failed"),
                std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
            ))
        }
    }

    /// Sends SIGKILL without waiting.
    pub(crate) fn sigkill(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = guard.as_mut() {
            let _ = child.kill();
        }
    }

    /// Stops the process gracefully: SIGTERM, then SIGKILL if it is still
    /// there after `grace`. Returns once it has exited and was reaped.
    pub(crate) async fn stop(&self, verb: &'static str, node: &str, grace: Duration) -> Result<(), NatsError> {
        self.signal(node, "TERM")?;
        let deadline = Instant::now() + grace;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                tracing::warn!(node, "nats-server ignored SIGTERM for {grace:?}; sending SIGKILL");
                self.sigkill();
                return self.wait_exit(verb, node, grace).await;
            }
            tokio::time::sleep(EXIT_POLL_INTERVAL).await;
        }
        Ok(())
    }

    /// Polls until the process has exited and was reaped.
    pub(crate) async fn wait_exit(&self, verb: &'static str, node: &str, timeout: Duration) -> Result<(), NatsError> {
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                return Err(NatsError::FaultTimeout {
                    verb,
                    node: node.to_owned(),
                    timeout,
                    detail: format!("process {} did not exit", self.pid()),
                });
            }
            tokio::time::sleep(EXIT_POLL_INTERVAL).await;
        }
        Ok(())
    }

    /// Whether the kernel reports the process as stopped by a signal
    /// (`T` in `/proc/<pid>/stat`). `None` where `/proc` is unavailable.
    pub(crate) fn is_stopped(&self) -> Option<bool> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // The state follows the command name, which is in parentheses and
        // may itself contain spaces or parentheses.
        let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
        Some(matches!(state, 'T' | 't'))
    }

    /// Starts the process again with the same binary and arguments (same
    /// ports and store), appending to the same log file.
    pub(crate) fn respawn(&self, node: &str) -> Result<(), NatsError> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Err(NatsError::InvalidState { verb: "start", node: node.to_owned(), state: NodeState::Running });
            }
        }
        let child = spawn(&self.binary, &self.args, &self.env, &self.log_path, true)?;
        self.pid.store(child.id(), Ordering::Relaxed);
        *guard = Some(child);
        Ok(())
    }

    /// Kills the process (if running) and waits for it.
    pub(crate) fn kill(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Builds the command line of one node; `config_file` goes first, as `-c`
/// (the flags after it override whatever it also sets).
fn args_for(spec: &NodeSpec, store_dir: &Path, cluster: Option<(&str, &str)>, config_file: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if let Some(file) = config_file {
        args.extend(["-c".into(), file.display().to_string()]);
    }
    args.extend([
        "--addr".into(),
        "127.0.0.1".into(),
        "--port".into(),
        spec.client_port.to_string(),
        "--http_port".into(),
        spec.monitoring_port.to_string(),
        "--jetstream".into(),
        "--store_dir".into(),
        store_dir.display().to_string(),
        "--server_name".into(),
        spec.name.clone(),
    ]);
    if let (Some((cluster_name, routes)), Some(cluster_port)) = (cluster, spec.cluster_port) {
        args.extend([
            "--cluster".into(),
            format!("nats://127.0.0.1:{cluster_port}"),
            "--cluster_name".into(),
            cluster_name.to_owned(),
            "--routes".into(),
            routes.to_owned(),
            "--no_advertise".into(),
        ]);
    }
    args
}

/// Spawns one process per node below `workdir`. With `server_config`, that
/// text is written to [`server_config::FILE_NAME`] in `workdir` and every
/// node is started with `-c` on it (also when started again). `env` is set
/// for every node's process. Readiness is not awaited here.
pub(crate) fn start(
    binary: &Path,
    workdir: &Path,
    specs: &[NodeSpec],
    cluster_name: Option<&str>,
    server_config: Option<&str>,
    env: &[(String, String)],
) -> Result<Vec<ProcessNode>, NatsError> {
    let config_file = match server_config {
        Some(text) => {
            let path = workdir.join(server_config::FILE_NAME);
            std::fs::write(&path, text).map_err(|e| NatsError::io(format!("failed to write {}", path.display()), e))?;
            Some(path)
        }
        None => None,
    };
    let mut nodes = Vec::with_capacity(specs.len());
    for spec in specs {
        // Routes to the other nodes only (see the Docker backend).
        let routes = specs
            .iter()
            .filter(|other| other.name != spec.name)
            .filter_map(|other| other.cluster_port)
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let store_dir = workdir.join(&spec.name);
        std::fs::create_dir_all(&store_dir).map_err(|e| NatsError::io(format!("failed to create {}", store_dir.display()), e))?;
        let log_path = workdir.join(format!("{}.log", spec.name));
        let args = args_for(spec, &store_dir, cluster_name.map(|c| (c, routes.as_str())), config_file.as_deref());
        let child = spawn(binary, &args, env, &log_path, false)?;
        nodes.push(ProcessNode {
            pid: AtomicU32::new(child.id()),
            child: Mutex::new(Some(child)),
            binary: binary.to_path_buf(),
            args,
            env: env.to_vec(),
            store_dir,
            log_path,
        });
    }
    Ok(nodes)
}

/// Spawns `binary args` with `env` added to the environment and stdout and
/// stderr going to `log_path` (truncated, or appended to when `append`).
fn spawn(binary: &Path, args: &[String], env: &[(String, String)], log_path: &Path, append: bool) -> Result<Child, NatsError> {
    let log = File::options()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log_path)
        .map_err(|e| NatsError::io(format!("failed to open {}", log_path.display()), e))?;
    let log_err = log.try_clone().map_err(|e| NatsError::io("failed to duplicate a log file handle", e))?;
    Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn()
        .map_err(|e| NatsError::io(format!("failed to start {}", binary.display()), e))
}

/// Whether a startup failure was a port taken by someone else.
pub(crate) fn is_port_conflict(error: &NatsError) -> bool {
    match error {
        NatsError::NodeExited { log_tail, .. } => log_tail.contains("address already in use"),
        _ => false,
    }
}
