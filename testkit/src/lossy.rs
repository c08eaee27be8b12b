//! A lossy UDP link for tests and benchmarks.
//!
//! The kernel on the test machines has no `netem`, so this module provides a
//! user-space UDP forwarder that sits between QUIC endpoints on loopback and
//! simulates a bad network: packet loss, one-way delay, jitter, reordering,
//! duplication, a bandwidth cap with a bounded queue, and partitions.
//!
//! ```text
//!  client A ──┐                    ┌── upstream socket for A ──┐
//!  client B ──┼──► LossyLink ──────┼── upstream socket for B ──┼──► server (upstream)
//!  client C ──┘    local_addr()    └── upstream socket for C ──┘
//! ```
//!
//! Clients send to [`LossyLink::local_addr`]. For every client source
//! address the link opens its own upstream-facing socket, so the server sees
//! one distinct source address per client, and replies from the server are
//! sent back to the client they belong to.
//!
//! Impairments are configured with [`LinkConfig`] and apply to both
//! directions, with an independent queue, random generator and bandwidth
//! budget per direction ("upstream" is client → server, "downstream" is
//! server → client). They can be changed while traffic flows with
//! [`LossyLink::set_config`], the link can be cut with
//! [`LossyLink::partition`], and [`LossyLink::stats`] reports counters.
//!
//! All background tasks stop when the [`LossyLink`] is dropped (or after
//! [`LossyLink::shutdown`] returns).
//!
//! # Model
//!
//! Each packet arriving in one direction goes through these stages:
//!
//! 1. **Partition**: while partitioned, the packet is dropped.
//! 2. **Loss**: dropped with probability [`LinkConfig::loss`].
//! 3. **Duplication**: with probability [`LinkConfig::duplicate`] a second
//!    copy is created; each copy goes through the remaining stages on its own.
//! 4. **Bandwidth**: if [`LinkConfig::bandwidth`] is set, the copy is
//!    serialised onto a link of that rate: it leaves the bottleneck once all
//!    earlier packets of this direction and itself have been transmitted
//!    (a FIFO shaper, i.e. a token bucket with a depth of one packet).
//! 5. **Delay**: [`LinkConfig::delay`] plus a uniformly random extra of up to
//!    [`LinkConfig::jitter`], plus [`LinkConfig::reorder_delay`] for the
//!    fraction [`LinkConfig::reorder`] of packets. Jitter and reordering let
//!    later packets overtake earlier ones.
//! 6. **Queue limit**: a packet that has to wait (for bandwidth or delay) is
//!    dropped if the bytes already waiting in this direction plus its own
//!    size would exceed [`LinkConfig::queue_limit_bytes`] (tail drop, like a
//!    router or netem's `limit`).
//!
//! A packet whose release time has already come is sent straight away by the
//! task that received it; all other packets wait in one binary heap per
//! direction that is drained by one scheduler task per direction. While
//! partitioned, packets that come due are dropped instead of delivered.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use ferry_testkit::lossy::{LinkConfig, LossyLink};
//!
//! # async fn demo(server: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
//! let link = LossyLink::start(
//!     LinkConfig {
//!         loss: 0.01,
//!         delay: Duration::from_millis(25),
//!         jitter: Duration::from_millis(5),
//!         seed: Some(7),
//!         ..LinkConfig::default()
//!     },
//!     server,
//! )
//! .await?;
//! // Point the client at `link.local_addr()` instead of `server`.
//! let _client_target = link.local_addr();
//! link.partition(true);
//! link.partition(false);
//! println!("{:?}", link.stats());
//! # Ok(())
//! # }
//! ```

use std::cmp::Ordering as CmpOrdering;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::AbortOnDropHandle;

/// Largest datagram the link can carry (the largest UDP payload is 65 527
/// bytes over IPv6 jumbo-less paths; 64 KiB covers every case).
const MAX_DATAGRAM: usize = 64 * 1024;

