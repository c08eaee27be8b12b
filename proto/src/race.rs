//! The race of a dial (docs/PROTOCOL.md §2.5): which candidate routes start when, when a
//! silent one gets a fresh attempt, which attempts to abandon, and what the dial reports when
//! every route failed. Pure bookkeeping on the time it is given; the runtime makes the
//! attempts.
//!
//! A fresh attempt is for a candidate that has not answered: its packets or the peer's may
//! have been lost, and QUIC's own retransmission of a handshake backs off to seconds. Once the
//! peer has answered an attempt, QUIC has measured the path and recovers that handshake's
//! losses itself, so the candidate gets no fresh attempt while the answered one lives, and its
//! attempts still waiting for an answer are abandoned: each would only cost both nodes a
//! handshake. (Attempts the peer answered go on: one may have completed on its side.) A dial
//! keeps a silent candidate's newest attempts for 4 s ([`DIAL_PACE`]), so that a path with a
//! round trip longer than the re-attempt interval still answers one of them before it is
//! replaced.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::route::{Candidate, Route};

/// Time between the starts of two direct candidates.
pub const STAGGER: Duration = Duration::from_millis(150);
/// Time from the start of a dial to the start of its first relay candidate, when it has direct
/// candidates too: a relayed connection costs the relay's bandwidth, so a direct route that
/// answers quickly should win.
pub const RELAY_DELAY: Duration = Duration::from_millis(100);
/// A dial's pace: a silent candidate gets a fresh attempt every 500 ms (QUIC's own
/// retransmissions of a handshake back off to seconds), and keeps its newest eight, so an
/// attempt lives 4 s: a path whose round trip is that long (a satellite hop with full queues
/// both ways) is answered before its attempt is replaced.
pub const DIAL_PACE: Pace = Pace {
    reattempt: Duration::from_millis(500),
    live: 8,
};
/// Candidates of one dial at most.
pub const MAX_CANDIDATES: usize = 12;

/// How often a silent candidate gets a fresh attempt, and how many of its attempts stay in
/// flight (a fresh one replaces the oldest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Time from one attempt of a candidate to its next, while it has not answered.
    pub reattempt: Duration,
    /// Attempts of one candidate in flight at once (at least 1).
    pub live: usize,
}

/// One attempt at one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttemptId(u64);

/// How an attempt failed, for the race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The candidate will answer the same way again (another node, another protocol, an
    /// address that cannot be sent to): no more attempts there.
    EndsCandidate,
    /// Nothing answered in time (or the attempt was replaced by a fresh one).
    Timeout,
    /// Anything else; the candidate stays in the race.
    Other,
}

/// The state of one dial's candidates. `E` is the runtime's error type.
#[derive(Debug)]
pub struct Race<E> {
    entries: Vec<Entry<E>>,
    pace: Pace,
    next_attempt: u64,
}

#[derive(Debug)]
struct Entry<E> {
    candidate: Candidate,
    next_start: Option<Instant>,
    live: VecDeque<AttemptId>,
    /// When its last attempt started: a candidate taken up again keeps the pace.
    last_start: Option<Instant>,
    /// Its attempts that started and have not failed, `live` and replaced ones alike (a
    /// replaced attempt the peer answered runs on).
    running: Vec<AttemptId>,
    /// The running attempts the peer answered; while there is one, `next_start` is None.
    answered: Vec<AttemptId>,
    /// A failure ended the candidate.
    ended: bool,
    /// The most telling failure so far.
    error: Option<(E, Failure)>,
}

impl<E> Entry<E> {
    fn is_out(&self) -> bool {
        self.ended
    }

    /// Its running attempts the peer has not answered.
    fn unanswered(&self) -> impl Iterator<Item = AttemptId> + '_ {
        self.running
            .iter()
            .filter(|running| !self.answered.contains(running))
            .copied()
    }
}

