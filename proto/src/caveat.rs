//! Caveats and the HMAC chain of attenuated addresses (docs/PROTOCOL.md §4.11): pure code, no
//! IO, no clock.
//!
//! An attenuated address carries its base fields (node, mailbox, expiry, grant), a list of
//! caveats and a 32-byte tag instead of the node's signature:
//!
//! ```text
//! tag_0 = HMAC-SHA256(key = signature[64], "ferry/caveat/v1" | node | mailbox | expires | grant)
//! tag_i = HMAC-SHA256(key = tag_{i-1}, caveat_i)        caveat_i = kind[1] | len[1] | value[len]
//! ```
//!
//! Whoever holds an address can append a caveat (it knows the last tag), nobody can remove
//! one (HMAC cannot be run backwards, and tag_0 needs the signature, which an attenuated
//! address no longer carries), and the node checks a chain with one HMAC per caveat once it
//! knows tag_0, which it recomputes from its own (deterministic) signature.
// Parsing takes bytes from anyone: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fmt;

use ring::hmac;

use crate::identity::{NodeId, NODE_ID_LEN};
use crate::service_name::valid_service_name;

/// At most this many caveats in one address.
pub const MAX_CAVEATS: usize = 8;
/// Longest caveat value, in bytes (a service name, or a caveat of a kind this version does not
/// know).
pub const MAX_CAVEAT_VALUE_LEN: usize = 64;
/// Length of a chain tag.
pub const TAG_LEN: usize = 32;
/// Label of the first link of every chain.
pub const CHAIN_DOMAIN: &[u8; 15] = b"ferry/caveat/v1";
/// Label of the counter key derived from a chain tag.
pub const COUNTER_DOMAIN: &[u8; 14] = b"ferry/count/v1";

/// Caveat kind bytes.
pub mod kind {
    /// [`Caveat::ExpiresBefore`](super::Caveat::ExpiresBefore): u64be, not 0.
    pub const EXPIRES: u8 = 0x01;
    /// [`Caveat::MaxMessages`](super::Caveat::MaxMessages): u32be.
    pub const MAX_MESSAGES: u8 = 0x02;
    /// [`Caveat::Rate`](super::Caveat::Rate): messages u32be, not 0 | per seconds u32be, not 0.
    pub const RATE: u8 = 0x03;
    /// [`Caveat::Service`](super::Caveat::Service): a service name, 1 to 64 bytes.
    pub const SERVICE: u8 = 0x04;
    /// [`Caveat::Holder`](super::Caveat::Holder): a NodeId, 32 bytes.
    pub const HOLDER: u8 = 0x05;
}

/// One restriction of an attenuated address. Every caveat only narrows what the address
/// permits; a node refuses an address with a caveat it does not know.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Caveat {
    /// The address is void at and after this time (seconds since the Unix epoch), as the
    /// address's own expiry is (PROTOCOL.md §4.6). The earliest expiry of an address counts.
    ExpiresBefore(u64),
    /// At most this many messages are delivered under this caveat: through the address that
    /// added it and every address derived from that one, together, ever.
    MaxMessages(u32),
    /// At most `messages` messages per `per_secs` seconds are delivered under this caveat.
    Rate {
        /// Messages per window.
        messages: u32,
        /// Length of the window, in seconds.
        per_secs: u32,
    },
    /// The address opens conversations with the service registered under this name, and is
    /// good for nothing else (no messages, no watches).
    Service(String),
    /// Only this node may use the address: the peer presenting it must be this node, as its
    /// TLS handshake proves. (A third-party handoff: a copy is useless to anyone else.)
    Holder(NodeId),
    /// A caveat of a kind this version does not know, kept verbatim so that the address
    /// passes through unchanged; a node refuses it (fail closed).
    Unknown {
        /// Its kind byte.
        kind: u8,
        /// Its value, at most [`MAX_CAVEAT_VALUE_LEN`] bytes.
        value: Vec<u8>,
    },
}

