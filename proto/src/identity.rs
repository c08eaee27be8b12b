//! Node identity: an ed25519 secret key and the [`NodeId`] (its public key).
//!
//! The text form of a [`NodeId`] is the 32 public-key bytes in lower-case RFC 4648 base32
//! without padding: always 52 characters of `a-z2-7`. It is also a valid DNS label, which is
//! why it can be used as the TLS server name when dialing.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// Length of a [`NodeId`] in bytes.
pub const NODE_ID_LEN: usize = 32;
/// Length of the text form of a [`NodeId`].
pub const NODE_ID_TEXT_LEN: usize = 52;

/// Lower-case base32 (RFC 4648 alphabet) without padding, rejecting non-zero trailing bits.
pub(crate) fn base32_lower() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.check_trailing_bits = true;
    // The specification is a constant, valid alphabet of 32 distinct ASCII symbols.
    #[allow(clippy::expect_used)]
    spec.encoding()
        .expect("constant base32 specification is valid")
}

/// The identity of a node: its ed25519 public key.
///
/// Only canonical, non-weak keys are representable: construction rejects points that are not
/// canonically encoded or that have small order, so every `NodeId` can verify signatures with
/// `verify_strict`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; NODE_ID_LEN]);

/// Why bytes or text are not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    /// The text is not exactly 52 characters long.
    #[error("node id must be {NODE_ID_TEXT_LEN} characters, got {0}")]
    Length(usize),
    /// The text is not canonical lower-case base32.
    #[error("node id is not canonical lower-case base32")]
    Encoding,
    /// The bytes are not the canonical encoding of a curve point.
    #[error("node id is not a canonical ed25519 public key")]
    NotCanonical,
    /// The key has small order: any signature would be forgeable.
    #[error("node id is a weak (small-order) ed25519 key")]
    Weak,
}

impl NodeId {
    /// Checks that `bytes` are a canonical, non-weak ed25519 public key.
    pub fn from_bytes(bytes: &[u8; NODE_ID_LEN]) -> Result<Self, NodeIdError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| NodeIdError::NotCanonical)?;
        // Decompression accepts some non-canonical y coordinates; re-compressing tells.
        if key.to_edwards().compress().to_bytes() != *bytes {
            return Err(NodeIdError::NotCanonical);
        }
        if key.is_weak() {
            return Err(NodeIdError::Weak);
        }
        Ok(Self(*bytes))
    }

    /// The 32 public-key bytes.
    pub fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }

    /// The key for signature checks. Infallible because construction validated the point.
    pub(crate) fn verifying_key(&self) -> VerifyingKey {
        // from_bytes validated these exact bytes as a decompressible point.
        #[allow(clippy::expect_used)]
        VerifyingKey::from_bytes(&self.0).expect("validated at construction")
    }

    /// The first 10 characters of the text form, for logs and tracing spans.
    pub fn short(&self) -> String {
        let mut text = self.to_string();
        text.truncate(10);
        text
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32_lower().encode(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != NODE_ID_TEXT_LEN {
            return Err(NodeIdError::Length(text.len()));
        }
        let decoded = base32_lower()
            .decode(text.as_bytes())
            .map_err(|_| NodeIdError::Encoding)?;
        let bytes: [u8; NODE_ID_LEN] = decoded.try_into().map_err(|_| NodeIdError::Encoding)?;
        Self::from_bytes(&bytes)
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's ed25519 secret key. Its public half is the node's [`NodeId`].
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {})", self.public().short())
    }
}

impl SecretKey {
    /// Generates a new key from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        fill_random(&mut seed);
        Self(SigningKey::from_bytes(&seed))
    }

    /// Makes a key from its 32 secret bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(bytes))
    }

    /// The 32 secret bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The node id of this key.
    pub fn public(&self) -> NodeId {
        // The public key of a clamped secret scalar is a prime-order point, canonically encoded.
        NodeId(self.0.verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// Fills `buf` from the operating system's random source.
///
/// # Panics
///
/// If the operating system has no random source to give: nothing random (keys, mailbox ids,
/// epochs, tokens) could be safe then, so the process must not go on.
pub fn fill_random(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    getrandom::getrandom(buf).expect("operating system random source is available");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_round_trip() {
        let id = SecretKey::generate().public();
        let text = id.to_string();
        assert_eq!(text.len(), NODE_ID_TEXT_LEN);
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert_eq!(
            text.to_uppercase().parse::<NodeId>(),
            Err(NodeIdError::Encoding)
        );
        assert_eq!(
            format!("{text}a").parse::<NodeId>(),
            Err(NodeIdError::Length(53))
        );
    }

    #[test]
    fn weak_and_non_canonical_keys_rejected() {
        // The identity point (y = 1) has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(NodeId::from_bytes(&identity), Err(NodeIdError::Weak));
        // y = p (2^255 - 19) is a non-canonical encoding of y = 0.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xed;
        non_canonical[31] = 0x7f;
        assert!(NodeId::from_bytes(&non_canonical).is_err());
    }
}
