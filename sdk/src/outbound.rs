//! The sending side of mailbox streams: one task and one QUIC stream per conversation
//! (sender mailbox → target mailbox), so a slow or lossy conversation never stalls another.
//!
//! Messages are queued in order and given a local ticket. The task writes them in batches,
//! keeps them until the receiver's cumulative `Ack` covers them (so they can be sent again on a
//! new stream after a lost connection), and publishes progress on a watch channel that every
//! [`Delivery`] waits on. Memory is bounded by the send window (bytes), which also makes
//! `send` wait when the receiver is slow.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::address::{Address, MailboxId, ADDRESS_CORE_LEN};
use crate::connection::{self, ConnCode, Link};
use crate::error::{DialError, SendError};
use crate::frame::{self, ErrorCode, Frame, Open, StreamKind};
use crate::liveness::{Probed, PROBE_INTERVAL};
use crate::mailbox::{lock, MailboxHandle, Message};
use crate::node::{NodeInner, Stats};

/// Per-message cost charged against the send window on top of the payload, so floods of tiny
/// messages are bounded too.
const MESSAGE_OVERHEAD: usize = 32;
/// Per-message failures remembered for their [`Delivery`]s (they are rare: oversize only).
const MAX_REMEMBERED_FAILURES: usize = 1024;
/// Bytes of a conversation's write buffer kept between batches; a burst that needed more gives
/// the rest back once written.
const RETAINED_WRITE_BUF: usize = 16 * 1024;
/// Upper bound of the pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Upper bound of the pause after a failed dial: the dial itself tried every route for up to
/// `dial_timeout`, each again every half second.
const MAX_REDIAL_PAUSE: Duration = Duration::from_millis(250);
/// Time without an acknowledgement, with messages outstanding, after which the path is probed
/// (every [`PROBE_INTERVAL`]).
const STALL_AFTER: Duration = Duration::from_millis(300);
/// Time the probes of a stalled path may go unanswered before the peer is dialed again (its
/// address, or this node's, may have changed).
const REDIAL_AFTER: Duration = Duration::from_secs(1);
/// The pause between probes of a path that answers but whose receiver does not acknowledge
/// (it is slow, or its mailbox is full).
const SLOW_RECEIVER_PROBE: Duration = Duration::from_secs(1);

/// Identifies a conversation: all messages from one mailbox to one target address share it.
/// The whole signed core is part of the key, so every distinct address (another expiry, or a
/// tampered copy) is presented to, and checked by, the receiver on its own stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConversationKey {
    from: MailboxId,
    target: [u8; ADDRESS_CORE_LEN],
}

impl std::hash::Hash for ConversationKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The mailbox ids and the tail of the signature already spread keys well; hashing all
        // 120 bytes showed up in profiles.
        self.from.hash(state);
        state.write(&self.target[32..40]);
        state.write(&self.target[ADDRESS_CORE_LEN - 16..]);
    }
}

/// How far a conversation has got, as seen by waiting [`Delivery`]s.
#[derive(Debug, Default)]
struct Progress {
    /// Every ticket below this is resolved: acknowledged, or listed in `failed`.
    resolved_below: u64,
    failed: BTreeMap<u64, SendError>,
    /// The conversation ended with this error: every unresolved ticket failed with it.
    fatal: Option<SendError>,
}

#[derive(Default)]
struct Queue {
    next_ticket: u64,
    items: VecDeque<(u64, Bytes)>,
    /// Set when the task ended (idle or failed): senders must start a new conversation.
    closed: bool,
}

/// The shared state of one outgoing conversation.
pub(crate) struct Outbound {
    key: ConversationKey,
    target: Address,
    from: Address,
    window: Semaphore,
    /// The window's size, `send_window`.
    window_size: usize,
    queue: Mutex<Queue>,
    wake: Notify,
    progress: watch::Sender<Progress>,
    /// Set while the target cannot be reached: a full window then fails sends at once.
    unreachable: std::sync::atomic::AtomicBool,
}

impl Outbound {
    /// Bytes of the window in use: messages queued or unacknowledged.
    pub(crate) fn outstanding_bytes(&self) -> u64 {
        self.window_size
            .saturating_sub(self.window.available_permits()) as u64
    }
}

