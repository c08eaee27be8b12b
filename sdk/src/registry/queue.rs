//! A mailbox's queue of delivered messages, made when it is first used: by the first message
//! delivered, or the application's first read. A mailbox that only sends (one per outgoing
//! conversation is common) never pays for one.
//!
//! Messages travel in batches: a stream hands over everything one read of it held at once
//! ([`Room::reserve`], then [`MailboxQueue::hand_over`]), so the channel's synchronisation (a
//! slot, a wake-up of the reader) is paid per batch, not per message — per message, profiles of
//! a message stream showed the channel's push, its reader's wake-up and its pop as a tenth of
//! the CPU. Room is counted per message, by a semaphore of `mailbox_capacity` permits: taken
//! (for several messages of a batch at once) before a message is queued, given back when the
//! application takes it.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, Semaphore};

use crate::sync::Signal;

/// The queue of one mailbox, inside the [`OpenMailbox`](super::mailboxes::OpenMailbox) that its
/// [`Mailbox`](crate::Mailbox) shares with the node's table.
#[derive(Debug)]
pub(crate) struct MailboxQueue<T> {
    /// Messages the queue holds at most (`mailbox_capacity`, at least 1).
    capacity: usize,
    /// Boxed: a queue that is never used (most mailboxes only send) costs a pointer.
    channel: OnceLock<Box<Channel<T>>>,
    /// Set when the mailbox closes: delivery stops even while a handler or stream still holds
    /// the receiving end. Not the node's shutdown: at shutdown, streams must answer
    /// SHUTTING_DOWN (retry later), not NO_SUCH_MAILBOX (final), so mailboxes close last.
    pub(crate) mailbox_closed: Signal,
}

#[derive(Debug)]
struct Channel<T> {
    sender: mpsc::UnboundedSender<Vec<T>>,
    /// One permit per message the queue has room for; closed with the receiving end.
    room: Arc<Semaphore>,
    /// The receiving end, until a handler or stream takes it (or the queue is closed), behind
    /// the lock that the mailbox's one reader holds while it waits.
    receiver: tokio::sync::Mutex<Option<QueueReceiver<T>>>,
}

/// The mailbox closed (its queue's receiving end is gone): nothing more is queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct QueueClosed;

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError<T> {
    /// The queue holds `capacity` messages: try again once the application took some.
    Full(T),
    /// The receiving end is gone: the mailbox closed.
    Closed(T),
}

impl<T> MailboxQueue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            channel: OnceLock::new(),
            mailbox_closed: Signal::default(),
        }
    }

    fn channel(&self) -> &Channel<T> {
        self.channel.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let room = Arc::new(Semaphore::new(self.capacity));
            Box::new(Channel {
                sender,
                room: room.clone(),
                receiver: tokio::sync::Mutex::new(Some(QueueReceiver {
                    receiver,
                    taken: VecDeque::new(),
                    room,
                    capacity: self.capacity,
                })),
            })
        })
    }

    /// Room for the messages of one batch, taken up to `batch` at a time (see [`Room`]).
    pub(crate) fn room(&self, batch: usize) -> Room<'_, T> {
        Room {
            queue: self,
            spare: 0,
            batch: batch.max(1),
        }
    }

    /// Queues what `pending` holds, in order, as one batch (leaving it empty). Every message in
    /// it must hold its room ([`Room::reserve`]).
    pub(crate) fn hand_over(&self, pending: &mut Vec<T>) {
        if !pending.is_empty() {
            // Fails only once the receiving end is gone, which drops what it held too.
            let _ = self.channel().sender.send(std::mem::take(pending));
        }
    }

    /// Queues `message` once there is room, unless the mailbox closes first. Cancel-safe:
    /// dropped while it waits, it queues nothing.
    pub(crate) async fn push(&self, message: T) -> Result<(), QueueClosed> {
        let channel = self.channel();
        match channel.room.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(QueueClosed),
        }
        channel.sender.send(vec![message]).map_err(|_| QueueClosed)
    }

    /// The receiving end, for the mailbox's reader to lock (`None` inside once taken or
    /// closed). Made here, at the first read, rather than in the mailbox: most mailboxes only
    /// send, and the lock is 40 bytes.
    pub(crate) fn reader(&self) -> &tokio::sync::Mutex<Option<QueueReceiver<T>>> {
        &self.channel().receiver
    }

    /// The receiving end, to the one that asks first; `None` after that, once closed, or
    /// while a reader holds it.
    pub(crate) fn take_receiver(&self) -> Option<QueueReceiver<T>> {
        self.reader().try_lock().ok()?.take()
    }

    /// Closes the queue if the receiving end was never taken: later pushes fail, as they do
    /// once a taken receiving end is dropped.
    pub(crate) fn close(&self) {
        drop(self.take_receiver());
    }

    /// Messages queued, not yet taken by the application.
    pub(crate) fn len(&self) -> usize {
        self.channel
            .get()
            .map_or(0, |channel| queued(self.capacity, &channel.room))
    }
}

