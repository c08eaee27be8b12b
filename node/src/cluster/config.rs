//! The cluster's configuration: the config file's `cluster` key (the NATS servers) and the
//! keys after the `cluster_` prefix.

use std::time::Duration;

use serde::Deserialize;

/// How a gateway joins its cluster. Deserializes from the keys after `cluster_`; the servers
/// come from the `cluster` key (or `--cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// The NATS servers (`nats://HOST:PORT`, several for failover); set by the `cluster` key,
    /// not after the prefix. Default none: no cluster.
    #[serde(skip)]
    pub servers: Vec<String>,
    /// The cluster's name: nodes with the same name (on the same NATS) form one cluster; its
    /// subjects start with `ferry.NAME.`, its stream is `FERRY_NAME`. Default `ferry`.
    pub name: String,
    /// How many times a node tries to reach NATS at start before it gives up with an error
    /// (`0`: once). Default 5.
    pub start_retries: u32,
    /// The wait between those tries, the longest wait between reconnection attempts later,
    /// and how often an idle node checks that it has read the whole history. Default 1 s.
    #[serde(with = "ferry::duration")]
    pub retry_interval: Duration,
    /// How long a publication waits for NATS to confirm it kept it; without the confirmation
    /// the publication is refused (`unavailable`). Default 5 s.
    #[serde(with = "ferry::duration")]
    pub publish_timeout: Duration,
    /// The history (JetStream stream) keeps at most this many bytes of publications (the
    /// oldest go first). Default 256 MiB.
    pub history_max_bytes: u64,
    /// The history keeps a publication at most this long. Default 1 h.
    #[serde(with = "ferry::duration")]
    pub history_max_age: Duration,
    /// Copies of the history on a NATS cluster (JetStream replicas, 1–5). Default 1.
    pub history_replicas: u8,
    /// How long a presence query waits for the other nodes' answers. Default 250 ms.
    #[serde(with = "ferry::duration")]
    pub presence_timeout: Duration,
    /// Publications of the history read ahead by a node (a pull consumer's batch). Default 256.
    pub read_batch: usize,
    /// Publications waiting to be handed to the NATS client at most (while NATS is slow or
    /// away); one more is refused `unavailable` at once. Default 4096.
    pub publish_queue: usize,
    /// Publications one `recover` request delivers again at most; beyond, it answers
    /// `recovered: false`. Default 10,000.
    pub recover_max: usize,
    /// The URL other nodes reach this node's gateway at (`ws://HOST:PORT/ws`), to forward a
    /// session's connections to the node where it lives. Default: the gateway's bound
    /// address (right when it is bound to a specific address the other nodes reach).
    pub advertise: Option<String>,
    /// Messages a core NATS subscription (presence) buffers before the client drops them
    /// (counted and logged as a slow consumer). Default 65536.
    pub subscription_capacity: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            name: "ferry".to_owned(),
            start_retries: 5,
            retry_interval: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(5),
            history_max_bytes: 256 << 20,
            history_max_age: Duration::from_secs(3600),
            history_replicas: 1,
            presence_timeout: Duration::from_millis(250),
            read_batch: 256,
            advertise: None,
            publish_queue: 4096,
            recover_max: 10_000,
            subscription_capacity: 65536,
        }
    }
}

/// Why a cluster configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterConfigError {
    /// `cluster_name` is empty or has characters other than ASCII letters, digits, `_`, `-`.
    #[error("cluster_name {0:?}: 1-64 of A-Z a-z 0-9 _ -")]
    Name(String),
    /// A number is out of range.
    #[error("{key} must be {range}")]
    Range {
        /// The key.
        key: &'static str,
        /// The allowed range.
        range: &'static str,
    },
    /// A server is not a `nats://HOST:PORT` (or `tls://`) URL.
    #[error("cluster server {0:?} is not nats://HOST:PORT")]
    Server(String),
}

impl ClusterConfig {
    /// A configuration for these servers, the rest at its defaults.
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            ..Self::default()
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(ClusterConfigError::Name(self.name.clone()));
        }
        if !(1..=5).contains(&self.history_replicas) {
            return Err(ClusterConfigError::Range {
                key: "cluster_history_replicas",
                range: "1 to 5",
            });
        }
        if self.read_batch == 0 || self.read_batch > 65536 {
            return Err(ClusterConfigError::Range {
                key: "cluster_read_batch",
                range: "1 to 65536",
            });
        }
        if self.publish_queue == 0 {
            return Err(ClusterConfigError::Range {
                key: "cluster_publish_queue",
                range: "at least 1",
            });
        }
        if self.subscription_capacity < self.read_batch {
            // A pull consumer's batch arrives through a subscription: one larger than its
            // buffer would overflow it, and the client drops what overflows.
            return Err(ClusterConfigError::Range {
                key: "cluster_subscription_capacity",
                range: "at least cluster_read_batch",
            });
        }
        if self.history_max_bytes == 0 || i64::try_from(self.history_max_bytes).is_err() {
            return Err(ClusterConfigError::Range {
                key: "cluster_history_max_bytes",
                range: "at least 1",
            });
        }
        for server in &self.servers {
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| server.starts_with(scheme) && server.len() > scheme.len());
            if !ok || server.parse::<async_nats::ServerAddr>().is_err() {
                return Err(ClusterConfigError::Server(server.clone()));
            }
        }
        Ok(())
    }
}
