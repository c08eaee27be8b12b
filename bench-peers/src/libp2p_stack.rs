//! rust-libp2p: a [`Swarm`] per node, built the documented way (`SwarmBuilder`, tokio, the QUIC
//! transport), whose behaviour is `request_response` with the CBOR codec (the codec libp2p
//! ships for serde types) and `ping`, each with its default configuration. The measuring code
//! drives the client swarm's event loop itself (as a libp2p application does: every message
//! and answer is an event of the swarm), the server swarm runs in a task of its own.
//!
//! One departure from the defaults, needed by the memory figure: the idle connection timeout is
//! 60 s rather than 0 s, so that connections without a stream stay open. A request's timeout
//! stays libp2p's default (10 s), far above any figure.
//!
//! The jobs: an acknowledged message is a request answered by an empty response, with at most
//! 100 requests in flight (request_response's default `max_concurrent_streams`); a round trip
//! and a call are both a 64-byte request answered by its echo, one at a time (request-response
//! is libp2p's way to a reply; ping, whose 32-byte echo stays on one stream, answers an inbound
//! ping only when the responder's handler is next polled for another reason, up to its own
//! 15 s interval, so its round trips cannot be measured back to back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use libp2p::request_response::{self, cbor, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{ping, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::bench::memory::{self, CONCURRENCY};
use crate::bench::{histogram, record_ns, MESSAGE_LEN, PAYLOAD};

/// The request-response protocol of every job.
const PROTOCOL: StreamProtocol = StreamProtocol::new("/ferry-bench/1");
/// How long a connection stays open without a stream (libp2p's default is 0 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Acknowledged messages in flight: request_response's default `max_concurrent_streams`.
const IN_FLIGHT: u64 = 100;
/// Rounds of the dial figure start at most this often (as the other stacks').
const DIAL_PACE: Duration = crate::bench::dial::PACE;

/// A request: a message to acknowledge (empty answer) or to echo.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    echo: bool,
}

/// The answer: empty, or the request's payload.
#[derive(Debug, Serialize, Deserialize)]
struct Response {
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    request_response: cbor::Behaviour<Request, Response>,
    ping: ping::Behaviour,
}

/// A swarm with the default configurations (see the module's documentation).
fn swarm() -> Result<Swarm<Behaviour>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_key| Behaviour {
            request_response: cbor::Behaviour::new(
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
        })
        .map_err(|error| anyhow!("libp2p behaviour: {error}"))?
        .with_swarm_config(|config| config.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build())
}

/// Makes `swarm` listen on a loopback UDP port and returns its address.
async fn listen(swarm: &mut Swarm<Behaviour>) -> Result<Multiaddr> {
    swarm.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return Ok(address);
        }
    }
}

/// A server swarm answering requests (and pings) in a task until `stop` fires; counts its
/// established connections into `connected`.
struct Server {
    peer: PeerId,
    address: Multiaddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Server {
    async fn start(connected: Arc<AtomicU64>) -> Result<Self> {
        let mut swarm = swarm()?;
        let address = listen(&mut swarm).await?;
        let peer = *swarm.local_peer_id();
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return Ok(()),
                    event = swarm.select_next_some() => serve(&mut swarm, event, &connected)?,
                }
            }
        });
        Ok(Self {
            peer,
            address,
            stop,
            task,
        })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("libp2p server panicked")?
    }
}

/// The server's answer to one event of its swarm.
fn serve(
    swarm: &mut Swarm<Behaviour>,
    event: SwarmEvent<BehaviourEvent>,
    connected: &AtomicU64,
) -> Result<()> {
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::RequestResponse(
            request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            },
        )) => {
            let payload = if request.echo {
                request.payload
            } else {
                Vec::new()
            };
            // Fails only if the requester gave up (its connection closed): nothing to answer.
            let _ = swarm
                .behaviour_mut()
                .request_response
                .send_response(channel, Response { payload });
        }
        SwarmEvent::ConnectionEstablished { .. } => {
            connected.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    Ok(())
}

/// A client swarm, connected to `server` by its first request.
struct Client {
    swarm: Swarm<Behaviour>,
    server: PeerId,
}

impl Client {
    fn new(server: &Server) -> Result<Self> {
        let mut swarm = swarm()?;
        swarm.add_peer_address(server.peer, server.address.clone());
        Ok(Self {
            swarm,
            server: server.peer,
        })
    }

    fn request(&mut self, echo: bool) {
        let request = Request {
            payload: PAYLOAD.to_vec(),
            echo,
        };
        self.swarm
            .behaviour_mut()
            .request_response
            .send_request(&self.server, request);
    }

    /// Drives the swarm until the next answer to a request.
    async fn response(&mut self) -> Result<Response> {
        loop {
            match self.swarm.select_next_some().await {
                SwarmEvent::Behaviour(BehaviourEvent::RequestResponse(
                    request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    },
                )) => return Ok(response),
                SwarmEvent::Behaviour(BehaviourEvent::RequestResponse(
                    request_response::Event::OutboundFailure { error, .. },
                )) => bail!("request failed: {error}"),
                SwarmEvent::OutgoingConnectionError { error, .. } => bail!("dial failed: {error}"),
                _ => {}
            }
        }
    }
}

