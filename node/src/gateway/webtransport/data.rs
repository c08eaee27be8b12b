//! Data streams over WebTransport (docs/GATEWAY.md §13.11): a browser's upload to a service,
//! or its download from one, on a bidirectional stream of its own, bridged to a ferry
//! conversation with the service (docs/PROTOCOL.md §10: a request OBJECT, the upload as a data
//! stream, then the service's data stream and its reply OBJECT — HBI's `send_data` /
//! `recv_data`). Backpressure is QUIC flow control on both sides: the bridge reads the next
//! piece of one stream only once the other stream took the previous one, so it holds at most
//! one piece (64 KiB) per data stream. Also the other way (§13.12): a peer's data for a
//! session, taken by the gateway's service `ferry-gateway.data` and carried to the page on a
//! stream the gateway opens.
// Handles what browsers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry::ConversationError;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use web_transport_quinn::{RecvStream, SendStream};

use super::frame::{header, split_frame, FRAME_BINARY, FRAME_TEXT};
use crate::gateway::protocol::{
    frame, object, parse_call_target, payload_of, some_raw, CallTarget, Encoded, ErrorCode,
};
use crate::gateway::requests::{node_target, open_error_code};
use crate::gateway::session::Incoming;

/// First byte of a data stream (bidirectional, opened by the client: one upload or download).
pub const STREAM_DATA: u8 = 0x03;
/// First byte of an incoming data stream (bidirectional, opened by the gateway: a peer's data
/// for the session, §13.12).
pub const STREAM_INCOMING: u8 = 0x04;
/// The service, on a gateway's node, that takes peers' data for its sessions (§13.12).
pub const INCOMING_SERVICE: &str = "ferry-gateway.data";
/// A frame's kind byte, gateway → client on a data stream: a piece of the service's data.
pub const FRAME_DATA: u8 = 0x02;
/// The largest piece of data in one [`FRAME_DATA`] frame (the conversation's DATA chunk).
pub const MAX_DATA_PIECE: usize = 64 * 1024;
/// Stream error code (STOP_SENDING) for the rest of an upload the gateway will not read: it
/// answered the data stream already (an error), the answer says why.
pub const STOP_DATA_ANSWERED: u32 = 0x13;

/// How long the service's answer may take once it stopped taking the upload.
const EARLY_ANSWER: Duration = Duration::from_secs(1);

/// How long a client has to write the header frame of a data stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The header frame of a data stream: what it goes to, and the request for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataHeader {
    /// The service (as a call's `to`, docs/GATEWAY.md §5.2).
    pub to: CallTarget,
    /// The request object's bytes (the header's `data`, mapped as a payload, §3; empty
    /// without `data`).
    pub request: Bytes,
}

/// Why a data stream's header frame is refused (answered `bad_request`, or `too_large`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataHeaderError {
    /// The first frame is not a text frame.
    #[error("the header must be a text frame, not kind {0:#04x}")]
    NotText(u8),
    /// Its length is beyond `gateway_max_message_size`.
    #[error("header frame of {0} bytes exceeds the message size limit")]
    TooBig(usize),
    /// It is not UTF-8.
    #[error("header frame that is not UTF-8")]
    NotUtf8,
    /// It is not a JSON object with the members of a data header.
    #[error("malformed header: {0}")]
    Malformed(String),
    /// Its `type` is not `"data"`.
    #[error("the header's type is {0:?}, not \"data\"")]
    NotData(String),
    /// `to` is missing or is no service.
    #[error("{0}")]
    Target(String),
    /// `"text": true` with a `data` that is not a string.
    #[error("with `text`, `data` must be a string")]
    TextNotString,
    /// The stream ended (or the header did not come in time) before the header was whole.
    #[error("the stream ended before its header frame")]
    Incomplete,
}

#[derive(Deserialize)]
struct HeaderJson<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    to: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    text: Option<bool>,
}

