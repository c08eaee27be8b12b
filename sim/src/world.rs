//! The simulated world and its event loop: a queue of events ordered by virtual time (ties in
//! the order they were scheduled), handled one at a time; after each, the invariants.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ferry_proto::frame::MAX_VARINT_LEN;

use crate::app::Source;
use crate::faults::Fault;
use crate::invariants::Checker;
use crate::keys::{self, mailbox_id, MAILBOXES};
use crate::mailbox::{Mailbox, Queued};
use crate::network::{Conn, ConnId, Dir, Stream, StreamId, MAX_CHUNK};
use crate::node::Node;
use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::store::SimStore;
use crate::{Failure, Outcome};

/// How long after the last fault everything must have been delivered.
const LIVENESS_LIMIT: Duration = Duration::from_secs(120);
/// How often applications read their mailboxes once the faults are over, and how soon they
/// acknowledge stored messages (ms).
const CALM_RECEIVE_GAP: (u64, u64) = (1, 20);

/// What a traced run keeps of what happened: the last lines, and where it is (read after a
/// panic too).
#[derive(Debug, Default)]
pub(crate) struct Journal {
    lines: VecDeque<String>,
    keep: usize,
    step: u64,
    now: Duration,
}

impl Journal {
    /// A journal that keeps `keep` lines, to hand to a world and read afterwards.
    pub(crate) fn shared(keep: usize) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            keep,
            ..Self::default()
        }))
    }

    /// Its lines, oldest first.
    pub(crate) fn lines(journal: &Rc<RefCell<Self>>) -> Vec<String> {
        journal.borrow().lines.iter().cloned().collect()
    }

    /// The step and time last recorded.
    pub(crate) fn position(journal: &Rc<RefCell<Self>>) -> (u64, Duration) {
        let journal = journal.borrow();
        (journal.step, journal.now)
    }
}

/// Something that happens at a time.
#[derive(Debug, Clone, Hash)]
pub(crate) enum Event {
    /// A sending application sends what its window takes.
    AppSend { source: usize },
    /// A receiving application reads its mailboxes.
    AppReceive { node: usize },
    /// An application acknowledges stored messages (the store removes them).
    Remove {
        node: usize,
        incarnation: u64,
        slot: usize,
        indexes: Vec<u64>,
    },
    /// A run's wake-up.
    SenderTimer {
        node: usize,
        source: usize,
        run: usize,
    },
    /// Items of a pipe arrive.
    Pipe { stream: StreamId, dir: Dir },
    /// A dial ends.
    Dialed {
        node: usize,
        peer: usize,
        incarnation: u64,
        ok: bool,
    },
    /// A connection's handshake completes at the acceptor.
    Accepted { conn: ConnId },
    /// An end of a connection notices it is gone.
    ConnLost { conn: ConnId, side: usize },
    /// A connection across a long partition times out.
    IdleTimeout { conn: ConnId },
    /// A retired connection may be closed.
    RetireCheck { conn: ConnId, side: usize },
    /// A waiting mailbox stream may go on.
    Resume {
        node: usize,
        incarnation: u64,
        stream: StreamId,
    },
    /// A fault of the plan.
    Fault(usize),
    /// A crashed node starts again.
    Restart { node: usize },
}

struct Scheduled {
    at: Duration,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// Counts for the outcome.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    handed: u64,
    crashes: u64,
    power_losses: u64,
    /// Store commits cut by a power loss.
    pub(crate) commits_cut: u64,
    /// Nodes that died between a commit and its acknowledgement.
    pub(crate) died_after_commit: u64,
    /// New connections the rule made an end keep its old one over.
    pub(crate) kept_old: u64,
}

