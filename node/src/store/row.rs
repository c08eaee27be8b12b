//! The rows of the `messages` and `shared` tables, encoded and decoded. Pure: bytes in, bytes
//! out, no database.
//!
//! A row is one of four kinds, told apart by its first two bytes (a big-endian u16):
//! - a **message**: the u16 is the length of the sender's address bytes, which follow; when
//!   bit 15 ([`TAGGED`]) is set, a u16 tag length and the tag come next (tags are the gateway's
//!   delivery metadata); the rest is the payload. Address bytes are at most a few hundred
//!   bytes long, far below the flag bits;
//! - a **message from a stored sender**: the u16 without [`TAGGED`] is exactly
//!   [`FROM_SENDER`], then the u64 id of the sender's row in `senders` (its address), then the
//!   tag and the payload as in a message. Rows written by earlier versions are all messages;
//! - a **reference** to a message stored once for several mailboxes (a gateway channel
//!   message): the u16 is exactly [`SHARED_REF`], then the shared message's u64 id;
//! - a **tombstone**, the whole row being [`TOMBSTONE`]: a removed message that had its
//!   mailbox's highest index, kept so that the mailbox's indexes go on from there after a
//!   restart. A message row cannot be these two bytes: its address would be 8,192 bytes long.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::Bytes;
use ferry::address::{Address, AddressError};

/// Set in the address length of a message row that carries a tag.
const TAGGED: u16 = 0x8000;

/// The first u16 of a row that refers to a shared message (then a u64 id follows).
const SHARED_REF: u16 = 0x4000;

/// The first u16 (but [`TAGGED`]) of a message row whose sender is stored in `senders` (then
/// the sender's u64 id follows). An address of 4,096 bytes, which this would be read as in a
/// message row, does not exist.
const FROM_SENDER: u16 = 0x1000;

/// The whole row of a tombstone.
pub(crate) const TOMBSTONE: [u8; 2] = 0x2000u16.to_be_bytes();

/// The longest tag a row keeps; longer tags are cut.
pub(crate) const MAX_TAG_LEN: usize = u16::MAX as usize;

/// A message as a row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageRow {
    /// The sender's reply address.
    pub(crate) from: Address,
    /// The gateway's delivery metadata (empty: none).
    pub(crate) tag: Bytes,
    /// The payload.
    pub(crate) payload: Bytes,
}

/// A decoded row.
#[derive(Debug, Clone, PartialEq, Eq)]
// A row is decoded and taken apart at once, never kept in numbers: boxing the message would
// cost an allocation per message read for no memory saved.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Row {
    /// A message.
    Message(MessageRow),
    /// A message whose sender's address is the row `sender` of `senders`.
    FromSender {
        /// The id of the sender's row.
        sender: u64,
        /// As [`MessageRow::tag`].
        tag: Bytes,
        /// As [`MessageRow::payload`].
        payload: Bytes,
    },
    /// A reference to the shared message with this id.
    Shared(u64),
    /// A removed message kept for its index.
    Tombstone,
}

/// What kind of row some bytes are, without decoding a message's address (for counting and
/// removing rows). Bytes that are no well-formed row count as a message: decoding one
/// reports what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A message (or malformed bytes).
    Message,
    /// A message from the stored sender with this id.
    FromSender(u64),
    /// A reference to the shared message with this id.
    Shared(u64),
    /// A tombstone.
    Tombstone,
}

/// Why stored bytes are not a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RowError {
    /// Shorter than the two bytes every row starts with.
    #[error("row of {0} bytes, shorter than its header")]
    Truncated(usize),
    /// A reference whose id is not 8 bytes.
    #[error("shared-message reference of {0} bytes instead of 10")]
    ReferenceTruncated(usize),
    /// A message from a stored sender whose id is cut.
    #[error("stored sender's id truncated")]
    SenderTruncated,
    /// The address length says more bytes than the row has.
    #[error("address of {declared} bytes, but only {available} follow")]
    AddressTruncated {
        /// The address length the row declares.
        declared: usize,
        /// The bytes after the header.
        available: usize,
    },
    /// The row says it has a tag, but its length or bytes are cut.
    #[error("tag truncated")]
    TagTruncated,
    /// The address bytes are no address.
    #[error("sender address: {0}")]
    Address(#[source] AddressError),
}

/// Encodes a message row. A tag longer than [`MAX_TAG_LEN`] is cut.
pub(crate) fn encode_message(from: &Address, tag: &[u8], payload: &[u8]) -> Vec<u8> {
    let address = from.to_bytes();
    // An address is at most a few hundred bytes (core, at most 4 hints, CRC), far below the
    // flag bits: the cast keeps it whole.
    encode(address.len() as u16, &address, tag, payload)
}

/// Encodes a message row from the stored sender `sender`. A tag longer than [`MAX_TAG_LEN`]
/// is cut.
pub(crate) fn encode_from_sender(sender: u64, tag: &[u8], payload: &[u8]) -> Vec<u8> {
    encode(FROM_SENDER, &sender.to_be_bytes(), tag, payload)
}

