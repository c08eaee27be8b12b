//! Many peers on one node (figure `peers`): a hub node connected by N peer nodes (10,000 by
//! default, 1,000 with `--quick`), its heap and RSS per connected peer, and the round trip of a
//! 64-byte message between one more peer and the hub, alone and while the N are connected.
//! Each run starts a new hub and new peers.
//!
//! Every peer is a real ferry node with an identity of its own (one UDP socket each). They live
//! in client processes of [`PEERS_PER_PROCESS`] nodes each (a process may have at most 20,000
//! open files here), children of this binary started with the hidden option `--peers-clients
//! <hub address> <count>`; the hub is a child too (`--peers-hub <N>`), so that its heap and RSS
//! hold nothing but the hub. Commands, one line each, answered like the memory figure's hub
//! ([`super::memory`]):
//!
//! | to | command | answer |
//! |---|---|---|
//! | hub | (start) | `ready <mailbox address>` |
//! | hub | `memory`, `peers N` | as the memory figure's hub |
//! | clients | (start) | `ready` once its nodes are bound (none connected) |
//! | clients | `connect C` | `ok` once every node of the process is connected to the hub, C handshakes at a time |
//! | clients | `rtt R W` | `rtt <p50 ns> <p99 ns>`: the process's first node sends W + R messages of 64 bytes to the hub's mailbox one after the other, each answered by the hub with 64 bytes to the sender's inbox; the last R are timed |
//!
//! The round trip is measured by a probe process of one node: first with only the probe
//! connected, before the client processes start (the baseline, same hub, same run), then again
//! once all N peers are connected and idle (their keep-alives still run: one QUIC PING per peer
//! every `keep_alive`, 10 s). The hub's memory per peer is its growth from after the probe's
//! round trips to once all N are connected, divided by N.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use ferry::{Address, Node, NodeConfig, SecretKey};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::child::Child;
use super::memory::{serve_commands, HubCounts, Memory};
use super::{histogram, record_ns, Better, Row, Settings, MESSAGE_LEN, PAYLOAD};

/// Peer nodes per client process (each has a UDP socket: one open file).
pub(crate) const PEERS_PER_PROCESS: usize = 2_500;
/// Handshakes in flight at once over all client processes (see the memory figure's
/// `CONCURRENCY`: more overflowed the hub's socket receive buffer).
const CONCURRENCY: usize = 8;
/// Measured round trips per measurement, after [`RTT_WARMUP`].
pub(crate) const RTT_ROUNDS: u64 = 2_000;
pub(crate) const RTT_WARMUP: u64 = 200;
/// How long one step (binding or connecting a process's nodes, a round-trip measurement) may
/// take.
const STEP_WAIT: Duration = Duration::from_secs(300);
/// Pause between connecting (the probe; the peers) and measuring a round trip, for the work the
/// handshakes started (a new connection's address observation and path checks, acknowledgements,
/// timers) to settle.
const SETTLE: Duration = Duration::from_secs(2);

pub(super) async fn figure_peers(settings: Settings) -> Result<Vec<Row>> {
    let n = settings.many_peers;
    let alone = "the same hub, 1 connected peer";
    let mut rows = [
        Row::new(
            format!("heap per connected peer, {n} peers"),
            "KiB",
            Better::Lower,
        ),
        Row::new(
            format!("RSS per connected peer, {n} peers"),
            "KiB",
            Better::Lower,
        ),
        Row::new(
            format!("round trip 64 B p50, {n} peers connected"),
            "us",
            Better::Lower,
        )
        .against(alone),
        Row::new(
            format!("round trip 64 B p99, {n} peers connected"),
            "us",
            Better::Lower,
        )
        .against(alone),
    ];
    for row in &mut rows[..2] {
        row.note = Some("raw quinn: see the memory figure".to_owned());
        row.against = "-";
    }
    for _ in 0..settings.runs {
        let measured = peers(n).await?;
        for (row, (ferry, baseline)) in rows.iter_mut().zip(measured) {
            row.ferry.push(ferry);
            if let Some(baseline) = baseline {
                row.baseline.push(baseline);
            }
        }
    }
    Ok(rows.into())
}

