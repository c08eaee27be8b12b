//! The browser gateway: memory per idle WebSocket session, fan-out latency of one channel
//! message to every session, and messages per second from a Rust peer to browser sessions.
//!
//! Three processes, so that the measured server's memory is its own: the parent (this figure),
//! the **server** (this binary with the hidden `--gateway-server ferry|plain`) and the
//! **clients** (this binary with `--gateway-clients URL N`: N tokio-tungstenite WebSocket
//! clients standing in for browsers). The server is either ferry's gateway (a node, its redb
//! store in a temporary directory, and `ferry_node::gateway` with every client a session that
//! joined the channel `bench`) or the baseline: a plain axum WebSocket server with the same
//! buffer sizes, one task and one unbounded queue per socket, no store, whose "channel" is a
//! loop over the sockets' queues.
//!
//! | parent → server | server → parent |
//! |---|---|
//! | (start) | `ready <ws url>` |
//! | `memory MS` | `memory <heap bytes> <RSS bytes>`, MS milliseconds after the command |
//! | `publish` | `ok` once one message `{"t": <unix µs>}` went to the channel (ferry: stored and handed over) |
//! | `push M` | `ok` once M messages `{"n": k}` were queued to the first 100 sockets (plain only) |
//!
//! | parent → clients | clients → parent |
//! |---|---|
//! | (start) | `ready {"addresses": […], "users": […]}` (of the first 100 sessions) once all N joined |
//! | `round` | `latencies <JSON array>`: per client, µs from the `t` in the message to its receipt (taken by the client's task as it parses the frame) |
//! | `count M` | `counted <µs>` once M `n` messages arrived, µs since the command |
//!
//! Both children end when their stdin closes (the parent kills them once measured).
//! Latencies compare clocks of one machine.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::ws::{Message as AxumMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use ferry::{Node, NodeConfig, SecretKey};
use ferry_node::gateway::{self, GatewayConfig, NoHooks};
use ferry_node::store::{RedbStore, StoreConfig};
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::child::{rss, Child};
use super::{Better, Row, Settings, ALLOCATOR};

/// The channel every session joins.
pub(crate) const CHANNEL: &str = "bench";
/// Sessions the peer (and the plain server's pusher) sends to in the messages/s figure.
const TARGETS: usize = 100;
/// WebSocket clients connecting at once.
const CONNECT_BATCH: usize = 500;
/// How long one client may take to connect and join (a server out of open files leaves the
/// upgrade unanswered).
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long the children may take for one step.
const STEP_WAIT: Duration = Duration::from_secs(300);
/// Pause between fan-out rounds, so that one round's stragglers do not meet the next.
const ROUND_GAP: Duration = Duration::from_millis(100);
/// The WebSocket read buffer of both servers (the gateway's own).
const BUFFER: usize = gateway::READ_BUFFER;

/// What the baseline is.
const PLAIN: &str = "plain axum WebSocket server, no store";

/// The rows, in this order: one value each per run.
const ROWS: usize = 5;

pub(super) async fn figure_gateway(settings: Settings) -> Result<Vec<Row>> {
    let n = settings.gateway_sessions;
    let mut rows: [Row; ROWS] = [
        Row::new(
            format!("RSS per idle WebSocket session ({n} sessions)"),
            "KiB",
            Better::Lower,
        )
        .against(PLAIN),
        Row::new(
            format!("heap per idle WebSocket session ({n} sessions)"),
            "KiB",
            Better::Lower,
        )
        .against(PLAIN),
        Row::new(
            format!("fan-out: 1 channel msg -> {n} sessions, p50"),
            "ms",
            Better::Lower,
        )
        .against(PLAIN),
        Row::new(
            format!("fan-out: 1 channel msg -> {n} sessions, p99"),
            "ms",
            Better::Lower,
        )
        .against(PLAIN),
        Row::new(
            format!("peer -> {TARGETS} sessions, msgs/s delivered"),
            "msg/s",
            Better::Higher,
        )
        .against(PLAIN),
    ];
    for run in 0..settings.runs {
        let ferry_first = run % 2 == 0;
        for ferry in [ferry_first, !ferry_first] {
            if !ferry && settings.ferry_only {
                continue;
            }
            let values = measure_server(ferry, &settings).await?;
            for (row, value) in rows.iter_mut().zip(values) {
                row.push(ferry, value);
            }
        }
    }
    Ok(rows.into())
}