impl<E> Race<E> {
    /// A race of `candidates` (in the order they start) begun at `start`, giving each silent
    /// candidate fresh attempts at `pace`.
    pub fn new(candidates: Vec<Candidate>, start: Instant, pace: Pace) -> Self {
        let has_direct = candidates.iter().any(|candidate| !candidate.is_relay());
        let preferred_relay = candidates.first().is_some_and(Candidate::is_relay);
        let relay_start = if has_direct && !preferred_relay {
            start + RELAY_DELAY
        } else {
            start
        };
        let (mut directs, mut relays) = (0u32, 0u32);
        let entries = candidates
            .into_iter()
            .map(|candidate| {
                let at = if candidate.is_relay() {
                    relays += 1;
                    relay_start + STAGGER * (relays - 1)
                } else {
                    directs += 1;
                    start + STAGGER * (directs - 1)
                };
                Entry {
                    candidate,
                    next_start: Some(at),
                    live: VecDeque::new(),
                    last_start: None,
                    running: Vec::new(),
                    answered: Vec::new(),
                    ended: false,
                    error: None,
                }
            })
            .collect();
        Self {
            entries,
            pace,
            next_attempt: 0,
        }
    }

    /// The candidate at `index`.
    pub fn candidate(&self, index: usize) -> Option<Candidate> {
        self.entries.get(index).map(|entry| entry.candidate)
    }

