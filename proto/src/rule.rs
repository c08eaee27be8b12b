//! Which connection two nodes keep when they have two (docs/PROTOCOL.md §2.4): each node
//! decides on its own from what both know, so both keep the same one without a message.

use crate::identity::NodeId;

/// What the rule says of two connections to the same peer, before the liveness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The new connection is used; the old one is closed (after its streams finished).
    Replace,
    /// The old connection is used, if it still answers.
    KeepOld,
}

/// One side of the rule's comparison.
#[derive(Debug, Clone, Copy)]
pub struct Contender {
    /// The peer's incarnation (its certificate serial) on this connection.
    pub incarnation: u64,
    /// The node that dialed the connection.
    pub dialed_by: NodeId,
    /// Whether the connection's packets travel through a relay.
    pub relayed: bool,
}

/// The one-connection rule of docs/PROTOCOL.md §2.4, seen from node `me` with peer `peer`.
pub fn rule(me: NodeId, peer: NodeId, old: Contender, new: Contender) -> Verdict {
    if old.incarnation != new.incarnation {
        return Verdict::Replace;
    }
    match (old.relayed, new.relayed) {
        (true, false) => Verdict::Replace,
        (false, true) => Verdict::KeepOld,
        _ if old.dialed_by != new.dialed_by && old.dialed_by == me.min(peer) => Verdict::KeepOld,
        _ => Verdict::Replace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    fn contender(incarnation: u64, dialed_by: NodeId, relayed: bool) -> Contender {
        Contender {
            incarnation,
            dialed_by,
            relayed,
        }
    }

    #[test]
    fn the_rule_agrees_on_both_sides() {
        let (a, b) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        let (small, large) = (a.min(b), a.max(b));
        // Simultaneous dials: both keep the one the smaller node dialed.
        let by_small = contender(1, small, false);
        let by_large = contender(1, large, false);
        // Seen from the small node, its own dial came first, then the large node's.
        assert_eq!(rule(small, large, by_small, by_large), Verdict::KeepOld);
        // Seen from the large node, its own dial came first, then the small node's.
        assert_eq!(rule(large, small, by_large, by_small), Verdict::Replace);
        // The same node dialing again replaces its own older connection.
        assert_eq!(rule(small, large, by_large, by_large), Verdict::Replace);
        // A restarted peer always replaces.
        assert_eq!(
            rule(small, large, by_small, contender(2, large, false)),
            Verdict::Replace
        );
    }

    #[test]
    fn a_direct_connection_beats_a_relayed_one() {
        let (a, b) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        let (small, large) = (a.min(b), a.max(b));
        for (me, peer) in [(small, large), (large, small)] {
            for dialer in [small, large] {
                for punched_by in [small, large] {
                    let relayed = contender(7, dialer, true);
                    let direct = contender(7, punched_by, false);
                    assert_eq!(rule(me, peer, relayed, direct), Verdict::Replace);
                    assert_eq!(rule(me, peer, direct, relayed), Verdict::KeepOld);
                }
            }
        }
    }
}
