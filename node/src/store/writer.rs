//! The writer thread: every write of the store goes through it. It takes every request
//! waiting in its queue (up to [`MAX_BATCH`]), applies them in one transaction and commits
//! once with `Durability::Immediate` (fsync), so that many streams storing at the same time
//! share one disk flush (group commit); then it answers each request.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::address::{Address, CounterKey, GrantId, MailboxId};
use ferry::store::RunId;
use ferry::StoreError;
use redb::{Database, Durability};
use tokio::sync::oneshot;

use super::capabilities;
use super::counts::{count_of, Counts, MAX_COUNTED};
use super::removal::{acknowledge, remove_all, Removal};
use super::schema::{
    next_id, run_key, COUNTERS, MAILBOXES, MESSAGES, RECORDS, REVOKED, RUNS, SHARED, SHARED_REFS,
    TEMPORARY,
};
use super::senders::{self, SenderTables, Senders};
use super::session_store::Appended;
use super::shared::{self, Released, SharedTables};
use super::{failed, row, StoreConfig};
use crate::clock::unix_now;
use crate::sync::lock;

/// One message to store: sender, tag (empty: none), payload.
pub(crate) type NewMessage = (Address, Bytes, Bytes);

/// A request to the writer.
pub(crate) enum Op {
    /// Messages for one mailbox, and the run they advance.
    Append {
        mailbox: MailboxId,
        run: Option<(RunId, u64)>,
        messages: Vec<NewMessage>,
        /// Counters of "max messages" caveats to add the number stored to, in the same
        /// transaction (boxed: most appends have none, and the request stays small).
        counters: Box<[CounterKey]>,
        reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
    },
    /// Records a revoked grant.
    Revoke {
        mailbox: MailboxId,
        grant: GrantId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// One message for several mailboxes, stored once.
    AppendShared {
        mailboxes: Vec<MailboxId>,
        message: Box<NewMessage>,
        reply: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
    },
    /// Removes every message of a mailbox (the gateway's ended sessions), its counters and
    /// its revocations.
    Purge { mailbox: MailboxId },
    /// Marks a mailbox temporary: it is emptied when the store next opens.
    Temporary { mailbox: MailboxId },
    /// Removals are waiting (in the store's list): the first one wakes the writer.
    Removals,
    /// Removes messages (made by the writer from the waiting removals).
    Remove(Removal),
    /// Writes (or overwrites) a record.
    PutRecord { key: String, value: Vec<u8> },
    /// Removes a record.
    DeleteRecord { key: String },
    /// Forgets a run that its sender ended.
    EndRun { mailbox: MailboxId, run: RunId },
}

/// Most requests applied in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;

/// How long the writer, woken by removals alone, waits for more (see [`gather`]).
const REMOVALS_WAIT: Duration = Duration::from_millis(20);

/// The writer thread's loop: batches from `queue` (and the `removals` waiting) until the
/// queue closes, then one last batch for the removals left.
pub(crate) fn run(
    db: &Database,
    queue: &mpsc::Receiver<Op>,
    removals: &Mutex<Vec<Removal>>,
    config: &StoreConfig,
) {
    let mut next_shared = match next_id(db, SHARED) {
        Ok(next) => next,
        Err(error) => {
            tracing::error!(%error, "reading the store's shared messages");
            0
        }
    };
    let mut senders = Senders::open(db).unwrap_or_else(|error| {
        // New ids then start at 0 and skip those in use.
        tracing::error!(%error, "reading the store's senders");
        Senders::default()
    });
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
            State {
                counts: &mut counts,
                next_shared: &mut next_shared,
                senders: &mut senders,
            },
            &mut replies,
        );
        if result.is_err() {
            // The counts and sender ids may include what the failed transaction did not keep.
            counts.clear();
            senders.forget();
        }
        for reply in replies {
            // The caller may have given up waiting; nothing to tell then.
            match reply {
                Reply::Done(reply) => {
                    let _ = reply.send(result.clone());
                }
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
    let mut wait_until = matches!(first, Op::Removals).then(|| Instant::now() + REMOVALS_WAIT);
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
                let left = until.saturating_duration_since(Instant::now());
                queue.recv_timeout(left).ok()
            }
        };
    }
    batch
}

