//! Capability addresses: pure code on byte buffers, no IO.
//!
//! An [`Address`] names a mailbox on a node and proves, with the node's ed25519 signature, that
//! the node handed it out. Holding one is the permission to send to that mailbox.
//!
//! Byte layout (all integers big-endian), see docs/PROTOCOL.md §4:
//!
//! ```text
//! core  = node_id[32] | mailbox_id[8] | expires[8] | signature[64]      (112 bytes)
//! bytes = core | hint* | crc32[4]
//! hint  = 0x04 | ipv4[4] | port[2]  |  0x06 | ipv6[16] | port[2]
//!       | tag | len[1] | value[len]     (any other tag: an extension, kept verbatim)
//! signed message = "ferry/address/v1" | node_id | mailbox_id | expires
//! text  = "ferry1" | base64url-nopad(bytes)
//! ```
//!
//! `expires` is seconds since the Unix epoch, 0 meaning "never". Hints are dial hints, not
//! signed: changing one only changes where a sender looks for the node, and the TLS handshake
//! still proves the node's identity. The CRC-32 catches transcription errors in the whole
//! address (hints included) before any signature check.
//!
//! **Grants and caveats** (PROTOCOL.md §4.11): an address minted under a grant other than 0,
//! or attenuated with caveats ([`crate::caveat`]), has the second format, text prefix
//! `ferry2`:
//!
//! ```text
//! cap2  = node_id[32] | mailbox_id[8] | expires[8] | grant[8] | count[1] | caveat{count} | proof
//! proof = signature[64] (count = 0, grant ≠ 0)  |  tag[32] (count ≥ 1)
//! bytes2 = cap2 | hint* | crc32[4]
//! signed message (grant ≠ 0) = "ferry/address/v2" | node_id | mailbox_id | expires | grant
//! text  = "ferry2" | base64url-nopad(bytes2)
//! ```
//!
//! Grant 0 without caveats is exactly the first format: every `ferry1` address is the base of
//! grant 0.
// Parsing takes bytes from anyone: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ed25519_dalek::{Signature, Verifier as _};

use crate::caveat::{self, Tag, MAX_CAVEAT_VALUE_LEN, TAG_LEN};
pub use crate::caveat::{Caveat, CaveatError, CounterKey, Limit, LimitKind, MAX_CAVEATS};
use crate::identity::{NodeId, NodeIdError, SecretKey, NODE_ID_LEN};

/// The text prefix of every address. The `1` is the format version.
pub const ADDRESS_PREFIX: &str = "ferry1";
/// The text prefix of addresses with a grant or caveats (PROTOCOL.md §4.11).
pub const ADDRESS_PREFIX_V2: &str = "ferry2";
/// Domain-separation label signed in front of every address body.
pub const ADDRESS_SIGNING_DOMAIN: &[u8; 16] = b"ferry/address/v1";
/// Domain-separation label signed in front of the body of a grant's base address.
pub const GRANT_SIGNING_DOMAIN: &[u8; 16] = b"ferry/address/v2";
/// Length of the signed core of an address in bytes.
pub const ADDRESS_CORE_LEN: usize = NODE_ID_LEN + 8 + 8 + 64;
/// At most this many dial hints fit in one address.
pub const MAX_HINTS: usize = 4;

const HINT_V4: u8 = 0x04;
const HINT_V6: u8 = 0x06;
const HINT_V6_LEN: usize = 1 + 16 + 2;
/// Extension-hint tag of a relay hint: `relay node id[32] | socket-address hint` (the 7- or
/// 19-byte form of tag 0x04 or 0x06).
pub const HINT_RELAY: u8 = 0x52;

/// Appends `addr` as a socket-address hint: tag, IP address, port.
pub(crate) fn put_socket_hint(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(HINT_V4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(HINT_V6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Reads one socket-address hint from the front of `bytes`: the address and what follows it.
pub(crate) fn take_socket_hint(bytes: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (ip, rest): (IpAddr, &[u8]) = match tag {
        HINT_V4 => {
            let (ip, rest) = rest.split_first_chunk::<4>()?;
            (Ipv4Addr::from(*ip).into(), rest)
        }
        HINT_V6 => {
            let (ip, rest) = rest.split_first_chunk::<16>()?;
            (Ipv6Addr::from(*ip).into(), rest)
        }
        _ => return None,
    };
    let (port, rest) = rest.split_first_chunk::<2>()?;
    Some((SocketAddr::new(ip, u16::from_be_bytes(*port)), rest))
}

fn encode_relay_hint(relay: &NodeId, addr: SocketAddr) -> Vec<u8> {
    let mut value = Vec::with_capacity(NODE_ID_LEN + HINT_V6_LEN);
    value.extend_from_slice(relay.as_bytes());
    put_socket_hint(&mut value, addr);
    value
}

fn decode_relay_hint(value: &[u8]) -> Option<(NodeId, SocketAddr)> {
    let (node, rest) = value.split_first_chunk::<NODE_ID_LEN>()?;
    let node = NodeId::from_bytes(node).ok()?;
    match take_socket_hint(rest)? {
        (addr, []) => Some((node, addr)),
        _ => None,
    }
}

/// Longest value of an extension hint, in bytes.
pub const MAX_EXTENSION_LEN: usize = 64;
const EXTENSION_MAX_LEN: usize = 2 + MAX_EXTENSION_LEN;
const CRC_LEN: usize = 4;
const MIN_BYTES: usize = ADDRESS_CORE_LEN + CRC_LEN;
const MAX_HINT_BYTES: usize = MAX_HINTS * EXTENSION_MAX_LEN;
const MAX_BYTES: usize = ADDRESS_CORE_LEN + MAX_HINT_BYTES + CRC_LEN;
/// The fixed fields at the start of a `cap2`: node, mailbox, expires, grant, caveat count.
const CAP2_HEAD_LEN: usize = NODE_ID_LEN + 8 + 8 + 8 + 1;
/// Shortest `cap2`: one caveat with an empty value, and a tag.
pub const MIN_CAP2_LEN: usize = CAP2_HEAD_LEN + 2 + TAG_LEN;
/// Longest `cap2`: [`MAX_CAVEATS`] caveats of 64-byte values, and a tag (617 bytes).
pub const MAX_CAP2_LEN: usize = CAP2_HEAD_LEN + MAX_CAVEATS * (2 + MAX_CAVEAT_VALUE_LEN) + TAG_LEN;
const MIN_BYTES_V2: usize = MIN_CAP2_LEN + CRC_LEN;
const MAX_BYTES_V2: usize = MAX_CAP2_LEN + MAX_HINT_BYTES + CRC_LEN;
/// Longest address in any form: the text form of the longest `ferry2` address (1186
/// characters; its binary form is 891 bytes with the `ferry2` marker).
pub const MAX_ADDRESS_TEXT_LEN: usize = ADDRESS_PREFIX_V2.len() + (MAX_BYTES_V2 * 4).div_ceil(3);
/// Longest capability field inside a frame ([`Address::to_cap_bytes`]): 618 bytes.
pub const MAX_CAP_LEN: usize = 1 + MAX_CAP2_LEN;
/// First byte of a capability field holding a `ferry1` core.
const CAP_CORE: u8 = 0x01;
/// First byte of a capability field holding a `cap2`.
const CAP_V2: u8 = 0x02;

/// The identifier of a mailbox, unique on its node. Random, never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxId(pub u64);

impl MailboxId {
    /// A new random mailbox id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 8];
        crate::identity::fill_random(&mut bytes);
        Self(u64::from_be_bytes(bytes))
    }
}

impl fmt::Display for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MailboxId({self})")
    }
}

/// Identifies a grant: a set of addresses of one mailbox that the node revokes together.
/// Grant 0 is the mailbox's default grant, which every `ferry1` address belongs to; the node
/// mints other grants with random ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct GrantId(pub u64);

impl GrantId {
    /// The default grant of every mailbox: its `ferry1` addresses.
    pub const DEFAULT: Self = Self(0);

    /// A new random grant id, never 0.
    pub fn random() -> Self {
        loop {
            let mut bytes = [0u8; 8];
            crate::identity::fill_random(&mut bytes);
            let id = u64::from_be_bytes(bytes);
            if id != 0 {
                return Self(id);
            }
        }
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrantId({self})")
    }
}

impl FromStr for GrantId {
    type Err = std::num::ParseIntError;

    /// 16 hex digits, as displayed (fewer are accepted).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(text, 16).map(Self)
    }
}

/// What proves an address: the node's signature, or the HMAC chain of its caveats.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Proof {
    Signature([u8; 64]),
    Chain { caveats: Vec<Caveat>, tag: Tag },
}

/// A signed capability address of a mailbox, with optional dial hints.
///
/// Cheap to clone: the fields are shared, so the many holders of one address (a mailbox, its
/// senders, their conversations, the messages they carry) hold one copy of it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address(Arc<Fields>);

/// What an [`Address`] is made of.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Fields {
    node: NodeId,
    mailbox: MailboxId,
    expires: Option<u64>,
    grant: GrantId,
    proof: Proof,
    hints: Hints,
    /// Hints of kinds this version does not know, as (tag, value), kept so that an address
    /// passes through unchanged. They follow the socket-address hints.
    extensions: Extensions,
}

/// Why bytes or text are not a well-formed address. Nothing here involves a signature check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The text does not start with `ferry1` or `ferry2`.
    #[error("address must start with \"{ADDRESS_PREFIX}\" or \"{ADDRESS_PREFIX_V2}\"")]
    Prefix,
    /// The text or byte length is impossible for an address.
    #[error("address has an impossible length ({0})")]
    Length(usize),
    /// The text after the prefix is not canonical unpadded base64url.
    #[error("address is not canonical base64url")]
    Encoding,
    /// The checksum does not match: the address was mistyped or truncated.
    #[error("address checksum mismatch (mistyped or truncated)")]
    Checksum,
    /// The node id inside is not a usable ed25519 key.
    #[error("address node id: {0}")]
    NodeId(#[from] NodeIdError),
    /// The signature's scalar is not canonical (its top three bits are set).
    #[error("address signature is not canonically encoded")]
    SignatureEncoding,
    /// A dial hint is truncated, an extension is too long, or a socket-address hint follows
    /// an extension.
    #[error("address has a malformed dial hint")]
    Hint,
    /// More than [`MAX_HINTS`] dial hints.
    #[error("address has more than {MAX_HINTS} dial hints")]
    TooManyHints,
    /// The same dial hint appears twice.
    #[error("address repeats a dial hint")]
    DuplicateHint,
    /// A `ferry2` address with grant 0 and no caveats: it must be written as `ferry1`.
    #[error("address of the default grant without caveats must use the ferry1 form")]
    NotCanonical,
    /// More than [`MAX_CAVEATS`] caveats.
    #[error("address has more than {MAX_CAVEATS} caveats")]
    TooManyCaveats,
    /// A caveat is malformed.
    #[error("address caveat: {0}")]
    Caveat(#[from] CaveatError),
    /// The capability field of a frame does not start with a known format byte, or does not
    /// fill its field exactly.
    #[error("malformed capability field")]
    Field,
}

/// Why an address does not grant access to a mailbox on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The address names another node.
    #[error("address is for node {address_node}, presented to node {this_node}")]
    WrongNode {
        /// The node the address names.
        address_node: NodeId,
        /// The node it was presented to.
        this_node: NodeId,
    },
    /// The address expired at this time (seconds since the Unix epoch).
    #[error("address expired at {0} (unix seconds)")]
    Expired(u64),
    /// The signature does not verify under `verify_strict`, or the caveat chain does not
    /// check: forged or tampered.
    #[error("address signature is invalid (forged or tampered)")]
    Forged,
    /// A caveat of the address forbids this use.
    #[error("address caveat forbids this: {0}")]
    Caveat(#[from] CaveatViolation),
}

/// Which caveat forbids a use of an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaveatViolation {
    /// The address may be used only by another node than the one presenting it.
    #[error("usable only by node {holder}, presented by {peer}")]
    Holder {
        /// The node the caveat names.
        holder: NodeId,
        /// The node that presented the address.
        peer: NodeId,
    },
    /// The address is for conversations with one service, and this is not one.
    #[error("usable only for conversations with service {0:?}")]
    Service(String),
    /// A caveat of a kind this node does not know: refused, since it may forbid anything.
    #[error("unknown caveat kind {0:#04x}")]
    Unknown(u8),
}