fn cost(payload: &Bytes) -> u32 {
    // max_message_size is validated to at most 1 GiB, so this fits.
    u32::try_from(payload.len() + MESSAGE_OVERHEAD).unwrap_or(u32::MAX)
}

/// Returns the live conversation for `key`, starting one if needed.
fn conversation(node: &Arc<NodeInner>, from: &Address, target: &Address) -> Arc<Outbound> {
    let key = ConversationKey {
        from: from.mailbox(),
        target: target.core_bytes(),
    };
    let mut map = lock(&node.conversations);
    if let Some(existing) = map.get(&key) {
        return existing.clone();
    }
    let outbound = Arc::new(Outbound {
        key,
        target: target.clone(),
        from: from.clone(),
        window: Semaphore::new(node.config.send_window),
        window_size: node.config.send_window,
        queue: Mutex::new(Queue::default()),
        wake: Notify::new(),
        progress: watch::Sender::new(Progress::default()),
        unreachable: std::sync::atomic::AtomicBool::new(false),
    });
    map.insert(key, outbound.clone());
    drop(map);
    let span = tracing::debug_span!("conversation", to = %target.node().short(), mailbox = %target.mailbox());
    node.tasks
        .spawn(run(outbound.clone(), node.clone()).instrument(span));
    outbound
}

/// Sends messages from one mailbox to one address, in order. Cheap to clone; all clones and
/// all other senders between the same two mailboxes share one ordered stream.
pub struct Sender {
    node: Arc<NodeInner>,
    from: Address,
    target: Address,
    /// For a mailbox on this node: its queue, skipping the network.
    local: Option<Result<MailboxHandle, SendError>>,
    /// The conversation last used, so the node's table is consulted only when it ended.
    cached: Mutex<Option<Arc<Outbound>>>,
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
    pub(crate) fn new(node: &Arc<NodeInner>, from: Address, target: &Address) -> Self {
        for (relay, relay_addr) in target.relays() {
            node.peers.add_relay(target.node(), relay, relay_addr);
        }
        let local = (target.node() == node.id).then(|| node.mailboxes.authorize(node, target));
        Self {
            node: node.clone(),
            from,
            target: target.clone(),
            local,
            cached: Mutex::new(None),
        }
    }

    /// The live conversation, from the cache or the node's table.
    fn outbound(&self) -> Arc<Outbound> {
        let mut cached = lock(&self.cached);
        if let Some(outbound) = cached.as_ref() {
            if !lock(&outbound.queue).closed {
                return outbound.clone();
            }
        }
        let outbound = conversation(&self.node, &self.from, &self.target);
        *cached = Some(outbound.clone());
        outbound
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
        let payload =
            postcard::to_allocvec(message).map_err(|e| SendError::Encode(e.to_string()))?;
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
        if let Some(local) = &self.local {
            let mailbox = local.as_ref().map_err(Clone::clone)?;
            let result = deliver_locally(
                mailbox,
                Arc::new(self.from.clone()),
                payload,
                self.node.config.send_timeout,
            )
            .await;
            return Ok(Delivery(DeliveryState::Done(result)));
        }
        let cost = cost(&payload);
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
            if queue.closed {
                drop(queue);
                outbound.window.add_permits(cost as usize);
                continue;
            }
            let ticket = queue.next_ticket;
            queue.next_ticket += 1;
            let was_empty = queue.items.is_empty();
            queue.items.push_back((ticket, payload));
            drop(queue);
            // The task drains the whole queue per wake-up, so only the first item needs one.
            if was_empty {
                outbound.wake.notify_one();
            }
            return Ok(Delivery(DeliveryState::Pending { outbound, ticket }));
        }
    }
}

/// Resolves when the target node accepted one queued message, or with why it did not.
#[must_use = "a Delivery does nothing unless awaited; dropping it does not cancel the send"]
pub struct Delivery(DeliveryState);

enum DeliveryState {
    Done(Result<(), SendError>),
    Pending {
        outbound: Arc<Outbound>,
        ticket: u64,
    },
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            DeliveryState::Done(result) => write!(f, "Delivery({result:?})"),
            DeliveryState::Pending { ticket, .. } => write!(f, "Delivery(pending #{ticket})"),
        }
    }
}

