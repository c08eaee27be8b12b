//! Channels: named groups of sessions; a message published to a channel is delivered to every
//! member (into each member's mailbox, so members that are offline get it when they resume).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::sync::lock;

/// The longest channel name, bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelNameError {
    /// Empty, longer than [`MAX_CHANNEL_LEN`], or with characters other than ASCII letters,
    /// digits and `.`, `_`, `-`, `:`, `@`, `/`.
    #[error("invalid channel name {0:?}: 1-128 of A-Z a-z 0-9 . _ - : @ /")]
    Invalid(String),
}

/// Checks a channel name.
pub fn check_name(name: &str) -> Result<(), ChannelNameError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@/".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ChannelNameError::Invalid(name.chars().take(140).collect()))
    }
}

/// Whether `channel` matches one of `patterns` for `user`: an exact name, a prefix ending in
/// `*`, and `{user}` standing for the user id.
pub fn allowed(patterns: &[String], channel: &str, user: &str) -> bool {
    patterns.iter().any(|pattern| {
        let pattern = pattern.replace("{user}", user);
        match pattern.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => channel == pattern,
        }
    })
}

/// Channel membership: channel → session id → the member (the session itself, so that a
/// publication to many members needs no lookup per member).
#[derive(Debug)]
pub(crate) struct Channels<T> {
    members: Mutex<HashMap<String, HashMap<String, T>>>,
}

impl<T> Default for Channels<T> {
    fn default() -> Self {
        Self {
            members: Mutex::default(),
        }
    }
}

impl<T: Clone> Channels<T> {
    pub(crate) fn join(&self, channel: &str, session: &str, member: T) {
        lock(&self.members)
            .entry(channel.to_owned())
            .or_default()
            .insert(session.to_owned(), member);
    }

    pub(crate) fn leave(&self, channel: &str, session: &str) {
        let mut members = lock(&self.members);
        if let Some(set) = members.get_mut(channel) {
            set.remove(session);
            if set.is_empty() {
                members.remove(channel);
            }
        }
    }

    pub(crate) fn members(&self, channel: &str) -> Vec<T> {
        lock(&self.members)
            .get(channel)
            .map(|set| set.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn count(&self) -> usize {
        lock(&self.members).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        assert!(check_name("room.1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"x".repeat(129)).is_err());
        let patterns = vec!["lobby".to_owned(), "room.*".into(), "user.{user}".into()];
        assert!(allowed(&patterns, "lobby", "u"));
        assert!(allowed(&patterns, "room.42", "u"));
        assert!(allowed(&patterns, "user.alice", "alice"));
        assert!(!allowed(&patterns, "user.alice", "bob"));
        assert!(!allowed(&patterns, "lobby2", "u"));
    }

    #[test]
    fn membership() {
        let channels = Channels::default();
        channels.join("c", "s1", 1);
        channels.join("c", "s2", 2);
        channels.join("c", "s2", 2);
        assert_eq!(channels.members("c").len(), 2);
        channels.leave("c", "s1");
        channels.leave("c", "s2");
        assert_eq!(channels.count(), 0);
    }
}