/// Every waiting packet is charged at least this many bytes against
/// [`LinkConfig::queue_limit_bytes`], so that floods of tiny or empty
/// datagrams are bounded in packet count too.
const MIN_QUEUE_CHARGE: u64 = 64;

/// Largest accepted value for [`LinkConfig::delay`], [`LinkConfig::jitter`]
/// and [`LinkConfig::reorder_delay`].
pub const MAX_LINK_DELAY: Duration = Duration::from_secs(3600);

/// Impairments and limits of a [`LossyLink`].
///
/// [`LinkConfig::default()`] is a perfect link: nothing is lost, delayed,
/// reordered, duplicated or rate limited. Impairments apply to each direction
/// independently (each direction has its own random generator, queue and
/// bandwidth budget), with the same parameters in both directions.
///
/// Use struct update syntax to set only what you need:
///
/// ```
/// use std::time::Duration;
/// use ferry_testkit::lossy::LinkConfig;
///
/// let config = LinkConfig {
///     loss: 0.05,
///     delay: Duration::from_millis(40),
///     bandwidth: Some(1_000_000),
///     ..LinkConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Fraction of packets dropped, from `0.0` (none) to `1.0` (all).
    ///
    /// Unit: probability per packet and direction. Default: `0.0`.
    pub loss: f64,
    /// Fixed one-way delay added to every packet in each direction (so a
    /// round trip through the link takes at least twice this).
    ///
    /// Unit: [`Duration`], at most [`MAX_LINK_DELAY`]. Default: zero.
    pub delay: Duration,
    /// Upper bound of a uniformly distributed random extra delay added to
    /// each packet on top of [`delay`](Self::delay). Packets can overtake
    /// each other, so jitter also causes reordering.
    ///
    /// Unit: [`Duration`], at most [`MAX_LINK_DELAY`]. Default: zero.
    pub jitter: Duration,
    /// Fraction of packets held back by an extra
    /// [`reorder_delay`](Self::reorder_delay), letting packets sent after
    /// them arrive first.
    ///
    /// Unit: probability per packet and direction, `0.0..=1.0`. Default: `0.0`.
    pub reorder: f64,
    /// Extra delay applied to the packets selected by
    /// [`reorder`](Self::reorder). Has no effect while `reorder` is `0.0`.
    ///
    /// Unit: [`Duration`], at most [`MAX_LINK_DELAY`]. Default: 10 ms.
    pub reorder_delay: Duration,
    /// Fraction of packets sent twice. The copy is subject to bandwidth,
    /// delay, jitter and reordering on its own.
    ///
    /// Unit: probability per packet and direction, `0.0..=1.0`. Default: `0.0`.
    pub duplicate: f64,
    /// Bandwidth cap per direction. Packets are serialised at this rate
    /// and wait in the direction's queue meanwhile; when the queue is full
    /// they are dropped (see [`queue_limit_bytes`](Self::queue_limit_bytes)).
    /// `None` means unlimited. Must not be `Some(0)`.
    ///
    /// Unit: bytes of UDP payload per second. Default: `None`.
    pub bandwidth: Option<u64>,
    /// Maximum number of bytes that may wait inside the link per direction
    /// (for bandwidth and for delay, like netem's `limit`). A packet that
    /// would exceed it is dropped. Each waiting packet counts as at least
    /// 64 bytes. With a large delay and a high packet rate, raise this so
    /// the delay line itself does not drop packets (it needs about
    /// `rate × delay` bytes). Must be at least 1.
    ///
    /// Unit: bytes. Default: 1 MiB (`1_048_576`).
    pub queue_limit_bytes: u64,
    /// Maximum number of clients (distinct source addresses) served at once;
    /// each one gets its own upstream-facing socket. When the limit is
    /// reached, clients idle for longer than
    /// [`client_idle_timeout`](Self::client_idle_timeout) are forgotten to
    /// make room; if none is idle, packets from new clients are dropped.
    /// Lowering it does not disconnect existing clients. Must be at least 1.
    ///
    /// Unit: clients. Default: 64.
    pub max_clients: usize,
    /// How long a client must have been silent in both directions before
    /// it may be forgotten to make room for a new client (only happens when
    /// [`max_clients`](Self::max_clients) is reached).
    ///
    /// Unit: [`Duration`]. Default: 30 s.
    pub client_idle_timeout: Duration,
    /// Seed of the link's random number generators. With `Some`, the
    /// sequence of random decisions of each direction is reproducible (for a
    /// given sequence of packets in that direction); passing a config with
    /// `Some` seed to [`LossyLink::set_config`] re-seeds the generators.
    /// `None` seeds from the process's random hasher keys and the clock,
    /// and keeps the current generators on `set_config`.
    ///
    /// Unit: none. Default: `None`.
    pub seed: Option<u64>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            duplicate: 0.0,
            bandwidth: None,
            queue_limit_bytes: 1024 * 1024,
            max_clients: 64,
            client_idle_timeout: Duration::from_secs(30),
            seed: None,
        }
    }
}

