//! Mock workers as separate `mock-worker` processes, for faults an in-process worker cannot
//! show: real process death (SIGKILL, crash points), clean SIGTERM shutdown, restarts.
//!
//! A [`WorkerProcess`] is started from a [`WorkerSpec`] (the whole `[worker]` configuration,
//! written to a TOML file handed to `--config`, plus extra environment variables such as
//! `NATS_BRIDGE_REPLICAS`). Inherited `WORKER_*` and `NATS_BRIDGE_*` variables are removed, so
//! the spec alone decides. Startup waits for the worker's `... ready` line; stderr goes to a log
//! file whose tail is part of every error. A [`WorkerPool`] owns several processes and a
//! directory for their files; both kill their processes on drop.
//!
//! The binary is looked up beside the running executable (and one level up, for test binaries
//! in `target/<profile>/deps`), or at `MOCK_WORKER_BIN`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mock_worker::WorkerConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Errors of worker processes.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The `mock-worker` binary is not built.
    #[error("mock-worker binary not found (looked at {looked}); build it with `cargo build -p mock-worker` (or `cargo build --workspace --bins`), or set MOCK_WORKER_BIN")]
    BinaryMissing {
        /// Paths tried.
        looked: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The configuration cannot be handed to the process.
    #[error("worker config: {0}")]
    Config(String),
    /// The process ended before printing its ready line.
    #[error("worker {name} exited before it was ready ({status}); log tail:\n{log_tail}")]
    ExitedEarly {
        /// Instance name.
        name: String,
        /// How it ended.
        status: String,
        /// Last lines of its log.
        log_tail: String,
    },
    /// No ready line within the deadline (the process was killed).
    #[error("worker {name} not ready within {timeout:?}; log tail:\n{log_tail}")]
    NotReady {
        /// Instance name.
        name: String,
        /// The deadline.
        timeout: Duration,
        /// Last lines of its log.
        log_tail: String,
    },
    /// The process was still running when it should have exited.
    #[error("worker {name} (pid {pid}) still running after {timeout:?}; log tail:\n{log_tail}")]
    StillRunning {
        /// Instance name.
        name: String,
        /// Process id.
        pid: u32,
        /// The deadline.
        timeout: Duration,
        /// Last lines of its log.
        log_tail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkerError {
    let what = what.into();
    move |source| WorkerError::Io { what, source }
}

/// The `mock-worker` binary: `MOCK_WORKER_BIN`, else beside this executable, else one directory
/// up (integration tests run from `target/<profile>/deps`, binaries live in `target/<profile>`).
pub fn worker_binary() -> Result<PathBuf, WorkerError> {
    if let Some(path) = std::env::var_os("MOCK_WORKER_BIN") {
        let path = PathBuf::from(path);
        return match path.is_file() {
            true => Ok(path),
            false => Err(WorkerError::BinaryMissing { looked: format!("{} (MOCK_WORKER_BIN)", path.display()) }),
        };
    }
    let exe = std::env::current_exe().map_err(io("cannot locate the running executable"))?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("mock-worker"));
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(up) = dir.parent() {
                candidates.push(up.join("mock-worker"));
            }
        }
    }
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| WorkerError::BinaryMissing {
        looked: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// The last `lines` lines of a file (a note instead when it cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(log {} unreadable: {e})", path.display()),
    }
}

/// The signal that ended a process, if one did (SIGKILL is 9, SIGABRT 6).
pub fn signal_of(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

/// What to start: the worker's whole configuration and the process environment.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The `[worker]` table (URLs, name, ack wait, max deliver, crash point, profile...).
    pub config: WorkerConfig,
    /// JetStream replicas for the result bucket (`NATS_BRIDGE_REPLICAS`; 3 on the cluster).
    pub replicas: usize,
    /// More variables (`NATS_BRIDGE_*` bridge settings, `RUST_LOG`...), set last.
    pub env: Vec<(String, String)>,
    /// How long to wait for the ready line.
    pub ready_timeout: Duration,
}

