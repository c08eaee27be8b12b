//! The receiving side: each mailbox stream served as `sdk/src/streams/inbound.rs` serves it,
//! with the proto [`Receiver`] deciding what is new and what to acknowledge, the run's state
//! shared through the node's [`DedupTable`](ferry_proto::receiver::DedupTable), and the run's
//! lock held across a whole batch, waits included (a second stream of the run waits for it).
//!
//! A volatile mailbox's message is acknowledged once it is in the mailbox's queue. A durable
//! mailbox's batch is stored (messages and the run's next sequence number in one durable
//! write) and acknowledged, then queued once the mailbox's replay is done and there is room.
//! Waiting for room, or for the store to have room, stops reading the stream.
//!
//! When the ACK of a stored batch cannot be written (the opener reset the stream and stopped
//! reading it, e.g. after moving to a new connection), the stored batch is queued first and
//! the stream ends after, as in the SDK. The SDK used to return at once, and the stored
//! messages never reached the mailbox's queue until the mailbox was opened again (a restart)
//! — while the run's next stream skipped them as duplicates and acknowledged them. The
//! simulation found it (seed 56 of its first version, seed 1 of this one); the SDK was fixed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ferry::store::RunId;
use ferry_proto::frame::{self, ErrorCode, Frame, StreamKind};
use ferry_proto::receiver::{Incoming, Receiver, RunState};

use crate::faults::COMMIT_CRASH_DOWN;
use crate::invariants::Accepted;
use crate::keys::mailbox_id;
use crate::mailbox::Queued;
use crate::network::{Dir, Item, StreamId};
use crate::node::DedupKey;
use crate::world::{Event, World};

/// How often a stream retries storing into a full durable mailbox (the SDK's
/// `STORE_FULL_RETRY`).
const STORE_FULL_RETRY: Duration = Duration::from_millis(50);

/// The state of one run at a receiver, shared by its streams.
#[derive(Debug)]
pub(crate) struct RunCell {
    /// What the proto receiver keeps.
    pub(crate) state: RunState,
    /// Which instance of the run's state this is (a new one after an eviction, a restart, or
    /// the run's end).
    pub(crate) generation: u64,
    /// The stream holding the run's lock.
    locked_by: Option<StreamId>,
    /// Streams waiting for the lock.
    waiting: VecDeque<StreamId>,
}

/// What a stream waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Nothing,
    /// The run's lock, held by another stream.
    Lock,
    /// Room in the mailbox (or the end of its replay).
    Room,
    /// The store had no room: retried after a pause.
    Store,
}

/// A message taken from the stream and not yet in the mailbox's queue.
#[derive(Debug)]
struct Pending {
    seq: u64,
    payload: Bytes,
    /// Its index in the store, for a durable mailbox (then it is stored already).
    index: Option<u64>,
}

/// A stream past its OPEN.
#[derive(Debug)]
struct Serving {
    /// Made under the run's lock once the stream holds it the first time.
    receiver: Option<Receiver>,
    first_seq: u64,
    cell: Rc<RefCell<RunCell>>,
    key: DedupKey,
    slot: usize,
    durable: bool,
    run_id: RunId,
    /// The run, as the checker knows it.
    run: usize,
}

/// One mailbox stream a node serves.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// The node that opened it.
    peer: usize,
    /// Bytes read and not yet used.
    buf: BytesMut,
    serving: Option<Serving>,
    wait: Wait,
    pending: VecDeque<Pending>,
    /// Fresh messages of a durable mailbox read and not yet stored: (seq, payload).
    to_store: Vec<(u64, Bytes)>,
    /// The connection was lost while the stream waited: it ends after its batch.
    closing: bool,
    /// The ACK of a stored batch could not be written: the stream ends once the batch is
    /// queued.
    ack_failed: bool,
}

impl Inbound {
    /// Whether it reads its stream now (it does not while it waits).
    pub(crate) fn is_reading(&self) -> bool {
        self.wait == Wait::Nothing
    }

    /// The run's state it holds, if it is past its OPEN.
    pub(crate) fn cell(&self) -> Option<&Rc<RefCell<RunCell>>> {
        self.serving.as_ref().map(|serving| &serving.cell)
    }

    /// Bytes it holds.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether it holds no message and waits for nothing.
    pub(crate) fn is_idle(&self) -> bool {
        self.wait == Wait::Nothing && self.pending.is_empty() && self.to_store.is_empty()
    }
}

