//! Rows going away: messages acknowledged (a mailbox's highest one stays as its tombstone)
//! and mailboxes purged. The shared messages and stored senders they referred to are counted,
//! to be released together at the end of the transaction ([`super::shared::release_all`],
//! [`super::senders::settle`]).

use redb::ReadableTable as _;

use super::counts::Count;
use super::row::{self, Kind, TOMBSTONE};
use super::schema::mailbox_rows;
use super::shared::Released;

/// Messages of a mailbox to remove (acknowledged).
#[derive(Debug)]
pub(crate) struct Removal {
    /// The mailbox.
    pub(crate) mailbox: ferry::MailboxId,
    /// The indexes of its messages to remove.
    pub(crate) indexes: std::ops::RangeInclusive<u64>,
}

/// Removes the messages of `mailbox` in `indexes` (acknowledged), counting the shared messages
/// and stored senders they referred to in `released`. The one at the mailbox's highest index becomes its
/// tombstone (and the previous tombstone goes).
pub(crate) fn acknowledge(
    messages: &mut redb::Table<(u64, u64), &[u8]>,
    released: &mut Released,
    count: &mut Count,
    mailbox: u64,
    indexes: std::ops::RangeInclusive<u64>,
) -> Result<(), redb::Error> {
    let mut rows = Vec::new();
    for row in messages.range((mailbox, *indexes.start())..=(mailbox, *indexes.end()))? {
        let (key, row) = row?;
        rows.push((key.value().1, row::kind(row.value())));
    }
    let last = count.next.checked_sub(1);
    for (index, kind) in rows {
        release(released, kind);
        let tombstone = kind == Kind::Tombstone;
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

/// Removes every row of `mailbox` (tombstones too), counting the shared messages and stored
/// senders they referred to in `released`.
pub(crate) fn remove_all(
    messages: &mut redb::Table<(u64, u64), &[u8]>,
    released: &mut Released,
    mailbox: u64,
) -> Result<(), redb::Error> {
    messages.retain_in(mailbox_rows(mailbox), |_, row| {
        release(released, row::kind(row));
        false
    })?;
    Ok(())
}

/// Counts what a removed row of `kind` referred to.
fn release(released: &mut Released, kind: Kind) {
    match kind {
        Kind::Shared(id) => *released.shared.entry(id).or_default() += 1,
        Kind::FromSender(id) => *released.senders.entry(id).or_default() += 1,
        Kind::Message | Kind::Tombstone => {}
    }
}
