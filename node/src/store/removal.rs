//! Rows going away: messages acknowledged (a mailbox's highest one stays as its tombstone)
//! and mailboxes purged. The shared messages and stored senders they referred to are counted,
//! to be released together at the end of the transaction ([`super::shared::release_all`],
//! [`super::senders::settle`]).

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
/// and stored senders they referred to in `released`. The one at the mailbox's highest index
/// becomes its tombstone (and the previous tombstone goes).
pub(crate) fn acknowledge(
    messages: &mut redb::Table<(u64, u64), &[u8]>,
    released: &mut Released,
    count: &mut Count,
    mailbox: u64,
    indexes: std::ops::RangeInclusive<u64>,
) -> Result<(), redb::Error> {
    let last = count.next.checked_sub(1);
    let mut removed_last = false;
    let mut removed_tombstone = false;
    // One pass over the range removes every row in it (a `remove` per row cost a descent of
    // the tree each); the highest row is put back as the tombstone after.
    messages.retain_in(
        (mailbox, *indexes.start())..=(mailbox, *indexes.end()),
        |(_, index), row| {
            let kind = row::kind(row);
            release(released, kind);
            if kind == Kind::Tombstone {
                removed_tombstone |= count.tombstone == Some(index);
            } else {
                count.pending = count.pending.saturating_sub(1);
            }
            removed_last |= Some(index) == last;
            false
        },
    )?;
    if removed_tombstone {
        count.tombstone = None;
    }
    if let (true, Some(index)) = (removed_last, last) {
        messages.insert((mailbox, index), TOMBSTONE.as_slice())?;
        if let Some(old) = count.tombstone.filter(|&old| old != index) {
            messages.remove((mailbox, old))?;
        }
        count.tombstone = Some(index);
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
