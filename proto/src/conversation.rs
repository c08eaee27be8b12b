//! Conversation streams (docs/PROTOCOL.md §10) without IO: the opening exchange on both sides
//! (§10.3, §10.4), the reader of a conversation's frames (§10.6, §10.7) and what each side
//! sends when it ends or abandons the stream (§10.8).
//!
//! The driver (the `ferry` crate over quinn and tokio) moves bytes and end-of-stream events in,
//! calls the state machines with the current time, writes what they return, and wakes them at
//! the deadlines they give. Nothing here reads a clock.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::address::{Address, ADDRESS_CORE_LEN};
use crate::frame::{self, ConverseTarget, ErrorCode, Frame, FrameError, Refusal, StreamKind};

/// What a read of a conversation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// One object.
    Object,
    /// The next chunk (or the end mark) of a data stream.
    Data,
}

/// The kind of content the peer sent, where another was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// An object.
    Object,
    /// Data: a chunk or the end mark of a data stream.
    Data,
}

impl Content {
    /// "object" or "data".
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Object => "object",
            Self::Data => "data",
        }
    }
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the reader has for a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// One object's payload (postcard-encoded).
    Object(Bytes),
    /// One chunk of the current data stream.
    Data(Bytes),
    /// The end mark of the current data stream.
    DataEnd,
    /// More of the peer's bytes are needed: feed them with [`Reader::receive`] (or the end of
    /// the stream with [`Reader::receive_fin`]) and read again. `deadline` is set while a
    /// frame has begun: if nothing completes it by then, call [`Reader::handle_timeout`].
    /// Waiting for a frame that has not begun has no deadline (the application's business).
    NeedBytes {
        /// When the begun frame's `frame_timeout` runs out.
        deadline: Option<Instant>,
    },
}

/// How the peer broke the protocol in a conversation. Final: every later read reports it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The bytes are not a frame.
    #[error("{0}")]
    Frame(FrameError),
    /// A frame other than an object is longer than any this side reads.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLong {
        /// The announced length.
        len: u64,
        /// The longest frame this side reads.
        max: usize,
    },
    /// An object's announced length does not fit this machine's address space.
    #[error("object length beyond this machine's address space")]
    ObjectBeyondAddressSpace,
    /// A frame that has no place inside a conversation (e.g. `Accept` or `Message`).
    #[error("unexpected frame in a conversation")]
    UnexpectedFrame,
    /// The peer finished its direction in the middle of a frame.
    #[error("stream ended inside a frame")]
    EndedInsideFrame,
    /// A frame the peer began was not completed within `frame_timeout` of waiting for it;
    /// the driver stops the stream with [`ErrorCode::TIMEOUT`].
    #[error("frame not completed within frame_timeout")]
    FrameTimeout,
}

/// Why a read of a conversation gave no content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The peer finished its side and everything it sent was read (or it failed the
    /// conversation before): nothing more will arrive.
    #[error("the peer ended the conversation")]
    Ended,
    /// The peer gave the conversation up with a `FAIL` frame. Later reads report
    /// [`ReadError::Ended`].
    #[error("the peer failed the conversation (code {}): {reason}", code.0)]
    Failed {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's reason.
        reason: String,
    },
    /// The next frame is of the other kind than asked for; it stays unread, for a read that
    /// wants it.
    #[error("unexpected {0} in the conversation")]
    Unexpected(Content),
    /// An object larger than this side's limit (which the peer was told): it was read past
    /// without being kept, and the next read continues after it. Reported once.
    #[error("object of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The object's size.
        size: usize,
        /// This side's limit.
        max: usize,
    },
    /// The peer broke the protocol; final.
    #[error("{0}")]
    Protocol(Violation),
}

/// The reading half of a conversation: the peer's bytes in, objects and data chunks out.
#[derive(Debug)]
pub struct Reader {
    buf: BytesMut,
    /// Largest object this side reads: its own `max_message_size`.
    max_recv: usize,
    /// Bytes of an oversized object still to be read past, and that object's size.
    skip: Option<(usize, usize)>,
    /// The peer finished its direction (everything it sent is in `buf`).
    fin: bool,
    /// The peer finished and everything it sent was read, or it failed the conversation.
    ended: bool,
    /// The protocol violation every read reports, once there was one.
    violation: Option<Violation>,
    /// How long a begun frame may take to complete, in time spent waiting for it.
    frame_timeout: Duration,
    /// Time spent waiting for the rest of the frame the buffer holds the start of.
    waited: Duration,
    /// The wait under way for the rest of a begun frame: since when, and until when.
    wait: Option<(Instant, Instant)>,
}

