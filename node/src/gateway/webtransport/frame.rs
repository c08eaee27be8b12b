//! The framing of WebTransport streams (docs/GATEWAY.md §13.3): stream types, the frames on
//! them (kind, length, body) read and written, and the reset codes of §13.8. Pure decoding
//! (`decode_frame`, `check_frame_header`) for fuzzing; the async readers and writers on top.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use axum::extract::ws::Message;
use bytes::Bytes;
use web_transport_quinn::{RecvStream, SendStream};

use crate::gateway::protocol::Encoded;

/// First byte of the control stream (bidirectional, opened by the client first).
pub const STREAM_CONTROL: u8 = 0x00;
/// First byte of a request stream (bidirectional, opened by the client: one per conversation
/// target or call; the answers to its requests come back on it).
pub const STREAM_REQUESTS: u8 = 0x01;
/// First byte of a delivery stream (unidirectional, opened by the gateway: the messages of one
/// source — a sender's conversation, a channel, the user, pushes — in id order).
pub const STREAM_DELIVERIES: u8 = 0x02;

/// A frame's kind byte: a text frame (a JSON object, UTF-8).
pub const FRAME_TEXT: u8 = 0x00;
/// A frame's kind byte: a binary frame (`header_len` | header | payload, docs/GATEWAY.md §3).
pub const FRAME_BINARY: u8 = 0x01;

/// Stream error code (RESET_STREAM / STOP_SENDING) for a stream beyond the limit.
pub const RESET_TOO_MANY_STREAMS: u32 = 0x10;
/// Stream error code for a stream whose first byte is not a stream type of the client's.
pub const RESET_UNKNOWN_STREAM: u32 = 0x11;

/// Stream error code for a request stream the client did not read for `gateway_write_timeout`.
pub const RESET_STUCK: u32 = 0x12;

/// How long a client has to write the first byte of a stream it opened.
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why reading a connection's frames failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum WireError {
    /// A frame larger than `gateway_max_message_size` (the connection closes with 1009).
    #[error("frame of {0} bytes exceeds the message size limit")]
    TooBig(usize),
    /// A frame of an unknown kind, or a text frame that is not UTF-8 (closes with 4400).
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The stream or the session failed.
    #[error("stream failed: {0}")]
    Stream(String),
}

impl crate::gateway::connection::WireFault for WireError {
    fn fault(&self) -> crate::gateway::connection::ReadFault {
        use crate::gateway::connection::ReadFault;
        match self {
            Self::TooBig(_) => ReadFault::TooBig,
            Self::Malformed(why) => ReadFault::Malformed(why),
            Self::Stream(_) => ReadFault::Gone,
        }
    }
}

/// The header of a frame on a stream: kind (1 byte), then the length of its body (u32
/// big-endian). Data streams' pieces (§13.11) use the same layout.
pub(super) fn header(kind: u8, len: usize) -> [u8; 5] {
    let [a, b, c, d] = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [kind, a, b, c, d]
}

/// The header of `frame`.
fn frame_header(frame: &Encoded) -> [u8; 5] {
    match frame {
        Encoded::Text(text) => header(FRAME_TEXT, text.len()),
        Encoded::Binary(bytes) => header(FRAME_BINARY, bytes.len()),
    }
}

/// A frame's kind, body, and length in all.
type Split<'a> = (u8, &'a [u8], usize);

/// The whole frame (`kind | length u32 BE | body`) at the start of `bytes`: its kind, its body
/// and its length in all, or `Ok(None)` while it is incomplete. `limit` gives the largest body
/// of a kind (or refuses the kind), checked as soon as the length is there.
pub(super) fn split_frame<E>(
    bytes: &[u8],
    limit: impl Fn(u8) -> Result<usize, E>,
    too_big: impl Fn(usize) -> E,
) -> Result<Option<Split<'_>>, E> {
    let Some(&kind) = bytes.first() else {
        return Ok(None);
    };
    let max = limit(kind)?;
    let Some(len) = bytes.get(1..5) else {
        return Ok(None);
    };
    let mut be = [0u8; 4];
    be.copy_from_slice(len);
    let len = u32::from_be_bytes(be) as usize;
    if len > max {
        return Err(too_big(len));
    }
    Ok(bytes.get(5..5 + len).map(|body| (kind, body, 5 + len)))
}

