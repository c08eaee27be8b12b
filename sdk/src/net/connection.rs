//! Connections between nodes: accepting, admission, and keeping exactly one connection in use
//! per pair of nodes, also when both dial each other at the same moment, when a punched direct
//! connection takes over from a relayed one, and when a path died without either side hearing
//! of it. Dialing is in [`crate::net::dial`].
//!
//! The rule (docs/PROTOCOL.md §2.4), applied by each node on its own whenever a second
//! connection to a peer is established: a direct connection replaces a relayed one; a
//! connection from a new incarnation (the peer restarted) replaces the old one; otherwise the
//! one dialed by the node with the smaller NodeId is kept when the two were dialed by
//! different nodes, and the newer one when both were dialed by the same node. Before keeping
//! the old connection a node checks that it still answers: one that does not is replaced, so
//! a node whose address changed can take its connections over by dialing again. A connection
//! the rule set aside stays open for a grace period, and is taken back into use if the kept
//! one closes right after its installation (its dialer had abandoned it).
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::error::DialError;
use crate::identity::NodeId;
use crate::net::liveness::PathProbe;
use crate::net::tls::{parse_cert, PeerCert};
use crate::net::Net;
use crate::sync::lock;
use ferry_proto::route::{Candidate, Route};
use ferry_proto::rule::{rule, Contender, Verdict};

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

/// A connection in use, with what its users need beside it: the token cancelled once another
/// connection to the same peer takes over (mailbox streams on it then move), and its probe.
/// Shared: every conversation's stream on the connection keeps it, parked ones too.
#[derive(Clone)]
pub(crate) struct Link(Arc<LinkState>);

/// What a [`Link`] shares.
pub(crate) struct LinkState {
    pub(crate) connection: quinn::Connection,
    pub(crate) superseded: CancellationToken,
    pub(crate) probe: Arc<PathProbe>,
    pub(crate) route: Route,
}

impl std::ops::Deref for Link {
    type Target = LinkState;

    fn deref(&self) -> &LinkState {
        &self.0
    }
}

impl Link {
    /// A link to `connection`, not superseded.
    fn new(connection: quinn::Connection, probe: Arc<PathProbe>, route: Route) -> Self {
        Self(Arc::new(LinkState {
            connection,
            superseded: CancellationToken::new(),
            probe,
            route,
        }))
    }

    /// Whether the connection is not closed. Never called with `Peers::slots` locked: it takes
    /// the connection's own lock, which quinn holds while it sends through the relay socket,
    /// which looks up `slots` (a lock-order deadlock).
    pub(crate) fn is_open(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    /// Probes the path if nothing arrived lately (see [`PathProbe::probe`]).
    pub(crate) fn probe(&self) -> crate::net::liveness::Probed {
        self.probe.probe(&self.connection)
    }

    /// Another connection to the peer took over: the mailbox streams on this one move, the
    /// parked ones too (`node` tells them).
    pub(crate) fn supersede(&self, node: &Net) {
        self.superseded.cancel();
        node.links_superseded.notify_one();
    }
}

/// A connection in use and what the rule needs to know of it.
pub(crate) struct Live {
    pub(crate) link: Link,
    incarnation: u64,
    dialed_by: NodeId,
    established: Instant,
}

/// A peer's entry in [`Peers`]: its connection in use, or the dial under way.
pub(crate) enum Slot {
    Connected(Live),
    Dialing(DialWaiter),
}

/// Where the callers of a shared dial wait for its outcome.
pub(crate) type DialWaiter = watch::Receiver<Option<Result<Link, DialError>>>;

/// A freshly established connection, before the rule decided whether it is kept.
pub(crate) struct Fresh {
    pub(crate) connection: quinn::Connection,
    pub(crate) probe: Arc<PathProbe>,
    pub(crate) route: Route,
    pub(crate) cert: PeerCert,
    pub(crate) dialed_by: NodeId,
}

/// The node's connections, one in use per peer, and what it knows about reaching peers.
#[derive(Default)]
pub(crate) struct Peers {
    pub(crate) slots: std::sync::Mutex<HashMap<NodeId, Slot>>,
    /// Socket addresses that reached each peer, most recent first.
    known: std::sync::Mutex<HashMap<NodeId, Vec<SocketAddr>>>,
    /// Connections installed since the node started (dialed or accepted, duplicates included).
    installed: std::sync::atomic::AtomicU64,
    /// Relays through which each peer can be reached, most recent first.
    relays: std::sync::Mutex<HashMap<NodeId, Vec<(NodeId, SocketAddr)>>>,
    /// The route of each peer's last successful dial: tried first next time.
    preferred: std::sync::Mutex<HashMap<NodeId, Candidate>>,
    /// When each peer last had a connection in use (now, for connected peers).
    last_connected: std::sync::Mutex<HashMap<NodeId, Instant>>,
    /// Peers being dialed again in the background while a connection exists.
    refreshing: std::sync::Mutex<HashSet<NodeId>>,
    /// Connections the rule set aside, in their grace period, per peer, newest last. Locked
    /// after `slots` when both are.
    retired: std::sync::Mutex<HashMap<NodeId, Vec<Retired>>>,
    /// Numbers the entries of `retired`.
    next_retired: std::sync::atomic::AtomicU64,
}

/// A connection the rule set aside that is still open: taken back into use if the connection
/// kept instead closes first (docs/PROTOCOL.md §2.4). Whoever removes the entry, under the
/// lock, owns the connection's fate: [`take_back`] puts it back in use, its grace task closes
/// it.
struct Retired {
    id: u64,
    live: Live,
    /// Cancelled when it is taken back, so that its grace task stops waiting.
    taken_back: CancellationToken,
}

const MAX_KNOWN_ADDRS: usize = 4;
/// Set-aside connections remembered per peer (more still close after their grace period, but
/// cannot be taken back).
const MAX_RETIRED: usize = 4;
const MAX_KNOWN_PEERS: usize = 65_536;
/// A connection established this recently is taken to be alive without a probe: the other
/// connection of a simultaneous dial.
const FRESH: Duration = Duration::from_secs(2);

/// Inserts `value` into a per-peer map bounded at [`MAX_KNOWN_PEERS`] entries.
fn bounded_insert<V>(map: &mut HashMap<NodeId, V>, peer: NodeId, value: V) {
    if map.len() >= MAX_KNOWN_PEERS && !map.contains_key(&peer) {
        return;
    }
    map.insert(peer, value);
}

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

