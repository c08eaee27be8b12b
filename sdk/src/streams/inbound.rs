//! The receiving side of mailbox streams: checks the capability once when the stream opens,
//! then delivers messages in order into the target mailbox and acknowledges them cumulatively.
//! Waiting for room in a full mailbox stops reading the stream, so QUIC flow control slows
//! that one sender and no other.
//!
//! Limits against hostile senders (docs/SECURITY.md): the opening frame must arrive within
//! `open_timeout`, each later frame within `frame_timeout` of waiting once it has begun, no
//! frame may announce more than `max_message_size` + 1 bytes, and the bytes a stream holds in
//! its buffer count against its peer's `max_buffered_per_peer` and the node's
//! `max_buffered_bytes`.
// Frames come from any peer: no input may panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt as _;
use tracing::debug;

use crate::address::{Address, Limit, MailboxId, Usage};
use crate::frame::{self, ErrorCode, Frame, Open};
use crate::identity::NodeId;
use crate::net::limits::{Held, OverBudget, PeerGuard};
use crate::registry::dedup::DedupKey;
use crate::registry::mailboxes::{
    durable_counters, Authorized, Budget, Caps, Durable, Ended, Message, OpenMailbox,
};
use crate::registry::queue::{MailboxQueue, PushError};
use crate::runtime::Runtime;
use crate::store::RunId;
use ferry_proto::receiver::{Incoming, Receiver, RunState, Violation};

/// Bytes read from a mailbox stream at once at most.
const READ_MAX: usize = 64 * 1024;

/// The most messages of one read that room is made for up front (the rest grow it).
const PENDING_PRESIZE_MAX: usize = 1024;

