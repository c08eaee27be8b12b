//! The store's tables and their key layouts (redb encodes integers and tuples itself; the
//! bytes of `messages` and `shared` rows are [`super::row`]'s).
//!
//! - `messages`: (mailbox, index) → a row: a message, a reference to a shared message, or a
//!   tombstone. A mailbox's next index is one past its highest row; its unacknowledged
//!   messages are its rows other than tombstones. The writer counts both in memory (read
//!   from the rows the first time it uses a mailbox), so a stored message is one row written
//!   and nothing else.
//! - `runs`: (mailbox, sender node, sender mailbox, epoch) → (next_seq, unix seconds of update)
//! - `mailboxes`: mailbox → (next index, unacknowledged count), written by earlier versions:
//!   its next index is read as a lower bound, and the row goes when the mailbox is purged
//! - `names`: name → mailbox id, for mailboxes that keep their id across restarts
//! - `temporary`: mailboxes emptied at the next open (for mailboxes that must not outlive
//!   the process)
//! - `records`: key → bytes, small records of the components built on the store (the
//!   gateway's sessions and its resume-token key)
//! - `shared`: id → a message stored once for several mailboxes (a gateway channel message),
//!   a message row; each member's row in `messages` is then a reference to it
//! - `shared_refs`: id → how many `messages` rows still reference it; the shared row goes with
//!   the last reference (acknowledged, purged, or emptied at open)
//! - `senders`: id → (how many `messages` rows name it, the address bytes of a sender whose
//!   messages a mailbox stores: a message row names it by id instead of holding its ~120
//!   bytes); the row goes with the last message naming it
//! - `sender_ids`: a stored sender's address bytes → its id in `senders`
//! - `counters`: (mailbox, counter key) → messages stored under a "max messages" caveat
//!   (docs/PROTOCOL.md §4.11), written in the transaction that stores them; they go when the
//!   mailbox is purged (or emptied at open)
//! - `revoked`: (mailbox, grant) → (), the mailbox's revoked grants; they go with its counters

use ferry::address::MailboxId;
use ferry::store::RunId;
use redb::{ReadOnlyTable, ReadTransaction, TableDefinition};

/// (mailbox, index) → row.
pub(crate) const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
/// (mailbox, sender node, sender mailbox, epoch).
pub(crate) type RunKey<'a> = (u64, &'a [u8], u64, u64);
/// Run → (next sequence number, unix seconds of its last update).
pub(crate) const RUNS: TableDefinition<RunKey, (u64, u64)> = TableDefinition::new("runs");
/// Mailbox → (next index, unacknowledged count), as earlier versions wrote it.
pub(crate) const MAILBOXES: TableDefinition<u64, (u64, u64)> = TableDefinition::new("mailboxes");
/// Name → mailbox id.
pub(crate) const NAMES: TableDefinition<&str, u64> = TableDefinition::new("names");
/// Mailboxes whose messages do not outlive the process: emptied when the store opens.
pub(crate) const TEMPORARY: TableDefinition<u64, ()> = TableDefinition::new("temporary");
/// Small records of the components built on the store: key → bytes.
pub(crate) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// Messages stored once for several mailboxes: id → message row.
pub(crate) const SHARED: TableDefinition<u64, &[u8]> = TableDefinition::new("shared");
/// References left to each shared message: id → count.
pub(crate) const SHARED_REFS: TableDefinition<u64, u64> = TableDefinition::new("shared_refs");
/// Stored senders: id → (message rows naming it, address bytes).
pub(crate) const SENDERS: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("senders");
/// A stored sender's address bytes → its id.
pub(crate) const SENDER_IDS: TableDefinition<&[u8], u64> = TableDefinition::new("sender_ids");

/// Counters of "max messages" caveats: (mailbox, counter key as a big-endian u128) → messages
/// stored under it.
pub(crate) const COUNTERS: TableDefinition<(u64, u128), u64> = TableDefinition::new("counters");
/// Revoked grants: (mailbox, grant).
pub(crate) const REVOKED: TableDefinition<(u64, u64), ()> = TableDefinition::new("revoked");

/// The key of `run`'s row for `mailbox` in `runs`.
pub(crate) fn run_key(mailbox: MailboxId, run: &RunId) -> RunKey<'_> {
    (
        mailbox.0,
        run.node.as_bytes().as_slice(),
        run.mailbox.0,
        run.epoch,
    )
}

/// `table` as the read transaction `txn` sees it; `None` if it was never created.
pub(crate) fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, redb::TableError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The id after the highest key of `table` (0 when it has none): the ids of `shared` and
/// `senders` only grow, so a new one goes past it.
pub(crate) fn next_id<V: redb::Value + 'static>(
    db: &redb::Database,
    table: TableDefinition<u64, V>,
) -> Result<u64, redb::Error> {
    use redb::{ReadableDatabase as _, ReadableTable as _};
    let Some(table) = read_table(&db.begin_read()?, table)? else {
        return Ok(0);
    };
    let last = table.last()?.map(|(key, _)| key.value());
    Ok(last.map_or(0, |id| id + 1))
}

/// The first key of `mailbox` in `messages` through its last.
pub(crate) fn mailbox_rows(mailbox: u64) -> std::ops::RangeInclusive<(u64, u64)> {
    (mailbox, 0)..=(mailbox, u64::MAX)
}
