//! The mailbox table: the node's open mailboxes, each with its queue and capability state
//! (revocations, counters) in one allocation, the checks an address passes before anything is
//! delivered, and the messages handed to applications.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::queue::MailboxQueue;
use crate::address::{
    Address, CounterKey, GrantId, Limit, LimitKind, MailboxId, Usage, VerifyError,
};
use crate::caveat::Tag;
use crate::error::{DecodeError, RevokeError, SendError};
use crate::identity::{NodeId, SecretKey};
use crate::payload::decode_exact;
use crate::stats::Stats;
use crate::store::{MailboxStore, RunId, StoreError};
use crate::sync::{lock, read, wait_until, write};

/// A message delivered to a mailbox.
#[derive(Clone)]
pub struct Message {
    pub(crate) from: Address,
    pub(crate) payload: Bytes,
    /// Where the message is stored, for a durable mailbox.
    pub(crate) receipt: Option<Receipt>,
}

/// A stored message's place in its durable mailbox.
#[derive(Clone)]
pub(crate) struct Receipt {
    pub(crate) durable: Arc<Durable>,
    pub(crate) index: u64,
}

/// What a durable mailbox adds to a plain one.
pub(crate) struct Durable {
    pub(crate) store: Arc<dyn MailboxStore>,
    pub(crate) mailbox: MailboxId,
    /// Cancelled once the messages stored before the mailbox opened are queued: new messages
    /// wait for it, so each sender's messages reach the application in order.
    pub(crate) replayed: CancellationToken,
}

impl Durable {
    /// Stores `messages`, or the first of them that fit, and returns those stored with their
    /// receipts, ready to queue.
    pub(crate) async fn store(
        self: &Arc<Self>,
        run: Option<(RunId, u64)>,
        messages: Vec<(Address, Bytes)>,
        counters: Vec<CounterKey>,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = messages
            .iter()
            .map(|(from, payload)| (from.clone(), payload.clone()))
            .collect();
        let indexes = self
            .store
            .append_counted(self.mailbox, run, rows, counters)
            .await?;
        if indexes.len() > messages.len() {
            return Err(StoreError::Failed(format!(
                "store returned {} indexes for {} messages",
                indexes.len(),
                messages.len()
            )));
        }
        Ok(messages
            .into_iter()
            .zip(indexes)
            .map(|((from, payload), index)| Message {
                from,
                payload,
                receipt: Some(Receipt {
                    durable: self.clone(),
                    index,
                }),
            })
            .collect())
    }
}

impl Message {
    /// Acknowledges the message to a durable mailbox's store, which then forgets it; until
    /// then it is delivered again after a restart. Does nothing for other mailboxes.
    pub fn ack(&self) {
        if let Some(receipt) = &self.receipt {
            receipt
                .durable
                .store
                .remove(receipt.durable.mailbox, receipt.index);
        }
    }

    /// The message's index in its durable mailbox (increasing, never reused), which tells a
    /// message delivered again after a restart apart; `None` for other mailboxes.
    pub fn id(&self) -> Option<u64> {
        self.receipt.as_ref().map(|receipt| receipt.index)
    }

    /// The sender's mailbox address: send to it to reply (GenBrowser's `message.from`).
    pub fn from(&self) -> &Address {
        &self.from
    }

    /// The sender's reply address, usable only by the node `holder`: hand it to that node
    /// so that it can reply to the sender in your place, while a copy in anyone else's hands
    /// is refused (docs/PROTOCOL.md §4.11). Needs no round trip to the sender.
    pub fn from_for(&self, holder: NodeId) -> Result<Address, crate::address::AttenuateError> {
        self.from.handoff(holder)
    }

