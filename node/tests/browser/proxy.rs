//! A TCP proxy that can make its connections go silent: after `freeze`, the connections it
//! carries stop forwarding in both directions but stay open (no FIN, no reset), as when a
//! network goes away under an established connection. Connections made after the freeze are
//! forwarded normally. [`UdpProxy`] does the same for the datagrams of QUIC connections
//! (WebTransport).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    /// Bumped by `freeze`: a connection forwards only while this is the value it started with.
    generation: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let current = generation.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let mine = current.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                connections.spawn(forward(client_read, server_write, current.clone(), mine));
                connections.spawn(forward(server_read, client_write, current.clone(), mine));
            }
        });
        Self {
            addr,
            generation,
            _tasks: tasks,
        }
    }

    /// Every connection open now goes silent, and stays open.
    pub(crate) fn freeze(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: Arc<AtomicU64>,
    mine: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if generation.load(Ordering::SeqCst) != mine {
            // Frozen: hold both ends open, forward nothing, until the proxy is dropped.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A UDP proxy with the same `freeze`: each client address is a flow with a socket of its own
/// toward the target; after `freeze`, the flows of that moment forward nothing more, while
/// datagrams from new client addresses (a new QUIC connection) are forwarded normally.
pub(crate) struct UdpProxy {
    generation: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

impl UdpProxy {
    /// A proxy on `addr` to `target`; fails if `addr` is taken.
    pub(crate) async fn start_at(addr: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let generation = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let current = generation.clone();
        tasks.spawn(async move {
            let mut flows: HashMap<SocketAddr, (Arc<UdpSocket>, u64)> = HashMap::new();
            let mut replies = JoinSet::new();
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok((n, client)) = socket.recv_from(&mut buf).await {
                let (upstream, mine) = match flows.get(&client) {
                    Some(flow) => flow.clone(),
                    None => {
                        let Ok(upstream) = UdpSocket::bind("127.0.0.1:0").await else {
                            continue;
                        };
                        let flow = (Arc::new(upstream), current.load(Ordering::SeqCst));
                        replies.spawn(reply(
                            flow.0.clone(),
                            socket.clone(),
                            client,
                            current.clone(),
                            flow.1,
                        ));
                        flows.insert(client, flow.clone());
                        flow
                    }
                };
                if current.load(Ordering::SeqCst) == mine {
                    let _ = upstream.send_to(&buf[..n], target).await;
                }
            }
        });
        Ok(Self {
            generation,
            _tasks: tasks,
        })
    }

    /// Every flow open now goes silent.
    pub(crate) fn freeze(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Forwards the target's datagrams of one flow back to its client while the flow is not
/// frozen.
async fn reply(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    generation: Arc<AtomicU64>,
    mine: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = upstream.recv(&mut buf).await {
        if generation.load(Ordering::SeqCst) != mine {
            return;
        }
        let _ = socket.send_to(&buf[..n], client).await;
    }
}

/// A TCP proxy, and for WebTransport a UDP proxy on the same port number (so that the page's
/// origin is the CONNECT's authority), in front of a gateway serving both on `target`.
pub(crate) struct Proxies {
    pub(crate) addr: SocketAddr,
    tcp: Proxy,
    udp: Option<UdpProxy>,
}

impl Proxies {
    pub(crate) async fn start(target: SocketAddr, webtransport: bool) -> Self {
        for _ in 0..20 {
            let tcp = Proxy::start(target).await;
            if !webtransport {
                return Self {
                    addr: tcp.addr,
                    tcp,
                    udp: None,
                };
            }
            if let Ok(udp) = UdpProxy::start_at(tcp.addr, target).await {
                return Self {
                    addr: tcp.addr,
                    tcp,
                    udp: Some(udp),
                };
            }
        }
        panic!("no port free over both TCP and UDP");
    }

    /// Every connection open now goes silent.
    pub(crate) fn freeze(&self) {
        self.tcp.freeze();
        if let Some(udp) = &self.udp {
            udp.freeze();
        }
    }
}
