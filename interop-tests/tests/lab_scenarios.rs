//! The interop scenarios of `nodes.rs`, across hosts of the lab: routers and NATs between the
//! nodes, loss on their links, partitions made by the routers. Each counts what the receiving
//! application was handed: acknowledged messages lost, duplicates and order violations must
//! all be zero.
//!
//! Agents listen on their host's own address (the wildcard address and hole punching are the
//! NAT matrix's business, `lab_matrix.rs`), except where a scenario is about the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use ferry::{Address, NodeId};
use ferry_interop::lab::{HostId, Lab, LabAgent, Link, NatKind, Tally};

/// Waits for acknowledgements and deliveries: generous, since every wait ends on its line.
const WAIT: Duration = Duration::from_secs(120);
/// The port agents listen on.
const PORT: u16 = 7000;

fn lab() -> Lab {
    Lab::new().unwrap_or_else(|error| panic!("building the lab: {error}"))
}

/// Starts an agent on `host`, listening on the host's address, with `extra` arguments.
fn agent(lab: &Lab, host: HostId, name: &str, extra: &[&str]) -> LabAgent {
    let ip = lab.host(host).unwrap().address();
    let mut args = vec!["--listen".to_string(), format!("{ip}:{PORT}")];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    LabAgent::start(lab, host, name, env!("CARGO_BIN_EXE_agent").as_ref(), &args)
        .unwrap_or_else(|error| panic!("starting {name}: {error}"))
}

/// Reads `receiver`'s messages until `count` of `tag` from `from` arrived (or [`WAIT`]).
fn receive(receiver: &mut LabAgent, tally: &mut Tally, from: &str, tag: &str, count: u64) {
    receiver
        .receive_until(tally, WAIT, |tally| tally.received(from, tag) >= count)
        .unwrap();
}

/// Nothing acknowledged was lost, nothing came twice or out of order.
fn assert_clean(tally: &Tally, acknowledged: &[(&str, &str, u64)]) {
    for (from, tag, count) in acknowledged {
        assert_eq!(tally.lost(from, tag, *count), 0, "{tag} from {from}: lost");
    }
    assert_eq!(tally.duplicates, 0, "duplicates");
    assert_eq!(tally.order_violations, 0, "order violations");
}

/// The relay `relay` as a `--relay` argument, and its node id and address.
fn relay_of(lab: &Lab, host: HostId, relay: &LabAgent) -> (String, NodeId, std::net::SocketAddr) {
    let addr = std::net::SocketAddr::new(lab.host(host).unwrap().address().into(), PORT);
    let id: NodeId = relay.node().parse().unwrap();
    (format!("{id}@{addr}"), id, addr)
}

#[test]
fn a_mesh_of_five_public_nodes_over_lossy_links_delivers_everything_in_order() {
    const PER_PEER: u64 = 300;
    let mut lab = lab();
    let hosts: Vec<HostId> = (0..5)
        .map(|i| lab.add_public_host(&format!("node{i}")).unwrap())
        .collect();
    for host in &hosts {
        lab.set_loss(Link::Host(*host), 2).unwrap();
    }
    let mut agents: Vec<LabAgent> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| agent(&lab, *host, &format!("node{i}"), &[]))
        .collect();
    let addresses: Vec<Address> = agents.iter().map(|a| a.address().clone()).collect();
    let nodes: Vec<String> = agents.iter().map(|a| a.node().to_string()).collect();
    for (i, sender) in agents.iter_mut().enumerate() {
        for (j, address) in addresses.iter().enumerate() {
            if i != j {
                sender.send(address, PER_PEER, &format!("to{j}")).unwrap();
            }
        }
    }
    for (j, receiver) in agents.iter_mut().enumerate() {
        let mut tally = Tally::default();
        let tag = format!("to{j}");
        let senders: Vec<&String> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != j)
            .map(|(_, n)| n)
            .collect();
        receiver
            .receive_until(&mut tally, WAIT, |tally| {
                senders
                    .iter()
                    .all(|from| tally.received(from, &tag) >= PER_PEER)
            })
            .unwrap();
        let expected: Vec<(&str, &str, u64)> = senders
            .iter()
            .map(|from| (from.as_str(), tag.as_str(), PER_PEER))
            .collect();
        assert_clean(&tally, &expected);
    }
    for (i, sender) in agents.iter_mut().enumerate() {
        for j in (0..5).filter(|j| *j != i) {
            sender.wait_sent(&format!("to{j}"), WAIT).unwrap();
        }
    }
}

#[test]
fn nodes_behind_a_home_router_and_a_symmetric_nat_talk_through_a_public_relay() {
    let mut lab = lab();
    let relay_host = lab.add_public_host("relay").unwrap();
    let a_host = lab.add_host_behind("a", NatKind::Home).unwrap();
    let c_host = lab.add_host_behind("c", NatKind::Symmetric).unwrap();
    lab.set_loss(Link::Host(a_host), 1).unwrap();
    lab.set_loss(Link::Host(c_host), 1).unwrap();
    let relay = agent(&lab, relay_host, "relay", &["--relay-any"]);
    let (relay_arg, relay_id, relay_addr) = relay_of(&lab, relay_host, &relay);
    let mut c = agent(&lab, c_host, "c", &["--relay", &relay_arg]);
    let mut a = agent(&lab, a_host, "a", &[]);
    assert_eq!(c.address().relays(), vec![(relay_id, relay_addr)]);
    // C's private address is useless from A: only the relay leads there.
    let c_via_relay = c.address().without_hints().with_relay(relay_id, relay_addr);
    let a_via_relay = a.address().without_hints().with_relay(relay_id, relay_addr);
    send_all(&mut a, &mut c, &c_via_relay, 300);
    // And back, over the relayed connection A opened.
    send_all(&mut c, &mut a, &a_via_relay, 200);
}

