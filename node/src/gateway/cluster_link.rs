//! The gateway's side of its [`Cluster`](crate::cluster::Cluster): the gateway is the
//! cluster's [`Inbound`] (publications that reach this node go into its sessions'
//! mailboxes), and the requests that publish or ask for presence go through the cluster, so a
//! single node and a cluster run the same code (a single node's cluster is
//! [`Local`](crate::cluster::Local)).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use ferry::Address;

use super::protocol::{ServerFrame, Via};
use super::shared::Shared;
use crate::cluster::DeliverError;
use crate::cluster::{
    ClusterError, ClusterFuture, Inbound, Member, Position, PresenceEvent, Route,
};
use crate::sync::lock;

impl Inbound for Shared {
    fn deliver(
        &self,
        route: &Route,
        from: &Address,
        payload: Bytes,
        position: Option<Position>,
    ) -> ClusterFuture<Result<usize, DeliverError>> {
        let Some(shared) = self.me() else {
            return Box::pin(async { Err(DeliverError::NoSuchSession) });
        };
        let (epoch, offset) = match position {
            Some(position) => (Some(position.epoch), Some(position.offset)),
            None => (None, None),
        };
        let (sessions, via) = match route {
            Route::Channel(channel) => (
                shared.channel_members(channel),
                Via {
                    channel: Some(channel.clone()),
                    epoch,
                    offset,
                    ..Via::default()
                },
            ),
            Route::User { user, push } => (
                shared.user_sessions(user),
                Via {
                    user: Some(user.clone()),
                    push: *push,
                    epoch,
                    offset,
                    ..Via::default()
                },
            ),
            Route::Session { id, push } => (
                shared.session(id).into_iter().collect(),
                Via {
                    push: *push,
                    epoch,
                    offset,
                    ..Via::default()
                },
            ),
            // A route added later: nobody here.
            #[allow(unreachable_patterns)]
            _ => (Vec::new(), Via::default()),
        };
        Box::pin(shared.submit_all(sessions, from, &via, payload))
    }

    fn members(&self, channel: &str) -> Vec<Member> {
        self.channel_members(channel)
            .iter()
            .map(|session| Member {
                session: session.info.id.clone(),
                user: session.info.user.clone(),
            })
            .collect()
    }

    fn has_session(&self, id: &str) -> bool {
        self.session(id).is_some()
    }

    fn presence(&self, event: &PresenceEvent) {
        if !self.config.permissions.join_leave {
            return;
        }
        let frame = ServerFrame::Presence {
            channel: event.channel.clone(),
            joined: event.joined,
            session: event.member.session.clone(),
            user: event.member.user.clone(),
        }
        .encode();
        for session in self.channel_members(&event.channel) {
            if session.info.id == event.member.session {
                continue; // it knows
            }
            if let Some(attached) = &lock(&session.state).attached {
                // An event is not kept: a connection whose queue is full misses it.
                let _ = attached.queue.try_push_message(frame.clone());
            }
        }
    }
}

impl Shared {
    /// Publishes through the cluster (on a single node: delivers here); the future is the
    /// answer of the request `reference`.
    pub(crate) fn publish_answer(
        &self,
        reference: u64,
        route: Route,
        from: &Address,
        payload: Bytes,
    ) -> impl Future<Output = ServerFrame> + Send + 'static {
        let published = self.cluster.publish(route, from, payload);
        async move {
            match published.await {
                Ok(crate::cluster::Published::Kept(position)) => ServerFrame::Ok {
                    reference,
                    data: Some(super::json_payload(&serde_json::json!({
                        "epoch": position.epoch,
                        "offset": position.offset,
                    }))),
                },
                Ok(_) => ServerFrame::Ok {
                    reference,
                    data: None,
                },
                Err(ClusterError::Deliver(error)) => {
                    super::requests::deliver_error(reference, &error)
                }
                Err(error) => super::requests::cluster_error(reference, &error),
            }
        }
    }

    /// Tells the cluster (and so every node's members) that `session` joined or left.
    pub(crate) fn presence_changed(
        &self,
        channel: &str,
        joined: bool,
        session: &super::session::Session,
    ) {
        self.cluster.presence_changed(PresenceEvent {
            channel: channel.to_owned(),
            joined,
            member: Member {
                session: session.info.id.clone(),
                user: session.info.user.clone(),
            },
        });
    }

    /// The members of `channel` on every node, as the `ok` of request `reference`.
    pub(crate) fn presence_answer(
        &self,
        reference: u64,
        channel: &str,
    ) -> impl Future<Output = ServerFrame> + Send + 'static {
        let members = self.cluster.members(channel);
        async move {
            match members.await {
                Ok(members) => ServerFrame::Ok {
                    reference,
                    data: Some(super::json_payload(
                        &serde_json::json!({ "members": members }),
                    )),
                },
                Err(error) => super::requests::cluster_error(reference, &error),
            }
        }
    }

    /// Stores for `session` the publications of `channel` after `after` (at most
    /// `cluster_recover_max` of them), then answers `reference` with whether that was all of
    /// them.
    pub(crate) fn recover_answer(
        &self,
        reference: u64,
        session: &Arc<super::session::Session>,
        channel: &str,
        after: Position,
    ) -> impl Future<Output = ServerFrame> + Send + 'static {
        let history = self.cluster.history(channel, &after, usize::MAX);
        let shared = self.me();
        let session = session.clone();
        let channel = channel.to_owned();
        async move {
            let history = match history.await {
                Ok(history) => history,
                Err(error) => return super::requests::cluster_error(reference, &error),
            };
            let Some(shared) = shared else {
                return super::requests::deliver_error(reference, &DeliverError::NoSuchSession);
            };
            let mut count = 0usize;
            let mut complete = history.complete;
            for (position, from, payload) in history.publications {
                let via = Via {
                    channel: Some(channel.clone()),
                    epoch: Some(position.epoch),
                    offset: Some(position.offset),
                    ..Via::default()
                };
                match shared
                    .submit_all(vec![session.clone()], &from, &via, payload)
                    .await
                {
                    Ok(_) => count += 1,
                    Err(_) => complete = false,
                }
            }
            ServerFrame::Ok {
                reference,
                data: Some(super::json_payload(
                    &serde_json::json!({ "recovered": complete, "count": count }),
                )),
            }
        }
    }

    /// This gateway's `Shared` as an `Arc`.
    fn me(&self) -> Option<Arc<Shared>> {
        self.this.upgrade()
    }
}

