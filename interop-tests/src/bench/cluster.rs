//! A gateway cluster on NATS (docs/GATEWAY.md §14) beside one gateway alone: memory per idle
//! WebSocket session, fan-out of one channel message to every session, and messages per second
//! to users whose sessions live on another node.
//!
//! Processes, all on this machine: a `nats-server -js` on a free loopback port (cluster only;
//! [`ferry_testkit::nats`]), the gateways (the release `ferry` binary next to this one, `ferry
//! run --cluster nats://…`, each on its own data directory and config, below), the WebSocket
//! clients (this binary with `--gateway-clients URL N`, as in the gateway figure: at most
//! [`PER_PROCESS`] sockets each because of the open-files limit, every client a session that
//! joined the channel `bench`), and this process, whose one WebSocket session (on the first
//! gateway, a member of `bench` too) publishes and sends.
//!
//! - **RSS per session**: the sum of the gateways' RSS (`/proc/PID/status`) once every client
//!   joined, minus the sum before any connected, over the sessions.
//! - **fan-out**: the publisher sends `{"t": <unix µs>}` to the channel; each client reports µs
//!   from `t` to the moment it parsed the message; p50 and p99 over all clients and rounds.
//! - **user messages/s**: the publisher sends numbered messages to `{"user": …}` targets, the
//!   first [`TARGETS`] sessions of the clients on the second gateway (anonymous sessions: the
//!   user is `anon-<session id>`), [`WINDOW`] unanswered at most; the clock runs from the first
//!   send until the clients counted the last message. On one node the targets are on the
//!   publisher's node.
//!
//! The gateways' config raises what 50,000 sessions on one machine need (see [`gateway_config`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ferry_testkit::harness::{rss_kib, Process};
use ferry_testkit::nats::NatsServer;
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::child::Child;
use super::gateway::{connect_client, next_text, unix_micros, Joined, CHANNEL};
use super::{Better, Row, Settings};

/// Gateways of the cluster.
pub(crate) const NODES: usize = 3;
/// WebSocket clients per client process at most (each an open file; the hard limit here is
/// 20,000 per process).
pub(crate) const PER_PROCESS: usize = 18_000;
/// Sessions the user-delivery figure sends to.
const TARGETS: usize = 100;
/// Sends of the publisher unanswered at most (also its gateway's `gateway_max_inflight`).
const WINDOW: usize = 1024;
/// How long the children and the gateways may take for one step.
const STEP_WAIT: Duration = Duration::from_secs(600);
/// Pause between fan-out rounds, so that one round's stragglers do not meet the next.
const ROUND_GAP: Duration = Duration::from_millis(200);

/// What the baseline is.
pub(crate) const ONE_NODE: &str = "one gateway alone (no NATS)";
/// What the floor rows' baseline is.
const PLAIN_SERVERS: &str = "3 plain axum WebSocket servers, same sessions (no store, no NATS)";

/// The rows, in this order: the cluster against one gateway, then the fan-out of the cluster
/// against the plain servers.
const ROWS: usize = 4;
const FLOOR_ROWS: usize = 2;

pub(super) async fn figure_cluster(settings: Settings) -> Result<Vec<Row>> {
    let (n, m) = (settings.cluster_sessions, settings.cluster_node_sessions);
    if !NatsServer::installed() {
        bail!(
            "{} is missing: apt-get install nats-server",
            ferry_testkit::nats::NATS_SERVER
        );
    }
    let sessions = format!("{n} sessions on {NODES} nodes / {m} on one");
    let mut rows: [Row; ROWS + FLOOR_ROWS] = [
        Row::new(
            format!("cluster: RSS per idle session ({sessions})"),
            "KiB",
            Better::Lower,
        )
        .against(ONE_NODE),
        Row::new(
            format!("cluster: fan-out 1 channel msg -> all, p50 ({sessions})"),
            "ms",
            Better::Lower,
        )
        .against(ONE_NODE),
        Row::new(
            format!("cluster: fan-out 1 channel msg -> all, p99 ({sessions})"),
            "ms",
            Better::Lower,
        )
        .against(ONE_NODE),
        Row::new(
            format!("cluster: msgs/s to {TARGETS} users on another node"),
            "msg/s",
            Better::Higher,
        )
        .against(ONE_NODE),
        Row::new(
            format!("cluster: fan-out 1 channel msg -> all, p50 ({n} sessions on {NODES} servers)"),
            "ms",
            Better::Lower,
        )
        .against(PLAIN_SERVERS),
        Row::new(
            format!("cluster: fan-out 1 channel msg -> all, p99 ({n} sessions on {NODES} servers)"),
            "ms",
            Better::Lower,
        )
        .against(PLAIN_SERVERS),
    ];
    for run in 0..settings.cluster_runs {
        let cluster_first = run % 2 == 0;
        for cluster in [cluster_first, !cluster_first] {
            if !cluster && settings.ferry_only {
                continue;
            }
            let (nodes, sessions) = if cluster { (NODES, n) } else { (1, m) };
            let values = measure(nodes, sessions, &settings).await?;
            eprintln!(
                "cluster figure: {nodes} node(s), {sessions} sessions: {values:?} (load {})",
                load()
            );
            for (row, value) in rows.iter_mut().zip(values) {
                row.push(cluster, value);
            }
            if cluster {
                let [_, p50, p99, _] = values;
                rows[ROWS].push(true, p50);
                rows[ROWS + 1].push(true, p99);
            }
        }
        if !settings.ferry_only {
            let floor = measure_plain(n, &settings).await?;
            eprintln!(
                "cluster figure: {NODES} plain servers, {n} sessions: {floor:?} (load {})",
                load()
            );
            for (row, value) in rows[ROWS..].iter_mut().zip(floor) {
                row.push(false, value);
            }
        }
    }
    Ok(rows.into())
}

