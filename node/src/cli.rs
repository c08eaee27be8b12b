//! The command line: clap types only; the commands live in `commands/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use ferry::duration::parse_duration;
use ferry_node::config::{parse_addr_or_off, Peer};

/// `ferry send --timeout`'s default: the SDK's `send_timeout` default, longer than a dial
/// (`dial_timeout`) and a relayed first message need.
const SEND_TIMEOUT: &str = "60s";
/// `ferry call --timeout`'s default: the SDK's `call_timeout` default.
const CALL_TIMEOUT: &str = "30s";
/// `ferry ping -W`'s default: the SDK's `dial_timeout` default, so the first connection gets
/// as long as any node's dial.
const PING_TIMEOUT: &str = "10s";

/// ferry: a QUIC peer-to-peer messaging node with capability addresses.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Write a new secret key (mode 0600) and print its node id.
    Keygen {
        /// Where to write the key. Default: the key file in the default data directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the node id of a key.
    Id {
        /// The key file. Default: the key file in the default data directory.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Run a long-lived node; prints its node id, listen address and inbox address, then one
    /// line per message to the inbox.
    Run {
        /// Where the node runs, from flags and the config file.
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Open one mailbox, print its address as the first line, then one line per message.
    Listen {
        /// Where the node runs, from flags and the config file.
        #[command(flatten)]
        node: NodeArgs,
        /// Print each message as a JSON object with `from` and `payload`.
        #[arg(long)]
        json: bool,
    },
    /// Send one message to ADDRESS; exits 0 once the target node has accepted it.
    Send {
        /// The capability address to send to (as printed by `ferry listen`).
        address: String,
        /// The message text; `-` or nothing reads it from standard input.
        message: Option<String>,
        /// How long to wait for the target node's acknowledgement (dialing included), e.g.
        /// `10s`, `500ms`; also the node's `send_timeout`. A target no route reaches fails
        /// sooner, with `unreachable`, once its dials fail (`dial_timeout`, 10 s).
        #[arg(long, default_value = SEND_TIMEOUT, value_parser = parse_duration)]
        timeout: Duration,
        /// Reach the target through this relay node if it cannot be dialed directly.
        #[arg(long, value_name = "NODEID@HOST:PORT")]
        via: Option<Peer>,
    },
    /// Call a service: send MESSAGE as the request and print the reply.
    ///
    /// The request is the message as a postcard byte string (a varint length, then the
    /// bytes), which is exactly a postcard `String` when the message is UTF-8, so a service
    /// reads it with `recv_obj::<String>()` (or `Vec<u8>`). The reply must be a postcard
    /// `String` or `Vec<u8>`; its bytes are written to standard output, then a newline.
    Call(CallArgs),
    /// Measure round trips to a node, like ping(8): one line per round, then min/avg/p50/max
    /// and loss. Every ferry node answers (the built-in `ferry.ping` service).
    Ping(PingArgs),
    /// Print a commented config file with every key at its default value.
    ConfigExample,
}

/// Where a long-lived node (`run`, `listen`) runs. A flag replaces the config file's value.
#[derive(Debug, Default, Args)]
pub(crate) struct NodeArgs {
    /// A TOML config file (see `ferry config-example` and docs/CONFIG.md).
    #[arg(long, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// UDP address to listen on: `0.0.0.0:PORT` (or `[::]:PORT`) to be reachable from other
    /// hosts. Default: the config file's `listen`, else 127.0.0.1:0. Port 0 with a data
    /// directory: the port of the last run if it is free.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// The secret key file; created if missing. Default: the config file's `key_file`, else
    /// `key` in the data directory.
    #[arg(long, value_name = "PATH")]
    pub(crate) key: Option<PathBuf>,
    /// The data directory. Default: the config file's `data_dir`, else $FERRY_DATA, else
    /// $XDG_DATA_HOME/ferry, else ~/.local/share/ferry.
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// A peer to connect to at start (repeatable); replaces the config file's `peers`.
    #[arg(long = "peer", value_name = "NODEID@HOST:PORT")]
    pub(crate) peers: Vec<Peer>,
    /// Serve /health and /metrics on this TCP address (`ferry run`). Default: the config
    /// file's `http`, else 127.0.0.1:0 (a free port, printed at start).
    #[arg(long, value_name = "ADDR")]
    pub(crate) http: Option<SocketAddr>,
    /// Stay reachable through this relay node and name it in minted addresses (repeatable);
    /// replaces the config file's `relays`.
    #[arg(long = "relay", value_name = "NODEID@HOST:PORT")]
    pub(crate) relays: Vec<Peer>,
    /// Relay packets for any peer (the config file's `relay = "any"`).
    #[arg(long)]
    pub(crate) serve_relay: bool,
    /// Serve the browser gateway (WebSocket at /ws, the JS client at /ferry.js) on this TCP
    /// address, or `off` (`ferry run`). Default: the config file's `gateway`, else
    /// 127.0.0.1:0 (a free port, printed at start).
    #[arg(long, value_name = "ADDR|off")]
    pub(crate) gateway: Option<GatewayListen>,
    /// Run the gateway as one node of a cluster on these NATS servers (`nats://HOST:PORT`,
    /// repeatable or comma-separated, for failover; `ferry run`). Default: the config file's
    /// `cluster`, else none (the gateway alone).
    #[arg(long, value_name = "nats://HOST:PORT", value_delimiter = ',')]
    pub(crate) cluster: Vec<String>,
    /// Serve the gateway over WebTransport (HTTP/3) on this UDP address, `auto` (the
    /// gateway's IP and port number, or a free port when that is taken on UDP), or `off`
    /// (`ferry run`). Default: the config file's `webtransport`, else `auto`.
    #[arg(long, value_name = "ADDR|auto|off")]
    pub(crate) webtransport: Option<WebTransportFlag>,
}

/// `ferry call`.
#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    /// The service: its capability address (`ferry1…`), or NODEID@HOST:PORT/NAME for a
    /// service registered under NAME.
    pub(crate) target: String,
    /// The request text; `-` or nothing reads it from standard input.
    pub(crate) message: Option<String>,
    /// How long to wait for the reply (dialing included), e.g. `10s`, `500ms`.
    #[arg(long, default_value = CALL_TIMEOUT, value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Call with this node identity (a key file, as written by `ferry keygen`) instead of a
    /// fresh one, for services that allow only some nodes.
    #[arg(long, value_name = "PATH")]
    pub(crate) key: Option<PathBuf>,
    /// Reach the target through this relay node if it cannot be dialed directly.
    #[arg(long, value_name = "NODEID@HOST:PORT")]
    pub(crate) via: Option<Peer>,
}

/// `ferry ping`.
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// The node to ping.
    #[arg(value_name = "NODEID@HOST:PORT")]
    pub(crate) peer: Peer,
    /// Stop after this many rounds. Default: until Ctrl-C.
    #[arg(short = 'c', long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Time between the starts of two rounds, e.g. `1s`, `200ms`.
    #[arg(short = 'i', long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) interval: Duration,
    /// How long to wait for each echo, and for the first connection.
    #[arg(short = 'W', long, default_value = PING_TIMEOUT, value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Ping with this node identity (a key file) instead of a fresh one, for nodes that admit
    /// only some nodes.
    #[arg(long, value_name = "PATH")]
    pub(crate) key: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line's timeouts agree with the SDK's defaults (and so with the docs).
    #[test]
    fn timeout_defaults_agree_with_the_node_defaults() {
        let node = ferry::NodeConfig::default();
        assert_eq!(parse_duration(SEND_TIMEOUT), Ok(node.send_timeout));
        assert_eq!(parse_duration(CALL_TIMEOUT), Ok(node.call_timeout));
        assert_eq!(parse_duration(PING_TIMEOUT), Ok(node.dial_timeout));
        assert!(node.send_timeout > node.dial_timeout);
        assert!(node.call_timeout > node.dial_timeout);

        let parsed = |args: &[&str]| Cli::try_parse_from(args).unwrap().command;
        let id = ferry::SecretKey::generate().public();
        let peer = format!("{id}@127.0.0.1:1");
        match parsed(&["ferry", "send", "ferry1x"]) {
            Command::Send { timeout, .. } => assert_eq!(timeout, node.send_timeout),
            other => panic!("{other:?}"),
        }
        match parsed(&["ferry", "call", "ferry1x"]) {
            Command::Call(args) => assert_eq!(args.timeout, node.call_timeout),
            other => panic!("{other:?}"),
        }
        match parsed(&["ferry", "ping", &peer]) {
            Command::Ping(args) => assert_eq!(args.timeout, node.dial_timeout),
            other => panic!("{other:?}"),
        }
    }
}

/// `--gateway`: a TCP address, or `off`. (A newtype: clap reads `Option<Option<_>>` as a flag
/// whose value is optional.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GatewayListen(pub(crate) Option<SocketAddr>);

impl std::str::FromStr for GatewayListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_addr_or_off(text)
            .map(Self)
            .map_err(|e| format!("{text:?}: {e} (expected HOST:PORT or \"off\")"))
    }
}

/// `--webtransport`: a UDP address, `auto`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WebTransportFlag(pub(crate) Option<ferry_node::gateway::webtransport::Listen>);

impl std::str::FromStr for WebTransportFlag {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ferry_node::config::parse_webtransport_or_off(text)
            .map(Self)
            .map_err(|e| format!("{text:?}: {e} (expected HOST:PORT, \"auto\" or \"off\")"))
    }
}
