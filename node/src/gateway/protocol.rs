//! The gateway's WebSocket protocol: frames as values, and their encoding. Pure code on
//! strings and byte buffers, no IO; docs/GATEWAY.md is the specification.
//!
//! Every frame is a JSON object with a string `type`. A text frame is that object; a binary
//! frame is `header_len` (u32, big-endian) | the JSON object (`header_len` bytes) | payload
//! bytes, the payload taking the place of the object's `data` field. A payload that is a JSON
//! text travels in a text frame (as the value `data`), any other payload in a binary frame.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use ferry::{Address, NodeId};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// The close codes of the gateway (docs/GATEWAY.md §8).
pub mod close {
    /// The client closed.
    pub const NORMAL: u16 = 1000;
    /// The gateway is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket message exceeded `max_message_size`.
    pub const TOO_BIG: u16 = 1009;
    /// Nothing received for `idle_timeout`.
    pub const IDLE: u16 = 4000;
    /// The connection reached `max_connection_age`.
    pub const AGE: u16 = 4001;
    /// The credentials expired.
    pub const AUTH_EXPIRED: u16 = 4002;
    /// The application ended the session.
    pub const ENDED: u16 = 4003;
    /// The queue towards the client stayed full.
    pub const SLOW: u16 = 4008;
    /// More frames than the rate limit allows.
    pub const RATE: u16 = 4029;
    /// A malformed frame.
    pub const PROTOCOL: u16 = 4400;
    /// The upgrade's credentials are missing, invalid or expired (the connection never had a
    /// session).
    pub const UNAUTHORIZED: u16 = 4401;
    /// The page's origin may not connect, or the resume token is another user's.
    pub const FORBIDDEN: u16 = 4403;
    /// Another connection took the session over.
    pub const TAKEN_OVER: u16 = 4409;

    /// `reason` cut to the 123 bytes a close frame holds, at a character boundary.
    pub fn reason(reason: &str) -> &str {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        &reason[..end]
    }
}

/// Where a browser's message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A capability address (a peer's mailbox, another session, a service's mailbox).
    Address(Address),
    /// Every member of a channel.
    Channel(String),
    /// Every session of a user.
    User(String),
    /// One session, by session id.
    Session(String),
}

/// What a browser calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallTarget {
    /// A service's capability address.
    Address(Address),
    /// A service by name on a node (`NODEID/NAME` or `NODEID@HOST:PORT/NAME`).
    Service {
        /// The node.
        node: NodeId,
        /// Where to dial it, if given.
        addr: Option<SocketAddr>,
        /// The service name.
        name: String,
    },
}

/// A frame from the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Send `data` to `to`; answered with `ok` once the target accepted it.
    Send {
        /// The request number the answer carries.
        reference: u64,
        /// Where to.
        to: Target,
        /// The payload.
        data: Bytes,
    },
    /// Call a service with `data`; answered with `ok` carrying the reply.
    Call {
        /// The request number the answer carries.
        reference: u64,
        /// The service.
        to: CallTarget,
        /// The request payload.
        data: Bytes,
        /// The caller's deadline in milliseconds, if given.
        timeout_ms: Option<u64>,
    },
    /// Join a channel.
    Join {
        /// The request number the answer carries.
        reference: u64,
        /// The channel.
        channel: String,
    },
    /// Leave a channel.
    Leave {
        /// The request number the answer carries.
        reference: u64,
        /// The channel.
        channel: String,
    },
    /// Every delivered message with an id up to `id` is processed: the node forgets them;
    /// the client has the answer of every request with a `ref` up to `answered`: the gateway
    /// forgets those answers. At least one of the two is present.
    Ack {
        /// The highest processed message id.
        id: Option<u64>,
        /// The highest `ref` below which (and at which) the client wants no answer any more.
        answered: Option<u64>,
    },
    /// A new token for the session's user, before the current one expires.
    Refresh {
        /// The request number the answer carries.
        reference: u64,
        /// The token.
        token: String,
    },
    /// An application-level ping, answered with `ok`.
    Ping {
        /// The request number the answer carries.
        reference: u64,
    },
    // Capabilities (docs/GATEWAY.md §5.9, docs/PROTOCOL.md §4.11).
    /// Mint an address of the session's mailbox under a new grant; answered with `ok` whose
    /// `data` is `{"address": "ferry2…", "grant": "16 hex digits"}`.
    Grant {
        /// The request number the answer carries.
        reference: u64,
        /// When the address expires (unix seconds), if it does.
        expires: Option<u64>,
    },
    /// Revoke a grant of the session's mailbox (not grant 0, the session's own address).
    Revoke {
        /// The request number the answer carries.
        reference: u64,
        /// The grant.
        grant: ferry::address::GrantId,
    },
    /// Delivers again the publications of a channel the session is a member of that came
    /// after `offset` in the history of epoch `epoch` (a cluster's history); answered with
    /// `ok` whose `data` is `{"recovered":bool,"count":n}` once they are stored for the
    /// session.
    Recover {
        /// The request number the answer carries.
        reference: u64,
        /// The channel.
        channel: String,
        /// The epoch of the history the client's offset is in.
        epoch: String,
        /// The last offset the client has.
        offset: u64,
    },
    /// Who is in a channel (on every node of a cluster): answered with `ok` whose `data` is
    /// `{"members":[{"session":…,"user":…},…]}`.
    Presence {
        /// The request number the answer carries.
        reference: u64,
        /// The channel.
        channel: String,
    },
}