/// One run with `n` peers: (ferry, baseline) of each row.
async fn peers(n: usize) -> Result<[(f64, Option<f64>); 4]> {
    let (mut hub, address) = Child::start(&["--peers-hub", &n.to_string()], STEP_WAIT).await?;
    let (mut probe, _) = Child::start(&["--peers-clients", &address, "1"], STEP_WAIT).await?;
    let result = async {
        // The round trip with the probe alone, before any other peer node exists.
        probe.send("connect 1").await?;
        probe.answer("ok").await?;
        tokio::time::sleep(SETTLE).await;
        let alone = round_trips(&mut probe).await?;
        let before = memory(&mut hub).await?;
        // Bind every process's nodes (in parallel), then connect them, every process at once.
        let starts = split(n, PEERS_PER_PROCESS).into_iter().map(|count| {
            let (address, count) = (address.clone(), count.to_string());
            async move { Child::start(&["--peers-clients", &address, &count], STEP_WAIT).await }
        });
        // (Killed when dropped, also on an error.)
        let mut clients = futures::future::try_join_all(starts).await?;
        let share = (CONCURRENCY / clients.len().max(1)).max(1);
        futures::future::try_join_all(clients.iter_mut().map(|(client, _)| async move {
            client.send(&format!("connect {share}")).await?;
            client.answer("ok").await.map(drop)
        }))
        .await?;
        hub.send(&format!("peers {}", n + 1)).await?;
        hub.answer("ok").await?;
        let after = memory(&mut hub).await?;
        tokio::time::sleep(SETTLE).await;
        let crowded = round_trips(&mut probe).await?;
        for (client, _) in clients {
            client.kill().await;
        }
        let kib = |bytes: i64| bytes as f64 / n as f64 / 1024.0;
        anyhow::Ok([
            (kib(after.heap - before.heap), None),
            (kib(after.rss - before.rss), None),
            (crowded.0, Some(alone.0)),
            (crowded.1, Some(alone.1)),
        ])
    }
    .await;
    hub.kill().await;
    probe.kill().await;
    result
}

/// `n` split into processes of at most `per` each.
fn split(n: usize, per: usize) -> Vec<usize> {
    let processes = n.div_ceil(per).max(1);
    (0..processes)
        .map(|index| n / processes + usize::from(index < n % processes))
        .collect()
}

async fn memory(hub: &mut Child) -> Result<Memory> {
    let (heap, rss) = hub.memory("memory").await?;
    Ok(Memory { heap, rss })
}

/// The probe's round trip p50 and p99, in µs.
async fn round_trips(probe: &mut Child) -> Result<(f64, f64)> {
    probe
        .send(&format!("rtt {RTT_ROUNDS} {RTT_WARMUP}"))
        .await?;
    let answer = probe.answer("rtt").await?;
    let (p50, p99) = answer
        .split_once(' ')
        .ok_or_else(|| anyhow!("bad rtt answer {answer:?}"))?;
    Ok((p50.parse::<f64>()? / 1000.0, p99.parse::<f64>()? / 1000.0))
}

// ---------------------------------------------------------------------------------------------
// The hub process.

/// Runs this process as the figure's hub, for `n` peers, until its stdin ends.
pub(crate) fn run_hub(n: usize) -> Result<()> {
    super::child::run(hub(n))
}

/// The hub node: what `peers` counts.
struct HubNode(Node);

impl HubCounts for HubNode {
    fn peers(&self) -> u64 {
        self.0.stats().connected_peers as u64
    }

    fn streams(&self) -> u64 {
        self.0.stats().streams_in
    }
}

