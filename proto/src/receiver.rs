//! The receiving side of mailbox streams (docs/PROTOCOL.md §6.4, docs/IMPLEMENTATION.md §6.4a) as pure state:
//! duplicate suppression per conversation run, sequence numbers on a stream, cumulative ACKs,
//! and the bounded table of runs.
//!
//! One [`RunState`] stands for one run of one conversation (sender node, sender mailbox,
//! target mailbox, epoch) and is shared by every stream of that run; one [`Receiver`] stands
//! for one stream. The runtime holds the run's state locked while it delivers a batch, puts
//! messages into the mailbox (or the store) and writes ACKs; this module decides which
//! messages are new, which are duplicates, and what to acknowledge.
// Frames come from any peer: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::{self, ErrorCode, Frame, FrameError};

/// How far one conversation run got at the receiver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunState {
    /// Every message of the run with a lower sequence number was delivered; `None` before the
    /// first stream of the run (or after the state was evicted or lost in a restart).
    pub next_seq: Option<u64>,
}

/// What the next frame of a stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message not delivered before: deliver it, then call [`Receiver::delivered`].
    Message {
        /// Its sequence number.
        seq: u64,
        /// Its payload.
        payload: Bytes,
    },
    /// A message delivered on an earlier stream of the run: dropped, but acknowledged.
    Duplicate,
}

/// A stream the receiver must end, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The CLOSE code.
    pub code: ErrorCode,
    /// The reason.
    pub reason: String,
}

/// One mailbox stream at the receiver, after its OPEN passed the checks.
#[derive(Debug)]
pub struct Receiver {
    /// The sequence number of the next MESSAGE frame on this stream.
    seq: u64,
    /// The last ACK sent.
    acked: u64,
    /// The largest frame taken: a message of `max_message_size` and its type byte.
    max_frame: usize,
}

impl Receiver {
    /// A stream of a run that starts at `first_seq`. A sender forgets only acknowledged
    /// messages, so a `first_seq` beyond what the run's state says was delivered means the
    /// state was lost (evicted, or a restart): the receiver trusts the sender.
    pub fn open(first_seq: u64, max_message_size: usize, run: &mut RunState) -> Self {
        if run.next_seq.is_none_or(|next| first_seq > next) {
            run.next_seq = Some(first_seq);
        }
        Self {
            seq: first_seq,
            acked: first_seq,
            max_frame: max_message_size + 1,
        }
    }