/// The stable error codes of `error` frames (docs/GATEWAY.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is well-formed JSON but a field is missing or invalid.
    BadRequest,
    /// The cluster (NATS) did not confirm a publication in time: it is refused (it may still
    /// arrive, if only the confirmation was lost).
    Unavailable,
    /// The frame's `type` is not known.
    UnknownType,
    /// The payload exceeds the limit.
    TooLarge,
    /// Not allowed by the gateway's configuration or the application.
    Forbidden,
    /// The address's mailbox does not exist or was closed.
    NoSuchMailbox,
    /// The address is forged or tampered.
    Forged,
    /// The address has expired.
    Expired,
    /// The address names another node than the one that answered.
    WrongNode,
    /// The target node could not be reached.
    Unreachable,
    /// No acknowledgement or reply in time.
    Timeout,
    /// The target is unreachable and the outbox towards it is full.
    OutboxFull,
    /// No such service (unknown, closed, or not allowed).
    NoSuchService,
    /// The callee refused (busy, not allowed).
    Refused,
    /// The callee failed the call.
    Failed,
    /// No session with that id, or no session of that user.
    NoSuchSession,
    /// The node is shutting down.
    NodeClosed,
    /// The node could not store the message.
    StoreFailed,
    /// A token was refused.
    Unauthorized,
    /// The request was received before on this session (a `ref` sent again) and its answer is
    /// no longer remembered: it was not carried out again, and its outcome is unknown.
    UnknownOutcome,
    /// Anything else.
    Internal,
    // Capabilities (docs/PROTOCOL.md §4.11).
    /// The address's grant was revoked.
    Revoked,
    /// A caveat of the address forbids this (another holder node, another service, a caveat
    /// the node does not know, a rate the gateway's own sends cannot wait for).
    Caveat,
    /// The address's "max messages" caveat is used up.
    Exhausted,
}

/// What an `error` frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The request it answers, if any.
    pub reference: Option<u64>,
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// How a message reached the session, beside its sender.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Via {
    /// Published to this channel.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub channel: Option<String>,
    /// Sent to every session of this user.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
    /// Sent by the application embedding the gateway (a push).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub push: bool,
    /// In a cluster: the epoch of the history the publication is kept in.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub epoch: Option<String>,
    /// In a cluster: the publication's offset in that history (increasing within a channel).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub offset: Option<u64>,
}

impl Via {
    /// The tag stored with the message (empty for a plain message).
    pub fn to_tag(&self) -> Bytes {
        if *self == Self::default() {
            return Bytes::new();
        }
        serde_json::to_vec(self)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    /// The tag read back (a tag that does not decode reads as none).
    pub fn from_tag(tag: &[u8]) -> Self {
        if tag.is_empty() {
            return Self::default();
        }
        serde_json::from_slice(tag).unwrap_or_default()
    }
}

/// The first frame of every connection.
#[derive(Debug, Clone, Serialize)]
pub struct Welcome {
    /// The session id.
    pub session: String,
    /// The user id.
    pub user: String,
    /// The session's capability address.
    pub address: String,
    /// The node's id.
    pub node: String,
    /// The token to resume this session with.
    pub resume: String,
    /// Whether this connection resumed an existing session.
    pub resumed: bool,
    /// Whether every message since the client's cursor will be delivered.
    pub recovered: bool,
    /// Whether the connection asked to resume a session that is gone (expired or unknown).
    pub expired: bool,
    /// Messages waiting for the session, delivered next.
    pub pending: u64,
    /// The id the messages of this connection start from: every message below it was
    /// acknowledged, or is before the client's cursor. Over WebTransport messages arrive on
    /// several streams, so a client counts its cursor up from here (docs/GATEWAY.md §13).
    pub next: u64,
    /// When the credentials expire (unix seconds), if they do.
    pub auth_expires: Option<u64>,
    /// The gateway's limits, so a client can keep within them.
    pub limits: WelcomeLimits,
    /// The configuration object for the client.
    pub config: Box<RawValue>,
}

/// The limits announced in the welcome.
#[derive(Debug, Clone, Serialize)]
pub struct WelcomeLimits {
    /// Largest WebSocket message accepted, bytes.
    pub max_message_size: usize,
    /// Largest payload of a send or call, bytes (the node's `max_message_size`).
    pub max_payload_size: usize,
    /// Frames allowed per `rate_window_ms`.
    pub rate_limit: u32,
    /// The rate window, milliseconds.
    pub rate_window_ms: u64,
    /// A connection that sends nothing for this long is closed, milliseconds.
    pub idle_timeout_ms: u64,
    /// The server sends a heartbeat (and a WebSocket ping) this often, milliseconds.
    pub ping_interval_ms: u64,
    /// A disconnected session is kept this long, milliseconds.
    pub session_ttl_ms: u64,
}

/// A frame to the browser.
#[derive(Debug, Clone)]
pub enum ServerFrame {
    /// The first frame.
    Welcome(Box<Welcome>),
    /// A message for the session.
    Message {
        /// Its id: increasing within the session; acknowledge and resume with it.
        id: u64,
        /// The sender's address (reply to it).
        from: String,
        /// How it came.
        via: Via,
        /// The payload.
        data: Bytes,
    },
    /// A request succeeded; a call's reply carries `data`.
    Ok {
        /// The request.
        reference: u64,
        /// The reply of a call.
        data: Option<Bytes>,
    },
    /// A request failed.
    Error(ErrorFrame),
    /// Sent every `ping_interval`, so that a client notices a connection gone silent.
    Heartbeat,
    /// A session joined (`join`) or left (`leave`) a channel the session is a member of
    /// (`gateway_join_leave`); not stored, not numbered.
    Presence {
        /// The channel.
        channel: String,
        /// Joined (`true`) or left.
        joined: bool,
        /// The session that joined or left.
        session: String,
        /// Its user.
        user: String,
    },
}

/// An encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

impl Encoded {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Binary(bytes) => bytes.len(),
        }
    }

    /// Whether it is empty (never, for an encoded frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a frame from the browser could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a JSON object with a string `type` (or a binary frame whose header is not one):
    /// the connection is closed (4400).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A known `type` with a missing or invalid field: answered with `bad_request`.
    #[error("bad request: {message}")]
    BadRequest {
        /// The frame's `ref`, if it had one.
        reference: Option<u64>,
        /// What is wrong.
        message: String,
    },
    /// An unknown `type`: answered with `unknown_type`.
    #[error("unknown frame type {kind:?}")]
    UnknownType {
        /// The frame's `ref`, if it had one.
        reference: Option<u64>,
        /// The type.
        kind: String,
    },
}