/// A message row: `head` (without the tag flag), the sender's bytes, the tag, the payload.
fn encode(head: u16, sender: &[u8], tag: &[u8], payload: &[u8]) -> Vec<u8> {
    let tag = tag.get(..MAX_TAG_LEN).unwrap_or(tag);
    let mut row = Vec::with_capacity(4 + sender.len() + tag.len() + payload.len());
    let head = if tag.is_empty() { head } else { head | TAGGED };
    row.extend_from_slice(&head.to_be_bytes());
    row.extend_from_slice(sender);
    if !tag.is_empty() {
        row.extend_from_slice(&(tag.len() as u16).to_be_bytes());
        row.extend_from_slice(tag);
    }
    row.extend_from_slice(payload);
    row
}

/// Encodes a reference to shared message `id`.
pub(crate) fn encode_reference(id: u64) -> [u8; 10] {
    let mut row = [0u8; 10];
    let (flags, rest) = row.split_at_mut(2);
    flags.copy_from_slice(&SHARED_REF.to_be_bytes());
    rest.copy_from_slice(&id.to_be_bytes());
    row
}

/// The kind of `row` (see [`Kind`]).
pub(crate) fn kind(row: &[u8]) -> Kind {
    if row == TOMBSTONE {
        return Kind::Tombstone;
    }
    match reference(row) {
        Some(Ok(id)) => Kind::Shared(id),
        _ => match stored_sender(row) {
            Some(Ok(stored)) => Kind::FromSender(stored.id),
            _ => Kind::Message,
        },
    }
}

/// A message row from a stored sender, taken apart.
struct StoredSender<'a> {
    /// The sender's id in `senders`.
    id: u64,
    /// The tag (if `tagged`) and the payload.
    rest: &'a [u8],
    tagged: bool,
}

/// `row` taken apart if it is a message from a stored sender: `None` for other rows, an error
/// for a cut one.
fn stored_sender(row: &[u8]) -> Option<Result<StoredSender<'_>, RowError>> {
    let (head, rest) = row.split_first_chunk::<2>()?;
    let head = u16::from_be_bytes(*head);
    if head & !TAGGED != FROM_SENDER {
        return None;
    }
    Some(
        rest.split_first_chunk::<8>()
            .map(|(id, rest)| StoredSender {
                id: u64::from_be_bytes(*id),
                rest,
                tagged: head & TAGGED != 0,
            })
            .ok_or(RowError::SenderTruncated),
    )
}

/// The id of a reference row: `None` for other rows, an error for a cut one.
fn reference(row: &[u8]) -> Option<Result<u64, RowError>> {
    let (flags, rest) = row.split_first_chunk::<2>()?;
    if u16::from_be_bytes(*flags) != SHARED_REF {
        return None;
    }
    Some(
        <[u8; 8]>::try_from(rest)
            .map(u64::from_be_bytes)
            .map_err(|_| RowError::ReferenceTruncated(row.len())),
    )
}

/// Decodes any row.
pub(crate) fn decode(row: &[u8]) -> Result<Row, RowError> {
    if row == TOMBSTONE {
        return Ok(Row::Tombstone);
    }
    if let Some(id) = reference(row) {
        return id.map(Row::Shared);
    }
    if let Some(stored) = stored_sender(row) {
        let stored = stored?;
        let (tag, payload) = tag_and_payload(stored.rest, stored.tagged)?;
        return Ok(Row::FromSender {
            sender: stored.id,
            tag,
            payload,
        });
    }
    decode_message(row).map(Row::Message)
}

/// Decodes a message row (the row of a `shared` message is always one).
pub(crate) fn decode_message(row: &[u8]) -> Result<MessageRow, RowError> {
    let (len, rest) = row
        .split_first_chunk::<2>()
        .ok_or(RowError::Truncated(row.len()))?;
    let len = u16::from_be_bytes(*len);
    let tagged = len & TAGGED != 0;
    let declared = usize::from(len & !TAGGED);
    if rest.len() < declared {
        return Err(RowError::AddressTruncated {
            declared,
            available: rest.len(),
        });
    }
    let (address, rest) = rest.split_at(declared);
    let from = Address::from_bytes(address).map_err(RowError::Address)?;
    let (tag, payload) = tag_and_payload(rest, tagged)?;
    Ok(MessageRow { from, tag, payload })
}

