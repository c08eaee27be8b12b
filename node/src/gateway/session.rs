//! Sessions: one per browser client, each a durable mailbox on the node with its own
//! capability address. A session outlives its connections: while it is disconnected its
//! messages are kept in the store, and a connection presenting its resume token gets them.
//! It also outlives the node's process: its record in the store (mailbox, user, channels)
//! brings it back, with the same address and its stored messages, when the gateway starts.
//!
//! Every message for a session is in the store before anything else happens: messages from
//! peers and other sessions arrive through the session's durable mailbox (the mailbox's queue
//! is only a wake-up), messages from the gateway itself (channels, users, pushes) are
//! appended directly. A connection delivers from the store in index order, so what it sends
//! is exactly the store's order whatever path a message took.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::{Address, Mailbox, MailboxId};
use tokio_util::sync::CancellationToken;

use super::hooks::{Disconnect, SessionInfo};
use super::journal::{Arrival, Journal};
use super::limits::{OutQueue, QueueError};
use super::protocol::{close, Encoded, LastSender, MessageTemplate, Via};
use crate::clock::unix_now;
use crate::cluster::DeliverError;
use crate::random::random;
use crate::store::{Appended, SessionStore};
use crate::sync::lock;

/// The store's record of a session (`records` key [`record_key`], JSON), written when the
/// session starts and when its channels or credentials change, removed when it ends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SessionRecord {
    /// The session's mailbox id.
    pub(crate) mailbox: u64,
    /// Its user id.
    pub(crate) user: String,
    /// The channels it is a member of.
    pub(crate) channels: Vec<String>,
    /// When its credentials expire (unix seconds).
    pub(crate) auth_expires: Option<u64>,
    /// The highest mailbox position at which a message for it was dropped (its store was
    /// full), so that a resume after a restart still reports `recovered: false`.
    #[serde(default)]
    pub(crate) lost_at: Option<u64>,
    /// When its last connection ended (unix seconds); `None` while one is attached. A
    /// restart does not restart the countdown of `session_ttl`.
    #[serde(default)]
    pub(crate) detached_at: Option<u64>,
}

/// The prefix of every session record's key.
pub(crate) const RECORD_PREFIX: &str = "gateway/session/";

/// The key of the record of session `id`.
pub(crate) fn record_key(id: &str) -> String {
    format!("{RECORD_PREFIX}{id}")
}

/// The connection attached to a session.
#[derive(Clone)]
pub(crate) struct Attached {
    /// Tells this connection from later ones.
    pub(crate) connection: u64,
    /// Cancelled to close the connection, with the reason set first.
    pub(crate) kick: CancellationToken,
    /// Why it is being closed, when kicked.
    pub(crate) reason: Arc<Mutex<Option<(u16, String, Disconnect)>>>,
    /// Its outgoing frames: a message stored while the connection is caught up goes here
    /// straight away, without being read back from the store.
    pub(crate) queue: OutQueue,
    /// Starts the connection's pump (a task that reads stored messages into `queue` until it
    /// has caught up, then ends).
    pub(crate) start_pump: Arc<dyn Fn() + Send + Sync>,
    /// The gateway's count of messages handed to connections.
    pub(crate) delivered: Arc<std::sync::atomic::AtomicU64>,
    /// The last sender of a message handed over straight away.
    pub(crate) last_sender: LastSender,
}

impl Attached {
    /// Closes the connection with `code` and `reason`, unless a reason to close it was given
    /// already.
    pub(crate) fn close(&self, code: u16, reason: &str, disconnect: Disconnect) {
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            *slot = Some((code, reason.to_owned(), disconnect));
        }
        self.kick.cancel();
    }
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// A session's changing state.
#[derive(Debug)]
pub(crate) struct State {
    /// The index of the next message to hand to the connection.
    pub(crate) next: u64,
    /// Whether the connection's pump is running (reading stored messages from `next` on):
    /// only the pump hands messages over then. Otherwise (the connection is caught up) a newly
    /// stored message whose index is `next` is handed to the connection's queue at once, and
    /// any other is left to a pump started for it.
    pub(crate) pumping: bool,
    /// Set when a message was stored while the pump ran: it reads once more before it ends.
    pub(crate) again: bool,
    /// Every index below this was acknowledged (and removed from the store).
    pub(crate) acked: u64,
    /// The highest store position at which a message for the session was dropped (its
    /// mailbox's store was full).
    pub(crate) lost_at: Option<u64>,
    /// The connection, while one is attached.
    pub(crate) attached: Option<Attached>,
    /// When the last connection ended (the session expires `session_ttl` later).
    pub(crate) detached_at: Option<Instant>,
    /// The channels it is a member of.
    pub(crate) channels: HashSet<String>,
    /// When its credentials expire (unix seconds).
    pub(crate) auth_expires: Option<u64>,
    /// Set once the session ended.
    pub(crate) ended: bool,
}

