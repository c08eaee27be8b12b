//! Thousands of seeds, each a whole network run with its faults, every invariant checked
//! after every step.
//!
//! - `FERRY_SIM_SEEDS=N`: how many seeds (default 2000, about 32 s of CPU in a debug build,
//!   run on every core), from `FERRY_SIM_FIRST_SEED` (default 0).
//! - `FERRY_SIM_SEED=S`: only seed `S`, with its trace printed (the replay of a failure).
//! - `FERRY_SIM_TRACE=N`: lines of trace printed (default 300).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ferry_sim::{run, run_traced, Failure, Outcome};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}"))
    })
}

fn trace_lines() -> usize {
    env("FERRY_SIM_TRACE").map_or(300, |n| n as usize)
}

/// The report of a failed seed: what broke, the end of its trace (run again, exactly), and
/// the command that replays it.
fn report(failure: &Failure) -> String {
    let (again, trace) = run_traced(failure.seed, trace_lines());
    let replayed = match &again {
        Err(f) if f == failure => "the replay failed the same way".to_owned(),
        other => format!("THE REPLAY DIFFERED: {other:?}"),
    };
    format!(
        "{failure}\n\nlast events of the run:\n{}\n\n{replayed}\nreplay: FERRY_SIM_SEED={} cargo test -p ferry-sim --test seeds -- --nocapture",
        trace.join("\n"),
        failure.seed
    )
}

#[test]
fn every_invariant_holds_for_every_seed() {
    if let Some(seed) = env("FERRY_SIM_SEED") {
        let (result, trace) = run_traced(seed, trace_lines());
        println!("{}", trace.join("\n"));
        match result {
            Ok(outcome) => println!("seed {seed}: {outcome:?}"),
            Err(failure) => panic!("{}", report(&failure)),
        }
        return;
    }
    let count = env("FERRY_SIM_SEEDS").unwrap_or(2000);
    let first = env("FERRY_SIM_FIRST_SEED").unwrap_or(0);
    let next = AtomicU64::new(first);
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let totals = Mutex::new(Totals::default());
    let started = Instant::now();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    match run(seed) {
                        Ok(outcome) => totals.lock().unwrap().add(&outcome),
                        Err(failure) => {
                            failures.lock().unwrap().push(failure);
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.seed);
    if let Some(failure) = failures.first() {
        panic!("{}", report(failure));
    }
    let elapsed = started.elapsed();
    let totals = totals.into_inner().unwrap();
    println!(
        "{count} seeds from {first} in {:.1} s ({:.0} seeds/s): {totals:?}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    // The runs went through what the simulation is for (a change that stopped it from
    // crashing nodes, cutting commits or evicting runs would pass unnoticed otherwise).
    if count >= 500 {
        let covered = [
            ("crashes", totals.crashes),
            ("power losses", totals.power_losses),
            ("commits cut by a power loss", totals.commits_cut),
            (
                "deaths between a commit and its ACK",
                totals.died_after_commit,
            ),
            ("redeliveries after a lost run state", totals.redelivered),
            ("run states evicted and needed again", totals.evicted),
            ("stored messages replayed after a restart", totals.replayed),
            ("connections the rule retired", totals.kept_old),
        ];
        for (what, n) in covered {
            assert!(n > 0, "no {what} in {count} seeds: {totals:?}");
        }
    }
}

/// What all the runs went through.
#[derive(Debug, Default)]
struct Totals {
    steps: u64,
    messages: u64,
    crashes: u64,
    power_losses: u64,
    commits_cut: u64,
    died_after_commit: u64,
    redelivered: u64,
    evicted: u64,
    replayed: u64,
    kept_old: u64,
}

impl Totals {
    fn add(&mut self, outcome: &Outcome) {
        self.steps += outcome.steps;
        self.messages += outcome.messages;
        self.crashes += outcome.crashes;
        self.power_losses += outcome.power_losses;
        self.commits_cut += outcome.commits_cut;
        self.died_after_commit += outcome.died_after_commit;
        self.redelivered += outcome.redelivered;
        self.evicted += outcome.evicted;
        self.replayed += outcome.replayed;
        self.kept_old += outcome.kept_old;
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 2, 3, 1000, 123_456_789] {
        let first = run(seed);
        let second = run(seed);
        assert_eq!(first, second, "seed {seed} ran differently twice");
    }
}