/// The tag (if `tagged`) and the payload that end a message row.
fn tag_and_payload(mut rest: &[u8], tagged: bool) -> Result<(Bytes, Bytes), RowError> {
    let mut tag = Bytes::new();
    if tagged {
        let (tag_len, after) = rest
            .split_first_chunk::<2>()
            .ok_or(RowError::TagTruncated)?;
        let tag_len = usize::from(u16::from_be_bytes(*tag_len));
        if after.len() < tag_len {
            return Err(RowError::TagTruncated);
        }
        let (bytes, after) = after.split_at(tag_len);
        tag = Bytes::copy_from_slice(bytes);
        rest = after;
    }
    Ok((tag, Bytes::copy_from_slice(rest)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests: a failed unwrap fails

    use super::*;
    use ferry::address::MailboxId;
    use ferry::SecretKey;

    fn address() -> Address {
        let key = SecretKey::generate();
        Address::mint(
            &key,
            MailboxId(7),
            None,
            vec!["192.0.2.1:4433".parse().unwrap()],
        )
    }

    #[test]
    fn message_rows_round_trip() {
        let from = address();
        for (tag, payload) in [
            (&b""[..], &b"hello"[..]),
            (b"", b""),
            (b"c:room", b"to everyone"),
            (b"t", b""),
        ] {
            let row = encode_message(&from, tag, payload);
            assert_eq!(kind(&row), Kind::Message);
            let expected = MessageRow {
                from: from.clone(),
                tag: Bytes::copy_from_slice(tag),
                payload: Bytes::copy_from_slice(payload),
            };
            assert_eq!(decode(&row), Ok(Row::Message(expected.clone())));
            assert_eq!(decode_message(&row), Ok(expected));
        }
    }

    #[test]
    fn rows_from_stored_senders_round_trip() {
        for sender in [0, 1, u64::MAX] {
            for (tag, payload) in [(&b""[..], &b"hello"[..]), (b"c:room", b""), (b"t", b"x")] {
                let row = encode_from_sender(sender, tag, payload);
                assert_eq!(kind(&row), Kind::FromSender(sender));
                assert_eq!(
                    decode(&row),
                    Ok(Row::FromSender {
                        sender,
                        tag: Bytes::copy_from_slice(tag),
                        payload: Bytes::copy_from_slice(payload),
                    })
                );
                // Ten bytes of head and id in place of the address.
                let tag_bytes = if tag.is_empty() { 0 } else { 2 + tag.len() };
                assert_eq!(row.len(), 10 + tag_bytes + payload.len());
            }
        }
        // A cut id is refused, and not counted as a stored sender's.
        let row = encode_from_sender(5, b"", b"");
        assert_eq!(decode(&row[..6]), Err(RowError::SenderTruncated));
        assert_eq!(kind(&row[..6]), Kind::Message);
    }

    #[test]
    fn untagged_rows_have_no_tag_header() {
        let from = address();
        let row = encode_message(&from, b"", b"x");
        assert_eq!(row.len(), 2 + from.to_bytes().len() + 1);
        assert_eq!(u16::from_be_bytes([row[0], row[1]]) & TAGGED, 0);
    }

    #[test]
    fn long_tags_are_cut() {
        let tag = vec![b't'; MAX_TAG_LEN + 10];
        let row = encode_message(&address(), &tag, b"payload");
        let decoded = decode_message(&row).unwrap();
        assert_eq!(decoded.tag.len(), MAX_TAG_LEN);
        assert_eq!(&decoded.payload[..], b"payload");
    }

    #[test]
    fn references_and_tombstones() {
        for id in [0, 1, u64::MAX] {
            let row = encode_reference(id);
            assert_eq!(kind(&row), Kind::Shared(id));
            assert_eq!(decode(&row), Ok(Row::Shared(id)));
        }
        assert_eq!(kind(&TOMBSTONE), Kind::Tombstone);
        assert_eq!(decode(&TOMBSTONE), Ok(Row::Tombstone));
    }

    #[test]
    fn malformed_rows_are_refused() {
        assert_eq!(decode(b""), Err(RowError::Truncated(0)));
        assert_eq!(decode(b"\x00"), Err(RowError::Truncated(1)));
        let reference = encode_reference(5);
        assert_eq!(
            decode(&reference[..6]),
            Err(RowError::ReferenceTruncated(6))
        );
        // A cut reference is not taken for one when counting.
        assert_eq!(kind(&reference[..6]), Kind::Message);
        let row = encode_message(&address(), b"tag", b"payload");
        let header = 2;
        let address_len = usize::from(u16::from_be_bytes([row[0], row[1]]) & !TAGGED);
        assert_eq!(
            decode(&row[..header + 3]),
            Err(RowError::AddressTruncated {
                declared: address_len,
                available: 3
            })
        );
        // Tag length cut, then tag bytes cut.
        let tag_at = header + address_len;
        assert_eq!(decode(&row[..tag_at + 1]), Err(RowError::TagTruncated));
        assert_eq!(decode(&row[..tag_at + 3]), Err(RowError::TagTruncated));
        // Address bytes that are no address.
        let mut garbage = vec![0, 4];
        garbage.extend_from_slice(b"abcd");
        assert!(matches!(decode(&garbage), Err(RowError::Address(_))));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let row = encode_message(&address(), b"tag", b"payload");
        for end in 0..row.len() {
            let _ = decode(&row[..end]);
            let _ = kind(&row[..end]);
        }
        for first in 0..=u8::MAX {
            for second in [0u8, 1, 0x10, 0x20, 0x40, 0x80, 0x90, 0xff] {
                let _ = decode(&[first, second, 1, 2, 3]);
            }
        }
    }
}
