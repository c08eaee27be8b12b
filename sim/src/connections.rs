//! Connections between nodes: dialing, the one-connection rule (`ferry_proto::rule`, §2.4)
//! applied by each end on its own when a connection is established at its side, the
//! retirement of the connection that lost (closed once it carried no stream data for
//! `duplicate_grace`, or at once if it no longer answered), and losses — a crash, a long
//! partition, a path that died — that each end notices at its own time.
//!
//! Like the SDK (`decide` in `sdk/src/net/connection.rs`), an end keeps its old connection
//! over a new one only if the old one still answers (a probe), unless the old one is younger
//! than `FRESH`: a probe answers if the connection is alive and no partition cuts the pair.
//!
//! As in the SDK, an end that loses the connection it kept forgets the peer and dials anew when
//! it next needs it; a connection it retired is not taken up again. The ends may therefore use
//! different connections for a while (one kept a dead connection younger than `FRESH`, or
//! judged the old one alive a moment before a partition while the other found it dead): the
//! invariant is that this ends, not that it never happens.
//!
//! A dial takes a round trip; the dialer knows the connection then, the acceptor half a round
//! trip later or when the first stream data arrives, whichever is first (the handshake's last
//! flight precedes stream data). A dial to a node that is down or cut off fails after
//! `dial_timeout`, or succeeds after the heal if the partition heals before that.

use std::time::Duration;

use ferry_proto::rule::{rule, Contender, Verdict};

use crate::network::{Conn, ConnId, Dir};
use crate::world::{Event, World};

/// A connection younger than this is kept without asking whether it answers (the SDK's
/// `FRESH`).
const FRESH: Duration = Duration::from_secs(2);

impl World {
    /// Opens a stream for the run of `source` at `node`: on the connection in use, or after a
    /// dial.
    pub(crate) fn open_stream(&mut self, node: usize, source: usize, head: Vec<u8>) {
        let peer = self.scenario.mailboxes[self.sources[source].spec.target].node;
        match self.usable_current(node, peer) {
            Some(conn) => {
                let stream = self.new_stream(conn, node);
                self.sender_opened(node, source, stream, head);
            }
            None => {
                let Some(run) = self.nodes[node].conversations.get(&source).map(|c| c.run) else {
                    return;
                };
                self.pending_heads.insert((node, source, run), head);
                self.nodes[node].peer(peer).waiting.push((source, run));
                self.dial(node, peer);
            }
        }
    }

    /// The connection `node` uses to reach `peer`, if it still believes it works.
    fn usable_current(&mut self, node: usize, peer: usize) -> Option<ConnId> {
        let conn = self.nodes[node].peers.get(&peer)?.current?;
        self.usable(conn, node).then_some(conn)
    }

    /// Whether `node` (as it runs now) may open streams on `conn`: it knows it, and has not
    /// noticed it is gone.
    fn usable(&self, conn: ConnId, node: usize) -> bool {
        let c = &self.conns[conn];
        c.side_of(node).is_some_and(|side| {
            c.usable(side) && c.incarnations[side] == self.nodes[node].incarnation
        })
    }

    /// Dials `peer` from `node`, unless a dial is under way.
    pub(crate) fn dial(&mut self, node: usize, peer: usize) {
        if std::mem::replace(&mut self.nodes[node].peer(peer).dialing, true) {
            return;
        }
        let incarnation = self.nodes[node].incarnation;
        let rtt = self.delay(node, peer) + self.delay(peer, node);
        let dial_timeout = self.scenario.limits.dial_timeout;
        let reachable_at = match self.scenario.faults.partitioned(node, peer, self.now) {
            None => Some(self.now),
            Some(heal) if heal < self.now + dial_timeout => Some(heal),
            Some(_) => None,
        };
        let event = |ok| Event::Dialed {
            node,
            peer,
            incarnation,
            ok,
        };
        match reachable_at {
            Some(at) if self.nodes[peer].up => {
                let delay = at.saturating_sub(self.now) + rtt;
                self.schedule(delay, event(true));
            }
            _ => self.schedule(dial_timeout, event(false)),
        }
    }