impl IntoFuture for Delivery {
    type Output = Result<(), SendError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (outbound, ticket) = match self.0 {
                DeliveryState::Done(result) => return result,
                DeliveryState::Pending { outbound, ticket } => (outbound, ticket),
            };
            let mut progress = outbound.progress.subscribe();
            loop {
                {
                    let state = progress.borrow_and_update();
                    if let Some(error) = state.failed.get(&ticket) {
                        return Err(error.clone());
                    }
                    if state.resolved_below > ticket {
                        return Ok(());
                    }
                    if let Some(error) = &state.fatal {
                        return Err(error.clone());
                    }
                }
                if progress.changed().await.is_err() {
                    return Err(SendError::NodeClosed);
                }
            }
        })
    }
}

/// Why opening a stream failed.
enum StreamFailure {
    /// Trying again may help (connection lost, peer restarting).
    Retry(SendError),
    /// Every queued message fails with this.
    Fatal(SendError),
}

struct OpenStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    peer_max: usize,
    /// The connection the stream is on.
    link: Link,
    /// Resolves once another connection to the peer took over: the stream moves there.
    superseded: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// Probing a stalled path (see [`crate::liveness`]).
#[derive(Default)]
struct Stall {
    /// When the next probe is due, while messages wait for an acknowledgement.
    next_probe: Option<Instant>,
    /// Since when probes went unanswered.
    unanswered_since: Option<Instant>,
    /// Whether the peer was dialed again during this stall.
    redialed: bool,
}

impl Stall {
    /// Progress (an acknowledgement, a new stream): the next probe only after a new stall.
    fn reset(&mut self, now: Instant) {
        *self = Self {
            next_probe: Some(now + STALL_AFTER),
            ..Self::default()
        };
    }

    /// Probes `link` now; dials the peer again if probes go unanswered too long.
    fn probe(
        &mut self,
        node: &Arc<NodeInner>,
        peer: crate::identity::NodeId,
        link: &Link,
        now: Instant,
    ) {
        let probed = link.probe();
        if probed == Probed::Sent {
            node.stats.count_path_probe();
        }
        match probed {
            Probed::Answered => {
                self.unanswered_since = None;
                self.next_probe = Some(now + SLOW_RECEIVER_PROBE);
            }
            Probed::Sent | Probed::Waiting => {
                let since = *self.unanswered_since.get_or_insert(now);
                if !self.redialed && now.duration_since(since) >= REDIAL_AFTER {
                    debug!("the path does not answer; dialing the peer again");
                    self.redialed = true;
                    connection::refresh(node, peer);
                }
                self.next_probe = Some(now + PROBE_INTERVAL);
            }
        }
    }
}

/// The state the conversation task owns.
struct Flight {
    epoch: u64,
    /// Sequence number of `unacked.front()`.
    base_seq: u64,
    /// Written (or to be rewritten) but not acknowledged, in sequence order.
    unacked: VecDeque<(u64, Bytes)>,
    write_buf: Vec<u8>,
    read_buf: BytesMut,
}

