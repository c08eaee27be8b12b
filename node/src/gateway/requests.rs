//! Carrying out a connection's requests (`send`, `call`, `join`, `leave`, `refresh`, `ping`,
//! `grant`, `revoke`) and acknowledgements. Requests of a session start one at a time, in the order they arrive,
//! after the session's journal said they are new (docs/GATEWAY.md §5.8); whatever starts
//! them (a store write, a conversation's queue) keeps that order, and the answer goes through
//! the journal to the newest connection that sent it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::{CallError, OpenError, SendError, Target as NodeTarget};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::AuthRequest;
use super::channels;
use super::hooks::{Disconnect, Verdict};
use super::journal::Arrival;
use super::limits::{OutQueue, QueueError};
use super::protocol::{
    close, CallTarget, ClientFrame, Encoded, ErrorCode, ErrorFrame, ServerFrame, Target,
};
use super::session::Session;
use super::shared::Shared;
use crate::clock::unix_now;
use crate::cluster::DeliverError;
use crate::cluster::{ClusterError, Route};
use crate::sync::lock;

/// Why a connection stops: the close frame's code and reason, and what hooks are told.
pub(crate) type Closing = (u16, String, Disconnect);

/// The instant at which unix time `at` is reached.
pub(crate) fn instant_of(at: u64) -> Instant {
    Instant::now() + Duration::from_secs(at.saturating_sub(unix_now()))
}

pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The requests of one connection.
pub(crate) struct Requests {
    pub(crate) shared: Arc<Shared>,
    pub(crate) session: Arc<Session>,
    pub(crate) connection: u64,
    pub(crate) queue: OutQueue,
    /// Permits for requests in flight (`max_inflight`).
    pub(crate) inflight: Arc<Semaphore>,
    /// When the credentials expire.
    pub(crate) auth_deadline: Instant,
}