/// A connection resuming a session that lives on another node of the cluster is served
/// there, through this node: the browser's WebSocket is piped to that node's gateway (with
/// the same query, so the same resume token and cursor, and the same `Authorization`), so
/// the session keeps its address, its message ids and its journal. `Err` gives `ws` back
/// when there is nothing to forward (no cluster, no resume, the session is here or nowhere).
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    ws: axum::extract::ws::WebSocketUpgrade,
    headers: &axum::http::HeaderMap,
    query: &std::collections::HashMap<String, String>,
) -> Result<axum::response::Response, axum::extract::ws::WebSocketUpgrade> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    if !shared.cluster.clustered() {
        return Err(ws);
    }
    let Some(id) = query
        .get("resume")
        .and_then(|token| super::resume_token::ResumeKeys::session_of(token))
    else {
        return Err(ws);
    };
    if shared.session(&id).is_some() {
        return Err(ws);
    }
    let Some(url) = shared.cluster.locate(&id).await else {
        return Err(ws);
    };
    let query: Vec<String> = query
        .iter()
        .map(|(key, value)| format!("{}={}", percent(key), percent(value)))
        .collect();
    let target = format!("{url}?{}", query.join("&"));
    let Ok(mut request) = target.as_str().into_client_request() else {
        return Err(ws);
    };
    if let Some(authorization) = headers.get(axum::http::header::AUTHORIZATION) {
        request
            .headers_mut()
            .insert(axum::http::header::AUTHORIZATION, authorization.clone());
    }
    let limit = shared.config.limits.write_timeout;
    let upstream =
        match tokio::time::timeout(limit, tokio_tungstenite::connect_async(request)).await {
            Ok(Ok((upstream, _))) => upstream,
            _ => {
                tracing::debug!(session = %id, %url, "cluster: the session's node did not answer");
                return Err(ws);
            }
        };
    tracing::debug!(session = %id, %url, "cluster: forwarding a connection to the session's node");
    shared
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let slot = super::shared::ConnectionSlot::new(shared.clone());
    let stopping = shared.stopping.clone();
    let max = shared.config.limits.max_message_size;
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(super::READ_BUFFER)
        .on_upgrade(move |socket| async move {
            pipe(socket, upstream, stopping).await;
            drop(slot);
        }))
}

/// `text` percent-encoded for a query (everything but unreserved characters).
fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Pipes frames between the browser and the session's node until either side closes (its
/// close frame is passed on) or this gateway stops (1001: the browser resumes elsewhere).
async fn pipe(
    browser: axum::extract::ws::WebSocket,
    upstream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    stopping: tokio_util::sync::CancellationToken,
) {
    use axum::extract::ws::{CloseFrame as DownClose, Message as Down};
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame as UpClose;
    use tokio_tungstenite::tungstenite::Message as Up;
    let (mut down_tx, mut down_rx) = browser.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    loop {
        tokio::select! {
            _ = stopping.cancelled() => {
                let frame = DownClose { code: 1001, reason: "server shutting down".into() };
                let _ = down_tx.send(Down::Close(Some(frame))).await;
                let _ = up_tx.send(Up::Close(None)).await;
                return;
            }
            message = down_rx.next() => {
                let message = match message {
                    Some(Ok(Down::Text(text))) => Up::text(text.as_str()),
                    Some(Ok(Down::Binary(bytes))) => Up::binary(bytes),
                    Some(Ok(Down::Ping(_) | Down::Pong(_))) => continue,
                    Some(Ok(Down::Close(frame))) => {
                        let frame = frame.map(|frame| UpClose {
                            code: frame.code.into(),
                            reason: frame.reason.as_str().to_owned().into(),
                        });
                        let _ = up_tx.send(Up::Close(frame)).await;
                        return;
                    }
                    Some(Err(_)) | None => {
                        let _ = up_tx.send(Up::Close(None)).await;
                        return;
                    }
                };
                if up_tx.send(message).await.is_err() {
                    let frame = DownClose { code: 1001, reason: "the session's node went away".into() };
                    let _ = down_tx.send(Down::Close(Some(frame))).await;
                    return;
                }
            }
            message = up_rx.next() => {
                let message = match message {
                    Some(Ok(Up::Text(text))) => Down::text(text.as_str()),
                    Some(Ok(Up::Binary(bytes))) => Down::binary(bytes),
                    Some(Ok(Up::Close(frame))) => {
                        let frame = frame.map(|frame| DownClose {
                            code: frame.code.into(),
                            reason: frame.reason.as_str().to_owned().into(),
                        });
                        let _ = down_tx.send(Down::Close(frame)).await;
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        let frame = DownClose { code: 1001, reason: "the session's node went away".into() };
                        let _ = down_tx.send(Down::Close(Some(frame))).await;
                        return;
                    }
                };
                if down_tx.send(message).await.is_err() {
                    let _ = up_tx.send(Up::Close(None)).await;
                    return;
                }
            }
        }
    }
}
