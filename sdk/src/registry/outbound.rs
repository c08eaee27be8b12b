//! The table of outgoing mailbox conversations (sender mailbox → target address) and the
//! state each shares between its senders and its task ([`crate::outbound`] drives them).
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::address::{Address, MailboxId};
use crate::error::SendError;
use crate::net::connection::Link;
use crate::sync::{lock, wait_until, PolledWhenWoken, Wakeup};

/// Identifies a conversation: all messages from one mailbox to one target address share it.
/// The target's whole capability field is part of the key (not its hints), so every distinct
/// address (another expiry, or a tampered copy) is presented to, and checked by, the receiver
/// on its own stream.
#[derive(Debug, Clone)]
pub(crate) struct ConversationKey {
    pub(crate) from: MailboxId,
    pub(crate) target: Address,
}

impl PartialEq for ConversationKey {
    fn eq(&self, other: &Self) -> bool {
        self.from == other.from && self.target.same_capability(&other.target)
    }
}

impl Eq for ConversationKey {}

impl std::hash::Hash for ConversationKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.from.hash(state);
        self.target.hash_capability(state);
    }
}

/// How far a conversation has got, as seen by waiting [`Delivery`](crate::Delivery)s.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Every ticket below this is resolved: acknowledged, or failed (see `failures`).
    pub(crate) resolved_below: u64,
    /// Boxed: most conversations never have one, and every idle one keeps its progress.
    pub(crate) failures: Option<Box<Failures>>,
}

/// The failures of a conversation's messages.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    /// Tickets that failed on their own (a message too large for the receiver), the latest
    /// 1,024 of them.
    pub(crate) failed: BTreeMap<u64, SendError>,
    /// The conversation ended with this error: every unresolved ticket failed with it.
    pub(crate) fatal: Option<SendError>,
}

impl Progress {
    /// The conversation's end, if it failed.
    pub(crate) fn fatal(&self) -> Option<&SendError> {
        self.failures.as_ref()?.fatal.as_ref()
    }
}

/// A conversation's [`Progress`] and the wake-up of the deliveries waiting on it. Not a
/// `watch` channel: that holds eight lists of waiters, 440 bytes of every idle conversation's
/// heap.
#[derive(Debug, Default)]
pub(crate) struct ProgressCell {
    value: Mutex<Progress>,
    changed: Notify,
}

impl ProgressCell {
    /// The progress now.
    pub(crate) fn read(&self) -> MutexGuard<'_, Progress> {
        lock(&self.value)
    }

    /// Changes the progress; wakes the waiting deliveries if `change` says it changed it.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Progress) -> bool) {
        let changed = change(&mut lock(&self.value));
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Waits until `answer` finds what it waits for in the progress.
    pub(crate) fn wait<'a, T>(
        &'a self,
        answer: impl Fn(&Progress) -> Option<T> + 'a,
    ) -> impl Future<Output = T> + 'a {
        wait_until(&self.changed, move || answer(&self.read()))
    }
}

/// What senders queued for a conversation's run. The shared state it is part of is done with
/// (the conversation parked, or ended) once its window is closed, which happens under this
/// queue's lock: senders go back to the conversation's [`Slot`] then.
pub(crate) struct Queue {
    pub(crate) next_ticket: u64,
    /// In order; the run takes them all at once.
    pub(crate) items: Vec<(u64, Bytes)>,
}

/// What a conversation's task drives: the protocol, and the stream it writes to.
pub(crate) struct Run {
    pub(crate) sm: ferry_proto::sender::Sender<SendError>,
    pub(crate) stream: Option<OpenStream>,
    /// Empty; exchanged for the queue's items when the task takes them, so that the queue's
    /// vector and this one take turns instead of a new one being made per batch.
    pub(crate) taken: Vec<(u64, Bytes)>,
}