async fn hub(n: usize) -> Result<()> {
    // Every peer dials from 127.0.0.1: no per-address handshake limit. Room for the probe and
    // the `n` peers.
    let config = NodeConfig {
        handshake_rate_per_ip: 0,
        max_connections: n + 64,
        ..NodeConfig::default()
    };
    let node = Node::bind(SecretKey::generate(), config).await?;
    let mailbox = node.mailbox();
    println!("ready {}", mailbox.address());
    // Echo: each message is answered with 64 bytes to its sender's inbox.
    let replier = node.clone();
    tokio::spawn(async move {
        let payload = Bytes::from_static(&PAYLOAD);
        let mut reply: Option<ferry::Sender> = None;
        while let Ok(message) = mailbox.recv().await {
            let sender = match &reply {
                Some(sender) if sender.target() == message.from() => sender,
                _ => reply.insert(replier.sender(message.from())),
            };
            if sender.enqueue_bytes(payload.clone()).await.is_err() {
                break;
            }
        }
    });
    serve_commands(&HubNode(node)).await
}

// ---------------------------------------------------------------------------------------------
// The client processes.

/// Runs this process as one of the figure's client processes: `count` nodes that connect to
/// the hub at `address` when told to.
pub(crate) fn run_clients(address: &str, count: &str) -> Result<()> {
    let address: Address = address
        .parse()
        .map_err(|error| anyhow!("hub address {address:?}: {error}"))?;
    let count: usize = count.parse().context("--peers-clients count")?;
    super::child::run(clients(address, count))
}

async fn clients(address: Address, count: usize) -> Result<()> {
    let nodes: Vec<Node> = futures::stream::iter(0..count)
        .map(|_| Node::bind(SecretKey::generate(), NodeConfig::default()))
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    println!("ready");
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        let answer = match client_command(&nodes, &address, &command).await {
            Ok(answer) => answer,
            Err(error) => format!("error {error:#}"),
        };
        println!("{answer}");
    }
    // No orderly shutdown: the hub is gone or going too.
    Ok(())
}

async fn client_command(nodes: &[Node], address: &Address, command: &str) -> Result<String> {
    let mut words = command.split(' ');
    match words.next() {
        Some("connect") => {
            let (peer, hint) = (address.node(), address.hints().first().copied());
            // This process's share of the handshakes in flight.
            let share: usize = words.next().unwrap_or("1").parse()?;
            futures::stream::iter(nodes.iter().cloned())
                .map(|node| async move { node.connect(peer, hint).await })
                .buffer_unordered(share.max(1))
                .try_collect::<Vec<()>>()
                .await?;
            Ok("ok".to_owned())
        }
        Some("rtt") => {
            let mut number =
                || -> Result<u64> { Ok(words.next().ok_or_else(|| anyhow!("rtt R W"))?.parse()?) };
            let (rounds, warmup) = (number()?, number()?);
            let node = nodes.first().ok_or_else(|| anyhow!("no nodes"))?;
            let sender = node.sender(address);
            let payload = Bytes::from_static(&PAYLOAD);
            let mut histogram = histogram()?;
            for round in 0..warmup + rounds {
                let start = Instant::now();
                let delivery = sender.enqueue_bytes(payload.clone()).await?;
                let reply = node.inbox().recv().await?;
                let elapsed = start.elapsed();
                ensure!(reply.payload().len() == MESSAGE_LEN, "bad reply length");
                delivery.await.context("delivery of a request")?;
                if round >= warmup {
                    record_ns(&mut histogram, elapsed)?;
                }
            }
            Ok(format!(
                "rtt {} {}",
                histogram.value_at_quantile(0.50),
                histogram.value_at_quantile(0.99)
            ))
        }
        _ => Err(anyhow!("unknown command {command:?}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn peers_are_split_evenly() {
        assert_eq!(super::split(10_000, 2_500), vec![2_500; 4]);
        assert_eq!(super::split(1_000, 2_500), vec![1_000]);
        assert_eq!(super::split(5_001, 2_500), vec![1_667, 1_667, 1_667]);
    }
}