    /// The next complete frame at the start of `unread` (the bytes read from the stream and
    /// not taken yet), which then starts past it; `None` if `unread` holds only the start of
    /// one. Anything but a MESSAGE frame, or a frame larger than the limit, ends the stream.
    ///
    /// A message's payload is a slice of `unread` (a reference count and bounds), where
    /// splitting a buffer per message cost three times that. [`writable`] makes what is left
    /// the buffer that the stream's next read is appended to.
    pub fn next(
        &mut self,
        unread: &mut Bytes,
        run: &RunState,
    ) -> Result<Option<Incoming>, Violation> {
        let (header, payload_len) = match frame::complete_message(unread, self.max_frame) {
            Some(found) => found,
            None => match self.decode(unread)? {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        let seq = self.seq;
        self.seq += 1;
        let incoming = if run.next_seq.is_some_and(|next| seq < next) {
            Incoming::Duplicate
        } else {
            Incoming::Message {
                seq,
                payload: unread.slice(header..header + payload_len),
            }
        };
        unread.advance(header + payload_len);
        Ok(Some(incoming))
    }

    /// What [`frame::complete_message`] does not take: the header and payload length of a
    /// complete MESSAGE frame, `None` for an incomplete frame, or why the stream must end.
    fn decode(&self, buf: &[u8]) -> Result<Option<(usize, usize)>, Violation> {
        let decoded = match frame::decode_frame(buf, self.max_frame) {
            Ok(decoded) => decoded,
            Err(FrameError::TooLarge { len, max }) => {
                return Err(Violation {
                    code: ErrorCode::TOO_LARGE,
                    reason: format!("frame of {len} bytes exceeds {max}"),
                })
            }
            Err(error) => {
                return Err(Violation {
                    code: ErrorCode::PROTOCOL,
                    reason: error.to_string(),
                })
            }
        };
        let Some((frame, used)) = decoded else {
            return Ok(None);
        };
        let Frame::Message(payload) = frame else {
            return Err(Violation {
                code: ErrorCode::PROTOCOL,
                reason: "expected message frame".into(),
            });
        };
        Ok(Some((used - payload.len(), payload.len())))
    }

    /// About how many MESSAGE frames `buf` holds if the rest are like its first (0 if it does
    /// not start with a complete one): to size once what they are delivered into.
    pub fn frames_hint(&self, buf: &[u8]) -> usize {
        frame::complete_message(buf, self.max_frame).map_or(0, |(header, payload_len)| {
            buf.len() / (header + payload_len)
        })
    }

    /// Every message of the run below `next_seq` is delivered (in the mailbox, or stored).
    pub fn delivered(&mut self, run: &mut RunState, next_seq: u64) {
        if run.next_seq.is_none_or(|next| next < next_seq) {
            run.next_seq = Some(next_seq);
        }
    }

    /// The ACK to send now, if it would acknowledge more than the last one: everything on this
    /// stream so far, duplicates included. Call after the messages were delivered.
    pub fn ack(&mut self) -> Option<u64> {
        (self.seq > self.acked).then(|| {
            self.acked = self.seq;
            self.seq
        })
    }

    /// The ACK to send when the stream ends at the message `next_seq` (not delivered: e.g. an
    /// address's message budget is used up), if it would acknowledge more than the last one:
    /// the messages before it only.
    pub fn ack_until(&mut self, next_seq: u64) -> Option<u64> {
        let next_seq = next_seq.min(self.seq);
        (next_seq > self.acked).then(|| {
            self.acked = next_seq;
            next_seq
        })
    }

    /// An ACK for a durable batch stored up to `next_seq` (before the rest of the stream is
    /// read): acknowledged as soon as it is on disk.
    pub fn ack_stored(&mut self, next_seq: u64) -> u64 {
        self.acked = self.acked.max(next_seq);
        next_seq
    }

    /// The sequence number of the next frame on this stream.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The sender finished its side with `rest` left unread: a clean end of the run (its state
    /// can go: the sender will never use the epoch again), or a violation when a frame was cut.
    pub fn finished(&self, rest: &[u8]) -> Result<(), Violation> {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(Violation {
                code: ErrorCode::PROTOCOL,
                reason: "stream ended inside a frame".into(),
            })
        }
    }
}

/// The bytes of a stream not taken by [`Receiver::next`] (at most the start of one frame), as
/// the buffer that its next read is appended to: without a copy when no message taken from
/// them is still held, otherwise a copy with room for `capacity` bytes (so that the next reads
/// are appended without growing it step by step, a copy each time). Empty, it holds nothing:
/// an idle stream keeps no buffer.
pub fn writable(unread: Bytes, capacity: usize) -> BytesMut {
    if unread.is_empty() {
        return BytesMut::new();
    }
    unread.try_into_mut().unwrap_or_else(|shared| {
        let mut copy = BytesMut::with_capacity(capacity.max(shared.len()));
        copy.extend_from_slice(&shared);
        copy
    })
}

/// The runs a receiver remembers, bounded: when the table is full, the oldest runs no stream
/// uses are forgotten (a later stream of a forgotten run may deliver a message again, §6.4).
#[derive(Debug)]
pub struct DedupTable<K, S> {
    entries: HashMap<K, S>,
    /// Keys in insertion order, oldest first; may hold keys already removed (skipped lazily).
    order: VecDeque<K>,
}

impl<K, S> Default for DedupTable<K, S> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Copy, S> DedupTable<K, S> {
    /// The state of run `key`, made with `new` if it is not known; first forgets the oldest
    /// runs for which `in_use` is false while the table holds `max` runs or more (runs in use
    /// go to the back; if all are in use, the table exceeds `max` until streams end).
    pub fn entry(
        &mut self,
        key: K,
        max: usize,
        in_use: impl Fn(&S) -> bool,
        new: impl FnOnce() -> S,
    ) -> &mut S {
        if !self.entries.contains_key(&key) {
            let mut tries = self.order.len();
            while self.entries.len() >= max && tries > 0 {
                tries -= 1;
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                match self.entries.get(&oldest) {
                    Some(state) if in_use(state) => self.order.push_back(oldest),
                    Some(_) => {
                        self.entries.remove(&oldest);
                    }
                    None => {}
                }
            }
            if self.order.len() > 2 * self.entries.len().max(64) {
                let entries = &self.entries;
                self.order.retain(|key| entries.contains_key(key));
            }
            self.order.push_back(key);
        }
        self.entries.entry(key).or_insert_with(new)
    }

