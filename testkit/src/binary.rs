//! Finding the local `nats-server` binary and reading its version.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::NatsError;

/// Environment variable that points at a specific `nats-server` binary.
pub const BINARY_ENV: &str = "NATS_SERVER_BIN";

/// A located `nats-server` binary together with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsBinary {
    /// Absolute path of the binary.
    pub path: PathBuf,
    /// Version without the leading `v`, e.g. `2.15.1`.
    pub version: String,
}

/// Locates `nats-server` and reads its version.
///
/// Search order: the file named by `NATS_SERVER_BIN` (an error if it is set
/// but missing), `<workspace root>/.venv/bin/nats-server`, then every
/// directory of `PATH`.
pub fn locate() -> Result<NatsBinary, NatsError> {
    let path = find_path()?;
    let version = read_version(&path)?;
    Ok(NatsBinary { path, version })
}

fn find_path() -> Result<PathBuf, NatsError> {
    if let Some(value) = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if is_executable_file(&path) {
            return Ok(absolute(&path));
        }
        return Err(NatsError::BinaryUnusable {
            path,
            reason: format!("{BINARY_ENV} names a file that does not exist or is not executable"),
        });
    }

    let mut searched = Vec::new();
    for root in workspace_roots() {
        let candidate = root.join(".venv").join("bin").join("nats-server");
        if is_executable_file(&candidate) {
            return Ok(candidate);
        }
        searched.push(candidate.display().to_string());
    }

    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if is_executable_file(&candidate) {
                return Ok(absolute(&candidate));
            }
        }
    }
    searched.push("$PATH".to_owned());

    Err(NatsError::BinaryNotFound { searched: format!("${BINARY_ENV}, {}", searched.join(", ")) })
}

/// Workspace roots to look in: the one this crate was built in, then the
/// one containing the current directory (if different).
fn workspace_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let starts = [Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))), std::env::current_dir().ok()];
    for start in starts.into_iter().flatten() {
        if let Some(root) = find_workspace_root(&start) {
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
    }
    roots
}

/// Walks up from `start` to the first directory whose `Cargo.toml` declares
/// a `[workspace]`.
pub(crate) fn find_workspace_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        manifest.lines().any(|line| line.trim() == "[workspace]").then(|| dir.to_path_buf())
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn read_version(path: &Path) -> Result<String, NatsError> {
    let output = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| NatsError::io(format!("failed to run {} --version", path.display()), e))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    parse_version(&text).ok_or_else(|| NatsError::BinaryUnusable {
        path: path.to_path_buf(),
        reason: format!("unexpected --version output {:?}", text.trim()),
    })
}

/// Extracts `2.15.1` from `nats-server: v2.15.1`.
fn parse_version(text: &str) -> Option<String> {
    let token = text.split_whitespace().find(|t| t.starts_with('v') && t[1..].starts_with(|c: char| c.is_ascii_digit()))?;
    let version = &token[1..];
    let valid = version.len() <= 100 && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    valid.then(|| version.to_owned())
}

/// Rejects binaries that cannot run in a `FROM scratch` image: anything that
/// is not an ELF executable, or that needs a dynamic loader.
pub(crate) fn check_static_elf(path: &Path) -> Result<(), NatsError> {
    let data = std::fs::read(path).map_err(|e| NatsError::io(format!("failed to read {}", path.display()), e))?;
    let unusable = |reason: &str| NatsError::BinaryUnusable { path: path.to_path_buf(), reason: reason.to_owned() };
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err(unusable("not an elf executable (a wrapper script?)"));
    }
    // Only 64-bit little-endian headers are inspected further; for other
    // layouts the container start itself reports problems.
    if data[4] != 2 || data[5] != 1 {
        return Ok(());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        if off + 4 > data.len() {
            break;
        }
        const PT_INTERP: u32 = 3;
        let p_type = u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
        if p_type == PT_INTERP {
            return Err(unusable("dynamically linked; a static build is needed for the scratch image"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_output() {
        assert_eq!(parse_version("nats-server: v2.15.1\n").as_deref(), Some("2.15.1"));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1").as_deref(), Some("2.11.0-RC.1"));
        assert_eq!(parse_version("nats-server: version unknown"), None);
    }

    #[test]
    fn finds_this_workspace() {
        let root = find_workspace_root(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(root.join("testkit").is_dir());
    }
}
