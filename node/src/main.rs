//! The `ferry` command-line tool and daemon.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};
use ferry::{Address, DialError, Node, NodeConfig, NodeId, SecretKey, SendError};

/// ferry: a QUIC peer-to-peer messaging node with capability addresses.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Run a long-lived node; prints its node id, listen address and inbox address.
    Run {
        #[command(flatten)]
        node: NodeArgs,
        /// A peer to connect to at start, as NODEID@HOST:PORT (repeatable).
        #[arg(long = "peer", value_name = "NODEID@HOST:PORT")]
        peers: Vec<PeerArg>,
    },
    /// Open one mailbox, print its address as the first line, then one line per message.
    Listen {
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
        /// How long to wait for the target node's acknowledgement, e.g. `10s`, `500ms`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The secret key file; created if missing. Default: `key` in the data directory.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The data directory. Default: $FERRY_DATA, else $XDG_DATA_HOME/ferry, else
    /// ~/.local/share/ferry.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct PeerArg {
    id: NodeId,
    addr: SocketAddr,
}

impl std::str::FromStr for PeerArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (id, addr) = text
            .split_once('@')
            .ok_or_else(|| "expected NODEID@HOST:PORT".to_string())?;
        Ok(Self {
            id: id.parse().map_err(|e| format!("node id: {e}"))?,
            addr: addr.parse().map_err(|e| format!("address: {e}"))?,
        })
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: use e.g. 10s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("invalid duration unit in {text:?}: use ms, s or m")),
    }
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRY_DATA") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("ferry"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set; pass --data"))?;
    Ok(PathBuf::from(home).join(".local/share/ferry"))
}

fn key_path(key: Option<PathBuf>, data: Option<&Path>) -> anyhow::Result<PathBuf> {
    match (key, data) {
        (Some(key), _) => Ok(key),
        (None, Some(data)) => Ok(data.join("key")),
        (None, None) => Ok(default_data_dir()?.join("key")),
    }
}

async fn start_node(args: NodeArgs) -> anyhow::Result<Node> {
    let data = match args.data {
        Some(data) => data,
        None => default_data_dir()?,
    };
    std::fs::create_dir_all(&data)
        .with_context(|| format!("creating data directory {}", data.display()))?;
    let key = SecretKey::load_or_generate(&key_path(args.key, Some(&data))?)?;
    let config = NodeConfig {
        listen: args.listen,
        ..NodeConfig::default()
    };
    Ok(Node::bind(key, config).await?)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn print_message(message: &ferry::Message, json: bool) {
    let text = String::from_utf8_lossy(message.payload());
    if json {
        println!(
            "{{\"from\":\"{}\",\"payload\":{}}}",
            message.from(),
            json_string(&text)
        );
    } else {
        println!("{text}");
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn receive_until_signal(node: &Node, mailbox: &ferry::Mailbox, json: bool) {
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            message = mailbox.recv() => match message {
                Ok(message) => print_message(&message, json),
                Err(_) => break,
            },
        }
    }
    node.shutdown(Duration::from_secs(2)).await;
}

/// Exit codes of `ferry send`, one per cause.
fn send_exit_code(error: &SendError) -> u8 {
    match error {
        SendError::Forged | SendError::Expired(_) | SendError::WrongNode => 3,
        SendError::NoSuchMailbox => 4,
        SendError::Unreachable(DialError::Timeout) | SendError::Timeout => 6,
        SendError::Unreachable(_) => 5,
        SendError::TooLarge { .. } => 7,
        _ => 1,
    }
}

async fn send(address: &str, message: Option<String>, timeout: Duration) -> ExitCode {
    let address: Address = match address.parse() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("ferry send: malformed address: {error}");
            return ExitCode::from(2);
        }
    };
    let payload = match message.as_deref() {
        Some("-") | None => {
            let mut buf = Vec::new();
            if let Err(error) = std::io::stdin().read_to_end(&mut buf) {
                eprintln!("ferry send: reading standard input: {error}");
                return ExitCode::from(2);
            }
            buf
        }
        Some(text) => text.as_bytes().to_vec(),
    };
    let config = NodeConfig {
        send_timeout: timeout,
        ..NodeConfig::default()
    };
    let node = match Node::bind(SecretKey::generate(), config).await {
        Ok(node) => node,
        Err(error) => {
            eprintln!("ferry send: starting node: {error}");
            return ExitCode::from(1);
        }
    };
    let result = tokio::time::timeout(timeout, node.send_bytes(&address, payload.into()))
        .await
        .unwrap_or(Err(SendError::Timeout));
    node.shutdown(Duration::from_millis(200)).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferry send: {error}");
            ExitCode::from(send_exit_code(&error))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen { out } => {
            let path = key_path(out, None)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let key = SecretKey::generate();
            key.save(&path)?;
            println!("{}", key.public());
        }
        Command::Id { key } => {
            let key = SecretKey::load(&key_path(key, None)?)?;
            println!("{}", key.public());
        }
        Command::Run { node, peers } => {
            let node = start_node(node).await?;
            for peer in &peers {
                node.add_peer_addr(peer.id, peer.addr);
                if let Err(error) = node.connect(peer.id, Some(peer.addr)).await {
                    tracing::warn!(peer = %peer.id.short(), %error, "could not connect at start");
                }
            }
            println!("node id: {}", node.id());
            println!("listening on: {}", node.local_addr());
            println!("inbox address: {}", node.inbox().address());
            receive_until_signal(&node, node.inbox(), false).await;
        }
        Command::Listen { node, json } => {
            let node = start_node(node).await?;
            let mailbox = node.mailbox();
            println!("{}", mailbox.address());
            receive_until_signal(&node, &mailbox, json).await;
        }
        Command::Send {
            address,
            message,
            timeout,
        } => return Ok(send(&address, message, timeout).await),
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ferry: {error:#}");
            ExitCode::FAILURE
        }
    }
}
