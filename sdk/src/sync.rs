//! Locks that a panic elsewhere does not poison: every critical section in the crate leaves
//! its data consistent at each step, so a panicking holder leaves nothing half-done. And the
//! one way to wait for a condition that a [`Notify`] announces changes of.

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
