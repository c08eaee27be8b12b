//! The command line: clap types only; the commands live in `commands/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use ferry::address::GrantId;
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
        /// Grants and revocations of the mailbox.
        #[command(flatten)]
        caps: ListenCaps,
    },
    /// Work with capability addresses offline: narrow one, or show what it holds.
    Address {
        /// What to do.
        #[command(subcommand)]
        command: AddressCommand,
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

/// `ferry listen`'s grants: revoke one without closing the mailbox (docs/PROTOCOL.md §4.11).
#[derive(Debug, Default, Args)]
pub(crate) struct ListenCaps {
    /// Print an address under a new grant as the first line instead of the mailbox's plain
    /// address (its grant id goes to standard error), so that it can be revoked later.
    #[arg(long)]
    pub(crate) grant: bool,
    /// Revoke this grant (16 hex digits, as `ferry address inspect` prints) before taking
    /// messages; repeatable. With a data directory the revocation is stored and lasts.
    #[arg(long = "revoke", value_name = "GRANT", value_parser = parse_grant)]
    pub(crate) revoke: Vec<GrantId>,
    /// Read commands from standard input while running, one per line: `grant [DURATION]`
    /// prints `grant GRANT ADDRESS` for a new grant (expiring after DURATION if given),
    /// `revoke GRANT` revokes one and prints `revoked GRANT` once it is stored.
    #[arg(long)]
    pub(crate) commands: bool,
}

/// `ferry address …`.
#[derive(Debug, Subcommand)]
pub(crate) enum AddressCommand {
    /// Print a narrower address derived from ADDRESS, without contacting its node: anyone who
    /// holds an address can do this, and nobody can undo it.
    Attenuate(AttenuateArgs),
    /// Print what an address holds: node, mailbox, grant, expiry, caveats, hints.
    Inspect {
        /// The address.
        address: String,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// `ferry address attenuate`.
#[derive(Debug, Args)]
pub(crate) struct AttenuateArgs {
    /// The address to narrow (`ferry1…` or `ferry2…`).
    pub(crate) address: String,
    /// Void after this long from now (e.g. `1h`); must be earlier than its expiry.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) expires: Option<Duration>,
    /// Void at this time (seconds since the Unix epoch).
    #[arg(long, value_name = "UNIX_SECS", conflicts_with = "expires")]
    pub(crate) expires_at: Option<u64>,
    /// At most N messages, counted together with every address derived from the result.
    #[arg(long, value_name = "N")]
    pub(crate) max: Option<u32>,
    /// At most N messages per DURATION, e.g. `10/1m`.
    #[arg(long, value_name = "N/DURATION", value_parser = parse_rate)]
    pub(crate) rate: Option<(u32, u32)>,
    /// Conversations with this service only (no messages, no watches).
    #[arg(long, value_name = "NAME")]
    pub(crate) service: Option<String>,
    /// Usable only by this node (its TLS identity): a handoff.
    #[arg(long, value_name = "NODEID")]
    pub(crate) only: Option<ferry::NodeId>,
}

fn parse_grant(text: &str) -> Result<GrantId, String> {
    text.parse()
        .map_err(|error| format!("a grant is 16 hex digits: {error}"))
}

fn parse_rate(text: &str) -> Result<(u32, u32), String> {
    let (count, per) = text
        .split_once('/')
        .ok_or_else(|| "a rate is N/DURATION, e.g. 10/1m".to_string())?;
    let count: u32 = count
        .parse()
        .map_err(|error| format!("rate count: {error}"))?;
    let per = parse_duration(per).map_err(|error| error.to_string())?;
    let secs = u32::try_from(per.as_secs()).map_err(|_| "rate window too long".to_string())?;
    if count == 0 || secs == 0 {
        return Err("a rate needs at least 1 message per at least 1 s".into());
    }
    Ok((count, secs))
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
