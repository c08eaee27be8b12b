//! The browser gateway (`ferry run --gateway ADDR`): browsers connect over WebSocket, and each
//! connection is a **session**, a durable mailbox on the node with its own capability
//! address, so peers and other browsers reach it like any other address. Browsers send to
//! addresses, call services, join channels, and get what was sent to them while they were
//! away when they resume. docs/GATEWAY.md specifies the protocol.
//!
//! ```no_run
//! # async fn demo(node: ferry::Node, store: std::sync::Arc<ferry_node::store::RedbStore>)
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
//! [`config`], and the private `limits` and `connection` (the WebSocket loop).

pub mod auth;
pub mod channels;
pub mod config;
mod connection;
pub mod hooks;
mod journal;
mod limits;
pub mod protocol;
mod requests;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::ws::{
    rejection::WebSocketUpgradeRejection, CloseFrame, Message, WebSocketUpgrade,
};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use ferry::Node;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{AuthError, AuthRequest, Identity};
pub use config::{AuthConfig, GatewayConfig, GatewayConfigError, Limits, Permissions, StaticToken};
pub use hooks::{Disconnect, EndReason, HookFuture, Hooks, NoHooks, Verdict};
pub use protocol::Via;
pub use session::{DeliverError, SessionInfo};

use crate::random::random;
use crate::store::{Appended, SessionStore};
use crate::sync::lock;
use ferry::store::StoreFuture;
use limits::Bucket;
use session::{ResumeKeys, Session};
use std::future::Future;

/// The JS client, served at `/ferry.js`.
pub const FERRY_JS: &str = include_str!("../../../clients/js/ferry.js");
/// Its TypeScript declarations, served at `/ferry.d.ts`.
pub const FERRY_D_TS: &str = include_str!("../../../clients/js/ferry.d.ts");

/// Why the gateway could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is inconsistent.
    #[error("invalid gateway configuration: {0}")]
    Config(#[from] GatewayConfigError),
    /// Serving the listener failed.
    #[error("gateway: {0}")]
    Io(#[from] std::io::Error),
    /// The store could not give the gateway its resume key or its sessions.
    #[error("gateway: reading its sessions from the store: {0}")]
    Store(#[from] ferry::StoreError),
}

/// Sessions by id and by user.
#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<Session>>,
    by_user: HashMap<String, HashSet<String>>,
}

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

/// A snapshot of the gateway's counters ([`GatewayHandle::stats`]).
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
}

/// What every part of the gateway shares.
pub(crate) struct Shared {
    pub(crate) node: Node,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) config: GatewayConfig,
    client_config: RwLock<Box<RawValue>>,
    pub(crate) hooks: Arc<dyn Hooks>,
    pub(crate) verifier: auth::Verifier,
    resume: ResumeKeys,
    registry: Mutex<Registry>,
    pub(crate) channels: channels::Channels<Arc<Session>>,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    connection_rate: Mutex<Bucket>,
    /// Counters for [`GatewayHandle::stats`].
    pub(crate) counters: Counters,
    /// Cancelled when the gateway drains: every connection closes with 1001.
    pub(crate) stopping: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