/// Room in a [`MailboxQueue`] for the messages of one batch, taken from its semaphore up to
/// `batch` messages at a time instead of once per message (per message, the semaphore and the
/// check that the queue is open were 4 % of the instructions of a message in a batch). Room
/// taken and not used is given back when this is dropped: at the batch's end, and before a
/// wait, as other streams to the mailbox may need it meanwhile.
pub(crate) struct Room<'a, T> {
    queue: &'a MailboxQueue<T>,
    /// Taken and not used yet.
    spare: usize,
    /// How many messages to take room for at once.
    batch: usize,
}

impl<T> Room<'_, T> {
    /// Takes room for `message` and adds it to `pending`, to be queued with the rest of it by
    /// [`MailboxQueue::hand_over`] (each message in `pending` holds its room until then).
    // Inlined: called once per message delivered, and most calls only count and push.
    #[inline]
    pub(crate) fn reserve(&mut self, pending: &mut Vec<T>, message: T) -> Result<(), PushError<T>> {
        if self.spare == 0 {
            let channel = self.queue.channel();
            if channel.sender.is_closed() {
                return Err(PushError::Closed(message));
            }
            // As much of a batch as there is room for; at least one message, or none at all.
            let want = self.batch.min(channel.room.available_permits()).max(1);
            let want = u32::try_from(want).unwrap_or(u32::MAX);
            match channel.room.try_acquire_many(want) {
                Ok(permit) => permit.forget(),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    return Err(PushError::Full(message))
                }
                Err(tokio::sync::TryAcquireError::Closed) => {
                    return Err(PushError::Closed(message))
                }
            }
            self.spare = want as usize;
        }
        self.spare -= 1;
        pending.push(message);
        Ok(())
    }
}

impl<T> Drop for Room<'_, T> {
    fn drop(&mut self) {
        if self.spare > 0 {
            if let Some(channel) = self.queue.channel.get() {
                channel.room.add_permits(self.spare);
            }
        }
    }
}

/// Messages holding room in a queue of `capacity`: taken and not yet given back.
fn queued(capacity: usize, room: &Semaphore) -> usize {
    capacity.saturating_sub(room.available_permits())
}

/// The receiving end of a [`MailboxQueue`]: hands out the messages of each batch in order.
#[derive(Debug)]
pub(crate) struct QueueReceiver<T> {
    receiver: mpsc::UnboundedReceiver<Vec<T>>,
    /// The rest of the batch last received.
    taken: VecDeque<T>,
    room: Arc<Semaphore>,
    capacity: usize,
}

