//! The one way these tests wait: poll observable state (an HTTP answer, a metric, a row, a
//! file, a log line) until it holds, with a generous deadline that only bounds a failure.
//! Never a fixed sleep standing in for "long enough".

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a condition may take before the test fails; only a failing run waits this long.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Pause between two looks at the state being polled.
const EVERY: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Some`, and returns that value; panics naming `what` once
/// `timeout` has passed without.
pub async fn eventually_some<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(EVERY).await;
    }
}

/// Polls `check` until it holds; panics naming `what` once `timeout` has passed without.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(timeout, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// [`eventually`] for tests without an async runtime (they drive child processes).
pub fn eventually_blocking(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(EVERY);
    }
}