impl Reader {
    /// A reader of objects up to `max_recv` bytes whose begun frames must complete within
    /// `frame_timeout` of waiting for them. `buffered` holds bytes already received after the
    /// opening.
    pub fn new(max_recv: usize, frame_timeout: Duration, buffered: BytesMut) -> Self {
        Self {
            buf: buffered,
            max_recv,
            skip: None,
            fin: false,
            ended: false,
            violation: None,
            frame_timeout,
            waited: Duration::ZERO,
            wait: None,
        }
    }

    /// Sets how long a frame the peer began may take to complete.
    pub fn set_frame_timeout(&mut self, frame_timeout: Duration) {
        self.frame_timeout = frame_timeout;
    }

    /// The largest object this side reads.
    pub fn max_recv(&self) -> usize {
        self.max_recv
    }

    /// Whether nothing more will be read: the peer ended or failed the conversation, or
    /// [`close`](Self::close) was called. (A stream not ended is stopped when dropped.)
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Reads nothing more (the conversation was abandoned or its exchange is complete).
    pub fn close(&mut self) {
        self.ended = true;
    }

    /// The peer's next bytes, received at `now`.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) {
        self.stop_waiting(now);
        self.buf.extend_from_slice(bytes);
    }

    /// The peer finished its direction, seen at `now`.
    pub fn receive_fin(&mut self, now: Instant) {
        self.stop_waiting(now);
        self.fin = true;
    }

    fn stop_waiting(&mut self, now: Instant) {
        if let Some((since, _)) = self.wait.take() {
            self.waited += now.saturating_duration_since(since);
        }
    }

    /// The deadline of [`Step::NeedBytes`] came at `now`: whether the begun frame timed out.
    /// If so, the driver stops the stream with [`ErrorCode::TIMEOUT`], and every read reports
    /// [`Violation::FrameTimeout`].
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.wait {
            Some((_, deadline)) if now >= deadline => {
                self.wait = None;
                self.violation = Some(Violation::FrameTimeout);
                true
            }
            _ => false,
        }
    }

    fn violation(&mut self, violation: Violation) -> ReadError {
        self.violation = Some(violation.clone());
        ReadError::Protocol(violation)
    }

    /// The next frame that carries content, if it is what `want` asks for, at `now`; a frame
    /// of the other kind stays unread.
    pub fn next(&mut self, want: Want, now: Instant) -> Result<Step, ReadError> {
        if self.ended {
            return Err(ReadError::Ended);
        }
        if let Some(violation) = &self.violation {
            return Err(ReadError::Protocol(violation.clone()));
        }
        // A wait given up without bytes (the driver's read was dropped) does not count.
        self.wait = None;
        let max_frame = self.max_recv.max(frame::MAX_DATA_CHUNK) + 1;
        loop {
            if let Some((left, size)) = self.skip {
                // Reading past an oversized object: never more than one read in memory.
                let skipped = left.min(self.buf.len());
                self.buf.advance(skipped);
                if skipped == left {
                    self.skip = None;
                    self.waited = Duration::ZERO;
                    return Err(ReadError::TooLarge {
                        size,
                        max: self.max_recv,
                    });
                }
                self.skip = Some((left - skipped, size));
                return self.need(now);
            }
            let decoded = match frame::decode_frame(&self.buf, max_frame) {
                Ok(decoded) => decoded,
                Err(FrameError::TooLarge { len, .. }) => {
                    // Only an object may be too large to keep: read past it. Anything else
                    // that long breaks the protocol.
                    let prefix = frame::varint_len(len);
                    match self.buf.get(prefix) {
                        Some(&frame::OBJECT_TYPE) if want == Want::Object => {
                            let whole = usize::try_from(len)
                                .ok()
                                .and_then(|len| len.checked_add(prefix));
                            let Some(whole) = whole else {
                                return Err(self.violation(Violation::ObjectBeyondAddressSpace));
                            };
                            self.skip = Some((whole, whole - prefix - 1));
                            continue;
                        }
                        Some(&frame::OBJECT_TYPE) => {
                            return Err(ReadError::Unexpected(Content::Object))
                        }
                        Some(_) => {
                            return Err(self.violation(Violation::FrameTooLong {
                                len,
                                max: max_frame,
                            }))
                        }
                        None => return self.need(now),
                    }
                }
                Err(error) => return Err(self.violation(Violation::Frame(error))),
            };
            let Some((frame, used)) = decoded else {
                return self.need(now);
            };
            // A whole frame: the next one gets its own frame_timeout.
            self.waited = Duration::ZERO;
            let header = used - payload_len(&frame);
            let step = match frame {
                Frame::Object(_) if want != Want::Object => {
                    return Err(ReadError::Unexpected(Content::Object))
                }
                Frame::Data(_) | Frame::DataEnd if want != Want::Data => {
                    return Err(ReadError::Unexpected(Content::Data))
                }
                Frame::Object(payload) if payload.len() > self.max_recv => {
                    let size = payload.len();
                    self.buf.advance(used);
                    return Err(ReadError::TooLarge {
                        size,
                        max: self.max_recv,
                    });
                }
                Frame::Object(_) => {
                    let mut bytes = self.buf.split_to(used);
                    bytes.advance(header);
                    Step::Object(bytes.freeze())
                }
                Frame::Data(_) => {
                    let mut bytes = self.buf.split_to(used);
                    bytes.advance(header);
                    Step::Data(bytes.freeze())
                }
                Frame::DataEnd => {
                    self.buf.advance(used);
                    Step::DataEnd
                }
                Frame::Fail { code, reason } => {
                    let error = ReadError::Failed {
                        code,
                        reason: reason.to_owned(),
                    };
                    self.ended = true;
                    return Err(error);
                }
                _ => return Err(self.violation(Violation::UnexpectedFrame)),
            };
            return Ok(step);
        }
    }

    /// The buffer holds no whole frame: more bytes are needed, or the stream ended.
    fn need(&mut self, now: Instant) -> Result<Step, ReadError> {
        let begun = !self.buf.is_empty() || self.skip.is_some();
        if self.fin {
            if begun {
                return Err(self.violation(Violation::EndedInsideFrame));
            }
            self.ended = true;
            return Err(ReadError::Ended);
        }
        if !begun {
            return Ok(Step::NeedBytes { deadline: None });
        }
        let deadline = now + self.frame_timeout.saturating_sub(self.waited);
        self.wait = Some((now, deadline));
        Ok(Step::NeedBytes {
            deadline: Some(deadline),
        })
    }
}

