//! The sending side of mailbox streams: one task and one QUIC stream per conversation
//! (sender mailbox → target mailbox), so a slow or lossy conversation never stalls another.
//!
//! Messages are queued in order and given a local ticket. The task writes them in batches,
//! keeps them until the receiver's cumulative `Ack` covers them (so they can be sent again on a
//! new stream after a lost connection), and publishes its progress (a
//! [`ProgressCell`](crate::registry::outbound::ProgressCell)) that every [`Delivery`] waits
//! on. Memory is bounded by the send window (bytes), which also makes `send` wait when the
//! receiver is slow.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::address::{Address, LimitKind, Usage};
use crate::error::{DialError, SendError, StreamError};
use crate::frame::ErrorCode;
use crate::net::connection::ConnCode;
use crate::net::dial;
use crate::net::liveness::Probed;
use crate::registry::mailboxes::{durable_counters, Authorized, Budget, Message};
use crate::registry::outbound::{
    ConversationKey, OpenStream, Outbound, Parked, ParkedRun, Parking, Run, Slot, SlotState,
};
use crate::runtime::Runtime;
use crate::sync::{lock, PolledWhenWoken};
use ferry_proto::sender::{self as proto, Action, Loss, RunFailure};

/// Per-message failures remembered for their [`Delivery`]s (they are rare: oversize only).
const MAX_REMEMBERED_FAILURES: usize = 1024;

/// [`Sender::enqueue_all`] queues a batch in parts of at most `send_window` divided by this,
/// so that a part finds room while the one before it is still unacknowledged.
const BATCH_WINDOW_SHARE: usize = 4;

/// A conversation with nothing to send or acknowledge for this long parks its run and ends its
/// task (an idle task is most of an idle conversation's memory); its next message starts a
/// task again. Long enough that a conversation in use never pays for the new task.
const QUIET_BEFORE_PARKING: Duration = Duration::from_secs(1);

/// The most a read of a conversation's stream takes (acknowledgements are a few bytes).
const READ_CHUNK: usize = 64 * 1024;

fn cost(payload: &Bytes) -> u32 {
    // max_message_size is validated to at most 1 GiB, so this fits.
    u32::try_from(proto::cost(payload.len())).unwrap_or(u32::MAX)
}

/// Returns the conversation from `from` to `target`, starting one if there is none.
fn conversation(node: &Arc<Runtime>, from: &Address, target: &Address) -> Arc<Slot> {
    let key = ConversationKey {
        from: from.mailbox(),
        target: target.clone(),
    };
    let mut map = lock(&node.conversations);
    if let Some(existing) = map.get(&key) {
        return existing.clone();
    }
    let outbound = Arc::new(Outbound::new(node.config.send_window, 0));
    let slot = Arc::new(Slot {
        target: target.clone(),
        from: from.clone(),
        state: Mutex::new(SlotState::Live(outbound.clone())),
    });
    map.insert(key, slot.clone());
    drop(map);
    let run = new_run(&slot, &node.sender_config);
    spawn_run(node, slot.clone(), outbound, run);
    slot
}

/// The shared state of `slot`'s conversation, made again (and its run's task started) if the
/// conversation is parked; `None` once it ended.
fn live(node: &Arc<Runtime>, slot: &Arc<Slot>) -> Option<Arc<Outbound>> {
    let mut state = lock(&slot.state);
    match &*state {
        SlotState::Live(outbound) => Some(outbound.clone()),
        SlotState::Ended => None,
        SlotState::Parked(_) => resume(node, slot, &mut state),
    }
}

/// Sends messages from one mailbox to one address, in order. Cheap to clone; all clones and
/// all other senders between the same two mailboxes share one ordered stream.
pub struct Sender {
    node: Arc<Runtime>,
    from: Address,
    target: Address,
    /// For a mailbox on this node: its queue, skipping the network. Boxed: most targets are
    /// remote, and every idle conversation keeps its senders.
    local: Option<Box<Result<Authorized, SendError>>>,
    /// The conversation last used, so the node's table is consulted only when it ended.
    cached: Mutex<Option<Arc<Slot>>>,
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            from: self.from.clone(),
            target: self.target.clone(),
            local: self.local.clone(),
            cached: Mutex::new(lock(&self.cached).clone()),
        }
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("from", &self.from)
            .field("to", &self.target)
            .finish()
    }
}

impl Sender {
    pub(crate) fn new(node: &Arc<Runtime>, from: Address, target: &Address) -> Self {
        for (relay, relay_addr) in target.relays() {
            node.net.peers.add_relay(target.node(), relay, relay_addr);
        }
        let local = (target.node() == node.id)
            .then(|| Box::new(node.authorize(target, &node.id, Usage::Messages)));
        // A local receiver sees `from` as a remote one would: without hints. A stream's OPEN
        // carries no hints either, so a remote conversation shares the mailbox's address.
        let from = if local.is_some() {
            from.without_hints()
        } else {
            from
        };
        Self {
            node: node.clone(),
            from,
            target: target.clone(),
            local,
            cached: Mutex::new(None),
        }
    }

    /// The live conversation's shared state, from the cache or the node's table.
    fn outbound(&self) -> Arc<Outbound> {
        let mut cached = lock(&self.cached);
        loop {
            if let Some(outbound) = cached.as_ref().and_then(|slot| live(&self.node, slot)) {
                return outbound;
            }
            // None yet, or it ended and left the table: the table has the next one.
            *cached = Some(conversation(&self.node, &self.from, &self.target));
        }
    }