impl Run {
    pub(crate) fn new(
        sm: ferry_proto::sender::Sender<SendError>,
        stream: Option<OpenStream>,
    ) -> Box<Self> {
        Box::new(Self {
            sm,
            stream,
            taken: Vec::new(),
        })
    }
}

/// The stream a run writes to, on the connection it was opened on.
pub(crate) struct OpenStream {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    /// The connection the stream is on.
    pub(crate) link: Link,
    /// Resolves once another connection to the peer took over: the stream moves there.
    pub(crate) superseded: PolledWhenWoken<tokio_util::sync::WaitForCancellationFutureOwned>,
}

/// A quiet conversation's run, waiting without a task and without the conversation's shared
/// state ([`Outbound`]): the sender that queues next, the run's waker (news from its stream),
/// or the node's parking task (at its idle end, when its link was superseded, or at shutdown)
/// makes them again and starts a task with it.
pub(crate) struct Parked {
    pub(crate) run: ParkedRun,
    /// Which park of the run it is (see [`Parking::reserve`]): with the run's idle end, its
    /// entry in [`Parking`].
    pub(crate) park: u64,
}

impl Parked {
    /// Its entry in [`Parking`].
    pub(crate) fn idle_end(&self, config: &ferry_proto::sender::SenderConfig) -> IdleEnd {
        (Instant::from_std(self.run.sm.idle_end(config)), self.park)
    }
}

/// A quiet run kept small: the protocol without its empty queues and buffers, and the stream's
/// handles without a wait on the link's supersession (the node's parking task looks at every
/// parked run when a link was superseded).
pub(crate) struct ParkedRun {
    pub(crate) sm: ferry_proto::sender::ParkedSender<SendError>,
    pub(crate) stream: Option<ParkedStream>,
}

impl ParkedRun {
    /// Whether its stream is on a link another connection took over.
    pub(crate) fn is_superseded(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|stream| stream.link.superseded.is_cancelled())
    }
}

/// A parked run's stream.
pub(crate) struct ParkedStream {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    pub(crate) link: Link,
}

impl OpenStream {
    pub(crate) fn new(send: quinn::SendStream, recv: quinn::RecvStream, link: Link) -> Self {
        Self {
            superseded: PolledWhenWoken::new(link.superseded.clone().cancelled_owned()),
            send,
            recv,
            link,
        }
    }

    /// The stream's handles, kept while its run is parked.
    pub(crate) fn park(self) -> ParkedStream {
        ParkedStream {
            send: self.send,
            recv: self.recv,
            link: self.link,
        }
    }
}

impl ParkedStream {
    /// The stream again, waiting for its connection's supersession.
    pub(crate) fn resume(self) -> OpenStream {
        OpenStream::new(self.send, self.recv, self.link)
    }
}

/// When a parked run's idle end is due, and which park it was (a run parks again after it
/// resumed, under a new id).
pub(crate) type IdleEnd = (Instant, u64);

/// An idle end as [`Parking`] keeps it (16 bytes instead of 24, in every parked run's entry):
/// whole milliseconds since the parking began, rounded up (a run is taken up at most a
/// millisecond late, never early), and the park.
type DueKey = (u64, u64);

/// Each run's park and conversation, of idle ends.
fn parks(due: impl IntoIterator<Item = (DueKey, Weak<Slot>)>) -> Vec<(u64, Weak<Slot>)> {
    due.into_iter()
        .map(|((_, park), slot)| (park, slot))
        .collect()
}

/// The idle ends of the node's parked runs, in order of time.
pub(crate) struct Parking {
    /// What the idle ends are counted from.
    began: Instant,
    state: Mutex<ParkingState>,
    /// Woken when an idle end earlier than the first was added.
    pub(crate) changed: Notify,
    /// Parked runs whose stream had news (their park and conversation), for the parking task
    /// to take up: a parked run's waker only lists it, as it is woken under quinn's lock.
    woken: Mutex<Vec<(u64, Weak<Slot>)>>,
    /// Woken when a run was listed in `woken`.
    pub(crate) news: Notify,
}