/// Lets the application, woken by the hand-over, run before the acknowledgement is written,
/// so that the acknowledgement can leave in one packet with the application's reply instead of
/// costing a packet of its own.
///
/// On a current-thread runtime the task goes to the back of the run queue. An application that
/// is a task runs before it: the conversation's task that writes the reply (woken by the
/// application) and then quinn's connection driver (woken by the acknowledgement's write)
/// queue behind it, so both frames are in the connection when the driver builds the packet.
/// An application that is the runtime's `block_on` future is polled only once the run queue
/// is empty: if the mailbox still holds what was handed over, the task waits until then too
/// (`yield_now` defers it), and the application's next message goes out with the
/// acknowledgement. On the multi-thread runtime a task put back in the run queue makes tokio
/// wake an idle worker, and the tasks it woke run from the LIFO slot ahead of the queue
/// anyway, so there it always waits until its worker has nothing else to run.
async fn let_the_application_run_first(on_current_thread: bool, queue: &MailboxQueue<Message>) {
    if on_current_thread {
        let mut requeued = false;
        std::future::poll_fn(|cx| {
            if requeued {
                std::task::Poll::Ready(())
            } else {
                requeued = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await;
        if queue.len() == 0 {
            return;
        }
    }
    tokio::task::yield_now().await;
}

/// Ends a stream that [`serve`] returned a refusal for: its CLOSE frame, then FIN.
pub(crate) async fn close(send: &mut quinn::SendStream, Refusal { code, reason }: Refusal) {
    refuse(send, code, &reason).await;
}

/// Why a mailbox stream ends with a CLOSE frame.
#[derive(Debug)]
pub(crate) struct Refusal {
    code: ErrorCode,
    reason: Cow<'static, str>,
}

impl Refusal {
    fn new(code: ErrorCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    fn revoked() -> Self {
        Self::new(ErrorCode::REVOKED, REVOKED)
    }

    fn mailbox_closed() -> Self {
        Self::new(ErrorCode::NO_SUCH_MAILBOX, "mailbox closed")
    }

    fn shutting_down() -> Self {
        Self::new(ErrorCode::SHUTTING_DOWN, "node shutting down")
    }
}

impl From<Ended> for Refusal {
    fn from(ended: Ended) -> Self {
        match ended {
            Ended::Revoked => Self::revoked(),
            Ended::ShuttingDown => Self::shutting_down(),
        }
    }
}

/// A protocol violation by the peer: it counts against the peer, and ends the stream.
fn violation(
    node: &Runtime,
    guard: &PeerGuard,
    code: ErrorCode,
    reason: Cow<'static, str>,
) -> Refusal {
    guard.violation(&node.net, &reason);
    Refusal::new(code, reason)
}

/// The key of a run's duplicate state: the peer and the stream's `run`.
fn dedup_key(peer: NodeId, (from, target, epoch): (MailboxId, MailboxId, u64)) -> DedupKey {
    (peer, from, target, epoch)
}

/// Serves one mailbox stream opened by `guard.peer`, the stream kind byte already read, from
/// its OPEN frame to its end: `Ok` when it ends without a CLOSE frame to write (the sender
/// finished it, or it failed), else why to [`close`] it.
///
/// The future's size is what every idle conversation costs its receiving node (BENCHMARKS.md,
/// memory), so its state is kept small: the CLOSE frame is written by the caller, once, not at
/// each exit (each kept room of its own in the future for the stream's whole life); rare waits
/// are boxed; one wait covers revocation and shutdown; and it borrows what the stream's task
/// owns instead of holding a second copy of it.
pub(crate) async fn serve(
    node: &Arc<Runtime>,
    guard: &PeerGuard,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    open_deadline: tokio::time::Instant,
) -> Result<(), Refusal> {
    let peer = guard.peer;
    let mut held = Held::new(node.buffered.clone(), guard.buffered.clone());
    // In a block of its own, so that the OPEN frame and the checks' results are gone before
    // the stream's first wait instead of kept in its future (see `serve`).
    let (revoked, mailbox, grant, limits, from, run, expires, first_seq, mut unread) = {
        let mut buf = BytesMut::new();
        // Boxed: read once per stream, it would otherwise keep its room in the future for the
        // stream's life.
        let open = match Box::pin(read_open(recv, &mut buf, open_deadline)).await {
            Ok(open) => open,
            // An opener that gives up early resets its stream: no violation.
            Err((code, reason)) if reason == ENDED_BEFORE_OPEN => {
                return Err(Refusal::new(code, reason));
            }
            Err((code, reason)) => return Err(violation(node, guard, code, reason.into())),
        };
        let authorized = authorize(node, peer, &open).map_err(|(code, reason)| {
            if code == ErrorCode::FROM_MISMATCH {
                guard.violation(&node.net, &reason);
            }
            Refusal::new(code, reason)
        })?;
        let revoked = authorized.revoked_or(node.cancel.clone());
        let Authorized {
            mailbox,
            grant,
            limits,
        } = authorized;
        let Open {
            target,
            from,
            epoch,
            first_seq,
        } = open;
        // Without the peer (the guard has it): this is kept for the stream's whole life.
        let run = (from.mailbox(), target.mailbox(), epoch);
        let expires = target.effective_expiry();
        // The bytes read and not taken yet (here, messages pipelined after the OPEN; between
        // reads, the start of a frame): each message's payload is a slice of them. Appended
        // to through `writable` (see `Receiver::next`).
        let unread = buf.freeze();
        (
            revoked, mailbox, grant, limits, from, run, expires, first_seq, unread,
        )
    };
    // Resolves once the grant is revoked or the node shuts down: the stream then ends with
    // REVOKED or SHUTTING_DOWN wherever it waits (for the sender, for room in the mailbox, for
    // a rate window, for room in a store).
    tokio::pin!(revoked);
    let dedup = node
        .dedup
        .entry(dedup_key(guard.peer, run), node.config.max_dedup_entries);
    // Messages reserved under the counting caveats but not (yet) delivered: given back if the
    // stream ends before they are.
    let mut reserved = Reserved {
        caps: &mailbox.caps,
        limits: &limits,
        count: 0,
    };
    // Asked once per stream: the answer takes a clone of the runtime's handle.
    let on_current_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
    });
    // Each frame this task writes is encoded where it is written, in a scope of its own, not
    // into a buffer kept for the stream's life: every idle stream would keep that buffer, and
    // a local borrowed across a wait keeps its room in every later state of the future.
    {
        let accept = frame::encode(&Frame::Accept {
            max_message: node.config.max_message_size as u64,
        });
        if send.write_all(&accept).await.is_err() {
            return Ok(());
        }
    }
    // Messages pipelined after the OPEN (docs/PROTOCOL.md §5.6) are held like any read.
    hold(node, &mut held, unread.len())?;
    let mut receiver = {
        let mut state = dedup.lock().await;
        if state.next_seq.is_none() {
            if let Some(durable) = &mailbox.durable {
                // After a restart only the store knows how far this run got.
                state.next_seq = durable
                    .store
                    .delivered(durable.mailbox, run_of(&dedup_key(guard.peer, run)))
                    .map_err(|error| Refusal::new(ErrorCode::STORE_FAILED, error.to_string()))?;
            }
        }
        Receiver::open(first_seq, node.config.max_message_size, &mut state)
    };
    // Messages delivered from the buffer and not yet handed over: to the mailbox's queue, all
    // of one read together (one hand-over to the application per read, not one per message),
    // or for a durable mailbox to its store first. Handed over before every wait and every
    // exit, so none is ever held across one. (One vector for both: it lives across the
    // stream's waits, and every byte of the stream's future is kept by each idle stream.)
    let mut pending: Vec<Message> = Vec::new();
    // Time spent waiting for the rest of the frame the buffer holds the start of.
    let mut waited = std::time::Duration::ZERO;
    loop {
        if expires.is_some_and(|at| node.clock.unix_now() >= at) {
            return Err(Refusal::new(ErrorCode::EXPIRED, "address expired"));
        }
        if mailbox.queue.mailbox_closed.is_set() {
            return Err(Refusal::mailbox_closed());
        }
        if mailbox.caps.is_revoked(grant) {
            return Err(Refusal::revoked());
        }
        // Set when a counting caveat ends the stream after what was delivered is acknowledged.
        let mut exhausted = None;
        // Deliver every complete frame in the buffer, then acknowledge them together.
        {
            let mut state = dedup.lock().await;
            let frames = receiver.frames_hint(&unread).min(PENDING_PRESIZE_MAX);
            pending.reserve(frames);
            // Given back before each wait below (for a rate window, for room in a full
            // mailbox): other streams may need it meanwhile.
            let mut room = mailbox.queue.room(frames);
            'frames: loop {
                let incoming = match receiver.next(&mut unread, &state) {
                    Ok(Some(incoming)) => incoming,
                    Ok(None) => break,
                    Err(Violation { code, reason }) => {
                        // What came before is delivered (and not acknowledged).
                        hand_over(node, &mailbox, &mut pending);
                        return Err(violation(node, guard, code, reason.into()));
                    }
                };
                waited = std::time::Duration::ZERO;
                let Incoming::Message { seq, payload } = incoming else {
                    continue; // already delivered on an earlier stream
                };
                // A grant revoked while this batch is delivered: what came before is
                // acknowledged, nothing from here on is delivered.
                if mailbox.caps.is_revoked(grant) {
                    exhausted = Some((ErrorCode::REVOKED, REVOKED, seq));
                    break;
                }
                // Only messages delivered for the first time are counted: a resent duplicate
                // was skipped above. (An address without counting caveats has nothing to count.)
                while !limits.is_empty() {
                    match mailbox.caps.reserve(&limits, || node.clock.unix_now()) {
                        Ok(()) => break,
                        Err(Budget::Wait(secs)) => {
                            hand_over(node, &mailbox, &mut pending);
                            drop(room);
                            let pause = std::time::Duration::from_secs(secs.clamp(1, 3600));
                            // Boxed: a rate window is rare, and its wait would otherwise keep
                            // room in every stream's future.
                            Box::pin(wait_for_budget(&mailbox, revoked.as_mut(), pause)).await?;
                            room = mailbox.queue.room(1);
                        }
                        Err(Budget::Exhausted) => {
                            exhausted = Some((ErrorCode::EXHAUSTED, "address budget used up", seq));
                            break 'frames;
                        }
                        Err(Budget::TooManyCounters) => {
                            exhausted = Some((ErrorCode::LIMIT, "too many counters", seq));
                            break 'frames;
                        }
                    }
                }
                reserved.count += 1;
                let message = Message {
                    from: from.clone(),
                    payload,
                    receipt: None,
                };
                if mailbox.durable.is_some() {
                    pending.push(message);
                    continue;
                }
                match room.reserve(&mut pending, message) {
                    Ok(()) => {}
                    Err(PushError::Closed(_)) => return Err(Refusal::mailbox_closed()),
                    Err(PushError::Full(message)) => {
                        // What is pending goes first: the application makes room by taking
                        // it. Not acknowledged yet: a revocation while this one waits for
                        // room drops it.
                        hand_over(node, &mailbox, &mut pending);
                        drop(room);
                        Box::pin(enqueue_or_revoked(
                            node,
                            &mailbox,
                            message,
                            revoked.as_mut(),
                        ))
                        .await?;
                        room = mailbox.queue.room(1);
                    }
                }
                reserved.count -= 1;
                receiver.delivered(&mut state, seq + 1);
            }
            drop(room);
            hand_over(node, &mailbox, &mut pending);
            if let Some(durable) = &mailbox.durable {
                if !pending.is_empty() {
                    let batch = std::mem::take(&mut pending)
                        .into_iter()
                        .map(|message| (message.from, message.payload))
                        .collect();
                    // Boxed: only durable mailboxes store, and a store write is no small
                    // future to keep in every stream's.
                    let stored = Box::pin(store_and_acknowledge(
                        StoreBatch {
                            node,
                            mailbox: &mailbox,
                            durable,
                            run: run_of(&dedup_key(guard.peer, run)),
                            limits: &limits,
                            receiver: &mut receiver,
                            state: &mut state,
                            reserved: &mut reserved,
                            send: &mut *send,
                        },
                        batch,
                        revoked.as_mut(),
                    ))
                    .await?;
                    if stored == Acked::NotSent {
                        return Ok(());
                    }
                }
            }
        }
        // Only the start of a frame is left: this is what the stream holds.
        let _ = held.set(unread.len());
        if unread.is_empty() {
            // No reference to the last read's buffer: an idle conversation holds none.
            unread = Bytes::new();
        }
        if let Some((code, reason, seq)) = exhausted {
            // Acknowledge what was delivered before the message that is refused, then end.
            if let Some(next_seq) = receiver.ack_until(seq) {
                let ack = frame::AckFrame::new(next_seq);
                if send.write_all(&ack).await.is_err() {
                    return Ok(());
                }
            }
            return Err(Refusal::new(code, reason));
        }
        if let Some(next_seq) = receiver.ack() {
            let_the_application_run_first(on_current_thread, &mailbox.queue).await;
            let ack = frame::AckFrame::new(next_seq);
            if send.write_all(&ack).await.is_err() {
                return Ok(());
            }
        }
        // A frame that has begun must be complete within frame_timeout of waiting for it.
        let frame_deadline = (!unread.is_empty()).then(|| {
            tokio::time::Instant::now() + node.config.frame_timeout.saturating_sub(waited)
        });
        let waiting = tokio::time::Instant::now();
        // A read ready at once found data waiting, so more may be waiting too (taken below); a
        // read that had to wait was woken by what just came.
        let (chunk, ready_at_once) = tokio::select! {
            read = ReadyAtOnce::new(recv.read_chunk(READ_MAX, true)) => read,
            // An idle stream under a revoked grant ends at once, not at its next message; so
            // does every stream when the node shuts down.
            ended = &mut revoked => return Err(ended.into()),
            _ = timer_or_never(frame_deadline.map(|at| Box::pin(tokio::time::sleep_until(at)))) => {
                let reason = "frame not completed within frame_timeout";
                return Err(violation(node, guard, ErrorCode::TIMEOUT, reason.into()));
            }
        };
        if frame_deadline.is_some() {
            waited += waiting.elapsed();
        }
        match chunk {
            Ok(Some(chunk)) => {
                // Bound the buffer: a partial frame never exceeds one maximum frame.
                let max_frame = node.config.max_message_size + 1;
                let needed = unread.len() + chunk.bytes.len();
                if needed > max_frame + frame::MAX_VARINT_LEN + READ_MAX {
                    return Err(violation(
                        node,
                        guard,
                        ErrorCode::TOO_LARGE,
                        "frame too large".into(),
                    ));
                }
                let mut buf = ferry_proto::receiver::writable(std::mem::take(&mut unread), needed);
                buf.extend_from_slice(&chunk.bytes);
                // The streams of a connection share its packets, so one read is often this
                // stream's piece of one packet: when data was waiting, what else has arrived is
                // taken now, without waiting, so that it costs one acknowledgement (and one
                // store write) instead of one per piece. Only up to READ_MAX: the bound above
                // holds.
                while ready_at_once && buf.len() < READ_MAX {
                    match recv.read_chunk(READ_MAX - buf.len(), true).now_or_never() {
                        Some(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
                        // Nothing more yet, or the end (which the next read reports again).
                        Some(Ok(None)) | None => break,
                        // Reported once (quinn reads past a reset as the end): handled as a
                        // failed read, so unacknowledged messages are sent again.
                        Some(Err(error)) => {
                            debug!(%error, "mailbox stream ended");
                            return Ok(());
                        }
                    }
                }
                hold(node, &mut held, buf.len())?;
                unread = buf.freeze();
            }
            Ok(None) => {
                if let Err(Violation { code, reason }) = receiver.finished(&unread) {
                    return Err(violation(node, guard, code, reason.into()));
                }
                node.dedup.remove(&dedup_key(guard.peer, run));
                if let Some(durable) = &mailbox.durable {
                    durable
                        .store
                        .end_run(durable.mailbox, run_of(&dedup_key(guard.peer, run)));
                }
                let _ = send.finish();
                return Ok(());
            }
            Err(error) => {
                debug!(%error, "mailbox stream ended");
                return Ok(());
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A future's output, and whether it was ready when first polled (nothing to wait for).
    struct ReadyAtOnce<F> {
        #[pin]
        inner: F,
        polled: bool,
    }
}

impl<F> ReadyAtOnce<F> {
    fn new(inner: F) -> Self {
        Self {
            inner,
            polled: false,
        }
    }
}

impl<F: Future> Future for ReadyAtOnce<F> {
    type Output = (F::Output, bool);

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let first = !std::mem::replace(this.polled, true);
        this.inner.poll(cx).map(|output| (output, first))
    }
}

/// The run a stream's dedup key names: derived, not kept beside the key in every stream's
/// future.
fn run_of(&(node, from, _target, epoch): &DedupKey) -> RunId {
    RunId {
        node,
        mailbox: from,
        epoch,
    }
}

/// Waits `pause` for a rate window of the address's caveats to open again.
async fn wait_for_budget(
    mailbox: &OpenMailbox,
    revoked: Pin<&mut impl Future<Output = Ended>>,
    pause: std::time::Duration,
) -> Result<(), Refusal> {
    tokio::select! {
        _ = tokio::time::sleep(pause) => Ok(()),
        _ = mailbox.queue.mailbox_closed.wait() => Err(Refusal::mailbox_closed()),
        // Also the node's shutdown (`Authorized::revoked_or`).
        ended = revoked => Err(ended.into()),
    }
}

/// What a durable stream's store write needs of the stream.
struct StoreBatch<'a, 's> {
    node: &'a Runtime,
    mailbox: &'a OpenMailbox,
    durable: &'a Arc<Durable>,
    run: RunId,
    limits: &'a [Limit],
    receiver: &'a mut Receiver,
    state: &'a mut RunState,
    reserved: &'a mut Reserved<'s>,
    send: &'a mut quinn::SendStream,
}

/// Whether the acknowledgement of a stored batch went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acked {
    Sent,
    NotSent,
}

/// Stores `batch` in a durable mailbox, waiting for room in its store while it is full,
/// acknowledges what is stored (from then on it survives), then queues it in the mailbox.
async fn store_and_acknowledge(
    stream: StoreBatch<'_, '_>,
    mut batch: Vec<(Address, Bytes)>,
    mut revoked: Pin<&mut impl Future<Output = Ended>>,
) -> Result<Acked, Refusal> {
    let StoreBatch {
        node,
        mailbox,
        durable,
        run,
        limits,
        receiver,
        state,
        reserved,
        send,
    } = stream;
    let counters = durable_counters(limits);
    let mut first = receiver.seq() - batch.len() as u64;
    while !batch.is_empty() {
        let stored = durable
            .store(Some((run, first)), batch.clone(), counters.clone())
            .await
            .map_err(|error| Refusal::new(ErrorCode::STORE_FAILED, error.to_string()))?;
        if stored.is_empty() {
            // The mailbox's store is full: not reading slows this sender until the
            // application acknowledges messages.
            tokio::select! {
                _ = tokio::time::sleep(STORE_FULL_RETRY) => continue,
                _ = mailbox.queue.mailbox_closed.wait() => return Err(Refusal::mailbox_closed()),
                // Not stored, so not acknowledged: the sender sees REVOKED.
                // Also the node's shutdown (`Authorized::revoked_or`).
                ended = &mut revoked => return Err(ended.into()),
            }
        }
        batch.drain(..stored.len());
        first += stored.len() as u64;
        // Stored and counted by the store: delivered.
        reserved.count = reserved.count.saturating_sub(stored.len() as u64);
        // Stored: from here on the messages survive, so they are acknowledged now, before
        // they wait for room in the mailbox's queue.
        receiver.delivered(state, first);
        let ack = frame::AckFrame::new(receiver.ack_stored(first));
        // The ACK may not go out (the sender reset or stopped the stream, or the connection is
        // gone). The batch is stored and the run counts it as delivered all the same — the
        // run's next stream skips it as duplicates — so it still goes to the mailbox's queue,
        // and the stream ends after.
        let acked = send.write_all(&ack).await.is_ok();
        tokio::select! {
            _ = durable.replayed.cancelled() => {}
            _ = node.cancel.cancelled() => return Err(Refusal::shutting_down()),
        }
        let mut queued = Vec::new();
        let mut room = mailbox.queue.room(stored.len());
        for message in stored {
            // Stored messages are delivered when the mailbox opens again.
            match room.reserve(&mut queued, message) {
                Ok(()) => {}
                Err(PushError::Closed(_)) => return Err(Refusal::mailbox_closed()),
                Err(PushError::Full(message)) => {
                    queue_all(node, mailbox, &mut queued);
                    enqueue(node, mailbox, message).await?;
                }
            }
        }
        drop(room);
        queue_all(node, mailbox, &mut queued);
        if !acked {
            return Ok(Acked::NotSent);
        }
    }
    Ok(Acked::Sent)
}

/// Messages charged to an address's counting caveats but not delivered: given back when the
/// stream ends, so that a count says exactly how many were delivered.
struct Reserved<'a> {
    caps: &'a Caps,
    limits: &'a [Limit],
    count: u64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.caps.release(self.limits, self.count);
    }
}

/// Records that the stream holds `len` bytes; beyond the peer's or the node's budget the stream
/// is cut off with LIMIT.
fn hold(node: &Runtime, held: &mut Held, len: usize) -> Result<(), Refusal> {
    held.set(len).map_err(|over| {
        node.stats.count_stream_cut_off();
        let reason = match over {
            OverBudget::Peer => "this peer's buffered bytes reached max_buffered_per_peer",
            OverBudget::Node => "the node's buffered bytes reached max_buffered_bytes",
        };
        Refusal::new(ErrorCode::LIMIT, reason)
    })
}

/// Waits for `timer`, or forever if there is none. The timer is boxed: a frame left half-read
/// is rare, and a timer kept in every idle stream's future is not.
async fn timer_or_never(timer: Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.await,
        None => std::future::pending().await,
    }
}

