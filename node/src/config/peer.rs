//! A peer as `NODEID@HOST:PORT`: a node's identity and where to dial it (the config file's
//! `peers`, and the `--peer`, `--relay` and `--via` flags).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::str::FromStr;

use ferry::{NodeId, NodeIdError};

/// A node id with the socket address to dial it at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Peer {
    /// The node's identity.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Why a text is no `NODEID@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// There is no `@`.
    #[error("{0:?}: expected NODEID@HOST:PORT")]
    Form(String),
    /// The part before `@` is no node id.
    #[error("node id {text:?}: {source}")]
    NodeId {
        /// The part before `@`.
        text: String,
        /// Why it is no node id.
        source: NodeIdError,
    },
    /// The part after `@` is no socket address.
    #[error("address {text:?}: {source} (expected HOST:PORT)")]
    Addr {
        /// The part after `@`.
        text: String,
        /// Why it is no socket address.
        source: std::net::AddrParseError,
    },
}

impl FromStr for Peer {
    type Err = PeerError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (id, addr) = text
            .split_once('@')
            .ok_or_else(|| PeerError::Form(text.to_owned()))?;
        Ok(Self {
            id: id.parse().map_err(|source| PeerError::NodeId {
                text: id.to_owned(),
                source,
            })?,
            addr: addr.parse().map_err(|source| PeerError::Addr {
                text: addr.to_owned(),
                source,
            })?,
        })
    }
}

impl TryFrom<String> for Peer {
    type Error = PeerError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}
