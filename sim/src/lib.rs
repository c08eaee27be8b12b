//! # ferry-sim
//!
//! Deterministic simulation of whole ferry networks (FoundationDB's simulator, TigerBeetle's
//! VOPR and quinn-proto's tests are the models): many nodes run the protocol's state machines
//! from `ferry-proto` — each conversation run a [`Sender`](ferry_proto::sender::Sender), each
//! mailbox stream a [`Receiver`](ferry_proto::receiver::Receiver), each node a
//! [`DedupTable`](ferry_proto::receiver::DedupTable), the one-connection
//! [`rule`](ferry_proto::rule::rule) on every new connection — and durable mailboxes run the
//! daemon's real [`RedbStore`](ferry_node::store::RedbStore) on a [`Disk`](disk::Disk) that
//! loses power. Everything happens on virtual time, in an order drawn from one seed, and the
//! invariants are checked after every step. [`run`] runs a seed; the same seed always runs
//! the same events.
//!
//! ## What is simulated, at which level
//!
//! - **The network** (module `network`) is simulated at the level QUIC hands ferry:
//!   connections and bidirectional streams whose bytes arrive reliably and in order per
//!   direction, cut into chunks of random sizes, each after its own delay (a base per pair of
//!   nodes, jitter, delay spikes), so the streams of one connection interleave and a
//!   retransmission on a new stream can overtake an old stream. Stream FIN, stream reset (a
//!   random prefix of what is in flight still arrives), STOP_SENDING, connection loss (each
//!   end notices at its own time, within the idle timeout), partitions (chunks held until the
//!   heal; connections lost if it outlasts the idle timeout). Packet loss, reordering and
//!   duplication are QUIC's to repair; what ferry sees of them — delay, streams racing each
//!   other, connections lost, whole runs sent again on new streams and delivered twice — is
//!   what this network produces.
//! - **Connections** (module `connections`) are dialed (a round trip; a node down or cut off
//!   fails the dial after `dial_timeout`), and each end applies the one-connection rule on its
//!   own when a connection is established at its side, keeping an old one only if it is
//!   younger than two seconds or still answers, as the SDK does; the loser is closed once
//!   quiet for `duplicate_grace`, or at once if it did not answer. Some connections are
//!   relayed (a direct one beats them).
//! - **Nodes** (modules `outbound`, `inbound`, `mailbox`, `node`) drive the state machines as
//!   the runtime (`sdk/src/outbound.rs`, `sdk/src/streams/inbound.rs`) does: actions carried
//!   out on the network, events and the time fed back, the send window in front of each run, the
//!   run's lock at the receiver held across a batch including its waits, mailboxes with
//!   bounded queues, durable mailboxes that store, acknowledge, then queue, and replay what
//!   they hold when they reopen. A **crash** loses every volatile thing (conversations,
//!   streams, dedup tables, queues); the sending applications send again what was not
//!   acknowledged. A **power loss** also loses every disk write not synced; a commit can be
//!   cut by one, and a node can die between a commit and its acknowledgement.
//! - **Applications** (module `app`) send numbered messages within their send window and read
//!   their mailboxes at their own pace, acknowledging stored messages some time later. Once
//!   the faults are over they read and acknowledge promptly: a reader slower than its
//!   senders' `send_timeout` makes them time out and send again, which it may never catch up
//!   with — the application's choice, not the protocol's.
//!
//! Where the model and the SDK disagreed, the simulation found a bug in the SDK, and the SDK
//! was fixed to do what the model does (module `inbound`): a durable mailbox's stream whose
//! ACK cannot be written still queues the batch it stored before it ends. The SDK used to end
//! the stream at once, leaving the batch in the store — and the run counting it as delivered,
//! so its resend was skipped as duplicates — until the mailbox was opened again (seed 1 with
//! the old behaviour; `sdk/tests/durable.rs` is the regression test).
//!
//! The invariants (module `invariants`, and the checks after every step in module `world`)
//! are: no acknowledged message lost; per-sender order; nothing handed twice beyond the
//! documented at-least-once cases (§6.4, §6.4a, §6.6); no damaged or misnumbered message; no
//! protocol error between honest nodes; the one-connection rule converging (both ends use the
//! same connection within the idle timeout and `duplicate_grace` of being able to talk);
//! memory bounded — a conversation within its send window, the sender holding exactly the
//! messages the application has not seen resolved, the dedup table within `max_dedup_entries`
//! or holding only runs in use after each insertion and never losing a run a stream uses, a
//! stream's buffer within one frame and one read, a stream's bytes in flight within the send
//! window, a mailbox within its capacity; no panic; and once the faults are over, every
//! message delivered.
//!
//! ## Why not turmoil
//!
//! tokio-rs/turmoil simulates hosts, UDP and TCP, time, partitions (and, behind a feature,
//! a file system with torn writes) on one thread, and quinn's `Runtime` and `AsyncUdpSocket`
//! traits could put the real runtime on it. It was weighed and not chosen, because the
//! requirement that a failing seed replays exactly could not be met that way: the runtime's
//! timers run on tokio's clock, which turmoil drives, but quinn-proto and rustls draw
//! connection ids, keys and nonces from the operating system's random source, the runtime
//! draws epochs and mailbox ids from `getrandom`, and the daemon's store commits on a thread
//! of its own; turmoil controls none of these. Running real
//! QUIC and TLS handshakes per connection would also cost milliseconds each in a debug build,
//! far too many for thousands of seeds a test run. The protocol's decisions, which the
//! simulation is for, live in `ferry-proto` and take the time as an argument, so they are
//! simulated directly, thousands of runs a minute, each exactly replayable.
//!
//! ## What is and is not deterministic
//!
//! Every choice comes from one seeded generator (module `rng`), drawn in event order; events
//! are ordered by virtual time and then by the order they were scheduled; no map is iterated
//! whose order could vary (`BTreeMap`s, or maps only looked up); no wall clock is read (the
//! protocol gets `Instant`s at fixed offsets from one base instant, and only their
//! differences matter). Keys and addresses are fixed.
//!
//! The store is the exception that does not matter: [`RedbStore`](ferry_node::store::RedbStore)
//! writes on its own thread, which may put a removal in the same commit as the next request or
//! in a commit of its own depending on the wall clock (it waits up to 20 ms for more). Each
//! store call here is complete (committed and synced) before the next event, so what the store
//! holds never depends on that timing — only how redb lays out its pages does, which the
//! simulation never reads. Power is cut between events, or at the first sync of a commit in
//! progress, never in the middle of a batch whose composition could vary.
//!
//! The seed's digest of events ([`Outcome::digest`]) is compared across two runs in the tests.
//!
//! ## Not covered
//!
//! QUIC itself (packets, flow-control credit: the send window is far below it), TLS and
//! admission, hostile peers and their limits (`open_timeout` and `frame_timeout` at the
//! acceptor, buffer budgets), address expiry, relays as nodes, hole punching and dial races,
//! the liveness check of an old connection before it is kept (§2.4), conversation and
//! monitor streams, graceful shutdown, local delivery, and writes torn below the sync (a
//! power loss here drops every unsynced write; a real disk may keep some).

