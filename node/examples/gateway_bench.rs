//! Gateway figures: memory per idle WebSocket session, fan-out latency of one channel message
//! to every session, and messages per second from a Rust peer to browser sessions.
//!
//! ```sh
//! cargo run --release -p ferry-node --example gateway_bench -- [--sessions N] [--rounds R]
//! ```
//!
//! The gateway runs in this process; the sessions' clients (tokio-tungstenite, standing in for
//! browsers) run in a child process, so this process's resident memory is the gateway's and
//! the node's alone. Each client is a session that joined the channel `bench`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use ferry::{Node, NodeConfig, SecretKey};
use ferry_node::gateway::{self, GatewayConfig, NoHooks};
use ferry_node::store::{RedbStore, StoreConfig};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

fn arg(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context("missing value")?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--clients") {
        return clients(&args).await;
    }
    let sessions = arg(&args, "--sessions", 5000)?;
    let rounds = arg(&args, "--rounds", 20)?;

    let dir = tempfile::tempdir()?;
    let store = Arc::new(RedbStore::open(
        &dir.path().join("store.redb"),
        StoreConfig::default(),
    )?);
    let node = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    let mut config = GatewayConfig::default();
    config.permissions.join = vec!["bench".into()];
    config.limits.connection_rate = 1_000_000;
    config.limits.max_connections = 1_000_000;
    config.limits.max_sessions = 1_000_000;
    config.limits.rate_limit = 100_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let gateway = gateway::Gateway::new(node.clone(), store.clone(), config, Arc::new(NoHooks))?;
    let handle = gateway.handle();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gateway.serve(listener, shutdown.clone()));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--clients", &addr.to_string(), &sessions.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_child = child.stdin.take().context("child stdin")?;
    let mut from_child = BufReader::new(child.stdout.take().context("child stdout")?);
    let mut line = String::new();
    let started = Instant::now();
    from_child.read_line(&mut line)?;
    let ready: Value = serde_json::from_str(&line).context("child: ready line")?;
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_bytes();
    let per_session = rss_after.saturating_sub(rss_before) / sessions.max(1) as u64;
    println!(
        "sessions: {sessions} connected and joined in {:.1} s; gateway+node RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per idle session",
        connect_time.as_secs_f64(),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        per_session as f64 / 1024.0
    );

    // Fan-out: one channel message to every session; the clients measure its latency.
    let mut latencies = Vec::new();
    let mut stored = Vec::new();
    for round in 0..rounds {
        let payload = gateway::json_payload(&json!({"t": unix_micros(), "round": round}));
        let publishing = Instant::now();
        let reached = handle.publish("bench", payload).await?;
        stored.push(publishing.elapsed().as_micros() as u64);
        if reached != sessions {
            bail!("round {round}: the channel has {reached} members");
        }
        line.clear();
        from_child.read_line(&mut line)?;
        let report: Value = serde_json::from_str(&line).context("child: round report")?;
        latencies.extend(
            report["latencies"]
                .as_array()
                .context("latencies")?
                .iter()
                .filter_map(Value::as_u64),
        );
        if round + 1 < rounds {
            writeln!(to_child, "next")?;
        }
    }
    latencies.sort_unstable();
    stored.sort_unstable();
    println!(
        "fan-out: storing a message in every member's mailbox took p50 {:.1} ms, max {:.1} ms",
        percentile(&stored, 0.5) as f64 / 1000.0,
        percentile(&stored, 1.0) as f64 / 1000.0
    );
    println!(
        "fan-out: {rounds} channel messages to {sessions} sessions: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0,
        percentile(&latencies, 1.0) as f64 / 1000.0
    );

    // Peer → sessions: a Rust peer on another node sends to the first 100 sessions' addresses.
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    let targets: Vec<ferry::Address> = ready["addresses"]
        .as_array()
        .context("addresses")?
        .iter()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    let per_target = 200;
    let total = targets.len() * per_target;
    writeln!(to_child, "count {total}")?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(total);
    for n in 0..per_target {
        for target in &targets {
            let sender = peer.sender(target);
            let payload = Bytes::from(format!("{{\"n\":{n}}}"));
            deliveries.push(sender.enqueue_bytes(payload).await?);
        }
    }
    for delivery in deliveries {
        delivery.await?;
    }
    line.clear();
    from_child.read_line(&mut line)?;
    let elapsed = started.elapsed();
    println!(
        "peer -> sessions: {total} messages to {} sessions delivered to the clients in {:.2} s: {:.0} messages/s",
        targets.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    writeln!(to_child, "exit")?;
    let _ = child.wait();
    shutdown.cancel();
    serving.await??;
    node.shutdown(Duration::from_secs(1)).await;
    peer.shutdown(Duration::from_secs(1)).await;
    store.close();
    Ok(())
}

/// The child: N sessions that join `bench`, report fan-out latencies per round, count
/// deliveries.
async fn clients(args: &[String]) -> anyhow::Result<()> {
    let addr: SocketAddr = args.get(2).context("address")?.parse()?;
    let n: usize = args.get(3).context("count")?.parse()?;
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel::<(usize, Value)>();
    let mut addresses = Vec::new();
    let mut joined = Vec::new();
    for batch in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut connecting = Vec::new();
        for &i in batch {
            connecting.push(async move {
                let (mut ws, _) =
                    tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
                let welcome = ws.next().await.context("welcome")??;
                let welcome: Value = serde_json::from_str(welcome.to_text()?)?;
                ws.send(Message::Text(
                    json!({"type": "join", "ref": 1, "channel": "bench"})
                        .to_string()
                        .into(),
                ))
                .await?;
                anyhow::Ok((i, ws, welcome["address"].as_str().unwrap_or("").to_owned()))
            });
        }
        for result in futures::future::join_all(connecting).await {
            let (i, ws, address) = result?;
            if addresses.len() < 100 {
                addresses.push(address);
            }
            joined.push((i, ws));
        }
    }
    for (i, mut ws) in joined {
        let events = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message {
                    if let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) {
                        if frame["type"] == "message" {
                            let _ = events.send((i, frame));
                        }
                    }
                }
            }
        });
    }
    let mut out = std::io::stdout();
    writeln!(out, "{}", json!({"ready": n, "addresses": addresses}))?;
    out.flush()?;
    let mut commands = BufReader::new(std::io::stdin()).lines();
    loop {
        // One fan-out round: a message for each session, or the peer's count.
        let mut latencies = Vec::with_capacity(n);
        while latencies.len() < n {
            let (_, frame) = received.recv().await.context("clients ended")?;
            let Some(t) = frame["data"]["t"].as_u64() else {
                continue;
            };
            latencies.push(unix_micros().saturating_sub(t));
        }
        writeln!(out, "{}", json!({"latencies": latencies}))?;
        out.flush()?;
        let command = tokio::task::block_in_place(|| commands.next())
            .transpose()?
            .unwrap_or_default();
        if let Some(total) = command.strip_prefix("count ") {
            let total: usize = total.parse()?;
            let mut count = 0;
            while count < total {
                let (_, frame) = received.recv().await.context("clients ended")?;
                if frame["data"]["n"].is_u64() {
                    count += 1;
                }
            }
            writeln!(out, "{}", json!({"received": count}))?;
            out.flush()?;
            let _ = tokio::task::block_in_place(|| commands.next());
            return Ok(());
        }
        if command != "next" {
            return Ok(());
        }
    }
}
