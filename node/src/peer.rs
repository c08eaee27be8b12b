//! A peer as `NODEID@HOST:PORT`: a node's identity and where to dial it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::str::FromStr;

use ferry::NodeId;

/// A node id with the socket address to dial it at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct Peer {
    /// The node's identity.
    pub(crate) id: NodeId,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

impl FromStr for Peer {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (id, addr) = text
            .split_once('@')
            .ok_or_else(|| format!("{text:?}: expected NODEID@HOST:PORT"))?;
        Ok(Self {
            id: id.parse().map_err(|e| format!("node id {id:?}: {e}"))?,
            addr: addr
                .parse()
                .map_err(|e| format!("address {addr:?}: {e} (expected HOST:PORT)"))?,
        })
    }
}

impl TryFrom<String> for Peer {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}
