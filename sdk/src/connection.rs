//! Connections between nodes: dialing, accepting, admission, and keeping exactly one live
//! connection per pair of nodes, also when both dial each other at the same moment.
//!
//! The rule (docs/PROTOCOL.md §2.4): when a node has two live connections to the same peer
//! and the peer's certificate serial (its incarnation) is the same on both, it keeps the one
//! dialed by the node with the smaller NodeId and closes the other with `DUPLICATE`. Both sides
//! apply the same rule, so they agree without talking. A connection from a new incarnation
//! (the peer restarted) always replaces the old one.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use crate::error::DialError;
use crate::frame::{ErrorCode, StreamKind};
use crate::identity::NodeId;
use crate::mailbox::lock;
use crate::node::NodeInner;
use crate::tls::{parse_cert, PeerCert};

/// Application error codes of QUIC `CONNECTION_CLOSE` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnCode(u32);

impl ConnCode {
    /// The node is shutting down.
    pub(crate) const SHUTDOWN: Self = Self(0);
    /// The acceptor does not admit the dialer.
    pub(crate) const ADMISSION_REFUSED: Self = Self(1);
    /// Another connection between the same two nodes wins.
    pub(crate) const DUPLICATE: Self = Self(2);
    /// The peer broke the protocol.
    pub(crate) const PROTOCOL: Self = Self(3);
}

impl From<ConnCode> for quinn::VarInt {
    fn from(code: ConnCode) -> Self {
        quinn::VarInt::from_u32(code.0)
    }
}

struct Live {
    connection: quinn::Connection,
    incarnation: u64,
    dialed_by: NodeId,
}

enum Slot {
    Connected(Live),
    Dialing(watch::Receiver<Option<Result<quinn::Connection, DialError>>>),
}

/// The node's connections, one per peer.
#[derive(Default)]
pub(crate) struct Peers {
    slots: std::sync::Mutex<HashMap<NodeId, Slot>>,
    /// Socket addresses that reached each peer, most recent first.
    known: std::sync::Mutex<HashMap<NodeId, Vec<SocketAddr>>>,
    /// Connections installed since the node started (dialed or accepted, duplicates included).
    installed: std::sync::atomic::AtomicU64,
    /// Relays through which each peer can be reached, most recent first.
    relays: std::sync::Mutex<HashMap<NodeId, Vec<(NodeId, SocketAddr)>>>,
}

const MAX_KNOWN_ADDRS: usize = 4;
const MAX_KNOWN_PEERS: usize = 65_536;

impl Peers {
    pub(crate) fn add_addr(&self, peer: NodeId, addr: SocketAddr) {
        let mut known = lock(&self.known);
        if known.len() >= MAX_KNOWN_PEERS && !known.contains_key(&peer) {
            return;
        }
        let addrs = known.entry(peer).or_default();
        addrs.retain(|a| *a != addr);
        addrs.insert(0, addr);
        addrs.truncate(MAX_KNOWN_ADDRS);
    }

    /// Remembers that `peer` can be reached through `relay` at `relay_addr`.
    pub(crate) fn add_relay(&self, peer: NodeId, relay: NodeId, relay_addr: SocketAddr) {
        if peer == relay {
            return;
        }
        let mut relays = lock(&self.relays);
        if relays.len() >= MAX_KNOWN_PEERS && !relays.contains_key(&peer) {
            return;
        }
        let routes = relays.entry(peer).or_default();
        routes.retain(|route| *route != (relay, relay_addr));
        routes.insert(0, (relay, relay_addr));
        routes.truncate(MAX_KNOWN_ADDRS);
    }

    fn relays(&self, peer: &NodeId) -> Vec<(NodeId, SocketAddr)> {
        lock(&self.relays).get(peer).cloned().unwrap_or_default()
    }

    fn addrs(&self, peer: &NodeId) -> Vec<SocketAddr> {
        lock(&self.known).get(peer).cloned().unwrap_or_default()
    }

    /// The live connection to `peer`, if any.
    pub(crate) fn connection(&self, peer: &NodeId) -> Option<quinn::Connection> {
        match lock(&self.slots).get(peer) {
            Some(Slot::Connected(live)) if live.connection.close_reason().is_none() => {
                Some(live.connection.clone())
            }
            _ => None,
        }
    }

