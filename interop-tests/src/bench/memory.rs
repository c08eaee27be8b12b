//! Memory per connected peer and per idle conversation.
//!
//! The measured node (the "hub") runs in a child process: this binary started with the hidden
//! option `--memory-hub ferry|quinn`, so that its heap and RSS hold nothing but the hub. The
//! parent drives it through stdin and stdout, one line per command and answer:
//!
//! | parent → hub | hub → parent |
//! |---|---|
//! | (start) | `ready <address>` (ferry: a mailbox address; quinn: `<socket address> <certificate hex>`) |
//! | `memory` | `memory <heap bytes> <RSS bytes>`, 100 ms after the command |
//! | `peers N` | `ok` once N peers are connected |
//! | `streams M` | `ok` once M peer streams are open and their first message delivered |
//! | (end of stdin) | (exits) |
//!
//! Any failure is answered with `error <text>`. The heap is the counting global allocator's
//! live bytes ([`super::ALLOCATOR`]), the RSS `VmRSS` of `/proc/self/status`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use ferry::{Address, Mailbox, Node, NodeConfig, SecretKey};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::child::{rss, Child};
use super::{
    baseline_client_config, measure, transport_config, BaselineIdentity, Better, Row, Settings,
    ALLOCATOR, MESSAGE_LEN, PAYLOAD,
};

/// How long the hub and the parent wait before reading memory, for work started by the last
/// step (timers, acknowledgements, freeing handshake state) to settle.
const SETTLE: Duration = Duration::from_millis(100);
/// Handshakes, or first messages, in flight at once. With 32, bursts of Initial packets
/// overflowed a loopback socket's receive buffer (`RcvbufErrors` in `/proc/net/snmp`) and the
/// lost handshakes waited for quinn's first probe timeout (1 s).
pub(crate) const CONCURRENCY: usize = 8;
/// How long the hub waits for the peers or streams it was told to expect.
const HUB_WAIT: Duration = Duration::from_secs(60);
/// The longest wait for the sending node's idle conversations to park (they do after a second).
const PARKING_WAIT: Duration = Duration::from_secs(30);
/// Concurrent incoming streams the quinn hub allows a peer at most (ferry's
/// `max_incoming_streams`), and at first (ferry's `initial_incoming_streams`): like ferry, the
/// hub doubles a connection's grant whenever half of it is in use.
const QUINN_MAX_STREAMS: u32 = 4096;
const QUINN_INITIAL_STREAMS: u32 = 100;

/// The rows, in this order: one value each per run.
pub(crate) const ROWS: usize = 5;

pub(super) async fn figure_memory(settings: Settings) -> Result<Vec<Row>> {
    let peers = "raw quinn, bare connections";
    let streams = "raw quinn, idle streams";
    let mut rows: [Row; ROWS] = [
        Row::new(
            "heap per connected peer (measured node)",
            "KiB",
            Better::Lower,
        )
        .against(peers),
        Row::new(
            "RSS per connected peer (measured node)",
            "KiB",
            Better::Lower,
        )
        .against(peers),
        Row::new(
            "heap per idle conversation, receiving node",
            "KiB",
            Better::Lower,
        )
        .against(streams),
        Row::new(
            "RSS per idle conversation, receiving node",
            "KiB",
            Better::Lower,
        )
        .against(streams),
        Row::new(
            "heap per idle conversation, sending node",
            "KiB",
            Better::Lower,
        )
        .against(streams),
    ];
    let (n, m) = (settings.memory_peers, settings.memory_conversations);
    let mut record = |ferry: bool, values: [f64; ROWS]| {
        for (row, value) in rows.iter_mut().zip(values) {
            row.push(ferry, value);
        }
    };
    for run in 0..settings.runs {
        let ferry_first = run % 2 == 0;
        if ferry_first {
            record(true, measure(ferry_memory(n, m)).await?);
        }
        if !settings.ferry_only {
            record(false, measure(quinn_memory(n, m)).await?);
        }
        if !ferry_first {
            record(true, measure(ferry_memory(n, m)).await?);
        }
    }
    Ok(rows.into())
}

/// Heap and RSS of a process, in bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    pub(crate) heap: i64,
    pub(crate) rss: i64,
}

impl Memory {
    /// This process's memory now.
    fn now() -> Result<Self> {
        Ok(Self {
            heap: i64::try_from(ALLOCATOR.allocated())?,
            rss: rss()?,
        })
    }
}

