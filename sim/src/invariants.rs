//! The invariants, checked as events happen (the memory bounds and the one-connection rule are
//! checked by the world after every step). The first violation stops the run.
//!
//! A **transmission** is one message of one run: (run, seq). It is **accepted** by the target
//! node when it enters a volatile mailbox's queue, or when a durable mailbox's store has it on
//! disk; it is **handed** when the application takes it from the queue.
//!
//! 1. **No acknowledged message lost.** A transmission acknowledged to its sender was accepted
//!    before. Then: in a *volatile* mailbox it stays in the queue until handed — unless the
//!    receiving node crashes, which loses its queue (and only then may an acknowledged message
//!    never be handed); in a *durable* mailbox it stays in the store until the application
//!    removed it, across crashes and power losses: after every restart the store holds exactly
//!    the messages stored and not removed, with their payloads.
//! 2. **Per-sender order** (§6.6). Within a run, transmissions are accepted for the first time
//!    in seq order without gaps, and the application takes them for the first time in that
//!    order (a durable mailbox's replay included); a run that ended idle was
//!    wholly accepted before the next run of its conversation is accepted at all. Runs that
//!    failed are not ordered against the next (§6.6: no order across runs).
//! 3. **Nothing handed twice beyond the documented cases.** A transmission is accepted again
//!    only into a *volatile* mailbox and only after the run's state at the receiver was lost —
//!    evicted from the bounded table or lost in a restart (§6.4) — never within one instance
//!    of the state, never because the run's end (FIN) removed it, and never into a durable
//!    mailbox (§6.4a: exactly once into the store). A stored message is handed again only
//!    after a restart, while it was not removed (§6.4a: at least once, same id). Messages the
//!    application sent again after a run failed are new transmissions (§6.5).
//! 4. **No damage.** Every payload arrives whole, and says the source and number its run
//!    numbered it with; runs between honest nodes never fail with a protocol error.
//! 5. **Liveness.** Once the faults are over, every message is acknowledged and handed at
//!    least once (except those a volatile receiver's crash lost).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ferry::store::StoredMessage;
use ferry_proto::sender::RunFailure;

use crate::app;
use crate::mailbox::Queued;
use crate::outbound::SimError;

/// A transmission accepted by its target node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    /// The target node.
    pub(crate) node: usize,
    /// Its incarnation.
    pub(crate) incarnation: u64,
    /// The run.
    pub(crate) run: usize,
    /// The message's sequence number in the run.
    pub(crate) seq: u64,
    /// The instance of the run's state it was accepted under.
    pub(crate) generation: u64,
    /// Its index in the store, for a durable mailbox.
    pub(crate) index: Option<u64>,
}

/// Why a run's state at the receiver was replaced by a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// The bounded table forgot it.
    Eviction,
    /// The node restarted.
    Restart,
    /// The run's end (FIN) removed it.
    Finished,
}

#[derive(Debug, Default)]
struct Transmission {
    /// Each acceptance: the incarnation and the state's generation.
    acceptances: Vec<(u64, u64)>,
    /// Times the application was handed it.
    handed: u32,
}

#[derive(Debug)]
struct Run {
    source: usize,
    started: Duration,
    /// Numbers by seq.
    numbers: Vec<u64>,
    transmissions: Vec<Transmission>,
    /// When it ended, and whether idle (everything acknowledged).
    ended: Option<(Duration, bool)>,
    /// The first seq never accepted.
    prefix: u64,
    /// The largest seq handed so far.
    handed_max: Option<u64>,
    /// The last state instance seen at the receiver: (incarnation, generation).
    state: Option<(u64, u64)>,
    /// The run's end removed its state since.
    forgotten: bool,
    /// How each new state instance came about.
    losses: BTreeMap<u64, Loss>,
}

#[derive(Debug, Default)]
struct SourceRecord {
    runs: Vec<usize>,
    /// Times each number was handed.
    handed: Vec<u32>,
    /// Numbers a volatile receiver's crash lost.
    lost: Vec<bool>,
}

#[derive(Debug)]
struct StoredRecord {
    source: usize,
    number: u64,
    /// The transmission it was.
    origin: (usize, u64),
    removed: bool,
    /// The incarnation it was last handed in.
    handed_in: Option<u64>,
}

/// The checker.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    runs: Vec<Run>,
    epochs: HashMap<u64, usize>,
    sources: Vec<SourceRecord>,
    /// What each durable mailbox (node, slot) stored, by index.
    stored: BTreeMap<(usize, usize), BTreeMap<u64, StoredRecord>>,
    /// The first violation: what, and the details.
    pub(crate) violation: Option<(&'static str, String)>,
    /// What happened that the invariants allow, for the outcome.
    pub(crate) seen: Seen,
}

