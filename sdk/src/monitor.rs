//! Link/monitor (fabric's): watch a mailbox or a peer and learn, once, why it went down.
//!
//! A mailbox watch is a stream of kind `Monitor` on which the mailbox's node answers `Close`
//! when the mailbox closes or the node shuts down. A lost connection is redialed; only if it
//! stays lost longer than `monitor_grace` is the watch reported down.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use crate::address::Address;
use crate::connection::{self, ConnCode};
use crate::error::{DialError, SendError};
use crate::frame::{self, ErrorCode, Frame, StreamKind};
use crate::identity::NodeId;
use crate::node::NodeInner;

/// Why a watched mailbox or peer is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The mailbox was closed (its address revoked), or did not exist when the watch began.
    MailboxClosed,
    /// The address was refused: forged, expired, or naming another node.
    InvalidAddress(SendError),
    /// The watched node shut down.
    NodeShutdown,
    /// The connection stayed lost longer than the grace period (`monitor_grace`).
    ConnectionLost,
    /// The node cannot be reached at all (refused, wrong identity, no known address).
    Unreachable(DialError),
    /// This node is shutting down, so the watch ends.
    LocalShutdown,
}

/// A watch on a mailbox or a peer. Await it for the [`DownReason`]; dropping it stops
/// watching.
#[must_use = "a Monitor reports nothing unless awaited; dropping it stops watching"]
pub struct Monitor {
    down: oneshot::Receiver<DownReason>,
    _stop: DropGuard,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

impl Future for Monitor {
    type Output = DownReason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DownReason> {
        Pin::new(&mut self.down)
            .poll(cx)
            .map(|reason| reason.unwrap_or(DownReason::LocalShutdown))
    }
}

fn start<F>(node: &Arc<NodeInner>, watch: F) -> Monitor
where
    F: Future<Output = DownReason> + Send + 'static,
{
    let (report, down) = oneshot::channel();
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
            let _ = report.send(reason);
        }
        .in_current_span(),
    );
    Monitor {
        down,
        _stop: stop.drop_guard(),
    }
}

pub(crate) fn monitor_mailbox(node: &Arc<NodeInner>, address: Address) -> Monitor {
    let watching = node.clone();
    start(node, async move { watch_mailbox(watching, address).await })
}

pub(crate) fn monitor_peer(node: &Arc<NodeInner>, peer: NodeId, hints: Vec<SocketAddr>) -> Monitor {
    let watching = node.clone();
    start(node, async move { watch_peer(watching, peer, hints).await })
}

/// What one attempt at watching ended with.
enum Outcome {
    Down(DownReason),
    /// The connection or stream was lost; try again within the grace period.
    Lost,
}

fn fatal_dial(error: DialError) -> Outcome {
    match error {
        DialError::Timeout | DialError::Failed(_) | DialError::TooManyConnections => Outcome::Lost,
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
        _ => Outcome::Lost,
    }
}

/// Retries `attempt` while the connection is lost, for at most the grace period in a row.
async fn with_grace<F, Fut>(node: &NodeInner, mut attempt: F) -> DownReason
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
            Outcome::Lost => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= node.config.monitor_grace {
                    return DownReason::ConnectionLost;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
        }
    }
}

async fn watch_mailbox(node: Arc<NodeInner>, address: Address) -> DownReason {
    if address.node() == node.id {
        return match node.mailboxes.authorize(&node, &address) {
            Ok(mailbox) => {
                mailbox.closed.cancelled().await;
                DownReason::MailboxClosed
            }
            Err(SendError::NoSuchMailbox) => DownReason::MailboxClosed,
            Err(error) => DownReason::InvalidAddress(error),
        };
    }
    with_grace(&node, |watching| {
        watch_mailbox_once(&node, &address, watching)
    })
    .await
}

