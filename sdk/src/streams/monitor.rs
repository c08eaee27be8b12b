//! Link/monitor (fabric's): watch a mailbox or a peer and learn, once, why it went down.
//!
//! A mailbox watch is a stream of kind `Monitor` on which the mailbox's node answers `Close`
//! when the mailbox closes, the watched address's grant is revoked (REVOKED), or the node
//! shuts down. A lost connection is redialed; only if it
//! stays lost longer than `monitor_grace` is the watch reported down. Watches of the same
//! address share one stream, and the distinct addresses watched on one peer are bounded by
//! `max_monitors_per_peer`, so watches cannot use up the peer's stream limit.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use crate::address::{Address, Usage};
use crate::error::{DialError, MonitorError, SendError};
use crate::frame::{self, ErrorCode, Frame, StreamKind};
use crate::identity::NodeId;
use crate::net::connection::ConnCode;
use crate::net::dial;
use crate::registry::watches::{DownReason, Watch, WatchEntry};
use crate::runtime::Runtime;
use crate::sync::lock;

/// A watch on a mailbox or a peer. Await it for the [`DownReason`]; dropping it stops
/// watching (the watch itself ends once no [`Monitor`] of the same address is left).
#[must_use = "a Monitor reports nothing unless awaited; dropping it stops watching"]
pub struct Monitor {
    down: Pin<Box<dyn Future<Output = DownReason> + Send>>,
    /// Keeps the watch running.
    _watch: Arc<Watch>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

impl Future for Monitor {
    type Output = DownReason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DownReason> {
        self.down.as_mut().poll(cx)
    }
}

impl Monitor {
    fn new(watch: Arc<Watch>) -> Self {
        let mut down = watch.down.clone();
        Self {
            down: Box::pin(async move {
                match down.wait_for(Option::is_some).await {
                    Ok(reason) => reason.clone().unwrap_or(DownReason::LocalShutdown),
                    Err(_) => DownReason::LocalShutdown,
                }
            }),
            _watch: watch,
        }
    }
}

/// Runs `watch` on a task of the node until it reports, the node shuts down
/// (`LocalShutdown`), or the returned guard is dropped. `done` runs before the report.
fn spawn<F>(
    node: &Arc<Runtime>,
    watch: F,
    done: impl FnOnce() + Send + 'static,
) -> (watch::Receiver<Option<DownReason>>, DropGuard)
where
    F: Future<Output = DownReason> + Send + 'static,
{
    let (report, down) = watch::channel(None);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let shutdown = node.cancel.clone();
    node.tasks.spawn(
        async move {
            let reason = tokio::select! {
                _ = stopped.cancelled() => return,
                _ = shutdown.cancelled() => DownReason::LocalShutdown,
                reason = watch => reason,
            };
            done();
            let _ = report.send(Some(reason));
        }
        .in_current_span(),
    );
    (down, stop.drop_guard())
}

pub(crate) fn monitor_mailbox(
    node: &Arc<Runtime>,
    address: Address,
) -> Result<Monitor, MonitorError> {
    let peer = address.node();
    if peer == node.id {
        let watching = node.clone();
        let (down, stop) = spawn(node, watch_own_mailbox(watching, address), || {});
        return Ok(Monitor::new(Arc::new(Watch {
            down,
            _stop: stop,
            entry: None,
        })));
    }
    let key = address.to_cap_bytes();
    let mut table = lock(&node.watches.table);
    let table = &mut *table;
    let watched = table.by_peer.entry(peer).or_default();
    if let Some(shared) = watched.get(&key).and_then(|(_, watch)| watch.upgrade()) {
        return Ok(Monitor::new(shared));
    }
    watched.retain(|_, (_, watch)| watch.strong_count() > 0);
    let max = node.config.max_monitors_per_peer;
    if watched.len() >= max {
        if watched.is_empty() {
            table.by_peer.remove(&peer);
        }
        return Err(MonitorError::TooManyWatches { peer, max });
    }
    let id = table.next_id;
    table.next_id += 1;
    let entry = WatchEntry {
        table: Arc::downgrade(&node.watches),
        peer,
        key: key.clone(),
        id,
    };
    let finished = WatchEntry {
        table: Arc::downgrade(&node.watches),
        peer,
        key: key.clone(),
        id,
    };
    let watching = node.clone();
    // Once it reported, the watch is forgotten: a later watch of the address starts afresh.
    let (down, stop) = spawn(node, watch_mailbox(watching, address), move || {
        finished.forget();
    });
    let watch = Arc::new(Watch {
        down,
        _stop: stop,
        entry: Some(entry),
    });
    watched.insert(key.clone(), (id, Arc::downgrade(&watch)));
    Ok(Monitor::new(watch))
}

pub(crate) fn monitor_peer(node: &Arc<Runtime>, peer: NodeId, hints: Vec<SocketAddr>) -> Monitor {
    let watching = node.clone();
    let (down, stop) = spawn(node, watch_peer(watching, peer, hints), || {});
    Monitor::new(Arc::new(Watch {
        down,
        _stop: stop,
        entry: None,
    }))
}

/// What one attempt at watching ended with.
enum Outcome {
    Down(DownReason),
    /// Lost, or refused for what may be a passing reason: try again within the grace period,
    /// after which the watch is down for this reason.
    Lost(DownReason),
}

fn lost() -> Outcome {
    Outcome::Lost(DownReason::ConnectionLost)
}

fn not_admitted() -> Outcome {
    Outcome::Down(DownReason::Unreachable(DialError::Refused(
        "node not admitted".into(),
    )))
}

fn fatal_dial(error: DialError) -> Outcome {
    match error {
        DialError::Timeout
        | DialError::Connection(_)
        | DialError::Stream(_)
        | DialError::TooManyConnections => lost(),
        DialError::NodeClosed => Outcome::Down(DownReason::LocalShutdown),
        other => Outcome::Down(DownReason::Unreachable(other)),
    }
}

fn connection_outcome(error: &quinn::ConnectionError) -> Outcome {
    match error {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == ConnCode::SHUTDOWN.into() =>
        {
            Outcome::Down(DownReason::NodeShutdown)
        }
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == ConnCode::ADMISSION_REFUSED.into() =>
        {
            Outcome::Down(DownReason::Unreachable(DialError::Refused(
                String::from_utf8_lossy(&close.reason).into_owned(),
            )))
        }
        _ => lost(),
    }
}

fn write_outcome(error: quinn::WriteError) -> Outcome {
    match error {
        quinn::WriteError::Stopped(code) if code.into_inner() == ErrorCode::NOT_ADMITTED.0 => {
            not_admitted()
        }
        quinn::WriteError::ConnectionLost(error) => connection_outcome(&error),
        _ => lost(),
    }
}

/// Retries `attempt` while it reports `Lost`, for at most the grace period in a row.
async fn with_grace<F, Fut>(node: &Runtime, mut attempt: F) -> DownReason
where
    F: FnMut(Arc<std::sync::atomic::AtomicBool>) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut lost_since: Option<Instant> = None;
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        // Set by the attempt once it is watching again, which ends a lost period.
        let reestablished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outcome = attempt(reestablished.clone()).await;
        if reestablished.load(std::sync::atomic::Ordering::Acquire) {
            lost_since = None;
            pause = std::time::Duration::from_millis(50);
        }
        match outcome {
            Outcome::Down(reason) => return reason,
            Outcome::Lost(reason) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= node.config.monitor_grace {
                    return reason;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
        }
    }
}

