//! A simulated node: what it knows of its peers and connections, its conversations (sending),
//! the mailbox streams it serves (receiving) with its duplicate-suppression table, its
//! mailboxes and, when one of them is durable, its disk and store. A crash loses everything but
//! the disk.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use ferry_proto::receiver::DedupTable;
use ferry_proto::NodeId;

use crate::disk::Disk;
use crate::inbound::{Inbound, RunCell};
use crate::keys::{Identity, MAILBOXES};
use crate::mailbox::Mailbox;
use crate::network::{ConnId, StreamId};
use crate::outbound::Conversation;
use crate::store::SimStore;

/// A run at a receiver: (sending node, sending mailbox, target mailbox, epoch), as in the SDK.
pub(crate) type DedupKey = (usize, u64, u64, u64);

/// What a node knows of one peer.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// The connection in use (the one the rule kept).
    pub(crate) current: Option<ConnId>,
    /// Whether a dial is under way.
    pub(crate) dialing: bool,
    /// Conversations waiting for that dial to open their stream: (source, run).
    pub(crate) waiting: Vec<(usize, usize)>,
    /// When a connection to it was last in use.
    pub(crate) reached: Option<Duration>,
}

/// A node of the simulation.
pub(crate) struct Node {
    /// Its identity.
    pub(crate) identity: &'static Identity,
    /// Starts of its process: bumped by every restart.
    pub(crate) incarnation: u64,
    /// Whether its process runs.
    pub(crate) up: bool,
    /// Its peers, by node index.
    pub(crate) peers: BTreeMap<usize, Peer>,
    /// Its conversations, by source (one per sending application).
    pub(crate) conversations: BTreeMap<usize, Conversation>,
    /// The mailbox streams it serves.
    pub(crate) inbound: BTreeMap<StreamId, Inbound>,
    /// Duplicate suppression: the runs it remembers.
    pub(crate) dedup: DedupTable<DedupKey, Rc<RefCell<RunCell>>>,
    /// Its mailboxes by slot.
    pub(crate) mailboxes: Vec<Option<Mailbox>>,
    /// Its disk, if it has a durable mailbox.
    pub(crate) disk: Option<Disk>,
    /// The store on that disk, while the node runs.
    pub(crate) store: Option<SimStore>,
}

impl Node {
    /// A node that has not started yet.
    pub(crate) fn new(identity: &'static Identity, durable: bool) -> Self {
        Self {
            identity,
            incarnation: 0,
            up: false,
            peers: BTreeMap::new(),
            conversations: BTreeMap::new(),
            inbound: BTreeMap::new(),
            dedup: DedupTable::default(),
            mailboxes: (0..MAILBOXES).map(|_| None).collect(),
            disk: durable.then(Disk::new),
            store: None,
        }
    }

    /// Its id.
    pub(crate) fn id(&self) -> NodeId {
        self.identity.id
    }

    /// Forgets everything a process holds in memory (a crash): what remains is the disk.
    pub(crate) fn lose_memory(&mut self) {
        self.up = false;
        self.peers.clear();
        self.conversations.clear();
        self.inbound.clear();
        self.dedup = DedupTable::default();
        for mailbox in &mut self.mailboxes {
            *mailbox = None;
        }
        self.store = None;
    }

    /// The peer record of `peer`, made if needed.
    pub(crate) fn peer(&mut self, peer: usize) -> &mut Peer {
        self.peers.entry(peer).or_default()
    }

    /// The runs in the dedup table that a stream uses now (they cannot be evicted).
    pub(crate) fn runs_in_use(&self) -> usize {
        let mut cells: Vec<*const RefCell<RunCell>> = self
            .inbound
            .values()
            .filter_map(|inbound| inbound.cell().map(Rc::as_ptr))
            .collect();
        cells.sort_unstable();
        cells.dedup();
        cells.len()
    }
}