    /// A dial ended.
    pub(crate) fn dialed(&mut self, node: usize, peer: usize, incarnation: u64, ok: bool) {
        if !self.nodes[node].up || self.nodes[node].incarnation != incarnation {
            return;
        }
        self.nodes[node].peer(peer).dialing = false;
        let ok = ok
            && self.nodes[peer].up
            && self
                .scenario
                .faults
                .partitioned(node, peer, self.now)
                .is_none();
        let waiting = std::mem::take(&mut self.nodes[node].peer(peer).waiting);
        if ok {
            let relayed = self.rng.chance(self.scenario.links.relayed_percent);
            let conn = self.conns.len();
            self.conns.push(Conn::new(
                [node, peer],
                [self.nodes[node].incarnation, self.nodes[peer].incarnation],
                relayed,
                self.now,
            ));
            let accept = self.delay(node, peer);
            self.schedule(accept, Event::Accepted { conn });
            self.trace(|| format!("node {node} dialed node {peer}: connection {conn}"));
            self.install(conn, 0);
        }
        for (source, run) in waiting {
            let head = self.pending_heads.remove(&(node, source, run));
            let current = self.nodes[node].conversations.get(&source).map(|c| c.run);
            let (Some(head), Some(current)) = (head, current) else {
                continue;
            };
            if current != run {
                continue; // the run ended while it waited
            }
            // Whatever this dial gave, the connection in use now carries the stream.
            match self.usable_current(node, peer) {
                Some(conn) => {
                    let stream = self.new_stream(conn, node);
                    self.sender_opened(node, source, stream, head);
                    self.pump(node, source);
                }
                None => self.sender_open_failed(node, source, peer),
            }
        }
    }

    /// The acceptor learns of a connection (the handshake completed at its side).
    pub(crate) fn accepted(&mut self, conn: ConnId) {
        if self.conns[conn].known[1] || self.conns[conn].is_dead(self.now) {
            return;
        }
        let acceptor = self.conns[conn].nodes[1];
        if !self.nodes[acceptor].up
            || self.nodes[acceptor].incarnation != self.conns[conn].incarnations[1]
        {
            return;
        }
        self.install(conn, 1);
    }

    /// `conn` is established at its end `side`: the rule decides whether that end uses it.
    fn install(&mut self, conn: ConnId, side: usize) {
        let node = self.conns[conn].nodes[side];
        let peer = self.conns[conn].nodes[1 - side];
        self.conns[conn].known[side] = true;
        self.conns[conn].known_at[side] = self.now;
        self.nodes[node].peer(peer).reached = Some(self.now);
        let old = self.usable_current(node, peer);
        // Whether the old one is to close now: it did not answer, or the peer restarted.
        let mut old_dead = false;
        let keep_new = match old {
            None => true,
            Some(old) => {
                let restarted = self.conns[old].incarnations != self.conns[conn].incarnations;
                let replace = self.verdict(node, peer, old, conn) == Verdict::Replace;
                let answers = !replace && self.answers(old, node);
                old_dead = restarted || (!replace && !answers);
                replace || !answers
            }
        };
        self.trace(|| {
            format!("node {node}: connection {conn} to node {peer} established, kept: {keep_new}")
        });
        if keep_new {
            self.nodes[node].peer(peer).current = Some(conn);
            if let Some(old) = old {
                if old_dead {
                    // Nothing will finish on it: closed at once (the peer hears of it when a
                    // packet gets through, or at its idle timeout).
                    let notice = self.close_notice(node, peer);
                    let mut notices = [Duration::ZERO; 2];
                    if let Some(side) = self.conns[old].side_of(node) {
                        notices[1 - side] = notice;
                    }
                    self.kill(old, notices);
                } else {
                    self.retire(old, node);
                }
                // The runs writing on the old connection move to the new one.
                let moving: Vec<usize> = self.nodes[node]
                    .conversations
                    .iter()
                    .filter(|(_, c)| c.stream.is_some_and(|s| self.streams[s].conn == old))
                    .map(|(source, _)| *source)
                    .collect();
                for source in moving {
                    self.sender_superseded(node, source);
                }
            }
        } else {
            self.counts.kept_old += 1;
            self.retire(conn, node);
        }
        self.check_rule_agreement(node, peer);
    }

    /// The one-connection rule at `node` between its connections `old` and `new` to `peer`.
    fn verdict(&self, node: usize, peer: usize, old: ConnId, new: ConnId) -> Verdict {
        let contender = |c: ConnId| {
            let conn = &self.conns[c];
            let side = conn.side_of(node).unwrap_or(0);
            Contender {
                incarnation: conn.incarnations[1 - side],
                dialed_by: self.nodes[conn.nodes[0]].id(),
                relayed: conn.relayed,
            }
        };
        let (me, them) = (self.nodes[node].id(), self.nodes[peer].id());
        rule(me, them, contender(old), contender(new))
    }

