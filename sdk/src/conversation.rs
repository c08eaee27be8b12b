//! Conversations (HBI's): one bidirectional QUIC stream between two nodes carrying objects and
//! streamed data in both directions, so a slow or long conversation never stalls another.

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
pub struct Conversation {
    peer: NodeId,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    max_object: usize,
    write_buf: Vec<u8>,
    /// This side finished (or failed): nothing more may be sent.
    finished: bool,
    /// The peer finished its side and everything it sent was read.
    ended: bool,
    /// Whether this side opened the conversation: dropping it unfinished then means
    /// "cancelled"; on the accepting side it means "the handler failed".
    opened_here: bool,
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
        quinn::WriteError::ConnectionLost(error) => {
            ConversationError::ConnectionLost(error.to_string())
        }
        quinn::WriteError::ClosedStream => ConversationError::Finished,
        other => ConversationError::Protocol(other.to_string()),
    }
}

fn read_error(error: quinn::ReadError) -> ConversationError {
    match error {
        quinn::ReadError::Reset(code) => ConversationError::Reset(code.into_inner()),
        quinn::ReadError::ConnectionLost(error) => {
            ConversationError::ConnectionLost(error.to_string())
        }
        other => ConversationError::Protocol(other.to_string()),
    }
}

/// What the next frame of the peer is, with its payload copied out of the read buffer.
enum Incoming {
    Object(Bytes),
    Data(Bytes),
    DataEnd,
}

impl Conversation {
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
            max_object,
            write_buf: Vec::new(),
            finished: false,
            ended: false,
            opened_here,
        }
    }

    /// The node on the other side, as proven by the TLS handshake.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Sends one object (postcard-encoded).
    pub async fn send_obj<T: Serialize + ?Sized>(
        &mut self,
        object: &T,
    ) -> Result<(), ConversationError> {
        let encoded =
            postcard::to_allocvec(object).map_err(|e| ConversationError::Encode(e.to_string()))?;
        self.send_encoded(&encoded).await
    }

    pub(crate) async fn send_encoded(&mut self, encoded: &[u8]) -> Result<(), ConversationError> {
        if encoded.len() > self.max_object {
            return Err(ConversationError::TooLarge {
                size: encoded.len(),
                max: self.max_object,
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
    pub async fn recv_obj<T: DeserializeOwned>(&mut self) -> Result<T, ConversationError> {
        match self.next().await? {
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
                .map_err(|e| ConversationError::Io(e.to_string()))?;
            if read == 0 {
                break;
            }
            self.write_payload(true, &chunk[..read]).await?;
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
            for piece in chunk.as_ref().chunks(frame::MAX_DATA_CHUNK) {
                self.write_payload(true, piece).await?;
                total += piece.len() as u64;
            }
        }
        self.write_frame(&Frame::DataEnd).await?;
        Ok(total)
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
                .map_err(|e| ConversationError::Io(e.to_string()))?;
            total += chunk.len() as u64;
        }
        writer
            .flush()
            .await
            .map_err(|e| ConversationError::Io(e.to_string()))?;
        Ok(total)
    }

    /// The next chunk of the current data stream, or `None` at its end mark.
    pub async fn recv_chunk(&mut self) -> Result<Option<Bytes>, ConversationError> {
        match self.next().await? {
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

    /// Resolves when the peer stops reading this conversation (it cancelled, e.g. a call's
    /// caller gave up): a handler can stop its work then.
    pub async fn cancelled(&mut self) -> u64 {
        match self.send.stopped().await {
            Ok(Some(code)) => code.into_inner(),
            _ => ErrorCode::CANCELLED.0,
        }
    }

    /// Reads the next frame that carries content.
    async fn next(&mut self) -> Result<Incoming, ConversationError> {
        if self.ended {
            return Err(ConversationError::Ended);
        }
        let max_frame = self.max_object.max(frame::MAX_DATA_CHUNK) + 1;
        loop {
            let decoded = frame::decode_frame(&self.buf, max_frame)
                .map_err(|e| ConversationError::Protocol(e.to_string()))?;
            if let Some((frame, used)) = decoded {
                let incoming = match frame {
                    Frame::Object(payload) => {
                        if payload.len() > self.max_object {
                            return Err(ConversationError::TooLarge {
                                size: payload.len(),
                                max: self.max_object,
                            });
                        }
                        let header = used - payload.len();
                        let mut bytes = self.buf.split_to(used);
                        bytes.advance(header);
                        Incoming::Object(bytes.freeze())
                    }
                    Frame::Data(payload) => {
                        let header = used - payload.len();
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
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) => {
                    if !self.buf.is_empty() {
                        return Err(ConversationError::Protocol(
                            "stream ended inside a frame".into(),
                        ));
                    }
                    self.ended = true;
                    return Err(ConversationError::Ended);
                }
                Err(error) => return Err(read_error(error)),
            }
        }
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
