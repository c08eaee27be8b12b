//! Rate limits and the byte-bounded outgoing queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::protocol::{close, Encoded};
use crate::sync::lock;

/// A token bucket: `capacity` tokens, refilled at `capacity` per `window`.
#[derive(Debug)]
pub(crate) struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(capacity: u32, window: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            per_second: capacity / window.as_secs_f64().max(0.001),
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the writer of a connection sends.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame, holding its share of the queue's bytes until written.
    Frame(Encoded, Option<OwnedSemaphorePermit>),
    /// A close frame, then the end.
    Close(u16, String),
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// The queue stayed full: the browser does not read.
    Slow,
    /// The connection is gone.
    Closed,
}

/// The byte-bounded queue of one connection's outgoing frames. Its deque is allocated only
/// while frames wait (an idle connection holds none), and given back when it empties.
#[derive(Debug, Clone)]
pub(crate) struct OutQueue {
    shared: Arc<Frames>,
    bytes: Arc<Semaphore>,
    max: usize,
}

/// The frames waiting, and the writer's wake-up.
#[derive(Debug, Default)]
struct Frames {
    waiting: Mutex<Waiting>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct Waiting {
    frames: VecDeque<Outgoing>,
    /// The writer is gone: nothing is taken any more.
    closed: bool,
}

/// The writer's end of an [`OutQueue`].
#[derive(Debug)]
pub(crate) struct OutReceiver {
    shared: Arc<Frames>,
}

impl OutReceiver {
    /// The next frame, waiting for one.
    pub(crate) async fn recv(&mut self) -> Outgoing {
        loop {
            let notified = self.shared.ready.notified();
            {
                let mut waiting = lock(&self.shared.waiting);
                if let Some(item) = waiting.frames.pop_front() {
                    if waiting.frames.is_empty() {
                        waiting.frames = VecDeque::new();
                    }
                    return item;
                }
            }
            notified.await;
        }
    }
}

impl Drop for OutReceiver {
    fn drop(&mut self) {
        let mut waiting = lock(&self.shared.waiting);
        waiting.closed = true;
        waiting.frames = VecDeque::new();
    }
}

impl OutQueue {
    pub(crate) fn new(max_bytes: usize) -> (Self, OutReceiver) {
        let shared = Arc::new(Frames::default());
        let max = max_bytes.clamp(1, Semaphore::MAX_PERMITS);
        (
            Self {
                shared: shared.clone(),
                bytes: Arc::new(Semaphore::new(max)),
                max,
            },
            OutReceiver { shared },
        )
    }

    /// Hands `item` to the writer.
    fn send(&self, item: Outgoing) -> Result<(), QueueError> {
        {
            let mut waiting = lock(&self.shared.waiting);
            if waiting.closed {
                return Err(QueueError::Closed);
            }
            waiting.frames.push_back(item);
        }
        self.shared.ready.notify_one();
        Ok(())
    }

    fn cost(&self, frame: &Encoded) -> u32 {
        u32::try_from(frame.len().clamp(1, self.max)).unwrap_or(u32::MAX)
    }

    /// Queues `frame` if its bytes fit now (answers to requests: a browser that sends
    /// requests without reading the answers is a slow consumer).
    pub(crate) fn try_push(&self, frame: Encoded) -> Result<(), QueueError> {
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.cost(&frame))
            .map_err(|error| match error {
                tokio::sync::TryAcquireError::NoPermits => QueueError::Slow,
                tokio::sync::TryAcquireError::Closed => QueueError::Closed,
            })?;
        self.send(Outgoing::Frame(frame, Some(permit)))
    }

    /// Queues `frame`, waiting at most `timeout` for room.
    pub(crate) async fn push(&self, frame: Encoded, timeout: Duration) -> Result<(), QueueError> {
        let cost = self.cost(&frame);
        let permit = tokio::time::timeout(timeout, self.bytes.clone().acquire_many_owned(cost))
            .await
            .map_err(|_| QueueError::Slow)?
            .map_err(|_| QueueError::Closed)?;
        self.send(Outgoing::Frame(frame, Some(permit)))
    }

    /// Queues a close frame, regardless of room (the reason cut to what a close frame holds).
    pub(crate) fn close(&self, code: u16, reason: &str) {
        let _ = self.send(Outgoing::Close(code, close::reason(reason).to_owned()));
        self.bytes.close();
    }

    /// Bytes queued and not yet written.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.max - self.bytes.available_permits().min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
        let start = Instant::now();
        let mut bucket = Bucket::new(3, Duration::from_secs(1));
        assert!(bucket.take(start) && bucket.take(start) && bucket.take(start));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(400)));
        assert!(!bucket.take(start + Duration::from_millis(400)));
    }

    #[tokio::test]
    async fn queue_is_bounded_by_bytes() {
        let (queue, mut receiver) = OutQueue::new(10);
        queue.try_push(Encoded::Text("12345678".into())).unwrap();
        assert_eq!(queue.queued(), 8);
        assert_eq!(
            queue.try_push(Encoded::Text("123".into())),
            Err(QueueError::Slow)
        );
        assert_eq!(
            queue
                .push(Encoded::Text("123".into()), Duration::from_millis(10))
                .await,
            Err(QueueError::Slow)
        );
        // Writing the first frame frees its bytes.
        drop(receiver.recv().await);
        assert_eq!(lock(&queue.shared.waiting).frames.capacity(), 0);
        assert_eq!(queue.queued(), 0);
        queue
            .push(Encoded::Text("123".into()), Duration::from_millis(10))
            .await
            .unwrap();
        queue.close(1000, "bye");
        assert_eq!(
            queue.try_push(Encoded::Text("1".into())),
            Err(QueueError::Closed)
        );
        // Once the writer is gone, nothing more is queued.
        let (queue, receiver) = OutQueue::new(10);
        drop(receiver);
        assert_eq!(
            queue.try_push(Encoded::Text("1".into())),
            Err(QueueError::Closed)
        );
    }
}
