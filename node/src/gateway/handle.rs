//! [`GatewayHandle`]: what the embedding application holds to push to sessions, users and
//! channels, close sessions, manage channel membership and list sessions.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::hooks::EndReason;
use super::hooks::SessionInfo;
use super::protocol::Via;
use super::shared::{JoinError, Shared};
use super::stats::GatewayStats;
use super::DeliverError;
use crate::cluster::{ClusterError, Published, Route};
use crate::sync::lock;

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
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Every live session (connected or waiting to be resumed).
    pub fn sessions(&self) -> Vec<SessionInfo> {
        lock(&self.shared.registry)
            .sessions()
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
            sessions: lock(&self.shared.registry).len(),
            channels: self.channel_count(),
            delivered: c.delivered.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            refused_upgrades: c.refused_upgrades.load(Ordering::Relaxed),
            slow_consumers: c.slow_consumers.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            ..super::webtransport::stats(&self.shared)
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

    /// Puts `payload` into every session of `user`; how many (in a cluster: 0, once the
    /// cluster kept it; every node delivers it to the user's sessions there).
    pub async fn push_user(&self, user: &str, payload: Bytes) -> Result<usize, DeliverError> {
        let route = Route::User {
            user: user.to_owned(),
            push: true,
        };
        self.publish_to(route, payload).await
    }

    /// Publishes `payload` to every member of `channel`; how many (in a cluster: 0, once the
    /// cluster kept it; every node delivers it to its members).
    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<usize, DeliverError> {
        self.publish_to(Route::Channel(channel.to_owned()), payload)
            .await
    }

    /// Publishes `payload` on `route` through the gateway's cluster (a single node: delivered
    /// here), from the node's inbox; what became of it.
    pub async fn publish_route(
        &self,
        route: Route,
        payload: Bytes,
    ) -> Result<Published, ClusterError> {
        let from = self.shared.node.inbox().address().clone();
        self.shared.cluster.publish(route, &from, payload).await
    }

    async fn publish_to(&self, route: Route, payload: Bytes) -> Result<usize, DeliverError> {
        match self.publish_route(route, payload).await {
            Ok(Published::Delivered(count)) => Ok(count),
            Ok(_) => Ok(0),
            Err(ClusterError::Deliver(error)) => Err(error),
            Err(error) => Err(DeliverError::Unavailable(error.to_string())),
        }
    }

    /// Makes a session a member of `channel` (no permission check).
    pub fn join(&self, session: &str, channel: &str) -> Result<(), JoinError> {
        let session = self
            .shared
            .session(session)
            .ok_or(JoinError::NoSuchSession)?;
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
        self.shared.set_client_config(config);
    }

    /// Drains: closes every connection with 1001 (going away) and waits up to `drain` for
    /// them. Sessions stay: their records and messages are in the store, and they are back,
    /// with the same addresses, when a gateway next starts on the same store (clients resume
    /// them then). [`Gateway::serve`](super::Gateway::serve) does this when its shutdown is cancelled.
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