    /// The address messages go to.
    pub fn target(&self) -> &Address {
        &self.target
    }

    /// Sends `message` (postcard-encoded) and waits until the target node accepted it.
    pub async fn send<T: Serialize + ?Sized>(&self, message: &T) -> Result<(), SendError> {
        self.enqueue(message).await?.await
    }

    /// Sends raw bytes and waits until the target node accepted them.
    pub async fn send_bytes(&self, payload: Bytes) -> Result<(), SendError> {
        self.enqueue_bytes(payload).await?.await
    }

    /// Queues `message` (postcard-encoded) behind the ones already queued, waiting only for
    /// room in the send window. Await the returned [`Delivery`] to learn that the target node
    /// accepted it; many may be in flight at once.
    pub async fn enqueue<T: Serialize + ?Sized>(&self, message: &T) -> Result<Delivery, SendError> {
        let payload = postcard::to_allocvec(message).map_err(SendError::Encode)?;
        self.enqueue_bytes(payload.into()).await
    }

    /// Queues raw bytes; see [`Sender::enqueue`].
    pub async fn enqueue_bytes(&self, payload: Bytes) -> Result<Delivery, SendError> {
        let max = self.node.config.max_message_size;
        if payload.len() > max {
            return Err(SendError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        if self.node.is_closing() {
            return Err(SendError::NodeClosed);
        }
        if let Some(local) = self.local.as_deref() {
            let authorized = local.as_ref().map_err(Clone::clone)?;
            let caps = &authorized.mailbox.caps;
            if caps.is_revoked(authorized.grant) {
                return Err(SendError::Revoked);
            }
            if authorized
                .limits
                .iter()
                .any(|limit| matches!(limit.kind, LimitKind::Rate { .. }))
            {
                // A rate caveat between mailboxes of one node is not worth a timer: refuse.
                return Err(SendError::Caveat(
                    "rate caveats apply to remote senders only".into(),
                ));
            }
            match caps.reserve(&authorized.limits, || self.node.clock.unix_now()) {
                Ok(()) => {}
                Err(Budget::TooManyCounters) => {
                    return Err(SendError::Caveat(
                        "the mailbox keeps too many counters".into(),
                    ))
                }
                Err(_) => return Err(SendError::Exhausted),
            }
            let result = deliver_locally(
                authorized,
                self.from.clone(),
                payload,
                self.node.config.send_timeout,
            )
            .await;
            return Ok(Delivery(DeliveryState::Done(result)));
        }
        let cost = cost(&payload);
        let (outbound, ticket) = self.queue(cost, Some(payload)).await?;
        Ok(Delivery(DeliveryState::Pending {
            outbound,
            first: ticket,
            last: ticket,
        }))
    }

    /// Queues `payloads` behind the ones already queued, in order, as few steps as the send
    /// window allows: one wait for room, one lock and one wake-up of the conversation per
    /// part of up to a quarter of `send_window`, where [`Sender::enqueue_bytes`] takes them
    /// per message. The returned [`Delivery`] resolves once the target node accepted
    /// every one of them, or with the first failure among them.
    ///
    /// An error means that nothing of the batch was queued (a payload larger than
    /// `max_message_size` is refused before any). A failure once part of it is queued (the
    /// conversation failed, or the window stayed full while the target cannot be reached)
    /// is the Delivery's, and the rest of the batch is not sent.
    pub async fn enqueue_all(
        &self,
        payloads: impl IntoIterator<Item = Bytes>,
    ) -> Result<Delivery, SendError> {
        let payloads: Vec<Bytes> = payloads.into_iter().collect();
        let max = self.node.config.max_message_size;
        if let Some(payload) = payloads.iter().find(|payload| payload.len() > max) {
            return Err(SendError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        if self.local.is_some() {
            // Within the node there is no window nor stream to share: one by one.
            let mut last = Delivery(DeliveryState::Done(Ok(())));
            for (sent, payload) in payloads.into_iter().enumerate() {
                last = match self.enqueue_bytes(payload).await {
                    Ok(delivery) => delivery,
                    Err(error) if sent == 0 => return Err(error),
                    Err(error) => Delivery(DeliveryState::Done(Err(error))),
                };
                if let DeliveryState::Done(Err(_)) = &last.0 {
                    break;
                }
            }
            return Ok(last);
        }
        if self.node.is_closing() {
            return Err(SendError::NodeClosed);
        }
        let part_limit = (self.node.config.send_window / BATCH_WINDOW_SHARE) as u64;
        let mut payloads = payloads.into_iter();
        let mut queued: Option<(Arc<Outbound>, u64, u64)> = None;
        while !payloads.as_slice().is_empty() {
            // The part is measured where the payloads are, and moved once: into the queue.
            let mut part_cost = 0u64;
            let mut part_len = 0usize;
            for payload in payloads.as_slice() {
                let cost = u64::from(cost(payload));
                if part_len > 0 && part_cost + cost > part_limit {
                    break;
                }
                part_cost += cost;
                part_len += 1;
            }
            // At most the window (a part holds one message or fits `part_limit`): fits a u32.
            let part_cost = u32::try_from(part_cost).unwrap_or(u32::MAX);
            let part = payloads.by_ref().take(part_len);
            let part_len = part_len as u64;
            let (outbound, first) = match self.queue(part_cost, part).await {
                Ok(queued) => queued,
                Err(error) if queued.is_none() => return Err(error),
                Err(error) => return Ok(Delivery(DeliveryState::Done(Err(error)))),
            };
            let last = first + part_len - 1;
            queued = match queued {
                Some((previous, earlier, _)) if Arc::ptr_eq(&previous, &outbound) => {
                    Some((outbound, earlier, last))
                }
                Some((previous, earlier, before)) => {
                    // The conversation ended between two parts: the batch's Delivery follows
                    // one conversation, so the earlier parts are waited for here.
                    let delivery = Delivery(DeliveryState::Pending {
                        outbound: previous,
                        first: earlier,
                        last: before,
                    });
                    if let Err(error) = delivery.await {
                        // This part is queued all the same; its messages are not waited for.
                        return Ok(Delivery(DeliveryState::Done(Err(error))));
                    }
                    Some((outbound, first, last))
                }
                None => Some((outbound, first, last)),
            };
        }
        Ok(Delivery(match queued {
            Some((outbound, first, last)) => DeliveryState::Pending {
                outbound,
                first,
                last,
            },
            None => DeliveryState::Done(Ok(())),
        }))
    }

    /// Takes `cost` bytes of the window and queues `payloads` (one or more messages) on the
    /// live conversation under one lock; returns the conversation and the first one's ticket.
    async fn queue(
        &self,
        cost: u32,
        payloads: impl IntoIterator<Item = Bytes>,
    ) -> Result<(Arc<Outbound>, u64), SendError> {
        loop {
            let outbound = self.outbound();
            match outbound.window.try_acquire_many(cost) {
                Ok(permit) => permit.forget(),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    if outbound
                        .unreachable
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        return Err(SendError::OutboxFull {
                            window: self.node.config.send_window,
                        });
                    }
                    let Ok(permit) = outbound.window.acquire_many(cost).await else {
                        continue; // closed while we waited: a new conversation takes over
                    };
                    permit.forget();
                }
                Err(tokio::sync::TryAcquireError::Closed) => continue,
            }
            let mut queue = lock(&outbound.queue);
            if outbound.window.is_closed() {
                drop(queue);
                outbound.window.add_permits(cost as usize);
                continue;
            }
            let first = queue.next_ticket;
            let was_empty = queue.items.is_empty();
            let mut ticket = first;
            // Reserved once for a whole part (its length is known).
            queue.items.extend(payloads.into_iter().map(|payload| {
                ticket += 1;
                (ticket - 1, payload)
            }));
            queue.next_ticket = ticket;
            drop(queue);
            if was_empty {
                // The task drains the whole queue per wake-up, so only the first item needs one.
                outbound.wake.wake();
            }
            return Ok((outbound, first));
        }
    }
}

/// Sending from a mailbox (so replies come back to it).
impl crate::mailbox::Mailbox {
    /// A [`Sender`] from this mailbox to `to`: replies to its messages come here.
    pub fn sender(&self, to: &Address) -> Result<Sender, SendError> {
        let node = self.node.upgrade().ok_or(SendError::NodeClosed)?;
        Ok(Sender::new(&node, self.address().clone(), to))
    }

    /// Sends `message` (postcard-encoded) to `to` and waits until the target node accepted it.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        to: &Address,
        message: &T,
    ) -> Result<(), SendError> {
        self.sender(to)?.send(message).await
    }

    /// Sends raw bytes to `to` and waits until the target node accepted them.
    pub async fn send_bytes(&self, to: &Address, payload: Bytes) -> Result<(), SendError> {
        self.sender(to)?.send_bytes(payload).await
    }
}

/// Resolves when the target node accepted one queued message, or with why it did not.
#[must_use = "a Delivery does nothing unless awaited; dropping it does not cancel the send"]
pub struct Delivery(DeliveryState);

enum DeliveryState {
    Done(Result<(), SendError>),
    /// Waiting for the messages with tickets `first..=last` of `outbound`.
    Pending {
        outbound: Arc<Outbound>,
        first: u64,
        last: u64,
    },
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            DeliveryState::Done(result) => write!(f, "Delivery({result:?})"),
            DeliveryState::Pending { first, last, .. } if first == last => {
                write!(f, "Delivery(pending #{last})")
            }
            DeliveryState::Pending { first, last, .. } => {
                write!(f, "Delivery(pending #{first}..=#{last})")
            }
        }
    }
}

