//! Messages stored once for several mailboxes (a gateway channel message): the message is a
//! row of `shared`, each member mailbox gets a reference row at its next index, and
//! `shared_refs` counts the references left. The shared row goes with its last reference.

use super::counts::{count_of, Counts};
use super::row::{self, MessageRow, Row};
use super::session_store::Appended;
use super::{corrupt, failed, StoreConfig};
use ferry::address::MailboxId;
use ferry::StoreError;
use redb::ReadableTable as _;

/// What the rows removed in one transaction referred to, counted per id and applied together
/// at its end ([`release_all`], [`super::senders::settle`]), so that ten thousand
/// acknowledgements of one channel message update its count once.
#[derive(Debug, Default)]
pub(crate) struct Released {
    /// References to shared messages, per shared id.
    pub(crate) shared: std::collections::HashMap<u64, u64>,
    /// Message rows naming a stored sender, per sender id.
    pub(crate) senders: std::collections::HashMap<u64, u64>,
}

/// The tables one shared append writes.
pub(crate) struct SharedTables<'a, 't> {
    pub(crate) messages: &'a mut redb::Table<'t, (u64, u64), &'static [u8]>,
    pub(crate) mailboxes: &'a redb::Table<'t, u64, (u64, u64)>,
    pub(crate) shared: &'a mut redb::Table<'t, u64, &'static [u8]>,
    pub(crate) refs: &'a mut redb::Table<'t, u64, u64>,
}

/// Stores one message (its encoded row) for every mailbox of `members`: the message
/// itself when there is one member, else once as shared message `next_shared` (then
/// advanced) with a reference row per member. A member holding `max_pending_per_mailbox`
/// messages is skipped. Returns, per member in order, its index or that it was full.
pub(crate) fn append(
    tables: SharedTables<'_, '_>,
    counts: &mut Counts,
    config: &StoreConfig,
    next_shared: &mut u64,
    members: &[MailboxId],
    message: &[u8],
) -> Result<Vec<Appended>, redb::Error> {
    let id = *next_shared;
    // One member: the message itself, no reference.
    let is_shared = members.len() > 1;
    let reference = row::encode_reference(id);
    let member_row: &[u8] = if is_shared { &reference } else { message };
    // In key order: neighbouring rows share pages.
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_unstable_by_key(|&i| members.get(i).map(|m| m.0));
    let mut outcome = vec![Appended::Full { position: 0 }; members.len()];
    let mut stored = 0u64;
    for i in order {
        let (Some(mailbox), Some(slot)) = (members.get(i), outcome.get_mut(i)) else {
            continue;
        };
        let mut count = count_of(counts, tables.messages, tables.mailboxes, mailbox.0)?;
        if count.pending >= config.max_pending_per_mailbox {
            *slot = Appended::Full {
                position: count.next,
            };
            continue;
        }
        tables
            .messages
            .insert((mailbox.0, count.next), member_row)?;
        *slot = Appended::Stored(count.next);
        count.next += 1;
        count.pending += 1;
        counts.insert(mailbox.0, count);
        stored += 1;
    }
    if is_shared && stored > 0 {
        tables.shared.insert(id, message)?;
        tables.refs.insert(id, stored)?;
        *next_shared += 1;
    }
    Ok(outcome)
}

/// Drops the references counted in `released`, and each shared message with its last one.
pub(crate) fn release_all(
    shared: &mut redb::Table<u64, &[u8]>,
    refs: &mut redb::Table<u64, u64>,
    released: std::collections::HashMap<u64, u64>,
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

/// The `shared` table as a read transaction sees it.
pub(crate) type SharedTable = redb::ReadOnlyTable<u64, &'static [u8]>;

/// The `senders` table as a read transaction sees it.
pub(crate) type SendersTable = redb::ReadOnlyTable<u64, (u64, &'static [u8])>;

/// The message a `messages` row holds, following a reference to its shared message or to its
/// stored sender; `None` for a tombstone. `last_sender` is the sender resolved last and its id:
/// a mailbox's rows mostly name one sender after another, and parsing an address checks its
/// node's key (a point decompression) — once per run of rows, not per row.
pub(crate) fn resolve(
    row: &[u8],
    shared: Option<&SharedTable>,
    senders: Option<&SendersTable>,
    last_sender: &mut Option<(u64, ferry::Address)>,
) -> Result<Option<MessageRow>, StoreError> {
    let id = match row::decode(row).map_err(corrupt)? {
        Row::Tombstone => return Ok(None),
        Row::Message(message) => return Ok(Some(message)),
        Row::FromSender {
            sender,
            tag,
            payload,
        } => {
            if let Some((_, from)) = last_sender.as_ref().filter(|(id, _)| *id == sender) {
                let from = from.clone();
                return Ok(Some(MessageRow { from, tag, payload }));
            }
            let missing =
                || StoreError::Corrupt(format!("stored message: sender {sender} missing"));
            let row = senders
                .ok_or_else(missing)?
                .get(sender)
                .map_err(failed)?
                .ok_or_else(missing)?;
            let from = ferry::Address::from_bytes(row.value().1)
                .map_err(|error| StoreError::Corrupt(format!("stored sender {sender}: {error}")))?;
            *last_sender = Some((sender, from.clone()));
            return Ok(Some(MessageRow { from, tag, payload }));
        }
        Row::Shared(id) => id,
    };
    let missing = || StoreError::Corrupt(format!("stored message: shared message {id} missing"));
    let value = shared
        .ok_or_else(missing)?
        .get(id)
        .map_err(failed)?
        .ok_or_else(missing)?;
    row::decode_message(value.value())
        .map(Some)
        .map_err(corrupt)
}