/// The five row values of one run, in KiB: per peer (heap, RSS) from `before` to `peers`, per
/// conversation (heap, RSS) from `peers` to `conversations`, and per conversation on the
/// sending side from `sender_before` to `sender_after` (heap only).
pub(crate) fn per_item(
    n: usize,
    m: usize,
    [before, peers, conversations]: [Memory; 3],
    (sender_before, sender_after): (i64, i64),
) -> [f64; ROWS] {
    let kib = |bytes: i64, count: usize| bytes as f64 / count.max(1) as f64 / 1024.0;
    [
        kib(peers.heap - before.heap, n),
        kib(peers.rss - before.rss, n),
        kib(conversations.heap - peers.heap, m),
        kib(conversations.rss - peers.rss, m),
        kib(sender_after - sender_before, m),
    ]
}

/// This process's heap once recent work settled.
async fn settled_heap() -> Result<i64> {
    tokio::time::sleep(SETTLE).await;
    Ok(i64::try_from(ALLOCATOR.allocated())?)
}

/// Ferry: the hub is a node with one mailbox (drained). `n` client nodes, bound before the
/// first reading, `connect` to it; then the first client opens `m` conversations into the
/// hub's mailbox, one per sending mailbox (`mailbox.sender(hub address)`), each sending one
/// acknowledged 64-byte message and then idle (a conversation stays open 30 s without
/// traffic, `stream_idle_timeout`). The sending node is measured once they all parked (after
/// a second without traffic).
pub(crate) async fn ferry_memory(n: usize, m: usize) -> Result<[f64; ROWS]> {
    let (mut hub, ready) = Hub::start("ferry").await?;
    let address: Address = ready
        .parse()
        .map_err(|error| anyhow!("hub address {ready:?}: {error}"))?;
    let (peer, hint) = (address.node(), address.hints().first().copied());
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Node::bind(SecretKey::generate(), NodeConfig::default()).await?);
    }
    let result = async {
        let before = hub.memory().await?;
        // Owned futures (cloned handles): borrowing ones make this future not `Send`.
        futures::stream::iter(clients.clone())
            .map(|client| async move { client.connect(peer, hint).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        hub.expect(&format!("peers {n}")).await?;
        let with_peers = hub.memory().await?;

        let sending = clients.first().ok_or_else(|| anyhow!("no clients"))?;
        let payload = Bytes::from_static(&PAYLOAD);
        let sender_before = settled_heap().await?;
        let conversations: Vec<(Mailbox, ferry::Sender)> = futures::stream::iter(0..m)
            .map(|_| {
                let (sending, address) = (sending.clone(), address.clone());
                let payload = payload.clone();
                async move {
                    let mailbox = sending.mailbox();
                    let sender = mailbox.sender(&address)?;
                    sender.send_bytes(payload).await?;
                    anyhow::Ok((mailbox, sender))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        hub.expect(&format!("streams {m}")).await?;
        let with_conversations = hub.memory().await?;
        // Idle: quiet for a second, a conversation parks its run and ends its task.
        wait_for_count("parked conversations", m as u64, PARKING_WAIT, || {
            sending.stats().parked_conversations as u64
        })
        .await?;
        let sender_after = settled_heap().await?;
        drop(conversations);
        anyhow::Ok(per_item(
            n,
            m,
            [before, with_peers, with_conversations],
            (sender_before, sender_after),
        ))
    }
    .await;
    // Shut the clients down while the hub still answers (nothing is in flight).
    futures::future::join_all(
        clients
            .iter()
            .map(|client| client.shutdown(Duration::from_millis(50))),
    )
    .await;
    hub.finish().await;
    result
}

/// Raw quinn: the hub is a server endpoint (same TLS and windows as the other baselines, a
/// grant of [`QUINN_INITIAL_STREAMS`] concurrent streams growing to [`QUINN_MAX_STREAMS`])
/// with a task per connection accepting streams and a task per stream, which reads one
/// 64-byte message, answers an 8-byte acknowledgement and waits for more. One client endpoint makes `n` connections; then `m` streams on the first
/// one each carry one acknowledged message and stay open.
pub(crate) async fn quinn_memory(n: usize, m: usize) -> Result<[f64; ROWS]> {
    let (mut hub, ready) = Hub::start("quinn").await?;
    let (addr, cert) = ready
        .split_once(' ')
        .ok_or_else(|| anyhow!("bad ready line {ready:?}"))?;
    let addr: SocketAddr = addr.parse()?;
    let cert = rustls::pki_types::CertificateDer::from(from_hex(cert)?);
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    endpoint.set_default_client_config(baseline_client_config(cert, Arc::new(transport_config()))?);
    let result = async {
        let before = hub.memory().await?;
        let connections: Vec<quinn::Connection> = futures::stream::iter(0..n)
            .map(|_| {
                let endpoint = endpoint.clone();
                async move { anyhow::Ok(endpoint.connect(addr, "localhost")?.await?) }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        hub.expect(&format!("peers {n}")).await?;
        let with_peers = hub.memory().await?;

        let connection = connections
            .first()
            .ok_or_else(|| anyhow!("no connections"))?;
        let sender_before = settled_heap().await?;
        let streams: Vec<(quinn::SendStream, quinn::RecvStream)> = futures::stream::iter(0..m)
            .map(|_| {
                let connection = connection.clone();
                async move {
                    let (mut send, mut recv) = connection.open_bi().await?;
                    send.write_all(&PAYLOAD).await?;
                    let mut ack = [0u8; 8];
                    recv.read_exact(&mut ack).await?;
                    anyhow::Ok((send, recv))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        hub.expect(&format!("streams {m}")).await?;
        let with_streams = hub.memory().await?;
        let sender_after = settled_heap().await?;
        drop(streams);
        anyhow::Ok(per_item(
            n,
            m,
            [before, with_peers, with_streams],
            (sender_before, sender_after),
        ))
    }
    .await;
    hub.finish().await;
    // The hub is gone: close without waiting for its answer.
    endpoint.close(0u32.into(), b"done");
    result
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex(text: &str) -> Result<Vec<u8>> {
    ensure!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|at| {
            let pair = text.get(at..at + 2).ok_or_else(|| anyhow!("bad hex"))?;
            Ok(u8::from_str_radix(pair, 16)?)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The parent's side of the hub.

/// The hub child process; killed if dropped before [`Hub::finish`].
pub(crate) struct Hub(Child);

impl Hub {
    /// Starts this binary as a hub of `kind` and returns it with the rest of its `ready` line.
    pub(crate) async fn start(kind: &str) -> Result<(Self, String)> {
        let (child, ready) = Child::start(&["--memory-hub", kind], HUB_WAIT + SETTLE * 2).await?;
        Ok((Self(child), ready))
    }

    /// Sends `command` and waits for `ok`.
    pub(crate) async fn expect(&mut self, command: &str) -> Result<()> {
        self.0.send(command).await?;
        self.0.answer("ok").await.map(drop)
    }

    /// The hub's memory.
    pub(crate) async fn memory(&mut self) -> Result<Memory> {
        let (heap, rss) = self.0.memory("memory").await?;
        Ok(Memory { heap, rss })
    }

    /// Ends the hub (closing its stdin).
    pub(crate) async fn finish(self) {
        self.0.finish().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The hub process.

/// Runs this process as the memory figure's hub of `kind` ("ferry" or "quinn") until its stdin
/// ends.
pub(crate) fn run_hub(kind: &str) -> Result<()> {
    super::child::run(hub(kind))
}

/// What the hub counts for `peers` and `streams`.
enum HubNode {
    Ferry(Node),
    Quinn {
        /// Held for the hub's lifetime (its accept loop has a clone too).
        _endpoint: quinn::Endpoint,
        peers: Arc<AtomicU64>,
        streams: Arc<AtomicU64>,
    },
}

/// What a hub process answers `peers` and `streams` with.
pub(crate) trait HubCounts: Sync {
    /// Peers connected to the hub.
    fn peers(&self) -> u64;
    /// Streams (conversations) open into the hub whose first message arrived.
    fn streams(&self) -> u64;
}

impl HubCounts for HubNode {
    fn peers(&self) -> u64 {
        match self {
            Self::Ferry(node) => node.stats().connected_peers as u64,
            Self::Quinn { peers, .. } => peers.load(Ordering::Relaxed),
        }
    }

    fn streams(&self) -> u64 {
        match self {
            Self::Ferry(node) => {
                let stats = node.stats();
                stats.streams_in.min(stats.messages_in)
            }
            Self::Quinn { streams, .. } => streams.load(Ordering::Relaxed),
        }
    }
}

async fn hub(kind: &str) -> Result<()> {
    let node = match kind {
        "ferry" => {
            // Every client dials from 127.0.0.1: the per-address handshake limit would refuse
            // all but the first 100 of them, which is a limit, not a memory cost.
            let config = NodeConfig {
                handshake_rate_per_ip: 0,
                ..NodeConfig::default()
            };
            let node = Node::bind(SecretKey::generate(), config).await?;
            let mailbox = node.mailbox();
            println!("ready {}", mailbox.address());
            tokio::spawn(async move { while mailbox.recv().await.is_ok() {} });
            HubNode::Ferry(node)
        }
        "quinn" => {
            let identity = BaselineIdentity::generate()?;
            let mut transport = transport_config();
            transport.max_concurrent_bidi_streams(QUINN_INITIAL_STREAMS.into());
            let endpoint = quinn::Endpoint::server(
                identity.server_config(Arc::new(transport))?,
                SocketAddr::from(([127, 0, 0, 1], 0)),
            )?;
            let peers = Arc::new(AtomicU64::new(0));
            let streams = Arc::new(AtomicU64::new(0));
            tokio::spawn(quinn_hub_accept(
                endpoint.clone(),
                peers.clone(),
                streams.clone(),
            ));
            println!(
                "ready {} {}",
                endpoint.local_addr()?,
                to_hex(identity.cert.as_ref())
            );
            HubNode::Quinn {
                _endpoint: endpoint,
                peers,
                streams,
            }
        }
        other => bail!("unknown hub kind {other:?}"),
    };
    serve_commands(&node).await
}

/// Answers the parent's commands (stdin) about `node` until stdin ends.
pub(crate) async fn serve_commands<N: HubCounts>(node: &N) -> Result<()> {
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        match hub_command(node, &command).await {
            Ok(answer) => println!("{answer}"),
            Err(error) => println!("error {error:#}"),
        }
    }
    // No orderly shutdown: the process ends here, and its peers close their side themselves.
    Ok(())
}

async fn hub_command<N: HubCounts>(node: &N, command: &str) -> Result<String> {
    let (word, count) = command.split_once(' ').unwrap_or((command, ""));
    let wait_for = |what: &'static str, count: &str, current: fn(&N) -> u64| {
        let count: Result<u64> = count.parse().with_context(|| format!("{what} count"));
        async move {
            wait_for_count(what, count?, HUB_WAIT, || current(node)).await?;
            Ok("ok".to_owned())
        }
    };
    match word {
        "memory" => {
            tokio::time::sleep(SETTLE).await;
            let memory = Memory::now()?;
            Ok(format!("memory {} {}", memory.heap, memory.rss))
        }
        "peers" => wait_for("peers", count, N::peers).await,
        "streams" => wait_for("streams", count, N::streams).await,
        other => bail!("unknown command {other:?}"),
    }
}

/// Waits until `current()` reaches `count`, for at most `wait`; fails saying how far it got
/// (a figure reports the error instead of ending the whole run).
async fn wait_for_count(
    what: &str,
    count: u64,
    wait: Duration,
    current: impl Fn() -> u64,
) -> Result<()> {
    let reached =
        ferry_testkit::wait::poll_until(wait, || (current() >= count).then_some(())).await;
    ensure!(
        reached.is_some(),
        "{} of {count} {what} after {wait:?}",
        current()
    );
    Ok(())
}

/// The quinn hub's accept loop: a task per connection, which accepts its streams and gives
/// each a task that reads one 64-byte message, acknowledges it (8 bytes) and then waits for
/// more until the stream or connection ends. The connection's stream grant doubles whenever
/// half of it is in use, as ferry's does.
async fn quinn_hub_accept(
    endpoint: quinn::Endpoint,
    peers: Arc<AtomicU64>,
    streams: Arc<AtomicU64>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (peers, streams) = (peers.clone(), streams.clone());
        tokio::spawn(async move {
            let connection = incoming.await?;
            peers.fetch_add(1, Ordering::Relaxed);
            let (mut granted, open) = (QUINN_INITIAL_STREAMS, Arc::new(AtomicU64::new(0)));
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                let in_use = open.fetch_add(1, Ordering::Relaxed) + 1;
                if in_use * 2 >= u64::from(granted) && granted < QUINN_MAX_STREAMS {
                    granted = (granted * 2).min(QUINN_MAX_STREAMS);
                    connection.set_max_concurrent_bi_streams(granted.into());
                }
                let (streams, open) = (streams.clone(), open.clone());
                tokio::spawn(async move {
                    let _in_use = InUse(open);
                    let mut message = [0u8; MESSAGE_LEN];
                    recv.read_exact(&mut message).await?;
                    let count = streams.fetch_add(1, Ordering::Relaxed) + 1;
                    send.write_all(&count.to_be_bytes()).await?;
                    while recv.read_chunk(64 * 1024, true).await?.is_some() {}
                    anyhow::Ok(())
                });
            }
            anyhow::Ok(())
        });
    }
}

/// One stream in use on a quinn hub connection, counted until dropped.
struct InUse(Arc<AtomicU64>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