impl LinkConfig {
    /// Checks that every field is in its documented range.
    pub fn validate(&self) -> Result<(), LinkError> {
        for (field, value) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
        ] {
            // `contains` is false for NaN as well.
            if !(0.0..=1.0).contains(&value) {
                return Err(LinkError::InvalidFraction { field, value });
            }
        }
        for (field, value) in [
            ("delay", self.delay),
            ("jitter", self.jitter),
            ("reorder_delay", self.reorder_delay),
        ] {
            if value > MAX_LINK_DELAY {
                return Err(LinkError::DelayTooLong {
                    field,
                    value,
                    max: MAX_LINK_DELAY,
                });
            }
        }
        if self.bandwidth == Some(0) {
            return Err(LinkError::ZeroBandwidth);
        }
        if self.queue_limit_bytes == 0 {
            return Err(LinkError::ZeroQueueLimit);
        }
        if self.max_clients == 0 {
            return Err(LinkError::ZeroMaxClients);
        }
        Ok(())
    }

    /// Whether every packet is released the moment it arrives.
    fn is_immediate(&self) -> bool {
        self.delay.is_zero()
            && self.jitter.is_zero()
            && (self.reorder == 0.0 || self.reorder_delay.is_zero())
            && self.bandwidth.is_none()
    }
}

/// Errors of [`LossyLink::start`], [`LossyLink::set_config`] and
/// [`LinkConfig::validate`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A probability field (`loss`, `reorder` or `duplicate`) is NaN or
    /// outside `0.0..=1.0`.
    #[error("`{field}` must be a fraction between 0.0 and 1.0, got {value}")]
    InvalidFraction {
        /// Name of the offending [`LinkConfig`] field.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A delay field (`delay`, `jitter` or `reorder_delay`) is longer than
    /// [`MAX_LINK_DELAY`].
    #[error("`{field}` must be at most {max:?}, got {value:?}")]
    DelayTooLong {
        /// Name of the offending [`LinkConfig`] field.
        field: &'static str,
        /// The rejected value.
        value: Duration,
        /// The largest accepted value.
        max: Duration,
    },
    /// `bandwidth` is `Some(0)`; use `partition` to stop all traffic.
    #[error("`bandwidth` must be positive (use `None` for unlimited)")]
    ZeroBandwidth,
    /// `queue_limit_bytes` is zero.
    #[error("`queue_limit_bytes` must be at least 1")]
    ZeroQueueLimit,
    /// `max_clients` is zero.
    #[error("`max_clients` must be at least 1")]
    ZeroMaxClients,
    /// Binding the client-facing socket on `127.0.0.1:0` failed.
    #[error("failed to bind the link's client-facing UDP socket: {0}")]
    Bind(#[source] io::Error),
}

/// Counters of one direction of a [`LossyLink`]. All counts are packets
/// unless the name says otherwise.
///
/// Once the link is idle, `received + duplicated == forwarded + dropped`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectionStats {
    /// Packets that entered the link in this direction.
    pub received: u64,
    /// Packets (duplicates included) handed to the operating system for
    /// delivery.
    pub forwarded: u64,
    /// Payload bytes of the `forwarded` packets.
    pub forwarded_bytes: u64,
    /// Packets dropped for any reason: random loss, partition, full queue,
    /// client limit, or a failed send.
    pub dropped: u64,
    /// The part of `dropped` caused by a full queue
    /// ([`LinkConfig::queue_limit_bytes`]).
    pub dropped_queue_full: u64,
    /// Extra copies created by [`LinkConfig::duplicate`].
    pub duplicated: u64,
}

