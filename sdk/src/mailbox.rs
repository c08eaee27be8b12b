//! Mailboxes: where messages for one capability address arrive.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::address::{Address, GrantId, MailboxId};
use crate::error::{AttachError, RecvError, RevokeError};
use crate::registry::mailboxes::{Caps, Durable, Message, OpenMailbox, Receipt};
use crate::registry::queue::QueueReceiver;
use crate::runtime::Runtime;
use crate::store::StoredMessage;

/// Queues the messages a durable mailbox held when it opened, then lets new ones through.
async fn replay(durable: Arc<Durable>, pending: Vec<StoredMessage>, mailbox: Arc<OpenMailbox>) {
    let queue = &mailbox.queue;
    for stored in pending {
        let message = Message {
            from: stored.from,
            payload: stored.payload,
            receipt: Some(Receipt {
                durable: durable.clone(),
                index: stored.index,
            }),
        };
        tokio::select! {
            queued = queue.push(message) => if queued.is_err() { break },
            _ = queue.mailbox_closed.wait() => break,
        }
    }
    durable.replayed.cancel();
}

/// A mailbox on a node, reachable by its capability [`Address`].
///
/// Receive with [`recv`](Mailbox::recv) / [`recv_timeout`](Mailbox::recv_timeout), or attach
/// a [`handler`](Mailbox::set_handler) or take a [`stream`](Mailbox::messages): one form only,
/// the others then fail with a clear error. Dropping the mailbox (or [`close`](Mailbox::close))
/// revokes its address: senders get [`SendError::NoSuchMailbox`](crate::SendError::NoSuchMailbox).
pub struct Mailbox {
    /// The mailbox's address, which its id is read from.
    address: Address,
    pub(crate) node: Weak<Runtime>,
    /// Its queue and capability state, shared with the node's table and whatever delivers to
    /// it; the table's entry is this one while the mailbox is open.
    open: Arc<OpenMailbox>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").field("id", &self.id()).finish()
    }
}

impl Mailbox {
    /// Opens mailbox `id` at `address` with the capability state `caps` (a durable mailbox's
    /// is loaded from its store), queuing first what `durable`'s store held.
    pub(crate) fn new(
        id: MailboxId,
        address: Address,
        node: &Arc<Runtime>,
        capacity: usize,
        caps: Caps,
        durable: Option<(Arc<Durable>, Vec<StoredMessage>)>,
    ) -> Self {
        let (durable, pending) = match durable {
            Some((durable, pending)) => (Some(durable), pending),
            None => (None, Vec::new()),
        };
        let open = Arc::new(OpenMailbox::new(capacity, caps, durable.clone()));
        node.mailboxes.insert(id, open.clone());
        if let Some(durable) = durable {
            node.tasks.spawn(replay(durable, pending, open.clone()));
        }
        Self {
            address,
            node: Arc::downgrade(node),
            open,
        }
    }

    /// Mints an address of this mailbox under a new grant (PROTOCOL.md §4.11), with the
    /// node's dial hints, expiring at `expires` (unix seconds) if given. Hand it out; revoke it
    /// (and everything derived from it) with [`Mailbox::revoke`] without touching the mailbox
    /// or its other grants. Its grant id is [`Address::grant`].
    pub fn grant(&self, expires: Option<u64>) -> Address {
        let grant = GrantId::random();
        let Some(node) = self.node.upgrade() else {
            // The node is gone: the address can never be used anyway.
            return self.address.clone();
        };
        node.mint_grant(self.id(), grant, expires)
    }

    /// Revokes `grant`: its addresses and every address derived from them are refused from
    /// now on with [`SendError::Revoked`](crate::SendError::Revoked) (wire code REVOKED). Streams already open under it
    /// deliver no further message and are closed with REVOKED at once (their senders'
    /// unacknowledged messages fail with [`SendError::Revoked`](crate::SendError::Revoked); what was acknowledged stays
    /// delivered), and watches of its addresses end with
    /// [`DownReason::InvalidAddress`](crate::DownReason::InvalidAddress)`(Revoked)`. The
    /// mailbox and its other grants are untouched. Revoking [`GrantId::DEFAULT`] voids every
    /// `ferry1` address of the mailbox, including [`Mailbox::address`].
    ///
    /// A mailbox keeps at most `max_revocations` (a [`NodeConfig`](crate::NodeConfig) key)
    /// revoked grants: a further one fails with [`RevokeError::TooMany`] and revokes nothing;
    /// revoking a grant again is not counted. For a durable mailbox the revocation is stored
    /// before this returns, so it survives a restart and a crash; the revocation is in force
    /// (in memory) even when storing fails.
    pub async fn revoke(&self, grant: GrantId) -> Result<(), RevokeError> {
        self.revoke_within(grant, usize::MAX).await
    }

