//! Wire frames: pure encode and decode functions on byte buffers, no IO.
//!
//! Every stream starts with one [`StreamKind`] byte written by the side that opened it. After
//! that both directions carry frames:
//!
//! ```text
//! frame = varint(len) | type[1] | fields[len - 1]
//! ```
//!
//! `varint` is unsigned LEB128, the varint postcard uses: 7 bits per byte, least significant
//! group first, high bit set on every byte but the last; at most 10 bytes; the canonical
//! (shortest) encoding only. See docs/PROTOCOL.md §5 for every frame byte by byte.
// Decoding takes bytes from any peer: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::address::{Address, AddressError, ADDRESS_CORE_LEN, MAX_CAP_LEN};

/// The first byte of every stream: what the stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// Messages from one sender mailbox to one target mailbox, in order, acknowledged.
    Mailbox = 0x01,
    /// A conversation (or call) with a service or a mailbox that accepts conversations, or a
    /// name lookup.
    Conversation = 0x02,
    /// A watch on a mailbox: the acceptor answers with `Close` when the mailbox goes away.
    Monitor = 0x03,
}

impl StreamKind {
    /// Decodes the first byte of a stream.
    pub fn from_byte(byte: u8) -> Result<Self, FrameError> {
        match byte {
            0x01 => Ok(Self::Mailbox),
            0x02 => Ok(Self::Conversation),
            0x03 => Ok(Self::Monitor),
            other => Err(FrameError::UnknownStreamKind(other)),
        }
    }
}

/// Frame type bytes.
mod tag {
    pub(super) const OPEN: u8 = 0x01;
    pub(super) const ACCEPT: u8 = 0x02;
    pub(super) const MESSAGE: u8 = 0x03;
    pub(super) const ACK: u8 = 0x04;
    pub(super) const CLOSE: u8 = 0x05;
    pub(super) const CONVERSE: u8 = 0x10;
    pub(super) const LOOKUP: u8 = 0x11;
    pub(super) const FOUND: u8 = 0x12;
    pub(super) const OBJECT: u8 = 0x13;
    pub(super) const DATA: u8 = 0x14;
    pub(super) const DATA_END: u8 = 0x15;
    pub(super) const FAIL: u8 = 0x16;
    pub(super) const MONITOR: u8 = 0x17;
    pub(super) const OPEN_CAP: u8 = 0x18;
    pub(super) const MONITOR_CAP: u8 = 0x19;
    pub(super) const FOUND_CAP: u8 = 0x1a;
}

/// The type byte of an `Object` frame, for readers that skip an oversized one.
pub const OBJECT_TYPE: u8 = tag::OBJECT;

/// Longest close reason, in bytes of UTF-8.
pub const MAX_REASON_LEN: usize = 256;
pub use crate::service_name::{valid_service_name, MAX_SERVICE_NAME_LEN};
/// Largest chunk of streamed data in one `Data` frame, in bytes.
pub const MAX_DATA_CHUNK: usize = 64 * 1024;
/// The least `max_message` a node announces for its mailboxes and the services of its
/// applications: messages and objects up to this size may be sent before the answer to an
/// opening (pipelined after it), when the opener cannot know the acceptor's limit yet.
pub const EARLY_MESSAGE_MAX: usize = 1024;
/// Payload bytes an opener sends in all before the answer to its opening, at most: a refused
/// stream wastes no more.
pub const EARLY_BYTES: usize = 16 * 1024;
/// Longest varint encoding.
pub const MAX_VARINT_LEN: usize = 10;
/// Body length of the longest `Open` frame (longest `first_seq` varint).
const MAX_OPEN_LEN: usize = 1 + 2 * ADDRESS_CORE_LEN + 8 + MAX_VARINT_LEN;
/// Body length of the longest `Close` frame (longest code varint, longest reason).
const MAX_CLOSE_LEN: usize = 1 + MAX_VARINT_LEN + MAX_REASON_LEN;
/// Largest body of any frame that is not a message: the longest `Close` (267 bytes).
pub const MAX_CONTROL_FRAME_LEN: usize = if MAX_OPEN_LEN > MAX_CLOSE_LEN {
    MAX_OPEN_LEN
} else {
    MAX_CLOSE_LEN
};

/// Body length of the longest `OPEN_CAP` frame: two capability fields of
/// [`MAX_CAP_LEN`](crate::address::MAX_CAP_LEN) bytes with their 2-byte length varints, the
/// epoch and the longest `first_seq` (1259 bytes).
const MAX_OPEN_CAP_LEN: usize = 1 + 2 * (2 + MAX_CAP_LEN) + 8 + MAX_VARINT_LEN;
/// Largest body of an opening frame (and of a lookup's answer) once frames carrying
/// capability fields (PROTOCOL.md §4.11) are understood: the longest `OPEN_CAP`, 1259 bytes.
/// Acceptors read openings, and openers read lookup answers, with this bound.
pub const MAX_OPENING_FRAME_LEN: usize = if MAX_OPEN_CAP_LEN > MAX_CONTROL_FRAME_LEN {
    MAX_OPEN_CAP_LEN
} else {
    MAX_CONTROL_FRAME_LEN
};

/// A reason code carried by [`Frame::Close`] and by QUIC stream resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u64);

