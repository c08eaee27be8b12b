//! A whole long-lived node, as `ferry run` and `ferry listen` run it, in the calling process:
//! the node with its key and durable store, the HTTP endpoint (`/health`, `/metrics`), the
//! browser gateway (WebSocket, and WebTransport on UDP), and the mailbox whose messages it hands out. [`Server::start`] binds
//! everything (port 0 is fine: the bound addresses are there to read), [`Server::run`] serves
//! until a [`CancellationToken`] is cancelled, then shuts down in order; [`run`] does both, as
//! mini-redis's `server::run`. Signals are the binary's business: it cancels the token on
//! SIGINT or SIGTERM, and tests cancel it themselves.

mod udp_port;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ferry::address::GrantId;
use ferry::{Address, BindError, Mailbox, Message, Node, NodeConfig, SecretKey};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterConfig;
use crate::config::Peer;
use crate::gateway::webtransport::{
    Listen as WebTransportListen, WebTransport, WebTransportConfig, WebTransportError,
};
use crate::gateway::{self, Gateway, GatewayConfig, GatewayHandle, NoHooks};
use crate::keyfile::KeyFileError;
use crate::store::{OpenStoreError, RedbStore, StoreConfig};

pub use udp_port::PORT_FILE;

/// What a server starts with: everything resolved (the binary lays flags over the config file
/// over defaults to make it).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The data directory of the key, the store and the UDP port (created at start), or
    /// `None`: a fresh key, nothing on disk, no store (then no gateway either).
    pub data_dir: Option<PathBuf>,
    /// The secret key file (created if missing); by default `key` in the data directory.
    pub key_file: Option<PathBuf>,
    /// Peers to connect to at start (one that cannot be reached is logged).
    pub peers: Vec<Peer>,
    /// Time given to messages in flight at shutdown.
    pub shutdown_grace: Duration,
    /// TCP address of `/health` and `/metrics`, or `None` for no HTTP endpoint.
    pub http: Option<SocketAddr>,
    /// Limits of the durable store.
    pub store: StoreConfig,
    /// The node's configuration (validated at start).
    pub node: NodeConfig,
    /// Where the browser gateway listens, and its configuration; `None`: no gateway.
    pub gateway: Option<(SocketAddr, GatewayConfig)>,
    /// The gateway's cluster (`--cluster`, the `cluster` and `cluster_*` keys): `None` (no
    /// servers) for a gateway alone.
    pub cluster: Option<ClusterConfig>,
    /// Where the gateway's WebTransport endpoint listens (UDP), and its configuration;
    /// `None`: WebSocket only. Nothing without `gateway`.
    pub webtransport: Option<(WebTransportListen, WebTransportConfig)>,
    /// The name of the mailbox whose messages the server hands out (`inbox` for `ferry run`,
    /// `listen` for `ferry listen`): durable, with the same address at every start, when
    /// there is a data directory.
    pub mailbox: String,
}

impl ServerConfig {
    /// A server with its data in `data_dir`, on the defaults: the node on a free loopback
    /// port, HTTP and the gateway on free loopback TCP ports, the mailbox `inbox` (what
    /// `ferry run` starts with no flags, but with port 0 every time).
    pub fn new(data_dir: PathBuf) -> Self {
        let defaults = crate::config::DaemonKeys::default();
        Self {
            data_dir: Some(data_dir),
            key_file: None,
            peers: Vec::new(),
            shutdown_grace: defaults.shutdown_grace,
            http: Some(defaults.http),
            store: StoreConfig::default(),
            node: NodeConfig::default(),
            gateway: defaults
                .gateway
                .map(|addr| (addr, GatewayConfig::default())),
            webtransport: defaults
                .webtransport
                .map(|listen| (listen, WebTransportConfig::default())),
            mailbox: "inbox".to_owned(),
            cluster: None,
        }
    }
}

