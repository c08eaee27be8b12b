//! Dialing a peer as a browser dials a web server: every known route to it is tried in a
//! staggered race (happy eyeballs), and the first handshake that proves the peer's identity
//! wins (docs/PROTOCOL.md §2.5).
//!
//! The routes ([`Candidate`]s), in the order they start: the route of the last successful
//! dial, the target address's socket-address hints, addresses the peer was reached at before,
//! then the relays that can reach it. Direct candidates start [`STAGGER`] apart, relays
//! [`RELAY_DELAY`] after the first one (at once when no direct candidate is known). A
//! candidate that does not answer gets a fresh attempt every `reattempt`, so a path that comes
//! back during a dial is used within about that long (QUIC's own retransmissions of a
//! handshake back off to seconds). A candidate that answers with another identity, another
//! protocol, or an error that will repeat is out of the race; a refusal by the peer itself ends
//! the dial. The dial reports every route's failure when all have failed or `dial_timeout`
//! passed.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::connection::{self, ConnCode, Fresh, Link, Route};
use crate::error::{DialError, RouteFailure};
use crate::identity::NodeId;
use crate::liveness::PathProbe;
use crate::node::NodeInner;

/// Time between the starts of two direct candidates.
pub(crate) const STAGGER: Duration = Duration::from_millis(150);
/// Time from the start of a dial to the start of its first relay candidate, when it has
/// direct candidates too: a relayed connection costs the relay's bandwidth, so a direct route
/// that answers quickly should win.
pub(crate) const RELAY_DELAY: Duration = Duration::from_millis(300);
/// Time after which a candidate that has not answered gets a fresh attempt.
pub(crate) const REATTEMPT: Duration = Duration::from_millis(500);
/// Attempts of one candidate in flight at once; a fresh one replaces the oldest.
const LIVE_ATTEMPTS: usize = 2;
/// Candidates of one dial at most.
const MAX_CANDIDATES: usize = 12;

/// One way to reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Candidate {
    /// The peer's UDP socket address.
    Direct(SocketAddr),
    /// Through the relay `relay` at `relay_addr`.
    Relay {
        relay: NodeId,
        relay_addr: SocketAddr,
    },
}

impl Candidate {
    fn route(&self) -> Route {
        match *self {
            Self::Direct(addr) => Route::Direct(addr),
            Self::Relay { relay, .. } => Route::Relayed { relay },
        }
    }

    /// Whether it can be dialed at all: a wildcard IP, port 0 or a multicast address cannot.
    fn dialable(&self) -> bool {
        match self {
            Self::Direct(addr)
            | Self::Relay {
                relay_addr: addr, ..
            } => addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast(),
        }
    }
}

/// The candidates for `peer`, in the order they start.
fn candidates(node: &NodeInner, peer: NodeId, hints: &[SocketAddr]) -> Vec<Candidate> {
    if peer == node.id {
        // The node's connection to itself (conversations, calls and lookups with its own
        // services): its own socket, whatever it advertises.
        return vec![Candidate::Direct(node.loopback_addr())];
    }
    let mut list: Vec<Candidate> = node.peers.preferred(&peer).into_iter().collect();
    list.extend(hints.iter().copied().map(Candidate::Direct));
    list.extend(node.peers.addrs(&peer).into_iter().map(Candidate::Direct));
    list.extend(
        node.peers
            .relays(&peer)
            .into_iter()
            .filter(|(relay, _)| *relay != node.id)
            .map(|(relay, relay_addr)| Candidate::Relay { relay, relay_addr }),
    );
    let mut seen = std::collections::HashSet::new();
    list.retain(|candidate| candidate.dialable() && seen.insert(*candidate));
    list.truncate(MAX_CANDIDATES);
    list
}

/// Dials `peer` at every known route (plus `hints`), and installs the first connection made.
pub(crate) async fn dial(
    node: &Arc<NodeInner>,
    peer: NodeId,
    hints: Vec<SocketAddr>,
) -> Result<Link, DialError> {
    if connection::open_connections(node) >= node.config.max_connections {
        return Err(DialError::TooManyConnections);
    }
    let candidates = candidates(node, peer, &hints);
    if candidates.is_empty() {
        return Err(DialError::NoAddress(peer));
    }
    race(node, peer, candidates, REATTEMPT, node.config.dial_timeout).await
}