mod app;
mod connections;
pub mod disk;
mod faults;
mod inbound;
mod invariants;
mod keys;
mod mailbox;
mod network;
mod node;
mod outbound;
mod rng;
mod scenario;
mod store;
mod world;

use std::time::Duration;

/// What a seed's run did, when every invariant held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Events handled.
    pub steps: u64,
    /// A digest of every event and its time: equal for two runs of the same seed.
    pub digest: u64,
    /// Virtual time at the end.
    pub virtual_time: Duration,
    /// Nodes.
    pub nodes: usize,
    /// Messages the applications sent (each at least once).
    pub messages: u64,
    /// Messages handed to the receiving applications, redeliveries included.
    pub handed: u64,
    /// Conversation runs.
    pub runs: usize,
    /// Connections dialed.
    pub connections: usize,
    /// Streams opened.
    pub streams: usize,
    /// Node crashes (power losses included).
    pub crashes: u64,
    /// Power losses (between events, or cutting a commit).
    pub power_losses: u64,
    /// Store commits cut by a power loss.
    pub commits_cut: u64,
    /// Nodes that died between a store commit and its acknowledgement.
    pub died_after_commit: u64,
    /// Messages accepted again into a volatile mailbox after their run's state was lost (the
    /// documented at-least-once case).
    pub redelivered: u64,
    /// Run states forgotten by a full dedup table and needed again.
    pub evicted: u64,
    /// Stored messages handed again after a restart.
    pub replayed: u64,
    /// New connections an end retired because the rule kept its old one.
    pub kept_old: u64,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The step it broke at.
    pub step: u64,
    /// The virtual time then.
    pub at: Duration,
    /// Which invariant.
    pub what: &'static str,
    /// What exactly.
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} at step {} ({:.3} s): {}",
            self.seed,
            self.what,
            self.step,
            self.at.as_secs_f64(),
            self.detail
        )
    }
}

/// Runs the simulation of `seed` to its end.
pub fn run(seed: u64) -> Result<Outcome, Failure> {
    run_traced(seed, 0).0
}

/// Runs the simulation of `seed` and also returns the last `lines` lines of what happened
/// (events, actions, faults), for a failure's report.
pub fn run_traced(seed: u64, lines: usize) -> (Result<Outcome, Failure>, Vec<String>) {
    let journal = (lines > 0).then(|| world::Journal::shared(lines));
    let kept = journal.clone();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        world::World::new(seed, journal).run()
    }));
    let lines = kept.as_ref().map(world::Journal::lines).unwrap_or_default();
    match ran {
        Ok(result) => (result, lines),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            let (step, at) = kept
                .as_ref()
                .map(world::Journal::position)
                .unwrap_or_default();
            let failure = Failure {
                seed,
                step,
                at,
                what: "a panic",
                detail: message,
            };
            (Err(failure), lines)
        }
    }
}
