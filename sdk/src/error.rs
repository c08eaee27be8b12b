//! One error enum per operation, every variant documented.

use std::net::SocketAddr;

use crate::address::VerifyError;
use crate::config::ConfigError;
use crate::frame::{ErrorCode, Refusal};
use crate::identity::NodeId;
use crate::Route;

/// Why [`Node::bind`](crate::Node::bind) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The TLS identity could not be set up.
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsSetupError),
    /// The UDP socket could not be bound.
    #[error("binding UDP {addr}: {source}")]
    Socket {
        /// The address that was to be bound.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Why a connection to a peer could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// Neither the address's hints nor the address book tell where the peer is.
    #[error("no known socket address for node {0}")]
    NoAddress(NodeId),
    /// A node answered, but proved a different identity than the one dialed.
    #[error("dialed node {expected} but {actual} answered")]
    WrongNode {
        /// The node that was dialed.
        expected: NodeId,
        /// The node that answered.
        actual: NodeId,
    },
    /// The peer does not speak `ferry/1` (ALPN negotiation failed).
    #[error("peer does not speak protocol ferry/1")]
    IncompatibleVersion,
    /// The peer closed the connection on purpose, e.g. because it does not admit this node.
    #[error("peer refused the connection: {0}")]
    Refused(String),
    /// No handshake completed within the dial timeout.
    #[error("dial timed out")]
    Timeout,
    /// This node has reached `max_connections`.
    #[error("connection limit reached")]
    TooManyConnections,
    /// The connection failed or was lost (network, TLS, the peer closed it).
    #[error("connection failed: {0}")]
    Connection(#[source] quinn::ConnectionError),
    /// A stream on the connection failed (the peer stopped or reset it, or the connection
    /// was lost under it).
    #[error("stream failed: {0}")]
    Stream(#[source] StreamError),
    /// The peer presented no certificate this node could read.
    #[error("peer presented no usable certificate")]
    NoCertificate,
    /// This node keeps made-up addresses for at most 65,536 (relay, peer) pairs.
    #[error("too many peers reached through relays")]
    TooManyRelayedPeers,
    /// This node is shutting down.
    #[error("node is shutting down")]
    NodeClosed,
    /// The socket address cannot be dialed from this node (e.g. an IPv6 address from an
    /// IPv4-only socket).
    #[error("cannot dial {addr}: {reason}")]
    Undialable {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Several routes to the node were tried and none reached it within the dial timeout
    /// (with a single route, that route's own error is reported instead).
    #[error("no route to node {node}: {}", RouteFailure::list(tried))]
    NoRoute {
        /// The node dialed.
        node: NodeId,
        /// Every route tried, with why it failed.
        tried: Vec<RouteFailure>,
    },
}

/// One route of a failed dial, and why it failed ([`DialError::NoRoute`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFailure {
    /// The route.
    pub route: Route,
    /// Why it failed.
    pub error: DialError,
}

impl RouteFailure {
    fn list(tried: &[RouteFailure]) -> String {
        tried
            .iter()
            .map(|failure| format!("{}: {}", failure.route, failure.error))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Why a message could not be sent (the target node did not accept it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The address's signature is invalid: forged or tampered.
    #[error("address is forged or tampered")]
    Forged,
    /// The address has expired.
    #[error("address expired at {0} (unix seconds)")]
    Expired(u64),
    /// The target node says the address names another node.
    #[error("address names another node than the one that answered")]
    WrongNode,
    /// The mailbox does not exist or was closed (its address is revoked).
    #[error("no such mailbox (unknown or closed)")]
    NoSuchMailbox,
    /// The target node could not be reached.
    #[error("node unreachable: {0}")]
    Unreachable(#[from] DialError),
    /// The message is larger than the sender's or the receiver's limit.
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The target node did not acknowledge in time (`send_timeout`); the message may or may not
    /// have been delivered.
    #[error("no acknowledgement within the send timeout")]
    Timeout,
    /// The message could not be serialized.
    #[error("encoding message: {0}")]
    Encode(#[source] postcard::Error),
    /// The peer broke the protocol.
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
    /// This node is shutting down.
    #[error("node is shutting down")]
    NodeClosed,
    /// The target node is unreachable and this conversation's outbox (`send_window` bytes)
    /// is full: the message was not queued.
    #[error("target unreachable and its outbox is full ({window} bytes); try again later")]
    OutboxFull {
        /// The outbox size, `send_window`.
        window: usize,
    },
    /// The target is a durable mailbox of this node and its store failed to keep the message.
    #[error("storing the message: {0}")]
    Store(crate::store::StoreError),
    /// The grant of the target address was revoked (wire code REVOKED): the address and every
    /// address derived from it are void. Final.
    #[error("address revoked")]
    Revoked,
    /// A caveat of the target address forbids this (wire code CAVEAT): it is for another
    /// holder node, or for conversations with a service only, or has a caveat the target node
    /// does not know. Final.
    #[error("a caveat of the address forbids this: {0}")]
    Caveat(String),
    /// A "max messages" caveat of the target address is used up (wire code EXHAUSTED); the
    /// messages accepted before it were delivered. Final.
    #[error("the address's message budget is used up")]
    Exhausted,
}

impl SendError {
    /// The error for an address the receiver refused with `refusal` (`target`'s expiry for
    /// an expired one).
    pub(crate) fn refused(refusal: Refusal, target: &crate::Address) -> Self {
        match refusal {
            Refusal::NoSuchMailbox => Self::NoSuchMailbox,
            Refusal::Forged => Self::Forged,
            Refusal::Expired => Self::Expired(target.effective_expiry().unwrap_or(0)),
            Refusal::WrongNode => Self::WrongNode,
            Refusal::Revoked => Self::Revoked,
            Refusal::Caveat => Self::Caveat("refused by the receiver".into()),
            Refusal::Exhausted => Self::Exhausted,
        }
    }

    /// The refusal of an address this error is, if it is one (what a receiver answers with).
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::NoSuchMailbox => Some(Refusal::NoSuchMailbox),
            Self::Forged => Some(Refusal::Forged),
            Self::Expired(_) => Some(Refusal::Expired),
            Self::WrongNode => Some(Refusal::WrongNode),
            Self::Revoked => Some(Refusal::Revoked),
            Self::Caveat(_) => Some(Refusal::Caveat),
            Self::Exhausted => Some(Refusal::Exhausted),
            _ => None,
        }
    }

    /// The wire code a receiver refuses a stream with for this error: the refusal's, else
    /// PROTOCOL.
    pub(crate) fn wire_code(&self) -> ErrorCode {
        self.refusal().map_or(ErrorCode::PROTOCOL, Refusal::code)
    }

    /// The error a sender reports for a stream the receiver closed with `code` when retrying
    /// cannot help: a refusal of the address, else a protocol error with the reason.
    pub(crate) fn from_close(code: ErrorCode, reason: &str, target: &crate::Address) -> Self {
        match Refusal::from_code(code) {
            Some(refusal) => Self::refused(refusal, target),
            None => Self::Protocol(format!("receiver closed the stream ({}): {reason}", code.0)),
        }
    }
}

impl From<VerifyError> for SendError {
    fn from(err: VerifyError) -> Self {
        match err {
            VerifyError::WrongNode { .. } => Self::WrongNode,
            VerifyError::Expired(at) => Self::Expired(at),
            VerifyError::Forged => Self::Forged,
            VerifyError::Caveat(violation) => Self::Caveat(violation.to_string()),
            // A refusal this version does not name: treat like a forgery (final).
            _ => Self::Forged,
        }
    }
}

/// Why [`Mailbox::recv`](crate::Mailbox::recv) returned no message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The node shut down: no message will ever arrive.
    #[error("node is shut down")]
    Closed,
    /// The mailbox delivers to a handler or a stream instead; `recv` is not allowed.
    #[error("mailbox has a handler or stream attached; use one form of receiving only")]
    NotReceiving,
    /// `recv_timeout` waited its whole duration.
    #[error("no message within the timeout")]
    Timeout,
}

/// Why a handler or stream could not be attached to a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// A handler or stream is already attached.
    #[error("mailbox already has a handler or stream attached")]
    AlreadyAttached,
    /// A `recv` is in progress on this mailbox.
    #[error("mailbox is being received from with recv; use one form of receiving only")]
    Receiving,
}

/// Why a message payload could not be decoded as the requested type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("decoding message: {0}")]
pub struct DecodeError(#[source] pub(crate) PayloadError);

/// Why bytes are not the requested type (postcard, docs/PROTOCOL.md §7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// postcard could not read (or write) the value.
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
    /// The value was read with bytes left over: the payload is of another type.
    #[error("{0} bytes left over: the payload is not of the requested type")]
    TrailingBytes(usize),
}

/// A stream that failed under its user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Opening the stream failed: the connection was lost.
    #[error("opening: {0}")]
    Open(#[source] quinn::ConnectionError),
    /// Writing failed (the peer stopped the stream, or the connection was lost).
    #[error("writing: {0}")]
    Write(#[source] quinn::WriteError),
    /// Reading failed (the peer reset the stream, or the connection was lost).
    #[error("reading: {0}")]
    Read(#[source] quinn::ReadError),
}

/// An I/O error of an application's data source or sink, kept for the error's callers (who may
/// clone and compare errors: compared by kind).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct IoError(#[source] pub(crate) std::sync::Arc<std::io::Error>);

impl IoError {
    /// The kind of the I/O error.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }
}

impl PartialEq for IoError {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind()
    }
}

impl Eq for IoError {}

impl From<std::io::Error> for IoError {
    fn from(error: std::io::Error) -> Self {
        Self(std::sync::Arc::new(error))
    }
}

/// Why a conversation could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The target node could not be reached.
    #[error("node unreachable: {0}")]
    Unreachable(#[from] DialError),
    /// The node has no service of that name (or the mailbox accepts no conversations).
    #[error("no such service: {0}")]
    NoSuchService(String),
    /// The service does not allow this node.
    #[error("the service does not allow this node")]
    NotAllowed,
    /// The service name is not 1–64 ASCII letters, digits, `.`, `_` or `-`.
    #[error("invalid service name {0:?}")]
    InvalidName(String),
    /// The address's mailbox does not exist or was closed.
    #[error("no such mailbox (unknown or closed)")]
    NoSuchMailbox,
    /// The address's signature is invalid.
    #[error("address is forged or tampered")]
    Forged,
    /// The address has expired.
    #[error("address expired at {0} (unix seconds)")]
    Expired(u64),
    /// The address names another node than the one that answered.
    #[error("address names another node")]
    WrongNode,
    /// The address's grant was revoked (wire code REVOKED).
    #[error("address revoked")]
    Revoked,
    /// A caveat of the address forbids this conversation (wire code CAVEAT): another holder
    /// node or another service.
    #[error("a caveat of the address forbids this: {0}")]
    Caveat(String),
    /// A counting caveat of the address is used up (wire code EXHAUSTED).
    #[error("the address's budget is used up")]
    Exhausted,
    /// The service is at its limit of waiting conversations; try again later.
    #[error("the service is busy")]
    Busy,
    /// The target node is shutting down (CLOSE `SHUTTING_DOWN`): try again later, or
    /// elsewhere.
    #[error("the target node is shutting down")]
    PeerShuttingDown,
    /// The service accepted the conversation and gave it up at once (its handler failed).
    #[error("the service failed the conversation (code {0})")]
    Failed(u64),
    /// The node did not answer in time.
    #[error("no answer within the open timeout")]
    Timeout,
    /// The peer broke the protocol.
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
    /// This node is shutting down.
    #[error("node is shutting down")]
    NodeClosed,
}

/// Why a step of an open conversation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConversationError {
    /// The peer finished its side cleanly: nothing more will arrive.
    #[error("the peer ended the conversation")]
    Ended,
    /// The peer reset the stream or stopped reading: it cancelled (the code says why).
    #[error("the peer reset the conversation (code {0})")]
    Reset(u64),
    /// The peer gave the conversation up with a reason (e.g. its handler failed).
    #[error("the peer failed the conversation (code {code}): {reason}")]
    Failed {
        /// The error code.
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// The connection to the peer was lost.
    #[error("connection lost: {0}")]
    ConnectionLost(#[source] quinn::ConnectionError),
    /// Something else arrived than was asked for: data while an object was expected, or the
    /// other way round. It is left unread, for the matching method.
    #[error("unexpected {0} in the conversation")]
    Unexpected(&'static str),
    /// An object exceeds a size limit. Sending: the limit the peer announced (its
    /// `max_message_size`); nothing was sent and the conversation goes on. Receiving: this
    /// node's `max_message_size`, which the peer ignored; the object was skipped and the next
    /// read continues after it.
    #[error("object of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The object size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An object could not be serialized.
    #[error("encoding object: {0}")]
    Encode(#[source] postcard::Error),
    /// An object could not be deserialized as the requested type.
    #[error("decoding object: {0}")]
    Decode(#[source] PayloadError),
    /// Reading the data source or writing the data sink failed.
    #[error("data source or sink: {0}")]
    Io(#[source] IoError),
    /// The data source yielded more bytes than it was asked for.
    #[error("the data source overran its buffer")]
    Overrun,
    /// This side already finished: nothing more can be sent.
    #[error("this side of the conversation is already finished")]
    Finished,
    /// The peer broke the protocol.
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
}

/// Why a call returned no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The conversation could not be opened (no such service, not allowed, unreachable…).
    #[error("{0}")]
    Open(OpenError),
    /// No response within the call's timeout; the callee was told to stop.
    #[error("no response within the timeout")]
    Timeout,
    /// The callee failed or refused the request, with a reason.
    #[error("the call failed (code {code}): {reason}")]
    Failed {
        /// The error code.
        code: u64,
        /// The callee's reason.
        reason: String,
    },
    /// The callee ended the conversation without a response.
    #[error("the callee ended without a response")]
    NoResponse,
    /// The response could not be decoded as the requested type.
    #[error("decoding response: {0}")]
    Decode(#[source] PayloadError),
    /// The request could not be encoded.
    #[error("encoding request: {0}")]
    Encode(#[source] postcard::Error),
    /// The request is larger than the callee announced it accepts; it was not sent.
    #[error("request of {size} bytes exceeds the callee's limit of {max}")]
    TooLarge {
        /// The encoded request's size.
        size: usize,
        /// The callee's announced limit (its `max_message_size`).
        max: usize,
    },
    /// The conversation broke (connection lost, reset, protocol violation).
    #[error("{0}")]
    Conversation(ConversationError),
}

impl From<OpenError> for CallError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::Failed(code) => Self::Failed {
                code,
                reason: "the callee failed without answering".into(),
            },
            other => Self::Open(other),
        }
    }
}

impl From<ConversationError> for CallError {
    fn from(error: ConversationError) -> Self {
        match error {
            ConversationError::Ended => Self::NoResponse,
            ConversationError::Failed { code, reason } => Self::Failed { code, reason },
            ConversationError::Reset(code) => Self::Failed {
                code,
                reason: "the callee reset the conversation".into(),
            },
            ConversationError::Decode(reason) => Self::Decode(reason),
            ConversationError::Encode(reason) => Self::Encode(reason),
            ConversationError::TooLarge { size, max } => Self::TooLarge { size, max },
            other => Self::Conversation(other),
        }
    }
}

/// Why a service could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The name is not 1–64 ASCII letters, digits, `.`, `_` or `-`.
    #[error("invalid service name {0:?}")]
    InvalidName(String),
    /// A service of that name is already registered on this node.
    #[error("service {0:?} is already registered")]
    AlreadyRegistered(String),
    /// Names starting with `ferry.` are reserved for the services every node has built in
    /// (such as `ferry.ping`, see [`Node::ping`](crate::Node::ping)).
    #[error("service name {0:?} is reserved: names starting with \"ferry.\" are built in")]
    Reserved(String),
}

/// Why [`Node::ping`](crate::Node::ping) measured no round trip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    /// The peer could not be reached (no address, dial failed or timed out, or it refused this
    /// node).
    #[error("node unreachable: {0}")]
    Unreachable(DialError),
    /// The peer answered that it has no `ferry.ping` service: it runs a ferry version without
    /// built-in pings.
    #[error("the peer does not answer pings (no built-in ferry.ping service)")]
    Unsupported,
    /// The peer refused the ping stream with another reason.
    #[error("the peer refused the ping (code {code}): {reason}")]
    Refused {
        /// The error code of the peer's `Close` frame.
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// The peer reset the ping stream after accepting it (the code says why).
    #[error("the peer reset the ping (code {0})")]
    Reset(u64),
    /// The connection was lost during the ping.
    #[error("connection lost: {0}")]
    ConnectionLost(#[source] quinn::ConnectionError),
    /// No echo within the node's `call_timeout`.
    #[error("no echo within the timeout")]
    Timeout,
    /// The peer broke the protocol (an unexpected frame, or an echo of another value).
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
    /// This node is shutting down.
    #[error("node is shutting down")]
    NodeClosed,
}

/// Why [`Mailbox::revoke`](crate::Mailbox::revoke) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// The mailbox keeps `max` revoked grants already (the node's `max_revocations`, or the
    /// smaller bound given to [`Mailbox::revoke_within`](crate::Mailbox::revoke_within)):
    /// nothing was revoked.
    #[error("the mailbox has {max} revoked grants already")]
    TooMany {
        /// The bound.
        max: usize,
    },
    /// The revocation is in force but could not be stored: it lasts until the mailbox
    /// closes.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Why a watch could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// This node already watches `max_monitors_per_peer` distinct addresses on that peer (each
    /// takes one stream of the peer's stream limit); drop a watch or raise the limit.
    #[error("already watching {max} addresses on node {peer}")]
    TooManyWatches {
        /// The watched node.
        peer: NodeId,
        /// The limit, `NodeConfig::max_monitors_per_peer`.
        max: usize,
    },
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The key could not be encoded for rcgen.
    #[error("encoding the node key: {0}")]
    KeyEncoding(#[source] ed25519_dalek::pkcs8::Error),
    /// rcgen refused to make the certificate.
    #[error("making the certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("configuring TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("configuring QUIC crypto: {0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
}
