//! # ferry-proto
//!
//! ferry's protocol (docs/PROTOCOL.md) without any IO, in the manner of `quinn-proto`: no
//! sockets, no tasks, no files, no clock. Codecs are pure functions on byte buffers; the
//! protocol's state machines take events and the current time as arguments and say what to
//! send and when to be woken. The `ferry` crate drives them over QUIC (quinn) and tokio; tests
//! and the deterministic simulation drive them on virtual time.
//!
//! - [`identity`]: ed25519 keys and [`NodeId`]s.
//! - [`address`]: capability addresses (§4).
//! - [`frame`]: the frames of every stream kind (§5, §10, §11) and the error codes.
//! - [`relay`]: relay datagrams (§12.1); [`observe`] and [`punch`]: the answers of the
//!   built-in services that find direct paths (§10.12, §10.13).
//! - [`route`]: routes to a node; [`rule`]: which connection two nodes keep (§2.4);
//!   [`race`]: which route of a dial to try when (§2.5).
//! - [`sender`]: the sending side of a conversation run (§6.3); [`receiver`]: the receiving
//!   side (§6.4).
//! - [`conversation`]: conversation streams (§10): the opening exchange on both sides, the
//!   reader of a conversation's frames and what ending or abandoning one sends.

pub mod address;
pub mod caveat;
pub mod conversation;
pub mod frame;
pub mod identity;
pub mod observe;
pub mod punch;
pub mod punch_schedule;
pub mod race;
pub mod receiver;
pub mod relay;
pub mod route;
pub mod rule;
pub mod sender;
pub mod service_name;

pub use address::{
    Address, AddressError, AttenuateError, CaveatViolation, GrantId, Hints, MailboxId, Usage,
    VerifyError,
};
pub use caveat::Caveat;
pub use frame::ErrorCode;
pub use identity::{NodeId, NodeIdError, SecretKey, NODE_ID_LEN, NODE_ID_TEXT_LEN};
pub use route::Route;
