//! Address observation: the built-in `ferry.observe` service tells a peer the UDP address it
//! sees the peer's packets come from (docs/PROTOCOL.md §10.12). Behind a NAT that is the
//! address the NAT gave the node's socket, which the node cannot learn any other way; it
//! offers it to peers it punches holes towards (`crate::net::hole_punch`) and puts it into the
//! addresses it mints.
//!
//! A node stays connected to each of its relays (`NodeConfig::relays`, [`stay_connected`]) and
//! asks it every time it connects. An observation that differs from the one before means the
//! node's network changed: its relayed peers are offered a new hole punch (through
//! [`Hooks::network_changed`](crate::net::Hooks), hole punching being the layer above).
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info};

use crate::identity::NodeId;
use crate::net::builtin::{self, ExchangeError};
use crate::net::dial::connect;
use crate::net::Net;
use crate::sync::lock;
use ferry_proto::observe::{decode_observed, encode_observed, OBSERVE_SERVICE};

/// How long an observation may take.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait for an observation asked for right before a hole punch.
const QUICK_OBSERVE: Duration = Duration::from_secs(1);
/// Observers remembered at most (only a node's relays are asked).
const MAX_OBSERVERS: usize = 16;

/// The address each observer saw this node at, newest last.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    by_observer: Mutex<Vec<(NodeId, SocketAddr)>>,
}

impl Observations {
    /// Records what `observer` saw; returns the address it saw before, if it differs.
    fn record(&self, observer: NodeId, addr: SocketAddr) -> Option<SocketAddr> {
        let mut seen = lock(&self.by_observer);
        let before = seen
            .iter()
            .position(|(node, _)| *node == observer)
            .map(|at| seen.remove(at).1);
        if seen.len() >= MAX_OBSERVERS {
            seen.remove(0);
        }
        seen.push((observer, addr));
        before.filter(|before| *before != addr)
    }

    /// The distinct observed addresses, most recent first.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        let seen = lock(&self.by_observer);
        let mut addrs: Vec<SocketAddr> = Vec::with_capacity(seen.len());
        for (_, addr) in seen.iter().rev() {
            if !addrs.contains(addr) {
                addrs.push(*addr);
            }
        }
        addrs
    }
}

/// Answers an observation request that arrived on a connection whose peer's packets come
/// from `remote` (`None` for a relayed connection, which has no address to tell).
pub(crate) async fn answer(mut send: quinn::SendStream, remote: Option<SocketAddr>) {
    match remote {
        Some(remote) => builtin::reply(&mut send, &encode_observed(remote)).await,
        None => {
            crate::net::builtin::refuse(
                &mut send,
                crate::frame::ErrorCode::NOT_ALLOWED,
                "no address to observe on a relayed connection",
            )
            .await
        }
    }
}

/// Asks the peer of `connection` which address it sees this node at.
pub(crate) async fn ask(connection: &quinn::Connection) -> Result<SocketAddr, ExchangeError> {
    let answer = tokio::time::timeout(
        OBSERVE_TIMEOUT,
        builtin::exchange(connection, OBSERVE_SERVICE, None),
    )
    .await
    .map_err(|_| ExchangeError::Lost("no answer in time".into()))??;
    decode_observed(&answer)
        .ok_or_else(|| ExchangeError::Protocol("the answer is not a socket address".into()))
}

/// Asks the relay of a relayed `route` where it sees this node now (a NAT may have given it
/// another address since the last observation), waiting at most [`QUICK_OBSERVE`].
pub(crate) async fn refresh_via(node: &Arc<Net>, route: crate::Route) {
    let crate::Route::Relayed { relay } = route else {
        return;
    };
    if let Some(link) = node.peers.link(&relay) {
        let _ =
            tokio::time::timeout(QUICK_OBSERVE, learn_from(node, relay, &link.connection)).await;
    }
}

/// Asks `observer` (over `connection`) and records the answer; a changed answer means this
/// node's network changed, and its relayed peers are offered a new hole punch.
pub(crate) async fn learn_from(node: &Arc<Net>, observer: NodeId, connection: &quinn::Connection) {
    match ask(connection).await {
        Ok(addr) => {
            debug!(observer = %observer.short(), %addr, "observed address");
            node.add_observed_addr(addr);
            if let Some(before) = node.observations.record(observer, addr) {
                info!(%before, now = %addr, "this node's public address changed");
                (node.hooks.network_changed)(node);
            }
        }
        Err(error) => debug!(observer = %observer.short(), %error, "no address observation"),
    }
}

/// Keeps a connection to the relay `relay` (one of `NodeConfig::relays`) open, redialing with
/// backoff whenever it is lost, so that peers can reach this node through it; asks the relay,
/// each time, which address it sees this node at (docs/PROTOCOL.md §10.12).
pub(crate) async fn stay_connected(node: Arc<Net>, relay: NodeId, relay_addr: SocketAddr) {
    let mut pause = Duration::from_millis(100);
    loop {
        match connect(&node, relay, &[relay_addr]).await {
            Ok(connection) => {
                pause = Duration::from_millis(100);
                crate::net::observation::learn_from(&node, relay, &connection).await;
                tokio::select! {
                    _ = node.cancel.cancelled() => return,
                    _ = connection.closed() => {}
                }
            }
            Err(error) => {
                debug!(relay = %relay.short(), %error, "relay unreachable; retrying");
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    #[test]
    fn a_changed_observation_is_reported() {
        let observations = Observations::default();
        let relay = SecretKey::generate().public();
        let first: SocketAddr = "198.51.100.1:1000".parse().unwrap();
        let second: SocketAddr = "198.51.100.1:2000".parse().unwrap();
        assert_eq!(observations.record(relay, first), None);
        assert_eq!(observations.record(relay, first), None);
        assert_eq!(observations.record(relay, second), Some(first));
        assert_eq!(observations.addrs(), vec![second]);
    }
}