/// `from` sends `count` messages to `to` at `address`; all arrive, once, in order.
fn send_all(from: &mut LabAgent, to: &mut LabAgent, address: &Address, count: u64) {
    let tag = from.name().to_string();
    from.send(address, count, &tag).unwrap();
    let mut tally = Tally::default();
    let node = from.node().to_string();
    receive(to, &mut tally, &node, &tag, count);
    from.wait_sent(&tag, WAIT).unwrap();
    assert_clean(&tally, &[(&node, &tag, count)]);
}

#[test]
fn a_receiver_killed_mid_stream_behind_lossy_links_loses_nothing_acknowledged() {
    const TOTAL: u64 = 20_000;
    let mut lab = lab();
    let receiver_host = lab.add_public_host("receiver").unwrap();
    let sender_host = lab.add_host_behind("sender", NatKind::Home).unwrap();
    lab.set_loss(Link::Host(sender_host), 2).unwrap();
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap().to_string();
    let mut receiver = agent(&lab, receiver_host, "receiver", &["--data", &data_arg]);
    let mut sender = agent(&lab, sender_host, "sender", &[]);
    let sender_node = sender.node().to_string();
    sender.send(receiver.address(), TOTAL, "k").unwrap();
    let mut tally = Tally::default();
    receive(&mut receiver, &mut tally, &sender_node, "k", TOTAL / 3);
    receiver.process().kill();
    // What it printed before it died counts too.
    for line in receiver.process().rest(Duration::from_secs(10)) {
        if let Some(message) = ferry_interop::lab::Received::parse(&line) {
            tally.record(&message);
        }
    }
    let before = tally.received(&sender_node, "k");
    assert!(before < TOTAL, "the kill came mid-stream");
    // Same data directory and port: same key, same address, same stored messages.
    let mut receiver = agent(
        &lab,
        receiver_host,
        "receiver again",
        &["--data", &data_arg],
    );
    receive(&mut receiver, &mut tally, &sender_node, "k", TOTAL);
    sender.wait_sent("k", WAIT).unwrap();
    // Redelivery of what was printed but not yet acknowledged to the store is allowed (same
    // message id); a message under a new id is a duplicate.
    assert_clean(&tally, &[(&sender_node, "k", TOTAL)]);
}

#[test]
fn a_partition_made_by_the_senders_router_then_heal_delivers_everything_in_order() {
    const TOTAL: u64 = 2000;
    let mut lab = lab();
    let receiver_host = lab.add_public_host("receiver").unwrap();
    let sender_host = lab.add_host_behind("sender", NatKind::Home).unwrap();
    let router = lab.router_of(sender_host).unwrap().unwrap();
    lab.set_loss(Link::Host(sender_host), 1).unwrap();
    let mut receiver = agent(&lab, receiver_host, "receiver", &[]);
    let mut sender = agent(&lab, sender_host, "sender", &[]);
    let sender_node = sender.node().to_string();
    sender.send(receiver.address(), TOTAL, "p").unwrap();
    let mut tally = Tally::default();
    receive(&mut receiver, &mut tally, &sender_node, "p", 200);
    lab.set_partitioned(Link::Uplink(router), true).unwrap();
    // The outage itself: what the scenario is about, not a wait for something.
    std::thread::sleep(Duration::from_secs(5));
    lab.set_partitioned(Link::Uplink(router), false).unwrap();
    receive(&mut receiver, &mut tally, &sender_node, "p", TOTAL);
    sender.wait_sent("p", WAIT).unwrap();
    assert_clean(&tally, &[(&sender_node, "p", TOTAL)]);
}

#[test]
fn a_peer_of_an_unknown_version_behind_a_nat_is_refused_on_both_sides() {
    let mut lab = lab();
    let current_host = lab.add_public_host("current").unwrap();
    let future_host = lab.add_host_behind("future", NatKind::Symmetric).unwrap();
    let mut current = agent(&lab, current_host, "current", &[]);
    let mut future = agent(&lab, future_host, "future", &["--alpn", "ferry/999"]);
    future.send(current.address(), 1, "v").unwrap();
    let error = future.wait_sent("v", WAIT).unwrap_err().to_string();
    assert!(error.contains("does not speak protocol ferry/1"), "{error}");
    // The accepting side says so in its log.
    ferry_testkit::wait::wait_for_blocking("the refusal in the accepting side's log", || {
        current
            .process()
            .stderr_tail()
            .contains("does not speak ferry/1")
    });
    assert_eq!(current.received_now(), Vec::new());
}

#[test]
fn the_cli_sends_and_calls_from_behind_a_home_router_to_a_public_node() {
    let mut lab = lab();
    let app_host = lab.add_public_host("app").unwrap();
    let cli_host = lab.add_host_behind("cli", NatKind::Home).unwrap();
    let mut app = agent(&lab, app_host, "app", &[]);
    let ferry = ferry_testkit::harness::ferry_binary();
    assert!(
        ferry.exists(),
        "build the ferry binary first: {}",
        ferry.display()
    );
    let run = |args: &[&str]| {
        let mut command: Command = lab.host(cli_host).unwrap().namespace().command(&ferry);
        let output = command.args(args).env("RUST_LOG", "warn").output().unwrap();
        assert!(
            output.status.success(),
            "ferry {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&["send", &app.address().to_string(), "across"]);
    let line = app.process().wait_for_prefix("recv ", WAIT).unwrap();
    assert!(line.ends_with("- across"), "{line}");
    let target = format!("{}@{}/last", app.node(), app.address().hints()[0]);
    assert_eq!(run(&["call", &target, "what did you get?"]), "across\n");
}