    /// When the next attempt starts, if any is still to start.
    pub fn next_start(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|entry| entry.next_start)
            .min()
    }

    /// The candidates whose next attempt is due at `now`.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.next_start.is_some_and(|at| at <= now))
            .map(|(index, _)| index)
            .collect()
    }

    /// Records an attempt of candidate `index` started at `now`: its id, and the attempt of the
    /// same candidate to abandon to make room for it, if any.
    pub fn started(&mut self, index: usize, now: Instant) -> (AttemptId, Option<AttemptId>) {
        let id = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        let mut abandoned = None;
        if let Some(entry) = self.entries.get_mut(index) {
            if entry.live.len() >= self.pace.live.max(1) {
                abandoned = entry.live.pop_front();
            }
            entry.live.push_back(id);
            entry.running.push(id);
            entry.next_start = Some(now + self.pace.reattempt);
            entry.last_start = Some(now);
        }
        (id, abandoned)
    }

    /// Records that the peer answered `attempt` of candidate `index` (its first handshake
    /// packets arrived): the candidate gets no fresh attempt while this one lives. Returns the
    /// candidate's attempts to abandon: those not answered. (The runtime must not end one
    /// whose answer is on its way: the peer may complete that handshake, and ending it would
    /// close a connection the peer may use.)
    pub fn answered(&mut self, index: usize, attempt: AttemptId) -> Vec<AttemptId> {
        let Some(entry) = self.entries.get_mut(index) else {
            return Vec::new();
        };
        // An answer that comes after its attempt failed (both reported in one step) says
        // nothing any more.
        if entry.ended || !entry.running.contains(&attempt) || entry.answered.contains(&attempt) {
            return Vec::new();
        }
        entry.answered.push(attempt);
        entry.next_start = None;
        let answered = &entry.answered;
        entry.live.retain(|live| answered.contains(live));
        entry.unanswered().collect()
    }

    /// Records that `attempt` of candidate `index` failed with `error` at `now`. Returns the
    /// attempts of that candidate to abandon (all of them, when the failure ends the
    /// candidate). When the failed attempt was the last running one the peer answered, and the
    /// candidate is not out, its next attempt is due at once, or at the pace if its last one
    /// started less than the re-attempt time ago (a peer that answers and then fails every
    /// handshake gets no more attempts than a silent one).
    pub fn failed(
        &mut self,
        index: usize,
        attempt: AttemptId,
        error: E,
        failure: Failure,
        now: Instant,
    ) -> Vec<AttemptId> {
        let Some(entry) = self.entries.get_mut(index) else {
            return Vec::new();
        };
        entry.live.retain(|live| *live != attempt);
        entry.running.retain(|running| *running != attempt);
        let was_answered = entry.answered.contains(&attempt);
        entry.answered.retain(|answered| *answered != attempt);
        let abandoned = if failure == Failure::EndsCandidate {
            entry.ended = true;
            entry.next_start = None;
            entry.answered.clear();
            entry.live.drain(..).collect()
        } else {
            if was_answered && entry.answered.is_empty() && !entry.ended {
                let paced = entry.last_start.map(|at| at + self.pace.reattempt);
                entry.next_start = Some(paced.map_or(now, |paced| paced.max(now)));
            }
            Vec::new()
        };
        // A timeout says less than what the candidate said before.
        let more_telling = match &entry.error {
            None => true,
            Some(_) => failure != Failure::Timeout,
        };
        if more_telling {
            entry.error = Some((error, failure));
        }
        abandoned
    }

    /// The attempts to abandon once candidate `winner` won the dial: every running one the
    /// peer has not answered, except, when the winner is a relay route, those of direct
    /// candidates (a direct connection that completes later replaces a relayed one, §2.4 of
    /// docs/PROTOCOL.md).
    pub fn unanswered_after(&self, winner: usize) -> Vec<AttemptId> {
        let relayed_winner = self
            .entries
            .get(winner)
            .is_some_and(|entry| entry.candidate.is_relay());
        self.entries
            .iter()
            .filter(|entry| !relayed_winner || entry.candidate.is_relay())
            .flat_map(Entry::unanswered)
            .collect()
    }

    /// Whether every candidate is out of the race.
    pub fn exhausted(&self) -> bool {
        self.entries.iter().all(Entry::is_out)
    }

    /// Every candidate's route and its most telling failure (`None`: it never failed, i.e.
    /// the dial's time ran out).
    pub fn failures(self) -> Vec<(Route, Option<E>)> {
        self.entries
            .into_iter()
            .map(|entry| (entry.candidate.route(), entry.error.map(|(error, _)| error)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;
    use std::net::SocketAddr;

    const REATTEMPT: Duration = DIAL_PACE.reattempt;

    fn direct(port: u16) -> Candidate {
        Candidate::Direct(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    fn relay(port: u16) -> Candidate {
        Candidate::Relay {
            relay: SecretKey::generate().public(),
            relay_addr: SocketAddr::from(([192, 0, 2, 1], port)),
        }
    }

    #[test]
    fn direct_candidates_are_staggered_and_relays_wait() {
        let start = Instant::now();
        let race: Race<()> = Race::new(vec![direct(1), direct(2), relay(3)], start, DIAL_PACE);
        assert_eq!(race.due(start), vec![0]);
        assert_eq!(race.due(start + RELAY_DELAY), vec![0, 2]);
        assert_eq!(race.due(start + STAGGER.max(RELAY_DELAY)), vec![0, 1, 2]);
    }

    #[test]
    fn relays_start_at_once_without_direct_candidates_or_when_preferred() {
        let start = Instant::now();
        let only_relays: Race<()> = Race::new(vec![relay(1), relay(2)], start, DIAL_PACE);
        assert_eq!(only_relays.due(start), vec![0]);
        let preferred: Race<()> = Race::new(vec![relay(1), direct(2)], start, DIAL_PACE);
        assert_eq!(preferred.due(start), vec![0, 1]);
    }

    #[test]
    fn a_silent_candidate_is_tried_again_and_its_oldest_attempt_replaced() {
        let start = Instant::now();
        let mut race: Race<()> = Race::new(vec![direct(1)], start, DIAL_PACE);
        let (first, none) = race.started(0, start);
        assert_eq!(none, None);
        let mut now = start;
        for _ in 1..DIAL_PACE.live {
            assert_eq!(race.next_start(), Some(now + REATTEMPT));
            now += REATTEMPT;
            let (_, none) = race.started(0, now);
            assert_eq!(none, None);
        }
        let (_, abandoned) = race.started(0, now + REATTEMPT);
        assert_eq!(abandoned, Some(first), "the oldest attempt makes way");
        assert!(
            REATTEMPT * DIAL_PACE.live as u32 >= Duration::from_secs(4),
            "an attempt lives long enough for a 4 s round trip"
        );
    }

    #[test]
    fn a_failure_that_ends_a_candidate_leaves_the_others_running() {
        let start = Instant::now();
        let mut race = Race::new(vec![direct(1), relay(2)], start, DIAL_PACE);
        let (attempt, _) = race.started(0, start);
        let (other, _) = race.started(0, start + REATTEMPT);
        let abandoned = race.failed(0, attempt, "wrong node", Failure::EndsCandidate, start);
        assert_eq!(abandoned, vec![other]);
        assert!(!race.exhausted());
        let (relay_attempt, _) = race.started(1, start + RELAY_DELAY);
        race.failed(
            1,
            relay_attempt,
            "incompatible",
            Failure::EndsCandidate,
            start,
        );
        assert!(race.exhausted());
        let failures = race.failures();
        assert_eq!(failures[0].1, Some("wrong node"));
        assert_eq!(failures[1].1, Some("incompatible"));
    }

    #[test]
    fn timeouts_do_not_hide_a_more_telling_failure() {
        let start = Instant::now();
        let mut race = Race::new(vec![direct(1)], start, DIAL_PACE);
        let (first, _) = race.started(0, start);
        let (second, _) = race.started(0, start + REATTEMPT);
        race.failed(0, first, "reset", Failure::Other, start);
        race.failed(0, second, "timeout", Failure::Timeout, start);
        assert_eq!(race.failures()[0].1, Some("reset"));
        let untried: Race<&str> = Race::new(vec![direct(1)], start, DIAL_PACE);
        assert_eq!(untried.failures()[0].1, None);
    }

    #[test]
    fn an_answered_candidate_waits_for_its_attempt() {
        let start = Instant::now();
        let mut race: Race<&str> = Race::new(vec![direct(1), direct(2)], start, DIAL_PACE);
        let (first, _) = race.started(0, start);
        let (second, _) = race.started(0, start + REATTEMPT);
        // The attempt still waiting for an answer is abandoned.
        assert_eq!(race.answered(0, second), vec![first]);
        assert_eq!(race.answered(0, second), vec![], "an answer counts once");
        // No fresh attempt of candidate 0 while the answered one lives; candidate 1 goes on.
        assert_eq!(race.due(start + Duration::from_secs(60)), vec![1]);
        let (other, _) = race.started(1, start + STAGGER);
        // Won now, the dial would abandon every attempt without an answer.
        assert_eq!(race.unanswered_after(0), vec![first, other]);
        // An answer to the abandoned attempt that was on its way still counts: that attempt
        // goes on (the peer may complete it).
        assert_eq!(race.answered(0, first), vec![]);
        assert_eq!(race.unanswered_after(0), vec![other]);
        race.failed(1, other, "incompatible", Failure::EndsCandidate, start);
        assert!(
            !race.exhausted(),
            "the answered attempt keeps its candidate in"
        );
        // The other attempt of candidate 0 failing changes nothing.
        assert!(race
            .failed(0, first, "timeout", Failure::Timeout, start)
            .is_empty());
        assert!(race.due(start + Duration::from_secs(60)).is_empty());
        // The answered attempt failing brings the candidate back at once.
        let later = start + Duration::from_secs(2);
        race.failed(0, second, "reset", Failure::Other, later);
        assert_eq!(race.next_start(), Some(later));
        assert!(!race.exhausted());
    }

    #[test]
    fn a_candidate_whose_answered_attempts_fail_keeps_the_pace() {
        let start = Instant::now();
        let mut race: Race<&str> = Race::new(vec![direct(1)], start, DIAL_PACE);
        let (attempt, _) = race.started(0, start);
        race.answered(0, attempt);
        let soon = start + Duration::from_millis(30);
        race.failed(0, attempt, "closed", Failure::Other, soon);
        assert_eq!(race.next_start(), Some(start + REATTEMPT));
    }

    #[test]
    fn an_answered_attempt_that_ends_its_candidate_ends_it() {
        let start = Instant::now();
        let mut race: Race<&str> = Race::new(vec![direct(1)], start, DIAL_PACE);
        let (attempt, _) = race.started(0, start);
        race.answered(0, attempt);
        race.failed(0, attempt, "wrong node", Failure::EndsCandidate, start);
        assert!(race.exhausted());
        assert_eq!(race.failures()[0].1, Some("wrong node"));
    }

    #[test]
    fn a_relayed_win_leaves_the_direct_attempts_running() {
        let start = Instant::now();
        let mut race: Race<&str> = Race::new(vec![direct(1), relay(2), relay(3)], start, DIAL_PACE);
        let (direct_attempt, _) = race.started(0, start);
        let (relayed, _) = race.started(1, start + RELAY_DELAY);
        let (other_relay, _) = race.started(2, start + RELAY_DELAY + STAGGER);
        race.answered(1, relayed);
        // The direct one may still complete and replace the relayed connection.
        assert_eq!(race.unanswered_after(1), vec![other_relay]);
        // A direct winner leaves nothing to wait for.
        assert_eq!(race.unanswered_after(0), vec![direct_attempt, other_relay]);
    }

    /// One event of a dial, as the runtime reports it to the race.
    #[derive(Debug, Clone)]
    enum Event {
        /// Time passes; every due attempt starts.
        Wait(u64),
        /// The peer answers the `n`th live attempt (modulo their number).
        Answer(usize),
        /// The `n`th live attempt fails.
        Fail(usize, Failure),
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..1200).prop_map(Event::Wait),
            any::<usize>().prop_map(Event::Answer),
            (
                any::<usize>(),
                prop_oneof![
                    Just(Failure::EndsCandidate),
                    Just(Failure::Timeout),
                    Just(Failure::Other)
                ]
            )
                .prop_map(|(n, failure)| Event::Fail(n, failure)),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of starts, answers and failures: no candidate has more than
        /// [`DIAL_PACE`]'s attempts in flight, nor starts two within its re-attempt time, one
        /// whose answered attempt lives gets no fresh one and abandons those the peer has not
        /// answered, and the race gives up on a candidate only when a failure ended it.
        #[test]
        fn the_race_keeps_its_bounds_and_gives_up_only_on_ending_failures(
            relays in proptest::collection::vec(proptest::bool::ANY, 1..4),
            events in proptest::collection::vec(event(), 0..60),
        ) {
            let start = Instant::now();
            let candidates: Vec<Candidate> = relays
                .iter()
                .enumerate()
                .map(|(i, relay_it)| if *relay_it { relay(i as u16) } else { direct(i as u16) })
                .collect();
            let count = candidates.len();
            let mut race: Race<()> = Race::new(candidates, start, DIAL_PACE);
            // The attempts the race keeps, and those still running (replaced ones too, until
            // they fail): (candidate, attempt).
            let mut live: Vec<(usize, AttemptId)> = Vec::new();
            let mut running: Vec<(usize, AttemptId)> = Vec::new();
            let mut answered: Vec<Vec<AttemptId>> = vec![Vec::new(); count];
            let mut ended = vec![false; count];
            let mut last_start: Vec<Option<Instant>> = vec![None; count];
            let mut now = start;
            let drop_abandoned = |live: &mut Vec<(usize, AttemptId)>, gone: &[AttemptId]| {
                live.retain(|(_, id)| !gone.contains(id));
            };
            for event in events {
                match event {
                    Event::Wait(ms) => {
                        now += Duration::from_millis(ms);
                        for index in race.due(now) {
                            proptest::prop_assert!(!ended[index], "an ended candidate started");
                            proptest::prop_assert!(answered[index].is_empty(), "answered, yet a fresh attempt");
                            if let Some(last) = last_start[index] {
                                proptest::prop_assert!(now - last >= REATTEMPT, "faster than the pace");
                            }
                            last_start[index] = Some(now);
                            let (id, abandoned) = race.started(index, now);
                            drop_abandoned(&mut live, &abandoned.into_iter().collect::<Vec<_>>());
                            live.push((index, id));
                            running.push((index, id));
                        }
                    }
                    Event::Answer(n) if !running.is_empty() => {
                        let (index, id) = running[n % running.len()];
                        let abandoned = race.answered(index, id);
                        if !ended[index] && !answered[index].contains(&id) {
                            answered[index].push(id);
                            // Every attempt of the candidate the peer has not answered.
                            let mut waiting: Vec<AttemptId> = running
                                .iter()
                                .filter(|(i, id)| *i == index && !answered[index].contains(id))
                                .map(|(_, id)| *id)
                                .collect();
                            let mut abandoned = abandoned.clone();
                            waiting.sort_by_key(|id| id.0);
                            abandoned.sort_by_key(|id| id.0);
                            proptest::prop_assert_eq!(abandoned, waiting);
                        } else {
                            proptest::prop_assert!(abandoned.is_empty(), "abandoned on a stale answer");
                        }
                        drop_abandoned(&mut live, &abandoned);
                    }
                    Event::Fail(n, failure) if !running.is_empty() => {
                        let (index, id) = running.remove(n % running.len());
                        live.retain(|(_, live)| *live != id);
                        let abandoned = race.failed(index, id, (), failure, now);
                        drop_abandoned(&mut live, &abandoned);
                        let was_answered = answered[index].contains(&id);
                        answered[index].retain(|answered| *answered != id);
                        if failure == Failure::EndsCandidate {
                            ended[index] = true;
                            answered[index].clear();
                        } else if was_answered && answered[index].is_empty() && !ended[index] {
                            let resumed = race.due(now + REATTEMPT).contains(&index);
                            proptest::prop_assert!(resumed, "not taken up again");
                        }
                    }
                    Event::Answer(_) | Event::Fail(..) => {}
                }
                for index in 0..count {
                    let in_flight = live.iter().filter(|(i, _)| *i == index).count();
                    proptest::prop_assert!(in_flight <= DIAL_PACE.live);
                }
                proptest::prop_assert_eq!(race.exhausted(), ended.iter().all(|ended| *ended));
            }
        }
    }
}