/// An answer to send once the batch is committed.
enum Reply {
    Done(oneshot::Sender<Result<(), StoreError>>),
    Indexes(
        oneshot::Sender<Result<Vec<u64>, StoreError>>,
        Result<Vec<u64>, StoreError>,
    ),
    Shared(
        oneshot::Sender<Result<Vec<Appended>, StoreError>>,
        Result<Vec<Appended>, StoreError>,
    ),
}

/// What the writer keeps in memory between transactions.
struct State<'a> {
    counts: &'a mut Counts,
    next_shared: &'a mut u64,
    senders: &'a mut Senders,
}

/// Applies `batch` in one transaction and commits it; the answers go to `replies`, to be
/// sent once the outcome of the commit is known.
fn apply(
    db: &Database,
    batch: Vec<Op>,
    config: &StoreConfig,
    state: State<'_>,
    replies: &mut Vec<Reply>,
) -> Result<(), StoreError> {
    let State {
        counts,
        next_shared,
        senders,
    } = state;
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
        let mut counters_table = txn.open_table(COUNTERS).map_err(failed)?;
        let mut revoked = txn.open_table(REVOKED).map_err(failed)?;
        let mut sender_tables = SenderTables::open(&txn).map_err(failed)?;
        // Message rows naming each stored sender, added in this transaction.
        let mut named = std::collections::HashMap::<u64, u64>::new();
        let now = unix_now();
        let mut released = Released::default();
        for op in batch {
            match op {
                Op::Append {
                    mailbox,
                    run,
                    messages: rows,
                    counters,
                    reply,
                } => {
                    let mut count =
                        count_of(counts, &messages, &mailboxes, mailbox.0).map_err(failed)?;
                    let room = config.max_pending_per_mailbox.saturating_sub(count.pending);
                    let take = rows.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                    let mut indexes = Vec::with_capacity(take);
                    // A stream's batch comes from one sender: its id is looked up once.
                    let mut last: Option<(&Address, u64)> = None;
                    for (from, tag, payload) in rows.iter().take(take) {
                        let sender = match last {
                            Some((address, id)) if address == from => id,
                            _ => senders
                                .id(&mut sender_tables, &from.to_bytes())
                                .map_err(failed)?,
                        };
                        last = Some((from, sender));
                        *named.entry(sender).or_default() += 1;
                        let row = row::encode_from_sender(sender, tag, payload);
                        messages
                            .insert((mailbox.0, count.next), row.as_slice())
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
                        // In the transaction that stores the messages: a count is exact
                        // across crashes.
                        capabilities::add(&mut counters_table, mailbox, &counters, stored)
                            .map_err(failed)?;
                    }
                    replies.push(Reply::Indexes(reply, Ok(indexes)));
                }
                Op::AppendShared {
                    mailboxes: members,
                    message,
                    reply,
                } => {
                    let (from, tag, payload) = *message;
                    let row = row::encode_message(&from, &tag, &payload);
                    let tables = SharedTables {
                        messages: &mut messages,
                        mailboxes: &mailboxes,
                        shared: &mut shared,
                        refs: &mut refs,
                    };
                    let outcome =
                        shared::append(tables, counts, config, next_shared, &members, &row)
                            .map_err(failed)?;
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
                    capabilities::forget(&mut counters_table, &mut revoked, mailbox.0)
                        .map_err(failed)?;
                }
                Op::Revoke {
                    mailbox,
                    grant,
                    reply,
                } => {
                    revoked.insert((mailbox.0, grant.0), ()).map_err(failed)?;
                    replies.push(Reply::Done(reply));
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
        shared::release_all(&mut shared, &mut refs, released.shared).map_err(failed)?;
        senders::settle(&mut sender_tables, Some(senders), named, released.senders)
            .map_err(failed)?;
    }
    txn.commit().map_err(failed)
}
