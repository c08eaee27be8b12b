//! Forwarding through a relay node, for peers that cannot reach each other directly
//! (docs/PROTOCOL.md §12): the relay endpoint's socket, and the relay's own forwarding.
//!
//! The two peers run an ordinary ferry connection (QUIC, TLS 1.3 with both node certificates)
//! end to end; only its UDP packets travel through the relay, inside QUIC datagrams on the
//! connections each peer has with the relay. So the target still checks every capability
//! itself, and the relay learns the two node ids and the sizes and timing of encrypted
//! packets, nothing more.
//!
//! Each node has a second quinn endpoint for relayed connections, over a `RelaySocket` that
//! maps every (relay, peer) pair to a made-up socket address. The datagrams' layout is
//! [`ferry_proto::relay`].
// Datagrams come from any peer: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use tokio::sync::mpsc;
use tracing::debug;

use crate::identity::NodeId;
use crate::net::Net;
use crate::sync::lock;

use ferry_proto::relay::RelayDatagram;

/// Packets received for relayed connections, waiting for the relay endpoint to read them.
const RECEIVE_QUEUE: usize = 1024;
/// (relay, peer) pairs a node keeps a made-up address for.
const MAX_ROUTES: usize = 65_536;

/// The made-up addresses of relayed peers: (relay, peer) ↔ address in `fd66:6572:7279::/48`.
#[derive(Default)]
struct Routes {
    by_pair: HashMap<(NodeId, NodeId), SocketAddr>,
    by_addr: HashMap<SocketAddr, (NodeId, NodeId)>,
    next: u64,
}

/// The UDP socket of the relay endpoint: sends by wrapping packets into datagrams to the relay,
/// receives what relays forwarded.
pub(crate) struct RelaySocket {
    node: OnceLock<Weak<Net>>,
    routes: Mutex<Routes>,
    incoming: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    deliver: mpsc::Sender<(SocketAddr, Bytes)>,
}

impl std::fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySocket").finish_non_exhaustive()
    }
}

impl RelaySocket {
    pub(crate) fn new() -> Self {
        let (deliver, incoming) = mpsc::channel(RECEIVE_QUEUE);
        Self {
            node: OnceLock::new(),
            routes: Mutex::new(Routes::default()),
            incoming: Mutex::new(incoming),
            deliver,
        }
    }

    pub(crate) fn attach(&self, node: &Arc<Net>) {
        // Set once, right after the node is built.
        let _ = self.node.set(Arc::downgrade(node));
    }

    /// The made-up address standing for `peer` reached through `relay`.
    pub(crate) fn address_of(&self, relay: NodeId, peer: NodeId) -> Option<SocketAddr> {
        let mut routes = lock(&self.routes);
        if let Some(addr) = routes.by_pair.get(&(relay, peer)) {
            return Some(*addr);
        }
        if routes.by_pair.len() >= MAX_ROUTES {
            return None;
        }
        routes.next += 1;
        let n = routes.next;
        let ip = Ipv6Addr::new(
            0xfd66,
            0x6572,
            0x7279,
            0,
            (n >> 48) as u16,
            (n >> 32) as u16,
            (n >> 16) as u16,
            n as u16,
        );
        let addr = SocketAddr::new(IpAddr::V6(ip), 1);
        routes.by_pair.insert((relay, peer), addr);
        routes.by_addr.insert(addr, (relay, peer));
        Some(addr)
    }

    /// The relay of the made-up address `addr`.
    pub(crate) fn route_of(&self, addr: SocketAddr) -> Option<NodeId> {
        lock(&self.routes)
            .by_addr
            .get(&addr)
            .map(|(relay, _)| *relay)
    }

    /// Queues a packet `origin` sent through `relay`; dropped when the queue is full, as UDP
    /// would.
    fn receive(&self, relay: NodeId, origin: NodeId, packet: Bytes) {
        if let Some(addr) = self.address_of(relay, origin) {
            let _ = self.deliver.try_send((addr, packet));
        }
    }
}