/// What an address is presented for, as far as caveats care (PROTOCOL.md §4.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Usage<'a> {
    /// A mailbox stream: messages for the mailbox.
    Messages,
    /// A conversation with the service registered under this name (`None`: the mailbox is
    /// not a service's).
    Conversation(Option<&'a str>),
    /// A watch on the mailbox.
    Monitor,
}

/// Why an address cannot be attenuated as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttenuateError {
    /// The address would carry more than [`MAX_CAVEATS`] caveats.
    #[error("an address carries at most {MAX_CAVEATS} caveats")]
    TooManyCaveats,
    /// A caveat is not well-formed (an invalid service name, a rate of 0, an expiry of 0, a
    /// value longer than 64 bytes).
    #[error("invalid caveat: {0}")]
    Invalid(#[from] CaveatError),
    /// An expiry caveat not earlier than the address's expiry: it would not narrow anything.
    #[error("expiry {asked} is not earlier than the address's {current}")]
    NotEarlier {
        /// The expiry asked for.
        asked: u64,
        /// The address's effective expiry.
        current: u64,
    },
}

/// A builder of attenuated addresses: [`Address::attenuate`].
#[derive(Debug, Clone)]
#[must_use = "an attenuation does nothing until built"]
pub struct Attenuation<'a> {
    address: &'a Address,
    caveats: Vec<Caveat>,
}

impl Attenuation<'_> {
    /// Void at and after `unix_secs`; must be earlier than the address's expiry.
    pub fn expires_at(mut self, unix_secs: u64) -> Self {
        self.caveats.push(Caveat::ExpiresBefore(unix_secs));
        self
    }

    /// At most `n` messages, counted with every address derived from the result.
    pub fn max_messages(mut self, n: u32) -> Self {
        self.caveats.push(Caveat::MaxMessages(n));
        self
    }

    /// At most `messages` messages per `per_secs` seconds.
    pub fn rate(mut self, messages: u32, per_secs: u32) -> Self {
        self.caveats.push(Caveat::Rate { messages, per_secs });
        self
    }

    /// Conversations with the service `name` only.
    pub fn service(mut self, name: &str) -> Self {
        self.caveats.push(Caveat::Service(name.to_owned()));
        self
    }

    /// Usable only by the node `holder` (as its TLS handshake proves): a handoff.
    pub fn only(mut self, holder: NodeId) -> Self {
        self.caveats.push(Caveat::Holder(holder));
        self
    }

    /// Any caveat.
    pub fn caveat(mut self, caveat: Caveat) -> Self {
        self.caveats.push(caveat);
        self
    }

    /// The attenuated address.
    pub fn build(self) -> Result<Address, AttenuateError> {
        self.address.with_caveats(&self.caveats)
    }
}

/// An address's extension hints, as (tag, value): most addresses have none, and then they cost
/// a pointer, not an empty vector's three words.
#[derive(Clone, Default)]
struct Extensions(
    #[allow(clippy::box_collection)] // 8 bytes in every address instead of 24
    Option<Box<Vec<Extension>>>,
);

/// One extension hint: (tag, value).
type Extension = (u8, Vec<u8>);

impl Extensions {
    fn as_slice(&self) -> &[Extension] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    fn push(&mut self, extension: Extension) {
        self.0.get_or_insert_default().push(extension);
    }

    fn truncate(&mut self, len: usize) {
        if let Some(extensions) = &mut self.0 {
            extensions.truncate(len);
            if extensions.is_empty() {
                self.0 = None;
            }
        }
    }
}

/// Compared and hashed by content: none and an empty list are the same.
impl PartialEq for Extensions {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Extensions {}

impl std::hash::Hash for Extensions {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

/// An address's socket-address hints (at most [`MAX_HINTS`], no repeats, in order), shared by
/// the addresses made with the same ones: a node mints every mailbox's address with its current
/// hints, and each copy would cost every idle mailbox an allocation.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Hints(Option<Arc<[SocketAddr]>>);

impl Hints {
    /// The hints, in order.
    pub fn as_slice(&self) -> &[SocketAddr] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl From<Vec<SocketAddr>> for Hints {
    /// Keeps the first of repeated hints and the first [`MAX_HINTS`].
    fn from(mut hints: Vec<SocketAddr>) -> Self {
        dedup_in_order(&mut hints);
        hints.truncate(MAX_HINTS);
        Self((!hints.is_empty()).then(|| hints.into()))
    }
}

impl fmt::Debug for Hints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Address {
    fn from_fields(fields: Fields) -> Self {
        Self(Arc::new(fields))
    }

    /// The fields, to change: copied first if another holder shares them.
    fn fields_mut(&mut self) -> &mut Fields {
        Arc::make_mut(&mut self.0)
    }

    /// Signs a new address of the default grant. Only the node holding `key` can do this.
    pub fn mint(
        key: &SecretKey,
        mailbox: MailboxId,
        expires: Option<u64>,
        hints: impl Into<Hints>,
    ) -> Self {
        Self::mint_grant(key, mailbox, GrantId::DEFAULT, expires, hints)
    }

    /// Signs a new address of `grant` (grant 0: a `ferry1` address, as [`Address::mint`]).
    pub fn mint_grant(
        key: &SecretKey,
        mailbox: MailboxId,
        grant: GrantId,
        expires: Option<u64>,
        hints: impl Into<Hints>,
    ) -> Self {
        // 0 encodes "never"; an expiry at the epoch itself is already past anyway.
        let expires = expires.map(|t| t.max(1));
        let node = key.public();
        let (message, len) = signed_message(&node, mailbox, expires, grant);
        let signature = key.sign(message.get(..len).unwrap_or_default());
        let hints = hints.into();
        Self::from_fields(Fields {
            node,
            mailbox,
            expires,
            grant,
            proof: Proof::Signature(signature),
            hints,
            extensions: Extensions::default(),
        })
    }

    /// The node that owns the mailbox.
    pub fn node(&self) -> NodeId {
        self.0.node
    }

    /// The mailbox on that node.
    pub fn mailbox(&self) -> MailboxId {
        self.0.mailbox
    }

    /// The expiry of the base address (signed by the node), in seconds since the Unix epoch.
    /// Caveats may set an earlier one: [`Address::effective_expiry`].
    pub fn expires(&self) -> Option<u64> {
        self.0.expires
    }

    /// When the address stops working: the earliest of its base expiry and its expiry caveats.
    pub fn effective_expiry(&self) -> Option<u64> {
        self.caveats()
            .iter()
            .filter_map(|caveat| match caveat {
                Caveat::ExpiresBefore(at) => Some(*at),
                _ => None,
            })
            .chain(self.0.expires)
            .min()
    }

    /// The grant the address belongs to (0 for every `ferry1` address).
    pub fn grant(&self) -> GrantId {
        self.0.grant
    }

    /// The caveats, in order (none for an address the node signed).
    pub fn caveats(&self) -> &[Caveat] {
        match &self.0.proof {
            Proof::Signature(_) => &[],
            Proof::Chain { caveats, .. } => caveats,
        }
    }

    /// Whether this is a `ferry1` address: grant 0, no caveats.
    pub fn is_plain(&self) -> bool {
        self.0.grant == GrantId::DEFAULT && matches!(self.0.proof, Proof::Signature(_))
    }

    /// Where the node may be reached (unsigned, advisory).
    pub fn hints(&self) -> &[SocketAddr] {
        self.0.hints.as_slice()
    }

    /// The same address with other socket-address hints (at most [`MAX_HINTS`] hints in all
    /// are kept, extensions last).
    pub fn with_hints(&self, hints: Vec<SocketAddr>) -> Self {
        let hints = Hints::from(hints);
        let mut extensions = self.0.extensions.clone();
        extensions.truncate(MAX_HINTS - hints.as_slice().len());
        Self::from_fields(Fields {
            hints,
            extensions,
            ..(*self.0).clone()
        })
    }

    /// The address without any hints: the capability alone.
    pub fn without_hints(&self) -> Self {
        if self.hints().is_empty() && self.0.extensions.is_empty() {
            // Shared, not copied.
            return self.clone();
        }
        Self::from_fields(Fields {
            hints: Hints::default(),
            extensions: Extensions::default(),
            ..(*self.0).clone()
        })
    }

    /// Extension hints, as (tag, value): relay hints ([`HINT_RELAY`]) and kinds this version
    /// does not know, kept verbatim.
    pub fn extension_hints(&self) -> &[(u8, Vec<u8>)] {
        self.0.extensions.as_slice()
    }

    /// The same address with a relay hint added: the node can be reached through the relay
    /// node `relay` at `relay_addr` (docs/PROTOCOL.md §12). Dropped, like every hint beyond
    /// [`MAX_HINTS`], when the address already has four hints.
    pub fn with_relay(&self, relay: NodeId, relay_addr: SocketAddr) -> Self {
        let mut address = self.clone();
        let value = encode_relay_hint(&relay, relay_addr);
        let hint = (HINT_RELAY, value);
        if address.hints().len() + address.0.extensions.len() < MAX_HINTS
            && !address.0.extensions.as_slice().contains(&hint)
        {
            address.fields_mut().extensions.push(hint);
        }
        address
    }

    /// The relays this address names: (relay node, its socket address), in order. Malformed
    /// relay hints are skipped.
    pub fn relays(&self) -> Vec<(NodeId, SocketAddr)> {
        self.0
            .extensions
            .as_slice()
            .iter()
            .filter(|(tag, _)| *tag == HINT_RELAY)
            .filter_map(|(_, value)| decode_relay_hint(value))
            .collect()
    }