impl IntoFuture for Delivery {
    type Output = Result<(), SendError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (outbound, first, last) = match self.0 {
                DeliveryState::Done(result) => return result,
                DeliveryState::Pending {
                    outbound,
                    first,
                    last,
                } => (outbound, first, last),
            };
            outbound
                .progress
                .wait(|state| {
                    if let Some((_, error)) = state
                        .failures
                        .as_ref()
                        .and_then(|failures| failures.failed.range(first..=last).next())
                    {
                        return Some(Err(error.clone()));
                    }
                    if state.resolved_below > last {
                        return Some(Ok(()));
                    }
                    state.fatal().cloned().map(Err)
                })
                .await
        })
    }
}

/// A new conversation's run.
fn new_run(slot: &Slot, config: &Arc<proto::SenderConfig>) -> Box<Run> {
    let mut random = [0u8; 16];
    crate::identity::fill_random(&mut random);
    let [epoch, seed] = [&random[..8], &random[8..]].map(|half| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(half);
        u64::from_be_bytes(bytes)
    });
    let sm = proto::Sender::new(
        config.clone(),
        slot.target.clone(),
        slot.from.clone(),
        epoch,
        seed,
        Instant::now().into_std(),
    );
    Run::new(sm, None)
}

/// Starts a task driving `run` for `slot`'s conversation, whose shared state is `outbound`.
fn spawn_run(node: &Arc<Runtime>, slot: Arc<Slot>, outbound: Arc<Outbound>, run: Box<Run>) {
    let target = &slot.target;
    let span = tracing::debug_span!("conversation", to = %target.node().short(), mailbox = %target.mailbox());
    node.tasks
        .spawn(drive(slot, outbound, node.clone(), run).instrument(span));
}