/// Snapshot of a [`LossyLink`]'s counters, see [`LossyLink::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// Client → server direction.
    pub upstream: DirectionStats,
    /// Server → client direction.
    pub downstream: DirectionStats,
    /// Clients (distinct source addresses) currently known to the link.
    pub clients: usize,
}

/// A running lossy UDP forwarder; see the [module docs](self).
///
/// Dropping it stops all of its tasks and closes its sockets.
pub struct LossyLink {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Vec<AbortOnDropHandle<()>>,
    _cancel_on_drop: DropGuard,
}

impl fmt::Debug for LossyLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossyLink")
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.upstream)
            .field("partitioned", &self.is_partitioned())
            .finish_non_exhaustive()
    }
}

impl LossyLink {
    /// Starts a link that forwards between clients sending to
    /// [`local_addr`](Self::local_addr) (bound on `127.0.0.1:0`) and the
    /// server at `upstream`.
    ///
    /// Must be called within a Tokio runtime; the link's tasks run on it.
    pub async fn start(config: LinkConfig, upstream: SocketAddr) -> Result<Self, LinkError> {
        config.validate()?;
        let front = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(LinkError::Bind)?;
        let local_addr = front.local_addr().map_err(LinkError::Bind)?;

        let seed = config.seed.unwrap_or_else(random_seed);
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            front,
            upstream,
            up: DirectionState::new(&config, derive_seed(seed, 1)),
            down: DirectionState::new(&config, derive_seed(seed, 2)),
            config: Mutex::new(config),
            partitioned: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            epoch: Instant::now(),
            cancel: cancel.clone(),
        });

        let tasks = vec![
            AbortOnDropHandle::new(tokio::spawn(run_front(Arc::clone(&shared)))),
            AbortOnDropHandle::new(tokio::spawn(run_scheduler(
                Arc::clone(&shared),
                Direction::Upstream,
            ))),
            AbortOnDropHandle::new(tokio::spawn(run_scheduler(
                Arc::clone(&shared),
                Direction::Downstream,
            ))),
        ];

        Ok(Self {
            shared,
            local_addr,
            upstream,
            tasks,
            _cancel_on_drop: cancel.drop_guard(),
        })
    }

    /// The address clients should send to instead of the server's.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server address packets are forwarded to.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream
    }

    /// The configuration currently in effect.
    pub fn config(&self) -> LinkConfig {
        lock(&self.shared.config).clone()
    }

    /// Replaces the configuration while traffic flows.
    ///
    /// New impairments apply to packets arriving from now on; packets
    /// already waiting inside the link keep their release time (so after
    /// removing a delay, new packets may overtake older ones). On error the
    /// current configuration is kept.
    pub fn set_config(&self, config: LinkConfig) -> Result<(), LinkError> {
        config.validate()?;
        let mut current = lock(&self.shared.config);
        let reseed = config
            .seed
            .map(|seed| (derive_seed(seed, 1), derive_seed(seed, 2)));
        self.shared
            .up
            .reconfigure(&config, reseed.map(|(up, _)| up));
        self.shared
            .down
            .reconfigure(&config, reseed.map(|(_, down)| down));
        *current = config;
        Ok(())
    }

    /// Cuts (`true`) or heals (`false`) the link. While partitioned, every
    /// packet in both directions is dropped, including packets already
    /// waiting inside the link that come due during the partition.
    pub fn partition(&self, partitioned: bool) {
        self.shared
            .partitioned
            .store(partitioned, Ordering::Relaxed);
    }

    /// Whether the link is currently partitioned.
    pub fn is_partitioned(&self) -> bool {
        self.shared.partitioned.load(Ordering::Relaxed)
    }

    /// A snapshot of the link's counters.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            upstream: self.shared.up.counters.snapshot(),
            downstream: self.shared.down.counters.snapshot(),
            clients: self.shared.clients.load(Ordering::Relaxed),
        }
    }

    /// Stops the link and waits until its tasks have finished and its
    /// sockets are closed. Dropping the link stops it too, but without
    /// waiting.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            // A task either returns normally after the cancellation or was
            // aborted; both mean it is gone, so the result does not matter.
            let _ = task.await;
        }
    }
}

