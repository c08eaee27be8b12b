//! What several of the SDK's test binaries start from: nodes on loopback and the wall clock.
// Each test binary uses its own part of this.
#![allow(dead_code)]

use std::time::Duration;

use ferry::{Node, NodeConfig, SecretKey};

/// How long a test waits for what it expects.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A node with the default configuration.
pub(crate) async fn node() -> Node {
    node_with(NodeConfig::default()).await
}

/// A node with `config`.
pub(crate) async fn node_with(config: NodeConfig) -> Node {
    Node::bind(SecretKey::generate(), config).await.unwrap()
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
