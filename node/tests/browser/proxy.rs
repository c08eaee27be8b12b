//! A TCP proxy that can make its connections go silent: after `freeze`, the connections it
//! carries stop forwarding in both directions but stay open (no FIN, no reset), as when a
//! network goes away under an established connection. Connections made after the freeze are
//! forwarded normally.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
