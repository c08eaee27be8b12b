//! An SDK program for interop tests: one ferry node with one mailbox, driven line by line on
//! standard input, reporting line by line on standard output.
//!
//! ```text
//! agent [--listen ADDR] [--key PATH] [--data DIR] [--relay-any] [--relay NODEID@ADDR]...
//!
//! stdout: ready <node id> <mailbox address>          first line, once the node is up
//!         recv <sender node id> <message id|-> <payload>
//!         sent <tag> <count>                          every message of a `send` acknowledged
//!         error <text>
//!         path <node id> direct <socket address>      answers `path`: how the node is reached
//!         path <node id> relayed <relay node id>
//!         path <node id> none                         (no connection)
//!         observed <socket address>...                answers `observed` (may be empty)
//! stdin:  send <address> <count> <tag>                sends "<tag> <n>" for n in 0..count
//!         path <node id>
//!         observed                                    the addresses relays see this node at
//!         quit
//! ```
//!
//! `--listen 0.0.0.0:0` binds every interface (the addresses it mints then carry the host's
//! interface addresses); `--no-punch` keeps relayed connections relayed.
//!
//! It also serves `last`: a call (with any postcard string as the request) is answered with
//! the payload of the last message its mailbox received, as a postcard string (what
//! `ferry call NODEID@HOST:PORT/last` prints).
//!
//! With `--data`, the key and a durable mailbox live in DIR: a restarted agent has the same
//! address and delivers every acknowledged message; each message is printed, stdout is
//! flushed, and only then is the message acknowledged to the store.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use ferry::{
    Address, Mailbox, Message, Node, NodeConfig, NodeId, RelayAccess, Route, SecretKey,
    ServiceOptions,
};
use ferry_node::store::{RedbStore, StoreConfig};
use tokio::io::AsyncBufReadExt as _;

#[derive(Debug, Parser)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Key file (created if missing); default: a fresh key, or `key` in --data.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Keep the key and a durable mailbox here.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Relay for any peer.
    #[arg(long)]
    relay_any: bool,
    /// Stay reachable through this relay, as NODEID@HOST:PORT (repeatable).
    #[arg(long = "relay", value_name = "NODEID@HOST:PORT")]
    relays: Vec<String>,
    /// Do not punch holes towards peers reached through a relay.
    #[arg(long)]
    no_punch: bool,
    /// Speak this ALPN protocol id instead of ferry/1 (version-negotiation tests).
    #[arg(long, default_value = "ferry/1")]
    alpn: String,
}

fn parse_peer(text: &str) -> anyhow::Result<(NodeId, SocketAddr)> {
    let (id, addr) = text.split_once('@').context("expected NODEID@HOST:PORT")?;
    Ok((id.parse()?, addr.parse()?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let key_path = args
        .key
        .clone()
        .or_else(|| args.data.as_ref().map(|dir| dir.join("key")));
    let key = match &key_path {
        Some(path) => ferry_node::keyfile::load_or_generate(path)?,
        None => SecretKey::generate(),
    };
    let relays = args
        .relays
        .iter()
        .map(|text| parse_peer(text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = NodeConfig {
        listen: args.listen,
        relay: if args.relay_any {
            RelayAccess::Any
        } else {
            RelayAccess::Nobody
        },
        relays,
        hole_punching: !args.no_punch,
        ..NodeConfig::default()
    };
    let node = Node::builder(key)
        .config(config)
        .alpn(args.alpn.as_bytes())
        .paused()
        .bind()
        .await?;
    let store = match &args.data {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Some(Arc::new(RedbStore::open(
                &dir.join("store.redb"),
                StoreConfig::default(),
            )?))
        }
        None => None,
    };
    let mailbox = match &store {
        Some(store) => node.durable_mailbox(store.named_mailbox("agent")?, store.clone())?,
        None => node.mailbox(),
    };
    let last: Arc<std::sync::Mutex<String>> = Arc::default();
    let answering = last.clone();
    let _last_service = node.serve("last", ServiceOptions::default(), move |conversation| {
        let answering = answering.clone();
        async move {
            let mut conversation = conversation;
            if conversation.recv_obj::<String>().await.is_ok() {
                let text = answering
                    .lock()
                    .map(|text| text.clone())
                    .unwrap_or_default();
                let _ = conversation.reply(&text).await;
            }
        }
    })?;
    // Bound paused: streams are taken only now that the (durable) mailbox is open again.
    node.serve_streams();
    println!("ready {} {}", node.id(), mailbox.address());
    let receiving = tokio::spawn(print_messages(Arc::new(mailbox), last));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["send", address, count, tag] => {
                let address: Address = address.parse()?;
                let count: u64 = count.parse()?;
                let node = node.clone();
                let tag = tag.to_string();
                tokio::spawn(async move {
                    match send_many(&node, &address, count, &tag).await {
                        Ok(()) => println!("sent {tag} {count}"),
                        Err(error) => println!("error sending {tag}: {error:#}"),
                    }
                });
            }
            ["path", peer] => match peer.parse::<NodeId>() {
                Ok(peer) => match node.route(&peer) {
                    Some(Route::Direct(addr)) => println!("path {peer} direct {addr}"),
                    Some(Route::Relayed { relay }) => println!("path {peer} relayed {relay}"),
                    Some(other) => println!("path {peer} {other}"),
                    None => println!("path {peer} none"),
                },
                Err(error) => println!("error bad node id {peer}: {error}"),
            },
            ["observed"] => {
                let addrs: Vec<String> = node
                    .observed_addrs()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                println!("{}", format!("observed {}", addrs.join(" ")).trim_end());
            }
            ["quit"] => break,
            [] => {}
            _ => println!("error unknown command: {line}"),
        }
    }
    receiving.abort();
    node.shutdown(Duration::from_secs(2)).await;
    if let Some(store) = store {
        store.close();
    }
    Ok(())
}

async fn send_many(node: &Node, address: &Address, count: u64, tag: &str) -> anyhow::Result<()> {
    let sender = node.sender(address);
    let mut last = None;
    for n in 0..count {
        last = Some(sender.enqueue_bytes(format!("{tag} {n}").into()).await?);
    }
    if let Some(last) = last {
        last.await?;
    }
    Ok(())
}

async fn print_messages(
    mailbox: Arc<Mailbox>,
    last: Arc<std::sync::Mutex<String>>,
) -> anyhow::Result<()> {
    loop {
        let first = mailbox.recv().await?;
        let mut batch = vec![first];
        batch.extend(mailbox.try_recv_many(1023)?);
        print_batch(&batch)?;
        if let (Some(message), Ok(mut last)) = (batch.last(), last.lock()) {
            *last = String::from_utf8_lossy(message.payload()).into_owned();
        }
        for message in &batch {
            message.ack();
        }
    }
}

fn print_batch(batch: &[Message]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for message in batch {
        let Ok(payload) = std::str::from_utf8(message.payload()) else {
            bail!("payload is not UTF-8");
        };
        let id = message.id().map_or("-".to_string(), |id| id.to_string());
        writeln!(out, "recv {} {id} {payload}", message.from().node())?;
    }
    out.flush()?;
    Ok(())
}
