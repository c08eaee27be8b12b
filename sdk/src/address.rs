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

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ed25519_dalek::{Signature, Verifier as _};

use crate::identity::{NodeId, NodeIdError, SecretKey, NODE_ID_LEN};

/// The text prefix of every address. The `1` is the format version.
pub const ADDRESS_PREFIX: &str = "ferry1";
/// Domain-separation label signed in front of every address body.
pub const ADDRESS_SIGNING_DOMAIN: &[u8; 16] = b"ferry/address/v1";
/// Length of the signed core of an address in bytes.
pub const ADDRESS_CORE_LEN: usize = NODE_ID_LEN + 8 + 8 + 64;
/// At most this many dial hints fit in one address.
pub const MAX_HINTS: usize = 4;

const HINT_V4: u8 = 0x04;
const HINT_V6: u8 = 0x06;
const HINT_V4_LEN: usize = 1 + 4 + 2;
const HINT_V6_LEN: usize = 1 + 16 + 2;
/// Extension-hint tag of a relay hint: `relay node id[32] | socket-address hint` (the 7- or
/// 19-byte form of tag 0x04 or 0x06).
pub const HINT_RELAY: u8 = 0x52;

/// Appends `addr` as a socket-address hint: tag, IP address, port.
fn put_socket_hint(out: &mut Vec<u8>, addr: SocketAddr) {
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

fn encode_relay_hint(relay: &NodeId, addr: SocketAddr) -> Vec<u8> {
    let mut value = Vec::with_capacity(NODE_ID_LEN + HINT_V6_LEN);
    value.extend_from_slice(relay.as_bytes());
    put_socket_hint(&mut value, addr);
    value
}

fn decode_relay_hint(value: &[u8]) -> Option<(NodeId, SocketAddr)> {
    let (node, rest) = value.split_first_chunk::<NODE_ID_LEN>()?;
    let node = NodeId::from_bytes(node).ok()?;
    let (&tag, rest) = rest.split_first()?;
    let ip: IpAddr = match (tag, rest.len()) {
        (HINT_V4, 6) => Ipv4Addr::from(*rest.first_chunk::<4>()?).into(),
        (HINT_V6, 18) => Ipv6Addr::from(*rest.first_chunk::<16>()?).into(),
        _ => return None,
    };
    let port = u16::from_be_bytes(*rest.last_chunk::<2>()?);
    Some((node, SocketAddr::new(ip, port)))
}

/// Longest value of an extension hint, in bytes.
pub const MAX_EXTENSION_LEN: usize = 64;
const EXTENSION_MAX_LEN: usize = 2 + MAX_EXTENSION_LEN;
const CRC_LEN: usize = 4;
const MIN_BYTES: usize = ADDRESS_CORE_LEN + CRC_LEN;
const MAX_BYTES: usize = ADDRESS_CORE_LEN + MAX_HINTS * EXTENSION_MAX_LEN + CRC_LEN;

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

/// A signed capability address of a mailbox, with optional dial hints.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    node: NodeId,
    mailbox: MailboxId,
    expires: Option<u64>,
    signature: [u8; 64],
    hints: Vec<SocketAddr>,
    /// Hints of kinds this version does not know, as (tag, value), kept so that an address
    /// passes through unchanged. They follow the socket-address hints.
    extensions: Vec<(u8, Vec<u8>)>,
}

/// Why bytes or text are not a well-formed address. Nothing here involves a signature check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The text does not start with `ferry1`.
    #[error("address must start with \"{ADDRESS_PREFIX}\"")]
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
}

/// Why an address does not grant access to a mailbox on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// The signature does not verify under `verify_strict`: forged or tampered.
    #[error("address signature is invalid (forged or tampered)")]
    Forged,
}

impl Address {
    /// Signs a new address. Only the node holding `key` can do this.
    pub fn mint(
        key: &SecretKey,
        mailbox: MailboxId,
        expires: Option<u64>,
        hints: Vec<SocketAddr>,
    ) -> Self {
        // 0 encodes "never"; an expiry at the epoch itself is already past anyway.
        let expires = expires.map(|t| t.max(1));
        let node = key.public();
        let signature = key.sign(&signed_message(&node, mailbox, expires));
        let mut hints = hints;
        dedup_in_order(&mut hints);
        hints.truncate(MAX_HINTS);
        Self {
            node,
            mailbox,
            expires,
            signature,
            hints,
            extensions: Vec::new(),
        }
    }

    /// The node that owns the mailbox.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The mailbox on that node.
    pub fn mailbox(&self) -> MailboxId {
        self.mailbox
    }