/// The 1-minute load average, as `uptime` shows it.
pub(crate) fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// One run of `nodes` gateways (a cluster on NATS when more than one) with `sessions` sessions:
/// the four row values.
async fn measure(nodes: usize, sessions: usize, settings: &Settings) -> Result<[f64; ROWS]> {
    let dir = tempfile::tempdir()?;
    let nats = if nodes > 1 {
        let store = dir.path().join("nats");
        Some(tokio::task::block_in_place(|| NatsServer::start(&store)))
    } else {
        None
    };
    let mut gateways = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let cluster = nats.as_ref().map(NatsServer::url);
        let data = dir.path().join(format!("node{i}"));
        gateways.push(tokio::task::block_in_place(|| {
            Gateway::start(&data, cluster.as_deref())
        })?);
    }
    let settle = Duration::from_millis(settings.gateway_settle_ms);
    tokio::time::sleep(settle).await;
    let rss = |gateways: &[Gateway]| -> Result<u64> {
        gateways.iter().try_fold(0, |sum, gateway| {
            Ok(
                sum + rss_kib(gateway.process.id())
                    .ok_or_else(|| anyhow!("no RSS of a gateway"))?,
            )
        })
    };
    let before = rss(&gateways)?;

    let urls: Vec<String> = gateways.iter().map(|gateway| gateway.url.clone()).collect();
    let mut clients = start_clients(&urls, sessions).await?;
    tokio::time::sleep(settle).await;
    let after = rss(&gateways)?;
    let rss_per_session = after.saturating_sub(before) as f64 / sessions.max(1) as f64;

    let mut publisher = Publisher::connect(&gateways[0].url).await?;

    // Fan-out rounds: published on the first node.
    let rounds = settings.cluster_rounds;
    let (p50, p99) = fan_out(&mut clients, rounds, Publish::Gateway(&mut publisher)).await?;

    // User messages: to the first TARGETS sessions of the clients on the second gateway (on
    // one node, the only one); a warm-up of one message each first.
    let target_node = 1 % nodes;
    let target = clients
        .iter_mut()
        .find(|clients| clients.server == target_node)
        .ok_or_else(|| anyhow!("no clients on gateway {target_node}"))?;
    let users: Vec<String> = target.joined.users.iter().take(TARGETS).cloned().collect();
    let target_clients = &mut target.child;
    ensure!(!users.is_empty(), "no target users");
    let mut rate = 0.0;
    for total in [users.len(), settings.cluster_messages] {
        target_clients.send(&format!("count {total}")).await?;
        let started = Instant::now();
        let frames = (0..total).map(|k| {
            let user = &users[k % users.len()];
            json!({"to": {"user": user}, "data": {"n": k}})
        });
        publisher.send_all(frames).await?;
        target_clients.answer("counted").await?;
        rate = total as f64 / started.elapsed().as_secs_f64();
    }

    publisher.close();
    for clients in clients {
        clients.child.kill().await;
    }
    drop(gateways);
    drop(nats);
    Ok([rss_per_session, p50, p99, rate])
}

/// The floor of the fan-out on this machine: the same sessions and clients on [`NODES`] plain
/// axum WebSocket servers (the gateway figure's baseline: a queue per socket, no store, no
/// acknowledgement kept, no NATS), each publishing to its own sockets at once. Fan-out p50
/// and p99, ms.
async fn measure_plain(sessions: usize, settings: &Settings) -> Result<[f64; FLOOR_ROWS]> {
    let mut servers = Vec::with_capacity(NODES);
    let mut urls = Vec::with_capacity(NODES);
    for _ in 0..NODES {
        let (server, url) = Child::start(&["--gateway-server", "plain"], STEP_WAIT).await?;
        servers.push(server);
        urls.push(url);
    }
    // Every client has joined once this returns; no memory is measured here, so nothing needs
    // to settle before the rounds (each starts after ROUND_GAP).
    let mut clients = start_clients(&urls, sessions).await?;
    let rounds = settings.cluster_rounds;
    let (p50, p99) = fan_out(&mut clients, rounds, Publish::Plain(&mut servers)).await?;
    for clients in clients {
        clients.child.kill().await;
    }
    for server in servers {
        server.kill().await;
    }
    Ok([p50, p99])
}