    pub(crate) fn relays(&self, peer: &NodeId) -> Vec<(NodeId, SocketAddr)> {
        lock(&self.relays).get(peer).cloned().unwrap_or_default()
    }

    pub(crate) fn addrs(&self, peer: &NodeId) -> Vec<SocketAddr> {
        lock(&self.known).get(peer).cloned().unwrap_or_default()
    }

    pub(crate) fn preferred(&self, peer: &NodeId) -> Option<Candidate> {
        lock(&self.preferred).get(peer).copied()
    }

    pub(crate) fn set_preferred(&self, peer: NodeId, candidate: Candidate) {
        bounded_insert(&mut lock(&self.preferred), peer, candidate);
    }

    /// Whether `peer` had a connection in use within `window`: a peer that was reachable
    /// then is worth waiting for (the outbox); one that was not is reported unreachable.
    pub(crate) fn reached_within(&self, peer: &NodeId, window: Duration) -> bool {
        if self.link(peer).is_some() {
            return true;
        }
        lock(&self.last_connected)
            .get(peer)
            .is_some_and(|at| at.elapsed() < window)
    }

    fn touch(&self, peer: NodeId) {
        bounded_insert(&mut lock(&self.last_connected), peer, Instant::now());
    }

    /// The connection in use to `peer`, if any.
    pub(crate) fn link(&self, peer: &NodeId) -> Option<Link> {
        let link = match lock(&self.slots).get(peer) {
            Some(Slot::Connected(live)) => Some(live.link.clone()),
            _ => None,
        };
        link.filter(Link::is_open)
    }

    /// The live connection to `peer`, if any.
    pub(crate) fn connection(&self, peer: &NodeId) -> Option<quinn::Connection> {
        self.link(peer).map(|link| link.connection.clone())
    }

    /// Every peer with a connection in use, and its link.
    pub(crate) fn links(&self) -> Vec<(NodeId, Link)> {
        let links: Vec<(NodeId, Link)> = lock(&self.slots)
            .iter()
            .filter_map(|(peer, slot)| match slot {
                Slot::Connected(live) => Some((*peer, live.link.clone())),
                Slot::Dialing(_) => None,
            })
            .collect();
        links
            .into_iter()
            .filter(|(_, link)| link.is_open())
            .collect()
    }

    /// How many peers have a live connection.
    pub(crate) fn connected(&self) -> usize {
        self.links().len()
    }

