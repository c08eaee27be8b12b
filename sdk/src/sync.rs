//! Locks that a panic elsewhere does not poison: every critical section in the crate leaves
//! its data consistent at each step, so a panicking holder leaves nothing half-done. And the
//! one way to wait for a condition that a [`Notify`] announces changes of.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::Notify;

/// Locks `mutex`.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `lock` for reading.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `lock` for writing.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A signal set once and waited on by any number of tasks: a [`CancellationToken`] without its
/// tree of children, inline where it is kept (the token's own allocation was 112 bytes of
/// every mailbox).
///
/// [`CancellationToken`]: tokio_util::sync::CancellationToken
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    changed: Notify,
}

impl Signal {
    /// Sets the signal and wakes every wait on it.
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Whether the signal was set.
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the signal is set (at once if it is).
    pub(crate) fn wait(&self) -> impl std::future::Future<Output = ()> + '_ {
        wait_until(&self.changed, || self.is_set().then_some(()))
    }
}

/// Waits until `check` finds what it waits for, checking again whenever `changed` wakes its
/// waiters (`notify_waiters`). The waiter is enabled before each check, so a change right
/// after the check still wakes it.
#[allow(clippy::manual_async_fn)] // an async fn would keep its arguments twice
pub(crate) fn wait_until<'a, T>(
    changed: &'a Notify,
    mut check: impl FnMut() -> Option<T> + 'a,
) -> impl std::future::Future<Output = T> + 'a {
    async move {
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = check() {
                return found;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Signal;

    #[tokio::test]
    async fn a_signal_ends_the_waits_begun_before_it_was_set_and_after() {
        let signal = Arc::new(Signal::default());
        let before = tokio::spawn({
            let signal = signal.clone();
            async move { signal.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!signal.is_set());
        assert!(!before.is_finished());
        signal.set();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            before.await.unwrap();
            signal.wait().await;
        });
        assert!(ended.await.is_ok(), "a wait outlived the signal");
        assert!(signal.is_set());
    }
}
