//! Node-wide limits against hostile peers (docs/SECURITY.md): the rate of handshakes per
//! source IP address, and the bytes of partly received frames a node holds per peer and in
//! total. Pure bookkeeping, no IO.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::sync::lock;

/// Source addresses whose handshake buckets a node remembers at most. Beyond, buckets that
/// are full again (their address has been quiet for a while) are forgotten; if that frees less
/// than a quarter, all are (a fresh bucket is full, so forgetting one only ever lets a burst
/// through).
const MAX_TRACKED_SOURCES: usize = 4096;

/// Token buckets of handshakes per source IP address (an IPv6 address counts by its /64
/// prefix, the block one host usually has). Attempts from addresses QUIC has validated (the
/// source answered a Retry) have buckets of their own, so that packets with a forged source
/// address cannot use up the budget of the address they claim: its owner answers the Retry
/// and is counted apart.
#[derive(Debug, Default)]
pub(crate) struct HandshakeLimiter {
    buckets: Mutex<HashMap<(IpAddr, bool), (f64, Instant)>>,
}

impl HandshakeLimiter {
    /// Takes one handshake from the bucket of `source` (`validated`: whether QUIC proved the
    /// address), which refills at `rate` per second and holds at most `rate`; false when it is
    /// empty. A rate of 0 means no limit.
    pub(crate) fn allow(&self, source: IpAddr, validated: bool, rate: u32) -> bool {
        self.allow_at(source, validated, rate, Instant::now())
    }

    fn allow_at(&self, source: IpAddr, validated: bool, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let key = (source_key(source), validated);
        let rate = f64::from(rate);
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_TRACKED_SOURCES && !buckets.contains_key(&key) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < rate
            });
            // Unless a quarter went, forget all: a sweep then costs O(1) per new source even
            // under a flood of (forged) source addresses.
            if buckets.len() > MAX_TRACKED_SOURCES * 3 / 4 {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets.entry(key).or_insert((rate, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How many sources are remembered (tests: the table stays bounded).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        lock(&self.buckets).len()
    }
}

/// The key a source address is counted under: IPv4 addresses (also IPv4-mapped IPv6 ones)
/// as they are, IPv6 addresses by their /64 prefix.
fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                for segment in segments.iter_mut().skip(4) {
                    *segment = 0;
                }
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// A byte budget shared by several holders: the node's, or one peer's.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: AtomicUsize,
    max: usize,
}

impl ByteBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `bytes` if that keeps the total within the budget.
    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes taken now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The bytes one stream holds in its receive buffer, charged to its peer's budget and to the
/// node's. Dropping it gives them back.
#[derive(Debug)]
pub(crate) struct Held {
    node: Arc<ByteBudget>,
    peer: Arc<ByteBudget>,
    bytes: usize,
}

/// The budget a stream would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverBudget {
    /// `max_buffered_per_peer`.
    Peer,
    /// `max_buffered_bytes`.
    Node,
}

impl Held {
    pub(crate) fn new(node: Arc<ByteBudget>, peer: Arc<ByteBudget>) -> Self {
        Self {
            node,
            peer,
            bytes: 0,
        }
    }