/// What reading the buffer gave.
enum Read {
    /// A frame the stream must be closed for.
    Refused(ErrorCode, String),
    /// No complete frame left.
    Empty,
    /// One fresh message for a volatile mailbox.
    One,
}

/// How a batch went.
enum Batch {
    /// Done; the stream reads on.
    Done,
    /// Waiting (the lock, room, the store).
    Waiting,
    /// The stream ended.
    Ended,
    /// The node died in the middle (a power loss in a commit, or a crash after one).
    NodeDied { power_loss: bool },
}

impl World {
    /// An item from the opener of `stream` arrived at `node`.
    pub(crate) fn inbound_item(&mut self, node: usize, stream: StreamId, item: Item) {
        if !self.nodes[node].up {
            return;
        }
        if !self.nodes[node].inbound.contains_key(&stream) {
            let conn = &self.conns[self.streams[stream].conn];
            let peer = conn.nodes[self.streams[stream].opener];
            self.nodes[node].inbound.insert(
                stream,
                Inbound {
                    peer,
                    buf: BytesMut::new(),
                    serving: None,
                    wait: Wait::Nothing,
                    pending: VecDeque::new(),
                    to_store: Vec::new(),
                    closing: false,
                    ack_failed: false,
                },
            );
        }
        match item {
            Item::Data(bytes) => {
                if let Some(inbound) = self.nodes[node].inbound.get_mut(&stream) {
                    inbound.buf.extend_from_slice(&bytes);
                }
                self.serve(node, stream);
            }
            Item::Fin => self.inbound_fin(node, stream),
            Item::Reset => self.end_inbound(node, stream),
        }
    }

    /// The connection of `stream` was lost at `node`: a waiting stream ends after its batch,
    /// as the SDK's task notices only when it reads again.
    pub(crate) fn inbound_lost(&mut self, node: usize, stream: StreamId) {
        let Some(inbound) = self.nodes[node].inbound.get_mut(&stream) else {
            return;
        };
        if inbound.wait == Wait::Nothing {
            self.end_inbound(node, stream);
        } else {
            inbound.closing = true;
        }
    }

    /// A stream that waited may go on.
    pub(crate) fn resume(&mut self, node: usize, incarnation: u64, stream: StreamId) {
        if self.nodes[node].incarnation != incarnation || !self.nodes[node].up {
            return;
        }
        let Some(inbound) = self.nodes[node].inbound.get_mut(&stream) else {
            return;
        };
        if inbound.wait == Wait::Nothing {
            return;
        }
        inbound.wait = Wait::Nothing;
        self.serve(node, stream);
    }

    /// Reads the OPEN, then delivers what the buffer holds.
    fn serve(&mut self, node: usize, stream: StreamId) {
        let Some(inbound) = self.nodes[node].inbound.get_mut(&stream) else {
            return;
        };
        if inbound.serving.is_none() {
            let Some((&kind, rest)) = inbound.buf.split_first() else {
                return;
            };
            if kind != StreamKind::Mailbox as u8 {
                return self.refuse(node, stream, ErrorCode::PROTOCOL, "not a mailbox stream");
            }
            match frame::decode_frame(rest, frame::MAX_CONTROL_FRAME_LEN) {
                Ok(None) => return,
                Ok(Some((Frame::Open(open), used))) => {
                    let open = *open;
                    inbound.buf.advance(1 + used);
                    if !self.open_inbound(node, stream, open) {
                        return;
                    }
                }
                Ok(Some(_)) => {
                    return self.refuse(node, stream, ErrorCode::PROTOCOL, "expected open frame")
                }
                Err(_) => return self.refuse(node, stream, ErrorCode::PROTOCOL, "bad open frame"),
            }
        }
        match self.batch(node, stream) {
            Batch::Done => {}
            Batch::Waiting | Batch::Ended => return,
            Batch::NodeDied { power_loss } => {
                return self.crash(node, power_loss, COMMIT_CRASH_DOWN);
            }
        }
        self.unlock(node, stream);
        let Some(inbound) = self.nodes[node].inbound.get_mut(&stream) else {
            return;
        };
        let ack = inbound
            .serving
            .as_mut()
            .and_then(|serving| serving.receiver.as_mut())
            .and_then(Receiver::ack);
        let closing = inbound.closing;
        if let Some(next_seq) = ack {
            if !self.send_frame(stream, &Frame::Ack { next_seq }) {
                return self.end_inbound(node, stream);
            }
        }
        if closing {
            return self.end_inbound(node, stream);
        }
        self.resume_reading(stream, Dir::Out);
    }