    /// Forgets a run the sender ended.
    pub fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Runs remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no run is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(payloads: &[&[u8]]) -> Bytes {
        let mut out = Vec::new();
        for payload in payloads {
            frame::put_message(&mut out, payload);
        }
        Bytes::from(out)
    }

    fn drain(receiver: &mut Receiver, data: &Bytes, run: &mut RunState) -> Vec<Incoming> {
        let mut out = Vec::new();
        let mut unread = data.clone();
        while let Some(incoming) = receiver.next(&mut unread, run).unwrap() {
            if let Incoming::Message { seq, .. } = &incoming {
                receiver.delivered(run, seq + 1);
            }
            out.push(incoming);
        }
        assert!(unread.is_empty(), "every complete frame is taken");
        out
    }

    #[test]
    fn a_retransmission_on_a_new_stream_skips_what_was_delivered() {
        let mut run = RunState::default();
        let mut first = Receiver::open(0, 100, &mut run);
        assert_eq!(
            drain(&mut first, &messages(&[b"a", b"b"]), &mut run).len(),
            2
        );
        // The ACK was lost: the sender reopens from 0 and sends a, b, c.
        let mut second = Receiver::open(0, 100, &mut run);
        let got = drain(&mut second, &messages(&[b"a", b"b", b"c"]), &mut run);
        assert_eq!(got[..2], [Incoming::Duplicate, Incoming::Duplicate]);
        assert_eq!(
            got[2],
            Incoming::Message {
                seq: 2,
                payload: Bytes::from_static(b"c")
            }
        );
        assert_eq!(second.ack(), Some(3), "duplicates count for the ACK");
        assert_eq!(second.ack(), None);
    }

