//! What flows over connections: the stream kinds of docs/PROTOCOL.md §5.1 and the node's
//! side of each — mailbox streams into this node's mailboxes ([`inbound`]), conversations,
//! calls and lookups with its services ([`service`], [`crate::conversation`]), watches of its
//! mailboxes ([`monitor`]), and the built-in ping ([`ping`]).

pub(crate) mod inbound;
pub(crate) mod monitor;
pub(crate) mod ping;
pub(crate) mod service;

use std::sync::{Arc, Weak};

use tracing::{debug, Instrument};

use crate::frame::{ErrorCode, StreamKind};
use crate::identity::NodeId;
use crate::runtime::Runtime;

/// The node's stream server: every connection the network takes into use gets a task that
/// takes the streams its peer opens and hands each to its kind's handler (the one dispatch
/// point of stream kinds).
pub(crate) struct Server(Weak<Runtime>);

impl Server {
    pub(crate) fn new(node: &Arc<Runtime>) -> Self {
        Self(Arc::downgrade(node))
    }
}

impl crate::net::StreamServer for Server {
    fn serve(&self, peer: NodeId, connection: quinn::Connection) {
        let Some(node) = self.0.upgrade() else {
            return;
        };
        let span = tracing::debug_span!("peer", peer = %peer.short());
        let serving = node.clone();
        node.tasks
            .spawn(serve_connection(serving, connection, peer).instrument(span));
    }
}

/// Serves the streams `peer` opens on `connection` until it closes.
async fn serve_connection(node: Arc<Runtime>, connection: quinn::Connection, peer: NodeId) {
    // What this peer's mailbox streams hold in their receive buffers, and its violations.
    let guard = Arc::new(crate::net::limits::PeerGuard::new(
        peer,
        connection.clone(),
        node.config.max_buffered_per_peer,
    ));
    // The streams this peer may open, granted as it uses them.
    let mut credit = crate::net::limits::StreamCredit::new(
        connection.clone(),
        crate::net::transport::initial_streams(&node.config),
        node.config.max_incoming_streams,
    );
    // A node bound paused takes no stream before its application is ready for them.
    tokio::select! {
        _ = node.serving.cancelled() => {}
        _ = node.cancel.cancelled() => return,
    }
    // Admission also covers connections this node dialed: a peer that is not admitted may be
    // sent to, but may not open streams here.
    let admitted = peer == node.id || node.config.admission.admits(&peer);
    loop {
        let stream = tokio::select! {
            _ = node.cancel.cancelled() => break,
            stream = connection.accept_bi() => stream,
        };
        let (mut send, mut recv) = match stream {
            Ok(stream) => stream,
            Err(error) => {
                debug!(%error, "connection ended");
                break;
            }
        };
        if !admitted || node.net.bans.is_banned(&peer) {
            let code = quinn::VarInt::from_u32(ErrorCode::NOT_ADMITTED.0 as u32);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            continue;
        }
        let in_use = credit.opened();
        let serving = node.clone();
        let guard = guard.clone();
        let origin = connection.clone();
        node.tasks.spawn(
            async move {
                // Counts against the peer's stream credit until the stream is done with: the end
                // of this task, or of the conversation it hands to a service.
                let in_use = in_use;
                let _open = serving.stats.stream_in();
                // One deadline covers the stream kind byte and the opening frame.
                let deadline = tokio::time::Instant::now() + serving.config.open_timeout;
                let mut kind = [0u8; 1];
                // Only what the read says is kept, not its result: that would stay in the
                // task's future for the stream's life.
                let (read, timed_out) = {
                    let read = tokio::time::timeout_at(deadline, recv.read_exact(&mut kind)).await;
                    (matches!(read, Ok(Ok(()))), read.is_err())
                };
                if !read {
                    if timed_out {
                        guard.violation(&serving.net, "no stream kind within open_timeout");
                    }
                    let code = quinn::VarInt::from_u32(ErrorCode::TIMEOUT.0 as u32);
                    let _ = recv.stop(code);
                    let _ = send.reset(code);
                    return;
                }
                match StreamKind::from_byte(kind[0]) {
                    Ok(StreamKind::Mailbox) => {
                        let served = crate::streams::inbound::serve(
                            &serving, &guard, &mut send, &mut recv, deadline,
                        )
                        .await;
                        if let Err(refusal) = served {
                            // Boxed: written once, at the end; inline, its room would be kept
                            // in every mailbox stream's future.
                            Box::pin(crate::streams::inbound::close(&mut send, refusal)).await;
                        }
                    }
                    // Boxed, so that each kind of stream costs what its own state needs:
                    // inline, every mailbox stream's task would be as large as the largest.
                    Ok(StreamKind::Conversation) => {
                        Box::pin(crate::streams::service::serve_stream(
                            serving, guard.peer, origin, send, recv, deadline, guard, in_use,
                        ))
                        .await
                    }
                    Ok(StreamKind::Monitor) => {
                        Box::pin(crate::streams::monitor::serve_stream(
                            serving, send, recv, deadline, guard,
                        ))
                        .await
                    }
                    Err(error) => {
                        debug!(%error, "refusing stream");
                        guard.violation(&serving.net, "unknown stream kind");
                        let code = quinn::VarInt::from_u32(ErrorCode::PROTOCOL.0 as u32);
                        let _ = recv.stop(code);
                        let _ = send.reset(code);
                    }
                }
            }
            .in_current_span(),
        );
    }
}
