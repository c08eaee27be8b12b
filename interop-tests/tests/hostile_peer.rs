//! One hostile peer and one honest one, measured side by side (issue 7, docs/SECURITY.md §5):
//! the honest sender's throughput to a node while a hostile peer attacks it is at least 90 % of
//! its throughput without the attack.
//!
//! The node and the honest peer share this test's one thread; the hostile peer is a process of
//! its own on one thread (`src/bin/hostile_peer.rs`), standing for a machine of its own. So on
//! a two-core machine the attacker's own work does not compete with the honest peer's; the
//! node's handling of the attack does, and that is what is measured. (With all three in one
//! process, attacking *another* node cost the honest sender as much as attacking this one: the
//! loss was the attacker's CPU, not the node's.) This test is alone in its test binary, so no
//! other test shares its thread's core.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;
use std::time::{Duration, Instant};

use ferry::{Node, NodeConfig, SecretKey};
use ferry_interop::harness::Process;

/// Rounds with and without the attack, alternating; the medians are compared.
const ROUNDS: usize = 11;
/// Batches of ROUNDS measured at most (see the loop).
const MAX_BATCHES: usize = 3;
/// The honest peer's attacked throughput over its quiet throughput must reach this.
const MIN_RATIO: f64 = 0.9;
/// Messages per round, pipelined, all acknowledged.
const MESSAGES: usize = 3000;
/// Bytes per message.
const SIZE: usize = 16 * 1024;

/// The hostile peer opens streams that send nothing, trickles frames, announces 4 GB frames
/// and sends garbage; thrown out, it comes back with a new identity. Each behaviour is cut off
/// with its reason, and the honest peer keeps at least 90 % of its throughput.
#[tokio::test(flavor = "current_thread")]
async fn an_honest_peer_keeps_its_throughput_while_a_hostile_one_is_cut_off() {
    // Limits short enough that the attack is cut off many times in each round.
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
    let reader = tokio::spawn(async move { while inbox.recv().await.is_ok() {} });

    // At a lower priority (`nice`), so that on a machine busy with other work the attacker
    // takes idle CPU rather than the honest peer's share, as a machine of its own would.
    let mut command = Command::new("nice");
    command
        .args(["-n", "10", env!("CARGO_BIN_EXE_hostile_peer")])
        .arg(node.id().to_string())
        .arg(node.local_addr().to_string())
        .arg(bait.address().to_string());
    let mut hostile = Process::start("hostile_peer", command).unwrap();
    // Nothing talks to the node yet, so blocking this thread is harmless.
    hostile
        .wait_for_prefix("ready", Duration::from_secs(30))
        .unwrap();
    let payload = bytes::Bytes::from(vec![0x42; SIZE]);

    // One round: MESSAGES messages, pipelined, all acknowledged. Bytes per second.
    let round = || {
        let sender = &sender;
        let payload = payload.clone();
        async move {
            let started = Instant::now();
            let mut deliveries = Vec::with_capacity(MESSAGES);
            for _ in 0..MESSAGES {
                deliveries.push(sender.enqueue_bytes(payload.clone()).await.unwrap());
            }
            for delivery in deliveries {
                delivery.await.unwrap();
            }
            (MESSAGES * SIZE) as f64 / started.elapsed().as_secs_f64()
        }
    };
    round().await; // warm-up: connection, windows
    let mut quiet = Vec::new(); // in the order measured
    let mut attacked = Vec::new();
    // What the node cut off during each attacked round: streams, and peers thrown out.
    let mut cut_per_round = Vec::new();
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    // Wall-clock rates on a shared machine are noisy: when a batch of rounds ends below the
    // bar, more rounds are measured and the medians taken over all of them. A node that
    // really loses throughput to the attack stays below the bar however many rounds run.
    for _ in 0..MAX_BATCHES {
        for _ in 0..ROUNDS {
            hostile.send_line("pause").unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            quiet.push(round().await);
            hostile.send_line("attack").unwrap();
            // Let the attack build up: silent streams and trickles in place.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = node.stats();
            attacked.push(round().await);
            let after = node.stats();
            cut_per_round.push((
                after.streams_cut_off - before.streams_cut_off,
                after.peers_banned - before.peers_banned,
            ));
        }
        if median(&attacked) / median(&quiet) >= MIN_RATIO {
            break;
        }
    }
    hostile.send_line("pause").unwrap();
    // The end of its input ends the hostile peer, which prints its tally.
    hostile.close_stdin();
    let tally = tokio::task::spawn_blocking(move || {
        let tally = hostile.wait_for_prefix("tally ", Duration::from_secs(30));
        (hostile, tally)
    });
    let (_hostile, tally) = tally.await.unwrap();
    let tally: Vec<u64> = tally
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (quiet_median, attacked_median) = (median(&quiet), median(&attacked));
    let ratio = attacked_median / quiet_median;
    let [silent, trickled, huge, garbage, out0, out1, out2, out3, refused] = tally[..] else {
        panic!("{tally:?}");
    };
    let thrown_out = [out0, out1, out2, out3];
    eprintln!(
        "honest throughput: {:.1} MB/s quiet, {:.1} MB/s attacked (ratio {ratio:.3}); \
         hostile streams cut off: {silent} silent, {trickled} trickled, {huge} huge, \
         {garbage} garbage; hostile identities thrown out (silent, trickle, huge, garbage): \
         {thrown_out:?}; handshakes refused: {refused}; cut off per attacked round \
         (streams, peers): {cut_per_round:?}; quiet {quiet:.0?}, attacked {attacked:.0?}",
        quiet_median / 1e6,
        attacked_median / 1e6,
    );
    // Each behaviour was cut off with its reason: its streams closed with TIMEOUT, TIMEOUT,
    // TOO_LARGE and PROTOCOL, and the identity thrown out for too many violations (when the
    // silent streams of an identity all time out at once, the connection may close before
    // their CLOSE frames arrive).
    for (streams, out) in [silent, trickled, huge, garbage]
        .into_iter()
        .zip(thrown_out)
    {
        assert!(streams + out > 0, "{tally:?}");
    }
    assert!(huge > 0 && garbage > 0, "{tally:?}");
    // (The last identity may be thrown out after the hostile peer made its tally.)
    let banned = node.stats().peers_banned;
    let out: u64 = thrown_out.iter().sum();
    assert!(
        banned == out || banned == out + 1,
        "{banned} banned: {tally:?}"
    );
    // The attack was on while the honest peer was measured: in most rounds at least one
    // hostile identity's worth of streams was cut off (on a loaded machine the low-priority
    // attacker may get little CPU in a round or two).
    let attacked_rounds = cut_per_round.iter().filter(|&&(streams, _)| streams >= 16);
    assert!(
        attacked_rounds.count() > cut_per_round.len() / 2,
        "{cut_per_round:?}"
    );
    assert!(
        ratio >= MIN_RATIO,
        "honest throughput fell to {ratio:.3} of its quiet rate"
    );
    reader.abort();
    honest.shutdown(Duration::from_millis(100)).await;
    node.shutdown(Duration::from_millis(100)).await;
}