/// One run against one server: the five row values.
async fn measure_server(ferry: bool, settings: &Settings) -> Result<[f64; ROWS]> {
    let kind = if ferry { "ferry" } else { "plain" };
    let Sessions {
        mut server,
        mut clients,
        addresses,
        figures: [rss, heap, p50, p99],
    } = measure_sessions(kind, false, settings, settings.gateway_sessions).await?;

    // Messages per second to the first TARGETS sessions: a warm-up of one message each (the
    // peer dials and opens its streams), then the measured ones.
    let total = settings.gateway_messages;
    let peer = if ferry {
        let addresses: Vec<ferry::Address> = serde_json::from_str::<Joined>(&addresses)?
            .addresses
            .iter()
            .map(|a| a.parse().map_err(|e| anyhow!("session address {a}: {e}")))
            .collect::<Result<_>>()?;
        Some(Peer::new(addresses).await?)
    } else {
        None
    };
    let mut rate = 0.0;
    for count in [TARGETS, total] {
        clients.send(&format!("count {count}")).await?;
        let started = Instant::now();
        match &peer {
            Some(peer) => peer.send(count).await?,
            None => {
                server.send(&format!("push {count}")).await?;
                server.answer("ok").await?;
            }
        }
        clients.answer("counted").await?;
        rate = count as f64 / started.elapsed().as_secs_f64();
    }
    if let Some(peer) = peer {
        peer.node.shutdown(Duration::from_secs(1)).await;
    }

    clients.kill().await;
    server.kill().await;
    Ok([rss, heap, p50, p99, rate])
}

/// A server with `n` idle sessions of its clients, and what was measured of them.
pub(crate) struct Sessions {
    pub(crate) server: Child,
    pub(crate) clients: Child,
    /// The first 100 session addresses (JSON).
    pub(crate) addresses: String,
    /// KiB of RSS and of heap per idle session; fan-out p50 and p99, ms.
    pub(crate) figures: [f64; 4],
}

/// Starts the server of `kind` and `n` clients over WebSocket, or over WebTransport if
/// `webtransport` (ferry only); measures the memory per idle session and the fan-out of
/// `settings.gateway_rounds` channel messages to all of them.
pub(crate) async fn measure_sessions(
    kind: &str,
    webtransport: bool,
    settings: &Settings,
    n: usize,
) -> Result<Sessions> {
    let settle = settings.gateway_settle_ms;
    let (mut server, url) = Child::start(&["--gateway-server", kind], STEP_WAIT).await?;
    let before = server.memory(&format!("memory {settle}")).await?;
    let count = n.to_string();
    let mut args = vec!["--gateway-clients", &url, &count];
    if webtransport {
        args.push("--webtransport-clients");
    }
    let (mut clients, addresses) = Child::start(&args, STEP_WAIT).await?;
    let after = server.memory(&format!("memory {settle}")).await?;
    let kib = |bytes: i64| bytes as f64 / n.max(1) as f64 / 1024.0;
    let rss = kib(after.1 - before.1);
    let heap = kib(after.0 - before.0);

    // Fan-out rounds.
    let mut histogram = Histogram::<u64>::new(3)?;
    for _ in 0..settings.gateway_rounds {
        tokio::time::sleep(ROUND_GAP).await;
        clients.send("round").await?;
        server.send("publish").await?;
        server.answer("ok").await?;
        let latencies: Vec<u64> = serde_json::from_str(&clients.answer("latencies").await?)?;
        for latency in latencies {
            histogram.record(latency.max(1))?;
        }
    }
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(Sessions {
        server,
        clients,
        addresses,
        figures: [rss, heap, ms(0.5), ms(0.99)],
    })
}

/// A Rust peer on another node, with a sender to each session.
struct Peer {
    node: Node,
    senders: Vec<ferry::Sender>,
}

impl Peer {
    async fn new(targets: Vec<ferry::Address>) -> Result<Self> {
        let node = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
        let senders = targets.iter().map(|t| node.sender(t)).collect();
        Ok(Self { node, senders })
    }

    /// Sends `total` JSON messages round-robin to the sessions, all enqueued at once, and
    /// waits for every delivery (acknowledged: stored by the gateway's node).
    async fn send(&self, total: usize) -> Result<()> {
        let mut deliveries = Vec::with_capacity(total);
        for k in 0..total {
            let sender = self
                .senders
                .get(k % self.senders.len().max(1))
                .ok_or_else(|| anyhow!("no sessions to send to"))?;
            deliveries.push(
                sender
                    .enqueue_bytes(Bytes::from(format!("{{\"n\":{k}}}")))
                    .await?,
            );
        }
        for delivery in deliveries {
            delivery.await?;
        }
        Ok(())
    }
}

pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------
// The server process.