impl DecodeError {
    /// The `error` frame that answers it, or `None` when the connection must close.
    pub fn answer(&self) -> Option<ErrorFrame> {
        match self {
            Self::Malformed(_) => None,
            Self::BadRequest { reference, message } => Some(ErrorFrame {
                reference: *reference,
                code: ErrorCode::BadRequest,
                message: message.clone(),
            }),
            Self::UnknownType { reference, kind } => Some(ErrorFrame {
                reference: *reference,
                code: ErrorCode::UnknownType,
                message: format!("unknown frame type {kind:?}"),
            }),
        }
    }
}

/// Deserializes a present field as `Some`, also when it is `null`.
pub(crate) fn some_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The fields any client frame may have.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "ref", default)]
    reference: Option<u64>,
    #[serde(default, borrow)]
    to: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    text: Option<bool>,
    #[serde(default)]
    answered: Option<u64>,
    /// `grant`: when the address expires (unix seconds); `revoke`: unused.
    #[serde(default)]
    expires: Option<u64>,
    /// `revoke`: the grant (16 hex digits).
    #[serde(default)]
    grant: Option<String>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    offset: Option<u64>,
}

/// A target written as an object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetObject {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    session: Option<String>,
}

/// Decodes a text frame. Its `data` is the payload's JSON text, verbatim; with `"text":
/// true`, `data` is a JSON string and the payload is that string's UTF-8.
pub fn decode_text(text: &str) -> Result<ClientFrame, DecodeError> {
    let header: Header<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let data = match header.data {
        Some(raw) => Some(
            payload_of(raw, header.text).ok_or_else(|| DecodeError::BadRequest {
                reference: header.reference,
                message: "with `text`, `data` must be a string".into(),
            })?,
        ),
        None => None,
    };
    decode_header(header, data)
}

/// The payload a text frame's `data` stands for: its JSON text verbatim, or with `text` set,
/// the UTF-8 of the string it is (`None` if it is not a string).
pub(crate) fn payload_of(raw: &RawValue, text: Option<bool>) -> Option<Bytes> {
    if text == Some(true) {
        return serde_json::from_str::<String>(raw.get())
            .ok()
            .map(Bytes::from);
    }
    Some(Bytes::copy_from_slice(raw.get().as_bytes()))
}

/// Decodes a binary frame: `header_len` u32be | JSON header | payload.
pub fn decode_binary(frame: &[u8]) -> Result<ClientFrame, DecodeError> {
    let (len, rest) = frame
        .split_first_chunk::<4>()
        .ok_or_else(|| DecodeError::Malformed("binary frame shorter than 4 bytes".into()))?;
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    if rest.len() < len {
        return Err(DecodeError::Malformed(format!(
            "binary frame header of {len} bytes, but {} bytes follow",
            rest.len()
        )));
    }
    let (header, payload) = rest.split_at(len);
    let header: Header<'_> =
        serde_json::from_slice(header).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if header.data.is_some() {
        return Err(DecodeError::BadRequest {
            reference: header.reference,
            message: "a binary frame's header must not have `data`".into(),
        });
    }
    decode_header(header, Some(Bytes::copy_from_slice(payload)))
}

fn decode_header(header: Header<'_>, data: Option<Bytes>) -> Result<ClientFrame, DecodeError> {
    let reference = header.reference;
    let bad = |message: &str| DecodeError::BadRequest {
        reference,
        message: message.to_owned(),
    };
    let need_ref = || reference.ok_or_else(|| bad("`ref` is missing"));
    Ok(match header.kind.as_str() {
        "send" => ClientFrame::Send {
            reference: need_ref()?,
            to: parse_target(header.to.ok_or_else(|| bad("`to` is missing"))?)
                .map_err(|m| bad(&m))?,
            data: data.ok_or_else(|| bad("`data` is missing"))?,
        },
        "call" => ClientFrame::Call {
            reference: need_ref()?,
            to: parse_call_target(header.to.ok_or_else(|| bad("`to` is missing"))?)
                .map_err(|m| bad(&m))?,
            data: data.ok_or_else(|| bad("`data` is missing"))?,
            timeout_ms: header.timeout_ms,
        },
        "join" => ClientFrame::Join {
            reference: need_ref()?,
            channel: header.channel.ok_or_else(|| bad("`channel` is missing"))?,
        },
        "leave" => ClientFrame::Leave {
            reference: need_ref()?,
            channel: header.channel.ok_or_else(|| bad("`channel` is missing"))?,
        },
        "ack" => {
            if header.id.is_none() && header.answered.is_none() {
                return Err(bad("`id` or `answered` is missing"));
            }
            ClientFrame::Ack {
                id: header.id,
                answered: header.answered,
            }
        }
        "refresh" => ClientFrame::Refresh {
            reference: need_ref()?,
            token: header.token.ok_or_else(|| bad("`token` is missing"))?,
        },
        "ping" => ClientFrame::Ping {
            reference: need_ref()?,
        },
        "grant" => ClientFrame::Grant {
            reference: need_ref()?,
            expires: header.expires,
        },
        "revoke" => ClientFrame::Revoke {
            reference: need_ref()?,
            grant: header
                .grant
                .ok_or_else(|| bad("`grant` is missing"))?
                .parse()
                .map_err(|_| bad("`grant`: 16 hex digits"))?,
        },
        "recover" => ClientFrame::Recover {
            reference: need_ref()?,
            channel: header.channel.ok_or_else(|| bad("`channel` is missing"))?,
            epoch: header.epoch.ok_or_else(|| bad("`epoch` is missing"))?,
            offset: header.offset.ok_or_else(|| bad("`offset` is missing"))?,
        },
        "presence" => ClientFrame::Presence {
            reference: need_ref()?,
            channel: header.channel.ok_or_else(|| bad("`channel` is missing"))?,
        },
        _ => {
            return Err(DecodeError::UnknownType {
                reference,
                kind: header.kind.chars().take(64).collect(),
            })
        }
    })
}

