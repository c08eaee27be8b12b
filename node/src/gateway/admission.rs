//! `GET /ws`: who may connect (shutdown, origin, connection rate and limits, credentials),
//! which session the connection gets (the one its resume token names, or a new one), then
//! the upgrade to a WebSocket. Refusals of a WebSocket upgrade are told in a close frame,
//! since a browser cannot see the status of a refused upgrade.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{
    rejection::WebSocketUpgradeRejection, CloseFrame, Message, WebSocketUpgrade,
};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::{AuthError, AuthRequest, Identity};
use super::config::GatewayConfig;
use super::connection;
use super::protocol;
use super::session::{self, Session};
use super::shared::{ConnectionSlot, Shared};
use crate::sync::lock;

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

/// `GET /ws`: admission, authentication, the session, then the WebSocket.
pub(crate) async fn upgrade(
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

/// Why a connection is not admitted (docs/GATEWAY.md §2): each transport tells it its way.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// 503: shutting down, too many connections, sessions or new connections.
    Unavailable(&'static str),
    /// 403 / 4403, with the reason.
    Forbidden(String),
    /// 401 / 4401.
    Unauthorized(AuthError),
}

/// A connection admitted: its session and how it starts.
pub(crate) struct Admitted {
    pub(crate) session: Arc<Session>,
    pub(crate) start: connection::Start,
    pub(crate) slot: ConnectionSlot,
}

/// The checks before any session is touched: shutdown, origin, connection rate and count,
/// credentials. `headers` carry `Origin` and `Host` (a WebTransport CONNECT's authority).
pub(crate) async fn authorize(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Option<Identity>, Refusal> {
    if shared.stopping.is_cancelled() {
        return Err(Refusal::Unavailable("the gateway is shutting down"));
    }
    if !origin_allowed(&shared.config, headers) {
        return Err(Refusal::Forbidden("origin not allowed".into()));
    }
    if !lock(&shared.connection_rate).take(Instant::now()) {
        return Err(Refusal::Unavailable(
            "too many new connections; try again shortly",
        ));
    }
    let limits = &shared.config.limits;
    if shared.connections.load(Ordering::Relaxed) >= limits.max_connections {
        return Err(Refusal::Unavailable("too many connections"));
    }
    let request = AuthRequest::new(headers.clone(), query.clone());
    let identity = match shared.hooks.authenticate(request.clone()).await {
        Some(result) => result.map(Some),
        None => shared.verifier.verify(&request),
    };
    identity.map_err(|error| {
        tracing::debug!(%error, "gateway authentication refused");
        Refusal::Unauthorized(error)
    })
}

/// The session of an authorized connection: the one its resume token names, if it lives
/// and belongs to this user, else a new one; and the connection's slot.
pub(crate) fn take_session(
    shared: &Arc<Shared>,
    identity: Option<Identity>,
    query: &HashMap<String, String>,
) -> Result<Admitted, Refusal> {
    let limits = &shared.config.limits;
    let mut expired = false;
    let mut existing = None;
    if let Some(token) = query.get("resume") {
        match shared
            .verify_resume_token(token)
            .and_then(|(mailbox, id)| Some((mailbox, shared.session(&id)?)))
        {
            Some((mailbox, session))
                if session.mailbox_id == mailbox
                    && !session.away_for(shared.config.session_ttl, Instant::now()) =>
            {
                if let Some(identity) = &identity {
                    if identity.user != session.info.user {
                        return Err(Refusal::Forbidden(
                            "the resume token belongs to another user".into(),
                        ));
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
            if lock(&shared.registry).len() >= limits.max_sessions {
                return Err(Refusal::Unavailable("too many sessions"));
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
                    return Err(Refusal::Unavailable("the store failed"));
                }
            };
            lock(&session.state).detached_at = Some(Instant::now());
            shared.register(&session);
            shared.hooks.started(&session.info);
            (session, false)
        }
    };
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let slot = ConnectionSlot::new(shared.clone());
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    Ok(Admitted {
        session,
        start: connection::Start {
            resumed,
            expired,
            cursor,
            connection,
        },
        slot,
    })
}

async fn admit(
    shared: Arc<Shared>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    query: HashMap<String, String>,
) -> Response {
    let refused = |shared: &Shared, ws, refusal: Refusal| match refusal {
        Refusal::Unavailable(why) => unavailable(why),
        Refusal::Forbidden(why) => {
            let status = (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
            refuse(shared, ws, protocol::close::FORBIDDEN, why, status)
        }
        Refusal::Unauthorized(error) => {
            let status = error.response(shared.verifier.basic());
            refuse(
                shared,
                ws,
                protocol::close::UNAUTHORIZED,
                error.to_string(),
                status,
            )
        }
    };
    let identity = match authorize(&shared, &headers, &query).await {
        Ok(identity) => identity,
        Err(refusal) => return refused(&shared, ws, refusal),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // Cluster: a session that lives on another node is served there, through this one.
    let ws = match super::cluster_link::forward(&shared, ws, &headers, &query).await {
        Ok(forwarded) => return forwarded,
        Err(ws) => ws,
    };
    let Admitted {
        session,
        start,
        slot,
    } = match take_session(&shared, identity, &query) {
        Ok(admitted) => admitted,
        Err(refusal) => return refused(&shared, Ok(ws), refusal),
    };
    let max = shared.config.limits.max_message_size;
    let tasks = shared.tasks.clone();
    // Small buffers: an idle connection should cost little memory.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| {
            tasks.track_future(connection::run(shared, session, socket, start, slot))
        })
}

/// Bytes a connection's WebSocket reads at most per read call, and the buffer it keeps for
/// them: small, since an idle connection should cost little memory (larger frames are read in
/// several calls).
pub const READ_BUFFER: usize = 2048;
