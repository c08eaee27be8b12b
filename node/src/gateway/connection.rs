//! One WebSocket connection of a session: the welcome, the reader (requests, acks, limits),
//! the writer (the byte-bounded queue, pings) and the pump (stored messages, in order).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use ferry::{CallError, OpenError, SendError, Target as NodeTarget};
use futures::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::auth::AuthRequest;
use super::hooks::{Disconnect, Verdict};
use super::limits::{Bucket, OutQueue, OutReceiver, Outgoing, QueueError};
use super::protocol::{
    self, CallTarget, ClientFrame, DecodeError, Encoded, ErrorCode, ErrorFrame, ServerFrame,
    Target, Via, Welcome, WelcomeLimits,
};
use super::session::{lock, unix_now, Attached, DeliverError, Session};
use super::{channels, ConnectionSlot, Shared};

/// How a connection starts.
pub(crate) struct Start {
    pub(crate) resumed: bool,
    pub(crate) expired: bool,
    pub(crate) cursor: Option<u64>,
    pub(crate) connection: u64,
}

/// Close codes (docs/GATEWAY.md §7).
mod code {
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const TOO_BIG: u16 = 1009;
    pub(super) const IDLE: u16 = 4000;
    pub(super) const AGE: u16 = 4001;
    pub(super) const AUTH_EXPIRED: u16 = 4002;
    pub(super) const SLOW: u16 = 4008;
    pub(super) const RATE: u16 = 4029;
    pub(super) const PROTOCOL: u16 = 4400;
    pub(super) const TAKEN_OVER: u16 = 4409;
}

/// The instant at which unix time `at` is reached.
fn instant_of(at: u64) -> Instant {
    Instant::now() + Duration::from_secs(at.saturating_sub(unix_now()))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Runs the connection until it closes; the session lives on.
pub(crate) async fn run(
    shared: Arc<Shared>,
    session: Arc<Session>,
    mut socket: WebSocket,
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
        session.save(&shared.store);
    }
    if lock(&session.state).ended {
        // Ended between the upgrade and now.
        let _ = socket.close().await;
        return;
    }
    let (recovered, pending) = if start.resumed {
        session.rewind(&shared.store, start.cursor)
    } else {
        (!start.expired, 0)
    };
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
        auth_expires: lock(&session.state).auth_expires,
        limits: WelcomeLimits {
            max_message_size: limits.max_message_size,
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
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write(
        sink,
        outgoing,
        limits.ping_interval,
        limits.write_timeout,
        done.clone(),
        stuck.clone(),
    ));
    // Stored messages (a resume's backlog, or none): `pumping` is set since the attach.
    start_pump();
    let mut reader = Reader {
        shared: shared.clone(),
        session: session.clone(),
        queue: queue.clone(),
        inflight: Arc::new(Semaphore::new(limits.max_inflight)),
        auth_deadline: lock(&session.state)
            .auth_expires
            .map_or_else(far_future, instant_of),
    };
    let (close_code, close_reason, mut disconnect) = reader
        .read(&mut stream, &attached, &done, start.connection, &stuck)
        .await;
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
    {
        let mut state = lock(&session.state);
        if state
            .attached
            .as_ref()
            .is_some_and(|a| a.connection == start.connection)
        {
            state.attached = None;
            state.detached_at = Some(Instant::now());
            session.save_locked(&state, &shared.store);
        }
    }
    tracing::debug!(session = %session.info.id, ?disconnect, "browser disconnected");
    shared.hooks.disconnected(&session.info, &disconnect);
}

