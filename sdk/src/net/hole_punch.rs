//! Hole punching: two nodes that reach each other only through a relay make a direct
//! connection (docs/PROTOCOL.md §10.13).
//!
//! The relayed connection is end to end, so the two nodes talk over it: the node that dialed
//! it opens the built-in `ferry.punch` service and offers its candidate addresses (the
//! addresses its relays observed it at, §10.12, then its own dial hints); the other answers
//! with its own. Then both dial each other's candidates from their one UDP socket at the same
//! time, the answering node half a round trip later (so both start together), each candidate
//! getting a fresh handshake at [`PUNCH_PACE`] for [`PUNCH_WINDOW`] until the peer answers one
//! of them. Each node's outgoing handshake packets open its own NAT for the other's, so behind
//! most NATs one of the handshakes gets through. The direct connection then replaces the
//! relayed one under the one-connection rule (a direct connection beats a relayed one, §2.4):
//! mailbox streams move over, retransmitting what was not acknowledged, and the receiver's
//! duplicate suppression keeps every message once and in order.
//!
//! When no handshake gets through (a symmetric NAT facing another, or facing port-dependent
//! filtering), the nodes stay on the relay, and the dialer tries again after
//! [`FIRST_RETRY`](ferry_proto::punch_schedule::FIRST_RETRY), doubling up to
//! [`MAX_RETRY`](ferry_proto::punch_schedule::MAX_RETRY), and at once when its network changed.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::frame::{self, Frame};
use crate::identity::NodeId;
use crate::net::builtin;
use crate::net::connection::Link;
use crate::net::dial;
use crate::net::Net;
use crate::sync::lock;
use ferry_proto::punch::{
    decode_candidates, encode_candidates, MAX_OFFER_LEN, MAX_PUNCH_CANDIDATES, PUNCH_SERVICE,
};
use ferry_proto::punch_schedule::{AnswerLimiter, PunchRetries};
use ferry_proto::race::Pace;
use ferry_proto::route::Candidate;

/// How long both nodes dial each other's candidates.
pub(crate) const PUNCH_WINDOW: Duration = Duration::from_secs(5);
/// How often a candidate gets a fresh handshake while punching, until the peer answers one:
/// every 250 ms, the newest two kept. An attempt lives 500 ms, less than quinn's first
/// retransmission of a handshake (about 1 s), so each sends one Initial packet (and a close
/// when replaced): the candidates are the peer's choice (docs/SECURITY.md).
pub(crate) const PUNCH_PACE: Pace = Pace {
    reattempt: Duration::from_millis(250),
    live: 2,
};
/// How long the offer may take to arrive.
const OFFER_TIMEOUT: Duration = Duration::from_secs(5);

/// Encodes a candidate list: a count byte, then each address as a socket-address hint
/// The node's hole punching: which peers it is punching towards, when it last answered each
/// peer, and the signal of a network change.
#[derive(Default)]
pub(crate) struct Punches {
    running: Mutex<HashSet<NodeId>>,
    answered: Mutex<AnswerLimiter<NodeId>>,
    network_changed: Notify,
}

/// This node's network changed: every waiting punch tries again now, and every direct
/// connection is dialed again (one whose path died is then replaced, §2.4).
pub(crate) fn network_changed(node: &Arc<Net>) {
    node.punches.network_changed.notify_waiters();
    for (peer, link) in node.peers.links() {
        if !link.route.is_relayed() {
            crate::net::dial::refresh(node, peer);
        }
    }
}

/// Starts punching towards `peer`, now reached over the relayed `link` this node dialed,
/// unless a punch towards it runs already.
pub(crate) fn upgrade_later(node: &Arc<Net>, peer: NodeId, link: &Link) {
    if !node.config.hole_punching
        || node.cancel.is_cancelled()
        || !lock(&node.punches.running).insert(peer)
    {
        return;
    }
    let punching = node.clone();
    let link = link.clone();
    let span = tracing::debug_span!("punch", peer = %peer.short());
    node.tasks.spawn(
        async move {
            keep_punching(&punching, peer, &link).await;
            lock(&punching.punches.running).remove(&peer);
        }
        .instrument(span),
    );
}

/// Punches until a direct connection replaces `link`, `link` closes, or the node stops.
async fn keep_punching(node: &Arc<Net>, peer: NodeId, link: &Link) {
    let mut retries = PunchRetries::default();
    loop {
        if link.superseded.is_cancelled() || link.connection.close_reason().is_some() {
            return;
        }
        match punch(node, peer, link).await {
            Ok(true) => return,
            Ok(false) => debug!("no direct path yet; staying on the relay"),
            Err(error) => debug!(%error, "hole punch failed"),
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = link.superseded.cancelled() => return,
            _ = link.connection.closed() => return,
            _ = node.punches.network_changed.notified() => retries.network_changed(),
            _ = tokio::time::sleep_until(Instant::from_std(retries.failed(std::time::Instant::now()))) => {}
        }
    }
}

