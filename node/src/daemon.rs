//! The long-lived node of `run` and `listen`: start it from a [`DaemonConfig`], print what
//! arrives, stop on a signal in order (node, HTTP endpoint, store).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ferry::{Mailbox, Message, Node, SecretKey};
use ferry_node::gateway::{Gateway, GatewayConfig, NoHooks};
use ferry_node::store::RedbStore;
use tokio_util::sync::CancellationToken;

use crate::daemon_config::DaemonConfig;

/// A running daemon: the node, and its store and HTTP endpoint if it has them.
pub(crate) struct Daemon {
    pub(crate) node: Node,
    store: Option<Arc<RedbStore>>,
    /// What stops the HTTP endpoint, and its task.
    http: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// What drains the browser gateway, and its task.
    gateway: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// The gateway's handle, for /metrics.
    gateway_handle: Option<ferry_node::gateway::GatewayHandle>,
}

impl Daemon {
    /// Starts the node: loads (or creates) the key, binds with `config.node`, and connects to
    /// `config.peers` (a peer that cannot be reached is logged). With `durable`, or when a data
    /// directory or key was configured, the key, the store and the UDP port (see
    /// [`crate::udp_port`]) live in the data directory (created if needed); otherwise the node
    /// has a fresh key and nothing touches the disk.
    pub(crate) async fn start(config: &DaemonConfig, durable: bool) -> anyhow::Result<Self> {
        let on_disk = durable || config.persistent;
        // Paused: no stream is taken before the durable mailboxes are open again
        // (`receive_until_signal` starts serving them).
        let (node, store) = if on_disk {
            create_private_dir(&config.data_dir).with_context(|| {
                format!("creating data directory {}", config.data_dir.display())
            })?;
            let key = ferry_node::keyfile::load_or_generate(&config.key_file)?;
            let path = config.data_dir.join("store.redb");
            let store = RedbStore::open(&path, config.store.clone())?;
            let (node, _) =
                crate::udp_port::bind_keeping_port(key, &config.node, &config.data_dir).await?;
            (node, Some(Arc::new(store)))
        } else {
            let node = Node::builder(SecretKey::generate())
                .config(config.node.clone())
                .paused()
                .bind()
                .await?;
            (node, None)
        };
        for peer in &config.peers {
            node.add_peer_addr(peer.id, peer.addr);
            if let Err(error) = node.connect(peer.id, Some(peer.addr)).await {
                tracing::warn!(peer = %peer.id.short(), %error, "could not connect at start");
            }
        }
        Ok(Self {
            node,
            store,
            http: None,
            gateway: None,
            gateway_handle: None,
        })
    }

    /// The mailbox called `name`: durable (the same address across restarts, messages kept
    /// until printed) with a store, else a fresh one.
    pub(crate) fn mailbox(&self, name: &str) -> anyhow::Result<Mailbox> {
        Ok(match &self.store {
            Some(store) => {
                let id = store.named_mailbox(name)?;
                self.node.durable_mailbox(id, store.clone())?
            }
            None => self.node.mailbox(),
        })
    }

    /// Serves /health and /metrics on `addr` (with the gateway's figures if it was started
    /// first); returns the bound address.
    pub(crate) async fn serve_http(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP endpoint on {addr}"))?;
        let bound = listener.local_addr()?;
        let stop = CancellationToken::new();
        let serving = ferry_node::http::serve_with_gateway(
            listener,
            self.node.clone(),
            self.store.clone(),
            self.gateway_handle.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "HTTP endpoint failed");
            }
        });
        self.http = Some((stop, task));
        Ok(bound)
    }

    /// Serves the browser gateway on `addr` (a store is required: sessions are durable
    /// mailboxes); returns the bound address. `inbox` is put into the clients' config as
    /// `inbox` unless the config sets that key.
    pub(crate) async fn serve_gateway(
        &mut self,
        addr: SocketAddr,
        mut config: GatewayConfig,
        inbox: &ferry::Address,
    ) -> anyhow::Result<SocketAddr> {
        let store = self
            .store
            .clone()
            .context("the gateway needs the durable store")?;
        if let Some(object) = config.client_config.as_object_mut() {
            object
                .entry("inbox")
                .or_insert_with(|| inbox.to_string().into());
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the gateway on {addr}"))?;
        let bound = listener.local_addr()?;
        let gateway = Gateway::new(self.node.clone(), store, config, Arc::new(NoHooks))?;
        self.gateway_handle = Some(gateway.handle());
        let stop = CancellationToken::new();
        let serving = gateway.serve(listener, stop.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "gateway failed");
            }
        });
        self.gateway = Some((stop, task));
        Ok(bound)
    }

    /// Prints every message of `mailbox` until a signal, acknowledging each to the store once
    /// it is printed and flushed, then shuts down in order: the gateway (browsers are told to
    /// go away, sessions end), the node (drain, then close), the HTTP endpoint, and last the
    /// store, so that every acknowledgement is written.
    pub(crate) async fn receive_until_signal(
        self,
        mailbox: Mailbox,
        json: bool,
        config: &DaemonConfig,
    ) -> anyhow::Result<()> {
        // Every mailbox is open now: peers' streams may come in.
        self.node.serve_streams();
        let signal = shutdown_signal();
        tokio::pin!(signal);
        let result = loop {
            tokio::select! {
                _ = &mut signal => break Ok(()),
                message = mailbox.recv() => match message {
                    Ok(message) => {
                        let mut batch = vec![message];
                        batch.extend(mailbox.try_recv_many(1023).unwrap_or_default());
                        if let Err(error) = print_batch(&batch, json) {
                            // Standard output is gone: stop; unprinted messages stay stored.
                            break Err(error);
                        }
                        for message in &batch {
                            message.ack();
                        }
                    }
                    Err(_) => break Ok(()),
                },
            }
        };
        drop(mailbox);
        if let Some((stop, task)) = self.gateway {
            stop.cancel();
            let _ = task.await;
        }
        self.node.shutdown(config.shutdown_grace).await;
        if let Some((stop, task)) = self.http {
            stop.cancel();
            let _ = task.await;
        }
        if let Some(store) = self.store {
            store.close();
        }
        result
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Prints the messages, one line each, and flushes: only then may they be acknowledged.
fn print_batch(batch: &[Message], json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for message in batch {
        let text = String::from_utf8_lossy(message.payload());
        if json {
            let mut line = serde_json::json!({
                "from": message.from().to_string(),
                "payload": text,
            });
            if let Some(id) = message.id() {
                line["id"] = id.into();
            }
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{text}")?;
        }
    }
    out.flush().context("writing to standard output")
}

/// Creates `dir` (and its parents) if it is missing. A directory made here is readable by its
/// owner only (0700 on Unix): it holds the node's secret key, every stored message and the
/// gateway's resume-token key. An existing directory keeps its permissions.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