    /// The raw payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Decodes the payload as a postcard-encoded `T` (what [`Mailbox::send`](crate::Mailbox::send) encodes). The
    /// whole payload must be used: postcard is not self-describing, so trailing bytes mean the
    /// payload is of another type.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        decode_exact(&self.payload).map_err(DecodeError)
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("from", &self.from)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// An open mailbox: where its messages go, the signal that it closed, and its capability
/// state. One allocation, shared by its [`Mailbox`](crate::Mailbox), the node's table and the
/// streams, watches and local senders that deliver to it: most mailboxes only send (one per
/// outgoing conversation is common), and as three allocations of their own the queue, the
/// capability cell and the table's entry cost such a mailbox 192 bytes.
pub(crate) struct OpenMailbox {
    /// The mailbox's queue, and its `mailbox_closed` signal.
    pub(crate) queue: MailboxQueue<Message>,
    /// Revoked grants, the counters of counting caveats, and the proofs checked.
    pub(crate) caps: Caps,
    /// Set for a durable mailbox: messages are stored before they are acknowledged.
    pub(crate) durable: Option<Arc<Durable>>,
    /// Whether the queue's receiving end was given to a handler or stream.
    pub(crate) attached: AtomicBool,
}

impl OpenMailbox {
    pub(crate) fn new(capacity: usize, caps: Caps, durable: Option<Arc<Durable>>) -> Self {
        Self {
            queue: MailboxQueue::new(capacity),
            caps,
            durable,
            attached: AtomicBool::new(false),
        }
    }
}

/// At most this many counters (one per counting caveat of an address chain that was used) a
/// mailbox keeps; an address whose counting caveat would need another is refused with LIMIT
/// (retryable) until the mailbox is closed. Counters are never forgotten while the mailbox is
/// open, so a count can never start again.
pub const MAX_COUNTERS: usize = 4096;
/// tag_0 of chains, cached per mailbox by (grant, base expiry): each distinct base costs one
/// signing, however many chains on it are presented.
const ROOT_CACHE: usize = 8;

/// A base address of a mailbox, as far as its signature goes: grant and expiry.
type BaseId = (GrantId, Option<u64>);
/// A verified signature: of which base.
type Verified = (GrantId, Option<u64>, [u8; 64]);
/// Verified signatures cached per mailbox; a ninth drops the oldest.
const VERIFIED_CACHE: usize = 8;

/// A rate caveat's window: messages delivered since `start` (unix seconds).
#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    used: u32,
}

/// What a mailbox keeps for its capabilities: revoked grants, the counters of counting
/// caveats, and the signatures and roots of chains it checked. Allocated when first needed (a
/// revocation, a counting caveat, an address checked, a stream or watch waiting on
/// revocations): most mailboxes only send, and the state was a quarter of a sending mailbox's
/// heap.
#[derive(Default)]
pub(crate) struct Caps {
    state: OnceLock<Box<CapsState>>,
}

struct CapsState {
    revoked: RwLock<std::collections::HashSet<GrantId>>,
    /// Whether `revoked` holds any grant: every message is checked, almost no mailbox ever
    /// revokes, and the read lock's two atomic operations per message showed in profiles.
    /// Set while the write lock is held, never cleared (grants are never un-revoked).
    any_revoked: AtomicBool,
    /// Notified of every revocation: streams and watches open under a grant wait on it to end
    /// as soon as their grant is revoked. (Inside the capability state, allocated with it.)
    revocations: tokio::sync::Notify,
    counts: Mutex<HashMap<CounterKey, u64>>,
    windows: Mutex<HashMap<CounterKey, Window>>,
    roots: Mutex<Vec<(BaseId, Tag)>>,
    /// (expiry, signature) of addresses of this mailbox that passed `verify_strict`, so each
    /// distinct address costs one signature check however many streams present it. The expiry
    /// is part of the key because the signature covers it; node and mailbox are this state's.
    verified: Mutex<Vec<Verified>>,
}

/// Why a message may not be delivered under an address's counting caveats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Budget {
    /// A "max messages" caveat is used up: final.
    Exhausted,
    /// A rate caveat's window is full: wait this many seconds (at most).
    Wait(u64),
    /// The mailbox keeps [`MAX_COUNTERS`] counters already.
    TooManyCounters,
}

impl CapsState {
    fn with(revoked: Vec<GrantId>, counts: Vec<(CounterKey, u64)>) -> Self {
        Self {
            any_revoked: AtomicBool::new(!revoked.is_empty()),
            revoked: RwLock::new(revoked.into_iter().collect()),
            revocations: tokio::sync::Notify::new(),
            counts: Mutex::new(counts.into_iter().collect()),
            windows: Mutex::default(),
            roots: Mutex::default(),
            verified: Mutex::default(),
        }
    }
}

