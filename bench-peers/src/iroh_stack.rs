//! iroh 1.x: an [`Endpoint`] per node, the server side a [`Router`] with one
//! [`ProtocolHandler`] per job (ALPN), as iroh's examples build a protocol. The jobs on the
//! streams are the raw quinn baseline's own code ([`streams`]): iroh's connections (noq, n0's
//! fork of quinn) have quinn's stream API.
//!
//! Configuration: [`presets::Minimal`] (the crypto provider, ring, and nothing else), one IPv4
//! socket on 127.0.0.1, the port mapper off, and endpoints addressed by id and socket address;
//! no relay and no address lookup (both are for reaching nodes across networks, and would
//! contact n0's servers). Transport settings are iroh's defaults.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use hdrhistogram::Histogram;
use iroh::endpoint::{presets, Connection, PortmapperConfig, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, EndpointId};

use crate::bench::memory::{self, CONCURRENCY};
use crate::bench::streams::{self, Dialer, QuicConnection, QuicRecv, QuicSend};

/// The jobs' protocols.
const COUNT_ALPN: &[u8] = b"ferry-bench/count/0";
const ECHO_ALPN: &[u8] = b"ferry-bench/echo/0";
const CALL_ALPN: &[u8] = b"ferry-bench/call/0";
const DIAL_ALPN: &[u8] = b"ferry-bench/dial/0";

/// A bound iroh endpoint on 127.0.0.1.
async fn endpoint() -> Result<Endpoint> {
    Ok(Endpoint::builder(presets::Minimal)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")?
        .portmapper_config(PortmapperConfig::Disabled)
        .bind()
        .await?)
}

/// How to reach `endpoint` directly: its id and its loopback socket.
fn direct_addr(endpoint: &Endpoint) -> Result<EndpointAddr> {
    let socket = endpoint
        .bound_sockets()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("endpoint without a socket"))?;
    Ok(EndpointAddr::new(endpoint.id()).with_ip_addr(socket))
}

/// The server side of one job.
#[derive(Debug, Clone, Copy)]
enum Job {
    Count,
    Echo,
    Call,
    Dial,
}

impl ProtocolHandler for Job {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let connection = IrohConnection(connection);
        let served = match self {
            Self::Count => streams::serve_counted(connection).await.map(drop),
            Self::Echo => streams::serve_echo(connection).await,
            Self::Call => {
                streams::serve_calls(connection).await;
                Ok(())
            }
            Self::Dial => streams::serve_dial(connection).await,
        };
        served.map_err(|error| AcceptError::from_boxed(error.into()))
    }
}

/// A server endpoint with every job's protocol.
async fn server() -> Result<Router> {
    Ok(Router::builder(endpoint().await?)
        .accept(COUNT_ALPN, Job::Count)
        .accept(ECHO_ALPN, Job::Echo)
        .accept(CALL_ALPN, Job::Call)
        .accept(DIAL_ALPN, Job::Dial)
        .spawn())
}

/// A client endpoint connected to a fresh server with `alpn`, run through `job`.
async fn with_pair<T, F>(alpn: &[u8], job: impl FnOnce(IrohConnection) -> F) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let router = server().await?;
    let client = endpoint().await?;
    let connection = client
        .connect(direct_addr(router.endpoint())?, alpn)
        .await?;
    let result = job(IrohConnection(connection.clone())).await;
    connection.close(0u32.into(), b"done");
    client.close().await;
    router.shutdown().await.context("router shutdown")?;
    result
}

/// Acknowledged 64-byte messages/s on one stream ([`streams::send_counted`]).
pub(crate) async fn throughput(n: u64, warmup: u64) -> Result<f64> {
    with_pair(COUNT_ALPN, |connection| async move {
        streams::send_counted(&connection, n, warmup).await
    })
    .await
}

/// 64-byte echo on an open stream ([`streams::echo_rounds`]).
pub(crate) async fn round_trips(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    with_pair(ECHO_ALPN, |connection| async move {
        streams::echo_rounds(&connection, rounds, warmup).await
    })
    .await
}

/// 64-byte request on a new stream per request ([`streams::call_rounds`]).
pub(crate) async fn calls(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    with_pair(CALL_ALPN, |connection| async move {
        streams::call_rounds(&connection, rounds, warmup).await
    })
    .await
}

/// Dial + first echo from a freshly bound endpoint each round (like ferry's new node; the
/// binding is not timed) to a long-lived server ([`streams::dial_rounds`]).
pub(crate) async fn dials(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    let router = server().await?;
    let mut dialer = IrohDialer {
        server: direct_addr(router.endpoint())?,
        client: None,
        closing: Vec::new(),
    };
    let histogram = streams::dial_rounds(&mut dialer, rounds, warmup).await;
    if let Some(client) = dialer.client.take() {
        dialer
            .closing
            .push(tokio::spawn(async move { client.close().await }));
    }
    for closing in dialer.closing {
        closing.await.context("endpoint close panicked")?;
    }
    router.shutdown().await.context("router shutdown")?;
    histogram
}

