//! Conversations (HBI's): one bidirectional QUIC stream between two nodes carrying objects and
//! streamed data in both directions, so a slow or long conversation never stalls another.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ConversationError;
use crate::frame::{self, ErrorCode, Frame};
use crate::identity::NodeId;

/// One conversation on its own QUIC stream.
///
/// Both sides may send and receive objects ([`send_obj`](Self::send_obj),
/// [`recv_obj`](Self::recv_obj)) and streams of bytes ([`send_data`](Self::send_data),
/// [`recv_data`](Self::recv_data)) in any order they agree on. [`finish`](Self::finish) ends
/// this side; the peer then gets [`ConversationError::Ended`]. Dropping a conversation that
/// is not finished resets it: the peer gets [`ConversationError::Reset`] with code
/// [`ErrorCode::CANCELLED`] if the opener dropped it (so the service can stop working), or
/// [`ErrorCode::HANDLER_FAILED`] if the service did (e.g. its handler returned or panicked
/// without answering).
///
/// Sizes: both sides announce the largest object they read (their `max_message_size`) when
/// the conversation opens. An object larger than the peer's limit is refused locally with
/// [`ConversationError::TooLarge`] and nothing is sent; the conversation stays usable.
///
/// Reading errors leave the conversation in a defined state: asking for an object where the
/// peer sent data (or the other way round) gives [`ConversationError::Unexpected`] and leaves
/// that frame unread, for the matching method; an object larger than this side's limit (which
/// only a peer ignoring the announced limit sends) is read past, without being buffered, and
/// reported once as [`ConversationError::TooLarge`], the next read continuing after it; a
/// protocol violation ([`ConversationError::Protocol`]) is final, every later read reports it
/// again. So is a frame the peer began but did not complete within the node's
/// `frame_timeout` of waiting for it: the reader gets `Protocol`, and the stream is stopped.
pub struct Conversation {
    peer: NodeId,
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    pub(crate) buf: BytesMut,
    /// Largest object this side reads: its own `max_message_size`.
    max_recv: usize,
    /// Largest object the peer reads, as it announced.
    max_send: usize,
    /// Bytes of an oversized object still to be read past, and that object's size.
    skip: Option<(usize, usize)>,
    write_buf: Vec<u8>,
    /// This side finished (or failed): nothing more may be sent.
    finished: bool,
    /// The peer finished its side and everything it sent was read.
    ended: bool,
    /// Whether this side opened the conversation: dropping it unfinished then means
    /// "cancelled"; on the accepting side it means "the handler failed".
    opened_here: bool,
    /// How long a begun frame may take to complete, in time spent waiting for it.
    frame_timeout: std::time::Duration,
    /// Time spent waiting for the rest of the frame the buffer holds the start of.
    frame_waited: std::time::Duration,
    /// A conversation the peer opened counts against the peer's stream credit while it lives.
    _credit: Option<crate::net::limits::OpenStream>,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("peer", &self.peer)
            .field("stream", &self.send.id())
            .finish()
    }
}

fn code(code: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u64(code.0).unwrap_or(quinn::VarInt::MAX)
}

fn write_error(error: quinn::WriteError) -> ConversationError {
    match error {
        quinn::WriteError::Stopped(code) => ConversationError::Reset(code.into_inner()),
        quinn::WriteError::ConnectionLost(error) => ConversationError::ConnectionLost(error),
        quinn::WriteError::ClosedStream => ConversationError::Finished,
        other => ConversationError::Protocol(other.to_string()),
    }
}

fn read_error(error: quinn::ReadError) -> ConversationError {
    match error {
        quinn::ReadError::Reset(code) => ConversationError::Reset(code.into_inner()),
        quinn::ReadError::ConnectionLost(error) => ConversationError::ConnectionLost(error),
        other => ConversationError::Protocol(other.to_string()),
    }
}

/// What the next frame of the peer is, with its payload copied out of the read buffer.
enum Incoming {
    Object(Bytes),
    Data(Bytes),
    DataEnd,
}

/// What a read asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Object,
    Data,
}