    /// [`Mailbox::revoke`] with a bound of `max` revoked grants (at most the node's
    /// `max_revocations`), for a holder that allows fewer, such as a gateway session.
    pub async fn revoke_within(&self, grant: GrantId, max: usize) -> Result<(), RevokeError> {
        let node_max = self
            .node
            .upgrade()
            .map_or(usize::MAX, |node| node.config.max_revocations);
        self.open.caps.revoke_within(grant, max.min(node_max))?;
        if let Some(durable) = &self.open.durable {
            durable.store.revoke(self.id(), grant).await?;
        }
        Ok(())
    }

    /// How many grants of the mailbox are revoked.
    pub fn revocations(&self) -> usize {
        self.open.caps.revoked_count()
    }

    /// Whether `grant` is revoked.
    pub fn is_revoked(&self, grant: GrantId) -> bool {
        self.open.caps.is_revoked(grant)
    }

    /// The mailbox's capability address, with the node's dial hints: everything another node
    /// needs to send here. Treat it as a secret: whoever holds it may send.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The mailbox id.
    pub fn id(&self) -> MailboxId {
        self.address.mailbox()
    }

    /// Waits for the next message.
    pub async fn recv(&self) -> Result<Message, RecvError> {
        if self.open.attached.load(Ordering::Acquire) {
            return Err(RecvError::NotReceiving);
        }
        let mut slot = self.open.queue.reader().lock().await;
        let receiver = slot.as_mut().ok_or(RecvError::NotReceiving)?;
        receiver.recv().await.ok_or(RecvError::Closed)
    }

    /// Waits at most `timeout` for the next message.
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvError> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .unwrap_or(Err(RecvError::Timeout))
    }

    /// Takes up to `max` messages that are already queued, without waiting.
    pub fn try_recv_many(&self, max: usize) -> Result<Vec<Message>, RecvError> {
        if self.open.attached.load(Ordering::Acquire) {
            return Err(RecvError::NotReceiving);
        }
        let Ok(mut slot) = self.open.queue.reader().try_lock() else {
            return Ok(Vec::new());
        };
        let receiver = slot.as_mut().ok_or(RecvError::NotReceiving)?;
        // Sized once: growing it message by message moved every message several times.
        let mut out = Vec::with_capacity(receiver.len().min(max));
        // The queue's room is given back once for all it takes.
        match receiver.try_recv_many(&mut out, max) {
            // Only a closed queue with nothing left.
            None => Err(RecvError::Closed),
            Some(_) => Ok(out),
        }
    }

    /// The receiving end for a handler or stream: refused while a `recv` waits, and once given.
    fn take_receiver(&self) -> Result<QueueReceiver<Message>, AttachError> {
        let mut slot = self
            .open
            .queue
            .reader()
            .try_lock()
            .map_err(|_| AttachError::Receiving)?;
        let receiver = slot.take().ok_or(AttachError::AlreadyAttached)?;
        self.open.attached.store(true, Ordering::Release);
        Ok(receiver)
    }

    /// Calls `handler` for every message, one at a time in arrival order, on a task of the
    /// node. The mailbox stays open (and its address valid) while this `Mailbox` lives.
    pub fn set_handler<F, Fut>(&self, mut handler: F) -> Result<(), AttachError>
    where
        F: FnMut(Message) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut receiver = self.take_receiver()?;
        let Some(node) = self.node.upgrade() else {
            return Ok(());
        };
        let open = self.open.clone();
        let shutdown = node.cancel.clone();
        node.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = open.queue.mailbox_closed.wait() => break,
                    _ = shutdown.cancelled() => break,
                    message = receiver.recv() => match message {
                        Some(message) => handler(message).await,
                        None => break,
                    },
                }
            }
        });
        Ok(())
    }

    /// The messages as a [`Stream`]; ends when the mailbox closes or the node shuts down.
    pub fn messages(
        &self,
    ) -> Result<impl Stream<Item = Message> + Send + Unpin + 'static, AttachError> {
        let mut receiver = self.take_receiver()?;
        let open = self.open.clone();
        let closed = Box::pin(async move { open.queue.mailbox_closed.wait().await });
        Ok(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).take_until(closed))
    }

    /// Closes the mailbox now, revoking its address.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.open.queue.mailbox_closed.set();
        // Senders must see the mailbox gone: the receiving end, unless a handler or stream
        // took it, is in the queue (read there by `recv`), which streams may still hold.
        self.open.queue.close();
        if let Some(node) = self.node.upgrade() {
            node.mailboxes.remove(self.id(), &self.open);
        }
    }
}

pub(crate) fn new_mailbox(node: &Arc<Runtime>, id: MailboxId, expires: Option<u64>) -> Mailbox {
    let address = node.mint(id, expires);
    Mailbox::new(
        id,
        address,
        node,
        node.config.mailbox_capacity,
        Caps::default(),
        None,
    )
}