/// The addresses this node offers: where its relays see it, then its dial hints; none when
/// it does not punch.
fn local_candidates(node: &Net) -> Vec<SocketAddr> {
    if !node.config.hole_punching {
        return Vec::new();
    }
    let mut addrs = node.observations.addrs();
    for &addr in node.dial_hints().as_slice() {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs.retain(|addr| addr.port() != 0 && !addr.ip().is_unspecified());
    addrs.truncate(MAX_PUNCH_CANDIDATES);
    addrs
}

/// Candidates to dial, from a peer's list.
fn to_dial(addrs: Vec<SocketAddr>) -> Vec<Candidate> {
    addrs.into_iter().map(Candidate::Direct).collect()
}

/// One punch as the node that dialed the relayed connection: offer, read the answer, dial.
/// Returns whether the peer is now reached directly.
async fn punch(node: &Arc<Net>, peer: NodeId, link: &Link) -> Result<bool, builtin::ExchangeError> {
    crate::net::observation::refresh_via(node, link.route).await;
    let offer = encode_candidates(&local_candidates(node));
    let answer = tokio::time::timeout(
        OFFER_TIMEOUT,
        builtin::exchange(&link.connection, PUNCH_SERVICE, Some(&offer)),
    )
    .await
    .map_err(|_| builtin::ExchangeError::Lost("no answer in time".into()))??;
    let theirs = decode_candidates(&answer)
        .map_err(|error| builtin::ExchangeError::Protocol(error.to_string()))?;
    debug!(candidates = ?theirs, "punching");
    let result = dial::race(node, peer, to_dial(theirs), PUNCH_PACE, PUNCH_WINDOW).await;
    Ok(result.is_ok_and(|link| !link.route.is_relayed()))
}

/// Answers a `ferry.punch` conversation `peer` opened on `origin`: reads the offer, answers
/// with this node's candidates, and dials the offered ones half a round trip later.
pub(crate) async fn answer(
    node: Arc<Net>,
    peer: NodeId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    origin: quinn::Connection,
) {
    let mut accept = Vec::new();
    frame::put_frame(
        &mut accept,
        &Frame::Accept {
            max_message: MAX_OFFER_LEN as u64,
        },
    );
    if send.write_all(&accept).await.is_err() {
        return;
    }
    let (mut recv, mut buf) = (recv, buf);
    let offer = match tokio::time::timeout(
        OFFER_TIMEOUT,
        builtin::read_request(&mut recv, &mut buf, MAX_OFFER_LEN),
    )
    .await
    {
        Ok(Ok(offer)) => offer,
        Ok(Err(why)) => return builtin::fail(&mut send, why).await,
        Err(_) => return builtin::fail(&mut send, "no offer in time").await,
    };
    let theirs = match decode_candidates(&offer) {
        Ok(theirs) => theirs,
        Err(error) => return builtin::fail(&mut send, &error.to_string()).await,
    };
    if let Some(relay) = node.relay_socket.route_of(origin.remote_address()) {
        crate::net::observation::refresh_via(&node, crate::Route::Relayed { relay }).await;
    }
    let ours = encode_candidates(&local_candidates(&node));
    let mut object = Vec::new();
    frame::put_frame(&mut object, &Frame::Object(&ours));
    if send.write_all(&object).await.is_err() {
        return;
    }
    let _ = send.finish();
    if !node.config.hole_punching {
        return;
    }
    if !may_answer(&node, peer) {
        debug!(peer = %peer.short(), "punch asked for too soon; not dialing");
        return;
    }
    dial_after(&node, peer, theirs, origin.rtt() / 2);
}

/// Dials `peer`'s candidates after `delay`, unless a direct connection exists by then.
fn dial_after(node: &Arc<Net>, peer: NodeId, theirs: Vec<SocketAddr>, delay: Duration) {
    let dialing = node.clone();
    let dial: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let still_relayed = dialing
                .peers
                .link(&peer)
                .is_none_or(|link| link.route.is_relayed());
            if still_relayed {
                let _ = dial::race(&dialing, peer, to_dial(theirs), PUNCH_PACE, PUNCH_WINDOW).await;
            }
        });
    node.tasks.spawn(dial.in_current_span());
}

/// Whether this node may dial for `peer`'s punch now (see [`AnswerLimiter`]).
fn may_answer(node: &Net, peer: NodeId) -> bool {
    lock(&node.punches.answered).may_answer(peer, std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of docs/PROTOCOL.md §10.13's example.
    #[test]
    fn wire_bytes() {
        let offer = encode_candidates(&[
            "198.51.100.7:4433".parse().unwrap(),
            "10.0.0.2:4433".parse().unwrap(),
        ]);
        let mut expected = vec![0x02, 0x0d, 0x10, 0x02];
        expected.extend_from_slice(b"ferry.punch");
        expected.extend_from_slice(&[0x10, 0x13, 0x02]);
        expected.extend_from_slice(&[0x04, 198, 51, 100, 7, 0x11, 0x51]);
        expected.extend_from_slice(&[0x04, 10, 0, 0, 2, 0x11, 0x51]);
        let request = builtin::request(PUNCH_SERVICE, Some(&offer));
        assert_eq!(request, expected);
        assert_eq!(request.len(), 32);
        let mut accept = Vec::new();
        frame::put_frame(
            &mut accept,
            &Frame::Accept {
                max_message: MAX_OFFER_LEN as u64,
            },
        );
        assert_eq!(accept, [0x03, 0x02, 0x99, 0x01]);
    }
}