impl Conversation {
    /// A conversation whose objects are limited to `max_object` bytes both ways, until
    /// [`with_peer_limit`](Self::with_peer_limit) sets what the peer announced.
    pub(crate) fn new(
        peer: NodeId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        buf: BytesMut,
        max_object: usize,
        opened_here: bool,
    ) -> Self {
        Self {
            peer,
            send,
            recv,
            buf,
            max_recv: max_object,
            max_send: max_object,
            skip: None,
            write_buf: Vec::new(),
            finished: false,
            ended: false,
            opened_here,
            frame_timeout: crate::config::NodeConfig::default().frame_timeout,
            frame_waited: std::time::Duration::ZERO,
            _credit: None,
        }
    }

    /// Counts this conversation, which the peer opened, against the peer's stream credit
    /// until it is dropped.
    pub(crate) fn with_credit(mut self, in_use: crate::net::limits::OpenStream) -> Self {
        self._credit = Some(in_use);
        self
    }

    /// Sets how long a frame the peer began may take to complete (the node's
    /// `frame_timeout`).
    pub(crate) fn with_frame_timeout(mut self, frame_timeout: std::time::Duration) -> Self {
        self.frame_timeout = frame_timeout;
        self
    }

    /// Sets the largest object the peer reads, as it announced (`max_message` of its
    /// `Accept`).
    pub(crate) fn with_peer_limit(mut self, max_message: u64) -> Self {
        self.max_send = usize::try_from(max_message).unwrap_or(usize::MAX);
        self
    }

    /// Gives the conversation up at once with `code`, in both directions.
    pub(crate) fn abandon(mut self, why: ErrorCode) {
        let _ = self.send.reset(code(why));
        let _ = self.recv.stop(code(why));
        self.finished = true;
        self.ended = true;
    }

    /// Ends a conversation whose exchange is complete (a lookup's answer was read): finishes
    /// this side and drops the rest without a cancellation.
    pub(crate) fn close_quietly(mut self) {
        let _ = self.send.finish();
        self.finished = true;
        self.ended = true;
    }

    /// The node on the other side, as proven by the TLS handshake.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Sends one object (postcard-encoded). Fails with [`ConversationError::TooLarge`], sending
    /// nothing, if it is larger than the peer announced it reads.
    pub async fn send_obj<T: Serialize + ?Sized>(
        &mut self,
        object: &T,
    ) -> Result<(), ConversationError> {
        let encoded = postcard::to_allocvec(object).map_err(ConversationError::Encode)?;
        self.send_encoded(&encoded).await
    }

    pub(crate) async fn send_encoded(&mut self, encoded: &[u8]) -> Result<(), ConversationError> {
        if encoded.len() > self.max_send {
            return Err(ConversationError::TooLarge {
                size: encoded.len(),
                max: self.max_send,
            });
        }
        self.write_payload(false, encoded).await
    }

    async fn write_payload(&mut self, data: bool, payload: &[u8]) -> Result<(), ConversationError> {
        if self.finished {
            return Err(ConversationError::Finished);
        }
        self.write_buf.clear();
        frame::put_payload_header(&mut self.write_buf, data, payload.len());
        self.write_buf.extend_from_slice(payload);
        self.send
            .write_all(&self.write_buf)
            .await
            .map_err(write_error)
    }

    async fn write_frame(&mut self, frame: &Frame<'_>) -> Result<(), ConversationError> {
        if self.finished {
            return Err(ConversationError::Finished);
        }
        self.write_buf.clear();
        frame::put_frame(&mut self.write_buf, frame);
        self.send
            .write_all(&self.write_buf)
            .await
            .map_err(write_error)
    }

    /// Receives one object and decodes it as `T`.
    ///
    /// If the peer sent data instead, fails with [`ConversationError::Unexpected`] and leaves
    /// it for [`recv_chunk`](Self::recv_chunk) / [`recv_data`](Self::recv_data). An object
    /// larger than this node's `max_message_size` is skipped and reported as
    /// [`ConversationError::TooLarge`]; an object that does not decode as `T` is consumed and
    /// reported as [`ConversationError::Decode`].
    pub async fn recv_obj<T: DeserializeOwned>(&mut self) -> Result<T, ConversationError> {
        match self.next(Want::Object).await? {
            Incoming::Object(bytes) => {
                crate::mailbox::decode_exact(&bytes).map_err(ConversationError::Decode)
            }
            Incoming::Data(_) | Incoming::DataEnd => Err(ConversationError::Unexpected("data")),
        }
    }

