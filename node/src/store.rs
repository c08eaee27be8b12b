//! The daemon's durable store: mailboxes kept in one redb file.
//!
//! All writes go through one writer thread that takes every request waiting in its queue,
//! applies them in one transaction and commits once with `Durability::Immediate` (fsync), so
//! many streams storing at the same time share one disk flush (group commit). A message is
//! acknowledged to its sender only after that commit. Removals (messages the application or a
//! browser acknowledged) go to the writer through a list it takes whole with each batch, so
//! they do not wake it one by one; a crash before their commit only delivers those messages
//! again.
//!
//! Tables (all integers big-endian inside redb's own tuple encoding):
//! - `messages`: (mailbox, index) → u16 address length, the sender's address bytes, payload;
//!   when bit 15 of the length is set, a u16 tag length and the tag follow the address (tags
//!   are the gateway's delivery metadata, [`RedbStore::append_tagged`]). Two other kinds of
//!   row: a reference to a shared message (below), and a **tombstone**, the two bytes
//!   `0x20 0x00`: a removed message that had the mailbox's highest index, kept so that the
//!   mailbox's indexes go on from there after a restart. A mailbox's next index is one past
//!   its highest row; its unacknowledged messages are its rows other than tombstones. The
//!   writer counts both in memory (read from the rows the first time it uses a mailbox), so a
//!   stored message is one row written and nothing else.
//! - `runs`: (mailbox, sender node, sender mailbox, epoch) → (next_seq, unix seconds of update)
//! - `mailboxes`: mailbox → (next index, unacknowledged count), written by earlier versions:
//!   its next index is read as a lower bound, and the row goes when the mailbox is purged
//! - `names`: name → mailbox id, for mailboxes that keep their id across restarts
//! - `temporary`: mailboxes emptied at the next open (for mailboxes that must not outlive
//!   the process)
//! - `records`: key → bytes, small records of the components built on the store (the
//!   gateway's sessions and its resume-token key), [`RedbStore::put_record`]
//! - `shared`: id → a message stored once for several mailboxes (a gateway channel message,
//!   [`RedbStore::append_shared`]), in the row format of `messages`; each member's row in
//!   `messages` is then a reference: a u16 with bit 14 set, then the u64 id
//! - `shared_refs`: id → how many `messages` rows still reference it; the shared row goes with
//!   the last reference (acknowledged, purged, or emptied at open)

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ferry::address::{Address, MailboxId};
use ferry::store::{MailboxStore, RunId, StoreFuture, StoredMessage};
use ferry::StoreError;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::oneshot;

const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
/// (mailbox, sender node, sender mailbox, epoch).
type RunKey<'a> = (u64, &'a [u8], u64, u64);
const RUNS: TableDefinition<RunKey, (u64, u64)> = TableDefinition::new("runs");
const MAILBOXES: TableDefinition<u64, (u64, u64)> = TableDefinition::new("mailboxes");
const NAMES: TableDefinition<&str, u64> = TableDefinition::new("names");
/// Mailboxes whose messages do not outlive the process (the gateway's sessions): emptied when
/// the store opens.
const TEMPORARY: TableDefinition<u64, ()> = TableDefinition::new("temporary");
/// Small records of the components built on the store: key → bytes.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// Messages stored once for several mailboxes: id → row (the format of `messages`).
const SHARED: TableDefinition<u64, &[u8]> = TableDefinition::new("shared");
/// References left to each shared message: id → count.
const SHARED_REFS: TableDefinition<u64, u64> = TableDefinition::new("shared_refs");

/// Limits of a [`RedbStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Unacknowledged messages one mailbox may hold; beyond it the node stops reading the
    /// senders' streams (QUIC flow control slows them) until the application acknowledges
    /// messages. Default 1,000,000.
    pub max_pending_per_mailbox: u64,
    /// How long the duplicate-suppression record of a conversation run is kept after its last
    /// message. A sender that resends after a longer silence is not recognised. Default 7 days.
    pub run_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_pending_per_mailbox: 1_000_000,
            run_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    /// The database file could not be created, opened or read.
    #[error("opening store {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: redb::Error,
    },
    /// The writer thread could not be started.
    #[error("starting the store's writer thread: {0}")]
    Thread(std::io::Error),
}

/// One message to store: sender, tag (empty: none), payload.
type Row = (Address, Bytes, Bytes);

/// A stored message with its tag, as read by [`RedbStore::read_from`].
#[derive(Debug, Clone)]
pub struct TaggedMessage {
    /// Its index in the mailbox.
    pub index: u64,
    /// The sender's reply address.
    pub from: Address,
    /// The tag given to [`RedbStore::append_tagged`] (empty for other messages).
    pub tag: Bytes,
    /// The payload.
    pub payload: Bytes,
}

