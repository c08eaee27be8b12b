//! What the store keeps of capabilities (docs/PROTOCOL.md §4.11): the counts of "max messages"
//! caveats, added to in the transaction that stores the messages counted (so a count is exact
//! across crashes), and revoked grants. Both belong to a mailbox and go when it is purged.

use ferry::address::{CounterKey, GrantId, MailboxId};
use ferry::StoreError;
use redb::{ReadableDatabase, ReadableTable as _};

use super::failed;
use super::schema::{read_table, COUNTERS, REVOKED};

/// Adds `stored` to each of `counters` of `mailbox` (in the writer's transaction).
pub(crate) fn add(
    table: &mut redb::Table<(u64, u128), u64>,
    mailbox: MailboxId,
    counters: &[CounterKey],
    stored: u64,
) -> Result<(), redb::Error> {
    for counter in counters {
        let key = (mailbox.0, u128::from_be_bytes(counter.0));
        let before = table.get(key)?.map_or(0, |v| v.value());
        table.insert(key, before.saturating_add(stored))?;
    }
    Ok(())
}

/// Forgets the counters and revocations of `mailbox` (purged, or emptied at open).
pub(crate) fn forget(
    counters: &mut redb::Table<(u64, u128), u64>,
    revoked: &mut redb::Table<(u64, u64), ()>,
    mailbox: u64,
) -> Result<(), redb::Error> {
    counters.retain_in((mailbox, 0)..=(mailbox, u128::MAX), |_, _| false)?;
    revoked.retain_in((mailbox, 0)..=(mailbox, u64::MAX), |_, _| false)?;
    Ok(())
}

/// The counters of `mailbox` with their values, as committed.
pub(crate) fn counts(
    db: &redb::Database,
    mailbox: MailboxId,
) -> Result<Vec<(CounterKey, u64)>, StoreError> {
    let txn = db.begin_read().map_err(failed)?;
    let Some(counters) = read_table(&txn, COUNTERS).map_err(failed)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in counters
        .range((mailbox.0, 0)..=(mailbox.0, u128::MAX))
        .map_err(failed)?
    {
        let (key, value) = row.map_err(failed)?;
        out.push((CounterKey(key.value().1.to_be_bytes()), value.value()));
    }
    Ok(out)
}

/// The revoked grants of `mailbox`, as committed.
pub(crate) fn revoked(db: &redb::Database, mailbox: MailboxId) -> Result<Vec<GrantId>, StoreError> {
    let txn = db.begin_read().map_err(failed)?;
    let Some(revoked) = read_table(&txn, REVOKED).map_err(failed)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in revoked
        .range((mailbox.0, 0)..=(mailbox.0, u64::MAX))
        .map_err(failed)?
    {
        let (key, _) = row.map_err(failed)?;
        out.push(GrantId(key.value().1));
    }
    Ok(out)
}