impl Shared {
    pub(crate) fn session(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.registry).by_id.get(id).cloned()
    }

    fn user_sessions(&self, user: &str) -> Vec<Arc<Session>> {
        let registry = lock(&self.registry);
        registry
            .by_user
            .get(user)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| registry.by_id.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Brings back the sessions of an earlier run from their records (`key`, `value`): each
    /// detached, expiring `session_ttl` after its last connection ended (the time the node
    /// was down counts) unless a client resumes it.
    fn restore(&self, records: Vec<(String, Vec<u8>)>) {
        for (key, value) in records {
            let Some(id) = key.strip_prefix(session::RECORD_PREFIX) else {
                continue;
            };
            let record: session::SessionRecord = match serde_json::from_slice(&value) {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(%error, %key, "dropping an unreadable session record");
                    self.store.delete_record(&key);
                    continue;
                }
            };
            let ttl = self.config.session_ttl;
            let restored = Session::restore(
                &self.node,
                &self.store,
                self.journal(),
                id.to_owned(),
                record,
                ttl,
            );
            let session = match restored {
                Ok(session) => session,
                Err(error) => {
                    tracing::error!(%error, session = %id, "restoring a session");
                    continue;
                }
            };
            self.register(&session);
            let channels: Vec<String> = lock(&session.state).channels.iter().cloned().collect();
            for channel in channels {
                self.channels
                    .join(&channel, &session.info.id, session.clone());
            }
            tracing::debug!(session = %session.info.id, "session restored");
            self.hooks.started(&session.info);
        }
    }

    /// Lists a session by its id and its user.
    fn register(&self, session: &Arc<Session>) {
        let mut registry = lock(&self.registry);
        registry
            .by_id
            .insert(session.info.id.clone(), session.clone());
        registry
            .by_user
            .entry(session.info.user.clone())
            .or_default()
            .insert(session.info.id.clone());
    }

    /// Ends a session: it leaves its channels, its address is revoked, its messages dropped.
    pub(crate) fn end(&self, session: &Arc<Session>, reason: EndReason) {
        {
            let mut registry = lock(&self.registry);
            if registry.by_id.remove(&session.info.id).is_none() {
                return; // ended already
            }
            if let Some(ids) = registry.by_user.get_mut(&session.info.user) {
                ids.remove(&session.info.id);
                if ids.is_empty() {
                    registry.by_user.remove(&session.info.user);
                }
            }
        }
        let (channels, attached) = {
            let mut state = lock(&session.state);
            (std::mem::take(&mut state.channels), state.attached.take())
        };
        for channel in channels {
            self.channels.leave(&channel, &session.info.id);
        }
        if let Some(attached) = attached {
            let message = match &reason {
                EndReason::Closed(why) => why.clone(),
                EndReason::Expired => "session expired".into(),
            };
            *lock(&attached.reason) = Some((4003, message, Disconnect::SessionEnded));
            attached.kick.cancel();
        }
        session.close();
        // Messages from peers whose delivery was under way when the mailbox closed may still
        // be stored; purge once more when they are through.
        let store = self.store.clone();
        let mailbox = session.mailbox_id;
        let grace = self.node.config().send_timeout.min(Duration::from_secs(10));
        // (Not a tracked task: a drain does not wait for it; after a restart the store
        // empties session mailboxes anyway.)
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            store.purge(mailbox);
        });
        tracing::debug!(session = %session.info.id, ?reason, "session ended");
        self.hooks.ended(&session.info, &reason);
    }

    /// Puts `payload` into the mailboxes of `sessions`, stored once (one write, one row
    /// shared by every member's mailbox). The write is submitted to the store now, and the
    /// store applies writes in the order submitted: deliveries submitted one after another
    /// get their ids, and reach every session, in that order. The future waits for the write
    /// and hands the message to the connections that are caught up (the others read it
    /// back); it gives each session's outcome, in order.
    fn submit_each(
        self: &Arc<Self>,
        sessions: Vec<Arc<Session>>,
        from: &ferry::Address,
        via: &Via,
        payload: Bytes,
    ) -> impl Future<Output = Result<Vec<Result<u64, DeliverError>>, DeliverError>> + Send + 'static
    {
        let submitted = self.submit_append(sessions, from, via, payload);
        let shared = self.clone();
        async move {
            let (sessions, template, appended) = submitted?;
            let appended = appended.await.map_err(DeliverError::Store)?;
            Ok(sessions
                .iter()
                .zip(appended)
                .map(|(session, appended)| {
                    session.stored(appended, &template, &shared.counters.delivered)
                })
                .collect())
        }
    }

    /// The store write of [`Shared::submit_each`], submitted.
    #[allow(clippy::type_complexity)]
    fn submit_append(
        &self,
        sessions: Vec<Arc<Session>>,
        from: &ferry::Address,
        via: &Via,
        payload: Bytes,
    ) -> Result<
        (
            Vec<Arc<Session>>,
            protocol::MessageTemplate,
            StoreFuture<Vec<Appended>>,
        ),
        DeliverError,
    > {
        let max = self.node.config().max_message_size;
        if payload.len() > max {
            return Err(DeliverError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let sessions: Vec<Arc<Session>> = sessions
            .into_iter()
            .filter(|session| !lock(&session.state).ended)
            .collect();
        if sessions.is_empty() {
            return Err(DeliverError::NoSuchSession);
        }
        let template = protocol::MessageTemplate::new(&from.to_string(), via, payload.clone());
        let appended = self.store.append_shared(
            sessions.iter().map(|session| session.mailbox_id).collect(),
            from.clone(),
            via.to_tag(),
            payload,
        );
        Ok((sessions, template, appended))
    }

    /// Like [`Shared::submit_each`]: how many sessions took it.
    fn submit_all(
        self: &Arc<Self>,
        sessions: Vec<Arc<Session>>,
        from: &ferry::Address,
        via: &Via,
        payload: Bytes,
    ) -> impl Future<Output = Result<usize, DeliverError>> + Send + 'static {
        let each = self.submit_each(sessions, from, via, payload);
        async move {
            let results = each.await?;
            let delivered = results.iter().filter(|result| result.is_ok()).count();
            match results.into_iter().find_map(Result::err) {
                Some(error) if delivered == 0 => Err(error),
                _ => Ok(delivered),
            }
        }
    }

    pub(crate) fn channel_members(&self, channel: &str) -> Vec<Arc<Session>> {
        self.channels.members(channel)
    }

    /// Delivers `payload` to every member of `channel` (submitted now, see
    /// [`Shared::submit_each`]).
    pub(crate) fn deliver_channel(
        self: &Arc<Self>,
        channel: &str,
        from: &ferry::Address,
        payload: Bytes,
    ) -> impl Future<Output = Result<usize, DeliverError>> + Send + 'static {
        let via = Via {
            channel: Some(channel.to_owned()),
            ..Via::default()
        };
        self.submit_all(self.channel_members(channel), from, &via, payload)
    }

    /// Delivers `payload` to every session of `user` (submitted now).
    pub(crate) fn deliver_user(
        self: &Arc<Self>,
        user: &str,
        from: &ferry::Address,
        push: bool,
        payload: Bytes,
    ) -> impl Future<Output = Result<usize, DeliverError>> + Send + 'static {
        let via = Via {
            user: Some(user.to_owned()),
            push,
            ..Via::default()
        };
        self.submit_all(self.user_sessions(user), from, &via, payload)
    }

    /// Delivers `payload` to session `session` (submitted now).
    pub(crate) fn deliver_session(
        self: &Arc<Self>,
        session: &str,
        from: &ferry::Address,
        push: bool,
        payload: Bytes,
    ) -> impl Future<Output = Result<usize, DeliverError>> + Send + 'static {
        let via = Via {
            push,
            ..Via::default()
        };
        let sessions = self.session(session).into_iter().collect();
        self.submit_all(sessions, from, &via, payload)
    }

    /// A journal for a new or restored session.
    fn journal(&self) -> journal::Journal {
        let limits = &self.config.limits;
        journal::Journal::new(
            limits.max_remembered_answers,
            limits.max_remembered_answer_bytes,
        )
    }

    /// Joins `session` to `channel` (no permission check).
    pub(crate) fn join(&self, session: &Arc<Session>, channel: &str) -> Result<(), String> {
        channels::check_name(channel).map_err(|e| e.to_string())?;
        let mut state = lock(&session.state);
        if state.ended {
            return Err("the session ended".into());
        }
        if !state.channels.contains(channel)
            && state.channels.len() >= self.config.limits.max_channels_per_session
        {
            return Err(format!(
                "at most {} channels per session",
                self.config.limits.max_channels_per_session
            ));
        }
        let joined = state.channels.insert(channel.to_owned());
        // Still under the session's lock: an `end` cannot come between and miss the channel.
        self.channels
            .join(channel, &session.info.id, session.clone());
        drop(state);
        if joined {
            session.save();
        }
        Ok(())
    }

    pub(crate) fn leave(&self, session: &Session, channel: &str) {
        let left = lock(&session.state).channels.remove(channel);
        self.channels.leave(channel, &session.info.id);
        if left {
            session.save();
        }
    }

    fn client_config(&self) -> Box<RawValue> {
        crate::sync::read(&self.client_config).clone()
    }

    pub(crate) fn resume_token(&self, session: &Session) -> String {
        self.resume.token(session.mailbox_id, &session.info.id)
    }
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

