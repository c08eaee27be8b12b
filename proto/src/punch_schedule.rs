//! When a node punches again, and how often it lets a peer make it punch (docs/PROTOCOL.md
//! §10.13): pure bookkeeping on the time it is given; the runtime dials and waits.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The pause after a failed punch before the next.
pub const FIRST_RETRY: Duration = Duration::from_secs(15);
/// The longest pause between two punches.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// The shortest time between two punches a peer may ask this node for.
pub const MIN_ANSWER_INTERVAL: Duration = Duration::from_secs(2);
/// Peers remembered for [`MIN_ANSWER_INTERVAL`] at most; beyond, answers are refused.
pub const MAX_ANSWERED: usize = 4096;

/// The retries of one relayed connection's punches: [`FIRST_RETRY`] after a failure, doubling
/// up to [`MAX_RETRY`], and from the start again when the node's network changed (its NAT
/// mapping, and so the chance of success, is new).
#[derive(Debug, Clone)]
pub struct PunchRetries {
    pause: Duration,
}

impl Default for PunchRetries {
    fn default() -> Self {
        Self { pause: FIRST_RETRY }
    }
}

impl PunchRetries {
    /// A punch failed at `now`: when to punch again.
    pub fn failed(&mut self, now: Instant) -> Instant {
        let at = now + self.pause;
        self.pause = (self.pause * 2).min(MAX_RETRY);
        at
    }

    /// The network changed: the next punch is due at once, and the pauses start over.
    pub fn network_changed(&mut self) {
        self.pause = FIRST_RETRY;
    }
}

/// Which peers may make this node punch now: a peer cannot make it dial arbitrary addresses
/// more often than every [`MIN_ANSWER_INTERVAL`], and at most [`MAX_ANSWERED`] peers are
/// remembered (beyond that, answers wait until some are forgotten).
#[derive(Debug)]
pub struct AnswerLimiter<P> {
    answered: HashMap<P, Instant>,
}

impl<P> Default for AnswerLimiter<P> {
    fn default() -> Self {
        Self {
            answered: HashMap::new(),
        }
    }
}

impl<P: Eq + Hash> AnswerLimiter<P> {
    /// Whether `peer` may have an answer at `now`; if so, its next is due
    /// [`MIN_ANSWER_INTERVAL`] later.
    pub fn may_answer(&mut self, peer: P, now: Instant) -> bool {
        let recent = |at: &Instant| now.saturating_duration_since(*at) < MIN_ANSWER_INTERVAL;
        if self.answered.get(&peer).is_some_and(recent) {
            return false;
        }
        if self.answered.len() >= MAX_ANSWERED {
            self.answered.retain(|_, at| recent(at));
            if self.answered.len() >= MAX_ANSWERED {
                return false;
            }
        }
        self.answered.insert(peer, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap_and_start_over_after_a_network_change() {
        let now = Instant::now();
        let mut retries = PunchRetries::default();
        let pauses: Vec<Duration> = (0..7).map(|_| retries.failed(now) - now).collect();
        let secs: Vec<u64> = pauses.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [15, 30, 60, 120, 240, 300, 300]);
        retries.network_changed();
        assert_eq!(retries.failed(now) - now, FIRST_RETRY);
    }

    #[test]
    fn a_peer_gets_one_answer_per_interval() {
        let now = Instant::now();
        let mut limiter = AnswerLimiter::default();
        assert!(limiter.may_answer(1, now));
        assert!(!limiter.may_answer(1, now + MIN_ANSWER_INTERVAL / 2));
        assert!(limiter.may_answer(2, now), "other peers are not affected");
        assert!(limiter.may_answer(1, now + MIN_ANSWER_INTERVAL));
    }

    #[test]
    fn the_remembered_peers_are_bounded() {
        let now = Instant::now();
        let mut limiter = AnswerLimiter::default();
        for peer in 0..MAX_ANSWERED {
            assert!(limiter.may_answer(peer, now));
        }
        assert!(
            !limiter.may_answer(MAX_ANSWERED, now),
            "full of recent peers"
        );
        let later = now + MIN_ANSWER_INTERVAL;
        assert!(
            limiter.may_answer(MAX_ANSWERED, later),
            "the old ones are forgotten"
        );
        assert_eq!(limiter.answered.len(), 1);
    }
}
