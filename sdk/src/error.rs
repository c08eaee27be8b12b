//! One error enum per operation, every variant documented.

use std::net::SocketAddr;

use crate::address::VerifyError;
use crate::config::ConfigError;
use crate::identity::NodeId;
use crate::tls::TlsSetupError;

/// Why [`Node::bind`](crate::Node::bind) failed.
#[derive(Debug, thiserror::Error)]
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
    /// The connection failed for another reason (network, TLS, peer reset).
    #[error("connection failed: {0}")]
    Failed(String),
    /// This node is shutting down.
    #[error("node is shutting down")]
    NodeClosed,
}

/// Why a message could not be sent (the target node did not accept it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    Encode(String),
    /// The peer broke the protocol.
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
    /// This node is shutting down.
    #[error("node is shutting down")]
    NodeClosed,
}

impl From<VerifyError> for SendError {
    fn from(err: VerifyError) -> Self {
        match err {
            VerifyError::WrongNode { .. } => Self::WrongNode,
            VerifyError::Expired(at) => Self::Expired(at),
            VerifyError::Forged => Self::Forged,
        }
    }
}

/// Why [`Mailbox::recv`](crate::Mailbox::recv) returned no message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
pub struct DecodeError(pub(crate) String);