/// Drives one conversation run: the protocol is [`proto::Sender`]; this task carries out what
/// it asks (open streams, write, reset, probe, redial) and feeds it what happens (bytes read,
/// streams lost, messages queued, the time). After [`QUIET_BEFORE_PARKING`] with nothing to
/// do, it parks the run (see [`Parked`]) and ends.
async fn drive(slot: Arc<Slot>, outbound: Arc<Outbound>, node: Arc<Runtime>, mut run: Box<Run>) {
    let peer = slot.target.node();
    let mut quiet_since: Option<Instant> = None;
    // Made once: creating a cancellation future or a timer per iteration showed in profiles.
    let mut cancelled = PolledWhenWoken::new(node.cancel.clone().cancelled_owned());
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    loop {
        pull_queued(&outbound, &mut run);
        while let Some(action) = run.sm.poll_action() {
            match action {
                Action::Open(head) => {
                    let deadline = Instant::from_std(run.sm.deadline());
                    let hints = slot.target.hints();
                    // Boxed: opening is the largest wait of a conversation and happens once per
                    // stream; inline, every idle conversation's task would keep room for it.
                    let opening = Box::pin(open(&node, peer, hints, &head));
                    match tokio::time::timeout_at(deadline, opening).await {
                        Ok(Ok(opened)) => {
                            run.stream = Some(opened);
                            run.sm.opened(now());
                        }
                        Ok(Err((error, loss))) => {
                            let unreachable = matches!(error, SendError::Unreachable(_));
                            run.sm.open_failed(now(), error, loss, unreachable);
                        }
                        // The run's deadline passed while opening.
                        Err(_) => run.sm.handle_timeout(now()),
                    }
                }
                Action::Write(bytes) => {
                    let Some(open) = run.stream.as_mut() else {
                        continue;
                    };
                    let deadline = Instant::from_std(run.sm.deadline());
                    // Handed to quinn as it is: `write_all` would copy the batch once more.
                    let written = open.send.write_chunk(Bytes::from(bytes));
                    match tokio::time::timeout_at(deadline, written).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            let (error, loss) = write_failure(error);
                            let unreachable = matches!(error, SendError::Unreachable(_));
                            run.sm.stream_failed(now(), error, loss, unreachable);
                        }
                        // Blocked by flow control for send_timeout: the receiver stopped reading.
                        Err(_) => run.sm.handle_timeout(now()),
                    }
                }
                Action::Reset(code) => {
                    if let Some(mut open) = run.stream.take() {
                        let _ = open.send.reset(varint(code));
                    }
                }
                Action::Finish => {
                    if let Some(mut open) = run.stream.take() {
                        let _ = open.send.finish();
                    }
                }
                Action::Probe => {
                    if let Some(open) = &run.stream {
                        let probed = open.link.probe();
                        if probed == Probed::Sent {
                            node.stats.count_path_probe();
                        }
                        run.sm.probed(now(), probed == Probed::Answered);
                    }
                }
                Action::Redial => {
                    debug!("the path does not answer; dialing the peer again");
                    dial::refresh(&node.net, peer);
                }
                Action::Acknowledged {
                    below,
                    messages,
                    bytes,
                } => {
                    if messages > 0 {
                        let released = bytes as usize + messages as usize * proto::MESSAGE_OVERHEAD;
                        outbound.window.add_permits(released);
                        node.stats.count_acked(messages, bytes);
                    }
                    outbound.progress.update(|progress| {
                        let advanced = progress.resolved_below < below;
                        progress.resolved_below = progress.resolved_below.max(below);
                        advanced
                    });
                }
                Action::TooLarge { ticket, size, max } => {
                    outbound.window.add_permits(proto::cost(size));
                    outbound.progress.update(|progress| {
                        let failed = &mut progress.failures.get_or_insert_default().failed;
                        failed.insert(ticket, SendError::TooLarge { size, max });
                        while failed.len() > MAX_REMEMBERED_FAILURES {
                            failed.pop_first();
                        }
                        true
                    });
                }
                Action::Failed(failure) => {
                    let error = send_error(*failure, &slot.target);
                    if let Some(mut open) = run.stream.take() {
                        // Dropping a stream finishes it; a failed run's stream is reset.
                        let _ = open.send.reset(varint(ErrorCode::DONE));
                    }
                    return fail_all(&slot, &outbound, &node, error);
                }
                Action::Idle => {
                    if close_if_idle(&slot, &outbound, &node) {
                        run.sm.end_idle();
                    }
                }
            }
        }
        // A full window fails further sends at once while the target cannot be reached.
        outbound.unreachable.store(
            run.sm.is_unreachable(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if run.sm.is_ended() {
            if let Some(mut open) = run.stream.take() {
                let _ = open.send.finish();
            }
            return;
        }
        let mut wake_at = run.sm.poll_timeout().map(Instant::from_std);
        if run.sm.is_quiet() {
            let now = Instant::now();
            let park_at = *quiet_since.get_or_insert(now) + QUIET_BEFORE_PARKING;
            if now >= park_at {
                match park(&slot, &outbound, &node, run) {
                    Ok(()) => return,
                    Err(back) => {
                        // Messages or bytes came, part of a frame waits for its rest, the
                        // connection was superseded, or the node shuts down: tried again after
                        // another quiet second.
                        run = back;
                        quiet_since = Some(now);
                        continue;
                    }
                }
            } else {
                wake_at = wake_at.map(|at| at.min(park_at));
            }
        } else {
            quiet_since = None;
        }
        if let Some(at) = wake_at {
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
        }
        match run.stream.as_mut() {
            Some(open) => tokio::select! {
                biased;
                _ = &mut cancelled => run.sm.shutdown(),
                read = open.recv.read_chunk(READ_CHUNK, true) => on_read(&mut run.sm, read),
                _ = &mut open.superseded => on_superseded(&mut run.sm),
                _ = outbound.wake.wait() => {}
                _ = &mut timer => run.sm.handle_timeout(now()),
            },
            None => tokio::select! {
                biased;
                _ = &mut cancelled => run.sm.shutdown(),
                _ = outbound.wake.wait() => {}
                _ = &mut timer => run.sm.handle_timeout(now()),
            },
        }
    }
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Polls one read of the stream, leaving `waker` with it; hands a read that is ready to the
/// protocol and says whether there was one.
fn read_if_ready(open: &mut OpenStream, sm: &mut proto::Sender<SendError>, waker: &Waker) -> bool {
    let mut context = Context::from_waker(waker);
    match std::pin::pin!(open.recv.read_chunk(READ_CHUNK, true)).poll(&mut context) {
        Poll::Ready(read) => {
            on_read(sm, read);
            true
        }
        Poll::Pending => false,
    }
}

/// Hands what a read of the stream gave to the protocol.
fn on_read(
    sm: &mut proto::Sender<SendError>,
    read: Result<Option<quinn::Chunk>, quinn::ReadError>,
) {
    match read {
        Ok(Some(chunk)) => sm.received(now(), &chunk.bytes),
        Ok(None) => sm.stream_finished(now()),
        Err(error) => {
            let (error, loss) = read_failure(error);
            let unreachable = matches!(error, SendError::Unreachable(_));
            sm.stream_failed(now(), error, loss, unreachable);
        }
    }
}

/// Another connection took over (a punched direct one, or a redial after the path died): the
/// run moves there, resending what is unacknowledged.
fn on_superseded(sm: &mut proto::Sender<SendError>) {
    debug!("connection superseded; moving the stream");
    sm.superseded(now());
}

/// Parks a quiet run (see [`Parked`]) and ends the conversation's shared state `outbound`
/// (its window closes: senders go back to `slot`, where they find the run). Gives the run back
/// if messages were queued meanwhile, the stream or the connection had news, or the node shuts
/// down.
fn park(
    slot: &Arc<Slot>,
    outbound: &Outbound,
    node: &Arc<Runtime>,
    mut run: Box<Run>,
) -> Result<(), Box<Run>> {
    let Some(quiet_until) = run.sm.poll_timeout() else {
        return Err(run);
    };
    let park = node.parking.reserve();
    let waker = Arc::new(ParkWaker {
        park,
        woken: AtomicBool::new(false),
        parking: Arc::downgrade(&node.parking),
        slot: Arc::downgrade(slot),
    });
    if let Some(open) = run.stream.as_mut() {
        // The task's last wait left its waker with the stream; the parked run's takes its
        // place (the task's would keep the ended task's memory, and wake nothing). What is
        // ready already is handled now, and the run goes on.
        if read_if_ready(open, &mut run.sm, &Waker::from(waker.clone())) {
            return Err(run);
        }
        if open.link.superseded.is_cancelled() {
            on_superseded(&mut run.sm);
            return Err(run);
        }
    }
    let Run { sm, stream, .. } = *run;
    let sm = match sm.park() {
        Ok(sm) => sm,
        // Part of a frame was read: the rest follows.
        Err(sm) => return Err(Run::new(sm, stream)),
    };
    let parked = Box::new(Parked {
        run: ParkedRun {
            sm,
            stream: stream.map(OpenStream::park),
        },
        park,
    });
    let idle_end = parked.idle_end(&node.sender_config);
    debug_assert_eq!(idle_end, (Instant::from_std(quiet_until), park));
    let mut state = lock(&slot.state);
    let queue = lock(&outbound.queue);
    // Woken since the poll: its take-up, which takes the slot's lock, must not find it parked
    // late.
    if !queue.items.is_empty()
        || waker.woken.load(Ordering::Acquire)
        || !node.parking.add(idle_end, slot)
    {
        return Err(unpark(node, slot, parked.run));
    }
    // While the queue is locked: a sender that finds the window closed finds nothing queued.
    outbound.window.close();
    drop(queue);
    *state = SlotState::Parked(parked);
    Ok(())
}

/// The waker a parked run leaves with its stream: what comes meanwhile (the receiver's CLOSE
/// when the grant is revoked or the mailbox closes, a reset, a lost connection) takes the run
/// up at once (PROTOCOL.md §4.11), as the task would have handled it. Every idle conversation
/// keeps one, so it holds only what finds the run again.
struct ParkWaker {
    /// Which park of the run (see [`Parking::reserve`]).
    park: u64,
    woken: AtomicBool,
    parking: std::sync::Weak<Parking>,
    slot: std::sync::Weak<Slot>,
}

impl std::task::Wake for ParkWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.woken.swap(true, Ordering::AcqRel) {
            return;
        }
        // quinn wakes under its connection's lock: the node's parking task takes the run up.
        if let Some(parking) = self.parking.upgrade() {
            parking.woke(self.park, self.slot.clone());
        }
    }
}

