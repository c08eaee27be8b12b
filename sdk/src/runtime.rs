//! What the protocol modules of a node share: identity, configuration, network, the tables
//! of [`crate::registry`], counters, clock, and the lifecycle (tasks and cancellation).
//!
//! The layers, bottom up: addresses, frames and state machines (`ferry-proto`); the network
//! ([`crate::net`]: endpoint, connections, routes) and the stream types the tables hold
//! ([`crate::conversation`], [`crate::payload`]); the tables ([`crate::registry`]); this
//! runtime; the protocol modules that drive streams over it ([`crate::mailbox`],
//! [`crate::outbound`], [`crate::streams`]); and [`crate::node`], the public handle. Each
//! imports only from below.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address::{Address, GrantId, MailboxId, Usage};
use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::error::SendError;
use crate::identity::NodeId;
use crate::net::limits::ByteBudget;
use crate::net::Net;
use crate::registry::dedup::DedupTable;
use crate::registry::mailboxes::{Authorized, Mailboxes, Verifier};
use crate::registry::outbound::{Conversations, Parking};
use crate::registry::services::Services;
use crate::registry::watches::Watches;
use crate::stats::Stats;

/// A node's shared state: its network ([`Net`]: endpoints, connections, routes), its tables
/// (mailboxes, services, conversations, watches, runs) and its lifecycle.
pub(crate) struct Runtime {
    pub(crate) id: NodeId,
    pub(crate) config: NodeConfig,
    /// The timeouts of every conversation run, from `config`.
    pub(crate) sender_config: Arc<ferry_proto::sender::SenderConfig>,
    pub(crate) net: Arc<Net>,
    pub(crate) mailboxes: Mailboxes,
    pub(crate) services: Services,
    pub(crate) conversations: Conversations,
    /// The idle ends of parked conversation runs.
    pub(crate) parking: Arc<Parking>,
    pub(crate) dedup: DedupTable,
    /// Bytes in the receive buffers of all mailbox streams (`max_buffered_bytes`).
    pub(crate) buffered: Arc<ByteBudget>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) cancel: CancellationToken,
    /// Set at the start of shutdown; an atomic load where the token would take a lock.
    closing: AtomicBool,
    pub(crate) tasks: TaskTracker,
    /// Cancelled once the node takes streams from its peers ([`Node::serve_streams`](crate::Node::serve_streams)).
    pub(crate) serving: CancellationToken,
    /// Cancelled once shutdown's grace for tasks has passed: service handlers still running
    /// then are dropped, so a handler that never returns cannot hold the shutdown up.
    pub(crate) halt: CancellationToken,
    /// Watches of other nodes' mailboxes, shared per watched address.
    pub(crate) watches: Arc<Watches>,
    /// The wall clock addresses' expiry is checked against.
    pub(crate) clock: Arc<dyn Clock>,
}

impl Runtime {
    /// The state of a node on `net`, with empty tables.
    pub(crate) fn new(
        config: NodeConfig,
        net: Arc<Net>,
        stats: Arc<Stats>,
        cancel: CancellationToken,
        tasks: TaskTracker,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let buffered = Arc::new(ByteBudget::new(config.max_buffered_bytes));
        Self {
            id: net.id,
            sender_config: Arc::new(ferry_proto::sender::SenderConfig {
                send_timeout: config.send_timeout,
                outbox_ttl: config.outbox_ttl,
                stream_idle_timeout: config.stream_idle_timeout,
                open_timeout: config.open_timeout,
            }),
            config,
            net,
            mailboxes: Mailboxes::default(),
            services: Services::default(),
            conversations: Conversations::default(),
            parking: Arc::default(),
            dedup: DedupTable::default(),
            buffered,
            stats,
            cancel,
            closing: AtomicBool::new(false),
            tasks,
            serving: CancellationToken::new(),
            halt: CancellationToken::new(),
            watches: Arc::default(),
            clock,
        }
    }

    /// A capability address for `mailbox` with this node's dial hints and relay hints.
    pub(crate) fn mint(&self, mailbox: MailboxId, expires: Option<u64>) -> Address {
        self.mint_grant(mailbox, GrantId::DEFAULT, expires)
    }

    /// Signs an address of `mailbox` under `grant`, with the node's hints.
    pub(crate) fn mint_grant(
        &self,
        mailbox: MailboxId,
        grant: GrantId,
        expires: Option<u64>,
    ) -> Address {
        let mut address = Address::mint_grant(
            &self.net.key,
            mailbox,
            grant,
            expires,
            self.net.dial_hints(),
        );
        for (relay, relay_addr) in &self.config.relays {
            address = address.with_relay(*relay, *relay_addr);
        }
        address
    }

    /// Whether shutdown has begun: no new messages are accepted for sending.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Begins shutdown: new messages are refused from now on.
    pub(crate) fn begin_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Checks that `address` grants `peer` the `usage` of an open mailbox of this node
    /// ([`Mailboxes::authorize`]).
    pub(crate) fn authorize(
        &self,
        address: &Address,
        peer: &NodeId,
        usage: Usage<'_>,
    ) -> Result<Authorized, SendError> {
        let verifier = Verifier {
            id: &self.id,
            now: self.clock.unix_now(),
            key: &self.net.key,
            stats: &self.stats,
        };
        self.mailboxes.authorize(&verifier, address, peer, usage)
    }
}
