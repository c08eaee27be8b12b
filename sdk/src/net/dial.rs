//! Dialing a peer as a browser dials a web server: every known route to it is tried in a
//! staggered race (happy eyeballs), and the first handshake that proves the peer's identity
//! wins (docs/PROTOCOL.md §2.5).
//!
//! The routes (candidates), in the order they start: the route of the last successful dial,
//! the target address's socket-address hints, addresses the peer was reached at before, then
//! the relays that can reach it. When each starts, and when a silent one is tried again, is
//! [`ferry_proto::race`]; this module makes the attempts and tells the race when the peer
//! answered one (its first handshake packets arrived). A candidate that answers with another
//! identity, another protocol, or an error that will repeat is out of the race; a refusal by
//! the peer itself ends the dial. The dial reports every route's failure when all have failed
//! or `dial_timeout` passed.
//!
//! [`connect_link`] is the way in for everything above: the connection in use, or one shared
//! dial of the peer; [`refresh`] dials again beside a connection that may have died.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::error::{DialError, RouteFailure};
use crate::identity::NodeId;
use crate::net::connection::{self, ConnCode, DialWaiter, Fresh, Link, Slot};
use crate::net::liveness::PathProbe;
use crate::net::Net;
use crate::sync::lock;
use ferry_proto::race::{AttemptId, Failure, Pace, Race, DIAL_PACE, MAX_CANDIDATES};
use ferry_proto::route::{Candidate, Route};

/// The candidates for `peer`, in the order they start.
fn candidates(node: &Net, peer: NodeId, hints: &[SocketAddr]) -> Vec<Candidate> {
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
    node: &Arc<Net>,
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
    race(node, peer, candidates, DIAL_PACE, node.config.dial_timeout).await
}

/// Races `candidates` for `timeout`, giving silent ones fresh attempts at `pace`; installs the
/// winner and remembers its route.
pub(crate) async fn race(
    node: &Arc<Net>,
    peer: NodeId,
    candidates: Vec<Candidate>,
    pace: Pace,
    timeout: Duration,
) -> Result<Link, DialError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut race = Race::new(candidates, start.into_std(), pace);
    let mut attempts: FuturesUnordered<Attempt> = FuturesUnordered::new();
    let mut cancels: HashMap<AttemptId, CancellationToken> = HashMap::new();
    // Unbounded, yet bounded by the attempts: each reports its answer at most once.
    let (answers, mut answers_in) = mpsc::unbounded_channel();
    loop {
        // Answers first: one reported while the last wait ended otherwise must pause its
        // candidate before the candidate is due again.
        while let Ok((index, id)) = answers_in.try_recv() {
            abandon(&mut cancels, race.answered(index, id));
        }
        // Due attempts start before any wait: tokio's timer rounds a deadline up to its next
        // millisecond, so sleeping until "now" would delay the first handshake by up to 1 ms.
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        for index in race.due(now.into_std()) {
            let (id, replaced) = race.started(index, now.into_std());
            abandon(&mut cancels, replaced);
            let Some(candidate) = race.candidate(index) else {
                continue;
            };
            let abandoned = CancellationToken::new();
            cancels.insert(id, abandoned.clone());
            let place = InRace {
                attempt: (index, id),
                answers: answers.clone(),
                answered: AtomicBool::new(false),
                abandoned,
            };
            attempts.push(attempt(node.clone(), peer, place, candidate, deadline));
        }
        let wake = race
            .next_start()
            .map_or(deadline, Instant::from_std)
            .min(deadline);
        tokio::select! {
            _ = node.cancel.cancelled() => return Err(DialError::NodeClosed),
            _ = tokio::time::sleep_until(wake) => {}
            Some((index, id)) = answers_in.recv() => abandon(&mut cancels, race.answered(index, id)),
            Some(((index, id), result)) = attempts.next() => match result {
                Ok(fresh) => {
                    // The attempts no answer has come to yet would each cost both nodes a
                    // handshake (on a path slower than the re-attempt time, every one started
                    // before the first answer): they end now, not after the installation's
                    // liveness check, unless a direct one may still replace a relayed winner.
                    // The answered ones go on (`InRace::unwanted`).
                    abandon(&mut cancels, race.unanswered_after(index));
                    let link = connection::install(node, fresh).await;
                    if let Some(candidate) = race.candidate(index) {
                        if let Candidate::Direct(addr) = candidate {
                            node.peers.add_addr(peer, addr);
                        }
                        node.peers.set_preferred(peer, candidate);
                        debug!(peer = %peer.short(), route = %candidate.route(), "dialed");
                    }
                    if !attempts.is_empty() {
                        // The answered attempts: ending one the peer may have completed would
                        // close a connection the peer may be using (the peer completes a
                        // handshake on this side's reply to its answer, which quinn sends
                        // before this side learns of the answer); the rule sorts out the ones
                        // that complete.
                        node.tasks.spawn(install_remaining(node.clone(), attempts));
                    }
                    return Ok(link);
                }
                // The peer itself said no: no other route changes its mind.
                Err(error @ DialError::Refused(_)) => return Err(error),
                Err(DialError::NodeClosed) => return Err(DialError::NodeClosed),
                Err(error) => {
                    cancels.remove(&id);
                    let failure = failure_of(&error);
                    let now = Instant::now().into_std();
                    abandon(&mut cancels, race.failed(index, id, error, failure, now));
                    if race.exhausted() && attempts.is_empty() {
                        break;
                    }
                }
            },
        }
    }
    Err(dial_failed(peer, race))
}

