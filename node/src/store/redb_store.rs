//! [`RedbStore`]: the handle of the store. Opening (creating) the database, starting and
//! stopping its writer thread, handing requests to it; the node's durable mailboxes
//! ([`MailboxStore`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ferry::address::{Address, CounterKey, GrantId, MailboxId};
use ferry::store::{MailboxStore, RunId, StoreFuture, StoredMessage};
use ferry::StoreError;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::oneshot;

use super::capabilities;
use super::counts::count_rows;
use super::removal::{remove_all, Removal};
use super::schema::{
    read_table, run_key, COUNTERS, MAILBOXES, MESSAGES, NAMES, REVOKED, RUNS, SENDERS, SHARED,
    SHARED_REFS, TEMPORARY,
};
use super::senders::{self, SenderTables};
use super::session_store::{Appended, SessionStore, TaggedMessage};
use super::shared::{self, Released};
use super::writer::{self, Op};
use super::{failed, records, OpenStoreError, StoreConfig};
use crate::clock::unix_now;
use crate::sync::lock;

/// A [`MailboxStore`] in one redb file, which the browser gateway also runs on
/// ([`SessionStore`](super::SessionStore)).
pub struct RedbStore {
    path: PathBuf,
    pub(super) db: Arc<Database>,
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

    /// Tidies an opened database (see [`prune_at_open`]) and starts its writer thread. Every
    /// way of opening the store ends here; `path` names the database in errors.
    fn start(db: Database, path: PathBuf, config: StoreConfig) -> Result<Self, OpenStoreError> {
        prune_at_open(&db, config.run_ttl).map_err(|source| OpenStoreError::Database {
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
            .spawn(move || writer::run(&writing, &queue, &waiting, &config))
            .map_err(OpenStoreError::Thread)?;
        Ok(Self {
            path,
            db,
            ops: Mutex::new(Some(ops)),
            removals,
            writer: Mutex::new(Some(writer)),
        })
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
    pub(super) fn counters(&self, mailbox: MailboxId) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let floor = match read_table(&txn, MAILBOXES).map_err(failed)? {
            Some(mailboxes) => mailboxes
                .get(mailbox.0)
                .map_err(failed)?
                .map_or(0, |v| v.value().0),
            None => 0,
        };
        let Some(messages) = read_table(&txn, MESSAGES).map_err(failed)? else {
            return Ok((floor, 0));
        };
        let count = count_rows(&messages, mailbox.0, floor).map_err(failed)?;
        Ok((count.next, count.pending))
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
            counters: Box::default(),
            reply,
        });
        answered(submitted, answer)
    }

    /// How many messages are stored once for several mailboxes
    /// ([`SessionStore::append_shared`](super::SessionStore::append_shared)) and still
    /// referenced by one.
    pub fn shared_count(&self) -> Result<u64, StoreError> {
        self.rows_in(SHARED)
    }

    /// How many senders' addresses are stored for the messages that name them (each is
    /// stored once, and goes with the last message from it).
    pub fn sender_count(&self) -> Result<u64, StoreError> {
        self.rows_in(SENDERS)
    }

    /// The rows of `table` (none if it was never created).
    fn rows_in<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: redb::TableDefinition<K, V>,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        match read_table(&txn, table).map_err(failed)? {
            Some(table) => table.len().map_err(failed),
            None => Ok(0),
        }
    }

    /// Marks `mailbox` temporary: if the process ends before it is purged, its messages are
    /// removed when the store next opens.
    pub fn mark_temporary(&self, mailbox: MailboxId) {
        let _ = self.submit(Op::Temporary { mailbox });
    }

    /// Hands a removal to the writer's next batch.
    pub(super) fn remove_range(&self, mailbox: MailboxId, indexes: std::ops::RangeInclusive<u64>) {
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

    /// Hands `op` to the writer; gives it back if the store is closed.
    pub(super) fn submit(&self, op: Op) -> Result<(), Op> {
        match lock(&self.ops).as_ref() {
            Some(ops) => ops.send(op).map_err(|mpsc::SendError(op)| op),
            None => Err(op),
        }
    }
}

/// The answer to a request the writer was given (`submitted`), as a future.
pub(super) fn answered<T: Send + 'static>(
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

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// At open, in one transaction: forgets runs older than `ttl`, and empties the mailboxes
/// marked temporary by an earlier run (their counters and revocations too).
fn prune_at_open(db: &Database, ttl: Duration) -> Result<(), redb::Error> {
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
            let mut counters = txn.open_table(COUNTERS)?;
            let mut revoked = txn.open_table(REVOKED)?;
            let mut released = Released::default();
            for id in ids {
                remove_all(&mut messages, &mut released, id)?;
                capabilities::forget(&mut counters, &mut revoked, id)?;
                mailboxes.remove(id)?;
                temporary.remove(id)?;
            }
            shared::release_all(
                &mut txn.open_table(SHARED)?,
                &mut txn.open_table(SHARED_REFS)?,
                released.shared,
            )?;
            senders::settle(
                &mut SenderTables::open(&txn)?,
                None,
                HashMap::new(),
                released.senders,
            )?;
        }
    }
    txn.commit()?;
    Ok(())
}