fn raw_json(value: &serde_json::Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

impl Gateway {
    /// A gateway for `node`, keeping session messages in `store`.
    pub fn new(
        node: Node,
        store: Arc<dyn SessionStore>,
        config: GatewayConfig,
        hooks: Arc<dyn Hooks>,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        let resume_secret = store.record_or_insert(RESUME_KEY_RECORD, random::<32>().to_vec())?;
        let records = store.records(session::RECORD_PREFIX)?;
        let shared = Arc::new(Shared {
            node,
            store,
            client_config: RwLock::new(raw_json(&config.client_config)),
            verifier: auth::Verifier::new(&config.auth),
            connection_rate: Mutex::new(Bucket::new(
                config.limits.connection_rate,
                Duration::from_secs(1),
            )),
            config,
            hooks,
            resume: ResumeKeys::new(&resume_secret),
            registry: Mutex::new(Registry::default()),
            channels: channels::Channels::default(),
            connections: AtomicUsize::new(0),
            counters: Counters::default(),
            next_connection: AtomicU64::new(1),
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        shared.restore(records);
        Ok(Self { shared })
    }

    /// A handle for the embedding application: push, close, channels, sessions.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            shared: self.shared.clone(),
        }
    }

    /// The gateway's routes: `/ws`, `/ferry.js`, `/ferry.d.ts`, and the static directory at
    /// `/` if configured. Merge it into an application's own router, or use [`Gateway::serve`].
    pub fn router(&self) -> Router {
        let mut router = Router::new()
            .route("/ws", get(upgrade))
            .route(
                "/ferry.js",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                        FERRY_JS,
                    )
                }),
            )
            .route(
                "/ferry.d.ts",
                get(|| async {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/typescript; charset=utf-8",
                        )],
                        FERRY_D_TS,
                    )
                }),
            );
        if self.shared.config.static_dir.is_some() {
            router = router
                .route("/", get(|state| static_file(state, Path(String::new()))))
                .route("/{*path}", get(static_file));
        }
        router.with_state(self.shared.clone())
    }

    /// Serves on `listener` until `shutdown` is cancelled, then drains: no new connections,
    /// every connection is closed with 1001 (going away; clients resume elsewhere or later),
    /// up to the configured `drain` for them to finish, and every session ends.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), GatewayError> {
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
        result.map_err(GatewayError::from)
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
        .await
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
            .by_id
            .values()
            .filter(|session| session.away_for(ttl, now))
            .cloned()
            .collect();
        for session in expired {
            shared.end(&session, EndReason::Expired);
        }
    }
}