    /// Makes the charge `bytes`: gives back what is no longer held, or takes more from the
    /// peer's budget, then the node's. On failure the charge is unchanged.
    pub(crate) fn set(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes <= self.bytes {
            let freed = self.bytes - bytes;
            self.peer.give(freed);
            self.node.give(freed);
        } else {
            let more = bytes - self.bytes;
            if !self.peer.try_take(more) {
                return Err(OverBudget::Peer);
            }
            if !self.node.try_take(more) {
                self.peer.give(more);
                return Err(OverBudget::Node);
            }
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.peer.give(self.bytes);
        self.node.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    /// An ended ban is forgotten when asked about, and the table holds at most `MAX_BANS`
    /// (the end to end test of bans is sdk/tests/hostile.rs).
    #[test]
    fn bans_end_and_the_table_stays_bounded() {
        let bans = Bans::default();
        let later = Instant::now() + Duration::from_secs(60);
        let banned = crate::identity::SecretKey::generate().public();
        bans.ban(banned, later);
        assert!(bans.is_banned(&banned));
        let ended = crate::identity::SecretKey::generate().public();
        bans.ban(ended, Instant::now());
        assert!(!bans.is_banned(&ended));
        assert_eq!(bans.len(), 1);
        for _ in 0..MAX_BANS + 10 {
            bans.ban(crate::identity::SecretKey::generate().public(), later);
        }
        assert_eq!(bans.len(), MAX_BANS);
    }

    #[test]
    fn handshakes_refill_per_source() {
        let limiter = HandshakeLimiter::default();
        let start = Instant::now();
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        for _ in 0..10 {
            assert!(limiter.allow_at(a, false, 10, start));
        }
        assert!(!limiter.allow_at(a, false, 10, start));
        // Another source has its own bucket.
        assert!(limiter.allow_at(b, false, 10, start));
        // A tenth of a second brings one back.
        let later = start + Duration::from_millis(100);
        assert!(limiter.allow_at(a, false, 10, later));
        assert!(!limiter.allow_at(a, false, 10, later));
        // A validated source has a bucket of its own.
        assert!(limiter.allow_at(a, true, 10, later));
        // Rate 0: no limit.
        for _ in 0..1000 {
            assert!(limiter.allow_at(a, false, 0, later));
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = HandshakeLimiter::default();
        let now = Instant::now();
        let one: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.allow_at(one.into(), false, 1, now));
        assert!(!limiter.allow_at(same_64.into(), false, 1, now));
        assert!(limiter.allow_at(other_64.into(), false, 1, now));
        let v4 = Ipv4Addr::new(198, 51, 100, 7);
        assert!(limiter.allow_at(v4.to_ipv6_mapped().into(), false, 1, now));
        assert!(!limiter.allow_at(v4.into(), false, 1, now));
    }

    #[test]
    fn the_table_of_sources_stays_bounded() {
        let limiter = HandshakeLimiter::default();
        let now = Instant::now();
        for i in 0..100_000u32 {
            limiter.allow_at(IpAddr::V4(Ipv4Addr::from(i)), false, 5, now);
            assert!(limiter.tracked() <= MAX_TRACKED_SOURCES);
        }
    }

    #[test]
    fn held_bytes_are_charged_to_both_budgets_and_given_back() {
        let node = Arc::new(ByteBudget::new(100));
        let peer_a = Arc::new(ByteBudget::new(60));
        let peer_b = Arc::new(ByteBudget::new(60));
        let mut a1 = Held::new(node.clone(), peer_a.clone());
        let mut a2 = Held::new(node.clone(), peer_a.clone());
        let mut b1 = Held::new(node.clone(), peer_b.clone());
        assert_eq!(a1.set(50), Ok(()));
        assert_eq!(a2.set(11), Err(OverBudget::Peer));
        assert_eq!(a2.set(10), Ok(()));
        assert_eq!(b1.set(41), Err(OverBudget::Node));
        assert_eq!((node.used(), peer_b.used()), (60, 0));
        assert_eq!(b1.set(40), Ok(()));
        assert_eq!(a1.set(5), Ok(()));
        assert_eq!((node.used(), peer_a.used()), (55, 15));
        drop(a1);
        drop(a2);
        assert_eq!((node.used(), peer_a.used(), peer_b.used()), (40, 0, 40));
        drop(b1);
        assert_eq!(node.used(), 0);
    }
}

/// Node ids a node refuses for a while because their connections broke the protocol too
/// often (`max_violations`, `ban_duration`). Bounded: beyond `MAX_BANS` entries, the bans
/// that ended are forgotten, then the ones ending first.
#[derive(Debug, Default)]
pub(crate) struct Bans {
    until: Mutex<HashMap<crate::identity::NodeId, Instant>>,
}

const MAX_BANS: usize = 4096;

impl Bans {
    pub(crate) fn ban(&self, peer: crate::identity::NodeId, until: Instant) {
        let now = Instant::now();
        let mut bans = lock(&self.until);
        if bans.len() >= MAX_BANS && !bans.contains_key(&peer) {
            bans.retain(|_, end| *end > now);
            while bans.len() >= MAX_BANS {
                let first = bans.iter().min_by_key(|(_, end)| **end).map(|(id, _)| *id);
                match first {
                    Some(id) => bans.remove(&id),
                    None => break,
                };
            }
        }
        bans.insert(peer, until);
    }

    /// Whether `peer` is refused now.
    pub(crate) fn is_banned(&self, peer: &crate::identity::NodeId) -> bool {
        let mut bans = lock(&self.until);
        match bans.get(peer) {
            Some(end) if *end > Instant::now() => true,
            Some(_) => {
                bans.remove(peer);
                false
            }
            None => false,
        }
    }

    /// How many bans are remembered (tests: the table stays bounded).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.until).len()
    }
}

/// What a node keeps per connection against a hostile peer: the bytes its mailbox streams
/// hold, and how many of its streams were cut off for breaking the protocol.
#[derive(Debug)]
pub(crate) struct PeerGuard {
    pub(crate) peer: crate::identity::NodeId,
    connection: quinn::Connection,
    pub(crate) buffered: Arc<ByteBudget>,
    violations: std::sync::atomic::AtomicU32,
}

impl PeerGuard {
    pub(crate) fn new(
        peer: crate::identity::NodeId,
        connection: quinn::Connection,
        max_buffered: usize,
    ) -> Self {
        Self {
            peer,
            connection,
            buffered: Arc::new(ByteBudget::new(max_buffered)),
            violations: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Counts one stream cut off for breaking the protocol (`why`). At `max_violations`
    /// the connection is closed and the peer refused for `ban_duration`.
    pub(crate) fn violation(&self, node: &crate::net::Net, why: &str) {
        node.stats.count_stream_cut_off();
        let max = node.config.max_violations;
        let count = self.violations.fetch_add(1, Ordering::AcqRel) + 1;
        if max == 0 || count != max || self.peer == node.id {
            return;
        }
        tracing::warn!(
            peer = %self.peer.short(),
            last = why,
            "closing the connection of a peer that broke the protocol {count} times"
        );
        node.stats.count_peer_banned();
        node.bans
            .ban(self.peer, Instant::now() + node.config.ban_duration);
        self.connection.close(
            crate::net::connection::ConnCode::PROTOCOL.into(),
            b"too many protocol violations",
        );
    }
}

/// The streams a peer may open on one connection: granted `initial_incoming_streams` at first
/// (the connection's transport parameters), then doubled whenever half of the grant is in use,
/// up to `max_incoming_streams`. quinn keeps state for every granted stream from the moment it
/// is granted, so granting all of them up front would cost every connection that memory
/// whether its peer ever opens a stream or not.
#[derive(Debug)]
pub(crate) struct StreamCredit {
    connection: quinn::Connection,
    /// Streams granted so far.
    granted: u32,
    /// The most that may be granted.
    max: u32,
    /// The peer's streams in use: taken and not yet done with.
    open: Arc<AtomicU32>,
}

impl StreamCredit {
    /// The credit of `connection`, whose transport parameters granted `initial` streams.
    pub(crate) fn new(connection: quinn::Connection, initial: u32, max: u32) -> Self {
        Self {
            connection,
            granted: initial.min(max),
            max,
            open: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Counts a stream the peer opened as in use until the returned token is dropped, and
    /// grants more streams if at least half of the grant is now in use.
    pub(crate) fn opened(&mut self) -> OpenStream {
        let open = self.open.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if open.saturating_mul(2) >= self.granted && self.granted < self.max {
            self.granted = self.granted.saturating_mul(2).min(self.max);
            self.connection
                .set_max_concurrent_bi_streams(quinn::VarInt::from_u32(self.granted));
        }
        OpenStream(self.open.clone())
    }
}

/// One stream of a peer in use, for its connection's [`StreamCredit`].
#[derive(Debug)]
pub(crate) struct OpenStream(Arc<AtomicU32>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
