//! Mailboxes: where messages for one capability address arrive.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::address::{Address, MailboxId, VerifyError};
use crate::error::{AttachError, DecodeError, PayloadError, RecvError, SendError};
use crate::node::NodeInner;
use crate::store::{MailboxStore, RunId, StoreError, StoredMessage};
use crate::sync::{lock, read, write};

/// A message delivered to a mailbox.
#[derive(Clone)]
pub struct Message {
    pub(crate) from: Arc<Address>,
    pub(crate) payload: Bytes,
    /// Where the message is stored, for a durable mailbox.
    pub(crate) receipt: Option<Receipt>,
}

/// A stored message's place in its durable mailbox.
#[derive(Clone)]
pub(crate) struct Receipt {
    pub(crate) durable: Arc<Durable>,
    pub(crate) index: u64,
}

/// What a durable mailbox adds to a plain one.
pub(crate) struct Durable {
    pub(crate) store: Arc<dyn MailboxStore>,
    pub(crate) mailbox: MailboxId,
    /// Cancelled once the messages stored before the mailbox opened are queued: new messages
    /// wait for it, so each sender's messages reach the application in order.
    pub(crate) replayed: CancellationToken,
}

impl Durable {
    /// Stores `messages`, or the first of them that fit, and returns those stored with their
    /// receipts, ready to queue.
    pub(crate) async fn store(
        self: &Arc<Self>,
        run: Option<(RunId, u64)>,
        messages: Vec<(Arc<Address>, Bytes)>,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = messages
            .iter()
            .map(|(from, payload)| ((**from).clone(), payload.clone()))
            .collect();
        let indexes = self.store.append(self.mailbox, run, rows).await?;
        if indexes.len() > messages.len() {
            return Err(StoreError::Failed(format!(
                "store returned {} indexes for {} messages",
                indexes.len(),
                messages.len()
            )));
        }
        Ok(messages
            .into_iter()
            .zip(indexes)
            .map(|((from, payload), index)| Message {
                from,
                payload,
                receipt: Some(Receipt {
                    durable: self.clone(),
                    index,
                }),
            })
            .collect())
    }
}

impl Message {
    /// Acknowledges the message to a durable mailbox's store, which then forgets it; until
    /// then it is delivered again after a restart. Does nothing for other mailboxes.
    pub fn ack(&self) {
        if let Some(receipt) = &self.receipt {
            receipt
                .durable
                .store
                .remove(receipt.durable.mailbox, receipt.index);
        }
    }

    /// The message's index in its durable mailbox (increasing, never reused), which tells a
    /// message delivered again after a restart apart; `None` for other mailboxes.
    pub fn id(&self) -> Option<u64> {
        self.receipt.as_ref().map(|receipt| receipt.index)
    }

    /// The sender's mailbox address: send to it to reply (GenBrowser's `message.from`).
    pub fn from(&self) -> &Address {
        &self.from
    }

    /// The raw payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Decodes the payload as a postcard-encoded `T` (what [`Mailbox::send`] encodes). The
    /// whole payload must be used: postcard is not self-describing, so trailing bytes mean the
    /// payload is of another type.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        decode_exact(&self.payload).map_err(DecodeError)
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("from", &self.from)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Where messages for an open mailbox go, and the signal that it closed.
#[derive(Clone)]
pub(crate) struct MailboxHandle {
    pub(crate) queue: mpsc::Sender<Message>,
    /// Cancelled when the mailbox closes: delivery stops even while a handler or stream still
    /// holds the receiving end.
    pub(crate) closed: CancellationToken,
    /// Set for a durable mailbox: messages are stored before they are acknowledged.
    pub(crate) durable: Option<Arc<Durable>>,
}

/// Decodes postcard bytes as exactly one `T`, with nothing left over.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(PayloadError::TrailingBytes(rest.len())),
        Err(error) => Err(PayloadError::Postcard(error)),
    }
}

