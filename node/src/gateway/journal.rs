//! A session's journal of requests: the `ref`s the gateway has taken from the session's
//! client, and the answers it still remembers. A client sends a request again when the
//! connection that carried it was lost before its answer arrived; the journal makes sure the
//! request is carried out once all the same (docs/GATEWAY.md §5.8):
//!
//! - a request being carried out is not started again: its answer goes to the connection
//!   that sent it last, once ready;
//! - an answered request is answered again from the journal;
//! - a request whose answer the journal no longer holds (the client confirmed it, or it was
//!   the oldest answer when the journal was full) is answered `unknown_outcome`.
//!
//! Bounded: answers are kept up to a count and a byte budget (oldest `ref` forgotten first);
//! requests in progress are bounded by the connections' `max_inflight`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use super::protocol::Encoded;

/// What the journal says about a request as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Not taken before: carry it out (it is now in progress).
    New,
    /// Being carried out: its answer goes to the newest connection that sent it.
    InProgress,
    /// Answered before: this is the answer, to send again.
    Answered(Encoded),
    /// Taken before, and its answer forgotten.
    Forgotten,
}

#[derive(Debug)]
enum Entry {
    /// Being carried out; the answer goes to this connection (the newest to send the
    /// request).
    InProgress {
        connection: u64,
    },
    Answered(Encoded),
}

/// The journal of one session.
#[derive(Debug)]
pub(crate) struct Journal {
    entries: BTreeMap<u64, Entry>,
    /// Every `ref` up to this one that is not in `entries` was taken (or, if the client skipped
    /// it, never will be) and its answer is forgotten.
    forgotten: Option<u64>,
    answers: usize,
    answer_bytes: usize,
    max_answers: usize,
    max_answer_bytes: usize,
}

impl Journal {
    pub(crate) fn new(max_answers: usize, max_answer_bytes: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            forgotten: None,
            answers: 0,
            answer_bytes: 0,
            max_answers,
            max_answer_bytes,
        }
    }

    /// Request `reference` arrived on `connection`.
    pub(crate) fn arrive(&mut self, reference: u64, connection: u64) -> Arrival {
        match self.entries.get_mut(&reference) {
            Some(Entry::InProgress { connection: asker }) => {
                // Connection ids grow: an older connection still reading (one taken over)
                // never takes the answer from a newer one.
                *asker = (*asker).max(connection);
                Arrival::InProgress
            }
            Some(Entry::Answered(answer)) => Arrival::Answered(answer.clone()),
            None if self.forgotten.is_some_and(|upto| reference <= upto) => Arrival::Forgotten,
            None => {
                self.entries
                    .insert(reference, Entry::InProgress { connection });
                Arrival::New
            }
        }
    }

    /// Request `reference` has its answer: kept, and the connection to send it to returned
    /// (`None` if the client confirmed the request meanwhile: nobody waits for it).
    pub(crate) fn answer(&mut self, reference: u64, answer: &Encoded) -> Option<u64> {
        let entry = self.entries.get_mut(&reference)?;
        let Entry::InProgress { connection } = *entry else {
            return None;
        };
        *entry = Entry::Answered(answer.clone());
        self.answers += 1;
        self.answer_bytes += answer.len();
        while self.answers > self.max_answers || self.answer_bytes > self.max_answer_bytes {
            self.forget_oldest_answer();
        }
        Some(connection)
    }

    /// The client has, or wants no more, the answer of every request up to `reference`.
    pub(crate) fn confirm(&mut self, reference: u64) {
        let kept = self.entries.split_off(&reference.saturating_add(1));
        for entry in std::mem::replace(&mut self.entries, kept).into_values() {
            self.release(&entry);
        }
        self.forget_upto(reference);
    }

    fn forget_oldest_answer(&mut self) {
        let oldest = self
            .entries
            .iter()
            .find(|(_, entry)| matches!(entry, Entry::Answered(_)))
            .map(|(reference, _)| *reference);
        let Some(reference) = oldest else {
            return;
        };
        if let Some(entry) = self.entries.remove(&reference) {
            self.release(&entry);
        }
        self.forget_upto(reference);
    }

    fn forget_upto(&mut self, reference: u64) {
        self.forgotten = Some(self.forgotten.map_or(reference, |f| f.max(reference)));
    }

    fn release(&mut self, entry: &Entry) {
        if let Entry::Answered(answer) = entry {
            self.answers -= 1;
            self.answer_bytes -= answer.len();
        }
    }

    /// Requests in the journal (in progress or answered).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(reference: u64) -> Encoded {
        Encoded::Text(format!(r#"{{"ref":{reference},"type":"ok"}}"#))
    }

    #[test]
    fn a_request_is_taken_once() {
        let mut journal = Journal::new(8, 1 << 20);
        assert_eq!(journal.arrive(1, 10), Arrival::New);
        // Sent again on a newer connection while in progress: the answer goes there, also if
        // the older one sends it once more.
        assert_eq!(journal.arrive(1, 11), Arrival::InProgress);
        assert_eq!(journal.arrive(1, 10), Arrival::InProgress);
        assert_eq!(journal.answer(1, &ok(1)), Some(11));
        assert_eq!(journal.arrive(1, 12), Arrival::Answered(ok(1)));
        // Answering twice does nothing.
        assert_eq!(journal.answer(1, &ok(1)), None);
    }

    #[test]
    fn confirmed_answers_are_forgotten() {
        let mut journal = Journal::new(8, 1 << 20);
        for reference in 1..=3 {
            assert_eq!(journal.arrive(reference, 1), Arrival::New);
        }
        journal.answer(1, &ok(1));
        journal.confirm(2);
        assert_eq!(journal.len(), 1);
        assert_eq!(journal.arrive(1, 1), Arrival::Forgotten);
        // A confirmed request in progress answers nobody.
        assert_eq!(journal.arrive(2, 1), Arrival::Forgotten);
        assert_eq!(journal.answer(2, &ok(2)), None);
        assert_eq!(journal.arrive(3, 2), Arrival::InProgress);
        assert_eq!(journal.arrive(4, 2), Arrival::New);
    }

    #[test]
    fn the_oldest_answers_go_first_when_full() {
        let mut journal = Journal::new(2, 1 << 20);
        for reference in 1..=4 {
            journal.arrive(reference, 1);
        }
        // 1 stays in progress; 2, 3, 4 are answered: 2 is forgotten.
        for reference in 2..=4 {
            journal.answer(reference, &ok(reference));
        }
        assert_eq!(journal.arrive(2, 1), Arrival::Forgotten);
        assert_eq!(journal.arrive(1, 1), Arrival::InProgress);
        assert_eq!(journal.arrive(3, 1), Arrival::Answered(ok(3)));
        // The byte budget counts too.
        let mut journal = Journal::new(100, ok(1).len() + 1);
        journal.arrive(1, 1);
        journal.arrive(2, 1);
        journal.answer(1, &ok(1));
        journal.answer(2, &ok(2));
        assert_eq!(journal.arrive(1, 1), Arrival::Forgotten);
        assert_eq!(journal.arrive(2, 1), Arrival::Answered(ok(2)));
    }
}
