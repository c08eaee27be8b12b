//! One WebSocket connection of a session: the welcome, the reader (frames, limits; the
//! requests are carried out by `requests`), the writer (the byte-bounded queue, heartbeats)
//! and the pump (stored messages, in order).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::hooks::Disconnect;
use super::limits::{Bucket, OutQueue, OutReceiver, Outgoing, QueueError};
use super::protocol::{
    self, close as code, DecodeError, Encoded, LastSender, MessageTemplate, ServerFrame, Via,
    Welcome, WelcomeLimits,
};
use super::requests::{far_future, Closing, Requests};
use super::session::{Attached, Session};
use super::shared::ConnectionSlot;
use super::shared::Shared;
use crate::sync::lock;

/// How a connection starts.
pub(crate) struct Start {
    pub(crate) resumed: bool,
    pub(crate) expired: bool,
    pub(crate) cursor: Option<u64>,
    pub(crate) connection: u64,
}

/// Runs the connection until it closes; the session lives on.
pub(crate) async fn run(
    shared: Arc<Shared>,
    session: Arc<Session>,
    socket: impl Wire,
    start: Start,
    _slot: ConnectionSlot,
) {
    let limits = shared.config.limits.clone();
    let (queue, outgoing) = OutQueue::new(limits.max_queue_bytes);
    let start_pump: Arc<dyn Fn() + Send + Sync> = {
        let (weak_shared, weak_session) = (Arc::downgrade(&shared), Arc::downgrade(&session));
        let (queue, connection) = (queue.clone(), start.connection);
        Arc::new(move || {
            if let (Some(shared), Some(session)) = (weak_shared.upgrade(), weak_session.upgrade()) {
                let tasks = shared.tasks.clone();
                tasks.spawn(pump(shared, session, queue.clone(), connection));
            }
        })
    };
    let attached = Attached {
        connection: start.connection,
        kick: CancellationToken::new(),
        reason: Arc::default(),
        queue: queue.clone(),
        start_pump: start_pump.clone(),
        delivered: shared.counters.delivered.clone(),
        last_sender: LastSender::default(),
    };
    // Attach, taking the session over from an older connection. Nothing is handed to the
    // new connection before its welcome: its pump starts after it, and clears `pumping`
    // once it has caught up.
    let previous = {
        let mut state = lock(&session.state);
        state.pumping = true;
        state.attached.replace(attached.clone())
    };
    if let Some(previous) = previous {
        *lock(&previous.reason) = Some((
            code::TAKEN_OVER,
            "session resumed by another connection".into(),
            Disconnect::TakenOver,
        ));
        previous.kick.cancel();
    }
    lock(&session.state).detached_at = None;
    if start.resumed {
        // The record says it is away no more (a new session's record says so already).
        session.save();
    }
    if lock(&session.state).ended {
        // Ended between the upgrade and now.
        socket.abandon().await;
        return;
    }
    let (recovered, pending) = if start.resumed {
        session.rewind(start.cursor)
    } else {
        (!start.expired, 0)
    };
    let next = lock(&session.state).next;
    let welcome = Welcome {
        session: session.info.id.clone(),
        user: session.info.user.clone(),
        address: session.info.address.to_string(),
        node: shared.node.id().to_string(),
        resume: shared.resume_token(&session),
        resumed: start.resumed,
        recovered,
        expired: start.expired,
        pending,
        next,
        auth_expires: lock(&session.state).auth_expires,
        limits: WelcomeLimits {
            max_message_size: limits.max_message_size,
            max_payload_size: shared.node.config().max_message_size,
            rate_limit: limits.rate_limit,
            rate_window_ms: limits.rate_window.as_millis() as u64,
            idle_timeout_ms: limits.idle_timeout.as_millis() as u64,
            ping_interval_ms: limits.ping_interval.as_millis() as u64,
            session_ttl_ms: shared.config.session_ttl.as_millis() as u64,
        },
        config: shared.client_config(),
    };
    let _ = queue.try_push(ServerFrame::Welcome(Box::new(welcome)).encode());
    shared.hooks.connected(&session.info, start.resumed);
    tracing::debug!(session = %session.info.id, resumed = start.resumed, "browser connected");

    let done = CancellationToken::new();
    let stuck = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut stream, writer) = socket.start(
        outgoing,
        Writing {
            ping_interval: limits.ping_interval,
            write_timeout: limits.write_timeout,
            done: done.clone(),
            stuck: stuck.clone(),
        },
    );
    // Stored messages (a resume's backlog, or none): `pumping` is set since the attach.
    start_pump();
    let mut reader = Reader {
        requests: Requests::new(
            shared.clone(),
            session.clone(),
            start.connection,
            queue.clone(),
        ),
    };
    let (close_code, close_reason, mut disconnect) =
        reader.read(&mut stream, &attached, &done, &stuck).await;
    if stuck.load(std::sync::atomic::Ordering::Relaxed) {
        disconnect = Disconnect::SlowConsumer;
    }
    if disconnect == Disconnect::SlowConsumer {
        shared
            .counters
            .slow_consumers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    queue.close(close_code, &close_reason);
    // The writer sends what is queued and the close frame, or gives up after write_timeout.
    let _ = tokio::time::timeout(limits.write_timeout + Duration::from_secs(1), writer).await;
    // The closing handshake: read until the browser's close frame (or its end), so closing
    // the socket does not reset it under frames the browser has yet to read.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    done.cancel();
    drop(stream);
    {
        let mut state = lock(&session.state);
        if state
            .attached
            .as_ref()
            .is_some_and(|a| a.connection == start.connection)
        {
            state.attached = None;
            state.detached_at = Some(Instant::now());
            session.save_locked(&state);
        }
    }
    tracing::debug!(session = %session.info.id, ?disconnect, "browser disconnected");
    shared.hooks.disconnected(&session.info, &disconnect);
}