/// What [`RedbStore::append_shared`] did for one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored at this index.
    Stored(u64),
    /// Not stored: the mailbox holds `max_pending_per_mailbox` messages. `position` is the
    /// index the message would have had.
    Full {
        /// The mailbox's next index when the message was dropped.
        position: u64,
    },
}

enum Op {
    Append {
        mailbox: MailboxId,
        run: Option<(RunId, u64)>,
        messages: Vec<Row>,
        reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
    },
    /// One message for several mailboxes, stored once.
    AppendShared {
        mailboxes: Vec<MailboxId>,
        message: Box<Row>,
        reply: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
    },
    /// Removes every message of a mailbox (the gateway's expired sessions).
    Purge {
        mailbox: MailboxId,
    },
    /// Marks a mailbox temporary: it is emptied when the store next opens.
    Temporary {
        mailbox: MailboxId,
    },
    /// Removals are waiting (in [`RedbStore::removals`]): the first one wakes the writer.
    Removals,
    /// Removes messages (made by the writer from the waiting removals).
    Remove(Removal),
    /// Writes (or overwrites) a record.
    PutRecord {
        key: String,
        value: Vec<u8>,
    },
    /// Removes a record.
    DeleteRecord {
        key: String,
    },
    EndRun {
        mailbox: MailboxId,
        run: RunId,
    },
}

/// Messages of a mailbox to remove (acknowledged).
#[derive(Debug)]
struct Removal {
    mailbox: MailboxId,
    indexes: std::ops::RangeInclusive<u64>,
}

