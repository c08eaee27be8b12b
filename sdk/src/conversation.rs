//! Conversations (HBI's): one bidirectional QUIC stream between two nodes carrying objects and
//! streamed data in both directions, so a slow or long conversation never stalls another.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use ferry_proto::conversation::{self as proto, Step, Want};
use futures::{FutureExt as _, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ConversationError;
use crate::frame::{self, ErrorCode};
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
///
/// The decisions are [`ferry_proto::conversation`]'s ([`Reader`](proto::Reader),
/// [`Writer`](proto::Writer), [`dropped`](proto::dropped)); this type moves the bytes over
/// quinn and keeps the timers.
pub struct Conversation {
    peer: NodeId,
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    /// The peer's direction: what it sent and what it means.
    reader: proto::Reader,
    /// This side's direction: the peer's limit and whether this side finished.
    writer: proto::Writer,
    write_buf: Vec<u8>,
    /// Whether this side opened the conversation: dropping it unfinished then means
    /// "cancelled"; on the accepting side it means "the handler failed".
    opened_here: bool,
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

/// The error of a read the reader answered without content.
fn read_refused(error: proto::ReadError) -> ConversationError {
    match error {
        proto::ReadError::Ended => ConversationError::Ended,
        proto::ReadError::Failed { code, reason } => ConversationError::Failed {
            code: code.0,
            reason,
        },
        proto::ReadError::Unexpected(content) => ConversationError::Unexpected(content.as_str()),
        proto::ReadError::TooLarge { size, max } => ConversationError::TooLarge { size, max },
        other => ConversationError::Protocol(other.to_string()),
    }
}

/// The error of a write the writer refused.
fn write_refused(error: proto::WriteError) -> ConversationError {
    match error {
        proto::WriteError::TooLarge { size, max } => ConversationError::TooLarge { size, max },
        _ => ConversationError::Finished,
    }
}

/// The time the protocol's state machines are given: tokio's (virtual in paused tests).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
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
            reader: proto::Reader::new(
                max_object,
                crate::config::NodeConfig::default().frame_timeout,
                buf,
            ),
            writer: proto::Writer::new(max_object),
            write_buf: Vec::new(),
            opened_here,
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
        self.reader.set_frame_timeout(frame_timeout);
        self
    }

    /// Bytes of the peer's direction read before the conversation began (after its opening).
    pub(crate) fn received(&mut self, bytes: &[u8]) {
        self.reader.receive(bytes, now());
    }

    /// Sets the largest object the peer reads, as it announced (`max_message` of its
    /// `Accept`).
    pub(crate) fn with_peer_limit(mut self, max_message: u64) -> Self {
        self.writer.set_peer_limit(max_message);
        self
    }

    /// Gives the conversation up at once with `code`, in both directions.
    pub(crate) fn abandon(mut self, why: ErrorCode) {
        let _ = self.send.reset(code(why));
        let _ = self.recv.stop(code(why));
        self.writer.close();
        self.reader.close();
    }

    /// Ends a conversation whose exchange is complete (a lookup's answer was read): finishes
    /// this side and drops the rest without a cancellation.
    pub(crate) fn close_quietly(mut self) {
        let _ = self.send.finish();
        self.writer.close();
        self.reader.close();
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
        let encoded =
            crate::payload::encode_transient(object).map_err(ConversationError::Encode)?;
        self.send_encoded(&encoded).await
    }

    pub(crate) async fn send_encoded(&mut self, encoded: &[u8]) -> Result<(), ConversationError> {
        self.writer
            .object(encoded, &mut self.write_buf)
            .map_err(write_refused)?;
        self.write_out().await
    }

    async fn write_data(&mut self, chunk: &[u8]) -> Result<(), ConversationError> {
        self.writer
            .data(chunk, &mut self.write_buf)
            .map_err(write_refused)?;
        self.write_out().await
    }

    async fn write_data_end(&mut self) -> Result<(), ConversationError> {
        self.writer
            .data_end(&mut self.write_buf)
            .map_err(write_refused)?;
        self.write_out().await
    }

    /// Writes what the writer put in the write buffer.
    async fn write_out(&mut self) -> Result<(), ConversationError> {
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
            Step::Object(bytes) => {
                crate::payload::decode_exact(&bytes).map_err(ConversationError::Decode)
            }
            _ => Err(ConversationError::Unexpected("data")),
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
            self.write_data(piece).await?;
            total += read as u64;
        }
        self.write_data_end().await?;
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
            self.write_data(piece).await?;
        }
        Ok(())
    }

    /// Marks the end of the current data stream (after [`send_chunk`](Self::send_chunk)s, or
    /// none: an empty data stream).
    pub async fn end_data(&mut self) -> Result<(), ConversationError> {
        self.write_data_end().await
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
            Step::Data(bytes) => Ok(Some(bytes)),
            Step::DataEnd => Ok(None),
            _ => Err(ConversationError::Unexpected("object")),
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
        self.writer.finish().map_err(write_refused)?;
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
        self.writer
            .fail(reason, &mut self.write_buf)
            .map_err(write_refused)?;
        self.write_out().await?;
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
    /// the other kind stays unread. Never [`Step::NeedBytes`].
    async fn next(&mut self, want: Want) -> Result<Step, ConversationError> {
        loop {
            match self.reader.next(want, now()).map_err(read_refused)? {
                Step::NeedBytes { deadline } => self.read_more(deadline).await?,
                step => return Ok(step),
            }
        }
    }

    /// Reads the next piece of the peer's direction into the reader. While a frame has begun
    /// (`deadline`), the wait for its rest counts against `frame_timeout`: when the reader
    /// says it ran out, the stream is stopped, and the reader reports `Protocol` from then
    /// on. Waiting for a frame that has not begun is the application's business.
    async fn read_more(
        &mut self,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), ConversationError> {
        let read = match deadline {
            None => self.recv.read_chunk(64 * 1024, true).await,
            Some(deadline) => {
                let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
                tokio::select! {
                    biased;
                    read = self.recv.read_chunk(64 * 1024, true) => read,
                    () = timer => {
                        if self.reader.handle_timeout(now()) {
                            let _ = self.recv.stop(code(ErrorCode::TIMEOUT));
                        }
                        return Ok(());
                    }
                }
            }
        };
        match read {
            Ok(Some(chunk)) => self.reader.receive(&chunk.bytes, now()),
            Ok(None) => self.reader.receive_fin(now()),
            Err(error) => return Err(read_error(error)),
        }
        Ok(())
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        let dropped = proto::dropped(self.opened_here, &self.writer, &self.reader);
        if let Some(why) = dropped.reset {
            let _ = self.send.reset(code(why));
        }
        if let Some(why) = dropped.stop {
            // The peer's FIN often came with its last object (a call's request, its response):
            // taking it ends the stream with nothing more to send, where a STOP_SENDING would
            // cost a frame, and often a packet, of its own.
            let finished = matches!(
                self.recv.read_chunk(usize::MAX, true).now_or_never(),
                Some(Ok(None))
            );
            if !finished {
                let _ = self.recv.stop(code(why));
            }
        }
    }
}