async fn run(outbound: Arc<Outbound>, node: Arc<NodeInner>) {
    let mut epoch = [0u8; 8];
    crate::identity::fill_random(&mut epoch);
    let mut flight = Flight {
        epoch: u64::from_be_bytes(epoch),
        base_seq: 0,
        unacked: VecDeque::new(),
        // Grown on demand: most conversations are idle most of the time, and memory per idle
        // conversation is what bounds how many a node can hold.
        write_buf: Vec::new(),
        read_buf: BytesMut::new(),
    };
    let config = &node.config;
    let mut stream: Option<OpenStream> = None;
    let mut attempts = 0u32;
    let mut last_error = SendError::Timeout;
    // When the receiver last acknowledged something, or the conversation last became busy:
    // with messages outstanding, nothing for `send_timeout` after this fails them all.
    let mut last_progress = Instant::now();
    // When the stream last carried anything, for closing it when idle.
    let mut last_activity = Instant::now();
    let mut was_busy = false;
    let mut stall = Stall::default();
    let peer = outbound.target.node();
    // Made once: creating a cancellation future or a timer per iteration showed in profiles.
    let cancelled = node.cancel.clone().cancelled_owned();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep_until(last_activity + config.stream_idle_timeout);
    tokio::pin!(timer);
    loop {
        let queued = !lock(&outbound.queue).items.is_empty();
        let busy = queued || !flight.unacked.is_empty();
        if busy && !was_busy {
            last_progress = Instant::now();
        }
        was_busy = busy;
        let progress_deadline = last_progress + config.send_timeout;
        let Some(open) = stream.as_mut() else {
            if !busy {
                tokio::select! {
                    _ = node.cancel.cancelled() => return fail_all(&outbound, &node, &mut flight, SendError::NodeClosed),
                    _ = outbound.wake.notified() => {
                        // Put the wake-up back for the drain after the stream opens.
                        outbound.wake.notify_one();
                        continue;
                    }
                    _ = tokio::time::sleep_until(last_activity + config.stream_idle_timeout) => {
                        if close_if_idle(&outbound, &node) {
                            return;
                        }
                        continue;
                    }
                }
            }
            // An unreachable target gets the outbox's time; a reachable one that does not
            // answer gets send_timeout.
            let unreachable = matches!(last_error, SendError::Unreachable(_));
            let deadline = if unreachable {
                last_progress + config.outbox_ttl.max(config.send_timeout)
            } else {
                progress_deadline
            };
            if Instant::now() >= deadline {
                // Without a stream, the last reason we could not open one says most.
                let error = if unreachable {
                    last_error
                } else {
                    SendError::Timeout
                };
                return fail_all(&outbound, &node, &mut flight, error);
            }
            let opened =
                tokio::time::timeout_at(deadline, open_stream(&outbound, &node, &mut flight))
                    .await
                    .unwrap_or_else(|_| {
                        // Cut off by the deadline: the target is as unreachable as it was.
                        let error = if unreachable {
                            last_error.clone()
                        } else {
                            SendError::Timeout
                        };
                        Err(StreamFailure::Retry(error))
                    });
            match opened {
                Ok(mut opened) => {
                    attempts = 0;
                    outbound
                        .unreachable
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    if unreachable {
                        // Back in touch: the receiver gets send_timeout from now on.
                        last_progress = Instant::now();
                    }
                    // Everything unacknowledged goes again; the receiver drops duplicates.
                    flight.write_buf.clear();
                    for (_, payload) in &flight.unacked {
                        frame::put_message_header(&mut flight.write_buf, payload.len());
                        flight.write_buf.extend_from_slice(payload);
                    }
                    let written = tokio::time::timeout_at(
                        progress_deadline,
                        opened.send.write_all(&flight.write_buf),
                    )
                    .await;
                    match written {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            let _ = opened.send.reset(code(ErrorCode::DONE));
                            match write_failure(error) {
                                StreamFailure::Fatal(error) => {
                                    return fail_all(&outbound, &node, &mut flight, error)
                                }
                                StreamFailure::Retry(error) => last_error = error,
                            }
                            continue;
                        }
                        Err(_) => {
                            let _ = opened.send.reset(code(ErrorCode::TIMEOUT));
                            return fail_all(&outbound, &node, &mut flight, SendError::Timeout);
                        }
                    }
                    stream = Some(opened);
                    last_activity = Instant::now();
                    stall.reset(last_activity);
                    outbound.wake.notify_one();
                    // The receiver may have answered more than `Accept` already.
                    match process_frames(&outbound, &node.stats, &mut flight) {
                        Ok(true) => last_progress = Instant::now(),
                        Ok(false) => {}
                        Err(StreamFailure::Fatal(error)) => {
                            return fail_all(&outbound, &node, &mut flight, error);
                        }
                        Err(StreamFailure::Retry(error)) => {
                            last_error = error;
                            abandon(&mut stream);
                        }
                    }
                }
                Err(StreamFailure::Fatal(error)) => {
                    return fail_all(&outbound, &node, &mut flight, error);
                }
                Err(StreamFailure::Retry(error)) => {
                    debug!(%error, attempts, "opening conversation stream failed; retrying");
                    if matches!(error, SendError::Unreachable(_)) {
                        outbound
                            .unreachable
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    let pause = if matches!(error, SendError::Unreachable(_)) {
                        backoff(attempts).min(MAX_REDIAL_PAUSE)
                    } else {
                        backoff(attempts)
                    };
                    last_error = error;
                    attempts = attempts.saturating_add(1);
                    tokio::select! {
                        _ = node.cancel.cancelled() => return fail_all(&outbound, &node, &mut flight, SendError::NodeClosed),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
            continue;
        };

        let probe_at = stall.next_probe.filter(|_| !flight.unacked.is_empty());
        let deadline = if busy {
            probe_at.map_or(progress_deadline, |at| at.min(progress_deadline))
        } else {
            last_activity + config.stream_idle_timeout
        };
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            _ = &mut cancelled => {
                return fail_all(&outbound, &node, &mut flight, SendError::NodeClosed);
            }
            chunk = open.recv.read_chunk(64 * 1024, true) => {
                match handle_incoming(&outbound, &node.stats, &mut flight, chunk) {
                    Ok(advanced) => {
                        if advanced {
                            last_progress = Instant::now();
                            last_activity = last_progress;
                            stall.reset(last_progress);
                        }
                    }
                    Err(StreamFailure::Fatal(error)) => {
                        return fail_all(&outbound, &node, &mut flight, error);
                    }
                    Err(StreamFailure::Retry(error)) => {
                        last_error = error;
                        abandon(&mut stream);
                    }
                }
            }
            _ = &mut open.superseded => {
                // Another connection took over (a punched direct one, or a redial after the
                // path died): the run moves there at once, resending what is unacknowledged.
                debug!("connection superseded; moving the stream");
                abandon(&mut stream);
                attempts = 0;
            }
            _ = outbound.wake.notified() => {
                if flight.unacked.is_empty() {
                    last_progress = Instant::now();
                    stall.reset(last_progress);
                }
                let peer_max = open.peer_max;
                let written = tokio::time::timeout_at(
                    last_progress + config.send_timeout,
                    write_queued(&outbound, &mut flight, &mut open.send, peer_max),
                )
                .await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(StreamFailure::Fatal(error))) => {
                        return fail_all(&outbound, &node, &mut flight, error);
                    }
                    Ok(Err(StreamFailure::Retry(error))) => {
                        last_error = error;
                        abandon(&mut stream);
                    }
                    Err(_) => {
                        // Blocked by flow control for send_timeout: the receiver stopped reading.
                        let _ = open.send.reset(code(ErrorCode::TIMEOUT));
                        return fail_all(&outbound, &node, &mut flight, SendError::Timeout);
                    }
                }
                last_activity = Instant::now();
            }
            _ = &mut timer => {
                let now = Instant::now();
                if busy && now < progress_deadline {
                    // Messages wait for an acknowledgement: is the path still there?
                    let link = open.link.clone();
                    stall.probe(&node, peer, &link, now);
                    continue;
                }
                if busy {
                    // No acknowledgement for send_timeout: the receiver is stuck or gone.
                    return fail_all(&outbound, &node, &mut flight, SendError::Timeout);
                }
                if close_if_idle(&outbound, &node) {
                    if let Some(mut open) = stream.take() {
                        let _ = open.send.finish();
                    }
                    return;
                }
            }
        }
    }
}