/// One process of WebSocket clients.
struct Clients {
    /// Index of the server (in the `urls` given to [`start_clients`]) its sessions are on.
    server: usize,
    child: Child,
    joined: Joined,
}

/// Client processes for `sessions` sessions spread evenly over the servers at `urls`, each
/// server's over processes of at most [`PER_PROCESS`], every session a member of the channel.
async fn start_clients(urls: &[String], sessions: usize) -> Result<Vec<Clients>> {
    let mut starting = Vec::new();
    for (server, url) in urls.iter().enumerate() {
        let share = sessions / urls.len() + usize::from(server < sessions % urls.len());
        let processes = share.div_ceil(PER_PROCESS).max(1);
        for p in 0..processes {
            let count = share / processes + usize::from(p < share % processes);
            starting.push(async move {
                let (child, joined) =
                    Child::start(&["--gateway-clients", url, &count.to_string()], STEP_WAIT)
                        .await?;
                let joined: Joined = serde_json::from_str(&joined)?;
                anyhow::Ok(Clients {
                    server,
                    child,
                    joined,
                })
            });
        }
    }
    let connecting = Instant::now();
    let clients = futures::future::try_join_all(starting).await?;
    eprintln!(
        "cluster figure: {sessions} sessions joined in {:.1} s",
        connecting.elapsed().as_secs_f64()
    );
    Ok(clients)
}

/// Who publishes a fan-out round's message.
enum Publish<'a> {
    /// This process's session on the first gateway, to the channel (the cluster delivers it
    /// on every gateway).
    Gateway(&'a mut Publisher),
    /// Every plain server to its own sockets, at once.
    Plain(&'a mut [Child]),
}

impl Publish<'_> {
    async fn publish(&mut self) -> Result<()> {
        match self {
            Self::Gateway(publisher) => {
                let data = json!({ "t": unix_micros() });
                let request = json!({"to": {"channel": CHANNEL}, "data": data});
                publisher.send_all(std::iter::once(request)).await
            }
            Self::Plain(servers) => {
                for server in servers.iter_mut() {
                    server.send("publish").await?;
                }
                for server in servers.iter_mut() {
                    server.answer("ok").await?;
                }
                Ok(())
            }
        }
    }
}

/// `rounds` fan-out rounds, [`ROUND_GAP`] apart: each tells every client process a round
/// starts, publishes and gathers the clients' latencies. Their p50 and p99, ms.
async fn fan_out(
    clients: &mut [Clients],
    rounds: u64,
    mut publish: Publish<'_>,
) -> Result<(f64, f64)> {
    let mut histogram = Histogram::<u64>::new(3)?;
    for _ in 0..rounds {
        tokio::time::sleep(ROUND_GAP).await;
        for clients in clients.iter_mut() {
            clients.child.send("round").await?;
        }
        publish.publish().await?;
        for clients in clients.iter_mut() {
            let answer = clients.child.answer("latencies").await?;
            for latency in serde_json::from_str::<Vec<u64>>(&answer)? {
                histogram.record(latency.max(1))?;
            }
        }
    }
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    Ok((ms(0.5), ms(0.99)))
}

/// The config of every gateway of the figure, and why each key:
///
/// - `gateway_join`, `gateway_publish`, `gateway_direct`: the clients join `bench`, the
///   publisher publishes to it and sends to `{user}` targets;
/// - `gateway_max_connections` (default 10,000), `gateway_connection_rate` (default 500/s):
///   the figure connects up to 18,000 sessions to one gateway, 1,500 at a time;
/// - `gateway_rate_limit` (default 200 frames/s), `gateway_max_inflight` (default 64): one
///   publisher connection sends the messages/s figure's messages, [`WINDOW`] at a time;
/// - `gateway_idle_timeout`, `gateway_ping_interval`: a heartbeat every 5 s to 50,000 idle
///   sessions is 10,000 frames/s on two cores, which the figure is not about (one a minute);
/// - `cluster_publish_queue`, `cluster_read_batch`: the messages/s figure's publications
///   waiting for NATS and read ahead (defaults 4,096 and 256).
fn gateway_config() -> String {
    format!(
        "gateway_join = [\"{CHANNEL}\"]\n\
         gateway_publish = [\"{CHANNEL}\"]\n\
         gateway_direct = true\n\
         gateway_max_connections = 100000\n\
         gateway_max_sessions = 200000\n\
         gateway_connection_rate = 1000000\n\
         gateway_rate_limit = 1000000\n\
         gateway_max_inflight = {WINDOW}\n\
         gateway_idle_timeout = \"5m\"\n\
         gateway_ping_interval = \"60s\"\n\
         cluster_publish_queue = 16384\n\
         cluster_read_batch = 1024\n"
    )
}