#[derive(Default)]
struct ParkingState {
    due: BTreeMap<DueKey, Weak<Slot>>,
    next_id: u64,
    /// The node shuts down: no more runs park.
    closed: bool,
}

impl Default for Parking {
    fn default() -> Self {
        Self {
            began: Instant::now(),
            state: Mutex::default(),
            changed: Notify::new(),
            woken: Mutex::default(),
            news: Notify::new(),
        }
    }
}

impl Parking {
    /// `end` as the map keeps it.
    fn key(&self, (at, park): IdleEnd) -> DueKey {
        let since = at.saturating_duration_since(self.began);
        let millis = since.as_millis() + u128::from(since.subsec_nanos() % 1_000_000 != 0);
        (u64::try_from(millis).unwrap_or(u64::MAX), park)
    }

    /// An id for the next park.
    pub(crate) fn reserve(&self) -> u64 {
        let mut state = lock(&self.state);
        state.next_id += 1;
        state.next_id
    }

    /// Registers the idle end of `slot`'s parked run; false once parking closed.
    pub(crate) fn add(&self, end: IdleEnd, slot: &Arc<Slot>) -> bool {
        let end = self.key(end);
        let mut state = lock(&self.state);
        if state.closed {
            return false;
        }
        let earliest = state
            .due
            .first_key_value()
            .is_none_or(|(first, _)| end < *first);
        state.due.insert(end, Arc::downgrade(slot));
        drop(state);
        if earliest {
            self.changed.notify_one();
        }
        true
    }

    /// Forgets an idle end (its run resumed).
    pub(crate) fn remove(&self, end: IdleEnd) {
        let end = self.key(end);
        lock(&self.state).due.remove(&end);
    }

    /// The first idle end due, if any.
    pub(crate) fn next(&self) -> Option<Instant> {
        lock(&self.state)
            .due
            .first_key_value()
            .map(|((millis, _), _)| self.began + std::time::Duration::from_millis(*millis))
    }

    /// Takes the idle ends due by `now`: each run's park and conversation.
    pub(crate) fn take_due(&self, now: Instant) -> Vec<(u64, Weak<Slot>)> {
        let elapsed = now.saturating_duration_since(self.began).as_millis();
        let first_later =
            u64::try_from(elapsed).map_or(u64::MAX, |millis| millis.saturating_add(1));
        let mut state = lock(&self.state);
        let later = state.due.split_off(&(first_later, 0));
        parks(std::mem::replace(&mut state.due, later))
    }

    /// Every parked run's park and conversation, left registered.
    pub(crate) fn all(&self) -> Vec<(u64, Weak<Slot>)> {
        let state = lock(&self.state);
        parks(state.due.iter().map(|(end, slot)| (*end, slot.clone())))
    }

    /// Closes parking (the node shuts down) and takes every idle end.
    pub(crate) fn close(&self) -> Vec<(u64, Weak<Slot>)> {
        let mut state = lock(&self.state);
        state.closed = true;
        parks(std::mem::take(&mut state.due))
    }

    /// Lists a parked run whose stream had news (see `woken`).
    pub(crate) fn woke(&self, park: u64, slot: Weak<Slot>) {
        lock(&self.woken).push((park, slot));
        self.news.notify_one();
    }

    /// Takes the runs listed since the last call.
    pub(crate) fn take_woken(&self) -> Vec<(u64, Weak<Slot>)> {
        std::mem::take(&mut lock(&self.woken))
    }

    /// How many runs are parked.
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).due.len()
    }
}

/// One outgoing conversation (messages from one mailbox to one address), as the node's table
/// and its senders hold it: its live state, or its parked run. A parked conversation keeps
/// nothing else: senders find the run here and make the shared state again.
pub(crate) struct Slot {
    pub(crate) target: Address,
    pub(crate) from: Address,
    pub(crate) state: Mutex<SlotState>,
}