    /// Whether `node` keeps `old` after the rule chose it: a fresh one without asking, another
    /// if a probe would be answered.
    fn answers(&self, old: ConnId, node: usize) -> bool {
        let c = &self.conns[old];
        let Some(side) = c.side_of(node) else {
            return false;
        };
        let peer = c.nodes[1 - side];
        self.now < c.known_at[side] + FRESH
            || (!c.is_dead(self.now)
                && self
                    .scenario
                    .faults
                    .partitioned(node, peer, self.now)
                    .is_none())
    }

    /// When `peer` hears that `node` closed a connection: after a one-way delay, or after the
    /// heal of a partition between them (or at its idle timeout, whichever is first).
    fn close_notice(&mut self, node: usize, peer: usize) -> Duration {
        let delay = self.delay(node, peer);
        match self.scenario.faults.partitioned(node, peer, self.now) {
            None => delay,
            Some(heal) => {
                (heal.saturating_sub(self.now) + delay).min(self.scenario.limits.idle_timeout)
            }
        }
    }

    /// `node` no longer uses `conn`: it is closed once no stream data crossed it for
    /// `duplicate_grace`.
    fn retire(&mut self, conn: ConnId, node: usize) {
        let Some(side) = self.conns[conn].side_of(node) else {
            return;
        };
        let grace = self.scenario.limits.duplicate_grace;
        self.schedule(grace, Event::RetireCheck { conn, side });
    }

    /// Closes a retired connection if it has been quiet for the grace.
    pub(crate) fn retire_check(&mut self, conn: ConnId, side: usize) {
        let c = &self.conns[conn];
        if c.is_dead(self.now) || c.lost[side] {
            return;
        }
        let grace = self.scenario.limits.duplicate_grace;
        let quiet_since = c.last_data;
        let nodes = c.nodes;
        if self.now >= quiet_since + grace {
            self.trace(|| format!("connection {conn}: closed as a duplicate"));
            let other = self.delay(nodes[side], nodes[1 - side]);
            let mut notices = [Duration::ZERO; 2];
            notices[1 - side] = other;
            self.kill(conn, notices);
        } else {
            let wait = quiet_since + grace - self.now;
            self.schedule(wait, Event::RetireCheck { conn, side });
        }
    }

    /// `conn` breaks now; its ends notice after `notices` (dialer's, acceptor's).
    pub(crate) fn kill(&mut self, conn: ConnId, notices: [Duration; 2]) {
        if self.conns[conn].is_dead(self.now) {
            return;
        }
        self.conns[conn].dead_at = Some(self.now);
        for (side, notice) in notices.into_iter().enumerate() {
            self.schedule(notice, Event::ConnLost { conn, side });
        }
    }

    /// Every live connection of `node` breaks (it crashed); the peers notice within the idle
    /// timeout (sooner when a packet meets the restarted node's stateless reset).
    pub(crate) fn kill_all(&mut self, node: usize) {
        let idle = self.scenario.limits.idle_timeout;
        for conn in 0..self.conns.len() {
            let Some(side) = self.conns[conn].side_of(node) else {
                continue;
            };
            if self.conns[conn].is_dead(self.now) {
                continue;
            }
            let mut notices = [Duration::ZERO; 2];
            let peer = self.conns[conn].nodes[1 - side];
            let least = self.delay(node, peer);
            notices[1 - side] = least + self.rng.millis(0, idle.as_millis() as u64);
            self.kill(conn, notices);
        }
    }

    /// The connections between `a` and `b` break (a path change, a NAT that forgot them).
    pub(crate) fn drop_connections(&mut self, a: usize, b: usize, within: Duration) {
        for conn in 0..self.conns.len() {
            let ends = self.conns[conn].nodes;
            if !(ends == [a, b] || ends == [b, a]) || self.conns[conn].is_dead(self.now) {
                continue;
            }
            let limit = within.as_millis() as u64;
            let notices = [self.rng.millis(0, limit), self.rng.millis(0, limit)];
            self.kill(conn, notices);
        }
    }

    /// A partition between `side` and the rest that outlasts the idle timeout kills the
    /// connections across it when the timeout passes.
    pub(crate) fn partition_begins(&mut self, side: &[usize], until: Duration) {
        let idle = self.scenario.limits.idle_timeout;
        if until.saturating_sub(self.now) < idle {
            return;
        }
        for conn in 0..self.conns.len() {
            let [a, b] = self.conns[conn].nodes;
            if side.contains(&a) != side.contains(&b) && !self.conns[conn].is_dead(self.now) {
                self.schedule(idle, Event::IdleTimeout { conn });
            }
        }
    }

