//! What every part of the gateway shares ([`Shared`]), and what it does with sessions:
//! brings them back after a restart, lists and ends them, joins them to channels.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferry::Node;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth;
use super::certificate::Certificates;
use super::channels::{self, ChannelNameError};
use super::config::GatewayConfig;
use super::hooks::{Disconnect, EndReason, Hooks};
use super::journal;
use super::limits::Bucket;
use super::registry::Registry;
use super::resume_token::ResumeKeys;
use super::session::{self, Session};
use super::stats::{Counters, WebTransportCounters};
use crate::store::SessionStore;
use crate::sync::lock;

/// What every part of the gateway shares.
pub(crate) struct Shared {
    pub(crate) node: Node,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) config: GatewayConfig,
    client_config: RwLock<Box<RawValue>>,
    pub(crate) hooks: Arc<dyn Hooks>,
    pub(crate) verifier: auth::Verifier,
    resume: ResumeKeys,
    pub(crate) registry: Mutex<Registry<Arc<Session>>>,
    pub(crate) channels: channels::Channels<Arc<Session>>,
    /// Browsers connected now.
    pub(crate) connections: AtomicUsize,
    pub(crate) next_connection: AtomicU64,
    /// New connections per second (`connection_rate`).
    pub(crate) connection_rate: Mutex<Bucket>,
    /// Counters for [`GatewayHandle::stats`](super::GatewayHandle::stats).
    pub(crate) counters: Counters,
    /// Cancelled when the gateway drains: every connection closes with 1001.
    pub(crate) stopping: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Where publications go (and presence is asked): this node alone, or its cluster.
    pub(crate) cluster: Arc<dyn crate::cluster::Cluster>,
    /// This `Shared` itself (the cluster's deliveries need an `Arc`).
    pub(crate) this: std::sync::Weak<Shared>,
    /// The WebTransport endpoint, once served (for `GET /webtransport`).
    pub(crate) webtransport: std::sync::OnceLock<Arc<Published>>,
}

/// Why a session could not join a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// No live session has that id.
    #[error("no such session")]
    NoSuchSession,
    /// The channel's name is not a valid one.
    #[error(transparent)]
    InvalidName(#[from] ChannelNameError),
    /// The session ended meanwhile.
    #[error("the session ended")]
    Ended,
    /// The session is a member of as many channels as `max_channels_per_session` allows.
    #[error("at most {max} channels per session")]
    TooManyChannels {
        /// The limit.
        max: usize,
    },
}

impl Shared {
    /// What a new gateway shares: no session yet, resume tokens signed with a key made from
    /// `resume_secret`.
    pub(crate) fn new(
        node: Node,
        store: Arc<dyn SessionStore>,
        config: GatewayConfig,
        hooks: Arc<dyn Hooks>,
        resume_secret: &[u8],
        cluster: Arc<dyn crate::cluster::Cluster>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            cluster,
            this: this.clone(),
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
            resume: ResumeKeys::new(resume_secret),
            registry: Mutex::new(Registry::default()),
            channels: channels::Channels::default(),
            connections: AtomicUsize::new(0),
            counters: Counters::default(),
            next_connection: AtomicU64::new(1),
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
            webtransport: std::sync::OnceLock::new(),
        })
    }

    /// The live session with this id.
    pub(crate) fn session(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.registry).get(id)
    }

    /// The live sessions of `user`.
    pub(crate) fn user_sessions(&self, user: &str) -> Vec<Arc<Session>> {
        lock(&self.registry).of_user(user)
    }

    /// Brings back the sessions of an earlier run from their records (`key`, `value`): each
    /// detached, expiring `session_ttl` after its last connection ended (the time the node
    /// was down counts) unless a client resumes it.
    pub(crate) fn restore(&self, records: Vec<(String, Vec<u8>)>) {
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
    pub(crate) fn register(&self, session: &Arc<Session>) {
        lock(&self.registry).insert(&session.info.id, &session.info.user, session.clone());
    }

    /// Ends a session: it leaves its channels, its address is revoked, its messages dropped.
    pub(crate) fn end(&self, session: &Arc<Session>, reason: EndReason) {
        if !lock(&self.registry).remove(&session.info.id, &session.info.user) {
            return; // ended already
        }
        let (channels, attached) = {
            let mut state = lock(&session.state);
            (std::mem::take(&mut state.channels), state.attached.take())
        };
        for channel in channels {
            self.channels.leave(&channel, &session.info.id);
            self.presence_changed(&channel, false, session);
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

    /// A journal for a new or restored session.
    pub(crate) fn journal(&self) -> journal::Journal {
        let limits = &self.config.limits;
        journal::Journal::new(
            limits.max_remembered_answers,
            limits.max_remembered_answer_bytes,
        )
    }

    /// Joins `session` to `channel` (no permission check).
    pub(crate) fn join(&self, session: &Arc<Session>, channel: &str) -> Result<(), JoinError> {
        channels::check_name(channel)?;
        let mut state = lock(&session.state);
        if state.ended {
            return Err(JoinError::Ended);
        }
        let max = self.config.limits.max_channels_per_session;
        if !state.channels.contains(channel) && state.channels.len() >= max {
            return Err(JoinError::TooManyChannels { max });
        }
        let joined = state.channels.insert(channel.to_owned());
        // Still under the session's lock: an `end` cannot come between and miss the channel.
        self.channels
            .join(channel, &session.info.id, session.clone());
        drop(state);
        if joined {
            session.save();
            self.presence_changed(channel, true, session);
        }
        Ok(())
    }

    pub(crate) fn leave(&self, session: &Session, channel: &str) {
        let left = lock(&session.state).channels.remove(channel);
        self.channels.leave(channel, &session.info.id);
        if left {
            session.save();
            self.presence_changed(channel, false, session);
        }
    }

    /// The configuration object sent to clients that connect now.
    pub(crate) fn client_config(&self) -> Box<RawValue> {
        crate::sync::read(&self.client_config).clone()
    }

    /// Replaces the configuration object sent to clients that connect from now on.
    pub(crate) fn set_client_config(&self, config: &serde_json::Value) {
        *crate::sync::write(&self.client_config) = raw_json(config);
    }

    /// The resume token of `session`.
    pub(crate) fn resume_token(&self, session: &Session) -> String {
        self.resume.token(session.mailbox_id, &session.info.id)
    }

    /// The verified (mailbox, session id) of a resume token.
    pub(crate) fn verify_resume_token(&self, token: &str) -> Option<(ferry::MailboxId, String)> {
        self.resume.verify(token)
    }
}

/// `value` as raw JSON, sent as it is in every welcome.
fn raw_json(value: &serde_json::Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// Counts a connection while it lives.
pub(crate) struct ConnectionSlot(Arc<Shared>);

impl ConnectionSlot {
    /// The slot of a connection counted already.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self(shared)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the gateway's HTTP side publishes about the endpoint.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) port: u16,
    pub(crate) certificates: Arc<Certificates>,
    pub(crate) counters: Arc<WebTransportCounters>,
}
