//! What `run` and `listen` start with: the flags laid over the config file
//! ([`ferry_node::config`], which reads it) over the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use ferry::{NodeConfig, RelayAccess};
use ferry_node::cluster::ClusterConfig;
use ferry_node::config::{ConfigFileError, FileConfig, Peer};
use ferry_node::gateway::GatewayConfig;
use ferry_node::server::ServerConfig;
use ferry_node::store::StoreConfig;

use ferry_node::gateway::webtransport::{Listen as WebTransportListen, WebTransportConfig};

use crate::cli::{GatewayListen, NodeArgs, WebTransportFlag};

/// What `run` and `listen` start with: flags over the config file over defaults.
#[derive(Debug, Clone)]
pub(crate) struct DaemonConfig {
    /// The data directory (created at start).
    pub(crate) data_dir: PathBuf,
    /// The secret key file (created if missing).
    pub(crate) key_file: PathBuf,
    /// Peers to connect to at start.
    pub(crate) peers: Vec<Peer>,
    /// Time given to messages in flight at shutdown.
    pub(crate) shutdown_grace: Duration,
    /// Whether a data directory or key was given (flag or file): `listen` then keeps its key,
    /// mailbox and messages there; otherwise it runs with a fresh key and nothing on disk.
    pub(crate) persistent: bool,
    /// TCP address of /health and /metrics (`run`).
    pub(crate) http: SocketAddr,
    /// Limits of the durable store.
    pub(crate) store: StoreConfig,
    /// The node's configuration, validated.
    pub(crate) node: NodeConfig,
    /// Where the browser gateway listens (`run`), and its configuration; `None`: off.
    pub(crate) gateway: Option<(SocketAddr, GatewayConfig)>,
    /// The gateway's cluster (`run`); `None`: the gateway alone.
    pub(crate) cluster: Option<ClusterConfig>,
    /// Where its WebTransport endpoint listens, and its configuration; `None`: off.
    pub(crate) webtransport: Option<(WebTransportListen, WebTransportConfig)>,
}

impl DaemonConfig {
    /// Reads `args.config` if given and lays the flags over it.
    pub(crate) fn load(args: &NodeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let daemon = &file.daemon;
        let data_dir = match (&args.data, &daemon.data_dir) {
            (Some(dir), _) | (None, Some(dir)) => dir.clone(),
            (None, None) => default_data_dir()?,
        };
        let key_file = args
            .key
            .clone()
            .or_else(|| daemon.key_file.clone())
            .unwrap_or_else(|| data_dir.join("key"));
        let peers = if args.peers.is_empty() {
            daemon.peers.clone()
        } else {
            args.peers.clone()
        };
        let persistent = args.data.is_some()
            || args.key.is_some()
            || daemon.data_dir.is_some()
            || daemon.key_file.is_some();
        let mut node = file.node.clone();
        if let Some(listen) = args.listen {
            node.listen = listen;
        }
        if !args.relays.is_empty() {
            node.relays = args
                .relays
                .iter()
                .map(|peer| (peer.id, peer.addr))
                .collect();
        }
        if args.serve_relay {
            node.relay = RelayAccess::Any;
        }
        if let Err(error) = node.validate() {
            return Err(match &args.config {
                Some(path) => ConfigFileError::Invalid {
                    path: path.clone(),
                    error,
                }
                .into(),
                None => anyhow!("invalid configuration: {error}"),
            });
        }
        let gateway = match args
            .gateway
            .map_or(daemon.gateway, |GatewayListen(addr)| addr)
        {
            None => None,
            Some(addr) => {
                let config = file.gateway_config().map_err(|error| match &args.config {
                    Some(path) => anyhow::Error::from(ConfigFileError::Gateway {
                        path: path.clone(),
                        error,
                    }),
                    None => anyhow!("invalid gateway configuration: {error}"),
                })?;
                Some((addr, config))
            }
        };
        let mut cluster_file = file.clone();
        if !args.cluster.is_empty() {
            cluster_file.cluster.servers = args.cluster.clone();
        }
        let cluster = cluster_file
            .cluster_config()
            .map_err(|error| match &args.config {
                Some(path) => anyhow::Error::from(ConfigFileError::Cluster {
                    path: path.clone(),
                    error,
                }),
                None => anyhow!("invalid cluster configuration: {error}"),
            })?;
        let webtransport = args
            .webtransport
            .map_or(daemon.webtransport, |WebTransportFlag(listen)| listen)
            .map(|listen| (listen, file.webtransport.clone()));
        if let Some((_, config)) = &webtransport {
            if let Err(error) = config.validate() {
                return Err(match &args.config {
                    Some(path) => anyhow!("config file {}: {error}", path.display()),
                    None => anyhow!("{error}"),
                });
            }
        }
        Ok(Self {
            cluster,
            gateway,
            webtransport,
            data_dir,
            key_file,
            peers,
            shutdown_grace: daemon.shutdown_grace,
            persistent,
            http: args.http.unwrap_or(daemon.http),
            store: file.store.clone(),
            node,
        })
    }
}

impl DaemonConfig {
    /// The server of `ferry run` (`durable`: always with its data directory; with HTTP and
    /// the gateway; mailbox `inbox`) or of `ferry listen` (its data directory only when one
    /// was configured; mailbox `listen`; no HTTP, no gateway).
    pub(crate) fn server(&self, run: bool) -> ServerConfig {
        let mut server = ServerConfig::new(self.data_dir.clone());
        if run || self.persistent {
            server.key_file = Some(self.key_file.clone());
        } else {
            server.data_dir = None;
        }
        server.peers = self.peers.clone();
        server.shutdown_grace = self.shutdown_grace;
        server.store = self.store.clone();
        server.node = self.node.clone();
        if run {
            server.http = Some(self.http);
            server.gateway = self.gateway.clone();
            server.cluster = self.cluster.clone();
            server.webtransport = self.webtransport.clone();
        } else {
            server.http = None;
            server.gateway = None;
            server.webtransport = None;
            server.mailbox = "listen".to_owned();
        }
        server
    }
}

/// `$FERRY_DATA`, else `$XDG_DATA_HOME/ferry`, else `~/.local/share/ferry`.
pub(crate) fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRY_DATA") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("ferry"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set; pass --data"))?;
    Ok(PathBuf::from(home).join(".local/share/ferry"))
}