impl Caps {
    pub(crate) fn with(revoked: Vec<GrantId>, counts: Vec<(CounterKey, u64)>) -> Self {
        let caps = Self::default();
        if !revoked.is_empty() || !counts.is_empty() {
            let _ = caps.state.set(Box::new(CapsState::with(revoked, counts)));
        }
        caps
    }

    /// The state, allocated now if it was not yet.
    fn state(&self) -> &CapsState {
        self.state
            .get_or_init(|| Box::new(CapsState::with(Vec::new(), Vec::new())))
    }

    /// Wakes every wait on revocations (there is none before the state exists).
    pub(crate) fn wake_waiters(&self) {
        if let Some(state) = self.state.get() {
            state.revocations.notify_waiters();
        }
    }

    // Inlined: a mailbox stream asks once per message it delivers.
    #[inline]
    pub(crate) fn is_revoked(&self, grant: GrantId) -> bool {
        self.state.get().is_some_and(|state| {
            state.any_revoked.load(Ordering::Acquire) && read(&state.revoked).contains(&grant)
        })
    }

    /// Revokes `grant` unless `max` grants are revoked already (one already revoked is
    /// not counted again), and wakes whatever waits in [`Caps::revoked`].
    pub(crate) fn revoke_within(&self, grant: GrantId, max: usize) -> Result<(), RevokeError> {
        let state = self.state();
        {
            let mut revoked = write(&state.revoked);
            if !revoked.contains(&grant) && revoked.len() >= max {
                return Err(RevokeError::TooMany { max });
            }
            revoked.insert(grant);
            state.any_revoked.store(true, Ordering::Release);
        }
        state.revocations.notify_waiters();
        Ok(())
    }

    /// How many grants are revoked.
    pub(crate) fn revoked_count(&self) -> usize {
        self.state
            .get()
            .map_or(0, |state| read(&state.revoked).len())
    }

    /// Resolves once `grant` is revoked (at once if it is already).
    pub(crate) async fn revoked(&self, grant: GrantId) {
        self.revoked_or(grant, || false).await;
    }