/// Why bytes are not a well-formed caveat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaveatError {
    /// The caveat is cut short: its kind, length or value is missing.
    #[error("caveat is truncated")]
    Truncated,
    /// The value has the wrong length for its kind, or is longer than 64 bytes.
    #[error("caveat of kind {kind:#04x} has a value of {len} bytes")]
    Length {
        /// The caveat's kind byte.
        kind: u8,
        /// The value's length.
        len: usize,
    },
    /// The value is out of range for its kind: an expiry of 0, a rate of 0 messages or 0
    /// seconds, an invalid service name, or a node id that is not a valid key.
    #[error("caveat of kind {0:#04x} has an invalid value")]
    Value(u8),
}

impl Caveat {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Self::ExpiresBefore(_) => kind::EXPIRES,
            Self::MaxMessages(_) => kind::MAX_MESSAGES,
            Self::Rate { .. } => kind::RATE,
            Self::Service(_) => kind::SERVICE,
            Self::Holder(_) => kind::HOLDER,
            Self::Unknown { kind, .. } => *kind,
        }
    }

    /// Whether the caveat is well-formed: what [`Caveat::decode`] would accept.
    pub fn validate(&self) -> Result<(), CaveatError> {
        let mut bytes = Vec::new();
        self.encode_unchecked(&mut bytes);
        match Self::decode(&bytes) {
            Ok((decoded, [])) if decoded == *self => Ok(()),
            Ok(_) => Err(CaveatError::Value(self.kind())),
            Err(error) => Err(error),
        }
    }

    /// Appends `kind | len | value`. Only for caveats that passed [`Caveat::validate`] (every
    /// caveat of a parsed or attenuated address did).
    pub(crate) fn encode_unchecked(&self, out: &mut Vec<u8>) {
        out.push(self.kind());
        let at = out.len();
        out.push(0);
        match self {
            Self::ExpiresBefore(at) => out.extend_from_slice(&at.to_be_bytes()),
            Self::MaxMessages(n) => out.extend_from_slice(&n.to_be_bytes()),
            Self::Rate { messages, per_secs } => {
                out.extend_from_slice(&messages.to_be_bytes());
                out.extend_from_slice(&per_secs.to_be_bytes());
            }
            Self::Service(name) => {
                let bytes = name.as_bytes();
                out.extend_from_slice(bytes.get(..MAX_CAVEAT_VALUE_LEN).unwrap_or(bytes))
            }
            Self::Holder(node) => out.extend_from_slice(node.as_bytes()),
            Self::Unknown { value, .. } => {
                out.extend_from_slice(value.get(..MAX_CAVEAT_VALUE_LEN).unwrap_or(value))
            }
        }
        let len = out.len() - at - 1;
        // At most 64 bytes were written.
        if let Some(slot) = out.get_mut(at) {
            *slot = len as u8;
        }
    }

    /// The encoding `kind | len | value`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + MAX_CAVEAT_VALUE_LEN);
        self.encode_unchecked(&mut out);
        out
    }

    /// Reads one caveat from the front of `bytes`: the caveat and what follows it.
    pub fn decode(bytes: &[u8]) -> Result<(Self, &[u8]), CaveatError> {
        let (&kind, rest) = bytes.split_first().ok_or(CaveatError::Truncated)?;
        let (&len, rest) = rest.split_first().ok_or(CaveatError::Truncated)?;
        let len = usize::from(len);
        if len > MAX_CAVEAT_VALUE_LEN {
            return Err(CaveatError::Length { kind, len });
        }
        let value = rest.get(..len).ok_or(CaveatError::Truncated)?;
        let rest = rest.get(len..).unwrap_or_default();
        let wrong_length = || CaveatError::Length { kind, len };
        let caveat = match kind {
            kind::EXPIRES => {
                let at = u64::from_be_bytes(value.try_into().map_err(|_| wrong_length())?);
                if at == 0 {
                    return Err(CaveatError::Value(kind));
                }
                Self::ExpiresBefore(at)
            }
            kind::MAX_MESSAGES => Self::MaxMessages(u32::from_be_bytes(
                value.try_into().map_err(|_| wrong_length())?,
            )),
            kind::RATE => {
                let value: &[u8; 8] = value.try_into().map_err(|_| wrong_length())?;
                let (messages, per_secs) = value.split_at(4);
                let messages = u32::from_be_bytes(messages.try_into().map_err(|_| wrong_length())?);
                let per_secs = u32::from_be_bytes(per_secs.try_into().map_err(|_| wrong_length())?);
                if messages == 0 || per_secs == 0 {
                    return Err(CaveatError::Value(kind));
                }
                Self::Rate { messages, per_secs }
            }
            kind::SERVICE => {
                let name = std::str::from_utf8(value).map_err(|_| CaveatError::Value(kind))?;
                if !valid_service_name(name) {
                    return Err(CaveatError::Value(kind));
                }
                Self::Service(name.to_owned())
            }
            kind::HOLDER => {
                let node: &[u8; NODE_ID_LEN] = value.try_into().map_err(|_| wrong_length())?;
                Self::Holder(NodeId::from_bytes(node).map_err(|_| CaveatError::Value(kind))?)
            }
            _ => Self::Unknown {
                kind,
                value: value.to_vec(),
            },
        };
        Ok((caveat, rest))
    }
}