/// How often a full durable mailbox is tried again.
const STORE_FULL_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Queues `message` in the mailbox, waiting for room (which stops reading the stream, so only
/// this sender slows down).
async fn enqueue(node: &Runtime, mailbox: &OpenMailbox, message: Message) -> Result<(), Refusal> {
    let len = message.payload.len();
    tokio::select! {
        queued = mailbox.queue.push(message) => queued.map_err(|_| Refusal::mailbox_closed())?,
        _ = mailbox.queue.mailbox_closed.wait() => return Err(Refusal::mailbox_closed()),
        _ = node.cancel.cancelled() => return Err(Refusal::shutting_down()),
    };
    node.stats.count_bytes_in(len);
    node.stats.count_messages_in(1);
    Ok(())
}

/// [`enqueue`] for a message not acknowledged yet: a revocation while it waits drops it.
async fn enqueue_or_revoked(
    node: &Runtime,
    mailbox: &OpenMailbox,
    message: Message,
    revoked: Pin<&mut impl Future<Output = Ended>>,
) -> Result<(), Refusal> {
    tokio::select! {
        queued = enqueue(node, mailbox, message) => queued,
        ended = revoked => Err(ended.into()),
    }
}

/// Queues the messages `pending` holds (each with its room taken) in the mailbox's queue —
/// unless the mailbox is durable: its pending messages are not stored yet, and go to its store
/// first (then to its queue, see [`store_and_acknowledge`]).
fn hand_over(node: &Runtime, mailbox: &OpenMailbox, pending: &mut Vec<Message>) {
    if mailbox.durable.is_none() {
        queue_all(node, mailbox, pending);
    }
}

/// Queues `messages` (each with its room taken) in the mailbox's queue as one batch, and counts
/// them (once per batch: the node's counters are shared by every stream).
fn queue_all(node: &Runtime, mailbox: &OpenMailbox, messages: &mut Vec<Message>) {
    if !messages.is_empty() {
        let bytes = messages.iter().map(|message| message.payload.len()).sum();
        node.stats.count_bytes_in(bytes);
        node.stats.count_messages_in(messages.len() as u64);
        mailbox.queue.hand_over(messages);
    }
}

const ENDED_BEFORE_OPEN: &str = "stream ended before open";

async fn read_open(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<Open, (ErrorCode, String)> {
    let read = async {
        loop {
            match frame::decode_frame(buf, frame::MAX_OPENING_FRAME_LEN) {
                Ok(Some((Frame::Open(open), used))) => {
                    buf.advance(used);
                    return Ok(*open);
                }
                Ok(Some(_)) => return Err((ErrorCode::PROTOCOL, "expected open frame".into())),
                Ok(None) => {}
                Err(error) => return Err((ErrorCode::PROTOCOL, error.to_string())),
            }
            match recv.read_chunk(frame::MAX_OPENING_FRAME_LEN, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => return Err((ErrorCode::PROTOCOL, ENDED_BEFORE_OPEN.into())),
            }
        }
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or_else(|_| Err((ErrorCode::TIMEOUT, "no open frame in time".into())))
}

fn authorize(node: &Runtime, peer: NodeId, open: &Open) -> Result<Authorized, (ErrorCode, String)> {
    if open.from.node() != peer {
        return Err((
            ErrorCode::FROM_MISMATCH,
            "from address is not the sending node's".into(),
        ));
    }
    node.authorize(&open.target, &peer, Usage::Messages)
        .map_err(|error| (error.wire_code(), error.to_string()))
}

/// The reason sent with REVOKED.
const REVOKED: &str = "address revoked";

/// Ends a stream whose grant was revoked (PROTOCOL.md §4.11).
pub(crate) async fn refuse_revoked(send: &mut quinn::SendStream) {
    refuse(send, ErrorCode::REVOKED, REVOKED).await;
}

pub(crate) async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, reason: &str) {
    debug!(code = code.0, reason, "closing mailbox stream");
    let mut out = Vec::with_capacity(reason.len() + 16);
    frame::put_frame(&mut out, &Frame::Close { code, reason });
    if send.write_all(&out).await.is_ok()
        && send.finish().is_ok()
        && code == ErrorCode::SHUTTING_DOWN
    {
        // Shutdown closes the connection next; wait (briefly) until the peer has the frames.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
    }
}