/// Acknowledged 64-byte messages/s: requests answered by an empty response, [`IN_FLIGHT`] at
/// a time, from the first request of the `n` until the last answer.
pub(crate) async fn throughput(n: u64, warmup: u64) -> Result<f64> {
    let server = Server::start(Arc::default()).await?;
    let mut client = Client::new(&server)?;
    let mut start = Instant::now();
    for (phase, count) in [(0, warmup), (1, n)] {
        if phase == 1 {
            start = Instant::now();
        }
        let (mut sent, mut acked) = (0u64, 0u64);
        while acked < count {
            while sent < count && sent - acked < IN_FLIGHT {
                client.request(false);
                sent += 1;
            }
            ensure!(client.response().await?.payload.is_empty(), "bad ack");
            acked += 1;
        }
    }
    let elapsed = start.elapsed();
    drop(client);
    server.stop().await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Calls: a 64-byte request echoed in the response, one at a time.
pub(crate) async fn calls(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    let server = Server::start(Arc::default()).await?;
    let mut client = Client::new(&server)?;
    let mut histogram = histogram()?;
    for round in 0..warmup + rounds {
        let start = Instant::now();
        client.request(true);
        let response = client.response().await?;
        let elapsed = start.elapsed();
        ensure!(response.payload.len() == MESSAGE_LEN, "bad reply length");
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
    }
    drop(client);
    server.stop().await?;
    Ok(histogram)
}

/// Dial + first acknowledged message: each round builds a new client swarm (not timed), then
/// times its first request to the long-lived server, which dials it, until the answer.
pub(crate) async fn dials(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    let server = Server::start(Arc::default()).await?;
    let mut histogram = histogram()?;
    for round in 0..warmup + rounds {
        let next = tokio::time::Instant::now() + DIAL_PACE;
        let mut client = Client::new(&server)?;
        let start = Instant::now();
        client.request(false);
        client.response().await?;
        let elapsed = start.elapsed();
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
        drop(client);
        tokio::time::sleep_until(next).await;
    }
    server.stop().await?;
    Ok(histogram)
}

// ---------------------------------------------------------------------------------------------
// Memory per connected peer.

/// Heap and RSS (KiB) per connected peer of a swarm (the hub, a child process) that `n` client
/// swarms connected to (dialed, connection idle, kept by the idle timeout).
pub(crate) async fn memory_per_peer(n: usize) -> Result<[f64; 2]> {
    let (mut hub, ready) = memory::Hub::start("libp2p").await?;
    let (peer, address) = ready
        .split_once(' ')
        .ok_or_else(|| anyhow!("bad ready line {ready:?}"))?;
    let peer: PeerId = peer.parse()?;
    let address: Multiaddr = address.parse()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut swarm = swarm()?;
        swarm.add_peer_address(peer, address.clone());
        clients.push(swarm);
    }
    let result = async {
        let before = hub.memory().await?;
        // Each client swarm dials and then keeps its connection in a task of its own, as a
        // libp2p node does.
        let mut tasks = Vec::with_capacity(n);
        let mut clients = clients.into_iter();
        for chunk in 0..n.div_ceil(CONCURRENCY) {
            let mut connecting = Vec::new();
            for mut swarm in clients.by_ref().take(CONCURRENCY) {
                swarm.dial(peer)?;
                let mut stopped = stopped.clone();
                let (connected, is_connected) = oneshot::channel();
                connecting.push(is_connected);
                tasks.push(tokio::spawn(async move {
                    let mut connected = Some(connected);
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => return,
                            event = swarm.select_next_some() => {
                                if let SwarmEvent::ConnectionEstablished { .. } = event {
                                    if let Some(connected) = connected.take() {
                                        let _ = connected.send(());
                                    }
                                }
                            }
                        }
                    }
                }));
            }
            for is_connected in connecting {
                is_connected
                    .await
                    .map_err(|_| anyhow!("a client of batch {chunk} ended"))?;
            }
        }
        hub.expect(&format!("peers {n}")).await?;
        let with_peers = hub.memory().await?;
        let [heap, rss, ..] = memory::per_item(n, 1, [before, with_peers, with_peers], (0, 0));
        anyhow::Ok(([heap, rss], tasks))
    }
    .await;
    hub.finish().await;
    let _ = stop.send(true);
    let (values, tasks) = result?;
    for task in tasks {
        task.await.context("client swarm panicked")?;
    }
    Ok(values)
}

/// The hub process: a server swarm.
pub(crate) async fn hub() -> Result<()> {
    let connected = Arc::new(AtomicU64::new(0));
    let server = Server::start(connected.clone()).await?;
    println!("ready {} {}", server.peer, server.address);
    memory::serve_commands(&crate::ConnectionCount(connected)).await?;
    server.stop().await
}
