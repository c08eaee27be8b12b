//! The serde forms of the settings that are not plain numbers, strings or durations: the
//! peer sets of `admission` and `relay` (`"any"`, `"nobody"` or a list of node ids), and the
//! `relays` list (`"NODEID@HOST:PORT"`).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::{Admission, RelayAccess};
use crate::identity::NodeId;

/// A set of peers as written: `"any"`, `"nobody"`, or a list of node ids.
enum NodeSet {
    Any,
    Nobody,
    Only(HashSet<NodeId>),
}

impl<'de> Deserialize<'de> for NodeSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeSetVisitor;
        impl<'de> Visitor<'de> for NodeSetVisitor {
            type Value = NodeSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""any", "nobody" or a list of node ids"#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<NodeSet, E> {
                match text {
                    "any" => Ok(NodeSet::Any),
                    "nobody" => Ok(NodeSet::Nobody),
                    _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeSet, A::Error> {
                let mut ids = HashSet::new();
                while let Some(id) = seq.next_element::<NodeId>()? {
                    ids.insert(id);
                }
                Ok(NodeSet::Only(ids))
            }
        }
        deserializer.deserialize_any(NodeSetVisitor)
    }
}

impl<'de> Deserialize<'de> for Admission {
    /// `"any"`; `"nobody"` (the same as an empty list: the node can dial out, but no peer may
    /// open streams towards it); or the node ids admitted.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match NodeSet::deserialize(deserializer)? {
            NodeSet::Any => Self::Any,
            NodeSet::Nobody => Self::Only(HashSet::new()),
            NodeSet::Only(ids) => Self::Only(ids),
        })
    }
}

impl<'de> Deserialize<'de> for RelayAccess {
    /// `"nobody"`, `"any"`, or the node ids that may relay.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match NodeSet::deserialize(deserializer)? {
            NodeSet::Any => Self::Any,
            NodeSet::Nobody => Self::Nobody,
            NodeSet::Only(ids) => Self::Only(ids),
        })
    }
}

/// `relays`: a list of `"NODEID@HOST:PORT"`.
pub(super) fn relays<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(NodeId, SocketAddr)>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_peer(text).map_err(de::Error::custom))
        .collect()
}

/// Parses `NODEID@HOST:PORT`; the error says which part is wrong.
fn parse_peer(text: &str) -> Result<(NodeId, SocketAddr), String> {
    let (id, addr) = text
        .split_once('@')
        .ok_or_else(|| format!("{text:?}: expected NODEID@HOST:PORT"))?;
    Ok((
        id.parse().map_err(|e| format!("node id {id:?}: {e}"))?,
        addr.parse()
            .map_err(|e| format!("address {addr:?}: {e} (expected HOST:PORT)"))?,
    ))
}