/// Cancels the attempts the race gave up.
fn abandon(
    cancels: &mut HashMap<AttemptId, CancellationToken>,
    abandoned: impl IntoIterator<Item = AttemptId>,
) {
    for attempt in abandoned {
        if let Some(cancel) = cancels.remove(&attempt) {
            cancel.cancel();
        }
    }
}

/// What a failed dial reports: with one route, its own error; with several, each one's.
fn dial_failed(peer: NodeId, race: Race<DialError>) -> DialError {
    let mut tried: Vec<RouteFailure> = race
        .failures()
        .into_iter()
        .map(|(route, error)| RouteFailure {
            route,
            error: error.unwrap_or(DialError::Timeout),
        })
        .collect();
    if tried.len() == 1 {
        if let Some(only) = tried.pop() {
            return only.error;
        }
    }
    DialError::NoRoute { node: peer, tried }
}

type Attempt = Pin<Box<dyn Future<Output = ((usize, AttemptId), Result<Fresh, DialError>)> + Send>>;

/// Installs the attempts that still complete after a dial was won.
async fn install_remaining(node: Arc<Net>, mut attempts: FuturesUnordered<Attempt>) {
    while let Some((_, result)) = attempts.next().await {
        if let Ok(fresh) = result {
            connection::install(&node, fresh).await;
        }
    }
}

/// An attempt's place in its race: how it reports that the peer answered, and learns that it
/// was replaced by a fresh attempt of its candidate.
struct InRace {
    attempt: (usize, AttemptId),
    answers: mpsc::UnboundedSender<(usize, AttemptId)>,
    /// Set once the peer answered: from then on only the handshake's own outcome ends it.
    answered: AtomicBool,
    abandoned: CancellationToken,
}

impl InRace {
    fn report_answer(&self) {
        self.answered.store(true, Ordering::Relaxed);
        // The race may have ended meanwhile; then nobody needs to know.
        let _ = self.answers.send(self.attempt);
    }

    /// Resolves when the attempt is abandoned, unless the peer answered it first: the peer
    /// may then complete the handshake, and ending it would close a connection the peer may
    /// use. (The race abandons only attempts it has heard no answer to; this covers an answer
    /// on its way to the race.)
    async fn unwanted(&self) {
        self.abandoned.cancelled().await;
        if self.answered.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }
}