/// What the server publishes with.
enum Server {
    Ferry {
        handle: gateway::GatewayHandle,
        // Kept alive for the process's lifetime.
        _node: Node,
        _store: Arc<RedbStore>,
        _dir: tempfile::TempDir,
    },
    Plain(Arc<Plain>),
}

/// The baseline server's sockets: one queue each, in connection order.
#[derive(Default)]
struct Plain {
    sockets: Mutex<Vec<mpsc::UnboundedSender<Utf8Bytes>>>,
    /// The id of the next message frame (the clients acknowledge ids, as with ferry).
    next_id: std::sync::atomic::AtomicU64,
}

/// Runs this process as the figure's server of `kind` ("ferry" or "plain") until stdin ends.
pub(super) async fn server(kind: &str) -> Result<()> {
    // ferry's gateway also serves WebTransport, on UDP at the TCP port number (as `ferry run
    // --webtransport auto`), for the browser figure's WebTransport sessions.
    let (listener, endpoint) = if kind == "ferry" {
        let (listener, endpoint) = super::browser::bind_both([127, 0, 0, 1].into()).await?;
        (listener, Some(endpoint))
    } else {
        (tokio::net::TcpListener::bind("127.0.0.1:0").await?, None)
    };
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = match kind {
        "ferry" => {
            let dir = tempfile::tempdir()?;
            let store = Arc::new(RedbStore::open(
                &dir.path().join("store.redb"),
                StoreConfig::default(),
            )?);
            let node = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
            let mut config = GatewayConfig::default();
            config.permissions.join = vec![CHANNEL.into()];
            let limits = &mut config.limits;
            limits.connection_rate = 1_000_000;
            limits.max_connections = 1_000_000;
            limits.max_sessions = 1_000_000;
            let gateway =
                gateway::Gateway::new(node.clone(), store.clone(), config, Arc::new(NoHooks))?;
            let handle = gateway.handle();
            if let Some(endpoint) = endpoint {
                tokio::spawn(gateway.serve_webtransport(endpoint, shutdown.clone()));
            }
            tokio::spawn(gateway.serve(listener, shutdown.clone()));
            Server::Ferry {
                handle,
                _node: node,
                _store: store,
                _dir: dir,
            }
        }
        "plain" => {
            let plain = Arc::new(Plain::default());
            let router = axum::Router::new()
                .route("/ws", axum::routing::get(plain_upgrade))
                .with_state(plain.clone());
            let stop = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            });
            Server::Plain(plain)
        }
        other => bail!("unknown server kind {other:?}"),
    };
    println!("ready ws://{addr}/ws");
    super::child::answer_commands(async |command| server_command(&server, command).await).await?;
    shutdown.cancel();
    Ok(())
}

async fn server_command(server: &Server, command: &str) -> Result<String> {
    let (word, argument) = command.split_once(' ').unwrap_or((command, ""));
    match (word, server) {
        ("memory", _) => {
            let settle: u64 = argument.parse().context("memory settle time")?;
            tokio::time::sleep(Duration::from_millis(settle)).await;
            Ok(format!(
                "memory {} {}",
                i64::try_from(ALLOCATOR.allocated())?,
                rss()?
            ))
        }
        ("publish", Server::Ferry { handle, .. }) => {
            let payload = gateway::json_payload(&json!({ "t": unix_micros() }));
            handle.publish(CHANNEL, payload).await?;
            Ok("ok".into())
        }
        ("publish", Server::Plain(plain)) => {
            // The same frame shape as a gateway message, built once and shared.
            let frame = Utf8Bytes::from(
                json!({"type": "message", "id": plain.next_id.fetch_add(1, Ordering::Relaxed), "data": {"t": unix_micros()}})
                    .to_string(),
            );
            let sockets = plain
                .sockets
                .lock()
                .map_err(|_| anyhow!("poisoned"))?
                .clone();
            for socket in sockets {
                let _ = socket.send(frame.clone());
            }
            Ok("ok".into())
        }
        ("push", Server::Plain(plain)) => {
            let total: usize = argument.parse().context("push count")?;
            let sockets: Vec<_> = plain
                .sockets
                .lock()
                .map_err(|_| anyhow!("poisoned"))?
                .iter()
                .take(TARGETS)
                .cloned()
                .collect();
            for k in 0..total {
                let id = plain.next_id.fetch_add(1, Ordering::Relaxed);
                let frame = json!({"type": "message", "id": id, "data": {"n": k}}).to_string();
                if let Some(socket) = sockets.get(k % sockets.len().max(1)) {
                    let _ = socket.send(frame.into());
                }
            }
            Ok("ok".into())
        }
        (other, _) => bail!("unknown command {other:?}"),
    }
}

