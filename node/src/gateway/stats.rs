//! The gateway's counters ([`Counters`], counted where things happen) and their snapshot
//! ([`GatewayStats`], for the embedder and `/metrics`).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The gateway's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Shared with the connections, which count what they hand over.
    pub(crate) delivered: Arc<AtomicU64>,
    pub(crate) requests: AtomicU64,
    pub(crate) refused_upgrades: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
}

/// A snapshot of the gateway's counters ([`GatewayHandle::stats`](super::GatewayHandle::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayStats {
    /// Browsers connected now.
    pub connections: usize,
    /// Sessions now, connected or waiting to be resumed.
    pub sessions: usize,
    /// Channels with at least one member.
    pub channels: usize,
    /// Messages handed to browser connections since the start.
    pub delivered: u64,
    /// Requests (frames) received from browsers.
    pub requests: u64,
    /// Upgrades refused (401, 403, 503).
    pub refused_upgrades: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Connections closed for exceeding the rate limit.
    pub rate_limited: u64,
    /// WebTransport sessions accepted.
    pub webtransport_sessions: u64,
    /// WebTransport sessions refused (also counted in `refused_upgrades`) or not found (404).
    pub webtransport_refused: u64,
    /// WebTransport request streams accepted.
    pub webtransport_streams: u64,
    /// WebTransport streams refused: beyond the limit, or of an unknown type.
    pub webtransport_refused_streams: u64,
    /// WebTransport data streams (uploads, downloads, a peer's incoming data) under way or done.
    pub webtransport_data_streams: u64,
    /// WebTransport data streams under way now (each holds a place of
    /// `gateway_webtransport_max_data_streams` until its answer is written).
    pub webtransport_data_open: u64,
    /// Bytes uploaded by browsers on data streams and taken by the services.
    pub webtransport_data_bytes_in: u64,
    /// Bytes to browsers on data streams (downloads from services, peers' incoming data),
    /// taken by the browsers' streams.
    pub webtransport_data_bytes_out: u64,
    /// Bytes the data streams hold now between the browser and the service (at most one
    /// piece of 64 KiB per data stream).
    pub webtransport_data_buffered: u64,
    /// The most bytes the data streams have held at once since the start.
    pub webtransport_data_buffered_peak: u64,
}

/// The WebTransport figures of `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct WebTransportCounters {
    /// Sessions accepted (CONNECT answered 200).
    pub(crate) sessions: AtomicU64,
    /// CONNECTs refused (any status, or closed at once with 4401/4403).
    pub(crate) refused: AtomicU64,
    /// Request streams accepted.
    pub(crate) streams: AtomicU64,
    /// Streams refused (beyond the limit, or of an unknown type).
    pub(crate) refused_streams: AtomicU64,
    /// Data streams started (uploads, downloads, incoming data).
    pub(crate) data_streams: AtomicU64,
    /// Data streams under way now.
    pub(crate) data_open: AtomicU64,
    /// Bytes uploaded: read from browsers and taken by the services' streams.
    pub(crate) data_in: AtomicU64,
    /// Bytes to browsers (downloads, a peer's incoming data), taken by their streams.
    pub(crate) data_out: AtomicU64,
    /// Bytes the data streams' bridges hold now (read from one side, not yet taken by the
    /// other).
    pub(crate) data_buffered: AtomicU64,
    /// The most `data_buffered` has been.
    pub(crate) data_buffered_peak: AtomicU64,
}
