//! The node: one QUIC endpoint, its mailboxes, its connections and conversations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use crate::address::{Address, MailboxId};
use crate::clock::{Clock, SystemClock};
use crate::config::NodeConfig;
use crate::connection::{self, ConnCode, Peers};
use crate::conversation::Conversation;
use crate::error::{
    BindError, DialError, MonitorError, OpenError, PingError, SendError, ServeError,
};
use crate::forwarding::{RelayBudget, RelaySocket};
use crate::hints::MintedHints;
use crate::identity::{NodeId, SecretKey};
use crate::inbound::DedupTable;
use crate::mailbox::{lock, Durable, Mailbox, Mailboxes};
use crate::monitor::Monitor;
use crate::outbound::{ConversationKey, Outbound, Sender};
use crate::service::{Call, Service, ServiceHandle, ServiceOptions, Target};
use crate::store::{MailboxStore, StoreError};
use crate::tls::{self, Mismatches};
use crate::transport::QuicConfigs;
use crate::Route;

/// Counters a node keeps; read them with [`Node::stats`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    signature_checks: AtomicU64,
    forged: AtomicU64,
    messages_in: AtomicU64,
    relayed_packets: AtomicU64,
    relayed_bytes: AtomicU64,
    relay_refused: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    streams_in: AtomicU64,
    handshakes_refused: AtomicU64,
    streams_cut_off: AtomicU64,
    peers_banned: AtomicU64,
    path_probes: AtomicU64,
    redials: AtomicU64,
    /// Failed sends by kind, indexed as [`SendFailures::KINDS`].
    send_failures: [AtomicU64; SendFailures::KINDS.len()],
}

