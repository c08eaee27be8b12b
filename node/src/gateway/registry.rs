//! The live sessions, by id and by user (a user may have several sessions: tabs, devices).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{HashMap, HashSet};

/// Sessions (`T`, the session itself) by id, and the ids of each user's sessions.
#[derive(Debug)]
pub(crate) struct Registry<T> {
    by_id: HashMap<String, T>,
    by_user: HashMap<String, HashSet<String>>,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self {
            by_id: HashMap::new(),
            by_user: HashMap::new(),
        }
    }
}

impl<T: Clone> Registry<T> {
    /// The session with this id.
    pub(crate) fn get(&self, id: &str) -> Option<T> {
        self.by_id.get(id).cloned()
    }

    /// Every session of `user`.
    pub(crate) fn of_user(&self, user: &str) -> Vec<T> {
        self.by_user
            .get(user)
            .map(|ids| ids.iter().filter_map(|id| self.get(id)).collect())
            .unwrap_or_default()
    }

    /// Lists session `id` of `user`.
    pub(crate) fn insert(&mut self, id: &str, user: &str, session: T) {
        self.by_id.insert(id.to_owned(), session);
        self.by_user
            .entry(user.to_owned())
            .or_default()
            .insert(id.to_owned());
    }

    /// Unlists session `id` of `user`; whether it was listed.
    pub(crate) fn remove(&mut self, id: &str, user: &str) -> bool {
        if self.by_id.remove(id).is_none() {
            return false;
        }
        if let Some(ids) = self.by_user.get_mut(user) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_user.remove(user);
            }
        }
        true
    }

    /// How many sessions are listed.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every session, in no order.
    pub(crate) fn sessions(&self) -> impl Iterator<Item = &T> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_by_id_and_by_user() {
        let mut registry = Registry::default();
        registry.insert("s1", "alice", 1);
        registry.insert("s2", "alice", 2);
        registry.insert("s3", "bob", 3);
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.get("s2"), Some(2));
        let mut alice = registry.of_user("alice");
        alice.sort_unstable();
        assert_eq!(alice, [1, 2]);
        assert!(registry.remove("s1", "alice"));
        assert!(!registry.remove("s1", "alice"), "removed once only");
        assert_eq!(registry.of_user("alice"), [2]);
        assert!(registry.remove("s2", "alice"));
        assert!(registry.of_user("alice").is_empty());
        assert!(
            !registry.by_user.contains_key("alice"),
            "no empty user left"
        );
        assert_eq!(registry.sessions().copied().collect::<Vec<_>>(), [3]);
    }
}
