//! The gateway's cluster: what one gateway shares with the others of its cluster (channel
//! publications, deliveries to a user's or a session's sessions on any node, presence), behind
//! the [`Cluster`] trait the gateway calls.
//!
//! A gateway alone uses [`Local`]: a publication is delivered to the node's own members at
//! once, exactly as before there was a cluster. `ferry run --cluster nats://HOST:PORT` uses
//! [`NatsCluster`](nats::NatsCluster): every publication goes through a NATS JetStream stream
//! (kept, bounded by size and age), and every node of the cluster reads the stream and
//! delivers to its own members; presence goes through core NATS. docs/GATEWAY.md §14 states
//! what is guaranteed.
//!
//! The gateway gives the cluster an [`Inbound`] (its own delivery code): the cluster calls it
//! for every publication that reaches this node, whichever node published it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod config;
pub mod nats;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use ferry::Address;

pub use config::ClusterConfig;

/// A boxed future of the cluster.
pub type ClusterFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where a publication goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// Every member of the channel, on every node.
    Channel(String),
    /// Every session of the user, on every node.
    User {
        /// The user id.
        user: String,
        /// Sent by the embedding application.
        push: bool,
    },
    /// The session with this id, on whichever node it lives.
    Session {
        /// The session id.
        id: String,
        /// Sent by the embedding application.
        push: bool,
    },
}

/// Where a publication is in the cluster's history: its offset (the history's sequence
/// number: increasing within a channel, not contiguous) in the history of epoch `epoch` (a
/// history that was lost and started again has another epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The history's epoch.
    pub epoch: String,
    /// The publication's offset.
    pub offset: u64,
}

/// What a publication came to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// Delivered on this node (no cluster): to this many sessions.
    Delivered(usize),
    /// Kept by the cluster at this position; every node delivers it to its own sessions.
    Kept(Position),
}

/// Publications read back from the history ([`Cluster::history`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct History {
    /// The publications: position, sender, payload.
    pub publications: Vec<(Position, Address, Bytes)>,
    /// Whether they are all that came after the position asked for.
    pub complete: bool,
}

/// A member of a channel, as presence lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The session id.
    pub session: String,
    /// The user id.
    pub user: String,
}

/// A session joined or left a channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceEvent {
    /// The channel.
    pub channel: String,
    /// `true`: joined; `false`: left.
    pub joined: bool,
    /// Who.
    pub member: Member,
}

/// Why the cluster could not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Delivering on this node failed (no cluster, or the local part of it).
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// NATS did not confirm that it kept the publication within `cluster_publish_timeout`
    /// (NATS is down or unreachable): the publication is refused. It may still reach the
    /// members if NATS kept it and only the confirmation was lost.
    #[error("the cluster (NATS) did not confirm the publication: {0}")]
    Unavailable(String),
    /// The publication is larger than the node's `max_message_size`.
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// What the gateway gives the cluster: its own delivery to this node's sessions.
pub trait Inbound: Send + Sync + 'static {
    /// Delivers a publication to this node's sessions on `route` (submitted to the store now,
    /// in call order; the future waits for the store): how many took it.
    fn deliver(
        &self,
        route: &Route,
        from: &Address,
        payload: Bytes,
        position: Option<Position>,
    ) -> ClusterFuture<Result<usize, DeliverError>>;
    /// The members of `channel` on this node.
    fn members(&self, channel: &str) -> Vec<Member>;
    /// Tells this node's members of a channel that someone joined or left it.
    fn presence(&self, event: &PresenceEvent);
    /// Whether the session `id` lives on this node.
    fn has_session(&self, id: &str) -> bool;
}

/// What the gateway asks of its cluster.
pub trait Cluster: Send + Sync + 'static {
    /// Starts taking publications for this node: they go to `inbound` (held weakly: the
    /// gateway owns the cluster, not the other way round).
    fn start(&self, inbound: Weak<dyn Inbound>);
    /// Publishes `payload` from `from` on `route`. Publications are submitted in call order
    /// (so one sender's publications on one route arrive in that order); the future says
    /// what became of it.
    fn publish(
        &self,
        route: Route,
        from: &Address,
        payload: Bytes,
    ) -> ClusterFuture<Result<Published, ClusterError>>;
    /// A session of this node joined (`true`) or left a channel.
    fn presence_changed(&self, event: PresenceEvent);
    /// The members of `channel` on every node.
    fn members(&self, channel: &str) -> ClusterFuture<Result<Vec<Member>, ClusterError>>;
    /// Whether publications go through a cluster (and carry positions).
    fn clustered(&self) -> bool;
    /// Stops taking publications (the gateway stopped).
    fn stop(&self) {}
    /// The publications of `channel` after `after`, oldest first, at most `max`; `complete`
    /// when they are every one since `after` (same epoch, none dropped from the history, not
    /// cut at `max`). A node alone keeps no history: none, incomplete.
    fn history(
        &self,
        channel: &str,
        after: &Position,
        max: usize,
    ) -> ClusterFuture<Result<History, ClusterError>> {
        let _ = (channel, after, max);
        Box::pin(async { Ok(History::default()) })
    }
    /// The WebSocket URL (`ws://HOST:PORT/ws`) of the node of the cluster where session `id`
    /// lives, if another node has it (a node alone: never).
    fn locate(&self, id: &str) -> ClusterFuture<Option<String>> {
        let _ = id;
        Box::pin(async { None })
    }
}

/// One node alone: publications are delivered to the node's own sessions at once.
#[derive(Default)]
pub struct Local {
    inbound: OnceLock<Weak<dyn Inbound>>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").finish_non_exhaustive()
    }
}

impl Local {
    fn inbound(&self) -> Option<Arc<dyn Inbound>> {
        self.inbound.get().and_then(Weak::upgrade)
    }
}

impl Cluster for Local {
    fn start(&self, inbound: Weak<dyn Inbound>) {
        let _ = self.inbound.set(inbound);
    }

    fn publish(
        &self,
        route: Route,
        from: &Address,
        payload: Bytes,
    ) -> ClusterFuture<Result<Published, ClusterError>> {
        let Some(inbound) = self.inbound() else {
            return Box::pin(async { Err(DeliverError::NoSuchSession.into()) });
        };
        let delivered = inbound.deliver(&route, from, payload, None);
        Box::pin(async move { Ok(Published::Delivered(delivered.await?)) })
    }

    fn presence_changed(&self, event: PresenceEvent) {
        if let Some(inbound) = self.inbound() {
            inbound.presence(&event);
        }
    }

    fn members(&self, channel: &str) -> ClusterFuture<Result<Vec<Member>, ClusterError>> {
        let members = self
            .inbound()
            .map(|inbound| inbound.members(channel))
            .unwrap_or_default();
        Box::pin(async move { Ok(members) })
    }

    fn clustered(&self) -> bool {
        false
    }
}

/// Why a message could not be put into a session's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliverError {
    /// No session with that id (or of that user, or member of that channel).
    #[error("no such session")]
    NoSuchSession,
    /// The session's store is full: the message was dropped (and the session's next resume
    /// reports `recovered: false`).
    #[error("the session's mailbox is full")]
    Full,
    /// The store failed.
    #[error("storing the message: {0}")]
    Store(ferry::StoreError),
    /// The cluster did not take the message (NATS unavailable).
    #[error("{0}")]
    Unavailable(String),
    /// The payload exceeds the node's `max_message_size`.
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
}