    /// Checks an OPEN and answers ACCEPT; false if the stream was refused.
    fn open_inbound(&mut self, node: usize, stream: StreamId, open: frame::Open) -> bool {
        let Some(peer) = self.nodes[node].inbound.get(&stream).map(|i| i.peer) else {
            return false;
        };
        if open.from.node() != self.nodes[peer].id() {
            self.refuse(
                node,
                stream,
                ErrorCode::FROM_MISMATCH,
                "from is not the sender's",
            );
            return false;
        }
        let slot = (open.target.mailbox().0 as usize).wrapping_sub(1);
        let durable = match self.nodes[node].mailboxes.get(slot) {
            Some(Some(mailbox)) if open.target.node() == self.nodes[node].id() => mailbox.durable,
            _ => {
                self.refuse(node, stream, ErrorCode::NO_SUCH_MAILBOX, "no such mailbox");
                return false;
            }
        };
        let Some(run) = self.check.run_of_epoch(open.epoch) else {
            self.check.fail(
                "an OPEN named a run never started",
                format!("epoch {:x}", open.epoch),
            );
            return false;
        };
        let key = (
            peer,
            open.from.mailbox().0,
            open.target.mailbox().0,
            open.epoch,
        );
        let generation = self.generation + 1;
        let max = self.scenario.limits.max_dedup;
        let cell = self.nodes[node]
            .dedup
            .entry(
                key,
                max,
                |cell| Rc::strong_count(cell) > 1,
                || {
                    Rc::new(RefCell::new(RunCell {
                        state: RunState::default(),
                        generation,
                        locked_by: None,
                        waiting: VecDeque::new(),
                    }))
                },
            )
            .clone();
        if cell.borrow().generation == generation {
            self.generation = generation;
            // The state this one replaces, if a stream still holds it, was taken from the table
            // while in use: only the run's end (FIN) may do that (§6.4).
            let previous = self.run_cells.insert((node, key), Rc::downgrade(&cell));
            if previous.is_some_and(|old| old.strong_count() > 0) && !self.check.forgotten(run) {
                let detail = format!("node {node}: run {run} while a stream held its state");
                self.check
                    .fail("a run's state was evicted while in use", detail);
            }
            // A new run: the table made room by forgetting runs no stream uses, down to
            // max_dedup, or holds only runs in use (§6.4). It does not grow between insertions.
            let n = &self.nodes[node];
            let in_use = n.runs_in_use() + 1; // this stream's run, not yet in `inbound`
            if n.dedup.len() > max.max(in_use) {
                let detail = format!(
                    "node {node}: {} runs, {in_use} in use, max {max}",
                    n.dedup.len()
                );
                self.check.fail("the dedup table outgrew its bound", detail);
            }
        }
        let mut accept = Vec::new();
        frame::put_frame(
            &mut accept,
            &Frame::Accept {
                max_message: self.scenario.limits.max_message as u64,
            },
        );
        if self.write(stream, Dir::In, accept).is_err() {
            self.end_inbound(node, stream);
            return false;
        }
        let run_id = RunId {
            node: self.nodes[peer].id(),
            mailbox: open.from.mailbox(),
            epoch: open.epoch,
        };
        if let Some(inbound) = self.nodes[node].inbound.get_mut(&stream) {
            inbound.serving = Some(Serving {
                receiver: None,
                first_seq: open.first_seq,
                cell,
                key,
                slot,
                durable,
                run_id,
                run,
            });
        }
        true
    }

    /// Takes the run's lock for `stream`, or queues it; false if it must wait.
    fn lock(&mut self, node: usize, stream: StreamId) -> bool {
        let Some(inbound) = self.nodes[node].inbound.get_mut(&stream) else {
            return false;
        };
        let Some(serving) = &inbound.serving else {
            return false;
        };
        let mut cell = serving.cell.borrow_mut();
        match cell.locked_by {
            None => {
                cell.locked_by = Some(stream);
                true
            }
            Some(holder) if holder == stream => true,
            Some(_) => {
                if !cell.waiting.contains(&stream) {
                    cell.waiting.push_back(stream);
                }
                drop(cell);
                inbound.wait = Wait::Lock;
                false
            }
        }
    }