/// Where a conversation is.
pub(crate) enum SlotState {
    /// A task drives its run; senders queue on the shared state.
    Live(Arc<Outbound>),
    /// Its run is parked (see [`Parked`]).
    Parked(Box<Parked>),
    /// It ended (idle, or failed) and left the node's table: senders start a new one.
    Ended,
}

impl Slot {
    /// Its key in the node's table.
    pub(crate) fn key(&self) -> ConversationKey {
        ConversationKey {
            from: self.from.mailbox(),
            target: self.target.clone(),
        }
    }
}

/// The shared state of a running conversation, between its senders, its task and the
/// deliveries waiting on it. A conversation that parks ends it (its window closes, which
/// sends its senders back to the [`Slot`]), so every idle conversation is without one.
pub(crate) struct Outbound {
    /// Bytes of messages queued or unacknowledged (the node's `send_window`); closed when the
    /// conversation parks or ends.
    pub(crate) window: Semaphore,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) wake: Wakeup,
    pub(crate) progress: ProgressCell,
    /// Set while the target cannot be reached: a full window then fails sends at once.
    pub(crate) unreachable: std::sync::atomic::AtomicBool,
}

impl Outbound {
    /// The shared state of a run whose next message gets `next_ticket`, with a window of
    /// `window_size` bytes.
    pub(crate) fn new(window_size: usize, next_ticket: u64) -> Self {
        Self {
            window: Semaphore::new(window_size),
            queue: Mutex::new(Queue {
                next_ticket,
                items: Vec::new(),
            }),
            wake: Wakeup::default(),
            progress: ProgressCell {
                value: Mutex::new(Progress {
                    resolved_below: next_ticket,
                    failures: None,
                }),
                changed: Notify::new(),
            },
            unreachable: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Bytes of the window (`window_size`, the node's `send_window`) in use: messages queued
    /// or unacknowledged.
    pub(crate) fn outstanding_bytes(&self, window_size: usize) -> u64 {
        window_size.saturating_sub(self.window.available_permits()) as u64
    }
}

/// The node's outgoing conversations.
pub(crate) type Conversations = Mutex<HashMap<ConversationKey, Arc<Slot>>>;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::address::MailboxId;
    use crate::identity::SecretKey;

    fn slot() -> Arc<Slot> {
        let address = || Address::mint(&SecretKey::generate(), MailboxId::random(), None, vec![]);
        Arc::new(Slot {
            target: address(),
            from: address(),
            state: Mutex::new(SlotState::Ended),
        })
    }

    /// Idle ends are kept in whole milliseconds: each is due at its time or up to a millisecond
    /// later, never before, and in order.
    #[test]
    fn an_idle_end_is_due_at_its_time_and_never_before() {
        let parking = Parking::default();
        let slot = slot();
        let start = parking.began;
        let ends = [
            (start + Duration::from_micros(2_500), 1),
            (start + Duration::from_millis(2), 2),
            (start + Duration::from_micros(1), 3),
        ];
        for end in ends {
            assert!(parking.add(end, &slot));
        }
        assert_eq!(parking.next(), Some(start + Duration::from_millis(1)));
        assert!(parking.take_due(start).is_empty());
        let parks =
            |due: Vec<(u64, Weak<Slot>)>| due.into_iter().map(|(park, _)| park).collect::<Vec<_>>();
        assert_eq!(
            parks(parking.take_due(start + Duration::from_micros(999))),
            Vec::<u64>::new()
        );
        assert_eq!(
            parks(parking.take_due(start + Duration::from_millis(1))),
            [3]
        );
        assert_eq!(
            parks(parking.take_due(start + Duration::from_micros(2_999))),
            [2]
        );
        assert_eq!(parking.next(), Some(start + Duration::from_millis(3)));
        parking.remove(ends[0]);
        assert_eq!(
            parking.len(),
            0,
            "removed by the idle end it was added with"
        );
    }
}
