//! The sending side of one conversation run (docs/PROTOCOL.md §6.3) as a state machine: the
//! epoch and sequence numbers, the messages written but not acknowledged, cumulative ACKs,
//! resending everything unacknowledged on a new stream, the send timeout and the outbox
//! deadline, probing a stalled path, and ending the run when it is idle.
//!
//! It does no IO and reads no clock. The runtime feeds it events — messages queued, a stream
//! opened or lost, bytes read from the stream, the time passing — and carries out the
//! [`Action`]s it asks for: open a stream and write the OPEN frame it gives, write bytes,
//! reset or finish the stream, probe the path, dial again, and tell the waiting senders which
//! messages were acknowledged or why they failed.
//!
//! ```text
//!            push ──► queued ──(small, pipelined after OPEN; or after ACCEPT: Write)──►
//!              └──(the stream is open and nothing is queued: Write)─────────────────────►
//!                         unacked ──(ACK n)──► Resolved
//!  Open ─► opened ─► (ACCEPT) Open ──────────────────────────────── stream lost ─► Open again,
//!                                                                    resending unacked
//! ```
// Frames come from the receiver: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::address::Address;
use crate::frame::{self, ErrorCode, Frame, Open, StreamKind};

/// A message's place among everything queued on its conversation: 0, 1, 2, … in queue order.
pub type Ticket = u64;

/// Bytes a message costs against the send window on top of its payload, so floods of tiny
/// messages are bounded too.
pub const MESSAGE_OVERHEAD: usize = 32;
/// Time without an acknowledgement, with messages outstanding, after which the path is probed.
pub const STALL_AFTER: Duration = Duration::from_millis(300);
/// The pause between probes of a path that does not answer.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Time the probes of a stalled path may go unanswered before the peer is dialed again (its
/// address, or this node's, may have changed).
pub const REDIAL_AFTER: Duration = Duration::from_secs(1);
/// The pause between probes of a path that answers but whose receiver does not acknowledge
/// (it is slow, or its mailbox is full).
pub const SLOW_RECEIVER_PROBE: Duration = Duration::from_secs(1);
/// Upper bound of the pause between attempts to open a stream.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Upper bound of the pause after a failed dial: the dial itself tried every route for up to
/// `dial_timeout`, each again every half second.
pub const MAX_REDIAL_PAUSE: Duration = Duration::from_millis(250);

/// The encoded length of the MESSAGE frames of `messages`, so that a batch's buffer is sized
/// once rather than grown (and copied) while they are written.
fn frames_len<'a>(messages: impl Iterator<Item = &'a (Ticket, Bytes)>) -> usize {
    messages
        .map(|(_, payload)| frame::message_frame_len(payload.len()))
        .sum()
}

/// The most a write's buffer is sized up front beyond its first message.
const PREALLOCATE_MAX: usize = 256 * 1024;

/// The cost of a message against the send window.
pub fn cost(payload_len: usize) -> usize {
    payload_len + MESSAGE_OVERHEAD
}

/// The timeouts a run obeys (the node's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderConfig {
    /// Without progress for this long while messages are outstanding, the run fails.
    pub send_timeout: Duration,
    /// For a target that cannot be reached (and was reachable lately), how long messages wait.
    pub outbox_ttl: Duration,
    /// An idle stream is finished after this long; an idle run ends.
    pub stream_idle_timeout: Duration,
    /// The receiver's answer to OPEN must arrive within this long.
    pub open_timeout: Duration,
}

/// Why a run ended before every message was acknowledged. `E` is the runtime's error for a
/// stream or a connection that could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunFailure<E> {
    /// The target could not be reached: the error of the last attempt.
    Unreachable(E),
    /// No progress within `send_timeout`.
    Timeout,
    /// The receiver closed the stream with a code that retrying cannot change.
    Closed {
        /// The code.
        code: ErrorCode,
        /// The receiver's reason.
        reason: String,
    },
    /// The receiver broke the protocol.
    Protocol(String),
    /// A failure the runtime found final (e.g. the node was refused).
    Fatal(E),
    /// The node is shutting down.
    NodeClosed,
}