    /// Releases the run's lock if `stream` holds it, waking the streams waiting for it.
    fn unlock(&mut self, node: usize, stream: StreamId) {
        let Some(serving) = self.nodes[node]
            .inbound
            .get(&stream)
            .and_then(|inbound| inbound.serving.as_ref())
        else {
            return;
        };
        let waiting: Vec<StreamId> = {
            let mut cell = serving.cell.borrow_mut();
            if cell.locked_by != Some(stream) {
                return;
            }
            cell.locked_by = None;
            cell.waiting.drain(..).collect()
        };
        let incarnation = self.nodes[node].incarnation;
        for waiter in waiting {
            self.schedule(
                Duration::ZERO,
                Event::Resume {
                    node,
                    incarnation,
                    stream: waiter,
                },
            );
        }
    }

    /// Delivers the complete frames in the buffer with the run's lock held (taking it first).
    fn batch(&mut self, node: usize, stream: StreamId) -> Batch {
        if !self.lock(node, stream) {
            return Batch::Waiting;
        }
        if !self.make_receiver(node, stream) {
            return Batch::Ended;
        }
        let incarnation = self.nodes[node].incarnation;
        loop {
            // Messages taken from the stream go into the mailbox first, waiting for room.
            loop {
                let n = &mut self.nodes[node];
                let Some(inbound) = n.inbound.get_mut(&stream) else {
                    return Batch::Ended;
                };
                let Some(serving) = inbound.serving.as_mut() else {
                    return Batch::Ended;
                };
                let Some(pending) = inbound.pending.front() else {
                    break;
                };
                let Some(Some(mailbox)) = n.mailboxes.get_mut(serving.slot) else {
                    return Batch::Ended;
                };
                if !mailbox.takes_new() {
                    if !mailbox.waiting.contains(&stream) {
                        mailbox.waiting.push_back(stream);
                    }
                    inbound.wait = Wait::Room;
                    return Batch::Waiting;
                }
                mailbox.push(Queued {
                    payload: pending.payload.clone(),
                    index: pending.index,
                    origin: pending
                        .index
                        .is_none()
                        .then_some((serving.run, pending.seq)),
                });
                let Some(pending) = inbound.pending.pop_front() else {
                    break;
                };
                if pending.index.is_none() {
                    let mut cell = serving.cell.borrow_mut();
                    if let Some(receiver) = serving.receiver.as_mut() {
                        receiver.delivered(&mut cell.state, pending.seq + 1);
                    }
                    let accepted = Accepted {
                        node,
                        incarnation,
                        run: serving.run,
                        seq: pending.seq,
                        generation: cell.generation,
                        index: None,
                    };
                    drop(cell);
                    self.trace(|| {
                        format!(
                            "node {node}: stream {stream} queues run {} seq {}",
                            accepted.run, accepted.seq
                        )
                    });
                    self.check.accepted(accepted, &pending.payload);
                }
            }
            // Then the frames in the buffer: one fresh message at a time for a volatile
            // mailbox, all of them for a durable one (stored as one batch).
            let n = &mut self.nodes[node];
            let Some(inbound) = n.inbound.get_mut(&stream) else {
                return Batch::Ended;
            };
            if inbound.ack_failed {
                self.end_inbound(node, stream);
                return Batch::Ended;
            }
            let Some(serving) = inbound.serving.as_mut() else {
                return Batch::Ended;
            };
            let Some(receiver) = serving.receiver.as_mut() else {
                return Batch::Ended;
            };
            let read = loop {
                let mut unread = std::mem::take(&mut inbound.buf).freeze();
                let incoming = receiver.next(&mut unread, &serving.cell.borrow().state);
                inbound.buf = ferry_proto::receiver::writable(unread, 0);
                match incoming {
                    Err(violation) => break Read::Refused(violation.code, violation.reason),
                    Ok(None) => break Read::Empty,
                    Ok(Some(Incoming::Duplicate)) => {}
                    Ok(Some(Incoming::Message { seq, payload })) => {
                        if serving.durable {
                            inbound.to_store.push((seq, payload));
                        } else {
                            inbound.pending.push_back(Pending {
                                seq,
                                payload,
                                index: None,
                            });
                            break Read::One;
                        }
                    }
                }
            };
            let nothing_to_store = inbound.to_store.is_empty();
            match read {
                Read::Refused(code, reason) => {
                    self.refuse(node, stream, code, &reason);
                    return Batch::Ended;
                }
                Read::One => continue,
                Read::Empty if nothing_to_store => return Batch::Done,
                Read::Empty => {}
            }
            match self.store_batch(node, stream) {
                Batch::Done => {}
                other => return other,
            }
        }
    }