/// State shared by the handle and the link's tasks.
struct Shared {
    /// The client-facing socket (`local_addr`).
    front: UdpSocket,
    /// The server address.
    upstream: SocketAddr,
    /// Client → server direction.
    up: DirectionState,
    /// Server → client direction.
    down: DirectionState,
    /// The current configuration (the directions keep their own copies).
    config: Mutex<LinkConfig>,
    partitioned: AtomicBool,
    /// Number of known clients, for [`LinkStats::clients`].
    clients: AtomicUsize,
    /// Time origin for the clients' activity timestamps.
    epoch: Instant,
    cancel: CancellationToken,
}

impl Shared {
    fn direction(&self, direction: Direction) -> &DirectionState {
        match direction {
            Direction::Upstream => &self.up,
            Direction::Downstream => &self.down,
        }
    }

    fn is_partitioned(&self) -> bool {
        self.partitioned.load(Ordering::Relaxed)
    }

    /// Milliseconds between the link's start and `now`.
    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Upstream,
    Downstream,
}

/// Where a waiting packet goes when it is released.
enum Target {
    /// Upstream: through this client's connected upstream socket.
    Server(Arc<UdpSocket>),
    /// Downstream: through the client-facing socket to this client.
    Client(SocketAddr),
}

/// A packet waiting in a direction's heap.
struct Scheduled {
    at: Instant,
    /// Tie breaker keeping arrival order among packets due at the same time.
    seq: u64,
    /// Bytes charged against the queue limit.
    charge: u64,
    data: Bytes,
    target: Target,
}

// `BinaryHeap` is a max-heap; order reversed so the earliest packet is on top.
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Scheduled {}

/// One direction of the link: impairment state, waiting packets, counters.
struct DirectionState {
    queue: Mutex<Queue>,
    /// Wakes the scheduler when a packet becomes the earliest one waiting.
    wake: Notify,
    counters: Counters,
}

struct Queue {
    config: LinkConfig,
    rng: SplitMix64,
    heap: BinaryHeap<Scheduled>,
    /// Bytes charged for the packets in `heap`.
    held: u64,
    next_seq: u64,
    /// When the bandwidth bottleneck has finished sending everything
    /// accepted so far.
    busy_until: Option<Instant>,
}

impl DirectionState {
    fn new(config: &LinkConfig, seed: u64) -> Self {
        Self {
            queue: Mutex::new(Queue {
                config: config.clone(),
                rng: SplitMix64::new(seed),
                heap: BinaryHeap::new(),
                held: 0,
                next_seq: 0,
                busy_until: None,
            }),
            wake: Notify::new(),
            counters: Counters::default(),
        }
    }

    fn reconfigure(&self, config: &LinkConfig, seed: Option<u64>) {
        let mut queue = lock(&self.queue);
        queue.config = config.clone();
        if let Some(seed) = seed {
            queue.rng = SplitMix64::new(seed);
        }
    }