/// What the embedding application holds: push to sessions, users and channels, close
/// sessions, manage channel membership, list sessions.
#[derive(Clone)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle").finish_non_exhaustive()
    }
}

impl GatewayHandle {
    /// Every live session (connected or waiting to be resumed).
    pub fn sessions(&self) -> Vec<SessionInfo> {
        lock(&self.shared.registry)
            .by_id
            .values()
            .map(|session| session.info.clone())
            .collect()
    }

    /// The session with this id.
    pub fn session(&self, id: &str) -> Option<SessionInfo> {
        self.shared.session(id).map(|session| session.info.clone())
    }

    /// Whether the session has a connection now.
    pub fn is_connected(&self, id: &str) -> bool {
        self.shared
            .session(id)
            .is_some_and(|session| lock(&session.state).attached.is_some())
    }

    /// Browsers connected now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Channels with at least one member.
    pub fn channel_count(&self) -> usize {
        self.shared.channels.count()
    }

    /// The gateway's counters.
    pub fn stats(&self) -> GatewayStats {
        let c = &self.shared.counters;
        GatewayStats {
            connections: self.connections(),
            sessions: lock(&self.shared.registry).by_id.len(),
            channels: self.channel_count(),
            delivered: c.delivered.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            refused_upgrades: c.refused_upgrades.load(Ordering::Relaxed),
            slow_consumers: c.slow_consumers.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
        }
    }

    /// Puts `payload` into a session's mailbox (delivered now, or when it resumes); the
    /// message's `from` is the node's inbox and it is marked `push`. Returns its id.
    pub async fn push(&self, session: &str, payload: Bytes) -> Result<u64, DeliverError> {
        let session = self
            .shared
            .session(session)
            .ok_or(DeliverError::NoSuchSession)?;
        let via = Via {
            push: true,
            ..Via::default()
        };
        let from = self.shared.node.inbox().address();
        self.shared
            .submit_each(vec![session], from, &via, payload)
            .await?
            .into_iter()
            .next()
            .unwrap_or(Err(DeliverError::NoSuchSession))
    }

