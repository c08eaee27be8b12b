//! One hostile peer and one honest one against a node (issue 7, docs/SECURITY.md §5). The
//! hostile peer (`src/bin/hostile_peer.rs`, a process of its own standing for a machine of its
//! own) opens streams that send nothing, trickles frames, announces 4 GB frames and sends
//! garbage, and comes back with a new identity whenever it is thrown out. Each behaviour is cut
//! off with its reason, each identity thrown out is banned and counted, and the honest peer is
//! served all along.
//!
//! What the attack costs the honest peer's throughput is a figure of the benchmark
//! (`bench --only hostile`, interop-tests/src/bench/hostile.rs), not a check here: a rate
//! depends on the machine, its load and the build profile.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry::{Node, NodeConfig, SecretKey};
use ferry_testkit::harness::Process;
use ferry_testkit::hostile_peer::Tally;
use ferry_testkit::wait::{wait_for, DEADLINE};

/// Bytes per honest message.
const SIZE: usize = 16 * 1024;
/// Messages the honest peer has acknowledged while the attack is on, at least.
const HONEST_DURING_ATTACK: u64 = 200;

/// The hostile peer's tally so far (its `tally` command).
fn tally(hostile: &mut Process) -> Tally {
    hostile.send_line("tally").unwrap();
    next_tally(hostile)
}

/// The next tally line the hostile peer prints.
fn next_tally(hostile: &mut Process) -> Tally {
    tokio::task::block_in_place(|| hostile.wait_for("a tally", DEADLINE, Tally::parse, |_| {}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_is_cut_off_and_banned_while_an_honest_one_is_served() {
    // Limits short enough that the attack is cut off many times a second.
    let node = Node::bind(
        SecretKey::generate(),
        NodeConfig {
            open_timeout: Duration::from_millis(500),
            frame_timeout: Duration::from_millis(500),
            ..NodeConfig::default()
        },
    )
    .await
    .unwrap();
    let inbox = node.mailbox();
    let bait = node.mailbox();
    let honest = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let from = honest.mailbox();
    let sender = from.sender(inbox.address()).unwrap();
    // Everything the honest peer sends arrives, in order.
    let received = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            let mut n = 0u64;
            while let Ok(message) = inbox.recv().await {
                assert_eq!(message.payload().len(), SIZE);
                assert_eq!(message.payload()[..8], n.to_be_bytes());
                n += 1;
                received.store(n, Ordering::SeqCst);
            }
        }
    });

    let mut command = Command::new(env!("CARGO_BIN_EXE_hostile_peer"));
    command
        .arg(node.id().to_string())
        .arg(node.local_addr().to_string())
        .arg(bait.address().to_string());
    let mut hostile = Process::start("hostile_peer", command).unwrap();
    tokio::task::block_in_place(|| hostile.wait_for_prefix("ready", DEADLINE)).unwrap();

    // The honest peer sends all along, each message acknowledged before the next.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let honest_task = tokio::spawn({
        let (acked, stop) = (acked.clone(), stop.clone());
        async move {
            let payload = bytes::Bytes::from(vec![0x42; SIZE]);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut message = payload.to_vec();
                message[..8].copy_from_slice(&n.to_be_bytes());
                let delivery = sender.enqueue_bytes(message.into()).await.unwrap();
                delivery.await.unwrap();
                n += 1;
                acked.store(n, Ordering::SeqCst);
            }
            n
        }
    });
    wait_for("the honest peer's first message", || {
        acked.load(Ordering::SeqCst) > 0
    })
    .await;

    hostile.send_line("attack").unwrap();
    let before = node.stats();
    let acked_before = acked.load(Ordering::SeqCst);
    // Until every behaviour was cut off and a second identity of the first behaviour thrown
    // out (the attacker goes round all four), with the honest peer served meanwhile.
    let mut seen = Tally::default();
    let mut checks = 0u32;
    wait_for(
        "every hostile behaviour cut off, honest messages acknowledged",
        || {
            checks += 1;
            // Asking the hostile peer costs a round trip to it: not more often than every 50 ms.
            if checks % 10 == 1 {
                seen = tally(&mut hostile);
            }
            seen.every_behaviour_cut_off()
                && node.stats().peers_banned - before.peers_banned >= 5
                && acked.load(Ordering::SeqCst) - acked_before >= HONEST_DURING_ATTACK
        },
    )
    .await;
    hostile.send_line("pause").unwrap();
    // The end of its input ends the hostile peer, which prints its last tally.
    hostile.close_stdin();
    let tally = next_tally(&mut hostile);
    eprintln!(
        "{tally:?}; honest messages acknowledged: {}",
        acked.load(Ordering::SeqCst)
    );
    assert!(tally.every_behaviour_cut_off(), "{tally:?}");
    // Every identity thrown out is banned and counted (the last one may be thrown out after
    // the hostile peer made its tally).
    let banned = node.stats().peers_banned;
    let out = tally.thrown_out_total();
    assert!(
        banned == out || banned == out + 1,
        "{banned} banned: {tally:?}"
    );
    assert!(node.stats().streams_cut_off >= tally.silent + tally.trickled);

    // The honest peer was served: everything it sent arrived, in order.
    stop.store(true, Ordering::SeqCst);
    let sent = honest_task.await.unwrap();
    wait_for("the honest messages to arrive", || {
        received.load(Ordering::SeqCst) >= sent || reader.is_finished()
    })
    .await;
    if reader.is_finished() {
        panic!("the honest reader ended: {:?}", reader.await);
    }
    assert_eq!(received.load(Ordering::SeqCst), sent);
    reader.abort();
    honest.shutdown(Duration::from_millis(100)).await;
    node.shutdown(Duration::from_millis(100)).await;
}