impl Requests {
    pub(crate) fn new(
        shared: Arc<Shared>,
        session: Arc<Session>,
        connection: u64,
        queue: OutQueue,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(shared.config.limits.max_inflight));
        let auth_deadline = lock(&session.state)
            .auth_expires
            .map_or_else(far_future, instant_of);
        Self {
            shared,
            session,
            connection,
            queue,
            inflight,
            auth_deadline,
        }
    }

    pub(crate) fn slow() -> Closing {
        (
            close::SLOW,
            "slow consumer".into(),
            Disconnect::SlowConsumer,
        )
    }

    /// Queues `frame` on this connection (a frame that is no answer to a new request).
    pub(crate) fn reply(&self, frame: Encoded) -> Result<(), Closing> {
        match self.queue.try_push(frame) {
            Err(QueueError::Slow) => Err(Self::slow()),
            _ => Ok(()),
        }
    }

    /// Answers request `reference`, through the journal.
    fn answer(&self, frame: &ServerFrame, reference: u64) -> Result<(), Closing> {
        self.session.answer(reference, frame.encode());
        Ok(())
    }

    fn fail(
        &self,
        reference: u64,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<(), Closing> {
        let frame = ServerFrame::Error(ErrorFrame {
            reference: Some(reference),
            code,
            message: message.into(),
        });
        self.answer(&frame, reference)
    }

    fn succeed(&self, reference: u64) -> Result<(), Closing> {
        let frame = ServerFrame::Ok {
            reference,
            data: None,
        };
        self.answer(&frame, reference)
    }

    /// Waits (up to `limit`) until every request in flight on this connection is answered.
    pub(crate) async fn settle(&self, limit: Duration) {
        let all = u32::try_from(self.shared.config.limits.max_inflight).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(limit, self.inflight.acquire_many(all)).await;
    }

    /// Carries out `frame`.
    pub(crate) async fn handle(&mut self, frame: ClientFrame) -> Result<(), Closing> {
        let reference = match &frame {
            ClientFrame::Ack { id, answered } => {
                if let Some(id) = id {
                    self.session.ack(*id);
                }
                if let Some(answered) = answered {
                    self.session.confirm(*answered);
                }
                return Ok(());
            }
            ClientFrame::Send { reference, .. }
            | ClientFrame::Call { reference, .. }
            | ClientFrame::Join { reference, .. }
            | ClientFrame::Leave { reference, .. }
            | ClientFrame::Refresh { reference, .. }
            | ClientFrame::Ping { reference }
            | ClientFrame::Grant { reference, .. }
            | ClientFrame::Revoke { reference, .. }
            | ClientFrame::Presence { reference, .. }
            | ClientFrame::Recover { reference, .. } => *reference,
        };
        let session = self.session.clone();
        let _order = session.order.lock().await;
        match session.arrive(reference, self.connection) {
            Arrival::New => {}
            Arrival::InProgress => return Ok(()),
            Arrival::Answered(answer) => return self.reply(answer),
            Arrival::Forgotten => {
                let frame = ServerFrame::Error(ErrorFrame {
                    reference: Some(reference),
                    code: ErrorCode::UnknownOutcome,
                    message: "this request was received before and its answer is forgotten; \
                              it was not carried out again"
                        .into(),
                });
                return self.reply(frame.encode());
            }
        }
        // From here on, every path answers `reference` exactly once.
        if let ClientFrame::Ping { reference } = frame {
            return self.succeed(reference);
        }
        if let Verdict::Refuse(reason) = self.shared.hooks.message(&self.session.info, &frame) {
            return self.fail(reference, ErrorCode::Forbidden, reason);
        }
        match frame {
            ClientFrame::Send {
                reference,
                to,
                data,
            } => self.send(reference, to, data).await,
            ClientFrame::Call {
                reference,
                to,
                data,
                timeout_ms,
            } => self.call(reference, to, data, timeout_ms).await,
            ClientFrame::Join { reference, channel } => {
                if !self.may(&channel, false) {
                    return self.fail(
                        reference,
                        ErrorCode::Forbidden,
                        format!("may not join {channel:?}"),
                    );
                }
                match self.shared.join(&self.session, &channel) {
                    Ok(()) => self.succeed(reference),
                    Err(why) => self.fail(reference, ErrorCode::BadRequest, why.to_string()),
                }
            }
            ClientFrame::Leave { reference, channel } => {
                self.shared.leave(&self.session, &channel);
                self.succeed(reference)
            }
            ClientFrame::Refresh { reference, token } => self.refresh(reference, token).await,
            ClientFrame::Grant { reference, expires } => self.grant(reference, expires),
            ClientFrame::Revoke { reference, grant } => self.revoke(reference, grant).await,
            ClientFrame::Presence { reference, channel } => self.presence(reference, channel).await,
            ClientFrame::Recover {
                reference,
                channel,
                epoch,
                offset,
            } => {
                let position = crate::cluster::Position { epoch, offset };
                self.recover(reference, channel, position).await
            }
            ClientFrame::Ack { .. } | ClientFrame::Ping { .. } => Ok(()),
        }
    }

    /// Whether the session may join (or publish to) `channel`: the hook, else the patterns.
    fn may(&self, channel: &str, publish: bool) -> bool {
        if channels::check_name(channel).is_err() {
            return false;
        }
        let info = &self.session.info;
        match self.shared.hooks.authorize_channel(info, channel, publish) {
            Some(allowed) => allowed,
            None => {
                let permissions = &self.shared.config.permissions;
                let patterns = if publish {
                    &permissions.publish
                } else {
                    &permissions.join
                };
                channels::allowed(patterns, channel, &info.user)
            }
        }
    }

    async fn refresh(&mut self, reference: u64, token: String) -> Result<(), Closing> {
        let request = AuthRequest::token(token);
        let identity = match self.shared.hooks.authenticate(request.clone()).await {
            Some(result) => result.map(Some),
            None => self.shared.verifier.verify(&request),
        };
        match identity {
            Ok(Some(identity)) if identity.user == self.session.info.user => {
                lock(&self.session.state).auth_expires = identity.expires;
                self.session.save();
                self.auth_deadline = identity.expires.map_or_else(far_future, instant_of);
                self.succeed(reference)
            }
            Ok(Some(_)) => self.fail(
                reference,
                ErrorCode::Unauthorized,
                "the token is another user's",
            ),
            Ok(None) => self.succeed(reference),
            Err(error) => self.fail(reference, ErrorCode::Unauthorized, error.to_string()),
        }
    }

    // Capabilities (docs/GATEWAY.md §5.9).

    /// `grant`: an address of the session's mailbox under a new grant.
    fn grant(&self, reference: u64, expires: Option<u64>) -> Result<(), Closing> {
        if expires.is_some_and(|at| at <= unix_now()) {
            return self.fail(reference, ErrorCode::BadRequest, "`expires` is in the past");
        }
        let Some(address) = self.session.grant(expires) else {
            return self.fail(reference, ErrorCode::NoSuchSession, "session ended");
        };
        let data = serde_json::json!({
            "address": address.to_string(),
            "grant": address.grant().to_string(),
        });
        let frame = ServerFrame::Ok {
            reference,
            data: Some(Bytes::from(data.to_string())),
        };
        self.answer(&frame, reference)
    }

    /// `revoke`: a grant of the session's mailbox, stored before the answer.
    async fn revoke(&self, reference: u64, grant: ferry::address::GrantId) -> Result<(), Closing> {
        if grant == ferry::address::GrantId::DEFAULT {
            return self.fail(
                reference,
                ErrorCode::BadRequest,
                "grant 0 is the session's own address: it cannot be revoked",
            );
        }
        let max = self.shared.config.limits.max_revocations;
        match self.session.revoke(grant, max).await {
            Some(Ok(())) => self.succeed(reference),
            Some(Err(ferry::RevokeError::TooMany { max })) => self.fail(
                reference,
                ErrorCode::Forbidden,
                format!("this session has {max} revoked grants already"),
            ),
            Some(Err(error)) => self.fail(reference, ErrorCode::StoreFailed, error.to_string()),
            None => self.fail(reference, ErrorCode::NoSuchSession, "session ended"),
        }
    }

    /// A permit for one more request in flight (waits: the browser's reading pauses).
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.inflight.clone().acquire_owned().await.ok()
    }

    /// Answers `reference` with the outcome of `delivery` once it completes, in a task.
    fn answer_later(
        &self,
        reference: u64,
        permit: OwnedSemaphorePermit,
        delivery: impl Future<Output = ServerFrame> + Send + 'static,
    ) {
        let session = self.session.clone();
        self.shared.tasks.spawn(async move {
            let frame = delivery.await;
            session.answer(reference, frame.encode());
            drop(permit);
        });
    }

    async fn send(&mut self, reference: u64, to: Target, data: Bytes) -> Result<(), Closing> {
        let max = self.shared.node.config().max_message_size;
        if data.len() > max {
            return self.fail(
                reference,
                ErrorCode::TooLarge,
                format!("message of {} bytes exceeds the limit of {max}", data.len()),
            );
        }
        let from = self.session.info.address.clone();
        let Some(permit) = self.permit().await else {
            return Ok(());
        };
        // Each branch starts the delivery here, before the next request is read: the
        // conversation's queue and the store keep the order in which they were started.
        match to {
            Target::Address(address) => {
                let sender = match self.session.sender(&address) {
                    Some(Ok(sender)) => sender,
                    Some(Err(error)) => {
                        return self.answer(&send_error_frame(reference, &error), reference)
                    }
                    None => return self.fail(reference, ErrorCode::NoSuchSession, "session ended"),
                };
                let delivery = match sender.enqueue_bytes(data).await {
                    Ok(delivery) => delivery,
                    Err(error) => {
                        return self.answer(&send_error_frame(reference, &error), reference)
                    }
                };
                self.answer_later(reference, permit, async move {
                    match delivery.await {
                        Ok(()) => ServerFrame::Ok {
                            reference,
                            data: None,
                        },
                        Err(error) => send_error_frame(reference, &error),
                    }
                });
                Ok(())
            }
            Target::Channel(channel) => {
                let member = lock(&self.session.state).channels.contains(&channel);
                if !member || !self.may(&channel, true) {
                    return self.fail(
                        reference,
                        ErrorCode::Forbidden,
                        format!("may not publish to {channel:?}"),
                    );
                }
                let delivery =
                    self.shared
                        .publish_answer(reference, Route::Channel(channel), &from, data);
                self.answer_later(reference, permit, delivery);
                Ok(())
            }
            Target::User(_) | Target::Session(_) if !self.shared.config.permissions.direct => self
                .fail(
                    reference,
                    ErrorCode::Forbidden,
                    "sending to users and sessions is not allowed",
                ),
            Target::User(user) => {
                let route = Route::User { user, push: false };
                let delivery = self.shared.publish_answer(reference, route, &from, data);
                self.answer_later(reference, permit, delivery);
                Ok(())
            }
            Target::Session(id) => {
                let route = Route::Session { id, push: false };
                let delivery = self.shared.publish_answer(reference, route, &from, data);
                self.answer_later(reference, permit, delivery);
                Ok(())
            }
        }
    }

    /// Stores again for the session the publications of `channel` after `after`.
    async fn recover(
        &mut self,
        reference: u64,
        channel: String,
        after: crate::cluster::Position,
    ) -> Result<(), Closing> {
        let member = lock(&self.session.state).channels.contains(&channel);
        if !member {
            return self.fail(
                reference,
                ErrorCode::Forbidden,
                format!("not a member of {channel:?}"),
            );
        }
        let Some(permit) = self.permit().await else {
            return Ok(());
        };
        let answer = self
            .shared
            .recover_answer(reference, &self.session, &channel, after);
        self.answer_later(reference, permit, answer);
        Ok(())
    }

    /// Who is in `channel` (every node): members and those who may join may ask.
    async fn presence(&mut self, reference: u64, channel: String) -> Result<(), Closing> {
        let member = lock(&self.session.state).channels.contains(&channel);
        if !member && !self.may(&channel, false) {
            return self.fail(
                reference,
                ErrorCode::Forbidden,
                format!("may not see who is in {channel:?}"),
            );
        }
        let Some(permit) = self.permit().await else {
            return Ok(());
        };
        let answer = self.shared.presence_answer(reference, &channel);
        self.answer_later(reference, permit, answer);
        Ok(())
    }

    async fn call(
        &mut self,
        reference: u64,
        to: CallTarget,
        data: Bytes,
        timeout_ms: Option<u64>,
    ) -> Result<(), Closing> {
        let max_timeout = self.shared.config.limits.max_call_timeout;
        let timeout = timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(max_timeout)
            .min(max_timeout);
        let target = node_target(to);
        let Some(permit) = self.permit().await else {
            return Ok(());
        };
        let node = self.shared.node.clone();
        self.answer_later(reference, permit, async move {
            let result: Result<Vec<u8>, CallError> = node
                .call::<[u8], Vec<u8>>(target, &data[..])
                .timeout(timeout)
                .await;
            match result {
                Ok(reply) => ServerFrame::Ok {
                    reference,
                    data: Some(Bytes::from(reply)),
                },
                Err(error) => call_error_frame(reference, &error),
            }
        });
        Ok(())
    }
}

