//! Locks that a panic elsewhere does not poison: every critical section in the crate leaves
//! its data consistent at each step, so a panicking holder leaves nothing half-done. The one
//! way to wait for a condition that a [`Notify`] announces changes of. And two waits that a
//! busy task can poll without a lock: polling a tokio [`Notify`]'s wait takes the `Notify`'s
//! lock every time, which showed in profiles of the conversations' tasks (2,300 instructions
//! per mailbox round trip).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
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
/// waiters (`notify_waiters`). The waiter is enabled before each check that may lead to a
/// wait, so a change right after the check still wakes it; what is found at the first check
/// costs no waiter (enabling one takes the `Notify`'s lock, and so does dropping it).
#[allow(clippy::manual_async_fn)] // an async fn would keep its arguments twice
pub(crate) fn wait_until<'a, T>(
    changed: &'a Notify,
    mut check: impl FnMut() -> Option<T> + 'a,
) -> impl std::future::Future<Output = T> + 'a {
    async move {
        if let Some(found) = check() {
            return found;
        }
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

/// Wakes the one task that waits on it, as [`Notify::notify_one`] does (a wake-up while
/// nobody waits is kept for the next wait), without a lock: for a queue with a single reader.
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    woken: AtomicBool,
    waiter: AtomicWaker,
}

impl Wakeup {
    /// Wakes the waiting task, or the next wait.
    pub(crate) fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waiter.wake();
    }

    /// Resolves at the next [`Wakeup::wake`] (at once if one came since the last wait ended).
    /// One task at a time may wait.
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        WakeupWait(self)
    }

    /// Whether a wake-up came since the last one taken, leaving `cx`'s waker for the next.
    fn take_wakeup(&self, cx: &Context<'_>) -> bool {
        // Registered before the flag is read, so a wake-up right after the read wakes the task.
        self.waiter.register(cx.waker());
        self.woken.swap(false, Ordering::AcqRel)
    }
}

/// Also a waker: waking it is [`Wakeup::wake`].
impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        Wakeup::wake(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        Wakeup::wake(self);
    }
}

struct WakeupWait<'a>(&'a Wakeup);

impl Future for WakeupWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.take_wakeup(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for WakeupWait<'_> {
    fn drop(&mut self) {
        // The task's waker keeps the task's memory: not beyond the wait.
        drop(self.0.waiter.take());
    }
}

/// A wait that ends once and rarely (a cancellation, a supersession), kept beside busy waits in
/// a task's `select!`: polled again only once it woke the task, so that the task's other
/// wake-ups cost an atomic operation here instead of the lock that polling the wait takes.
pub(crate) struct PolledWhenWoken<F> {
    wait: Pin<Box<F>>,
    woken: Arc<Wakeup>,
    /// `woken` as the waker `wait` is polled with.
    waker: Waker,
}

impl<F: Future> PolledWhenWoken<F> {
    pub(crate) fn new(wait: F) -> Self {
        // Woken to begin with: the first poll polls `wait`, which leaves its waker with it.
        let woken = Arc::new(Wakeup {
            woken: AtomicBool::new(true),
            waiter: AtomicWaker::new(),
        });
        Self {
            wait: Box::pin(wait),
            waker: Waker::from(woken.clone()),
            woken,
        }
    }
}

impl<F: Future> Future for PolledWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !this.woken.take_wakeup(cx) {
            return Poll::Pending;
        }
        this.wait
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{PolledWhenWoken, Signal, Wakeup};

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

    #[tokio::test]
    async fn a_wakeup_reaches_the_waiting_task_and_one_while_nobody_waits_is_kept() {
        let wakeup = Arc::new(Wakeup::default());
        let waiting = tokio::spawn({
            let wakeup = wakeup.clone();
            async move { wakeup.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        wakeup.wake();
        let woken = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert!(woken.is_ok(), "the waiting task was not woken");
        wakeup.wake();
        let kept = tokio::time::timeout(Duration::from_secs(10), wakeup.wait()).await;
        assert!(kept.is_ok(), "a wake-up while nobody waited was lost");
        let again = futures::FutureExt::now_or_never(wakeup.wait());
        assert_eq!(again, None, "one wake-up ended two waits");
    }

    #[tokio::test]
    async fn a_wait_polled_when_woken_ends_when_its_wait_does_whatever_else_woke_the_task() {
        let token = tokio_util::sync::CancellationToken::new();
        let busy = Arc::new(Wakeup::default());
        let ended = tokio::spawn({
            let (token, busy) = (token.clone(), busy.clone());
            async move {
                let cancelled = PolledWhenWoken::new(token.cancelled_owned());
                tokio::pin!(cancelled);
                let mut other_wakeups = 0;
                loop {
                    tokio::select! {
                        _ = &mut cancelled => return other_wakeups,
                        _ = busy.wait() => other_wakeups += 1,
                    }
                }
            }
        });
        for _ in 0..3 {
            busy.wake();
            tokio::task::yield_now().await;
        }
        assert!(!ended.is_finished());
        token.cancel();
        let other_wakeups = tokio::time::timeout(Duration::from_secs(10), ended).await;
        let other_wakeups = other_wakeups.expect("the cancellation did not end the wait");
        assert!(other_wakeups.unwrap() >= 1);
    }
}