/// Delivers to a mailbox of this node: stored first if it is durable.
async fn deliver_locally(
    mailbox: &MailboxHandle,
    from: Arc<Address>,
    payload: Bytes,
    timeout: Duration,
) -> Result<(), SendError> {
    let deliver = async {
        let message = match &mailbox.durable {
            None => Message {
                from,
                payload,
                receipt: None,
            },
            Some(durable) => loop {
                let mut stored = durable
                    .store(None, vec![(from.clone(), payload.clone())])
                    .await
                    .map_err(SendError::Store)?;
                match stored.pop() {
                    Some(message) => {
                        durable.replayed.cancelled().await;
                        break message;
                    }
                    // Full: wait for the application to acknowledge (bounded by send_timeout).
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            },
        };
        mailbox
            .queue
            .send(message)
            .await
            .map_err(|_| SendError::NoSuchMailbox)
    };
    tokio::select! {
        _ = mailbox.closed.cancelled() => Err(SendError::NoSuchMailbox),
        sent = tokio::time::timeout(timeout, deliver) => sent.unwrap_or(Err(SendError::Timeout)),
    }
}

/// Gives up a stream without ending the conversation run: reset, never finished, because the
/// receiver takes a clean finish to mean the run is over and forgets its duplicate state.
fn abandon(stream: &mut Option<OpenStream>) {
    if let Some(mut open) = stream.take() {
        let _ = open.send.reset(code(ErrorCode::DONE));
    }
}

fn code(code: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u64(code.0).unwrap_or(quinn::VarInt::MAX)
}

fn backoff(attempts: u32) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    let base = Duration::from_millis(25).saturating_mul(1 << attempts.min(7));
    let base = base.min(MAX_BACKOFF);
    let mut jitter = [0u8; 2];
    crate::identity::fill_random(&mut jitter);
    // Full jitter in [base/2, base).
    base / 2 + base.mul_f64(f64::from(u16::from_be_bytes(jitter)) / 131_072.0)
}