/// A [`MailboxStore`] in one redb file.
pub struct RedbStore {
    path: PathBuf,
    db: Arc<Database>,
    /// Unbounded by design: appends are bounded by the streams waiting on them, removals by
    /// the messages stored. `None` once closed.
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    /// Removals waiting for the writer's next batch: handed over without waking the writer
    /// each time (the first one wakes it, with [`Op::Removals`]).
    removals: Arc<Mutex<Vec<Removal>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

fn failed(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Failed(error.into().to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The answer to a request the writer was given (`submitted`), as a future.
fn answered<T: Send + 'static>(
    submitted: Result<(), Op>,
    answer: oneshot::Receiver<Result<T, StoreError>>,
) -> StoreFuture<T> {
    Box::pin(async move {
        if submitted.is_err() {
            return Err(StoreError::Failed("store is closed".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Failed("store writer stopped".into())))
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, forgetting runs older than `config.run_ttl`.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Self, OpenStoreError> {
        let db = Database::create(path).map_err(|e| OpenStoreError::Database {
            path: path.to_owned(),
            source: e.into(),
        })?;
        Self::start(db, path.to_owned(), config)
    }

    /// Opens (or creates) the store on `backend`, redb's storage interface, instead of a file:
    /// the deterministic simulation (crate `ferry-sim`) runs the store on a disk that loses
    /// every write not yet synced when it loses power. Errors name the path `<backend>`, and
    /// [`RedbStore::size_bytes`] is 0.
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        config: StoreConfig,
    ) -> Result<Self, OpenStoreError> {
        let path = PathBuf::from("<backend>");
        let db = redb::Builder::new()
            .create_with_backend(backend)
            .map_err(|e| OpenStoreError::Database {
                path: path.clone(),
                source: e.into(),
            })?;
        Self::start(db, path, config)
    }

    /// Prunes old runs and starts the writer thread on an opened database.
    fn start(db: Database, path: PathBuf, config: StoreConfig) -> Result<Self, OpenStoreError> {
        prune_runs(&db, config.run_ttl).map_err(|source| OpenStoreError::Database {
            path: path.clone(),
            source,
        })?;
        let db = Arc::new(db);
        let (ops, queue) = mpsc::channel();
        let writing = db.clone();
        let removals = Arc::new(Mutex::new(Vec::new()));
        let waiting = removals.clone();
        let writer = std::thread::Builder::new()
            .name("ferry-store".into())
            .spawn(move || write_loop(&writing, &queue, &waiting, &config))
            .map_err(OpenStoreError::Thread)?;
        Ok(Self {
            path,
            db,
            ops: Mutex::new(Some(ops)),
            removals,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The id of the mailbox called `name`, made (at random) the first time it is asked for
    /// and the same ever after: a durable mailbox keeps its address across restarts.
    pub fn named_mailbox(&self, name: &str) -> Result<MailboxId, StoreError> {
        let txn = self.db.begin_write().map_err(failed)?;
        let id = {
            let mut names = txn.open_table(NAMES).map_err(failed)?;
            let existing = names.get(name).map_err(failed)?.map(|id| id.value());
            match existing {
                Some(id) => id,
                None => {
                    let id = MailboxId::random().0;
                    names.insert(name, id).map_err(failed)?;
                    id
                }
            }
        };
        txn.commit().map_err(failed)?;
        Ok(MailboxId(id))
    }

    /// The size of the store's file in bytes (0 if it cannot be read).
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |meta| meta.len())
    }

    /// How many messages of `mailbox` are stored and not yet acknowledged.
    pub fn pending_count(&self, mailbox: MailboxId) -> Result<u64, StoreError> {
        Ok(self.counters(mailbox)?.1)
    }

    /// The (next index, unacknowledged count) of `mailbox` as committed (read from its
    /// rows); (0, 0) for one never used.
    fn counters(&self, mailbox: MailboxId) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let floor = match txn.open_table(MAILBOXES) {
            Ok(mailboxes) => mailboxes
                .get(mailbox.0)
                .map_err(failed)?
                .map_or(0, |v| v.value().0),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(error) => return Err(failed(error)),
        };
        let messages = match txn.open_table(MESSAGES) {
            Ok(messages) => messages,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((floor, 0)),
            Err(error) => return Err(failed(error)),
        };
        let count = count_rows(&messages, mailbox.0, floor).map_err(failed)?;
        Ok((count.next, count.pending))
    }

    /// Applies every request queued so far and stops the writer. Called at shutdown, after the
    /// node stopped; later requests fail.
    pub fn close(&self) {
        drop(lock(&self.ops).take());
        if let Some(writer) = lock(&self.writer).take() {
            if writer.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }

    /// Like [`MailboxStore::append`] without a run, with a tag stored beside each message
    /// (at most 65,535 bytes; longer tags are cut).
    pub fn append_tagged(
        &self,
        mailbox: MailboxId,
        messages: Vec<(Address, Bytes, Bytes)>,
    ) -> StoreFuture<Vec<u64>> {
        let (reply, answer) = oneshot::channel();
        let submitted = self.submit(Op::Append {
            mailbox,
            run: None,
            messages,
            reply,
        });
        answered(submitted, answer)
    }

    /// Stores one message (sender, tag, payload) for every mailbox of `mailboxes` in one
    /// write: the message is kept once, and each mailbox gets a small row referring to it at
    /// its next index (a single mailbox gets the message itself). The shared message is
    /// removed with its last reference (acknowledged with [`MailboxStore::remove`], or
    /// [`RedbStore::purge`]d). Like [`RedbStore::append_tagged`] it is durable when the
    /// future resolves; the answer tells, per mailbox in order, its index or that the mailbox
    /// was full.
    pub fn append_shared(
        &self,
        mailboxes: Vec<MailboxId>,
        from: Address,
        tag: Bytes,
        payload: Bytes,
    ) -> StoreFuture<Vec<Appended>> {
        let (reply, answer) = oneshot::channel();
        let submitted = self.submit(Op::AppendShared {
            mailboxes,
            message: Box::new((from, tag, payload)),
            reply,
        });
        answered(submitted, answer)
    }

    /// How many messages are stored once for several mailboxes
    /// ([`RedbStore::append_shared`]) and still referenced by one.
    pub fn shared_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        match txn.open_table(SHARED) {
            Ok(shared) => shared.len().map_err(failed),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(error) => Err(failed(error)),
        }
    }

    /// The unacknowledged messages of `mailbox` with an index of at least `from`, oldest
    /// first: at most `max_count` of them, and no more once `max_bytes` of payload are taken
    /// (but always at least one if there is one).
    pub fn read_from(
        &self,
        mailbox: MailboxId,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<TaggedMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let messages = match txn.open_table(MESSAGES) {
            Ok(messages) => messages,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(failed(error)),
        };
        let shared = open_shared(&txn)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in messages
            .range((mailbox.0, from)..=(mailbox.0, u64::MAX))
            .map_err(failed)?
        {
            if out.len() >= max_count || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            let (key, value) = row.map_err(failed)?;
            if is_tombstone(value.value()) {
                continue;
            }
            let (from, tag, payload) = resolve_row(value.value(), shared.as_ref())?;
            bytes = bytes.saturating_add(payload.len());
            out.push(TaggedMessage {
                index: key.value().1,
                from,
                tag,
                payload,
            });
        }
        Ok(out)
    }

    /// The index the next message of `mailbox` will get (0 for a mailbox never used).
    pub fn next_index(&self, mailbox: MailboxId) -> Result<u64, StoreError> {
        Ok(self.counters(mailbox)?.0)
    }

    /// The index of the oldest unacknowledged message of `mailbox`, or its next index if it
    /// holds none.
    pub fn first_pending_index(&self, mailbox: MailboxId) -> Result<u64, StoreError> {
        match self.read_from(mailbox, 0, 1, 0)?.first() {
            Some(oldest) => Ok(oldest.index),
            None => self.next_index(mailbox),
        }
    }

    /// Writes the record `key` (later, in the writer's next batch, in order with every other
    /// request).
    pub fn put_record(&self, key: &str, value: Vec<u8>) {
        let _ = self.submit(Op::PutRecord {
            key: key.to_owned(),
            value,
        });
    }

    /// Removes the record `key` (later, in the writer's next batch).
    pub fn delete_record(&self, key: &str) {
        let _ = self.submit(Op::DeleteRecord {
            key: key.to_owned(),
        });
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let records = match txn.open_table(RECORDS) {
            Ok(records) => records,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(failed(error)),
        };
        let mut out = Vec::new();
        for row in records.range(prefix..).map_err(failed)? {
            let (key, value) = row.map_err(failed)?;
            if !key.value().starts_with(prefix) {
                break;
            }
            out.push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// The record `key`, written now from `make` if there is none (at once, not through the
    /// writer: for values made once, such as keys).
    pub fn record_or_insert(
        &self,
        key: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let txn = self.db.begin_write().map_err(failed)?;
        let value = {
            let mut records = txn.open_table(RECORDS).map_err(failed)?;
            let existing = records
                .get(key)
                .map_err(failed)?
                .map(|v| v.value().to_vec());
            match existing {
                Some(value) => value,
                None => {
                    let value = make();
                    records.insert(key, value.as_slice()).map_err(failed)?;
                    value
                }
            }
        };
        txn.commit().map_err(failed)?;
        Ok(value)
    }

    /// Removes the messages of `mailbox` below index `end` (acknowledged cumulatively; later,
    /// in the writer's next batch).
    pub fn remove_below(&self, mailbox: MailboxId, end: u64) {
        if let Some(last) = end.checked_sub(1) {
            self.remove_range(mailbox, 0..=last);
        }
    }

    /// Removes every message of `mailbox` (later, in the writer's next batch).
    pub fn purge(&self, mailbox: MailboxId) {
        let _ = self.submit(Op::Purge { mailbox });
    }

    /// Marks `mailbox` temporary: if the process ends before [`RedbStore::purge`] removes it,
    /// its messages are removed when the store next opens.
    pub fn mark_temporary(&self, mailbox: MailboxId) {
        let _ = self.submit(Op::Temporary { mailbox });
    }

    /// Hands a removal to the writer's next batch.
    fn remove_range(&self, mailbox: MailboxId, indexes: std::ops::RangeInclusive<u64>) {
        let first = {
            let mut removals = lock(&self.removals);
            removals.push(Removal { mailbox, indexes });
            removals.len() == 1
        };
        if first {
            // After close, the messages stay stored and are delivered again: at least once.
            let _ = self.submit(Op::Removals);
        }
    }

    fn submit(&self, op: Op) -> Result<(), Op> {
        match lock(&self.ops).as_ref() {
            Some(ops) => ops.send(op).map_err(|mpsc::SendError(op)| op),
            None => Err(op),
        }
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl MailboxStore for RedbStore {
    fn append(
        &self,
        mailbox: MailboxId,
        run: Option<(RunId, u64)>,
        messages: Vec<(Address, Bytes)>,
    ) -> StoreFuture<Vec<u64>> {
        let (reply, answer) = oneshot::channel();
        let submitted = self.submit(Op::Append {
            mailbox,
            run,
            messages: messages
                .into_iter()
                .map(|(from, payload)| (from, Bytes::new(), payload))
                .collect(),
            reply,
        });
        answered(submitted, answer)
    }

    fn delivered(&self, mailbox: MailboxId, run: RunId) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let runs = match txn.open_table(RUNS) {
            Ok(runs) => runs,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(failed(error)),
        };
        Ok(runs
            .get(run_key(mailbox, &run))
            .map_err(failed)?
            .map(|v| v.value().0))
    }

    fn end_run(&self, mailbox: MailboxId, run: RunId) {
        // A closed store has nothing left to forget.
        let _ = self.submit(Op::EndRun { mailbox, run });
    }

    fn pending(&self, mailbox: MailboxId) -> Result<Vec<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let messages = match txn.open_table(MESSAGES) {
            Ok(messages) => messages,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(failed(error)),
        };
        let shared = open_shared(&txn)?;
        let mut out = Vec::new();
        for row in messages
            .range((mailbox.0, 0)..=(mailbox.0, u64::MAX))
            .map_err(failed)?
        {
            let (key, value) = row.map_err(failed)?;
            if is_tombstone(value.value()) {
                continue;
            }
            let (from, _tag, payload) = resolve_row(value.value(), shared.as_ref())?;
            out.push(StoredMessage {
                index: key.value().1,
                from,
                payload,
            });
        }
        Ok(out)
    }

    fn remove(&self, mailbox: MailboxId, index: u64) {
        self.remove_range(mailbox, index..=index);
    }
}

fn run_key(mailbox: MailboxId, run: &RunId) -> RunKey<'_> {
    (
        mailbox.0,
        run.node.as_bytes().as_slice(),
        run.mailbox.0,
        run.epoch,
    )
}

/// Set in the address length of a row that carries a tag.
const TAGGED: u16 = 0x8000;

fn encode_row(from: &Address, tag: &[u8], payload: &[u8]) -> Vec<u8> {
    let address = from.to_bytes();
    let tag = &tag[..tag.len().min(usize::from(u16::MAX))];
    let mut row = Vec::with_capacity(4 + address.len() + tag.len() + payload.len());
    // Address bytes are at most a few hundred bytes (core + at most 4 hints + extensions),
    // far below the flag bit.
    let mut len = address.len() as u16;
    if !tag.is_empty() {
        len |= TAGGED;
    }
    row.extend_from_slice(&len.to_be_bytes());
    row.extend_from_slice(&address);
    if !tag.is_empty() {
        row.extend_from_slice(&(tag.len() as u16).to_be_bytes());
        row.extend_from_slice(tag);
    }
    row.extend_from_slice(payload);
    row
}

/// Set in the first u16 of a row that refers to a shared message (then a u64 id follows).
/// Address lengths never reach it.
const SHARED_REF: u16 = 0x4000;

/// The whole row of a tombstone. A message row this short cannot start with these bytes: its
/// address would be 8,192 bytes long.
const TOMBSTONE: [u8; 2] = 0x2000u16.to_be_bytes();

fn is_tombstone(row: &[u8]) -> bool {
    row == TOMBSTONE
}

/// What the writer knows of one mailbox.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    /// The index of its next message.
    next: u64,
    /// Its rows other than tombstones.
    pending: u64,
    /// The index of its tombstone, if it has one.
    tombstone: Option<u64>,
}

/// The writer's counts, per mailbox.
type Counts = std::collections::HashMap<u64, Count>;

/// Most mailboxes whose counts the writer keeps in memory; past it, it forgets them all and
/// reads each again from its rows when next used.
const MAX_COUNTED: usize = 1_000_000;

/// The count of `mailbox`: the writer's, or read from its rows (and the lower bound of an
/// earlier version's `mailboxes` row).
fn count_of(
    counts: &Counts,
    messages: &redb::Table<(u64, u64), &[u8]>,
    mailboxes: &redb::Table<u64, (u64, u64)>,
    mailbox: u64,
) -> Result<Count, redb::Error> {
    if let Some(count) = counts.get(&mailbox) {
        return Ok(*count);
    }
    let floor = mailboxes.get(mailbox)?.map_or(0, |v| v.value().0);
    count_rows(messages, mailbox, floor)
}

/// The count of `mailbox` read from its rows; its next index is at least `floor`.
fn count_rows(
    messages: &impl ReadableTable<(u64, u64), &'static [u8]>,
    mailbox: u64,
    floor: u64,
) -> Result<Count, redb::Error> {
    let mut count = Count {
        next: floor,
        ..Count::default()
    };
    for row in messages.range((mailbox, 0)..=(mailbox, u64::MAX))? {
        let (key, row) = row?;
        let index = key.value().1;
        count.next = count.next.max(index.saturating_add(1));
        if is_tombstone(row.value()) {
            count.tombstone = Some(index);
        } else {
            count.pending += 1;
        }
    }
    Ok(count)
}

/// Removes the messages of `mailbox` in `indexes` (acknowledged), counting the shared ones
/// they referred to in `released`. The one at the mailbox's highest index becomes its
/// tombstone (and the previous tombstone goes).
fn acknowledge(
    messages: &mut redb::Table<(u64, u64), &[u8]>,
    released: &mut Released,
    count: &mut Count,
    mailbox: u64,
    indexes: std::ops::RangeInclusive<u64>,
) -> Result<(), redb::Error> {
    let mut rows = Vec::new();
    for row in messages.range((mailbox, *indexes.start())..=(mailbox, *indexes.end()))? {
        let (key, row) = row?;
        let row = row.value();
        rows.push((key.value().1, is_tombstone(row), shared_id(row)));
    }
    let last = count.next.checked_sub(1);
    for (index, tombstone, shared) in rows {
        if let Some(id) = shared {
            *released.entry(id).or_default() += 1;
        }
        if !tombstone {
            count.pending = count.pending.saturating_sub(1);
        }
        if Some(index) == last {
            if !tombstone {
                messages.insert((mailbox, index), TOMBSTONE.as_slice())?;
            }
            if let Some(old) = count.tombstone.filter(|&old| old != index) {
                messages.remove((mailbox, old))?;
            }
            count.tombstone = Some(index);
        } else {
            messages.remove((mailbox, index))?;
            if count.tombstone == Some(index) {
                count.tombstone = None;
            }
        }
    }
    Ok(())
}

fn encode_ref(id: u64) -> [u8; 10] {
    let mut row = [0u8; 10];
    row[..2].copy_from_slice(&SHARED_REF.to_be_bytes());
    row[2..].copy_from_slice(&id.to_be_bytes());
    row
}

/// The shared message a row refers to, if it is a reference.
fn shared_id(row: &[u8]) -> Option<u64> {
    let (flags, rest) = row.split_first_chunk::<2>()?;
    if u16::from_be_bytes(*flags) != SHARED_REF {
        return None;
    }
    rest.first_chunk::<8>().copied().map(u64::from_be_bytes)
}

type SharedTable = redb::ReadOnlyTable<u64, &'static [u8]>;

/// The `shared` table of a read transaction (`None` if it was never created).
fn open_shared(txn: &redb::ReadTransaction) -> Result<Option<SharedTable>, StoreError> {
    match txn.open_table(SHARED) {
        Ok(shared) => Ok(Some(shared)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(failed(error)),
    }
}

/// Decodes a row of `messages`, following a reference to its shared message.
fn resolve_row(
    row: &[u8],
    shared: Option<&SharedTable>,
) -> Result<(Address, Bytes, Bytes), StoreError> {
    let Some(id) = shared_id(row) else {
        return decode_row(row);
    };
    let missing = || StoreError::Corrupt(format!("stored message: shared message {id} missing"));
    let value = shared
        .ok_or_else(missing)?
        .get(id)
        .map_err(failed)?
        .ok_or_else(missing)?;
    decode_row(value.value())
}

/// References to shared messages dropped in one transaction, per shared id: applied together
/// at its end ([`release_all`]), so that ten thousand acknowledgements of one channel message
/// update its count once.
type Released = std::collections::HashMap<u64, u64>;

/// Drops the references counted in `released`, and each shared message with its last one.
fn release_all(
    shared: &mut redb::Table<u64, &[u8]>,
    refs: &mut redb::Table<u64, u64>,
    released: Released,
) -> Result<(), redb::Error> {
    for (id, count) in released {
        let left = refs.get(id)?.map_or(0, |v| v.value()).saturating_sub(count);
        if left == 0 {
            refs.remove(id)?;
            shared.remove(id)?;
        } else {
            refs.insert(id, left)?;
        }
    }
    Ok(())
}

/// Removes every row of `mailbox` (tombstones too), counting the shared messages they
/// referred to in `released`.
fn remove_all(
    messages: &mut redb::Table<(u64, u64), &[u8]>,
    released: &mut Released,
    mailbox: u64,
) -> Result<(), redb::Error> {
    messages.retain_in((mailbox, 0)..=(mailbox, u64::MAX), |_, row| {
        if let Some(id) = shared_id(row) {
            *released.entry(id).or_default() += 1;
        }
        false
    })?;
    Ok(())
}

fn decode_row(row: &[u8]) -> Result<(Address, Bytes, Bytes), StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("stored message: {what}"));
    let (len, rest) = row
        .split_first_chunk::<2>()
        .ok_or_else(|| corrupt("truncated"))?;
    let len = u16::from_be_bytes(*len);
    let tagged = len & TAGGED != 0;
    let len = usize::from(len & !TAGGED);
    if rest.len() < len {
        return Err(corrupt("address truncated"));
    }
    let (address, mut rest) = rest.split_at(len);
    let from = Address::from_bytes(address).map_err(|e| corrupt(&e.to_string()))?;
    let mut tag = Bytes::new();
    if tagged {
        let (tag_len, after) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| corrupt("tag truncated"))?;
        let tag_len = usize::from(u16::from_be_bytes(*tag_len));
        if after.len() < tag_len {
            return Err(corrupt("tag truncated"));
        }
        let (bytes, after) = after.split_at(tag_len);
        tag = Bytes::copy_from_slice(bytes);
        rest = after;
    }
    Ok((from, tag, Bytes::copy_from_slice(rest)))
}

/// At open, in one transaction: forgets runs older than `ttl`, and empties the mailboxes
/// marked temporary by an earlier run.
fn prune_runs(db: &Database, ttl: Duration) -> Result<(), redb::Error> {
    let oldest = unix_now().saturating_sub(ttl.as_secs());
    let txn = db.begin_write()?;
    {
        let mut runs = txn.open_table(RUNS)?;
        runs.retain(|_, (_, updated)| updated >= oldest)?;
        let mut temporary = txn.open_table(TEMPORARY)?;
        let ids: Vec<u64> = temporary
            .iter()?
            .filter_map(|row| row.ok().map(|(key, _)| key.value()))
            .collect();
        if !ids.is_empty() {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut mailboxes = txn.open_table(MAILBOXES)?;
            let mut released = Released::new();
            for id in ids {
                remove_all(&mut messages, &mut released, id)?;
                mailboxes.remove(id)?;
                temporary.remove(id)?;
            }
            release_all(
                &mut txn.open_table(SHARED)?,
                &mut txn.open_table(SHARED_REFS)?,
                released,
            )?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Most requests applied in one transaction.
const MAX_BATCH: usize = 4096;

/// How long the writer, woken by removals alone, waits for more (see [`gather`]).
const REMOVALS_WAIT: Duration = Duration::from_millis(20);

fn write_loop(
    db: &Database,
    queue: &mpsc::Receiver<Op>,
    removals: &Mutex<Vec<Removal>>,
    config: &StoreConfig,
) {
    // Shared message ids only grow: the next one is past the highest stored.
    let mut next_shared = match last_shared(db) {
        Ok(last) => last.map_or(0, |id| id + 1),
        Err(error) => {
            tracing::error!(%error, "reading the store's shared messages");
            0
        }
    };
    let mut counts = Counts::new();
    let mut open = true;
    while open {
        let first = queue.recv().ok();
        // Closed: one last batch for the removals left.
        open = first.is_some();
        let mut batch = gather(queue, first);
        // Last: they concern messages stored (and delivered) before.
        batch.extend(
            std::mem::take(&mut *lock(removals))
                .into_iter()
                .map(Op::Remove),
        );
        if batch.is_empty() {
            continue;
        }
        if counts.len() > MAX_COUNTED {
            counts.clear();
        }
        let mut replies = Vec::new();
        let result = apply(
            db,
            batch,
            config,
            &mut counts,
            &mut next_shared,
            &mut replies,
        );
        if result.is_err() {
            // The counts may include what the failed transaction did not keep.
            counts.clear();
        }
        for reply in replies {
            // The caller may have given up waiting; nothing to tell then.
            match reply {
                Reply::Indexes(reply, outcome) => {
                    let _ = reply.send(result.clone().and(outcome));
                }
                Reply::Shared(reply, outcome) => {
                    let _ = reply.send(result.clone().and(outcome));
                }
            }
        }
        if let Err(error) = result {
            tracing::error!(%error, "store commit failed");
        }
    }
}

/// The batch that starts with `first`: every request already waiting, up to `MAX_BATCH`.
/// When removals alone wake the writer, it waits up to `REMOVALS_WAIT` for more, unless
/// another request comes: nobody waits for a removal, and a browser's acknowledgements come
/// one by one, each costing a transaction of its own otherwise.
fn gather(queue: &mpsc::Receiver<Op>, first: Option<Op>) -> Vec<Op> {
    let mut batch = Vec::new();
    let Some(first) = first else {
        return batch;
    };
    let mut wait_until =
        matches!(first, Op::Removals).then(|| std::time::Instant::now() + REMOVALS_WAIT);
    let mut next = Some(first);
    // Wake-ups count towards the limit too, so that they cannot hold a batch open forever.
    for _ in 0..MAX_BATCH {
        let Some(op) = next.take() else { break };
        if !matches!(op, Op::Removals) {
            wait_until = None;
            batch.push(op);
        }
        next = match wait_until {
            None => queue.try_recv().ok(),
            Some(until) => {
                let left = until.saturating_duration_since(std::time::Instant::now());
                queue.recv_timeout(left).ok()
            }
        };
    }
    batch
}

/// The highest id in `shared`, if any.
fn last_shared(db: &Database) -> Result<Option<u64>, redb::Error> {
    let txn = db.begin_read()?;
    match txn.open_table(SHARED) {
        Ok(shared) => Ok(shared.last()?.map(|(key, _)| key.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// An answer to send once the batch is committed.
enum Reply {
    Indexes(
        oneshot::Sender<Result<Vec<u64>, StoreError>>,
        Result<Vec<u64>, StoreError>,
    ),
    Shared(
        oneshot::Sender<Result<Vec<Appended>, StoreError>>,
        Result<Vec<Appended>, StoreError>,
    ),
}

fn apply(
    db: &Database,
    batch: Vec<Op>,
    config: &StoreConfig,
    counts: &mut Counts,
    next_shared: &mut u64,
    replies: &mut Vec<Reply>,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(failed)?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Failed(e.to_string()))?;
    {
        let mut messages = txn.open_table(MESSAGES).map_err(failed)?;
        let mut runs = txn.open_table(RUNS).map_err(failed)?;
        let mut mailboxes = txn.open_table(MAILBOXES).map_err(failed)?;
        let mut temporary = txn.open_table(TEMPORARY).map_err(failed)?;
        let mut shared = txn.open_table(SHARED).map_err(failed)?;
        let mut refs = txn.open_table(SHARED_REFS).map_err(failed)?;
        let mut records = txn.open_table(RECORDS).map_err(failed)?;
        let now = unix_now();
        let mut released = Released::new();
        for op in batch {
            match op {
                Op::Append {
                    mailbox,
                    run,
                    messages: rows,
                    reply,
                } => {
                    let mut count =
                        count_of(counts, &messages, &mailboxes, mailbox.0).map_err(failed)?;
                    let room = config.max_pending_per_mailbox.saturating_sub(count.pending);
                    let take = rows.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                    let mut indexes = Vec::with_capacity(take);
                    for (from, tag, payload) in rows.iter().take(take) {
                        messages
                            .insert(
                                (mailbox.0, count.next),
                                encode_row(from, tag, payload).as_slice(),
                            )
                            .map_err(failed)?;
                        indexes.push(count.next);
                        count.next += 1;
                        count.pending += 1;
                    }
                    counts.insert(mailbox.0, count);
                    let stored = take as u64;
                    if stored > 0 {
                        if let Some((run, first_seq)) = run {
                            runs.insert(run_key(mailbox, &run), (first_seq + stored, now))
                                .map_err(failed)?;
                        }
                    }
                    replies.push(Reply::Indexes(reply, Ok(indexes)));
                }
                Op::AppendShared {
                    mailboxes: members,
                    message,
                    reply,
                } => {
                    let (from, tag, payload) = *message;
                    let row = encode_row(&from, &tag, &payload);
                    let id = *next_shared;
                    // One member: the message itself, no reference.
                    let is_shared = members.len() > 1;
                    let reference = encode_ref(id);
                    let member_row: &[u8] = if is_shared { &reference } else { &row };
                    // In key order: neighbouring rows share pages.
                    let mut order: Vec<usize> = (0..members.len()).collect();
                    order.sort_unstable_by_key(|&i| members.get(i).map(|m| m.0));
                    let mut outcome = vec![Appended::Full { position: 0 }; members.len()];
                    let mut stored = 0u64;
                    for i in order {
                        let (Some(mailbox), Some(slot)) = (members.get(i), outcome.get_mut(i))
                        else {
                            continue;
                        };
                        let mut count =
                            count_of(counts, &messages, &mailboxes, mailbox.0).map_err(failed)?;
                        if count.pending >= config.max_pending_per_mailbox {
                            *slot = Appended::Full {
                                position: count.next,
                            };
                            continue;
                        }
                        messages
                            .insert((mailbox.0, count.next), member_row)
                            .map_err(failed)?;
                        *slot = Appended::Stored(count.next);
                        count.next += 1;
                        count.pending += 1;
                        counts.insert(mailbox.0, count);
                        stored += 1;
                    }
                    if is_shared && stored > 0 {
                        shared.insert(id, row.as_slice()).map_err(failed)?;
                        refs.insert(id, stored).map_err(failed)?;
                        *next_shared += 1;
                    }
                    replies.push(Reply::Shared(reply, Ok(outcome)));
                }
                Op::Removals => {}
                Op::Remove(Removal { mailbox, indexes }) => {
                    let mut count =
                        count_of(counts, &messages, &mailboxes, mailbox.0).map_err(failed)?;
                    acknowledge(&mut messages, &mut released, &mut count, mailbox.0, indexes)
                        .map_err(failed)?;
                    counts.insert(mailbox.0, count);
                }
                Op::Purge { mailbox } => {
                    remove_all(&mut messages, &mut released, mailbox.0).map_err(failed)?;
                    counts.remove(&mailbox.0);
                    mailboxes.remove(mailbox.0).map_err(failed)?;
                    temporary.remove(mailbox.0).map_err(failed)?;
                }
                Op::Temporary { mailbox } => {
                    temporary.insert(mailbox.0, ()).map_err(failed)?;
                }
                Op::PutRecord { key, value } => {
                    records
                        .insert(key.as_str(), value.as_slice())
                        .map_err(failed)?;
                }
                Op::DeleteRecord { key } => {
                    records.remove(key.as_str()).map_err(failed)?;
                }
                Op::EndRun { mailbox, run } => {
                    runs.remove(run_key(mailbox, &run)).map_err(failed)?;
                }
            }
        }
        release_all(&mut shared, &mut refs, released).map_err(failed)?;
    }
    txn.commit().map_err(failed)
}