/// One `ferry run` gateway process (killed when dropped).
struct Gateway {
    process: Process,
    /// `ws://127.0.0.1:PORT/ws`.
    url: String,
}

impl Gateway {
    /// Starts the release `ferry` next to this binary on `data`, in the cluster on `nats`.
    fn start(data: &Path, nats: Option<&str>) -> Result<Self> {
        std::fs::create_dir_all(data)?;
        let config = data.join("ferry.toml");
        std::fs::write(&config, gateway_config())?;
        let mut command = Command::new(ferry_binary()?);
        command
            .arg("run")
            .arg("--data")
            .arg(data)
            .arg("--config")
            .arg(&config)
            .args(["--gateway", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn");
        if let Some(nats) = nats {
            command.args(["--cluster", nats]);
        }
        let mut process = Process::start("ferry run", command)?;
        let url = process.wait_for_prefix("gateway: ", Duration::from_secs(60))?;
        Ok(Self { process, url })
    }
}

/// The `ferry` binary beside this one (`target/release/ferry` for the release bench).
fn ferry_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let ferry = exe
        .parent()
        .map(|dir| dir.join("ferry"))
        .ok_or_else(|| anyhow!("the bench binary has no directory"))?;
    ensure!(
        ferry.exists(),
        "{} is missing: cargo build --release -p ferry-node",
        ferry.display()
    );
    Ok(ferry)
}

/// This process's session: a member of the channel on a gateway, sending requests with up to
/// [`WINDOW`] unanswered, acknowledging the messages it gets.
struct Publisher {
    frames: mpsc::UnboundedSender<Message>,
    answers: mpsc::UnboundedReceiver<Result<()>>,
    next_ref: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    async fn connect(url: &str) -> Result<Self> {
        let mut ws = connect_client(url)
            .await
            .context("connecting the publisher")?;
        let _welcome = next_text(&mut ws).await?;
        let join = json!({"type": "join", "ref": 1, "channel": CHANNEL});
        ws.send(Message::Text(join.to_string().into())).await?;
        let joined = next_text(&mut ws).await?;
        ensure!(joined["type"] == "ok", "publisher's join answered {joined}");
        let (mut sink, mut stream) = ws.split();
        let (frames, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let (answered, answers) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if sink.send(frame).await.is_err() {
                    return;
                }
            }
        });
        let acks = frames.clone();
        let reader = tokio::spawn(async move {
            // Channel messages reach the publisher too: acknowledge each (cumulatively), so
            // that its mailbox stays empty.
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                match frame["type"].as_str() {
                    Some("ok") => {
                        let _ = answered.send(Ok(()));
                    }
                    Some("error") => {
                        let _ = answered.send(Err(anyhow!("the gateway answered {frame}")));
                    }
                    Some("message") => {
                        if let Some(id) = frame["id"].as_u64() {
                            let ack = json!({"type": "ack", "id": id}).to_string();
                            let _ = acks.send(Message::Text(ack.into()));
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Self {
            frames,
            answers,
            next_ref: 2,
            tasks: vec![writer, reader],
        })
    }

    /// Sends each of `requests` (`to` and `data` of a `send`) with up to [`WINDOW`]
    /// unanswered, and waits until every one is answered `ok`.
    async fn send_all(&mut self, requests: impl Iterator<Item = Value>) -> Result<()> {
        let mut unanswered = 0;
        for mut request in requests {
            if unanswered == WINDOW {
                self.answer().await?;
                unanswered -= 1;
            }
            request["type"] = "send".into();
            request["ref"] = self.next_ref.into();
            self.next_ref += 1;
            self.frames
                .send(Message::Text(request.to_string().into()))
                .map_err(|_| anyhow!("the publisher's connection ended"))?;
            unanswered += 1;
        }
        for _ in 0..unanswered {
            self.answer().await?;
        }
        Ok(())
    }

    async fn answer(&mut self) -> Result<()> {
        tokio::time::timeout(STEP_WAIT, self.answers.recv())
            .await
            .map_err(|_| anyhow!("no answer to a send in {STEP_WAIT:?}"))?
            .ok_or_else(|| anyhow!("the publisher's connection ended"))?
    }

    fn close(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}
