//! The identities of simulated nodes: a fixed pool of keys and the capability addresses of
//! their mailboxes, made once per process (signing is slow in a debug build) from constant
//! bytes. A run picks its nodes from the pool in an order drawn from its seed, so which node
//! has the smaller id — what the one-connection rule looks at — varies from seed to seed.

use std::sync::OnceLock;

use ferry_proto::{Address, MailboxId, NodeId, SecretKey};

/// Nodes in the pool: the most one run has.
pub(crate) const POOL_SIZE: usize = 6;
/// Mailboxes per node: the most one node has (ids 1, 2, …).
pub(crate) const MAILBOXES: usize = 3;

/// One node's identity.
#[derive(Debug)]
pub(crate) struct Identity {
    /// Its id.
    pub(crate) id: NodeId,
    /// The addresses of its mailboxes `MailboxId(1)`, `MailboxId(2)`, …
    addresses: [Address; MAILBOXES],
}

impl Identity {
    /// The address of mailbox slot `slot` (its id is `slot + 1`).
    pub(crate) fn address(&self, slot: usize) -> Address {
        self.addresses[slot % MAILBOXES].clone()
    }
}

/// The mailbox id of slot `slot`.
pub(crate) fn mailbox_id(slot: usize) -> MailboxId {
    MailboxId(slot as u64 + 1)
}

/// The pool.
pub(crate) fn pool() -> &'static [Identity] {
    static POOL: OnceLock<Vec<Identity>> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..POOL_SIZE)
            .map(|n| {
                let key = SecretKey::from_bytes(&[n as u8 + 1; 32]);
                let addresses = std::array::from_fn(|slot| {
                    Address::mint(&key, mailbox_id(slot), None, Vec::new())
                });
                Identity {
                    id: key.public(),
                    addresses,
                }
            })
            .collect()
    })
}