/// Takes up parked runs at their idle end (where they end, unless a message came first), those
/// whose stream had news, those on a link another connection took over (they move, as running
/// ones do) and, once the node shuts down, all of them (they fail like running ones). One task
/// per node.
pub(crate) async fn take_up_parked(
    node: std::sync::Weak<Runtime>,
    parking: Arc<Parking>,
    links_superseded: Arc<tokio::sync::Notify>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let next = parking.next();
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return take_up(&node, parking.close(), |_| true),
            // An earlier idle end came: wait for it instead.
            _ = parking.changed.notified() => {}
            // Rare (a punched direct path, a redial, a duplicate connection): every parked run
            // is looked at.
            _ = links_superseded.notified() => {
                take_up(&node, parking.all(), ParkedRun::is_superseded);
            }
            _ = due => take_up(&node, parking.take_due(Instant::now()), |_| true),
            _ = parking.news.notified() => take_up(&node, parking.take_woken(), |_| true),
        }
    }
}

/// Starts a task for each run still parked under its park in `due` that is `wanted`.
fn take_up(
    node: &std::sync::Weak<Runtime>,
    due: Vec<(u64, std::sync::Weak<Slot>)>,
    wanted: impl Fn(&ParkedRun) -> bool,
) {
    let Some(node) = node.upgrade() else {
        return;
    };
    for (park, slot) in due {
        let Some(slot) = slot.upgrade() else {
            continue;
        };
        let mut state = lock(&slot.state);
        // Not if a sender took it up meanwhile (it may have parked again since).
        if matches!(&*state, SlotState::Parked(parked) if parked.park == park && wanted(&parked.run))
        {
            resume(&node, &slot, &mut state);
        }
    }
}

