//! Typed node configuration with documented defaults. Libraries never read files or the
//! environment: the `ferry` binary turns TOML, env and flags into a [`NodeConfig`].
//!
//! The field documentation here is the one description of each setting; `NodeConfig`
//! deserializes (serde) from exactly the keys of the `ferry` config file, and
//! docs/CONFIG.md is checked against these fields and their defaults by the binary's tests.

mod deserialize;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::NodeId;

/// Which peers may connect to a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Admission {
    /// Any peer that completes the TLS handshake (default).
    #[default]
    Any,
    /// Only these nodes: a connection from another node is closed with `ADMISSION_REFUSED`,
    /// and streams it opens on a connection this node dialed are reset with `NOT_ADMITTED`.
    Only(HashSet<NodeId>),
}

impl Admission {
    /// Whether `peer` may connect.
    pub fn admits(&self, peer: &NodeId) -> bool {
        match self {
            Self::Any => true,
            Self::Only(allowed) => allowed.contains(peer),
        }
    }
}

/// Configuration of a [`Node`](crate::Node). Every field has a documented default.
///
/// It deserializes (serde) from a map of its field names, as the `ferry` config file writes
/// them: an absent key keeps its default, an unknown key is an error; durations are strings
/// with a unit (`"500ms"`, `"10s"`, `"5m"`, `"1h"`; see [`duration`](crate::duration)),
/// sizes integers in bytes; `admission` and `relay` are `"any"`, `"nobody"` or a list of node
/// ids; `relays` a list of `"NODEID@HOST:PORT"`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// UDP address to bind. Default `127.0.0.1:0` (loopback, any free port): reachable from
    /// this host only. Bind a wildcard (`0.0.0.0:PORT`, or `[::]:PORT` for IPv6 and, where
    /// the system allows, IPv4 too) to be reachable from other hosts.
    pub listen: SocketAddr,
    /// Dial hints put into the addresses this node mints (at most 4), exactly as given: where
    /// other nodes should dial it. Default empty: derived from the bound address
    /// (docs/PROTOCOL.md §4.2) — a specific IP is advertised as bound; a wildcard IP is
    /// replaced by the machine's interface addresses that are up and not loopback or
    /// link-local (of the bound family; both for a dual-stack `[::]`, IPv4 first), as many as
    /// fit next to the relay hints, or by loopback on a machine without any; public addresses
    /// that peers observe for this node go first. Set it behind a NAT with a forwarded port
    /// (to the public address), or to choose among the machine's addresses.
    pub advertise: Vec<SocketAddr>,
    /// A connection with no traffic for this long is closed. Default 30 s. Both sides'
    /// values are negotiated down to the smaller one.
    #[serde(with = "crate::duration")]
    pub idle_timeout: Duration,
    /// Interval of QUIC keep-alive pings on an open connection, so an idle connection stays
    /// up and a dead one is noticed. Default 10 s; must be below `idle_timeout`.
    #[serde(with = "crate::duration")]
    pub keep_alive: Duration,
    /// How long a dial (UDP path + TLS handshake) may take. Default 10 s.
    #[serde(with = "crate::duration")]
    pub dial_timeout: Duration,
    /// Largest message payload accepted or sent, in bytes. Default 1 MiB; at least 1024
    /// (peers send messages and objects that small before they know this limit).
    pub max_message_size: usize,
    /// Messages queued in one mailbox before its senders are slowed down. Default 1024.
    pub mailbox_capacity: usize,
    /// Bytes of messages a sender keeps unacknowledged per conversation (queued or in flight)
    /// before `send` waits. Default 8 MiB; at least `max_message_size`.
    pub send_window: usize,
    /// How long `send` waits for a reachable target node's acknowledgement before failing
    /// with `Timeout` (the receiver is connected but stopped reading). Default 60 s: longer
    /// than `idle_timeout`, so that a receiver that died shows as a lost connection (and its
    /// messages wait in the outbox, `outbox_ttl`) rather than as a timeout.
    #[serde(with = "crate::duration")]
    pub send_timeout: Duration,
    /// How long messages wait in the sender's outbox for a target node that was reachable (it
    /// had a connection in use within this long) but cannot be reached now (its connection was
    /// lost and dials fail) before their sends fail with `Unreachable`; meanwhile the node
    /// keeps dialing. A target not reached within this long fails the send with `Unreachable`
    /// after one dial (`dial_timeout`). While the target is unreachable, a conversation whose
    /// `send_window` is full fails further sends at once with `OutboxFull` instead of waiting.
    /// Default 10 min; at least `send_timeout`.
    #[serde(with = "crate::duration")]
    pub outbox_ttl: Duration,
    /// How long a watched mailbox or peer may stay unreachable (connection lost, redials
    /// failing) before its [`Monitor`](crate::Monitor) reports it down. Default 10 s.
    #[serde(with = "crate::duration")]
    pub monitor_grace: Duration,
    /// Default deadline of a [`call`](crate::Node::call) (open, request, response). Default 30 s.
    #[serde(with = "crate::duration")]
    pub call_timeout: Duration,
    /// A conversation stream with nothing to send or acknowledge for this long is finished;
    /// the next message opens a new one. Default 30 s.
    #[serde(with = "crate::duration")]
    pub stream_idle_timeout: Duration,
    /// A connection that lost the one-connection-per-pair rule to another live connection
    /// with the same peer (both nodes dialed each other at once) is closed once it has carried
    /// no stream data for this long, so that streams either node started on it before
    /// learning of the other finish, however long they last; new streams go to the kept
    /// connection. Default 10 s.
    #[serde(with = "crate::duration")]
    pub duplicate_grace: Duration,
    /// How long a peer has to send a stream's opening frame. Default 10 s.
    #[serde(with = "crate::duration")]
    pub open_timeout: Duration,
    /// Connections (incoming and outgoing) at most; further handshakes are refused. Default 1024.
    pub max_connections: usize,
    /// Concurrent streams a peer may open towards this node on one connection (QUIC
    /// `initial_max_streams_bidi`), of every kind together: mailbox streams, conversations
    /// (and calls, lookups, pings) and watches. This is also the bound on the conversations one
    /// peer holds open with this node at once. Default 4096.
    ///
    /// The peer is not granted all of them up front: see `initial_incoming_streams`.
    pub max_incoming_streams: u32,
    /// Concurrent streams a peer may open on a new connection before this node grants more
    /// (the QUIC `initial_max_streams_bidi` it announces). Whenever the peer's streams in use
    /// reach half of what it was granted, the node doubles the grant (QUIC `MAX_STREAMS`), up
    /// to `max_incoming_streams`; a grant is never taken back. quinn keeps about 84 bytes of
    /// state for every stream a peer may open, from the moment it is granted, so a grant of
    /// all 4096 streams up front cost every connection 337 KiB of heap, used or not. Default
    /// 100 (quinn's own default); at least 1, and at most `max_incoming_streams` is used.
    pub initial_incoming_streams: u32,
    /// Handshakes (incoming connection attempts) accepted per second from one source IP
    /// address, an IPv6 address counting by its /64 prefix, with a burst of as many; beyond,
    /// an attempt is refused before any cryptography (QUIC `CONNECTION_REFUSED`). Default 100
    /// per second; 0: no limit.
    pub handshake_rate_per_ip: u32,
    /// Once the first byte of a frame has arrived on a mailbox stream or in a conversation, the
    /// rest of the frame must arrive within this much time spent waiting for it (time this node
    /// is not reading, e.g. while a mailbox is full, does not count). Otherwise the stream is
    /// cut off: a mailbox stream with CLOSE TIMEOUT, a conversation with a `Protocol` error for
    /// its reader (and a reset). Default 10 s.
    #[serde(with = "crate::duration")]
    pub frame_timeout: Duration,
    /// Bytes one peer may have sent on a connection that this node has not read yet (the QUIC
    /// connection receive window, `initial_max_data`; each stream's own window is the smaller
    /// of 4 MiB and this). Bounds what QUIC buffers per peer; `max_connections` times this
    /// bounds it for the node. Default 32 MiB; 64 KiB to 1 GiB.
    pub receive_window: usize,
    /// Bytes all mailbox streams of one peer may hold together in this node's receive buffers
    /// (data read from QUIC, not yet delivered: in practice partly received messages). A
    /// stream whose buffer would go beyond is closed with CLOSE LIMIT (its sender retries on
    /// a new stream). Default 64 MiB; at least `max_message_size` + 64 KiB + 11 (one whole
    /// frame and one read past it).
    pub max_buffered_per_peer: usize,
    /// The same bound for all peers together. Default 1 GiB; at least `max_buffered_per_peer`.
    pub max_buffered_bytes: usize,
    /// Streams of one connection a peer may have cut off for breaking the protocol (a
    /// malformed, unexpected or oversized frame, a `from` address of another node, a stream
    /// that ends inside a frame, a missed `open_timeout` or `frame_timeout`) before this node
    /// closes the whole connection (application code PROTOCOL, reason `too many protocol
    /// violations`) and refuses the peer's node id for `ban_duration`. Refusals about
    /// addresses (forged, expired, unknown mailbox), resource limits, and streams that end
    /// before their opening frame do not count. Default 16; 0: never.
    pub max_violations: u32,
    /// How long a peer that reached `max_violations` is refused: its handshakes are closed
    /// with ADMISSION_REFUSED (reason `banned for protocol violations`). Default 60 s.
    #[serde(with = "crate::duration")]
    pub ban_duration: Duration,
    /// Conversation runs remembered for duplicate suppression, each keyed by (sending node,
    /// sending mailbox, target mailbox, epoch). Default 65 536; beyond that the oldest run no
    /// stream is using is forgotten. A run is also forgotten when its sender ends it cleanly.
    pub max_dedup_entries: usize,
    /// Which peers may connect. Default [`Admission::Any`].
    pub admission: Admission,
    /// Which peers may use this node as a relay (docs/PROTOCOL.md §12): both the peer sending
    /// a packet and its destination must be allowed. Default [`RelayAccess::Nobody`].
    pub relay: RelayAccess,
    /// Bytes per second this node relays for one sending peer (one second of burst); packets
    /// beyond are dropped. Default 4 MiB/s.
    pub relay_rate: u64,
    /// Relay nodes this node stays connected to and names in every address it mints, so that
    /// peers that cannot reach it directly reach it through them. At most 4, and together with
    /// the socket-address hints at most 4 hints fit in an address. Default none.
    #[serde(deserialize_with = "deserialize::relays")]
    pub relays: Vec<(NodeId, SocketAddr)>,
    /// Whether this node punches holes towards peers it reaches through a relay, so that the
    /// two connect directly (docs/PROTOCOL.md §10.13): it offers its candidate addresses and
    /// dials the peer's. `false` keeps relayed connections relayed, e.g. so that peers do not
    /// learn this node's address. Default `true`.
    pub hole_punching: bool,
    /// Distinct addresses this node watches at most on one peer ([`Node::monitor`]): each
    /// takes one stream of that peer's `max_incoming_streams` for as long as it is watched
    /// (watches of the same address share one). Beyond, `monitor` fails with
    /// [`MonitorError::TooManyWatches`](crate::MonitorError). Default 1024 (a quarter of the
    /// default `max_incoming_streams`); 0 forbids watching other nodes' mailboxes.
    ///
    /// [`Node::monitor`]: crate::Node::monitor
    pub max_monitors_per_peer: usize,
    /// Revoked grants one mailbox keeps at most ([`Mailbox::revoke`]): each is kept for as
    /// long as the mailbox lives (and stored, for a durable mailbox), so this bounds what
    /// revoking costs in memory and on disk. Beyond, `revoke` fails with
    /// [`RevokeError::TooMany`](crate::RevokeError) and revokes nothing. Default 4096; 0
    /// forbids revoking.
    ///
    /// [`Mailbox::revoke`]: crate::Mailbox::revoke
    pub max_revocations: usize,
}