    #[test]
    fn two_streams_of_one_run_never_deliver_a_message_twice() {
        let mut run = RunState::default();
        let mut old = Receiver::open(0, 100, &mut run);
        let mut new = Receiver::open(0, 100, &mut run);
        let (mut old_unread, mut new_unread) = (
            messages(&[b"0", b"1", b"2"]),
            messages(&[b"0", b"1", b"2", b"3"]),
        );
        let mut delivered = Vec::new();
        // Interleaved, as the lock serializes them, until both streams are read.
        for turn in 0.. {
            if old_unread.is_empty() && new_unread.is_empty() {
                break;
            }
            let (receiver, unread) = if turn % 2 == 0 {
                (&mut old, &mut old_unread)
            } else {
                (&mut new, &mut new_unread)
            };
            if let Some(Incoming::Message { seq, .. }) = receiver.next(unread, &run).unwrap() {
                receiver.delivered(&mut run, seq + 1);
                delivered.push(seq);
            }
        }
        assert_eq!(delivered, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_first_seq_beyond_the_state_is_trusted() {
        let mut run = RunState { next_seq: Some(3) };
        let mut receiver = Receiver::open(10, 100, &mut run);
        assert_eq!(run.next_seq, Some(10));
        assert!(matches!(
            receiver.next(&mut messages(&[b"x"]), &run),
            Ok(Some(Incoming::Message { seq: 10, .. }))
        ));
    }

    #[test]
    fn oversized_and_unexpected_frames_end_the_stream() {
        let mut run = RunState::default();
        let mut receiver = Receiver::open(0, 3, &mut run);
        assert_eq!(
            receiver
                .next(&mut messages(&[b"four"]), &run)
                .unwrap_err()
                .code,
            ErrorCode::TOO_LARGE
        );
        let mut out = Vec::new();
        frame::put_frame(&mut out, &Frame::Ack { next_seq: 1 });
        let mut receiver = Receiver::open(0, 3, &mut run);
        assert_eq!(
            receiver.next(&mut Bytes::from(out), &run).unwrap_err().code,
            ErrorCode::PROTOCOL
        );
        assert!(receiver.finished(&[1]).is_err());
        assert!(receiver.finished(&[]).is_ok());
    }

    #[test]
    fn a_frame_cut_between_reads_is_taken_whole_and_what_is_unread_carries_over() {
        let mut run = RunState::default();
        let mut receiver = Receiver::open(0, 100, &mut run);
        let stream = messages(&[b"first", b"second", b"third"]);
        // The first read ends inside the second frame.
        let mut unread = Bytes::copy_from_slice(&stream[..9]);
        let first = receiver.next(&mut unread, &run).unwrap();
        assert!(
            matches!(&first, Some(Incoming::Message { seq: 0, payload }) if payload == "first")
        );
        assert_eq!(receiver.next(&mut unread, &run), Ok(None));
        let left = unread.len();
        // The first message is still held: what is left is copied, the payload stays intact.
        let mut buf = writable(unread, 64);
        assert_eq!((&buf[..], buf.capacity()), (&stream[9 - left..9], 64));
        buf.extend_from_slice(&stream[9..]);
        let mut unread = buf.freeze();
        let got: Vec<_> =
            std::iter::from_fn(|| receiver.next(&mut unread, &run).unwrap()).collect();
        assert_eq!(
            got,
            [
                Incoming::Message {
                    seq: 1,
                    payload: Bytes::from_static(b"second")
                },
                Incoming::Message {
                    seq: 2,
                    payload: Bytes::from_static(b"third")
                }
            ]
        );
        assert!(matches!(first, Some(Incoming::Message { payload, .. }) if payload == "first"));
        assert!(
            writable(unread, 64).capacity() == 0,
            "nothing left: no buffer kept"
        );
        // Nothing taken and nothing else holding it: the read's buffer comes back as it was.
        let partial = Bytes::from(stream[..3].to_vec());
        let mut receiver = Receiver::open(0, 100, &mut run);
        let mut unread = partial.clone();
        assert_eq!(receiver.next(&mut unread, &run), Ok(None));
        drop(partial);
        let pointer = unread.as_ptr();
        let back = writable(unread, 64);
        assert_eq!((back.as_ptr(), &back[..]), (pointer, &stream[..3]));
    }

    #[test]
    fn the_table_forgets_the_oldest_idle_runs_first() {
        let mut table: DedupTable<u32, (RunState, bool)> = DedupTable::default();
        let in_use = |state: &(RunState, bool)| state.1;
        table.entry(1, 2, in_use, || (RunState::default(), true));
        table.entry(2, 2, in_use, || (RunState::default(), false));
        table.entry(3, 2, in_use, || (RunState::default(), false));
        assert_eq!(table.len(), 2);
        assert!(table.entries.contains_key(&1), "in use: kept");
        assert!(!table.entries.contains_key(&2), "the oldest idle run went");
        table.remove(&1);
        assert_eq!(table.len(), 1);
    }
}