    /// How many peers have a live connection.
    pub(crate) fn connected(&self) -> usize {
        lock(&self.slots)
            .values()
            .filter(|slot| matches!(slot, Slot::Connected(live) if live.connection.close_reason().is_none()))
            .count()
    }

    /// How many connections were installed since the node started.
    pub(crate) fn installed(&self) -> u64 {
        self.installed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn close_all(&self) {
        lock(&self.slots).clear();
    }
}

/// Returns the connection to `peer`, dialing it if there is none. Concurrent callers share one
/// dial; the dial runs on its own task, so a caller giving up does not abort it.
pub(crate) async fn connect(
    node: &Arc<NodeInner>,
    peer: NodeId,
    hints: &[SocketAddr],
) -> Result<quinn::Connection, DialError> {
    loop {
        let mut waiter = {
            let mut slots = lock(&node.peers.slots);
            match slots.get(&peer) {
                Some(Slot::Connected(live)) if live.connection.close_reason().is_none() => {
                    return Ok(live.connection.clone());
                }
                Some(Slot::Dialing(waiter)) => waiter.clone(),
                _ => {
                    if node.cancel.is_cancelled() {
                        return Err(DialError::NodeClosed);
                    }
                    let (done, waiter) = watch::channel(None);
                    slots.insert(peer, Slot::Dialing(waiter.clone()));
                    let mut addrs = hints.to_vec();
                    for addr in node.peers.addrs(&peer) {
                        if !addrs.contains(&addr) {
                            addrs.push(addr);
                        }
                    }
                    if peer == node.id {
                        // The node's connection to itself (conversations, calls and lookups
                        // with its own services): its own socket, whatever it advertises.
                        addrs = vec![node.loopback_addr()];
                    }
                    let dialing = node.clone();
                    node.tasks.spawn(
                        async move {
                            let result = dial(&dialing, peer, addrs).await;
                            if result.is_err() {
                                let mut slots = lock(&dialing.peers.slots);
                                if matches!(slots.get(&peer), Some(Slot::Dialing(_))) {
                                    slots.remove(&peer);
                                }
                            }
                            let _ = done.send(Some(result));
                        }
                        .in_current_span(),
                    );
                    waiter
                }
            }
        };
        let answer = match waiter.wait_for(Option::is_some).await {
            Ok(result) => result.clone(),
            // The dial task ended without an answer (node shutting down).
            Err(_) => return Err(DialError::NodeClosed),
        };
        if let Some(result) = answer {
            return result;
        }
    }
}

async fn dial(
    node: &Arc<NodeInner>,
    peer: NodeId,
    addrs: Vec<SocketAddr>,
) -> Result<quinn::Connection, DialError> {
    let relays = node.peers.relays(&peer);
    if addrs.is_empty() && relays.is_empty() {
        return Err(DialError::NoAddress(peer));
    }
    if open_connections(node) >= node.config.max_connections {
        return Err(DialError::TooManyConnections);
    }
    let mut last_error = DialError::NoAddress(peer);
    for addr in addrs {
        match dial_via(node, &node.endpoint, peer, addr).await {
            Ok(connection) => {
                node.peers.add_addr(peer, addr);
                debug!(peer = %peer.short(), %addr, "dialed");
                return Ok(connection);
            }
            Err(error) if is_final(&error) => return Err(error),
            Err(error) => last_error = error,
        }
    }
    // Directly unreachable: through a relay, end to end all the same.
    for (relay, relay_addr) in relays {
        if relay == node.id {
            continue;
        }
        // Not `connect`, which would make dialing recursive; a second connection racing with
        // another dial of the relay is resolved by the one-connection rule.
        let relay_connection = match node.peers.connection(&relay) {
            Some(connection) => Ok(connection),
            None => dial_via(node, &node.endpoint, relay, relay_addr).await,
        };
        let relay_connection = match relay_connection {
            Ok(connection) => connection,
            Err(error) => {
                debug!(relay = %relay.short(), %error, "relay unreachable");
                last_error = error;
                continue;
            }
        };
        wait_for_datagram_room(&relay_connection).await;
        let Some(virtual_addr) = node.relay_socket.address_of(relay, peer) else {
            continue;
        };
        match dial_via(node, &node.relay_endpoint, peer, virtual_addr).await {
            Ok(connection) => {
                debug!(peer = %peer.short(), relay = %relay.short(), "dialed through relay");
                return Ok(connection);
            }
            Err(error) if is_final(&error) => return Err(error),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// Errors that trying another address or relay cannot fix.
fn is_final(error: &DialError) -> bool {
    matches!(
        error,
        DialError::WrongNode { .. } | DialError::IncompatibleVersion | DialError::Refused(_)
    )
}

/// Connections of both endpoints.
fn open_connections(node: &NodeInner) -> usize {
    node.endpoint.open_connections() + node.relay_endpoint.open_connections()
}

/// A relayed packet must fit into one datagram of the relay connection, whose path MTU
/// discovery may still be growing it past the initial 1200 bytes.
async fn wait_for_datagram_room(relay: &quinn::Connection) {
    let needed = usize::from(crate::relay::RELAYED_MTU) + crate::relay::RELAY_OVERHEAD;
    for _ in 0..100 {
        if relay.max_datagram_size().is_some_and(|max| max >= needed) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// One dial attempt of `peer` at `addr` on `endpoint`.
async fn dial_via(
    node: &Arc<NodeInner>,
    endpoint: &quinn::Endpoint,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, DialError> {
    let server_name = peer.to_string();
    let connecting = endpoint
        .connect(addr, &server_name)
        .map_err(|error| DialError::Failed(error.to_string()))?;
    let connection = match tokio::time::timeout(node.config.dial_timeout, connecting).await {
        Err(_) => return Err(DialError::Timeout),
        Ok(Err(error)) => return Err(dial_error(node, &peer, &error)),
        Ok(Ok(connection)) => connection,
    };
    let cert = peer_cert(&connection)
        .ok_or_else(|| DialError::Failed("peer presented no usable certificate".into()))?;
    if cert.node != peer {
        // The verifier already refuses this; keep the check where the result is used.
        connection.close(ConnCode::PROTOCOL.into(), b"wrong node");
        return Err(DialError::WrongNode {
            expected: peer,
            actual: cert.node,
        });
    }
    Ok(install(node, connection, cert, node.id))
}

/// Keeps a connection to the relay `relay` (one of `NodeConfig::relays`) open, redialing with
/// backoff whenever it is lost, so that peers can reach this node through it.
pub(crate) async fn stay_connected(node: Arc<NodeInner>, relay: NodeId, relay_addr: SocketAddr) {
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match connect(&node, relay, &[relay_addr]).await {
            Ok(connection) => {
                pause = std::time::Duration::from_millis(100);
                tokio::select! {
                    _ = node.cancel.cancelled() => return,
                    _ = connection.closed() => {}
                }
            }
            Err(error) => {
                debug!(relay = %relay.short(), %error, "relay unreachable; retrying");
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn log_failed_handshake(remote: SocketAddr, error: &quinn::ConnectionError) {
    if is_alpn_mismatch(error) {
        // An operator wants to know that a peer runs an incompatible version.
        warn!(%remote, "refused a peer that does not speak ferry/1 (unknown protocol version)");
    } else {
        debug!(%remote, %error, "incoming handshake failed");
    }
}

/// Whether a handshake failed because the two sides share no ALPN protocol (TLS alert 120).
fn is_alpn_mismatch(error: &quinn::ConnectionError) -> bool {
    let no_application_protocol = quinn::TransportErrorCode::crypto(0x78);
    match error {
        quinn::ConnectionError::TransportError(transport) => {
            transport.code == no_application_protocol
        }
        quinn::ConnectionError::ConnectionClosed(close) => {
            close.error_code == no_application_protocol
        }
        _ => false,
    }
}

fn dial_error(node: &NodeInner, peer: &NodeId, error: &quinn::ConnectionError) -> DialError {
    if let Some(actual) = node.mismatches.take(peer) {
        return DialError::WrongNode {
            expected: *peer,
            actual,
        };
    }
    if is_alpn_mismatch(error) {
        return DialError::IncompatibleVersion;
    }
    match error {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == ConnCode::ADMISSION_REFUSED.into() =>
        {
            DialError::Refused(String::from_utf8_lossy(&close.reason).into_owned())
        }
        quinn::ConnectionError::TimedOut => DialError::Timeout,
        other => DialError::Failed(other.to_string()),
    }
}

fn peer_cert(connection: &quinn::Connection) -> Option<PeerCert> {
    let identity = connection.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    parse_cert(certs.first()?.as_ref()).ok()
}

/// Registers a new connection and starts serving the streams the peer opens on it. Returns the
/// connection to use, which is the older one if the rule keeps that.
fn install(
    node: &Arc<NodeInner>,
    connection: quinn::Connection,
    cert: PeerCert,
    dialed_by: NodeId,
) -> quinn::Connection {
    let peer = cert.node;
    let winner = {
        let mut slots = lock(&node.peers.slots);
        let keep_old = match slots.get(&peer) {
            Some(Slot::Connected(old)) if old.connection.close_reason().is_none() => {
                old.incarnation == cert.incarnation
                    && old.dialed_by != dialed_by
                    && old.dialed_by == node.id.min(peer)
            }
            _ => false,
        };
        if keep_old {
            retire(node, connection.clone());
            match slots.get(&peer) {
                Some(Slot::Connected(old)) => old.connection.clone(),
                _ => connection.clone(),
            }
        } else {
            node.peers
                .installed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let previous = slots.insert(
                peer,
                Slot::Connected(Live {
                    connection: connection.clone(),
                    incarnation: cert.incarnation,
                    dialed_by,
                }),
            );
            if let Some(Slot::Connected(old)) = previous {
                if old.incarnation == cert.incarnation {
                    retire(node, old.connection);
                } else {
                    // The peer restarted: the old connection is dead already.
                    old.connection
                        .close(ConnCode::DUPLICATE.into(), b"duplicate connection");
                }
            }
            connection.clone()
        }
    };
    let serving = node.clone();
    let span = tracing::debug_span!("peer", peer = %peer.short());
    node.tasks
        .spawn(serve_connection(serving, connection, peer).instrument(span));
    winner
}

/// Closes `connection`, which lost the one-connection rule to another live connection with
/// the same peer, with DUPLICATE once a whole `duplicate_grace` has passed without stream
/// data on it (or at once when the node shuts down): both nodes may have started streams on it
/// before they learnt of the other connection, and those finish on it, however long they
/// last (new streams go to the kept one).
fn retire(node: &Arc<NodeInner>, connection: quinn::Connection) {
    let cancel = node.cancel.clone();
    let grace = node.config.duplicate_grace;
    node.tasks.spawn(async move {
        let stream_frames = |connection: &quinn::Connection| {
            let stats = connection.stats();
            stats.frame_tx.stream.wrapping_add(stats.frame_rx.stream)
        };
        let mut seen = stream_frames(&connection);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = cancel.cancelled() => break,
                _ = connection.closed() => return,
            }
            let now = stream_frames(&connection);
            if now == seen {
                break;
            }
            seen = now;
        }
        connection.close(ConnCode::DUPLICATE.into(), b"duplicate connection");
    });
}

/// Accepts incoming connections on `endpoint` (the node's own, or its relay endpoint for
/// `relayed` connections) until the node shuts down.
pub(crate) async fn accept_loop(node: Arc<NodeInner>, endpoint: quinn::Endpoint, relayed: bool) {
    loop {
        let incoming = tokio::select! {
            _ = node.cancel.cancelled() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        if open_connections(&node) >= node.config.max_connections {
            warn!("connection limit reached; refusing a handshake");
            node.stats.count_handshake_refused();
            incoming.refuse();
            continue;
        }
        let source = incoming.remote_address();
        let validated = incoming.remote_address_validated();
        let rate = node.config.handshake_rate_per_ip;
        if !node.handshakes.allow(source.ip(), validated, rate) {
            node.stats.count_handshake_refused();
            if validated {
                debug!(%source, "handshake rate limit reached; refusing");
                incoming.refuse();
            } else {
                // Over the limit for unproven addresses: a stateless Retry makes the source
                // prove it owns the address, so that forged packets cannot use up the owner's
                // budget (validated sources are counted apart).
                let _ = incoming.retry();
            }
            continue;
        }
        let accepting = node.clone();
        node.tasks
            .spawn(async move { accept(accepting, incoming, relayed).await }.in_current_span());
    }
}

async fn accept(node: Arc<NodeInner>, incoming: quinn::Incoming, relayed: bool) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            log_failed_handshake(remote, &error);
            return;
        }
    };
    let connection = match tokio::time::timeout(node.config.dial_timeout, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            log_failed_handshake(remote, &error);
            return;
        }
        Err(_) => {
            debug!(%remote, "incoming handshake timed out");
            return;
        }
    };
    let Some(cert) = peer_cert(&connection) else {
        connection.close(ConnCode::PROTOCOL.into(), b"no usable certificate");
        return;
    };
    if cert.node == node.id && cert.incarnation == node.serial {
        // This node dialed itself. The dialing end is its connection to itself; this end
        // only serves the streams opened on it. Installing it too would make the
        // one-connection rule close the one connection both ends belong to.
        let span = tracing::debug_span!("loopback");
        node.tasks
            .spawn(serve_connection(node.clone(), connection, cert.node).instrument(span));
        return;
    }
    if !node.config.admission.admits(&cert.node) {
        info!(peer = %cert.node.short(), %remote, "refusing peer not admitted");
        connection.close(ConnCode::ADMISSION_REFUSED.into(), b"node not admitted");
        return;
    }
    if node.bans.is_banned(&cert.node) {
        debug!(peer = %cert.node.short(), %remote, "refusing a banned peer");
        connection.close(
            ConnCode::ADMISSION_REFUSED.into(),
            b"banned for protocol violations",
        );
        return;
    }
    // quinn sends from the socket it listens on, so the source address is dialable; a
    // relayed connection's is a made-up one.
    if !relayed {
        node.peers.add_addr(cert.node, remote);
    }
    install(&node, connection, cert, cert.node);
}

/// Serves the streams `peer` opens on `connection` until it closes.
async fn serve_connection(node: Arc<NodeInner>, connection: quinn::Connection, peer: NodeId) {
    node.tasks.spawn(
        crate::relay::serve_datagrams(node.clone(), connection.clone(), peer).in_current_span(),
    );
    // What this peer's mailbox streams hold in their receive buffers, and its violations.
    let guard = Arc::new(crate::limits::PeerGuard::new(
        peer,
        connection.clone(),
        node.config.max_buffered_per_peer,
    ));
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
        if !admitted || node.bans.is_banned(&peer) {
            let code = quinn::VarInt::from_u32(ErrorCode::NOT_ADMITTED.0 as u32);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            continue;
        }
        let serving = node.clone();
        let guard = guard.clone();
        node.tasks.spawn(
            async move {
                let _open = serving.stats.stream_in();
                // One deadline covers the stream kind byte and the opening frame.
                let deadline = tokio::time::Instant::now() + serving.config.open_timeout;
                let mut kind = [0u8; 1];
                let read = tokio::time::timeout_at(deadline, recv.read_exact(&mut kind)).await;
                if !matches!(read, Ok(Ok(()))) {
                    if read.is_err() {
                        guard.violation(&serving, "no stream kind within open_timeout");
                    }
                    let code = quinn::VarInt::from_u32(ErrorCode::TIMEOUT.0 as u32);
                    let _ = recv.stop(code);
                    let _ = send.reset(code);
                    return;
                }
                match StreamKind::from_byte(kind[0]) {
                    Ok(StreamKind::Mailbox) => {
                        crate::inbound::serve(serving, guard, send, recv, deadline).await
                    }
                    Ok(StreamKind::Conversation) => {
                        crate::service::serve_stream(serving, peer, send, recv, deadline, guard)
                            .await
                    }
                    Ok(StreamKind::Monitor) => {
                        crate::monitor::serve_stream(serving, send, recv, deadline, guard).await
                    }
                    Err(error) => {
                        debug!(%error, "refusing stream");
                        guard.violation(&serving, "unknown stream kind");
                        let code = quinn::VarInt::from_u32(ErrorCode::PROTOCOL.0 as u32);
                        let _ = recv.stop(code);
                        let _ = send.reset(code);
                    }
                }
            }
            .in_current_span(),
        );
    }
    let mut slots = lock(&node.peers.slots);
    if let Some(Slot::Connected(live)) = slots.get(&peer) {
        if live.connection.stable_id() == connection.stable_id() {
            slots.remove(&peer);
        }
    }
}
