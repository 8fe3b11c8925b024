//! The locally built `hs-nats` image.
//!
//! There is no registry to pull from, so the image is built from
//! `fixtures/nats/Dockerfile` and the local static `nats-server` binary, and
//! tagged with the binary's version. It is built once and reused by every
//! later run; concurrent builders (threads or processes) are serialised by a
//! lock file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::OnceCell;

use super::binary::{self, NatsBinary};
use super::NatsError;

/// Repository name of the image.
pub const IMAGE_NAME: &str = "hs-nats";

/// The image recipe, `fixtures/nats/Dockerfile`.
pub const DOCKERFILE: &str = include_str!("../../fixtures/nats/Dockerfile");

/// How long a `docker build` may take before it is abandoned.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// A reference to a local image, `name:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Repository name, e.g. `hs-nats`.
    pub name: String,
    /// Tag, the nats-server version, e.g. `2.15.1`.
    pub tag: String,
}

impl ImageRef {
    /// The `hs-nats` image for the given nats-server version.
    pub fn for_version(version: &str) -> Self {
        ImageRef { name: IMAGE_NAME.to_owned(), tag: version.to_owned() }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// Makes sure the `hs-nats:<version>` image exists locally, building it if
/// needed, and returns its reference.
///
/// The version is read from the `nats-server` binary found by
/// [`binary::locate`]. The result is cached for the life of the process.
pub async fn ensure_image() -> Result<ImageRef, NatsError> {
    static IMAGE: OnceCell<ImageRef> = OnceCell::const_new();
    IMAGE
        .get_or_try_init(|| async {
            let binary = tokio::task::spawn_blocking(binary::locate)
                .await
                .map_err(|e| NatsError::io("binary lookup task failed", std::io::Error::other(e)))??;
            ensure_image_for(&binary).await
        })
        .await
        .cloned()
}

/// Makes sure the image for `binary` exists, building it from that binary if
/// needed. Not cached; prefer [`ensure_image`].
pub async fn ensure_image_for(binary: &NatsBinary) -> Result<ImageRef, NatsError> {
    let image = ImageRef::for_version(&binary.version);
    if image_exists(&image).await? {
        tracing::debug!(%image, "nats image already present");
        return Ok(image);
    }

    let _lock = lock_build(&image).await?;
    // Another process may have built it while this one waited for the lock.
    if image_exists(&image).await? {
        tracing::debug!(%image, "nats image built by another process");
        return Ok(image);
    }

    let started = Instant::now();
    build(&image, &binary.path).await?;
    tracing::info!(
        %image,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "built nats image in {:.2?}",
        started.elapsed()
    );
    Ok(image)
}

/// Whether `image` exists in the local Docker engine.
pub async fn image_exists(image: &ImageRef) -> Result<bool, NatsError> {
    let output =
        docker_command().args(["image", "inspect", "--format", "{{.Id}}", &image.to_string()]).output().await.map_err(docker_cli_error)?;
    if output.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.to_ascii_lowercase().contains("no such image") {
        return Ok(false);
    }
    Err(NatsError::DockerUnavailable(format!("docker image inspect {image} failed: {}", stderr.trim())))
}

fn docker_command() -> Command {
    let mut cmd = Command::new("docker");
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

fn docker_cli_error(e: std::io::Error) -> NatsError {
    if e.kind() == std::io::ErrorKind::NotFound {
        NatsError::DockerUnavailable("the docker cli is not installed (not found in PATH)".into())
    } else {
        NatsError::io("failed to run the docker cli", e)
    }
}

/// Takes an exclusive lock on a per-tag lock file in the temp directory.
/// The lock is released when the returned file is dropped (or the process
/// dies); the file itself is left in place.
async fn lock_build(image: &ImageRef) -> Result<std::fs::File, NatsError> {
    let path = std::env::temp_dir().join(format!("{}-{}.build.lock", image.name, image.tag));
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| NatsError::io(format!("failed to open lock file {}", path.display()), e))?;
        file.lock().map_err(|e| NatsError::io(format!("failed to lock {}", path.display()), e))?;
        Ok(file)
    })
    .await
    .map_err(|e| NatsError::io("lock task failed", std::io::Error::other(e)))?
}

/// Builds `image` with `docker build` from a temporary context holding the
/// Dockerfile and a copy of the binary.
async fn build(image: &ImageRef, binary_path: &Path) -> Result<(), NatsError> {
    binary::check_static_elf(binary_path)?;
    let context = BuildContext::create(binary_path)?;
    tracing::info!(%image, binary = %binary_path.display(), "building nats image");

    let mut cmd = docker_command();
    cmd.arg("build")
        .arg("--tag")
        .arg(image.to_string())
        .arg("--label")
        .arg(format!("org.opencontainers.image.version={}", image.tag))
        .arg(&context.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = match tokio::time::timeout(BUILD_TIMEOUT, cmd.output()).await {
        Ok(result) => result.map_err(docker_cli_error)?,
        Err(_) => {
            return Err(NatsError::ImageBuild {
                image: image.to_string(),
                detail: format!("docker build did not finish within {BUILD_TIMEOUT:?}"),
            })
        }
    };
    if !output.status.success() {
        return Err(NatsError::ImageBuild {
            image: image.to_string(),
            detail: format!(
                "docker build exited with {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    if !image_exists(image).await? {
        return Err(NatsError::ImageBuild {
            image: image.to_string(),
            detail: "docker build succeeded but the image is not present".into(),
        });
    }
    Ok(())
}

/// A temporary build context directory, removed on drop.
struct BuildContext {
    dir: PathBuf,
}

impl BuildContext {
    fn create(binary_path: &Path) -> Result<Self, NatsError> {
        let dir = std::env::temp_dir().join(format!("hs-nats-build-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).map_err(|e| NatsError::io(format!("failed to create {}", dir.display()), e))?;
        let context = BuildContext { dir };
        let dockerfile = context.dir.join("Dockerfile");
        std::fs::write(&dockerfile, DOCKERFILE).map_err(|e| NatsError::io(format!("failed to write {}", dockerfile.display()), e))?;
        let target = context.dir.join("nats-server");
        std::fs::copy(binary_path, &target)
            .map_err(|e| NatsError::io(format!("failed to copy {} into the build context", binary_path.display()), e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| NatsError::io(format!("failed to chmod {}", target.display()), e))?;
        }
        Ok(context)
    }
}

impl Drop for BuildContext {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