impl quinn::AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let route = lock(&self.routes)
            .by_addr
            .get(&transmit.destination)
            .copied();
        let node = self.node.get().and_then(Weak::upgrade);
        // Like UDP, a packet with nowhere to go is lost, not an error.
        let (Some((relay, peer)), Some(node)) = (route, node) else {
            return Ok(());
        };
        let Some(connection) = node.peers.connection(&relay) else {
            return Ok(());
        };
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for packet in transmit.contents.chunks(segment) {
            let datagram = RelayDatagram::Forward {
                destination: peer,
                packet: Bytes::copy_from_slice(packet),
            };
            if let Err(error) = connection.send_datagram(datagram.encode()) {
                debug!(%error, relay = %relay.short(), "relayed packet dropped");
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut incoming = lock(&self.incoming);
        let mut count = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            let next = if count == 0 {
                match incoming.poll_recv(cx) {
                    Poll::Ready(Some(next)) => next,
                    // The sender half lives in self, so the queue never closes.
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            } else {
                match incoming.try_recv() {
                    Ok(next) => next,
                    Err(_) => break,
                }
            };
            let (from, packet) = next;
            let len = packet.len().min(buf.len());
            if let (Some(to), Some(from)) = (buf.get_mut(..len), packet.get(..len)) {
                to.copy_from_slice(from);
            }
            *meta = RecvMeta {
                addr: from,
                len,
                stride: len,
                ecn: None,
                dst_ip: None,
            };
            count += 1;
        }
        Poll::Ready(Ok(count))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0xfd66, 0x6572, 0x7279, 0, 0, 0, 0, 0)),
            1,
        ))
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// Relayed packets are queued as datagrams on the relay connection, which never blocks.
#[derive(Debug)]
struct AlwaysWritable;

impl quinn::UdpPoller for AlwaysWritable {
    fn poll_writable(self: std::pin::Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Per-peer token buckets limiting the bytes a relay forwards.
#[derive(Default)]
pub(crate) struct RelayBudget {
    buckets: Mutex<HashMap<NodeId, (f64, Instant)>>,
}

impl RelayBudget {
    /// Takes `bytes` from `peer`'s bucket (`rate` bytes/s, one second of burst); false if
    /// there are not enough.
    fn take(&self, peer: NodeId, bytes: usize, rate: u64, max_peers: usize) -> bool {
        let now = Instant::now();
        let rate = rate as f64;
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= max_peers && !buckets.contains_key(&peer) {
            // Forget buckets that are full again: they carry no state worth keeping.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < rate
            });
        }
        let (tokens, at) = buckets.entry(peer).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= bytes as f64 {
            *tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

/// Reads the datagrams `peer` sends on `connection` until it closes: packets to forward (this
/// node is their relay) and packets forwarded to this node.
pub(crate) async fn serve_datagrams(node: Arc<Net>, connection: quinn::Connection, peer: NodeId) {
    loop {
        let datagram = tokio::select! {
            _ = node.cancel.cancelled() => return,
            datagram = connection.read_datagram() => match datagram {
                Ok(datagram) => datagram,
                Err(_) => return,
            },
        };
        match RelayDatagram::decode(datagram) {
            Ok(RelayDatagram::Forward {
                destination,
                packet,
            }) => forward(&node, peer, destination, packet),
            Ok(RelayDatagram::Forwarded { origin, packet }) => {
                node.relay_socket.receive(peer, origin, packet);
            }
            Err(error) => debug!(%error, "ignoring datagram"),
        }
    }
}

/// Relays a packet from `origin` to `destination`, if the policy and budget allow.
fn forward(node: &Net, origin: NodeId, destination: NodeId, packet: Bytes) {
    let config = &node.config;
    let allowed = config.relay.allows(&origin) && config.relay.allows(&destination);
    if !allowed {
        node.stats.count_relay_refused();
        return;
    }
    let Some(connection) = node.peers.connection(&destination) else {
        node.stats.count_relay_refused();
        return;
    };
    if !node.relay_budget.take(
        origin,
        packet.len(),
        config.relay_rate,
        config.max_connections,
    ) {
        node.stats.count_relay_refused();
        return;
    }
    let bytes = packet.len();
    let datagram = RelayDatagram::Forwarded { origin, packet };
    match connection.send_datagram(datagram.encode()) {
        Ok(()) => node.stats.count_relayed(bytes),
        Err(_) => node.stats.count_relay_refused(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    #[test]
    fn budgets_refill_at_their_rate() {
        let budget = RelayBudget::default();
        let peer = SecretKey::generate().public();
        assert!(budget.take(peer, 1000, 1000, 16));
        assert!(!budget.take(peer, 1000, 1000, 16));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(budget.take(peer, 10, 1000, 16));
    }
}
