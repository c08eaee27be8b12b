//! The gateway over WebTransport (HTTP/3 on QUIC): the same sessions as over WebSocket, with
//! a stream per conversation, call and delivery lane, so that a bulk transfer or a lossy
//! stretch on one does not stall another (docs/GATEWAY.md §13).
//!
//! ```no_run
//! # async fn demo(gateway: ferry_node::gateway::Gateway, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use ferry_node::gateway::webtransport::{Certificates, SystemClock, WebTransport, WebTransportConfig};
//!
//! let certificates = Certificates::self_signed(vec!["localhost".into()], Arc::new(SystemClock))?;
//! let endpoint = WebTransport::bind("127.0.0.1:8080".parse()?, Arc::new(certificates), WebTransportConfig::default())?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(gateway.serve_webtransport(endpoint, shutdown.clone()));
//! gateway.serve(listener, shutdown).await?;     // GET /webtransport now says where and how
//! # Ok(()) }
//! ```

pub(crate) mod data;
mod frame;
pub(crate) mod streams;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

pub use super::certificate::{
    CertificateError, CertificateHash, Certificates, Clock, ManualClock, SystemClock, ROTATE_EVERY,
    VALIDITY,
};
pub use data::{
    decode_data_frame, decode_data_header, encode_data_header, send_to_session, DataFrame,
    DataFrameError, DataHeader, DataHeaderError, SendToSessionError, FRAME_DATA, INCOMING_SERVICE,
    MAX_DATA_PIECE, STOP_DATA_ANSWERED, STREAM_DATA, STREAM_INCOMING,
};
pub use frame::{
    check_frame_header, decode_frame, FrameError, FRAME_BINARY, FRAME_TEXT, RESET_STUCK,
    RESET_TOO_MANY_STREAMS, RESET_UNKNOWN_STREAM, STREAM_CONTROL, STREAM_DELIVERIES,
    STREAM_REQUESTS,
};

use super::admission::{authorize, take_session, Admitted, Refusal};
use super::shared::Shared;
use super::stats::WebTransportCounters;
use super::{connection, protocol};

/// The path of WebTransport sessions (`https://HOST:PORT/webtransport?token=…&resume=…&cursor=…`)
/// and of the JSON that tells a page how to reach them (`GET /webtransport` on the gateway's
/// HTTP port).
pub const PATH: &str = "/webtransport";

/// The WebTransport endpoint's settings: the config file's keys after `gateway_webtransport_`
/// (docs/CONFIG.md), each described once, here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WebTransportConfig {
    /// A PEM certificate chain (e.g. CA-signed) to serve instead of self-made certificates;
    /// browsers then verify it as any web certificate and no hashes are published. Set with
    /// `key`. Default none.
    pub cert: Option<PathBuf>,
    /// The PEM private key of `cert`. Default none.
    pub key: Option<PathBuf>,
    /// Request streams a session may have open at once (a stream the client finished counts
    /// no more, even while its answers are under way); beyond, a new stream is reset with
    /// [`RESET_TOO_MANY_STREAMS`]. Default 100.
    pub max_streams: usize,
    /// Delivery streams the gateway keeps open per session, one per source (conversation
    /// sender, channel, user, push); beyond, the least recently used one is finished. Default
    /// 32.
    pub max_delivery_streams: usize,
    /// A delivery stream with nothing to carry for this long is finished (the next message
    /// of its source opens another). Default 30 s.
    #[serde(with = "ferry::duration")]
    pub delivery_idle_timeout: Duration,
    /// Bytes one session's streams may hold together beyond the connection's queue
    /// (`gateway_max_queue_bytes`); a frame that finds no room waits in that queue instead,
    /// and a full queue makes the connection a slow consumer. Default 4 MiB.
    pub max_connection_bytes: usize,
    /// How long the unanswered requests of a request stream the client finished keep the
    /// stream (its answers then go nowhere: the client sends them again after a resume and
    /// gets them from the journal). Default 60 s.
    #[serde(with = "ferry::duration")]
    pub answer_timeout: Duration,
    /// How long the QUIC and HTTP/3 handshakes and the control stream may take. Default 10 s.
    #[serde(with = "ferry::duration")]
    pub handshake_timeout: Duration,
    /// Data streams (uploads and downloads, docs/GATEWAY.md §13.11) a session may have under
    /// way at once; beyond, a new one is reset with [`RESET_TOO_MANY_STREAMS`]. Default 4.
    pub max_data_streams: usize,
    /// Bytes one data stream may carry each way (the upload, the download); beyond, it is
    /// answered `too_large` and the conversation with the service is cancelled. Default 1 GiB.
    pub max_data_bytes: u64,
}