impl MailboxStore for RedbStore {
    fn append(
        &self,
        mailbox: MailboxId,
        run: Option<(RunId, u64)>,
        messages: Vec<(Address, Bytes)>,
    ) -> StoreFuture<Vec<u64>> {
        self.append_counted(mailbox, run, messages, Vec::new())
    }

    fn append_counted(
        &self,
        mailbox: MailboxId,
        run: Option<(RunId, u64)>,
        messages: Vec<(Address, Bytes)>,
        counters: Vec<CounterKey>,
    ) -> StoreFuture<Vec<u64>> {
        let (reply, answer) = oneshot::channel();
        let submitted = self.submit(Op::Append {
            mailbox,
            run,
            messages: messages
                .into_iter()
                .map(|(from, payload)| (from, Bytes::new(), payload))
                .collect(),
            counters: counters.into_boxed_slice(),
            reply,
        });
        answered(submitted, answer)
    }

    fn counts(&self, mailbox: MailboxId) -> Result<Vec<(CounterKey, u64)>, StoreError> {
        capabilities::counts(&self.db, mailbox)
    }

    fn revoke(&self, mailbox: MailboxId, grant: GrantId) -> StoreFuture<()> {
        let (reply, answer) = oneshot::channel();
        let submitted = self.submit(Op::Revoke {
            mailbox,
            grant,
            reply,
        });
        answered(submitted, answer)
    }

    fn revoked(&self, mailbox: MailboxId) -> Result<Vec<GrantId>, StoreError> {
        capabilities::revoked(&self.db, mailbox)
    }

    fn delivered(&self, mailbox: MailboxId, run: RunId) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let Some(runs) = read_table(&txn, RUNS).map_err(failed)? else {
            return Ok(None);
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
        let all = SessionStore::read_from(self, mailbox, 0, usize::MAX, usize::MAX)?;
        Ok(all
            .into_iter()
            .map(|message| StoredMessage {
                index: message.index,
                from: message.from,
                payload: message.payload,
            })
            .collect())
    }

    fn remove(&self, mailbox: MailboxId, index: u64) {
        self.remove_range(mailbox, index..=index);
    }
}

impl SessionStore for RedbStore {
    fn append_shared(
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

    fn read_from(
        &self,
        mailbox: MailboxId,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<TaggedMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let Some(messages) = read_table(&txn, MESSAGES).map_err(failed)? else {
            return Ok(Vec::new());
        };
        let shared = read_table(&txn, SHARED).map_err(failed)?;
        let senders = read_table(&txn, SENDERS).map_err(failed)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut last_sender = None;
        for row in messages
            .range((mailbox.0, from)..=(mailbox.0, u64::MAX))
            .map_err(failed)?
        {
            if out.len() >= max_count || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            let (key, value) = row.map_err(failed)?;
            let resolved = shared::resolve(
                value.value(),
                shared.as_ref(),
                senders.as_ref(),
                &mut last_sender,
            )?;
            let Some(message) = resolved else {
                continue; // a tombstone
            };
            bytes = bytes.saturating_add(message.payload.len());
            out.push(TaggedMessage {
                index: key.value().1,
                from: message.from,
                tag: message.tag,
                payload: message.payload,
            });
        }
        Ok(out)
    }

    fn next_index(&self, mailbox: MailboxId) -> Result<u64, StoreError> {
        Ok(self.counters(mailbox)?.0)
    }

    fn remove_below(&self, mailbox: MailboxId, end: u64) {
        if let Some(last) = end.checked_sub(1) {
            self.remove_range(mailbox, 0..=last);
        }
    }

    fn purge(&self, mailbox: MailboxId) {
        let _ = self.submit(Op::Purge { mailbox });
    }

    fn put_record(&self, key: &str, value: Vec<u8>) {
        let _ = self.submit(Op::PutRecord {
            key: key.to_owned(),
            value,
        });
    }

    fn delete_record(&self, key: &str) {
        let _ = self.submit(Op::DeleteRecord {
            key: key.to_owned(),
        });
    }

    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        records::with_prefix(&self.db, prefix)
    }

    fn record_or_insert(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        records::record_or_insert(&self.db, key, value)
    }
}