/// Documented cases the run went through.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Seen {
    /// Transmissions accepted again into a volatile mailbox after their run's state was lost.
    pub(crate) redelivered: u64,
    /// Run states replaced after an eviction from the table.
    pub(crate) evicted: u64,
    /// Run states replaced after a restart.
    pub(crate) restarted: u64,
    /// Stored messages handed again after a restart.
    pub(crate) replayed: u64,
}

impl Checker {
    /// A checker for `sources` sending applications of `messages` messages each.
    pub(crate) fn new(messages: impl IntoIterator<Item = u64>) -> Self {
        let sources = messages
            .into_iter()
            .map(|count| SourceRecord {
                runs: Vec::new(),
                handed: vec![0; count as usize],
                lost: vec![false; count as usize],
            })
            .collect();
        Self {
            sources,
            ..Self::default()
        }
    }

    /// Runs started.
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Records a violation (the first one counts).
    pub(crate) fn fail(&mut self, what: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some((what, detail));
        }
    }

    /// A run of `source` begins with `epoch`, towards node `target`; its index.
    pub(crate) fn run_started(
        &mut self,
        source: usize,
        epoch: u64,
        _target: usize,
        now: Duration,
    ) -> usize {
        let run = self.runs.len();
        if self.epochs.insert(epoch, run).is_some() {
            self.fail("two runs share an epoch", format!("epoch {epoch:x}"));
        }
        self.runs.push(Run {
            source,
            started: now,
            numbers: Vec::new(),
            transmissions: Vec::new(),
            ended: None,
            prefix: 0,
            handed_max: None,
            state: None,
            forgotten: false,
            losses: BTreeMap::new(),
        });
        if let Some(record) = self.sources.get_mut(source) {
            record.runs.push(run);
        }
        run
    }

    /// The run of an epoch.
    pub(crate) fn run_of_epoch(&self, epoch: u64) -> Option<usize> {
        self.epochs.get(&epoch).copied()
    }

    /// Message `number` was queued in `run` with ticket `ticket` (its seq).
    pub(crate) fn pushed(&mut self, run: usize, ticket: u64, number: u64) {
        let Some(r) = self.runs.get_mut(run) else {
            return;
        };
        if ticket != r.numbers.len() as u64 {
            let detail = format!("run {run}: ticket {ticket} after {}", r.numbers.len());
            return self.fail("tickets are not consecutive", detail);
        }
        r.numbers.push(number);
        r.transmissions.push(Transmission::default());
    }

    /// The run ended: idle (`None`) or failed.
    pub(crate) fn run_ended(
        &mut self,
        run: usize,
        failure: Option<&RunFailure<SimError>>,
        now: Duration,
    ) {
        if let Some(r) = self.runs.get_mut(run) {
            r.ended = Some((now, failure.is_none()));
        }
        match failure {
            Some(RunFailure::Protocol(why)) => {
                self.fail(
                    "a run failed with a protocol error",
                    format!("run {run}: {why}"),
                );
            }
            Some(RunFailure::Closed { code, reason }) => self.fail(
                "a receiver closed a run for good",
                format!("run {run}: code {} {reason}", code.0),
            ),
            _ => {}
        }
    }

    /// The run's node crashed: it ends without a word.
    pub(crate) fn run_crashed(&mut self, run: usize, now: Duration) {
        if let Some(r) = self.runs.get_mut(run) {
            r.ended = Some((now, false));
        }
    }

    /// A stream of `run` at `node` works with the instance `generation` of the run's state.
    pub(crate) fn run_state(
        &mut self,
        _node: usize,
        incarnation: u64,
        run: usize,
        generation: u64,
    ) {
        let Some(r) = self.runs.get_mut(run) else {
            return;
        };
        match r.state {
            Some((_, last)) if last == generation => {}
            Some((last_incarnation, _)) => {
                let loss = if last_incarnation != incarnation {
                    Loss::Restart
                } else if r.forgotten {
                    Loss::Finished
                } else {
                    Loss::Eviction
                };
                r.losses.insert(generation, loss);
                match loss {
                    Loss::Eviction => self.seen.evicted += 1,
                    Loss::Restart => self.seen.restarted += 1,
                    Loss::Finished => {}
                }
                r.state = Some((incarnation, generation));
                r.forgotten = false;
            }
            None => r.state = Some((incarnation, generation)),
        }
    }

    /// Whether the run's end removed its state at its receiver since a stream last took it.
    pub(crate) fn forgotten(&self, run: usize) -> bool {
        self.runs.get(run).is_some_and(|r| r.forgotten)
    }

    /// The run's end removed its state at its receiver.
    pub(crate) fn run_forgotten(&mut self, _node: usize, run: usize) {
        if let Some(r) = self.runs.get_mut(run) {
            r.forgotten = true;
        }
    }

    /// A transmission was accepted; `payload` is what arrived.
    pub(crate) fn accepted(&mut self, a: Accepted, payload: &[u8]) {
        let Some((source, number)) = app::parse(payload) else {
            return self.fail(
                "a message arrived damaged",
                format!("{a:?}: {payload:02x?}"),
            );
        };
        let Some(r) = self.runs.get(a.run) else {
            return self.fail("a message of an unknown run arrived", format!("{a:?}"));
        };
        let expected = r.numbers.get(a.seq as usize).map(|n| (r.source, *n));
        if expected != Some((source, number)) {
            return self.fail(
                "a message arrived under another sequence number",
                format!("{a:?} carries source {source} number {number}, expected {expected:?}"),
            );
        }
        let first = r.transmissions[a.seq as usize].acceptances.is_empty();
        if first {
            if a.seq != r.prefix {
                let detail = format!("{a:?}: seq {} expected next ({} seen)", a.seq, r.prefix);
                return self.fail("messages of a run were accepted out of order", detail);
            }
            // A run that ended idle was wholly accepted before this later one.
            let started = r.started;
            let earlier = self.sources[source]
                .runs
                .iter()
                .map(|&other| (other, &self.runs[other]))
                .find(|(other, o)| {
                    *other != a.run
                        && o.ended.is_some_and(|(at, idle)| idle && at <= started)
                        && o.prefix < o.numbers.len() as u64
                });
            if let Some((other, _)) = earlier {
                let detail = format!("run {other} ended idle, then run {} was accepted", a.run);
                return self.fail("a run that ended idle was not all accepted first", detail);
            }
            self.runs[a.run].prefix += 1;
        } else if a.index.is_some() {
            return self.fail("a message was stored twice", format!("{a:?}"));
        } else {
            let r = &self.runs[a.run];
            let Some(&(_, last)) = r.transmissions[a.seq as usize].acceptances.last() else {
                return;
            };
            let losses: Vec<Loss> = if a.generation > last {
                r.losses
                    .range(last + 1..=a.generation)
                    .map(|(_, loss)| *loss)
                    .collect()
            } else {
                Vec::new()
            };
            if losses.is_empty() {
                let detail = format!("{a:?}: accepted before under the same state ({last})");
                return self.fail("a message was delivered twice", detail);
            }
            if !losses
                .iter()
                .any(|l| matches!(l, Loss::Eviction | Loss::Restart))
            {
                let detail = format!("{a:?}: the run's end removed its state ({losses:?})");
                return self.fail("a message was delivered again after its run ended", detail);
            }
            self.seen.redelivered += 1;
        }
        self.runs[a.run].transmissions[a.seq as usize]
            .acceptances
            .push((a.incarnation, a.generation));
    }

    /// A transmission was acknowledged to its sender.
    pub(crate) fn acked(&mut self, run: usize, seq: u64) {
        let accepted = self
            .runs
            .get(run)
            .and_then(|r| r.transmissions.get(seq as usize))
            .is_some_and(|t| !t.acceptances.is_empty());
        if !accepted {
            self.fail(
                "a message was acknowledged but never accepted",
                format!("run {run} seq {seq}"),
            );
        }
    }

    /// A durable mailbox (`slot` of the accepting node) stored a transmission.
    pub(crate) fn stored(&mut self, a: Accepted, slot: usize, payload: &[u8]) {
        let (Some(index), Some((source, number))) = (a.index, app::parse(payload)) else {
            return;
        };
        let record = StoredRecord {
            source,
            number,
            origin: (a.run, a.seq),
            removed: false,
            handed_in: None,
        };
        let mailbox = self.stored.entry((a.node, slot)).or_default();
        if mailbox.insert(index, record).is_some() {
            let detail = format!("node {} slot {slot} index {index}", a.node);
            self.fail("the store gave an index twice", detail);
        }
    }

    /// The application removed a stored message, and the store committed it.
    pub(crate) fn removed(&mut self, node: usize, slot: usize, index: u64) {
        if let Some(record) = self
            .stored
            .get_mut(&(node, slot))
            .and_then(|m| m.get_mut(&index))
        {
            record.removed = true;
        }
    }

    /// The application of `node` took a message from mailbox `slot`.
    pub(crate) fn handed(&mut self, node: usize, incarnation: u64, slot: usize, message: &Queued) {
        let mut origin = message.origin;
        let Some((source, number)) = app::parse(&message.payload) else {
            return self.fail(
                "a message was handed damaged",
                format!("node {node} slot {slot}"),
            );
        };
        if let Some(index) = message.index {
            let Some(record) = self
                .stored
                .get_mut(&(node, slot))
                .and_then(|m| m.get_mut(&index))
            else {
                return self.fail(
                    "a message the store never took was handed",
                    format!("index {index}"),
                );
            };
            if (record.source, record.number) != (source, number) {
                return self.fail(
                    "a stored message changed",
                    format!("index {index}: source {source} number {number}"),
                );
            }
            if record.removed {
                return self.fail("a removed message was handed", format!("index {index}"));
            }
            if record.handed_in == Some(incarnation) {
                return self.fail(
                    "a stored message was handed twice without a restart",
                    format!("index {index}"),
                );
            }
            if record.handed_in.is_some() {
                self.seen.replayed += 1;
            }
            record.handed_in = Some(incarnation);
            origin = Some(record.origin);
        }
        if let Some((run, seq)) = origin {
            if let Some(r) = self.runs.get_mut(run) {
                if let Some(t) = r.transmissions.get_mut(seq as usize) {
                    t.handed += 1;
                    let first = t.handed == 1;
                    if first && r.handed_max.is_some_and(|max| seq <= max) {
                        let detail = format!("run {run}: seq {seq} after {:?}", r.handed_max);
                        return self.fail("messages of a run were handed out of order", detail);
                    }
                    if first {
                        r.handed_max = Some(seq);
                    }
                    if message.index.is_none() && t.handed as usize > t.acceptances.len() {
                        return self.fail(
                            "a message was handed more often than accepted",
                            format!("run {run} seq {seq}"),
                        );
                    }
                }
            }
        }
        if let Some(count) = self
            .sources
            .get_mut(source)
            .and_then(|s| s.handed.get_mut(number as usize))
        {
            *count += 1;
        }
    }

    /// A volatile mailbox's queue was lost in a crash, with these messages.
    pub(crate) fn lost_in_crash(&mut self, lost: &[Queued]) {
        for message in lost {
            if let Some((source, number)) = app::parse(&message.payload) {
                if let Some(flag) = self
                    .sources
                    .get_mut(source)
                    .and_then(|s| s.lost.get_mut(number as usize))
                {
                    *flag = true;
                }
            }
        }
    }

    /// A durable mailbox reopened after a restart and its store holds `pending`: exactly the
    /// messages stored and not removed.
    pub(crate) fn reopened(&mut self, node: usize, slot: usize, pending: &[StoredMessage]) {
        let empty = BTreeMap::new();
        let records = self.stored.get(&(node, slot)).unwrap_or(&empty);
        let mut held = pending.iter().map(|m| m.index).peekable();
        for (index, record) in records {
            if record.removed {
                continue;
            }
            if held.peek() != Some(index) {
                let detail = format!(
                    "node {node} slot {slot}: index {index} (source {} number {}) is gone",
                    record.source, record.number
                );
                return self.fail("a stored message was lost", detail);
            }
            held.next();
        }
        if let Some(extra) = held.next() {
            let detail = format!("node {node} slot {slot}: index {extra}");
            return self.fail("the store holds a message removed or never stored", detail);
        }
        for message in pending {
            let parsed = app::parse(&message.payload);
            let record = records.get(&message.index).map(|r| (r.source, r.number));
            if parsed != record {
                let detail = format!("index {}: {parsed:?} instead of {record:?}", message.index);
                return self.fail("a stored message changed", detail);
            }
        }
    }

    /// At the end: every message was handed at least once, unless a volatile receiver's crash
    /// lost it.
    pub(crate) fn finish(&mut self) {
        for (source, record) in self.sources.iter().enumerate() {
            for (number, (&handed, &lost)) in record.handed.iter().zip(&record.lost).enumerate() {
                if handed == 0 && !lost {
                    let detail = format!("source {source} number {number}");
                    self.violation
                        .get_or_insert(("a message was never handed to the application", detail));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checker with one source of `n` messages and one run carrying them all.
    fn one_run(n: u64) -> Checker {
        let mut check = Checker::new([n]);
        let run = check.run_started(0, 0xe, 1, Duration::ZERO);
        for seq in 0..n {
            check.pushed(run, seq, seq);
        }
        check
    }

    fn accepted(seq: u64, generation: u64, index: Option<u64>) -> Accepted {
        Accepted {
            node: 1,
            incarnation: 1,
            run: 0,
            seq,
            generation,
            index,
        }
    }

    fn accept(check: &mut Checker, seq: u64, generation: u64) {
        let payload = app::payload(0, seq, 5);
        check.accepted(accepted(seq, generation, None), &payload);
    }

    fn broken(check: &Checker) -> &'static str {
        check.violation.as_ref().map_or("nothing", |(what, _)| what)
    }

    #[test]
    fn a_run_accepted_in_order_and_acknowledged_passes() {
        let mut check = one_run(3);
        check.run_state(1, 1, 0, 1);
        for seq in 0..3 {
            accept(&mut check, seq, 1);
            check.acked(0, seq);
        }
        assert_eq!(broken(&check), "nothing");
    }

    #[test]
    fn a_gap_is_out_of_order() {
        let mut check = one_run(3);
        accept(&mut check, 0, 1);
        accept(&mut check, 2, 1);
        assert_eq!(
            broken(&check),
            "messages of a run were accepted out of order"
        );
    }

    #[test]
    fn an_acknowledgement_of_what_was_never_accepted_is_a_loss() {
        let mut check = one_run(2);
        accept(&mut check, 0, 1);
        check.acked(0, 1);
        assert_eq!(
            broken(&check),
            "a message was acknowledged but never accepted"
        );
    }

    #[test]
    fn a_duplicate_is_allowed_only_after_the_state_was_lost_to_an_eviction_or_a_restart() {
        let mut check = one_run(2);
        check.run_state(1, 1, 0, 1);
        accept(&mut check, 0, 1);
        // Evicted: a later stream of the run works with a new state, and delivers 0 again.
        check.run_state(1, 1, 0, 2);
        accept(&mut check, 0, 2);
        assert_eq!(broken(&check), "nothing");
        assert_eq!(check.seen.redelivered, 1);
        // Within one state, never.
        accept(&mut check, 0, 2);
        assert_eq!(broken(&check), "a message was delivered twice");
    }

    #[test]
    fn a_duplicate_after_the_runs_end_removed_its_state_is_not_documented() {
        let mut check = one_run(1);
        check.run_state(1, 1, 0, 1);
        accept(&mut check, 0, 1);
        check.run_forgotten(1, 0);
        check.run_state(1, 1, 0, 2);
        accept(&mut check, 0, 2);
        assert_eq!(
            broken(&check),
            "a message was delivered again after its run ended"
        );
    }

    #[test]
    fn a_durable_mailbox_stores_a_message_once() {
        let mut check = one_run(1);
        let payload = app::payload(0, 0, 5);
        check.accepted(accepted(0, 1, Some(0)), &payload);
        check.run_state(1, 2, 0, 2);
        check.accepted(accepted(0, 2, Some(1)), &payload);
        assert_eq!(broken(&check), "a message was stored twice");
    }

    #[test]
    fn a_stored_message_missing_after_a_restart_is_lost() {
        let mut check = one_run(2);
        for seq in 0..2 {
            let payload = app::payload(0, seq, 5);
            let a = accepted(seq, 1, Some(seq));
            check.accepted(a, &payload);
            check.stored(a, 0, &payload);
        }
        check.removed(1, 0, 0);
        let kept = StoredMessage {
            index: 1,
            from: crate::keys::pool()[0].address(0),
            payload: app::payload(0, 1, 5),
        };
        check.reopened(1, 0, std::slice::from_ref(&kept));
        assert_eq!(broken(&check), "nothing");
        check.reopened(1, 0, &[]);
        assert_eq!(broken(&check), "a stored message was lost");
    }

    #[test]
    fn a_damaged_or_misnumbered_message_is_caught() {
        let mut check = one_run(2);
        let mut damaged = app::payload(0, 0, 5).to_vec();
        damaged.pop();
        check.accepted(accepted(0, 1, None), &damaged);
        assert_eq!(broken(&check), "a message arrived damaged");
        let mut check = one_run(2);
        check.accepted(accepted(0, 1, None), &app::payload(0, 1, 5));
        assert_eq!(
            broken(&check),
            "a message arrived under another sequence number"
        );
    }

    #[test]
    fn a_message_never_handed_fails_the_end_unless_a_crash_lost_it() {
        let mut check = one_run(1);
        check.finish();
        assert_eq!(
            broken(&check),
            "a message was never handed to the application"
        );
        let mut check = one_run(1);
        let lost = Queued {
            payload: app::payload(0, 0, 5),
            index: None,
            origin: Some((0, 0)),
        };
        check.lost_in_crash(&[lost]);
        check.finish();
        assert_eq!(broken(&check), "nothing");
    }
}
