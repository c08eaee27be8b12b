//! Routes to a node: straight to its UDP socket address, or through a relay (docs/PROTOCOL.md
//! §2.5, §12).

use std::net::SocketAddr;

use crate::identity::NodeId;

/// How a connection reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Route {
    /// Straight to the peer's UDP socket address.
    Direct(SocketAddr),
    /// Through the relay node `relay` (docs/PROTOCOL.md §12).
    Relayed {
        /// The relay.
        relay: NodeId,
    },
}

impl Route {
    /// Whether packets travel through a relay.
    pub fn is_relayed(&self) -> bool {
        matches!(self, Self::Relayed { .. })
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(addr) => write!(f, "direct {addr}"),
            Self::Relayed { relay } => write!(f, "relayed {relay}"),
        }
    }
}

/// A route a dial may try: a socket address, or a relay and where to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Candidate {
    /// The peer's UDP socket address.
    Direct(SocketAddr),
    /// Through the relay `relay` at `relay_addr`.
    Relay {
        /// The relay's node id.
        relay: NodeId,
        /// Where to dial the relay.
        relay_addr: SocketAddr,
    },
}

impl Candidate {
    /// The route a connection made this way takes.
    pub fn route(&self) -> Route {
        match *self {
            Self::Direct(addr) => Route::Direct(addr),
            Self::Relay { relay, .. } => Route::Relayed { relay },
        }
    }

    /// Whether it can be dialed at all: a wildcard IP, port 0 or a multicast address cannot.
    pub fn dialable(&self) -> bool {
        match self {
            Self::Direct(addr)
            | Self::Relay {
                relay_addr: addr, ..
            } => addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast(),
        }
    }

    /// Whether it is a relay route.
    pub fn is_relay(&self) -> bool {
        matches!(self, Self::Relay { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undialable_candidates() {
        assert!(!Candidate::Direct(SocketAddr::from(([0, 0, 0, 0], 5))).dialable());
        assert!(!Candidate::Direct(SocketAddr::from(([10, 0, 0, 1], 0))).dialable());
        assert!(!Candidate::Direct(SocketAddr::from(([224, 0, 0, 1], 5))).dialable());
        assert!(Candidate::Direct(SocketAddr::from(([10, 0, 0, 1], 5))).dialable());
    }
}