    /// How many connections were installed since the node started.
    pub(crate) fn installed(&self) -> u64 {
        self.installed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn close_all(&self) {
        lock(&self.slots).clear();
    }

    /// Marks `peer` as being dialed again in the background; false if it already is.
    pub(crate) fn start_refresh(&self, peer: NodeId) -> bool {
        lock(&self.refreshing).insert(peer)
    }

    pub(crate) fn end_refresh(&self, peer: &NodeId) {
        lock(&self.refreshing).remove(peer);
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
pub(crate) fn is_alpn_mismatch(error: &quinn::ConnectionError) -> bool {
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

pub(crate) fn peer_cert(connection: &quinn::Connection) -> Option<PeerCert> {
    let identity = connection.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    parse_cert(certs.first()?.as_ref()).ok()
}

/// Registers a new connection and starts serving the streams the peer opens on it. Returns the
/// link to use, which is the older one if the rule keeps that.
pub(crate) async fn install(node: &Arc<Net>, fresh: Fresh) -> Link {
    let peer = fresh.cert.node;
    let link = Link::new(fresh.connection.clone(), fresh.probe, fresh.route);
    serve_connection(node, fresh.connection.clone(), peer);
    node.serve_streams(peer, fresh.connection);
    let new = Live {
        link: link.clone(),
        incarnation: fresh.cert.incarnation,
        dialed_by: fresh.dialed_by,
        established: Instant::now(),
    };
    // Whether the old connection answered, asked outside the lock (it takes a round trip).
    let mut checked: Option<(usize, bool)> = None;
    let kept = loop {
        match decide(node, peer, &new, checked) {
            Decision::Check(old) => {
                let alive = old.probe.answers(&old.connection).await;
                if !alive {
                    debug!(peer = %peer.short(), "the old connection does not answer; replacing it");
                }
                checked = Some((old.connection.stable_id(), alive));
            }
            Decision::KeepOld(old) => break Some(old),
            Decision::Installed => break None,
        }
    };
    node.peers.touch(peer);
    match kept {
        Some(old) => {
            link.supersede(node);
            retire(node, peer, new);
            old
        }
        None => {
            debug!(peer = %peer.short(), route = %link.route, "connection in use");
            if link.route.is_relayed() && new.dialed_by == node.id {
                (node.hooks.relayed_link_dialed)(node, peer, &link);
            }
            link
        }
    }
}

/// What [`install`] does next.
enum Decision {
    /// Ask the old connection whether it still answers, then decide again.
    Check(Link),
    /// The old connection stays in use.
    KeepOld(Link),
    /// The new connection is in use now.
    Installed,
}

/// Applies the rule to `new` and the peer's connection in use; installs `new` if it wins. The
/// slot is looked at under the lock and the connections judged outside it (see
/// `Link::is_open`); `new` is installed only if the slot still holds what was judged.
fn decide(node: &Arc<Net>, peer: NodeId, new: &Live, checked: Option<(usize, bool)>) -> Decision {
    loop {
        let old = match lock(&node.peers.slots).get(&peer) {
            Some(Slot::Connected(old)) => Some(old.snapshot()),
            _ => None,
        };
        if let Some(old) = old.as_ref().filter(|old| old.link.is_open()) {
            if rule(node.id, peer, old.contender(), new.contender()) == Verdict::KeepOld {
                let id = old.link.connection.stable_id();
                match checked {
                    Some((checked_id, true)) if checked_id == id => {
                        return Decision::KeepOld(old.link.clone())
                    }
                    Some((checked_id, false)) if checked_id == id => {}
                    _ if old.established.elapsed() < FRESH => {
                        return Decision::KeepOld(old.link.clone())
                    }
                    _ => return Decision::Check(old.link.clone()),
                }
            }
        }
        let old_id = old.as_ref().map(|old| old.link.connection.stable_id());
        let replaced = {
            let mut slots = lock(&node.peers.slots);
            let current_id = match slots.get(&peer) {
                Some(Slot::Connected(current)) => Some(current.link.connection.stable_id()),
                _ => None,
            };
            if current_id != old_id {
                continue; // another connection was installed meanwhile: decide again
            }
            node.peers
                .installed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            slots.insert(peer, Slot::Connected(new.snapshot()))
        };
        if let Some(Slot::Connected(old)) = replaced {
            old.link.supersede(node);
            let old_id = old.link.connection.stable_id();
            let dead = !old.link.is_open()
                || old.incarnation != new.incarnation
                || checked == Some((old_id, false));
            if dead {
                // The peer restarted, or the path died: nothing will finish on it.
                old.link
                    .connection
                    .close(ConnCode::DUPLICATE.into(), b"duplicate connection");
            } else {
                retire(node, peer, old);
            }
        }
        return Decision::Installed;
    }
}

impl Live {
    fn snapshot(&self) -> Self {
        Self {
            link: self.link.clone(),
            incarnation: self.incarnation,
            dialed_by: self.dialed_by,
            established: self.established,
        }
    }

    fn contender(&self) -> Contender {
        Contender {
            incarnation: self.incarnation,
            dialed_by: self.dialed_by,
            relayed: self.link.route.is_relayed(),
        }
    }
}

/// Closes `lost`'s connection, which lost the one-connection rule to another live connection
/// with `peer`, with DUPLICATE once a whole `duplicate_grace` has passed without stream data on
/// it (or at once when the node shuts down): both nodes may have started streams on it before
/// they learnt of the other connection, and those finish on it, however long they last (new
/// streams go to the kept one). Until then it can be taken back ([`take_back`]).
fn retire(node: &Arc<Net>, peer: NodeId, lost: Live) {
    let cancel = node.cancel.clone();
    let grace = node.config.duplicate_grace;
    let connection = lost.link.connection.clone();
    let id = node
        .peers
        .next_retired
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let taken_back = CancellationToken::new();
    {
        let mut retired = lock(&node.peers.retired);
        if retired.len() < MAX_KNOWN_PEERS || retired.contains_key(&peer) {
            let list = retired.entry(peer).or_default();
            if list.len() >= MAX_RETIRED {
                list.remove(0);
            }
            list.push(Retired {
                id,
                live: lost,
                taken_back: taken_back.clone(),
            });
        }
    }
    let retiring = node.clone();
    node.tasks.spawn(async move {
        let stream_frames = |connection: &quinn::Connection| {
            let stats = connection.stats();
            stats.frame_tx.stream.wrapping_add(stats.frame_rx.stream)
        };
        let mut seen = stream_frames(&connection);
        let close = loop {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = cancel.cancelled() => break true,
                _ = connection.closed() => break false,
                _ = taken_back.cancelled() => return,
            }
            let now = stream_frames(&connection);
            if now == seen {
                break true;
            }
            seen = now;
        };
        // Taken back meanwhile (the token is cancelled under the lock that `claim` takes):
        // it is in use again.
        if claim_retired(&retiring, peer, id, Claim::ToClose).is_none() && taken_back.is_cancelled()
        {
            return;
        }
        if close {
            connection.close(ConnCode::DUPLICATE.into(), b"duplicate connection");
        }
    });
}

/// Why a set-aside connection is claimed.
#[derive(PartialEq, Eq)]
enum Claim {
    /// Its grace period ended (or it closed): its task closes it.
    ToClose,
    /// [`take_back`] puts it in use again.
    ToUse,
}

/// Removes the set-aside connection `id` to `peer` from those that can be taken back, and
/// returns it, unless someone else removed it first. Claimed to use, its `taken_back` is
/// cancelled before the lock is released, so that its grace task, finding it gone, knows why.
fn claim_retired(node: &Net, peer: NodeId, id: u64, claim: Claim) -> Option<Retired> {
    let mut retired = lock(&node.peers.retired);
    let list = retired.get_mut(&peer)?;
    let position = list.iter().position(|entry| entry.id == id)?;
    let entry = list.remove(position);
    if list.is_empty() {
        retired.remove(&peer);
    }
    if claim == Claim::ToUse {
        entry.taken_back.cancel();
    }
    Some(entry)
}

/// Takes back into use the connection to `peer` the rule set aside most recently that is still
/// open, in place of `closed`, the connection in use, which the peer closed within [`FRESH`] of
/// the start of its installation: the peer may never have used it, having abandoned that
/// handshake just as this node completed it (docs/PROTOCOL.md §2.4). Only a connection to the
/// same incarnation is taken back, and only on a close the peer sent that is not a refusal (a
/// close this node made, a timeout or a reset says nothing of the abandoned handshake).
/// Whether it took one back: `false` leaves the slot as it was.
pub(crate) fn take_back(node: &Arc<Net>, peer: NodeId, closed: &quinn::Connection) -> bool {
    let closed_by_peer = match closed.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            close.error_code != ConnCode::ADMISSION_REFUSED.into()
                && close.error_code != ConnCode::PROTOCOL.into()
        }
        // An abandoned handshake's close may come before the application's keys.
        Some(quinn::ConnectionError::ConnectionClosed(_)) => true,
        _ => false,
    };
    if !closed_by_peer || node.cancel.is_cancelled() || node.bans.is_banned(&peer) {
        return false;
    }
    let candidates: Vec<(u64, Live)> = lock(&node.peers.retired)
        .get(&peer)
        .map(|list| {
            list.iter()
                .rev()
                .map(|entry| (entry.id, entry.live.snapshot()))
                .collect()
        })
        .unwrap_or_default();
    // Judged outside the slots' lock (see `Link::is_open`).
    let Some((id, old)) = candidates.into_iter().find(|(_, old)| old.link.is_open()) else {
        return false;
    };
    let link = Link::new(
        old.link.connection.clone(),
        old.link.probe.clone(),
        old.link.route,
    );
    // What leaves the slot and the registry is dropped after the lock: dropping the last
    // handle of a quinn connection takes quinn's lock (see `Link::is_open`).
    let (claimed, replaced) = {
        let mut slots = lock(&node.peers.slots);
        let Some(Slot::Connected(current)) = slots.get(&peer) else {
            return false;
        };
        if current.link.connection.stable_id() != closed.stable_id()
            || current.established.elapsed() >= FRESH
            || current.incarnation != old.incarnation
        {
            return false;
        }
        // Claimed under the slots' lock: its grace task can no longer close it.
        let Some(claimed) = claim_retired(node, peer, id, Claim::ToUse) else {
            return false;
        };
        current.link.superseded.cancel();
        node.peers
            .installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replaced = slots.insert(
            peer,
            Slot::Connected(Live {
                link: link.clone(),
                ..old
            }),
        );
        (claimed, replaced)
    };
    drop((claimed, replaced));
    node.peers.touch(peer);
    debug!(peer = %peer.short(), route = %link.route, "set-aside connection taken back into use");
    if link.route.is_relayed() && old.dialed_by == node.id {
        (node.hooks.relayed_link_dialed)(node, peer, &link);
    }
    true
}

/// Connections of both endpoints.
pub(crate) fn open_connections(node: &Net) -> usize {
    node.endpoint.open_connections() + node.relay_endpoint.open_connections()
}

/// Accepts incoming connections on `endpoint` (the node's own, or its relay endpoint for
/// `relayed` connections) until the node shuts down.
pub(crate) async fn accept_loop(node: Arc<Net>, endpoint: quinn::Endpoint, relayed: bool) {
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

async fn accept(node: Arc<Net>, incoming: quinn::Incoming, relayed: bool) {
    let remote = incoming.remote_address();
    let probe = Arc::new(PathProbe::default());
    let connecting = match incoming.accept_with(node.quic.server(relayed, &probe)) {
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
        node.serve_streams(cert.node, connection);
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
    let route = if relayed {
        match node.relay_socket.route_of(remote) {
            Some(relay) => Route::Relayed { relay },
            None => return,
        }
    } else {
        // quinn sends from the socket it listens on, so the source address is dialable; a
        // relayed connection's is a made-up one.
        node.peers.add_addr(cert.node, remote);
        Route::Direct(remote)
    };
    install(
        &node,
        Fresh {
            connection,
            probe,
            route,
            cert,
            dialed_by: cert.node,
        },
    )
    .await;
}

/// Serves a connection in use: its datagrams here (relaying, §12), its streams in the
/// stream server; once it closes, the peer's slot is freed if it still holds it.
fn serve_connection(node: &Arc<Net>, connection: quinn::Connection, peer: NodeId) {
    let serving = node.clone();
    let span = tracing::debug_span!("peer", peer = %peer.short());
    node.tasks.spawn(
        async move {
            crate::net::forwarding::serve_datagrams(serving.clone(), connection.clone(), peer)
                .await;
            if take_back(&serving, peer, &connection) {
                return;
            }
            let mut slots = lock(&serving.peers.slots);
            if let Some(Slot::Connected(live)) = slots.get(&peer) {
                if live.link.connection.stable_id() == connection.stable_id() {
                    // Closed: its streams, parked ones too, see that for themselves.
                    live.link.superseded.cancel();
                    slots.remove(&peer);
                    drop(slots);
                    serving.peers.touch(peer);
                }
            }
        }
        .instrument(span),
    );
}