/// Decodes the header frame at the start of `bytes` (what follows it is upload data): the
/// header and the bytes it took, or `Ok(None)` while `bytes` holds only a part of it. `max`
/// bounds its length (`gateway_max_message_size`). A pure function of the bytes, for tests
/// and fuzzing: any input gives a value or a [`DataHeaderError`].
pub fn decode_data_header(
    bytes: &[u8],
    max: usize,
) -> Result<Option<(DataHeader, usize)>, DataHeaderError> {
    let limit = |kind| match kind {
        FRAME_TEXT => Ok(max),
        other => Err(DataHeaderError::NotText(other)),
    };
    let Some((_, body, used)) = split_frame(bytes, limit, DataHeaderError::TooBig)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(body).map_err(|_| DataHeaderError::NotUtf8)?;
    let json: HeaderJson<'_> =
        serde_json::from_str(text).map_err(|e| DataHeaderError::Malformed(e.to_string()))?;
    if json.kind != "data" {
        return Err(DataHeaderError::NotData(json.kind));
    }
    let to = json
        .to
        .ok_or_else(|| DataHeaderError::Target("`to` is missing".into()))?;
    let to = parse_call_target(to).map_err(DataHeaderError::Target)?;
    let request = match json.data {
        Some(raw) => payload_of(raw, json.text).ok_or(DataHeaderError::TextNotString)?,
        None => Bytes::new(),
    };
    Ok(Some((DataHeader { to, request }, used)))
}

/// The header frame of a data stream to `to` (a call target's text) with the request `data`
/// (a JSON text, or with `text`, any string), as a client writes it after the type byte.
pub fn encode_data_header(to: &str, data: Option<&str>, text: bool) -> Vec<u8> {
    let mut fields = object(vec![
        ("type", serde_json::json!("data")),
        ("to", serde_json::json!(to)),
    ]);
    if text {
        fields.insert("text".into(), serde_json::Value::Bool(true));
    }
    let mut json = serde_json::Value::Object(fields).to_string();
    if let Some(data) = data {
        json.pop();
        json.push_str(",\"data\":");
        if text {
            json.push_str(&serde_json::Value::from(data).to_string());
        } else {
            json.push_str(data);
        }
        json.push('}');
    }
    let mut out = Vec::with_capacity(5 + json.len());
    out.extend_from_slice(&header(FRAME_TEXT, json.len()));
    out.extend_from_slice(json.as_bytes());
    out
}

/// A frame the gateway writes on a data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataFrame {
    /// A piece of the service's data (the download).
    Piece(Bytes),
    /// The answer, last: a text (`0x00`) or binary (`0x01`) frame of §3, `ok` or `error`.
    Answer {
        /// Its kind byte.
        kind: u8,
        /// Its bytes.
        body: Bytes,
    },
}

/// Why a frame of the gateway on a data stream cannot be read (a client's decoder).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataFrameError {
    /// A kind other than `0x00`, `0x01`, `0x02`.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A piece longer than [`MAX_DATA_PIECE`], or an answer beyond `max`.
    #[error("frame of {0} bytes exceeds the limit")]
    TooBig(usize),
}

/// Decodes one frame of the gateway's side of a data stream at the start of `bytes`: the
/// frame and the bytes it took, or `Ok(None)` while only a part of it is there. `max` bounds
/// an answer (`limits.max_message_size`).
pub fn decode_data_frame(
    bytes: &[u8],
    max: usize,
) -> Result<Option<(DataFrame, usize)>, DataFrameError> {
    let limit = |kind| match kind {
        FRAME_DATA => Ok(MAX_DATA_PIECE),
        FRAME_TEXT | FRAME_BINARY => Ok(max),
        other => Err(DataFrameError::UnknownKind(other)),
    };
    let Some((kind, body, used)) = split_frame(bytes, limit, DataFrameError::TooBig)? else {
        return Ok(None);
    };
    let body = Bytes::copy_from_slice(body);
    let frame = if kind == FRAME_DATA {
        DataFrame::Piece(body)
    } else {
        DataFrame::Answer { kind, body }
    };
    Ok(Some((frame, used)))
}

/// The header of a [`FRAME_DATA`] frame of `len` bytes.
fn piece_header(len: usize) -> [u8; 5] {
    header(FRAME_DATA, len)
}

/// What a connection's data streams share.
pub(crate) struct DataContext {
    pub(crate) node: ferry::Node,
    /// Bytes one data stream may carry each way.
    pub(crate) max_bytes: u64,
    /// How long opening the conversation may take (`gateway_max_call_timeout`).
    pub(crate) open_timeout: Duration,
    /// The largest header frame.
    pub(crate) max_message_size: usize,
    pub(crate) counters: Arc<crate::gateway::stats::WebTransportCounters>,
}

/// Bytes the bridge holds (read from one stream, not yet taken by the other), counted in the
/// gateway's figures while held.
struct Held<'a> {
    counters: &'a crate::gateway::stats::WebTransportCounters,
    len: u64,
}