/// Moves queued messages into the stream.
async fn write_queued(
    outbound: &Outbound,
    flight: &mut Flight,
    send: &mut quinn::SendStream,
    peer_max: usize,
) -> Result<(), StreamFailure> {
    let batch: Vec<(u64, Bytes)> = {
        let mut queue = lock(&outbound.queue);
        queue.items.drain(..).collect()
    };
    if batch.is_empty() {
        return Ok(());
    }
    flight.write_buf.clear();
    let mut refused = Vec::new();
    let mut released = 0usize;
    for (ticket, payload) in batch {
        if payload.len() > peer_max {
            released += cost(&payload) as usize;
            refused.push((
                ticket,
                SendError::TooLarge {
                    size: payload.len(),
                    max: peer_max,
                },
            ));
            continue;
        }
        frame::put_message_header(&mut flight.write_buf, payload.len());
        flight.write_buf.extend_from_slice(&payload);
        flight.unacked.push_back((ticket, payload));
    }
    if !refused.is_empty() {
        outbound.window.add_permits(released);
        outbound.progress.send_modify(|progress| {
            for (ticket, error) in refused {
                progress.failed.insert(ticket, error);
            }
            while progress.failed.len() > MAX_REMEMBERED_FAILURES {
                progress.failed.pop_first();
            }
        });
        publish_resolved(outbound, flight);
    }
    let written = send
        .write_all(&flight.write_buf)
        .await
        .map_err(write_failure);
    flight.write_buf.clear();
    flight.write_buf.shrink_to(RETAINED_WRITE_BUF);
    written
}

/// Processes acknowledgements and closes from the receiver. Returns whether anything advanced.
fn handle_incoming(
    outbound: &Outbound,
    stats: &Stats,
    flight: &mut Flight,
    chunk: Result<Option<quinn::Chunk>, quinn::ReadError>,
) -> Result<bool, StreamFailure> {
    let chunk = match chunk {
        Ok(Some(chunk)) => chunk,
        Ok(None) => {
            return Err(StreamFailure::Retry(SendError::Protocol(
                "receiver finished the stream".into(),
            )))
        }
        Err(error) => return Err(read_error(error)),
    };
    flight.read_buf.extend_from_slice(&chunk.bytes);
    process_frames(outbound, stats, flight)
}

/// Processes every complete frame in `flight.read_buf`.
fn process_frames(
    outbound: &Outbound,
    stats: &Stats,
    flight: &mut Flight,
) -> Result<bool, StreamFailure> {
    let mut advanced = false;
    loop {
        let decoded = frame::decode_frame(&flight.read_buf, frame::MAX_CONTROL_FRAME_LEN)
            .map_err(|e| StreamFailure::Fatal(SendError::Protocol(e.to_string())))?;
        let Some((frame, used)) = decoded else {
            break;
        };
        match frame {
            Frame::Ack { next_seq } => {
                let mut released = 0usize;
                let mut messages = 0u64;
                let mut bytes = 0u64;
                while flight.base_seq < next_seq {
                    let Some((_, payload)) = flight.unacked.pop_front() else {
                        return Err(StreamFailure::Fatal(SendError::Protocol(
                            "acknowledgement beyond what was sent".into(),
                        )));
                    };
                    released += cost(&payload) as usize;
                    messages += 1;
                    bytes += payload.len() as u64;
                    flight.base_seq += 1;
                }
                if released > 0 {
                    outbound.window.add_permits(released);
                    stats.count_acked(messages, bytes);
                    advanced = true;
                }
            }
            Frame::Close { code, reason } => {
                // Acknowledgements before the close still count.
                if advanced {
                    publish_resolved(outbound, flight);
                }
                return Err(close_error(code, reason, &outbound.target));
            }
            _ => {
                return Err(StreamFailure::Fatal(SendError::Protocol(
                    "unexpected frame from receiver".into(),
                )))
            }
        }
        let _ = flight.read_buf.split_to(used);
    }
    if advanced {
        publish_resolved(outbound, flight);
    }
    Ok(advanced)
}