    /// The signature bytes; `None` for an attenuated address, which carries a chain tag
    /// instead.
    pub fn signature(&self) -> Option<&[u8; 64]> {
        match &self.0.proof {
            Proof::Signature(signature) => Some(signature),
            Proof::Chain { .. } => None,
        }
    }

    /// The chain tag of an attenuated address (`None` for a signed one). As secret as the
    /// address itself: whoever knows it can derive from it.
    pub fn tag(&self) -> Option<&Tag> {
        match &self.0.proof {
            Proof::Signature(_) => None,
            Proof::Chain { tag, .. } => Some(tag),
        }
    }

    /// Starts an attenuation: a narrower address derived offline from this one, e.g.
    /// `address.attenuate().expires_at(t).max_messages(100).build()`.
    pub fn attenuate(&self) -> Attenuation<'_> {
        Attenuation {
            address: self,
            caveats: Vec::new(),
        }
    }

    /// This address usable only by the node `holder`, whose TLS handshake must prove it (a
    /// third-party handoff: a copy in anyone else's hands is refused with CAVEAT).
    pub fn handoff(&self, holder: NodeId) -> Result<Self, AttenuateError> {
        self.attenuate().only(holder).build()
    }

    /// This address with `caveats` appended (PROTOCOL.md §4.11). Needs no key: whoever holds an
    /// address can narrow it. The result keeps this address's hints.
    pub fn with_caveats(&self, caveats: &[Caveat]) -> Result<Self, AttenuateError> {
        let (mut all, mut tag) = match &self.0.proof {
            Proof::Signature(signature) => (Vec::new(), self.root_tag_of(signature)),
            Proof::Chain { caveats, tag } => (caveats.clone(), *tag),
        };
        if all.len() + caveats.len() > MAX_CAVEATS {
            return Err(AttenuateError::TooManyCaveats);
        }
        let mut current = self.effective_expiry();
        for caveat in caveats {
            caveat.validate()?;
            if let Caveat::ExpiresBefore(asked) = caveat {
                if let Some(current) = current.filter(|current| asked >= current) {
                    return Err(AttenuateError::NotEarlier {
                        asked: *asked,
                        current,
                    });
                }
                current = Some(*asked);
            }
            tag = caveat::next_tag(&tag, caveat);
            all.push(caveat.clone());
        }
        if all.is_empty() {
            return Ok(self.clone());
        }
        Ok(Self::from_fields(Fields {
            proof: Proof::Chain { caveats: all, tag },
            ..(*self.0).clone()
        }))
    }

    fn root_tag_of(&self, signature: &[u8; 64]) -> Tag {
        caveat::root_tag(
            signature,
            &self.0.node,
            self.0.mailbox.0,
            self.0.expires.unwrap_or(0),
            self.0.grant.0,
        )
    }

    /// The cheap checks, in order: the address names `this_node`, and has not expired at
    /// `now_secs` (neither its base expiry nor an expiry caveat). Run these before
    /// [`Address::verify_signature`] / [`Address::verify_chain`].
    pub fn check_cheap(&self, this_node: &NodeId, now_secs: u64) -> Result<(), VerifyError> {
        if self.0.node != *this_node {
            return Err(VerifyError::WrongNode {
                address_node: self.0.node,
                this_node: *this_node,
            });
        }
        match self.effective_expiry() {
            Some(at) if now_secs >= at => Err(VerifyError::Expired(at)),
            _ => Ok(()),
        }
    }

    /// The caveats that need no state: the holder caveats name `peer` (the TLS-proven node
    /// presenting the address), the service caveats allow `usage`, and every caveat is of a
    /// known kind. Cheap; run before the proof check.
    pub fn check_usage(&self, peer: &NodeId, usage: Usage<'_>) -> Result<(), VerifyError> {
        for caveat in self.caveats() {
            match caveat {
                Caveat::Holder(holder) if holder != peer => {
                    return Err(CaveatViolation::Holder {
                        holder: *holder,
                        peer: *peer,
                    }
                    .into())
                }
                Caveat::Service(name) if usage != Usage::Conversation(Some(name.as_str())) => {
                    return Err(CaveatViolation::Service(name.clone()).into())
                }
                Caveat::Unknown { kind, .. } => return Err(CaveatViolation::Unknown(*kind).into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks the signature with `verify_strict` (about 40 µs): the expensive check. An
    /// attenuated address has no signature and fails it (`Forged`): check it with
    /// [`Address::verify_chain`] or [`Address::verify`].
    pub fn verify_signature(&self) -> Result<(), VerifyError> {
        let Proof::Signature(signature) = &self.0.proof else {
            return Err(VerifyError::Forged);
        };
        let (message, len) =
            signed_message(&self.0.node, self.0.mailbox, self.0.expires, self.0.grant);
        let message = message.get(..len).unwrap_or_default();
        let signature = Signature::from_bytes(signature);
        let key = self.0.node.verifying_key();
        key.verify_strict(message, &signature)
            .map_err(|_| VerifyError::Forged)?;
        // verify_strict and verify agree on every canonical input; keep the invariant visible.
        debug_assert!(key.verify(message, &signature).is_ok());
        Ok(())
    }

    /// tag_0 of this address's chain as the node computes it: from its own signature of the
    /// base (node, mailbox, expires, grant), which is deterministic (one ed25519 signing,
    /// about 20 µs). Meaningful only with the key of [`Address::node`].
    pub fn root_tag(&self, key: &SecretKey) -> Tag {
        let (message, len) =
            signed_message(&self.0.node, self.0.mailbox, self.0.expires, self.0.grant);
        let signature = key.sign(message.get(..len).unwrap_or_default());
        self.root_tag_of(&signature)
    }

    /// Checks the caveat chain of an attenuated address against `root` (its tag_0, from
    /// [`Address::root_tag`]): one HMAC per caveat. Returns the counting caveats the node must
    /// charge every message to. An address without caveats has no chain: `Forged`.
    pub fn verify_chain(&self, root: &Tag) -> Result<Vec<Limit>, VerifyError> {
        let Proof::Chain { caveats, tag } = &self.0.proof else {
            return Err(VerifyError::Forged);
        };
        let mut current = *root;
        let mut limits = Vec::new();
        for caveat in caveats {
            current = caveat::next_tag(&current, caveat);
            let kind = match caveat {
                Caveat::MaxMessages(n) => LimitKind::Messages(*n),
                Caveat::Rate { messages, per_secs } => LimitKind::Rate {
                    messages: *messages,
                    per_secs: *per_secs,
                },
                _ => continue,
            };
            limits.push(Limit {
                key: CounterKey::of(&current),
                kind,
            });
        }
        if !caveat::tags_equal(&current, tag) {
            return Err(VerifyError::Forged);
        }
        Ok(limits)
    }

    /// The whole proof check by the node that owns `key`: the signature of a signed address,
    /// or the chain of an attenuated one. Returns the counting caveats.
    pub fn verify(&self, key: &SecretKey) -> Result<Vec<Limit>, VerifyError> {
        match &self.0.proof {
            Proof::Signature(_) => self.verify_signature().map(|()| Vec::new()),
            Proof::Chain { .. } => self.verify_chain(&self.root_tag(key)),
        }
    }

    /// The 112-byte signed core of a `ferry1` address, as carried inside the frames of
    /// PROTOCOL.md §5; `None` for an address of another grant or with caveats, which frames
    /// carry as a capability field ([`Address::to_cap_bytes`]).
    pub fn core_bytes(&self) -> Option<[u8; ADDRESS_CORE_LEN]> {
        let Proof::Signature(signature) = &self.0.proof else {
            return None;
        };
        if self.0.grant != GrantId::DEFAULT {
            return None;
        }
        let mut out = [0u8; ADDRESS_CORE_LEN];
        out[..32].copy_from_slice(self.0.node.as_bytes());
        out[32..40].copy_from_slice(&self.0.mailbox.0.to_be_bytes());
        out[40..48].copy_from_slice(&self.0.expires.unwrap_or(0).to_be_bytes());
        out[48..].copy_from_slice(signature);
        Some(out)
    }

    /// Parses a 112-byte core (no hints, no checksum), as carried inside frames.
    pub fn from_core_bytes(core: &[u8; ADDRESS_CORE_LEN]) -> Result<Self, AddressError> {
        let (head, signature) = core.split_at(48);
        let (node, mailbox, expires) = parse_head(head)?;
        let signature = parse_signature(signature)?;
        Ok(Self::from_fields(Fields {
            node,
            mailbox,
            expires,
            grant: GrantId::DEFAULT,
            proof: Proof::Signature(signature),
            hints: Hints::default(),
            extensions: Extensions::default(),
        }))
    }

    /// Whether the two addresses have the same capability field ([`Address::to_cap_bytes`]):
    /// the same address but for hints. Compares the fields, never encodes them.
    pub fn same_capability(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        Arc::ptr_eq(&self.0, &other.0)
            || (a.proof == b.proof
                && a.mailbox == b.mailbox
                && a.node == b.node
                && a.grant == b.grant
                && a.expires == b.expires)
    }

    /// Hashes part of the capability field (the mailbox id and the proof's last 16 bytes: they
    /// spread addresses well enough, and hashing every byte showed in profiles). Addresses
    /// with [`Address::same_capability`] hash alike.
    pub fn hash_capability<H: std::hash::Hasher>(&self, state: &mut H) {
        let proof: &[u8] = match &self.0.proof {
            Proof::Signature(signature) => signature,
            Proof::Chain { tag, .. } => tag,
        };
        state.write_u64(self.0.mailbox.0);
        state.write(
            proof
                .get(proof.len().saturating_sub(16)..)
                .unwrap_or_default(),
        );
    }

    /// The capability field of the frames that carry any address (PROTOCOL.md §4.11):
    /// `0x01 | core[112]` for a `ferry1` address, `0x02 | cap2` for any other. No hints.
    pub fn to_cap_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_CAP_LEN);
        match self.core_bytes() {
            Some(core) => {
                out.push(CAP_CORE);
                out.extend_from_slice(&core);
            }
            None => {
                out.push(CAP_V2);
                self.put_cap2(&mut out);
            }
        }
        out
    }

    /// Parses a capability field, which must fill `bytes` exactly.
    pub fn from_cap_bytes(bytes: &[u8]) -> Result<Self, AddressError> {
        match bytes.split_first() {
            Some((&CAP_CORE, core)) => {
                let core: &[u8; ADDRESS_CORE_LEN] =
                    core.try_into().map_err(|_| AddressError::Field)?;
                Self::from_core_bytes(core)
            }
            Some((&CAP_V2, cap)) => match parse_cap2(cap)? {
                (address, []) => Ok(address),
                _ => Err(AddressError::Field),
            },
            _ => Err(AddressError::Field),
        }
    }

    fn put_cap2(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0.node.as_bytes());
        out.extend_from_slice(&self.0.mailbox.0.to_be_bytes());
        out.extend_from_slice(&self.0.expires.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.0.grant.0.to_be_bytes());
        match &self.0.proof {
            Proof::Signature(signature) => {
                out.push(0);
                out.extend_from_slice(signature);
            }
            Proof::Chain { caveats, tag } => {
                // At most MAX_CAVEATS (8): checked when parsed or attenuated.
                out.push(caveats.len() as u8);
                for caveat in caveats {
                    caveat.encode_unchecked(out);
                }
                out.extend_from_slice(tag);
            }
        }
    }

    fn put_hints(&self, out: &mut Vec<u8>) {
        for hint in self.hints() {
            put_socket_hint(out, *hint);
        }
        for (tag, value) in self.0.extensions.as_slice() {
            out.push(*tag);
            // Values are at most MAX_EXTENSION_LEN (64) bytes: checked when parsed.
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        }
    }

    /// What the text form encodes: the `ferry1` bytes, or `bytes2` of a `ferry2` address.
    fn body_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_BYTES_V2);
        match self.core_bytes() {
            Some(core) => out.extend_from_slice(&core),
            None => self.put_cap2(&mut out),
        }
        self.put_hints(&mut out);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// The full binary form: core, hints and checksum; for a `ferry2` address, the six
    /// ASCII bytes `ferry2` followed by `bytes2` (PROTOCOL.md §4.11).
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.is_plain() {
            return self.body_bytes();
        }
        let mut out = ADDRESS_PREFIX_V2.as_bytes().to_vec();
        out.extend_from_slice(&self.body_bytes());
        out
    }