/// Everything simulated.
pub(crate) struct World {
    seed: u64,
    /// Virtual time since the start.
    pub(crate) now: Duration,
    /// The instant the virtual time starts at (the protocol takes `Instant`s; only their
    /// differences matter).
    base: Instant,
    pub(crate) rng: Rng,
    queue: BinaryHeap<Scheduled>,
    order: u64,
    pub(crate) scenario: Scenario,
    pub(crate) nodes: Vec<Node>,
    pub(crate) conns: Vec<Conn>,
    pub(crate) streams: Vec<Stream>,
    pub(crate) sources: Vec<Source>,
    pub(crate) check: Checker,
    /// The last state of each run at each node ((node, key) → state), to tell whether a new
    /// one replaced a state a stream still held.
    pub(crate) run_cells:
        BTreeMap<(usize, crate::node::DedupKey), std::rc::Weak<RefCell<crate::inbound::RunCell>>>,
    /// Pairs of nodes (smaller first) using different connections, and since when.
    pub(crate) disagreements: BTreeMap<(usize, usize), Duration>,
    /// OPEN frames of runs waiting for a dial: (node, source, run).
    pub(crate) pending_heads: BTreeMap<(usize, usize, usize), Vec<u8>>,
    /// The last run-state generation given.
    pub(crate) generation: u64,
    journal: Option<Rc<RefCell<Journal>>>,
    digest: DefaultHasher,
    steps: u64,
    pub(crate) counts: Counts,
}

impl World {
    /// The world of `seed`; with a journal, it keeps there the last lines of what happened.
    pub(crate) fn new(seed: u64, journal: Option<Rc<RefCell<Journal>>>) -> Self {
        let mut rng = Rng::new(seed);
        let scenario = Scenario::draw(&mut rng);
        let pool = keys::pool();
        let nodes = (0..scenario.nodes.len())
            .map(|node| {
                let durable = scenario
                    .mailboxes
                    .iter()
                    .any(|m| m.node == node && m.durable);
                Node::new(&pool[scenario.nodes[node]], durable)
            })
            .collect();
        let sources: Vec<Source> = scenario.sources.iter().cloned().map(Source::new).collect();
        let check = Checker::new(sources.iter().map(|s| s.spec.messages));
        let mut world = Self {
            seed,
            now: Duration::ZERO,
            base: Instant::now(),
            rng,
            queue: BinaryHeap::new(),
            order: 0,
            scenario,
            nodes,
            conns: Vec::new(),
            streams: Vec::new(),
            sources,
            check,
            pending_heads: BTreeMap::new(),
            disagreements: BTreeMap::new(),
            run_cells: BTreeMap::new(),
            generation: 0,
            journal,
            digest: DefaultHasher::new(),
            steps: 0,
            counts: Counts::default(),
        };
        for node in 0..world.nodes.len() {
            world.start_node(node);
            let gap = world.draw_gap(world.scenario.pace.receive_gap);
            world.schedule(gap, Event::AppReceive { node });
        }
        for source in 0..world.sources.len() {
            let gap = world.draw_gap(world.scenario.pace.send_gap);
            world.wake_app(source, gap);
        }
        let times: Vec<Duration> = world
            .scenario
            .faults
            .timed
            .iter()
            .map(|(at, _)| *at)
            .collect();
        for (index, at) in times.into_iter().enumerate() {
            world.schedule(at, Event::Fault(index));
        }
        world
    }