struct IrohDialer {
    server: EndpointAddr,
    /// The endpoint of the current round.
    client: Option<Endpoint>,
    /// Endpoints of past rounds closing in the background.
    closing: Vec<tokio::task::JoinHandle<()>>,
}

impl Dialer for IrohDialer {
    type Connection = IrohConnection;

    async fn prepare(&mut self) -> Result<()> {
        self.client = Some(endpoint().await?);
        Ok(())
    }

    async fn connect(&mut self) -> Result<IrohConnection> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| anyhow!("no endpoint prepared"))?;
        Ok(IrohConnection(
            client.connect(self.server.clone(), DIAL_ALPN).await?,
        ))
    }

    async fn release(&mut self, connection: IrohConnection) {
        connection.0.close(0u32.into(), b"done");
        if let Some(client) = self.client.take() {
            self.closing
                .push(tokio::spawn(async move { client.close().await }));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Memory per connected peer.

/// Heap and RSS (KiB) per connected peer of an iroh endpoint (the hub, a child process) that
/// `n` client endpoints connected to, each connection held open by the hub's protocol handler.
pub(crate) async fn memory_per_peer(n: usize) -> Result<[f64; 2]> {
    let (mut hub, ready) = memory::Hub::start("iroh").await?;
    let (id, socket) = ready
        .split_once(' ')
        .ok_or_else(|| anyhow!("bad ready line {ready:?}"))?;
    let id: EndpointId = id
        .parse()
        .map_err(|error| anyhow!("hub id {id}: {error}"))?;
    let addr = EndpointAddr::new(id).with_ip_addr(socket.parse::<SocketAddr>()?);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(endpoint().await?);
    }
    let result = async {
        let before = hub.memory().await?;
        let connections: Vec<Connection> = futures::stream::iter(clients.clone())
            .map(|client| {
                let addr = addr.clone();
                async move { anyhow::Ok(client.connect(addr, ECHO_ALPN).await?) }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        hub.expect(&format!("peers {n}")).await?;
        let with_peers = hub.memory().await?;
        drop(connections);
        let [heap, rss, ..] = memory::per_item(n, 1, [before, with_peers, with_peers], (0, 0));
        anyhow::Ok([heap, rss])
    }
    .await;
    hub.finish().await;
    futures::future::join_all(clients.iter().map(Endpoint::close)).await;
    result
}

/// Holds each connection open until the peer closes it, counting it.
#[derive(Debug, Clone)]
struct HoldOpen(Arc<AtomicU64>);

impl ProtocolHandler for HoldOpen {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        connection.closed().await;
        Ok(())
    }
}

/// The hub process: an endpoint whose handler holds every connection open.
pub(crate) async fn hub() -> Result<()> {
    let connected = Arc::new(AtomicU64::new(0));
    let router = Router::builder(endpoint().await?)
        .accept(ECHO_ALPN, HoldOpen(connected.clone()))
        .spawn();
    let addr = direct_addr(router.endpoint())?;
    let socket = addr
        .ip_addrs()
        .next()
        .ok_or_else(|| anyhow!("no socket address"))?;
    println!("ready {} {socket}", router.endpoint().id());
    memory::serve_commands(&crate::ConnectionCount(connected)).await
}

// ---------------------------------------------------------------------------------------------
// iroh's connections as the stream jobs' connections.

/// An iroh connection (a newtype: the trait and the type are both foreign to this crate's
/// module that defines the jobs).
#[derive(Clone)]
pub(crate) struct IrohConnection(Connection);

impl QuicConnection for IrohConnection {
    type Send = IrohSend;
    type Recv = IrohRecv;

    async fn open_bi(&self) -> Result<(IrohSend, IrohRecv)> {
        let (send, recv) = self.0.open_bi().await?;
        Ok((IrohSend(send), IrohRecv(recv)))
    }

    async fn accept_bi(&self) -> Result<(IrohSend, IrohRecv)> {
        let (send, recv) = self.0.accept_bi().await?;
        Ok((IrohSend(send), IrohRecv(recv)))
    }

    async fn closed(&self) {
        self.0.closed().await;
    }
}

pub(crate) struct IrohSend(SendStream);

impl QuicSend for IrohSend {
    async fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        Ok(self.0.write_all(buf).await?)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(self.0.finish()?)
    }
}

pub(crate) struct IrohRecv(RecvStream);

impl QuicRecv for IrohRecv {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        Ok(self.0.read_chunk(max).await?)
    }

    async fn read_exact_or_end(&mut self, buf: &mut [u8]) -> Result<bool> {
        match self.0.read_exact(buf).await {
            Ok(()) => Ok(true),
            Err(iroh::endpoint::ReadExactError::FinishedEarly(0)) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>> {
        Ok(self.0.read_to_end(limit).await?)
    }
}