/// Races `candidates` for `timeout`, giving each a fresh attempt every `reattempt`; installs
/// the winner and remembers its route.
pub(crate) async fn race(
    node: &Arc<NodeInner>,
    peer: NodeId,
    candidates: Vec<Candidate>,
    reattempt: Duration,
    timeout: Duration,
) -> Result<Link, DialError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut race = Race::new(candidates, start, reattempt);
    let mut attempts: FuturesUnordered<Attempt> = FuturesUnordered::new();
    loop {
        let wake = race.next_start().unwrap_or(deadline).min(deadline);
        tokio::select! {
            _ = node.cancel.cancelled() => return Err(DialError::NodeClosed),
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                for index in race.due(now) {
                    let cancel = race.started(index, now);
                    if let Some(candidate) = race.candidate(index) {
                        attempts.push(attempt(node.clone(), peer, index, candidate, deadline, cancel));
                    }
                }
            }
            Some((index, result)) = attempts.next() => match result {
                Ok(fresh) => {
                    let link = connection::install(node, fresh).await;
                    if let Some(candidate) = race.candidate(index) {
                        if let Candidate::Direct(addr) = candidate {
                            node.peers.add_addr(peer, addr);
                        }
                        node.peers.set_preferred(peer, candidate);
                        debug!(peer = %peer.short(), route = %candidate.route(), "dialed");
                    }
                    if !attempts.is_empty() {
                        // Dropping an attempt whose handshake completed on the peer's side
                        // would close a connection the peer may be using; the rule sorts
                        // out the ones that complete.
                        node.tasks.spawn(install_remaining(node.clone(), attempts));
                    }
                    return Ok(link);
                }
                // The peer itself said no: no other route changes its mind.
                Err(error @ DialError::Refused(_)) => return Err(error),
                Err(DialError::NodeClosed) => return Err(DialError::NodeClosed),
                Err(error) => {
                    race.failed(index, error);
                    if race.exhausted() && attempts.is_empty() {
                        break;
                    }
                }
            },
        }
    }
    Err(race.error(peer))
}

type Attempt = Pin<Box<dyn Future<Output = (usize, Result<Fresh, DialError>)> + Send>>;

/// Installs the attempts that still complete after a dial was won.
async fn install_remaining(node: Arc<NodeInner>, mut attempts: FuturesUnordered<Attempt>) {
    while let Some((_, result)) = attempts.next().await {
        if let Ok(fresh) = result {
            connection::install(&node, fresh).await;
        }
    }
}

fn attempt(
    node: Arc<NodeInner>,
    peer: NodeId,
    index: usize,
    candidate: Candidate,
    deadline: Instant,
    cancel: CancellationToken,
) -> Attempt {
    Box::pin(async move {
        let result = tokio::select! {
            result = handshake(&node, peer, candidate, deadline) => result,
            // Replaced by a fresh attempt of the same candidate: reported as a timeout.
            _ = cancel.cancelled() => Err(DialError::Timeout),
        };
        (index, result)
    })
}

/// One attempt at one candidate: a QUIC handshake that proves `peer`'s identity.
async fn handshake(
    node: &Arc<NodeInner>,
    peer: NodeId,
    candidate: Candidate,
    deadline: Instant,
) -> Result<Fresh, DialError> {
    match candidate {
        Candidate::Direct(addr) => {
            connect_on(node, false, peer, addr, Route::Direct(addr), deadline).await
        }
        Candidate::Relay { relay, relay_addr } => {
            let relay_link = match node.peers.link(&relay) {
                Some(link) => link,
                None => tokio::time::timeout_at(
                    deadline,
                    connection::connect_link(node, relay, &[relay_addr]),
                )
                .await
                .map_err(|_| DialError::Timeout)??,
            };
            wait_for_datagram_room(&relay_link.connection).await;
            let virtual_addr = node
                .relay_socket
                .address_of(relay, peer)
                .ok_or_else(|| DialError::Failed("too many relayed peers".into()))?;
            connect_on(
                node,
                true,
                peer,
                virtual_addr,
                Route::Relayed { relay },
                deadline,
            )
            .await
        }
    }
}