fn parse_target(raw: &RawValue) -> Result<Target, String> {
    if let Ok(text) = serde_json::from_str::<String>(raw.get()) {
        return text
            .parse::<Address>()
            .map(Target::Address)
            .map_err(|e| format!("`to`: malformed address: {e}"));
    }
    let object: TargetObject = serde_json::from_str(raw.get())
        .map_err(|e| format!("`to`: expected an address or {{channel|user|session}}: {e}"))?;
    match (object.channel, object.user, object.session) {
        (Some(channel), None, None) => Ok(Target::Channel(channel)),
        (None, Some(user), None) => Ok(Target::User(user)),
        (None, None, Some(session)) => Ok(Target::Session(session)),
        _ => Err("`to`: exactly one of channel, user, session".into()),
    }
}

/// Why a call target is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallTargetError {
    /// It starts with `ferry1` but is no valid address.
    #[error("malformed address: {0}")]
    Address(#[source] ferry::AddressError),
    /// Neither an address nor `NODE/NAME`.
    #[error("expected ferry1…, NODEID/NAME or NODEID@HOST:PORT/NAME")]
    Form,
    /// Nothing follows the last `/`.
    #[error("the service name after '/' is empty")]
    EmptyName,
    /// The part after `@` is no socket address.
    #[error("address {text:?}: {source}")]
    SocketAddr {
        /// The text after `@`.
        text: String,
        /// Why it does not parse.
        source: std::net::AddrParseError,
    },
    /// The part before `/` (or `@`) is no node id.
    #[error("node id: {0}")]
    NodeId(#[source] ferry::NodeIdError),
}

/// Parses a call target: `ferry1…`, `NODEID/NAME` or `NODEID@HOST:PORT/NAME`.
pub fn parse_call_target_text(text: &str) -> Result<CallTarget, CallTargetError> {
    if text.starts_with("ferry1") {
        return text
            .parse::<Address>()
            .map(CallTarget::Address)
            .map_err(CallTargetError::Address);
    }
    let (peer, name) = text.rsplit_once('/').ok_or(CallTargetError::Form)?;
    if name.is_empty() {
        return Err(CallTargetError::EmptyName);
    }
    let (node, addr) = match peer.split_once('@') {
        Some((node, addr)) => (
            node,
            Some(
                addr.parse::<SocketAddr>()
                    .map_err(|source| CallTargetError::SocketAddr {
                        text: addr.to_owned(),
                        source,
                    })?,
            ),
        ),
        None => (peer, None),
    };
    Ok(CallTarget::Service {
        node: node.parse().map_err(CallTargetError::NodeId)?,
        addr,
        name: name.to_owned(),
    })
}

pub(crate) fn parse_call_target(raw: &RawValue) -> Result<CallTarget, String> {
    let text: String =
        serde_json::from_str(raw.get()).map_err(|_| "`to`: expected a string".to_owned())?;
    parse_call_target_text(&text).map_err(|e| format!("`to`: {e}"))
}

/// Whether `payload` is a JSON text (and so travels in a text frame as its value).
pub fn is_json(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// How a payload travels to a client (docs/GATEWAY.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body<'a> {
    /// A JSON text: spliced verbatim into a text frame as the value of `data`.
    Json(&'a str),
    /// Other valid UTF-8: a text frame with `"text":true` and `data` the JSON string of it.
    Text(String),
    /// Anything else: the payload of a binary frame.
    Binary,
}

impl<'a> Body<'a> {
    fn of(payload: &'a [u8]) -> Self {
        match std::str::from_utf8(payload) {
            Ok(text) if is_json(payload) => Self::Json(text.trim()),
            Ok(text) => Self::Text(serde_json::to_string(text).unwrap_or_default()),
            Err(_) => Self::Binary,
        }
    }

    /// The JSON value of `data` in a text frame; `None` for a binary frame.
    fn value(&self) -> Option<&str> {
        match self {
            Self::Json(text) => Some(text),
            Self::Text(string) => Some(string),
            Self::Binary => None,
        }
    }
}

/// Appends `"data":VALUE}` to a frame's JSON object without its closing brace.
fn close_with_data(out: &mut String, value: &str) {
    out.push_str("\"data\":");
    out.push_str(value);
    out.push('}');
}

/// Builds a frame: `fields` is the JSON object without `data`; `data`, if any, goes into the
/// object when it is text (JSON, or UTF-8 marked `text`), else into a binary frame.
pub(crate) fn frame(
    mut fields: serde_json::Map<String, serde_json::Value>,
    data: Option<&Bytes>,
) -> Encoded {
    let Some(data) = data else {
        return Encoded::Text(serde_json::Value::Object(fields).to_string());
    };
    let body = Body::of(data);
    if matches!(body, Body::Text(_)) {
        fields.insert("text".into(), serde_json::Value::Bool(true));
    }
    let head = serde_json::Value::Object(fields).to_string();
    if let Some(value) = body.value() {
        let mut out = String::with_capacity(head.len() + value.len() + 8);
        out.push_str(&head[..head.len() - 1]);
        if head.len() > 2 {
            out.push(',');
        }
        close_with_data(&mut out, value);
        return Encoded::Text(out);
    }
    let mut out = Vec::with_capacity(4 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(data);
    Encoded::Binary(out)
}

pub(crate) fn object(
    pairs: Vec<(&str, serde_json::Value)>,
) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .into_iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

/// A `message` frame prepared once for many recipients, which differ only in the message id:
/// the JSON (keys in the order [`ServerFrame::encode`] writes them: `channel`, `from`, `id`,
/// `push`, `text`, `type`, `user`, then `data`) is split around the id.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    /// `{` and the members before `"id":`, ending with `"id":` (see [`MessageTemplate::head`]).
    head: Arc<str>,
    /// The members after the id (`,"push":…,"type":"message",…`), without the closing `}`.
    tail: Cow<'static, str>,
    /// The payload.
    data: Bytes,
    /// The JSON string of a payload that is UTF-8 but no JSON text.
    text: Option<String>,
    /// Whether the payload is a JSON text.
    json: bool,
}

/// The last sender of plain messages (from a peer or a session, not through a channel, a user
/// or a push) that a connection (or its pump) handed over, with its [`MessageTemplate::head`]:
/// a run of messages from one sender encodes its address once.
#[derive(Debug, Clone, Default)]
pub struct LastSender(Option<(Address, Arc<str>)>);

impl LastSender {
    /// The head of a frame of a message from `from` come `via`.
    pub fn head(&mut self, from: &Address, via: &Via) -> Arc<str> {
        let plain = *via == Via::default();
        if let Some((_, head)) = self
            .0
            .as_ref()
            .filter(|(sender, _)| plain && sender == from)
        {
            return head.clone();
        }
        let head = MessageTemplate::head(&from.to_string(), via);
        if plain {
            self.0 = Some((from.clone(), head.clone()));
        }
        head
    }
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

impl MessageTemplate {
    /// The frame of a message from `from`, come `via`, carrying `data`.
    pub fn new(from: &str, via: &Via, data: Bytes) -> Self {
        Self::with_head(Self::head(from, via), via, data)
    }

    /// The part of the frame of every message from `from` come `via` before its id: kept by a
    /// session for its last sender, whose messages then cost no encoding of the address.
    pub fn head(from: &str, via: &Via) -> Arc<str> {
        let mut head = String::from("{");
        if let Some(channel) = &via.channel {
            head.push_str("\"channel\":");
            head.push_str(&json_string(channel));
            head.push(',');
        }
        if let Some(epoch) = &via.epoch {
            head.push_str("\"epoch\":");
            head.push_str(&json_string(epoch));
            head.push(',');
        }
        head.push_str("\"from\":");
        head.push_str(&json_string(from));
        head.push_str(",\"id\":");
        head.into()
    }

    /// The frame of a message whose part before the id is `head` (made by
    /// [`MessageTemplate::head`] for the same `via`).
    pub fn with_head(head: Arc<str>, via: &Via, data: Bytes) -> Self {
        let (json, text) = match Body::of(&data) {
            Body::Json(_) => (true, None),
            Body::Text(text) => (false, Some(text)),
            Body::Binary => (false, None),
        };
        let tail = match (via.offset, via.push, &via.user) {
            // A message from a peer or a session: no allocation.
            (None, false, None) if text.is_some() => {
                Cow::Borrowed(",\"text\":true,\"type\":\"message\"")
            }
            (None, false, None) => Cow::Borrowed(",\"type\":\"message\""),
            _ => {
                let mut tail = String::new();
                if let Some(offset) = via.offset {
                    tail.push_str(",\"offset\":");
                    tail.push_str(&offset.to_string());
                }
                if via.push {
                    tail.push_str(",\"push\":true");
                }
                if text.is_some() {
                    tail.push_str(",\"text\":true");
                }
                tail.push_str(",\"type\":\"message\"");
                if let Some(user) = &via.user {
                    tail.push_str(",\"user\":");
                    tail.push_str(&json_string(user));
                }
                Cow::Owned(tail)
            }
        };
        Self {
            head,
            tail,
            data,
            text,
            json,
        }
    }

    /// The frame for message `id`.
    pub fn encode(&self, id: u64) -> Encoded {
        use std::fmt::Write as _;
        let value = match &self.text {
            Some(text) => Some(text.as_str()),
            None => self
                .json
                .then(|| std::str::from_utf8(&self.data).ok().map(str::trim))
                .flatten(),
        };
        let mut header = String::with_capacity(
            self.head.len() + 20 + self.tail.len() + 9 + value.map_or(0, str::len),
        );
        header.push_str(&self.head);
        let _ = write!(header, "{id}");
        header.push_str(&self.tail);
        if let Some(value) = value {
            header.push(',');
            close_with_data(&mut header, value);
            return Encoded::Text(header);
        }
        header.push('}');
        let mut out = Vec::with_capacity(4 + header.len() + self.data.len());
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        Encoded::Binary(out)
    }
}

impl ServerFrame {
    /// Encodes the frame.
    pub fn encode(&self) -> Encoded {
        use serde_json::json;
        match self {
            Self::Welcome(welcome) => {
                let mut value = serde_json::to_value(welcome).unwrap_or_default();
                if let Some(fields) = value.as_object_mut() {
                    fields.insert("type".into(), json!("welcome"));
                }
                Encoded::Text(value.to_string())
            }
            Self::Message {
                id,
                from,
                via,
                data,
            } => MessageTemplate::new(from, via, data.clone()).encode(*id),
            Self::Ok { reference, data } => frame(
                object(vec![("type", json!("ok")), ("ref", json!(reference))]),
                data.as_ref(),
            ),
            Self::Error(error) => frame(
                object(vec![
                    ("type", json!("error")),
                    ("ref", json!(error.reference)),
                    ("code", json!(error.code)),
                    ("message", json!(error.message)),
                ]),
                None,
            ),
            Self::Heartbeat => Encoded::Text(r#"{"type":"heartbeat"}"#.into()),
            Self::Presence {
                channel,
                joined,
                session,
                user,
            } => frame(
                object(vec![
                    ("type", json!(if *joined { "join" } else { "leave" })),
                    ("channel", json!(channel)),
                    ("session", json!(session)),
                    ("user", json!(user)),
                ]),
                None,
            ),
        }
    }
}

impl ClientFrame {
    /// Encodes the frame as a client would (for tests and Rust clients).
    pub fn encode(&self) -> Encoded {
        use serde_json::json;
        let target = |to: &Target| match to {
            Target::Address(address) => json!(address.to_string()),
            Target::Channel(channel) => json!({ "channel": channel }),
            Target::User(user) => json!({ "user": user }),
            Target::Session(session) => json!({ "session": session }),
        };
        let call_target = |to: &CallTarget| match to {
            CallTarget::Address(address) => json!(address.to_string()),
            CallTarget::Service { node, addr, name } => match addr {
                Some(addr) => json!(format!("{node}@{addr}/{name}")),
                None => json!(format!("{node}/{name}")),
            },
        };
        match self {
            Self::Send {
                reference,
                to,
                data,
            } => frame(
                object(vec![
                    ("type", json!("send")),
                    ("ref", json!(reference)),
                    ("to", target(to)),
                ]),
                Some(data),
            ),
            Self::Call {
                reference,
                to,
                data,
                timeout_ms,
            } => frame(
                object(vec![
                    ("type", json!("call")),
                    ("ref", json!(reference)),
                    ("to", call_target(to)),
                    ("timeout_ms", json!(timeout_ms)),
                ]),
                Some(data),
            ),
            Self::Join { reference, channel } => frame(
                object(vec![
                    ("type", json!("join")),
                    ("ref", json!(reference)),
                    ("channel", json!(channel)),
                ]),
                None,
            ),
            Self::Leave { reference, channel } => frame(
                object(vec![
                    ("type", json!("leave")),
                    ("ref", json!(reference)),
                    ("channel", json!(channel)),
                ]),
                None,
            ),
            Self::Ack { id, answered } => frame(
                object(vec![
                    ("type", json!("ack")),
                    ("id", json!(id)),
                    ("answered", json!(answered)),
                ]),
                None,
            ),
            Self::Refresh { reference, token } => frame(
                object(vec![
                    ("type", json!("refresh")),
                    ("ref", json!(reference)),
                    ("token", json!(token)),
                ]),
                None,
            ),
            Self::Ping { reference } => frame(
                object(vec![("type", json!("ping")), ("ref", json!(reference))]),
                None,
            ),
            Self::Grant { reference, expires } => frame(
                object(vec![
                    ("type", json!("grant")),
                    ("ref", json!(reference)),
                    ("expires", json!(expires)),
                ]),
                None,
            ),
            Self::Revoke { reference, grant } => frame(
                object(vec![
                    ("type", json!("revoke")),
                    ("ref", json!(reference)),
                    ("grant", json!(grant.to_string())),
                ]),
                None,
            ),
            Self::Recover {
                reference,
                channel,
                epoch,
                offset,
            } => frame(
                object(vec![
                    ("type", json!("recover")),
                    ("ref", json!(reference)),
                    ("channel", json!(channel)),
                    ("epoch", json!(epoch)),
                    ("offset", json!(offset)),
                ]),
                None,
            ),
            Self::Presence { reference, channel } => frame(
                object(vec![
                    ("type", json!("presence")),
                    ("ref", json!(reference)),
                    ("channel", json!(channel)),
                ]),
                None,
            ),
        }
    }
}

/// Decodes a client frame from its encoding.
pub fn decode(frame: &Encoded) -> Result<ClientFrame, DecodeError> {
    match frame {
        Encoded::Text(text) => decode_text(text),
        Encoded::Binary(bytes) => decode_binary(bytes),
    }
}

/// A server frame as a client reads it (for tests and Rust clients).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The JSON object (for binary frames, the header).
    pub header: serde_json::Value,
    /// The payload: the raw `data` text of a text frame (the string's UTF-8 when the frame
    /// says `"text":true`), or a binary frame's payload.
    pub data: Option<Bytes>,
}

impl Received {
    /// The frame's `type`.
    pub fn kind(&self) -> &str {
        self.header
            .get("type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    }
}

/// Reads a server frame (for tests and Rust clients).
pub fn read_server_frame(frame: &Encoded) -> Result<Received, DecodeError> {
    match frame {
        Encoded::Text(text) => {
            #[derive(Deserialize)]
            struct WithData<'a> {
                #[serde(default, borrow, deserialize_with = "some_raw")]
                data: Option<&'a RawValue>,
                #[serde(default)]
                text: Option<bool>,
            }
            let with: WithData<'_> =
                serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
            let header: serde_json::Value =
                serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
            let data = match with.data {
                Some(raw) => Some(payload_of(raw, with.text).ok_or_else(|| {
                    DecodeError::Malformed("with `text`, `data` must be a string".into())
                })?),
                None => None,
            };
            Ok(Received { header, data })
        }
        Encoded::Binary(bytes) => {
            let (len, rest) = bytes
                .split_first_chunk::<4>()
                .ok_or_else(|| DecodeError::Malformed("short binary frame".into()))?;
            let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
            if rest.len() < len {
                return Err(DecodeError::Malformed("binary header truncated".into()));
            }
            let (head, payload) = rest.split_at(len);
            Ok(Received {
                header: serde_json::from_slice(head)
                    .map_err(|e| DecodeError::Malformed(e.to_string()))?,
                data: Some(Bytes::copy_from_slice(payload)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;
    use ferry::{MailboxId, SecretKey};
    use proptest::prelude::*;

    fn address() -> Address {
        Address::mint(&SecretKey::from_bytes(&[1; 32]), MailboxId(7), None, vec![])
    }

    #[test]
    fn text_send_keeps_the_json_verbatim() {
        let text = format!(
            r#"{{"type":"send","ref":3,"to":"{}","data":{{"a": [1, 2]}}}}"#,
            address()
        );
        let frame = decode_text(&text).unwrap();
        assert_eq!(
            frame,
            ClientFrame::Send {
                reference: 3,
                to: Target::Address(address()),
                data: Bytes::from_static(br#"{"a": [1, 2]}"#),
            }
        );
    }

    #[test]
    fn null_data_is_a_payload() {
        let frame = decode_text(r#"{"type":"send","ref":1,"to":{"channel":"c"},"data":null}"#);
        assert_eq!(
            frame.unwrap(),
            ClientFrame::Send {
                reference: 1,
                to: Target::Channel("c".into()),
                data: Bytes::from_static(b"null"),
            }
        );
    }

    #[test]
    fn binary_frames() {
        let frame = ClientFrame::Send {
            reference: 9,
            to: Target::User("bob".into()),
            data: Bytes::from_static(&[0, 159, 146, 150]),
        };
        let encoded = frame.encode();
        assert!(matches!(encoded, Encoded::Binary(_)));
        assert_eq!(decode(&encoded).unwrap(), frame);
        assert!(matches!(
            decode_binary(&[0, 0, 0, 9, b'{']),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_binary(&[0]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            decode_text("not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_text(r#"{"ref":1}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode_text(r#"{"type":"fly","ref":4}"#),
            Err(DecodeError::UnknownType {
                reference: Some(4),
                kind: "fly".into()
            })
        );
        let missing = decode_text(r#"{"type":"send","ref":5,"data":1}"#).unwrap_err();
        assert_eq!(missing.answer().unwrap().reference, Some(5));
        assert_eq!(missing.answer().unwrap().code, ErrorCode::BadRequest);
        assert!(matches!(
            decode_text(r#"{"type":"send","ref":5,"to":"ferry1xx","data":1}"#),
            Err(DecodeError::BadRequest { .. })
        ));
        assert!(matches!(
            decode_text(r#"{"type":"send","ref":5,"to":{"user":"a","channel":"b"},"data":1}"#),
            Err(DecodeError::BadRequest { .. })
        ));
    }

    #[test]
    fn call_targets() {
        let node = SecretKey::from_bytes(&[2; 32]).public();
        assert_eq!(
            parse_call_target_text(&format!("{node}/echo")).unwrap(),
            CallTarget::Service {
                node,
                addr: None,
                name: "echo".into()
            }
        );
        assert_eq!(
            parse_call_target_text(&format!("{node}@127.0.0.1:9/echo")).unwrap(),
            CallTarget::Service {
                node,
                addr: Some("127.0.0.1:9".parse().unwrap()),
                name: "echo".into()
            }
        );
        assert!(parse_call_target_text("nonsense").is_err());
        assert!(parse_call_target_text(&format!("{node}/")).is_err());
    }

    #[test]
    fn message_templates_match_the_generic_encoding() {
        use serde_json::json;
        let vias = [
            Via::default(),
            Via {
                channel: Some("room.1".into()),
                ..Via::default()
            },
            Via {
                user: Some("bo\"b".into()),
                push: true,
                ..Via::default()
            },
            Via {
                channel: Some("room.2".into()),
                epoch: Some("k3x".into()),
                offset: Some(77),
                ..Via::default()
            },
        ];
        for via in &vias {
            for data in [&b" {\"a\":[1,2]} "[..], b"\xff\x00", b"7", b""] {
                let data = Bytes::copy_from_slice(data);
                let generic = frame(
                    object(vec![
                        ("type", json!("message")),
                        ("id", json!(12345)),
                        ("from", json!("ferry1x")),
                        ("channel", json!(via.channel)),
                        ("user", json!(via.user)),
                        ("push", if via.push { json!(true) } else { json!(null) }),
                        ("epoch", json!(via.epoch)),
                        ("offset", json!(via.offset)),
                    ]),
                    Some(&data),
                );
                let template = MessageTemplate::new("ferry1x", via, data);
                assert_eq!(template.encode(12345), generic);
            }
        }
    }

    #[test]
    fn the_last_sender_s_head_is_reused_only_for_that_sender_and_plain_messages() {
        let a = address();
        let b = Address::mint(&SecretKey::from_bytes(&[2; 32]), MailboxId(8), None, vec![]);
        assert_ne!(a, b);
        let channel = Via {
            channel: Some("lobby".into()),
            ..Via::default()
        };
        let plain = Via::default();
        let mut last = LastSender::default();
        for (from, via) in [
            (&a, &plain),
            (&a, &plain),
            (&b, &plain),
            (&a, &channel),
            (&a, &plain),
        ] {
            assert_eq!(
                last.head(from, via),
                MessageTemplate::head(&from.to_string(), via),
                "{from} {via:?}"
            );
        }
    }

    #[test]
    fn server_frames() {
        let message = ServerFrame::Message {
            id: 4,
            from: "ferry1abc".into(),
            via: Via {
                channel: Some("lobby".into()),
                ..Via::default()
            },
            data: Bytes::from_static(br#"{"hi":1}"#),
        };
        let Encoded::Text(text) = message.encode() else {
            panic!("a JSON payload travels as text")
        };
        assert_eq!(
            text,
            r#"{"channel":"lobby","from":"ferry1abc","id":4,"type":"message","data":{"hi":1}}"#
        );
        let binary = ServerFrame::Ok {
            reference: 2,
            data: Some(Bytes::from_static(b"\xff\x00")),
        }
        .encode();
        let read = read_server_frame(&binary).unwrap();
        assert_eq!(read.kind(), "ok");
        assert_eq!(read.data.unwrap(), Bytes::from_static(b"\xff\x00"));
        let error = ServerFrame::Error(ErrorFrame {
            reference: None,
            code: ErrorCode::NoSuchMailbox,
            message: "gone".into(),
        })
        .encode();
        assert_eq!(
            read_server_frame(&error).unwrap().header["code"],
            "no_such_mailbox"
        );
    }

    #[test]
    fn text_that_is_no_json_travels_as_a_string() {
        let message = ServerFrame::Message {
            id: 1,
            from: "ferry1abc".into(),
            via: Via::default(),
            data: Bytes::from_static("héllo \"you\"".as_bytes()),
        };
        let encoded = message.encode();
        assert_eq!(
            encoded,
            Encoded::Text(
                r#"{"from":"ferry1abc","id":1,"text":true,"type":"message","data":"héllo \"you\""}"#
                    .into()
            )
        );
        let read = read_server_frame(&encoded).unwrap();
        assert_eq!(
            read.data.unwrap(),
            Bytes::from_static("héllo \"you\"".as_bytes())
        );
        // A client's text: `data` is the string, the payload its UTF-8 (not its JSON).
        let frame =
            decode_text(r#"{"type":"send","ref":1,"to":{"channel":"c"},"text":true,"data":"hi"}"#);
        assert_eq!(
            frame.unwrap(),
            ClientFrame::Send {
                reference: 1,
                to: Target::Channel("c".into()),
                data: Bytes::from_static(b"hi"),
            }
        );
        let error =
            decode_text(r#"{"type":"send","ref":2,"to":{"channel":"c"},"text":true,"data":1}"#)
                .unwrap_err();
        assert_eq!(error.answer().unwrap().code, ErrorCode::BadRequest);
    }

    #[test]
    fn acks_carry_an_id_or_the_answered_refs() {
        assert_eq!(
            decode_text(r#"{"type":"ack","answered":7}"#).unwrap(),
            ClientFrame::Ack {
                id: None,
                answered: Some(7)
            }
        );
        assert!(matches!(
            decode_text(r#"{"type":"ack"}"#),
            Err(DecodeError::BadRequest { .. })
        ));
    }

    #[test]
    fn tags() {
        assert!(Via::default().to_tag().is_empty());
        let via = Via {
            user: Some("u".into()),
            push: true,
            ..Via::default()
        };
        assert_eq!(Via::from_tag(&via.to_tag()), via);
        assert_eq!(Via::from_tag(b"garbage"), Via::default());
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            "[a-z]{1,8}".prop_map(Target::Channel),
            "[a-z]{1,8}".prop_map(Target::User),
            "[a-z0-9]{1,8}".prop_map(Target::Session),
            Just(Target::Address(address())),
        ]
    }

    fn payload() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from),
            any::<i64>().prop_map(|n| Bytes::from(n.to_string())),
            "[ -~]{0,20}".prop_map(|s| Bytes::from(serde_json::to_string(&s).unwrap())),
        ]
    }

    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (any::<u64>(), target(), payload()).prop_map(|(reference, to, data)| {
                ClientFrame::Send {
                    reference,
                    to,
                    data,
                }
            }),
            (any::<u64>(), payload(), proptest::option::of(any::<u64>())).prop_map(
                |(reference, data, timeout_ms)| ClientFrame::Call {
                    reference,
                    to: CallTarget::Address(address()),
                    data,
                    timeout_ms,
                }
            ),
            (any::<u64>(), "[a-z.]{0,12}")
                .prop_map(|(reference, channel)| ClientFrame::Join { reference, channel }),
            (any::<u64>(), "[a-z.]{0,12}")
                .prop_map(|(reference, channel)| ClientFrame::Leave { reference, channel }),
            (
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>())
            )
                .prop_filter("an ack has an id or answered", |(id, answered)| {
                    id.is_some() || answered.is_some()
                })
                .prop_map(|(id, answered)| ClientFrame::Ack { id, answered }),
            (any::<u64>(), "[ -~]{0,30}")
                .prop_map(|(reference, token)| ClientFrame::Refresh { reference, token }),
            any::<u64>().prop_map(|reference| ClientFrame::Ping { reference }),
            (any::<u64>(), proptest::option::of(any::<u64>()))
                .prop_map(|(reference, expires)| ClientFrame::Grant { reference, expires }),
            (any::<u64>(), any::<u64>()).prop_map(|(reference, grant)| ClientFrame::Revoke {
                reference,
                grant: ferry::address::GrantId(grant),
            }),
            (any::<u64>(), "[a-z.]{1,20}")
                .prop_map(|(reference, channel)| ClientFrame::Presence { reference, channel }),
            (any::<u64>(), "[a-z.]{1,20}", "[a-z0-9]{1,10}", any::<u64>()).prop_map(
                |(reference, channel, epoch, offset)| ClientFrame::Recover {
                    reference,
                    channel,
                    epoch,
                    offset,
                }
            ),
        ]
    }

    proptest! {
        /// Every frame decodes to itself after encoding.
        #[test]
        fn client_frames_round_trip(frame in client_frame()) {
            let encoded = frame.encode();
            let decoded = decode(&encoded).unwrap();
            // A JSON payload may gain or lose surrounding whitespace, nothing else.
            match (&frame, &decoded) {
                (ClientFrame::Send { data: a, .. }, ClientFrame::Send { data: b, .. })
                | (ClientFrame::Call { data: a, .. }, ClientFrame::Call { data: b, .. }) => {
                    prop_assert_eq!(a.trim_ascii(), b.trim_ascii());
                }
                _ => prop_assert_eq!(&frame, &decoded),
            }
        }

        /// Arbitrary input never panics the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_binary(&bytes);
            let _ = decode_text(&String::from_utf8_lossy(&bytes));
        }

        /// Arbitrary JSON objects with a type never panic the decoder.
        #[test]
        fn arbitrary_objects_never_panic(
            kind in "(send|call|join|leave|ack|refresh|ping|x)",
            reference in proptest::option::of(any::<i64>()),
            to in proptest::option::of("[ -~]{0,12}"),
        ) {
            let value = serde_json::json!({"type": kind, "ref": reference, "to": to, "data": 1});
            let _ = decode_text(&value.to_string());
        }

        /// Server frames read back with the same payload.
        #[test]
        fn server_payloads_round_trip(data in payload(), id in any::<u64>()) {
            let frame = ServerFrame::Message {
                id,
                from: "ferry1x".into(),
                via: Via::default(),
                data: data.clone(),
            };
            let read = read_server_frame(&frame.encode()).unwrap();
            prop_assert_eq!(read.header["id"].as_u64(), Some(id));
            let got = read.data.unwrap();
            prop_assert_eq!(got.trim_ascii(), data.trim_ascii());
        }
    }
}
