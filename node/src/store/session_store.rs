//! What the browser gateway needs of a store ([`SessionStore`]): its sessions are durable
//! mailboxes ([`MailboxStore`]) that it also fills itself (channel messages stored once for
//! every member, pushes), reads back in order, trims as browsers acknowledge, and purges when
//! a session ends; and small records (session records, the resume-token key) that bring its
//! sessions back after a restart. [`RedbStore`](super::RedbStore) implements it (redb_store.rs); the gateway holds an
//! `Arc<dyn SessionStore>`, so it can run on another store.

use bytes::Bytes;
use ferry::address::{Address, MailboxId};
use ferry::store::{MailboxStore, StoreFuture};
use ferry::StoreError;

/// A stored message with its tag, as read by [`SessionStore::read_from`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedMessage {
    /// Its index in the mailbox.
    pub index: u64,
    /// The sender's reply address.
    pub from: Address,
    /// The tag given to [`SessionStore::append_shared`] (empty for other messages).
    pub tag: Bytes,
    /// The payload.
    pub payload: Bytes,
}

/// What [`SessionStore::append_shared`] did for one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored at this index.
    Stored(u64),
    /// Not stored: the mailbox holds as many messages as the store allows. `position` is the
    /// index the message would have had.
    Full {
        /// The mailbox's next index when the message was dropped.
        position: u64,
    },
}

/// The store the browser gateway runs on: durable mailboxes for its sessions, and what it
/// does with them besides (see the module documentation). Writes that return nothing are
/// applied later, in the order they were made, with every other write of the store.
pub trait SessionStore: MailboxStore {
    /// Stores one message (sender, tag, payload) for every mailbox of `mailboxes` in one
    /// write: the message is kept once, and each mailbox gets it at its next index. The
    /// shared message goes with its last mailbox (acknowledged with
    /// [`remove_below`](Self::remove_below) or [`MailboxStore::remove`], or
    /// [`purge`](Self::purge)d). Durable when the future resolves; the answer tells, per
    /// mailbox in order, its index or that the mailbox was full. Tags are cut to 65,535
    /// bytes.
    fn append_shared(
        &self,
        mailboxes: Vec<MailboxId>,
        from: Address,
        tag: Bytes,
        payload: Bytes,
    ) -> StoreFuture<Vec<Appended>>;

    /// The unacknowledged messages of `mailbox` with an index of at least `from`, oldest
    /// first: at most `max_count` of them, and no more once `max_bytes` of payload are taken
    /// (but always at least one if there is one).
    fn read_from(
        &self,
        mailbox: MailboxId,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<TaggedMessage>, StoreError>;

    /// The index the next message of `mailbox` will get (0 for a mailbox never used).
    fn next_index(&self, mailbox: MailboxId) -> Result<u64, StoreError>;

    /// The index of the oldest unacknowledged message of `mailbox`, or its next index if it
    /// holds none.
    fn first_pending_index(&self, mailbox: MailboxId) -> Result<u64, StoreError> {
        match self.read_from(mailbox, 0, 1, 0)?.first() {
            Some(oldest) => Ok(oldest.index),
            None => self.next_index(mailbox),
        }
    }

    /// Removes the messages of `mailbox` below index `end` (acknowledged cumulatively;
    /// later).
    fn remove_below(&self, mailbox: MailboxId, end: u64);

    /// Removes every message of `mailbox` (later).
    fn purge(&self, mailbox: MailboxId);

    /// Writes the record `key` (later).
    fn put_record(&self, key: &str, value: Vec<u8>);

    /// Removes the record `key` (later).
    fn delete_record(&self, key: &str);

    /// Every record whose key starts with `prefix`, in key order.
    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// The record `key`; if there is none, `value` written at once (for values made once,
    /// such as keys) and returned.
    fn record_or_insert(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError>;
}
