//! The daemon's TOML config file (`ferry run --config PATH`): every [`NodeConfig`] field plus
//! the daemon's own keys, all optional. Precedence: a flag, then the file, then the default.
//! Every key, with its default and unit, is listed in docs/CONFIG.md and printed by
//! `ferry config-example`.
//!
//! Durations are strings with a unit, `"500ms"`, `"10s"`, `"5m"`, `"1h"` (a bare number in
//! the string means seconds); sizes and counts are integers (sizes in bytes). Relative paths
//! are relative to the directory of the config file.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use ferry::{Admission, NodeConfig, NodeId, RelayAccess};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::cli::NodeArgs;
use crate::duration::{format_duration, parse_duration};
use crate::peer::Peer;
use ferry_node::gateway::{AuthConfig, GatewayConfig, Limits, Permissions, StaticToken};
use ferry_node::store::StoreConfig;

/// How long `run` and `listen` give messages in flight at shutdown, unless configured.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Where `run` serves /health and /metrics, unless configured: a free loopback port.
pub(crate) const DEFAULT_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
/// Where `run` serves the browser gateway, unless configured: a free loopback port.
pub(crate) const DEFAULT_GATEWAY: SocketAddr = DEFAULT_HTTP;

/// The config file as written: every key optional.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// The data directory.
    pub(crate) data_dir: Option<PathBuf>,
    /// The secret key file.
    pub(crate) key_file: Option<PathBuf>,
    /// Peers to connect to at start.
    pub(crate) peers: Option<Vec<Peer>>,
    /// Time given to messages in flight at shutdown.
    pub(crate) shutdown_grace: Option<TomlDuration>,
    /// TCP address of /health and /metrics.
    pub(crate) http: Option<SocketAddr>,
    /// [`StoreConfig::max_pending_per_mailbox`].
    pub(crate) store_max_pending: Option<u64>,
    /// [`StoreConfig::run_ttl`].
    pub(crate) store_run_ttl: Option<TomlDuration>,
    /// [`NodeConfig::listen`].
    pub(crate) listen: Option<SocketAddr>,
    /// [`NodeConfig::advertise`].
    pub(crate) advertise: Option<Vec<SocketAddr>>,
    /// [`NodeConfig::idle_timeout`].
    pub(crate) idle_timeout: Option<TomlDuration>,
    /// [`NodeConfig::keep_alive`].
    pub(crate) keep_alive: Option<TomlDuration>,
    /// [`NodeConfig::dial_timeout`].
    pub(crate) dial_timeout: Option<TomlDuration>,
    /// [`NodeConfig::max_message_size`].
    pub(crate) max_message_size: Option<usize>,
    /// [`NodeConfig::mailbox_capacity`].
    pub(crate) mailbox_capacity: Option<usize>,
    /// [`NodeConfig::send_window`].
    pub(crate) send_window: Option<usize>,
    /// [`NodeConfig::send_timeout`].
    pub(crate) send_timeout: Option<TomlDuration>,
    /// [`NodeConfig::outbox_ttl`].
    pub(crate) outbox_ttl: Option<TomlDuration>,
    /// [`NodeConfig::monitor_grace`].
    pub(crate) monitor_grace: Option<TomlDuration>,
    /// [`NodeConfig::call_timeout`].
    pub(crate) call_timeout: Option<TomlDuration>,
    /// [`NodeConfig::stream_idle_timeout`].
    pub(crate) stream_idle_timeout: Option<TomlDuration>,
    /// [`NodeConfig::duplicate_grace`].
    pub(crate) duplicate_grace: Option<TomlDuration>,
    /// [`NodeConfig::open_timeout`].
    pub(crate) open_timeout: Option<TomlDuration>,
    /// [`NodeConfig::max_connections`].
    pub(crate) max_connections: Option<usize>,
    /// [`NodeConfig::max_incoming_streams`].
    pub(crate) max_incoming_streams: Option<u32>,
    /// [`NodeConfig::initial_incoming_streams`].
    pub(crate) initial_incoming_streams: Option<u32>,
    /// [`NodeConfig::max_dedup_entries`].
    pub(crate) max_dedup_entries: Option<usize>,
    /// [`NodeConfig::handshake_rate_per_ip`], per second.
    pub(crate) handshake_rate_per_ip: Option<u32>,
    /// [`NodeConfig::frame_timeout`].
    pub(crate) frame_timeout: Option<TomlDuration>,
    /// [`NodeConfig::receive_window`], bytes.
    pub(crate) receive_window: Option<usize>,
    /// [`NodeConfig::max_buffered_per_peer`], bytes.
    pub(crate) max_buffered_per_peer: Option<usize>,
    /// [`NodeConfig::max_buffered_bytes`], bytes.
    pub(crate) max_buffered_bytes: Option<usize>,
    /// [`NodeConfig::max_violations`].
    pub(crate) max_violations: Option<u32>,
    /// [`NodeConfig::ban_duration`].
    pub(crate) ban_duration: Option<TomlDuration>,
    /// [`NodeConfig::admission`]: `"any"`, `"nobody"` or a list of node ids.
    pub(crate) admission: Option<NodeSet>,
    /// [`NodeConfig::relay`]: `"nobody"`, `"any"` or a list of node ids.
    pub(crate) relay: Option<NodeSet>,
    /// [`NodeConfig::relay_rate`], bytes per second.
    pub(crate) relay_rate: Option<u64>,
    /// [`NodeConfig::relays`].
    pub(crate) relays: Option<Vec<Peer>>,
    /// [`NodeConfig::hole_punching`].
    pub(crate) hole_punching: Option<bool>,
    /// [`NodeConfig::max_monitors_per_peer`].
    pub(crate) max_monitors_per_peer: Option<usize>,
    /// TCP address of the browser gateway, or `"off"`.
    pub(crate) gateway: Option<GatewayListen>,
    /// [`GatewayConfig::session_ttl`].
    pub(crate) gateway_session_ttl: Option<TomlDuration>,
    /// [`GatewayConfig::origins`].
    pub(crate) gateway_origins: Option<Vec<String>>,
    /// [`GatewayConfig::client_config`]: a table.
    pub(crate) gateway_client_config: Option<serde_json::Value>,
    /// [`GatewayConfig::static_dir`].
    pub(crate) gateway_static_dir: Option<PathBuf>,
    /// [`AuthConfig::tokens`].
    pub(crate) gateway_tokens: Option<Vec<StaticToken>>,
    /// [`AuthConfig::jwt_hs256_secret`], as text.
    pub(crate) gateway_jwt_hs256_secret: Option<String>,
    /// [`AuthConfig::jwt_ed25519_public_key`], base64 or base64url of 32 bytes.
    pub(crate) gateway_jwt_ed25519_public_key: Option<String>,
    /// [`AuthConfig::jwt_audience`].
    pub(crate) gateway_jwt_audience: Option<String>,
    /// [`Permissions::join`].
    pub(crate) gateway_join: Option<Vec<String>>,
    /// [`Permissions::publish`].
    pub(crate) gateway_publish: Option<Vec<String>>,
    /// [`Permissions::direct`].
    pub(crate) gateway_direct: Option<bool>,
    /// [`Limits::max_connections`].
    pub(crate) gateway_max_connections: Option<usize>,
    /// [`Limits::max_sessions`].
    pub(crate) gateway_max_sessions: Option<usize>,
    /// [`Limits::max_connection_age`]: a duration or `"off"`.
    pub(crate) gateway_max_connection_age: Option<DurationOrOff>,
    /// [`Limits::idle_timeout`].
    pub(crate) gateway_idle_timeout: Option<TomlDuration>,
    /// [`Limits::ping_interval`].
    pub(crate) gateway_ping_interval: Option<TomlDuration>,
    /// [`Limits::rate_limit`].
    pub(crate) gateway_rate_limit: Option<u32>,
    /// [`Limits::rate_window`].
    pub(crate) gateway_rate_window: Option<TomlDuration>,
    /// [`Limits::max_message_size`].
    pub(crate) gateway_max_message_size: Option<usize>,
    /// [`Limits::max_queue_bytes`].
    pub(crate) gateway_max_queue_bytes: Option<usize>,
    /// [`Limits::write_timeout`].
    pub(crate) gateway_write_timeout: Option<TomlDuration>,
    /// [`Limits::connection_rate`].
    pub(crate) gateway_connection_rate: Option<u32>,
    /// [`Limits::max_channels_per_session`].
    pub(crate) gateway_max_channels: Option<usize>,
    /// [`Limits::max_inflight`].
    pub(crate) gateway_max_inflight: Option<usize>,
    /// [`Limits::max_call_timeout`].
    pub(crate) gateway_max_call_timeout: Option<TomlDuration>,
    /// [`Limits::max_remembered_answers`].
    pub(crate) gateway_max_remembered_answers: Option<usize>,
    /// [`Limits::max_remembered_answer_bytes`].
    pub(crate) gateway_max_remembered_answer_bytes: Option<usize>,
}