fn error_frame(reference: u64, code: ErrorCode, message: String) -> ServerFrame {
    ServerFrame::Error(ErrorFrame {
        reference: Some(reference),
        code,
        message,
    })
}

/// The `error` answer of a delivery that failed.
pub(crate) fn deliver_error(reference: u64, error: &DeliverError) -> ServerFrame {
    let code = match error {
        DeliverError::NoSuchSession => ErrorCode::NoSuchSession,
        DeliverError::Full => ErrorCode::StoreFailed,
        DeliverError::Store(_) => ErrorCode::StoreFailed,
        DeliverError::TooLarge { .. } => ErrorCode::TooLarge,
        DeliverError::Unavailable(_) => ErrorCode::Unavailable,
    };
    error_frame(reference, code, error.to_string())
}

/// The `error` answer of a publication the cluster refused.
pub(crate) fn cluster_error(reference: u64, error: &ClusterError) -> ServerFrame {
    match error {
        ClusterError::Deliver(error) => deliver_error(reference, error),
        ClusterError::TooLarge { .. } => {
            error_frame(reference, ErrorCode::TooLarge, error.to_string())
        }
        _ => error_frame(reference, ErrorCode::Unavailable, error.to_string()),
    }
}

fn send_error_frame(reference: u64, error: &SendError) -> ServerFrame {
    let code = match error {
        SendError::Forged => ErrorCode::Forged,
        SendError::Expired(_) => ErrorCode::Expired,
        SendError::WrongNode => ErrorCode::WrongNode,
        SendError::NoSuchMailbox => ErrorCode::NoSuchMailbox,
        SendError::Unreachable(_) => ErrorCode::Unreachable,
        SendError::TooLarge { .. } => ErrorCode::TooLarge,
        SendError::Timeout => ErrorCode::Timeout,
        SendError::NodeClosed => ErrorCode::NodeClosed,
        SendError::OutboxFull { .. } => ErrorCode::OutboxFull,
        SendError::Store(_) => ErrorCode::StoreFailed,
        SendError::Revoked => ErrorCode::Revoked,
        SendError::Caveat(_) => ErrorCode::Caveat,
        SendError::Exhausted => ErrorCode::Exhausted,
        _ => ErrorCode::Internal,
    };
    error_frame(reference, code, error.to_string())
}