    /// Parses the full binary form, rejecting every non-canonical input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AddressError> {
        match bytes.strip_prefix(ADDRESS_PREFIX_V2.as_bytes()) {
            // A ferry1 address whose node id starts with those six bytes parses as ferry1.
            Some(body) => Self::from_bytes_v2(body).or_else(|error| match bytes.len() {
                MIN_BYTES..=MAX_BYTES => Self::from_bytes_v1(bytes).map_err(|_| error),
                _ => Err(error),
            }),
            None => Self::from_bytes_v1(bytes),
        }
    }

    fn from_bytes_v1(bytes: &[u8]) -> Result<Self, AddressError> {
        if !(MIN_BYTES..=MAX_BYTES).contains(&bytes.len()) {
            return Err(AddressError::Length(bytes.len()));
        }
        let body = check_crc(bytes)?;
        let (core, rest) = body
            .split_first_chunk::<ADDRESS_CORE_LEN>()
            .ok_or(AddressError::Length(bytes.len()))?;
        let mut address = Self::from_core_bytes(core)?;
        address.parse_hints(rest)?;
        Ok(address)
    }

    fn from_bytes_v2(bytes: &[u8]) -> Result<Self, AddressError> {
        if !(MIN_BYTES_V2..=MAX_BYTES_V2).contains(&bytes.len()) {
            return Err(AddressError::Length(bytes.len()));
        }
        let body = check_crc(bytes)?;
        let (mut address, rest) = parse_cap2(body)?;
        address.parse_hints(rest)?;
        Ok(address)
    }

    fn parse_hints(&mut self, mut rest: &[u8]) -> Result<(), AddressError> {
        let mut hints = Vec::new();
        while let Some((&tag, tail)) = rest.split_first() {
            if hints.len() + self.0.extensions.len() == MAX_HINTS {
                return Err(AddressError::TooManyHints);
            }
            let (ip, tail): (IpAddr, &[u8]) = match tag {
                HINT_V4 | HINT_V6 if !self.0.extensions.is_empty() => {
                    return Err(AddressError::Hint)
                }
                HINT_V4 => {
                    let (ip, tail) = tail.split_first_chunk::<4>().ok_or(AddressError::Hint)?;
                    (Ipv4Addr::from(*ip).into(), tail)
                }
                HINT_V6 => {
                    let (ip, tail) = tail.split_first_chunk::<16>().ok_or(AddressError::Hint)?;
                    (Ipv6Addr::from(*ip).into(), tail)
                }
                _ => {
                    let (&len, tail) = tail.split_first().ok_or(AddressError::Hint)?;
                    let len = usize::from(len);
                    if len > MAX_EXTENSION_LEN {
                        return Err(AddressError::Hint);
                    }
                    let value = tail.get(..len).ok_or(AddressError::Hint)?;
                    self.fields_mut().extensions.push((tag, value.to_vec()));
                    rest = tail.get(len..).unwrap_or_default();
                    continue;
                }
            };
            let (port, tail) = tail.split_first_chunk::<2>().ok_or(AddressError::Hint)?;
            let hint = SocketAddr::new(ip, u16::from_be_bytes(*port));
            if hints.contains(&hint) {
                return Err(AddressError::DuplicateHint);
            }
            hints.push(hint);
            rest = tail;
        }
        if !hints.is_empty() {
            // Checked above: no repeats, at most MAX_HINTS.
            self.fields_mut().hints = Hints::from(hints);
        }
        Ok(())
    }
}

/// The bytes before the checksum, if the checksum matches.
fn check_crc(bytes: &[u8]) -> Result<&[u8], AddressError> {
    let (body, crc) = bytes
        .split_last_chunk::<CRC_LEN>()
        .ok_or(AddressError::Length(bytes.len()))?;
    if crc32fast::hash(body).to_be_bytes() != *crc {
        return Err(AddressError::Checksum);
    }
    Ok(body)
}

/// node_id | mailbox_id | expires (48 bytes).
fn parse_head(head: &[u8]) -> Result<(NodeId, MailboxId, Option<u64>), AddressError> {
    let short = || AddressError::Length(head.len());
    let (node, rest) = head.split_first_chunk::<NODE_ID_LEN>().ok_or_else(short)?;
    let (mailbox, rest) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let (expires, _) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let node = NodeId::from_bytes(node)?;
    let expires = match u64::from_be_bytes(*expires) {
        0 => None,
        at => Some(at),
    };
    Ok((node, MailboxId(u64::from_be_bytes(*mailbox)), expires))
}

fn parse_signature(bytes: &[u8]) -> Result<[u8; 64], AddressError> {
    let signature: [u8; 64] = bytes
        .try_into()
        .map_err(|_| AddressError::Length(bytes.len()))?;
    // A canonical scalar is below the group order, so its top three bits are clear.
    if signature[63] & 0xe0 != 0 {
        return Err(AddressError::SignatureEncoding);
    }
    Ok(signature)
}

/// Reads a `cap2` from the front of `bytes` (PROTOCOL.md §4.11): the address (no hints) and
/// what follows it.
fn parse_cap2(bytes: &[u8]) -> Result<(Address, &[u8]), AddressError> {
    let short = || AddressError::Length(bytes.len());
    let (head, rest) = bytes.split_first_chunk::<48>().ok_or_else(short)?;
    let (node, mailbox, expires) = parse_head(head)?;
    let (grant, rest) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let grant = GrantId(u64::from_be_bytes(*grant));
    let (&count, mut rest) = rest.split_first().ok_or_else(short)?;
    let count = usize::from(count);
    if count > MAX_CAVEATS {
        return Err(AddressError::TooManyCaveats);
    }
    let proof = if count == 0 {
        if grant == GrantId::DEFAULT {
            return Err(AddressError::NotCanonical);
        }
        let (signature, tail) = rest.split_first_chunk::<64>().ok_or_else(short)?;
        rest = tail;
        Proof::Signature(parse_signature(signature)?)
    } else {
        let mut caveats = Vec::with_capacity(count);
        for _ in 0..count {
            let (caveat, tail) = Caveat::decode(rest)?;
            caveats.push(caveat);
            rest = tail;
        }
        let (tag, tail) = rest.split_first_chunk::<TAG_LEN>().ok_or_else(short)?;
        rest = tail;
        Proof::Chain { caveats, tag: *tag }
    };
    let address = Address::from_fields(Fields {
        node,
        mailbox,
        expires,
        grant,
        proof,
        hints: Hints::default(),
        extensions: Extensions::default(),
    });
    Ok((address, rest))
}

/// The exact bytes an address signature covers: 64 bytes for grant 0, 72 for any other; the
/// array and how much of it is used.
fn signed_message(
    node: &NodeId,
    mailbox: MailboxId,
    expires: Option<u64>,
    grant: GrantId,
) -> ([u8; 72], usize) {
    let mut message = [0u8; 72];
    message[..16].copy_from_slice(if grant == GrantId::DEFAULT {
        ADDRESS_SIGNING_DOMAIN
    } else {
        GRANT_SIGNING_DOMAIN
    });
    message[16..48].copy_from_slice(node.as_bytes());
    message[48..56].copy_from_slice(&mailbox.0.to_be_bytes());
    message[56..64].copy_from_slice(&expires.unwrap_or(0).to_be_bytes());
    if grant == GrantId::DEFAULT {
        return (message, 64);
    }
    message[64..].copy_from_slice(&grant.0.to_be_bytes());
    (message, 72)
}

fn dedup_in_order(hints: &mut Vec<SocketAddr>) {
    let mut seen = Vec::with_capacity(hints.len());
    hints.retain(|hint| {
        if seen.contains(hint) {
            false
        } else {
            seen.push(*hint);
            true
        }
    });
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_plain() {
            ADDRESS_PREFIX
        } else {
            ADDRESS_PREFIX_V2
        })?;
        f.write_str(&data_encoding::BASE64URL_NOPAD.encode(&self.body_bytes()))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Addresses are bearer capabilities: never print the whole thing in debug output/logs.
        write!(f, "Address({}/{}", self.0.node.short(), self.0.mailbox)?;
        if self.0.grant != GrantId::DEFAULT {
            write!(f, ", grant {}", self.0.grant)?;
        }
        if !self.caveats().is_empty() {
            write!(f, ", caveats: {:?}", self.caveats())?;
        }
        write!(f, ", hints: {:?})", self.0.hints)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let encoding = &data_encoding::BASE64URL_NOPAD;
        let (body, min, max, v2) = if let Some(body) = text.strip_prefix(ADDRESS_PREFIX) {
            (body, MIN_BYTES, MAX_BYTES, false)
        } else if let Some(body) = text.strip_prefix(ADDRESS_PREFIX_V2) {
            (body, MIN_BYTES_V2, MAX_BYTES_V2, true)
        } else {
            return Err(AddressError::Prefix);
        };
        if !(encoding.encode_len(min)..=encoding.encode_len(max)).contains(&body.len()) {
            return Err(AddressError::Length(text.len()));
        }
        let bytes = encoding
            .decode(body.as_bytes())
            .map_err(|_| AddressError::Encoding)?;
        if v2 {
            Self::from_bytes_v2(&bytes)
        } else {
            Self::from_bytes_v1(&bytes)
        }
    }
}

impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_bytes(&self.to_bytes())
        }
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes = <std::borrow::Cow<'de, [u8]>>::deserialize(deserializer)?;
            Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    fn hint_strategy() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
        ]
    }

    fn address_strategy() -> impl Strategy<Value = Address> {
        (
            any::<u8>(),
            any::<u64>(),
            proptest::option::of(1u64..u64::MAX),
            proptest::collection::vec(hint_strategy(), 0..=MAX_HINTS),
        )
            .prop_map(|(seed, mailbox, expires, hints)| {
                Address::mint(&key(seed), MailboxId(mailbox), expires, hints)
            })
    }

    /// A small world of addresses that differ in one capability field each (node, mailbox,
    /// grant, expiry, caveats), with and without hints.
    fn capability_variant() -> impl Strategy<Value = Address> {
        (0u8..2, 0u64..2, 0u64..2, 0u8..3, 0u32..3, any::<bool>()).prop_map(
            |(seed, mailbox, grant, expires, caveat, hinted)| {
                let expires = [None, Some(100), Some(200)][usize::from(expires)];
                let hints = if hinted {
                    vec![SocketAddr::from(([10, 0, 0, 1], 4433))]
                } else {
                    Vec::new()
                };
                let base = Address::mint_grant(
                    &key(seed),
                    MailboxId(mailbox),
                    GrantId(grant),
                    expires,
                    hints,
                );
                match caveat {
                    0 => base,
                    n => base.attenuate().max_messages(n).build().unwrap(),
                }
            },
        )
    }

    proptest! {
        #[test]
        fn same_capability_is_equal_capability_bytes(
            a in capability_variant(),
            b in capability_variant(),
        ) {
            let same = a.to_cap_bytes() == b.to_cap_bytes();
            prop_assert_eq!(a.same_capability(&b), same);
            prop_assert!(a.same_capability(&a.without_hints()));
            if same {
                let hash = |address: &Address| {
                    use std::hash::Hasher;
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    address.hash_capability(&mut hasher);
                    hasher.finish()
                };
                prop_assert_eq!(hash(&a), hash(&b));
            }
        }

        #[test]
        fn text_round_trip(address in address_strategy()) {
            let text = address.to_string();
            prop_assert!(text.starts_with(ADDRESS_PREFIX));
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            let parsed: Address = text.parse().unwrap();
            prop_assert_eq!(&parsed, &address);
            prop_assert_eq!(parsed.to_string(), text);
            prop_assert!(parsed.verify_signature().is_ok());
        }

        #[test]
        fn every_bit_flip_of_bytes_is_rejected(address in address_strategy()) {
            let bytes = address.to_bytes();
            for bit in 0..bytes.len() * 8 {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                let accepted = Address::from_bytes(&flipped)
                    .is_ok_and(|a| a.verify_signature().is_ok());
                prop_assert!(!accepted, "bit {} flip accepted", bit);
            }
        }

        #[test]
        fn every_bit_flip_of_text_is_rejected(address in address_strategy()) {
            let text = address.to_string().into_bytes();
            for bit in 0..text.len() * 8 {
                let mut flipped = text.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                let accepted = std::str::from_utf8(&flipped)
                    .ok()
                    .and_then(|t| t.parse::<Address>().ok())
                    .is_some_and(|a| a.verify_signature().is_ok());
                prop_assert!(!accepted, "bit {} flip accepted", bit);
            }
        }

        #[test]
        fn swapped_node_key_is_rejected(address in address_strategy(), other in any::<u8>()) {
            let other_node = key(other).public();
            prop_assume!(other_node != address.node());
            let mut core = address.core_bytes().unwrap();
            core[..32].copy_from_slice(other_node.as_bytes());
            let swapped = Address::from_core_bytes(&core).unwrap();
            prop_assert_eq!(swapped.verify_signature(), Err(VerifyError::Forged));
            // Re-encoding with a fresh checksum gets past parsing, never past the signature.
            let reparsed: Address = swapped.to_string().parse().unwrap();
            prop_assert_eq!(reparsed.verify_signature(), Err(VerifyError::Forged));
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = text.parse::<Address>();
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Address::from_bytes(&bytes);
        }
    }

    #[test]
    fn extension_hints_cut_off_leave_an_address_equal_to_one_without_them() {
        let key = key(7);
        let plain = Address::mint(&key, MailboxId(7), None, Vec::new());
        let relayed = plain.with_relay(key.public(), "192.0.2.1:4433".parse().unwrap());
        assert_eq!(relayed.relays().len(), 1);
        assert_ne!(relayed, plain);
        let four: Vec<SocketAddr> = (1..=4)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect();
        let cut = relayed.with_hints(four.clone());
        assert!(cut.extension_hints().is_empty(), "no room left for it");
        let fresh = plain.with_hints(four);
        assert_eq!(cut, fresh);
        let set: std::collections::HashSet<Address> = [cut, fresh].into_iter().collect();
        assert_eq!(set.len(), 1, "and hashed alike");
    }

    #[test]
    fn extension_hints_pass_through_unchanged() {
        let plain = Address::mint(
            &key(1),
            MailboxId(7),
            None,
            vec!["10.0.0.1:1".parse().unwrap()],
        );
        let mut bytes = plain.to_bytes();
        bytes.truncate(bytes.len() - CRC_LEN);
        bytes.extend_from_slice(&[0x52, 3, 1, 2, 3]);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        let parsed = Address::from_bytes(&bytes).unwrap();
        assert_eq!(parsed.extension_hints(), &[(0x52, vec![1, 2, 3])]);
        assert_eq!(parsed.to_bytes(), bytes);
        assert!(parsed.verify_signature().is_ok());
        // A socket-address hint after an extension is not canonical.
        let mut reordered = bytes[..bytes.len() - CRC_LEN].to_vec();
        reordered.extend_from_slice(&[HINT_V4, 10, 0, 0, 2, 0, 1]);
        let crc = crc32fast::hash(&reordered);
        reordered.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(Address::from_bytes(&reordered), Err(AddressError::Hint));
    }

    #[test]
    fn short_text_form() {
        let plain = Address::mint(&key(1), MailboxId(7), None, vec![]);
        assert_eq!(plain.to_string().len(), 161);
        let one_hint = plain.with_hints(vec!["127.0.0.1:4433".parse().unwrap()]);
        assert_eq!(one_hint.to_string().len(), 170);
    }

    #[test]
    fn cheap_checks() {
        let node = key(1).public();
        let address = Address::mint(&key(1), MailboxId(7), Some(100), vec![]);
        assert_eq!(address.check_cheap(&node, 99), Ok(()));
        assert_eq!(
            address.check_cheap(&node, 100),
            Err(VerifyError::Expired(100))
        );
        assert!(matches!(
            address.check_cheap(&key(2).public(), 0),
            Err(VerifyError::WrongNode { .. })
        ));
    }

    #[test]
    fn malformed_text() {
        let text = Address::mint(&key(1), MailboxId(7), None, vec![]).to_string();
        assert_eq!("".parse::<Address>(), Err(AddressError::Prefix));
        assert_eq!(
            text.replacen("ferry1", "FERRY1", 1).parse::<Address>(),
            Err(AddressError::Prefix)
        );
        assert_eq!(
            text[..text.len() - 1].parse::<Address>(),
            Err(AddressError::Length(160))
        );
        assert_eq!(
            format!("{text}=").parse::<Address>(),
            Err(AddressError::Encoding)
        );
        assert_eq!(
            format!(" {}", &text[1..]).parse::<Address>(),
            Err(AddressError::Prefix)
        );
    }
}

/// Arithmetic mod ℓ for signatures made by hand, shared with the test vectors.
#[cfg(test)]
#[path = "../tests/support/scalar.rs"]
mod scalar;

/// The bad-address suite (issue 7): every kind of malformed, forged or misused address is
/// refused with its own typed error. Parsing errors come from `from_str` / `from_bytes`
/// (docs/PROTOCOL.md §4.8), signature errors from `verify_signature` (§4.5), and the
/// receiver's checks from `check_cheap` (§4.9; revocation is `NO_SUCH_MAILBOX`, tested end to
/// end in sdk/tests/peer.rs and sdk/tests/hostile.rs).
#[cfg(test)]
mod bad_addresses {
    use super::scalar::{limbs_to_bytes, small_order_r_signature, ELL};
    use super::*;
    use data_encoding::BASE64URL_NOPAD;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    fn plain() -> Address {
        Address::mint(&key(1), MailboxId(7), None, vec![])
    }

    /// Addresses of many binary lengths: no hints, socket-address hints of both families, and
    /// extension hints of every value length, up to the longest address (380 bytes).
    fn addresses_of_every_shape() -> Vec<Address> {
        let v4: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:4433".parse().unwrap();
        let base = Address::mint(&key(1), MailboxId(7), Some(1_900_000_000), vec![]);
        let mut out = vec![
            base.clone(),
            base.with_hints(vec![v4]),
            base.with_hints(vec![v6]),
            base.with_hints(vec![v4, v6]),
        ];
        for len in 0..=MAX_EXTENSION_LEN {
            let mut bytes = base.to_bytes();
            bytes.truncate(bytes.len() - CRC_LEN);
            for _ in 0..MAX_HINTS {
                bytes.extend_from_slice(&[0x77, len as u8]);
                bytes.extend(std::iter::repeat_n(0xab, len));
            }
            out.push(Address::from_bytes(&with_crc(bytes)).unwrap());
        }
        out
    }