fn attempt(
    node: Arc<Net>,
    peer: NodeId,
    place: InRace,
    candidate: Candidate,
    deadline: Instant,
) -> Attempt {
    Box::pin(async move {
        let result = tokio::select! {
            // The handshake first: an answer that is in counts before `unwanted` looks.
            biased;
            result = handshake(&node, peer, &place, candidate, deadline) => result,
            _ = place.unwanted() => Err(DialError::Timeout),
        };
        (place.attempt, result)
    })
}

/// One attempt at one candidate: a QUIC handshake that proves `peer`'s identity.
async fn handshake(
    node: &Arc<Net>,
    peer: NodeId,
    place: &InRace,
    candidate: Candidate,
    deadline: Instant,
) -> Result<Fresh, DialError> {
    match candidate {
        Candidate::Direct(addr) => {
            let route = Route::Direct(addr);
            connect_on(node, false, peer, addr, route, place, deadline).await
        }
        Candidate::Relay { relay, relay_addr } => {
            let relay_link = match node.peers.link(&relay) {
                Some(link) => link,
                None => tokio::time::timeout_at(deadline, connect_link(node, relay, &[relay_addr]))
                    .await
                    .map_err(|_| DialError::Timeout)??,
            };
            wait_for_datagram_room(&relay_link.connection).await;
            let virtual_addr = node
                .relay_socket
                .address_of(relay, peer)
                .ok_or(DialError::TooManyRelayedPeers)?;
            let route = Route::Relayed { relay };
            connect_on(node, true, peer, virtual_addr, route, place, deadline).await
        }
    }
}

