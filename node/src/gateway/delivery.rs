//! Deliveries from the gateway itself (channel publications, messages to a user's sessions,
//! to a session, pushes): stored once for every recipient session, then handed to the
//! connections that are caught up.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use ferry::store::StoreFuture;

use super::protocol::{self, Via};
use super::session::Session;
use super::shared::Shared;
use crate::cluster::DeliverError;
use crate::store::Appended;
use crate::sync::lock;

impl Shared {
    /// Puts `payload` into the mailboxes of `sessions`, stored once (one write, one row
    /// shared by every member's mailbox). The write is submitted to the store now, and the
    /// store applies writes in the order submitted: deliveries submitted one after another
    /// get their ids, and reach every session, in that order. The future waits for the write
    /// and hands the message to the connections that are caught up (the others read it
    /// back); it gives each session's outcome, in order.
    pub(crate) fn submit_each(
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
    pub(crate) fn submit_all(
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
}