impl<'a> Held<'a> {
    fn new(counters: &'a crate::gateway::stats::WebTransportCounters, len: usize) -> Self {
        let len = len as u64;
        let now = counters.data_buffered.fetch_add(len, Ordering::Relaxed) + len;
        counters
            .data_buffered_peak
            .fetch_max(now, Ordering::Relaxed);
        Self { counters, len }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.counters
            .data_buffered
            .fetch_sub(self.len, Ordering::Relaxed);
    }
}

/// The browser went away (reset or stopped the stream, or the session ended).
struct Gone;

fn error_answer(code: ErrorCode, message: String) -> Encoded {
    frame(
        object(vec![
            ("type", serde_json::json!("error")),
            ("code", serde_json::json!(code)),
            ("message", serde_json::json!(message)),
        ]),
        None,
    )
}

/// The answer of a data stream the service replied to.
fn ok_answer(sent: u64, received: u64, reply: Bytes) -> Encoded {
    frame(
        object(vec![
            ("type", serde_json::json!("ok")),
            ("sent", serde_json::json!(sent)),
            ("received", serde_json::json!(received)),
        ]),
        Some(&reply),
    )
}

fn conversation_answer(error: &ConversationError) -> Encoded {
    let code = match error {
        ConversationError::TooLarge { .. } => ErrorCode::TooLarge,
        ConversationError::ConnectionLost(_) => ErrorCode::Unreachable,
        _ => ErrorCode::Failed,
    };
    error_answer(code, error.to_string())
}

/// The answer when the service stopped taking the upload: its own, if it gave one (a FAIL
/// with its reason, or a reply sent early) within a second, else the write's error.
async fn early_answer(
    conversation: &mut ferry::Conversation,
    error: &ConversationError,
    sent: u64,
) -> Encoded {
    let answer = tokio::time::timeout(EARLY_ANSWER, conversation.recv_obj::<Vec<u8>>()).await;
    match answer {
        Ok(Ok(reply)) => ok_answer(sent, 0, Bytes::from(reply)),
        Ok(Err(failed @ ConversationError::Failed { .. })) => conversation_answer(&failed),
        _ => conversation_answer(error),
    }
}

fn too_large(max: u64) -> Encoded {
    error_answer(
        ErrorCode::TooLarge,
        format!("more than {max} bytes on a data stream (gateway_webtransport_max_data_bytes)"),
    )
}

/// Serves one data stream whose type byte was read: bridges it to a conversation with its
/// service, answers on it, and finishes it. `permit` is its place among the connection's
/// data streams, given back once the answer is written.
pub(crate) async fn serve(
    context: Arc<DataContext>,
    permit: OwnedSemaphorePermit,
    mut send: SendStream,
    mut recv: RecvStream,
    done: CancellationToken,
) {
    let place = Place::new(&context.counters, permit);
    let mut upload_done = false;
    let outcome = tokio::select! {
        () = done.cancelled() => Err(Gone),
        outcome = bridge(&context, &mut send, &mut recv, &mut upload_done) => outcome,
    };
    let answer = match outcome {
        Ok(answer) => answer,
        Err(Gone) => {
            // The conversation was dropped: the service sees it cancelled.
            let _ = send.reset(STOP_DATA_ANSWERED);
            let _ = recv.stop(STOP_DATA_ANSWERED);
            return;
        }
    };
    if !upload_done {
        let _ = recv.stop(STOP_DATA_ANSWERED);
    }
    let written = tokio::select! {
        () = done.cancelled() => false,
        written = super::frame::write_frame(&mut send, answer) => written.is_ok(),
    };
    if !written {
        let _ = send.reset(STOP_DATA_ANSWERED);
        return;
    }
    let _ = send.finish();
    drop(place);
    let _ = tokio::time::timeout(HEADER_TIMEOUT, send.stopped()).await;
}

/// A data stream's place among its connection's (`gateway_webtransport_max_data_streams`),
/// counted in the gateway's figures while held.
struct Place<'a> {
    counters: &'a crate::gateway::stats::WebTransportCounters,
    _permit: OwnedSemaphorePermit,
}

