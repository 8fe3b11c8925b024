//! `--profile`: a CPU profile of the run as a flame graph in the report directory.
//!
//! perf samples this process (generator, gateway, workers and processor, each on threads
//! named after its role, see [`crate::cost`]) and nats-server during the measured window,
//! with DWARF call graphs (release builds keep no frame pointers). `perf script` then feeds
//! inferno, which folds the stacks (`profile.folded`, one line per stack, easy to diff
//! between runs) and draws `flamegraph.svg`, whose first level is the thread name, so each
//! role's share is one glance. Where perf is missing or not allowed to sample, the run goes
//! on without a profile and the report says why.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use inferno::collapse::Collapse;

/// Samples per second per CPU: enough for a readable graph, little enough to leave the run's
/// numbers alone.
const FREQUENCY: u32 = 199;

/// The longest profile taken: `perf script` over DWARF stacks is slow, and a graph of 15 s of
/// steady load says what one of 60 s says.
pub const MAX_SECONDS: u64 = 15;

/// What `--profile` produced.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Profile {
    /// The flame graph, relative to the report directory; `None` when none could be made.
    pub flamegraph: Option<String>,
    /// The folded stacks.
    pub folded: Option<String>,
    /// Why there is no graph, or what to know about it.
    pub notes: Vec<String>,
}

/// Whether perf is on this machine: `Err` says what to install.
pub fn perf_available() -> Result<(), String> {
    match Command::new("perf").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => Ok(()),
        _ => Err("perf is not installed (Debian: apt-get install linux-perf): no flame graph".into()),
    }
}

/// Records `pids` for `seconds` into `dir/perf.data` (blocking), then writes
/// `dir/profile.folded` and `dir/flamegraph.svg` and removes `perf.data`.
pub fn record(dir: &Path, pids: &[u32], seconds: u64, title: &str) -> Profile {
    let mut p = Profile { flamegraph: None, folded: None, notes: Vec::new() };
    if let Err(e) = perf_available() {
        p.notes.push(e);
        return p;
    }
    let data = dir.join("perf.data");
    let pid_list = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let recorded = Command::new("perf")
        .args(["record", "-q", "-F", &FREQUENCY.to_string(), "--call-graph", "dwarf,16384", "-p", &pid_list, "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match recorded {
        Ok(out) if out.status.success() && data.exists() => {}
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr).lines().find(|l| !l.trim().is_empty()).unwrap_or("no output").to_string();
            p.notes.push(format!("perf record failed ({why}); sampling other processes may need root or kernel.perf_event_paranoid <= 1"));
            let _ = std::fs::remove_file(&data);
            return p;
        }
        Err(e) => {
            p.notes.push(format!("cannot run perf: {e}"));
            return p;
        }
    }
    match fold_and_draw(dir, &data, title) {
        Ok(()) => {
            p.folded = Some("profile.folded".into());
            p.flamegraph = Some("flamegraph.svg".into());
        }
        Err(e) => p.notes.push(format!("cannot draw the flame graph: {e}")),
    }
    let _ = std::fs::remove_file(&data);
    p
}

fn fold_and_draw(dir: &Path, data: &PathBuf, title: &str) -> Result<(), String> {
    let mut script = Command::new("perf")
        .args(["script", "-i"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("perf script: {e}"))?;
    let stdout = script.stdout.take().ok_or("perf script: no output")?;
    let mut folded = Vec::new();
    let mut folder = inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default());
    folder.collapse(BufReader::new(stdout), &mut folded).map_err(|e| format!("folding stacks: {e}"))?;
    let _ = script.wait();
    if folded.is_empty() {
        return Err("perf recorded no samples".into());
    }
    std::fs::write(dir.join("profile.folded"), &folded).map_err(|e| e.to_string())?;
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    // A frame's width is its share of the sampled CPU time (perf weighs each sample by its period).
    options.subtitle = Some(format!(
        "sampled at {FREQUENCY} Hz; the first level is the thread: load-generator, sut-gateway, sut-workers, sut-processor, nats-server"
    ));
    let svg = std::fs::File::create(dir.join("flamegraph.svg")).map_err(|e| e.to_string())?;
    inferno::flamegraph::from_reader(&mut options, &folded[..], std::io::BufWriter::new(svg)).map_err(|e| e.to_string())?;
    Ok(())
}

/// How long to profile a window of `window` seconds.
pub fn seconds_for(window: Duration) -> u64 {
    window.as_secs().clamp(1, MAX_SECONDS)
}
