//! An honest peer's throughput to a node while a hostile peer attacks the node, against the
//! same honest peer to the same node with the attacker paused (docs/SECURITY.md §5).
//!
//! The hostile peer ([`ferry_testkit::hostile_peer`]) opens streams that send nothing, trickles
//! frames, announces 4 GB frames and sends garbage, and comes back with a new identity
//! whenever it is thrown out. It is a child process (this binary with the hidden option
//! `--hostile-peer`), on one thread at a lower priority (`nice -n 10`), standing for a machine
//! of its own: its own work does not take the honest peer's CPU, only the node's handling of
//! the attack does, which is what is measured. The node and the honest peer share this
//! process.
//!
//! Each run measures one quiet round and one attacked round, the attack paused or resumed
//! between them (the order alternates between runs). A round is one honest sender's messages
//! (16 KiB, pipelined, all acknowledged) for [`Settings::hostile_round`], long enough to span
//! several of the node's cut-offs (its `open_timeout` and `frame_timeout` are 500 ms here).
//! The ratio attacked / quiet is the figure (it was a test's 90 % bar, which a rate on a shared
//! machine could not hold in every build profile). A second row counts the hostile streams
//! and identities the node cut off during each attacked round: it shows that the attack was on
//! while the honest peer was measured.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use ferry::{Node, NodeConfig, SecretKey};
use ferry_testkit::hostile_peer::Tally;

use super::child::Child;
use super::{measure, shutdown, Better, Row, Settings};

/// Bytes per honest message.
const SIZE: usize = 16 * 1024;
/// How long the attacker winds down after `pause` before a quiet round (its silent streams
/// and trickles end at the node's timeouts, 500 ms).
const WIND_DOWN: Duration = Duration::from_millis(600);
/// How long the attack builds up after `attack` before an attacked round: its silent streams
/// and trickles in place.
const BUILD_UP: Duration = Duration::from_millis(300);

pub(super) async fn figure_hostile(settings: Settings) -> Result<Vec<Row>> {
    let mut throughput = Row::new(
        "honest 16 KiB msgs while a hostile peer attacks the node",
        "MB/s",
        Better::Higher,
    )
    .against("the same, attacker paused");
    let mut cut = Row::new(
        "hostile streams cut off per attacked round",
        "streams",
        Better::Higher,
    )
    .against("-");
    cut.note = Some("(shows the attack was on)".to_owned());
    let mut thrown_out = Row::new(
        "hostile identities banned per attacked round",
        "peers",
        Better::Higher,
    )
    .against("-");
    thrown_out.note = Some("(shows the attack was on)".to_owned());

    // Limits short enough that the attack is cut off many times in each round.
    let node = Node::bind(
        SecretKey::generate(),
        NodeConfig {
            open_timeout: Duration::from_millis(500),
            frame_timeout: Duration::from_millis(500),
            ..NodeConfig::default()
        },
    )
    .await?;
    let inbox = node.mailbox();
    let bait = node.mailbox();
    let honest = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    let from = honest.mailbox();
    let sender = from.sender(inbox.address())?;
    let reader = tokio::spawn(async move { while inbox.recv().await.is_ok() {} });
    let (mut hostile, _) = start_hostile(&node, &bait).await?;
    let payload = Bytes::from(vec![0x42; SIZE]);
    measure(round(&sender, &payload, settings.hostile_round / 4)).await?; // warm-up

    for run in 0..settings.runs {
        for attacked in [run % 2 == 1, run % 2 == 0] {
            if attacked {
                hostile.send("attack").await?;
                tokio::time::sleep(BUILD_UP).await;
                let before = node.stats();
                let rate = measure(round(&sender, &payload, settings.hostile_round)).await?;
                let after = node.stats();
                throughput.ferry.push(rate / 1e6);
                cut.ferry
                    .push((after.streams_cut_off - before.streams_cut_off) as f64);
                thrown_out
                    .ferry
                    .push((after.peers_banned - before.peers_banned) as f64);
            } else {
                hostile.send("pause").await?;
                tokio::time::sleep(WIND_DOWN).await;
                let rate = measure(round(&sender, &payload, settings.hostile_round)).await?;
                throughput.baseline.push(rate / 1e6);
            }
        }
    }
    hostile.send("pause").await?;
    hostile.send("tally").await?;
    let tally = hostile.answer("tally").await?;
    let tally =
        Tally::parse(&format!("tally {tally}")).ok_or_else(|| anyhow!("bad tally {tally:?}"))?;
    ensure!(
        tally.every_behaviour_cut_off(),
        "not every hostile behaviour was cut off: {tally:?}"
    );
    hostile.finish().await;
    reader.abort();
    shutdown(&[honest, node]).await;
    Ok(vec![throughput, cut, thrown_out])
}

/// The hostile peer against `node`, paused, with an address of `bait` to get past OPEN.
async fn start_hostile(node: &Node, bait: &ferry::Mailbox) -> Result<(Child, String)> {
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let mut command = tokio::process::Command::new("nice");
    command
        .args(["-n", "10"])
        .arg(exe)
        .arg("--hostile-peer")
        .arg(node.id().to_string())
        .arg(node.local_addr().to_string())
        .arg(bait.address().to_string())
        .stderr(Stdio::inherit());
    Child::start_command(command, Duration::from_secs(30)).await
}

/// Sends 16 KiB messages pipelined for `length`, then waits until the last one (and so, by
/// cumulative acknowledgement, every one) is acknowledged. Bytes per second.
async fn round(sender: &ferry::Sender, payload: &Bytes, length: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut messages = 0u64;
    let mut last = None;
    while started.elapsed() < length {
        last = Some(sender.enqueue_bytes(payload.clone()).await?);
        messages += 1;
    }
    if let Some(last) = last {
        last.await.context("delivery of the last message")?;
    }
    Ok((messages * SIZE as u64) as f64 / started.elapsed().as_secs_f64())
}
