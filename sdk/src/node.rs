//! The node: one QUIC endpoint, its mailboxes, its connections and conversations.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use crate::address::{Address, MailboxId};
use crate::clock::{Clock, SystemClock};
use crate::config::NodeConfig;
use crate::conversation::Conversation;
use crate::error::{
    BindError, DialError, MonitorError, OpenError, PingError, SendError, ServeError,
};
use crate::identity::{NodeId, SecretKey};
use crate::mailbox::{self, Mailbox};
use crate::net::dial;
use crate::net::tls::{self};
use crate::net::Net;
use crate::outbound::Sender;
use crate::registry::mailboxes::{Caps, Durable};
use crate::registry::outbound::SlotState;
use crate::runtime::Runtime;
use crate::stats::NodeStats;
use crate::stats::{SendFailures, Stats};
use crate::store::{MailboxStore, StoreError};
use crate::streams::monitor::Monitor;
use crate::streams::service::{Call, Service, ServiceHandle, ServiceOptions, Target};
use crate::sync::lock;
use crate::Route;

/// A ferry node: an ed25519 identity, one QUIC endpoint, and mailboxes reachable by
/// capability addresses. Cheap to clone; all clones are the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Runtime>,
    inbox: Arc<Mailbox>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("local_addr", &self.inner.net.local_addr)
            .finish()
    }
}