impl Default for WebTransportConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            max_streams: 100,
            max_delivery_streams: 32,
            delivery_idle_timeout: Duration::from_secs(30),
            max_connection_bytes: 4 << 20,
            answer_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_data_streams: 4,
            max_data_bytes: 1 << 30,
        }
    }
}

impl WebTransportConfig {
    /// Checks the limits (each at least 1) and that `cert` and `key` come together.
    pub fn validate(&self) -> Result<(), WebTransportError> {
        for (name, value) in [
            ("max_streams", self.max_streams),
            ("max_delivery_streams", self.max_delivery_streams),
            ("max_connection_bytes", self.max_connection_bytes),
            ("max_data_streams", self.max_data_streams),
        ] {
            if value == 0 {
                return Err(WebTransportError::Zero(name));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(WebTransportError::CertWithoutKey);
        }
        Ok(())
    }

    /// The certificates: `cert` and `key` if set, else self-made ones for `names` rotated on
    /// the system clock.
    pub fn certificates(&self, names: Vec<String>) -> Result<Certificates, WebTransportError> {
        self.validate()?;
        Ok(match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Certificates::from_pem_files(cert, key)?,
            _ => Certificates::self_signed(names, Arc::new(SystemClock))?,
        })
    }
}

/// Where `ferry run` serves WebTransport (the `webtransport` key, `--webtransport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Listen {
    /// The gateway's IP and TCP port number, on UDP (`"auto"`); a free UDP port when that one
    /// is taken.
    Gateway,
    /// This UDP address (port 0: a free one).
    At(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = std::net::AddrParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "auto" {
            return Ok(Self::Gateway);
        }
        text.parse().map(Self::At)
    }
}

/// Why the WebTransport endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebTransportError {
    /// The UDP socket could not be bound.
    #[error("binding the WebTransport endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration was refused.
    #[error("the WebTransport TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A limit is 0.
    #[error("gateway_webtransport_{0} must be at least 1")]
    Zero(&'static str),
    /// Only one of `cert` and `key` is set.
    #[error("gateway_webtransport_cert and gateway_webtransport_key go together")]
    CertWithoutKey,
    /// The certificates.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
}

/// A bound WebTransport endpoint, to be served with [`super::Gateway::serve_webtransport`].
pub struct WebTransport {
    endpoint: quinn::Endpoint,
    crypto: Arc<quinn::crypto::rustls::QuicServerConfig>,
    certificates: Arc<Certificates>,
    config: WebTransportConfig,
}

impl std::fmt::Debug for WebTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebTransport")
            .field("addr", &self.endpoint.local_addr().ok())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WebTransport {
    /// Binds a UDP socket on `addr` for HTTP/3 (ALPN `h3`), with `certificates`.
    pub fn bind(
        addr: SocketAddr,
        certificates: Arc<Certificates>,
        config: WebTransportConfig,
    ) -> Result<Self, WebTransportError> {
        config.validate()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(super::certificate::Resolver(certificates.clone())));
        tls.alpn_protocols = vec![web_transport_quinn::ALPN.as_bytes().to_vec()];
        tls.max_early_data_size = 0;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| WebTransportError::Tls(rustls::Error::General(e.to_string())))?;
        let crypto = Arc::new(crypto);
        let server = server_config(&crypto, &config, &super::Limits::default());
        let endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|source| WebTransportError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            crypto,
            certificates,
            config,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The certificates.
    pub fn certificates(&self) -> &Arc<Certificates> {
        &self.certificates
    }
}

/// The QUIC configuration: the CONNECT stream, the control stream and the request streams
/// (twice the limit: a stream the client finished may wait for its answers, uncounted);
/// the client's HTTP/3 control and QPACK streams; small windows (an idle session costs
/// little); keep-alives every ping interval and the gateway's idle timeout as QUIC's.
fn server_config(
    crypto: &Arc<quinn::crypto::rustls::QuicServerConfig>,
    config: &WebTransportConfig,
    limits: &super::Limits,
) -> quinn::ServerConfig {
    let mut server = quinn::ServerConfig::with_crypto(crypto.clone());
    let mut transport = quinn::TransportConfig::default();
    let bidi =
        u32::try_from(config.max_streams.saturating_mul(2).saturating_add(2)).unwrap_or(u32::MAX);
    transport
        .max_concurrent_bidi_streams(bidi.into())
        .max_concurrent_uni_streams(8u32.into())
        .stream_receive_window((2u32 << 20).into())
        .receive_window((8u32 << 20).into())
        .send_window(8 << 20)
        .keep_alive_interval(Some(limits.ping_interval))
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok());
    server.transport_config(Arc::new(transport));
    server
}

