//! Nodes whose address changes while messages flow both ways (docs/PROTOCOL.md §2.4, §6.3):
//! a host renumbered, a host moved behind another router, a NAT that drops its mappings. The
//! nodes take their connections over (or QUIC migrates them), resend what was not
//! acknowledged, and each application is handed every acknowledged message once, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use ferry_interop::lab::{HostId, Lab, LabAgent, NatKind, Tally, Upstream};

/// Waits end on lines the agents print: generous.
const WAIT: Duration = Duration::from_secs(120);
/// Messages each way.
const TOTAL: u64 = 3000;

fn lab() -> Lab {
    Lab::new().unwrap_or_else(|error| panic!("building the lab: {error}"))
}

/// An agent on `host` listening on every interface, so that it keeps its socket when its
/// address changes.
fn agent(lab: &Lab, host: HostId, name: &str) -> LabAgent {
    let args = vec!["--listen".to_string(), "0.0.0.0:7000".to_string()];
    LabAgent::start(lab, host, name, env!("CARGO_BIN_EXE_agent").as_ref(), &args)
        .unwrap_or_else(|error| panic!("starting {name}: {error}"))
}

/// Both agents send `TOTAL` messages to each other; `change` is made to the lab once some
/// have arrived both ways; then every message must arrive, once each, in order.
fn both_ways_across(lab: &mut Lab, a: HostId, b: HostId, change: impl FnOnce(&mut Lab)) {
    let mut alice = agent(lab, a, "alice");
    let mut bob = agent(lab, b, "bob");
    let (alice_node, bob_node) = (alice.node().to_string(), bob.node().to_string());
    // Bob answers to the address Alice printed; after a move its hints are stale, and Bob
    // reaches her over the connection she takes over.
    alice.send(&bob.address().clone(), TOTAL, "ab").unwrap();
    bob.send(&alice.address().clone(), TOTAL, "ba").unwrap();
    let (mut at_bob, mut at_alice) = (Tally::default(), Tally::default());
    bob.receive_until(&mut at_bob, WAIT, |tally| {
        tally.received(&alice_node, "ab") >= 300
    })
    .unwrap();
    alice
        .receive_until(&mut at_alice, WAIT, |tally| {
            tally.received(&bob_node, "ba") >= 300
        })
        .unwrap();
    change(lab);
    bob.receive_until(&mut at_bob, WAIT, |tally| {
        tally.received(&alice_node, "ab") >= TOTAL
    })
    .unwrap_or_else(|error| panic!("alice -> bob after the change: {error}"));
    alice
        .receive_until(&mut at_alice, WAIT, |tally| {
            tally.received(&bob_node, "ba") >= TOTAL
        })
        .unwrap_or_else(|error| panic!("bob -> alice after the change: {error}"));
    alice.wait_sent("ab", WAIT).unwrap();
    bob.wait_sent("ba", WAIT).unwrap();
    for (tally, from, tag) in [(&at_bob, &alice_node, "ab"), (&at_alice, &bob_node, "ba")] {
        assert_eq!(tally.lost(from, tag, TOTAL), 0, "{tag}: lost");
        assert_eq!(tally.duplicates, 0, "{tag}: duplicates");
        assert_eq!(tally.order_violations, 0, "{tag}: order violations");
    }
}

#[test]
fn a_host_renumbered_mid_stream_takes_its_connection_over() {
    let mut lab = lab();
    let a = lab.add_public_host("alice").unwrap();
    let b = lab.add_public_host("bob").unwrap();
    both_ways_across(&mut lab, a, b, |lab| {
        lab.renumber(a).unwrap();
    });
}

#[test]
fn a_host_moved_behind_another_router_mid_stream_takes_its_connection_over() {
    let mut lab = lab();
    let a = lab.add_host_behind("alice", NatKind::Home).unwrap();
    let b = lab.add_public_host("bob").unwrap();
    let other = lab.add_host_behind("neighbour", NatKind::Home).unwrap();
    let other_router = lab.router_of(other).unwrap().unwrap();
    both_ways_across(&mut lab, a, b, |lab| {
        lab.move_host(a, Upstream::Router(other_router)).unwrap();
    });
}

#[test]
fn a_nat_that_drops_its_mappings_mid_stream_loses_nothing() {
    let mut lab = lab();
    let a = lab.add_host_behind("alice", NatKind::Home).unwrap();
    let b = lab.add_public_host("bob").unwrap();
    let router = lab.router_of(a).unwrap().unwrap();
    both_ways_across(&mut lab, a, b, |lab| {
        lab.rebind_nat(router).unwrap();
    });
}