impl WorkerSpec {
    /// A worker of `config` talking to this NATS and processor.
    pub fn new(nats_url: impl Into<String>, processor_url: impl Into<String>, config: WorkerConfig) -> WorkerSpec {
        let mut config = config;
        config.nats_url = nats_url.into();
        config.processor_url = processor_url.into();
        WorkerSpec { config, replicas: 1, env: Vec::new(), ready_timeout: Duration::from_secs(30) }
    }

    /// Sets the result bucket's replicas.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Changes the configuration.
    pub fn with(mut self, change: impl FnOnce(&mut WorkerConfig)) -> Self {
        change(&mut self.config);
        self
    }
}

/// One `mock-worker` process. Killed (SIGKILL) when dropped.
pub struct WorkerProcess {
    /// What it runs (kept for restarts).
    spec: WorkerSpec,
    /// The binary.
    binary: PathBuf,
    /// Its config file.
    config_path: PathBuf,
    /// Its stderr, appended across restarts.
    log_path: PathBuf,
    /// The process; `None` only transiently.
    child: Option<Child>,
    /// Process id of the current run.
    pid: u32,
    /// How the current run ended, once known.
    status: Option<ExitStatus>,
    /// Runs so far (1 after the first start).
    starts: u32,
}

impl std::fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("name", &self.spec.config.name)
            .field("pid", &self.pid)
            .field("status", &self.status)
            .field("starts", &self.starts)
            .finish()
    }
}

impl WorkerProcess {
    /// Starts `spec` with `binary`, keeping its config and log files in `dir` (named after the
    /// worker), and waits for its ready line.
    pub async fn spawn(binary: &Path, dir: &Path, spec: WorkerSpec) -> Result<WorkerProcess, WorkerError> {
        let file = sanitize(&spec.config.name);
        let mut worker = WorkerProcess {
            config_path: dir.join(format!("{file}.toml")),
            log_path: dir.join(format!("{file}.log")),
            binary: binary.to_path_buf(),
            spec,
            child: None,
            pid: 0,
            status: None,
            starts: 0,
        };
        worker.launch().await?;
        Ok(worker)
    }

    async fn launch(&mut self) -> Result<(), WorkerError> {
        self.spec.config.validate().map_err(|e| WorkerError::Config(e.to_string()))?;
        let text = self.spec.config.to_toml().map_err(|e| WorkerError::Config(e.to_string()))?;
        std::fs::write(&self.config_path, text).map_err(io(format!("cannot write {}", self.config_path.display())))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io(format!("cannot open {}", self.log_path.display())))?;
        self.starts += 1;
        let crash = match self.spec.config.crash_at {
            Some(point) => format!(", crash_at {point} after {}", self.spec.config.crash_after),
            None => String::new(),
        };
        let _ = writeln!(log, "--- harness: start #{} of {}{crash} ---", self.starts, self.spec.config.name);