/// Watches a mailbox of this node: no stream, no network.
async fn watch_own_mailbox(node: Arc<Runtime>, address: Address) -> DownReason {
    match node.authorize(&address, &node.id, Usage::Monitor) {
        Ok(authorized) => tokio::select! {
            _ = authorized.mailbox.queue.mailbox_closed.wait() => DownReason::MailboxClosed,
            _ = authorized.revoked() => DownReason::InvalidAddress(SendError::Revoked),
        },
        Err(SendError::NoSuchMailbox) => DownReason::MailboxClosed,
        Err(error) => DownReason::InvalidAddress(error),
    }
}

async fn watch_mailbox(node: Arc<Runtime>, address: Address) -> DownReason {
    with_grace(&node, |watching| {
        watch_mailbox_once(&node, &address, watching)
    })
    .await
}

/// The watched node's answers on a monitor stream.
enum Answer {
    Accept,
    Close { code: ErrorCode, reason: String },
}

/// What quinn's `SendStream::stopped` resolves to.
type Stopped = Result<Option<quinn::VarInt>, quinn::StoppedError>;

/// Watches the sending half of a stream for `STOP_SENDING`.
struct StopWatch {
    stopped: Option<Pin<Box<dyn Future<Output = Stopped> + Send>>>,
}

impl StopWatch {
    fn new(send: &quinn::SendStream) -> Self {
        Self {
            stopped: Some(Box::pin(send.stopped())),
        }
    }