/// Where the gateway listens: a TCP address, or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct GatewayListen(pub(crate) Option<SocketAddr>);

impl std::str::FromStr for GatewayListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "off" {
            return Ok(Self(None));
        }
        text.parse()
            .map(|addr| Self(Some(addr)))
            .map_err(|e| format!("{text:?}: {e} (expected HOST:PORT or \"off\")"))
    }
}

impl TryFrom<String> for GatewayListen {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// A duration, or `"off"` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct DurationOrOff(pub(crate) Option<Duration>);

impl TryFrom<String> for DurationOrOff {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        if text == "off" {
            return Ok(Self(None));
        }
        parse_duration(&text).map(|d| Self(Some(d)))
    }
}

/// A duration written as a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TomlDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for TomlDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = TomlDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string such as "10s" or "500ms""#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<TomlDuration, E> {
                parse_duration(text).map(TomlDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// A set of peers (`admission`, `relay`): `"any"`, `"nobody"`, or a list of node ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeSet {
    /// Every peer.
    Any,
    /// No peer (the same as an empty list).
    Nobody,
    /// These nodes.
    Only(Vec<NodeId>),
}

impl NodeSet {
    fn ids(ids: &[NodeId]) -> HashSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn admission(&self) -> Admission {
        match self {
            Self::Any => Admission::Any,
            Self::Nobody => Admission::Only(HashSet::new()),
            Self::Only(ids) => Admission::Only(Self::ids(ids)),
        }
    }

    fn relay(&self) -> RelayAccess {
        match self {
            Self::Any => RelayAccess::Any,
            Self::Nobody => RelayAccess::Nobody,
            Self::Only(ids) => RelayAccess::Only(Self::ids(ids)),
        }
    }
}

impl<'de> Deserialize<'de> for NodeSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeSetVisitor;
        impl<'de> Visitor<'de> for NodeSetVisitor {
            type Value = NodeSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""any", "nobody" or a list of node ids"#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<NodeSet, E> {
                match text {
                    "any" => Ok(NodeSet::Any),
                    "nobody" => Ok(NodeSet::Nobody),
                    _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeSet, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<NodeId>()? {
                    ids.push(id);
                }
                Ok(NodeSet::Only(ids))
            }
        }
        deserializer.deserialize_any(NodeSetVisitor)
    }
}