fn call_error_frame(reference: u64, error: &CallError) -> ServerFrame {
    let code = match error {
        CallError::Timeout => ErrorCode::Timeout,
        CallError::Failed { .. } | CallError::NoResponse | CallError::Decode(_) => {
            ErrorCode::Failed
        }
        CallError::TooLarge { .. } => ErrorCode::TooLarge,
        CallError::Open(open) => open_error_code(open),
        _ => ErrorCode::Internal,
    };
    error_frame(reference, code, error.to_string())
}

/// The node's target for a call's (or a data stream's) `to`.
pub(crate) fn node_target(to: CallTarget) -> NodeTarget {
    match to {
        CallTarget::Address(address) => NodeTarget::Address(address),
        CallTarget::Service { node, addr, name } => {
            NodeTarget::service(node, name).with_hints(addr.into_iter().collect())
        }
    }
}

/// The error code of a conversation that could not be opened (a call's, a data stream's).
pub(crate) fn open_error_code(error: &OpenError) -> ErrorCode {
    match error {
        OpenError::Unreachable(_) | OpenError::PeerShuttingDown => ErrorCode::Unreachable,
        OpenError::NoSuchService(_) | OpenError::InvalidName(_) => ErrorCode::NoSuchService,
        OpenError::NotAllowed | OpenError::Busy => ErrorCode::Refused,
        OpenError::NoSuchMailbox => ErrorCode::NoSuchMailbox,
        OpenError::Forged => ErrorCode::Forged,
        OpenError::Expired(_) => ErrorCode::Expired,
        OpenError::WrongNode => ErrorCode::WrongNode,
        OpenError::Timeout => ErrorCode::Timeout,
        OpenError::NodeClosed => ErrorCode::NodeClosed,
        OpenError::Revoked => ErrorCode::Revoked,
        OpenError::Caveat(_) => ErrorCode::Caveat,
        OpenError::Exhausted => ErrorCode::Exhausted,
        _ => ErrorCode::Failed,
    }
}
