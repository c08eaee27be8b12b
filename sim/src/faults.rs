//! What goes wrong, drawn from the seed before the run starts: delays and their jitter, delay
//! spikes, partitions and their heals, connections lost, node crashes and power losses with
//! their restarts, and how often a store commit is cut by a power loss or the node dies
//! between a commit and its acknowledgement. After the last fault the network is healthy, and
//! every message must then get through.

use std::time::Duration;

use crate::rng::Rng;

/// One-way delays between nodes.
#[derive(Debug, Clone)]
pub(crate) struct Links {
    /// Base one-way delay of each pair (indexed `[a][b]`, symmetric).
    base: Vec<Vec<Duration>>,
    /// Most extra delay of one chunk, in percent of the base.
    jitter_percent: u64,
    /// Delay spikes: (a, b, from, until, extra).
    spikes: Vec<(usize, usize, Duration, Duration, Duration)>,
    /// In percent: how often a connection is relayed (a relayed one loses to a direct one).
    pub(crate) relayed_percent: u64,
}

impl Links {
    /// Delays for `nodes` nodes.
    pub(crate) fn draw(rng: &mut Rng, nodes: usize) -> Self {
        let mut base = vec![vec![Duration::ZERO; nodes]; nodes];
        for a in 0..nodes {
            for b in a + 1..nodes {
                let delay = rng.millis(1, 60);
                for (x, y) in [(a, b), (b, a)] {
                    if let Some(cell) = base.get_mut(x).and_then(|row| row.get_mut(y)) {
                        *cell = delay;
                    }
                }
            }
        }
        let mut spikes = Vec::new();
        if nodes >= 2 {
            for _ in 0..rng.range(0, 3) {
                let a = rng.index(nodes);
                let b = (a + 1 + rng.index(nodes - 1)) % nodes;
                let from = rng.millis(0, 15_000);
                let until = from + rng.millis(50, 2000);
                spikes.push((a, b, from, until, rng.millis(20, 700)));
            }
        }
        Self {
            base,
            jitter_percent: rng.range(0, 100),
            spikes,
            relayed_percent: rng.range(0, 40),
        }
    }

    /// The base one-way delay between `a` and `b`.
    pub(crate) fn base(&self, a: usize, b: usize) -> Duration {
        self.base
            .get(a)
            .and_then(|row| row.get(b))
            .copied()
            .unwrap_or(Duration::from_millis(10))
    }

    /// The delay of one chunk sent from `a` to `b` at `now`.
    pub(crate) fn delay(&self, rng: &mut Rng, a: usize, b: usize, now: Duration) -> Duration {
        let base = self.base(a, b);
        let jitter = base.mul_f64(rng.below(self.jitter_percent + 1) as f64 / 100.0);
        let spike = self
            .spikes
            .iter()
            .filter(|(x, y, from, until, _)| {
                ((*x, *y) == (a, b) || (*x, *y) == (b, a)) && (*from..*until).contains(&now)
            })
            .map(|(.., extra)| *extra)
            .max()
            .unwrap_or_default();
        base + jitter + spike
    }
}

/// How long a node that lost power in a commit (or died after one) stays down.
pub(crate) const COMMIT_CRASH_DOWN: Duration = Duration::from_millis(1500);

/// A fault, at its time in the plan.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// The nodes in `side` cannot reach the others until `until`.
    Partition {
        /// One side of the cut.
        side: Vec<usize>,
        /// When it heals.
        until: Duration,
    },
    /// The connections between `a` and `b` are lost (a path change, a NAT dropping its
    /// mapping): each end notices at some point within the idle timeout.
    DropConnections {
        /// One node.
        a: usize,
        /// The other.
        b: usize,
    },
    /// The node's process dies (and with `power_loss`, the machine loses power: the disk
    /// keeps only what was synced); it starts again after `down_for`.
    Crash {
        /// The node.
        node: usize,
        /// Whether the power went too.
        power_loss: bool,
        /// How long it stays down.
        down_for: Duration,
    },
}

/// The faults of one run.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultPlan {
    /// Faults and their times, in time order.
    pub(crate) timed: Vec<(Duration, Fault)>,
    /// Partitions as (from, until, side), for the network's checks.
    pub(crate) partitions: Vec<(Duration, Duration, Vec<usize>)>,
    /// In percent: how often a store commit is cut by a power loss.
    pub(crate) cut_commit_percent: u64,
    /// In percent: how often a node dies right after a store commit, before acknowledging it.
    pub(crate) crash_after_commit_percent: u64,
    /// Commits are cut, and nodes die after commits, only before this time.
    pub(crate) commit_faults_until: Duration,
    /// When the last fault is over (the node up again, the partition healed).
    pub(crate) calm_from: Duration,
}

impl FaultPlan {
    /// The faults of a run of `nodes` nodes.
    pub(crate) fn draw(rng: &mut Rng, nodes: usize, idle_timeout: Duration) -> Self {
        let mut plan = Self::default();
        // Some runs have no fault at all.
        if rng.chance(10) {
            return plan;
        }
        let horizon = rng.range(1000, 15_000);
        for _ in 0..rng.range(0, 3) {
            let at = rng.millis(0, horizon);
            let long = rng.chance(40);
            let length = if long {
                idle_timeout + rng.millis(0, 4000)
            } else {
                rng.millis(10, 1500).min(idle_timeout / 2)
            };
            let mut side: Vec<usize> = (0..nodes).filter(|_| rng.chance(50)).collect();
            if side.is_empty() || side.len() == nodes {
                side = vec![rng.index(nodes)];
            }
            plan.partitions.push((at, at + length, side.clone()));
            plan.timed.push((
                at,
                Fault::Partition {
                    side,
                    until: at + length,
                },
            ));
            plan.calm_from = plan.calm_from.max(at + length);
        }
        if nodes >= 2 {
            for _ in 0..rng.range(0, 3) {
                let at = rng.millis(0, horizon);
                let a = rng.index(nodes);
                let b = (a + 1 + rng.index(nodes - 1)) % nodes;
                plan.timed.push((at, Fault::DropConnections { a, b }));
                plan.calm_from = plan.calm_from.max(at);
            }
        }
        for _ in 0..rng.range(0, 3) {
            let at = rng.millis(0, horizon);
            let down_for = rng.millis(1, 4000);
            plan.timed.push((
                at,
                Fault::Crash {
                    node: rng.index(nodes),
                    power_loss: rng.chance(50),
                    down_for,
                },
            ));
            plan.calm_from = plan.calm_from.max(at + down_for);
        }
        if rng.chance(50) {
            plan.cut_commit_percent = rng.range(1, 15);
            plan.crash_after_commit_percent = rng.range(0, 10);
            plan.commit_faults_until = Duration::from_millis(horizon);
            plan.calm_from = plan
                .calm_from
                .max(plan.commit_faults_until + COMMIT_CRASH_DOWN);
        }
        plan.timed.sort_by_key(|(at, _)| *at);
        plan
    }

    /// Whether `a` and `b` are cut off from each other at `now`, and if so until when.
    pub(crate) fn partitioned(&self, a: usize, b: usize, now: Duration) -> Option<Duration> {
        self.partitions
            .iter()
            .filter(|(from, until, side)| {
                (*from..*until).contains(&now) && (side.contains(&a) != side.contains(&b))
            })
            .map(|(_, until, _)| *until)
            .max()
    }
}