    /// The peer's `STOP_SENDING` code, once; `None` if the half ended otherwise. Pending
    /// after it resolved.
    async fn code(&mut self) -> Option<u64> {
        let Some(stopped) = self.stopped.as_mut() else {
            return std::future::pending().await;
        };
        let result = stopped.await;
        self.stopped = None;
        match result {
            Ok(Some(code)) => Some(code.into_inner()),
            _ => None,
        }
    }
}

/// Reads the watched node's next frame. A stream stopped with NOT_ADMITTED is a refusal
/// (docs/PROTOCOL.md §2.6) even if no reset follows.
async fn next_answer(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    stop: &mut StopWatch,
) -> Result<Answer, Outcome> {
    loop {
        match frame::decode_frame(buf, frame::MAX_CONTROL_FRAME_LEN) {
            Ok(Some((frame, used))) => {
                let answer = match frame {
                    Frame::Accept { .. } => Answer::Accept,
                    Frame::Close { code, reason } => Answer::Close {
                        code,
                        reason: reason.to_owned(),
                    },
                    _ => return Err(lost()),
                };
                buf.advance(used);
                return Ok(answer);
            }
            Ok(None) => {}
            Err(_) => return Err(lost()),
        }
        let read = tokio::select! {
            read = recv.read_chunk(frame::MAX_CONTROL_FRAME_LEN, true) => read,
            code = stop.code() => {
                if code == Some(ErrorCode::NOT_ADMITTED.0) {
                    return Err(not_admitted());
                }
                continue;
            }
        };
        match read {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(lost()),
            Err(quinn::ReadError::ConnectionLost(error)) => return Err(connection_outcome(&error)),
            Err(quinn::ReadError::Reset(code))
                if code.into_inner() == ErrorCode::NOT_ADMITTED.0 =>
            {
                return Err(not_admitted())
            }
            Err(_) => return Err(lost()),
        }
    }
}

async fn watch_mailbox_once(
    node: &Arc<Runtime>,
    address: &Address,
    watching: Arc<std::sync::atomic::AtomicBool>,
) -> Outcome {
    let connection = match dial::connect(&node.net, address.node(), address.hints()).await {
        Ok(connection) => connection,
        Err(error) => return fatal_dial(error),
    };
    let mut head = vec![StreamKind::Monitor as u8];
    frame::put_frame(
        &mut head,
        &Frame::Monitor(Box::new(address.without_hints())),
    );
    // Stream credit, the MONITOR and the answer within one open_timeout.
    let opening = async {
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|error| connection_outcome(&error))?;
        send.write_all(&head).await.map_err(write_outcome)?;
        let mut stop = StopWatch::new(&send);
        let mut buf = BytesMut::new();
        match next_answer(&mut recv, &mut buf, &mut stop).await? {
            Answer::Accept => Ok((send, recv, buf, stop)),
            Answer::Close { code, reason } => Err(close_outcome(code, reason, address)),
        }
    };
    let (_send, mut recv, mut buf, mut stop) =
        match tokio::time::timeout(node.config.open_timeout, opening).await {
            Ok(Ok(watching)) => watching,
            Ok(Err(outcome)) => return outcome,
            Err(_) => return Outcome::Lost(DownReason::NoAnswer),
        };
    watching.store(true, std::sync::atomic::Ordering::Release);
    match next_answer(&mut recv, &mut buf, &mut stop).await {
        Ok(Answer::Close { code, reason }) => close_outcome(code, reason, address),
        // A second ACCEPT breaks the protocol; watch again.
        Ok(Answer::Accept) => lost(),
        Err(outcome) => outcome,
    }
}

