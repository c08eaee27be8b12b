//! # ferry
//!
//! A QUIC peer-to-peer messaging node. Programs talk by sending messages to **capability
//! addresses**: an [`Address`] names a mailbox on a node and carries that node's ed25519
//! signature, so holding the address is the permission to send, and addresses can be neither
//! guessed nor forged.
//!
//! - Every [`Node`] has an ed25519 identity ([`SecretKey`], [`NodeId`]). Nodes dial each other
//!   directly over QUIC; the TLS 1.3 handshake proves both identities (see `docs/PROTOCOL.md`).
//! - [`Node::mailbox`] makes a [`Mailbox`]; its [`Mailbox::address`] is all another node needs
//!   to deliver to it (the address carries dial hints).
//! - [`Node::send`] / [`Mailbox::send`] complete once the target node accepted the message. All
//!   messages from one mailbox to another travel in order on their own QUIC stream, so loss or a
//!   slow reader on one conversation never stalls another. [`Sender::enqueue`] pipelines many
//!   messages with cumulative acknowledgements.
//! - Each delivered [`Message`] carries the sender's reply address in [`Message::from`].
//!
//! ## Two nodes exchanging a message
//!
//! ```
//! use ferry::{Node, NodeConfig, SecretKey};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let alice = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
//! let bob = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
//!
//! // Bob opens a mailbox and hands its address to Alice (here: as text).
//! let mailbox = bob.mailbox();
//! let address: ferry::Address = mailbox.address().to_string().parse()?;
//!
//! // Alice sends; `send` returns once Bob's node has accepted the message.
//! alice.send(&address, "hello, bob").await?;
//!
//! let message = mailbox.recv().await?;
//! assert_eq!(message.decode::<String>()?, "hello, bob");
//!
//! // Bob answers to the sender's address; it arrives in Alice's inbox.
//! bob.send(message.from(), "hi, alice").await?;
//! let reply = alice.inbox().recv().await?;
//! assert_eq!(reply.decode::<String>()?, "hi, alice");
//!
//! alice.shutdown(std::time::Duration::from_secs(1)).await;
//! bob.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Receiving
//!
//! A mailbox is read with [`Mailbox::recv`] / [`Mailbox::recv_timeout`], or hands every
//! message to a handler ([`Mailbox::set_handler`]) or a stream ([`Mailbox::messages`]): one
//! form only; mixing them is refused with a clear error. A full mailbox
//! ([`NodeConfig::mailbox_capacity`]) stops reading its conversations' streams, so QUIC flow
//! control slows exactly those senders.
//!
//! ## Errors
//!
//! Each operation has its own error enum: [`BindError`], [`DialError`], [`SendError`],
//! [`RecvError`], [`AttachError`], [`AddressError`], [`VerifyError`],
//! [`StoreError`], [`PingError`].
//!
//! ## Durable mailboxes
//!
//! [`Node::durable_mailbox`] opens a mailbox backed by a [`MailboxStore`]: a message is on
//! disk before its sender gets the acknowledgement, and stays there until the application
//! calls [`Message::ack`]. See [`store`].
//!
//! The core (addresses in [`address`], frames in [`frame`]) is pure code on byte buffers with
//! no IO; the runtime (QUIC, tasks) is a thin layer over it.

pub use ferry_proto::{address, caveat, frame, observe, punch, relay};
mod clock;
mod config;
pub mod duration;
mod error;
use ferry_proto::identity;
mod conversation;
mod mailbox;
mod net;
mod node;
mod outbound;
mod payload;
mod registry;
mod runtime;
mod stats;
pub mod store;
mod streams;
mod sync;

pub use address::{Address, AddressError, AttenuateError, GrantId, MailboxId, VerifyError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Admission, ConfigError, NodeConfig, RelayAccess};
pub use conversation::Conversation;
pub use error::{
    AttachError, BindError, CallError, ConversationError, DecodeError, DialError, IoError,
    MonitorError, OpenError, PayloadError, PingError, RecvError, RevokeError, RouteFailure,
    SendError, ServeError, StreamError, TlsSetupError,
};
pub use ferry_proto::route::Route;
pub use frame::ErrorCode;
pub use identity::{NodeId, NodeIdError, SecretKey, NODE_ID_LEN, NODE_ID_TEXT_LEN};
pub use mailbox::Mailbox;
pub use net::tls::{endpoint_configs, EndpointConfigs, ALPN};
pub use node::{Builder, Node};
pub use outbound::{Delivery, Sender};
pub use registry::mailboxes::{Message, MAX_COUNTERS};
pub use registry::watches::DownReason;
pub use stats::{NodeStats, SendFailures};
pub use store::{MailboxStore, StoreError};
pub use streams::monitor::Monitor;
pub use streams::ping::{PING_SERVICE, RESERVED_PREFIX};
pub use streams::service::{Call, Service, ServiceHandle, ServiceOptions, Target};