// --- transports ----------------------------------------------------------------------------

/// What the writer of a connection needs, whatever carries its frames.
pub(crate) struct Writing {
    /// How often a heartbeat (and, on a WebSocket, a ping) goes out.
    pub(crate) ping_interval: Duration,
    /// A write that takes longer makes the connection a slow consumer.
    pub(crate) write_timeout: Duration,
    /// Cancelled when the writer ends (and by the connection when it is done).
    pub(crate) done: CancellationToken,
    /// Set when a write got stuck (`write_timeout`).
    pub(crate) stuck: Arc<std::sync::atomic::AtomicBool>,
}

/// What carries a connection's frames: a WebSocket, or a WebTransport session
/// (`webtransport::streams`). One session semantics, two transports: the welcome, the
/// requests, the limits and the pump above are the same for both.
pub(crate) trait Wire: Send + 'static {
    /// Frames from the client, as WebSocket messages (a WebTransport session merges its
    /// streams' frames into one such stream, and reports the peer's liveness as pongs).
    type Reader: futures::Stream<Item = Result<Message, Self::Error>> + Unpin + Send;
    /// A read error, which says what it means for the close code.
    type Error: WireFault;
    /// Starts the writer of `outgoing`; returns the reader and the writer's task.
    fn start(
        self,
        outgoing: OutReceiver,
        writing: Writing,
    ) -> (Self::Reader, tokio::task::JoinHandle<()>);
    /// Closes without a welcome (the session ended before the connection started).
    fn abandon(self) -> impl std::future::Future<Output = ()> + Send;
}

impl Wire for WebSocket {
    type Reader = futures::stream::SplitStream<WebSocket>;
    type Error = axum::Error;

    fn start(
        self,
        outgoing: OutReceiver,
        writing: Writing,
    ) -> (Self::Reader, tokio::task::JoinHandle<()>) {
        let (sink, stream) = self.split();
        let writer = tokio::spawn(write(
            sink,
            outgoing,
            writing.ping_interval,
            writing.write_timeout,
            writing.done,
            writing.stuck,
        ));
        (stream, writer)
    }