    /// Creates the stream's receiver under the run's lock, the first time: a durable
    /// mailbox's run state comes from the store after a restart or an eviction.
    fn make_receiver(&mut self, node: usize, stream: StreamId) -> bool {
        let incarnation = self.nodes[node].incarnation;
        let n = &mut self.nodes[node];
        let Some(serving) = n.inbound.get_mut(&stream).and_then(|i| i.serving.as_mut()) else {
            return false;
        };
        if serving.receiver.is_some() {
            return true;
        }
        let mut cell = serving.cell.borrow_mut();
        if cell.state.next_seq.is_none() && serving.durable {
            let stored = n
                .store
                .as_ref()
                .map(|store| store.delivered(mailbox_id(serving.slot), serving.run_id));
            match stored {
                Some(Ok(next_seq)) => cell.state.next_seq = next_seq,
                _ => {
                    drop(cell);
                    self.refuse(node, stream, ErrorCode::STORE_FAILED, "store failed");
                    return false;
                }
            }
        }
        let max = self.scenario.limits.max_message;
        serving.receiver = Some(Receiver::open(serving.first_seq, max, &mut cell.state));
        let (run, generation, first_seq) = (serving.run, cell.generation, serving.first_seq);
        let next_seq = cell.state.next_seq;
        drop(cell);
        self.trace(|| {
            format!("node {node}: stream {stream} serves run {run} from {first_seq} (state {generation}: {next_seq:?})")
        });
        self.check.run_state(node, incarnation, run, generation);
        true
    }

    /// Stores what a durable mailbox's stream read, acknowledges it, and hands it on to the
    /// mailbox's queue.
    fn store_batch(&mut self, node: usize, stream: StreamId) -> Batch {
        let incarnation = self.nodes[node].incarnation;
        let faults = &self.scenario.faults;
        let commit_faults = self.now < faults.commit_faults_until;
        let cut = commit_faults && self.rng.chance(faults.cut_commit_percent);
        let crash_after = commit_faults && self.rng.chance(faults.crash_after_commit_percent);
        let Some(key) = self.nodes[node]
            .inbound
            .get(&stream)
            .and_then(|inbound| inbound.serving.as_ref())
            .map(|serving| serving.key)
        else {
            return Batch::Ended;
        };
        let from = self.nodes[key.0]
            .identity
            .address((key.1 as usize).wrapping_sub(1));
        let n = &mut self.nodes[node];
        let (Some(store), Some(disk)) = (n.store.as_ref(), n.disk.as_ref()) else {
            return Batch::Ended;
        };
        let Some(inbound) = n.inbound.get_mut(&stream) else {
            return Batch::Ended;
        };
        let Some(serving) = inbound.serving.as_mut() else {
            return Batch::Ended;
        };
        let Some(first) = inbound.to_store.first().map(|(seq, _)| *seq) else {
            return Batch::Done;
        };
        let messages = inbound
            .to_store
            .iter()
            .map(|(_, payload)| (from.clone(), payload.clone()))
            .collect();
        if cut {
            disk.cut_at_next_sync();
        }
        let stored = store.append(mailbox_id(serving.slot), serving.run_id, first, messages);
        if cut && !disk.cut_pending() {
            self.counts.commits_cut += 1;
            self.trace(|| format!("node {node}: power lost in a commit"));
            return Batch::NodeDied { power_loss: true };
        }
        disk.disarm();
        let indexes = match stored {
            Ok(indexes) => indexes,
            Err(error) => {
                let reason = error.to_string();
                self.check.fail("the store failed", reason.clone());
                self.refuse(node, stream, ErrorCode::STORE_FAILED, &reason);
                return Batch::Ended;
            }
        };
        if indexes.is_empty() {
            inbound.wait = Wait::Store;
            self.schedule(
                STORE_FULL_RETRY,
                Event::Resume {
                    node,
                    incarnation,
                    stream,
                },
            );
            return Batch::Waiting;
        }
        let stored: Vec<(u64, Bytes)> = inbound.to_store.drain(..indexes.len()).collect();
        let mut accepted = Vec::new();
        let generation = serving.cell.borrow().generation;
        for ((seq, payload), index) in stored.into_iter().zip(indexes) {
            accepted.push((
                Accepted {
                    node,
                    incarnation,
                    run: serving.run,
                    seq,
                    generation,
                    index: Some(index),
                },
                payload.clone(),
            ));
            inbound.pending.push_back(Pending {
                seq,
                payload,
                index: Some(index),
            });
        }
        let next_seq = first + accepted.len() as u64;
        let ack = serving.receiver.as_mut().map(|receiver| {
            receiver.delivered(&mut serving.cell.borrow_mut().state, next_seq);
            receiver.ack_stored(next_seq)
        });
        let slot = serving.slot;
        for (accepted, payload) in accepted {
            self.trace(|| {
                let (run, seq, index) = (accepted.run, accepted.seq, accepted.index);
                format!("node {node}: stream {stream} stores run {run} seq {seq} at {index:?}")
            });
            self.check.accepted(accepted, &payload);
            self.check.stored(accepted, slot, &payload);
        }
        if crash_after {
            self.counts.died_after_commit += 1;
            self.trace(|| format!("node {node}: dies after a commit, before its ACK"));
            return Batch::NodeDied { power_loss: false };
        }
        if let Some(next_seq) = ack {
            if !self.send_frame(stream, &Frame::Ack { next_seq }) {
                // Stored: the batch goes to the mailbox's queue all the same, then the stream
                // ends (as the SDK does since the simulation found it left the batch in the
                // store only).
                if let Some(inbound) = self.nodes[node].inbound.get_mut(&stream) {
                    inbound.ack_failed = true;
                }
            }
        }
        Batch::Done
    }