fn publish_resolved(outbound: &Outbound, flight: &Flight) {
    let resolved_below = match flight.unacked.front() {
        Some((ticket, _)) => *ticket,
        None => {
            let queue = lock(&outbound.queue);
            queue
                .items
                .front()
                .map_or(queue.next_ticket, |(ticket, _)| *ticket)
        }
    };
    outbound.progress.send_if_modified(|progress| {
        if progress.resolved_below < resolved_below {
            progress.resolved_below = resolved_below;
            true
        } else {
            false
        }
    });
}

/// Opens a stream and presents the capability. On success `flight.read_buf` holds whatever the
/// receiver sent after its `Accept` (acknowledgements, or a `Close`).
async fn open_stream(
    outbound: &Outbound,
    node: &Arc<NodeInner>,
    flight: &mut Flight,
) -> Result<OpenStream, StreamFailure> {
    flight.read_buf.clear();
    let peer = outbound.target.node();
    let link = connection::connect_link(node, peer, outbound.target.hints())
        .await
        .map_err(|error| dial_failure(node, peer, error))?;
    let (mut send, mut recv) = link
        .connection
        .open_bi()
        .await
        .map_err(|e| connection_error(&e))?;
    match present(outbound, node, flight, &mut send, &mut recv).await {
        Ok(peer_max) => Ok(OpenStream {
            send,
            recv,
            peer_max,
            superseded: Box::pin(link.superseded.clone().cancelled_owned()),
            link,
        }),
        Err(error) => {
            let _ = send.reset(code(ErrorCode::DONE));
            Err(error)
        }
    }
}

/// What a failed dial means for the run. A target that was reachable within `outbox_ttl` is
/// waited for (its messages stay in the outbox, and the node keeps dialing); one that was
/// not, or whose own answer will not change (another identity, another protocol version, a
/// refusal), fails the run now.
fn dial_failure(
    node: &NodeInner,
    peer: crate::identity::NodeId,
    error: DialError,
) -> StreamFailure {
    let worth_waiting = match &error {
        DialError::NodeClosed => return StreamFailure::Fatal(SendError::NodeClosed),
        DialError::TooManyConnections => true,
        DialError::WrongNode { .. }
        | DialError::IncompatibleVersion
        | DialError::Refused(_)
        | DialError::NoAddress(_)
        | DialError::Undialable { .. } => false,
        DialError::Timeout | DialError::Failed(_) | DialError::NoRoute { .. } => {
            node.peers.reached_within(&peer, node.config.outbox_ttl)
        }
    };
    if worth_waiting {
        StreamFailure::Retry(SendError::Unreachable(error))
    } else {
        StreamFailure::Fatal(SendError::Unreachable(error))
    }
}

/// Writes the stream kind and `Open`, and reads the receiver's answer: its maximum message
/// size, or why it refused.
async fn present(
    outbound: &Outbound,
    node: &NodeInner,
    flight: &mut Flight,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<usize, StreamFailure> {
    let mut head = vec![StreamKind::Mailbox as u8];
    frame::put_frame(
        &mut head,
        &Frame::Open(Box::new(Open {
            target: outbound.target.without_hints(),
            from: outbound.from.clone(),
            epoch: flight.epoch,
            first_seq: flight.base_seq,
        })),
    );
    send.write_all(&head).await.map_err(write_failure)?;
    let buf = &mut flight.read_buf;
    let answer = tokio::time::timeout(node.config.open_timeout, async {
        loop {
            if let Some((frame, used)) = frame::decode_frame(buf, frame::MAX_CONTROL_FRAME_LEN)
                .map_err(|e| StreamFailure::Fatal(SendError::Protocol(e.to_string())))?
            {
                let answer = match frame {
                    Frame::Accept { max_message } => {
                        Ok(usize::try_from(max_message).unwrap_or(usize::MAX))
                    }
                    Frame::Close { code, reason } => {
                        Err(close_error(code, reason, &outbound.target))
                    }
                    _ => Err(StreamFailure::Fatal(SendError::Protocol(
                        "expected accept or close".into(),
                    ))),
                };
                buf.advance(used);
                return answer;
            }
            match recv.read_chunk(frame::MAX_CONTROL_FRAME_LEN, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) => {
                    return Err(StreamFailure::Retry(SendError::Protocol(
                        "stream ended before accept".into(),
                    )))
                }
                Err(error) => return Err(read_error(error)),
            }
        }
    })
    .await
    .map_err(|_| StreamFailure::Retry(SendError::Timeout))?;
    answer
}