/// A relayed packet must fit into one datagram of the relay connection, whose path MTU
/// discovery may still be growing it past the initial 1200 bytes.
async fn wait_for_datagram_room(relay: &quinn::Connection) {
    let needed = usize::from(crate::relay::RELAYED_MTU) + crate::relay::RELAY_OVERHEAD;
    for _ in 0..100 {
        if relay.max_datagram_size().is_some_and(|max| max >= needed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A handshake with `peer` at `addr` on the node's own endpoint, or its relay endpoint.
async fn connect_on(
    node: &Arc<NodeInner>,
    relayed: bool,
    peer: NodeId,
    addr: SocketAddr,
    route: Route,
    deadline: Instant,
) -> Result<Fresh, DialError> {
    let probe = Arc::new(PathProbe::default());
    let endpoint = if relayed {
        &node.relay_endpoint
    } else {
        &node.endpoint
    };
    let connecting = endpoint
        .connect_with(node.quic.client(relayed, &probe), addr, &peer.to_string())
        .map_err(|error| DialError::Undialable {
            addr,
            reason: error.to_string(),
        })?;
    let connection = match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => return Err(DialError::Timeout),
        Ok(Err(error)) => return Err(dial_error(node, &peer, &error)),
        Ok(Ok(connection)) => connection,
    };
    let cert = connection::peer_cert(&connection)
        .ok_or_else(|| DialError::Failed("peer presented no usable certificate".into()))?;
    if cert.node != peer {
        // The verifier already refuses this; keep the check where the result is used.
        connection.close(ConnCode::PROTOCOL.into(), b"wrong node");
        return Err(DialError::WrongNode {
            expected: peer,
            actual: cert.node,
        });
    }
    Ok(Fresh {
        connection,
        probe,
        route,
        cert,
        dialed_by: node.id,
    })
}

fn dial_error(node: &NodeInner, peer: &NodeId, error: &quinn::ConnectionError) -> DialError {
    if let Some(actual) = node.mismatches.take(peer) {
        return DialError::WrongNode {
            expected: *peer,
            actual,
        };
    }
    if connection::is_alpn_mismatch(error) {
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

/// Errors after which a candidate gets no more attempts in this dial.
fn ends_candidate(error: &DialError) -> bool {
    matches!(
        error,
        DialError::WrongNode { .. }
            | DialError::IncompatibleVersion
            | DialError::Undialable { .. }
            | DialError::NoAddress(_)
            | DialError::NoRoute { .. }
            | DialError::TooManyConnections
    )
}

/// The state of one dial's candidates: when each starts next, its attempts in flight, and how
/// it failed. Pure bookkeeping (no IO), driven by [`race`].
struct Race {
    entries: Vec<Entry>,
    reattempt: Duration,
}

struct Entry {
    candidate: Candidate,
    next_start: Option<Instant>,
    live: VecDeque<CancellationToken>,
    /// The last failure; with `next_start` None, the candidate is out.
    error: Option<DialError>,
}

impl Race {
    fn new(candidates: Vec<Candidate>, start: Instant, reattempt: Duration) -> Self {
        let has_direct = candidates
            .iter()
            .any(|candidate| matches!(candidate, Candidate::Direct(_)));
        let preferred_relay = matches!(candidates.first(), Some(Candidate::Relay { .. }));
        let relay_start = if has_direct && !preferred_relay {
            start + RELAY_DELAY
        } else {
            start
        };
        let (mut directs, mut relays) = (0u32, 0u32);
        let entries = candidates
            .into_iter()
            .map(|candidate| {
                let at = match candidate {
                    Candidate::Direct(_) => {
                        directs += 1;
                        start + STAGGER * (directs - 1)
                    }
                    Candidate::Relay { .. } => {
                        relays += 1;
                        relay_start + STAGGER * (relays - 1)
                    }
                };
                Entry {
                    candidate,
                    next_start: Some(at),
                    live: VecDeque::new(),
                    error: None,
                }
            })
            .collect();
        Self { entries, reattempt }
    }

    fn candidate(&self, index: usize) -> Option<Candidate> {
        self.entries.get(index).map(|entry| entry.candidate)
    }

    /// When the next attempt starts, if any is still to start.
    fn next_start(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|entry| entry.next_start)
            .min()
    }

    /// The candidates whose next attempt is due at `now`.
    fn due(&self, now: Instant) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.next_start.is_some_and(|at| at <= now))
            .map(|(index, _)| index)
            .collect()
    }

    /// Records an attempt of `index` started at `now`; returns the token that cancels it.
    fn started(&mut self, index: usize, now: Instant) -> CancellationToken {
        let cancel = CancellationToken::new();
        if let Some(entry) = self.entries.get_mut(index) {
            if entry.live.len() >= LIVE_ATTEMPTS {
                if let Some(oldest) = entry.live.pop_front() {
                    oldest.cancel();
                }
            }
            entry.live.push_back(cancel.clone());
            entry.next_start = Some(now + self.reattempt);
        }
        cancel
    }

    /// Records a failed attempt of `index`.
    fn failed(&mut self, index: usize, error: DialError) {
        if let Some(entry) = self.entries.get_mut(index) {
            entry.live.retain(|token| !token.is_cancelled());
            if ends_candidate(&error) {
                entry.next_start = None;
                for token in entry.live.drain(..) {
                    token.cancel();
                }
            }
            // A replaced attempt's "timeout" says less than what the candidate said before.
            if entry.error.is_none() || error != DialError::Timeout {
                entry.error = Some(error);
            }
        }
    }

    /// Whether every candidate is out of the race.
    fn exhausted(&self) -> bool {
        self.entries.iter().all(|entry| entry.next_start.is_none())
    }

    /// The dial's error: the one candidate's, or every candidate's.
    fn error(self, peer: NodeId) -> DialError {
        let mut tried: Vec<RouteFailure> = self
            .entries
            .into_iter()
            .map(|entry| RouteFailure {
                route: entry.candidate.route(),
                error: entry.error.unwrap_or(DialError::Timeout),
            })
            .collect();
        if tried.len() == 1 {
            if let Some(only) = tried.pop() {
                return only.error;
            }
        }
        DialError::NoRoute { node: peer, tried }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    fn direct(port: u16) -> Candidate {
        Candidate::Direct(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    fn relay(port: u16) -> Candidate {
        Candidate::Relay {
            relay: SecretKey::generate().public(),
            relay_addr: SocketAddr::from(([192, 0, 2, 1], port)),
        }
    }

    #[test]
    fn direct_candidates_are_staggered_and_relays_wait() {
        let start = Instant::now();
        let race = Race::new(vec![direct(1), direct(2), relay(3)], start, REATTEMPT);
        assert_eq!(race.due(start), vec![0]);
        assert_eq!(race.due(start + STAGGER), vec![0, 1]);
        assert_eq!(race.due(start + RELAY_DELAY), vec![0, 1, 2]);
    }

    #[test]
    fn relays_start_at_once_without_direct_candidates_or_when_preferred() {
        let start = Instant::now();
        let only_relays = Race::new(vec![relay(1), relay(2)], start, REATTEMPT);
        assert_eq!(only_relays.due(start), vec![0]);
        let preferred = Race::new(vec![relay(1), direct(2)], start, REATTEMPT);
        assert_eq!(preferred.due(start), vec![0, 1]);
    }

    #[test]
    fn a_silent_candidate_is_tried_again_and_its_oldest_attempt_replaced() {
        let start = Instant::now();
        let mut race = Race::new(vec![direct(1)], start, REATTEMPT);
        let first = race.started(0, start);
        assert_eq!(race.next_start(), Some(start + REATTEMPT));
        let second = race.started(0, start + REATTEMPT);
        assert!(!first.is_cancelled());
        let _third = race.started(0, start + REATTEMPT * 2);
        assert!(first.is_cancelled(), "the oldest attempt makes way");
        assert!(!second.is_cancelled());
    }

    #[test]
    fn a_wrong_node_ends_its_candidate_only() {
        let start = Instant::now();
        let mut race = Race::new(vec![direct(1), relay(2)], start, REATTEMPT);
        let token = race.started(0, start);
        race.failed(
            0,
            DialError::WrongNode {
                expected: SecretKey::generate().public(),
                actual: SecretKey::generate().public(),
            },
        );
        assert!(token.is_cancelled());
        assert!(!race.exhausted());
        race.failed(1, DialError::IncompatibleVersion);
        assert!(race.exhausted());
        let peer = SecretKey::generate().public();
        match race.error(peer) {
            DialError::NoRoute { node, tried } => {
                assert_eq!(node, peer);
                assert_eq!(tried.len(), 2);
                assert!(matches!(tried[0].error, DialError::WrongNode { .. }));
                assert_eq!(tried[1].error, DialError::IncompatibleVersion);
            }
            other => panic!("expected NoRoute, got {other:?}"),
        }
    }

    #[test]
    fn one_candidate_reports_its_own_error_and_timeouts_do_not_hide_reasons() {
        let start = Instant::now();
        let mut race = Race::new(vec![direct(1)], start, REATTEMPT);
        race.failed(0, DialError::Failed("reset".into()));
        race.failed(0, DialError::Timeout);
        assert_eq!(
            race.error(SecretKey::generate().public()),
            DialError::Failed("reset".into())
        );
        let untried = Race::new(vec![direct(1)], start, REATTEMPT);
        assert_eq!(
            untried.error(SecretKey::generate().public()),
            DialError::Timeout
        );
    }

    #[test]
    fn undialable_candidates_are_dropped() {
        assert!(!Candidate::Direct(SocketAddr::from(([0, 0, 0, 0], 5))).dialable());
        assert!(!Candidate::Direct(SocketAddr::from(([10, 0, 0, 1], 0))).dialable());
        assert!(!Candidate::Direct(SocketAddr::from(([224, 0, 0, 1], 5))).dialable());
        assert!(direct(5).dialable());
    }
}