/// A relayed packet must fit into one datagram of the relay connection, whose path MTU
/// discovery may still be growing it past the initial 1200 bytes.
async fn wait_for_datagram_room(relay: &quinn::Connection) {
    let needed = usize::from(ferry_proto::relay::RELAYED_MTU) + ferry_proto::relay::RELAY_OVERHEAD;
    for _ in 0..100 {
        if relay.max_datagram_size().is_some_and(|max| max >= needed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A handshake with `peer` at `addr` on the node's own endpoint, or its relay endpoint; tells
/// the race when the peer answered.
async fn connect_on(
    node: &Arc<Net>,
    relayed: bool,
    peer: NodeId,
    addr: SocketAddr,
    route: Route,
    place: &InRace,
    deadline: Instant,
) -> Result<Fresh, DialError> {
    let probe = Arc::new(PathProbe::default());
    let endpoint = if relayed {
        &node.relay_endpoint
    } else {
        &node.endpoint
    };
    let mut connecting = endpoint
        .connect_with(node.quic.client(relayed, &probe), addr, &peer.to_string())
        .map_err(|error| DialError::Undialable {
            addr,
            reason: error.to_string(),
        })?;
    match tokio::time::timeout_at(deadline, connecting.handshake_data()).await {
        Err(_) => return Err(DialError::Timeout),
        Ok(Ok(_)) => place.report_answer(),
        // A failed handshake reports its error below.
        Ok(Err(_)) => {}
    }
    let connection = match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => return Err(DialError::Timeout),
        Ok(Err(error)) => return Err(dial_error(node, &peer, &error)),
        Ok(Ok(connection)) => connection,
    };
    let cert = connection::peer_cert(&connection).ok_or(DialError::NoCertificate)?;
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

fn dial_error(node: &Net, peer: &NodeId, error: &quinn::ConnectionError) -> DialError {
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
        other => DialError::Connection(other.clone()),
    }
}

/// What an attempt's error means for its candidate.
fn failure_of(error: &DialError) -> Failure {
    match error {
        DialError::WrongNode { .. }
        | DialError::IncompatibleVersion
        | DialError::Undialable { .. }
        | DialError::NoCertificate
        | DialError::NoAddress(_)
        | DialError::NoRoute { .. }
        | DialError::TooManyConnections => Failure::EndsCandidate,
        DialError::Timeout => Failure::Timeout,
        _ => Failure::Other,
    }
}

/// Returns the connection to `peer`, dialing it if there is none.
pub(crate) async fn connect(
    node: &Arc<Net>,
    peer: NodeId,
    hints: &[SocketAddr],
) -> Result<quinn::Connection, DialError> {
    connect_link(node, peer, hints)
        .await
        .map(|link| link.connection.clone())
}

/// Returns the link to `peer`, dialing it if there is none. Concurrent callers share one
/// dial; the dial runs on its own task, so a caller giving up does not abort it.
pub(crate) async fn connect_link(
    node: &Arc<Net>,
    peer: NodeId,
    hints: &[SocketAddr],
) -> Result<Link, DialError> {
    loop {
        // Looked at under the lock, judged outside it (see `Link::is_open`).
        let seen = match lock(&node.peers.slots).get(&peer) {
            Some(Slot::Connected(live)) => Seen::Link(live.link.clone()),
            Some(Slot::Dialing(waiter)) => Seen::Dialing(waiter.clone()),
            None => Seen::Nothing,
        };
        let mut waiter = match seen {
            Seen::Link(link) if link.is_open() => return Ok(link),
            Seen::Dialing(waiter) => waiter,
            Seen::Link(dead) => {
                // A connection the peer abandoned as it was installed gives way to the one set
                // aside for it, if any, before anyone dials.
                if connection::take_back(node, peer, &dead.connection) {
                    continue;
                }
                match start_dial(node, peer, hints, Some(dead.connection.stable_id())) {
                    Some(waiter) => waiter,
                    None => continue, // the slot changed meanwhile
                }
            }
            Seen::Nothing => match start_dial(node, peer, hints, None) {
                Some(waiter) => waiter,
                None => continue,
            },
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

/// What a peer's slot held when looked at.
enum Seen {
    Link(Link),
    Dialing(DialWaiter),
    Nothing,
}

/// Starts the shared dial of `peer` if its slot still holds what the caller saw: nothing, or
/// the closed connection `dead`. `None` if it changed meanwhile.
fn start_dial(
    node: &Arc<Net>,
    peer: NodeId,
    hints: &[SocketAddr],
    dead: Option<usize>,
) -> Option<DialWaiter> {
    let mut slots = lock(&node.peers.slots);
    let unchanged = match (slots.get(&peer), dead) {
        (None, None) => true,
        (Some(Slot::Connected(live)), Some(dead)) => live.link.connection.stable_id() == dead,
        _ => false,
    };
    if !unchanged {
        return None;
    }
    if node.cancel.is_cancelled() {
        let (done, waiter) = watch::channel(None);
        let _ = done.send(Some(Err(DialError::NodeClosed)));
        return Some(waiter);
    }
    let (done, waiter) = watch::channel(None);
    slots.insert(peer, Slot::Dialing(waiter.clone()));
    drop(slots);
    let dialing = node.clone();
    let hints = hints.to_vec();
    node.tasks.spawn(
        async move {
            let result = dial(&dialing, peer, hints).await;
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
    Some(waiter)
}

/// Dials `peer` again in the background although a connection exists (it stopped answering,
/// or this node's address changed): the new connection takes over if the old one is dead.
/// At most one such dial per peer at a time.
pub(crate) fn refresh(node: &Arc<Net>, peer: NodeId) {
    if peer == node.id || node.cancel.is_cancelled() || !node.peers.start_refresh(peer) {
        return;
    }
    node.stats.count_redial();
    let dialing = node.clone();
    node.tasks.spawn(
        async move {
            let result = dial(&dialing, peer, Vec::new()).await;
            if let Err(error) = result {
                debug!(peer = %peer.short(), %error, "redial failed");
            }
            dialing.peers.end_refresh(&peer);
        }
        .in_current_span(),
    );
}
