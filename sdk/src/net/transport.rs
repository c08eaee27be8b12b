//! The QUIC configuration of a node: transport parameters, the endpoint's secrets, and the
//! per-connection client and server configurations (each connection gets its own congestion
//! controller, which its [`PathProbe`] can open for one packet).

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::config::NodeConfig;
use crate::identity::SecretKey;
use crate::net::liveness::PathProbe;

/// What a node needs to make the QUIC configuration of each of its connections.
pub(crate) struct QuicConfigs {
    config: NodeConfig,
    client: Arc<QuicClientConfig>,
    server: quinn::ServerConfig,
}

impl QuicConfigs {
    pub(crate) fn new(
        config: &NodeConfig,
        client: QuicClientConfig,
        server: QuicServerConfig,
    ) -> Self {
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(Arc::new(transport_config(config, false)));
        Self {
            config: config.clone(),
            client: Arc::new(client),
            server,
        }
    }

    /// The configuration of the endpoints' incoming connections before they are accepted
    /// (retries, token keys); each accepted connection gets [`QuicConfigs::server`].
    pub(crate) fn endpoint_server(&self) -> quinn::ServerConfig {
        self.server.clone()
    }

    /// The client configuration of one dialed connection, probed by `probe`.
    pub(crate) fn client(&self, relayed: bool, probe: &Arc<PathProbe>) -> quinn::ClientConfig {
        let mut client = quinn::ClientConfig::new(self.client.clone());
        client.transport_config(Arc::new(
            probe.transport(transport_config(&self.config, relayed)),
        ));
        client
    }

    /// The server configuration of one accepted connection, probed by `probe`.
    pub(crate) fn server(&self, relayed: bool, probe: &Arc<PathProbe>) -> Arc<quinn::ServerConfig> {
        let mut server = self.server.clone();
        server.transport_config(Arc::new(
            probe.transport(transport_config(&self.config, relayed)),
        ));
        Arc::new(server)
    }
}

/// The endpoint configuration, with the keys of stateless resets and of connection ids
/// derived from the node's secret key: a node restarted with the same key recognises the
/// connection ids of its previous run and answers packets for them with a stateless reset its
/// peers can verify, so they learn at once that their old connections are gone instead of
/// waiting for the idle timeout.
pub(crate) fn endpoint_config(key: &SecretKey) -> quinn::EndpointConfig {
    let derive = |label: &[u8]| {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(label);
        context.update(&key.to_bytes());
        context.finish()
    };
    let reset = derive(b"ferry/stateless-reset/v1");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    let cid = derive(b"ferry/connection-id/v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// A flow-control window; validate() bounds it to 1 GiB, well within QUIC's varint range.
fn window(bytes: usize) -> quinn::VarInt {
    quinn::VarInt::from_u64(bytes as u64).unwrap_or(quinn::VarInt::MAX)
}

/// The streams a peer may open on a new connection before the node grants more.
pub(crate) fn initial_streams(config: &NodeConfig) -> u32 {
    config
        .initial_incoming_streams
        .min(config.max_incoming_streams)
}

/// The transport parameters of a connection; a `relayed` one keeps its packets small enough
/// to travel inside the relay connection's datagrams.
pub(crate) fn transport_config(config: &NodeConfig, relayed: bool) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // validate() bounds idle_timeout to one day, well within QUIC's varint range.
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout).ok();
    transport
        .max_idle_timeout(idle)
        .keep_alive_interval(Some(config.keep_alive))
        // The first grant of streams; `StreamCredit` raises it with use.
        .max_concurrent_bidi_streams(initial_streams(config).into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(window(config.receive_window.min(4 << 20)))
        .receive_window(window(config.receive_window))
        .send_window(32 << 20);
    if relayed {
        transport
            .initial_mtu(ferry_proto::relay::RELAYED_MTU)
            .mtu_discovery_config(None);
    }
    transport
}
