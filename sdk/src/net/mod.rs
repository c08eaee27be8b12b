//! How nodes reach each other: the QUIC endpoints and their configuration, the connections
//! (one in use per peer, docs/PROTOCOL.md §2.4), dialing every route at once (§2.5), relays
//! (§12), finding direct paths through NATs (address observation and hole punching, §10.12,
//! §10.13), noticing dead paths and network changes, and the limits against hostile peers.
//! Nothing here knows what flows over a connection: that is [`crate::streams`].

pub(crate) mod builtin;
pub(crate) mod connection;
pub(crate) mod dial;
pub(crate) mod forwarding;
pub(crate) mod hints;
pub(crate) mod hole_punch;
pub(crate) mod limits;
pub(crate) mod liveness;
pub(crate) mod network;
pub(crate) mod observation;
pub(crate) mod tls;
pub(crate) mod transport;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use crate::config::NodeConfig;
use crate::error::BindError;
use crate::identity::{NodeId, SecretKey};
use crate::stats::Stats;
use crate::sync::lock;
use connection::{ConnCode, Peers};
use forwarding::{RelayBudget, RelaySocket};
use hints::{InterfaceAddr, MintedHints};
use tls::Mismatches;
use transport::QuicConfigs;

/// What serves the streams peers open on a connection ([`crate::streams`]): the network layer
/// hands it every connection it takes into use, and knows nothing of stream kinds.
pub(crate) trait StreamServer: Send + Sync {
    /// Serves the streams `peer` opens on `connection` until it closes.
    fn serve(&self, peer: NodeId, connection: quinn::Connection);
}

/// What the lower parts of the network call upward, without importing what they call: the
/// modules layer as connection ← dial ← observation ← hole punching, and these two events go
/// the other way.
pub(crate) struct Hooks {
    /// A connection this node dialed went into use over a relay (connection.rs): punch a
    /// direct path to the peer ([`hole_punch::upgrade_later`]).
    pub(crate) relayed_link_dialed: fn(&Arc<Net>, NodeId, &connection::Link),
    /// A relay sees this node at a new address (observation.rs): punch again, redial direct
    /// connections ([`hole_punch::network_changed`]).
    pub(crate) network_changed: fn(&Arc<Net>),
}

/// A node's network: its endpoints, its connections and what it knows of reaching peers.
pub(crate) struct Net {
    pub(crate) key: SecretKey,
    pub(crate) id: NodeId,
    pub(crate) config: NodeConfig,
    pub(crate) stats: Arc<Stats>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) endpoint: quinn::Endpoint,
    /// The endpoint of connections relayed through other nodes (docs/PROTOCOL.md §12).
    pub(crate) relay_endpoint: quinn::Endpoint,
    pub(crate) relay_socket: Arc<RelaySocket>,
    pub(crate) relay_budget: RelayBudget,
    pub(crate) mismatches: Arc<Mismatches>,
    /// The client and server configurations of each connection.
    pub(crate) quic: QuicConfigs,
    /// The addresses peers see this node at (docs/PROTOCOL.md §10.12).
    pub(crate) observations: observation::Observations,
    /// Hole punching towards peers reached through relays.
    pub(crate) punches: hole_punch::Punches,
    pub(crate) peers: Peers,
    pub(crate) hooks: Hooks,
    /// Handshakes per source IP address (`handshake_rate_per_ip`).
    pub(crate) handshakes: limits::HandshakeLimiter,
    /// Peers refused for breaking the protocol too often (`max_violations`).
    pub(crate) bans: limits::Bans,
    /// This run's certificate serial, which tells this node's connection to itself apart.
    pub(crate) serial: u64,
    pub(crate) local_addr: SocketAddr,
    /// Dial hints put into every address this node mints from now on.
    hints: Mutex<MintedHints>,
    /// The machine's interfaces when the node started, for the network watch.
    interfaces: Vec<InterfaceAddr>,
    streams: OnceLock<Arc<dyn StreamServer>>,
    /// Told whenever a link was superseded (see [`connection::Link::supersede`]): the node's
    /// parked conversations, which keep no wait of their own, look for theirs then.
    pub(crate) links_superseded: Arc<tokio::sync::Notify>,
}

