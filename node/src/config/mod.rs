//! The daemon's TOML config file (`ferry run --config PATH`): one flat list of optional keys,
//! read straight into the structs they configure — the daemon's own keys ([`DaemonKeys`]),
//! [`ferry::NodeConfig`], the store's [`StoreConfig`] after the prefix `store_`, and the
//! gateway's [`GatewayConfig`], [`AuthConfig`], [`Permissions`] and [`Limits`] after the
//! prefix `gateway_`, and the WebTransport endpoint's [`WebTransportConfig`] after
//! `gateway_webtransport_`. Each key is described once, on its field; docs/CONFIG.md is checked
//! against the fields and their defaults (see `reference`), and `ferry config-example` is
//! made from docs/CONFIG.md.
//!
//! Durations are strings with a unit, `"500ms"`, `"10s"`, `"5m"`, `"1h"` (a bare number in
//! the string means seconds); sizes and counts are integers (sizes in bytes). Relative paths
//! are relative to the directory of the config file.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod peer;
mod reference;
mod sections;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry::NodeConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

pub use peer::{Peer, PeerError};
pub use reference::example;

use crate::cluster::ClusterConfig;
use crate::gateway::webtransport::{Listen as WebTransportListen, WebTransportConfig};
use crate::gateway::{AuthConfig, GatewayConfig, GatewayConfigError, Limits, Permissions};
use crate::store::StoreConfig;

/// How long `run` and `listen` give messages in flight at shutdown, unless configured.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Where `run` serves /health and /metrics, unless configured: a free loopback port.
pub const DEFAULT_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
/// Where `run` serves the browser gateway, unless configured: a free loopback port.
pub const DEFAULT_GATEWAY: SocketAddr = DEFAULT_HTTP;

/// The daemon's own keys: where it keeps its files, whom it connects to, its HTTP endpoint
/// and gateway, and how long it gives messages at shutdown.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonKeys {
    /// The data directory, created at start (mode 0700): the key, the store (`store.redb`)
    /// and the UDP port of the last run (`udp-port`). Default: `$FERRY_DATA`, else
    /// `$XDG_DATA_HOME/ferry`, else `~/.local/share/ferry`.
    pub data_dir: Option<PathBuf>,
    /// The node's secret key, created (mode 0600) if missing. Default: `key` in the data
    /// directory.
    pub key_file: Option<PathBuf>,
    /// Nodes to connect to at start; one that cannot be reached is logged. Default none.
    pub peers: Vec<Peer>,
    /// At shutdown, time for messages in flight to be acknowledged (and again for streams to
    /// close); also the gateway's drain. Default 2 s.
    #[serde(with = "ferry::duration")]
    pub shutdown_grace: Duration,
    /// TCP address of `/health` and `/metrics`; port 0 picks a free port. Default
    /// `127.0.0.1:0`.
    pub http: SocketAddr,
    /// TCP address of the browser gateway, or `None` (written `"off"`) for none. Default
    /// `127.0.0.1:0`.
    #[serde(deserialize_with = "addr_or_off")]
    pub gateway: Option<SocketAddr>,
    /// The NATS servers of the gateway's cluster (`nats://HOST:PORT`, several for failover;
    /// the `cluster_*` keys configure it). Default none: the gateway alone.
    pub cluster: Vec<String>,
    /// UDP address of the gateway's WebTransport endpoint: `"auto"` (the gateway's IP and TCP
    /// port number, on UDP; a free UDP port when that one is taken), `"HOST:PORT"`, or `None`
    /// (written `"off"`). No gateway, no WebTransport. Default `"auto"`.
    #[serde(deserialize_with = "webtransport_or_off")]
    pub webtransport: Option<WebTransportListen>,
}

impl Default for DaemonKeys {
    fn default() -> Self {
        Self {
            data_dir: None,
            key_file: None,
            peers: Vec::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            http: DEFAULT_HTTP,
            gateway: Some(DEFAULT_GATEWAY),
            cluster: Vec::new(),
            webtransport: Some(WebTransportListen::Gateway),
        }
    }
}

/// `"HOST:PORT"`, or `"off"` for none (the `gateway` key and the `--gateway` flag).
pub fn parse_addr_or_off(text: &str) -> Result<Option<SocketAddr>, std::net::AddrParseError> {
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some)
}

fn addr_or_off<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_addr_or_off(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?}: {e} (expected HOST:PORT or \"off\")"))
    })
}

/// `"auto"`, `"HOST:PORT"`, or `"off"` for none (the `webtransport` key and the
/// `--webtransport` flag).
pub fn parse_webtransport_or_off(
    text: &str,
) -> Result<Option<WebTransportListen>, std::net::AddrParseError> {
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some)
}

fn webtransport_or_off<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<WebTransportListen>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_webtransport_or_off(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?}: {e} (expected \"auto\", HOST:PORT or \"off\")"
        ))
    })
}