impl Stats {
    pub(crate) fn count_signature_check(&self) {
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_forged(&self) {
        self.forged.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_message_in(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
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

    fn load(counters: &[AtomicU64; 10]) -> Self {
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
    /// Outgoing conversations with a running task.
    pub conversations: usize,
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

impl NodeInner {
    /// A capability address for `mailbox` with this node's dial hints and relay hints.
    pub(crate) fn mint(&self, mailbox: MailboxId, expires: Option<u64>) -> Address {
        let hints = lock(&self.hints).current();
        let mut address = Address::mint(&self.key, mailbox, expires, hints);
        for (relay, relay_addr) in &self.config.relays {
            address = address.with_relay(*relay, *relay_addr);
        }
        address
    }

    /// The socket-address hints this node puts into the addresses it mints now.
    pub(crate) fn dial_hints(&self) -> Vec<SocketAddr> {
        lock(&self.hints).current()
    }

    /// The machine's interfaces changed: addresses minted from now on carry the new ones.
    pub(crate) fn interfaces_changed(&self, interfaces: &[crate::hints::InterfaceAddr]) {
        lock(&self.hints).set_interfaces(&self.config, self.local_addr, interfaces);
    }

    /// Puts `addr`, where a peer saw this node's packets come from (its public address behind
    /// a NAT), first among the dial hints of the addresses minted from now on (docs/PROTOCOL.md
    /// §4.2). Addresses minted before keep their hints.
    pub(crate) fn add_observed_addr(&self, addr: SocketAddr) {
        if lock(&self.hints).add_observed(addr) {
            info!(id = %self.id.short(), %addr, "observed address added to minted addresses");
        }
    }

    /// Whether shutdown has begun: no new messages are accepted for sending.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Where this node dials itself: the bound address, a wildcard IP replaced by loopback.
    pub(crate) fn loopback_addr(&self) -> SocketAddr {
        let mut addr = self.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        addr
    }
}

pub(crate) struct NodeInner {
    pub(crate) key: SecretKey,
    pub(crate) id: NodeId,
    pub(crate) config: NodeConfig,
    pub(crate) endpoint: quinn::Endpoint,
    /// The endpoint of connections relayed through other nodes (docs/PROTOCOL.md §12).
    pub(crate) relay_endpoint: quinn::Endpoint,
    pub(crate) relay_socket: Arc<RelaySocket>,
    pub(crate) relay_budget: RelayBudget,
    pub(crate) mismatches: Arc<Mismatches>,
    /// The client and server configurations of each connection.
    pub(crate) quic: QuicConfigs,
    /// The addresses peers see this node at (docs/PROTOCOL.md §10.12).
    pub(crate) observations: crate::observation::Observations,
    /// Hole punching towards peers reached through relays.
    pub(crate) punches: crate::hole_punch::Punches,
    pub(crate) mailboxes: Mailboxes,
    pub(crate) peers: Peers,
    pub(crate) services: crate::service::Services,
    pub(crate) conversations: Mutex<HashMap<ConversationKey, Arc<Outbound>>>,
    pub(crate) dedup: DedupTable,
    /// Handshakes per source IP address (`handshake_rate_per_ip`).
    pub(crate) handshakes: crate::limits::HandshakeLimiter,
    /// Bytes in the receive buffers of all mailbox streams (`max_buffered_bytes`).
    pub(crate) buffered: Arc<crate::limits::ByteBudget>,
    /// Peers refused for breaking the protocol too often (`max_violations`).
    pub(crate) bans: crate::limits::Bans,
    pub(crate) stats: Arc<Stats>,
    pub(crate) cancel: CancellationToken,
    /// Set at the start of shutdown; an atomic load where the token would take a lock.
    closing: std::sync::atomic::AtomicBool,
    pub(crate) tasks: TaskTracker,
    /// Cancelled once the node takes streams from its peers ([`Node::serve_streams`]).
    pub(crate) serving: CancellationToken,
    local_addr: SocketAddr,
    /// Dial hints put into every address this node mints from now on.
    hints: Mutex<MintedHints>,
    /// Cancelled once shutdown's grace for tasks has passed: service handlers still running
    /// then are dropped, so a handler that never returns cannot hold the shutdown up.
    pub(crate) halt: CancellationToken,
    /// This run's certificate serial, which tells this node's connection to itself apart.
    pub(crate) serial: u64,
    /// Watches of other nodes' mailboxes, shared per watched address.
    pub(crate) watches: crate::monitor::Watches,
    /// The wall clock addresses' expiry is checked against.
    pub(crate) clock: Arc<dyn Clock>,
}

/// A ferry node: an ed25519 identity, one QUIC endpoint, and mailboxes reachable by
/// capability addresses. Cheap to clone; all clones are the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
    inbox: Arc<Mailbox>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

#[cfg(test)]
impl Node {
    /// The node's internals, for in-crate tests.
    pub(crate) fn inner(&self) -> &Arc<NodeInner> {
        &self.inner
    }
}

/// Builds a [`Node`]: `Node::builder(key).config(config).bind().await` (or [`Node::bind`]
/// for a node with default options).
#[must_use = "a builder does nothing until bind() is awaited"]
pub struct Builder {
    key: SecretKey,
    config: NodeConfig,
    paused: bool,
    alpn: Vec<u8>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("node", &self.key.public())
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// The node's configuration (default: [`NodeConfig::default`]).
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// The node takes no streams from its peers until [`Node::serve_streams`]: connections
    /// are accepted, and the streams peers open wait (in QUIC, within `max_incoming_streams`;
    /// their openers' `open_timeout` covers the wait). A node that serves durable mailboxes
    /// starts this way and reopens them first, so that a sender retransmitting across a
    /// restart never hears "no such mailbox".
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }

    /// Speaks the ALPN protocol id `alpn` instead of `ferry/1` (docs/PROTOCOL.md §2.2): a
    /// node of another protocol version, as interop tests need.
    pub fn alpn(mut self, alpn: &[u8]) -> Self {
        self.alpn = alpn.to_vec();
        self
    }

    /// The wall clock addresses' expiry is checked against (default: [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Starts the node on `config.listen`. Must be called inside a tokio runtime.
    pub async fn bind(self) -> Result<Node, BindError> {
        let paused = self.paused;
        let node = Node::start(self).await?;
        if !paused {
            node.serve_streams();
        }
        Ok(node)
    }
}

impl Node {
    /// A builder of a node with `key`.
    pub fn builder(key: SecretKey) -> Builder {
        Builder {
            key,
            config: NodeConfig::default(),
            paused: false,
            alpn: tls::ALPN.to_vec(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Starts a node with `key` on `config.listen` and default options (see
    /// [`Node::builder`]). Must be called inside a tokio runtime.
    pub async fn bind(key: SecretKey, config: NodeConfig) -> Result<Self, BindError> {
        Self::builder(key).config(config).bind().await
    }

    /// Starts taking the streams peers open (a node not built [`Builder::paused`] already
    /// does).
    pub fn serve_streams(&self) {
        self.inner.serving.cancel();
    }

    async fn start(builder: Builder) -> Result<Self, BindError> {
        let Builder {
            key,
            config,
            alpn,
            clock,
            ..
        } = builder;
        let alpn = &alpn[..];
        config.validate()?;
        let mut incarnation = [0u8; 8];
        crate::identity::fill_random(&mut incarnation);
        let tls = tls::configs(&key, u64::from_be_bytes(incarnation), alpn)?;
        let quic = QuicConfigs::new(&config, tls.client, tls.server);
        let socket_error = |source| BindError::Socket {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(socket_error)?;
        let dual_stack = crate::hints::is_dual_stack(&socket);
        let endpoint_config = crate::transport::endpoint_config(&key);
        let endpoint = quinn::Endpoint::new(
            endpoint_config.clone(),
            Some(quic.endpoint_server()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(socket_error)?;
        let relay_socket = Arc::new(RelaySocket::new());
        let relay_endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(quic.endpoint_server()),
            relay_socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| BindError::Socket {
            addr: config.listen,
            source,
        })?;
        let local_addr = endpoint.local_addr().map_err(|source| BindError::Socket {
            addr: config.listen,
            source,
        })?;
        let id = key.public();
        let interfaces = if local_addr.ip().is_unspecified() && config.advertise.is_empty() {
            crate::hints::machine_interfaces()
        } else {
            Vec::new()
        };
        let hints = Mutex::new(MintedHints::new(
            &config,
            local_addr,
            dual_stack,
            &interfaces,
        ));
        let watch_network = local_addr.ip().is_unspecified();
        let buffered = Arc::new(crate::limits::ByteBudget::new(config.max_buffered_bytes));
        let inner = Arc::new(NodeInner {
            key,
            id,
            config,
            endpoint,
            relay_endpoint,
            relay_socket,
            relay_budget: RelayBudget::default(),
            mismatches: tls.mismatches,
            quic,
            observations: crate::observation::Observations::default(),
            punches: crate::hole_punch::Punches::default(),
            mailboxes: Mailboxes::default(),
            peers: Peers::default(),
            services: crate::service::Services::default(),
            conversations: Mutex::new(HashMap::new()),
            dedup: DedupTable::default(),
            handshakes: crate::limits::HandshakeLimiter::default(),
            buffered,
            bans: crate::limits::Bans::default(),
            stats: Arc::new(Stats::default()),
            cancel: CancellationToken::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            tasks: TaskTracker::new(),
            serving: CancellationToken::new(),
            halt: CancellationToken::new(),
            serial: tls::incarnation_as_serial(u64::from_be_bytes(incarnation)),
            watches: crate::monitor::Watches::default(),
            clock,
            local_addr,
            hints,
        });
        let span = tracing::info_span!("node", id = %id.short());
        inner.relay_socket.attach(&inner);
        inner.tasks.spawn(
            connection::accept_loop(inner.clone(), inner.endpoint.clone(), false)
                .instrument(span.clone()),
        );
        inner.tasks.spawn(
            connection::accept_loop(inner.clone(), inner.relay_endpoint.clone(), true)
                .instrument(span.clone()),
        );
        for (relay, relay_addr) in inner.config.relays.clone() {
            inner.tasks.spawn(
                connection::stay_connected(inner.clone(), relay, relay_addr)
                    .instrument(span.clone()),
            );
        }
        if watch_network {
            inner
                .tasks
                .spawn(crate::network::watch(inner.clone(), interfaces).instrument(span.clone()));
        }
        let inbox = Arc::new(new_mailbox(&inner, MailboxId::random(), None));
        info!(parent: &span, %local_addr, "node started");
        Ok(Self { inner, inbox })
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The UDP address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Creates a mailbox with a fresh random id and an address that never expires.
    pub fn mailbox(&self) -> Mailbox {
        new_mailbox(&self.inner, MailboxId::random(), None)
    }

    /// Creates a mailbox whose address expires at `expires` (seconds since the Unix epoch).
    pub fn mailbox_expiring(&self, expires: u64) -> Mailbox {
        new_mailbox(&self.inner, MailboxId::random(), Some(expires))
    }

    /// Creates (or re-creates, after a restart) the mailbox with a given id, so its address
    /// stays the same across restarts of a node with the same key. Any open mailbox with the
    /// same id stops receiving.
    pub fn mailbox_with_id(&self, id: MailboxId) -> Mailbox {
        new_mailbox(&self.inner, id, None)
    }

    /// Opens mailbox `id` backed by `store` (see [`crate::store`]): every message is stored
    /// before the node acknowledges it, messages stored earlier (before a restart) are
    /// delivered first, and a message stays stored until [`Message::ack`](crate::Message::ack).
    /// Its address is the same across restarts of a node with the same key.
    pub fn durable_mailbox(
        &self,
        id: MailboxId,
        store: Arc<dyn MailboxStore>,
    ) -> Result<Mailbox, StoreError> {
        let pending = store.pending(id)?;
        let durable = Arc::new(Durable {
            store,
            mailbox: id,
            replayed: CancellationToken::new(),
        });
        let address = self.inner.mint(id, None);
        Ok(Mailbox::new(
            id,
            address,
            &self.inner,
            self.inner.config.mailbox_capacity,
            Some((durable, pending)),
        ))
    }

    /// The node's own mailbox: [`Node::send`] sends from it, so replies arrive here.
    pub fn inbox(&self) -> &Mailbox {
        &self.inbox
    }

    /// Mints another address for an open mailbox of this node (e.g. one that expires).
    pub fn address_for(&self, mailbox: MailboxId, expires: Option<u64>) -> Address {
        self.inner.mint(mailbox, expires)
    }

    /// Tells the node that `peer` can be reached through the relay node `relay` at
    /// `relay_addr` (`ferry send --via`); used when dialing `peer` directly fails or no
    /// socket address is known. Addresses with relay hints teach this by themselves.
    pub fn add_relay_route(&self, peer: NodeId, relay: NodeId, relay_addr: SocketAddr) {
        self.inner.peers.add_relay(peer, relay, relay_addr);
    }

    /// Tells the node where `peer` can be reached, for addresses without dial hints.
    pub fn add_peer_addr(&self, peer: NodeId, addr: SocketAddr) {
        self.inner.peers.add_addr(peer, addr);
    }

    /// Connects to `peer` now (normally connections are made on first use).
    pub async fn connect(&self, peer: NodeId, addr: Option<SocketAddr>) -> Result<(), DialError> {
        let hints: Vec<SocketAddr> = addr.into_iter().collect();
        connection::connect(&self.inner, peer, &hints)
            .await
            .map(drop)
    }

    /// Whether a live connection to `peer` exists.
    pub fn is_connected(&self, peer: &NodeId) -> bool {
        self.inner.peers.connection(peer).is_some()
    }

    /// The addresses this node's relays see it at (docs/PROTOCOL.md §10.12), most recent
    /// first: behind a NAT, the addresses the NAT gave it.
    pub fn observed_addrs(&self) -> Vec<SocketAddr> {
        self.inner.observations.addrs()
    }

    /// How this node reaches `peer` now: directly or through a relay; `None` without a
    /// connection.
    pub fn route(&self, peer: &NodeId) -> Option<Route> {
        self.inner.peers.link(peer).map(|link| link.route)
    }

    /// How many connections this node has taken into use since it started (dialed or
    /// accepted); a counter for metrics, and for telling that a connection was replaced.
    pub fn connections_established(&self) -> u64 {
        self.inner.peers.installed()
    }

    /// A [`Sender`] from the node's inbox to `to`.
    pub fn sender(&self, to: &Address) -> Sender {
        Sender::new(&self.inner, self.inbox.address().without_hints(), to)
    }

    /// Sends `message` (postcard-encoded) from the node's inbox and waits until the target
    /// node has accepted it.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        to: &Address,
        message: &T,
    ) -> Result<(), SendError> {
        self.sender(to).send(message).await
    }

    /// Sends raw bytes from the node's inbox and waits until the target node accepted them.
    pub async fn send_bytes(&self, to: &Address, payload: Bytes) -> Result<(), SendError> {
        self.sender(to).send_bytes(payload).await
    }

    /// Opens a conversation on its own stream with a service (by name) or with the service
    /// behind a capability address.
    pub async fn open(&self, target: impl Into<Target>) -> Result<Conversation, OpenError> {
        let target = target.into();
        self.learn_relays(&target);
        crate::service::open(&self.inner, &target).await
    }

    /// Remembers the relays an address target names, for dialing its node.
    fn learn_relays(&self, target: &Target) {
        if let Target::Address(address) = target {
            for (relay, relay_addr) in address.relays() {
                self.inner
                    .peers
                    .add_relay(address.node(), relay, relay_addr);
            }
        }
    }

    /// A call: sends `request` to the service and resolves to its response. Set a deadline
    /// with [`Call::timeout`]; dropping the call cancels it at the callee.
    ///
    /// ```no_run
    /// # async fn demo(node: ferry::Node, peer: ferry::NodeId) -> Result<(), ferry::CallError> {
    /// use std::time::Duration;
    /// let answer: String = node
    ///     .call(ferry::Target::service(peer, "echo"), "hello")
    ///     .timeout(Duration::from_secs(2))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn call<Req: Serialize + ?Sized, Resp>(
        &self,
        target: impl Into<Target>,
        request: &Req,
    ) -> Call<Resp> {
        let target = target.into();
        self.learn_relays(&target);
        Call::new(self.inner.clone(), target, request)
    }

    /// Registers a service under `name`; take its conversations with [`Service::accept`].
    pub fn service(&self, name: &str, options: ServiceOptions) -> Result<Service, ServeError> {
        crate::service::register(&self.inner, name, options)
    }

    /// Registers a service under `name` and runs `handler` on its own task for every
    /// conversation, so a handler holding one open blocks no other.
    pub fn serve<F, Fut>(
        &self,
        name: &str,
        options: ServiceOptions,
        handler: F,
    ) -> Result<ServiceHandle, ServeError>
    where
        F: Fn(Conversation) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        crate::service::serve(&self.inner, name, options, handler)
    }

    /// Asks `peer` for the capability address of its service `name` (fabric's
    /// `remote_whereis`): only registered names that allow this node answer.
    pub async fn lookup(
        &self,
        peer: NodeId,
        name: &str,
        hints: &[SocketAddr],
    ) -> Result<Address, OpenError> {
        crate::service::lookup(&self.inner, peer, name, hints).await
    }

    /// Measures one round trip to `peer` with the `ferry.ping` service every node has built
    /// in, dialing it at `hints` (or a known address) first if there is no connection; the
    /// dial is not part of the measured time. Fails with [`PingError::Timeout`] after the
    /// node's `call_timeout`, dial included.
    pub async fn ping(&self, peer: NodeId, hints: &[SocketAddr]) -> Result<Duration, PingError> {
        crate::ping::ping(&self.inner, peer, hints).await
    }

    /// Watches the mailbox (or service) of `address`: the [`Monitor`] resolves with the
    /// reason once it closes, its node shuts down, or the connection stays lost (or the node
    /// does not answer) longer than `monitor_grace`.
    ///
    /// Watches of the same address share one stream to its node. Fails with
    /// [`MonitorError::TooManyWatches`] if this node already watches
    /// `max_monitors_per_peer` other addresses on that node.
    pub fn monitor(&self, address: &Address) -> Result<Monitor, MonitorError> {
        self.learn_relays(&Target::Address(address.clone()));
        crate::monitor::monitor_mailbox(&self.inner, address.clone())
    }

    /// Watches a peer: the [`Monitor`] resolves once it shuts down or the connection stays lost
    /// longer than `monitor_grace`. A watch of this node itself resolves (with
    /// [`DownReason::LocalShutdown`](crate::DownReason::LocalShutdown)) when it shuts down.
    pub fn monitor_peer(&self, peer: NodeId, hints: &[SocketAddr]) -> Monitor {
        crate::monitor::monitor_peer(&self.inner, peer, hints.to_vec())
    }

    /// A snapshot of the node's counters.
    pub fn stats(&self) -> NodeStats {
        let stats = &self.inner.stats;
        let (conversations, outbox_bytes) = {
            let conversations = lock(&self.inner.conversations);
            let outbox_bytes = conversations
                .values()
                .map(|outbound| outbound.outstanding_bytes())
                .sum();
            (conversations.len(), outbox_bytes)
        };
        NodeStats {
            signature_checks: stats.signature_checks.load(Ordering::Relaxed),
            forged_addresses: stats.forged.load(Ordering::Relaxed),
            messages_in: stats.messages_in.load(Ordering::Relaxed),
            // The node's connection to itself (docs/PROTOCOL.md §10.3) is no peer.
            connected_peers: self.inner.peers.connected().saturating_sub(usize::from(
                self.inner.peers.connection(&self.inner.id).is_some(),
            )),
            open_connections: self.inner.endpoint.open_connections()
                + self.inner.relay_endpoint.open_connections(),
            mailboxes: self.inner.mailboxes.len(),
            conversations,
            dedup_entries: self.inner.dedup.len(),
            relayed_packets: stats.relayed_packets.load(Ordering::Relaxed),
            relayed_bytes: stats.relayed_bytes.load(Ordering::Relaxed),
            relay_refused: stats.relay_refused.load(Ordering::Relaxed),
            bytes_in: stats.bytes_in.load(Ordering::Relaxed),
            messages_out: stats.messages_out.load(Ordering::Relaxed),
            bytes_out: stats.bytes_out.load(Ordering::Relaxed),
            streams_in: stats.streams_in.load(Ordering::Relaxed),
            handshakes_refused: stats.handshakes_refused.load(Ordering::Relaxed),
            streams_cut_off: stats.streams_cut_off.load(Ordering::Relaxed),
            peers_banned: stats.peers_banned.load(Ordering::Relaxed),
            buffered_bytes: self.inner.buffered.used() as u64,
            path_probes: stats.path_probes.load(Ordering::Relaxed),
            redials: stats.redials.load(Ordering::Relaxed),
            mailbox_depth: self.inner.mailboxes.depth(),
            outbox_bytes,
            send_failures: SendFailures::load(&stats.send_failures),
        }
    }

    /// Shuts down in order: refuses new sends, waits up to `grace` for messages in flight to
    /// be acknowledged, stops every task (receiving streams acknowledge what they delivered and
    /// tell their senders why they end, service handlers finish, for up to `grace` again),
    /// drops the service handlers still running, closes every connection with a reason, and
    /// waits up to `grace` once more for the remaining tasks. So it returns within about
    /// 3 × `grace` + 1 s, whatever handlers do (docs/PROTOCOL.md §6.9).
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::Release);
        crate::outbound::drain(inner, grace).await;
        inner.cancel.cancel();
        inner.tasks.close();
        // Closing the endpoint drops unsent stream data, so let the tasks finish first.
        let _ = tokio::time::timeout(grace, inner.tasks.wait()).await;
        inner.halt.cancel();
        inner
            .endpoint
            .close(ConnCode::SHUTDOWN.into(), b"node shutting down");
        inner
            .relay_endpoint
            .close(ConnCode::SHUTDOWN.into(), b"node shutting down");
        inner.peers.close_all();
        inner.mailboxes.clear();
        // What is left ends as the connections close, except application code that never
        // returns (a mailbox handler, say): that is not waited for beyond the grace.
        let _ = tokio::time::timeout(grace, inner.tasks.wait()).await;
        let idle = async {
            inner.endpoint.wait_idle().await;
            inner.relay_endpoint.wait_idle().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), idle).await;
        info!(id = %inner.id.short(), "node stopped");
    }
}

pub(crate) fn new_mailbox(node: &Arc<NodeInner>, id: MailboxId, expires: Option<u64>) -> Mailbox {
    let address = node.mint(id, expires);
    Mailbox::new(id, address, node, node.config.mailbox_capacity, None)
}