    /// `body` with its CRC-32 appended.
    fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        body
    }

    /// `core` with a valid checksum, parsed as a binary address.
    fn parse_core(core: &[u8; ADDRESS_CORE_LEN]) -> Result<Address, AddressError> {
        Address::from_bytes(&with_crc(core.to_vec()))
    }

    /// What §4.8 steps 1–5 say about `text`, for texts that fail at one of those steps: the
    /// independent statement of the rules the parser must follow.
    fn expected_text_error(text: &str) -> AddressError {
        let Some(body) = text.strip_prefix("ferry1") else {
            return AddressError::Prefix;
        };
        if !(155..=507).contains(&body.len()) {
            return AddressError::Length(text.len());
        }
        let Ok(bytes) = BASE64URL_NOPAD.decode(body.as_bytes()) else {
            return AddressError::Encoding;
        };
        if !(116..=380).contains(&bytes.len()) {
            return AddressError::Length(bytes.len());
        }
        let (data, crc) = bytes.split_at(bytes.len() - 4);
        assert_ne!(crc32fast::hash(data).to_be_bytes(), crc, "checksum matches");
        AddressError::Checksum
    }

    #[test]
    fn empty_and_wrong_prefixes() {
        let text = plain().to_string();
        let body = &text[ADDRESS_PREFIX.len()..];
        for prefix in [
            "", "f", "ferry", "ferry0", "ferry3", "ferry9", "Ferry1", "fERRY1", "FERRY1", "ferrY1",
            "ferri1", "ferry_", "ferryl", "ferryI", "erry1", "ferry11x", " ferry1",
        ] {
            let candidate = format!("{prefix}{body}");
            if candidate.starts_with(ADDRESS_PREFIX) {
                continue; // e.g. "ferry11x": a prefix followed by a longer body
            }
            assert_eq!(
                candidate.parse::<Address>(),
                Err(AddressError::Prefix),
                "{prefix:?}"
            );
        }
        assert_eq!("".parse::<Address>(), Err(AddressError::Prefix));
        assert_eq!("ferry1".parse::<Address>(), Err(AddressError::Length(6)));
        // A ferry1 body under the ferry2 prefix is no ferry2 address.
        assert!(format!("ferry2{body}").parse::<Address>().is_err());
        assert_eq!("ferry2".parse::<Address>(), Err(AddressError::Length(6)));
        // The right prefix twice: the second `1` is part of the body, which then decodes to
        // one byte too many for its checksum.
        let doubled = format!("ferry11{body}");
        assert_eq!(doubled.parse::<Address>(), Err(AddressError::Checksum));
        assert_eq!(expected_text_error(&doubled), AddressError::Checksum);
    }

    #[test]
    fn every_length_plus_and_minus_one() {
        for address in addresses_of_every_shape() {
            let bytes = address.to_bytes();
            let len = bytes.len();
            // One byte short or long: the checksum no longer sits where the parser looks.
            let shorter = Address::from_bytes(&bytes[..len - 1]);
            let mut longer = bytes.clone();
            longer.push(0);
            let longer = Address::from_bytes(&longer);
            if len == MIN_BYTES {
                assert_eq!(shorter, Err(AddressError::Length(len - 1)));
            } else {
                assert_eq!(shorter, Err(AddressError::Checksum), "{len}");
            }
            if len == MAX_BYTES {
                assert_eq!(longer, Err(AddressError::Length(len + 1)));
            } else {
                assert_eq!(longer, Err(AddressError::Checksum), "{len}");
            }
            // One character short or long, at the end and in the middle.
            let text = address.to_string();
            let middle = text.len() / 2;
            for mutated in [
                text[..text.len() - 1].to_owned(),
                format!("{text}A"),
                format!("{text}g"),
                format!("{}{}", &text[..middle], &text[middle + 1..]),
                format!("{}A{}", &text[..middle], &text[middle..]),
            ] {
                assert_eq!(
                    mutated.parse::<Address>(),
                    Err(expected_text_error(&mutated)),
                    "{} chars from {}",
                    mutated.len(),
                    text.len()
                );
            }
        }
        // Every impossible byte length, and every impossible text length.
        for len in (0..MIN_BYTES).chain(MAX_BYTES + 1..MAX_BYTES + 64) {
            assert_eq!(
                Address::from_bytes(&vec![0u8; len]),
                Err(AddressError::Length(len))
            );
        }
        for len in (0..155).chain(508..600) {
            let text = format!("ferry1{}", "A".repeat(len));
            assert_eq!(text.parse::<Address>(), Err(AddressError::Length(len + 6)));
        }
        // The extremes are accepted: 161 and 513 characters.
        let shapes = addresses_of_every_shape();
        let lengths: Vec<usize> = shapes.iter().map(|a| a.to_string().len()).collect();
        assert!(
            lengths.contains(&161) && lengths.contains(&513),
            "{lengths:?}"
        );
    }

    #[test]
    fn whitespace_padding_and_non_ascii() {
        let text = plain().to_string();
        let (head, tail) = text.split_at(80);
        for (mutated, expected) in [
            (format!(" {text}"), AddressError::Prefix),
            (format!("\t{text}"), AddressError::Prefix),
            (format!("\n{text}"), AddressError::Prefix),
            (format!("\u{feff}{text}"), AddressError::Prefix),
            (format!("{text} "), AddressError::Encoding),
            (format!("{text}\n"), AddressError::Encoding),
            (format!("{text}\r\n"), AddressError::Encoding),
            (format!("{head} {tail}"), AddressError::Encoding),
            (format!("{head}\n{tail}"), AddressError::Encoding),
            (format!("{head}\0{tail}"), AddressError::Encoding),
            (format!("{text}="), AddressError::Encoding),
            (format!("{text}=="), AddressError::Encoding),
            (format!("{text}==="), AddressError::Encoding),
            (format!("{head}={tail}"), AddressError::Encoding),
            // Standard base64's characters instead of the URL-safe ones.
            (format!("{head}+{}", &tail[1..]), AddressError::Encoding),
            (format!("{head}/{}", &tail[1..]), AddressError::Encoding),
            // Non-ASCII: look-alike prefixes, and multi-byte characters in the body.
            (
                text.replacen("ferry1", "ferry\u{ff11}", 1),
                AddressError::Prefix,
            ),
            (
                text.replacen("ferry1", "f\u{435}rry1", 1),
                AddressError::Prefix,
            ),
            (
                text.replacen("ferry1", "ferry\u{661}", 1),
                AddressError::Prefix,
            ),
            (format!("{head}é{}", &tail[1..]), AddressError::Encoding),
            (format!("{head}\u{200b}{tail}"), AddressError::Encoding),
        ] {
            assert_eq!(mutated.parse::<Address>(), Err(expected), "{mutated:?}");
        }
        // Non-zero trailing bits in the last character: two texts would decode to one address.
        let last = text.as_bytes()[text.len() - 1];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let position = alphabet.iter().position(|&c| c == last).unwrap();
        // 155 characters carry 116 bytes and 2 spare bits: the low two bits of the last one.
        let sibling = alphabet[position ^ 1] as char;
        let mutated = format!("{}{sibling}", &text[..text.len() - 1]);
        assert_eq!(mutated.parse::<Address>(), Err(AddressError::Encoding));
    }

    /// The eight points of small order (the identity, the point of order 2, two of order 4,
    /// four of order 8), in their canonical encodings.
    const SMALL_ORDER: [&str; 8] = [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    ];

    fn hex32(text: &str) -> [u8; 32] {
        data_encoding::HEXLOWER
            .decode(text.as_bytes())
            .unwrap()
            .try_into()
            .unwrap()
    }

    #[test]
    fn all_zero_small_order_and_non_canonical_keys() {
        let core = plain().core_bytes().unwrap();
        let with_node = |node: [u8; 32]| {
            let mut core = core;
            core[..32].copy_from_slice(&node);
            core
        };
        for point in SMALL_ORDER {
            let core = with_node(hex32(point));
            let expected = Err(AddressError::NodeId(NodeIdError::Weak));
            assert_eq!(parse_core(&core), expected, "{point}");
            assert_eq!(Address::from_core_bytes(&core), expected, "{point}");
        }
        // All zero is one of them (order 4).
        assert_eq!(
            parse_core(&with_node([0; 32])),
            Err(AddressError::NodeId(NodeIdError::Weak))
        );
        // Non-canonical encodings: y = p (≡ 0), y = p + 1 (≡ 1), y = 2^255 - 1, and the
        // identity with the sign bit set (x = 0 has no negative).
        let mut y_p = [0xff; 32];
        y_p[0] = 0xed;
        y_p[31] = 0x7f;
        let mut y_p1 = y_p;
        y_p1[0] = 0xee;
        let mut y_max = [0xff; 32];
        y_max[31] = 0x7f;
        let mut negative_identity = [0u8; 32];
        negative_identity[0] = 1;
        negative_identity[31] = 0x80;
        for node in [y_p, y_p1, y_max, negative_identity] {
            assert_eq!(
                parse_core(&with_node(node)),
                Err(AddressError::NodeId(NodeIdError::NotCanonical)),
                "{node:02x?}"
            );
        }
        // Bytes that are no curve point at all (y = 2: x² = 3/(4d + 1) has no root).
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert_eq!(
            parse_core(&with_node(not_a_point)),
            Err(AddressError::NodeId(NodeIdError::NotCanonical))
        );
    }

    fn with_signature(address: &Address, signature: &[u8; 64]) -> [u8; ADDRESS_CORE_LEN] {
        let mut core = address.core_bytes().unwrap();
        core[48..].copy_from_slice(signature);
        core
    }

    #[test]
    fn passes_verify_but_not_verify_strict() {
        let address = plain();
        let message: [u8; 64] = signed_message(
            &address.node(),
            address.mailbox(),
            address.expires(),
            GrantId::DEFAULT,
        )
        .0[..64]
            .try_into()
            .unwrap();
        let signature = small_order_r_signature(1, &message);
        let verifying = address.node().verifying_key();
        let parsed = Signature::from_bytes(&signature);
        assert!(
            verifying.verify(&message, &parsed).is_ok(),
            "verify accepts"
        );
        assert!(verifying.verify_strict(&message, &parsed).is_err());
        let forged = parse_core(&with_signature(&address, &signature)).unwrap();
        assert_eq!(forged.verify_signature(), Err(VerifyError::Forged));
    }

    #[test]
    fn non_canonical_signature_encodings() {
        let address = plain();
        let signature = *address.signature().unwrap();
        // S + ℓ: the same scalar, not reduced (still below 2^253, so it parses).
        let mut s = [0u64; 4];
        for (limb, chunk) in s.iter_mut().zip(signature[32..].chunks(8)) {
            *limb = u64::from_le_bytes(chunk.try_into().unwrap());
        }
        let mut carry = false;
        for (limb, ell) in s.iter_mut().zip(ELL) {
            let (sum, c1) = limb.overflowing_add(ell);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *limb = sum;
            carry = c1 || c2;
        }
        assert!(!carry);
        let mut unreduced = signature;
        unreduced[32..].copy_from_slice(&limbs_to_bytes(&s));
        if unreduced[63] & 0xe0 == 0 {
            let parsed = parse_core(&with_signature(&address, &unreduced)).unwrap();
            assert_eq!(parsed.verify_signature(), Err(VerifyError::Forged));
        } else {
            assert_eq!(
                parse_core(&with_signature(&address, &unreduced)),
                Err(AddressError::SignatureEncoding)
            );
        }
        // S = ℓ exactly, and S = 2^253 - 1: unreduced, top bits clear.
        for s in [limbs_to_bytes(&ELL), {
            let mut max = [0xff; 32];
            max[31] = 0x1f;
            max
        }] {
            let mut bad = signature;
            bad[32..].copy_from_slice(&s);
            let parsed = parse_core(&with_signature(&address, &bad)).unwrap();
            assert_eq!(parsed.verify_signature(), Err(VerifyError::Forged));
        }
        // Any of the top three bits of S set: refused by the parser, before any check.
        for bit in [0x20u8, 0x40, 0x80] {
            let mut bad = signature;
            bad[63] |= bit;
            assert_eq!(
                parse_core(&with_signature(&address, &bad)),
                Err(AddressError::SignatureEncoding)
            );
            assert_eq!(
                Address::from_core_bytes(&with_signature(&address, &bad)),
                Err(AddressError::SignatureEncoding)
            );
        }
        // A non-canonical R (y = p), and R of small order with the original S.
        let mut bad = signature;
        bad[..32].copy_from_slice(&{
            let mut y_p = [0xff; 32];
            y_p[0] = 0xed;
            y_p[31] = 0x7f;
            y_p
        });
        let parsed = parse_core(&with_signature(&address, &bad)).unwrap();
        assert_eq!(parsed.verify_signature(), Err(VerifyError::Forged));
        for point in SMALL_ORDER {
            let mut bad = signature;
            bad[..32].copy_from_slice(&hex32(point));
            let parsed = parse_core(&with_signature(&address, &bad)).unwrap();
            assert_eq!(
                parsed.verify_signature(),
                Err(VerifyError::Forged),
                "{point}"
            );
        }
        // All-zero signature.
        let parsed = parse_core(&with_signature(&address, &[0; 64])).unwrap();
        assert_eq!(parsed.verify_signature(), Err(VerifyError::Forged));
    }

    #[test]
    fn signatures_without_the_domain_label_or_with_another() {
        let address = Address::mint(&key(1), MailboxId(7), Some(1_900_000_000), vec![]);
        let message: [u8; 64] = signed_message(
            &address.node(),
            address.mailbox(),
            address.expires(),
            GrantId::DEFAULT,
        )
        .0[..64]
            .try_into()
            .unwrap();
        let (_label, body) = message.split_at(ADDRESS_SIGNING_DOMAIN.len());
        let mut relabelled = message;
        relabelled[..16].copy_from_slice(b"ferry/address/v2");
        let mut other_domain = b"ferry/something!".to_vec();
        other_domain.extend_from_slice(body);
        for signed in [body.to_vec(), relabelled.to_vec(), other_domain] {
            let signature = key(1).sign(&signed);
            let parsed = parse_core(&with_signature(&address, &signature)).unwrap();
            assert_eq!(parsed.verify_signature(), Err(VerifyError::Forged));
        }
        // The genuine one, for contrast.
        assert_eq!(address.verify_signature(), Ok(()));
    }

    #[test]
    fn every_single_bit_flip() {
        for address in [
            plain(),
            Address::mint(
                &key(2),
                MailboxId(u64::MAX),
                Some(1_900_000_000),
                vec!["192.0.2.1:4433".parse().unwrap()],
            )
            .with_relay(key(3).public(), "[2001:db8::1]:1".parse().unwrap()),
        ] {
            // Binary form: CRC-32 detects every single-bit error.
            let bytes = address.to_bytes();
            for bit in 0..bytes.len() * 8 {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    Address::from_bytes(&flipped),
                    Err(AddressError::Checksum),
                    "bit {bit}"
                );
            }
            // Text form: a flip in the prefix is `Prefix`; elsewhere the character is no
            // longer base64url (or leaves non-zero trailing bits), or it decodes to bytes with
            // a burst error of at most 6 bits, which CRC-32 detects.
            let text = address.to_string();
            for bit in 0..text.len() * 8 {
                let mut flipped = text.clone().into_bytes();
                flipped[bit / 8] ^= 1 << (bit % 8);
                let Ok(flipped) = String::from_utf8(flipped) else {
                    continue; // not text at all
                };
                let expected = expected_text_error(&flipped);
                assert_eq!(flipped.parse::<Address>(), Err(expected), "bit {bit}");
            }
            // The core inside frames has no checksum: a flip is refused by the parser (node
            // id, signature encoding) or by the signature check; a flipped node id that is
            // still a valid key names another node, refused as `WrongNode` first.
            let core = address.core_bytes().unwrap();
            for bit in 0..ADDRESS_CORE_LEN * 8 {
                let mut flipped = core;
                flipped[bit / 8] ^= 1 << (bit % 8);
                match Address::from_core_bytes(&flipped) {
                    Err(AddressError::NodeId(_) | AddressError::SignatureEncoding) => {}
                    Err(other) => panic!("bit {bit}: {other:?}"),
                    Ok(parsed) if bit < 256 => assert!(
                        matches!(
                            parsed.check_cheap(&address.node(), 0),
                            Err(VerifyError::WrongNode { .. })
                        ),
                        "bit {bit}"
                    ),
                    Ok(parsed) => {
                        assert_eq!(
                            parsed.verify_signature(),
                            Err(VerifyError::Forged),
                            "bit {bit}"
                        )
                    }
                }
            }
        }
    }

    #[test]
    fn expiry_exactly_now_and_one_second_either_side() {
        let node = key(1).public();
        let now = 1_900_000_000;
        for (expires, result) in [
            (now - 1, Err(VerifyError::Expired(now - 1))),
            (now, Err(VerifyError::Expired(now))),
            (now + 1, Ok(())),
        ] {
            let address = Address::mint(&key(1), MailboxId(7), Some(expires), vec![]);
            assert_eq!(address.check_cheap(&node, now), result, "{expires}");
            // The signature is fine: only the clock refuses it.
            assert_eq!(address.verify_signature(), Ok(()));
        }
        // 0 on the wire means "never", and minting "at the epoch" is already past.
        let never = Address::mint(&key(1), MailboxId(7), None, vec![]);
        assert_eq!(never.check_cheap(&node, u64::MAX), Ok(()));
        let epoch = Address::mint(&key(1), MailboxId(7), Some(0), vec![]);
        assert_eq!(epoch.check_cheap(&node, 1), Err(VerifyError::Expired(1)));
    }

    #[test]
    fn valid_but_for_another_node() {
        let address = plain();
        let this_node = key(2).public();
        assert_eq!(
            address.check_cheap(&this_node, 0),
            Err(VerifyError::WrongNode {
                address_node: address.node(),
                this_node,
            })
        );
        // Valid in every other respect.
        assert_eq!(address.verify_signature(), Ok(()));
        // Another node's genuine signature over this node's id and mailbox is a forgery.
        let other = Address::mint(&key(2), address.mailbox(), None, vec![]);
        let mixed = parse_core(&with_signature(&address, other.signature().unwrap())).unwrap();
        assert_eq!(mixed.verify_signature(), Err(VerifyError::Forged));
    }
}

