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
    Frame(Encoded, Option<Share>),
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

/// A queued frame's share of its connection's queue, given back when it is written: of all the
/// queue's bytes, and for a message also of the part messages may fill.
#[derive(Debug)]
pub(crate) struct Share {
    _bytes: OwnedSemaphorePermit,
    _messages: Option<OwnedSemaphorePermit>,
}

/// The byte-bounded queue of one connection's outgoing frames. Its deque is allocated only
/// while frames wait (an idle connection holds none), and given back when it empties.
///
/// Messages may fill at most three quarters of it: the last quarter is kept for the answers
/// to the browser's requests (and the other frames that are not messages), so that a long
/// stream of messages the browser reads slowly (a download through a slow link) never makes
/// an answer find the queue full, which would close the connection as a slow consumer.
#[derive(Debug, Clone)]
pub(crate) struct OutQueue {
    shared: Arc<Frames>,
    bytes: Arc<Semaphore>,
    messages: Arc<Semaphore>,
    max: usize,
    max_messages: usize,
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
            if let Some(item) = self.try_recv() {
                return item;
            }
            notified.await;
        }
    }

    /// The next frame, if one is waiting.
    pub(crate) fn try_recv(&self) -> Option<Outgoing> {
        let mut waiting = lock(&self.shared.waiting);
        let item = waiting.frames.pop_front();
        if waiting.frames.is_empty() && waiting.frames.capacity() > 0 {
            waiting.frames = VecDeque::new();
        }
        item
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
        let max_messages = (max - max / 4).max(1);
        (
            Self {
                shared: shared.clone(),
                bytes: Arc::new(Semaphore::new(max)),
                messages: Arc::new(Semaphore::new(max_messages)),
                max,
                max_messages,
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

    /// A message's cost in the part messages may fill: a message larger than that part takes
    /// all of it (else it could never be queued).
    fn message_cost(&self, frame: &Encoded) -> u32 {
        u32::try_from(frame.len().clamp(1, self.max_messages)).unwrap_or(u32::MAX)
    }

    /// Queues `frame` if its bytes fit now (answers to requests, and every frame that is not a
    /// message: a browser that sends requests without reading the answers is a slow consumer).
    pub(crate) fn try_push(&self, frame: Encoded) -> Result<(), QueueError> {
        let bytes = self.try_take(&self.bytes, self.cost(&frame))?;
        self.send(Outgoing::Frame(
            frame,
            Some(Share {
                _bytes: bytes,
                _messages: None,
            }),
        ))
    }

    /// Queues the message `frame` if its bytes fit now within the part of the queue messages
    /// may fill.
    pub(crate) fn try_push_message(&self, frame: Encoded) -> Result<(), QueueError> {
        let messages = self.try_take(&self.messages, self.message_cost(&frame))?;
        let bytes = self.try_take(&self.bytes, self.cost(&frame))?;
        self.send(Outgoing::Frame(
            frame,
            Some(Share {
                _bytes: bytes,
                _messages: Some(messages),
            }),
        ))
    }

    /// Queues the message `frame`, waiting at most `timeout` for room within the part of the
    /// queue messages may fill.
    pub(crate) async fn push_message(
        &self,
        frame: Encoded,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let cost = self.cost(&frame);
        let message_cost = self.message_cost(&frame);
        let take = async {
            let messages = self
                .messages
                .clone()
                .acquire_many_owned(message_cost)
                .await?;
            let bytes = self.bytes.clone().acquire_many_owned(cost).await?;
            Ok::<_, tokio::sync::AcquireError>((messages, bytes))
        };
        let (messages, bytes) = tokio::time::timeout(timeout, take)
            .await
            .map_err(|_| QueueError::Slow)?
            .map_err(|_| QueueError::Closed)?;
        self.send(Outgoing::Frame(
            frame,
            Some(Share {
                _bytes: bytes,
                _messages: Some(messages),
            }),
        ))
    }

    fn try_take(
        &self,
        semaphore: &Arc<Semaphore>,
        cost: u32,
    ) -> Result<OwnedSemaphorePermit, QueueError> {
        semaphore
            .clone()
            .try_acquire_many_owned(cost)
            .map_err(|error| match error {
                tokio::sync::TryAcquireError::NoPermits => QueueError::Slow,
                tokio::sync::TryAcquireError::Closed => QueueError::Closed,
            })
    }

    /// Queues a close frame, regardless of room (the reason cut to what a close frame holds).
    pub(crate) fn close(&self, code: u16, reason: &str) {
        let _ = self.send(Outgoing::Close(code, close::reason(reason).to_owned()));
        self.bytes.close();
        self.messages.close();
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
                .push_message(Encoded::Text("123".into()), Duration::from_millis(10))
                .await,
            Err(QueueError::Slow)
        );
        // Writing the first frame frees its bytes.
        drop(receiver.recv().await);
        assert_eq!(lock(&queue.shared.waiting).frames.capacity(), 0);
        assert_eq!(queue.queued(), 0);
        queue
            .push_message(Encoded::Text("123".into()), Duration::from_millis(10))
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

    #[test]
    fn the_writer_takes_what_waits_without_waiting() {
        let (queue, receiver) = OutQueue::new(100);
        assert!(receiver.try_recv().is_none());
        for text in ["a", "bb", "ccc"] {
            queue.try_push(Encoded::Text(text.into())).unwrap();
        }
        queue.close(1000, "bye");
        let mut taken = Vec::new();
        while let Some(item) = receiver.try_recv() {
            taken.push(match item {
                Outgoing::Frame(frame, _) => frame.len(),
                Outgoing::Close(code, _) => usize::from(code),
            });
        }
        // In order, the close last; each frame's bytes are free once taken, and the emptied
        // queue keeps no allocation.
        assert_eq!(taken, [1, 2, 3, 1000]);
        assert_eq!(queue.queued(), 0);
        assert_eq!(lock(&queue.shared.waiting).frames.capacity(), 0);
    }

    #[tokio::test]
    async fn messages_leave_a_quarter_of_the_queue_to_answers() {
        let (queue, mut receiver) = OutQueue::new(100);
        // Messages fill 75 bytes, then no more, whether waiting or not.
        for _ in 0..3 {
            queue
                .push_message(Encoded::Text("x".repeat(25)), Duration::from_millis(10))
                .await
                .unwrap();
        }
        assert_eq!(
            queue.try_push_message(Encoded::Text("1".into())),
            Err(QueueError::Slow)
        );
        assert_eq!(
            queue
                .push_message(Encoded::Text("1".into()), Duration::from_millis(10))
                .await,
            Err(QueueError::Slow)
        );
        // An answer still fits in the last quarter; only past it is the browser slow.
        queue.try_push(Encoded::Text("a".repeat(25))).unwrap();
        assert_eq!(queue.queued(), 100);
        assert_eq!(
            queue.try_push(Encoded::Text("1".into())),
            Err(QueueError::Slow)
        );
        // A written message makes room for the next.
        drop(receiver.recv().await);
        queue
            .try_push_message(Encoded::Text("y".repeat(25)))
            .unwrap();
    }

    #[tokio::test]
    async fn a_message_larger_than_the_messages_part_is_queued_alone() {
        let (queue, mut receiver) = OutQueue::new(100);
        queue
            .push_message(Encoded::Text("x".repeat(90)), Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(
            queue.try_push_message(Encoded::Text("1".into())),
            Err(QueueError::Slow)
        );
        drop(receiver.recv().await);
        queue
            .try_push_message(Encoded::Text("x".repeat(90)))
            .unwrap();
    }
}