    /// End `side` of `conn` notices the connection is gone: its streams fail.
    pub(crate) fn conn_lost(&mut self, conn: ConnId, side: usize) {
        let node = self.conns[conn].nodes[side];
        if self.conns[conn].lost[side]
            || !self.nodes[node].up
            || self.nodes[node].incarnation != self.conns[conn].incarnations[side]
        {
            return;
        }
        self.conns[conn].lost[side] = true;
        let peer = self.conns[conn].nodes[1 - side];
        self.trace(|| format!("node {node}: connection {conn} to node {peer} lost"));
        if self.nodes[node].peer(peer).current == Some(conn) {
            self.nodes[node].peer(peer).current = None;
        }
        let streams = self.conns[conn].streams.clone();
        for stream in streams {
            let opened_here = self.streams[stream].opener == side;
            if opened_here {
                let source = self.nodes[node]
                    .conversations
                    .iter()
                    .find(|(_, c)| c.stream == Some(stream))
                    .map(|(source, _)| *source);
                if let Some(source) = source {
                    self.sender_stream_failed(
                        node,
                        source,
                        crate::outbound::SimError::ConnectionLost,
                    );
                }
            } else {
                self.inbound_lost(node, stream);
            }
        }
        self.check_rule_agreement(node, peer);
    }

    /// When something last arrived at the reading end of `stream`'s `dir`.
    pub(crate) fn heard_at(&self, stream: usize, dir: Dir) -> Duration {
        let s = &self.streams[stream];
        let side = match dir {
            Dir::Out => 1 - s.opener,
            Dir::In => s.opener,
        };
        self.conns[s.conn].last_rx[side]
    }

    /// Both ends of a pair use the same connection when they know the same live ones (§2.4:
    /// each decides alone, from what both know). Right after a decision they may not yet (one
    /// end judged the old connection alive, the other found it dead a moment later, or kept a
    /// dead one younger than `FRESH`); the connection one end closed or retired goes, and the
    /// other end then moves. A disagreement is tracked from when it is seen, and must be over
    /// within the bound of [`World::check_agreements`].
    pub(crate) fn check_rule_agreement(&mut self, a: usize, b: usize) {
        let pair = (a.min(b), a.max(b));
        if self.disagreement(a, b).is_some() {
            self.disagreements.entry(pair).or_insert(self.now);
        } else {
            self.disagreements.remove(&pair);
        }
    }

    /// The connections two nodes use if they differ while both know the same live ones.
    fn disagreement(&self, a: usize, b: usize) -> Option<(ConnId, ConnId)> {
        let live = |node: usize, peer: usize| -> Vec<ConnId> {
            (0..self.conns.len())
                .filter(|&c| {
                    let conn = &self.conns[c];
                    conn.side_of(node)
                        .is_some_and(|side| conn.nodes[1 - side] == peer)
                        && self.usable(c, node)
                })
                .collect()
        };
        if !self.nodes[a].up || !self.nodes[b].up {
            return None;
        }
        let ca = self.nodes[a].peers.get(&b).and_then(|p| p.current)?;
        let cb = self.nodes[b].peers.get(&a).and_then(|p| p.current)?;
        (ca != cb && live(a, b) == live(b, a)).then_some((ca, cb))
    }

    /// Every disagreement seen ends within the idle timeout (the longest an end takes to
    /// notice a closed connection) and `duplicate_grace` (the longest a retired one lives
    /// quiet) of the pair being able to talk, and a second more.
    pub(crate) fn check_agreements(&mut self) {
        let limits = &self.scenario.limits;
        let bound = limits.idle_timeout + limits.duplicate_grace + Duration::from_secs(1);
        let pairs: Vec<((usize, usize), Duration)> = self
            .disagreements
            .iter()
            .map(|(pair, since)| (*pair, *since))
            .collect();
        for ((a, b), since) in pairs {
            let Some((ca, cb)) = self.disagreement(a, b) else {
                self.disagreements.remove(&(a, b));
                continue;
            };
            if self.scenario.faults.partitioned(a, b, self.now).is_some() {
                self.disagreements.insert((a, b), self.now);
                continue;
            }
            if self.now > since + bound {
                let detail = format!(
                    "nodes {a} and {b} use connections {ca} and {cb} since {:.3} s",
                    since.as_secs_f64()
                );
                return self
                    .check
                    .fail("the one-connection rule does not converge", detail);
            }
        }
    }
}