async fn plain_upgrade(State(plain): State<Arc<Plain>>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(BUFFER)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| plain_socket(plain, socket))
}

/// One socket of the plain server: a welcome, `ok` to every text frame, and whatever its
/// queue holds.
async fn plain_socket(plain: Arc<Plain>, mut socket: WebSocket) {
    let (queue, mut frames) = mpsc::unbounded_channel();
    if let Ok(mut sockets) = plain.sockets.lock() {
        sockets.push(queue);
    }
    let welcome = AxumMessage::Text(Utf8Bytes::from_static(r#"{"type":"welcome"}"#));
    if socket.send(welcome).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(frame) => {
                    if socket.send(AxumMessage::Text(frame)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            message = socket.recv() => match message {
                Some(Ok(AxumMessage::Text(text))) => {
                    if text.as_str().contains(r#""type":"ack""#) {
                        continue;
                    }
                    let ok = AxumMessage::Text(Utf8Bytes::from_static(r#"{"type":"ok","ref":1}"#));
                    if socket.send(ok).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The clients process.

/// Runs this process as `n` clients of the server at `url` (its WebSocket URL), over
/// WebTransport if `webtransport`, until stdin ends.
pub(super) async fn clients(url: &str, n: usize, webtransport: bool) -> Result<()> {
    let (events, received) = mpsc::unbounded_channel::<Received>();
    let first = if webtransport {
        super::wt_clients::connect(url, n, events).await?
    } else {
        connect_websockets(url, n, events).await?
    };
    let joined = Joined {
        addresses: first.iter().map(|(address, _)| address.clone()).collect(),
        users: first.into_iter().map(|(_, user)| user).collect(),
    };
    println!("ready {}", serde_json::to_string(&joined)?);
    answer_commands(received, n).await
}

/// The `ready` answer of the clients process: the addresses and user ids of its first
/// `TARGETS` sessions.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Joined {
    pub(crate) addresses: Vec<String>,
    pub(crate) users: Vec<String>,
}

/// A session's address and user id, from its welcome.
pub(crate) fn address_and_user(welcome: &Value) -> (String, String) {
    let text = |key: &str| welcome[key].as_str().unwrap_or("").to_owned();
    (text("address"), text("user"))
}

/// Connects `n` WebSocket clients that joined the channel, each reading its messages into
/// `events`; the first [`TARGETS`] sessions' addresses and users.
async fn connect_websockets(
    url: &str,
    n: usize,
    events: mpsc::UnboundedSender<Received>,
) -> Result<Vec<(String, String)>> {
    connect_in_batches(n, CONNECT_BATCH, || {
        let (url, events) = (url.to_owned(), events.clone());
        async move {
            let mut ws = connect_client(url.as_str()).await.context("connecting")?;
            let welcome = next_text(&mut ws).await?;
            let join = json!({"type": "join", "ref": 1, "channel": CHANNEL});
            ws.send(Message::Text(join.to_string().into())).await?;
            let joined = next_text(&mut ws).await?;
            if joined["type"] != "ok" {
                bail!("join answered {joined}");
            }
            tokio::spawn(read_messages(ws, events));
            anyhow::Ok(address_and_user(&welcome))
        }
    })
    .await
}

/// Connects `n` clients with `connect` (which returns what identifies its session once
/// welcomed and joined), `batch` at a time, each within [`CONNECT_WAIT`]; the first
/// [`TARGETS`] of those.
pub(crate) async fn connect_in_batches<F, Fut, T>(
    n: usize,
    batch: usize,
    connect: F,
) -> Result<Vec<T>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut addresses = Vec::new();
    let mut left = n;
    while left > 0 {
        let now = left.min(batch.max(1));
        left -= now;
        let connecting = (0..now).map(|_| async {
            tokio::time::timeout(CONNECT_WAIT, connect())
                .await
                .map_err(|_| anyhow!("no welcome and join in {CONNECT_WAIT:?}"))?
        });
        for address in futures::future::join_all(connecting).await {
            let address = address?;
            if addresses.len() < TARGETS {
                addresses.push(address);
            }
        }
    }
    Ok(addresses)
}

/// The clients' side of the commands (`round`, `count M`), with what the clients tell of the
/// messages they read.
async fn answer_commands(mut received: mpsc::UnboundedReceiver<Received>, n: usize) -> Result<()> {
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        let (word, argument) = command.split_once(' ').unwrap_or((&command, ""));
        match word {
            "round" => {
                let mut latencies = Vec::with_capacity(n);
                while latencies.len() < n {
                    if let Received::Latency(micros) =
                        received.recv().await.context("clients ended")?
                    {
                        latencies.push(micros);
                    }
                }
                println!("latencies {}", serde_json::to_string(&latencies)?);
            }
            "count" => {
                let total: usize = argument.parse().context("count")?;
                let started = Instant::now();
                let mut count = 0;
                while count < total {
                    if let Received::Numbered = received.recv().await.context("clients ended")? {
                        count += 1;
                    }
                }
                println!("counted {}", started.elapsed().as_micros());
            }
            other => println!("error unknown command {other:?}"),
        }
    }
    Ok(())
}

/// What a client tells the driver of a message frame it received.
pub(crate) enum Received {
    /// A fan-out message: µs from its `t` to its receipt.
    Latency(u64),
    /// A message of the messages/s figure (`n`).
    Numbered,
}

/// The fields of a message frame the clients look at (the rest is skipped unparsed).
#[derive(serde::Deserialize)]
pub(crate) struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    id: Option<u64>,
    data: Option<Stamp>,
}

impl Incoming {
    /// Tells `events` of this frame if it is a message; its id.
    pub(crate) fn report(&self, events: &mpsc::UnboundedSender<Received>) -> Option<u64> {
        if self.kind != "message" {
            return None;
        }
        let stamp = self.data.as_ref();
        if let Some(t) = stamp.and_then(|data| data.t) {
            let _ = events.send(Received::Latency(unix_micros().saturating_sub(t)));
        } else if stamp.and_then(|data| data.n).is_some() {
            let _ = events.send(Received::Numbered);
        }
        self.id
    }
}

#[derive(serde::Deserialize)]
struct Stamp {
    t: Option<u64>,
    n: Option<u64>,
}

/// How long ferry.js waits after a message before acknowledging (cumulatively) what it
/// processed.
const ACK_DELAY: Duration = Duration::from_millis(50);

/// One client's reading, as ferry.js does it: each message frame is timed the moment it is
/// parsed, and the highest message id is acknowledged `ACK_DELAY` after the first
/// unacknowledged one (the plain server ignores the acks).
async fn read_messages(mut ws: Ws, events: mpsc::UnboundedSender<Received>) {
    let mut acks = Acks::default();
    loop {
        tokio::select! {
            message = ws.next() => {
                let Some(Ok(message)) = message else { return };
                let Message::Text(text) = message else { continue };
                let Ok(frame) = serde_json::from_str::<Incoming>(text.as_str()) else { continue };
                if let Some(id) = frame.report(&events) {
                    acks.saw(id);
                }
            }
            id = acks.due() => {
                let ack = json!({"type": "ack", "id": id}).to_string();
                if ws.send(Message::Text(ack.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// When a client acknowledges, as ferry.js does: the highest id it saw, [`ACK_DELAY`] after the
/// first message it has not acknowledged.
#[derive(Default)]
pub(crate) struct Acks {
    cursor: Option<u64>,
    at: Option<tokio::time::Instant>,
}

impl Acks {
    /// A message with `id` arrived.
    pub(crate) fn saw(&mut self, id: u64) {
        self.cursor = Some(self.cursor.map_or(id, |c| c.max(id)));
        self.at
            .get_or_insert_with(|| tokio::time::Instant::now() + ACK_DELAY);
    }

    /// Once an acknowledgement is due: the id to acknowledge (pending while none is).
    pub(crate) async fn due(&mut self) -> u64 {
        match (self.at, self.cursor) {
            (Some(at), Some(id)) => {
                tokio::time::sleep_until(at).await;
                self.at = None;
                id
            }
            _ => std::future::pending().await,
        }
    }
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client of the benchmark, reading like a browser: into a small buffer.
/// (tungstenite's default, 128 KiB, is zeroed up to its size before every read — with thousands
/// of clients on the gateway's two cores, that memset was a quarter of all the CPU time of the
/// cluster figure, and 128 KiB of memory per client.)
pub(crate) async fn connect_client(url: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    Ok(ws)
}

/// What a benchmark client reads at most at once, bytes: the messages are small.
const CLIENT_READ_BUFFER: usize = 4096;

/// The next text frame but heartbeats, as JSON.
pub(crate) async fn next_text(ws: &mut Ws) -> Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str())?;
                if frame["type"] != "heartbeat" {
                    return Ok(frame);
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => bail!("closed before a frame"),
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit (each session is a
/// socket in the server and one in the clients process; children inherit the limit).
pub(crate) fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum?;
    if limit.current != Some(hard) {
        limit.current = Some(hard);
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "raising the open-files limit");
        }
    }
    Some(hard)
}