async fn watch_mailbox_once(
    node: &Arc<NodeInner>,
    address: &Address,
    watching: Arc<std::sync::atomic::AtomicBool>,
) -> Outcome {
    let connection = match connection::connect(node, address.node(), address.hints()).await {
        Ok(connection) => connection,
        Err(error) => return fatal_dial(error),
    };
    let (mut send, mut recv) = match connection.open_bi().await {
        Ok(stream) => stream,
        Err(error) => return connection_outcome(&error),
    };
    let mut head = vec![StreamKind::Monitor as u8];
    frame::put_frame(
        &mut head,
        &Frame::Monitor(Box::new(address.without_hints())),
    );
    if send.write_all(&head).await.is_err() {
        return Outcome::Lost;
    }
    let mut buf = BytesMut::new();
    loop {
        match frame::decode_frame(&buf, frame::MAX_CONTROL_FRAME_LEN) {
            Ok(Some((frame, used))) => {
                match frame {
                    Frame::Accept { .. } => {
                        watching.store(true, std::sync::atomic::Ordering::Release);
                    }
                    Frame::Close { code, .. } => return Outcome::Down(down_reason(code, address)),
                    _ => return Outcome::Lost,
                }
                buf.advance(used);
                continue;
            }
            Ok(None) => {}
            Err(_) => return Outcome::Lost,
        }
        match recv.read_chunk(frame::MAX_CONTROL_FRAME_LEN, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Outcome::Lost,
            Err(quinn::ReadError::ConnectionLost(error)) => return connection_outcome(&error),
            Err(quinn::ReadError::Reset(code))
                if code.into_inner() == ErrorCode::NOT_ADMITTED.0 =>
            {
                return Outcome::Down(DownReason::Unreachable(DialError::Refused(
                    "node not admitted".into(),
                )))
            }
            Err(_) => return Outcome::Lost,
        }
    }
}

fn down_reason(code: ErrorCode, address: &Address) -> DownReason {
    match code {
        ErrorCode::NO_SUCH_MAILBOX => DownReason::MailboxClosed,
        ErrorCode::FORGED => DownReason::InvalidAddress(SendError::Forged),
        ErrorCode::EXPIRED => {
            DownReason::InvalidAddress(SendError::Expired(address.expires().unwrap_or(0)))
        }
        ErrorCode::WRONG_NODE => DownReason::InvalidAddress(SendError::WrongNode),
        ErrorCode::SHUTTING_DOWN => DownReason::NodeShutdown,
        _ => DownReason::ConnectionLost,
    }
}

async fn watch_peer(node: Arc<NodeInner>, peer: NodeId, hints: Vec<SocketAddr>) -> DownReason {
    with_grace(&node, |watching| {
        let node = node.clone();
        let hints = hints.clone();
        async move {
            let connection = match connection::connect(&node, peer, &hints).await {
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
    node: Arc<NodeInner>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    deadline: Instant,
) {
    let mut buf = BytesMut::new();
    let first = tokio::time::timeout_at(deadline, async {
        loop {
            match frame::decode_frame(&buf, frame::MAX_CONTROL_FRAME_LEN) {
                Ok(Some((Frame::Monitor(address), _))) => return Some(*address),
                Ok(None) => {}
                _ => return None,
            }
            match recv.read_chunk(frame::MAX_CONTROL_FRAME_LEN, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => return None,
            }
        }
    })
    .await;
    let address = match first {
        Ok(Some(address)) => address,
        Ok(None) => {
            return crate::inbound::refuse(&mut send, ErrorCode::PROTOCOL, "expected monitor").await
        }
        Err(_) => {
            return crate::inbound::refuse(&mut send, ErrorCode::TIMEOUT, "no monitor frame").await
        }
    };
    let mailbox = match node.mailboxes.authorize(&node, &address) {
        Ok(mailbox) => mailbox,
        Err(error) => {
            let code = crate::inbound::error_code(&error);
            return crate::inbound::refuse(&mut send, code, &error.to_string()).await;
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
        _ = mailbox.closed.cancelled() => {
            crate::inbound::refuse(&mut send, ErrorCode::NO_SUCH_MAILBOX, "mailbox closed").await;
        }
        _ = node.cancel.cancelled() => {
            crate::inbound::refuse(&mut send, ErrorCode::SHUTTING_DOWN, "node shutting down").await;
        }
        // The watcher sends nothing more; its stream ending means it stopped watching.
        _ = recv.read(&mut sink) => {}
    }
}