/// Makes `slot`'s parked conversation live again, under the slot's lock (`state`): a new shared
/// state, and a task started with its run; forgets the run's idle end (still registered unless
/// the parking task took it up there). Returns the new shared state; `None` if the
/// conversation was not parked.
fn resume(node: &Arc<Runtime>, slot: &Arc<Slot>, state: &mut SlotState) -> Option<Arc<Outbound>> {
    let parked = match std::mem::replace(state, SlotState::Ended) {
        SlotState::Parked(parked) => parked,
        other => {
            *state = other;
            return None;
        }
    };
    node.parking.remove(parked.idle_end(&node.sender_config));
    let outbound = Arc::new(Outbound::new(
        node.config.send_window,
        parked.run.sm.next_ticket(),
    ));
    let run = unpark(node, slot, parked.run);
    spawn_run(node, slot.clone(), outbound.clone(), run);
    *state = SlotState::Live(outbound.clone());
    Some(outbound)
}

/// The whole run of a parked one. A parked run keeps no wait on its link's supersession (the
/// parking task takes it up): found superseded here, it takes what its stream holds first (the
/// receiver's CLOSE, as the running task's reads come before its other waits) and moves before
/// it writes again.
fn unpark(node: &Runtime, slot: &Slot, parked: ParkedRun) -> Box<Run> {
    let mut run = Run::new(
        parked.sm.resume(
            node.sender_config.clone(),
            slot.target.clone(),
            slot.from.clone(),
        ),
        parked.stream.map(|stream| stream.resume()),
    );
    if let Some(open) = run
        .stream
        .as_mut()
        .filter(|open| open.link.superseded.is_cancelled())
    {
        read_if_ready(open, &mut run.sm, Waker::noop());
        on_superseded(&mut run.sm);
    }
    run
}

/// The most queued messages a conversation's vectors keep room for between batches.
const KEPT_BATCH_CAPACITY: usize = 4096;

/// Moves what senders queued into the run.
fn pull_queued(outbound: &Outbound, run: &mut Run) {
    {
        let mut queue = lock(&outbound.queue);
        if queue.items.is_empty() {
            return;
        }
        std::mem::swap(&mut queue.items, &mut run.taken);
    }
    run.sm.push_all(now(), run.taken.drain(..));
    if run.taken.capacity() > KEPT_BATCH_CAPACITY {
        // A burst's vector is not kept for the conversation's life.
        run.taken = Vec::new();
    }
}

/// Opens a stream to `peer` (dialing it at `hints` if needed) and writes `head` (kind and
/// OPEN).
async fn open(
    node: &Arc<Runtime>,
    peer: crate::identity::NodeId,
    hints: &[std::net::SocketAddr],
    head: &[u8],
) -> Result<OpenStream, (SendError, Loss)> {
    let link = dial::connect_link(&node.net, peer, hints)
        .await
        .map_err(|error| dial_failure(node, peer, error))?;
    let (mut send, recv) = link
        .connection
        .open_bi()
        .await
        .map_err(|error| connection_failure(&error))?;
    if let Err(error) = send.write_all(head).await {
        let _ = send.reset(varint(ErrorCode::DONE));
        return Err(write_failure(error));
    }
    Ok(OpenStream::new(send, recv, link))
}

/// The error senders see for a failed run.
fn send_error(failure: RunFailure<SendError>, target: &Address) -> SendError {
    match failure {
        RunFailure::Unreachable(error) | RunFailure::Fatal(error) => error,
        RunFailure::Timeout => SendError::Timeout,
        RunFailure::Closed { code, reason } => SendError::from_close(code, &reason, target),
        RunFailure::Protocol(why) => SendError::Protocol(why),
        RunFailure::NodeClosed => SendError::NodeClosed,
    }
}

