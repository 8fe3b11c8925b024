//! The process backend: one local `nats-server` process per node, listening
//! on loopback only, each with its own store directory and log file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use super::{NatsError, NodeSpec};

/// A node running as a local process.
#[derive(Debug)]
pub(crate) struct ProcessNode {
    /// `None` once the process was reaped.
    child: Mutex<Option<Child>>,
    /// Process id at spawn time.
    pub(crate) pid: u32,
    /// The binary and arguments the process was started with, so it can be
    /// started again with the same ports and store.
    pub(crate) binary: PathBuf,
    pub(crate) args: Vec<String>,
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
        Err(NatsError::NodeExited {
            node: node.to_owned(),
            status,
            log_tail: self.log_tail(20),
        })
    }

    /// The last `lines` lines of the node's log file.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => super::tail(&String::from_utf8_lossy(&bytes), lines),
            Err(e) => format!("(log {} unreadable: {e})", self.log_path.display()),
        }
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

/// Builds the command line of one node.
fn args_for(spec: &NodeSpec, store_dir: &Path, cluster: Option<(&str, &str)>) -> Vec<String> {
    let mut args: Vec<String> = vec![
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
    ];
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

/// Spawns one process per node below `workdir`. Readiness is not awaited
/// here.
pub(crate) fn start(
    binary: &Path,
    workdir: &Path,
    specs: &[NodeSpec],
    cluster_name: Option<&str>,
) -> Result<Vec<ProcessNode>, NatsError> {
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
        std::fs::create_dir_all(&store_dir)
            .map_err(|e| NatsError::io(format!("failed to create {}", store_dir.display()), e))?;
        let log_path = workdir.join(format!("{}.log", spec.name));
        let log = File::create(&log_path)
            .map_err(|e| NatsError::io(format!("failed to create {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| NatsError::io("failed to duplicate a log file handle", e))?;
        let args = args_for(spec, &store_dir, cluster_name.map(|c| (c, routes.as_str())));
        let child = Command::new(binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| NatsError::io(format!("failed to start {}", binary.display()), e))?;
        nodes.push(ProcessNode {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            binary: binary.to_path_buf(),
            args,
            store_dir,
            log_path,
        });
    }
    Ok(nodes)
}

/// Whether a startup failure was a port taken by someone else.
pub(crate) fn is_port_conflict(error: &NatsError) -> bool {
    match error {
        NatsError::NodeExited { log_tail, .. } => log_tail.contains("address already in use"),
        _ => false,
    }
}