/// What the runtime is asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<E> {
    /// Get a connection to the target (dialing if needed), open a stream on it, and write
    /// these bytes (the stream kind and OPEN); then report [`Sender::opened`], or
    /// [`Sender::open_failed`].
    Open(Vec<u8>),
    /// Write these bytes to the stream; a failure is [`Sender::stream_failed`].
    Write(Vec<u8>),
    /// Reset the stream with this code and forget it (the run goes on, or failed).
    Reset(ErrorCode),
    /// Finish the stream (the run is over and its epoch will not be used again).
    Finish,
    /// Probe the path of the stream's connection and report [`Sender::probed`].
    Probe,
    /// Dial the target again in the background (the path stopped answering).
    Redial,
    /// Every message with a ticket below `below` is acknowledged. `messages` and `bytes`
    /// (payload bytes) were acknowledged just now.
    Acknowledged {
        /// The first ticket not acknowledged.
        below: Ticket,
        /// How many messages this acknowledgement covered.
        messages: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// The message `ticket` is larger than the receiver takes; it was not sent.
    TooLarge {
        /// The message.
        ticket: Ticket,
        /// Its size.
        size: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The run failed: every message not acknowledged fails with this. (Boxed: the failure is
    /// rare and large, and every conversation keeps room for a few actions.)
    Failed(Box<RunFailure<E>>),
    /// The run is idle: it ends unless messages are queued (then push them).
    Idle,
}

/// How a stream or a connection was lost, as the runtime classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Trying again may help.
    Retry,
    /// Trying again will not help (e.g. the node is not admitted).
    Fatal,
}

#[derive(Debug)]
enum Stream {
    /// No stream; opening one is due at `retry_at`.
    None,
    /// The runtime is opening a stream ([`Action::Open`] was given, with the `early` messages
    /// after the OPEN).
    Requested { early: Early },
    /// OPEN and the `early` messages written; waiting for ACCEPT since `since`.
    Presented { since: Instant, early: Early },
    /// ACCEPT read: messages flow.
    Open { peer_max: usize },
}

/// The messages a stream carries before its ACCEPT (pipelined after the OPEN): the receiver
/// takes them before it said how large messages may be, if each is at most
/// [`frame::EARLY_MESSAGE_MAX`] bytes and together at most [`frame::EARLY_BYTES`].
#[derive(Debug, Clone, Copy)]
struct Early {
    /// How many: the first `sent` unacknowledged messages.
    sent: usize,
    /// Payload bytes that may still go.
    budget: usize,
}

impl Default for Early {
    fn default() -> Self {
        Self {
            sent: 0,
            budget: frame::EARLY_BYTES,
        }
    }
}

impl Early {
    /// Whether a payload of `len` bytes may go before the ACCEPT; if so, it is counted.
    fn take(&mut self, len: usize) -> bool {
        let fits = len <= frame::EARLY_MESSAGE_MAX && len <= self.budget;
        if fits {
            self.budget -= len;
        }
        fits
    }
}

/// Probing a stalled path.
#[derive(Debug, Default)]
struct Stall {
    next_probe: Option<Instant>,
    unanswered_since: Option<Instant>,
    redialed: bool,
}

/// The last reason a stream could not be had, for the error the run fails with.
#[derive(Debug)]
enum LastError<E> {
    None,
    /// Boxed: rare, and kept by every run, parked ones included.
    Unreachable(Box<E>),
    Other,
}

/// A quiet run ([`Sender::is_quiet`]) kept without the room of its queues, buffers and
/// actions, all empty: a node keeps one for every idle conversation, so it holds only what
/// the run needs to go on and cannot find elsewhere (its configuration, target and sender
/// address are given back to [`ParkedSender::resume`] by the runtime, which keeps them for the
/// conversation anyway). [`Sender::park`] makes it; [`ParkedSender::resume`] gives back a run
/// that does exactly what the parked one would have done.
#[derive(Debug)]
pub struct ParkedSender<E> {
    epoch: u64,
    base_seq: u64,
    next_ticket: Ticket,
    /// The receiver's limit if a stream is open (ACCEPT read); none otherwise. At most
    /// `u32::MAX`: a larger limit allows every message, as no message is larger than a node's
    /// `max_message_size` (at most 1 GiB).
    peer_max: Option<u32>,
    last_activity: Instant,
    retry_at: Instant,
    attempts: u32,
    was_busy: bool,
    /// Boxed unless none: rare.
    last_error: Option<Box<LastError<E>>>,
    rng: u64,
}

impl<E> ParkedSender<E> {
    /// The ticket the next pushed message must carry.
    pub fn next_ticket(&self) -> Ticket {
        self.next_ticket
    }

    /// When the parked run ends unless a message comes first: what
    /// [`Sender::poll_timeout`] said when it parked, under the `config` it was made with.
    pub fn idle_end(&self, config: &SenderConfig) -> Instant {
        self.last_activity + config.stream_idle_timeout
    }

    /// The run again, as it was parked, with the `config`, `target` and `from` it was made
    /// with ([`Sender::new`]). Its progress counts from its last activity: nothing was
    /// outstanding while it was parked, and the next message pushed starts the count anew.
    pub fn resume(self, config: Arc<SenderConfig>, target: Address, from: Address) -> Sender<E> {
        Sender {
            config,
            target,
            from,
            epoch: self.epoch,
            base_seq: self.base_seq,
            unacked: VecDeque::new(),
            queued: VecDeque::new(),
            next_ticket: self.next_ticket,
            stream: match self.peer_max {
                Some(peer_max) => Stream::Open {
                    peer_max: peer_max as usize,
                },
                None => Stream::None,
            },
            read_buf: BytesMut::new(),
            last_progress: self.last_activity,
            last_activity: self.last_activity,
            was_busy: self.was_busy,
            attempts: self.attempts,
            retry_at: self.retry_at,
            last_error: self.last_error.map_or(LastError::None, |error| *error),
            stall: Stall::default(),
            rng: self.rng,
            actions: VecDeque::new(),
            ended: false,
        }
    }
}

/// One conversation run's sending side.
#[derive(Debug)]
pub struct Sender<E> {
    /// Shared by a node's runs: every parked run keeps its state machine.
    config: Arc<SenderConfig>,
    target: Address,
    from: Address,
    epoch: u64,
    /// Sequence number of `unacked.front()`.
    base_seq: u64,
    unacked: VecDeque<(Ticket, Bytes)>,
    queued: VecDeque<(Ticket, Bytes)>,
    /// The ticket the next pushed message must carry.
    next_ticket: Ticket,
    stream: Stream,
    read_buf: BytesMut,
    last_progress: Instant,
    last_activity: Instant,
    was_busy: bool,
    attempts: u32,
    retry_at: Instant,
    last_error: LastError<E>,
    stall: Stall,
    rng: u64,
    actions: VecDeque<Action<E>>,
    ended: bool,
}

impl<E: Clone> Sender<E> {
    /// A run from `from` to `target` (the OPEN carries its core or capability fields, never its
    /// hints, so it is kept as given: no copy per run) with a random `epoch`, begun at
    /// `now`; `seed` seeds the jitter of its retry pauses.
    pub fn new(
        config: Arc<SenderConfig>,
        target: Address,
        from: Address,
        epoch: u64,
        seed: u64,
        now: Instant,
    ) -> Self {
        Self {
            config,
            target,
            from,
            epoch,
            base_seq: 0,
            unacked: VecDeque::new(),
            queued: VecDeque::new(),
            next_ticket: 0,
            stream: Stream::None,
            read_buf: BytesMut::new(),
            last_progress: now,
            last_activity: now,
            was_busy: false,
            attempts: 0,
            retry_at: now,
            last_error: LastError::None,
            stall: Stall::default(),
            rng: seed | 1,
            actions: VecDeque::new(),
            ended: false,
        }
    }

    /// The run's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the run ended (failed, or idle and confirmed by [`Sender::end_idle`]).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Messages queued or written and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.unacked.len() + self.queued.len()
    }

    /// Whether the target cannot be reached now: the last attempt to open a stream failed to
    /// reach it, and no stream is open (the outbox's time applies).
    pub fn is_unreachable(&self) -> bool {
        !self.is_open() && matches!(self.last_error, LastError::Unreachable(_))
    }

    /// Whether the run has a stream on which ACCEPT was read.
    pub fn is_open(&self) -> bool {
        matches!(self.stream, Stream::Open { .. })
    }

    /// The next action for the runtime.
    pub fn poll_action(&mut self) -> Option<Action<E>> {
        self.actions.pop_front()
    }

    /// Queues a message; `ticket` must be the next one (0, 1, 2, …).
    pub fn push(&mut self, now: Instant, ticket: Ticket, payload: Bytes) {
        self.push_all(now, [(ticket, payload)]);
    }

    /// Queues messages in ticket order (each ticket the next one); one [`Action::Write`]
    /// carries all of them, where pushing them one by one would ask for a write each.
    pub fn push_all(&mut self, now: Instant, messages: impl IntoIterator<Item = (Ticket, Bytes)>) {
        if self.ended {
            return;
        }
        let mut messages = messages.into_iter().peekable();
        if messages.peek().is_none() {
            return;
        }
        if !self.busy() {
            self.last_progress = now;
            self.stall = Stall::default();
        }
        self.was_busy = true;
        match self.stream {
            // Nothing waits before them: straight onto the stream, without a stop in the queue.
            Stream::Open { peer_max } if self.queued.is_empty() => {
                self.write_messages(now, peer_max, messages);
            }
            _ => {
                for (ticket, payload) in messages {
                    debug_assert_eq!(ticket, self.next_ticket);
                    self.next_ticket = ticket + 1;
                    self.queued.push_back((ticket, payload));
                }
                match self.stream {
                    Stream::Open { peer_max } => self.write_queued(now, peer_max),
                    Stream::None => self.drive(now),
                    Stream::Presented { .. } => self.write_early_on_stream(now),
                    Stream::Requested { .. } => {}
                }
            }
        }
    }

    fn busy(&self) -> bool {
        !self.queued.is_empty() || !self.unacked.is_empty()
    }

    /// Whether the run only waits: nothing queued or unacknowledged, no action to take, no
    /// stream being opened. Until a message is pushed, what can happen to it is its idle end at
    /// [`Sender::poll_timeout`], or news from the stream (the receiver's CLOSE, a reset, a lost
    /// or superseded connection): the runtime may keep it without a task if either takes it
    /// up.
    pub fn is_quiet(&self) -> bool {
        !self.ended
            && !self.busy()
            && self.actions.is_empty()
            && matches!(self.stream, Stream::None | Stream::Open { .. })
    }

    /// The quiet run kept small (see [`ParkedSender`]); `Err(self)` if it is not quiet
    /// ([`Sender::is_quiet`]) or holds part of a frame read from the stream.
    #[allow(
        clippy::result_large_err,
        reason = "the run itself comes back, moved once per attempt to park"
    )]
    pub fn park(self) -> Result<ParkedSender<E>, Self> {
        if !self.is_quiet() || !self.read_buf.is_empty() {
            return Err(self);
        }
        // Listed in full, so that a field added to the run must be placed here too.
        let Sender {
            // Kept by the runtime, given back to `resume`.
            config: _,
            target: _,
            from: _,
            epoch,
            base_seq,
            unacked: _,
            queued: _,
            next_ticket,
            stream,
            read_buf: _,
            // Read only while messages are outstanding, and set by the next push.
            last_progress: _,
            last_activity,
            was_busy,
            attempts,
            retry_at,
            last_error,
            // Read only while messages are outstanding, and started over by the next push.
            stall: _,
            rng,
            actions: _,
            ended: _,
        } = self;
        let peer_max = match stream {
            Stream::Open { peer_max } => Some(u32::try_from(peer_max).unwrap_or(u32::MAX)),
            _ => None,
        };
        let last_error = match last_error {
            LastError::None => None,
            error => Some(Box::new(error)),
        };
        Ok(ParkedSender {
            epoch,
            base_seq,
            next_ticket,
            peer_max,
            last_activity,
            retry_at,
            attempts,
            was_busy,
            last_error,
            rng,
        })
    }

    /// The deadline of the run's progress: send_timeout after the last progress, or the
    /// outbox's time while the target cannot be reached. Opening a stream and writing into
    /// one are cut off there. Only meaningful while messages are outstanding
    /// ([`Sender::outstanding`]): a run with none makes no progress to count.
    pub fn deadline(&self) -> Instant {
        match self.last_error {
            LastError::Unreachable(_) if !self.is_open() => {
                self.last_progress + self.config.outbox_ttl.max(self.config.send_timeout)
            }
            _ => self.last_progress + self.config.send_timeout,
        }
    }

    /// When the runtime must call [`Sender::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let idle = self.last_activity + self.config.stream_idle_timeout;
        Some(match self.stream {
            Stream::None if self.busy() => self.retry_at.min(self.deadline()),
            Stream::None => idle,
            Stream::Requested { .. } => self.deadline(),
            Stream::Presented { since, .. } => {
                let opening = (since + self.config.open_timeout).min(self.deadline());
                self.stall.next_probe.map_or(opening, |at| at.min(opening))
            }
            Stream::Open { .. } if self.busy() => {
                let probe = self.stall.next_probe.filter(|_| !self.unacked.is_empty());
                probe.map_or(self.deadline(), |at| at.min(self.deadline()))
            }
            Stream::Open { .. } => idle,
        })
    }

    /// The time passed: deadlines, retries, probes, idleness.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        let busy = self.busy();
        if busy && now >= self.deadline() {
            // Without a stream, the last reason one could not be opened says most.
            let failure = match (&self.stream, &self.last_error) {
                (Stream::Open { .. }, _) => RunFailure::Timeout,
                (_, LastError::Unreachable(error)) => RunFailure::Unreachable((**error).clone()),
                _ => RunFailure::Timeout,
            };
            if matches!(self.stream, Stream::Open { .. } | Stream::Presented { .. }) {
                self.actions.push_back(Action::Reset(ErrorCode::TIMEOUT));
            }
            return self.fail(failure);
        }
        match self.stream {
            Stream::None if busy => {
                if now >= self.retry_at {
                    self.request_stream(now);
                }
            }
            Stream::None => {
                if now >= self.last_activity + self.config.stream_idle_timeout {
                    self.actions.push_back(Action::Idle);
                }
            }
            Stream::Requested { .. } => {}
            Stream::Presented { since, .. } => {
                if now >= since + self.config.open_timeout {
                    self.abandon();
                    self.retry_later(now, LastError::Other);
                } else if self.stall.next_probe.is_some_and(|at| now >= at) {
                    self.stall.next_probe = Some(now + PROBE_INTERVAL);
                    self.actions.push_back(Action::Probe);
                }
            }
            Stream::Open { .. } if busy => {
                if self
                    .stall
                    .next_probe
                    .is_some_and(|at| now >= at && !self.unacked.is_empty())
                {
                    self.stall.next_probe = Some(now + PROBE_INTERVAL);
                    self.actions.push_back(Action::Probe);
                }
            }
            Stream::Open { .. } => {
                if now >= self.last_activity + self.config.stream_idle_timeout {
                    self.actions.push_back(Action::Idle);
                }
            }
        }
    }

    /// The runtime ended the idle run (nothing was queued): finish the stream, if any.
    pub fn end_idle(&mut self) {
        if matches!(self.stream, Stream::Open { .. }) {
            self.actions.push_back(Action::Finish);
        }
        self.stream = Stream::None;
        self.ended = true;
    }

    /// Asks for a stream if messages wait and none is there.
    fn drive(&mut self, now: Instant) {
        if matches!(self.stream, Stream::None) && self.busy() && now >= self.retry_at {
            self.request_stream(now);
        }
    }

    /// Asks for a stream whose head is the OPEN and, pipelined after it, the first messages
    /// that every receiver takes before it said how large they may be (§5.6): a run's first
    /// message then costs one round trip, not two.
    fn request_stream(&mut self, now: Instant) {
        self.read_buf.clear();
        let mut head = vec![StreamKind::Mailbox as u8];
        frame::put_frame(
            &mut head,
            &Frame::Open(Box::new(Open {
                target: self.target.clone(),
                from: self.from.clone(),
                epoch: self.epoch,
                first_seq: self.base_seq,
            })),
        );
        let early = self.write_early(now, Early::default(), &mut head);
        self.stream = Stream::Requested { early };
        self.actions.push_back(Action::Open(head));
    }

    /// Appends to `out` the messages that may still go before the stream's ACCEPT, in order:
    /// first the unacknowledged ones not yet on this stream, then queued ones (which become
    /// unacknowledged). Stops at the first that does not fit, so order is kept.
    fn write_early(&mut self, now: Instant, mut early: Early, out: &mut Vec<u8>) -> Early {
        let before = out.len();
        while let Some((_, payload)) = self.unacked.get(early.sent) {
            if !early.take(payload.len()) {
                return early;
            }
            frame::put_frame(out, &Frame::Message(payload));
            early.sent += 1;
        }
        while self
            .queued
            .front()
            .is_some_and(|(_, payload)| early.take(payload.len()))
        {
            let Some((ticket, payload)) = self.queued.pop_front() else {
                break;
            };
            if self.unacked.is_empty() {
                self.last_progress = now;
            }
            frame::put_frame(out, &Frame::Message(&payload));
            self.unacked.push_back((ticket, payload));
            early.sent += 1;
        }
        if out.len() > before {
            self.last_activity = now;
        }
        early
    }

    /// Writes what may still go before the ACCEPT of a stream that waits for it.
    fn write_early_on_stream(&mut self, now: Instant) {
        if let Stream::Presented { since, early } = self.stream {
            let mut out = Vec::new();
            let early = self.write_early(now, early, &mut out);
            self.stream = Stream::Presented { since, early };
            if !out.is_empty() {
                self.actions.push_back(Action::Write(out));
            }
        }
    }

    /// The stream asked for is open and its OPEN written.
    pub fn opened(&mut self, now: Instant) {
        if let Stream::Requested { early } = self.stream {
            self.stream = Stream::Presented { since: now, early };
            // Messages pushed while the stream was being opened.
            self.write_early_on_stream(now);
            // An ACCEPT that does not come is a stall like a missing ACK: the path may have
            // died just after the OPEN went out, and QUIC's backed-off retransmissions would
            // notice its return seconds late.
            self.stall = Stall {
                next_probe: Some(now + STALL_AFTER),
                ..Stall::default()
            };
        }
    }

    /// No stream could be had (dial, connection or write failure). `unreachable`: the target
    /// node could not be reached (the outbox's time applies, not send_timeout).
    pub fn open_failed(&mut self, now: Instant, error: E, loss: Loss, unreachable: bool) {
        if self.ended {
            return;
        }
        self.stream = Stream::None;
        if loss == Loss::Fatal {
            return self.fail(RunFailure::Fatal(error));
        }
        let last = if unreachable {
            LastError::Unreachable(Box::new(error))
        } else {
            LastError::Other
        };
        self.retry_later(now, last);
    }

    /// Schedules the next opening attempt after a failure, with backoff.
    fn retry_later(&mut self, now: Instant, last: LastError<E>) {
        let pause = self.backoff();
        let pause = if matches!(last, LastError::Unreachable(_)) {
            pause.min(MAX_REDIAL_PAUSE)
        } else {
            pause
        };
        self.last_error = last;
        self.attempts = self.attempts.saturating_add(1);
        self.retry_at = now + pause;
        self.stream = Stream::None;
    }

    /// Full jitter in [base/2, base) with base = 25 ms · 2^min(n−1, 7), at most 2 s; none for
    /// the first retry.
    fn backoff(&mut self) -> Duration {
        if self.attempts == 0 {
            return Duration::ZERO;
        }
        let base = Duration::from_millis(25)
            .saturating_mul(1 << self.attempts.min(7))
            .min(MAX_BACKOFF);
        // xorshift64: the jitter needs spread, not secrecy.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let r = (self.rng >> 48) as u16;
        base / 2 + base.mul_f64(f64::from(r) / 131_072.0)
    }

    /// Bytes arrived on the stream.
    pub fn received(&mut self, now: Instant, bytes: &[u8]) {
        if self.ended || matches!(self.stream, Stream::None | Stream::Requested { .. }) {
            return;
        }
        self.read_buf.extend_from_slice(bytes);
        self.process(now);
    }

    /// The receiver finished its side of the stream (it never does while the run is on).
    pub fn stream_finished(&mut self, now: Instant) {
        if self.ended || matches!(self.stream, Stream::None) {
            return;
        }
        self.abandon();
        self.retry_later(now, LastError::Other);
    }

    /// Reading or writing the stream failed, or its connection was lost.
    pub fn stream_failed(&mut self, now: Instant, error: E, loss: Loss, unreachable: bool) {
        if self.ended || matches!(self.stream, Stream::None) {
            return;
        }
        self.actions.push_back(Action::Reset(ErrorCode::DONE));
        self.stream = Stream::None;
        if loss == Loss::Fatal {
            return self.fail(RunFailure::Fatal(error));
        }
        let last = if unreachable {
            LastError::Unreachable(Box::new(error))
        } else {
            LastError::Other
        };
        self.retry_later(now, last);
    }

    /// Another connection to the target took over: move the stream there at once.
    pub fn superseded(&mut self, now: Instant) {
        if self.ended || matches!(self.stream, Stream::None) {
            return;
        }
        self.abandon();
        self.attempts = 0;
        self.retry_at = now;
        self.drive(now);
    }

    /// What a probe found: `answered` if something arrived on the connection since the last
    /// probe (the path works; the receiver is slow).
    pub fn probed(&mut self, now: Instant, answered: bool) {
        if answered {
            self.stall.unanswered_since = None;
            self.stall.next_probe = Some(now + SLOW_RECEIVER_PROBE);
            return;
        }
        let since = *self.stall.unanswered_since.get_or_insert(now);
        if !self.stall.redialed && now.duration_since(since) >= REDIAL_AFTER {
            self.stall.redialed = true;
            self.actions.push_back(Action::Redial);
        }
    }

    /// The node shuts down: the run fails.
    pub fn shutdown(&mut self) {
        if !self.ended {
            self.fail(RunFailure::NodeClosed);
        }
    }

    /// Resets the stream without ending the run (never FIN: the receiver would forget the
    /// run's duplicate state).
    fn abandon(&mut self) {
        if !matches!(self.stream, Stream::None) {
            self.actions.push_back(Action::Reset(ErrorCode::DONE));
        }
        self.stream = Stream::None;
    }

    fn fail(&mut self, failure: RunFailure<E>) {
        self.queued.clear();
        self.unacked.clear();
        self.stream = Stream::None;
        self.ended = true;
        self.actions.push_back(Action::Failed(Box::new(failure)));
    }

    /// Handles the complete frames in the read buffer.
    fn process(&mut self, now: Instant) {
        loop {
            let decoded = match frame::decode_frame(&self.read_buf, frame::MAX_CONTROL_FRAME_LEN) {
                Ok(decoded) => decoded,
                Err(error) => return self.protocol(error.to_string()),
            };
            let Some((frame, used)) = decoded else {
                return;
            };
            match (&self.stream, frame) {
                (&Stream::Presented { early, .. }, Frame::Accept { max_message }) => {
                    let peer_max = usize::try_from(max_message).unwrap_or(usize::MAX);
                    self.read_buf.advance(used);
                    self.accepted(now, peer_max, early.sent);
                }
                (Stream::Open { .. }, Frame::Ack { next_seq }) => {
                    self.read_buf.advance(used);
                    if let Err(why) = self.acknowledge(now, next_seq) {
                        return self.protocol(why.into());
                    }
                }
                (Stream::Presented { .. } | Stream::Open { .. }, Frame::Close { code, reason }) => {
                    let reason = reason.to_owned();
                    return self.closed(now, code, reason);
                }
                (Stream::Presented { .. }, _) => {
                    return self.protocol("expected accept or close".into())
                }
                _ => return self.protocol("unexpected frame from receiver".into()),
            }
            if self.ended || !matches!(self.stream, Stream::Presented { .. } | Stream::Open { .. })
            {
                return;
            }
        }
    }

    fn protocol(&mut self, why: String) {
        self.actions.push_back(Action::Reset(ErrorCode::DONE));
        self.fail(RunFailure::Protocol(why));
    }

    /// ACCEPT: resend everything unacknowledged but the `early` messages the OPEN carried,
    /// then what is queued.
    fn accepted(&mut self, now: Instant, peer_max: usize, early: usize) {
        if !self.unacked.is_empty() && self.last_error_was_unreachable() {
            // Back in touch: the receiver gets send_timeout from now on.
            self.last_progress = now;
        }
        self.attempts = 0;
        self.last_error = LastError::None;
        self.stream = Stream::Open { peer_max };
        self.last_activity = now;
        self.stall = Stall {
            next_probe: Some(now + STALL_AFTER),
            ..Stall::default()
        };
        if self.unacked.len() > early {
            let mut out = Vec::with_capacity(frames_len(self.unacked.iter().skip(early)));
            for (_, payload) in self.unacked.iter().skip(early) {
                frame::put_frame(&mut out, &Frame::Message(payload));
            }
            self.actions.push_back(Action::Write(out));
        }
        self.write_queued(now, peer_max);
    }

    fn last_error_was_unreachable(&self) -> bool {
        matches!(self.last_error, LastError::Unreachable(_))
    }

    /// Moves queued messages into the stream.
    fn write_queued(&mut self, now: Instant, peer_max: usize) {
        if !self.queued.is_empty() {
            let queued = std::mem::take(&mut self.queued);
            self.write_messages(now, peer_max, queued.into_iter());
        }
    }

    /// Frames `messages` into one write; they become unacknowledged. Those beyond the peer's
    /// limit are refused instead.
    fn write_messages(
        &mut self,
        now: Instant,
        peer_max: usize,
        messages: impl Iterator<Item = (Ticket, Bytes)>,
    ) {
        if self.unacked.is_empty() {
            self.last_progress = now;
            self.stall.next_probe = Some(now + STALL_AFTER);
        }
        let count = messages.size_hint().0;
        let mut out = Vec::new();
        for (ticket, payload) in messages {
            // (Queued messages were counted when they were pushed.)
            debug_assert!(ticket <= self.next_ticket);
            self.next_ticket = self.next_ticket.max(ticket + 1);
            if payload.len() > peer_max {
                self.actions.push_back(Action::TooLarge {
                    ticket,
                    size: payload.len(),
                    max: peer_max,
                });
                continue;
            }
            if out.capacity() == 0 {
                // Sized as if the rest were alike, so that a batch of them is one allocation;
                // bounded, as one large message does not say the rest are.
                let len = frame::message_frame_len(payload.len());
                out.reserve(
                    len + count
                        .saturating_sub(1)
                        .saturating_mul(len)
                        .min(PREALLOCATE_MAX),
                );
            }
            frame::put_message(&mut out, &payload);
            self.unacked.push_back((ticket, payload));
        }
        self.last_activity = now;
        if out.is_empty() {
            self.resolve_below(0, 0);
        } else {
            self.actions.push_back(Action::Write(out));
        }
    }

    /// ACK(n): every message with seq below n is in the target mailbox.
    fn acknowledge(&mut self, now: Instant, next_seq: u64) -> Result<(), &'static str> {
        let mut messages = 0u64;
        let mut bytes = 0u64;
        while self.base_seq < next_seq {
            let Some((_, payload)) = self.unacked.pop_front() else {
                return Err("acknowledgement beyond what was sent");
            };
            messages += 1;
            bytes += payload.len() as u64;
            self.base_seq += 1;
        }
        if messages > 0 {
            self.last_progress = now;
            self.last_activity = now;
            self.stall = Stall {
                next_probe: Some(now + STALL_AFTER),
                ..Stall::default()
            };
            self.resolve_below(messages, bytes);
        }
        Ok(())
    }

    /// Publishes how far acknowledgement got: below the oldest unacknowledged message, or
    /// below the oldest queued one, or below the next ticket.
    fn resolve_below(&mut self, messages: u64, bytes: u64) {
        let below = self
            .unacked
            .front()
            .or(self.queued.front())
            .map_or(self.next_ticket, |(ticket, _)| *ticket);
        self.actions.push_back(Action::Acknowledged {
            below,
            messages,
            bytes,
        });
    }

    /// CLOSE from the receiver: ACKs before it already counted; codes that retrying cannot
    /// change fail the run, others abandon the stream and retry.
    fn closed(&mut self, now: Instant, code: ErrorCode, reason: String) {
        let final_code = crate::frame::Refusal::from_code(code).is_some()
            || matches!(
                code,
                ErrorCode::TOO_LARGE | ErrorCode::PROTOCOL | ErrorCode::FROM_MISMATCH
            );
        self.abandon();
        if final_code {
            self.fail(RunFailure::Closed { code, reason });
        } else {
            self.retry_later(now, LastError::Other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::MailboxId;
    use crate::identity::SecretKey;

    const CONFIG: SenderConfig = SenderConfig {
        send_timeout: Duration::from_secs(60),
        outbox_ttl: Duration::from_secs(600),
        stream_idle_timeout: Duration::from_secs(30),
        open_timeout: Duration::from_secs(10),
    };

    fn sender(now: Instant) -> Sender<&'static str> {
        let target = Address::mint(&SecretKey::generate(), MailboxId(1), None, vec![]);
        let from = Address::mint(&SecretKey::generate(), MailboxId(2), None, vec![]);
        Sender::new(Arc::new(CONFIG), target, from, 7, 1, now)
    }

    fn actions(sender: &mut Sender<&'static str>) -> Vec<Action<&'static str>> {
        std::iter::from_fn(|| sender.poll_action()).collect()
    }

    fn frame_bytes(frame: Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        frame::put_frame(&mut out, &frame);
        out
    }

    /// Opens the stream the sender asked for and accepts it.
    fn open(
        sender: &mut Sender<&'static str>,
        now: Instant,
        max: u64,
    ) -> Vec<Action<&'static str>> {
        let asked = actions(sender);
        assert!(matches!(asked.last(), Some(Action::Open(_))), "{asked:?}");
        sender.opened(now);
        sender.received(now, &frame_bytes(Frame::Accept { max_message: max }));
        actions(sender)
    }

    /// The receiver closes the stream with a code worth retrying: the sender resets it.
    fn close_retryably(s: &mut Sender<&'static str>, now: Instant) {
        s.received(
            now,
            &frame_bytes(Frame::Close {
                code: ErrorCode::SHUTTING_DOWN,
                reason: "bye",
            }),
        );
        assert_eq!(actions(s), vec![Action::Reset(ErrorCode::DONE)]);
    }

    /// The bytes an `Open` action's head carries after its kind byte and OPEN frame.
    fn after_open(head: &[u8]) -> &[u8] {
        let (frame, used) = frame::decode_frame(&head[1..], frame::MAX_CONTROL_FRAME_LEN)
            .unwrap()
            .unwrap();
        assert!(matches!(frame, Frame::Open(_)), "{frame:?}");
        &head[1 + used..]
    }

    #[test]
    fn messages_are_written_then_acknowledged_cumulatively() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        let written = open(&mut s, now, 2000);
        assert!(
            written.is_empty(),
            "the first message rode with the OPEN: {written:?}"
        );
        s.push(now, 1, Bytes::from_static(b"bb"));
        assert!(matches!(&actions(&mut s)[..], [Action::Write(_)]));
        s.received(now, &frame_bytes(Frame::Ack { next_seq: 2 }));
        assert_eq!(
            actions(&mut s),
            vec![Action::Acknowledged {
                below: 2,
                messages: 2,
                bytes: 3
            }]
        );
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn a_lost_stream_resends_everything_unacknowledged_from_the_base() {
        let now = Instant::now();
        let mut s = sender(now);
        for ticket in 0..3 {
            s.push(now, ticket, Bytes::from(vec![ticket as u8]));
        }
        open(&mut s, now, 100);
        s.received(now, &frame_bytes(Frame::Ack { next_seq: 1 }));
        actions(&mut s);
        s.stream_failed(now, "connection lost", Loss::Retry, false);
        assert_eq!(actions(&mut s), vec![Action::Reset(ErrorCode::DONE)]);
        // The first retry is immediate.
        s.handle_timeout(now);
        let asked = actions(&mut s);
        let Some(Action::Open(head)) = asked.first() else {
            panic!("{asked:?}")
        };
        let (opened, _) = frame::decode_frame(&head[1..], frame::MAX_CONTROL_FRAME_LEN)
            .unwrap()
            .unwrap();
        let Frame::Open(open_frame) = opened else {
            panic!("{opened:?}")
        };
        assert_eq!((open_frame.epoch, open_frame.first_seq), (7, 1));
        assert_eq!(
            after_open(head),
            &[0x02, 0x03, 0x01, 0x02, 0x03, 0x02],
            "messages 1 and 2 again, pipelined after the OPEN"
        );
        s.opened(now);
        s.received(now, &frame_bytes(Frame::Accept { max_message: 2000 }));
        assert_eq!(actions(&mut s), vec![], "nothing written twice");
    }

    #[test]
    fn small_messages_ride_with_the_open_and_large_ones_wait_for_the_accept() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from(vec![1u8; frame::EARLY_MESSAGE_MAX]));
        s.push(now, 1, Bytes::from(vec![2u8; frame::EARLY_MESSAGE_MAX + 1]));
        s.push(now, 2, Bytes::from_static(b"c"));
        let asked = actions(&mut s);
        let [Action::Open(head)] = &asked[..] else {
            panic!("{asked:?}")
        };
        let mut expected = Vec::new();
        frame::put_message_header(&mut expected, frame::EARLY_MESSAGE_MAX);
        expected.extend(vec![1u8; frame::EARLY_MESSAGE_MAX]);
        assert_eq!(
            after_open(head),
            &expected[..],
            "only the first: the second is too large to go before the ACCEPT, the third keeps \
             its place behind it"
        );
        s.opened(now);
        s.received(now, &frame_bytes(Frame::Accept { max_message: 4096 }));
        let written = actions(&mut s);
        let [Action::Write(bytes)] = &written[..] else {
            panic!("{written:?}")
        };
        let mut expected = Vec::new();
        frame::put_message_header(&mut expected, frame::EARLY_MESSAGE_MAX + 1);
        expected.extend(vec![2u8; frame::EARLY_MESSAGE_MAX + 1]);
        expected.extend([0x02, 0x03, b'c']);
        assert_eq!(bytes, &expected);
        s.received(now, &frame_bytes(Frame::Ack { next_seq: 3 }));
        assert_eq!(
            actions(&mut s),
            vec![Action::Acknowledged {
                below: 3,
                messages: 3,
                bytes: 2 * frame::EARLY_MESSAGE_MAX as u64 + 2
            }]
        );
    }

    #[test]
    fn what_rides_with_the_open_is_bounded() {
        let now = Instant::now();
        let mut s = sender(now);
        let each = frame::EARLY_MESSAGE_MAX;
        let count = frame::EARLY_BYTES / each + 3;
        s.push_all(
            now,
            (0..count as u64).map(|ticket| (ticket, Bytes::from(vec![0u8; each]))),
        );
        let asked = actions(&mut s);
        let [Action::Open(head)] = &asked[..] else {
            panic!("{asked:?}")
        };
        let early = after_open(head);
        let one = early.len() / (frame::EARLY_BYTES / each);
        assert_eq!(early.len() % one, 0);
        assert_eq!(early.len() / one, frame::EARLY_BYTES / each);
        s.opened(now);
        s.received(now, &frame_bytes(Frame::Accept { max_message: 4096 }));
        let written = actions(&mut s);
        let [Action::Write(rest)] = &written[..] else {
            panic!("{written:?}")
        };
        assert_eq!(rest.len(), 3 * one, "the rest after the ACCEPT, once");
    }

    #[test]
    fn messages_a_refused_stream_carried_go_again_on_the_next() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        actions(&mut s);
        s.opened(now);
        close_retryably(&mut s, now);
        assert_eq!(s.outstanding(), 1, "not acknowledged, so still owed");
        s.handle_timeout(now);
        let asked = actions(&mut s);
        let [Action::Open(head)] = &asked[..] else {
            panic!("{asked:?}")
        };
        assert_eq!(after_open(head), &[0x02, 0x03, b'a']);
    }

    #[test]
    fn no_progress_for_send_timeout_fails_the_run() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        open(&mut s, now, 100);
        let later = now + CONFIG.send_timeout;
        assert!(s.poll_timeout().unwrap() <= later);
        // Probes first, while waiting.
        s.handle_timeout(now + STALL_AFTER);
        assert_eq!(actions(&mut s), vec![Action::Probe]);
        s.handle_timeout(later);
        assert_eq!(
            actions(&mut s),
            vec![
                Action::Reset(ErrorCode::TIMEOUT),
                Action::Failed(Box::new(RunFailure::Timeout))
            ]
        );
        assert!(s.is_ended());
    }

    #[test]
    fn an_unreachable_target_gets_the_outbox_time() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        actions(&mut s);
        s.open_failed(now, "no route", Loss::Retry, true);
        assert!(s.poll_timeout().unwrap() <= now + MAX_REDIAL_PAUSE);
        s.handle_timeout(now + CONFIG.send_timeout);
        assert!(
            matches!(actions(&mut s)[..], [Action::Open(_)]),
            "still trying after send_timeout"
        );
        s.open_failed(now + CONFIG.send_timeout, "no route", Loss::Retry, true);
        s.handle_timeout(now + CONFIG.outbox_ttl);
        assert_eq!(
            actions(&mut s),
            vec![Action::Failed(Box::new(RunFailure::Unreachable(
                "no route"
            )))]
        );
    }

    #[test]
    fn a_fatal_close_fails_and_a_retryable_one_reopens() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        open(&mut s, now, 100);
        close_retryably(&mut s, now);
        s.handle_timeout(now);
        open(&mut s, now, 100);
        let mut both = frame_bytes(Frame::Ack { next_seq: 1 });
        both.extend(frame_bytes(Frame::Close {
            code: ErrorCode::NO_SUCH_MAILBOX,
            reason: "gone",
        }));
        s.push(now, 1, Bytes::from_static(b"b"));
        actions(&mut s);
        s.received(now, &both);
        assert_eq!(
            actions(&mut s),
            vec![
                Action::Acknowledged {
                    below: 1,
                    messages: 1,
                    bytes: 1
                },
                Action::Reset(ErrorCode::DONE),
                Action::Failed(Box::new(RunFailure::Closed {
                    code: ErrorCode::NO_SUCH_MAILBOX,
                    reason: "gone".into()
                }))
            ]
        );
    }

    #[test]
    fn an_ack_beyond_what_was_sent_is_a_protocol_violation() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        open(&mut s, now, 100);
        s.received(now, &frame_bytes(Frame::Ack { next_seq: 2 }));
        let actions = actions(&mut s);
        assert!(
            matches!(&actions[..], [Action::Reset(_), Action::Failed(failure)]
                if matches!(**failure, RunFailure::Protocol(_))),
            "{actions:?}"
        );
    }

    #[test]
    fn a_message_over_the_receivers_limit_fails_alone() {
        let now = Instant::now();
        let mut s = sender(now);
        // Larger than what may ride with the OPEN, so it waits for the receiver's limit.
        let large = frame::EARLY_MESSAGE_MAX + 10;
        s.push(now, 0, Bytes::from(vec![0u8; large]));
        s.push(now, 1, Bytes::from(vec![0u8; 2]));
        let written = open(&mut s, now, large as u64 - 5);
        assert!(
            matches!(
                &written[..],
                [
                    Action::TooLarge { ticket: 0, size, max },
                    Action::Write(_)
                ] if *size == large && *max == large - 5
            ),
            "{written:?}"
        );
        s.received(now, &frame_bytes(Frame::Ack { next_seq: 1 }));
        assert_eq!(
            actions(&mut s),
            vec![Action::Acknowledged {
                below: 2,
                messages: 1,
                bytes: 2
            }]
        );
    }

    #[test]
    fn unanswered_probes_lead_to_a_redial_once() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        open(&mut s, now, 100);
        let mut at = now + STALL_AFTER;
        let mut redials = 0;
        while at < now + STALL_AFTER + REDIAL_AFTER * 3 {
            s.handle_timeout(at);
            for action in actions(&mut s) {
                if action == Action::Probe {
                    s.probed(at, false);
                }
            }
            redials += actions(&mut s)
                .iter()
                .filter(|action| **action == Action::Redial)
                .count();
            at += PROBE_INTERVAL;
        }
        assert_eq!(redials, 1);
    }

    #[test]
    fn messages_pushed_together_go_out_in_one_write() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        open(&mut s, now, 100);
        s.push_all(
            now,
            (1..=3).map(|ticket| (ticket, Bytes::from(vec![ticket as u8]))),
        );
        let written = actions(&mut s);
        let [Action::Write(bytes)] = &written[..] else {
            panic!("{written:?}")
        };
        assert_eq!(
            bytes,
            &[0x02, 0x03, 0x01, 0x02, 0x03, 0x02, 0x02, 0x03, 0x03]
        );
        assert_eq!(s.outstanding(), 4);
    }

    #[test]
    fn a_stream_waiting_for_its_accept_probes_the_path_and_redials() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        let asked = actions(&mut s);
        assert!(matches!(asked.last(), Some(Action::Open(_))), "{asked:?}");
        s.opened(now);
        assert_eq!(s.poll_timeout(), Some(now + STALL_AFTER));
        let mut at = now + STALL_AFTER;
        let (mut probes, mut redials) = (0, 0);
        while at < now + STALL_AFTER + REDIAL_AFTER * 2 {
            s.handle_timeout(at);
            for action in actions(&mut s) {
                match action {
                    Action::Probe => {
                        probes += 1;
                        s.probed(at, false);
                    }
                    other => panic!("{other:?}"),
                }
            }
            redials += actions(&mut s)
                .iter()
                .filter(|action| **action == Action::Redial)
                .count();
            assert!(s.poll_timeout().unwrap() <= at + PROBE_INTERVAL);
            at += PROBE_INTERVAL;
        }
        assert!(probes >= 5, "{probes} probes");
        assert_eq!(redials, 1);
        // The ACCEPT arrives: messages flow, and the stall starts over.
        s.received(at, &frame_bytes(Frame::Accept { max_message: 2000 }));
        assert_eq!(actions(&mut s), vec![], "the message rode with the OPEN");
        s.push(at, 1, Bytes::from_static(b"b"));
        assert!(matches!(&actions(&mut s)[..], [Action::Write(_)]));
    }

    #[test]
    fn a_superseded_stream_moves_at_once() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        open(&mut s, now, 100);
        s.superseded(now);
        let moved = actions(&mut s);
        assert!(
            matches!(
                &moved[..],
                [Action::Reset(ErrorCode::DONE), Action::Open(_)]
            ),
            "{moved:?}"
        );
    }

    #[test]
    fn an_idle_run_ends_and_finishes_its_stream() {
        let now = Instant::now();
        let mut s = sender(now);
        s.push(now, 0, Bytes::from_static(b"a"));
        open(&mut s, now, 100);
        s.received(now, &frame_bytes(Frame::Ack { next_seq: 1 }));
        actions(&mut s);
        let idle = now + CONFIG.stream_idle_timeout;
        assert_eq!(s.poll_timeout(), Some(idle));
        s.handle_timeout(idle);
        assert_eq!(actions(&mut s), vec![Action::Idle]);
        s.end_idle();
        assert_eq!(actions(&mut s), vec![Action::Finish]);
        assert!(s.is_ended());
    }

    #[test]
    fn a_run_is_quiet_only_with_nothing_to_send_acknowledge_or_open() {
        let now = Instant::now();
        let mut s = sender(now);
        assert!(s.is_quiet(), "a new run waits for its first message");
        s.push(now, 0, Bytes::from_static(b"a"));
        assert!(!s.is_quiet(), "queued, and an Open to take");
        open(&mut s, now, 100);
        assert!(!s.is_quiet(), "written, not acknowledged");
        s.received(now, &frame_bytes(Frame::Ack { next_seq: 1 }));
        assert!(!s.is_quiet(), "the Acknowledged action is not taken yet");
        actions(&mut s);
        assert!(s.is_quiet());
        let (config, target, from) = (s.config.clone(), s.target.clone(), s.from.clone());
        let mut s = s.park().expect("quiet").resume(config, target, from);
        // Pushed again after a quiet spell: written on the same stream at once.
        s.push(now, 1, Bytes::from_static(b"b"));
        assert!(matches!(&actions(&mut s)[..], [Action::Write(_)]));
        s.handle_timeout(now + CONFIG.send_timeout);
        assert!(!s.is_quiet(), "failed");
    }

    /// What can happen to a run, for [`parking_changes_nothing_a_run_does`].
    #[derive(Debug, Clone)]
    enum Event {
        Push(usize),
        Opened,
        OpenFailed {
            unreachable: bool,
            fatal: bool,
        },
        Accept(u64),
        Ack(u64),
        Close {
            retryable: bool,
        },
        /// The first byte of a frame: the run holds a partial frame.
        PartOfAFrame,
        StreamFinished,
        StreamFailed {
            unreachable: bool,
            fatal: bool,
        },
        Superseded,
        Probed(bool),
        Wait(u64),
        Shutdown,
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0usize..3000).prop_map(Event::Push),
            2 => Just(Event::Opened),
            1 => (any::<bool>(), any::<bool>())
                .prop_map(|(unreachable, fatal)| Event::OpenFailed { unreachable, fatal }),
            2 => (1u64..4000).prop_map(Event::Accept),
            4 => (0u64..12).prop_map(Event::Ack),
            1 => any::<bool>().prop_map(|retryable| Event::Close { retryable }),
            1 => Just(Event::PartOfAFrame),
            1 => Just(Event::StreamFinished),
            1 => (any::<bool>(), any::<bool>())
                .prop_map(|(unreachable, fatal)| Event::StreamFailed { unreachable, fatal }),
            1 => Just(Event::Superseded),
            1 => any::<bool>().prop_map(Event::Probed),
            4 => prop_oneof![0u64..500, 0u64..40_000, 0u64..700_000].prop_map(Event::Wait),
            1 => Just(Event::Shutdown),
        ]
    }

    fn apply(s: &mut Sender<&'static str>, now: Instant, event: &Event, ticket: u64) {
        let loss = |fatal: bool| if fatal { Loss::Fatal } else { Loss::Retry };
        match *event {
            Event::Push(len) => s.push(now, ticket, Bytes::from(vec![7u8; len])),
            Event::Opened => s.opened(now),
            Event::OpenFailed { unreachable, fatal } => {
                s.open_failed(now, "unreachable", loss(fatal), unreachable)
            }
            Event::Accept(max) => s.received(now, &frame_bytes(Frame::Accept { max_message: max })),
            Event::Ack(next_seq) => s.received(now, &frame_bytes(Frame::Ack { next_seq })),
            Event::Close { retryable } => {
                let code = if retryable {
                    ErrorCode::SHUTTING_DOWN
                } else {
                    ErrorCode::NO_SUCH_MAILBOX
                };
                s.received(
                    now,
                    &frame_bytes(Frame::Close {
                        code,
                        reason: "bye",
                    }),
                )
            }
            Event::PartOfAFrame => s.received(now, &frame_bytes(Frame::Ack { next_seq: 3 })[..1]),
            Event::StreamFinished => s.stream_finished(now),
            Event::StreamFailed { unreachable, fatal } => {
                s.stream_failed(now, "lost", loss(fatal), unreachable)
            }
            Event::Superseded => s.superseded(now),
            Event::Probed(answered) => s.probed(now, answered),
            Event::Wait(_) => s.handle_timeout(now),
            Event::Shutdown => s.shutdown(),
        }
    }

    /// What the runtime and the senders see of a run.
    fn observed(s: &Sender<&'static str>) -> impl PartialEq + std::fmt::Debug {
        (
            s.poll_timeout(),
            (s.outstanding() > 0).then(|| s.deadline()),
            s.is_quiet(),
            s.is_ended(),
            s.is_open(),
            s.is_unreachable(),
            s.outstanding(),
            s.epoch(),
        )
    }

    proptest::proptest! {
        /// A run parked at every quiet moment and resumed does what the same run kept whole
        /// does: the same actions, timeouts and state, whatever happens to it.
        #[test]
        fn parking_changes_nothing_a_run_does(
            events in proptest::collection::vec(event(), 1..60),
        ) {
            let mut now = Instant::now();
            let target = Address::mint(&SecretKey::generate(), MailboxId(1), None, vec![]);
            let from = Address::mint(&SecretKey::generate(), MailboxId(2), None, vec![]);
            let config = Arc::new(CONFIG);
            let mut whole: Sender<&'static str> =
                Sender::new(config.clone(), target.clone(), from.clone(), 7, 1, now);
            let mut parked = Some(Sender::new(config.clone(), target.clone(), from.clone(), 7, 1, now));
            let mut ticket = 0;
            // A probe's outcome answers a Probe action, taken just before.
            let mut probe_asked = false;
            for event in &events {
                if matches!(event, Event::Probed(_)) && !std::mem::take(&mut probe_asked) {
                    continue;
                }
                if let Event::Wait(millis) = event {
                    now += Duration::from_millis(*millis);
                }
                let mut run = parked.take().expect("a run");
                apply(&mut whole, now, event, ticket);
                apply(&mut run, now, event, ticket);
                if matches!(event, Event::Push(_)) {
                    ticket += 1;
                }
                let mut taken = actions(&mut whole);
                proptest::prop_assert_eq!(&taken, &actions(&mut run), "after {:?}", event);
                // The runtime ends a run that says it is idle.
                if taken.contains(&Action::Idle) {
                    whole.end_idle();
                    run.end_idle();
                    taken = actions(&mut whole);
                    proptest::prop_assert_eq!(&taken, &actions(&mut run));
                }
                probe_asked = taken.contains(&Action::Probe);
                proptest::prop_assert_eq!(observed(&whole), observed(&run), "after {:?}", event);
                let quiet_until = run.poll_timeout();
                parked = Some(match run.park() {
                    Ok(quiet) => {
                        proptest::prop_assert_eq!(Some(quiet.idle_end(&config)), quiet_until);
                        proptest::prop_assert_eq!(quiet.next_ticket(), ticket);
                        quiet.resume(config.clone(), target.clone(), from.clone())
                    }
                    Err(run) => {
                        proptest::prop_assert!(!run.is_quiet() || !run.read_buf.is_empty());
                        run
                    }
                });
            }
        }
    }
}