    /// When the address stops working, in seconds since the Unix epoch.
    pub fn expires(&self) -> Option<u64> {
        self.expires
    }

    /// Where the node may be reached (unsigned, advisory).
    pub fn hints(&self) -> &[SocketAddr] {
        &self.hints
    }

    /// The same address with other socket-address hints (at most [`MAX_HINTS`] hints in all
    /// are kept, extensions last).
    pub fn with_hints(&self, hints: Vec<SocketAddr>) -> Self {
        let mut hints = hints;
        dedup_in_order(&mut hints);
        hints.truncate(MAX_HINTS);
        let mut extensions = self.extensions.clone();
        extensions.truncate(MAX_HINTS - hints.len());
        Self {
            hints,
            extensions,
            ..self.clone()
        }
    }

    /// The address without any hints: the capability alone.
    pub fn without_hints(&self) -> Self {
        Self {
            hints: Vec::new(),
            extensions: Vec::new(),
            ..self.clone()
        }
    }

    /// Extension hints, as (tag, value): relay hints ([`HINT_RELAY`]) and kinds this version
    /// does not know, kept verbatim.
    pub fn extension_hints(&self) -> &[(u8, Vec<u8>)] {
        &self.extensions
    }

    /// The same address with a relay hint added: the node can be reached through the relay
    /// node `relay` at `relay_addr` (docs/PROTOCOL.md §12). Dropped, like every hint beyond
    /// [`MAX_HINTS`], when the address already has four hints.
    pub fn with_relay(&self, relay: NodeId, relay_addr: SocketAddr) -> Self {
        let mut address = self.clone();
        let value = encode_relay_hint(&relay, relay_addr);
        let hint = (HINT_RELAY, value);
        if address.hints.len() + address.extensions.len() < MAX_HINTS
            && !address.extensions.contains(&hint)
        {
            address.extensions.push(hint);
        }
        address
    }

    /// The relays this address names: (relay node, its socket address), in order. Malformed
    /// relay hints are skipped.
    pub fn relays(&self) -> Vec<(NodeId, SocketAddr)> {
        self.extensions
            .iter()
            .filter(|(tag, _)| *tag == HINT_RELAY)
            .filter_map(|(_, value)| decode_relay_hint(value))
            .collect()
    }

    /// The signature bytes.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The cheap checks, in order: the address names `this_node`, and has not expired at
    /// `now_secs`. Run these before [`Address::verify_signature`].
    pub fn check_cheap(&self, this_node: &NodeId, now_secs: u64) -> Result<(), VerifyError> {
        if self.node != *this_node {
            return Err(VerifyError::WrongNode {
                address_node: self.node,
                this_node: *this_node,
            });
        }
        match self.expires {
            Some(at) if now_secs >= at => Err(VerifyError::Expired(at)),
            _ => Ok(()),
        }
    }

    /// Checks the signature with `verify_strict` (about 40 µs): the expensive check.
    pub fn verify_signature(&self) -> Result<(), VerifyError> {
        let message = signed_message(&self.node, self.mailbox, self.expires);
        let signature = Signature::from_bytes(&self.signature);
        let key = self.node.verifying_key();
        key.verify_strict(&message, &signature)
            .map_err(|_| VerifyError::Forged)?;
        // verify_strict and verify agree on every canonical input; keep the invariant visible.
        debug_assert!(key.verify(&message, &signature).is_ok());
        Ok(())
    }

    /// The 112-byte signed core, as carried inside frames.
    pub fn core_bytes(&self) -> [u8; ADDRESS_CORE_LEN] {
        let mut out = [0u8; ADDRESS_CORE_LEN];
        out[..32].copy_from_slice(self.node.as_bytes());
        out[32..40].copy_from_slice(&self.mailbox.0.to_be_bytes());
        out[40..48].copy_from_slice(&self.expires.unwrap_or(0).to_be_bytes());
        out[48..].copy_from_slice(&self.signature);
        out
    }

    /// Parses a 112-byte core (no hints, no checksum), as carried inside frames.
    pub fn from_core_bytes(core: &[u8; ADDRESS_CORE_LEN]) -> Result<Self, AddressError> {
        let (node, rest) = core.split_at(NODE_ID_LEN);
        let (mailbox, rest) = rest.split_at(8);
        let (expires, signature) = rest.split_at(8);
        let node = NodeId::from_bytes(&array(node))?;
        let mailbox = MailboxId(u64::from_be_bytes(array(mailbox)));
        let expires = match u64::from_be_bytes(array(expires)) {
            0 => None,
            at => Some(at),
        };
        let signature: [u8; 64] = array(signature);
        // A canonical scalar is below the group order, so its top three bits are clear.
        if signature[63] & 0xe0 != 0 {
            return Err(AddressError::SignatureEncoding);
        }
        Ok(Self {
            node,
            mailbox,
            expires,
            signature,
            hints: Vec::new(),
            extensions: Vec::new(),
        })
    }

