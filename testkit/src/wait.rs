//! Waiting on conditions instead of sleeping: a test that needs a side effect (a counter
//! moved, a peer connected, a file written) waits until it is there, up to a deadline that is
//! generous for a loaded machine and a debug build, and fails naming what it waited for.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//!
//! let done = Arc::new(AtomicBool::new(false));
//! let flag = done.clone();
//! tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
//! ferry_testkit::wait::wait_for("the task to run", || done.load(Ordering::SeqCst)).await;
//! # }
//! ```
//!
//! The condition is checked every [`POLL`]; the helpers panic (failing the test) at the
//! deadline. They wait no longer than the condition needs, so a fast machine is not slowed
//! and a slow one does not fail.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a wait gives its condition by default.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition is checked.
pub const POLL: Duration = Duration::from_millis(5);

/// Waits until `condition` holds, up to [`DEADLINE`].
///
/// # Panics
///
/// At the deadline, naming `what`.
pub async fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    wait_for_within(what, DEADLINE, condition).await;
}

/// Waits until `condition` holds, up to `deadline`.
///
/// # Panics
///
/// At the deadline, naming `what`.
pub async fn wait_for_within(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    wait_for_value_within(what, deadline, || condition().then_some(())).await;
}

/// Waits until `probe` gives a value, up to [`DEADLINE`], and returns it.
///
/// # Panics
///
/// At the deadline, naming `what`.
pub async fn wait_for_value<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    wait_for_value_within(what, DEADLINE, probe).await
}

/// Waits until `probe` gives a value, up to `deadline`, and returns it.
///
/// # Panics
///
/// At the deadline, naming `what`.
pub async fn wait_for_value_within<T>(
    what: &str,
    deadline: Duration,
    probe: impl FnMut() -> Option<T>,
) -> T {
    match poll_until(deadline, probe).await {
        Some(value) => value,
        None => panic!("waited {deadline:?} for {what}"),
    }
}

/// Waits until `probe` gives a value, up to `deadline`, and returns it; `None` at the
/// deadline, for callers that report a timeout instead of failing (a benchmark's figure).
pub async fn poll_until<T>(deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if started.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the future `check` makes gives `true`, up to [`DEADLINE`]: for conditions that
/// are read asynchronously (a lock, a request to a server).
///
/// # Panics
///
/// At the deadline, naming `what`.
pub async fn wait_for_async(what: &str, check: impl AsyncFnMut() -> bool) {
    wait_for_async_within(what, DEADLINE, check).await;
}

/// Waits until the future `check` makes gives `true`, up to `deadline`; `check` may borrow
/// what the test holds mutably (a connection it sends a request on).
///
/// # Panics
///
/// At the deadline, naming `what`.
pub async fn wait_for_async_within(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "waited {deadline:?} for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Tries `attempt` until it succeeds, up to [`DEADLINE`], and returns what it made: for an
/// action that fails until a side effect happened (binding a port an old socket still holds).
///
/// # Panics
///
/// At the deadline, naming `what` and the last error.
pub async fn wait_for_ok<T, E, F, Fut>(what: &str, mut attempt: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) => assert!(
                started.elapsed() < DEADLINE,
                "waited {DEADLINE:?} for {what}: {error:?}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `condition` holds, up to [`DEADLINE`], blocking the thread: for tests without
/// a runtime (processes, files).
///
/// # Panics
///
/// At the deadline, naming `what`.
pub fn wait_for_blocking(what: &str, mut condition: impl FnMut() -> bool) {
    wait_for_value_blocking(what, || condition().then_some(()));
}

/// Waits until `probe` gives a value, up to [`DEADLINE`], blocking the thread, and returns it.
///
/// # Panics
///
/// At the deadline, naming `what`.
pub fn wait_for_value_blocking<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    wait_for_value_blocking_within(what, DEADLINE, probe)
}

/// Waits until `probe` gives a value, up to `deadline`, blocking the thread, and returns it.
///
/// # Panics
///
/// At the deadline, naming `what`.
pub fn wait_for_value_blocking_within<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "waited {deadline:?} for {what}"
        );
        std::thread::sleep(POLL);
    }
}