/// Which peers may relay through a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RelayAccess {
    /// The node relays for nobody (default).
    #[default]
    Nobody,
    /// Any connected peer.
    Any,
    /// Only these nodes.
    Only(HashSet<NodeId>),
}

impl RelayAccess {
    /// Whether `peer` may relay through this node.
    pub fn allows(&self, peer: &NodeId) -> bool {
        match self {
            Self::Nobody => false,
            Self::Any => true,
            Self::Only(allowed) => allowed.contains(peer),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: Vec::new(),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(10),
            max_message_size: 1 << 20,
            mailbox_capacity: 1024,
            send_window: 8 << 20,
            send_timeout: Duration::from_secs(60),
            outbox_ttl: Duration::from_secs(600),
            call_timeout: Duration::from_secs(30),
            monitor_grace: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(30),
            duplicate_grace: Duration::from_secs(10),
            open_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_incoming_streams: 4096,
            initial_incoming_streams: 100,
            handshake_rate_per_ip: 100,
            frame_timeout: Duration::from_secs(10),
            receive_window: 32 << 20,
            max_buffered_per_peer: 64 << 20,
            max_buffered_bytes: 1 << 30,
            max_violations: 16,
            ban_duration: Duration::from_secs(60),
            max_dedup_entries: 65_536,
            admission: Admission::Any,
            relay: RelayAccess::Nobody,
            relay_rate: 4 << 20,
            relays: Vec::new(),
            hole_punching: true,
            max_monitors_per_peer: 1024,
            max_revocations: 4096,
        }
    }
}

