//! The streams of one WebTransport connection (docs/GATEWAY.md §13): the framing, the reader
//! (the control stream and every request stream, merged into one stream of frames for the
//! session's reader), and the writer (each frame on its lane: the control stream, the request
//! stream its `ref` came on, or a delivery stream of the gateway's).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use web_transport_quinn::{RecvStream, SendStream, Session};

use super::frame::{
    read_frame, write_frame, WireError, HEADER_TIMEOUT, RESET_STUCK, RESET_TOO_MANY_STREAMS,
    RESET_UNKNOWN_STREAM, STREAM_DELIVERIES, STREAM_REQUESTS,
};
use crate::gateway::connection::{Wire, Writing};
use crate::gateway::limits::{OutReceiver, Outgoing, Share};
use crate::gateway::protocol::{Encoded, ServerFrame};

/// The limits of one connection's streams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// Request streams open at once (those the client finished count no more).
    pub(crate) max_request_streams: usize,
    /// Delivery streams open at once (one per source, least recently used finished first).
    pub(crate) max_delivery_streams: usize,
    /// A delivery stream idle this long is finished.
    pub(crate) delivery_idle_timeout: Duration,
    /// Bytes each stream may hold on its own, beyond the connection's queue.
    pub(crate) lane_bytes: usize,
    /// Bytes all the streams of the connection may hold together, beyond its queue.
    pub(crate) connection_bytes: usize,
    /// How long a finished request stream waits for its answers.
    pub(crate) answer_timeout: Duration,
    /// The largest frame.
    pub(crate) max_message_size: usize,
}

/// What a queued frame holds until written: its share of the connection's queue, or (when its
/// lane and the connection's stream budget had room) its share of both of those.
#[derive(Debug)]
enum Held {
    Queue {
        _share: Option<Share>,
    },
    Lane {
        _own: OwnedSemaphorePermit,
        _shared: OwnedSemaphorePermit,
    },
}

/// A frame on its way to a stream, with the bytes it holds.
type Queued = (Encoded, Held);

/// A lane's sending end and its byte budget, within the connection's.
#[derive(Clone)]
struct LaneTx {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    connection: Arc<Semaphore>,
}

impl LaneTx {
    fn new(bytes: usize, connection: &Arc<Semaphore>) -> (Self, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(bytes.clamp(1, Semaphore::MAX_PERMITS)));
        let connection = connection.clone();
        (
            Self {
                tx,
                budget,
                connection,
            },
            rx,
        )
    }

    /// Hands `frame` to the lane. It moves from the connection's queue to the lane's budget
    /// and the connection's stream budget if both have room (so a stalled stream holds its
    /// own bytes, not the queue, and all the streams together no more than the connection's
    /// budget); else it keeps its share of the queue (a full queue is a slow consumer).
    fn send(&self, frame: Encoded, permit: Option<Share>, lane_bytes: usize) {
        let cost = u32::try_from(frame.len().clamp(1, lane_bytes.max(1))).unwrap_or(u32::MAX);
        let held = match self.budget.clone().try_acquire_many_owned(cost) {
            Ok(own) => match self.connection.clone().try_acquire_many_owned(cost) {
                Ok(shared) => Held::Lane {
                    _own: own,
                    _shared: shared,
                },
                Err(_) => Held::Queue { _share: permit },
            },
            Err(_) => Held::Queue { _share: permit },
        };
        // A lane that ended (its request stream was reset) drops the frame.
        let _ = self.tx.send((frame, held));
    }
}

/// A request stream's writing side, as the writer routes answers to it.
struct RequestLane {
    tx: LaneTx,
    /// Requests taken on it whose answers have not gone out.
    pending: usize,
    /// When the client finished its side: the lane ends once `pending` is 0, or
    /// `answer_timeout` after this.
    ended: Option<tokio::time::Instant>,
}