/// Serves WebTransport sessions until `shutdown`; the gateway's drain closes them (1001).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    endpoint: WebTransport,
    shutdown: CancellationToken,
) {
    let port = endpoint.local_addr().map(|a| a.port()).unwrap_or(0);
    let counters = Arc::new(WebTransportCounters::default());
    let _ = shared
        .webtransport
        .set(Arc::new(crate::gateway::shared::Published {
            port,
            certificates: endpoint.certificates.clone(),
            counters: counters.clone(),
        }));
    endpoint.endpoint.set_server_config(Some(server_config(
        &endpoint.crypto,
        &endpoint.config,
        &shared.config.limits,
    )));
    // Peers' data for sessions (§13.12): a service of the gateway's node while it serves.
    let _incoming = {
        let shared = shared.clone();
        shared.node.clone().serve(
            data::INCOMING_SERVICE,
            ferry::ServiceOptions::default(),
            move |conversation| {
                let shared = shared.clone();
                async move { data::take_incoming(&shared, conversation).await }
            },
        )
    };
    if let Err(error) = &_incoming {
        tracing::warn!("gateway: no {} service: {error}", data::INCOMING_SERVICE);
    }
    let quinn_endpoint = endpoint.endpoint.clone();
    loop {
        let incoming = tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = quinn_endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if shared.stopping.is_cancelled() {
            incoming.refuse();
            continue;
        }
        let (shared, counters, config) =
            (shared.clone(), counters.clone(), endpoint.config.clone());
        shared.tasks.clone().spawn(async move {
            let connecting = match incoming.accept() {
                Ok(connecting) => connecting,
                Err(_) => return,
            };
            connecting_session(shared, connecting, config, counters).await;
        });
    }
    quinn_endpoint.close(0u32.into(), b"shutting down");
}

/// One QUIC connection: the handshakes, the CONNECT (admission), the control stream, then
/// the gateway connection on them.
async fn connecting_session(
    shared: Arc<Shared>,
    connecting: quinn::Connecting,
    config: WebTransportConfig,
    counters: Arc<WebTransportCounters>,
) {
    let timeout = config.handshake_timeout;
    let Ok(Ok(connection)) = tokio::time::timeout(timeout, connecting).await else {
        return;
    };
    let Ok(Ok(request)) =
        tokio::time::timeout(timeout, web_transport_quinn::Request::accept(connection)).await
    else {
        return;
    };
    if request.url.path() != PATH {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        let _ = request.reject(StatusCode::NOT_FOUND).await;
        return;
    }
    let query: HashMap<String, String> = request
        .url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .take(32)
        .collect();
    // The CONNECT's authority stands for `Host` in the origin check: the gateway's own
    // pages (same host and port number, over TCP) may connect.
    let mut headers = request.headers.clone();
    if let Some(authority) = request
        .url
        .host_str()
        .map(|host| match request.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        })
        .and_then(|a| HeaderValue::from_str(&a).ok())
    {
        headers.insert(header::HOST, authority);
    }
    let admitted = match authorize(&shared, &headers, &query).await {
        Ok(identity) => take_session(&shared, identity, &query),
        Err(refusal) => Err(refusal),
    };
    let Admitted {
        session,
        start,
        slot,
    } = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .refused_upgrades
                .fetch_add(1, Ordering::Relaxed);
            let (code, reason) = match refusal {
                Refusal::Unavailable(_) => {
                    let _ = request.reject(StatusCode::SERVICE_UNAVAILABLE).await;
                    return;
                }
                Refusal::Forbidden(why) => (protocol::close::FORBIDDEN, why),
                Refusal::Unauthorized(error) => (protocol::close::UNAUTHORIZED, error.to_string()),
            };
            // As over WebSocket: a browser sees no status, so the session is accepted and
            // closed at once with the code and reason.
            if let Ok(session) = request.ok().await {
                session.close(u32::from(code), protocol::close::reason(&reason).as_bytes());
                let _ = tokio::time::timeout(Duration::from_secs(1), session.closed()).await;
            }
            return;
        }
    };
    let Ok(wt) = request.ok().await else {
        return;
    };
    counters.sessions.fetch_add(1, Ordering::Relaxed);
    // The control stream: the client's first bidirectional stream, starting with its type.
    let control = tokio::time::timeout(timeout, async {
        let (send, mut recv) = wt.accept_bi().await.ok()?;
        let mut kind = [0u8; 1];
        recv.read_exact(&mut kind).await.ok()?;
        (kind == [STREAM_CONTROL]).then_some((send, recv))
    })
    .await;
    let Ok(Some(control)) = control else {
        wt.close(
            u32::from(protocol::close::PROTOCOL),
            b"malformed frame: no control stream",
        );
        return;
    };
    // Peers' data for the session comes to this connection from now on (§13.12).
    let (incoming_tx, incoming) = tokio::sync::mpsc::channel(config.max_data_streams.max(1));
    *crate::sync::lock(&session.incoming) = Some(incoming_tx);
    let wire = streams::WebTransportWire {
        session: wt,
        control,
        limits: streams::StreamLimits {
            max_request_streams: config.max_streams,
            max_delivery_streams: config.max_delivery_streams,
            delivery_idle_timeout: config.delivery_idle_timeout,
            lane_bytes: shared.config.limits.max_queue_bytes,
            connection_bytes: config.max_connection_bytes,
            answer_timeout: config.answer_timeout,
            max_message_size: shared.config.limits.max_message_size,
        },
        data: Arc::new(data::DataContext {
            node: shared.node.clone(),
            max_bytes: config.max_data_bytes,
            open_timeout: shared.config.limits.max_call_timeout,
            max_message_size: shared.config.limits.max_message_size,
            counters: counters.clone(),
        }),
        max_data_streams: config.max_data_streams,
        incoming,
        counters,
    };
    connection::run(shared, session, wire, start, slot).await;
}

