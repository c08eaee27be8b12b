//! The counters a node keeps, and their public snapshot ([`NodeStats`], `Node::stats`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::SendError;

/// Counters a node keeps; read them with [`Node::stats`](crate::Node::stats).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) signature_checks: AtomicU64,
    pub(crate) forged: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) relayed_packets: AtomicU64,
    pub(crate) relayed_bytes: AtomicU64,
    pub(crate) relay_refused: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) streams_in: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) streams_cut_off: AtomicU64,
    pub(crate) peers_banned: AtomicU64,
    pub(crate) path_probes: AtomicU64,
    pub(crate) redials: AtomicU64,
    /// Failed sends by kind, indexed as [`SendFailures::KINDS`].
    pub(crate) send_failures: [AtomicU64; SendFailures::KINDS.len()],
}

impl Stats {
    pub(crate) fn count_signature_check(&self) {
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_forged(&self) {
        self.forged.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_messages_in(&self, messages: u64) {
        self.messages_in.fetch_add(messages, Ordering::Relaxed);
    }
    pub(crate) fn count_relayed(&self, bytes: usize) {
        self.relayed_packets.fetch_add(1, Ordering::Relaxed);
        self.relayed_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub(crate) fn count_handshake_refused(&self) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_stream_cut_off(&self) {
        self.streams_cut_off.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_peer_banned(&self) {
        self.peers_banned.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_path_probe(&self) {
        self.path_probes.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_redial(&self) {
        self.redials.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_relay_refused(&self) {
        self.relay_refused.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_bytes_in(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub(crate) fn count_acked(&self, messages: u64, bytes: u64) {
        self.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn count_send_failure(&self, error: &SendError) {
        let kind = SendFailures::kind_of(error);
        if let Some(counter) = self.send_failures.get(kind) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Counts an incoming stream as open until the returned guard drops.
    pub(crate) fn stream_in(self: &Arc<Self>) -> StreamGuard {
        self.streams_in.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }
}

/// Counts one open incoming stream while it lives.
pub(crate) struct StreamGuard(Arc<Stats>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams_in.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Failed sends (conversation runs that failed) by kind of error, since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendFailures {
    /// Forged or tampered addresses.
    pub forged: u64,
    /// Expired addresses.
    pub expired: u64,
    /// Addresses naming another node.
    pub wrong_node: u64,
    /// Unknown or closed mailboxes.
    pub no_such_mailbox: u64,
    /// Unreachable nodes (after `outbox_ttl`, or refused).
    pub unreachable: u64,
    /// Messages too large for the receiver.
    pub too_large: u64,
    /// No acknowledgement within `send_timeout`.
    pub timeout: u64,
    /// Protocol violations by the receiver.
    pub protocol: u64,
    /// Runs ended by this node's shutdown.
    pub node_closed: u64,
    /// Anything else.
    pub other: u64,
}

impl SendFailures {
    /// The kinds, in the order of the node's counters; also the `kind` label of the
    /// `ferry_send_failures_total` metric.
    pub const KINDS: [&'static str; 10] = [
        "forged",
        "expired",
        "wrong_node",
        "no_such_mailbox",
        "unreachable",
        "too_large",
        "timeout",
        "protocol",
        "node_closed",
        "other",
    ];

    fn kind_of(error: &SendError) -> usize {
        match error {
            SendError::Forged => 0,
            SendError::Expired(_) => 1,
            SendError::WrongNode => 2,
            SendError::NoSuchMailbox => 3,
            SendError::Unreachable(_) | SendError::OutboxFull { .. } => 4,
            SendError::TooLarge { .. } => 5,
            SendError::Timeout => 6,
            SendError::Protocol(_) => 7,
            SendError::NodeClosed => 8,
            _ => 9,
        }
    }

    /// (kind, count) pairs in the order of [`SendFailures::KINDS`].
    pub fn by_kind(&self) -> [(&'static str, u64); 10] {
        let counts = [
            self.forged,
            self.expired,
            self.wrong_node,
            self.no_such_mailbox,
            self.unreachable,
            self.too_large,
            self.timeout,
            self.protocol,
            self.node_closed,
            self.other,
        ];
        let mut out = [("", 0); 10];
        for (slot, (kind, count)) in out.iter_mut().zip(Self::KINDS.iter().zip(counts)) {
            *slot = (kind, count);
        }
        out
    }

    pub(crate) fn load(counters: &[AtomicU64; 10]) -> Self {
        let [forged, expired, wrong_node, no_such_mailbox, unreachable, too_large, timeout, protocol, node_closed, other] =
            counters.each_ref().map(|c| c.load(Ordering::Relaxed));
        Self {
            forged,
            expired,
            wrong_node,
            no_such_mailbox,
            unreachable,
            too_large,
            timeout,
            protocol,
            node_closed,
            other,
        }
    }
}

/// A snapshot of a node's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Address signatures checked with `verify_strict` (cheap checks and the cache avoid most).
    pub signature_checks: u64,
    /// Addresses refused for a bad signature.
    pub forged_addresses: u64,
    /// Messages accepted into this node's mailboxes from other nodes.
    pub messages_in: u64,
    /// Peers with a live connection.
    pub connected_peers: usize,
    /// QUIC connections of the endpoint, including ones still closing.
    pub open_connections: usize,
    /// Open mailboxes.
    pub mailboxes: usize,
    /// Outgoing conversations (their stream open, or waiting for messages until
    /// `stream_idle_timeout`).
    pub conversations: usize,
    /// Of those, the ones parked without a task: quiet for a second or more.
    pub parked_conversations: usize,
    /// Incoming conversation runs remembered for duplicate suppression.
    pub dedup_entries: usize,
    /// Packets this node forwarded as a relay.
    pub relayed_packets: u64,
    /// Bytes of those packets.
    pub relayed_bytes: u64,
    /// Packets this node refused to relay (policy, budget, or destination not connected).
    pub relay_refused: u64,
    /// Payload bytes of the messages accepted from other nodes.
    pub bytes_in: u64,
    /// Messages this node sent that the target node acknowledged.
    pub messages_out: u64,
    /// Payload bytes of those messages.
    pub bytes_out: u64,
    /// Streams opened by peers that are being served now.
    pub streams_in: u64,
    /// Incoming handshakes refused by `handshake_rate_per_ip` or `max_connections`.
    pub handshakes_refused: u64,
    /// Incoming streams cut off by a limit: no opening frame within `open_timeout`, a frame
    /// not completed within `frame_timeout`, or a buffer limit (`max_buffered_per_peer`,
    /// `max_buffered_bytes`).
    pub streams_cut_off: u64,
    /// Connections closed because their peer reached `max_violations` (the peer is then
    /// refused for `ban_duration`).
    pub peers_banned: u64,
    /// Bytes held now in the receive buffers of mailbox streams (`max_buffered_bytes`).
    pub buffered_bytes: u64,
    /// Probes sent on paths that stopped acknowledging while messages waited
    /// (docs/PROTOCOL.md §6.3).
    pub path_probes: u64,
    /// Peers dialed again while a connection to them existed: its path stopped answering, or
    /// this node's network changed.
    pub redials: u64,
    /// Messages waiting in this node's mailboxes for the application.
    pub mailbox_depth: u64,
    /// Bytes of messages waiting in the outbox: queued or sent and not yet acknowledged
    /// (each counted as its size + 32, like `send_window`).
    pub outbox_bytes: u64,
    /// Failed sends by kind.
    pub send_failures: SendFailures,
}