/// Delivers to a mailbox of this node: stored first if it is durable.
async fn deliver_locally(
    authorized: &Authorized,
    from: Address,
    payload: Bytes,
    timeout: Duration,
) -> Result<(), SendError> {
    let mailbox = &authorized.mailbox;
    let counters = durable_counters(&authorized.limits);
    // Set once a durable store kept (and counted) the message: it is delivered from then on.
    let stored_flag = std::sync::atomic::AtomicBool::new(false);
    // A revocation while the message waits (for room in a store, or in the queue of a mailbox
    // that is not durable) refuses it, as it ends a remote sender's stream.
    let revoked = authorized.revoked();
    tokio::pin!(revoked);
    let deliver = async {
        let message = match &mailbox.durable {
            None => Message {
                from,
                payload,
                receipt: None,
            },
            Some(durable) => loop {
                let mut stored = durable
                    .store(
                        None,
                        vec![(from.clone(), payload.clone())],
                        counters.clone(),
                    )
                    .await
                    .map_err(SendError::Store)?;
                match stored.pop() {
                    Some(message) => {
                        stored_flag.store(true, std::sync::atomic::Ordering::Release);
                        durable.replayed.cancelled().await;
                        break message;
                    }
                    // Full: wait for the application to acknowledge (bounded by send_timeout).
                    None => tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = &mut revoked => return Err(SendError::Revoked),
                    },
                }
            },
        };
        let queued = mailbox.queue.push(message);
        let sent = if mailbox.durable.is_some() {
            // Stored: delivered, revoked or not.
            queued.await
        } else {
            tokio::select! {
                sent = queued => sent,
                _ = &mut revoked => return Err(SendError::Revoked),
            }
        };
        sent.map_err(|_| SendError::NoSuchMailbox)
    };
    let result = tokio::select! {
        _ = mailbox.queue.mailbox_closed.wait() => Err(SendError::NoSuchMailbox),
        sent = tokio::time::timeout(timeout, deliver) => sent.unwrap_or(Err(SendError::Timeout)),
    };
    if result.is_err() && !stored_flag.load(std::sync::atomic::Ordering::Acquire) {
        // Not delivered: give the reservation back. (A message a durable store kept is
        // counted there, and delivered.)
        authorized.mailbox.caps.release(&authorized.limits, 1);
    }
    result
}

fn varint(code: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u64(code.0).unwrap_or(quinn::VarInt::MAX)
}

/// What a failed dial means for the run. A target that was reachable within `outbox_ttl` is
/// waited for (its messages stay in the outbox, and the node keeps dialing); one that was
/// not, or whose own answer will not change (another identity, another protocol version, a
/// refusal), fails the run now.
fn dial_failure(
    node: &Runtime,
    peer: crate::identity::NodeId,
    error: DialError,
) -> (SendError, Loss) {
    let worth_waiting = match &error {
        DialError::NodeClosed => return (SendError::NodeClosed, Loss::Fatal),
        DialError::TooManyConnections => true,
        DialError::WrongNode { .. }
        | DialError::IncompatibleVersion
        | DialError::Refused(_)
        | DialError::NoAddress(_)
        | DialError::NoCertificate
        | DialError::Undialable { .. } => false,
        DialError::TooManyRelayedPeers
        | DialError::Timeout
        | DialError::Connection(_)
        | DialError::Stream(_)
        | DialError::NoRoute { .. } => node.net.peers.reached_within(&peer, node.config.outbox_ttl),
    };
    let loss = if worth_waiting {
        Loss::Retry
    } else {
        Loss::Fatal
    };
    (SendError::Unreachable(error), loss)
}

fn connection_failure(error: &quinn::ConnectionError) -> (SendError, Loss) {
    if let quinn::ConnectionError::ApplicationClosed(close) = error {
        if close.error_code == ConnCode::ADMISSION_REFUSED.into() {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            return (
                SendError::Unreachable(DialError::Refused(reason)),
                Loss::Fatal,
            );
        }
    }
    (
        SendError::Unreachable(DialError::Connection(error.clone())),
        Loss::Retry,
    )
}

fn write_failure(error: quinn::WriteError) -> (SendError, Loss) {
    match error {
        quinn::WriteError::ConnectionLost(error) => connection_failure(&error),
        quinn::WriteError::Stopped(code) if code == varint(ErrorCode::NOT_ADMITTED) => {
            not_admitted()
        }
        other => (
            SendError::Unreachable(DialError::Stream(StreamError::Write(other))),
            Loss::Retry,
        ),
    }
}

fn not_admitted() -> (SendError, Loss) {
    (
        SendError::Unreachable(DialError::Refused("node not admitted".into())),
        Loss::Fatal,
    )
}

fn read_failure(error: quinn::ReadError) -> (SendError, Loss) {
    match error {
        quinn::ReadError::ConnectionLost(error) => connection_failure(&error),
        quinn::ReadError::Reset(code) if code == varint(ErrorCode::NOT_ADMITTED) => not_admitted(),
        other => (
            SendError::Unreachable(DialError::Stream(StreamError::Read(other))),
            Loss::Retry,
        ),
    }
}

/// Ends `slot`'s conversation (whose shared state is `outbound`) if nothing is queued.
/// Returns whether it ended.
fn close_if_idle(slot: &Arc<Slot>, outbound: &Outbound, node: &Runtime) -> bool {
    let mut map = lock(&node.conversations);
    let mut state = lock(&slot.state);
    let queue = lock(&outbound.queue);
    if !queue.items.is_empty() {
        return false;
    }
    end(slot, outbound, &mut map, &mut state);
    true
}