impl fmt::Display for Caveat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExpiresBefore(at) => write!(f, "expires-before {at}"),
            Self::MaxMessages(n) => write!(f, "max-messages {n}"),
            Self::Rate { messages, per_secs } => write!(f, "rate {messages}/{per_secs}s"),
            Self::Service(name) => write!(f, "service {name}"),
            Self::Holder(node) => write!(f, "only {node}"),
            Self::Unknown { kind, value } => {
                write!(f, "unknown {kind:#04x} ({} bytes)", value.len())
            }
        }
    }
}

impl fmt::Debug for Caveat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Holder(node) => write!(f, "Holder({})", node.short()),
            other => write!(f, "{other}"),
        }
    }
}

/// A tag of the chain (secret: whoever knows tag_i can derive from the first i caveats).
pub type Tag = [u8; TAG_LEN];

/// The message of the first link: label and the base fields.
fn root_message(node: &NodeId, mailbox: u64, expires: u64, grant: u64) -> [u8; 15 + 56] {
    let mut message = [0u8; 15 + 56];
    message[..15].copy_from_slice(CHAIN_DOMAIN);
    message[15..47].copy_from_slice(node.as_bytes());
    message[47..55].copy_from_slice(&mailbox.to_be_bytes());
    message[55..63].copy_from_slice(&expires.to_be_bytes());
    message[63..].copy_from_slice(&grant.to_be_bytes());
    message
}

fn mac(key: &[u8], message: &[u8]) -> Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(hmac::sign(&key, message).as_ref());
    out
}

/// tag_0 of the chains of a base address with this signature.
pub(crate) fn root_tag(
    signature: &[u8; 64],
    node: &NodeId,
    mailbox: u64,
    expires: u64,
    grant: u64,
) -> Tag {
    mac(signature, &root_message(node, mailbox, expires, grant))
}

/// tag_i from tag_{i-1} and caveat i.
pub(crate) fn next_tag(tag: &Tag, caveat: &Caveat) -> Tag {
    mac(tag, &caveat.to_bytes())
}

/// Compares two tags in constant time.
pub(crate) fn tags_equal(a: &Tag, b: &Tag) -> bool {
    // Constant time: how many leading bytes of a forged tag are right must not show.
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Identifies one counting caveat (a [`Caveat::MaxMessages`] or [`Caveat::Rate`]) of one
/// chain: derived one-way from the tag right after it, so every address derived from the one
/// that added the caveat shares the counter, and a stored key reveals no tag.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey(pub [u8; 16]);

impl CounterKey {
    pub(crate) fn of(tag: &Tag) -> Self {
        let full = mac(tag, COUNTER_DOMAIN);
        let mut key = [0u8; 16];
        key.copy_from_slice(&full[..16]);
        Self(key)
    }
}

impl fmt::Debug for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CounterKey({})",
            data_encoding::HEXLOWER.encode(&self.0[..4])
        )
    }
}