impl ErrorCode {
    /// Normal end: the stream was idle or the conversation is over. Also the reset code of a
    /// stream its opener gives up while the conversation run goes on.
    pub const DONE: Self = Self(0);
    /// The target mailbox does not exist or was closed (its address is revoked).
    pub const NO_SUCH_MAILBOX: Self = Self(1);
    /// The target address's signature is invalid.
    pub const FORGED: Self = Self(2);
    /// The target address has expired.
    pub const EXPIRED: Self = Self(3);
    /// The target address names another node.
    pub const WRONG_NODE: Self = Self(4);
    /// A message exceeded the receiver's maximum message size.
    pub const TOO_LARGE: Self = Self(5);
    /// The peer broke the protocol (malformed or unexpected frame).
    pub const PROTOCOL: Self = Self(6);
    /// The node is shutting down.
    pub const SHUTTING_DOWN: Self = Self(7);
    /// A limit was reached (streams, conversations, buffered bytes).
    pub const LIMIT: Self = Self(8);
    /// The `from` address does not belong to the peer that sent it.
    pub const FROM_MISMATCH: Self = Self(9);
    /// The peer did not complete the opening in time, or stopped reading for `send_timeout`.
    pub const TIMEOUT: Self = Self(10);
    /// Stream reset/stop code: this node does not admit the peer that opened the stream.
    pub const NOT_ADMITTED: Self = Self(11);
    /// No service of that name is registered (or the mailbox accepts no conversations).
    pub const NO_SUCH_SERVICE: Self = Self(12);
    /// The service does not allow the peer that opened the conversation.
    pub const NOT_ALLOWED: Self = Self(13);
    /// Stream reset/stop code: the side that opened the conversation gave it up (cancelled).
    pub const CANCELLED: Self = Self(14);
    /// The service's handler failed (reported in a `Fail` frame, or as a reset code when the
    /// handler ended without answering).
    pub const HANDLER_FAILED: Self = Self(15);
    /// The receiver could not store the messages of a durable mailbox; the sender retries.
    pub const STORE_FAILED: Self = Self(16);
    /// The grant of the target address was revoked (or was never granted): the address and
    /// everything derived from it are void. Also ends streams opened under it. Final.
    pub const REVOKED: Self = Self(17);
    /// A caveat of the target address forbids this use: another holder node, another
    /// service, a service-only address used for messages, or a caveat kind the node does not
    /// know. Final.
    pub const CAVEAT: Self = Self(18);
    /// A counting caveat of the target address (at most N messages) is used up. Final.
    pub const EXHAUSTED: Self = Self(19);
}

/// Why a node refuses an address presented to it (docs/PROTOCOL.md §4.9): the four refusals
/// and their wire codes, in one table for every stream kind that presents addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The mailbox does not exist or was closed.
    NoSuchMailbox,
    /// The signature does not verify.
    Forged,
    /// The address expired.
    Expired,
    /// The address names another node.
    WrongNode,
    /// The address's grant was revoked.
    Revoked,
    /// A caveat of the address forbids this use.
    Caveat,
    /// A counting caveat of the address is used up.
    Exhausted,
}

impl Refusal {
    /// Its wire code.
    pub const fn code(self) -> ErrorCode {
        match self {
            Self::NoSuchMailbox => ErrorCode::NO_SUCH_MAILBOX,
            Self::Forged => ErrorCode::FORGED,
            Self::Expired => ErrorCode::EXPIRED,
            Self::WrongNode => ErrorCode::WRONG_NODE,
            Self::Revoked => ErrorCode::REVOKED,
            Self::Caveat => ErrorCode::CAVEAT,
            Self::Exhausted => ErrorCode::EXHAUSTED,
        }
    }

    /// The refusal a wire code stands for, if it stands for one.
    pub const fn from_code(code: ErrorCode) -> Option<Self> {
        match code {
            ErrorCode::NO_SUCH_MAILBOX => Some(Self::NoSuchMailbox),
            ErrorCode::FORGED => Some(Self::Forged),
            ErrorCode::EXPIRED => Some(Self::Expired),
            ErrorCode::WRONG_NODE => Some(Self::WrongNode),
            ErrorCode::REVOKED => Some(Self::Revoked),
            ErrorCode::CAVEAT => Some(Self::Caveat),
            ErrorCode::EXHAUSTED => Some(Self::Exhausted),
            _ => None,
        }
    }
}

impl From<crate::address::VerifyError> for Refusal {
    fn from(error: crate::address::VerifyError) -> Self {
        match error {
            crate::address::VerifyError::WrongNode { .. } => Self::WrongNode,
            crate::address::VerifyError::Expired(_) => Self::Expired,
            crate::address::VerifyError::Forged => Self::Forged,
            crate::address::VerifyError::Caveat(_) => Self::Caveat,
            // VerifyError is non-exhaustive: a refusal this version does not name is a forgery.
            #[allow(unreachable_patterns)]
            _ => Self::Forged,
        }
    }
}

/// The opening frame of a mailbox stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The mailbox the messages are for: the capability being exercised.
    pub target: Address,
    /// The sender's mailbox: where replies go.
    pub from: Address,
    /// Identifies this run of the sender's conversation; sequence numbers restart with it.
    pub epoch: u64,
    /// Sequence number of the first message frame on this stream.
    pub first_seq: u64,
}

/// Whom a conversation is opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConverseTarget<'a> {
    /// The mailbox (or service) of a capability address.
    Address(Box<Address>),
    /// A service registered under this name on the acceptor.
    Service(&'a str),
}

