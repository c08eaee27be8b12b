//! The daemon's HTTP endpoint (`ferry run --http ADDR`): `/health` for liveness checks and
//! `/metrics` in the Prometheus (OpenMetrics) text format.
//!
//! Metrics are read from the node's counters at each scrape ([`ferry::NodeStats`]), so serving
//! them costs nothing between scrapes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use ferry::Node;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::gateway::GatewayHandle;
use crate::store::RedbStore;

/// What the endpoint reports on.
#[derive(Clone)]
struct Observed {
    node: Node,
    store: Option<Arc<RedbStore>>,
    registry: Arc<Registry>,
}

/// Serves `/health` and `/metrics` for `node` (and its `store`) on `listener` until `shutdown`
/// is cancelled; requests in progress then finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    store: Option<Arc<RedbStore>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with_gateway(listener, node, store, None, shutdown).await
}

/// Like [`serve`], with the browser gateway's figures (`ferry_gateway_*`) in `/metrics`.
pub async fn serve_with_gateway(
    listener: tokio::net::TcpListener,
    node: Node,
    store: Option<Arc<RedbStore>>,
    gateway: Option<GatewayHandle>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector {
        node: node.clone(),
        store: store.clone(),
        gateway,
    }));
    let observed = Observed {
        node,
        store,
        registry: Arc::new(registry),
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(observed);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn health(State(observed): State<Observed>) -> impl IntoResponse {
    let stats = observed.node.stats();
    Json(serde_json::json!({
        "status": "ok",
        "node": observed.node.id().to_string(),
        "connected_peers": stats.connected_peers,
        "store": observed.store.is_some(),
    }))
}

async fn metrics(State(observed): State<Observed>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &observed.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "encoding metrics failed\n".to_string(),
        ),
    }
}