/// What the node keeps per open mailbox.
struct MailboxEntry {
    handle: MailboxHandle,
    /// Tells this mailbox from a later one re-created with the same id.
    generation: u64,
    /// (expiry, signature) of addresses of this mailbox that passed `verify_strict`, so each
    /// distinct address costs one signature check however many streams present it. The expiry
    /// is part of the key because the signature covers it; node and mailbox are this entry's.
    verified: Mutex<Vec<(Option<u64>, [u8; 64])>>,
}

const VERIFIED_CACHE: usize = 8;

/// The node's table of open mailboxes.
#[derive(Default)]
pub(crate) struct Mailboxes {
    map: RwLock<HashMap<MailboxId, Arc<MailboxEntry>>>,
    generations: std::sync::atomic::AtomicU64,
}

impl Mailboxes {
    /// Opens mailbox `id`, replacing (and closing) any open one with the same id. Returns the
    /// generation to close it by.
    pub(crate) fn insert(&self, id: MailboxId, handle: MailboxHandle) -> u64 {
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = Arc::new(MailboxEntry {
            handle,
            generation,
            verified: Mutex::new(Vec::new()),
        });
        if let Some(previous) = write(&self.map).insert(id, entry) {
            previous.handle.closed.cancel();
        }
        generation
    }

    /// Closes mailbox `id` if it is still the one opened as `generation`.
    pub(crate) fn remove(&self, id: MailboxId, generation: u64) {
        let mut map = write(&self.map);
        if map
            .get(&id)
            .is_some_and(|entry| entry.generation == generation)
        {
            if let Some(entry) = map.remove(&id) {
                entry.handle.closed.cancel();
            }
        }
    }

    pub(crate) fn clear(&self) {
        for (_, entry) in write(&self.map).drain() {
            entry.handle.closed.cancel();
        }
    }

    pub(crate) fn len(&self) -> usize {
        read(&self.map).len()
    }

    /// Messages queued in all open mailboxes, not yet taken by the application.
    pub(crate) fn depth(&self) -> u64 {
        read(&self.map)
            .values()
            .map(|entry| {
                let queue = &entry.handle.queue;
                (queue.max_capacity() - queue.capacity()) as u64
            })
            .sum()
    }

    /// Checks that `address` grants access to an open mailbox of this node, cheapest checks
    /// first: node id and expiry, then the mailbox exists, then the signature (cached).
    pub(crate) fn authorize(
        &self,
        node: &NodeInner,
        address: &Address,
    ) -> Result<MailboxHandle, SendError> {
        address.check_cheap(&node.id, node.clock.unix_now())?;
        let entry = read(&self.map)
            .get(&address.mailbox())
            .cloned()
            .ok_or(SendError::NoSuchMailbox)?;
        let signed = (address.expires(), *address.signature());
        if !lock(&entry.verified).contains(&signed) {
            node.stats.count_signature_check();
            address.verify_signature().map_err(|e: VerifyError| {
                node.stats.count_forged();
                SendError::from(e)
            })?;
            let mut verified = lock(&entry.verified);
            if verified.len() == VERIFIED_CACHE {
                verified.remove(0);
            }
            verified.push(signed);
        }
        Ok(entry.handle.clone())
    }
}

fn queue_of(node: &NodeInner, id: MailboxId) -> Option<mpsc::Sender<Message>> {
    read(&node.mailboxes.map)
        .get(&id)
        .map(|entry| entry.handle.queue.clone())
}

/// Queues the messages a durable mailbox held when it opened, then lets new ones through.
async fn replay(
    durable: Arc<Durable>,
    pending: Vec<StoredMessage>,
    queue: Option<mpsc::Sender<Message>>,
    closed: CancellationToken,
) {
    if let Some(queue) = queue {
        for stored in pending {
            let message = Message {
                from: Arc::new(stored.from),
                payload: stored.payload,
                receipt: Some(Receipt {
                    durable: durable.clone(),
                    index: stored.index,
                }),
            };
            tokio::select! {
                sent = queue.send(message) => if sent.is_err() { break },
                _ = closed.cancelled() => break,
            }
        }
    }
    durable.replayed.cancel();
}