        let mut cmd = Command::new(&self.binary);
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("WORKER_") || n.starts_with("NATS_BRIDGE_") {
                cmd.env_remove(&name);
            }
        }
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("NATS_BRIDGE_REPLICAS", self.spec.replicas.to_string())
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(io(format!("cannot start {}", self.binary.display())))?;
        self.pid = child.id().unwrap_or(0);
        self.status = None;
        let stdout = child.stdout.take();
        self.child = Some(child);

        let Some(stdout) = stdout else {
            return Err(WorkerError::Config("worker stdout not captured".into()));
        };
        let mut lines = BufReader::new(stdout).lines();
        let timeout = self.spec.ready_timeout;
        let ready = tokio::time::timeout(timeout, async {
            while let Some(line) = lines.next_line().await? {
                if line.ends_with(" ready") {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        match ready {
            Ok(Ok(true)) => {
                // Keep reading, so a later line never meets a closed pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                Ok(())
            }
            Ok(Ok(false)) | Ok(Err(_)) => {
                let status = self.wait_exit(Duration::from_secs(5)).await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                Err(WorkerError::ExitedEarly { name: self.name().to_string(), status, log_tail: self.log_tail(30) })
            }
            Err(_) => {
                let _ = self.kill().await;
                Err(WorkerError::NotReady { name: self.name().to_string(), timeout, log_tail: self.log_tail(30) })
            }
        }
    }

    /// The instance name (`WORKER_NAME`, in its logs and NATS connection name).
    pub fn name(&self) -> &str {
        &self.spec.config.name
    }

    /// The process id of the current run.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The configuration of the current run.
    pub fn config(&self) -> &WorkerConfig {
        &self.spec.config
    }

    /// The spec of the current run.
    pub fn spec(&self) -> &WorkerSpec {
        &self.spec
    }

    /// Runs so far (1 after the first start, +1 per restart).
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The stderr log (all runs, each after a `--- harness: start #N` line).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }

    /// How the current run ended, without waiting (`None` while it runs).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.status = Some(status);
            }
        }
        self.status
    }

    /// Whether the current run is still going.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `deadline` for the process to end on its own (e.g. at a crash point).
    /// The process is left running when the deadline passes.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus, WorkerError> {
        if let Some(status) = self.try_status() {
            return Ok(status);
        }
        let child = self.child.as_mut().expect("a worker process has a child");
        match tokio::time::timeout(deadline, child.wait()).await {
            Ok(Ok(status)) => {
                self.status = Some(status);
                Ok(status)
            }
            Ok(Err(e)) => Err(io(format!("cannot wait for worker {}", self.spec.config.name))(e)),
            Err(_) => Err(WorkerError::StillRunning {
                name: self.name().to_string(),
                pid: self.pid,
                timeout: deadline,
                log_tail: self.log_tail(30),
            }),
        }
    }

    /// SIGKILL, then waits for the process to be gone. Returns how it ended (a process that had
    /// already exited keeps its own status).
    pub async fn kill(&mut self) -> Result<ExitStatus, WorkerError> {
        if let Some(status) = self.try_status() {
            return Ok(status);
        }
        let child = self.child.as_mut().expect("a worker process has a child");
        // tokio's kill is SIGKILL on Unix.
        let _ = child.start_kill();
        let status = child.wait().await.map_err(io(format!("cannot wait for worker {}", self.spec.config.name)))?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM (a clean shutdown: the worker drains its connection), then waits up to `deadline`;
    /// a process still running then is killed and reported as [`WorkerError::StillRunning`].
    pub async fn terminate(&mut self, deadline: Duration) -> Result<ExitStatus, WorkerError> {
        if let Some(status) = self.try_status() {
            return Ok(status);
        }
        let sent =
            std::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status().map_err(io("cannot run `kill -TERM`"))?;
        if !sent.success() {
            // It may have exited between the check and the signal.
            if let Some(status) = self.try_status() {
                return Ok(status);
            }
        }
        match self.wait_exit(deadline).await {
            Ok(status) => Ok(status),
            Err(e @ WorkerError::StillRunning { .. }) => {
                let _ = self.kill().await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts the worker again with the same configuration (killing the current run first if it
    /// is still going), and waits for it to be ready.
    pub async fn restart(&mut self) -> Result<(), WorkerError> {
        self.kill().await?;
        self.launch().await
    }

    /// Like [`WorkerProcess::restart`] after changing the configuration (kept for later restarts).
    pub async fn restart_with(&mut self, change: impl FnOnce(&mut WorkerConfig)) -> Result<(), WorkerError> {
        self.kill().await?;
        change(&mut self.spec.config);
        self.launch().await
    }

    /// Restarts without the crash point: the same worker, now healthy.
    pub async fn restart_without_crash(&mut self) -> Result<(), WorkerError> {
        self.restart_with(|c| c.crash_at = None).await
    }
}

/// File names from instance names.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Several worker processes and the directory of their config and log files (removed on drop
/// unless [`WorkerPool::keep_files`] was called). Every process is killed on drop.
pub struct WorkerPool {
    /// The processes (declared first: dropped, and so killed, before the directory goes).
    workers: Vec<WorkerProcess>,
    /// The binary.
    binary: PathBuf,
    /// Config and log files.
    dir: PathBuf,
    /// Keep `dir` on drop.
    keep: bool,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").field("workers", &self.workers).field("dir", &self.dir).finish()
    }
}

impl WorkerPool {
    /// An empty pool: finds the binary (a clear error when it is not built) and makes a directory.
    pub fn new() -> Result<WorkerPool, WorkerError> {
        let binary = worker_binary()?;
        let dir = std::env::temp_dir().join(format!("hs-workers-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        Ok(WorkerPool { workers: Vec::new(), binary, dir, keep: false })
    }

    /// A pool of `n` workers of `spec`, named `<name>-1` .. `<name>-n`, started concurrently.
    pub async fn start(n: usize, spec: WorkerSpec) -> Result<WorkerPool, WorkerError> {
        let mut pool = WorkerPool::new()?;
        let base = spec.config.name.clone();
        let (binary, dir) = (pool.binary.clone(), pool.dir.clone());
        let started = futures::future::join_all((1..=n).map(|i| {
            let spec = spec.clone().with(|c| c.name = format!("{base}-{i}"));
            let (binary, dir) = (binary.clone(), dir.clone());
            async move { WorkerProcess::spawn(&binary, &dir, spec).await }
        }))
        .await;
        for worker in started {
            pool.workers.push(worker?);
        }
        Ok(pool)
    }

    /// Starts one more worker (its name made unique within the pool) and waits until it is ready.
    pub async fn spawn(&mut self, mut spec: WorkerSpec) -> Result<&mut WorkerProcess, WorkerError> {
        if self.workers.iter().any(|w| w.name() == spec.config.name) {
            spec.config.name = format!("{}-{}", spec.config.name, self.workers.len() + 1);
        }
        let worker = WorkerProcess::spawn(&self.binary, &self.dir, spec).await?;
        self.workers.push(worker);
        Ok(self.workers.last_mut().expect("just pushed"))
    }

    /// The binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The directory of config and log files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the directory (logs) after the pool is dropped.
    pub fn keep_files(&mut self) {
        self.keep = true;
    }

    /// Number of workers (running or not).
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether the pool has no worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// A worker by index.
    pub fn get(&self, index: usize) -> Option<&WorkerProcess> {
        self.workers.get(index)
    }

    /// A worker by index, to kill, wait for or restart.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut WorkerProcess> {
        self.workers.get_mut(index)
    }

    /// Every worker.
    pub fn iter(&self) -> impl Iterator<Item = &WorkerProcess> {
        self.workers.iter()
    }

    /// Every worker, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut WorkerProcess> {
        self.workers.iter_mut()
    }

    /// SIGKILL to every running worker; waits for each.
    pub async fn kill_all(&mut self) -> Result<Vec<ExitStatus>, WorkerError> {
        let mut out = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            out.push(w.kill().await?);
        }
        Ok(out)
    }

    /// SIGTERM to every running worker; waits for each up to `deadline`.
    pub async fn terminate_all(&mut self, deadline: Duration) -> Result<Vec<ExitStatus>, WorkerError> {
        let until = Instant::now() + deadline;
        let mut out = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            out.push(w.terminate(until.saturating_duration_since(Instant::now())).await?);
        }
        Ok(out)
    }

    /// The last `lines` lines of every worker's log, headed by its name and pid.
    pub fn log_tails(&self, lines: usize) -> String {
        self.workers.iter().map(|w| format!("== {} (pid {}) ==\n{}", w.name(), w.pid(), w.log_tail(lines))).collect::<Vec<_>>().join("\n")
    }
}

impl std::ops::Index<usize> for WorkerPool {
    type Output = WorkerProcess;

    fn index(&self, index: usize) -> &WorkerProcess {
        &self.workers[index]
    }
}

impl std::ops::IndexMut<usize> for WorkerPool {
    fn index_mut(&mut self, index: usize) -> &mut WorkerProcess {
        &mut self.workers[index]
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Child::kill_on_drop sends SIGKILL; the files can go after that.
        self.workers.clear();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