    /// Streams everything `reader` yields, in chunks of at most 64 KiB, then marks the end of
    /// the data. Memory use is one chunk, whatever the size. Returns the bytes sent.
    pub async fn send_data<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
    ) -> Result<u64, ConversationError> {
        let mut chunk = vec![0u8; frame::MAX_DATA_CHUNK];
        let mut total = 0u64;
        loop {
            let read = reader
                .read(&mut chunk)
                .await
                .map_err(|e| ConversationError::Io(e.into()))?;
            if read == 0 {
                break;
            }
            // `read` is at most the chunk's length (the AsyncRead contract); trust no reader.
            let Some(piece) = chunk.get(..read) else {
                return Err(ConversationError::Overrun);
            };
            self.write_payload(true, piece).await?;
            total += read as u64;
        }
        self.write_frame(&Frame::DataEnd).await?;
        Ok(total)
    }

    /// Streams the chunks of `chunks` (each split to at most 64 KiB), then marks the end of
    /// the data. Returns the bytes sent.
    pub async fn send_data_stream<S, B>(&mut self, mut chunks: S) -> Result<u64, ConversationError>
    where
        S: Stream<Item = B> + Unpin,
        B: AsRef<[u8]>,
    {
        let mut total = 0u64;
        while let Some(chunk) = chunks.next().await {
            self.send_chunk(chunk.as_ref()).await?;
            total += chunk.as_ref().len() as u64;
        }
        self.end_data().await?;
        Ok(total)
    }

    /// Sends `chunk` as part of the current data stream (split into DATA frames of at most
    /// 64 KiB), for a writer that gets its bytes piece by piece and must not end the data when
    /// its source fails (a bridge from another stream: a reset source is a cancelled
    /// conversation, not a shorter one). [`end_data`](Self::end_data) marks the end.
    pub async fn send_chunk(&mut self, chunk: &[u8]) -> Result<(), ConversationError> {
        for piece in chunk.chunks(frame::MAX_DATA_CHUNK) {
            self.write_payload(true, piece).await?;
        }
        Ok(())
    }

    /// Marks the end of the current data stream (after [`send_chunk`](Self::send_chunk)s, or
    /// none: an empty data stream).
    pub async fn end_data(&mut self) -> Result<(), ConversationError> {
        self.write_frame(&Frame::DataEnd).await
    }

    /// Receives one data stream into `writer`, until its end mark. Returns the bytes received.
    pub async fn recv_data<W: AsyncWrite + Unpin>(
        &mut self,
        mut writer: W,
    ) -> Result<u64, ConversationError> {
        let mut total = 0u64;
        while let Some(chunk) = self.recv_chunk().await? {
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| ConversationError::Io(e.into()))?;
            total += chunk.len() as u64;
        }
        writer
            .flush()
            .await
            .map_err(|e| ConversationError::Io(e.into()))?;
        Ok(total)
    }

    /// The next chunk of the current data stream, or `None` at its end mark. If the peer sent
    /// an object instead, fails with [`ConversationError::Unexpected`] and leaves it for
    /// [`recv_obj`](Self::recv_obj).
    pub async fn recv_chunk(&mut self) -> Result<Option<Bytes>, ConversationError> {
        match self.next(Want::Data).await? {
            Incoming::Data(bytes) => Ok(Some(bytes)),
            Incoming::DataEnd => Ok(None),
            Incoming::Object(_) => Err(ConversationError::Unexpected("object")),
        }
    }

    /// The current data stream as a [`Stream`] of chunks; it ends at the end mark.
    pub fn data_stream(
        &mut self,
    ) -> Pin<Box<dyn Stream<Item = Result<Bytes, ConversationError>> + Send + '_>> {
        Box::pin(futures::stream::unfold(
            (self, false),
            |(conversation, done)| async move {
                if done {
                    return None;
                }
                match conversation.recv_chunk().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), (conversation, false))),
                    Ok(None) => None,
                    Err(error) => Some((Err(error), (conversation, true))),
                }
            },
        ))
    }

    /// Ends this side: the peer reads [`ConversationError::Ended`] after what was sent.
    pub fn finish(&mut self) -> Result<(), ConversationError> {
        if self.finished {
            return Err(ConversationError::Finished);
        }
        self.finished = true;
        self.send.finish().map_err(|_| ConversationError::Finished)
    }

    /// Sends `object` as the answer and finishes: the usual end of a call's handler.
    pub async fn reply<T: Serialize + ?Sized>(
        mut self,
        object: &T,
    ) -> Result<(), ConversationError> {
        self.send_obj(object).await?;
        self.finish()
    }

    /// Gives the conversation up with a reason the peer receives as
    /// [`ConversationError::Failed`] (a call's caller as [`CallError::Failed`](crate::CallError)).
    pub async fn fail(mut self, reason: &str) -> Result<(), ConversationError> {
        self.write_frame(&Frame::Fail {
            code: ErrorCode::HANDLER_FAILED,
            reason,
        })
        .await?;
        self.finish()
    }

    /// Resolves when the peer stops reading this conversation, with the code of its
    /// `STOP_SENDING`: [`ErrorCode::CANCELLED`] when the opener gave the conversation up (e.g.
    /// a call's caller dropped it or its deadline passed), so a handler can stop its work.
    ///
    /// Resolves with an error when no cancellation can come any more:
    /// [`ConversationError::Finished`] once this side finished and the peer acknowledged all
    /// of it, [`ConversationError::ConnectionLost`] when the connection is lost.
    pub async fn cancelled(&mut self) -> Result<u64, ConversationError> {
        match self.send.stopped().await {
            Ok(Some(code)) => Ok(code.into_inner()),
            Ok(None) => Err(ConversationError::Finished),
            Err(quinn::StoppedError::ConnectionLost(error)) => {
                Err(ConversationError::ConnectionLost(error))
            }
            Err(other) => Err(ConversationError::Protocol(other.to_string())),
        }
    }

    /// Reads the next frame that carries content, if it is what `want` asks for; a frame of
    /// the other kind stays unread.
    async fn next(&mut self, want: Want) -> Result<Incoming, ConversationError> {
        if self.ended {
            return Err(ConversationError::Ended);
        }
        let max_frame = self.max_recv.max(frame::MAX_DATA_CHUNK) + 1;
        loop {
            if let Some((left, size)) = self.skip {
                // Reading past an oversized object: never more than one read in memory.
                let skipped = left.min(self.buf.len());
                self.buf.advance(skipped);
                if skipped == left {
                    self.skip = None;
                    self.frame_waited = std::time::Duration::ZERO;
                    return Err(ConversationError::TooLarge {
                        size,
                        max: self.max_recv,
                    });
                }
                self.skip = Some((left - skipped, size));
                self.read_more_within().await?;
                continue;
            }
            let decoded = match frame::decode_frame(&self.buf, max_frame) {
                Ok(decoded) => decoded,
                Err(frame::FrameError::TooLarge { len, .. }) => {
                    // Only an object may be too large to keep: read past it. Anything else
                    // that long breaks the protocol.
                    let prefix = frame::varint_len(len);
                    match self.buf.get(prefix) {
                        Some(&frame::OBJECT_TYPE) if want == Want::Object => {
                            let whole = usize::try_from(len)
                                .ok()
                                .and_then(|len| len.checked_add(prefix));
                            let Some(whole) = whole else {
                                return Err(ConversationError::Protocol(
                                    "object length beyond this machine's address space".into(),
                                ));
                            };
                            self.skip = Some((whole, whole - prefix - 1));
                            continue;
                        }
                        Some(&frame::OBJECT_TYPE) => {
                            return Err(ConversationError::Unexpected("object"))
                        }
                        Some(_) => {
                            return Err(ConversationError::Protocol(format!(
                                "frame of {len} bytes exceeds the limit of {max_frame}"
                            )))
                        }
                        None => {
                            self.read_more_within().await?;
                            continue;
                        }
                    }
                }
                Err(error) => return Err(ConversationError::Protocol(error.to_string())),
            };
            let Some((frame, used)) = decoded else {
                self.read_more_within().await?;
                continue;
            };
            // A whole frame: the next one gets its own frame_timeout.
            self.frame_waited = std::time::Duration::ZERO;
            let header = used - frame_payload_len(&frame);
            let incoming = match frame {
                Frame::Object(_) if want != Want::Object => {
                    return Err(ConversationError::Unexpected("object"))
                }
                Frame::Data(_) | Frame::DataEnd if want != Want::Data => {
                    return Err(ConversationError::Unexpected("data"))
                }
                Frame::Object(payload) if payload.len() > self.max_recv => {
                    let size = payload.len();
                    self.buf.advance(used);
                    return Err(ConversationError::TooLarge {
                        size,
                        max: self.max_recv,
                    });
                }
                Frame::Object(_) => {
                    let mut bytes = self.buf.split_to(used);
                    bytes.advance(header);
                    Incoming::Object(bytes.freeze())
                }
                Frame::Data(_) => {
                    let mut bytes = self.buf.split_to(used);
                    bytes.advance(header);
                    Incoming::Data(bytes.freeze())
                }
                Frame::DataEnd => {
                    self.buf.advance(used);
                    Incoming::DataEnd
                }
                Frame::Fail { code, reason } => {
                    let error = ConversationError::Failed {
                        code: code.0,
                        reason: reason.to_owned(),
                    };
                    self.ended = true;
                    return Err(error);
                }
                _ => {
                    return Err(ConversationError::Protocol(
                        "unexpected frame in a conversation".into(),
                    ))
                }
            };
            return Ok(incoming);
        }
    }

    /// Like [`read_more`](Self::read_more), but while a frame has begun (part of it is in
    /// the buffer, or an oversized object is being read past), the wait for its rest counts
    /// against `frame_timeout`; when that runs out, the stream is stopped and the read fails
    /// with `Protocol`. Waiting for a frame that has not begun is the application's business.
    async fn read_more_within(&mut self) -> Result<(), ConversationError> {
        if self.buf.is_empty() && self.skip.is_none() {
            return self.read_more().await;
        }
        let left = self.frame_timeout.saturating_sub(self.frame_waited);
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(left, self.read_more()).await {
            Ok(read) => {
                self.frame_waited += started.elapsed();
                read
            }
            Err(_) => {
                let _ = self.recv.stop(code(ErrorCode::TIMEOUT));
                Err(ConversationError::Protocol(
                    "frame not completed within frame_timeout".into(),
                ))
            }
        }
    }

    /// Reads the next piece of the peer's direction into the buffer.
    async fn read_more(&mut self) -> Result<(), ConversationError> {
        match self.recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(())
            }
            Ok(None) => {
                if !self.buf.is_empty() || self.skip.is_some() {
                    return Err(ConversationError::Protocol(
                        "stream ended inside a frame".into(),
                    ));
                }
                self.ended = true;
                Err(ConversationError::Ended)
            }
            Err(error) => Err(read_error(error)),
        }
    }
}

/// The payload length of an `Object` or `Data` frame (0 for others).
fn frame_payload_len(frame: &Frame<'_>) -> usize {
    match frame {
        Frame::Object(payload) | Frame::Data(payload) => payload.len(),
        _ => 0,
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        let why = if self.opened_here {
            // The opener leaving before the peer finished gives the conversation up.
            ErrorCode::CANCELLED
        } else if self.finished {
            // The service answered; it just wants nothing more.
            ErrorCode::DONE
        } else {
            ErrorCode::HANDLER_FAILED
        };
        if !self.finished {
            let _ = self.send.reset(code(why));
        }
        if !self.ended {
            let _ = self.recv.stop(code(why));
        }
    }
}