    /// Resolves once `grant` is revoked ([`Ended::Revoked`]) or `stop` says so
    /// ([`Ended::ShuttingDown`]; checked whenever revocations are notified).
    fn revoked_or<'a>(
        &'a self,
        grant: GrantId,
        stop: impl Fn() -> bool + 'a,
    ) -> impl Future<Output = Ended> + 'a {
        wait_until(&self.state().revocations, move || {
            if self.is_revoked(grant) {
                Some(Ended::Revoked)
            } else if stop() {
                Some(Ended::ShuttingDown)
            } else {
                None
            }
        })
    }

    /// Reserves one message under `limits` at the time `now` tells (asked only when there are
    /// limits: most addresses have none, and the clock showed in profiles): every counter is
    /// charged, or none.
    pub(crate) fn reserve(
        &self,
        limits: &[Limit],
        now: impl FnOnce() -> u64,
    ) -> Result<(), Budget> {
        if limits.is_empty() {
            return Ok(());
        }
        let now = now();
        let state = self.state();
        let mut counts = lock(&state.counts);
        let mut windows = lock(&state.windows);
        let new_keys = limits
            .iter()
            .filter(|limit| !counts.contains_key(&limit.key) && !windows.contains_key(&limit.key))
            .count();
        if counts.len() + windows.len() + new_keys > MAX_COUNTERS {
            return Err(Budget::TooManyCounters);
        }
        for limit in limits {
            match limit.kind {
                LimitKind::Messages(max) => {
                    if counts.get(&limit.key).copied().unwrap_or(0) >= u64::from(max) {
                        return Err(Budget::Exhausted);
                    }
                }
                LimitKind::Rate { messages, per_secs } => {
                    if let Some(window) = windows.get(&limit.key) {
                        let end = window.start.saturating_add(u64::from(per_secs));
                        if now < end && window.used >= messages {
                            return Err(Budget::Wait(end - now));
                        }
                    }
                }
                _ => return Err(Budget::Exhausted),
            }
        }
        for limit in limits {
            match limit.kind {
                LimitKind::Messages(_) => *counts.entry(limit.key).or_insert(0) += 1,
                LimitKind::Rate { per_secs, .. } => {
                    let window = windows.entry(limit.key).or_insert(Window {
                        start: now,
                        used: 0,
                    });
                    if now >= window.start.saturating_add(u64::from(per_secs)) {
                        *window = Window {
                            start: now,
                            used: 0,
                        };
                    }
                    window.used += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Gives back `n` reserved messages that were not delivered.
    pub(crate) fn release(&self, limits: &[Limit], n: u64) {
        let Some(state) = self.state.get().filter(|_| n > 0) else {
            return;
        };
        let mut counts = lock(&state.counts);
        for limit in limits {
            if let LimitKind::Messages(_) = limit.kind {
                if let Some(count) = counts.get_mut(&limit.key) {
                    *count = count.saturating_sub(n);
                }
            }
        }
    }

    /// How many messages were delivered under the counter `key`.
    pub(crate) fn count(&self, key: &CounterKey) -> u64 {
        self.state.get().map_or(0, |state| {
            lock(&state.counts).get(key).copied().unwrap_or(0)
        })
    }

    /// The signatures verified, allocating the state if it was not yet: a mailbox that
    /// receives has it anyway (its streams wait on revocations).
    fn verified(&self) -> &Mutex<Vec<Verified>> {
        &self.state().verified
    }

    fn root(&self, address: &Address, key: &crate::SecretKey) -> Tag {
        let id = (address.grant(), address.expires());
        // Even for a chain that then fails: one allocation per mailbox, however many come.
        let state = self.state();
        if let Some((_, tag)) = lock(&state.roots).iter().find(|(k, _)| *k == id) {
            return *tag;
        }
        let tag = address.root_tag(key);
        let mut roots = lock(&state.roots);
        if roots.len() == ROOT_CACHE {
            roots.remove(0);
        }
        roots.push((id, tag));
        tag
    }
}

/// The counter keys of the "max messages" caveats among `limits`: what a durable mailbox
/// counts in its store.
pub(crate) fn durable_counters(limits: &[Limit]) -> Vec<CounterKey> {
    limits
        .iter()
        .filter(|limit| matches!(limit.kind, LimitKind::Messages(_)))
        .map(|limit| limit.key)
        .collect()
}

/// An address that passed every check: where its messages go and what they are charged to.
#[derive(Clone)]
pub(crate) struct Authorized {
    pub(crate) mailbox: Arc<OpenMailbox>,
    pub(crate) grant: GrantId,
    pub(crate) limits: Vec<Limit>,
}

impl Authorized {
    /// Resolves once the address's grant is revoked: what a stream or watch opened under it
    /// waits on, to end with REVOKED (PROTOCOL.md §4.11).
    pub(crate) fn revoked(&self) -> impl Future<Output = ()> + Send + 'static {
        let mailbox = self.mailbox.clone();
        let grant = self.grant;
        async move { mailbox.caps.revoked(grant).await }
    }

    /// Resolves once the address's grant is revoked ([`Ended::Revoked`]) or `shutdown` is
    /// cancelled ([`Ended::ShuttingDown`]; [`Mailboxes::wake_all`] wakes the wait then). One
    /// wait for both, since every receiving stream keeps it for its whole life.
    pub(crate) fn revoked_or(
        &self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Ended> + Send + 'static {
        let mailbox = self.mailbox.clone();
        let grant = self.grant;
        async move {
            mailbox
                .caps
                .revoked_or(grant, || shutdown.is_cancelled())
                .await
        }
    }
}

/// Why a wait of [`Authorized::revoked_or`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The grant was revoked.
    Revoked,
    /// The node shuts down.
    ShuttingDown,
}

/// The node's table of open mailboxes.
#[derive(Default)]
pub(crate) struct Mailboxes {
    map: RwLock<HashMap<MailboxId, Arc<OpenMailbox>>>,
}

impl Mailboxes {
    /// Opens `mailbox` as `id`, replacing (and closing) any open one with the same id.
    pub(crate) fn insert(&self, id: MailboxId, mailbox: Arc<OpenMailbox>) {
        if let Some(previous) = write(&self.map).insert(id, mailbox) {
            previous.queue.mailbox_closed.set();
        }
    }

    /// Closes mailbox `id` if it is still `mailbox`, not a later one re-created with the same
    /// id (the caller holds `mailbox`, so no later one can share its allocation).
    pub(crate) fn remove(&self, id: MailboxId, mailbox: &Arc<OpenMailbox>) {
        let mut map = write(&self.map);
        if map
            .get(&id)
            .is_some_and(|entry| Arc::ptr_eq(entry, mailbox))
        {
            if let Some(entry) = map.remove(&id) {
                entry.queue.mailbox_closed.set();
            }
        }
    }

    /// Wakes every wait on a mailbox's revocations, so that [`Authorized::revoked_or`] sees
    /// the node's shutdown.
    pub(crate) fn wake_all(&self) {
        for entry in read(&self.map).values() {
            entry.caps.wake_waiters();
        }
    }

    pub(crate) fn clear(&self) {
        for (_, entry) in write(&self.map).drain() {
            entry.queue.mailbox_closed.set();
        }
    }

    pub(crate) fn len(&self) -> usize {
        read(&self.map).len()
    }

    /// Messages queued in all open mailboxes, not yet taken by the application.
    pub(crate) fn depth(&self) -> u64 {
        read(&self.map)
            .values()
            .map(|entry| entry.queue.len() as u64)
            .sum()
    }

    /// Checks that `address` grants `peer` the `usage` of an open mailbox of this node,
    /// cheapest checks first (PROTOCOL.md §4.9, §4.11): node id and expiry, the mailbox
    /// exists, its grant is not revoked, the stateless caveats (holder, service, unknown
    /// kinds), then the proof: the signature (cached) or the caveat chain (its root cached),
    /// and last whether the counting caveats have room.
    pub(crate) fn authorize(
        &self,
        verifier: &Verifier<'_>,
        address: &Address,
        peer: &NodeId,
        usage: Usage<'_>,
    ) -> Result<Authorized, SendError> {
        address.check_cheap(verifier.id, verifier.now)?;
        let mailbox = read(&self.map)
            .get(&address.mailbox())
            .cloned()
            .ok_or(SendError::NoSuchMailbox)?;
        let caps = &mailbox.caps;
        if caps.is_revoked(address.grant()) {
            return Err(SendError::Revoked);
        }
        address.check_usage(peer, usage)?;
        let limits = match address.signature() {
            Some(signature) => {
                let signed = (address.grant(), address.expires(), *signature);
                if !lock(caps.verified()).contains(&signed) {
                    verifier.stats.count_signature_check();
                    address.verify_signature().map_err(|e: VerifyError| {
                        verifier.stats.count_forged();
                        SendError::from(e)
                    })?;
                    let mut verified = lock(caps.verified());
                    if verified.len() == VERIFIED_CACHE {
                        verified.remove(0);
                    }
                    verified.push(signed);
                }
                Vec::new()
            }
            None => {
                let root = caps.root(address, verifier.key);
                address.verify_chain(&root).map_err(|e: VerifyError| {
                    verifier.stats.count_forged();
                    SendError::from(e)
                })?
            }
        };
        // A "max messages" caveat already used up is refused at once.
        for limit in &limits {
            if let LimitKind::Messages(max) = limit.kind {
                if caps.count(&limit.key) >= u64::from(max) {
                    return Err(SendError::Exhausted);
                }
            }
        }
        Ok(Authorized {
            mailbox,
            grant: address.grant(),
            limits,
        })
    }
}

/// What checking an address needs of its node: identity, time, key, and where to count.
pub(crate) struct Verifier<'a> {
    pub(crate) id: &'a NodeId,
    /// Unix seconds, for expiry.
    pub(crate) now: u64,
    /// The node's key, for caveat chains' roots.
    pub(crate) key: &'a SecretKey,
    pub(crate) stats: &'a Stats,
}
