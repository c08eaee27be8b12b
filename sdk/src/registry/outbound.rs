//! The table of outgoing mailbox conversations (sender mailbox → target address) and the
//! state each shares between its senders and its task ([`crate::outbound`] drives them).
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use crate::address::{Address, MailboxId};
use crate::error::SendError;
use crate::sync::{lock, wait_until};

/// Identifies a conversation: all messages from one mailbox to one target address share it.
/// The whole signed core is part of the key, so every distinct address (another expiry, or a
/// tampered copy) is presented to, and checked by, the receiver on its own stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConversationKey {
    pub(crate) from: MailboxId,
    /// The target's capability field (its core, or its grant and caveat chain).
    pub(crate) target: Box<[u8]>,
}

impl std::hash::Hash for ConversationKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The mailbox ids and the tail of the signature already spread keys well; hashing all
        // 120 bytes showed up in profiles.
        self.from.hash(state);
        // The field's format byte, then the mailbox id; then the last 16 bytes (signature or
        // tag).
        state.write(self.target.get(33..41).unwrap_or_default());
        state.write(
            self.target
                .get(self.target.len().saturating_sub(16)..)
                .unwrap_or_default(),
        );
    }
}

/// How far a conversation has got, as seen by waiting [`Delivery`](crate::Delivery)s.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Every ticket below this is resolved: acknowledged, or listed in `failed`.
    pub(crate) resolved_below: u64,
    pub(crate) failed: BTreeMap<u64, SendError>,
    /// The conversation ended with this error: every unresolved ticket failed with it.
    pub(crate) fatal: Option<SendError>,
}

/// A conversation's [`Progress`] and the wake-up of the deliveries waiting on it. Not a
/// `watch` channel: that holds eight lists of waiters, 440 bytes of every idle conversation's
/// heap.
#[derive(Debug, Default)]
pub(crate) struct ProgressCell {
    value: Mutex<Progress>,
    changed: Notify,
}

impl ProgressCell {
    /// The progress now.
    pub(crate) fn read(&self) -> MutexGuard<'_, Progress> {
        lock(&self.value)
    }

    /// Changes the progress; wakes the waiting deliveries if `change` says it changed it.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Progress) -> bool) {
        let changed = change(&mut lock(&self.value));
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Waits until `answer` finds what it waits for in the progress.
    pub(crate) fn wait<'a, T>(
        &'a self,
        answer: impl Fn(&Progress) -> Option<T> + 'a,
    ) -> impl Future<Output = T> + 'a {
        wait_until(&self.changed, move || answer(&self.read()))
    }
}

#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) next_ticket: u64,
    pub(crate) items: VecDeque<(u64, Bytes)>,
    /// Set when the task ended (idle or failed): senders must start a new conversation.
    pub(crate) closed: bool,
}

/// The shared state of one outgoing conversation.
pub(crate) struct Outbound {
    pub(crate) key: ConversationKey,
    pub(crate) target: Address,
    pub(crate) from: Address,
    pub(crate) window: Semaphore,
    /// The window's size, `send_window`.
    pub(crate) window_size: usize,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) wake: Notify,
    pub(crate) progress: ProgressCell,
    /// Set while the target cannot be reached: a full window then fails sends at once.
    pub(crate) unreachable: std::sync::atomic::AtomicBool,
}

impl Outbound {
    /// Bytes of the window in use: messages queued or unacknowledged.
    pub(crate) fn outstanding_bytes(&self) -> u64 {
        self.window_size
            .saturating_sub(self.window.available_permits()) as u64
    }
}

/// The node's live outgoing conversations.
pub(crate) type Conversations = Mutex<HashMap<ConversationKey, Arc<Outbound>>>;