/// A session.
pub(crate) struct Session {
    pub(crate) info: SessionInfo,
    pub(crate) mailbox_id: MailboxId,
    pub(crate) state: Mutex<State>,
    /// The requests taken from the client, and the answers remembered.
    journal: Mutex<Journal>,
    /// Held while a request is looked up in the journal and started, so that the requests of
    /// a session are started one at a time in the order they arrived, also when two
    /// connections (one taking over from the other) read at once.
    pub(crate) order: tokio::sync::Mutex<()>,
    /// The session's mailbox: dropping it revokes the address. Shared only for a moment, by a
    /// `revoke` request that waits for the store.
    mailbox: Mutex<Option<Arc<Mailbox>>>,
    /// Where its messages and its record are kept.
    store: Arc<dyn SessionStore>,
    /// Where its WebTransport connection, if it has one, takes peers' data (docs/GATEWAY.md
    /// §13.12); set by each WebTransport connection, closed when it ends.
    pub(crate) incoming: Mutex<Option<IncomingTx>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.info.id)
            .field("user", &self.info.user)
            .finish()
    }
}

impl Session {
    /// Opens a session with a fresh durable mailbox, and records it in the store.
    pub(crate) fn open(
        node: &ferry::Node,
        store: &Arc<dyn SessionStore>,
        journal: Journal,
        id: String,
        user: String,
        auth_expires: Option<u64>,
    ) -> Result<Arc<Self>, ferry::StoreError> {
        let record = SessionRecord {
            mailbox: MailboxId::random().0,
            user,
            channels: Vec::new(),
            auth_expires,
            lost_at: None,
            detached_at: None,
        };
        let session = Self::with_mailbox(node, store, journal, id, record, 0)?;
        session.save();
        Ok(session)
    }

    /// Brings back the session `id` from its record after a restart: the same mailbox (so the
    /// same address) with its stored messages, its channels, detached since its last
    /// connection ended (or from now on, if one was attached when the node stopped). One
    /// away for `ttl` or longer is restored expired: the gateway ends it.
    pub(crate) fn restore(
        node: &ferry::Node,
        store: &Arc<dyn SessionStore>,
        journal: Journal,
        id: String,
        record: SessionRecord,
        ttl: Duration,
    ) -> Result<Arc<Self>, ferry::StoreError> {
        let first = store.first_pending_index(MailboxId(record.mailbox))?;
        let away = record.detached_at.map_or(Duration::ZERO, |at| {
            Duration::from_secs(unix_now().saturating_sub(at))
        });
        let session = Self::with_mailbox(node, store, journal, id, record, first)?;
        let now = Instant::now();
        // An instant before the monotonic clock's start cannot be made: one `ttl` back is
        // enough to be expired.
        let detached_at = now
            .checked_sub(away)
            .or_else(|| now.checked_sub(ttl))
            .unwrap_or(now);
        lock(&session.state).detached_at = Some(detached_at);
        Ok(session)
    }

    /// Whether the session has had no connection for `ttl` or longer.
    pub(crate) fn away_for(&self, ttl: Duration, now: Instant) -> bool {
        let state = lock(&self.state);
        state.attached.is_none()
            && state
                .detached_at
                .is_some_and(|at| now.saturating_duration_since(at) >= ttl)
    }

    /// A session on the durable mailbox of `record`, whose messages below `first` were
    /// acknowledged.
    fn with_mailbox(
        node: &ferry::Node,
        store: &Arc<dyn SessionStore>,
        journal: Journal,
        id: String,
        record: SessionRecord,
        first: u64,
    ) -> Result<Arc<Self>, ferry::StoreError> {
        let mailbox_id = MailboxId(record.mailbox);
        let mailbox = node.durable_mailbox(mailbox_id, store.clone())?;
        let session = Arc::new(Self {
            info: SessionInfo {
                id,
                user: record.user,
                address: mailbox.address().clone(),
            },
            mailbox_id,
            state: Mutex::new(State {
                next: first,
                pumping: false,
                again: false,
                acked: first,
                lost_at: record.lost_at,
                attached: None,
                detached_at: None,
                channels: record.channels.into_iter().collect(),
                auth_expires: record.auth_expires,
                ended: false,
            }),
            journal: Mutex::new(journal),
            order: tokio::sync::Mutex::new(()),
            mailbox: Mutex::new(None),
            store: store.clone(),
            incoming: Mutex::new(None),
        });
        let weak = Arc::downgrade(&session);
        // The store has every message; the queue only says that one arrived.
        let attached = mailbox.set_handler(move |message| {
            if let Some(session) = weak.upgrade() {
                session.arrived(&message);
            }
            async {}
        });
        if let Err(error) = attached {
            tracing::error!(%error, "session mailbox refused its handler");
        }
        *lock(&session.mailbox) = Some(Arc::new(mailbox));
        Ok(session)
    }

