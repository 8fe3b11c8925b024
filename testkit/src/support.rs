//! Small helpers every crate's integration tests share: waiting for a condition with a
//! deadline (never a bare sleep) and a temporary directory removed on drop.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns `Some`; panics naming `what` once `timeout` has
/// passed (a test helper: the panic is the test's failure).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A directory removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new, empty, uniquely named directory under the system's temporary directory.
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("hs-{name}-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