/// Why a config file cannot be used. Each renders as one line naming the file (and, where
/// known, the line and the key).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigFileError {
    /// The file could not be read: missing, unreadable, or not UTF-8.
    #[error("config file {}: {error}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error (not a `source`: the message already includes it).
        error: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type or form.
    #[error("config file {}{}: {message}", path.display(), location(*line, key.as_deref()))]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The line (from 1) the error is on, if known.
        line: Option<usize>,
        /// The top-level key the error is in, if known.
        key: Option<String>,
        /// What is wrong.
        message: String,
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
    #[error("config file {}: invalid gateway configuration: {message}", path.display())]
    Gateway {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
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
pub(crate) struct ParseFailure {
    /// The line (from 1), if the parser gave a position.
    pub(crate) line: Option<usize>,
    /// The top-level key whose name or value holds the error, if any.
    pub(crate) key: Option<String>,
    /// What is wrong, on one line.
    pub(crate) message: String,
}

impl FileConfig {
    /// Parses config text.
    pub(crate) fn parse(text: &str) -> Result<Self, ParseFailure> {
        toml::from_str(text).map_err(|error| {
            let at = error.span().map(|span| span.start);
            let line = at.map(|at| line_of(text, at));
            let key = at.and_then(|at| key_at(text, at));
            let mut message = error.message().replace('\n', " ").trim().to_owned();
            if message.starts_with("unknown field") {
                // serde lists every accepted key; point to the list instead.
                message = match &key {
                    Some(key) => {
                        format!("unknown key `{key}` (`ferry config-example` lists every key)")
                    }
                    None => format!("{message} (`ferry config-example` lists every key)"),
                };
            }
            ParseFailure { line, key, message }
        })
    }

    /// Reads and parses the file at `path`; relative paths in it become relative to its
    /// directory.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut file = Self::parse(&text).map_err(|failure| ConfigFileError::Parse {
            path: path.to_owned(),
            line: failure.line,
            key: failure.key,
            message: failure.message,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for relative in [
            &mut file.data_dir,
            &mut file.key_file,
            &mut file.gateway_static_dir,
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

    /// The node configuration: each key that is set, the default for every other one.
    pub(crate) fn node_config(&self) -> NodeConfig {
        let default = NodeConfig::default();
        let duration = |value: Option<TomlDuration>, default: Duration| {
            value.map_or(default, |TomlDuration(duration)| duration)
        };
        // Every field is listed (no `..default`), so a new NodeConfig field does not compile
        // until it has a key here.
        NodeConfig {
            listen: self.listen.unwrap_or(default.listen),
            advertise: self.advertise.clone().unwrap_or(default.advertise),
            idle_timeout: duration(self.idle_timeout, default.idle_timeout),
            keep_alive: duration(self.keep_alive, default.keep_alive),
            dial_timeout: duration(self.dial_timeout, default.dial_timeout),
            max_message_size: self.max_message_size.unwrap_or(default.max_message_size),
            mailbox_capacity: self.mailbox_capacity.unwrap_or(default.mailbox_capacity),
            send_window: self.send_window.unwrap_or(default.send_window),
            send_timeout: duration(self.send_timeout, default.send_timeout),
            outbox_ttl: duration(self.outbox_ttl, default.outbox_ttl),
            monitor_grace: duration(self.monitor_grace, default.monitor_grace),
            call_timeout: duration(self.call_timeout, default.call_timeout),
            stream_idle_timeout: duration(self.stream_idle_timeout, default.stream_idle_timeout),
            duplicate_grace: duration(self.duplicate_grace, default.duplicate_grace),
            open_timeout: duration(self.open_timeout, default.open_timeout),
            max_connections: self.max_connections.unwrap_or(default.max_connections),
            max_incoming_streams: self
                .max_incoming_streams
                .unwrap_or(default.max_incoming_streams),
            initial_incoming_streams: self
                .initial_incoming_streams
                .unwrap_or(default.initial_incoming_streams),
            max_dedup_entries: self.max_dedup_entries.unwrap_or(default.max_dedup_entries),
            handshake_rate_per_ip: self
                .handshake_rate_per_ip
                .unwrap_or(default.handshake_rate_per_ip),
            frame_timeout: duration(self.frame_timeout, default.frame_timeout),
            receive_window: self.receive_window.unwrap_or(default.receive_window),
            max_buffered_per_peer: self
                .max_buffered_per_peer
                .unwrap_or(default.max_buffered_per_peer),
            max_buffered_bytes: self
                .max_buffered_bytes
                .unwrap_or(default.max_buffered_bytes),
            max_violations: self.max_violations.unwrap_or(default.max_violations),
            ban_duration: duration(self.ban_duration, default.ban_duration),
            admission: self
                .admission
                .as_ref()
                .map_or(default.admission, NodeSet::admission),
            relay: self.relay.as_ref().map_or(default.relay, NodeSet::relay),
            relay_rate: self.relay_rate.unwrap_or(default.relay_rate),
            relays: self.relays.as_ref().map_or(default.relays, |relays| {
                relays.iter().map(|peer| (peer.id, peer.addr)).collect()
            }),
            hole_punching: self.hole_punching.unwrap_or(default.hole_punching),
            max_monitors_per_peer: self
                .max_monitors_per_peer
                .unwrap_or(default.max_monitors_per_peer),
        }
    }
}

impl FileConfig {
    /// The gateway's configuration: each key that is set, the default for every other one.
    pub(crate) fn gateway_config(&self) -> Result<GatewayConfig, String> {
        let d = GatewayConfig::default();
        let l = Limits::default();
        let duration = |value: Option<TomlDuration>, default: Duration| {
            value.map_or(default, |TomlDuration(duration)| duration)
        };
        let ed25519 = match &self.gateway_jwt_ed25519_public_key {
            None => None,
            Some(text) => {
                let text = text.trim_end_matches('=');
                let bytes = data_encoding::BASE64URL_NOPAD
                    .decode(text.as_bytes())
                    .or_else(|_| data_encoding::BASE64_NOPAD.decode(text.as_bytes()))
                    .map_err(|e| format!("gateway_jwt_ed25519_public_key: {e}"))?;
                Some(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                    format!(
                        "gateway_jwt_ed25519_public_key: {} bytes, expected 32",
                        bytes.len()
                    )
                })?)
            }
        };
        let config = GatewayConfig {
            auth: AuthConfig {
                tokens: self.gateway_tokens.clone().unwrap_or_default(),
                jwt_hs256_secret: self
                    .gateway_jwt_hs256_secret
                    .as_ref()
                    .map(|secret| secret.as_bytes().to_vec()),
                jwt_ed25519_public_key: ed25519,
                jwt_audience: self.gateway_jwt_audience.clone(),
            },
            permissions: Permissions {
                join: self.gateway_join.clone().unwrap_or_default(),
                publish: self.gateway_publish.clone().unwrap_or_default(),
                direct: self.gateway_direct.unwrap_or(false),
            },
            limits: Limits {
                max_connections: self.gateway_max_connections.unwrap_or(l.max_connections),
                max_sessions: self.gateway_max_sessions.unwrap_or(l.max_sessions),
                max_connection_age: self
                    .gateway_max_connection_age
                    .map_or(l.max_connection_age, |DurationOrOff(age)| age),
                idle_timeout: duration(self.gateway_idle_timeout, l.idle_timeout),
                ping_interval: duration(self.gateway_ping_interval, l.ping_interval),
                rate_limit: self.gateway_rate_limit.unwrap_or(l.rate_limit),
                rate_window: duration(self.gateway_rate_window, l.rate_window),
                max_message_size: self.gateway_max_message_size.unwrap_or(l.max_message_size),
                max_queue_bytes: self.gateway_max_queue_bytes.unwrap_or(l.max_queue_bytes),
                write_timeout: duration(self.gateway_write_timeout, l.write_timeout),
                connection_rate: self.gateway_connection_rate.unwrap_or(l.connection_rate),
                max_channels_per_session: self
                    .gateway_max_channels
                    .unwrap_or(l.max_channels_per_session),
                max_inflight: self.gateway_max_inflight.unwrap_or(l.max_inflight),
                max_call_timeout: duration(self.gateway_max_call_timeout, l.max_call_timeout),
                max_remembered_answers: self
                    .gateway_max_remembered_answers
                    .unwrap_or(l.max_remembered_answers),
                max_remembered_answer_bytes: self
                    .gateway_max_remembered_answer_bytes
                    .unwrap_or(l.max_remembered_answer_bytes),
            },
            session_ttl: duration(self.gateway_session_ttl, d.session_ttl),
            origins: self.gateway_origins.clone().unwrap_or_default(),
            client_config: self
                .gateway_client_config
                .clone()
                .unwrap_or(d.client_config),
            static_dir: self.gateway_static_dir.clone(),
            drain: duration(self.shutdown_grace, DEFAULT_SHUTDOWN_GRACE),
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
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
}

impl DaemonConfig {
    /// Reads `args.config` if given and lays the flags over it.
    pub(crate) fn load(args: &NodeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let data_dir = match (&args.data, &file.data_dir) {
            (Some(dir), _) | (None, Some(dir)) => dir.clone(),
            (None, None) => default_data_dir()?,
        };
        let key_file = args
            .key
            .clone()
            .or_else(|| file.key_file.clone())
            .unwrap_or_else(|| data_dir.join("key"));
        let peers = if args.peers.is_empty() {
            file.peers.clone().unwrap_or_default()
        } else {
            args.peers.clone()
        };
        let persistent = args.data.is_some()
            || args.key.is_some()
            || file.data_dir.is_some()
            || file.key_file.is_some();
        let mut node = file.node_config();
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
        let store_defaults = StoreConfig::default();
        let store = StoreConfig {
            max_pending_per_mailbox: file
                .store_max_pending
                .unwrap_or(store_defaults.max_pending_per_mailbox),
            run_ttl: file
                .store_run_ttl
                .map_or(store_defaults.run_ttl, |TomlDuration(ttl)| ttl),
        };
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
        let gateway_addr = match args.gateway.or(file.gateway) {
            Some(GatewayListen(addr)) => addr,
            None => Some(DEFAULT_GATEWAY),
        };
        let gateway = match gateway_addr {
            None => None,
            Some(addr) => {
                let config = file
                    .gateway_config()
                    .map_err(|message| match &args.config {
                        Some(path) => anyhow::Error::from(ConfigFileError::Gateway {
                            path: path.clone(),
                            message,
                        }),
                        None => anyhow!("invalid gateway configuration: {message}"),
                    })?;
                Some((addr, config))
            }
        };
        Ok(Self {
            gateway,
            data_dir,
            key_file,
            peers,
            shutdown_grace: file
                .shutdown_grace
                .map_or(DEFAULT_SHUTDOWN_GRACE, |TomlDuration(grace)| grace),
            persistent,
            http: args.http.or(file.http).unwrap_or(DEFAULT_HTTP),
            store,
            node,
        })
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

/// A commented config file with every key at its default (`ferry config-example`).
pub(crate) fn example() -> String {
    let d = NodeConfig::default();
    let dur = format_duration;
    format!(
        r#"# ferry config file: `ferry run --config PATH` (also `ferry listen`).
# Every key is optional; a flag (--listen, --key, --data, --peer) replaces the file's value.
# Durations are strings with a unit: "500ms", "10s", "5m", "1h". Sizes are integers in bytes.
# Relative paths are relative to the directory of this file. See docs/CONFIG.md.

# --- the daemon ---

# Data directory, created at start. Default: $FERRY_DATA, else $XDG_DATA_HOME/ferry, else
# ~/.local/share/ferry.
# data_dir = "/var/lib/ferry"

# Secret key file, created (mode 0600) if missing. Default: "key" in the data directory.
# key_file = "/var/lib/ferry/key"

# Peers to connect to at start, as "NODEID@HOST:PORT".
peers = []

# Time messages in flight get to be acknowledged at shutdown (Ctrl-C, SIGTERM).
shutdown_grace = "{shutdown_grace}"

# TCP address of /health and /metrics (`ferry run`); port 0 picks a free port, printed at start.
http = "{http}"

# Unacknowledged messages one durable mailbox may hold; beyond, senders are slowed down.
store_max_pending = {store_max_pending}

# How long the duplicate-suppression record of a sender's conversation run is kept after its
# last message.
store_run_ttl = "{store_run_ttl}"

# --- the node (ferry::NodeConfig) ---

# UDP address to bind; "0.0.0.0:PORT" or "[::]:PORT" to be reachable from other hosts. Port 0:
# the port of the last run (remembered in the data directory's `udp-port`) if free, else any.
listen = "{listen}"

# Dial hints put into the addresses this node mints (at most 4), e.g. ["203.0.113.7:4433"].
# Empty: a specific bound IP as bound; a wildcard IP replaced by the machine's interface
# addresses (not loopback or link-local), and the public addresses peers observe.
advertise = []

# A connection without traffic for this long is closed (both sides' values: the smaller).
idle_timeout = "{idle_timeout}"

# QUIC keep-alive interval; must be below idle_timeout.
keep_alive = "{keep_alive}"

# Time for UDP path + TLS handshake when dialing.
dial_timeout = "{dial_timeout}"

# Largest message payload sent or accepted, in bytes (at most 1073741824).
max_message_size = {max_message_size}

# Messages queued per mailbox before its senders are slowed down.
mailbox_capacity = {mailbox_capacity}

# Unacknowledged bytes per conversation before send waits; at least max_message_size.
send_window = {send_window}

# Time without acknowledgement from a reachable target before a send fails with Timeout.
send_timeout = "{send_timeout}"

# How long messages wait in the outbox for an unreachable target before their sends fail with
# Unreachable; at least send_timeout.
outbox_ttl = "{outbox_ttl}"

# How long a watched mailbox or peer may stay unreachable before its monitor reports it down.
monitor_grace = "{monitor_grace}"

# Default deadline of a call (open, request, response), and of a ping.
call_timeout = "{call_timeout}"

# An idle conversation stream is finished after this long; the next message opens a new one.
stream_idle_timeout = "{stream_idle_timeout}"

# When both nodes dial each other at once, the connection that loses stays open this long for
# the streams already started on it.
duplicate_grace = "{duplicate_grace}"

# Time a peer has to send a stream's opening frame.
open_timeout = "{open_timeout}"

# Connections (incoming and outgoing) at most; further handshakes are refused.
max_connections = {max_connections}

# Concurrent streams a peer may open towards this node on one connection.
max_incoming_streams = {max_incoming_streams}

# Streams a peer may open on a new connection at first; doubled whenever half are in use, up
# to max_incoming_streams.
initial_incoming_streams = {initial_incoming_streams}

# Conversation runs remembered for duplicate suppression.
max_dedup_entries = {max_dedup_entries}

# Handshakes accepted per second from one source IP address (an IPv6 address counts by its
# /64), with a burst of as many; beyond, they are refused before any cryptography. 0: no limit.
handshake_rate_per_ip = {handshake_rate_per_ip}

# Once a frame has begun to arrive (mailbox streams, conversations), the rest must arrive
# within this much waiting; otherwise the stream is cut off.
frame_timeout = "{frame_timeout}"

# Bytes a peer may send on a connection before this node reads them (QUIC connection receive
# window); max_connections times this bounds what QUIC buffers.
receive_window = {receive_window}

# Bytes all mailbox streams of one peer may hold in receive buffers (partly received
# messages); beyond, the stream is closed with LIMIT and its sender retries.
max_buffered_per_peer = {max_buffered_per_peer}

# The same, for all peers together.
max_buffered_bytes = {max_buffered_bytes}

# Streams of one connection a peer may have cut off for breaking the protocol (malformed or
# oversized frames, missed open_timeout or frame_timeout) before the whole connection is
# closed and the peer refused for ban_duration. 0: never.
max_violations = {max_violations}

# How long a peer that reached max_violations is refused.
ban_duration = "{ban_duration}"

# Distinct addresses this node watches at most on one peer (each watch takes one of that
# peer's incoming streams); 0 forbids watching other nodes' mailboxes.
max_monitors_per_peer = {max_monitors_per_peer}

# Which peers may connect: "any", "nobody", or a list of node ids.
admission = "any"

# Which peers may relay packets through this node (both the sending peer and its destination
# must be allowed): "nobody", "any", or a list of node ids.
relay = "nobody"

# Bytes per second relayed for one sending peer (one second of burst); beyond, packets drop.
relay_rate = {relay_rate}

# Relay nodes to stay connected to and name in every minted address, as "NODEID@HOST:PORT"
# (at most 4, and at most 4 hints in all with advertise).
relays = []

# Whether to punch holes towards peers reached through a relay so that the two connect
# directly; false keeps relayed connections relayed (peers then never learn this address).
hole_punching = true

# --- the browser gateway (`ferry run`; docs/GATEWAY.md) ---

# TCP address of the gateway (WebSocket /ws, the JS client /ferry.js), or "off"; port 0 picks
# a free port, printed at start.
gateway = "{gateway}"

# How long a disconnected browser session is kept (address valid, messages stored) to resume.
gateway_session_ttl = "{session_ttl}"

# Origins allowed to connect, e.g. ["https://app.example"], or ["*"]; empty: the gateway's own.
gateway_origins = []

# The configuration object every browser receives (client.config), e.g. service addresses.
gateway_client_config = {{}}

# A directory of pages served at / (next to /ferry.js).
# gateway_static_dir = "www"

# Authentication (none of these set: anonymous sessions). Static tokens (bearer, ?token=, or
# basic auth with the token as password), JWT secrets; a JWT's `sub` is the user id.
gateway_tokens = []
# gateway_jwt_hs256_secret = "a long random secret"
# gateway_jwt_ed25519_public_key = "base64url of the 32-byte key"
# gateway_jwt_audience = "my-app"

# Channels browsers may join / publish to: names, prefixes ending in "*", "{{user}}" patterns.
gateway_join = []
gateway_publish = []

# Whether browsers may send to {{user}} and {{session}} targets.
gateway_direct = false

# Connected browsers at most; beyond, new upgrades are answered 503.
gateway_max_connections = {gw_max_connections}

# Sessions at most, connected or waiting to be resumed.
gateway_max_sessions = {max_sessions}

# A connection is closed after this long (the client resumes at once), or "off".
gateway_max_connection_age = "off"

# A connection that sends nothing (not even a pong) this long is closed.
gateway_idle_timeout = "{idle}"

# How often the gateway sends each connection a heartbeat frame and a ping (clients call a
# connection dead after a silence a little longer); below gateway_idle_timeout.
gateway_ping_interval = "{ping}"

# Frames a connection may send per gateway_rate_window; more closes it.
gateway_rate_limit = {rate_limit}
gateway_rate_window = "{rate_window}"

# Largest WebSocket message a browser may send, in bytes.
gateway_max_message_size = {max_ws_message}

# Bytes queued for one connection at most.
gateway_max_queue_bytes = {max_queue}

# A connection whose queue stays full this long is a slow consumer and is closed.
gateway_write_timeout = "{write_timeout}"

# New connections per second at most (one second of burst); beyond, 503.
gateway_connection_rate = {connection_rate}

# Channels per session at most.
gateway_max_channels = {max_channels}

# Sends and calls of one connection in flight at once.
gateway_max_inflight = {max_inflight}

# Longest call a browser may ask for (also its default).
gateway_max_call_timeout = "{max_call_timeout}"

# Answers (and their bytes) a session keeps for requests its client sends again after a lost
# connection; the oldest are forgotten first (a request sent again then: unknown_outcome).
gateway_max_remembered_answers = {max_answers}
gateway_max_remembered_answer_bytes = {max_answer_bytes}
"#,
        gateway = DEFAULT_GATEWAY,
        session_ttl = dur(GatewayConfig::default().session_ttl),
        gw_max_connections = Limits::default().max_connections,
        max_sessions = Limits::default().max_sessions,
        idle = dur(Limits::default().idle_timeout),
        ping = dur(Limits::default().ping_interval),
        rate_limit = Limits::default().rate_limit,
        rate_window = dur(Limits::default().rate_window),
        max_ws_message = Limits::default().max_message_size,
        max_queue = Limits::default().max_queue_bytes,
        write_timeout = dur(Limits::default().write_timeout),
        connection_rate = Limits::default().connection_rate,
        max_channels = Limits::default().max_channels_per_session,
        max_inflight = Limits::default().max_inflight,
        max_call_timeout = dur(Limits::default().max_call_timeout),
        max_answers = Limits::default().max_remembered_answers,
        max_answer_bytes = Limits::default().max_remembered_answer_bytes,
        shutdown_grace = dur(DEFAULT_SHUTDOWN_GRACE),
        http = DEFAULT_HTTP,
        store_max_pending = StoreConfig::default().max_pending_per_mailbox,
        store_run_ttl = dur(StoreConfig::default().run_ttl),
        listen = d.listen,
        idle_timeout = dur(d.idle_timeout),
        keep_alive = dur(d.keep_alive),
        dial_timeout = dur(d.dial_timeout),
        max_message_size = d.max_message_size,
        mailbox_capacity = d.mailbox_capacity,
        send_window = d.send_window,
        send_timeout = dur(d.send_timeout),
        outbox_ttl = dur(d.outbox_ttl),
        monitor_grace = dur(d.monitor_grace),
        call_timeout = dur(d.call_timeout),
        stream_idle_timeout = dur(d.stream_idle_timeout),
        duplicate_grace = dur(d.duplicate_grace),
        open_timeout = dur(d.open_timeout),
        max_connections = d.max_connections,
        max_incoming_streams = d.max_incoming_streams,
        initial_incoming_streams = d.initial_incoming_streams,
        max_dedup_entries = d.max_dedup_entries,
        handshake_rate_per_ip = d.handshake_rate_per_ip,
        frame_timeout = dur(d.frame_timeout),
        receive_window = d.receive_window,
        max_buffered_per_peer = d.max_buffered_per_peer,
        max_buffered_bytes = d.max_buffered_bytes,
        max_violations = d.max_violations,
        ban_duration = dur(d.ban_duration),
        relay_rate = d.relay_rate,
        max_monitors_per_peer = d.max_monitors_per_peer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(text: &str) -> ParseFailure {
        match FileConfig::parse(text) {
            Ok(config) => panic!("{text:?} parsed as {config:?}"),
            Err(failure) => failure,
        }
    }

    /// The example sets every key it does not comment out to its default, so it parses to
    /// exactly the default configuration.
    #[test]
    fn example_parses_to_the_defaults() {
        let file = FileConfig::parse(&example()).unwrap();
        let expected = NodeConfig::default();
        let config = file.node_config();
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
        assert_eq!(file.peers, Some(Vec::new()));
        assert_eq!(
            file.shutdown_grace,
            Some(TomlDuration(DEFAULT_SHUTDOWN_GRACE))
        );
        assert_eq!(file.data_dir, None);
        assert_eq!(file.key_file, None);
        assert_eq!(file.gateway, Some(GatewayListen(Some(DEFAULT_GATEWAY))));
        assert_eq!(file.gateway_config(), Ok(GatewayConfig::default()));
    }

    #[test]
    fn gateway_keys() {
        let text = r#"
            gateway = "off"
            gateway_session_ttl = "1m"
            gateway_origins = ["*"]
            gateway_client_config = { logger = "ferry1x", nested = { a = 1 } }
            gateway_tokens = [{ user = "alice", token = "s3cr3t" }]
            gateway_jwt_hs256_secret = "k"
            gateway_jwt_ed25519_public_key = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"
            gateway_jwt_audience = "app"
            gateway_join = ["lobby"]
            gateway_publish = ["lobby"]
            gateway_direct = true
            gateway_max_connections = 5
            gateway_max_sessions = 6
            gateway_max_connection_age = "1h"
            gateway_idle_timeout = "30s"
            gateway_ping_interval = "10s"
            gateway_rate_limit = 7
            gateway_rate_window = "2s"
            gateway_max_message_size = 8
            gateway_max_queue_bytes = 9
            gateway_write_timeout = "3s"
            gateway_connection_rate = 10
            gateway_max_channels = 11
            gateway_max_inflight = 12
            gateway_max_call_timeout = "4s"
            gateway_max_remembered_answers = 13
            gateway_max_remembered_answer_bytes = 14
        "#;
        let file = FileConfig::parse(text).unwrap();
        assert_eq!(file.gateway, Some(GatewayListen(None)));
        let config = file.gateway_config().unwrap();
        let secs = Duration::from_secs;
        assert_eq!(config.session_ttl, secs(60));
        assert_eq!(config.origins, ["*"]);
        assert_eq!(config.client_config["nested"]["a"], 1);
        assert_eq!(config.auth.tokens[0].user, "alice");
        assert_eq!(config.auth.jwt_hs256_secret.as_deref(), Some(&b"k"[..]));
        assert_eq!(config.auth.jwt_ed25519_public_key.unwrap()[0], 0x8a);
        assert_eq!(config.auth.jwt_audience.as_deref(), Some("app"));
        assert_eq!(config.permissions.join, ["lobby"]);
        assert_eq!(config.permissions.publish, ["lobby"]);
        assert!(config.permissions.direct);
        let l = &config.limits;
        assert_eq!(
            (
                l.max_connections,
                l.max_sessions,
                l.rate_limit,
                l.max_message_size
            ),
            (5, 6, 7, 8)
        );
        assert_eq!(
            (
                l.max_queue_bytes,
                l.connection_rate,
                l.max_channels_per_session,
                l.max_inflight
            ),
            (9, 10, 11, 12)
        );
        assert_eq!(
            (l.max_remembered_answers, l.max_remembered_answer_bytes),
            (13, 14)
        );
        assert_eq!(l.max_connection_age, Some(secs(3600)));
        assert_eq!(
            [
                l.idle_timeout,
                l.ping_interval,
                l.rate_window,
                l.write_timeout,
                l.max_call_timeout
            ],
            [secs(30), secs(10), secs(2), secs(3), secs(4)]
        );
        let bad = FileConfig::parse(r#"gateway_jwt_ed25519_public_key = "abcd""#).unwrap();
        assert!(bad.gateway_config().is_err());
        let bad = FileConfig::parse(r#"gateway_ping_interval = "2m""#).unwrap();
        assert!(bad.gateway_config().unwrap_err().contains("ping_interval"));
        assert_eq!(
            parse_error(r#"gateway = "nowhere""#).key.as_deref(),
            Some("gateway")
        );
    }

    /// Every key of the example (commented ones too) is documented in docs/CONFIG.md.
    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../docs/CONFIG.md");
        let keys: Vec<String> = example()
            .lines()
            .map(|line| line.trim_start_matches("# "))
            .filter_map(|line| line.split_once(" = ").map(|(key, _)| key.to_owned()))
            .collect();
        assert_eq!(keys.len(), 67, "{keys:?}");
        for key in keys {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "{key} not in CONFIG.md"
            );
        }
    }

    /// The example of docs/CONFIG.md is a valid config.
    #[test]
    fn documented_example_is_valid() {
        let doc = include_str!("../../docs/CONFIG.md");
        let block = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let file = FileConfig::parse(block).unwrap();
        assert_eq!(file.node_config().validate(), Ok(()));
        assert_eq!(file.peers.map(|peers| peers.len()), Some(1));
    }

    #[test]
    fn every_key_reaches_the_node_config() {
        let a = SecretKey::generate().public();
        let text = format!(
            r#"
            data_dir = "/d"
            key_file = "/k"
            peers = ["{a}@127.0.0.1:4433"]
            shutdown_grace = "3s"
            listen = "127.0.0.1:4000"
            advertise = ["192.0.2.1:4000"]
            idle_timeout = "1m"
            keep_alive = "2s"
            dial_timeout = "3s"
            max_message_size = 1000
            mailbox_capacity = 7
            send_window = 2000
            send_timeout = "4s"
            outbox_ttl = "12s"
            monitor_grace = "5s"
            call_timeout = "6s"
            stream_idle_timeout = "7s"
            duplicate_grace = "18s"
            open_timeout = "8s"
            max_connections = 9
            max_incoming_streams = 10
            initial_incoming_streams = 19
            max_dedup_entries = 11
            handshake_rate_per_ip = 14
            frame_timeout = "15s"
            receive_window = 1048576
            max_buffered_per_peer = 2000000
            max_buffered_bytes = 3000000
            max_violations = 16
            ban_duration = "17s"
            admission = ["{a}"]
            relay = ["{a}"]
            relay_rate = 12
            relays = ["{a}@192.0.2.2:4433"]
            hole_punching = false
            max_monitors_per_peer = 13
            "#
        );
        let file = FileConfig::parse(&text).unwrap();
        let NodeConfig {
            listen,
            advertise,
            idle_timeout,
            keep_alive,
            dial_timeout,
            max_message_size,
            mailbox_capacity,
            send_window,
            send_timeout,
            outbox_ttl,
            monitor_grace,
            call_timeout,
            stream_idle_timeout,
            duplicate_grace,
            open_timeout,
            max_connections,
            max_incoming_streams,
            initial_incoming_streams,
            max_dedup_entries,
            handshake_rate_per_ip,
            frame_timeout,
            receive_window,
            max_buffered_per_peer,
            max_buffered_bytes,
            max_violations,
            ban_duration,
            admission,
            relay,
            relay_rate,
            relays,
            hole_punching,
            max_monitors_per_peer,
        } = file.node_config();
        assert!(!hole_punching);
        let secs = Duration::from_secs;
        assert_eq!(listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(advertise, vec!["192.0.2.1:4000".parse().unwrap()]);
        assert_eq!(
            [
                idle_timeout,
                keep_alive,
                dial_timeout,
                send_timeout,
                monitor_grace,
                call_timeout,
                stream_idle_timeout,
                open_timeout
            ],
            [
                secs(60),
                secs(2),
                secs(3),
                secs(4),
                secs(5),
                secs(6),
                secs(7),
                secs(8)
            ]
        );
        assert_eq!(
            [
                max_message_size,
                mailbox_capacity,
                send_window,
                max_connections
            ],
            [1000, 7, 2000, 9]
        );
        assert_eq!((max_incoming_streams, max_dedup_entries), (10, 11));
        assert_eq!(initial_incoming_streams, 19);
        assert_eq!(handshake_rate_per_ip, 14);
        assert_eq!(frame_timeout, secs(15));
        assert_eq!(duplicate_grace, secs(18));
        assert_eq!(
            (receive_window, max_buffered_per_peer, max_buffered_bytes),
            (1 << 20, 2_000_000, 3_000_000)
        );
        assert_eq!((max_violations, ban_duration), (16, secs(17)));
        assert_eq!(outbox_ttl, secs(12));
        assert_eq!(admission, Admission::Only([a].into_iter().collect()));
        assert_eq!(relay, RelayAccess::Only([a].into_iter().collect()));
        assert_eq!(relay_rate, 12);
        assert_eq!(max_monitors_per_peer, 13);
        assert_eq!(relays, vec![(a, "192.0.2.2:4433".parse().unwrap())]);
        assert_eq!(file.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(file.key_file, Some(PathBuf::from("/k")));
        assert_eq!(file.shutdown_grace, Some(TomlDuration(secs(3))));
        let peers = file.peers.unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!((peers[0].id, peers[0].addr.port()), (a, 4433));
    }

    #[test]
    fn node_sets() {
        let any = FileConfig::parse(r#"admission = "any""#).unwrap();
        assert_eq!(any.node_config().admission, Admission::Any);
        let none = FileConfig::parse("admission = []").unwrap();
        assert_eq!(
            none.node_config().admission,
            Admission::Only(HashSet::new())
        );
        let nobody = FileConfig::parse(r#"admission = "nobody""#).unwrap();
        assert_eq!(
            nobody.node_config().admission,
            Admission::Only(HashSet::new())
        );
        let failure = parse_error(r#"admission = "everyone""#);
        assert_eq!(failure.key.as_deref(), Some("admission"));
        assert!(
            failure.message.contains(r#""any", "nobody" or a list"#),
            "{failure:?}"
        );
        let relay = FileConfig::parse(r#"relay = "any""#).unwrap();
        assert_eq!(relay.node_config().relay, RelayAccess::Any);
        let relay = FileConfig::parse(r#"relay = "nobody""#).unwrap();
        assert_eq!(relay.node_config().relay, RelayAccess::Nobody);
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let failure = parse_error("listen = \"127.0.0.1:0\"\nidle_timout = \"10s\"\n");
        assert_eq!(failure.line, Some(2));
        assert_eq!(failure.key.as_deref(), Some("idle_timout"));
        assert!(
            failure.message.starts_with("unknown key `idle_timout`"),
            "{failure:?}"
        );

        let failure = parse_error("\n\nidle_timeout = 10\n");
        assert_eq!(
            (failure.line, failure.key.as_deref()),
            (Some(3), Some("idle_timeout"))
        );
        assert!(failure.message.contains("duration string"), "{failure:?}");

        let failure = parse_error("keep_alive = \"10 seconds\"");
        assert_eq!(failure.key.as_deref(), Some("keep_alive"));
        assert!(failure.message.contains("invalid duration"), "{failure:?}");

        // (Errors inside an array point at the array.)
        let failure = parse_error("\npeers = [\n  \"nonsense\",\n]\n");
        assert_eq!(
            (failure.line, failure.key.as_deref()),
            (Some(2), Some("peers"))
        );
        assert!(failure.message.contains("NODEID@HOST:PORT"), "{failure:?}");

        let failure = parse_error("max_connections = -1");
        assert_eq!(failure.key.as_deref(), Some("max_connections"));

        let failure = parse_error("listen = \"localhost\"");
        assert_eq!(failure.key.as_deref(), Some("listen"));

        // Not TOML at all: a line, no key.
        let failure = parse_error("listen = \n");
        assert_eq!(failure.line, Some(1));
        assert!(!failure.message.contains('\n'));
    }

    #[test]
    fn one_line_messages_name_the_file() {
        let error = ConfigFileError::Parse {
            path: PathBuf::from("/etc/ferry.toml"),
            line: Some(3),
            key: Some("idle_timeout".into()),
            message: "bad".into(),
        };
        assert_eq!(
            error.to_string(),
            "config file /etc/ferry.toml, line 3, key `idle_timeout`: bad"
        );
    }

    /// Replays the committed fuzz corpus of config files (fuzz/corpus/config_toml, see
    /// fuzz/README.md) with the `config_toml` target's oracle, on the stable toolchain: every
    /// input the fuzzer found interesting stays a regression test. The inputs are random TOML,
    /// so they are fed as they are, whatever they say (no file is opened, nothing is bound).
    #[test]
    fn fuzz_corpus_replays() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config_toml");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return; // a packaged crate has no corpus
        };
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let Ok(text) = std::str::from_utf8(&data) else {
                continue;
            };
            match FileConfig::parse(text) {
                Ok(file) => {
                    let _ = file.node_config().validate();
                    let _ = file.gateway_config();
                }
                Err(failure) => {
                    assert!(!failure.message.contains('\n'), "{path:?}: {failure:?}");
                    if let Some(line) = failure.line {
                        let lines = text.lines().count().max(1) + 1;
                        assert!(line >= 1 && line <= lines, "{path:?}: {failure:?}");
                    }
                }
            }
            replayed += 1;
        }
        assert!(replayed > 0, "no input in {dir:?}");
    }

    use ferry::SecretKey;
}