/// Which stream each answer goes to.
#[derive(Default)]
struct Routes {
    lanes: HashMap<u64, RequestLane>,
    /// The stream a `ref` came on last.
    by_ref: BTreeMap<u64, u64>,
    /// The connection is closing: no new lanes.
    closing: bool,
}

/// The most `ref`s remembered for routing (the oldest are forgotten beyond it; their answers
/// go to the control stream).
const MAX_ROUTES: usize = 4096;

impl Routes {
    fn settle(&mut self, stream: u64) {
        if let Some(lane) = self.lanes.get_mut(&stream) {
            lane.pending = lane.pending.saturating_sub(1);
            if lane.ended.is_some() && lane.pending == 0 {
                self.lanes.remove(&stream);
            }
        }
    }

    /// Request streams the client has not finished (what the limit counts).
    fn open(&self) -> usize {
        self.lanes.values().filter(|l| l.ended.is_none()).count()
    }

    /// Ends the lanes the client finished longer than `timeout` ago: their answers (if they
    /// ever come) go to the control stream.
    fn expire(&mut self, now: tokio::time::Instant, timeout: Duration) {
        self.lanes
            .retain(|_, lane| lane.ended.is_none_or(|at| now < at + timeout));
    }

    fn took(&mut self, reference: u64, stream: u64) {
        if let Some(old) = self.by_ref.insert(reference, stream) {
            self.settle(old);
        }
        if let Some(lane) = self.lanes.get_mut(&stream) {
            lane.pending += 1;
        }
        while self.by_ref.len() > MAX_ROUTES {
            if let Some((_, old)) = self.by_ref.pop_first() {
                self.settle(old);
            }
        }
    }

    fn ended(&mut self, stream: u64) {
        if let Some(lane) = self.lanes.get_mut(&stream) {
            lane.ended.get_or_insert_with(tokio::time::Instant::now);
            if lane.pending == 0 {
                self.lanes.remove(&stream);
            }
        }
    }

    /// The lane of the answer to `reference`, if its stream is still there.
    fn answer(&mut self, reference: u64) -> Option<LaneTx> {
        let stream = self.by_ref.remove(&reference)?;
        let tx = self.lanes.get(&stream).map(|lane| lane.tx.clone());
        self.settle(stream);
        tx
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the stream tasks hand to the session's reader.
enum Item {
    Frame(Message, Option<u64>),
    End(u64),
    Failed(WireError),
}

/// A WebTransport session with its control stream, ready to carry a gateway connection.
pub(crate) struct WebTransportWire {
    pub(crate) session: Session,
    pub(crate) control: (SendStream, RecvStream),
    pub(crate) limits: StreamLimits,
    /// What data streams (§13.11) need, and how many a session may have at once.
    pub(crate) data: Arc<super::data::DataContext>,
    pub(crate) max_data_streams: usize,
    /// Peers' data for the session (§13.12).
    pub(crate) incoming: mpsc::Receiver<crate::gateway::session::Incoming>,
    pub(crate) counters: Arc<crate::gateway::stats::WebTransportCounters>,
}

/// The session's reader: every client stream's frames, in the order they were read.
pub(crate) struct Reader {
    rx: mpsc::Receiver<Item>,
    routes: Arc<Mutex<Routes>>,
}

#[derive(serde::Deserialize)]
struct RefOnly {
    #[serde(rename = "ref")]
    reference: Option<serde_json::Value>,
}

/// The `ref` of a client frame, if it has an integer one.
fn reference_of(message: &Message) -> Option<u64> {
    let parsed: Option<RefOnly> = match message {
        Message::Text(text) => serde_json::from_str(text.as_str()).ok(),
        Message::Binary(bytes) => {
            let len = bytes.get(..4)?;
            let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
            serde_json::from_slice(bytes.get(4..4usize.checked_add(len)?)?).ok()
        }
        _ => None,
    };
    parsed?.reference?.as_u64()
}

impl futures::Stream for Reader {
    type Item = Result<Message, WireError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.rx.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Item::Failed(error))) => Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Item::End(stream))) => {
                    lock(&self.routes).ended(stream);
                    continue;
                }
                Poll::Ready(Some(Item::Frame(message, stream))) => {
                    if let (Some(stream), Some(reference)) = (stream, reference_of(&message)) {
                        lock(&self.routes).took(reference, stream);
                    }
                    Poll::Ready(Some(Ok(message)))
                }
            };
        }
    }
}