fn close_error(code: ErrorCode, reason: &str, target: &Address) -> StreamFailure {
    let fatal = match code {
        ErrorCode::NO_SUCH_MAILBOX => SendError::NoSuchMailbox,
        ErrorCode::FORGED => SendError::Forged,
        ErrorCode::EXPIRED => SendError::Expired(target.expires().unwrap_or(0)),
        ErrorCode::WRONG_NODE => SendError::WrongNode,
        ErrorCode::TOO_LARGE | ErrorCode::PROTOCOL | ErrorCode::FROM_MISMATCH => {
            SendError::Protocol(format!("receiver closed the stream: {reason}"))
        }
        _ => {
            return StreamFailure::Retry(SendError::Protocol(format!(
                "receiver closed the stream ({}): {reason}",
                code.0
            )))
        }
    };
    StreamFailure::Fatal(fatal)
}

fn connection_error(error: &quinn::ConnectionError) -> StreamFailure {
    if let quinn::ConnectionError::ApplicationClosed(close) = error {
        if close.error_code == ConnCode::ADMISSION_REFUSED.into() {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            return StreamFailure::Fatal(SendError::Unreachable(DialError::Refused(reason)));
        }
    }
    StreamFailure::Retry(SendError::Unreachable(DialError::Failed(error.to_string())))
}

fn write_failure(error: quinn::WriteError) -> StreamFailure {
    match error {
        quinn::WriteError::ConnectionLost(error) => connection_error(&error),
        quinn::WriteError::Stopped(code) if code == self::code(ErrorCode::NOT_ADMITTED) => {
            not_admitted()
        }
        other => StreamFailure::Retry(SendError::Unreachable(DialError::Failed(other.to_string()))),
    }
}

fn not_admitted() -> StreamFailure {
    StreamFailure::Fatal(SendError::Unreachable(DialError::Refused(
        "node not admitted".into(),
    )))
}

fn read_error(error: quinn::ReadError) -> StreamFailure {
    match error {
        quinn::ReadError::ConnectionLost(error) => connection_error(&error),
        quinn::ReadError::Reset(code) if code == self::code(ErrorCode::NOT_ADMITTED) => {
            not_admitted()
        }
        other => StreamFailure::Retry(SendError::Unreachable(DialError::Failed(other.to_string()))),
    }
}

/// Ends the conversation if nothing is queued. Returns whether it ended.
fn close_if_idle(outbound: &Arc<Outbound>, node: &NodeInner) -> bool {
    let mut map = lock(&node.conversations);
    let mut queue = lock(&outbound.queue);
    if !queue.items.is_empty() {
        return false;
    }
    queue.closed = true;
    if map
        .get(&outbound.key)
        .is_some_and(|current| Arc::ptr_eq(current, outbound))
    {
        map.remove(&outbound.key);
    }
    outbound.window.close();
    true
}

/// Ends the conversation, failing every message not yet acknowledged with `error`.
fn fail_all(outbound: &Arc<Outbound>, node: &NodeInner, flight: &mut Flight, error: SendError) {
    debug!(%error, "conversation failed");
    node.stats.count_send_failure(&error);
    {
        let mut map = lock(&node.conversations);
        let mut queue = lock(&outbound.queue);
        queue.closed = true;
        queue.items.clear();
        if map
            .get(&outbound.key)
            .is_some_and(|current| Arc::ptr_eq(current, outbound))
        {
            map.remove(&outbound.key);
        }
    }
    flight.unacked.clear();
    outbound.window.close();
    outbound.progress.send_modify(|progress| {
        progress.fatal = Some(error);
    });
}

/// Waits until no conversation has messages in flight, or `grace` passes.
pub(crate) async fn drain(node: &NodeInner, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        let pending: Vec<Arc<Outbound>> = lock(&node.conversations).values().cloned().collect();
        let busy = pending.iter().any(|outbound| {
            let progress = outbound.progress.borrow();
            let queue = lock(&outbound.queue);
            progress.fatal.is_none() && progress.resolved_below < queue.next_ticket
        });
        if !busy || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