impl<T> QueueReceiver<T> {
    /// The next message; `None` once the queue is closed and empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message; `Ready(None)` once the queue is closed and empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            if let Some(message) = self.taken.pop_front() {
                self.room.add_permits(1);
                return Poll::Ready(Some(message));
            }
            match std::task::ready!(self.receiver.poll_recv(cx)) {
                Some(batch) => self.taken = batch.into(),
                None => return Poll::Ready(None),
            }
        }
    }

    /// Appends up to `max` messages that are already queued to `out`, giving their room
    /// back once; `None` if the queue is closed and empty.
    pub(crate) fn try_recv_many(&mut self, out: &mut Vec<T>, max: usize) -> Option<usize> {
        let mut count = 0;
        while count < max {
            if self.taken.is_empty() {
                match self.receiver.try_recv() {
                    Ok(batch) => self.taken = batch.into(),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) if count == 0 => return None,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            let take = self.taken.len().min(max - count);
            out.extend(self.taken.drain(..take));
            count += take;
        }
        self.room.add_permits(count);
        Some(count)
    }

    /// Messages queued, not yet taken (with those of batches not yet flushed: an upper bound
    /// of what [`Self::try_recv_many`] finds).
    pub(crate) fn len(&self) -> usize {
        queued(self.capacity, &self.room)
    }
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        // Whoever waits for room waits for a mailbox that is gone.
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<T> MailboxQueue<T> {
        /// Queues `message` if there is room.
        fn try_push(&self, message: T) -> Result<(), PushError<T>> {
            let mut pending = Vec::new();
            self.room(1).reserve(&mut pending, message)?;
            self.hand_over(&mut pending);
            Ok(())
        }
    }

    #[tokio::test]
    async fn nothing_is_made_until_used_and_closing_refuses_later_pushes() {
        let queue = MailboxQueue::new(4);
        assert!(queue.channel.get().is_none());
        assert_eq!(queue.len(), 0);
        queue.try_push(1u32).unwrap();
        assert_eq!(queue.len(), 1);
        let mut receiver = queue.take_receiver().unwrap();
        assert!(
            queue.take_receiver().is_none(),
            "the receiving end is taken once"
        );
        assert_eq!(receiver.recv().await, Some(1));
        assert_eq!(queue.len(), 0);
        drop(receiver);
        assert_eq!(queue.try_push(2), Err(PushError::Closed(2)));
        assert_eq!(queue.push(3).await, Err(QueueClosed));

        let unused = MailboxQueue::<u32>::new(4);
        unused.close();
        assert_eq!(unused.try_push(3), Err(PushError::Closed(3)));
        assert!(unused.take_receiver().is_none());
    }

    #[tokio::test]
    async fn batches_keep_order_and_room_is_counted_per_message() {
        let queue = MailboxQueue::new(3);
        let mut receiver = queue.take_receiver().unwrap();
        let mut pending = Vec::new();
        let mut room = queue.room(1);
        room.reserve(&mut pending, 1u32).unwrap();
        room.reserve(&mut pending, 2).unwrap();
        assert_eq!(queue.len(), 2, "room is taken as messages are reserved");
        let mut none = Vec::new();
        assert_eq!(receiver.try_recv_many(&mut none, 10), Some(0));
        assert!(none.is_empty(), "nothing is handed over before hand_over");
        queue.hand_over(&mut pending);
        assert!(pending.is_empty());
        room.reserve(&mut pending, 3).unwrap();
        assert_eq!(room.reserve(&mut pending, 4), Err(PushError::Full(4)));
        drop(room);
        queue.hand_over(&mut pending);
        assert_eq!(queue.len(), 3);
        let mut out = Vec::new();
        assert_eq!(receiver.try_recv_many(&mut out, 2), Some(2));
        assert_eq!(out, [1, 2]);
        assert_eq!(queue.len(), 1, "room of the two taken is given back");
        queue.try_push(4).unwrap();
        queue.try_push(5).unwrap();
        assert_eq!(queue.try_push(6), Err(PushError::Full(6)));
        assert_eq!(receiver.recv().await, Some(3));
        assert_eq!(receiver.try_recv_many(&mut out, 10), Some(2));
        assert_eq!(out, [1, 2, 4, 5]);
        assert_eq!(receiver.try_recv_many(&mut out, 10), Some(0));
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn room_taken_for_a_batch_and_not_used_is_given_back() {
        let queue = MailboxQueue::new(5);
        let _receiver = queue.take_receiver().unwrap();
        let mut pending = Vec::new();
        let mut room = queue.room(4);
        room.reserve(&mut pending, 1u32).unwrap();
        assert_eq!(queue.len(), 4, "room for the batch is taken at once");
        drop(room);
        assert_eq!(queue.len(), 1, "only the message reserved keeps its room");
        let mut room = queue.room(4);
        room.reserve(&mut pending, 2).unwrap();
        room.reserve(&mut pending, 3).unwrap();
        assert_eq!(queue.len(), 5, "no more than there is room for");
        room.reserve(&mut pending, 4).unwrap();
        room.reserve(&mut pending, 5).unwrap();
        assert_eq!(room.reserve(&mut pending, 6), Err(PushError::Full(6)));
        drop(room);
        assert_eq!(queue.len(), 5);
        queue.hand_over(&mut pending);
        let mut other = Vec::new();
        let mut room = queue.room(4);
        drop(_receiver);
        assert_eq!(room.reserve(&mut other, 7), Err(PushError::Closed(7)));
    }

    #[tokio::test]
    async fn a_push_waiting_for_room_goes_on_when_a_message_is_taken_or_fails_when_closed() {
        let queue = Arc::new(MailboxQueue::new(1));
        let mut receiver = queue.take_receiver().unwrap();
        queue.try_push(1u32).unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(receiver.recv().await, Some(1));
        waiting.await.unwrap().unwrap();
        assert_eq!(receiver.recv().await, Some(2));

        queue.try_push(3).unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(4).await }
        });
        tokio::task::yield_now().await;
        drop(receiver);
        assert_eq!(waiting.await.unwrap(), Err(QueueClosed));
    }
}