    /// Pushes `value` as JSON (see [`GatewayHandle::push`]).
    pub async fn push_json<T: serde::Serialize + ?Sized>(
        &self,
        session: &str,
        value: &T,
    ) -> Result<u64, DeliverError> {
        self.push(session, json_payload(value)).await
    }

    /// Puts `payload` into every session of `user`; how many.
    pub async fn push_user(&self, user: &str, payload: Bytes) -> Result<usize, DeliverError> {
        let from = self.shared.node.inbox().address().clone();
        self.shared.deliver_user(user, &from, true, payload).await
    }

    /// Publishes `payload` to every member of `channel`; how many.
    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<usize, DeliverError> {
        let from = self.shared.node.inbox().address().clone();
        self.shared.deliver_channel(channel, &from, payload).await
    }

    /// Makes a session a member of `channel` (no permission check).
    pub fn join(&self, session: &str, channel: &str) -> Result<(), String> {
        let session = self
            .shared
            .session(session)
            .ok_or_else(|| "no such session".to_owned())?;
        self.shared.join(&session, channel)
    }

    /// Removes a session from `channel`.
    pub fn leave(&self, session: &str, channel: &str) {
        if let Some(session) = self.shared.session(session) {
            self.shared.leave(&session, channel);
        }
    }

    /// Ends a session: its connection is closed with code 4003 and `reason` (the client does
    /// not reconnect), its address revoked. Returns whether it existed.
    pub fn close(&self, session: &str, reason: &str) -> bool {
        match self.shared.session(session) {
            Some(session) => {
                self.shared.end(
                    &session,
                    EndReason::Closed(reason.chars().take(100).collect()),
                );
                true
            }
            None => false,
        }
    }

    /// Replaces the configuration object sent to clients that connect from now on.
    pub fn set_client_config(&self, config: &serde_json::Value) {
        *crate::sync::write(&self.shared.client_config) = raw_json(config);
    }

    /// Drains: closes every connection with 1001 (going away) and waits up to `drain` for
    /// them. Sessions stay: their records and messages are in the store, and they are back,
    /// with the same addresses, when a gateway next starts on the same store (clients resume
    /// them then). [`Gateway::serve`] does this when its shutdown is cancelled.
    pub async fn drain(&self) {
        let shared = &self.shared;
        shared.stopping.cancel();
        shared.tasks.close();
        let _ = tokio::time::timeout(shared.config.drain, shared.tasks.wait()).await;
    }
}

/// A JSON payload (what browsers read as a value).
pub fn json_payload<T: serde::Serialize + ?Sized>(value: &T) -> Bytes {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_default()
}

fn unavailable(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        format!("{why}\n"),
    )
        .into_response()
}

/// Whether the request's `Origin` may connect.
fn origin_allowed(config: &GatewayConfig, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not a browser, or a same-origin request of an old browser
    };
    if config
        .origins
        .iter()
        .any(|allowed| allowed == "*" || allowed == origin)
    {
        return true;
    }
    if !config.origins.is_empty() {
        return false;
    }
    // Same origin: the Origin's host:port is the Host the request was sent to.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority == host)
}