/// A mailbox on a node, reachable by its capability [`Address`].
///
/// Receive with [`recv`](Mailbox::recv) / [`recv_timeout`](Mailbox::recv_timeout), or attach
/// a [`handler`](Mailbox::set_handler) or take a [`stream`](Mailbox::messages): one form only,
/// the others then fail with a clear error. Dropping the mailbox (or [`close`](Mailbox::close))
/// revokes its address: senders get [`SendError::NoSuchMailbox`].
pub struct Mailbox {
    id: MailboxId,
    generation: u64,
    closed: CancellationToken,
    address: Address,
    pub(crate) node: Weak<NodeInner>,
    receiver: tokio::sync::Mutex<Option<mpsc::Receiver<Message>>>,
    /// Whether the receiver was given to a handler or stream.
    attached: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").field("id", &self.id).finish()
    }
}

impl Mailbox {
    pub(crate) fn new(
        id: MailboxId,
        address: Address,
        node: &Arc<NodeInner>,
        capacity: usize,
        durable: Option<(Arc<Durable>, Vec<StoredMessage>)>,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(capacity);
        let (durable, pending) = match durable {
            Some((durable, pending)) => (Some(durable), pending),
            None => (None, Vec::new()),
        };
        // Not a child of the node's token: at shutdown, streams must answer SHUTTING_DOWN
        // (retry later), not NO_SUCH_MAILBOX (final). Shutdown closes mailboxes last.
        let closed = CancellationToken::new();
        let generation = node.mailboxes.insert(
            id,
            MailboxHandle {
                queue,
                closed: closed.clone(),
                durable: durable.clone(),
            },
        );
        if let Some(durable) = durable {
            node.tasks
                .spawn(replay(durable, pending, queue_of(node, id), closed.clone()));
        }
        let node = Arc::downgrade(node);
        Self {
            id,
            generation,
            closed,
            address,
            node,
            receiver: tokio::sync::Mutex::new(Some(receiver)),
            attached: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The mailbox's capability address, with the node's dial hints: everything another node
    /// needs to send here. Treat it as a secret: whoever holds it may send.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The mailbox id.
    pub fn id(&self) -> MailboxId {
        self.id
    }

    /// Waits for the next message.
    pub async fn recv(&self) -> Result<Message, RecvError> {
        if self.attached.load(std::sync::atomic::Ordering::Acquire) {
            return Err(RecvError::NotReceiving);
        }
        let mut guard = self.receiver.lock().await;
        let receiver = guard.as_mut().ok_or(RecvError::NotReceiving)?;
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
        if self.attached.load(std::sync::atomic::Ordering::Acquire) {
            return Err(RecvError::NotReceiving);
        }
        let Ok(mut guard) = self.receiver.try_lock() else {
            return Ok(Vec::new());
        };
        let receiver = guard.as_mut().ok_or(RecvError::NotReceiving)?;
        let mut out = Vec::new();
        while out.len() < max {
            match receiver.try_recv() {
                Ok(message) => out.push(message),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) if out.is_empty() => {
                    return Err(RecvError::Closed)
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        Ok(out)
    }

    fn take_receiver(&self) -> Result<mpsc::Receiver<Message>, AttachError> {
        let mut guard = self
            .receiver
            .try_lock()
            .map_err(|_| AttachError::Receiving)?;
        let receiver = guard.take().ok_or(AttachError::AlreadyAttached)?;
        self.attached
            .store(true, std::sync::atomic::Ordering::Release);
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
        let closed = self.closed.clone();
        let shutdown = node.cancel.clone();
        node.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.cancelled() => break,
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
        let closed = Box::pin(self.closed.clone().cancelled_owned());
        Ok(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).take_until(closed))
    }

    /// Closes the mailbox now, revoking its address.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.closed.cancel();
        if let Some(node) = self.node.upgrade() {
            node.mailboxes.remove(self.id, self.generation);
        }
    }
}