/// The payload length of an `Object` or `Data` frame (0 for others).
fn payload_len(frame: &Frame<'_>) -> usize {
    match frame {
        Frame::Object(payload) | Frame::Data(payload) => payload.len(),
        _ => 0,
    }
}

/// Why this side cannot send something in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The object is larger than the peer announced it reads: nothing is sent and the
    /// conversation goes on.
    #[error("object of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The object's size.
        size: usize,
        /// The peer's limit.
        max: usize,
    },
    /// This side already finished (or failed, or gave the conversation up).
    #[error("this side of the conversation is already finished")]
    Finished,
}

/// The writing half of a conversation: what to send for each thing this side sends.
#[derive(Debug, Clone)]
pub struct Writer {
    /// Largest object the peer reads, as it announced.
    max_send: usize,
    /// This side finished (or failed): nothing more may be sent.
    finished: bool,
}

impl Writer {
    /// A writer of objects up to `max_send` bytes, until
    /// [`set_peer_limit`](Self::set_peer_limit) sets what the peer announced.
    pub fn new(max_send: usize) -> Self {
        Self {
            max_send,
            finished: false,
        }
    }

    /// Sets the largest object the peer reads, as it announced (`max_message` of its `Accept`).
    pub fn set_peer_limit(&mut self, max_message: u64) {
        self.max_send = usize::try_from(max_message).unwrap_or(usize::MAX);
    }

    /// The largest object the peer reads.
    pub fn max_send(&self) -> usize {
        self.max_send
    }

