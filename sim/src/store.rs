//! The durable mailboxes' store: the daemon's real [`RedbStore`] on a simulated [`Disk`],
//! driven so that each operation is complete before the next simulated event.
//!
//! `RedbStore` applies writes on a thread of its own. Its answers are awaited here at once
//! (`block_on`), and the requests it does not answer — a removal, the end of a run — are
//! followed by an empty append that the writer commits after them (it takes whatever is
//! waiting into the same batch, or commits them first), so that when a call returns, its
//! effect is committed and synced. What the writer thread batches together can still depend
//! on the wall clock (it waits up to 20 ms for more removals), which changes how redb lays out
//! its pages but never what the store holds; the simulation reads only what it holds.

use bytes::Bytes;
use ferry::address::{Address, MailboxId};
use ferry::store::{MailboxStore, RunId, StoredMessage};
use ferry::StoreError;
use ferry_node::store::{OpenStoreError, RedbStore, StoreConfig};

use crate::disk::Disk;

/// An open store on a simulated disk.
pub(crate) struct SimStore {
    store: RedbStore,
}

impl SimStore {
    /// Opens (or creates) the store on `disk`, recovering from a crash or a power loss.
    pub(crate) fn open(disk: &Disk, max_pending: u64) -> Result<Self, OpenStoreError> {
        let config = StoreConfig {
            max_pending_per_mailbox: max_pending,
            ..StoreConfig::default()
        };
        Ok(Self {
            store: RedbStore::open_with_backend(disk.backend(), config)?,
        })
    }

    /// Stores `messages` and the run's next sequence number in one durable write; the indexes
    /// of those stored (fewer when the mailbox is full).
    pub(crate) fn append(
        &self,
        mailbox: MailboxId,
        run: RunId,
        first_seq: u64,
        messages: Vec<(Address, Bytes)>,
    ) -> Result<Vec<u64>, StoreError> {
        futures::executor::block_on(self.store.append(mailbox, Some((run, first_seq)), messages))
    }

    /// How far `run` got, as last stored.
    pub(crate) fn delivered(
        &self,
        mailbox: MailboxId,
        run: RunId,
    ) -> Result<Option<u64>, StoreError> {
        self.store.delivered(mailbox, run)
    }

    /// Forgets `run` (its sender finished it), committed when this returns.
    pub(crate) fn end_run(&self, mailbox: MailboxId, run: RunId) -> Result<(), StoreError> {
        self.store.end_run(mailbox, run);
        self.flush(mailbox)
    }

    /// Removes messages the application acknowledged, committed when this returns.
    pub(crate) fn remove(&self, mailbox: MailboxId, indexes: &[u64]) -> Result<(), StoreError> {
        for index in indexes {
            self.store.remove(mailbox, *index);
        }
        self.flush(mailbox)
    }

    /// Every message of `mailbox` not yet removed, oldest first.
    pub(crate) fn pending(&self, mailbox: MailboxId) -> Result<Vec<StoredMessage>, StoreError> {
        self.store.pending(mailbox)
    }

    /// Waits until the writer committed everything handed to it before: an empty append is
    /// committed with, or after, whatever waits.
    fn flush(&self, mailbox: MailboxId) -> Result<(), StoreError> {
        futures::executor::block_on(self.store.append(mailbox, None, Vec::new())).map(drop)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys;

    fn run(epoch: u64) -> RunId {
        RunId {
            node: keys::pool()[1].id,
            mailbox: MailboxId(2),
            epoch,
        }
    }

    fn message(text: &'static str) -> (Address, Bytes) {
        (
            keys::pool()[1].address(0),
            Bytes::from_static(text.as_bytes()),
        )
    }

    #[test]
    fn what_was_appended_survives_a_power_loss_and_its_run_too() {
        let disk = Disk::new();
        let mailbox = MailboxId(7);
        let store = SimStore::open(&disk, 100).unwrap();
        let stored = store
            .append(mailbox, run(1), 0, vec![message("a"), message("b")])
            .unwrap();
        assert_eq!(stored, vec![0, 1]);
        store.remove(mailbox, &[0]).unwrap();
        disk.power_loss();
        drop(store);
        let store = SimStore::open(&disk, 100).unwrap();
        let pending = store.pending(mailbox).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].index, &pending[0].payload[..]), (1, &b"b"[..]));
        assert_eq!(store.delivered(mailbox, run(1)).unwrap(), Some(2));
    }

    #[test]
    fn a_commit_cut_by_the_power_is_not_stored() {
        let disk = Disk::new();
        let mailbox = MailboxId(7);
        let store = SimStore::open(&disk, 100).unwrap();
        store
            .append(mailbox, run(1), 0, vec![message("a")])
            .unwrap();
        disk.cut_at_next_sync();
        assert!(store
            .append(mailbox, run(1), 1, vec![message("b")])
            .is_err());
        drop(store);
        let store = SimStore::open(&disk, 100).unwrap();
        assert_eq!(store.pending(mailbox).unwrap().len(), 1);
        assert_eq!(store.delivered(mailbox, run(1)).unwrap(), Some(1));
    }
}