    /// Runs a packet that just arrived through the impairments. Packets that
    /// must wait are queued; the return value is how many copies (0, 1 or
    /// 2) the caller must send right now.
    fn admit(
        &self,
        data: &[u8],
        now: Instant,
        partitioned: bool,
        target: impl Fn() -> Target,
    ) -> usize {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if partitioned {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return 0;
        }

        let mut guard = lock(&self.queue);
        let queue = &mut *guard;
        let config = &queue.config;

        if config.loss > 0.0 && queue.rng.chance(config.loss) {
            drop(guard);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        let copies = if config.duplicate > 0.0 && queue.rng.chance(config.duplicate) {
            self.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        if config.is_immediate() {
            return copies;
        }

        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let charge = len.max(MIN_QUEUE_CHARGE);
        let mut immediate = 0;
        let mut dropped = 0;
        let mut queue_full = 0;
        let mut wake = false;
        let mut bytes: Option<Bytes> = None;
        for _ in 0..copies {
            let config = &queue.config;
            // Bandwidth: the copy leaves the bottleneck once everything
            // before it and itself have been transmitted.
            let mut sent_at = Some(now);
            if let Some(rate) = config.bandwidth {
                let start = queue.busy_until.map_or(now, |busy| busy.max(now));
                sent_at = start.checked_add(transmit_time(len, rate));
            }
            let mut extra = config.delay;
            if !config.jitter.is_zero() {
                extra = extra.saturating_add(queue.rng.duration_up_to(config.jitter));
            }
            if config.reorder > 0.0 && queue.rng.chance(config.reorder) {
                extra = extra.saturating_add(config.reorder_delay);
            }
            let Some(at) = sent_at.and_then(|sent| sent.checked_add(extra)) else {
                // Unreachably far in the future: as good as lost.
                dropped += 1;
                continue;
            };
            if at <= now {
                immediate += 1;
                if config.bandwidth.is_some() {
                    queue.busy_until = sent_at;
                }
                continue;
            }
            if queue.held.saturating_add(charge) > config.queue_limit_bytes {
                dropped += 1;
                queue_full += 1;
                continue;
            }
            if config.bandwidth.is_some() {
                queue.busy_until = sent_at;
            }
            let seq = queue.next_seq;
            queue.next_seq = queue.next_seq.wrapping_add(1);
            queue.held += charge;
            let data = bytes
                .get_or_insert_with(|| Bytes::copy_from_slice(data))
                .clone();
            queue.heap.push(Scheduled {
                at,
                seq,
                charge,
                data,
                target: target(),
            });
            wake |= queue.heap.peek().is_some_and(|top| top.seq == seq);
        }
        drop(guard);

        if dropped > 0 {
            self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if queue_full > 0 {
            self.counters
                .dropped_queue_full
                .fetch_add(queue_full, Ordering::Relaxed);
        }
        if wake {
            self.wake.notify_one();
        }
        immediate
    }

    /// Moves every packet due at `now` into `batch`; returns when the next
    /// waiting packet is due.
    fn take_due(&self, now: Instant, batch: &mut Vec<Scheduled>) -> Option<Instant> {
        let mut queue = lock(&self.queue);
        while queue.heap.peek().is_some_and(|top| top.at <= now) {
            if let Some(packet) = queue.heap.pop() {
                queue.held = queue.held.saturating_sub(packet.charge);
                batch.push(packet);
            }
        }
        queue.heap.peek().map(|top| top.at)
    }

    /// Counts the outcome of sending a packet of `len` bytes.
    fn record_send(&self, result: io::Result<usize>, len: usize) {
        match result {
            Ok(_) => {
                self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .forwarded_bytes
                    .fetch_add(u64::try_from(len).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
            Err(err) => {
                tracing::trace!(%err, "lossy link: send failed, counting the packet as dropped");
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a packet that arrived but could not be handled at all.
    fn record_rejected(&self) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped: AtomicU64,
    dropped_queue_full: AtomicU64,
    duplicated: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            forwarded_bytes: self.forwarded_bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
        }
    }
}

/// A client known to the link.
struct Client {
    /// Connected to the server; the server sees this socket's address.
    socket: Arc<UdpSocket>,
    /// [`Shared::millis`] of the last packet in either direction.
    last_active: Arc<AtomicU64>,
    /// The task forwarding the server's replies to this client.
    task: AbortHandle,
}

/// Receives from clients and forwards upstream; owns the client table and
/// the per-client downstream tasks.
async fn run_front(shared: Arc<Shared>) {
    let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
    let mut client_tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);

    loop {
        let (len, source) = tokio::select! {
            biased;
            () = &mut cancelled => break,
            received = shared.front.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(err) => {
                    after_recv_error(&err).await;
                    continue;
                }
            },
        };
        let now = Instant::now();

        if !clients.contains_key(&source) {
            match open_client(&shared, &mut clients, &mut client_tasks, source, now).await {
                Some(client) => {
                    clients.insert(source, client);
                    shared.clients.store(clients.len(), Ordering::Relaxed);
                }
                None => {
                    shared.up.record_rejected();
                    continue;
                }
            }
        }
        let Some(client) = clients.get(&source) else {
            continue;
        };
        client
            .last_active
            .store(shared.millis(now), Ordering::Relaxed);

        let data = &buf[..len];
        let copies = shared.up.admit(data, now, shared.is_partitioned(), || {
            Target::Server(Arc::clone(&client.socket))
        });
        for _ in 0..copies {
            let result = client.socket.send(data).await;
            shared.up.record_send(result, len);
        }
    }

    clients.clear();
    shared.clients.store(0, Ordering::Relaxed);
    client_tasks.shutdown().await;
}

/// Makes room if needed and opens the upstream socket and downstream task
/// for a new client. `None` means the packet has to be dropped.
async fn open_client(
    shared: &Arc<Shared>,
    clients: &mut HashMap<SocketAddr, Client>,
    client_tasks: &mut JoinSet<()>,
    source: SocketAddr,
    now: Instant,
) -> Option<Client> {
    let (max_clients, idle_timeout) = {
        let config = lock(&shared.config);
        (config.max_clients, config.client_idle_timeout)
    };
    if clients.len() >= max_clients {
        let now_ms = shared.millis(now);
        let idle_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        clients.retain(|_, client| {
            let idle = now_ms.saturating_sub(client.last_active.load(Ordering::Relaxed)) > idle_ms;
            if idle {
                client.task.abort();
            }
            !idle
        });
        // Reap the tasks of forgotten clients.
        while client_tasks.try_join_next().is_some() {}
        shared.clients.store(clients.len(), Ordering::Relaxed);
        if clients.len() >= max_clients {
            tracing::debug!(%source, max_clients, "lossy link: client limit reached, dropping packet");
            return None;
        }
    }

    let socket = match bind_upstream_socket(shared.upstream).await {
        Ok(socket) => Arc::new(socket),
        Err(err) => {
            tracing::warn!(%source, %err, "lossy link: cannot open upstream socket for client");
            return None;
        }
    };
    let last_active = Arc::new(AtomicU64::new(shared.millis(now)));
    let task = client_tasks.spawn(run_client(
        Arc::clone(shared),
        Arc::clone(&socket),
        source,
        Arc::clone(&last_active),
    ));
    Some(Client {
        socket,
        last_active,
        task,
    })
}

/// Binds a socket of the server's address family (on loopback if the server
/// is on loopback) and connects it to the server.
async fn bind_upstream_socket(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let ip: IpAddr = match upstream.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(ip) if ip.is_loopback() => Ipv6Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    socket.connect(upstream).await?;
    Ok(socket)
}

/// Receives the server's replies for one client and forwards them downstream.
async fn run_client(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    last_active: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let len = match socket.recv(&mut buf).await {
            Ok(len) => len,
            Err(err) => {
                after_recv_error(&err).await;
                continue;
            }
        };
        let now = Instant::now();
        last_active.store(shared.millis(now), Ordering::Relaxed);

        let data = &buf[..len];
        let copies = shared.down.admit(data, now, shared.is_partitioned(), || {
            Target::Client(client)
        });
        for _ in 0..copies {
            let result = shared.front.send_to(data, client).await;
            shared.down.record_send(result, len);
        }
    }
}

/// Releases the waiting packets of one direction when they come due.
async fn run_scheduler(shared: Arc<Shared>, direction: Direction) {
    let state = shared.direction(direction);
    let mut batch = Vec::new();
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);

    loop {
        let next = state.take_due(Instant::now(), &mut batch);
        for packet in batch.drain(..) {
            if shared.is_partitioned() {
                state.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let result = match &packet.target {
                Target::Server(socket) => socket.send(&packet.data).await,
                Target::Client(client) => shared.front.send_to(&packet.data, *client).await,
            };
            state.record_send(result, packet.data.len());
        }

        // The delay line runs on real time: the next packet is released when it is due.
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            () = state.wake.notified() => {}
            () = sleep => {}
        }
    }
}

/// Called after a failed receive. ICMP errors reported on connected UDP
/// sockets (e.g. "connection refused" while the server is down) are
/// expected and ignored; anything else is logged and briefly backed off
/// from so a persistent error cannot spin the CPU.
async fn after_recv_error(err: &io::Error) {
    match err.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock => {}
        _ => {
            tracing::debug!(%err, "lossy link: receive failed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Time to transmit `len` bytes at `rate` bytes per second.
fn transmit_time(len: u64, rate: u64) -> Duration {
    let nanos = u128::from(len) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind the link's mutexes stays consistent even if a holder
    // panicked, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A seed for unseeded links: the std hasher's per-process random keys
/// mixed with the clock.
fn random_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    if let Ok(since_epoch) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    hasher.finish()
}

/// Derives independent seeds for the two directions from one seed.
fn derive_seed(seed: u64, stream: u64) -> u64 {
    SplitMix64::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// SplitMix64 (Steele, Lea & Flood), a small, fast generator that is
/// plenty for simulating a network.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        // The top 53 bits fit an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (`p >= 1.0` is always true).
    fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Uniform in `[0, max]`.
    fn duration_up_to(&mut self, max: Duration) -> Duration {
        let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        let nanos = match max_nanos.checked_add(1) {
            Some(span) => self.next_u64() % span,
            None => self.next_u64(),
        };
        Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_reproducible_and_roughly_uniform() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut rng = SplitMix64::new(1);
        let hits = (0..100_000).filter(|_| rng.chance(0.25)).count();
        assert!((24_000..26_000).contains(&hits), "{hits}");
        for _ in 0..1000 {
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(rng.duration_up_to(Duration::from_millis(3)) <= Duration::from_millis(3));
        }
        assert_eq!(rng.duration_up_to(Duration::ZERO), Duration::ZERO);
        let _ = rng.duration_up_to(Duration::MAX);
    }

    #[test]
    fn heap_pops_earliest_first_then_arrival_order() {
        let now = Instant::now();
        let mut heap = BinaryHeap::new();
        for (seq, ms) in [(0, 5), (1, 1), (2, 5), (3, 0)] {
            heap.push(Scheduled {
                at: now + Duration::from_millis(ms),
                seq,
                charge: 0,
                data: Bytes::new(),
                target: Target::Client(SocketAddr::from((Ipv4Addr::LOCALHOST, 1))),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|p| p.seq)).collect();
        assert_eq!(order, [3, 1, 0, 2]);
    }

    #[test]
    fn transmit_time_handles_extremes() {
        assert_eq!(transmit_time(1000, 1000), Duration::from_secs(1));
        assert_eq!(transmit_time(0, 1), Duration::ZERO);
        assert_eq!(transmit_time(u64::MAX, 1), Duration::from_nanos(u64::MAX));
        assert_eq!(transmit_time(1, u64::MAX), Duration::ZERO);
    }

    #[test]
    fn validation() {
        assert!(LinkConfig::default().validate().is_ok());
        let bad = LinkConfig {
            loss: f64::NAN,
            ..LinkConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(LinkError::InvalidFraction { field: "loss", .. })
        ));
        let bad = LinkConfig {
            jitter: Duration::MAX,
            ..LinkConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(LinkError::DelayTooLong {
                field: "jitter",
                ..
            })
        ));
    }
}
