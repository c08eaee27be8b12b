//! What an application embedding the gateway is told, and what it may decide (Riverside's
//! `authenticate` / `init` / `handle_message` / `terminate`). Every method has a default, so
//! an embedder implements only what it needs.

use std::future::Future;
use std::pin::Pin;

use super::auth::{AuthError, AuthRequest, Identity};
use super::protocol::ClientFrame;
use ferry::Address;

/// A boxed future returned by a hook.
pub type HookFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the `message` hook decides about a browser's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Carry it out.
    Allow,
    /// Refuse it: the browser gets a `forbidden` error with this reason.
    Refuse(String),
}

/// Why a connection ended (the session may live on, to be resumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The browser closed it, or the network did.
    Client,
    /// Nothing arrived within `idle_timeout`.
    Idle,
    /// `max_connection_age` passed.
    Age,
    /// The browser sent more than `rate_limit` frames per `rate_window`.
    RateLimit,
    /// The browser did not read its frames (`write_timeout` with a full queue).
    SlowConsumer,
    /// The browser sent a frame that is not a frame of the protocol, or too large a message.
    Protocol(String),
    /// The credentials expired and no fresh token came.
    AuthExpired,
    /// Another connection resumed the session.
    TakenOver,
    /// The session ended (closed by the application, or the gateway stopped).
    SessionEnded,
}

/// Why a session ended (its address is revoked, its stored messages dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// It stayed disconnected longer than `session_ttl`.
    Expired,
    /// The application closed it, with this reason.
    Closed(String),
}

/// The embedder's hooks.
pub trait Hooks: Send + Sync + 'static {
    /// Authenticates an upgrade request. `None` (the default) leaves it to the configured
    /// verifiers (static tokens, JWT, or anonymous when none is configured).
    fn authenticate(
        &self,
        request: AuthRequest,
    ) -> HookFuture<Option<Result<Identity, AuthError>>> {
        let _ = request;
        Box::pin(async { None })
    }

    /// A session started (Riverside's `init`): the browser has its address from now on.
    fn started(&self, session: &SessionInfo) {
        let _ = session;
    }

    /// A connection attached to the session (`resumed`: the session existed before).
    fn connected(&self, session: &SessionInfo, resumed: bool) {
        let _ = (session, resumed);
    }

    /// A request from the browser (Riverside's `handle_message`), before it is carried out.
    /// Acks and pings are not shown.
    fn message(&self, session: &SessionInfo, request: &ClientFrame) -> Verdict {
        let _ = (session, request);
        Verdict::Allow
    }

    /// Whether the session may join (`publish` false) or publish to (`publish` true) a
    /// channel. `None` (the default) leaves it to the configured patterns.
    fn authorize_channel(
        &self,
        session: &SessionInfo,
        channel: &str,
        publish: bool,
    ) -> Option<bool> {
        let _ = (session, channel, publish);
        None
    }

    /// A connection of the session ended; the session itself lives on for `session_ttl`.
    fn disconnected(&self, session: &SessionInfo, reason: &Disconnect) {
        let _ = (session, reason);
    }

    /// The session ended (Riverside's `terminate`).
    fn ended(&self, session: &SessionInfo, reason: &EndReason) {
        let _ = (session, reason);
    }
}

/// Hooks that do nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}

/// What the embedder and the hooks see of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id (random, 22 characters).
    pub id: String,
    /// The user id (from authentication; random for anonymous sessions).
    pub user: String,
    /// The session's capability address.
    pub address: Address,
}