    /// Whether this side finished: nothing more may be sent.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Writes into `out` (cleared first) the frame of one object with `payload`.
    pub fn object(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WriteError> {
        if payload.len() > self.max_send {
            return Err(WriteError::TooLarge {
                size: payload.len(),
                max: self.max_send,
            });
        }
        self.payload(false, payload, out)
    }

    /// Writes into `out` (cleared first) the frame of one data chunk (at most
    /// [`frame::MAX_DATA_CHUNK`] bytes).
    pub fn data(&self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), WriteError> {
        self.payload(true, chunk, out)
    }

    fn payload(&self, data: bool, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WriteError> {
        if self.finished {
            return Err(WriteError::Finished);
        }
        out.clear();
        out.reserve(1 + frame::MAX_VARINT_LEN + payload.len());
        frame::put_payload_header(out, data, payload.len());
        out.extend_from_slice(payload);
        Ok(())
    }

    /// Writes into `out` (cleared first) the end mark of a data stream.
    pub fn data_end(&self, out: &mut Vec<u8>) -> Result<(), WriteError> {
        self.frame(&Frame::DataEnd, out)
    }

    /// Writes into `out` (cleared first) the `FAIL` frame that gives the conversation up with
    /// `reason` (code [`ErrorCode::HANDLER_FAILED`]); then [`finish`](Self::finish).
    pub fn fail(&self, reason: &str, out: &mut Vec<u8>) -> Result<(), WriteError> {
        self.frame(
            &Frame::Fail {
                code: ErrorCode::HANDLER_FAILED,
                reason,
            },
            out,
        )
    }

    fn frame(&self, frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<(), WriteError> {
        if self.finished {
            return Err(WriteError::Finished);
        }
        out.clear();
        frame::put_frame(out, frame);
        Ok(())
    }

    /// Ends this side: the driver finishes the stream. Fails if it ended already.
    pub fn finish(&mut self) -> Result<(), WriteError> {
        if self.finished {
            return Err(WriteError::Finished);
        }
        self.finished = true;
        Ok(())
    }

    /// Sends nothing more (the conversation was abandoned or its exchange is complete).
    pub fn close(&mut self) {
        self.finished = true;
    }
}

/// What the driver does with a conversation dropped by its application (docs/PROTOCOL.md
/// §10.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Reset this side's direction with this code (it was not finished).
    pub reset: Option<ErrorCode>,
    /// Stop the peer's direction with this code (it has not ended).
    pub stop: Option<ErrorCode>,
}

/// What dropping a conversation sends: [`ErrorCode::CANCELLED`] from the side that opened it
/// (the service can stop working); from the accepting side [`ErrorCode::DONE`] once it
/// finished (it answered and wants nothing more), [`ErrorCode::HANDLER_FAILED`] before.
pub fn dropped(opened_here: bool, writer: &Writer, reader: &Reader) -> Dropped {
    let why = if opened_here {
        ErrorCode::CANCELLED
    } else if writer.is_finished() {
        ErrorCode::DONE
    } else {
        ErrorCode::HANDLER_FAILED
    };
    Dropped {
        reset: (!writer.is_finished()).then_some(why),
        stop: (!reader.is_ended()).then_some(why),
    }
}

/// Room for an opening by a service name or a plain address (kind, `Converse` and `Accept`
/// frames): one allocation for the usual opening; a longer one grows.
const OPENING_ROOM: usize = 1 + 2 * (1 + frame::MAX_VARINT_LEN) + ADDRESS_CORE_LEN;

/// The opener's first bytes (§10.3): the stream kind, `first` (`Converse` or `Lookup`) and,
/// after a `Converse`, this side's limit as an `Accept` with `max_message`; with room for
/// `then` more bytes (a request sent with the opening).
pub fn opening(first: &Frame<'_>, max_message: u64, then: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(OPENING_ROOM + then);
    head.push(StreamKind::Conversation as u8);
    frame::put_frame(&mut head, first);
    if let Frame::Converse(_) = first {
        frame::put_frame(&mut head, &Frame::Accept { max_message });
    }
    head
}

/// The acceptor's answer to an opening, as the opener reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The conversation is open; the peer reads objects up to `peer_limit` bytes.
    Accepted {
        /// The acceptor's `max_message`.
        peer_limit: u64,
    },
    /// The address a lookup asked for.
    Found(Box<Address>),
}

/// Why an opening got no answer the opener can use (§10.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// `CLOSE NO_SUCH_SERVICE`: no service by that name, or the address's mailbox takes no
    /// conversations.
    #[error("no such service: {reason}")]
    NoSuchService {
        /// The acceptor's reason.
        reason: String,
    },
    /// `CLOSE NOT_ALLOWED`: the service does not allow this node.
    #[error("the service does not allow this node")]
    NotAllowed,
    /// `CLOSE LIMIT`: the service's backlog is full, or the address's rate is reached.
    #[error("the service is busy")]
    Busy,
    /// `CLOSE SHUTTING_DOWN`: the acceptor is shutting down.
    #[error("the peer is shutting down")]
    ShuttingDown,
    /// `CLOSE` with one of the address refusals (§4.9).
    #[error("address refused ({refusal:?}): {reason}")]
    Refused {
        /// Which refusal.
        refusal: Refusal,
        /// The acceptor's reason.
        reason: String,
    },
    /// `CLOSE` with another code.
    #[error("refused ({}): {reason}", code.0)]
    Other {
        /// The code.
        code: ErrorCode,
        /// The acceptor's reason.
        reason: String,
    },
    /// The acceptor does not admit this node: it stopped or reset the stream with
    /// `NOT_ADMITTED` (§2.6).
    #[error("node not admitted")]
    NotAdmitted,
    /// The acceptor reset the stream with this code before its answer was read (its handler
    /// gave the conversation up at once).
    #[error("the peer reset the conversation (code {})", .0 .0)]
    Failed(ErrorCode),
    /// The answer is not a frame.
    #[error("{0}")]
    Frame(FrameError),
    /// The first frame is no answer (`ACCEPT`, `FOUND` or `CLOSE`).
    #[error("unexpected answer")]
    UnexpectedAnswer,
    /// The acceptor finished its direction before answering.
    #[error("stream ended before answer")]
    EndedBeforeAnswer,
}

