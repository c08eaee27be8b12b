//! The NAT matrix's goal (issue 12, point 7), in its quick size: every ordered pair of NAT
//! kinds connects through a relay and loses, duplicates and reorders nothing, and the
//! connection is direct wherever physics allows (all but a symmetric NAT facing a symmetric
//! NAT or address-and-port-dependent filtering, which may stay relayed).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use ferry_interop::lab::matrix::{self, MatrixSettings};
use ferry_interop::lab::NatKind;

#[test]
fn every_nat_pair_connects_loses_nothing_and_is_direct_where_physics_allows() {
    let settings = MatrixSettings::quick(env!("CARGO_BIN_EXE_agent").into());
    let outcomes = matrix::run(&settings, |_| {});
    assert_eq!(outcomes.len(), NatKind::ALL.len() * NatKind::ALL.len());
    let misses: Vec<String> = outcomes.iter().filter_map(|o| o.goal_miss()).collect();
    assert!(
        misses.is_empty(),
        "{}{} pairs miss the goal:\n{}",
        matrix::table(&outcomes),
        misses.len(),
        misses.join("\n")
    );
}