/// A config file, read: every key that is set, the default for every other one.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FileConfig {
    /// The daemon's own keys.
    pub daemon: DaemonKeys,
    /// The node's keys (not validated yet: see [`NodeConfig::validate`]).
    pub node: NodeConfig,
    /// The keys that start with `store_`.
    pub store: StoreConfig,
    /// The keys that start with `gateway_`; `drain` is `shutdown_grace`. Not validated yet:
    /// see [`FileConfig::gateway_config`].
    pub gateway: GatewayConfig,
    /// The `cluster` key (its servers) and the keys that start with `cluster_`. Not
    /// validated yet: see [`FileConfig::cluster_config`].
    pub cluster: ClusterConfig,
    /// The keys that start with `gateway_webtransport_` (validated when the endpoint binds).
    pub webtransport: WebTransportConfig,
}

/// Why a config file cannot be used. Each renders as one line naming the file (and, where
/// known, the line and the key).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read: missing, unreadable, or not UTF-8.
    #[error("config file {}: {error}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error (not a `source`: the message already includes it).
        error: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type or form.
    #[error("config file {}{}: {}", path.display(), location(failure.line, failure.key.as_deref()), failure.message)]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Where and what.
        failure: ParseFailure,
    },
    /// Each value is well-formed, but together they are not a usable node configuration.
    #[error("config file {}: invalid configuration: {error}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What `NodeConfig::validate` refused.
        error: ferry::ConfigError,
    },
    /// The gateway's keys are not a usable gateway configuration.
    #[error("config file {}: invalid gateway configuration: {error}", path.display())]
    Gateway {
        /// The config file.
        path: PathBuf,
        /// What `GatewayConfig::validate` refused.
        error: GatewayConfigError,
    },
    /// The cluster's keys are not a usable cluster configuration.
    #[error("config file {}: invalid cluster configuration: {error}", path.display())]
    Cluster {
        /// The config file.
        path: PathBuf,
        /// What `ClusterConfig::validate` refused.
        error: crate::cluster::config::ClusterConfigError,
    },
}

fn location(line: Option<usize>, key: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(line) = line {
        out.push_str(&format!(", line {line}"));
    }
    if let Some(key) = key {
        out.push_str(&format!(", key `{key}`"));
    }
    out
}

/// A TOML error turned into one line: where, which key, what.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseFailure {
    /// The line (from 1), if the parser gave a position.
    pub line: Option<usize>,
    /// The top-level key whose name or value holds the error, if any.
    pub key: Option<String>,
    /// What is wrong, on one line.
    pub message: String,
}

impl FileConfig {
    /// Parses config text.
    pub fn parse(text: &str) -> Result<Self, ParseFailure> {
        let failure = |error: toml::de::Error| failure(text, &error);
        // Not TOML: any deserializer says where.
        let keys = match sections::keys(text) {
            Some(keys) => keys,
            None => {
                return Err(failure(read::<DaemonKeys>(text).err().unwrap_or_else(
                    || <toml::de::Error as serde::de::Error>::custom("not TOML"),
                )))
            }
        };
        let owner = Owner::new();
        let part = |section: Section| sections::only(text, &keys, |key| owner.keep(section, key));
        let daemon: DaemonKeys = read(&part(Section::Daemon)).map_err(failure)?;
        let node: NodeConfig = read(&part(Section::Node)).map_err(failure)?;
        let store: StoreConfig = read(&part(Section::Store)).map_err(failure)?;
        let mut gateway_config: GatewayConfig = read(&part(Section::Gateway)).map_err(failure)?;
        gateway_config.auth = read(&part(Section::GatewayAuth)).map_err(failure)?;
        gateway_config.permissions = read(&part(Section::GatewayPermissions)).map_err(failure)?;
        gateway_config.limits = read(&part(Section::GatewayLimits)).map_err(failure)?;
        gateway_config.drain = daemon.shutdown_grace;
        let mut cluster: ClusterConfig = read(&part(Section::Cluster)).map_err(failure)?;
        cluster.servers = daemon.cluster.clone();
        let webtransport: WebTransportConfig =
            read(&part(Section::GatewayWebTransport)).map_err(failure)?;
        Ok(Self {
            daemon,
            node,
            store,
            gateway: gateway_config,
            cluster,
            webtransport,
        })
    }