impl OpenError {
    /// The error of a `CLOSE` with `code` and `reason`.
    pub fn from_close(code: ErrorCode, reason: &str) -> Self {
        let reason = reason.to_owned();
        match code {
            ErrorCode::NO_SUCH_SERVICE => Self::NoSuchService { reason },
            ErrorCode::NOT_ALLOWED => Self::NotAllowed,
            ErrorCode::LIMIT => Self::Busy,
            ErrorCode::SHUTTING_DOWN => Self::ShuttingDown,
            code => match Refusal::from_code(code) {
                Some(refusal) => Self::Refused { refusal, reason },
                None => Self::Other { code, reason },
            },
        }
    }
}

/// The opener's side of the opening: reads the acceptor's answer.
#[derive(Debug, Default)]
pub struct Opener {
    buf: BytesMut,
}

impl Opener {
    /// An opener that sent [`opening`] and waits for the answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The acceptor's next bytes.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The answer, once it is whole (`None`: more bytes are needed).
    pub fn answer(&mut self) -> Result<Option<Answer>, OpenError> {
        let decoded = frame::decode_frame(&self.buf, frame::MAX_OPENING_FRAME_LEN)
            .map_err(OpenError::Frame)?;
        let Some((frame, used)) = decoded else {
            return Ok(None);
        };
        let answer = match frame {
            Frame::Accept { max_message } => Answer::Accepted {
                peer_limit: max_message,
            },
            Frame::Found(address) => Answer::Found(address),
            Frame::Close { code, reason } => return Err(OpenError::from_close(code, reason)),
            _ => return Err(OpenError::UnexpectedAnswer),
        };
        self.buf.advance(used);
        Ok(Some(answer))
    }

    /// The acceptor finished its direction before a whole answer.
    pub fn on_fin(&self) -> OpenError {
        OpenError::EndedBeforeAnswer
    }

    /// The acceptor reset its direction with `code` before a whole answer.
    pub fn on_reset(&self, code: ErrorCode) -> OpenError {
        if code == ErrorCode::NOT_ADMITTED {
            OpenError::NotAdmitted
        } else {
            OpenError::Failed(code)
        }
    }

    /// The acceptor stopped this side's direction with `code`: a refusal if it does not admit
    /// this node (`None`: it decides nothing, the answer or a reset follows on the read side).
    pub fn on_stopped(&self, code: ErrorCode) -> Option<OpenError> {
        (code == ErrorCode::NOT_ADMITTED).then_some(OpenError::NotAdmitted)
    }

    /// What the acceptor sent after its answer: the start of the conversation.
    pub fn into_rest(self) -> BytesMut {
        self.buf
    }
}

/// What an opener asks for (the first frame of a conversation stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A conversation with the service of a capability address.
    ByAddress(Address),
    /// A conversation with a service by name.
    ByName(String),
    /// The address of a service by name.
    Lookup(String),
}

/// Why the acceptor refuses an opening before looking at its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpeningError {
    /// The first frame is not `Converse` or `Lookup` (a violation).
    #[error("expected converse or lookup")]
    Expected,
    /// The stream ended (FIN or reset) before the opening frame: no violation, as an opener
    /// that gives up early resets its stream.
    #[error("stream ended before the opening frame")]
    Ended,
}

impl OpeningError {
    /// Whether the opener broke the protocol (rather than gave up).
    pub fn is_violation(self) -> bool {
        matches!(self, Self::Expected)
    }
}