impl<'a> Place<'a> {
    fn new(
        counters: &'a crate::gateway::stats::WebTransportCounters,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        counters.data_streams.fetch_add(1, Ordering::Relaxed);
        counters.data_open.fetch_add(1, Ordering::Relaxed);
        Self {
            counters,
            _permit: permit,
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.counters.data_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads the header frame (and whatever upload bytes came with it).
async fn read_header(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Result<(DataHeader, Bytes), DataHeaderError>, Gone> {
    let mut buf = BytesMut::new();
    loop {
        match decode_data_header(&buf, max) {
            Ok(Some((header, used))) => {
                let rest = buf.split_off(used).freeze();
                return Ok(Ok((header, rest)));
            }
            Ok(None) => {}
            Err(error) => return Ok(Err(error)),
        }
        match tokio::time::timeout(HEADER_TIMEOUT, recv.read_chunk(MAX_DATA_PIECE, true)).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
            Ok(Ok(None)) | Err(_) => return Ok(Err(DataHeaderError::Incomplete)),
            Ok(Err(_)) => return Err(Gone),
        }
    }
}

/// The data stream's exchange: the header, the conversation opened, the upload carried to
/// it, the service's data carried back; then the answer to write (`ok` with the service's
/// reply, or `error`). `upload_done` is set once the whole upload was read.
async fn bridge(
    context: &DataContext,
    send: &mut SendStream,
    recv: &mut RecvStream,
    upload_done: &mut bool,
) -> Result<Encoded, Gone> {
    let counters = &context.counters;
    let (header, mut piece) = match read_header(recv, context.max_message_size).await? {
        Ok(header) => header,
        Err(DataHeaderError::TooBig(len)) => {
            return Ok(error_answer(
                ErrorCode::TooLarge,
                DataHeaderError::TooBig(len).to_string(),
            ))
        }
        Err(error) => return Ok(error_answer(ErrorCode::BadRequest, error.to_string())),
    };
    let opening = context.node.open(node_target(header.to));
    let mut conversation = match tokio::time::timeout(context.open_timeout, opening).await {
        Ok(Ok(conversation)) => conversation,
        Ok(Err(error)) => return Ok(error_answer(open_error_code(&error), error.to_string())),
        Err(_) => {
            return Ok(error_answer(
                ErrorCode::Timeout,
                "the service did not answer in time".into(),
            ))
        }
    };
    if let Err(error) = conversation.send_obj(&header.request[..]).await {
        return Ok(early_answer(&mut conversation, &error, 0).await);
    }
    // The upload: a piece is read from the browser only once the service's stream took the
    // previous one.
    let mut sent = 0u64;
    loop {
        if !piece.is_empty() {
            sent += piece.len() as u64;
            if sent > context.max_bytes {
                return Ok(too_large(context.max_bytes));
            }
            let _held = Held::new(counters, piece.len());
            if let Err(error) = conversation.send_chunk(&piece).await {
                return Ok(
                    early_answer(&mut conversation, &error, sent - piece.len() as u64).await,
                );
            }
            counters
                .data_in
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        piece = match recv.read_chunk(MAX_DATA_PIECE, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => break,
            Err(_) => return Err(Gone),
        };
    }
    *upload_done = true;
    if let Err(error) = conversation.end_data().await {
        return Ok(early_answer(&mut conversation, &error, sent).await);
    }
    // The service's data, then its reply; the browser may give up meanwhile.
    let mut received = 0u64;
    loop {
        let next = tokio::select! {
            _ = send.stopped() => return Err(Gone),
            next = conversation.recv_chunk() => next,
        };
        let piece = match next {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            // No data: the reply at once.
            Err(ConversationError::Unexpected(_)) => break,
            Err(error) => return Ok(conversation_answer(&error)),
        };
        if piece.is_empty() {
            continue;
        }
        received += piece.len() as u64;
        if received > context.max_bytes {
            return Ok(too_large(context.max_bytes));
        }
        let _held = Held::new(counters, piece.len());
        let len = piece.len();
        let mut chunks = [Bytes::copy_from_slice(&piece_header(len)), piece];
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return Err(Gone);
        }
        counters.data_out.fetch_add(len as u64, Ordering::Relaxed);
    }
    let reply = tokio::select! {
        _ = send.stopped() => return Err(Gone),
        reply = conversation.recv_obj::<Vec<u8>>() => reply,
    };
    match reply {
        Ok(reply) => {
            let _ = conversation.finish();
            Ok(ok_answer(sent, received, Bytes::from(reply)))
        }
        Err(error) => Ok(conversation_answer(&error)),
    }
}

/// Why [`send_to_session`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendToSessionError {
    /// The gateway's node could not be reached, or has no [`INCOMING_SERVICE`] (it serves no
    /// WebTransport).
    #[error("opening the gateway's data service: {0}")]
    Open(#[from] ferry::OpenError),
    /// The gateway refused (no such session, no WebTransport connection, busy) or the page
    /// did (its reason), or the exchange broke.
    #[error(transparent)]
    Conversation(#[from] ConversationError),
}

/// Sends `data` to the browser session whose address is `session` (docs/GATEWAY.md §13.12),
/// with `meta` (bytes, shown to the page as a message's payload: JSON, text or bytes), at the
/// page's pace; resolves with the page's answer (bytes, as its reply maps to them).
pub async fn send_to_session<R: tokio::io::AsyncRead + Unpin>(
    node: &ferry::Node,
    session: &ferry::Address,
    meta: &[u8],
    data: R,
) -> Result<Vec<u8>, SendToSessionError> {
    let target = ferry::Target::service(session.node(), INCOMING_SERVICE)
        .with_hints(session.hints().to_vec());
    let mut conversation = node.open(target).await?;
    conversation
        .send_obj(session.without_hints().to_string().as_bytes())
        .await?;
    conversation.send_obj(meta).await?;
    conversation.send_data(data).await?;
    let answer: Vec<u8> = conversation.recv_obj().await?;
    Ok(answer)
}

/// The gateway's service [`INCOMING_SERVICE`]: a peer's conversation carrying data for a
/// session goes to the session's WebTransport connection, or is failed with the reason.
pub(crate) async fn take_incoming(
    shared: &crate::gateway::shared::Shared,
    mut conversation: ferry::Conversation,
) {
    let refusal = async {
        // The address and the metadata come at once, or the peer holds nothing here.
        let (to, meta) = tokio::time::timeout(HEADER_TIMEOUT, async {
            let to: Vec<u8> = conversation.recv_obj().await?;
            let meta: Vec<u8> = conversation.recv_obj().await?;
            Ok::<_, ConversationError>((to, meta))
        })
        .await
        .map_err(|_| "the address and the metadata did not come in time".to_owned())?
        .map_err(|e| e.to_string())?;
        let to = std::str::from_utf8(&to)
            .ok()
            .and_then(|text| text.parse::<ferry::Address>().ok())
            .ok_or("the first object is not an address")?
            .without_hints();
        let session = crate::sync::lock(&shared.registry)
            .sessions()
            .find(|session| session.info.address.without_hints() == to)
            .cloned()
            .ok_or("no such session (or not its own address)")?;
        let tx = crate::sync::lock(&session.incoming)
            .clone()
            .ok_or("the session has no WebTransport connection")?;
        let permit = tx.try_reserve_owned().map_err(|error| match error {
            tokio::sync::mpsc::error::TrySendError::Full(_) => "the session is busy with data",
            tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                "the session has no WebTransport connection"
            }
        })?;
        Ok::<_, String>((permit, Bytes::from(meta)))
    }
    .await;
    match refusal {
        Ok((permit, meta)) => {
            permit.send(Incoming { conversation, meta });
        }
        Err(reason) => {
            let _ = conversation.fail(&reason).await;
        }
    }
}

#[derive(Deserialize)]
struct AnswerJson<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    text: Option<bool>,
    #[serde(default)]
    message: Option<String>,
}

/// Carries a peer's data to the browser on a stream the gateway opens (§13.12), then the
/// page's answer back to the peer. `permit` is its place among the connection's data streams.
pub(crate) async fn serve_incoming(
    context: Arc<DataContext>,
    permit: OwnedSemaphorePermit,
    session: web_transport_quinn::Session,
    incoming: Incoming,
    done: CancellationToken,
) {
    let Incoming {
        mut conversation,
        meta,
    } = incoming;
    let _place = Place::new(&context.counters, permit);
    let from = conversation.peer().to_string();
    let carried = tokio::select! {
        () = done.cancelled() => Err("the session's connection ended".to_owned()),
        carried = carry_incoming(&context, &session, &mut conversation, &from, meta) => carried,
    };
    let _ = match carried {
        Ok(Ok(reply)) => conversation.reply(&reply.to_vec()).await,
        Ok(Err(reason)) | Err(reason) => conversation.fail(&reason).await,
    };
}

/// Opens the stream, writes the header and the data, reads the page's answer: `Ok(Ok(reply))`,
/// `Ok(Err(the page's error))`, or `Err(why it broke)`.
async fn carry_incoming(
    context: &DataContext,
    session: &web_transport_quinn::Session,
    conversation: &mut ferry::Conversation,
    from: &str,
    meta: Bytes,
) -> Result<Result<Bytes, String>, String> {
    let counters = &context.counters;
    let (mut send, mut recv) = session.open_bi().await.map_err(|e| e.to_string())?;
    let header = frame(
        object(vec![
            ("type", serde_json::json!("data")),
            ("from", serde_json::json!(from)),
        ]),
        Some(&meta),
    );
    let gone = |_| "the page gave the stream up".to_owned();
    send.write_all(&[STREAM_INCOMING]).await.map_err(gone)?;
    super::frame::write_frame(&mut send, header)
        .await
        .map_err(|e| e.to_string())?;
    let mut carried = 0u64;
    loop {
        let next = tokio::select! {
            _ = send.stopped() => return Err("the page gave the stream up".into()),
            next = conversation.recv_chunk() => next,
        };
        let piece = match next {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            Err(error) => {
                let _ = send.reset(STOP_DATA_ANSWERED);
                return Err(error.to_string());
            }
        };
        carried += piece.len() as u64;
        if carried > context.max_bytes {
            let _ = send.reset(STOP_DATA_ANSWERED);
            return Err(format!(
                "more than {} bytes (gateway_webtransport_max_data_bytes)",
                context.max_bytes
            ));
        }
        let _held = Held::new(counters, piece.len());
        let len = piece.len() as u64;
        send.write_chunk(piece).await.map_err(gone)?;
        counters.data_out.fetch_add(len, Ordering::Relaxed);
    }
    let _ = send.finish();
    let answer = super::frame::read_frame(&mut recv, context.max_message_size)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the page answered nothing")?;
    let axum::extract::ws::Message::Text(text) = answer else {
        return Err("the page's answer is not a text frame".into());
    };
    let answer: AnswerJson<'_> =
        serde_json::from_str(text.as_str()).map_err(|e| format!("the page's answer: {e}"))?;
    Ok(match answer.kind.as_str() {
        "ok" => Ok(match answer.data {
            Some(raw) => payload_of(raw, answer.text).unwrap_or_default(),
            None => Bytes::new(),
        }),
        _ => Err(answer
            .message
            .unwrap_or_else(|| "the page refused the data".into())),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn service() -> String {
        let node = ferry::SecretKey::from_bytes(&[2; 32]).public();
        format!("{node}/files")
    }

    #[test]
    fn a_header_decodes_whole_or_waits_for_the_rest() {
        let to = service();
        let frame = encode_data_header(&to, Some(r#"{"op":"upload"}"#), false);
        let (header, used) = decode_data_header(&frame, 1 << 20).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(&header.request[..], br#"{"op":"upload"}"#);
        for cut in 0..frame.len() {
            assert_eq!(decode_data_header(&frame[..cut], 1 << 20), Ok(None));
        }
        let text = encode_data_header(&to, Some("héllo"), true);
        let (header, _) = decode_data_header(&text, 1 << 20).unwrap().unwrap();
        assert_eq!(&header.request[..], "héllo".as_bytes());
        let none = encode_data_header(&to, None, false);
        assert!(decode_data_header(&none, 1 << 20)
            .unwrap()
            .unwrap()
            .0
            .request
            .is_empty());
    }

    /// The worked exchange of docs/GATEWAY.md §13.11, byte for byte.
    #[test]
    fn the_worked_exchange_of_the_doc() {
        let header = encode_data_header("NODEID/files", Some(r#"{"op":"upload"}"#), false);
        assert_eq!(&header[..5], &[0, 0, 0, 0, 0x3a]);
        let reply = br#"{"bytes":5,"sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}"#;
        let Encoded::Text(answer) = ok_answer(5, 0, Bytes::from_static(reply)) else {
            panic!("not text")
        };
        assert_eq!(
            answer,
            r#"{"received":0,"sent":5,"type":"ok","data":{"bytes":5,"sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}}"#
        );
        assert_eq!(answer.len(), 0x82);
        let mut download = piece_header(3).to_vec();
        download.extend_from_slice(&[0, 1, 2]);
        assert_eq!(download, [0x02, 0, 0, 0, 3, 0, 1, 2]);
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        let to = service();
        let header = |json: &str| {
            let mut out = vec![FRAME_TEXT];
            out.extend_from_slice(&(json.len() as u32).to_be_bytes());
            out.extend_from_slice(json.as_bytes());
            decode_data_header(&out, 1 << 20)
        };
        assert_eq!(
            decode_data_header(&[FRAME_BINARY, 0, 0, 0, 1, 0], 100),
            Err(DataHeaderError::NotText(FRAME_BINARY))
        );
        assert_eq!(
            decode_data_header(&[FRAME_TEXT, 0, 0, 1, 0], 100),
            Err(DataHeaderError::TooBig(256))
        );
        assert_eq!(
            decode_data_header(&[FRAME_TEXT, 0, 0, 0, 1, 0xff], 100),
            Err(DataHeaderError::NotUtf8)
        );
        assert!(matches!(header("[1]"), Err(DataHeaderError::Malformed(_))));
        assert_eq!(
            header(&format!(r#"{{"type":"call","to":"{to}"}}"#)),
            Err(DataHeaderError::NotData("call".into()))
        );
        assert!(matches!(
            header(r#"{"type":"data"}"#),
            Err(DataHeaderError::Target(_))
        ));
        assert!(matches!(
            header(r#"{"type":"data","to":"nobody"}"#),
            Err(DataHeaderError::Target(_))
        ));
        assert_eq!(
            header(&format!(
                r#"{{"type":"data","to":"{to}","text":true,"data":1}}"#
            )),
            Err(DataHeaderError::TextNotString)
        );
    }

    #[test]
    fn the_gateways_frames_decode() {
        let mut bytes = piece_header(3).to_vec();
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&[FRAME_TEXT, 0, 0, 0, 2]);
        bytes.extend_from_slice(b"{}");
        let (first, used) = decode_data_frame(&bytes, 100).unwrap().unwrap();
        assert_eq!(first, DataFrame::Piece(Bytes::from_static(b"abc")));
        let (second, rest) = decode_data_frame(&bytes[used..], 100).unwrap().unwrap();
        assert_eq!(
            second,
            DataFrame::Answer {
                kind: FRAME_TEXT,
                body: Bytes::from_static(b"{}")
            }
        );
        assert_eq!(used + rest, bytes.len());
        assert_eq!(
            decode_data_frame(&[7], 100),
            Err(DataFrameError::UnknownKind(7))
        );
        assert_eq!(
            decode_data_frame(&piece_header(MAX_DATA_PIECE + 1), 100),
            Err(DataFrameError::TooBig(MAX_DATA_PIECE + 1))
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_data_header(&bytes, 200);
            let _ = decode_data_frame(&bytes, 200);
        }

        #[test]
        fn headers_round_trip_at_any_split(
            data in proptest::option::of("[ -~é]{0,40}"),
            text in any::<bool>(),
            upload in proptest::collection::vec(any::<u8>(), 0..64),
            cut in any::<prop::sample::Index>(),
        ) {
            let to = service();
            // Without `text`, `data` must be JSON: the string's JSON.
            let json = data.as_ref().map(|d| serde_json::Value::from(d.as_str()).to_string());
            let written = if text { data.as_deref() } else { json.as_deref() };
            let mut bytes = encode_data_header(&to, written, text);
            let header_len = bytes.len();
            bytes.extend_from_slice(&upload);
            let cut = cut.index(header_len);
            prop_assert_eq!(decode_data_header(&bytes[..cut], 1 << 20), Ok(None));
            let (header, used) = decode_data_header(&bytes, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(used, header_len);
            prop_assert_eq!(&bytes[used..], &upload[..]);
            prop_assert_eq!(header.to, crate::gateway::protocol::parse_call_target_text(&to).unwrap());
            let expected = written.map(|w| w.as_bytes().to_vec()).unwrap_or_default();
            prop_assert_eq!(header.request.to_vec(), expected);
        }

        #[test]
        fn pieces_round_trip(pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..8)) {
            let mut bytes = Vec::new();
            for piece in &pieces {
                bytes.extend_from_slice(&piece_header(piece.len()));
                bytes.extend_from_slice(piece);
            }
            let mut at = 0;
            for piece in &pieces {
                let (frame, used) = decode_data_frame(&bytes[at..], 100).unwrap().unwrap();
                prop_assert_eq!(frame, DataFrame::Piece(Bytes::copy_from_slice(piece)));
                at += used;
            }
            prop_assert_eq!(at, bytes.len());
        }
    }
}