    /// Takes note of a message from the gateway (channel, user, push) that the store
    /// answered `appended` for: hands it to the connection if that is attached and caught up
    /// (`template` makes its frame), else wakes the connection's pump, which reads it back.
    /// Returns whether the session took it.
    pub(crate) fn stored(
        &self,
        appended: Appended,
        template: &MessageTemplate,
        delivered: &std::sync::atomic::AtomicU64,
    ) -> Result<u64, DeliverError> {
        let mut state = lock(&self.state);
        let index = match appended {
            Appended::Stored(index) => index,
            Appended::Full { position } => {
                state.lost_at = Some(state.lost_at.map_or(position, |p| p.max(position)));
                self.save_locked(&state);
                return Err(DeliverError::Full);
            }
        };
        if state.ended {
            // Ended while the message was being stored: drop it with the rest.
            drop(state);
            self.store.purge(self.mailbox_id);
            return Err(DeliverError::NoSuchSession);
        }
        if !state.pumping && state.next == index {
            if let Some(attached) = &state.attached {
                if attached
                    .queue
                    .try_push_message(template.encode(index))
                    .is_ok()
                {
                    state.next = index + 1;
                    delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(index);
                }
            }
        }
        drop(state);
        self.wake();
        Ok(index)
    }

    /// A message from a peer or another session arrived in the mailbox (it is stored): handed
    /// to the connection at once if that is attached and caught up, else left to the pump.
    fn arrived(&self, message: &ferry::Message) {
        if let Some(index) = message.id() {
            let mut state = lock(&self.state);
            if !state.pumping && !state.ended && state.next == index {
                if let Some(attached) = state.attached.as_mut() {
                    let via = Via::default();
                    let head = attached.last_sender.head(message.from(), &via);
                    let frame = MessageTemplate::with_head(head, &via, message.payload().clone())
                        .encode(index);
                    if attached.queue.try_push_message(frame).is_ok() {
                        attached
                            .delivered
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        state.next = index + 1;
                        return;
                    }
                }
            }
        }
        self.wake();
    }

    /// A message was stored: makes sure the attached connection's pump reads it (starts the
    /// pump, or tells the running one to read again). Without a connection there is nothing
    /// to do: the next connection's pump reads what is stored.
    pub(crate) fn wake(&self) {
        let mut state = lock(&self.state);
        if state.pumping {
            state.again = true;
            return;
        }
        if state.ended {
            return;
        }
        if let Some(start) = state.attached.as_ref().map(|a| a.start_pump.clone()) {
            state.pumping = true;
            state.again = false;
            drop(state);
            start();
        }
    }

    /// Request `reference` arrived on `connection` (call with `order` held).
    pub(crate) fn arrive(&self, reference: u64, connection: u64) -> Arrival {
        lock(&self.journal).arrive(reference, connection)
    }

    /// The client has the answers of every request up to `reference`.
    pub(crate) fn confirm(&self, reference: u64) {
        lock(&self.journal).confirm(reference);
    }

    /// The answer of request `reference`: kept in the journal, and queued to the newest
    /// connection that sent the request, if that one is attached. A connection whose queue has
    /// no room for it is closed as a slow consumer (the client sends the request again on its
    /// next connection and gets the answer from the journal).
    pub(crate) fn answer(&self, reference: u64, answer: Encoded) {
        let Some(connection) = lock(&self.journal).answer(reference, &answer) else {
            return;
        };
        let state = lock(&self.state);
        let Some(attached) = state
            .attached
            .as_ref()
            .filter(|a| a.connection == connection)
        else {
            return;
        };
        if attached.queue.try_push(answer) == Err(QueueError::Slow) {
            attached.close(close::SLOW, "slow consumer", Disconnect::SlowConsumer);
        }
    }

    /// Closes the session's connection `connection`, if it is still the attached one.
    pub(crate) fn kick(&self, connection: u64, code: u16, reason: &str, disconnect: Disconnect) {
        let state = lock(&self.state);
        if let Some(attached) = state
            .attached
            .as_ref()
            .filter(|a| a.connection == connection)
        {
            attached.close(code, reason, disconnect);
        }
    }

