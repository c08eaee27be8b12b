//! The mailboxes of a simulated node: a bounded queue the application reads, in front of the
//! store for a durable one. A durable mailbox that (re)opens first queues what its store holds
//! (the replay), and messages stored after that wait until the replay is queued, as in the SDK.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::network::StreamId;

/// A message in a mailbox's queue.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    /// Its payload.
    pub(crate) payload: Bytes,
    /// Its index in the store, for a durable mailbox.
    pub(crate) index: Option<u64>,
    /// The transmission it is, (run, seq), for a volatile mailbox (a stored message's is
    /// known by its index).
    pub(crate) origin: Option<(usize, u64)>,
}

/// One mailbox of a running node.
#[derive(Debug)]
pub(crate) struct Mailbox {
    /// Whether it is stored.
    pub(crate) durable: bool,
    /// Its queue, bounded by `capacity`.
    pub(crate) queue: VecDeque<Queued>,
    /// `mailbox_capacity`.
    pub(crate) capacity: usize,
    /// Stored messages still to queue after the mailbox (re)opened, oldest first.
    pub(crate) replay: VecDeque<Queued>,
    /// Streams waiting for room (or for the replay to end), in the order they began to wait.
    pub(crate) waiting: VecDeque<StreamId>,
}

impl Mailbox {
    /// An empty mailbox; a durable one replays `stored` first.
    pub(crate) fn new(durable: bool, capacity: usize, stored: Vec<Queued>) -> Self {
        let mut mailbox = Self {
            durable,
            queue: VecDeque::new(),
            capacity,
            replay: stored.into(),
            waiting: VecDeque::new(),
        };
        mailbox.refill();
        mailbox
    }

    /// Whether a stream may queue a message now: there is room, and the replay is done.
    pub(crate) fn takes_new(&self) -> bool {
        self.replay.is_empty() && self.queue.len() < self.capacity
    }

    /// Queues a message (the caller checked [`Mailbox::takes_new`]).
    pub(crate) fn push(&mut self, message: Queued) {
        self.queue.push_back(message);
    }

    /// The application takes the oldest message.
    pub(crate) fn take(&mut self) -> Option<Queued> {
        let message = self.queue.pop_front()?;
        self.refill();
        Some(message)
    }

    /// Moves replayed messages into the queue while there is room.
    fn refill(&mut self) {
        while self.queue.len() < self.capacity {
            let Some(message) = self.replay.pop_front() else {
                break;
            };
            self.queue.push_back(message);
        }
    }
}
