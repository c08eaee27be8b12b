//! `ferry send`: one message, acknowledged by the target node.

use std::process::ExitCode;
use std::time::Duration;

use ferry::{Address, Node, NodeConfig, SecretKey, SendError};

use crate::exit;
use ferry_node::config::Peer;

/// Sends one message from a fresh node and exits once the target node accepted it.
pub(super) async fn send(
    address: &str,
    message: Option<String>,
    timeout: Duration,
    via: Option<Peer>,
) -> ExitCode {
    let address: Address = match address.parse() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("ferry send: malformed address: {error}");
            return ExitCode::from(exit::INPUT);
        }
    };
    let payload = match super::read_message(message) {
        Ok(payload) => payload,
        Err(error) => {
            eprintln!("ferry send: reading standard input: {error}");
            return ExitCode::from(exit::INPUT);
        }
    };
    let routes = super::routes_of(&address);
    let config = NodeConfig {
        listen: super::ephemeral_listen(
            routes.into_iter().chain(via.iter().map(|relay| relay.addr)),
        ),
        send_timeout: timeout,
        ..NodeConfig::default()
    };
    let node = match Node::bind(SecretKey::generate(), config).await {
        Ok(node) => node,
        Err(error) => {
            eprintln!("ferry send: starting node: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    if let Some(relay) = via {
        node.add_relay_route(address.node(), relay.id, relay.addr);
    }
    let result = tokio::time::timeout(timeout, node.send_bytes(&address, payload.into()))
        .await
        .unwrap_or(Err(SendError::Timeout));
    node.shutdown(Duration::from_millis(200)).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferry send: {error}");
            ExitCode::from(exit::send(&error))
        }
    }
}