/// Writes the queue's frames and pings; ends at a close frame, a failed or stuck write.
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
    loop {
        let message = tokio::select! {
            _ = done.cancelled() => break,
            _ = ping.tick() => Message::Ping(Bytes::new()),
            item = outgoing.recv() => match item {
                Outgoing::Frame(frame, _permit) => match frame {
                    Encoded::Text(text) => Message::Text(text.into()),
                    Encoded::Binary(bytes) => Message::Binary(bytes.into()),
                },
                Outgoing::Close(code, reason) => {
                    let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
                    let _ = tokio::time::timeout(write_timeout, async {
                        let _ = sink.send(close).await;
                        let _ = sink.close().await;
                    })
                    .await;
                    break;
                }
            },
        };
        match tokio::time::timeout(write_timeout, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                stuck.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
        }
    }
    done.cancel();
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
            let frame = ServerFrame::Message {
                id: row.index,
                from: row.from.to_string(),
                via: Via::from_tag(&row.tag),
                data: row.payload,
            };
            match queue.push(frame.encode(), write_timeout).await {
                Ok(()) => {
                    shared
                        .counters
                        .delivered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(QueueError::Slow) => {
                    kick(
                        &session,
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

/// Closes the session's connection `connection`, if it is still the attached one.
fn kick(session: &Session, connection: u64, code: u16, reason: &str, disconnect: Disconnect) {
    let state = lock(&session.state);
    if let Some(attached) = state
        .attached
        .as_ref()
        .filter(|a| a.connection == connection)
    {
        let mut slot = lock(&attached.reason);
        if slot.is_none() {
            *slot = Some((code, reason.to_owned(), disconnect));
        }
        attached.kick.cancel();
    }
}

struct Reader {
    shared: Arc<Shared>,
    session: Arc<Session>,
    queue: OutQueue,
    inflight: Arc<Semaphore>,
    auth_deadline: Instant,
}

/// Why the reader stops: the close frame's code and reason, and what hooks are told.
type Closing = (u16, String, Disconnect);

impl Reader {
    async fn read(
        &mut self,
        stream: &mut futures::stream::SplitStream<WebSocket>,
        attached: &Attached,
        done: &CancellationToken,
        connection: u64,
        stuck: &std::sync::atomic::AtomicBool,
    ) -> Closing {
        let limits = self.shared.config.limits.clone();
        let mut rate = Bucket::new(limits.rate_limit, limits.rate_window);
        let age_deadline = limits
            .max_connection_age
            .map_or_else(far_future, |age| Instant::now() + age);
        let mut last_seen = Instant::now();
        // Made once, not per frame: a future made inside the loop would register with its
        // token or the timer wheel again for every frame the browser sends.
        let kicked = attached.kick.clone().cancelled_owned();
        let write_failed = done.clone().cancelled_owned();
        let stopping = self.shared.stopping.clone().cancelled_owned();
        // The earliest of the idle, age and credentials deadlines. The idle deadline only moves
        // later as frames arrive, so it is checked when the timer fires, not moved per frame.
        let mut armed = (last_seen + limits.idle_timeout)
            .min(age_deadline)
            .min(self.auth_deadline);
        let deadline = tokio::time::sleep_until(armed.into());
        tokio::pin!(kicked, write_failed, stopping, deadline);
        loop {
            let message = tokio::select! {
                message = stream.next() => message,
                () = &mut kicked => {
                    return lock(&attached.reason).take().unwrap_or((
                        code::GOING_AWAY,
                        "closed".into(),
                        Disconnect::SessionEnded,
                    ));
                }
                () = &mut write_failed => {
                    if stuck.load(std::sync::atomic::Ordering::Relaxed) {
                        return self.slow();
                    }
                    return (code::GOING_AWAY, "write failed".into(), Disconnect::Client);
                }
                () = &mut stopping => {
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
                    if now >= self.auth_deadline {
                        return (code::AUTH_EXPIRED, "token expired".into(), Disconnect::AuthExpired);
                    }
                    armed = idle_deadline.min(age_deadline).min(self.auth_deadline);
                    deadline.as_mut().reset(armed.into());
                    continue;
                }
            };
            let message = match message {
                None => return (code::GOING_AWAY, String::new(), Disconnect::Client),
                Some(Err(error)) => {
                    let text = error.to_string();
                    if text.contains("too long")
                        || text.contains("Space limit")
                        || text.contains("size")
                    {
                        return (
                            code::TOO_BIG,
                            "message too big".into(),
                            Disconnect::Protocol(text),
                        );
                    }
                    return (code::GOING_AWAY, String::new(), Disconnect::Client);
                }
                Some(Ok(message)) => message,
            };
            last_seen = Instant::now();
            if matches!(message, Message::Text(_) | Message::Binary(_)) {
                self.shared
                    .counters
                    .requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let frame = match &message {
                Message::Text(text) => protocol::decode_text(text.as_str()),
                Message::Binary(bytes) => protocol::decode_binary(bytes),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => return (1000, String::new(), Disconnect::Client),
            };
            if !rate.take(last_seen) {
                self.shared
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
                        if self.reply(ServerFrame::Error(answer)).is_err() {
                            return self.slow();
                        }
                    }
                    continue;
                }
            };
            // Boxed: the request's future (sends, calls) lives only while it is handled, not
            // in every idle connection's task.
            if let Err(closing) = Box::pin(self.handle(frame, connection)).await {
                return closing;
            }
            // A refresh may have brought the credentials' expiry closer.
            if self.auth_deadline < armed {
                armed = self.auth_deadline;
                deadline.as_mut().reset(armed.into());
            }
        }
    }

    fn slow(&self) -> Closing {
        (code::SLOW, "slow consumer".into(), Disconnect::SlowConsumer)
    }

    fn reply(&self, frame: ServerFrame) -> Result<(), QueueError> {
        match self.queue.try_push(frame.encode()) {
            Err(QueueError::Closed) => Ok(()),
            other => other,
        }
    }

    fn error(
        &self,
        reference: u64,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<(), Closing> {
        self.reply(ServerFrame::Error(ErrorFrame {
            reference: Some(reference),
            code,
            message: message.into(),
        }))
        .map_err(|_| self.slow())
    }

    fn ok(&self, reference: u64) -> Result<(), Closing> {
        self.reply(ServerFrame::Ok {
            reference,
            data: None,
        })
        .map_err(|_| self.slow())
    }

    async fn handle(&mut self, frame: ClientFrame, _connection: u64) -> Result<(), Closing> {
        match &frame {
            ClientFrame::Ack { id } => {
                self.session.ack(&self.shared.store, *id);
                return Ok(());
            }
            ClientFrame::Ping { reference } => return self.ok(*reference),
            _ => {}
        }
        if let Verdict::Refuse(reason) = self.shared.hooks.message(&self.session.info, &frame) {
            let reference = match &frame {
                ClientFrame::Send { reference, .. }
                | ClientFrame::Call { reference, .. }
                | ClientFrame::Join { reference, .. }
                | ClientFrame::Leave { reference, .. }
                | ClientFrame::Refresh { reference, .. }
                | ClientFrame::Ping { reference } => *reference,
                ClientFrame::Ack { .. } => return Ok(()),
            };
            return self.error(reference, ErrorCode::Forbidden, reason);
        }
        match frame {
            ClientFrame::Send {
                reference,
                to,
                data,
            } => self.send(reference, to, data).await,
            ClientFrame::Call {
                reference,
                to,
                data,
                timeout_ms,
            } => self.call(reference, to, data, timeout_ms).await,
            ClientFrame::Join { reference, channel } => {
                if !self.may(&channel, false) {
                    return self.error(
                        reference,
                        ErrorCode::Forbidden,
                        format!("may not join {channel:?}"),
                    );
                }
                match self.shared.join(&self.session, &channel) {
                    Ok(()) => self.ok(reference),
                    Err(why) => self.error(reference, ErrorCode::BadRequest, why),
                }
            }
            ClientFrame::Leave { reference, channel } => {
                self.shared.leave(&self.session, &channel);
                self.ok(reference)
            }
            ClientFrame::Refresh { reference, token } => self.refresh(reference, token).await,
            ClientFrame::Ack { .. } | ClientFrame::Ping { .. } => Ok(()),
        }
    }

    /// Whether the session may join (or publish to) `channel`: the hook, else the patterns.
    fn may(&self, channel: &str, publish: bool) -> bool {
        if channels::check_name(channel).is_err() {
            return false;
        }
        let info = &self.session.info;
        match self.shared.hooks.authorize_channel(info, channel, publish) {
            Some(allowed) => allowed,
            None => {
                let permissions = &self.shared.config.permissions;
                let patterns = if publish {
                    &permissions.publish
                } else {
                    &permissions.join
                };
                channels::allowed(patterns, channel, &info.user)
            }
        }
    }

    async fn refresh(&mut self, reference: u64, token: String) -> Result<(), Closing> {
        let request = AuthRequest::token(token);
        let identity = match self.shared.hooks.authenticate(request.clone()).await {
            Some(result) => result.map(Some),
            None => self.shared.verifier.verify(&request),
        };
        match identity {
            Ok(Some(identity)) if identity.user == self.session.info.user => {
                lock(&self.session.state).auth_expires = identity.expires;
                self.session.save(&self.shared.store);
                self.auth_deadline = identity.expires.map_or_else(far_future, instant_of);
                self.ok(reference)
            }
            Ok(Some(_)) => self.error(
                reference,
                ErrorCode::Unauthorized,
                "the token is another user's",
            ),
            Ok(None) => self.ok(reference),
            Err(error) => self.error(reference, ErrorCode::Unauthorized, error.to_string()),
        }
    }

    /// A permit for one more request in flight (waits: the browser's reading pauses).
    async fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inflight.clone().acquire_owned().await.ok()
    }

    async fn send(&mut self, reference: u64, to: Target, data: Bytes) -> Result<(), Closing> {
        let max = self.shared.node.config().max_message_size;
        if data.len() > max {
            return self.error(
                reference,
                ErrorCode::TooLarge,
                format!("message of {} bytes exceeds the limit of {max}", data.len()),
            );
        }
        let from = self.session.info.address.clone();
        let shared = self.shared.clone();
        let queue = self.queue.clone();
        let Some(permit) = self.permit().await else {
            return Ok(());
        };
        match to {
            Target::Address(address) => {
                // Queued here, in the order the browser sent, then awaited apart.
                let sender = {
                    let mailbox = self.session.sender(&address);
                    match mailbox {
                        Some(Ok(sender)) => sender,
                        Some(Err(error)) => return self.send_error(reference, &error),
                        None => {
                            return self.error(reference, ErrorCode::NoSuchSession, "session ended")
                        }
                    }
                };
                let delivery = match sender.enqueue_bytes(data).await {
                    Ok(delivery) => delivery,
                    Err(error) => return self.send_error(reference, &error),
                };
                self.shared.tasks.spawn(async move {
                    let _permit = permit;
                    let frame = match delivery.await {
                        Ok(()) => ServerFrame::Ok {
                            reference,
                            data: None,
                        },
                        Err(error) => send_error_frame(reference, &error),
                    };
                    let _ = queue.try_push(frame.encode());
                });
                Ok(())
            }
            Target::Channel(channel) => {
                let member = lock(&self.session.state).channels.contains(&channel);
                if !member || !self.may(&channel, true) {
                    return self.error(
                        reference,
                        ErrorCode::Forbidden,
                        format!("may not publish to {channel:?}"),
                    );
                }
                self.shared.tasks.spawn(async move {
                    let _permit = permit;
                    let result = shared.deliver_channel(&channel, &from, data).await;
                    let _ = queue.try_push(deliver_answer(reference, result).encode());
                });
                Ok(())
            }
            Target::User(user) => {
                if !self.shared.config.permissions.direct {
                    return self.error(
                        reference,
                        ErrorCode::Forbidden,
                        "sending to users is not allowed",
                    );
                }
                self.shared.tasks.spawn(async move {
                    let _permit = permit;
                    let result = shared.deliver_user(&user, &from, false, data).await;
                    let _ = queue.try_push(deliver_answer(reference, result).encode());
                });
                Ok(())
            }
            Target::Session(id) => {
                if !self.shared.config.permissions.direct {
                    return self.error(
                        reference,
                        ErrorCode::Forbidden,
                        "sending to sessions is not allowed",
                    );
                }
                self.shared.tasks.spawn(async move {
                    let _permit = permit;
                    let result = shared.deliver_session(&id, &from, false, data).await;
                    let _ = queue.try_push(deliver_answer(reference, result).encode());
                });
                Ok(())
            }
        }
    }

    fn send_error(&self, reference: u64, error: &SendError) -> Result<(), Closing> {
        self.reply(send_error_frame(reference, error))
            .map_err(|_| self.slow())
    }

    async fn call(
        &mut self,
        reference: u64,
        to: CallTarget,
        data: Bytes,
        timeout_ms: Option<u64>,
    ) -> Result<(), Closing> {
        let max_timeout = self.shared.config.limits.max_call_timeout;
        let timeout = timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(max_timeout)
            .min(max_timeout);
        let target = match to {
            CallTarget::Address(address) => NodeTarget::Address(address),
            CallTarget::Service { node, addr, name } => {
                NodeTarget::service(node, name).with_hints(addr.into_iter().collect())
            }
        };
        let Some(permit) = self.permit().await else {
            return Ok(());
        };
        let node = self.shared.node.clone();
        let queue = self.queue.clone();
        self.shared.tasks.spawn(async move {
            let _permit = permit;
            let result: Result<Vec<u8>, CallError> = node
                .call::<[u8], Vec<u8>>(target, &data[..])
                .timeout(timeout)
                .await;
            let frame = match result {
                Ok(reply) => ServerFrame::Ok {
                    reference,
                    data: Some(Bytes::from(reply)),
                },
                Err(error) => call_error_frame(reference, &error),
            };
            let _ = queue.try_push(frame.encode());
        });
        Ok(())
    }
}

fn deliver_answer(reference: u64, result: Result<usize, DeliverError>) -> ServerFrame {
    match result {
        Ok(_) => ServerFrame::Ok {
            reference,
            data: None,
        },
        Err(error) => {
            let code = match &error {
                DeliverError::NoSuchSession => ErrorCode::NoSuchSession,
                DeliverError::Full => ErrorCode::StoreFailed,
                DeliverError::Store(_) => ErrorCode::StoreFailed,
                DeliverError::TooLarge { .. } => ErrorCode::TooLarge,
            };
            ServerFrame::Error(ErrorFrame {
                reference: Some(reference),
                code,
                message: error.to_string(),
            })
        }
    }
}

fn send_error_frame(reference: u64, error: &SendError) -> ServerFrame {
    let code = match error {
        SendError::Forged => ErrorCode::Forged,
        SendError::Expired(_) => ErrorCode::Expired,
        SendError::WrongNode => ErrorCode::WrongNode,
        SendError::NoSuchMailbox => ErrorCode::NoSuchMailbox,
        SendError::Unreachable(_) => ErrorCode::Unreachable,
        SendError::TooLarge { .. } => ErrorCode::TooLarge,
        SendError::Timeout => ErrorCode::Timeout,
        SendError::NodeClosed => ErrorCode::NodeClosed,
        SendError::OutboxFull { .. } => ErrorCode::OutboxFull,
        SendError::Store(_) => ErrorCode::StoreFailed,
        _ => ErrorCode::Internal,
    };
    ServerFrame::Error(ErrorFrame {
        reference: Some(reference),
        code,
        message: error.to_string(),
    })
}

fn call_error_frame(reference: u64, error: &CallError) -> ServerFrame {
    let code = match error {
        CallError::Timeout => ErrorCode::Timeout,
        CallError::Failed { .. } | CallError::NoResponse | CallError::Decode(_) => {
            ErrorCode::Failed
        }
        CallError::TooLarge { .. } => ErrorCode::TooLarge,
        CallError::Open(open) => match open {
            OpenError::Unreachable(_) | OpenError::PeerShuttingDown => ErrorCode::Unreachable,
            OpenError::NoSuchService(_) | OpenError::InvalidName(_) => ErrorCode::NoSuchService,
            OpenError::NotAllowed | OpenError::Busy => ErrorCode::Refused,
            OpenError::NoSuchMailbox => ErrorCode::NoSuchMailbox,
            OpenError::Forged => ErrorCode::Forged,
            OpenError::Expired(_) => ErrorCode::Expired,
            OpenError::WrongNode => ErrorCode::WrongNode,
            OpenError::Timeout => ErrorCode::Timeout,
            OpenError::NodeClosed => ErrorCode::NodeClosed,
            _ => ErrorCode::Failed,
        },
        _ => ErrorCode::Internal,
    };
    ServerFrame::Error(ErrorFrame {
        reference: Some(reference),
        code,
        message: error.to_string(),
    })
}
