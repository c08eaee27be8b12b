//! The config file is one flat list of keys, read by several structs: the daemon's own keys
//! ([`DaemonKeys`](super::DaemonKeys)), [`ferry::NodeConfig`]'s, the store's after `store_`
//! and the gateway's after `gateway_`. Each struct deserializes from a copy of the text in
//! which every other struct's keys are blanked out and its own prefix is blanked: byte
//! offsets do not move, so a parse error still points at the line and key of the file.
//! Keys no struct knows stay in the node's copy, whose `deny_unknown_fields` reports them.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::ops::Range;

use serde::de::{self, DeserializeOwned, Visitor};

/// The field names (aliases included) `T` deserializes from, as its derived `Deserialize`
/// gives them to the deserializer.
pub(super) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    /// A deserializer that only records the field list it is asked for.
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the field names"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// A top-level key of the file written as `key = value` (before the first table header):
/// its name and where it is.
#[derive(Debug, Clone)]
pub(super) struct Key {
    pub(super) name: String,
    /// Where the key's name is.
    name_at: Range<usize>,
    /// Where the whole entry is (name and value).
    entry: Range<usize>,
}

/// The top-level `key = value` entries of `text`, or `None` if it is not TOML (the caller's
/// deserializer reports that). Keys given by a table header (`[key]`, `[[key]]`) are found
/// by [`only`] itself.
pub(super) fn keys(text: &str) -> Option<Vec<Key>> {
    let table = toml::de::DeTable::parse(text).ok()?;
    let first_header = headers(text).next().map_or(text.len(), |(at, _)| at);
    Some(
        table
            .get_ref()
            .iter()
            .filter(|(key, _)| key.span().start < first_header)
            .map(|(key, value)| Key {
                name: key.get_ref().to_string(),
                name_at: key.span(),
                entry: key.span().start.min(value.span().start)
                    ..key.span().end.max(value.span().end),
            })
            .collect(),
    )
}

/// The table headers of `text`: where each line is, and the top-level key it names. A header
/// is a line `[key…]` or `[[key…]]` with nothing but a comment after it; a line of a
/// multi-line array that looks exactly like one is taken for one (the file then fails to
/// parse or reads differently, never silently more than it says).
fn headers(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut at = 0;
    text.split_inclusive('\n').filter_map(move |line| {
        let start = at;
        at += line.len();
        let trimmed = line.trim();
        let inner = trimmed.strip_prefix('[')?;
        let inner = inner.strip_prefix('[').unwrap_or(inner);
        let close = inner.find(']')?;
        let after = inner.get(close..)?.trim_start_matches(']').trim();
        if !(after.is_empty() || after.starts_with('#')) {
            return None;
        }
        let path = inner.get(..close)?;
        let name = path
            .split('.')
            .next()?
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        Some((start, name))
    })
}

/// `text` with only the keys `keep` accepts; `keep` gives how many leading bytes of the
/// key's name (its prefix) to blank. Blanked bytes become spaces, newlines stay.
pub(super) fn only(text: &str, keys: &[Key], keep: impl Fn(&str) -> Option<usize>) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let mut blank = |range: Range<usize>| {
        for byte in bytes.iter_mut().take(range.end).skip(range.start) {
            if *byte != b'\n' && *byte != b'\r' {
                *byte = b' ';
            }
        }
    };
    // The name may be quoted: the prefix is blanked where it is in the name.
    let prefix_at = |name_at: Range<usize>, name: &str, prefix: usize| {
        text.get(name_at.clone())
            .and_then(|written| written.find(name.get(..prefix)?))
            .map(|at| name_at.start + at)
    };
    for key in keys {
        match keep(&key.name) {
            None => blank(key.entry.clone()),
            Some(0) => {}
            Some(prefix) => {
                if let Some(at) = prefix_at(key.name_at.clone(), &key.name, prefix) {
                    blank(at..at + prefix);
                }
            }
        }
    }
    // A table header's block runs to the next header.
    let headers: Vec<(usize, &str)> = headers(text).collect();
    let ends = headers
        .iter()
        .skip(1)
        .map(|(at, _)| *at)
        .chain([text.len()]);
    for (&(start, name), end) in headers.iter().zip(ends) {
        match keep(name) {
            None => blank(start..end),
            Some(0) => {}
            Some(prefix) => {
                let line_end = text.get(start..end).and_then(|block| block.find('\n'));
                let line = start..line_end.map_or(end, |n| start + n);
                if let Some(at) = prefix_at(line, name, prefix) {
                    blank(at..at + prefix);
                }
            }
        }
    }
    // Only ASCII bytes were replaced, by ASCII: still UTF-8.
    String::from_utf8(bytes).unwrap_or_default()
}