    /// A sender from the session's mailbox to `to`; `None` once the session ended.
    pub(crate) fn sender(&self, to: &Address) -> Option<Result<ferry::Sender, ferry::SendError>> {
        lock(&self.mailbox)
            .as_ref()
            .map(|mailbox| mailbox.sender(to))
    }

    // Capabilities (docs/GATEWAY.md §5.9).

    /// An address of the session's mailbox under a new grant (`None` once the session ended).
    pub(crate) fn grant(&self, expires: Option<u64>) -> Option<Address> {
        lock(&self.mailbox)
            .as_ref()
            .map(|mailbox| mailbox.grant(expires))
    }

    /// Revokes `grant` of the session's mailbox unless `max` grants are revoked already, in
    /// force at once (streams open under it end) and stored (durable) when this returns;
    /// `None` once the session ended.
    pub(crate) async fn revoke(
        &self,
        grant: ferry::address::GrantId,
        max: usize,
    ) -> Option<Result<(), ferry::RevokeError>> {
        let mailbox = lock(&self.mailbox).clone()?;
        Some(mailbox.revoke_within(grant, max).await)
    }

    /// Removes every delivered message with an index up to `id` from the store.
    pub(crate) fn ack(&self, id: u64) {
        let mut state = lock(&self.state);
        let upto = id.saturating_add(1).min(state.next);
        if upto > state.acked {
            self.store.remove_below(self.mailbox_id, upto);
            state.acked = upto;
        }
    }

    /// Prepares a resume from `cursor` (the last message id the client processed; `None`:
    /// every unacknowledged message) and tells whether every message after it is still there.
    pub(crate) fn rewind(&self, cursor: Option<u64>) -> (bool, u64) {
        let stored_next = self.store.next_index(self.mailbox_id).unwrap_or(0);
        let mut state = lock(&self.state);
        let from = match cursor {
            Some(cursor) => cursor.saturating_add(1),
            None => state.acked,
        };
        let lost = state.lost_at.is_some_and(|position| position >= from)
            || from < state.acked
            || from > stored_next;
        state.next = from.clamp(state.acked, stored_next.max(state.acked));
        let pending = stored_next.saturating_sub(state.next);
        (!lost, pending)
    }

    /// Closes the mailbox (revoking the address) and forgets the stored messages and the
    /// session's record.
    pub(crate) fn close(&self) {
        {
            // Under the lock, so that no save can come between and write the record again.
            let mut state = lock(&self.state);
            state.ended = true;
            self.store.delete_record(&record_key(&self.info.id));
        }
        drop(lock(&self.mailbox).take());
        self.store.purge(self.mailbox_id);
    }

    /// Writes the session's record (after it started, or its channels or credentials
    /// changed). Not once it ended: a late save must not bring back a deleted record.
    pub(crate) fn save(&self) {
        self.save_locked(&lock(&self.state));
    }

    /// [`Session::save`] with the session's state locked by the caller. Submitting under the
    /// lock orders this write before the deletion of a `close` that follows (the writer
    /// applies requests in order).
    pub(crate) fn save_locked(&self, state: &State) {
        if state.ended {
            return;
        }
        let mut channels: Vec<String> = state.channels.iter().cloned().collect();
        channels.sort();
        let record = SessionRecord {
            mailbox: self.mailbox_id.0,
            user: self.info.user.clone(),
            channels,
            auth_expires: state.auth_expires,
            lost_at: state.lost_at,
            detached_at: state
                .detached_at
                .map(|at| unix_now().saturating_sub(at.elapsed().as_secs())),
        };
        match serde_json::to_vec(&record) {
            Ok(bytes) => self.store.put_record(&record_key(&self.info.id), bytes),
            Err(error) => tracing::error!(%error, "encoding a session record"),
        }
    }
}

/// A new session id: 16 random bytes, base64url.
pub(crate) fn new_session_id() -> String {
    data_encoding::BASE64URL_NOPAD.encode(&random::<16>())
}

/// A peer's data for a session, on its way to the session's WebTransport connection.
pub(crate) struct Incoming {
    pub(crate) conversation: ferry::Conversation,
    pub(crate) meta: bytes::Bytes,
}

impl Incoming {
    /// Fails the peer's conversation with `reason`, without a stream to the browser.
    pub(crate) fn refuse(self, reason: &'static str) {
        tokio::spawn(async move {
            let _ = self.conversation.fail(reason).await;
        });
    }
}

/// Where a session's connection takes incoming data (its sessions' `incoming`).
pub(crate) type IncomingTx = tokio::sync::mpsc::Sender<Incoming>;