/// Encodes the node's counters at each scrape.
#[derive(Debug)]
struct NodeCollector {
    node: Node,
    store: Option<Arc<RedbStore>>,
    gateway: Option<GatewayHandle>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let stats = self.node.stats();
        let e = &mut encoder;
        gauge(
            e,
            "ferry_connected_peers",
            "Peers with a live connection.",
            stats.connected_peers as u64,
        )?;
        gauge(
            e,
            "ferry_connections",
            "QUIC connections, including closing ones.",
            stats.open_connections as u64,
        )?;
        gauge(
            e,
            "ferry_streams_in",
            "Streams opened by peers, being served.",
            stats.streams_in,
        )?;
        gauge(
            e,
            "ferry_conversations",
            "Outgoing conversations, open or waiting until stream_idle_timeout.",
            stats.conversations as u64,
        )?;
        gauge(
            e,
            "ferry_conversations_parked",
            "Outgoing conversations quiet for a second or more, kept without a task.",
            stats.parked_conversations as u64,
        )?;
        gauge(
            e,
            "ferry_mailboxes",
            "Open mailboxes.",
            stats.mailboxes as u64,
        )?;
        gauge(
            e,
            "ferry_mailbox_depth",
            "Messages waiting in mailboxes for the application.",
            stats.mailbox_depth,
        )?;
        gauge(
            e,
            "ferry_outbox_bytes",
            "Bytes queued or unacknowledged in the outbox.",
            stats.outbox_bytes,
        )?;
        counter(
            e,
            "ferry_messages_in",
            "Messages accepted from other nodes.",
            stats.messages_in,
        )?;
        counter(
            e,
            "ferry_bytes_in",
            "Payload bytes accepted from other nodes.",
            stats.bytes_in,
        )?;
        counter(
            e,
            "ferry_messages_out",
            "Messages sent and acknowledged.",
            stats.messages_out,
        )?;
        counter(
            e,
            "ferry_bytes_out",
            "Payload bytes sent and acknowledged.",
            stats.bytes_out,
        )?;
        counter(
            e,
            "ferry_signature_checks",
            "Address signatures verified.",
            stats.signature_checks,
        )?;
        counter(
            e,
            "ferry_forged_addresses",
            "Addresses refused for a bad signature.",
            stats.forged_addresses,
        )?;
        counter(
            e,
            "ferry_handshakes_refused",
            "Incoming handshakes refused (handshake_rate_per_ip, max_connections).",
            stats.handshakes_refused,
        )?;
        counter(
            e,
            "ferry_streams_cut_off",
            "Incoming streams cut off by a limit (open_timeout, frame_timeout, buffers, protocol violations).",
            stats.streams_cut_off,
        )?;
        counter(
            e,
            "ferry_peers_banned",
            "Connections closed for too many protocol violations.",
            stats.peers_banned,
        )?;
        counter(
            e,
            "ferry_path_probes",
            "Probes sent on paths that stopped acknowledging while messages waited.",
            stats.path_probes,
        )?;
        counter(
            e,
            "ferry_redials",
            "Peers dialed again while connected (the path stopped answering, or the network changed).",
            stats.redials,
        )?;
        gauge(
            e,
            "ferry_buffered_bytes",
            "Bytes held in the receive buffers of mailbox streams.",
            stats.buffered_bytes,
        )?;
        counter(
            e,
            "ferry_relayed_packets",
            "Packets forwarded as a relay.",
            stats.relayed_packets,
        )?;
        counter(
            e,
            "ferry_relayed_bytes",
            "Bytes forwarded as a relay.",
            stats.relayed_bytes,
        )?;
        counter(
            e,
            "ferry_relay_refused",
            "Packets refused as a relay.",
            stats.relay_refused,
        )?;
        {
            let metric_type = ConstCounter::new(0u64).metric_type();
            let mut family = e.encode_descriptor(
                "ferry_send_failures",
                "Failed sends by kind of error.",
                None,
                metric_type,
            )?;
            for (kind, count) in stats.send_failures.by_kind() {
                let labels = [("kind", kind)];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(store) = &self.store {
            gauge(
                e,
                "ferry_store_bytes",
                "Size of the store file.",
                store.size_bytes(),
            )?;
        }
        if let Some(gateway) = &self.gateway {
            let g = gateway.stats();
            gauge(
                e,
                "ferry_gateway_connections",
                "Browsers connected to the gateway.",
                g.connections as u64,
            )?;
            gauge(
                e,
                "ferry_gateway_sessions",
                "Gateway sessions, connected or waiting to be resumed.",
                g.sessions as u64,
            )?;
            gauge(
                e,
                "ferry_gateway_channels",
                "Channels with at least one member.",
                g.channels as u64,
            )?;
            counter(
                e,
                "ferry_gateway_delivered",
                "Messages handed to browser connections.",
                g.delivered,
            )?;
            counter(
                e,
                "ferry_gateway_requests",
                "Frames received from browsers.",
                g.requests,
            )?;
            counter(
                e,
                "ferry_gateway_refused_upgrades",
                "WebSocket upgrades refused (401, 403, 503).",
                g.refused_upgrades,
            )?;
            counter(
                e,
                "ferry_gateway_slow_consumers",
                "Connections closed as slow consumers.",
                g.slow_consumers,
            )?;
            counter(
                e,
                "ferry_gateway_rate_limited",
                "Connections closed for exceeding the rate limit.",
                g.rate_limited,
            )?;
            for (name, help, value) in [
                (
                    "ferry_gateway_webtransport_sessions",
                    "WebTransport sessions accepted.",
                    g.webtransport_sessions,
                ),
                (
                    "ferry_gateway_webtransport_refused",
                    "WebTransport sessions refused (401, 403, 404, 503).",
                    g.webtransport_refused,
                ),
                (
                    "ferry_gateway_webtransport_streams",
                    "WebTransport request streams accepted.",
                    g.webtransport_streams,
                ),
                (
                    "ferry_gateway_webtransport_refused_streams",
                    "WebTransport streams refused (beyond the limit, or of an unknown type).",
                    g.webtransport_refused_streams,
                ),
                (
                    "ferry_gateway_webtransport_data_streams",
                    "WebTransport data streams (uploads, downloads, incoming data) started.",
                    g.webtransport_data_streams,
                ),
                (
                    "ferry_gateway_webtransport_data_bytes_in",
                    "Bytes browsers uploaded on data streams, taken by the services.",
                    g.webtransport_data_bytes_in,
                ),
                (
                    "ferry_gateway_webtransport_data_bytes_out",
                    "Bytes to browsers on data streams (downloads, incoming data).",
                    g.webtransport_data_bytes_out,
                ),
            ] {
                counter(e, name, help, value)?;
            }
        }
        Ok(())
    }
}