/// Why a [`NodeConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `keep_alive` must be shorter than `idle_timeout`, or idle connections would drop.
    #[error("keep_alive ({keep_alive:?}) must be shorter than idle_timeout ({idle_timeout:?})")]
    KeepAlive {
        /// The configured keep-alive.
        keep_alive: Duration,
        /// The configured idle timeout.
        idle_timeout: Duration,
    },
    /// `send_window` must hold at least one message of the maximum size.
    #[error("send_window ({send_window}) must be at least max_message_size ({max_message_size})")]
    SendWindow {
        /// The configured window.
        send_window: usize,
        /// The configured maximum message size.
        max_message_size: usize,
    },
    /// A count or size that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A value is beyond what the protocol or QUIC can express.
    #[error("{0} is too large")]
    TooLarge(&'static str),
    /// A value is below its minimum (see the field's documentation).
    #[error("{0} is too small")]
    TooSmall(&'static str),
    /// An address of `advertise` or `relays` cannot be dialed (wildcard IP or port 0).
    #[error("{key}: {addr} cannot be dialed (wildcard IP or port 0)")]
    Undialable {
        /// The key: `advertise` or `relays`.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
    },
}

impl NodeConfig {
    /// Checks the relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keep_alive >= self.idle_timeout {
            return Err(ConfigError::KeepAlive {
                keep_alive: self.keep_alive,
                idle_timeout: self.idle_timeout,
            });
        }
        if self.send_window < self.max_message_size {
            return Err(ConfigError::SendWindow {
                send_window: self.send_window,
                max_message_size: self.max_message_size,
            });
        }
        for (name, value) in [
            ("max_message_size", self.max_message_size),
            ("mailbox_capacity", self.mailbox_capacity),
            ("max_connections", self.max_connections),
            ("max_incoming_streams", self.max_incoming_streams as usize),
            (
                "initial_incoming_streams",
                self.initial_incoming_streams as usize,
            ),
            ("max_dedup_entries", self.max_dedup_entries),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.max_message_size > (1 << 30) {
            return Err(ConfigError::TooLarge("max_message_size"));
        }
        // Every peer may send messages and objects this small before it knows the limit.
        if self.max_message_size < ferry_proto::frame::EARLY_MESSAGE_MAX {
            return Err(ConfigError::TooSmall("max_message_size"));
        }
        if self.receive_window < (64 << 10) {
            return Err(ConfigError::TooSmall("receive_window"));
        }
        if self.receive_window > (1 << 30) {
            return Err(ConfigError::TooLarge("receive_window"));
        }
        // One whole MESSAGE frame (length prefix, type byte, payload) and one read past it
        // must fit.
        let one_frame = self.max_message_size + 1 + crate::frame::MAX_VARINT_LEN + (64 << 10);
        if self.max_buffered_per_peer < one_frame {
            return Err(ConfigError::TooSmall("max_buffered_per_peer"));
        }
        if self.max_buffered_bytes < self.max_buffered_per_peer {
            return Err(ConfigError::TooSmall("max_buffered_bytes"));
        }
        if self.frame_timeout.is_zero() {
            return Err(ConfigError::Zero("frame_timeout"));
        }
        if self.advertise.len() > crate::address::MAX_HINTS {
            return Err(ConfigError::TooLarge("advertise"));
        }
        if let Some(bad) = self
            .advertise
            .iter()
            .find(|addr| addr.ip().is_unspecified() || addr.port() == 0)
        {
            return Err(ConfigError::Undialable {
                key: "advertise",
                addr: *bad,
            });
        }
        if self.idle_timeout > Duration::from_secs(3600 * 24) {
            return Err(ConfigError::TooLarge("idle_timeout"));
        }
        if self.relays.len() > crate::address::MAX_HINTS {
            return Err(ConfigError::TooLarge("relays"));
        }
        if let Some((_, bad)) = self
            .relays
            .iter()
            .find(|(_, addr)| addr.ip().is_unspecified() || addr.port() == 0)
        {
            return Err(ConfigError::Undialable {
                key: "relays",
                addr: *bad,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(NodeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn limits_against_hostile_peers_are_validated() {
        let config = |change: fn(&mut NodeConfig)| {
            let mut config = NodeConfig::default();
            change(&mut config);
            config.validate()
        };
        assert_eq!(
            config(|c| c.max_buffered_per_peer = c.max_message_size + 11),
            Err(ConfigError::TooSmall("max_buffered_per_peer"))
        );
        assert_eq!(
            config(|c| c.max_buffered_per_peer = c.max_message_size + 11 + 65_536),
            Ok(())
        );
        assert_eq!(
            config(|c| c.max_buffered_bytes = c.max_buffered_per_peer - 1),
            Err(ConfigError::TooSmall("max_buffered_bytes"))
        );
        assert_eq!(
            config(|c| c.max_message_size = 1023),
            Err(ConfigError::TooSmall("max_message_size"))
        );
        assert_eq!(config(|c| c.max_message_size = 1024), Ok(()));
        assert_eq!(
            config(|c| c.receive_window = 1000),
            Err(ConfigError::TooSmall("receive_window"))
        );
        assert_eq!(
            config(|c| c.receive_window = 2 << 30),
            Err(ConfigError::TooLarge("receive_window"))
        );
        assert_eq!(
            config(|c| c.frame_timeout = Duration::ZERO),
            Err(ConfigError::Zero("frame_timeout"))
        );
        assert_eq!(
            config(|c| c.initial_incoming_streams = 0),
            Err(ConfigError::Zero("initial_incoming_streams"))
        );
        // Above max_incoming_streams, the maximum is granted at once.
        assert_eq!(config(|c| c.initial_incoming_streams = 10_000), Ok(()));
        // 0 switches these off.
        assert_eq!(
            config(|c| {
                c.handshake_rate_per_ip = 0;
                c.max_violations = 0;
            }),
            Ok(())
        );
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let keep_alive_too_long = NodeConfig {
            keep_alive: Duration::from_secs(30),
            ..NodeConfig::default()
        };
        assert!(matches!(
            keep_alive_too_long.validate(),
            Err(ConfigError::KeepAlive { .. })
        ));
        let small_window = NodeConfig {
            send_window: 10,
            ..NodeConfig::default()
        };
        assert!(matches!(
            small_window.validate(),
            Err(ConfigError::SendWindow { .. })
        ));
        let zero = NodeConfig {
            mailbox_capacity: 0,
            ..NodeConfig::default()
        };
        assert_eq!(zero.validate(), Err(ConfigError::Zero("mailbox_capacity")));
        for bad in ["0.0.0.0:4433", "[::]:4433", "127.0.0.1:0"] {
            let config = NodeConfig {
                advertise: vec![bad.parse().unwrap()],
                ..NodeConfig::default()
            };
            assert_eq!(
                config.validate(),
                Err(ConfigError::Undialable {
                    key: "advertise",
                    addr: bad.parse().unwrap()
                }),
                "{bad}"
            );
        }
    }
}
