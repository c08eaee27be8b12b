//! The browser gateway (`ferry run --gateway ADDR`): browsers connect over WebSocket, and each
//! connection is a **session**, a durable mailbox on the node with its own capability
//! address, so peers and other browsers reach it like any other address. Browsers send to
//! addresses, call services, join channels, and get what was sent to them while they were
//! away when they resume. docs/GATEWAY.md specifies the protocol.
//!
//! ```no_run
//! # async fn demo(node: ferry::Node, store: std::sync::Arc<dyn ferry_node::store::SessionStore>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_node::gateway::{self, GatewayConfig, NoHooks};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! gateway::serve(listener, node, store, GatewayConfig::default(), std::sync::Arc::new(NoHooks), shutdown)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Modules: [`protocol`] (frames, pure), [`auth`], [`session`], [`channels`], [`hooks`],
//! [`config`]; privately, `http` (the routes), `admission` (the upgrade: who may connect),
//! `connection` (the WebSocket loop) and `requests` (what a browser asks), `registry` (live
//! sessions by id and user), `shared` (the state every connection shares), `delivery` (the
//! gateway's own deliveries), `handle` (the embedder's [`GatewayHandle`]), `resume_token`,
//! `journal`, `limits` and `stats`. The gateway keeps its sessions in any
//! [`SessionStore`].
mod admission;
pub mod auth;
mod certificate;
pub mod channels;
mod cluster_link;
pub mod config;
mod connection;
mod delivery;
mod handle;
pub mod hooks;
mod http;
mod journal;
mod limits;
pub mod protocol;
mod registry;
mod requests;
mod resume_token;
pub mod session;
mod shared;
mod stats;
pub mod webtransport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use ferry::Node;
use tokio_util::sync::CancellationToken;

pub use crate::cluster::DeliverError;
pub use admission::READ_BUFFER;
pub use auth::{AuthError, AuthRequest, Identity, InvalidCredentials};
pub use config::{AuthConfig, GatewayConfig, GatewayConfigError, Limits, Permissions, StaticToken};
pub use handle::{json_payload, GatewayHandle};
pub use hooks::{Disconnect, EndReason, HookFuture, Hooks, NoHooks, SessionInfo, Verdict};
pub use http::{FERRY_D_TS, FERRY_JS};
pub use protocol::Via;
pub use shared::JoinError;
pub use stats::GatewayStats;

use crate::cluster::Cluster;
use crate::random::random;
use crate::store::SessionStore;
use crate::sync::lock;
use session::Session;
use shared::Shared;

/// Why [`Gateway::new`] could not make a gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is inconsistent.
    #[error("invalid gateway configuration: {0}")]
    Config(#[from] GatewayConfigError),
    /// The store could not give the gateway its resume-token key or its sessions.
    #[error("gateway: reading its sessions from the store: {0}")]
    Store(#[from] ferry::StoreError),
}

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The gateway could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Serving the listener failed.
    #[error("gateway: {0}")]
    Io(#[from] std::io::Error),
}

/// The browser gateway of a node.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway for `node`, keeping its sessions (their messages and records) in `store`:
    /// the sessions an earlier gateway left in `store` are back, with their addresses.
    pub fn new(
        node: Node,
        store: Arc<dyn SessionStore>,
        config: GatewayConfig,
        hooks: Arc<dyn Hooks>,
    ) -> Result<Self, StartError> {
        let local: Arc<dyn Cluster> = Arc::new(crate::cluster::Local::default());
        Self::with_cluster(node, store, config, hooks, local)
    }

    /// Like [`Gateway::new`], one node of `cluster` (e.g. a
    /// [`NatsCluster`](crate::cluster::nats::NatsCluster)): channel publications, deliveries
    /// to users and sessions, and presence go through it.
    pub fn with_cluster(
        node: Node,
        store: Arc<dyn SessionStore>,
        config: GatewayConfig,
        hooks: Arc<dyn Hooks>,
        cluster: Arc<dyn Cluster>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        // Kept in the store, so that resume tokens stay valid across restarts.
        let resume_secret = store.record_or_insert(RESUME_KEY_RECORD, random::<32>().to_vec())?;
        let records = store.records(session::RECORD_PREFIX)?;
        let shared = Shared::new(node, store, config, hooks, &resume_secret, cluster);
        shared.restore(records);
        let inbound: Arc<dyn crate::cluster::Inbound> = shared.clone();
        shared.cluster.start(Arc::downgrade(&inbound));
        Ok(Self { shared })
    }

    /// A handle for the embedding application: push, close, channels, sessions.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle::new(self.shared.clone())
    }

    /// The gateway's routes: `/ws`, `/ferry.js`, `/ferry.d.ts`, and the static directory at
    /// `/` if configured. Merge it into an application's own router, or use [`Gateway::serve`].
    pub fn router(&self) -> Router {
        http::router(self.shared.clone())
    }

    /// Serves WebTransport sessions on `endpoint` until `shutdown` (docs/GATEWAY.md §13),
    /// beside the WebSocket endpoint of [`Gateway::serve`] (which drains both), and publishes
    /// it at `GET /webtransport`.
    pub fn serve_webtransport(
        &self,
        endpoint: webtransport::WebTransport,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        webtransport::serve(self.shared.clone(), endpoint, shutdown)
    }

    /// Serves on `listener` until `shutdown` is cancelled, then drains: no new connections,
    /// every connection is closed with 1001 (going away; clients resume elsewhere or later),
    /// up to the configured `drain` for them to finish, and every session ends.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        /// Stops the reaper however `serve` ends (also when its future is dropped).
        struct AbortOnDrop(tokio::task::JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let shared = self.shared.clone();
        let _reaper = AbortOnDrop(tokio::spawn(reap(shared.clone(), shutdown.clone())));
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        self.handle().drain().await;
        self.shared.cluster.stop();
        result
    }
}

/// Serves the gateway of `node` on `listener` until `shutdown` (mini-redis style): see
/// [`Gateway::new`] and [`Gateway::serve`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    store: Arc<dyn SessionStore>,
    config: GatewayConfig,
    hooks: Arc<dyn Hooks>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    Gateway::new(node, store, config, hooks)?
        .serve(listener, shutdown)
        .await?;
    Ok(())
}

/// Ends sessions that stayed disconnected longer than `session_ttl`.
async fn reap(shared: Arc<Shared>, shutdown: CancellationToken) {
    let ttl = shared.config.session_ttl;
    let period = (ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let expired: Vec<Arc<Session>> = lock(&shared.registry)
            .sessions()
            .filter(|session| session.away_for(ttl, now))
            .cloned()
            .collect();
        for session in expired {
            shared.end(&session, EndReason::Expired);
        }
    }
}

/// The store record holding the key of resume tokens.
const RESUME_KEY_RECORD: &str = "gateway/resume-key";