    /// Runs to the end: every message delivered, or an invariant broken.
    pub(crate) fn run(mut self) -> Result<Outcome, Failure> {
        let limit = self.scenario.faults.calm_from + LIVENESS_LIMIT;
        let result = loop {
            if let Some((what, detail)) = self.check.violation.take() {
                break Err(self.failure(what, detail));
            }
            if self.is_done() {
                self.check.finish();
                match self.check.violation.take() {
                    Some((what, detail)) => break Err(self.failure(what, detail)),
                    None => break Ok(self.outcome()),
                }
            }
            let Some(next) = self.queue.pop() else {
                break Err(self.failure("the simulation stalled", "no event left".into()));
            };
            if next.at > limit {
                let detail = format!("not delivered {LIVENESS_LIMIT:?} after the last fault");
                break Err(self.failure("the network did not recover", detail));
            }
            self.now = next.at;
            self.steps += 1;
            next.at.hash(&mut self.digest);
            next.event.hash(&mut self.digest);
            let event = next.event;
            if let Some(journal) = &self.journal {
                let mut journal = journal.borrow_mut();
                journal.step = self.steps;
                journal.now = self.now;
            }
            self.trace(|| format!("{event:?}"));
            self.handle(event);
            self.check_step();
        };
        result
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::AppSend { source } => self.app_send(source),
            Event::AppReceive { node } => self.app_receive(node),
            Event::Remove {
                node,
                incarnation,
                slot,
                indexes,
            } => self.remove(node, incarnation, slot, &indexes),
            Event::SenderTimer { node, source, run } => self.sender_timer(node, source, run),
            Event::Pipe { stream, dir } => self.pipe_arrival(stream, dir),
            Event::Dialed {
                node,
                peer,
                incarnation,
                ok,
            } => self.dialed(node, peer, incarnation, ok),
            Event::Accepted { conn } => self.accepted(conn),
            Event::ConnLost { conn, side } => self.conn_lost(conn, side),
            Event::IdleTimeout { conn } => {
                let mut notices = [Duration::ZERO; 2];
                for notice in &mut notices {
                    *notice = self.rng.millis(0, 100);
                }
                self.kill(conn, notices);
            }
            Event::RetireCheck { conn, side } => self.retire_check(conn, side),
            Event::Resume {
                node,
                incarnation,
                stream,
            } => self.resume(node, incarnation, stream),
            Event::Fault(index) => self.fault(index),
            Event::Restart { node } => self.restart(node),
        }
    }

    /// Schedules `event` after `after`.
    pub(crate) fn schedule(&mut self, after: Duration, event: Event) {
        self.order += 1;
        self.queue.push(Scheduled {
            at: self.now + after,
            order: self.order,
            event,
        });
    }

    /// The current time as the protocol sees it.
    pub(crate) fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// A pause drawn from `(lo, hi)` milliseconds.
    pub(crate) fn draw_gap(&mut self, (lo, hi): (u64, u64)) -> Duration {
        self.rng.millis(lo, hi)
    }

    /// Adds a line to the trace, if it is kept.
    pub(crate) fn trace(&mut self, line: impl FnOnce() -> String) {
        if let Some(journal) = &self.journal {
            let mut journal = journal.borrow_mut();
            if journal.lines.len() >= journal.keep {
                journal.lines.pop_front();
            }
            let line = format!(
                "{:>9.3}s #{} {}",
                self.now.as_secs_f64(),
                self.steps,
                line()
            );
            journal.lines.push_back(line);
        }
    }

    /// Starts (or restarts) a node: its durable mailboxes reopen on what the disk kept, and
    /// queue what their store holds before anything new.
    fn start_node(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.incarnation += 1;
        n.up = true;
        if let Some(disk) = &n.disk {
            match SimStore::open(disk, self.scenario.limits.max_pending) {
                Ok(store) => n.store = Some(store),
                Err(error) => {
                    self.check.fail("the store did not open", error.to_string());
                    return;
                }
            }
        }
        let specs: Vec<_> = self
            .scenario
            .mailboxes
            .iter()
            .filter(|spec| spec.node == node)
            .cloned()
            .collect();
        for spec in specs {
            let mut stored = Vec::new();
            if spec.durable {
                let pending = self.nodes[node]
                    .store
                    .as_ref()
                    .map(|store| store.pending(mailbox_id(spec.slot)));
                match pending {
                    Some(Ok(pending)) => {
                        self.check.reopened(node, spec.slot, &pending);
                        stored = pending
                            .into_iter()
                            .map(|message| Queued {
                                payload: message.payload,
                                index: Some(message.index),
                                origin: None,
                            })
                            .collect();
                    }
                    Some(Err(error)) => self.check.fail("the store failed", error.to_string()),
                    None => {}
                }
            }
            if let Some(place) = self.nodes[node].mailboxes.get_mut(spec.slot) {
                *place = Some(Mailbox::new(spec.durable, spec.capacity, stored));
            }
        }
    }

    /// The node's process dies (and with `power_loss`, its machine's power goes).
    pub(crate) fn crash(&mut self, node: usize, power_loss: bool, down_for: Duration) {
        if !self.nodes[node].up {
            return;
        }
        self.trace(|| format!("node {node} crashes (power loss: {power_loss})"));
        self.counts.crashes += 1;
        if power_loss {
            self.counts.power_losses += 1;
        }
        let n = &mut self.nodes[node];
        for mailbox in n.mailboxes.iter().flatten() {
            if !mailbox.durable {
                self.check.lost_in_crash(&Vec::from(mailbox.queue.clone()));
            }
        }
        let runs: Vec<(usize, usize, Vec<u64>)> = n
            .conversations
            .iter()
            .map(|(source, c)| (*source, c.run, c.tickets.iter().map(|t| t.1).collect()))
            .collect();
        for (source, run, numbers) in runs {
            self.check.run_crashed(run, self.now);
            // The application starts again and sends what was not acknowledged.
            self.sources[source].failed(numbers);
        }
        if let Some(disk) = &n.disk {
            if power_loss {
                disk.power_loss();
            } else {
                disk.crash();
            }
        }
        n.lose_memory();
        self.pending_heads.retain(|(at, ..), _| *at != node);
        self.kill_all(node);
        self.schedule(down_for, Event::Restart { node });
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].up {
            return;
        }
        self.trace(|| format!("node {node} restarts"));
        self.start_node(node);
        for source in 0..self.sources.len() {
            if self.sources[source].spec.node == node {
                self.wake_app(source, Duration::ZERO);
            }
        }
    }

    fn fault(&mut self, index: usize) {
        let Some((_, fault)) = self.scenario.faults.timed.get(index).cloned() else {
            return;
        };
        self.trace(|| format!("fault: {fault:?}"));
        match fault {
            Fault::Partition { side, until } => self.partition_begins(&side, until),
            Fault::DropConnections { a, b } => {
                let within = self.scenario.limits.idle_timeout;
                self.drop_connections(a, b, within);
            }
            Fault::Crash {
                node,
                power_loss,
                down_for,
            } => self.crash(node, power_loss, down_for),
        }
    }

    /// The receiving application of `node` takes messages from its mailboxes.
    fn app_receive(&mut self, node: usize) {
        // Once the faults are over the applications read and acknowledge promptly: a reader
        // slower than its senders' send_timeout makes them time out and send again, more than
        // it can catch up with (an application's choice, not the protocol's).
        let calm = self.now >= self.scenario.faults.calm_from;
        let (gap, batch) = if calm {
            (CALM_RECEIVE_GAP, u64::MAX)
        } else {
            let pace = &self.scenario.pace;
            (pace.receive_gap, pace.receive_batch)
        };
        let gap = self.draw_gap(gap);
        self.schedule(gap, Event::AppReceive { node });
        if !self.nodes[node].up {
            return;
        }
        let incarnation = self.nodes[node].incarnation;
        for slot in 0..MAILBOXES {
            let mut taken = Vec::new();
            let mut woken = Vec::new();
            if let Some(Some(mailbox)) = self.nodes[node].mailboxes.get_mut(slot) {
                for _ in 0..batch {
                    match mailbox.take() {
                        Some(message) => taken.push(message),
                        None => break,
                    }
                }
                if !taken.is_empty() {
                    woken.extend(mailbox.waiting.drain(..));
                }
            }
            let mut indexes = Vec::new();
            for message in taken {
                self.counts.handed += 1;
                self.trace(|| {
                    let what = crate::app::parse(&message.payload);
                    format!(
                        "node {node} slot {slot}: app takes {what:?} {:?} {:?}",
                        message.origin, message.index
                    )
                });
                self.check.handed(node, incarnation, slot, &message);
                indexes.extend(message.index);
            }
            if !indexes.is_empty() {
                // The application acknowledges what it read, some time later.
                let delay = self.draw_gap(if calm {
                    CALM_RECEIVE_GAP
                } else {
                    self.scenario.pace.ack_delay
                });
                let remove = Event::Remove {
                    node,
                    incarnation,
                    slot,
                    indexes,
                };
                self.schedule(delay, remove);
            }
            for stream in woken {
                self.schedule(
                    Duration::ZERO,
                    Event::Resume {
                        node,
                        incarnation,
                        stream,
                    },
                );
            }
        }
    }

    /// The application acknowledges stored messages: the store removes them.
    fn remove(&mut self, node: usize, incarnation: u64, slot: usize, indexes: &[u64]) {
        let n = &self.nodes[node];
        if !n.up || n.incarnation != incarnation {
            return; // never reached the store: the message comes again
        }
        let Some(store) = &n.store else {
            return;
        };
        match store.remove(mailbox_id(slot), indexes) {
            Ok(()) => {
                for index in indexes {
                    self.check.removed(node, slot, *index);
                }
            }
            Err(error) => self.check.fail("the store failed", error.to_string()),
        }
    }

    /// Whether every message was acknowledged and handed, and nothing waits anywhere.
    fn is_done(&self) -> bool {
        self.sources.iter().all(Source::is_done)
            && self.nodes.iter().all(|n| {
                n.up && n
                    .mailboxes
                    .iter()
                    .flatten()
                    .all(|m| m.queue.is_empty() && m.replay.is_empty())
                    && n.inbound.values().all(|i| i.is_idle())
            })
    }

    /// The bounds that hold after every step.
    fn check_step(&mut self) {
        if !self.disagreements.is_empty() {
            self.check_agreements();
        }
        let limits = &self.scenario.limits;
        // The SDK's bound: the start of one frame and one chunk read (`read_chunk`, 64 KiB).
        let max_buffer = limits.max_message + 1 + MAX_VARINT_LEN + MAX_CHUNK;
        for (index, node) in self.nodes.iter().enumerate() {
            if !node.up {
                continue;
            }
            for (source, c) in &node.conversations {
                if c.sm.outstanding() != c.tickets.len() {
                    let detail = format!(
                        "node {index} source {source}: the sender holds {} messages, {} unresolved",
                        c.sm.outstanding(),
                        c.tickets.len()
                    );
                    return self
                        .check
                        .fail("the sender lost count of its messages", detail);
                }
                if c.cost > limits.send_window {
                    let detail = format!("source {source}: {} > {}", c.cost, limits.send_window);
                    return self
                        .check
                        .fail("a conversation exceeds its send window", detail);
                }
            }
            for (stream, inbound) in &node.inbound {
                if inbound.buffered() > max_buffer {
                    let detail = format!("stream {stream}: {} bytes", inbound.buffered());
                    return self
                        .check
                        .fail("a stream buffered more than a frame", detail);
                }
            }
            for mailbox in node.mailboxes.iter().flatten() {
                if mailbox.queue.len() > mailbox.capacity {
                    let detail = format!("node {index}: {} messages", mailbox.queue.len());
                    return self.check.fail("a mailbox outgrew its capacity", detail);
                }
            }
        }
    }

    /// Bytes waiting on a stream towards its acceptor stay within the send window.
    pub(crate) fn check_pipe(&mut self, stream: StreamId) {
        // Messages cost their length + 32 against the window, more than their frame header;
        // the OPEN frame comes on top.
        let bound = self.scenario.limits.send_window + 1024;
        let bytes = self.pipe_bytes(stream, Dir::Out);
        if bytes > bound {
            let detail = format!("stream {stream}: {bytes} bytes, bound {bound}");
            self.check
                .fail("a stream holds more than the send window", detail);
        }
    }

    fn failure(&self, what: &'static str, detail: String) -> Failure {
        Failure {
            seed: self.seed,
            step: self.steps,
            at: self.now,
            what,
            detail,
        }
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            steps: self.steps,
            digest: self.digest.finish(),
            virtual_time: self.now,
            nodes: self.nodes.len(),
            messages: self.sources.iter().map(|s| s.spec.messages).sum(),
            handed: self.counts.handed,
            runs: self.check.runs(),
            connections: self.conns.len(),
            streams: self.streams.len(),
            crashes: self.counts.crashes,
            power_losses: self.counts.power_losses,
            commits_cut: self.counts.commits_cut,
            died_after_commit: self.counts.died_after_commit,
            redelivered: self.check.seen.redelivered,
            evicted: self.check.seen.evicted,
            replayed: self.check.seen.replayed,
            kept_old: self.counts.kept_old,
        }
    }
}
