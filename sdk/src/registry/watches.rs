//! The watch table: the node's running watches of other nodes' mailboxes, shared per watched
//! address, and why a watch ends.

use std::collections::HashMap;
use std::sync::Weak;

use tokio::sync::watch;
use tokio_util::sync::DropGuard;

use crate::error::{DialError, SendError};
use crate::identity::NodeId;
use crate::sync::lock;

/// Why a watched mailbox or peer is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The mailbox was closed (its address revoked), or did not exist when the watch began.
    MailboxClosed,
    /// The address was refused: forged, expired, or naming another node.
    InvalidAddress(SendError),
    /// The watched node shut down.
    NodeShutdown,
    /// The connection stayed lost longer than the grace period (`monitor_grace`).
    ConnectionLost,
    /// The node cannot be reached at all (refused, wrong identity, no known address).
    Unreachable(DialError),
    /// This node is shutting down, so the watch ends.
    LocalShutdown,
    /// The watched node stayed connected but did not take the watch: no stream credit, or
    /// no answer to `MONITOR`, within `open_timeout`, on every attempt for longer than
    /// `monitor_grace`.
    NoAnswer,
    /// The watched node ended the watch with a `CLOSE` code that has no specific meaning to
    /// a watcher (docs/PROTOCOL.md §11.4): at once for a protocol error (`TOO_LARGE`,
    /// `PROTOCOL`, `FROM_MISMATCH`), after `monitor_grace` of retries for any other code.
    Rejected {
        /// The `CLOSE` code.
        code: u64,
        /// The watched node's reason.
        reason: String,
    },
}

/// One running watch, shared by the [`Monitor`](crate::Monitor)s of one address; its task stops when the
/// last of them is dropped.
pub(crate) struct Watch {
    pub(crate) down: watch::Receiver<Option<DownReason>>,
    pub(crate) _stop: DropGuard,
    /// Its entry in [`Watches`], for a watch of another node's mailbox.
    pub(crate) entry: Option<WatchEntry>,
}

pub(crate) struct WatchEntry {
    /// The table the watch is registered in.
    pub(crate) table: Weak<Watches>,
    pub(crate) peer: NodeId,
    pub(crate) key: Vec<u8>,
    pub(crate) id: u64,
}

impl WatchEntry {
    pub(crate) fn forget(&self) {
        if let Some(table) = self.table.upgrade() {
            table.forget(self.peer, &self.key, self.id);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(entry) = &self.entry {
            entry.forget();
        }
    }
}

/// The node's watches of other nodes' mailboxes, per peer and watched address (its core:
/// mailbox, expiry and signature), so that watches of one address share one stream.
#[derive(Default)]
pub(crate) struct Watches {
    pub(crate) table: std::sync::Mutex<WatchTable>,
}

/// The watches of one peer, by watched address core: (id, watch).
pub(crate) type PeerWatches = HashMap<Vec<u8>, (u64, Weak<Watch>)>;

#[derive(Default)]
pub(crate) struct WatchTable {
    pub(crate) next_id: u64,
    pub(crate) by_peer: HashMap<NodeId, PeerWatches>,
}

impl Watches {
    /// Removes the watch `id` of `key` on `peer`, if it is still the registered one.
    pub(crate) fn forget(&self, peer: NodeId, key: &[u8], id: u64) {
        let mut table = lock(&self.table);
        if let Some(watched) = table.by_peer.get_mut(&peer) {
            if watched
                .get(key)
                .is_some_and(|(registered, _)| *registered == id)
            {
                watched.remove(key);
            }
            if watched.is_empty() {
                table.by_peer.remove(&peer);
            }
        }
    }
}