    /// The opener finished the stream: a clean end of the run, whose state goes.
    fn inbound_fin(&mut self, node: usize, stream: StreamId) {
        let Some(inbound) = self.nodes[node].inbound.get(&stream) else {
            return;
        };
        let Some(serving) = &inbound.serving else {
            return self.refuse(
                node,
                stream,
                ErrorCode::PROTOCOL,
                "stream ended before open",
            );
        };
        let finished = match &serving.receiver {
            Some(receiver) => receiver.finished(&inbound.buf),
            None => Ok(()),
        };
        if let Err(violation) = finished {
            return self.refuse(node, stream, violation.code, &violation.reason);
        }
        let (key, run, slot, run_id, durable) = (
            serving.key,
            serving.run,
            serving.slot,
            serving.run_id,
            serving.durable,
        );
        self.nodes[node].dedup.remove(&key);
        self.check.run_forgotten(node, run);
        if durable {
            if let Some(store) = &self.nodes[node].store {
                if let Err(error) = store.end_run(mailbox_id(slot), run_id) {
                    self.check.fail("the store failed", error.to_string());
                }
            }
        }
        self.end_inbound(node, stream);
    }

    /// Answers CLOSE and ends the stream.
    fn refuse(&mut self, node: usize, stream: StreamId, code: ErrorCode, reason: &str) {
        self.trace(|| format!("node {node}: stream {stream} refused: {} {reason}", code.0));
        let _ = self.send_frame(stream, &Frame::Close { code, reason });
        self.end_inbound(node, stream);
    }

    /// Ends a stream: its lock is released, its side finished (quinn finishes a dropped send
    /// stream) and its reading stopped.
    pub(crate) fn end_inbound(&mut self, node: usize, stream: StreamId) {
        self.unlock(node, stream);
        if self.nodes[node].inbound.remove(&stream).is_none() {
            return;
        }
        self.finish(stream, Dir::In);
        self.stop_reading(stream, Dir::Out);
    }

    /// Writes a frame to the opener; false if the stream cannot be written.
    fn send_frame(&mut self, stream: StreamId, frame: &Frame<'_>) -> bool {
        let mut out = Vec::new();
        frame::put_frame(&mut out, frame);
        self.write(stream, Dir::In, out).is_ok()
    }
}
