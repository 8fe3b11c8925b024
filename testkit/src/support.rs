//! Small helpers every crate's integration tests share: logs to the test's output, waiting for
//! a condition with a deadline (never a bare sleep), a temporary directory removed on drop, and
//! reading one sample of Prometheus text.

use std::future::Future;
use std::time::{Duration, Instant};

/// Sends logs (filtered by `RUST_LOG`, `warn` by default) to the test's captured output; a
/// second call does nothing.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

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

/// The value of one sample in Prometheus text, by metric name and exact label set (`None` when
/// no such series was rendered: a counter never touched is not the same as a counter at 0).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: std::collections::BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, got) = match series.split_once('{') {
            None => (series, std::collections::BTreeMap::new()),
            Some((n, rest)) => {
                let got = rest
                    .strip_suffix('}')?
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("label");
                        (k, v.trim_matches('"'))
                    })
                    .collect();
                (n, got)
            }
        };
        (n == name && got == want).then(|| value.parse().expect("sample value"))
    })
}