    /// The full binary form: core, hints and checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_BYTES);
        out.extend_from_slice(&self.core_bytes());
        for hint in &self.hints {
            put_socket_hint(&mut out, *hint);
        }
        for (tag, value) in &self.extensions {
            out.push(*tag);
            // Values are at most MAX_EXTENSION_LEN (64) bytes: checked when parsed.
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses the full binary form, rejecting every non-canonical input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AddressError> {
        if !(MIN_BYTES..=MAX_BYTES).contains(&bytes.len()) {
            return Err(AddressError::Length(bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
        if crc32fast::hash(body).to_be_bytes() != *crc {
            return Err(AddressError::Checksum);
        }
        let (core, mut rest) = body.split_at(ADDRESS_CORE_LEN);
        let mut address = Self::from_core_bytes(&array(core))?;
        while let Some((&tag, tail)) = rest.split_first() {
            if address.hints.len() + address.extensions.len() == MAX_HINTS {
                return Err(AddressError::TooManyHints);
            }
            let (ip, tail): (IpAddr, &[u8]) = match tag {
                HINT_V4 | HINT_V6 if !address.extensions.is_empty() => {
                    return Err(AddressError::Hint)
                }
                HINT_V4 if tail.len() >= HINT_V4_LEN - 1 => {
                    let (ip, tail) = tail.split_at(4);
                    (Ipv4Addr::from(array::<4>(ip)).into(), tail)
                }
                HINT_V6 if tail.len() >= HINT_V6_LEN - 1 => {
                    let (ip, tail) = tail.split_at(16);
                    (Ipv6Addr::from(array::<16>(ip)).into(), tail)
                }
                HINT_V4 | HINT_V6 => return Err(AddressError::Hint),
                _ => {
                    let (&len, tail) = tail.split_first().ok_or(AddressError::Hint)?;
                    let len = usize::from(len);
                    if len > MAX_EXTENSION_LEN || tail.len() < len {
                        return Err(AddressError::Hint);
                    }
                    let (value, tail) = tail.split_at(len);
                    address.extensions.push((tag, value.to_vec()));
                    rest = tail;
                    continue;
                }
            };
            let (port, tail) = tail.split_at(2);
            let hint = SocketAddr::new(ip, u16::from_be_bytes(array(port)));
            if address.hints.contains(&hint) {
                return Err(AddressError::DuplicateHint);
            }
            address.hints.push(hint);
            rest = tail;
        }
        Ok(address)
    }
}

/// The exact bytes an address signature covers.
fn signed_message(node: &NodeId, mailbox: MailboxId, expires: Option<u64>) -> [u8; 64] {
    let mut message = [0u8; 64];
    message[..16].copy_from_slice(ADDRESS_SIGNING_DOMAIN);
    message[16..48].copy_from_slice(node.as_bytes());
    message[48..56].copy_from_slice(&mailbox.0.to_be_bytes());
    message[56..].copy_from_slice(&expires.unwrap_or(0).to_be_bytes());
    message
}

/// Copies a slice whose length the caller has already fixed into an array.
fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&slice[..N]);
    out
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
        f.write_str(ADDRESS_PREFIX)?;
        f.write_str(&data_encoding::BASE64URL_NOPAD.encode(&self.to_bytes()))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Addresses are bearer capabilities: never print the whole thing in debug output/logs.
        write!(
            f,
            "Address({}/{}, hints: {:?})",
            self.node.short(),
            self.mailbox,
            self.hints
        )
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let encoding = &data_encoding::BASE64URL_NOPAD;
        let body = text
            .strip_prefix(ADDRESS_PREFIX)
            .ok_or(AddressError::Prefix)?;
        if !(encoding.encode_len(MIN_BYTES)..=encoding.encode_len(MAX_BYTES)).contains(&body.len())
        {
            return Err(AddressError::Length(text.len()));
        }
        let bytes = encoding
            .decode(body.as_bytes())
            .map_err(|_| AddressError::Encoding)?;
        Self::from_bytes(&bytes)
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

    proptest! {
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
            let mut core = address.core_bytes();
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