/// Ends `slot`'s conversation (whose shared state is `outbound`), failing every message not
/// yet acknowledged with `error`.
fn fail_all(slot: &Arc<Slot>, outbound: &Outbound, node: &Runtime, error: SendError) {
    debug!(%error, "conversation failed");
    node.stats.count_send_failure(&error);
    {
        let mut map = lock(&node.conversations);
        let mut state = lock(&slot.state);
        let mut queue = lock(&outbound.queue);
        queue.items.clear();
        end(slot, outbound, &mut map, &mut state);
        drop(queue);
    }
    outbound.progress.update(|progress| {
        progress.failures.get_or_insert_default().fatal = Some(error);
        true
    });
}

/// Takes an ending conversation out of the node's table (`map`) and closes its window: its
/// senders start a new conversation. Under the table's, the slot's (`state`) and the queue's
/// locks: a sender that finds the window open finds the queue still in use.
fn end(
    slot: &Arc<Slot>,
    outbound: &Outbound,
    map: &mut HashMap<ConversationKey, Arc<Slot>>,
    state: &mut SlotState,
) {
    let key = slot.key();
    if map
        .get(&key)
        .is_some_and(|current| Arc::ptr_eq(current, slot))
    {
        map.remove(&key);
    }
    outbound.window.close();
    *state = SlotState::Ended;
}

/// Waits until no conversation has messages in flight, or `grace` passes.
pub(crate) async fn drain(node: &Runtime, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        let slots: Vec<Arc<Slot>> = lock(&node.conversations).values().cloned().collect();
        let busy = slots.iter().any(|slot| match &*lock(&slot.state) {
            SlotState::Live(outbound) => {
                let progress = outbound.progress.read();
                let queue = lock(&outbound.queue);
                progress.fatal().is_none() && progress.resolved_below < queue.next_ticket
            }
            // A parked run has nothing in flight.
            SlotState::Parked(_) | SlotState::Ended => false,
        });
        if !busy || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Node, NodeConfig, SecretKey};
    use ferry_testkit::wait::wait_for;

    async fn node() -> Node {
        Node::bind(SecretKey::generate(), NodeConfig::default())
            .await
            .unwrap()
    }

    /// A parked conversation keeps no shared state: the one its senders queued on goes once it
    /// parked, and the next message makes a new one, whose tickets go on from the run's, on
    /// the same stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_conversation_keeps_no_shared_state() {
        let a = node().await;
        let b = node().await;
        let target = b.mailbox();
        let sender = a.sender(target.address());
        sender.send(&1u32).await.unwrap();
        let shared = std::sync::Arc::downgrade(&sender.outbound());
        wait_for("the quiet conversation to park", || {
            a.stats().parked_conversations == 1
        })
        .await;
        wait_for("its shared state to go", || shared.upgrade().is_none()).await;
        assert_eq!(
            a.stats().conversations,
            1,
            "the conversation stays in the table"
        );
        sender.send(&2u32).await.unwrap();
        assert_eq!(a.stats().parked_conversations, 0);
        let resumed = sender.outbound();
        assert_eq!(
            crate::sync::lock(&resumed.queue).next_ticket,
            2,
            "the tickets go on from the parked run's"
        );
        assert_eq!(resumed.progress.read().resolved_below, 2);
        for expected in 1..=2u32 {
            let message = target.recv_timeout(Duration::from_secs(20)).await.unwrap();
            assert_eq!(message.decode::<u32>().unwrap(), expected);
        }
        assert_eq!(b.stats().streams_in, 1, "on the same stream");
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }

    /// A parked conversation keeps no wait of its own on its link: when another connection
    /// takes the link over, the node's parking task takes it up and it moves at once, as a
    /// running one does (its stream is reset); its next message goes on a new stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_conversation_moves_when_its_link_is_superseded() {
        // Its idle end is far beyond the wait below: only the move can end its stream.
        let a = Node::bind(
            SecretKey::generate(),
            NodeConfig {
                stream_idle_timeout: Duration::from_secs(600),
                ..NodeConfig::default()
            },
        )
        .await
        .unwrap();
        let b = node().await;
        let target = b.mailbox();
        let sender = a.sender(target.address());
        sender.send(&1u32).await.unwrap();
        wait_for("the quiet conversation to park", || {
            a.stats().parked_conversations == 1
        })
        .await;
        assert_eq!(b.stats().streams_in, 1);
        // Another connection takes over: the link leaves the peer's slot (the next message
        // dials again) and is superseded.
        let net = &a.inner().net;
        let link = net.peers.link(&b.id()).unwrap();
        crate::sync::lock(&net.peers.slots).remove(&b.id());
        link.supersede(net);
        wait_for(
            "the receiver to see the parked stream moved off the link",
            || b.stats().streams_in == 0,
        )
        .await;
        sender.send(&2u32).await.unwrap();
        for expected in 1..=2u32 {
            let message = target.recv_timeout(Duration::from_secs(20)).await.unwrap();
            assert_eq!(message.decode::<u32>().unwrap(), expected);
        }
        assert_eq!(
            b.stats().streams_in,
            1,
            "the next message opened a new stream"
        );
        assert_ne!(
            net.peers.link(&b.id()).unwrap().connection.stable_id(),
            link.connection.stable_id(),
            "on a new connection"
        );
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }
}
