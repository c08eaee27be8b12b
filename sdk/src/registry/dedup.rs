//! The receivers' duplicate table: the state of each conversation run delivered to this
//! node's mailboxes (PROTOCOL.md §5.4).

use std::sync::Arc;

use tokio::sync::Mutex as AsyncMutex;

use crate::address::MailboxId;
use crate::identity::NodeId;
use crate::sync::lock;
use ferry_proto::receiver::{self, RunState};

/// (sending node, sending mailbox, target mailbox, epoch): one run of one conversation.
pub(crate) type DedupKey = (NodeId, MailboxId, MailboxId, u64);

/// Per-conversation-run duplicate suppression, bounded by `max_dedup_entries`. A run's state
/// is locked (asynchronously) by the stream delivering a batch of it; a run some stream holds
/// is in use and is not forgotten.
#[derive(Default)]
pub(crate) struct DedupTable {
    pub(crate) inner: std::sync::Mutex<receiver::DedupTable<DedupKey, Arc<AsyncMutex<RunState>>>>,
}

impl DedupTable {
    pub(crate) fn entry(&self, key: DedupKey, max: usize) -> Arc<AsyncMutex<RunState>> {
        lock(&self.inner)
            .entry(
                key,
                max,
                |state| Arc::strong_count(state) > 1,
                || Arc::new(AsyncMutex::new(RunState::default())),
            )
            .clone()
    }

    /// Forgets a run the sender ended: it finishes a stream only when everything was
    /// acknowledged and it will never use that epoch again.
    pub(crate) fn remove(&self, key: &DedupKey) {
        lock(&self.inner).remove(key);
    }

    /// Number of runs remembered.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).len()
    }
}