pub(super) async fn write_frame(send: &mut SendStream, frame: Encoded) -> Result<(), WireError> {
    let header = frame_header(&frame);
    let body = match frame {
        Encoded::Text(text) => Bytes::from(text.into_bytes()),
        Encoded::Binary(bytes) => Bytes::from(bytes),
    };
    let mut chunks = [Bytes::copy_from_slice(&header), body];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|e| WireError::Stream(e.to_string()))
}

/// A frame's header (kind, length) checked against the limit before its body is read: the
/// length of its body. Shared by the reader below and the fuzz target.
pub fn check_frame_header(header: [u8; 5], max: usize) -> Result<(u8, usize), FrameError> {
    let [kind, a, b, c, d] = header;
    if kind != FRAME_TEXT && kind != FRAME_BINARY {
        return Err(FrameError::UnknownKind(kind));
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > max {
        return Err(FrameError::TooBig(len));
    }
    Ok((kind, len))
}

/// Why a frame of a stream cannot be read (docs/GATEWAY.md §13.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The kind byte is neither [`FRAME_TEXT`] nor [`FRAME_BINARY`] (4400).
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The length is beyond `gateway_max_message_size` (1009).
    #[error("frame of {0} bytes exceeds the message size limit")]
    TooBig(usize),
    /// A text frame that is not UTF-8 (4400).
    #[error("text frame that is not UTF-8")]
    NotUtf8,
}

/// Decodes one whole frame at the start of `bytes`: the frame (as the WebSocket message it
/// stands for) and its length in bytes, or `Ok(None)` when `bytes` holds only a part of it.
/// What the gateway does on a stream, for a buffer (the fuzz target's way in).
pub fn decode_frame(bytes: &[u8], max: usize) -> Result<Option<(Message, usize)>, FrameError> {
    let limit = |kind| match kind {
        FRAME_TEXT | FRAME_BINARY => Ok(max),
        other => Err(FrameError::UnknownKind(other)),
    };
    let Some((kind, body, used)) = split_frame(bytes, limit, FrameError::TooBig)? else {
        return Ok(None);
    };
    Ok(Some((frame_message(kind, body.to_vec())?, used)))
}

fn frame_message(kind: u8, body: Vec<u8>) -> Result<Message, FrameError> {
    if kind == FRAME_TEXT {
        String::from_utf8(body)
            .map(|text| Message::Text(text.into()))
            .map_err(|_| FrameError::NotUtf8)
    } else {
        Ok(Message::Binary(body.into()))
    }
}

impl From<FrameError> for WireError {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::TooBig(len) => Self::TooBig(len),
            FrameError::UnknownKind(_) => Self::Malformed("unknown frame kind"),
            FrameError::NotUtf8 => Self::Malformed("text frame that is not UTF-8"),
        }
    }
}

/// Reads one frame; `None` at a clean end of the stream between frames.
pub(super) async fn read_frame(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<Message>, WireError> {
    let mut header = [0u8; 5];
    match recv.read(&mut header[..1]).await {
        Ok(None) => return Ok(None),
        Ok(Some(_)) => {}
        Err(error) => return Err(WireError::Stream(error.to_string())),
    }
    recv.read_exact(&mut header[1..])
        .await
        .map_err(|e| WireError::Stream(e.to_string()))?;
    let (kind, len) = check_frame_header(header, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| WireError::Stream(e.to_string()))?;
    Ok(Some(frame_message(kind, body)?))
}
