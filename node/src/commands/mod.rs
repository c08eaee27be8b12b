//! One module per command group; [`run()`] dispatches.

mod address;
mod call;
mod keys;
mod ping;
mod run;
mod send;

use std::io::Read as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::exit;
use ferry_node::config::ConfigFileError;

/// Runs the command and returns the process exit code.
pub(crate) async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Keygen { out } => keys::keygen(out),
        Command::Id { key } => keys::id(key),
        Command::Run { node } => run::run(node).await,
        Command::Listen { node, json, caps } => run::listen(node, json, caps).await,
        Command::Address { command } => return address::address(command),
        Command::Send {
            address,
            message,
            timeout,
            via,
        } => return send::send(&address, message, timeout, via).await,
        Command::Call(args) => return call::call(args).await,
        Command::Ping(args) => return ping::ping(args).await,
        Command::ConfigExample => {
            print!("{}", ferry_node::config::example());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferry: {error:#}");
            if error.downcast_ref::<ConfigFileError>().is_some() {
                ExitCode::from(exit::INPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The message of `send` and `call`: the argument, or standard input for `-` or none.
fn read_message(message: Option<String>) -> std::io::Result<Vec<u8>> {
    match message.as_deref() {
        Some("-") | None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
        Some(text) => Ok(text.as_bytes().to_vec()),
    }
}

/// The socket addresses `address`'s node may be dialed at: its dial hints, then its relays'.
fn routes_of(address: &ferry::Address) -> Vec<SocketAddr> {
    let relays = address
        .relays()
        .into_iter()
        .map(|(_, relay_addr)| relay_addr);
    address.hints().iter().copied().chain(relays).collect()
}

/// What the short-lived node of `send`, `call` and `ping` binds: any free port on the wildcard
/// address of the family that reaches the target, so that it can dial other hosts (the
/// operating system picks the source address of each route). `routes` are the socket addresses
/// the target may be dialed at: its dial hints, its relays', `--via`. IPv4 (`0.0.0.0:0`)
/// unless all of them are IPv6 (`[::]:0`); also IPv4 when there are none (the target's node
/// may be known by a relay only), as IPv4 is the family every host has. A target with hints of
/// both families is dialed over IPv4.
fn ephemeral_listen(routes: impl IntoIterator<Item = SocketAddr>) -> SocketAddr {
    let mut routes = routes.into_iter().peekable();
    let only_ipv6 = routes.peek().is_some() && routes.all(|route| route.is_ipv6());
    if only_ipv6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|addr| addr.parse().unwrap()).collect()
    }

    #[test]
    fn ephemeral_nodes_bind_the_wildcard_of_the_targets_family() {
        let v4: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let v6: SocketAddr = "[::]:0".parse().unwrap();
        assert_eq!(ephemeral_listen(routes(&[])), v4);
        assert_eq!(ephemeral_listen(routes(&["127.0.0.1:4433"])), v4);
        assert_eq!(
            ephemeral_listen(routes(&["192.0.2.1:1", "[2001:db8::1]:1"])),
            v4
        );
        assert_eq!(
            ephemeral_listen(routes(&["[2001:db8::1]:1", "192.0.2.1:1"])),
            v4
        );
        assert_eq!(ephemeral_listen(routes(&["[2001:db8::1]:1"])), v6);
        assert_eq!(
            ephemeral_listen(routes(&["[::1]:1", "[2001:db8::1]:1"])),
            v6
        );
    }
}
