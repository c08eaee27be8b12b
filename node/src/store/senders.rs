//! Sender addresses stored once: a message row of [`Op::Append`](super::writer::Op) names its
//! sender by an id of `senders`, whose row holds the address (some 120 bytes, ten times a
//! small message) and how many message rows name it; `sender_ids` finds the id of an
//! address. A sender's rows go with the last message that names it.

use std::collections::HashMap;

use redb::ReadableTable as _;

use super::schema::{next_id, SENDERS, SENDER_IDS};

/// Most addresses the writer remembers the id of; past it, it forgets them all.
const MAX_CACHED: usize = 4096;

/// The tables of stored senders, in a write transaction.
pub(crate) struct SenderTables<'t> {
    pub(crate) senders: redb::Table<'t, u64, (u64, &'static [u8])>,
    pub(crate) ids: redb::Table<'t, &'static [u8], u64>,
}

impl<'t> SenderTables<'t> {
    /// Opens both tables in `txn`.
    pub(crate) fn open(txn: &'t redb::WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(Self {
            senders: txn.open_table(SENDERS)?,
            ids: txn.open_table(SENDER_IDS)?,
        })
    }
}

/// The writer's memory of stored senders: the next id to give, and the ids of addresses it
/// used lately (so that a message does not cost a lookup in `sender_ids`).
#[derive(Default)]
pub(crate) struct Senders {
    next: u64,
    cache: HashMap<Vec<u8>, u64>,
}

impl Senders {
    /// Starts past the highest id `db` holds.
    pub(crate) fn open(db: &redb::Database) -> Result<Self, redb::Error> {
        Ok(Self {
            next: next_id(db, SENDERS)?,
            cache: HashMap::new(),
        })
    }

    /// The id of the sender with `address` (its bytes), stored now if it is new (with no
    /// message naming it yet: the caller counts them in `added`).
    pub(crate) fn id(
        &mut self,
        tables: &mut SenderTables<'_>,
        address: &[u8],
    ) -> Result<u64, redb::Error> {
        if let Some(&id) = self.cache.get(address) {
            return Ok(id);
        }
        let stored = tables.ids.get(address)?.map(|id| id.value());
        let id = match stored {
            Some(id) => id,
            None => {
                // Past the highest id at open, so only in use if that could not be read.
                while tables.senders.get(self.next)?.is_some() {
                    self.next += 1;
                }
                let id = self.next;
                self.next += 1;
                tables.ids.insert(address, id)?;
                tables.senders.insert(id, (0, address))?;
                id
            }
        };
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(address.to_vec(), id);
        Ok(id)
    }

    /// Forgets every remembered id: after a failed transaction, some may name rows it did not
    /// keep.
    pub(crate) fn forget(&mut self) {
        self.cache.clear();
    }
}

/// Applies one transaction's changes to the senders' counts: `added` message rows per sender,
/// `released` ones removed. A sender no row names any more goes (and from `memory`).
pub(crate) fn settle(
    tables: &mut SenderTables<'_>,
    memory: Option<&mut Senders>,
    added: HashMap<u64, u64>,
    released: HashMap<u64, u64>,
) -> Result<(), redb::Error> {
    let mut changes = added;
    let mut gone = Vec::new();
    for id in released.keys() {
        changes.entry(*id).or_default();
    }
    for (id, add) in changes {
        let release = released.get(&id).copied().unwrap_or(0);
        let Some((count, address)) = tables
            .senders
            .get(id)?
            .map(|row| (row.value().0, row.value().1.to_vec()))
        else {
            continue;
        };
        let left = (count + add).saturating_sub(release);
        if left == 0 {
            tables.senders.remove(id)?;
            tables.ids.remove(address.as_slice())?;
            gone.push(address);
        } else if left != count {
            tables.senders.insert(id, (left, address.as_slice()))?;
        }
    }
    if let Some(memory) = memory {
        for address in gone {
            memory.cache.remove(&address);
        }
    }
    Ok(())
}