/// What `GET /webtransport` answers (docs/GATEWAY.md §13.1).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointInfo {
    /// The session URL, without query.
    pub url: String,
    /// Pass to `serverCertificateHashes` (empty for a CA-signed certificate).
    pub hashes: Vec<CertificateHash>,
    /// Unix seconds when the served certificate is replaced (`null`: never).
    pub rotates_at: Option<u64>,
    /// The frame kinds and stream types, so a client can check it speaks them.
    pub protocol: &'static str,
}

/// The protocol name of the WebTransport mapping.
pub const PROTOCOL: &str = "ferry-gateway/1+webtransport";

/// `GET /webtransport`: where the endpoint is and which certificate hashes to pin; 404 when
/// the gateway serves no WebTransport.
pub(crate) async fn info(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(published) = shared.webtransport.get() else {
        return (StatusCode::NOT_FOUND, "no WebTransport endpoint\n").into_response();
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    // Host without its port ("[::1]:8080" → "[::1]", "a.example:80" → "a.example").
    let host = match host.rfind(':') {
        Some(colon) if !host.get(colon..).is_some_and(|tail| tail.contains(']')) => {
            host.get(..colon).unwrap_or(host)
        }
        _ => host,
    };
    let body = EndpointInfo {
        url: format!("https://{host}:{}{PATH}", published.port),
        hashes: published.certificates.hashes(),
        rotates_at: published
            .certificates
            .rotates_at()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        protocol: PROTOCOL,
    };
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        axum::Json(body),
    )
        .into_response()
}

/// The WebTransport figures of [`super::GatewayStats`] (the others at their defaults).
pub(crate) fn stats(shared: &Shared) -> super::GatewayStats {
    let Some(published) = shared.webtransport.get() else {
        return super::GatewayStats::default();
    };
    let c = &published.counters;
    super::GatewayStats {
        webtransport_sessions: c.sessions.load(Ordering::Relaxed),
        webtransport_refused: c.refused.load(Ordering::Relaxed),
        webtransport_streams: c.streams.load(Ordering::Relaxed),
        webtransport_refused_streams: c.refused_streams.load(Ordering::Relaxed),
        webtransport_data_streams: c.data_streams.load(Ordering::Relaxed),
        webtransport_data_open: c.data_open.load(Ordering::Relaxed),
        webtransport_data_bytes_in: c.data_in.load(Ordering::Relaxed),
        webtransport_data_bytes_out: c.data_out.load(Ordering::Relaxed),
        webtransport_data_buffered: c.data_buffered.load(Ordering::Relaxed),
        webtransport_data_buffered_peak: c.data_buffered_peak.load(Ordering::Relaxed),
        ..super::GatewayStats::default()
    }
}