/// A counting caveat the node charges every delivered message to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Which counter.
    pub key: CounterKey,
    /// What it allows.
    pub kind: LimitKind,
}

/// What a counting caveat allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitKind {
    /// At most this many messages, ever.
    Messages(u32),
    /// At most `messages` per `per_secs` seconds.
    Rate {
        /// Messages per window.
        messages: u32,
        /// Window length in seconds.
        per_secs: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(seed: u8) -> NodeId {
        crate::identity::SecretKey::from_bytes(&[seed; 32]).public()
    }

    #[test]
    fn every_kind_round_trips() {
        for caveat in [
            Caveat::ExpiresBefore(1),
            Caveat::ExpiresBefore(u64::MAX),
            Caveat::MaxMessages(0),
            Caveat::MaxMessages(u32::MAX),
            Caveat::Rate {
                messages: 1,
                per_secs: 60,
            },
            Caveat::Service("echo".into()),
            Caveat::Service("a".repeat(64)),
            Caveat::Holder(node(3)),
            Caveat::Unknown {
                kind: 0x7f,
                value: vec![],
            },
            Caveat::Unknown {
                kind: 0,
                value: vec![9; 64],
            },
        ] {
            let bytes = caveat.to_bytes();
            assert_eq!(Caveat::decode(&bytes), Ok((caveat.clone(), &[][..])));
            assert_eq!(caveat.validate(), Ok(()));
            assert_eq!(bytes.len(), 2 + usize::from(bytes[1]));
        }
    }

    #[test]
    fn malformed_caveats() {
        for (bytes, error) in [
            (&[][..], CaveatError::Truncated),
            (&[1][..], CaveatError::Truncated),
            (&[1, 8, 0, 0][..], CaveatError::Truncated),
            (&[1, 8, 0, 0, 0, 0, 0, 0, 0, 0][..], CaveatError::Value(1)),
            (
                &[1, 4, 0, 0, 0, 1][..],
                CaveatError::Length { kind: 1, len: 4 },
            ),
            (
                &[2, 8, 0, 0, 0, 0, 0, 0, 0, 1][..],
                CaveatError::Length { kind: 2, len: 8 },
            ),
            (&[3, 8, 0, 0, 0, 0, 0, 0, 0, 1][..], CaveatError::Value(3)),
            (&[3, 8, 0, 0, 0, 1, 0, 0, 0, 0][..], CaveatError::Value(3)),
            (&[4, 0][..], CaveatError::Value(4)),
            (&[4, 2, b'a', b' '][..], CaveatError::Value(4)),
            (&[4, 2, 0xc3, 0xa9][..], CaveatError::Value(4)),
            (
                &[
                    5, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0,
                ][..],
                CaveatError::Value(5),
            ),
            (
                &[0x40, 65][..],
                CaveatError::Length {
                    kind: 0x40,
                    len: 65,
                },
            ),
        ] {
            assert_eq!(Caveat::decode(bytes), Err(error), "{bytes:?}");
        }
        assert_eq!(
            Caveat::Service("no spaces".into()).validate(),
            Err(CaveatError::Value(kind::SERVICE))
        );
        assert_eq!(
            Caveat::Rate {
                messages: 0,
                per_secs: 1
            }
            .validate(),
            Err(CaveatError::Value(kind::RATE))
        );
    }

    #[test]
    fn chain_steps_depend_on_order_and_content() {
        let root = [7u8; TAG_LEN];
        let a = Caveat::MaxMessages(1);
        let b = Caveat::MaxMessages(2);
        let ab = next_tag(&next_tag(&root, &a), &b);
        let ba = next_tag(&next_tag(&root, &b), &a);
        assert_ne!(ab, ba);
        assert!(tags_equal(&ab, &ab));
        assert!(!tags_equal(&ab, &ba));
        assert_ne!(CounterKey::of(&ab), CounterKey::of(&ba));
    }
}
