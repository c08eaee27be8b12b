//! What the writer knows of each mailbox: its next index, its unacknowledged messages and its
//! tombstone, read from its rows the first time the writer uses it and kept in memory after,
//! so that storing a message writes its row and nothing else.

use redb::ReadableTable;

use super::row::{self, Kind};
use super::schema::mailbox_rows;

/// What the writer knows of one mailbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Count {
    /// The index of its next message.
    pub(crate) next: u64,
    /// Its rows other than tombstones.
    pub(crate) pending: u64,
    /// The index of its tombstone, if it has one.
    pub(crate) tombstone: Option<u64>,
}

/// The writer's counts, per mailbox.
pub(crate) type Counts = std::collections::HashMap<u64, Count>;

/// Most mailboxes whose counts the writer keeps in memory; past it, it forgets them all and
/// reads each again from its rows when next used.
pub(crate) const MAX_COUNTED: usize = 1_000_000;

/// The count of `mailbox`: the writer's, or read from its rows (and the lower bound of an
/// earlier version's `mailboxes` row).
pub(crate) fn count_of(
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
pub(crate) fn count_rows(
    messages: &impl ReadableTable<(u64, u64), &'static [u8]>,
    mailbox: u64,
    floor: u64,
) -> Result<Count, redb::Error> {
    let mut count = Count {
        next: floor,
        ..Count::default()
    };
    for row in messages.range(mailbox_rows(mailbox))? {
        let (key, row) = row?;
        let index = key.value().1;
        count.next = count.next.max(index.saturating_add(1));
        if row::kind(row.value()) == Kind::Tombstone {
            count.tombstone = Some(index);
        } else {
            count.pending += 1;
        }
    }
    Ok(count)
}