/// Closes the session once, with the first code given.
struct Closer {
    session: Session,
    closed: AtomicBool,
}

impl Closer {
    fn close(&self, code: u16, reason: &str) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.session.close(u32::from(code), reason.as_bytes());
        }
    }
}

impl Wire for WebTransportWire {
    type Reader = Reader;
    type Error = WireError;

    fn start(
        self,
        outgoing: OutReceiver,
        writing: Writing,
    ) -> (Self::Reader, tokio::task::JoinHandle<()>) {
        let Self {
            session,
            control: (control_send, control_recv),
            limits,
            data,
            max_data_streams,
            mut incoming,
            counters,
        } = self;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let data_streams = Arc::new(Semaphore::new(
            max_data_streams.clamp(1, Semaphore::MAX_PERMITS),
        ));
        let budget = Arc::new(Semaphore::new(
            limits.connection_bytes.clamp(1, Semaphore::MAX_PERMITS),
        ));
        let lanes = TaskTracker::new();
        let (tx, rx) = mpsc::channel(64);
        let done = writing.done.clone();
        let closer = Arc::new(Closer {
            session: session.clone(),
            closed: AtomicBool::new(false),
        });
        // The control stream's frames.
        tokio::spawn(read_stream(
            control_recv,
            None,
            tx.clone(),
            limits.max_message_size,
            done.clone(),
        ));
        // Streams the client opens.
        tokio::spawn(accept(
            session.clone(),
            tx.clone(),
            routes.clone(),
            lanes.clone(),
            limits,
            writing.write_timeout,
            done.clone(),
            counters,
            budget.clone(),
            (data.clone(), data_streams.clone()),
        ));
        // Peers' data: each on a stream the gateway opens, within the same limit.
        tokio::spawn({
            let (session, done) = (session.clone(), done.clone());
            async move {
                loop {
                    let next = tokio::select! {
                        () = done.cancelled() => return,
                        next = incoming.recv() => next,
                    };
                    let Some(next) = next else { return };
                    let Ok(permit) = data_streams.clone().try_acquire_owned() else {
                        next.refuse("the session has too many data streams under way");
                        continue;
                    };
                    tokio::spawn(super::data::serve_incoming(
                        data.clone(),
                        permit,
                        session.clone(),
                        next,
                        done.clone(),
                    ));
                }
            }
        });
        // The peer's liveness, for the session's idle check: the QUIC connection closes by
        // itself when nothing (not even an acknowledgement of the keep-alives) came for the
        // idle timeout, so while it is open the client is there.
        tokio::spawn({
            let (tx, done, session) = (tx, done.clone(), session.clone());
            let period = writing.ping_interval;
            async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                loop {
                    tokio::select! {
                        () = done.cancelled() => return,
                        _ = session.closed() => return,
                        _ = tick.tick() => {
                            if tx.send(Item::Frame(Message::Pong(Bytes::new()), None)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let writer = tokio::spawn(write(
            session,
            control_send,
            outgoing,
            writing,
            routes.clone(),
            lanes,
            limits,
            closer,
            budget,
        ));
        (Reader { rx, routes }, writer)
    }

    async fn abandon(self) {
        self.session.close(
            u32::from(crate::gateway::protocol::close::GOING_AWAY),
            b"closed",
        );
    }
}

/// Forwards a stream's frames to the reader; then its end (or the failure).
async fn read_stream(
    mut recv: RecvStream,
    stream: Option<u64>,
    tx: mpsc::Sender<Item>,
    max: usize,
    done: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            () = done.cancelled() => return,
            frame = read_frame(&mut recv, max) => frame,
        };
        let item = match item {
            Ok(Some(message)) => Item::Frame(message, stream),
            Ok(None) => match stream {
                Some(stream) => {
                    let _ = tx.send(Item::End(stream)).await;
                    return;
                }
                // The control stream finished: the client closed.
                None => Item::Frame(Message::Close(None), None),
            },
            Err(error) => match (stream, &error) {
                // A request stream the client reset: its requests are under way or answered.
                (Some(stream), WireError::Stream(_)) => Item::End(stream),
                _ => Item::Failed(error),
            },
        };
        let last = !matches!(item, Item::Frame(Message::Text(_) | Message::Binary(_), _));
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}

/// Accepts the streams the client opens: request streams (up to the limit), each with its
/// lane for answers. Unidirectional streams are refused (none is defined from the client).
#[allow(clippy::too_many_arguments)]
async fn accept(
    session: Session,
    tx: mpsc::Sender<Item>,
    routes: Arc<Mutex<Routes>>,
    lanes: TaskTracker,
    limits: StreamLimits,
    write_timeout: Duration,
    done: CancellationToken,
    counters: Arc<crate::gateway::stats::WebTransportCounters>,
    budget: Arc<Semaphore>,
    (data, data_streams): (Arc<super::data::DataContext>, Arc<Semaphore>),
) {
    let mut next_stream = 1u64;
    loop {
        let (mut send, mut recv) = tokio::select! {
            () = done.cancelled() => return,
            uni = session.accept_uni() => match uni {
                Ok(mut recv) => {
                    let _ = recv.stop(RESET_UNKNOWN_STREAM);
                    counters.refused_streams.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(_) => return,
            },
            bi = session.accept_bi() => match bi {
                Ok(pair) => pair,
                Err(_) => return,
            },
        };
        let stream = next_stream;
        next_stream += 1;
        let admitted = {
            let mut routes = lock(&routes);
            routes.expire(tokio::time::Instant::now(), limits.answer_timeout);
            if routes.closing || routes.open() >= limits.max_request_streams {
                None
            } else {
                let (lane_tx, lane_rx) = LaneTx::new(limits.lane_bytes, &budget);
                routes.lanes.insert(
                    stream,
                    RequestLane {
                        tx: lane_tx,
                        pending: 0,
                        ended: None,
                    },
                );
                Some(lane_rx)
            }
        };
        let Some(lane_rx) = admitted else {
            let _ = send.reset(RESET_TOO_MANY_STREAMS);
            let _ = recv.stop(RESET_TOO_MANY_STREAMS);
            counters.refused_streams.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        counters.streams.fetch_add(1, Ordering::Relaxed);
        let (tx, routes, done, counters, lanes) = (
            tx.clone(),
            routes.clone(),
            done.clone(),
            counters.clone(),
            lanes.clone(),
        );
        let (data, data_streams) = (data.clone(), data_streams.clone());
        tokio::spawn(async move {
            let mut header = [0u8; 1];
            let first = tokio::time::timeout(HEADER_TIMEOUT, recv.read_exact(&mut header)).await;
            match (first, header) {
                (Ok(Ok(())), [STREAM_REQUESTS]) => {}
                (Ok(Ok(())), [super::data::STREAM_DATA]) => {
                    // Not a request stream: it leaves the request streams' count.
                    lock(&routes).ended(stream);
                    drop(lane_rx);
                    let Ok(permit) = data_streams.try_acquire_owned() else {
                        let _ = send.reset(RESET_TOO_MANY_STREAMS);
                        let _ = recv.stop(RESET_TOO_MANY_STREAMS);
                        counters.refused_streams.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    super::data::serve(data, permit, send, recv, done).await;
                    return;
                }
                _ => {
                    let _ = recv.stop(RESET_UNKNOWN_STREAM);
                    lock(&routes).ended(stream);
                    counters.refused_streams.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            lanes.spawn(lane(
                LaneStream::Open(send),
                lane_rx,
                write_timeout,
                false,
                done.clone(),
                None,
            ));
            read_stream(recv, Some(stream), tx, limits.max_message_size, done).await;
        });
    }
}

/// A lane's stream: open, or to be opened (a delivery stream, on its first frame, once the
/// previous delivery stream of its source, if any, was wholly received).
enum LaneStream {
    Open(SendStream),
    Uni {
        session: Box<Session>,
        after: Option<CancellationToken>,
        ended: tokio_util::sync::DropGuard,
    },
}

/// Writes a lane's frames to its stream, each within `write_timeout` (else the connection is
/// a slow consumer); at the end of its channel, finishes the stream and waits (as long) for
/// the client to have it all. A failed write of a `fatal` lane (control, deliveries) ends the
/// connection; of a request stream (the client reset it), only the lane.
async fn lane(
    stream: LaneStream,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    write_timeout: Duration,
    fatal: bool,
    done: CancellationToken,
    stuck: Option<Arc<AtomicBool>>,
) {
    let fail = |is_stuck: bool| {
        if is_stuck && fatal {
            if let Some(stuck) = &stuck {
                stuck.store(true, Ordering::Relaxed);
            }
            done.cancel();
        } else if fatal {
            done.cancel();
        }
    };
    let mut _ended = None;
    let mut send = match stream {
        LaneStream::Open(send) => send,
        LaneStream::Uni {
            session,
            after,
            ended,
        } => {
            _ended = Some(ended);
            // Opened when there is something to send.
            let first = tokio::select! {
                () = done.cancelled() => return,
                first = rx.recv() => first,
            };
            let Some(first) = first else { return };
            // The source's previous stream first: the client has all of it before this one
            // starts, so a source's messages stay in order across its streams.
            if let Some(after) = after {
                tokio::select! {
                    () = done.cancelled() => return,
                    () = after.cancelled() => {}
                }
            }
            let opened = tokio::time::timeout(write_timeout, async {
                let mut send = session.open_uni().await.ok()?;
                send.write_all(&[STREAM_DELIVERIES]).await.ok()?;
                write_frame(&mut send, first.0).await.ok()?;
                Some(send)
            })
            .await;
            match opened {
                Ok(Some(send)) => send,
                Ok(None) => return fail(false),
                Err(_) => return fail(true),
            }
        }
    };
    loop {
        let item = tokio::select! {
            () = done.cancelled() => return,
            item = rx.recv() => item,
        };
        let Some((frame, permit)) = item else { break };
        match tokio::time::timeout(write_timeout, write_frame(&mut send, frame)).await {
            Ok(Ok(())) => drop(permit),
            Ok(Err(_)) => return fail(false),
            Err(_) => {
                // A request stream the client does not read: reset, the rest goes on (the
                // client sends its requests again and gets the answers from the journal).
                let _ = send.reset(RESET_STUCK);
                return fail(true);
            }
        }
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(write_timeout, send.stopped()).await;
}

#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    from: Option<String>,
    channel: Option<String>,
    user: Option<String>,
    push: Option<bool>,
}

/// Where a frame from the gateway goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Control,
    Answer(u64),
    /// A message, to the delivery stream of its source.
    Deliveries(Source),
}

/// The source of a message, whose messages share a delivery stream (in id order): a channel,
/// the user (messages to `{user}`), pushes, or a sender's conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Channel(String),
    User(String),
    Push,
    From(Option<String>),
}

fn route(frame: &Encoded) -> Route {
    let head: Option<Head> = match frame {
        Encoded::Text(text) => serde_json::from_str(text).ok(),
        Encoded::Binary(bytes) => bytes.get(..4).and_then(|len| {
            let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
            serde_json::from_slice(bytes.get(4..4usize.checked_add(len)?)?).ok()
        }),
    };
    let Some(head) = head else {
        return Route::Control;
    };
    match (head.kind.as_str(), head.reference) {
        ("ok" | "error", Some(reference)) => Route::Answer(reference),
        ("message", _) => Route::Deliveries(match (head.channel, head.user, head.push) {
            (Some(channel), _, _) => Source::Channel(channel),
            (None, Some(user), _) => Source::User(user),
            (None, None, Some(true)) => Source::Push,
            (None, None, _) => Source::From(head.from),
        }),
        _ => Route::Control,
    }
}

/// A delivery stream of the writer.
struct Delivery {
    tx: LaneTx,
    /// When it last took a frame (the least recent is finished first; an idle one is).
    used: tokio::time::Instant,
    /// Cancelled once its stream is wholly received (or given up).
    ended: CancellationToken,
}

/// The delivery streams of a connection, one per source, at most `max` open.
struct Deliveries {
    open: HashMap<Source, Delivery>,
    /// Streams finished but perhaps not yet wholly received, by source: the source's next
    /// stream waits for it.
    finishing: HashMap<Source, CancellationToken>,
    max: usize,
}

impl Deliveries {
    /// The lane of `source`: its open stream, or a new one (finishing the least recently used
    /// stream if `max` are open).
    fn lane(
        &mut self,
        source: Source,
        now: tokio::time::Instant,
        spawn: impl FnOnce(Option<CancellationToken>, CancellationToken) -> LaneTx,
    ) -> LaneTx {
        if let Some(delivery) = self.open.get_mut(&source) {
            delivery.used = now;
            return delivery.tx.clone();
        }
        if self.open.len() >= self.max {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, d)| d.used)
                .map(|(source, _)| source.clone());
            if let Some(oldest) = oldest {
                self.finish(&oldest);
            }
        }
        self.finishing.retain(|_, ended| !ended.is_cancelled());
        let after = self.finishing.remove(&source);
        let ended = CancellationToken::new();
        let tx = spawn(after, ended.clone());
        self.open.insert(
            source,
            Delivery {
                tx: tx.clone(),
                used: now,
                ended,
            },
        );
        tx
    }

    /// Finishes `source`'s stream (once what it holds is written).
    fn finish(&mut self, source: &Source) {
        if let Some(delivery) = self.open.remove(source) {
            self.finishing.insert(source.clone(), delivery.ended);
        }
    }

    /// Finishes the streams idle since before `before`.
    fn finish_idle(&mut self, before: tokio::time::Instant) {
        let idle: Vec<Source> = self
            .open
            .iter()
            .filter(|(_, d)| d.used < before)
            .map(|(source, _)| source.clone())
            .collect();
        for source in idle {
            self.finish(&source);
        }
    }
}

/// The connection's writer: routes each frame of the queue to its lane (never waiting for a
/// lane: each writes on its own stream, so a stalled stream does not stall the others), sends
/// a heartbeat on the control stream every `ping_interval` (and then finishes idle delivery
/// streams and forgets finished request streams whose answers are overdue); at the close,
/// lets the lanes finish (up to `write_timeout`) and closes the session with the code and
/// reason.
#[allow(clippy::too_many_arguments)]
async fn write(
    session: Session,
    control: SendStream,
    mut outgoing: OutReceiver,
    writing: Writing,
    routes: Arc<Mutex<Routes>>,
    lanes: TaskTracker,
    limits: StreamLimits,
    closer: Arc<Closer>,
    budget: Arc<Semaphore>,
) {
    let Writing {
        ping_interval,
        write_timeout,
        done,
        stuck,
    } = writing;
    let spawn_lane = |stream: LaneStream| {
        let (tx, rx) = LaneTx::new(limits.lane_bytes, &budget);
        lanes.spawn(lane(
            stream,
            rx,
            write_timeout,
            true,
            done.clone(),
            Some(stuck.clone()),
        ));
        tx
    };
    let control = spawn_lane(LaneStream::Open(control));
    let mut deliveries = Deliveries {
        open: HashMap::new(),
        finishing: HashMap::new(),
        max: limits.max_delivery_streams.max(1),
    };
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let (code, reason) = loop {
        let item = tokio::select! {
            () = done.cancelled() => break (crate::gateway::protocol::close::GOING_AWAY, String::new()),
            _ = ping.tick() => {
                control.send(ServerFrame::Heartbeat.encode(), None, limits.lane_bytes);
                let now = tokio::time::Instant::now();
                deliveries.finish_idle(now.checked_sub(limits.delivery_idle_timeout).unwrap_or(now));
                lock(&routes).expire(now, limits.answer_timeout);
                continue;
            }
            item = outgoing.recv() => item,
        };
        match item {
            Outgoing::Frame(frame, permit) => {
                let tx = match route(&frame) {
                    Route::Control => control.clone(),
                    Route::Answer(reference) => lock(&routes)
                        .answer(reference)
                        .unwrap_or_else(|| control.clone()),
                    Route::Deliveries(source) => {
                        deliveries.lane(source, tokio::time::Instant::now(), |after, ended| {
                            spawn_lane(LaneStream::Uni {
                                session: Box::new(session.clone()),
                                after,
                                ended: ended.drop_guard(),
                            })
                        })
                    }
                };
                tx.send(frame, permit, limits.lane_bytes);
            }
            Outgoing::Close(code, reason) => break (code, reason),
        }
    };
    // Every lane finishes once its channel is empty and closed.
    {
        let mut routes = lock(&routes);
        routes.closing = true;
        routes.lanes.clear();
    }
    drop(control);
    drop(deliveries);
    lanes.close();
    let _ = tokio::time::timeout(write_timeout, lanes.wait()).await;
    closer.close(code, &reason);
    // Until the client has the close capsule: the session's streams dropped before that
    // (the control stream stopped, the CONNECT stream's reading side) make Chromium report
    // a lost connection (1006) instead of the code.
    let _ = tokio::time::timeout(CLOSE_WAIT, session.closed()).await;
    done.cancel();
}

/// How long a closing session waits for the client to take its close capsule.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_are_routed_by_conversation_and_ref() {
        let message = |extra: &str| {
            Encoded::Text(format!(
                r#"{{"type":"message","id":1,"from":"ferry1x"{extra},"data":{{"a":1}}}}"#
            ))
        };
        let lane = |frame: &Encoded| match route(frame) {
            Route::Deliveries(source) => source,
            _ => panic!("not a delivery"),
        };
        assert_eq!(lane(&message("")), Source::From(Some("ferry1x".into())));
        let channels: std::collections::HashSet<_> = (0..64)
            .map(|i| lane(&message(&format!(r#","channel":"room.{i}""#))))
            .collect();
        assert_eq!(channels.len(), 64);
        assert_eq!(
            lane(&message(r#","user":"alice""#)),
            Source::User("alice".into())
        );
        assert_eq!(lane(&message(r#","push":true"#)), Source::Push);
        assert_eq!(
            route(&Encoded::Text(r#"{"type":"ok","ref":7,"data":"x"}"#.into())),
            Route::Answer(7)
        );
        assert_eq!(
            route(&Encoded::Text(r#"{"type":"heartbeat"}"#.into())),
            Route::Control
        );
        assert_eq!(route(&Encoded::Binary(vec![0, 0, 0, 1])), Route::Control);
    }

    #[test]
    fn routes_end_lanes_once_answered() {
        let mut routes = Routes::default();
        let budget = Arc::new(Semaphore::new(100));
        let (tx, _rx) = LaneTx::new(10, &budget);
        routes.lanes.insert(
            1,
            RequestLane {
                tx,
                pending: 0,
                ended: None,
            },
        );
        routes.took(10, 1);
        routes.took(11, 1);
        routes.ended(1);
        assert!(routes.lanes.contains_key(&1));
        assert!(routes.answer(10).is_some());
        assert!(routes.answer(11).is_some());
        assert!(!routes.lanes.contains_key(&1));
        assert!(routes.answer(12).is_none());
    }
}