    async fn abandon(mut self) {
        let _ = self.close().await;
    }
}

/// What a failed read means for the connection (its close code), as the transport's error
/// type says it: no matching of error texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFault {
    /// A message beyond `gateway_max_message_size`: 1009.
    TooBig,
    /// A frame the transport cannot read as one (WebTransport's framing): 4400.
    Malformed(&'static str),
    /// The connection failed or the client went away: 1001, nobody to tell.
    Gone,
}

/// A transport's read error, classified.
pub(crate) trait WireFault: std::fmt::Display {
    /// What the error means for the connection.
    fn fault(&self) -> ReadFault;
}

impl WireFault for axum::Error {
    fn fault(&self) -> ReadFault {
        // axum hands tungstenite's error on as this one's source.
        let mut source = std::error::Error::source(self);
        while let Some(error) = source {
            if let Some(tungstenite::Error::Capacity(_)) =
                error.downcast_ref::<tungstenite::Error>()
            {
                return ReadFault::TooBig;
            }
            source = error.source();
        }
        ReadFault::Gone
    }
}

/// Frames written with one flush at most: the frames already queued when the writer wakes go
/// out together (tungstenite writes its buffer to the socket every 4 KiB and at the flush), so
/// a burst to one session costs a system call per few dozen frames instead of one per frame.
const WRITE_BATCH: usize = 64;
/// A batch takes no more frames once this many bytes are fed: it must be written within
/// `write_timeout` as one frame had to be, so it never needs much longer than one frame of
/// the largest size.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Writes the queue's frames, and every `ping_interval` a ping (for the gateway's idle check:
/// browsers answer it by themselves) and a heartbeat frame (for the client's liveness check:
/// browsers do not show pings to pages); ends at a close frame, a failed or stuck write.
async fn write(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut outgoing: OutReceiver,
    ping_interval: Duration,
    write_timeout: Duration,
    done: CancellationToken,
    stuck: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let heartbeat = || message(ServerFrame::Heartbeat.encode());
    // Made once, not per frame: a future made in the loop registers with the token again for
    // every frame (a fan-out to many sessions wakes every writer once).
    let stop = done.clone().cancelled_owned();
    tokio::pin!(stop);
    loop {
        let first = tokio::select! {
            () = &mut stop => break,
            _ = ping.tick() => {
                let beat = async {
                    sink.feed(Message::Ping(Bytes::new())).await?;
                    sink.send(heartbeat()).await
                };
                if !written(tokio::time::timeout(write_timeout, beat).await, &stuck) {
                    break;
                }
                continue;
            }
            item = outgoing.recv() => item,
        };
        let mut close = None;
        let batch = async {
            let mut next = Some(first);
            let (mut fed, mut bytes) = (0, 0);
            while let Some(item) = next.take() {
                match item {
                    Outgoing::Frame(frame, _share) => {
                        bytes += frame.len();
                        sink.feed(message(frame)).await?;
                    }
                    Outgoing::Close(code, reason) => {
                        close = Some(Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })));
                        break;
                    }
                }
                fed += 1;
                if fed < WRITE_BATCH && bytes < WRITE_BATCH_BYTES {
                    next = outgoing.try_recv();
                }
            }
            sink.flush().await
        };
        if !written(tokio::time::timeout(write_timeout, batch).await, &stuck) {
            break;
        }
        if let Some(close) = close {
            let _ = tokio::time::timeout(write_timeout, async {
                let _ = sink.send(close).await;
                let _ = sink.close().await;
            })
            .await;
            break;
        }
    }
    done.cancel();
}

