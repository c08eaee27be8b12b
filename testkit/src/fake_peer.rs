//! A QUIC endpoint with a ferry identity that speaks the wire protocol by hand, to play peers
//! that misbehave (never answer, stop streams, ignore limits, flood garbage) against a real
//! node.
//!
//! Nothing here checks what it sends, and every function panics where a test would fail. Its
//! TLS configuration is the node's own ([`ferry::endpoint_configs`]); the wire helpers it needs
//! besides this are public in [`ferry::frame`] and [`ferry::Address::mint`]. The hostile peer
//! process ([`crate::hostile_peer`], docs/SECURITY.md §5) is built on it.
#![allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;

use ferry::frame::{self, Frame, Open, StreamKind};
use ferry::{Address, MailboxId, Node, NodeId, SecretKey};

/// A hand-driven peer: a QUIC endpoint on loopback whose TLS certificate proves `key`, as a
/// node's does, and nothing else; the test drives its connections and streams itself.
pub struct FakePeer {
    /// Its identity.
    pub key: SecretKey,
    /// Its node id (`key.public()`).
    pub id: NodeId,
    /// The endpoint: accepts connections from nodes and dials them (ALPN `ferry/1`).
    pub endpoint: quinn::Endpoint,
    /// The endpoint's local address.
    pub addr: SocketAddr,
}

impl FakePeer {
    /// A peer with a new identity on loopback granting `streams` concurrent bidirectional
    /// streams to its peers.
    ///
    /// # Panics
    ///
    /// If the TLS configuration or the socket cannot be made.
    pub fn bind(streams: u32) -> Self {
        let key = SecretKey::generate();
        let configs = ferry::endpoint_configs(&key, ferry::ALPN).unwrap();
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(streams.into());
        let transport = Arc::new(transport);
        let mut server = configs.server;
        server.transport_config(transport.clone());
        let mut client = configs.client;
        client.transport_config(transport);
        let mut endpoint =
            quinn::Endpoint::server(server, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        endpoint.set_default_client_config(client);
        let addr = endpoint.local_addr().unwrap();
        Self {
            id: key.public(),
            key,
            endpoint,
            addr,
        }
    }

    /// The next connection a node makes to this peer.
    ///
    /// # Panics
    ///
    /// The future panics if the endpoint is closed or the handshake fails.
    pub fn accept(&self) -> impl std::future::Future<Output = quinn::Connection> + Send + 'static {
        let endpoint = self.endpoint.clone();
        async move { endpoint.accept().await.unwrap().await.unwrap() }
    }

    /// Connects to `node` at `addr`.
    ///
    /// # Panics
    ///
    /// If the connection cannot be made (for instance refused by the node).
    pub async fn connect(&self, node: NodeId, addr: SocketAddr) -> quinn::Connection {
        self.endpoint
            .connect(addr, &node.to_string())
            .unwrap()
            .await
            .unwrap()
    }
}

/// Reads from `recv` until one whole frame is in `buf`; returns its encoding and removes it
/// from `buf`. `None` if the stream ends (FIN) first.
///
/// # Panics
///
/// If the stream is reset or the bytes are not a frame.
pub async fn read_frame(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> Option<Vec<u8>> {
    loop {
        if let Some((_, used)) = frame::decode_frame(buf, 1 << 30).unwrap() {
            return Some(buf.split_to(used).to_vec());
        }
        match recv.read_chunk(64 * 1024, true).await.unwrap() {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => return None,
        }
    }
}

/// Reads the stream kind byte and the opening frame of a stream a node opened.
///
/// # Panics
///
/// If the stream ends, is reset, or does not begin with a kind byte and a frame.
pub async fn read_opening(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> (u8, Vec<u8>) {
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind).await.unwrap();
    let opening = read_frame(recv, buf).await.unwrap();
    (kind[0], opening)
}

/// The encoding of one frame.
pub use ferry::frame::encode;

/// A small deterministic generator (xorshift64*) for garbage, so that a failure can be
/// replayed from its seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `bytes` with random bytes.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let value = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
    }
}

/// Reads what the node sends on a stream until it ends, and returns the CLOSE frame's code and
/// reason, if one came.
pub async fn read_close(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
) -> Option<(ferry::ErrorCode, String)> {
    let mut close = None;
    loop {
        while let Ok(Some((frame, used))) = frame::decode_frame(buf, 1 << 20) {
            if let Frame::Close { code, reason } = frame {
                close = Some((code, reason.to_owned()));
            }
            let _ = buf.split_to(used);
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            _ => return close,
        }
    }
}

/// A fake peer connected to `node`, with an address of one of its mailboxes, so that it gets
/// past OPEN and can misbehave inside a mailbox stream.
pub struct Intruder {
    /// Its connection to the node.
    pub connection: quinn::Connection,
    /// The stream kind byte and the OPEN frame that start a mailbox stream to the target.
    pub open: Vec<u8>,
    /// The fake peer it is (its key signs its own addresses).
    pub fake: FakePeer,
}

impl Intruder {
    /// Connects to `node`, to send to `target` (one of its mailboxes) from a mailbox of its own.
    pub async fn connect(node: &Node, target: &Address) -> Self {
        let fake = FakePeer::bind(0);
        let connection = fake.connect(node.id(), node.local_addr()).await;
        let from = Address::mint(&fake.key, MailboxId(1), None, vec![]);
        let mut epoch = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut epoch)
            .expect("the system RNG");
        let mut open = vec![StreamKind::Mailbox as u8];
        frame::put_frame(
            &mut open,
            &Frame::Open(Box::new(Open {
                target: target.without_hints(),
                from,
                epoch: u64::from_be_bytes(epoch),
                first_seq: 0,
            })),
        );
        Self {
            connection,
            open,
            fake,
        }
    }

    /// Opens a mailbox stream, writes OPEN and reads the node's ACCEPT.
    pub async fn open_stream(&self) -> (quinn::SendStream, quinn::RecvStream, BytesMut) {
        let (mut send, mut recv) = self.connection.open_bi().await.unwrap();
        send.write_all(&self.open).await.unwrap();
        let mut buf = BytesMut::new();
        let accept = read_frame(&mut recv, &mut buf).await.unwrap();
        let (frame, _) = frame::decode_frame(&accept, 64).unwrap().unwrap();
        assert!(matches!(frame, Frame::Accept { .. }), "{frame:?}");
        (send, recv, buf)
    }
}
