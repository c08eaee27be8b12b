//! What one run simulates, drawn from its seed: the nodes, their mailboxes (volatile or
//! durable), the applications sending numbered messages between them, the protocol's limits
//! and timeouts (small, so that windows fill, dedup tables evict and timeouts fire), the links
//! and the faults.

use std::time::Duration;

use ferry_proto::sender::SenderConfig;

use crate::faults::{FaultPlan, Links};
use crate::keys::{MAILBOXES, POOL_SIZE};
use crate::rng::Rng;

/// A mailbox that receives messages.
#[derive(Debug, Clone)]
pub(crate) struct MailboxSpec {
    /// The node it is on.
    pub(crate) node: usize,
    /// Its slot on the node (its id is `slot + 1`).
    pub(crate) slot: usize,
    /// Whether it is stored (the real store on the simulated disk).
    pub(crate) durable: bool,
    /// Messages its queue holds (`mailbox_capacity`).
    pub(crate) capacity: usize,
}

/// An application sending numbered messages from a mailbox of one node to a mailbox of another.
#[derive(Debug, Clone)]
pub(crate) struct SourceSpec {
    /// The sending node.
    pub(crate) node: usize,
    /// The slot of the sending mailbox.
    pub(crate) slot: usize,
    /// The target mailbox (an index into [`Scenario::mailboxes`]).
    pub(crate) target: usize,
    /// Messages it sends: numbers 0, 1, 2, …
    pub(crate) messages: u64,
    /// Largest payload.
    pub(crate) max_payload: usize,
}

/// The protocol's limits and timeouts.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// The sender's timeouts.
    pub(crate) sender: SenderConfig,
    /// Bytes a conversation may have queued or unacknowledged (`send_window`).
    pub(crate) send_window: usize,
    /// `max_message_size`.
    pub(crate) max_message: usize,
    /// `max_dedup_entries`.
    pub(crate) max_dedup: usize,
    /// `max_pending_per_mailbox` of the store.
    pub(crate) max_pending: u64,
    /// How long a dial may take before it fails.
    pub(crate) dial_timeout: Duration,
    /// QUIC's idle timeout: a connection silent this long is lost.
    pub(crate) idle_timeout: Duration,
    /// How long a connection that lost the one-connection rule lives on without stream data.
    pub(crate) duplicate_grace: Duration,
}

/// How the applications behave.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    /// Pause between two sends of an application (it sends a few messages each time).
    pub(crate) send_gap: (u64, u64),
    /// Pause between two reads of a receiving application.
    pub(crate) receive_gap: (u64, u64),
    /// Messages a receiving application takes from a mailbox at each read.
    pub(crate) receive_batch: u64,
    /// How long after reading a stored message the application acknowledges it (ms).
    pub(crate) ack_delay: (u64, u64),
    /// Largest chunk the network splits a write into.
    pub(crate) max_chunk: usize,
}

/// One run's world.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// The pool identity of each node.
    pub(crate) nodes: Vec<usize>,
    /// The receiving mailboxes.
    pub(crate) mailboxes: Vec<MailboxSpec>,
    /// The sending applications.
    pub(crate) sources: Vec<SourceSpec>,
    /// Limits and timeouts.
    pub(crate) limits: Limits,
    /// The applications' pace.
    pub(crate) pace: Pace,
    /// Delays between nodes.
    pub(crate) links: Links,
    /// What goes wrong, and when.
    pub(crate) faults: FaultPlan,
}

impl Scenario {
    /// The scenario of a seed.
    pub(crate) fn draw(rng: &mut Rng) -> Self {
        let node_count = rng.range(2, 4) as usize;
        // Which pool identities, in which order: the order of the ids varies.
        let mut pool: Vec<usize> = (0..POOL_SIZE).collect();
        let mut nodes = Vec::new();
        for _ in 0..node_count {
            nodes.push(pool.remove(rng.index(pool.len())));
        }
        let durable_percent = rng.range(0, 100);
        let mut mailboxes = Vec::new();
        for node in 0..node_count {
            for slot in 0..rng.range(1, MAILBOXES as u64 - 1) as usize {
                mailboxes.push(MailboxSpec {
                    node,
                    slot,
                    durable: rng.chance(durable_percent),
                    capacity: rng.range(1, 12) as usize,
                });
            }
        }
        let mut sources: Vec<SourceSpec> = Vec::new();
        for _ in 0..rng.range(1, 5) {
            let target = rng.index(mailboxes.len());
            let to = mailboxes[target].node;
            let node = (to + 1 + rng.index(node_count - 1)) % node_count;
            let slot = rng.index(MAILBOXES);
            if sources
                .iter()
                .any(|s| s.node == node && s.slot == slot && s.target == target)
            {
                continue; // one application per conversation
            }
            sources.push(SourceSpec {
                node,
                slot,
                target,
                messages: rng.range(1, 40),
                max_payload: if rng.chance(20) { 3000 } else { 200 },
            });
        }
        // The receivers take the largest payload; the window holds at least one message of
        // that size and its overhead (the SDK checks only send_window >= max_message_size, so
        // a message of the largest size could never be queued when they are equal).
        let max_message = sources.iter().map(|s| s.max_payload).max().unwrap_or(200);
        let send_window = ferry_proto::sender::cost(max_message) + rng.range(0, 6000) as usize;
        let idle_timeout = rng.millis(1500, 6000);
        let limits = Limits {
            sender: SenderConfig {
                send_timeout: rng.millis(2000, 8000),
                outbox_ttl: rng.millis(8000, 30_000),
                stream_idle_timeout: rng.millis(300, 4000),
                open_timeout: rng.millis(500, 3000),
            },
            send_window,
            max_message,
            // Small, so that runs are forgotten while their senders still need them.
            max_dedup: if rng.chance(60) {
                1
            } else {
                rng.range(2, 6) as usize
            },
            max_pending: if rng.chance(30) {
                rng.range(1, 8)
            } else {
                1000
            },
            dial_timeout: rng.millis(500, 3000),
            idle_timeout,
            duplicate_grace: rng.millis(200, 2000),
        };
        let pace = Pace {
            send_gap: (rng.range(1, 50), rng.range(50, 800)),
            receive_gap: (rng.range(1, 50), rng.range(50, 1500)),
            receive_batch: rng.range(1, 8),
            ack_delay: (0, rng.range(0, 3000)),
            max_chunk: rng.range(1, 1500) as usize,
        };
        let links = Links::draw(rng, node_count);
        let faults = FaultPlan::draw(rng, node_count, idle_timeout);
        Self {
            nodes,
            mailboxes,
            sources,
            limits,
            pace,
            links,
            faults,
        }
    }
}