/// Whether a write given `write_timeout` went out; one that took longer marks the connection
/// stuck (a slow consumer).
fn written(
    result: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>,
    stuck: &std::sync::atomic::AtomicBool,
) -> bool {
    match result {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            stuck.store(true, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }
}

/// The WebSocket message carrying an encoded frame.
fn message(frame: Encoded) -> Message {
    match frame {
        Encoded::Text(text) => Message::Text(text.into()),
        Encoded::Binary(bytes) => Message::Binary(bytes.into()),
    }
}

/// Hands the session's stored messages from `next` on to the queue in index order, until it
/// has caught up; then clears `pumping` and ends (the session starts it again when a message
/// is stored that cannot be handed over at once). Ends too when the connection is replaced,
/// closed, or its queue stays full.
async fn pump(shared: Arc<Shared>, session: Arc<Session>, queue: OutQueue, connection: u64) {
    const BATCH: usize = 256;
    const BATCH_BYTES: usize = 256 * 1024;
    let write_timeout = shared.config.limits.write_timeout;
    let current = |state: &super::session::State| {
        !state.ended
            && state
                .attached
                .as_ref()
                .is_some_and(|a| a.connection == connection)
    };
    let mut last_sender = LastSender::default();
    loop {
        let next = {
            let mut state = lock(&session.state);
            if !current(&state) {
                // A later connection runs its own pump.
                return;
            }
            state.again = false;
            state.next
        };
        let rows = shared
            .store
            .read_from(session.mailbox_id, next, BATCH, BATCH_BYTES);
        let rows = match rows {
            Ok(rows) if !rows.is_empty() => rows,
            result => {
                if let Err(error) = result {
                    tracing::error!(%error, session = %session.info.id, "reading stored messages");
                }
                // Caught up (or the store failed: the next stored message tries again). A
                // message stored since the read above set `again`: read once more.
                let mut state = lock(&session.state);
                if !current(&state) {
                    return;
                }
                if state.again {
                    continue;
                }
                state.pumping = false;
                return;
            }
        };
        for row in rows {
            let via = Via::from_tag(&row.tag);
            let head = last_sender.head(&row.from, &via);
            let frame = MessageTemplate::with_head(head, &via, row.payload).encode(row.index);
            match queue.push_message(frame, write_timeout).await {
                Ok(()) => {
                    shared
                        .counters
                        .delivered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(QueueError::Slow) => {
                    session.kick(
                        connection,
                        code::SLOW,
                        "slow consumer",
                        Disconnect::SlowConsumer,
                    );
                    return;
                }
                Err(QueueError::Closed) => return,
            }
            let mut state = lock(&session.state);
            if current(&state) {
                state.next = state.next.max(row.index + 1);
            }
        }
    }
}

/// Reads a connection's frames and hands them to its [`Requests`], within the limits.
struct Reader {
    requests: Requests,
}

impl Reader {
    async fn read<E: WireFault>(
        &mut self,
        stream: &mut (impl futures::Stream<Item = Result<Message, E>> + Unpin),
        attached: &Attached,
        done: &CancellationToken,
        stuck: &std::sync::atomic::AtomicBool,
    ) -> Closing {
        let shared = self.requests.shared.clone();
        let limits = shared.config.limits.clone();
        let mut rate = Bucket::new(limits.rate_limit, limits.rate_window);
        let age_deadline = limits
            .max_connection_age
            .map_or_else(far_future, |age| Instant::now() + age);
        let mut last_seen = Instant::now();
        // Made once, not per frame: a future made inside the loop would register with its
        // token or the timer wheel again for every frame the browser sends.
        let kicked = attached.kick.clone().cancelled_owned();
        let write_failed = done.clone().cancelled_owned();
        let stopping = shared.stopping.clone().cancelled_owned();
        // The earliest of the idle, age and credentials deadlines. The idle deadline only moves
        // later as frames arrive, so it is checked when the timer fires, not moved per frame.
        let mut armed = (last_seen + limits.idle_timeout)
            .min(age_deadline)
            .min(self.requests.auth_deadline);
        let deadline = tokio::time::sleep_until(armed.into());
        tokio::pin!(kicked, write_failed, stopping, deadline);
        loop {
            // Biased: a connection told to close (taken over, ended, slow) reads no further
            // frame; they are the next connection's to carry out, in order.
            let message = tokio::select! {
                biased;
                () = &mut kicked => {
                    return lock(&attached.reason).take().unwrap_or((
                        code::GOING_AWAY,
                        "closed".into(),
                        Disconnect::SessionEnded,
                    ));
                }
                () = &mut write_failed => {
                    if stuck.load(std::sync::atomic::Ordering::Relaxed) {
                        return Requests::slow();
                    }
                    return (code::GOING_AWAY, "write failed".into(), Disconnect::Client);
                }
                () = &mut stopping => {
                    // The answers of requests under way go out before the close: the client
                    // does not send them again to the next gateway.
                    self.requests.settle(shared.config.drain / 2).await;
                    return (code::GOING_AWAY, "server shutting down".into(), Disconnect::SessionEnded);
                }
                () = &mut deadline => {
                    let now = Instant::now();
                    let idle_deadline = last_seen + limits.idle_timeout;
                    if now >= idle_deadline {
                        return (code::IDLE, "idle timeout".into(), Disconnect::Idle);
                    }
                    if now >= age_deadline {
                        return (code::AGE, "maximum connection age; resume".into(), Disconnect::Age);
                    }
                    if now >= self.requests.auth_deadline {
                        return (code::AUTH_EXPIRED, "token expired".into(), Disconnect::AuthExpired);
                    }
                    armed = idle_deadline.min(age_deadline).min(self.requests.auth_deadline);
                    deadline.as_mut().reset(armed.into());
                    continue;
                }
                message = stream.next() => message,
            };
            let message = match message {
                None => return (code::GOING_AWAY, String::new(), Disconnect::Client),
                Some(Err(error)) => {
                    return match error.fault() {
                        ReadFault::TooBig => (
                            code::TOO_BIG,
                            "message too big".into(),
                            Disconnect::Protocol(error.to_string()),
                        ),
                        ReadFault::Malformed(why) => (
                            code::PROTOCOL,
                            "malformed frame".into(),
                            Disconnect::Protocol(why.into()),
                        ),
                        ReadFault::Gone => (code::GOING_AWAY, String::new(), Disconnect::Client),
                    };
                }
                Some(Ok(message)) => message,
            };
            last_seen = Instant::now();
            if matches!(message, Message::Text(_) | Message::Binary(_)) {
                shared
                    .counters
                    .requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let frame = match &message {
                Message::Text(text) => protocol::decode_text(text.as_str()),
                Message::Binary(bytes) => protocol::decode_binary(bytes),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => return (code::NORMAL, String::new(), Disconnect::Client),
            };
            if !rate.take(last_seen) {
                shared
                    .counters
                    .rate_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return (
                    code::RATE,
                    "rate limit exceeded".into(),
                    Disconnect::RateLimit,
                );
            }
            let frame = match frame {
                Ok(frame) => frame,
                Err(DecodeError::Malformed(why)) => {
                    return (
                        code::PROTOCOL,
                        "malformed frame".into(),
                        Disconnect::Protocol(why),
                    );
                }
                Err(error) => {
                    if let Some(answer) = error.answer() {
                        if let Err(closing) =
                            self.requests.reply(ServerFrame::Error(answer).encode())
                        {
                            return closing;
                        }
                    }
                    continue;
                }
            };
            // Boxed: the request's future (sends, calls) lives only while it is handled, not
            // in every idle connection's task.
            if let Err(closing) = Box::pin(self.requests.handle(frame)).await {
                return closing;
            }
            // A refresh may have brought the credentials' expiry closer.
            if self.requests.auth_deadline < armed {
                armed = self.requests.auth_deadline;
                deadline.as_mut().reset(armed.into());
            }
        }
    }
}