    /// Reads and parses the file at `path`; relative paths in it become relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut file = Self::parse(&text).map_err(|failure| ConfigFileError::Parse {
            path: path.to_owned(),
            failure,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for relative in [
            &mut file.daemon.data_dir,
            &mut file.daemon.key_file,
            &mut file.gateway.static_dir,
            &mut file.webtransport.cert,
            &mut file.webtransport.key,
        ]
        .into_iter()
        .flatten()
        {
            if relative.is_relative() {
                *relative = base.join(&*relative);
            }
        }
        Ok(file)
    }

    /// The cluster's configuration, validated; `None` without servers (no cluster).
    pub fn cluster_config(
        &self,
    ) -> Result<Option<ClusterConfig>, crate::cluster::config::ClusterConfigError> {
        if self.cluster.servers.is_empty() {
            return Ok(None);
        }
        self.cluster.validate()?;
        Ok(Some(self.cluster.clone()))
    }

    /// The gateway's configuration, validated.
    pub fn gateway_config(&self) -> Result<GatewayConfig, GatewayConfigError> {
        self.gateway.validate()?;
        Ok(self.gateway.clone())
    }
}

/// Which struct reads a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Daemon,
    Node,
    Store,
    Gateway,
    GatewayAuth,
    GatewayPermissions,
    GatewayLimits,
    Cluster,
    GatewayWebTransport,
}

/// The prefix of the store's keys.
const STORE_PREFIX: &str = "store_";
/// The prefix of the gateway's keys.
const GATEWAY_PREFIX: &str = "gateway_";
/// The prefix of the cluster's keys.
const CLUSTER_PREFIX: &str = "cluster_";
/// The prefix of the WebTransport endpoint's keys.
const WEBTRANSPORT_PREFIX: &str = "gateway_webtransport_";

/// Each section with the prefix of its keys and its field names.
struct Owner {
    sections: Vec<(Section, &'static str, &'static [&'static str])>,
}

impl Owner {
    fn new() -> Self {
        use sections::field_names;
        Self {
            sections: vec![
                (Section::Daemon, "", field_names::<DaemonKeys>()),
                (Section::Node, "", field_names::<NodeConfig>()),
                (Section::Store, STORE_PREFIX, field_names::<StoreConfig>()),
                (
                    Section::Gateway,
                    GATEWAY_PREFIX,
                    field_names::<GatewayConfig>(),
                ),
                (
                    Section::GatewayAuth,
                    GATEWAY_PREFIX,
                    field_names::<AuthConfig>(),
                ),
                (
                    Section::GatewayPermissions,
                    GATEWAY_PREFIX,
                    field_names::<Permissions>(),
                ),
                (
                    Section::GatewayLimits,
                    GATEWAY_PREFIX,
                    field_names::<Limits>(),
                ),
                (
                    Section::Cluster,
                    CLUSTER_PREFIX,
                    field_names::<ClusterConfig>(),
                ),
                (
                    Section::GatewayWebTransport,
                    WEBTRANSPORT_PREFIX,
                    field_names::<WebTransportConfig>(),
                ),
            ],
        }
    }

    /// The section of `key` and the length of its prefix; `None` for a key nobody reads.
    fn of(&self, key: &str) -> Option<(Section, usize)> {
        self.sections.iter().find_map(|(section, prefix, fields)| {
            let rest = key.strip_prefix(prefix)?;
            fields.contains(&rest).then_some((*section, prefix.len()))
        })
    }

    /// Whether `section`'s copy keeps `key`, and how much prefix it blanks: its own keys, and
    /// for the node's copy the unknown ones too (to be reported).
    fn keep(&self, section: Section, key: &str) -> Option<usize> {
        match self.of(key) {
            Some((owner, prefix)) if owner == section => Some(prefix),
            None if section == Section::Node => Some(0),
            _ => None,
        }
    }

    /// Every key of the file: the field names of each section with its prefix.
    #[cfg(test)]
    fn every_key(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|(_, prefix, fields)| fields.iter().map(move |key| format!("{prefix}{key}")))
            .collect()
    }
}

fn read<T: DeserializeOwned>(text: &str) -> Result<T, toml::de::Error> {
    toml::from_str(text)
}

/// `error` on one line, with the line and key of `text` it is at.
fn failure(text: &str, error: &toml::de::Error) -> ParseFailure {
    let at = error.span().map(|span| span.start);
    let line = at.map(|at| line_of(text, at));
    let key = at.and_then(|at| key_at(text, at));
    let mut message = error.message().replace('\n', " ").trim().to_owned();
    if message.starts_with("unknown field") {
        // serde lists every accepted key; point to the list instead.
        message = match &key {
            Some(key) => format!("unknown key `{key}` (`ferry config-example` lists every key)"),
            None => format!("{message} (`ferry config-example` lists every key)"),
        };
    }
    ParseFailure { line, key, message }
}

/// The line (from 1) of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(at)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The top-level key whose name or value covers byte offset `at`.
fn key_at(text: &str, at: usize) -> Option<String> {
    let (table, _errors) = toml::de::DeTable::parse_recoverable(text);
    table
        .get_ref()
        .iter()
        .find(|(key, value)| key.span().contains(&at) || value.span().contains(&at))
        .map(|(key, _)| key.get_ref().to_string())
}

#[cfg(test)]
mod tests;