/// Grants, caveats and the HMAC chain (docs/PROTOCOL.md §4.11): the proofs of issue 17.
#[cfg(test)]
mod capability_tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    const NOW: u64 = 1_800_000_000;

    /// Everything the node checks without state, in its order; Ok with the counting caveats.
    fn node_accepts(
        address: &Address,
        node_key: &SecretKey,
        peer: &NodeId,
        usage: Usage<'_>,
        now: u64,
    ) -> Result<Vec<Limit>, VerifyError> {
        address.check_cheap(&node_key.public(), now)?;
        address.check_usage(peer, usage)?;
        address.verify(node_key)
    }

    fn caveat_strategy() -> impl Strategy<Value = Caveat> {
        prop_oneof![
            (NOW - 10..NOW + 1000).prop_map(Caveat::ExpiresBefore),
            (0u32..5).prop_map(Caveat::MaxMessages),
            (1u32..5, 1u32..100)
                .prop_map(|(messages, per_secs)| Caveat::Rate { messages, per_secs }),
            prop_oneof![Just("echo"), Just("time")].prop_map(|s| Caveat::Service(s.into())),
            (1u8..4).prop_map(|seed| Caveat::Holder(key(seed).public())),
            (0x40u8..0x50, proptest::collection::vec(any::<u8>(), 0..8))
                .prop_map(|(kind, value)| Caveat::Unknown { kind, value }),
        ]
    }

    fn base_strategy() -> impl Strategy<Value = Address> {
        (
            any::<u64>(),
            prop_oneof![Just(0u64), 1u64..u64::MAX],
            proptest::option::of(NOW - 5..NOW + 2000),
        )
            .prop_map(|(mailbox, grant, expires)| {
                Address::mint_grant(&key(9), MailboxId(mailbox), GrantId(grant), expires, vec![])
            })
    }

    /// Appends caveats one at a time, skipping those the builder refuses (later expiries).
    fn derive(base: &Address, caveats: &[Caveat]) -> Address {
        let mut address = base.clone();
        for caveat in caveats {
            if address.caveats().len() == MAX_CAVEATS {
                break;
            }
            if let Ok(next) = address.with_caveats(std::slice::from_ref(caveat)) {
                address = next;
            }
        }
        address
    }

    fn usage_strategy() -> impl Strategy<Value = Usage<'static>> {
        prop_oneof![
            Just(Usage::Messages),
            Just(Usage::Monitor),
            Just(Usage::Conversation(None)),
            Just(Usage::Conversation(Some("echo"))),
            Just(Usage::Conversation(Some("time"))),
        ]
    }

    /// A chain with its caveats replaced (tag unchanged): what a tamperer can build.
    fn with_caveat_list(address: &Address, caveats: Vec<Caveat>) -> Address {
        let Proof::Chain { tag, .. } = &address.0.proof else {
            panic!("not attenuated")
        };
        Address::from_fields(Fields {
            proof: Proof::Chain { caveats, tag: *tag },
            ..(*address.0).clone()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A derived address never permits more than its parent: whatever the derived one is
        /// accepted for (peer, use, time), the parent is accepted for too, and the derived one
        /// is charged to every counter the parent is charged to.
        #[test]
        fn derived_never_permits_more_than_parent(
            base in base_strategy(),
            first in proptest::collection::vec(caveat_strategy(), 0..4),
            more in proptest::collection::vec(caveat_strategy(), 1..4),
            peer_seed in 1u8..4,
            usage in usage_strategy(),
            now in NOW - 20..NOW + 3000,
        ) {
            let parent = derive(&base, &first);
            let child = derive(&parent, &more);
            let node_key = key(9);
            let peer = key(peer_seed).public();
            if let Ok(child_limits) = node_accepts(&child, &node_key, &peer, usage, now) {
                let parent_limits = node_accepts(&parent, &node_key, &peer, usage, now);
                prop_assert!(parent_limits.is_ok(), "child accepted, parent {:?}", parent_limits);
                let parent_limits = parent_limits.unwrap();
                prop_assert!(child_limits.len() >= parent_limits.len());
                prop_assert_eq!(&child_limits[..parent_limits.len()], &parent_limits[..]);
            }
            // And the chain always checks: attenuation needs no key.
            prop_assert!(child.verify(&node_key).is_ok());
            // Every form round-trips.
            let text = child.to_string();
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(&text.parse::<Address>().unwrap(), &child);
            prop_assert_eq!(&Address::from_bytes(&child.to_bytes()).unwrap(), &child);
            prop_assert_eq!(&Address::from_cap_bytes(&child.to_cap_bytes()).unwrap(), &child);
        }

        /// Every single-bit flip of an attenuated address is refused: by the parser, the
        /// cheap checks or the chain, in the binary form, the text form and the capability
        /// field of frames (which has no checksum).
        #[test]
        fn every_single_bit_flip_of_a_chain_is_refused(
            base in base_strategy(),
            caveats in proptest::collection::vec(caveat_strategy(), 1..4),
        ) {
            let node_key = key(9);
            let address = derive(&base, &caveats);
            prop_assume!(!address.caveats().is_empty());
            let accepted = |candidate: &Address| {
                candidate.check_cheap(&node_key.public(), 0).is_ok()
                    && candidate.verify(&node_key).is_ok()
            };
            let cap = address.to_cap_bytes();
            for bit in 0..cap.len() * 8 {
                let mut flipped = cap.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                if let Ok(parsed) = Address::from_cap_bytes(&flipped) {
                    prop_assert!(!accepted(&parsed), "cap bit {} accepted", bit);
                }
            }
            let bytes = address.to_bytes();
            for bit in 0..bytes.len() * 8 {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                if let Ok(parsed) = Address::from_bytes(&flipped) {
                    prop_assert!(!accepted(&parsed), "bytes bit {} accepted", bit);
                }
            }
            let text = address.to_string().into_bytes();
            for bit in 0..text.len() * 8 {
                let mut flipped = text.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                let parsed = std::str::from_utf8(&flipped).ok().and_then(|t| t.parse::<Address>().ok());
                if let Some(parsed) = parsed {
                    prop_assert!(!accepted(&parsed), "text bit {} accepted", bit);
                }
            }
        }

        /// Reordered, duplicated, dropped (anywhere) and truncated caveats are refused: the
        /// chain's tag covers the list exactly.
        #[test]
        fn reordered_duplicated_or_truncated_caveats_are_refused(
            base in base_strategy(),
            caveats in proptest::collection::vec(caveat_strategy(), 2..6),
            i in any::<proptest::sample::Index>(),
            j in any::<proptest::sample::Index>(),
        ) {
            let node_key = key(9);
            let address = derive(&base, &caveats);
            let list = address.caveats().to_vec();
            prop_assume!(list.len() >= 2);
            let (i, j) = (i.index(list.len()), j.index(list.len()));
            let mut variants = Vec::new();
            if list[i] != list[j] {
                let mut swapped = list.clone();
                swapped.swap(i, j);
                variants.push(swapped);
            }
            let mut duplicated = list.clone();
            duplicated.insert(i, list[i].clone());
            variants.push(duplicated);
            let mut dropped = list.clone();
            dropped.remove(i);
            variants.push(dropped);
            variants.push(list[..list.len() - 1].to_vec());
            variants.push(list[1..].to_vec());
            for variant in variants {
                prop_assume!(variant.len() <= MAX_CAVEATS);
                let tampered = with_caveat_list(&address, variant.clone());
                prop_assert_eq!(tampered.verify(&node_key), Err(VerifyError::Forged), "{:?}", variant);
                // Also after a trip through the wire form.
                let reparsed = Address::from_cap_bytes(&tampered.to_cap_bytes()).unwrap();
                prop_assert_eq!(reparsed.verify(&node_key), Err(VerifyError::Forged));
            }
            // Stripping every caveat leaves no signature to show.
            let stripped = Address::from_fields(Fields { proof: Proof::Signature([0; 64]), ..(*address.0).clone() });
            prop_assert_eq!(stripped.verify(&node_key), Err(VerifyError::Forged));
        }

        #[test]
        fn arbitrary_v2_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..900)) {
            let _ = Address::from_cap_bytes(&bytes);
            let mut marked = ADDRESS_PREFIX_V2.as_bytes().to_vec();
            marked.extend_from_slice(&bytes);
            let _ = Address::from_bytes(&marked);
        }
    }

    fn granted() -> Address {
        Address::mint_grant(
            &key(1),
            MailboxId(7),
            GrantId(0x0102_0304_0506_0708),
            None,
            vec![],
        )
    }

    #[test]
    fn a_grant_is_signed_and_has_the_second_form() {
        let address = granted();
        assert!(!address.is_plain());
        assert_eq!(address.core_bytes(), None);
        assert_eq!(address.verify_signature(), Ok(()));
        let text = address.to_string();
        assert!(text.starts_with("ferry2"));
        assert_eq!(text.parse::<Address>().unwrap(), address);
        // 121-byte cap2 + 4-byte CRC = 125 bytes: 167 characters, 6 more than ferry1.
        assert_eq!(text.len(), 6 + 167);
        // Another grant id under the same signature is a forgery.
        let mut other = address.clone();
        other.fields_mut().grant = GrantId(1);
        assert_eq!(other.verify_signature(), Err(VerifyError::Forged));
        // And so is grant 0 with the grant's signature, written as ferry1.
        other.fields_mut().grant = GrantId::DEFAULT;
        assert_eq!(other.verify_signature(), Err(VerifyError::Forged));
        // The default grant without caveats is never written as ferry2.
        let plain = Address::mint(&key(1), MailboxId(7), None, vec![]);
        let mut cap = vec![CAP_V2];
        plain.put_cap2(&mut cap);
        assert_eq!(
            Address::from_cap_bytes(&cap),
            Err(AddressError::NotCanonical)
        );
    }

    #[test]
    fn attenuation_narrows_and_checks() {
        let holder = key(2).public();
        let address = Address::mint(&key(1), MailboxId(7), Some(NOW + 3600), vec![])
            .attenuate()
            .expires_at(NOW + 60)
            .max_messages(100)
            .only(holder)
            .build()
            .unwrap();
        assert_eq!(address.effective_expiry(), Some(NOW + 60));
        assert_eq!(address.expires(), Some(NOW + 3600));
        assert_eq!(address.signature(), None);
        assert_eq!(address.core_bytes(), None);
        assert_eq!(address.check_cheap(&key(1).public(), NOW + 59), Ok(()));
        assert_eq!(
            address.check_cheap(&key(1).public(), NOW + 60),
            Err(VerifyError::Expired(NOW + 60))
        );
        assert_eq!(address.check_usage(&holder, Usage::Messages), Ok(()));
        assert_eq!(
            address.check_usage(&key(3).public(), Usage::Messages),
            Err(VerifyError::Caveat(CaveatViolation::Holder {
                holder,
                peer: key(3).public()
            }))
        );
        let limits = address.verify(&key(1)).unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].kind, LimitKind::Messages(100));
        // The same caveats on another node's key do not check.
        assert_eq!(address.verify(&key(2)), Err(VerifyError::Forged));
        // Later expiries are refused by the builder; an earlier one again is fine.
        assert_eq!(
            address.attenuate().expires_at(NOW + 60).build(),
            Err(AttenuateError::NotEarlier {
                asked: NOW + 60,
                current: NOW + 60
            })
        );
        assert!(address.attenuate().expires_at(NOW + 59).build().is_ok());
        assert_eq!(
            address.attenuate().service("not a name").build(),
            Err(AttenuateError::Invalid(CaveatError::Value(
                caveat::kind::SERVICE
            )))
        );
        // At most MAX_CAVEATS in all.
        let mut full = address.clone();
        while full.caveats().len() < MAX_CAVEATS {
            full = full.attenuate().max_messages(1).build().unwrap();
        }
        assert_eq!(
            full.attenuate().max_messages(1).build(),
            Err(AttenuateError::TooManyCaveats)
        );
        assert!(full.to_string().parse::<Address>().is_ok());
        // Each max caveat is a counter of its own: a derived address is charged to all.
        let limits = full.verify(&key(1)).unwrap();
        assert_eq!(limits.len(), MAX_CAVEATS - 2);
        let keys: std::collections::HashSet<_> = limits.iter().map(|l| l.key).collect();
        assert_eq!(keys.len(), limits.len());
    }

    #[test]
    fn service_caveats_allow_that_service_only() {
        let address = granted().attenuate().service("echo").build().unwrap();
        let peer = key(5).public();
        assert_eq!(
            address.check_usage(&peer, Usage::Conversation(Some("echo"))),
            Ok(())
        );
        for usage in [
            Usage::Messages,
            Usage::Monitor,
            Usage::Conversation(None),
            Usage::Conversation(Some("time")),
        ] {
            assert_eq!(
                address.check_usage(&peer, usage),
                Err(VerifyError::Caveat(CaveatViolation::Service("echo".into()))),
                "{usage:?}"
            );
        }
        let unknown = granted()
            .with_caveats(&[Caveat::Unknown {
                kind: 0x77,
                value: vec![1],
            }])
            .unwrap();
        assert_eq!(
            unknown.check_usage(&peer, Usage::Messages),
            Err(VerifyError::Caveat(CaveatViolation::Unknown(0x77)))
        );
        // Parsed and re-encoded unchanged.
        assert_eq!(unknown.to_string().parse::<Address>().unwrap(), unknown);
    }

    #[test]
    fn the_longest_address_is_within_the_documented_bounds() {
        let hints = vec![];
        let mut address = Address::mint_grant(
            &key(1),
            MailboxId(u64::MAX),
            GrantId(u64::MAX),
            Some(u64::MAX),
            hints,
        );
        for kind in 0x40..0x40 + MAX_CAVEATS as u8 {
            address = address
                .with_caveats(&[Caveat::Unknown {
                    kind,
                    value: vec![0xab; MAX_CAVEAT_VALUE_LEN],
                }])
                .unwrap();
        }
        // Four extension hints of 64 bytes: the longest hints.
        for tag in 0..MAX_HINTS as u8 {
            address
                .fields_mut()
                .extensions
                .push((0x60 + tag, vec![0; MAX_EXTENSION_LEN]));
        }
        assert_eq!(address.to_cap_bytes().len(), MAX_CAP_LEN);
        let text = address.to_string();
        assert_eq!(text.len(), MAX_ADDRESS_TEXT_LEN);
        assert_eq!(MAX_ADDRESS_TEXT_LEN, 1186);
        assert_eq!(text.parse::<Address>().unwrap(), address);
        assert_eq!(address.to_bytes().len(), 6 + MAX_BYTES_V2);
        // One byte more is refused by length, before decoding.
        assert_eq!(
            format!("{text}A").parse::<Address>(),
            Err(AddressError::Length(1187))
        );
    }

    #[test]
    fn bytes_per_caveat() {
        let base = Address::mint(&key(1), MailboxId(7), None, vec![]);
        let len = |a: &Address| a.to_string().len();
        let one = base.attenuate().max_messages(100).build().unwrap();
        // ferry1 (112-byte core) → ferry2 with one 6-byte caveat and a 32-byte tag: 57 + 6 + 32.
        assert_eq!(one.to_cap_bytes().len(), 1 + 57 + 6 + 32);
        assert_eq!(len(&base), 161);
        // 95 + 4 (CRC) = 99 bytes: 132 base64url characters after `ferry2`.
        assert_eq!(len(&one), 138);
        let two = one.attenuate().only(key(2).public()).build().unwrap();
        assert_eq!(two.to_cap_bytes().len() - one.to_cap_bytes().len(), 34);
    }
}
