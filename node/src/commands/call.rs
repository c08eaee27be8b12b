//! `ferry call`: one request to a service, its reply on standard output.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use ferry::{Address, CallError, Node, NodeConfig, SecretKey, Target};

use crate::cli::CallArgs;
use crate::exit;
use ferry_node::config::Peer;

/// A capability address (`ferry1…`), or `NODEID@HOST:PORT/NAME` for a service by name.
fn parse_target(text: &str) -> Result<Target, String> {
    if text.contains('@') {
        let (peer, name) = text
            .rsplit_once('/')
            .ok_or_else(|| format!("{text:?}: expected NODEID@HOST:PORT/SERVICE"))?;
        let peer: Peer = peer
            .parse()
            .map_err(|e: ferry_node::config::PeerError| e.to_string())?;
        if name.is_empty() {
            return Err(format!("{text:?}: the service name after '/' is empty"));
        }
        Ok(Target::service(peer.id, name).with_hints(vec![peer.addr]))
    } else {
        let address: Address = text
            .parse()
            .map_err(|error| format!("malformed address: {error}"))?;
        Ok(Target::from(address))
    }
}

/// The identity to call with: the key file if given, else a fresh key.
pub(super) fn identity(key: Option<&Path>) -> anyhow::Result<SecretKey> {
    Ok(match key {
        Some(path) => ferry_node::keyfile::load(path)?,
        None => SecretKey::generate(),
    })
}

/// Calls the service from a fresh node and prints the reply.
pub(super) async fn call(args: CallArgs) -> ExitCode {
    let target = match parse_target(&args.target) {
        Ok(target) => target,
        Err(error) => {
            eprintln!("ferry call: {error}");
            return ExitCode::from(exit::INPUT);
        }
    };
    let request = match super::read_message(args.message) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("ferry call: reading standard input: {error}");
            return ExitCode::from(exit::INPUT);
        }
    };
    let key = match identity(args.key.as_deref()) {
        Ok(key) => key,
        Err(error) => {
            eprintln!("ferry call: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let routes = match &target {
        Target::Address(address) => super::routes_of(address),
        Target::Service { hints, .. } => hints.clone(),
    };
    let config = NodeConfig {
        listen: super::ephemeral_listen(
            routes
                .into_iter()
                .chain(args.via.iter().map(|relay| relay.addr)),
        ),
        call_timeout: args.timeout,
        ..NodeConfig::default()
    };
    let node = match Node::bind(key, config).await {
        Ok(node) => node,
        Err(error) => {
            eprintln!("ferry call: starting node: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    if let Some(relay) = &args.via {
        node.add_relay_route(target.node(), relay.id, relay.addr);
    }
    // `[u8]` and `String` have the same postcard encoding: a varint length, then the bytes.
    let result: Result<Vec<u8>, CallError> = node
        .call(target, request.as_slice())
        .timeout(args.timeout)
        .await;
    node.shutdown(Duration::from_millis(200)).await;
    match result {
        Ok(mut reply) => {
            reply.push(b'\n');
            let mut stdout = std::io::stdout().lock();
            if let Err(error) = stdout.write_all(&reply).and_then(|()| stdout.flush()) {
                eprintln!("ferry call: writing the reply: {error}");
                return ExitCode::from(exit::FAILURE);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ferry call: {error}");
            ExitCode::from(exit::call(&error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let id = SecretKey::generate().public();
        let target = parse_target(&format!("{id}@127.0.0.1:4433/echo")).unwrap();
        assert_eq!(
            target,
            Target::service(id, "echo").with_hints(vec!["127.0.0.1:4433".parse().unwrap()])
        );
        for bad in [
            format!("{id}@127.0.0.1:4433"),
            format!("{id}@127.0.0.1:4433/"),
            format!("{id}@nowhere/echo"),
            "ferry1notanaddress".to_string(),
            String::new(),
        ] {
            assert!(parse_target(&bad).is_err(), "{bad:?}");
        }
    }
}