/// What a CLOSE from the watched node means (docs/PROTOCOL.md §5.7, §11.4).
fn close_outcome(code: ErrorCode, reason: String, address: &Address) -> Outcome {
    match code {
        ErrorCode::NO_SUCH_MAILBOX => Outcome::Down(DownReason::MailboxClosed),
        ErrorCode::FORGED => Outcome::Down(DownReason::InvalidAddress(SendError::Forged)),
        ErrorCode::EXPIRED => Outcome::Down(DownReason::InvalidAddress(SendError::Expired(
            address.effective_expiry().unwrap_or(0),
        ))),
        ErrorCode::WRONG_NODE => Outcome::Down(DownReason::InvalidAddress(SendError::WrongNode)),
        ErrorCode::REVOKED => Outcome::Down(DownReason::InvalidAddress(SendError::Revoked)),
        ErrorCode::CAVEAT => Outcome::Down(DownReason::InvalidAddress(SendError::Caveat(reason))),
        ErrorCode::EXHAUSTED => Outcome::Down(DownReason::InvalidAddress(SendError::Exhausted)),
        ErrorCode::SHUTTING_DOWN => Outcome::Down(DownReason::NodeShutdown),
        // The watched node says this watcher broke the protocol: trying again cannot help.
        ErrorCode::TOO_LARGE | ErrorCode::PROTOCOL | ErrorCode::FROM_MISMATCH => {
            Outcome::Down(DownReason::Rejected {
                code: code.0,
                reason,
            })
        }
        // TIMEOUT (the MONITOR came late), LIMIT and codes without a meaning here may pass.
        _ => Outcome::Lost(DownReason::Rejected {
            code: code.0,
            reason,
        }),
    }
}

async fn watch_peer(node: Arc<Runtime>, peer: NodeId, hints: Vec<SocketAddr>) -> DownReason {
    if peer == node.id {
        // The node itself is up until it shuts down (LocalShutdown).
        return std::future::pending().await;
    }
    with_grace(&node, |watching| {
        let node = node.clone();
        let hints = hints.clone();
        async move {
            let connection = match dial::connect(&node.net, peer, &hints).await {
                Ok(connection) => connection,
                Err(error) => return fatal_dial(error),
            };
            watching.store(true, std::sync::atomic::Ordering::Release);
            connection_outcome(&connection.closed().await)
        }
    })
    .await
}

/// Serves a monitor stream opened by a peer: answers `Close` when the mailbox goes away.
pub(crate) async fn serve_stream(
    node: Arc<Runtime>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    deadline: Instant,
    guard: Arc<crate::net::limits::PeerGuard>,
) {
    let mut buf = BytesMut::new();
    // Err(true): a frame other than MONITOR; Err(false): the stream ended first.
    let first = tokio::time::timeout_at(deadline, async {
        loop {
            match frame::decode_frame(&buf, frame::MAX_OPENING_FRAME_LEN) {
                Ok(Some((Frame::Monitor(address), _))) => return Ok(*address),
                Ok(None) => {}
                _ => return Err(true),
            }
            match recv.read_chunk(frame::MAX_OPENING_FRAME_LEN, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => return Err(false),
            }
        }
    })
    .await;
    let address = match first {
        Ok(Ok(address)) => address,
        Ok(Err(malformed)) => {
            // A watcher that gives up early resets its stream: no violation.
            if malformed {
                guard.violation(&node.net, "expected monitor");
            }
            return crate::streams::inbound::refuse(
                &mut send,
                ErrorCode::PROTOCOL,
                "expected monitor",
            )
            .await;
        }
        Err(_) => {
            guard.violation(&node.net, "no monitor frame");
            return crate::streams::inbound::refuse(
                &mut send,
                ErrorCode::TIMEOUT,
                "no monitor frame",
            )
            .await;
        }
    };
    let authorized = match node.authorize(&address, &guard.peer, Usage::Monitor) {
        Ok(authorized) => authorized,
        Err(error) => {
            let code = error.wire_code();
            return crate::streams::inbound::refuse(&mut send, code, &error.to_string()).await;
        }
    };
    let mut out = Vec::new();
    frame::put_frame(
        &mut out,
        &Frame::Accept {
            max_message: node.config.max_message_size as u64,
        },
    );
    if send.write_all(&out).await.is_err() {
        return;
    }
    let mut sink = [0u8; 64];
    tokio::select! {
        _ = authorized.mailbox.queue.mailbox_closed.wait() => {
            crate::streams::inbound::refuse(&mut send, ErrorCode::NO_SUCH_MAILBOX, "mailbox closed").await;
        }
        // A watch of an address whose grant is revoked ends as if it had been refused.
        _ = authorized.revoked() => crate::streams::inbound::refuse_revoked(&mut send).await,
        _ = node.cancel.cancelled() => {
            crate::streams::inbound::refuse(&mut send, ErrorCode::SHUTTING_DOWN, "node shutting down").await;
        }
        // The watcher sends nothing more; its stream ending means it stopped watching.
        _ = recv.read(&mut sink) => {}
    }
}