/// What the acceptor has of an opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// Read at most `max` more bytes and feed them (or the end of the stream).
    NeedBytes {
        /// The most worth reading at once.
        max: usize,
    },
    /// The opening is read.
    Ready {
        /// What the opener asks for.
        request: Request,
        /// For a conversation, the opener's limit (the `Accept` after its `Converse`); `None`
        /// if another frame followed, or the stream ended first.
        opener_limit: Option<u64>,
    },
}

/// The acceptor's side of the opening: reads the opener's request and limit.
#[derive(Debug, Default)]
pub struct Acceptor {
    buf: BytesMut,
    request: Option<Request>,
    fin: bool,
}

impl Acceptor {
    /// An acceptor that read the stream's kind byte.
    pub fn new() -> Self {
        Self::default()
    }

    /// The opener's next bytes.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The opener's direction ended (finished, reset, or unreadable).
    pub fn receive_fin(&mut self) {
        self.fin = true;
    }

    /// How far the opening is read.
    pub fn poll(&mut self) -> Result<Opening, OpeningError> {
        let request = match self.request.take() {
            Some(request) => request,
            None => {
                let decoded = frame::decode_frame(&self.buf, frame::MAX_OPENING_FRAME_LEN)
                    .map_err(|_| OpeningError::Expected)?;
                let Some((frame, used)) = decoded else {
                    if self.fin {
                        return Err(OpeningError::Ended);
                    }
                    return Ok(Opening::NeedBytes {
                        max: frame::MAX_OPENING_FRAME_LEN,
                    });
                };
                let request = match frame {
                    Frame::Converse(ConverseTarget::Address(address)) => {
                        Request::ByAddress(*address)
                    }
                    Frame::Converse(ConverseTarget::Service(name)) => {
                        Request::ByName(name.to_owned())
                    }
                    Frame::Lookup(name) => Request::Lookup(name.to_owned()),
                    _ => return Err(OpeningError::Expected),
                };
                self.buf.advance(used);
                request
            }
        };
        if let Request::Lookup(_) = request {
            return Ok(Opening::Ready {
                request,
                opener_limit: None,
            });
        }
        let opener_limit = match frame::decode_frame(&self.buf, frame::MAX_CONTROL_FRAME_LEN) {
            Ok(Some((Frame::Accept { max_message }, used))) => {
                self.buf.advance(used);
                Some(max_message)
            }
            // Something else, or a frame too long to be an Accept: left for the conversation.
            Ok(Some(_)) | Err(_) => None,
            Ok(None) if self.fin => None,
            Ok(None) => {
                self.request = Some(request);
                return Ok(Opening::NeedBytes {
                    max: frame::MAX_CONTROL_FRAME_LEN,
                });
            }
        };
        Ok(Opening::Ready {
            request,
            opener_limit,
        })
    }

    /// What the opener sent after its opening: the start of the conversation.
    pub fn into_rest(self) -> BytesMut {
        self.buf
    }
}

/// The limit the acceptor gives a conversation's opener: 0 for a lookup (it takes no
/// objects); for a conversation, the opener's announced limit, or the refusal (`CLOSE
/// PROTOCOL`) of a `Converse` without it.
pub fn opener_limit(
    request: &Request,
    announced: Option<u64>,
) -> Result<u64, (ErrorCode, &'static str)> {
    match (request, announced) {
        (Request::Lookup(_), _) => Ok(0),
        (_, Some(limit)) => Ok(limit),
        (_, None) => Err((ErrorCode::PROTOCOL, "expected accept after converse")),
    }
}

/// The acceptor's refusal (§10.4): `CLOSE` with `code` and `reason`.
pub fn refusal(code: ErrorCode, reason: &str) -> Vec<u8> {
    let mut out = Vec::new();
    frame::put_frame(&mut out, &Frame::Close { code, reason });
    out
}

/// The acceptor's `ACCEPT` of a conversation, announcing its own limit.
pub fn accept(max_message: u64) -> Vec<u8> {
    let mut out = Vec::new();
    frame::put_frame(&mut out, &Frame::Accept { max_message });
    out
}

/// The acceptor's answer to a lookup: `FOUND` with the service's address.
pub fn found(address: &Address) -> Vec<u8> {
    let mut out = Vec::new();
    frame::put_frame(&mut out, &Frame::Found(Box::new(address.clone())));
    out
}

#[cfg(test)]
mod tests;