/// What [`Net::bind`] needs besides the configuration.
pub(crate) struct Shared {
    pub(crate) stats: Arc<Stats>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

impl Net {
    /// Binds the node's UDP socket and both endpoints; nothing runs until [`Net::start`].
    pub(crate) fn bind(
        key: SecretKey,
        config: NodeConfig,
        alpn: &[u8],
        shared: Shared,
    ) -> Result<Arc<Self>, BindError> {
        let mut incarnation = [0u8; 8];
        crate::identity::fill_random(&mut incarnation);
        let tls = tls::configs(&key, u64::from_be_bytes(incarnation), alpn)?;
        let quic = QuicConfigs::new(&config, tls.client, tls.server);
        let socket_error = |source| BindError::Socket {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(socket_error)?;
        let dual_stack = hints::is_dual_stack(&socket);
        let endpoint_config = transport::endpoint_config(&key);
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
        .map_err(socket_error)?;
        let local_addr = endpoint.local_addr().map_err(socket_error)?;
        let interfaces = if local_addr.ip().is_unspecified() && config.advertise.is_empty() {
            hints::machine_interfaces()
        } else {
            Vec::new()
        };
        let hints = Mutex::new(MintedHints::new(
            &config,
            local_addr,
            dual_stack,
            &interfaces,
        ));
        let net = Arc::new(Self {
            id: key.public(),
            key,
            config,
            stats: shared.stats,
            cancel: shared.cancel,
            tasks: shared.tasks,
            endpoint,
            relay_endpoint,
            relay_socket,
            relay_budget: RelayBudget::default(),
            mismatches: tls.mismatches,
            quic,
            observations: observation::Observations::default(),
            punches: hole_punch::Punches::default(),
            peers: Peers::default(),
            hooks: Hooks {
                relayed_link_dialed: hole_punch::upgrade_later,
                network_changed: hole_punch::network_changed,
            },
            handshakes: limits::HandshakeLimiter::default(),
            bans: limits::Bans::default(),
            serial: tls::incarnation_as_serial(u64::from_be_bytes(incarnation)),
            local_addr,
            hints,
            interfaces,
            streams: OnceLock::new(),
            links_superseded: Arc::default(),
        });
        net.relay_socket.attach(&net);
        Ok(net)
    }

    /// Starts accepting connections, staying connected to the relays, and watching the
    /// network; `streams` serves the streams of every connection.
    pub(crate) fn start(self: &Arc<Self>, streams: Arc<dyn StreamServer>, span: &tracing::Span) {
        // Set once, right after the node is built.
        let _ = self.streams.set(streams);
        for endpoint in [&self.endpoint, &self.relay_endpoint] {
            let relayed = std::ptr::eq(endpoint, &self.relay_endpoint);
            self.tasks.spawn(
                connection::accept_loop(self.clone(), endpoint.clone(), relayed)
                    .instrument(span.clone()),
            );
        }
        for (relay, relay_addr) in self.config.relays.clone() {
            self.tasks.spawn(
                observation::stay_connected(self.clone(), relay, relay_addr)
                    .instrument(span.clone()),
            );
        }
        if self.local_addr.ip().is_unspecified() {
            self.tasks.spawn(
                network::watch(self.clone(), self.interfaces.clone()).instrument(span.clone()),
            );
        }
        info!(parent: span, local_addr = %self.local_addr, "node started");
    }

    /// Hands a connection in use to the stream server.
    pub(crate) fn serve_streams(&self, peer: NodeId, connection: quinn::Connection) {
        if let Some(streams) = self.streams.get() {
            streams.serve(peer, connection);
        }
    }

    /// Closes every connection (the node shuts down) and forgets them.
    pub(crate) fn close(&self) {
        self.endpoint
            .close(ConnCode::SHUTDOWN.into(), b"node shutting down");
        self.relay_endpoint
            .close(ConnCode::SHUTDOWN.into(), b"node shutting down");
        self.peers.close_all();
    }

    /// Waits until both endpoints sent everything (their connections' closes).
    pub(crate) async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
        self.relay_endpoint.wait_idle().await;
    }

    /// Connections of both endpoints, also those still closing.
    pub(crate) fn open_connections(&self) -> usize {
        self.endpoint.open_connections() + self.relay_endpoint.open_connections()
    }

    /// The socket-address hints this node puts into the addresses it mints now.
    pub(crate) fn dial_hints(&self) -> crate::address::Hints {
        lock(&self.hints).shared()
    }

    /// The machine's interfaces changed: addresses minted from now on carry the new ones.
    pub(crate) fn interfaces_changed(&self, interfaces: &[InterfaceAddr]) {
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
