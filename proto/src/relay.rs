//! Relay datagrams (docs/PROTOCOL.md §12.1): the packets of a connection between two peers,
//! carried inside QUIC datagrams of the connections each has with a relay. Pure code on byte
//! buffers.
//!
//! ```text
//! FORWARD   = 0x01 | destination node id[32] | packet     (peer -> relay)
//! FORWARDED = 0x02 | origin node id[32]      | packet     (relay -> peer)
//! ```
// Datagrams come from any peer: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::{BufMut, Bytes, BytesMut};

use crate::identity::{NodeId, NODE_ID_LEN};

/// Datagram type: a packet for the relay to forward.
pub const FORWARD: u8 = 0x01;
/// Datagram type: a packet the relay forwarded.
pub const FORWARDED: u8 = 0x02;
/// Bytes a relay datagram adds to the packet it carries.
pub const RELAY_OVERHEAD: usize = 1 + NODE_ID_LEN;
/// Largest packet of a relayed connection (its QUIC MTU is fixed at this).
pub const RELAYED_MTU: u16 = 1200;

/// A relay datagram, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayDatagram {
    /// Forward `packet` to `destination`.
    Forward {
        /// Where the packet goes.
        destination: NodeId,
        /// The packet.
        packet: Bytes,
    },
    /// `packet` came from `origin`.
    Forwarded {
        /// Who sent it to the relay.
        origin: NodeId,
        /// The packet.
        packet: Bytes,
    },
}

/// Why a datagram is not a relay datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayDatagramError {
    /// Shorter than the type byte and a node id.
    #[error("relay datagram of {0} bytes is too short")]
    Truncated(usize),
    /// The type byte is not FORWARD or FORWARDED.
    #[error("unknown relay datagram type {0:#04x}")]
    UnknownType(u8),
    /// The node id is not a valid ed25519 public key.
    #[error("relay datagram names an invalid node id")]
    NodeId,
}

impl RelayDatagram {
    /// Decodes a datagram.
    pub fn decode(datagram: Bytes) -> Result<Self, RelayDatagramError> {
        let len = datagram.len();
        let Some((&kind, rest)) = datagram.split_first() else {
            return Err(RelayDatagramError::Truncated(len));
        };
        let node = rest
            .first_chunk::<NODE_ID_LEN>()
            .ok_or(RelayDatagramError::Truncated(len))?;
        let node = NodeId::from_bytes(node).map_err(|_| RelayDatagramError::NodeId)?;
        let packet = datagram.slice(RELAY_OVERHEAD..);
        match kind {
            FORWARD => Ok(Self::Forward {
                destination: node,
                packet,
            }),
            FORWARDED => Ok(Self::Forwarded {
                origin: node,
                packet,
            }),
            other => Err(RelayDatagramError::UnknownType(other)),
        }
    }

    /// Encodes the datagram.
    pub fn encode(&self) -> Bytes {
        let (kind, node, packet) = match self {
            Self::Forward {
                destination,
                packet,
            } => (FORWARD, destination, packet),
            Self::Forwarded { origin, packet } => (FORWARDED, origin, packet),
        };
        let mut out = BytesMut::with_capacity(RELAY_OVERHEAD + packet.len());
        out.put_u8(kind);
        out.put_slice(node.as_bytes());
        out.put_slice(packet);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;
    use proptest::prelude::*;

    #[test]
    fn datagrams_round_trip() {
        let node = SecretKey::generate().public();
        for datagram in [
            RelayDatagram::Forward {
                destination: node,
                packet: Bytes::from_static(b"packet"),
            },
            RelayDatagram::Forwarded {
                origin: node,
                packet: Bytes::new(),
            },
        ] {
            assert_eq!(RelayDatagram::decode(datagram.encode()), Ok(datagram));
        }
    }

    #[test]
    fn short_and_unknown_datagrams_are_refused() {
        assert_eq!(
            RelayDatagram::decode(Bytes::new()),
            Err(RelayDatagramError::Truncated(0))
        );
        assert_eq!(
            RelayDatagram::decode(Bytes::from(vec![FORWARD; 32])),
            Err(RelayDatagramError::Truncated(32))
        );
        let node = SecretKey::generate().public();
        let mut bytes = RelayDatagram::Forward {
            destination: node,
            packet: Bytes::new(),
        }
        .encode()
        .to_vec();
        bytes[0] = 0x03;
        assert_eq!(
            RelayDatagram::decode(Bytes::from(bytes)),
            Err(RelayDatagramError::UnknownType(0x03))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = RelayDatagram::decode(Bytes::from(bytes));
        }
    }
}
