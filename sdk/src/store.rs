//! Durable mailboxes: the interface between the node and a store that keeps messages on disk.
//!
//! A mailbox opened with [`Node::durable_mailbox`](crate::Node::durable_mailbox) writes every
//! batch of messages to its [`MailboxStore`] before the node acknowledges it to the sender, so
//! an acknowledged message survives a crash of the receiving process. The same write records
//! how far each sender's conversation run got (its next sequence number), so a sender that
//! resends after the crash has its duplicates dropped: every acknowledged message is stored
//! exactly once. Stored messages are handed to the application again after a restart until it
//! calls [`Message::ack`](crate::Message::ack): delivery to the application is at least once,
//! and [`Message::id`](crate::Message::id) tells a redelivery apart.
//!
//! The SDK defines only the interface; the `ferry` daemon implements it on redb.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::address::{Address, CounterKey, GrantId, MailboxId};
use crate::identity::NodeId;

/// One run of one sender's conversation into a mailbox (docs/PROTOCOL.md §6.1): the unit of
/// duplicate suppression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId {
    /// The sending node.
    pub node: NodeId,
    /// The sending mailbox.
    pub mailbox: MailboxId,
    /// The run's random epoch.
    pub epoch: u64,
}

/// A message kept in a store, not yet acknowledged by the application.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its position in the mailbox, assigned by the store; increases with every message.
    pub index: u64,
    /// The sender's reply address.
    pub from: Address,
    /// The payload.
    pub payload: Bytes,
}

/// Why a store operation failed. Stores are written by applications on any storage, so the
/// cause is carried as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing the store failed (disk full, I/O error, store closed).
    #[error("store failed: {0}")]
    Failed(String),
    /// The store holds data it cannot decode.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
}

/// A future returned by a store.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Durable storage for mailboxes. Implementations must make [`append`](Self::append) atomic
/// and durable before its future resolves; the node acknowledges to the sender only then.
pub trait MailboxStore: Send + Sync + 'static {
    /// Stores `messages` (in order) for `mailbox`, or as many of the first ones as the
    /// mailbox has room for, and returns the index assigned to each message stored, in order
    /// (empty when the mailbox is full). Given `Some((run, first_seq))`, where `first_seq` is
    /// the sequence number of the first message, it records in the same atomic write that
    /// `run` has delivered every sequence number below `first_seq` + the number stored
    /// (`None` for messages from the node itself).
    fn append(
        &self,
        mailbox: MailboxId,
        run: Option<(RunId, u64)>,
        messages: Vec<(Address, Bytes)>,
    ) -> StoreFuture<Vec<u64>>;

    /// [`append`](Self::append), adding the number stored, in the same atomic write, to each
    /// counter of `counters`: the "max messages" caveats the messages were sent under
    /// (docs/PROTOCOL.md §4.11), so that a count is exact across restarts and crashes. The
    /// default takes no counters: it fails for messages under a counting caveat, which the
    /// sender then sees as `STORE_FAILED` (retryable); a store that keeps counts overrides it
    /// and [`counts`](Self::counts).
    fn append_counted(
        &self,
        mailbox: MailboxId,
        run: Option<(RunId, u64)>,
        messages: Vec<(Address, Bytes)>,
        counters: Vec<CounterKey>,
    ) -> StoreFuture<Vec<u64>> {
        if counters.is_empty() {
            return self.append(mailbox, run, messages);
        }
        Box::pin(async {
            Err(StoreError::Failed(
                "this store does not keep the counts of counting caveats".into(),
            ))
        })
    }

    /// The counters of `mailbox` that [`append_counted`](Self::append_counted) added to,
    /// with their values. The default: none.
    fn counts(&self, mailbox: MailboxId) -> Result<Vec<(CounterKey, u64)>, StoreError> {
        let _ = mailbox;
        Ok(Vec::new())
    }

    /// Records durably that `grant` of `mailbox` is revoked; the future resolves once it is
    /// on disk. The default fails: the revocation then lasts until the mailbox closes.
    fn revoke(&self, mailbox: MailboxId, grant: GrantId) -> StoreFuture<()> {
        let _ = (mailbox, grant);
        Box::pin(async {
            Err(StoreError::Failed(
                "this store does not keep revocations".into(),
            ))
        })
    }

    /// The revoked grants of `mailbox`. The default: none.
    fn revoked(&self, mailbox: MailboxId) -> Result<Vec<GrantId>, StoreError> {
        let _ = mailbox;
        Ok(Vec::new())
    }

    /// The `next_seq` last recorded for `run` in `mailbox`, if any.
    fn delivered(&self, mailbox: MailboxId, run: RunId) -> Result<Option<u64>, StoreError>;

    /// Forgets `run`: its sender finished it and will never resend from it.
    fn end_run(&self, mailbox: MailboxId, run: RunId);

    /// Every message of `mailbox` not yet acknowledged, oldest first.
    fn pending(&self, mailbox: MailboxId) -> Result<Vec<StoredMessage>, StoreError>;

    /// Removes a message the application acknowledged. May complete later; a crash before
    /// then redelivers the message.
    fn remove(&self, mailbox: MailboxId, index: u64);
}