/// Why a server could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The node's configuration is refused.
    #[error("invalid configuration: {0}")]
    Config(#[from] ferry::ConfigError),
    /// The data directory could not be created.
    #[error("creating data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file could not be read or created.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] OpenStoreError),
    /// The node could not bind.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The mailbox could not be opened in the store.
    #[error("opening the mailbox: {0}")]
    Mailbox(#[source] ferry::StoreError),
    /// A TCP listener (HTTP or gateway) could not be bound.
    #[error("binding the {what} on {addr}: {source}")]
    Listen {
        /// `HTTP endpoint` or `gateway`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gateway is configured but there is no data directory for its sessions.
    #[error("the gateway needs the durable store (a data directory)")]
    GatewayWithoutStore,
    /// The gateway could not start.
    #[error(transparent)]
    Gateway(#[from] gateway::StartError),
    /// The gateway could not join its cluster (NATS unreachable after every try, or its
    /// JetStream unusable).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::nats::ConnectError),
    /// The WebTransport endpoint could not start (its UDP port, its certificates).
    #[error(transparent)]
    WebTransport(#[from] WebTransportError),
    /// The messages could not be handed out (e.g. standard output is gone); those not handed
    /// out stay stored.
    #[error("handing out messages: {0}")]
    Output(#[source] std::io::Error),
}

/// A started server: bound, connected to its peers, not serving streams yet.
pub struct Server {
    node: Node,
    store: Option<Arc<RedbStore>>,
    /// Shared only with [`Grants`], which hold it weakly: [`Server::run`] drops the last
    /// strong reference, which closes the mailbox.
    mailbox: Arc<Mailbox>,
    /// Where HTTP is served, what stops it, and its task.
    http: Option<(SocketAddr, CancellationToken, JoinHandle<()>)>,
    /// Where the gateway is served, what drains it, and its task.
    gateway: Option<(SocketAddr, CancellationToken, JoinHandle<()>)>,
    /// Where WebTransport is served, what stops it (after the gateway's drain), its task.
    webtransport: Option<(WebTransportBound, CancellationToken, JoinHandle<()>)>,
    shutdown_grace: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("node", &self.node.id())
            .finish_non_exhaustive()
    }
}

/// Starts a server from `config` and runs it until `shutdown` is cancelled, handing each
/// batch of messages to `output` (see [`Server::run`]).
pub async fn run(
    config: ServerConfig,
    output: impl FnMut(&[Message]) -> std::io::Result<()>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    Server::start(config).await?.run(output, shutdown).await
}

impl Server {
    /// Starts: loads (or creates) the key, opens the store, binds the node (keeping its UDP
    /// port across restarts, see [`PORT_FILE`]), connects to the peers, opens the mailbox,
    /// and serves the gateway and HTTP. No peer's stream is taken before [`Server::run`], so
    /// that every durable mailbox is open first.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        config.node.validate()?;
        let (node, store) = match &config.data_dir {
            Some(dir) => {
                create_private_dir(dir).map_err(|source| ServerError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                let key_file = config.key_file.clone().unwrap_or_else(|| dir.join("key"));
                let key = crate::keyfile::load_or_generate(&key_file)?;
                let store = RedbStore::open(&dir.join("store.redb"), config.store.clone())?;
                let (node, _) = udp_port::bind_keeping_port(key, &config.node, dir).await?;
                (node, Some(Arc::new(store)))
            }
            None => {
                let key = match &config.key_file {
                    Some(path) => crate::keyfile::load_or_generate(path)?,
                    None => SecretKey::generate(),
                };
                let node = Node::builder(key)
                    .config(config.node.clone())
                    .paused()
                    .bind()
                    .await?;
                (node, None)
            }
        };
        for peer in &config.peers {
            node.add_peer_addr(peer.id, peer.addr);
            if let Err(error) = node.connect(peer.id, Some(peer.addr)).await {
                tracing::warn!(peer = %peer.id.short(), %error, "could not connect at start");
            }
        }
        let mailbox = match &store {
            Some(store) => {
                let id = store
                    .named_mailbox(&config.mailbox)
                    .map_err(ServerError::Mailbox)?;
                node.durable_mailbox(id, store.clone())
                    .map_err(ServerError::Mailbox)?
            }
            None => node.mailbox(),
        };
        let mut server = Self {
            node,
            store,
            mailbox: Arc::new(mailbox),
            http: None,
            gateway: None,
            webtransport: None,
            shutdown_grace: config.shutdown_grace,
        };
        // The gateway first, so that /metrics has its figures.
        let mut gateway_handle = None;
        if let Some((addr, gateway)) = config.gateway {
            let cluster = config.cluster.filter(|cluster| !cluster.servers.is_empty());
            gateway_handle = Some(
                server
                    .serve_gateway(addr, gateway, config.webtransport, cluster)
                    .await?,
            );
        }
        if let Some(addr) = config.http {
            server.serve_http(addr, gateway_handle).await?;
        }
        Ok(server)
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The address of the mailbox whose messages [`Server::run`] hands out.
    pub fn mailbox_address(&self) -> &Address {
        self.mailbox.address()
    }

    /// Mints and revokes grants of the mailbox whose messages [`Server::run`] hands out
    /// (docs/PROTOCOL.md §4.11), before and while it runs.
    pub fn grants(&self) -> Grants {
        Grants {
            mailbox: Arc::downgrade(&self.mailbox),
        }
    }

    /// Where `/health` and `/metrics` are served, if they are.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(addr, _, _)| *addr)
    }

    /// Where the gateway is served (WebSocket at `/ws`), if it is.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(|(addr, _, _)| *addr)
    }

    /// Where the gateway's WebTransport endpoint is served (UDP), if it is.
    pub fn webtransport(&self) -> Option<WebTransportBound> {
        self.webtransport.as_ref().map(|(bound, _, _)| *bound)
    }

    async fn serve_http(
        &mut self,
        addr: SocketAddr,
        gateway: Option<GatewayHandle>,
    ) -> Result<(), ServerError> {
        let listener = listen("HTTP endpoint", addr).await?;
        let bound = bound_addr("HTTP endpoint", addr, &listener)?;
        let stop = CancellationToken::new();
        let serving = crate::http::serve_with_gateway(
            listener,
            self.node.clone(),
            self.store.clone(),
            gateway,
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "HTTP endpoint failed");
            }
        });
        self.http = Some((bound, stop, task));
        Ok(())
    }

    /// Serves the gateway; the mailbox's address is put into the clients' config as `inbox`
    /// unless the config sets that key.
    async fn serve_gateway(
        &mut self,
        addr: SocketAddr,
        mut config: GatewayConfig,
        webtransport: Option<(WebTransportListen, WebTransportConfig)>,
        cluster: Option<ClusterConfig>,
    ) -> Result<GatewayHandle, ServerError> {
        let store = self.store.clone().ok_or(ServerError::GatewayWithoutStore)?;
        if let Some(object) = config.client_config.as_object_mut() {
            object
                .entry("inbox")
                .or_insert_with(|| self.mailbox.address().to_string().into());
        }
        let listener = listen("gateway", addr).await?;
        let bound = bound_addr("gateway", addr, &listener)?;
        let gateway = match cluster {
            Some(mut cluster) => {
                if cluster.advertise.is_none() {
                    cluster.advertise = Some(format!("ws://{bound}/ws"));
                }
                let cluster: Arc<dyn crate::cluster::Cluster> =
                    crate::cluster::nats::NatsCluster::connect(cluster).await?;
                Gateway::with_cluster(self.node.clone(), store, config, Arc::new(NoHooks), cluster)?
            }
            None => Gateway::new(self.node.clone(), store, config, Arc::new(NoHooks))?,
        };
        let handle = gateway.handle();
        if let Some((listen, config)) = webtransport {
            let (endpoint, own_port) = bind_webtransport(bound, listen, config)?;
            let bound = WebTransportBound {
                addr: endpoint
                    .local_addr()
                    .map_err(|source| WebTransportError::Bind {
                        addr: bound,
                        source,
                    })?,
                own_port,
            };
            let stop = CancellationToken::new();
            let task = tokio::spawn(gateway.serve_webtransport(endpoint, stop.clone()));
            self.webtransport = Some((bound, stop, task));
        }
        let stop = CancellationToken::new();
        let serving = gateway.serve(listener, stop.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "gateway failed");
            }
        });
        self.gateway = Some((bound, stop, task));
        Ok(handle)
    }

    /// Serves until `shutdown` is cancelled: hands every message of the mailbox to `output`
    /// in batches, and acknowledges a batch to the store once `output` returned `Ok` (a
    /// message is kept until it was handed out). Then shuts down in order: the gateway
    /// (browsers are told to go away), the node (drain for `shutdown_grace`, then close), the
    /// HTTP endpoint, and last the store, so that every acknowledgement is written.
    pub async fn run(
        self,
        mut output: impl FnMut(&[Message]) -> std::io::Result<()>,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        // Every mailbox is open now: peers' streams may come in.
        self.node.serve_streams();
        let mailbox = self.mailbox;
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                message = mailbox.recv() => match message {
                    Ok(message) => {
                        let mut batch = vec![message];
                        batch.extend(mailbox.try_recv_many(1023).unwrap_or_default());
                        if let Err(error) = output(&batch) {
                            // Unhanded messages stay stored.
                            break Err(ServerError::Output(error));
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
        if let Some((_, stop, task)) = self.gateway {
            stop.cancel();
            let _ = task.await;
        }
        // After the gateway's drain, which closed its WebTransport sessions too (1001).
        if let Some((_, stop, task)) = self.webtransport {
            stop.cancel();
            let _ = task.await;
        }
        self.node.shutdown(self.shutdown_grace).await;
        if let Some((_, stop, task)) = self.http {
            stop.cancel();
            let _ = task.await;
        }
        if let Some(store) = self.store {
            store.close();
        }
        result
    }
}

/// Where the WebTransport endpoint was bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebTransportBound {
    /// The UDP address.
    pub addr: SocketAddr,
    /// `"auto"` found the gateway's port number taken on UDP and bound a free port instead.
    pub own_port: bool,
}

/// Binds the WebTransport endpoint beside the gateway bound at `gateway`: at the gateway's IP
/// and port number (falling back to a free port, `own_port`), or where configured.
fn bind_webtransport(
    gateway: SocketAddr,
    listen: WebTransportListen,
    config: WebTransportConfig,
) -> Result<(WebTransport, bool), ServerError> {
    let mut names = vec!["localhost".to_owned()];
    let ip = match listen {
        WebTransportListen::At(addr) => addr.ip(),
        _ => gateway.ip(),
    };
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    let certificates = Arc::new(config.certificates(names)?);
    match listen {
        WebTransportListen::At(addr) => {
            Ok((WebTransport::bind(addr, certificates, config)?, false))
        }
        _ => match WebTransport::bind(gateway, certificates.clone(), config.clone()) {
            Ok(endpoint) => Ok((endpoint, false)),
            Err(WebTransportError::Bind { .. }) => {
                let free = SocketAddr::new(gateway.ip(), 0);
                Ok((WebTransport::bind(free, certificates, config)?, true))
            }
            Err(error) => Err(error.into()),
        },
    }
}

/// Grants of a [`Server`]'s mailbox: mint addresses under new grants, revoke grants
/// (docs/PROTOCOL.md §4.11) — also while the server runs, e.g. on commands read from standard
/// input. It does not keep the mailbox open: once the server has stopped, it refuses with
/// [`GrantError::Stopped`].
#[derive(Debug, Clone)]
pub struct Grants {
    mailbox: Weak<Mailbox>,
}

/// Why [`Grants`] could not mint or revoke.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The server has stopped: its mailbox is closed.
    #[error("the server has stopped")]
    Stopped,
    /// The revocation is in force but could not be stored, so it would not outlast a restart.
    #[error("storing the revocation: {0}")]
    Store(#[source] ferry::StoreError),
    /// The mailbox keeps `max_revocations` revoked grants already: nothing was revoked.
    #[error("the mailbox has {max} revoked grants already (max_revocations)")]
    TooManyRevocations {
        /// The bound, `max_revocations`.
        max: usize,
    },
}

impl Grants {
    /// An address of the mailbox under a new grant, expiring at `expires` (unix seconds) if
    /// given; its grant id is [`Address::grant`]. See [`Mailbox::grant`].
    pub fn grant(&self, expires: Option<u64>) -> Result<Address, GrantError> {
        let mailbox = self.mailbox.upgrade().ok_or(GrantError::Stopped)?;
        Ok(mailbox.grant(expires))
    }

    /// Revokes `grant` and everything derived from its addresses; for a durable mailbox,
    /// returns once the revocation is stored. See [`Mailbox::revoke`].
    pub async fn revoke(&self, grant: GrantId) -> Result<(), GrantError> {
        let mailbox = self.mailbox.upgrade().ok_or(GrantError::Stopped)?;
        mailbox.revoke(grant).await.map_err(|error| match error {
            ferry::RevokeError::TooMany { max } => GrantError::TooManyRevocations { max },
            ferry::RevokeError::Store(error) => GrantError::Store(error),
            // A kind this version does not name: said as a store failure.
            other => GrantError::Store(ferry::StoreError::Failed(other.to_string())),
        })
    }
}

async fn listen(
    what: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { what, addr, source })
}

fn bound_addr(
    what: &'static str,
    addr: SocketAddr,
    listener: &tokio::net::TcpListener,
) -> Result<SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|source| ServerError::Listen { what, addr, source })
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
