//! The gateway's side of its [`Cluster`](crate::cluster::Cluster): the gateway is the
//! cluster's [`Inbound`] (publications that reach this node go into its sessions'
//! mailboxes), and the requests that publish or ask for presence go through the cluster, so a
//! single node and a cluster run the same code (a single node's cluster is
//! [`Local`](crate::cluster::Local)).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use ferry::Address;

use super::delivery::DeliverError;
use super::protocol::{ServerFrame, Via};
use super::shared::Shared;
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
                let _ = attached.queue.try_push(frame.clone());
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

    /// This gateway's `Shared` as an `Arc`.
    fn me(&self) -> Option<Arc<Shared>> {
        self.this.upgrade()
    }
}