/// Refuses an upgrade. A WebSocket upgrade is completed and closed at once with `code` and
/// `reason` (docs/GATEWAY.md §2): a browser cannot see the status of a refused upgrade, only
/// that it failed. Any other request gets `status`.
fn refuse(
    shared: &Shared,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    code: u16,
    reason: String,
    status: Response,
) -> Response {
    let Ok(ws) = ws else {
        return status;
    };
    shared
        .counters
        .refused_upgrades
        .fetch_add(1, Ordering::Relaxed);
    let reason = protocol::close::reason(&reason).to_owned();
    ws.on_upgrade(move |mut socket| async move {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            // Until the client's close frame, so that closing does not reset the connection
            // under the frame.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(Ok(message)) = socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    })
}

/// Counts a connection while it lives.
pub(crate) struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /ws`: admission, authentication, the session, then the WebSocket.
async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let counters = shared.clone();
    let response = admit(shared, ws, headers, query).await;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        counters
            .counters
            .refused_upgrades
            .fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn admit(
    shared: Arc<Shared>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    query: HashMap<String, String>,
) -> Response {
    if shared.stopping.is_cancelled() {
        return unavailable("the gateway is shutting down");
    }
    if !origin_allowed(&shared.config, &headers) {
        let status = (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        return refuse(
            &shared,
            ws,
            protocol::close::FORBIDDEN,
            "origin not allowed".into(),
            status,
        );
    }
    if !lock(&shared.connection_rate).take(Instant::now()) {
        return unavailable("too many new connections; try again shortly");
    }
    let limits = &shared.config.limits;
    if shared.connections.load(Ordering::Relaxed) >= limits.max_connections {
        return unavailable("too many connections");
    }
    let request = AuthRequest::new(headers, query.clone());
    let identity = match shared.hooks.authenticate(request.clone()).await {
        Some(result) => result.map(Some),
        None => shared.verifier.verify(&request),
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(error) => {
            tracing::debug!(%error, "gateway authentication refused");
            let status = error.response(shared.verifier.basic());
            return refuse(
                &shared,
                ws,
                protocol::close::UNAUTHORIZED,
                error.to_string(),
                status,
            );
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // The session: the one the resume token names, if it lives and belongs to this user.
    let mut expired = false;
    let mut existing = None;
    if let Some(token) = query.get("resume") {
        match shared
            .resume
            .verify(token)
            .and_then(|(mailbox, id)| Some((mailbox, shared.session(&id)?)))
        {
            Some((mailbox, session))
                if session.mailbox_id == mailbox
                    && !session.away_for(shared.config.session_ttl, Instant::now()) =>
            {
                if let Some(identity) = &identity {
                    if identity.user != session.info.user {
                        let why = "the resume token belongs to another user";
                        let status = (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
                        return refuse(
                            &shared,
                            Ok(ws),
                            protocol::close::FORBIDDEN,
                            why.into(),
                            status,
                        );
                    }
                }
                existing = Some(session);
            }
            _ => expired = true,
        }
    }
    let cursor = query.get("cursor").and_then(|c| c.parse::<u64>().ok());
    let auth_expires = identity.as_ref().and_then(|identity| identity.expires);
    let (session, resumed) = match existing {
        Some(session) => {
            if auth_expires.is_some() || identity.is_some() {
                lock(&session.state).auth_expires = auth_expires;
                session.save();
            }
            (session, true)
        }
        None => {
            if lock(&shared.registry).by_id.len() >= limits.max_sessions {
                return unavailable("too many sessions");
            }
            let id = session::new_session_id();
            let user = match identity {
                Some(identity) => identity.user,
                None => format!("anon-{id}"),
            };
            let opened = Session::open(
                &shared.node,
                &shared.store,
                shared.journal(),
                id,
                user,
                auth_expires,
            );
            let session = match opened {
                Ok(session) => session,
                Err(error) => {
                    tracing::error!(%error, "opening a session mailbox");
                    return unavailable("the store failed");
                }
            };
            lock(&session.state).detached_at = Some(Instant::now());
            shared.register(&session);
            shared.hooks.started(&session.info);
            (session, false)
        }
    };
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let slot = ConnectionSlot(shared.clone());
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let max = limits.max_message_size;
    let tasks = shared.tasks.clone();
    // Small buffers: an idle connection should cost little memory.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| {
            tasks.track_future(connection::run(
                shared,
                session,
                socket,
                connection::Start {
                    resumed,
                    expired,
                    cursor,
                    connection,
                },
                slot,
            ))
        })
}

/// The store record holding the key of resume tokens.
const RESUME_KEY_RECORD: &str = "gateway/resume-key";

/// Bytes a connection's WebSocket reads at most per read call, and the buffer it keeps for
/// them: small, since an idle connection should cost little memory (larger frames are read in
/// several calls).
pub const READ_BUFFER: usize = 2048;

/// Files of the static directory.
async fn static_file(State(shared): State<Arc<Shared>>, Path(path): Path<String>) -> Response {
    let Some(dir) = &shared.config.static_dir else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path
    };
    // Only plain relative names: no `..`, no absolute paths, no hidden files.
    if path
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.') || part.contains('\\'))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let file = dir.join(&path);
    let content_type = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
