//! Waiting for something to become true, with a deadline: the one polling loop of the tests.
//! Tests wait on observable state or an answer, never with a bare sleep before an assertion.

use std::time::Duration;

/// How long to wait between two checks.
const INTERVAL: Duration = Duration::from_millis(10);

/// Checks `check` until it yields a value or `timeout` has passed (then checks a last time).
pub async fn wait_for<T>(
    mut check: impl AsyncFnMut() -> Option<T>,
    timeout: Duration,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Whether `cond` held within `timeout`: `assert!(wait_until(async || obs.num_events == 3,
/// Duration::from_secs(5)).await)`.
pub async fn wait_until(mut cond: impl AsyncFnMut() -> bool, timeout: Duration) -> bool {
    wait_for(async || cond().await.then_some(()), timeout)
        .await
        .is_some()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn waits_until_the_condition_holds_and_gives_up_at_the_deadline() {
        let checks = AtomicU32::new(0);
        let third = wait_for(
            async || (checks.fetch_add(1, Ordering::Relaxed) == 2).then_some("third"),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!((third, checks.load(Ordering::Relaxed)), (Some("third"), 3));

        let started = tokio::time::Instant::now();
        assert!(!wait_until(async || false, Duration::from_millis(50)).await);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
