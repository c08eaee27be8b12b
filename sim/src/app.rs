//! The applications: senders of numbered messages and what their payloads say.
//!
//! A sending application numbers its messages 0, 1, 2, … and keeps (as an application that
//! cares would, in its own durable log) which numbers were acknowledged. When a run fails, or
//! its node dies, every message of it not acknowledged is sent again in a later run, oldest
//! first: the documented way to get at-least-once delivery across failures (§6.5, `Timeout`
//! means "may or may not have been delivered").
//!
//! A payload carries its source and number, a filler whose bytes follow from the number, and
//! its own length, so the receiving side can tell a message that arrived cut, merged or
//! corrupted.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::rng::Rng;
use crate::scenario::SourceSpec;

/// Bytes of a payload before its filler: source (4), number (8), filler length (4).
const HEADER: usize = 16;

/// The filler of message `number` of `source`: `len` bytes, a block that says them repeated
/// (built by doubling, compared at once: byte loops are slow in a debug build).
fn filler(source: usize, number: u64, len: usize) -> Vec<u8> {
    let block = (number.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ source as u64).to_le_bytes();
    let mut out = Vec::with_capacity(len.max(8));
    out.extend_from_slice(&block);
    while out.len() < len {
        let more = out.len().min(len - out.len());
        out.extend_from_within(..more);
    }
    out.truncate(len);
    out
}

/// Makes the payload of message `number` of `source`, `filler` bytes longer than its header.
pub(crate) fn payload(source: usize, number: u64, filler_len: usize) -> Bytes {
    let mut out = Vec::with_capacity(HEADER + filler_len);
    out.extend_from_slice(&(source as u32).to_be_bytes());
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(&(filler_len as u32).to_be_bytes());
    out.extend_from_slice(&filler(source, number, filler_len));
    Bytes::from(out)
}

/// The (source, number) a payload says, if it is whole and intact.
pub(crate) fn parse(payload: &[u8]) -> Option<(usize, u64)> {
    let (source, rest) = payload.split_first_chunk::<4>()?;
    let (number, rest) = rest.split_first_chunk::<8>()?;
    let (filler_len, rest) = rest.split_first_chunk::<4>()?;
    let number = u64::from_be_bytes(*number);
    let source = u32::from_be_bytes(*source) as usize;
    let intact = rest.len() == u32::from_be_bytes(*filler_len) as usize
        && rest == filler(source, number, rest.len()).as_slice();
    intact.then_some((source, number))
}

/// A sending application.
#[derive(Debug)]
pub(crate) struct Source {
    /// What it is.
    pub(crate) spec: SourceSpec,
    /// The next number never sent.
    next_number: u64,
    /// Numbers to send again (their run failed), oldest first.
    resend: VecDeque<u64>,
    /// Which numbers were acknowledged.
    acked: Vec<bool>,
    /// How many were.
    acked_count: u64,
    /// When the application is woken next to send (one wake-up at a time).
    pub(crate) wake: Option<std::time::Duration>,
}

impl Source {
    /// The application of `spec`, before it sent anything.
    pub(crate) fn new(spec: SourceSpec) -> Self {
        let acked = vec![false; spec.messages as usize];
        Self {
            spec,
            next_number: 0,
            resend: VecDeque::new(),
            acked,
            acked_count: 0,
            wake: None,
        }
    }

    /// The next message to send, if any: its number and payload.
    pub(crate) fn peek(&mut self, rng: &mut Rng, id: usize) -> Option<(u64, Bytes)> {
        let number = match self.resend.front() {
            Some(number) => *number,
            None if self.next_number < self.spec.messages => self.next_number,
            None => return None,
        };
        let filler = rng.index(self.spec.max_payload.saturating_sub(HEADER) + 1);
        Some((number, payload(id, number, filler)))
    }

    /// The message [`Source::peek`] gave was queued.
    pub(crate) fn sent(&mut self, number: u64) {
        if self.resend.front() == Some(&number) {
            self.resend.pop_front();
        } else if number == self.next_number {
            self.next_number += 1;
        }
    }

    /// The receiver accepted message `number`.
    pub(crate) fn acknowledged(&mut self, number: u64) {
        if let Some(acked) = self.acked.get_mut(number as usize) {
            if !*acked {
                *acked = true;
                self.acked_count += 1;
            }
        }
    }

    /// Messages whose run failed: sent again later, before anything new, in number order.
    pub(crate) fn failed(&mut self, numbers: impl IntoIterator<Item = u64>) {
        let mut all: Vec<u64> = self.resend.drain(..).collect();
        all.extend(numbers);
        all.sort_unstable();
        all.dedup();
        self.resend = all.into_iter().filter(|n| !self.is_acked(*n)).collect();
    }

    /// Whether message `number` was acknowledged.
    pub(crate) fn is_acked(&self, number: u64) -> bool {
        self.acked.get(number as usize).copied().unwrap_or(false)
    }

    /// Whether every message was acknowledged.
    pub(crate) fn is_done(&self) -> bool {
        self.acked_count == self.spec.messages
    }

    /// Whether it has something to send now.
    pub(crate) fn has_work(&self) -> bool {
        !self.resend.is_empty() || self.next_number < self.spec.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_says_its_source_and_number_and_a_damaged_one_nothing() {
        let bytes = payload(3, 99, 20);
        assert_eq!(parse(&bytes), Some((3, 99)));
        assert_eq!(parse(&bytes[..bytes.len() - 1]), None);
        let mut damaged = bytes.to_vec();
        damaged[HEADER + 5] ^= 1;
        assert_eq!(parse(&damaged), None);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(parse(&longer), None);
    }
}