/// One decoded frame, borrowing from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Opener → acceptor, first frame of a mailbox stream.
    Open(Box<Open>),
    /// Acceptor → opener: the target is valid; messages may follow.
    Accept {
        /// Largest message payload the acceptor takes, in bytes.
        max_message: u64,
    },
    /// Opener → acceptor: one message payload.
    Message(&'a [u8]),
    /// Acceptor → opener: every message with sequence number below `next_seq` was delivered.
    Ack {
        /// One past the highest delivered sequence number.
        next_seq: u64,
    },
    /// Opener → acceptor, first frame of a conversation stream.
    Converse(ConverseTarget<'a>),
    /// Opener → acceptor, first frame of a lookup: which service's address is wanted.
    Lookup(&'a str),
    /// Acceptor → opener: the address of the service looked up.
    Found(Box<Address>),
    /// Opener → acceptor, first frame of a monitor stream: the mailbox to watch.
    Monitor(Box<Address>),
    /// Either side of a conversation: one postcard-encoded object.
    Object(&'a [u8]),
    /// Either side of a conversation: one chunk of a data stream.
    Data(&'a [u8]),
    /// Either side of a conversation: the data stream is complete.
    DataEnd,
    /// Either side of a conversation: the sender gives the conversation up for this reason.
    Fail {
        /// Why.
        code: ErrorCode,
        /// Human-readable detail, at most [`MAX_REASON_LEN`] bytes.
        reason: &'a str,
    },
    /// Acceptor → opener: the stream ends for this reason; no further frames follow. (The
    /// opener ends a stream by finishing its direction, or by resetting it.)
    Close {
        /// Why.
        code: ErrorCode,
        /// Human-readable detail, at most [`MAX_REASON_LEN`] bytes.
        reason: &'a str,
    },
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream began with an unknown kind byte.
    #[error("unknown stream kind {0:#04x}")]
    UnknownStreamKind(u8),
    /// A varint is longer than 10 bytes, overflows 64 bits, or is not in its shortest form.
    #[error("malformed varint")]
    Varint,
    /// The frame's length prefix exceeds the limit for this stream.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A frame of length zero has no type byte.
    #[error("empty frame")]
    Empty,
    /// Unknown frame type byte.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The frame's fields do not fit its type.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// An address inside the frame is malformed.
    #[error("address in frame: {0}")]
    Address(#[from] AddressError),
}

/// Appends the canonical LEB128 encoding of `value`.
pub fn put_varint(out: &mut Vec<u8>, value: u64) {
    varint_bytes(value, |byte| out.push(byte));
}

/// Gives `emit` the bytes of the canonical LEB128 encoding of `value`, in order.
fn varint_bytes(mut value: u64, mut emit: impl FnMut(u8)) {
    while value >= 0x80 {
        emit((value as u8) | 0x80);
        value >>= 7;
    }
    emit(value as u8);
}

/// Number of bytes [`put_varint`] writes for `value`.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Decodes a varint at the start of `buf`: `Ok(None)` if `buf` ends inside it.
pub fn get_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value = 0u64;
    for (index, &byte) in buf.iter().enumerate().take(MAX_VARINT_LEN) {
        let group = u64::from(byte & 0x7f);
        if index == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(FrameError::Varint);
        }
        value |= group << (7 * index);
        if byte & 0x80 == 0 {
            if byte == 0 && index > 0 {
                return Err(FrameError::Varint);
            }
            return Ok(Some((value, index + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(FrameError::Varint)
    } else {
        Ok(None)
    }
}

/// Where the MESSAGE frame at the start of `buf` is, if `buf` starts with a complete one of at
/// most `max_len` bytes: the length of its header (prefix and type) and of its payload. `None`
/// for anything else (a frame not complete yet, another type, an error), which
/// [`decode_frame`] tells apart: this is the hot path of a mailbox stream, kept apart from it.
pub fn complete_message(buf: &[u8], max_len: usize) -> Option<(usize, usize)> {
    let Ok(Some((len, prefix))) = get_varint(buf) else {
        return None;
    };
    if len == 0 || len > max_len as u64 {
        return None;
    }
    // len <= max_len, which is a usize; the varint (prefix bytes) lies within `buf`.
    let len = len as usize;
    if buf.get(prefix) != Some(&tag::MESSAGE) || buf.len() - prefix < len {
        return None;
    }
    Some((prefix + 1, len - 1))
}

/// The encoded length of a MESSAGE frame carrying `payload_len` bytes, so a batch's buffer
/// is sized once rather than grown (and copied) while its frames are written.
pub fn message_frame_len(payload_len: usize) -> usize {
    varint_len(payload_len as u64 + 1) + 1 + payload_len
}

/// Appends the header of a message frame whose payload (of `payload_len` bytes) follows.
/// Lets the caller write the payload without copying it into a frame first.
pub fn put_message_header(out: &mut Vec<u8>, payload_len: usize) {
    put_varint(out, payload_len as u64 + 1);
    out.push(tag::MESSAGE);
}

/// Appends one MESSAGE frame.
pub fn put_message(out: &mut Vec<u8>, payload: &[u8]) {
    put_message_header(out, payload.len());
    out.extend_from_slice(payload);
}

/// The longest ACK frame: its length (one byte), its type, and a sequence number of up to ten.
pub const MAX_ACK_FRAME_LEN: usize = 12;

/// An ACK frame, encoded where it is made, without an allocation: a mailbox stream writes one
/// per batch it delivers. The same bytes as [`put_frame`] writes for [`Frame::Ack`].
#[derive(Debug, Clone, Copy)]
pub struct AckFrame {
    bytes: [u8; MAX_ACK_FRAME_LEN],
    len: usize,
}

impl AckFrame {
    /// The ACK of everything before `next_seq`.
    pub fn new(next_seq: u64) -> Self {
        let mut ack = Self {
            bytes: [0; MAX_ACK_FRAME_LEN],
            len: 0,
        };
        // At most 11, which is one varint byte.
        ack.push(1 + varint_len(next_seq) as u8);
        ack.push(tag::ACK);
        varint_bytes(next_seq, |byte| ack.push(byte));
        ack
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }
}

impl std::ops::Deref for AckFrame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// One frame, encoded in a vector of its own (sized for it: a short frame such as an ACK is
/// written where it is made, rather than through a buffer kept for later frames).
pub fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    put_frame(&mut out, frame);
    out
}

/// Appends one encoded frame.
pub fn put_frame(out: &mut Vec<u8>, frame: &Frame<'_>) {
    match frame {
        Frame::Open(open) => match (open.target.core_bytes(), open.from.core_bytes()) {
            (Some(target), Some(from)) => {
                let len = 1 + 2 * ADDRESS_CORE_LEN + 8 + varint_len(open.first_seq);
                put_varint(out, len as u64);
                out.push(tag::OPEN);
                out.extend_from_slice(&target);
                out.extend_from_slice(&from);
                out.extend_from_slice(&open.epoch.to_be_bytes());
                put_varint(out, open.first_seq);
            }
            _ => {
                let target = open.target.to_cap_bytes();
                let from = open.from.to_cap_bytes();
                let len = 1
                    + varint_len(target.len() as u64)
                    + target.len()
                    + varint_len(from.len() as u64)
                    + from.len()
                    + 8
                    + varint_len(open.first_seq);
                put_varint(out, len as u64);
                out.push(tag::OPEN_CAP);
                put_varint(out, target.len() as u64);
                out.extend_from_slice(&target);
                put_varint(out, from.len() as u64);
                out.extend_from_slice(&from);
                out.extend_from_slice(&open.epoch.to_be_bytes());
                put_varint(out, open.first_seq);
            }
        },
        Frame::Accept { max_message } => {
            put_varint(out, 1 + varint_len(*max_message) as u64);
            out.push(tag::ACCEPT);
            put_varint(out, *max_message);
        }
        Frame::Message(payload) => put_message(out, payload),
        Frame::Ack { next_seq } => {
            put_varint(out, 1 + varint_len(*next_seq) as u64);
            out.push(tag::ACK);
            put_varint(out, *next_seq);
        }
        Frame::Close { code, reason } => put_reason(out, tag::CLOSE, *code, reason),
        Frame::Fail { code, reason } => put_reason(out, tag::FAIL, *code, reason),
        Frame::Converse(ConverseTarget::Address(address)) => match address.core_bytes() {
            Some(core) => {
                put_varint(out, (2 + ADDRESS_CORE_LEN) as u64);
                out.push(tag::CONVERSE);
                out.push(TARGET_ADDRESS);
                out.extend_from_slice(&core);
            }
            None => {
                let cap = address.to_cap_bytes();
                put_varint(out, (2 + cap.len()) as u64);
                out.push(tag::CONVERSE);
                out.push(TARGET_CAP);
                out.extend_from_slice(&cap);
            }
        },
        Frame::Converse(ConverseTarget::Service(name)) => {
            let name = truncate_utf8(name, MAX_SERVICE_NAME_LEN);
            put_varint(out, (2 + name.len()) as u64);
            out.push(tag::CONVERSE);
            out.push(TARGET_SERVICE);
            out.extend_from_slice(name.as_bytes());
        }
        Frame::Lookup(name) => {
            let name = truncate_utf8(name, MAX_SERVICE_NAME_LEN);
            put_varint(out, (1 + name.len()) as u64);
            out.push(tag::LOOKUP);
            out.extend_from_slice(name.as_bytes());
        }
        Frame::Found(address) => put_address(out, tag::FOUND, tag::FOUND_CAP, address),
        Frame::Monitor(address) => put_address(out, tag::MONITOR, tag::MONITOR_CAP, address),
        Frame::Object(payload) => put_payload(out, tag::OBJECT, payload),
        Frame::Data(payload) => put_payload(out, tag::DATA, payload),
        Frame::DataEnd => {
            put_varint(out, 1);
            out.push(tag::DATA_END);
        }
    }
}

const TARGET_ADDRESS: u8 = 0x01;
const TARGET_SERVICE: u8 = 0x02;
const TARGET_CAP: u8 = 0x03;

/// A frame holding one address: the `ferry1` core under `core_tag`, any other address as a
/// capability field under `cap_tag`.
fn put_address(out: &mut Vec<u8>, core_tag: u8, cap_tag: u8, address: &Address) {
    match address.core_bytes() {
        Some(core) => {
            put_varint(out, (1 + ADDRESS_CORE_LEN) as u64);
            out.push(core_tag);
            out.extend_from_slice(&core);
        }
        None => {
            let cap = address.to_cap_bytes();
            put_varint(out, (1 + cap.len()) as u64);
            out.push(cap_tag);
            out.extend_from_slice(&cap);
        }
    }
}

fn put_reason(out: &mut Vec<u8>, kind: u8, code: ErrorCode, reason: &str) {
    let reason = truncate_utf8(reason, MAX_REASON_LEN);
    put_varint(out, (1 + varint_len(code.0) + reason.len()) as u64);
    out.push(kind);
    put_varint(out, code.0);
    out.extend_from_slice(reason.as_bytes());
}

fn put_payload(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    put_varint(out, payload.len() as u64 + 1);
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Appends the header of an `Object` or `Data` frame whose payload follows.
pub fn put_payload_header(out: &mut Vec<u8>, data: bool, payload_len: usize) {
    put_varint(out, payload_len as u64 + 1);
    out.push(if data { tag::DATA } else { tag::OBJECT });
}

fn decode_reason<'a>(
    fields: &'a [u8],
    frame: &'static str,
) -> Result<(ErrorCode, &'a str), FrameError> {
    let (code, used) = get_varint(fields)?.ok_or(FrameError::Malformed(frame))?;
    let reason = fields.get(used..).ok_or(FrameError::Malformed(frame))?;
    if reason.len() > MAX_REASON_LEN {
        return Err(FrameError::Malformed(frame));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| FrameError::Malformed(frame))?;
    Ok((ErrorCode(code), reason))
}

fn decode_name<'a>(bytes: &'a [u8], frame: &'static str) -> Result<&'a str, FrameError> {
    let name = std::str::from_utf8(bytes).map_err(|_| FrameError::Malformed(frame))?;
    if !valid_service_name(name) {
        return Err(FrameError::Malformed(frame));
    }
    Ok(name)
}

fn decode_core(bytes: &[u8], frame: &'static str) -> Result<Address, FrameError> {
    let core: [u8; ADDRESS_CORE_LEN] =
        bytes.try_into().map_err(|_| FrameError::Malformed(frame))?;
    Ok(Address::from_core_bytes(&core)?)
}

/// Decodes one frame at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and call again),
/// otherwise the frame and the number of bytes it took. `max_len` bounds the length prefix, so
/// a peer announcing a huge frame is refused before anything is buffered.
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some((len, prefix)) = get_varint(buf)? else {
        return Ok(None);
    };
    if len > max_len as u64 {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    // len <= max_len, which is a usize.
    let len = len as usize;
    // (Not `prefix + len`, which a caller allowing `usize::MAX` could overflow.)
    let Some(body) = buf.get(prefix..).and_then(|rest| rest.get(..len)) else {
        return Ok(None);
    };
    let (&kind, fields) = body.split_first().ok_or(FrameError::Empty)?;
    let frame = match kind {
        tag::OPEN => Frame::Open(Box::new(decode_open(fields)?)),
        tag::ACCEPT => Frame::Accept {
            max_message: exact_varint(fields, "accept")?,
        },
        tag::MESSAGE => Frame::Message(fields),
        tag::ACK => Frame::Ack {
            next_seq: exact_varint(fields, "ack")?,
        },
        tag::CLOSE => {
            let (code, reason) = decode_reason(fields, "close")?;
            Frame::Close { code, reason }
        }
        tag::FAIL => {
            let (code, reason) = decode_reason(fields, "fail")?;
            Frame::Fail { code, reason }
        }
        tag::CONVERSE => match fields.split_first() {
            Some((&TARGET_ADDRESS, core)) => Frame::Converse(ConverseTarget::Address(Box::new(
                decode_core(core, "converse")?,
            ))),
            Some((&TARGET_CAP, cap)) => Frame::Converse(ConverseTarget::Address(Box::new(
                decode_cap(cap, "converse")?,
            ))),
            Some((&TARGET_SERVICE, name)) => {
                Frame::Converse(ConverseTarget::Service(decode_name(name, "converse")?))
            }
            _ => return Err(FrameError::Malformed("converse")),
        },
        tag::LOOKUP => Frame::Lookup(decode_name(fields, "lookup")?),
        tag::FOUND => Frame::Found(Box::new(decode_core(fields, "found")?)),
        tag::MONITOR => Frame::Monitor(Box::new(decode_core(fields, "monitor")?)),
        tag::OPEN_CAP => Frame::Open(Box::new(decode_open_cap(fields)?)),
        tag::MONITOR_CAP => Frame::Monitor(Box::new(decode_cap(fields, "monitor")?)),
        tag::FOUND_CAP => Frame::Found(Box::new(decode_cap(fields, "found")?)),
        tag::OBJECT => Frame::Object(fields),
        tag::DATA => Frame::Data(fields),
        tag::DATA_END => {
            if !fields.is_empty() {
                return Err(FrameError::Malformed("data end"));
            }
            Frame::DataEnd
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    Ok(Some((frame, prefix + len)))
}

fn decode_open(fields: &[u8]) -> Result<Open, FrameError> {
    let malformed = || FrameError::Malformed("open");
    if fields.len() < 2 * ADDRESS_CORE_LEN + 8 + 1 {
        return Err(malformed());
    }
    let (target, rest) = fields
        .split_first_chunk::<ADDRESS_CORE_LEN>()
        .ok_or_else(malformed)?;
    let (from, rest) = rest
        .split_first_chunk::<ADDRESS_CORE_LEN>()
        .ok_or_else(malformed)?;
    let (epoch, rest) = rest.split_first_chunk::<8>().ok_or_else(malformed)?;
    let first_seq = exact_varint(rest, "open")?;
    Ok(Open {
        target: Address::from_core_bytes(target)?,
        from: Address::from_core_bytes(from)?,
        epoch: u64::from_be_bytes(*epoch),
        first_seq,
    })
}

/// A capability field that fills `bytes`; one that holds a `ferry1` core is not canonical
/// here (the frame with a core field says it shorter).
fn decode_cap(bytes: &[u8], frame: &'static str) -> Result<Address, FrameError> {
    let address = Address::from_cap_bytes(bytes)?;
    if address.is_plain() {
        return Err(FrameError::Malformed(frame));
    }
    Ok(address)
}

/// `target_len:varint | target | from_len:varint | from | epoch:u64be | first_seq:varint`.
fn decode_open_cap(fields: &[u8]) -> Result<Open, FrameError> {
    let malformed = || FrameError::Malformed("open");
    let field = |rest: &mut &[u8]| -> Result<Address, FrameError> {
        let (len, used) = get_varint(rest)?.ok_or_else(malformed)?;
        let len = usize::try_from(len).map_err(|_| malformed())?;
        if len > MAX_CAP_LEN {
            return Err(malformed());
        }
        let bytes = rest
            .get(used..)
            .and_then(|tail| tail.get(..len))
            .ok_or_else(malformed)?;
        *rest = rest.get(used + len..).ok_or_else(malformed)?;
        Ok(Address::from_cap_bytes(bytes)?)
    };
    let mut rest = fields;
    let target = field(&mut rest)?;
    let from = field(&mut rest)?;
    // The frame with two cores says it shorter.
    if target.is_plain() && from.is_plain() {
        return Err(malformed());
    }
    let (epoch, rest) = rest.split_first_chunk::<8>().ok_or_else(malformed)?;
    let first_seq = exact_varint(rest, "open")?;
    Ok(Open {
        target,
        from,
        epoch: u64::from_be_bytes(*epoch),
        first_seq,
    })
}

/// A varint that must fill `fields` exactly.
fn exact_varint(fields: &[u8], frame: &'static str) -> Result<u64, FrameError> {
    match get_varint(fields)? {
        Some((value, used)) if used == fields.len() => Ok(value),
        _ => Err(FrameError::Malformed(frame)),
    }
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn every_refusal_round_trips_through_its_code() {
        for refusal in [
            Refusal::NoSuchMailbox,
            Refusal::Forged,
            Refusal::Expired,
            Refusal::WrongNode,
        ] {
            assert_eq!(Refusal::from_code(refusal.code()), Some(refusal));
        }
        assert_eq!(Refusal::from_code(ErrorCode::PROTOCOL), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_frame_made_without_allocation_is_the_encoded_ack() {
        for next_seq in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            assert_eq!(
                &AckFrame::new(next_seq)[..],
                &encode(&Frame::Ack { next_seq })[..],
                "next_seq {next_seq}"
            );
        }
        assert_eq!(AckFrame::new(u64::MAX).len(), MAX_ACK_FRAME_LEN);
    }
    use crate::address::MailboxId;
    use crate::identity::SecretKey;
    use proptest::prelude::*;

    #[test]
    fn a_message_frame_is_as_long_as_message_frame_len_says() {
        // Around each step of the length's varint (7 bits per byte, the tag counted in).
        for len in [
            0, 1, 125, 126, 127, 16_382, 16_383, 16_384, 2_097_150, 2_097_151,
        ] {
            let payload = vec![7u8; len];
            let mut out = Vec::new();
            put_frame(&mut out, &Frame::Message(&payload));
            assert_eq!(out.len(), message_frame_len(len), "payload of {len} bytes");
        }
    }

    fn sample_frames() -> Vec<Frame<'static>> {
        let key = SecretKey::from_bytes(&[3; 32]);
        let open = Open {
            target: Address::mint(&key, MailboxId(1), Some(1_900_000_000), vec![]),
            from: Address::mint(&key, MailboxId(2), None, vec![]),
            epoch: 0xdead_beef,
            first_seq: 300,
        };
        vec![
            Frame::Open(Box::new(open)),
            Frame::Accept {
                max_message: 1 << 20,
            },
            Frame::Message(b"hello"),
            Frame::Message(b""),
            Frame::Ack { next_seq: 0 },
            Frame::Ack { next_seq: u64::MAX },
            Frame::Close {
                code: ErrorCode::NO_SUCH_MAILBOX,
                reason: "mailbox closed",
            },
            Frame::Converse(ConverseTarget::Address(Box::new(Address::mint(
                &key,
                MailboxId(9),
                None,
                vec![],
            )))),
            Frame::Converse(ConverseTarget::Service("echo.v1")),
            Frame::Lookup("logger"),
            Frame::Found(Box::new(Address::mint(&key, MailboxId(10), None, vec![]))),
            Frame::Monitor(Box::new(Address::mint(&key, MailboxId(11), None, vec![]))),
            Frame::Object(b"\x01\x02"),
            Frame::Data(b"chunk"),
            Frame::DataEnd,
            Frame::Fail {
                code: ErrorCode::HANDLER_FAILED,
                reason: "boom",
            },
        ]
        .into_iter()
        .chain(capability_frames())
        .collect()
    }

    /// The frames of addresses with grants or caveats (PROTOCOL.md §4.11).
    fn capability_frames() -> Vec<Frame<'static>> {
        let key = SecretKey::from_bytes(&[3; 32]);
        let granted =
            Address::mint_grant(&key, MailboxId(1), crate::address::GrantId(5), None, vec![]);
        let attenuated = granted
            .attenuate()
            .max_messages(3)
            .service("echo")
            .build()
            .unwrap();
        let plain = Address::mint(&key, MailboxId(2), None, vec![]);
        // The longest capability field, on both sides of an OPEN_CAP.
        let mut longest = granted.clone();
        for kind in 0x40..0x48 {
            longest = longest
                .with_caveats(&[crate::caveat::Caveat::Unknown {
                    kind,
                    value: vec![7; 64],
                }])
                .unwrap();
        }
        vec![
            Frame::Open(Box::new(Open {
                target: attenuated.clone(),
                from: plain.clone(),
                epoch: 1,
                first_seq: 0,
            })),
            Frame::Open(Box::new(Open {
                target: plain,
                from: granted.clone(),
                epoch: 2,
                first_seq: 7,
            })),
            Frame::Open(Box::new(Open {
                target: longest.clone(),
                from: longest.clone(),
                epoch: u64::MAX,
                first_seq: u64::MAX,
            })),
            Frame::Converse(ConverseTarget::Address(Box::new(attenuated.clone()))),
            Frame::Converse(ConverseTarget::Address(Box::new(granted.clone()))),
            Frame::Found(Box::new(granted)),
            Frame::Monitor(Box::new(attenuated)),
            Frame::Monitor(Box::new(longest)),
        ]
    }

    #[test]
    fn the_longest_opening_is_max_opening_frame_len() {
        let longest = &capability_frames()[2];
        let mut buf = Vec::new();
        put_frame(&mut buf, longest);
        let (len, prefix) = get_varint(&buf).unwrap().unwrap();
        assert_eq!(len as usize, MAX_OPENING_FRAME_LEN);
        assert_eq!(buf.len(), prefix + MAX_OPENING_FRAME_LEN);
        assert_eq!(MAX_OPENING_FRAME_LEN, 1259);
        // A ferry1 core in a capability frame is not canonical.
        let key = SecretKey::from_bytes(&[3; 32]);
        let plain = Address::mint(&key, MailboxId(2), None, vec![]);
        // length 114 = type + 0x01 + core.
        let mut monitor = vec![(2 + ADDRESS_CORE_LEN) as u8, tag::MONITOR_CAP];
        monitor.extend_from_slice(&plain.to_cap_bytes());
        assert_eq!(
            decode_frame(&monitor, MAX_OPENING_FRAME_LEN),
            Err(FrameError::Malformed("monitor"))
        );
    }

    #[test]
    fn frames_round_trip() {
        for frame in sample_frames() {
            let mut buf = Vec::new();
            put_frame(&mut buf, &frame);
            let (decoded, used) = decode_frame(&buf, MAX_OPENING_FRAME_LEN).unwrap().unwrap();
            assert_eq!(used, buf.len());
            assert_eq!(decoded, frame);
        }
    }

    #[test]
    fn every_truncation_is_incomplete_never_an_error() {
        for frame in sample_frames() {
            let mut buf = Vec::new();
            put_frame(&mut buf, &frame);
            for cut in 0..buf.len() {
                assert_eq!(
                    decode_frame(&buf[..cut], MAX_OPENING_FRAME_LEN),
                    Ok(None),
                    "{frame:?} at {cut}"
                );
            }
        }
    }

    #[test]
    fn longest_close_fits_the_control_limit() {
        let reason = "x".repeat(MAX_REASON_LEN);
        let mut buf = Vec::new();
        put_frame(
            &mut buf,
            &Frame::Close {
                code: ErrorCode(u64::MAX),
                reason: &reason,
            },
        );
        let (frame, used) = decode_frame(&buf, MAX_CONTROL_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert!(matches!(frame, Frame::Close { reason: r, .. } if r.len() == MAX_REASON_LEN));
    }

    #[test]
    fn huge_length_prefix_is_refused_before_buffering() {
        let mut buf = Vec::new();
        put_varint(&mut buf, 4 << 30);
        assert_eq!(
            decode_frame(&buf, 1 << 20),
            Err(FrameError::TooLarge {
                len: 4 << 30,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn non_canonical_varints_are_refused() {
        assert_eq!(get_varint(&[0x80, 0x00]), Err(FrameError::Varint));
        assert_eq!(get_varint(&[0xff; 11]), Err(FrameError::Varint));
        assert_eq!(
            get_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(FrameError::Varint)
        );
        assert_eq!(
            get_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Ok(Some((u64::MAX, 10)))
        );
    }

    proptest! {
        #[test]
        fn varint_round_trip(value in any::<u64>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            prop_assert_eq!(buf.len(), varint_len(value));
            prop_assert_eq!(get_varint(&buf), Ok(Some((value, buf.len()))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_frame(&bytes, 4096);
        }

        /// The mailbox stream's shortcut finds exactly the MESSAGE frames the decoder finds.
        #[test]
        fn the_message_shortcut_agrees_with_the_decoder(
            payload in proptest::collection::vec(any::<u8>(), 0..80),
            cut in 0usize..90,
            mangle in proptest::option::of((0usize..4, any::<u8>())),
            max_len in 0usize..100,
        ) {
            let mut bytes = Vec::new();
            put_message(&mut bytes, &payload);
            bytes.extend_from_slice(b"rest");
            if let Some((at, byte)) = mangle {
                if let Some(place) = bytes.get_mut(at) {
                    *place = byte;
                }
            }
            bytes.truncate(cut);
            let decoded = match decode_frame(&bytes, max_len) {
                Ok(Some((Frame::Message(found), used))) => Some((used - found.len(), found.len())),
                _ => None,
            };
            prop_assert_eq!(complete_message(&bytes, max_len), decoded);
        }
    }
}

/// Every frame type cut at every byte offset (issue 7: no panic on input). At the decode
/// level a prefix of a frame is "incomplete" or a typed error, never a panic and never a
/// different frame; a frame whose length prefix agrees with cut-short (or lengthened) fields
/// is a typed error unless the shorter fields are themselves a valid frame of that type.
#[cfg(test)]
mod truncation {
    use super::*;
    use crate::address::MailboxId;
    use crate::identity::SecretKey;

    /// One frame of every type, each in its shortest and longest form where that differs.
    fn every_frame_type(reason: &str, name: &str) -> Vec<Frame<'static>> {
        let key = SecretKey::from_bytes(&[5; 32]);
        let address = |mailbox| Address::mint(&key, MailboxId(mailbox), Some(u64::MAX), vec![]);
        let reason: &'static str = Box::leak(reason.to_owned().into_boxed_str());
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let mut frames = Vec::new();
        for value in [0, u64::MAX] {
            frames.push(Frame::Open(Box::new(Open {
                target: address(1),
                from: address(2),
                epoch: value,
                first_seq: value,
            })));
            frames.push(Frame::Accept { max_message: value });
            frames.push(Frame::Ack { next_seq: value });
            frames.push(Frame::Close {
                code: ErrorCode(value),
                reason,
            });
            frames.push(Frame::Fail {
                code: ErrorCode(value),
                reason,
            });
        }
        frames.extend([
            Frame::Message(b""),
            Frame::Message(b"\x05hello"),
            Frame::Converse(ConverseTarget::Address(Box::new(address(3)))),
            Frame::Converse(ConverseTarget::Service(name)),
            Frame::Lookup(name),
            Frame::Found(Box::new(address(4))),
            Frame::Monitor(Box::new(address(5))),
            Frame::Object(b""),
            Frame::Object(b"\x01\x02\x03"),
            Frame::Data(b"chunk"),
            Frame::DataEnd,
        ]);
        frames
    }

    fn frames() -> Vec<Frame<'static>> {
        let mut frames = every_frame_type("", "a");
        // Longest reason (with a multi-byte character at the end) and longest service name.
        let long_reason = format!("{}é", "r".repeat(MAX_REASON_LEN - 2));
        frames.extend(every_frame_type(
            &long_reason,
            &"n".repeat(MAX_SERVICE_NAME_LEN),
        ));
        frames
    }

    /// Whether a frame of this type has a fixed layout (no field of variable length that a
    /// cut could leave valid).
    fn fixed_layout(frame: &Frame<'_>) -> bool {
        matches!(
            frame,
            Frame::Open(_)
                | Frame::Converse(ConverseTarget::Address(_))
                | Frame::Found(_)
                | Frame::Monitor(_)
                | Frame::DataEnd
        )
    }

    #[test]
    fn every_prefix_with_every_limit_is_incomplete_or_too_large() {
        let limits = [0, 1, 11, MAX_CONTROL_FRAME_LEN, (1 << 20) + 1, usize::MAX];
        for frame in frames() {
            let bytes = encode(&frame);
            let (len, prefix) = get_varint(&bytes).unwrap().unwrap();
            for limit in limits {
                for cut in 0..bytes.len() {
                    let result = decode_frame(&bytes[..cut], limit);
                    if cut >= prefix && len > limit as u64 {
                        assert_eq!(
                            result,
                            Err(FrameError::TooLarge { len, max: limit }),
                            "{frame:?} at {cut}, limit {limit}"
                        );
                    } else {
                        assert_eq!(result, Ok(None), "{frame:?} at {cut}, limit {limit}");
                    }
                }
                let whole = decode_frame(&bytes, limit);
                if len > limit as u64 {
                    assert!(matches!(whole, Err(FrameError::TooLarge { .. })));
                } else {
                    assert_eq!(whole, Ok(Some((frame.clone(), bytes.len()))));
                }
            }
        }
    }

    #[test]
    fn fields_cut_short_or_lengthened_are_typed_errors() {
        for frame in frames() {
            let bytes = encode(&frame);
            let (_, prefix) = get_varint(&bytes).unwrap().unwrap();
            let body = &bytes[prefix..];
            // body = type byte | fields: keep the type, cut the fields at every offset, and
            // write a length prefix that agrees.
            for cut in 0..body.len() {
                let mut cut_short = Vec::new();
                put_varint(&mut cut_short, cut as u64);
                cut_short.extend_from_slice(&body[..cut]);
                match decode_frame(&cut_short, usize::MAX) {
                    Ok(Some((decoded, used))) => {
                        assert!(!fixed_layout(&frame), "{frame:?} cut at {cut}: {decoded:?}");
                        assert_eq!(used, cut_short.len());
                        assert_eq!(encode(&decoded), cut_short, "{frame:?} cut at {cut}");
                    }
                    Ok(None) => panic!("{frame:?} cut at {cut}: complete, yet incomplete"),
                    Err(FrameError::Empty) => assert_eq!(cut, 0),
                    Err(FrameError::Malformed(_) | FrameError::Address(_)) => {}
                    Err(other) => panic!("{frame:?} cut at {cut}: {other:?}"),
                }
            }
            // One byte more than the layout: trailing bytes never extend a frame in place.
            for extra in [0x00u8, 0x01, 0xff] {
                let mut longer = Vec::new();
                put_varint(&mut longer, body.len() as u64 + 1);
                longer.extend_from_slice(body);
                longer.push(extra);
                match decode_frame(&longer, usize::MAX) {
                    Ok(Some((decoded, _))) => {
                        assert!(!fixed_layout(&frame), "{frame:?} + {extra}: {decoded:?}");
                        assert_eq!(encode(&decoded), longer);
                    }
                    Err(FrameError::Malformed(_)) => {}
                    other => panic!("{frame:?} + {extra}: {other:?}"),
                }
            }
        }
    }

    /// Regression: with no limit (`usize::MAX`), a length prefix near 2^64 made the end of the
    /// frame, `prefix + len`, overflow (a panic in debug builds) instead of "incomplete".
    #[test]
    fn length_prefix_near_the_top_of_the_range_does_not_overflow() {
        for len in [u64::MAX, u64::MAX - 9, u64::MAX - 10, 1 << 63] {
            let mut buf = Vec::new();
            put_varint(&mut buf, len);
            buf.extend_from_slice(&[tag::MESSAGE, 1, 2, 3]);
            assert_eq!(decode_frame(&buf, usize::MAX), Ok(None), "{len}");
        }
    }

    #[test]
    fn every_stream_kind_byte() {
        for byte in 0..=u8::MAX {
            match StreamKind::from_byte(byte) {
                Ok(kind) => assert_eq!(kind as u8, byte),
                Err(error) => assert_eq!(error, FrameError::UnknownStreamKind(byte)),
            }
        }
    }
}