#[cfg(test)]
impl Node {
    /// The node's internals, for in-crate tests.
    pub(crate) fn inner(&self) -> &Arc<Runtime> {
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
    /// are accepted, and the streams peers open wait (in QUIC, within `initial_incoming_streams`;
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
        let stats = Arc::new(Stats::default());
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let shared = crate::net::Shared {
            stats: stats.clone(),
            cancel: cancel.clone(),
            tasks: tasks.clone(),
        };
        let net = Net::bind(key, config.clone(), alpn, shared)?;
        let id = net.id;
        let inner = Arc::new(Runtime::new(config, net, stats, cancel, tasks, clock));
        let span = tracing::info_span!("node", id = %id.short());
        inner
            .net
            .start(Arc::new(crate::streams::Server::new(&inner)), &span);
        inner.tasks.spawn(
            crate::outbound::take_up_parked(
                Arc::downgrade(&inner),
                inner.parking.clone(),
                inner.net.links_superseded.clone(),
                inner.cancel.clone(),
            )
            .instrument(span.clone()),
        );
        let inbox = Arc::new(mailbox::new_mailbox(&inner, MailboxId::random(), None));
        Ok(Self { inner, inbox })
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The UDP address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.net.local_addr
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Creates a mailbox with a fresh random id and an address that never expires.
    pub fn mailbox(&self) -> Mailbox {
        mailbox::new_mailbox(&self.inner, MailboxId::random(), None)
    }

    /// Creates a mailbox whose address expires at `expires` (seconds since the Unix epoch).
    pub fn mailbox_expiring(&self, expires: u64) -> Mailbox {
        mailbox::new_mailbox(&self.inner, MailboxId::random(), Some(expires))
    }

    /// Creates (or re-creates, after a restart) the mailbox with a given id, so its address
    /// stays the same across restarts of a node with the same key. Any open mailbox with the
    /// same id stops receiving.
    pub fn mailbox_with_id(&self, id: MailboxId) -> Mailbox {
        mailbox::new_mailbox(&self.inner, id, None)
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
        let caps = Caps::with(store.revoked(id)?, store.counts(id)?);
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
            caps,
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
        self.inner.net.peers.add_relay(peer, relay, relay_addr);
    }

    /// Tells the node where `peer` can be reached, for addresses without dial hints.
    pub fn add_peer_addr(&self, peer: NodeId, addr: SocketAddr) {
        self.inner.net.peers.add_addr(peer, addr);
    }

    /// Connects to `peer` now (normally connections are made on first use).
    pub async fn connect(&self, peer: NodeId, addr: Option<SocketAddr>) -> Result<(), DialError> {
        let hints: Vec<SocketAddr> = addr.into_iter().collect();
        dial::connect(&self.inner.net, peer, &hints).await.map(drop)
    }

    /// Whether a live connection to `peer` exists.
    pub fn is_connected(&self, peer: &NodeId) -> bool {
        self.inner.net.peers.connection(peer).is_some()
    }

    /// The addresses this node's relays see it at (docs/PROTOCOL.md §10.12), most recent
    /// first: behind a NAT, the addresses the NAT gave it.
    pub fn observed_addrs(&self) -> Vec<SocketAddr> {
        self.inner.net.observations.addrs()
    }

    /// How this node reaches `peer` now: directly or through a relay; `None` without a
    /// connection.
    pub fn route(&self, peer: &NodeId) -> Option<Route> {
        self.inner.net.peers.link(peer).map(|link| link.route)
    }

    /// How many connections this node has taken into use since it started (dialed or
    /// accepted); a counter for metrics, and for telling that a connection was replaced.
    pub fn connections_established(&self) -> u64 {
        self.inner.net.peers.installed()
    }

    /// A [`Sender`] from the node's inbox to `to`.
    pub fn sender(&self, to: &Address) -> Sender {
        Sender::new(&self.inner, self.inbox.address().clone(), to)
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
        crate::streams::service::open(&self.inner, &target).await
    }

    /// Remembers the relays an address target names, for dialing its node.
    fn learn_relays(&self, target: &Target) {
        if let Target::Address(address) = target {
            for (relay, relay_addr) in address.relays() {
                self.inner
                    .net
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
        crate::streams::service::register(&self.inner, name, options)
    }

    /// Registers a service under `name` and runs `handler` for every conversation on the task
    /// of the conversation's stream, so a handler holding one open blocks no other and no
    /// queue stands between a request and its handler (`options.backlog` does not apply).
    /// Dropping the [`ServiceHandle`] unregisters the service; running handlers go on until
    /// they end or the node's shutdown grace passes.
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
        crate::streams::service::serve(&self.inner, name, options, handler)
    }

    /// Asks `peer` for the capability address of its service `name` (fabric's
    /// `remote_whereis`): only registered names that allow this node answer.
    pub async fn lookup(
        &self,
        peer: NodeId,
        name: &str,
        hints: &[SocketAddr],
    ) -> Result<Address, OpenError> {
        crate::streams::service::lookup(&self.inner, peer, name, hints).await
    }

    /// Measures one round trip to `peer` with the `ferry.ping` service every node has built
    /// in, dialing it at `hints` (or a known address) first if there is no connection; the
    /// dial is not part of the measured time. Fails with [`PingError::Timeout`] after the
    /// node's `call_timeout`, dial included.
    pub async fn ping(&self, peer: NodeId, hints: &[SocketAddr]) -> Result<Duration, PingError> {
        crate::streams::ping::ping(&self.inner, peer, hints).await
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
        crate::streams::monitor::monitor_mailbox(&self.inner, address.clone())
    }

    /// Watches a peer: the [`Monitor`] resolves once it shuts down or the connection stays lost
    /// longer than `monitor_grace`. A watch of this node itself resolves (with
    /// [`DownReason::LocalShutdown`](crate::DownReason::LocalShutdown)) when it shuts down.
    pub fn monitor_peer(&self, peer: NodeId, hints: &[SocketAddr]) -> Monitor {
        crate::streams::monitor::monitor_peer(&self.inner, peer, hints.to_vec())
    }

    /// A snapshot of the node's counters.
    pub fn stats(&self) -> NodeStats {
        let stats = &self.inner.stats;
        let (conversations, outbox_bytes) = {
            let conversations = lock(&self.inner.conversations);
            let outbox_bytes = conversations
                .values()
                .map(|slot| match &*lock(&slot.state) {
                    SlotState::Live(outbound) => {
                        outbound.outstanding_bytes(self.inner.config.send_window)
                    }
                    // A parked run has nothing outstanding.
                    SlotState::Parked(_) | SlotState::Ended => 0,
                })
                .sum();
            (conversations.len(), outbox_bytes)
        };
        let parked_conversations = self.inner.parking.len();
        NodeStats {
            signature_checks: stats.signature_checks.load(Ordering::Relaxed),
            forged_addresses: stats.forged.load(Ordering::Relaxed),
            messages_in: stats.messages_in.load(Ordering::Relaxed),
            // The node's connection to itself (docs/PROTOCOL.md §10.3) is no peer.
            connected_peers: self.inner.net.peers.connected().saturating_sub(usize::from(
                self.inner.net.peers.connection(&self.inner.id).is_some(),
            )),
            open_connections: self.inner.net.open_connections(),
            mailboxes: self.inner.mailboxes.len(),
            conversations,
            parked_conversations,
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
        inner.begin_closing();
        crate::outbound::drain(inner, grace).await;
        inner.cancel.cancel();
        inner.mailboxes.wake_all();
        inner.tasks.close();
        // Closing the endpoint drops unsent stream data, so let the tasks finish first.
        let _ = tokio::time::timeout(grace, inner.tasks.wait()).await;
        inner.halt.cancel();
        inner.net.close();
        inner.mailboxes.clear();
        // What is left ends as the connections close, except application code that never
        // returns (a mailbox handler, say): that is not waited for beyond the grace.
        let _ = tokio::time::timeout(grace, inner.tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.net.wait_idle()).await;
        info!(id = %inner.id.short(), "node stopped");
    }
}
