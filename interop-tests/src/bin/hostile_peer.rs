//! The hostile peer of the throughput test (interop-tests/tests/hostile_peer.rs,
//! docs/SECURITY.md §5): a process of its own, on one thread, standing for a machine of its
//! own, that attacks one node while told to.
//!
//! ```text
//! hostile_peer <node id> <node socket address> <address of a mailbox of the node>
//!
//! stdout: ready                      first line, once its first identities are made
//!         tally <silent> <trickled> <huge> <garbage> <out silent> <out trickle> <out huge>
//!               <out garbage> <refused>
//!                                    last line, when standard input ends
//! stdin:  attack | pause             attack from now on, or stop (it starts paused)
//! ```
//!
//! While attacking, it connects to the node with a fresh identity and misbehaves on that
//! connection in one of four ways, the next identity in the next way: streams that send their
//! kind byte and nothing more (100 at a time), frames trickled a byte every 50 ms (20 at a
//! time), 4 GB length prefixes, and garbage after OPEN. Thrown out (the node closes the
//! connection at `max_violations`), it comes back with a new identity, as an attacker would.
//!
//! The tally counts the streams the node cut off with the expected reason (TIMEOUT, TIMEOUT,
//! TOO_LARGE, PROTOCOL), the identities thrown out by the behaviour they had, and the
//! handshakes the node refused (rate limit or ban). It is built on `ferry::fake_peer`
//! (feature `test-util`), a peer that speaks the wire protocol by hand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use ferry::fake_peer::{read_close, FakePeer, Rng};
use ferry::frame::{self, ErrorCode, Frame, Open, StreamKind};
use ferry::{Address, MailboxId, NodeId};
use tokio::io::AsyncBufReadExt as _;

/// What the node did to the hostile peer, by behaviour.
#[derive(Default)]
struct CutOffs {
    silent: AtomicU64,
    trickle: AtomicU64,
    huge: AtomicU64,
    garbage: AtomicU64,
    /// Connections closed by the node (the peer reached `max_violations`), by the behaviour
    /// of the identity thrown out: silent, trickle, huge, garbage.
    thrown_out: [AtomicU64; 4],
    /// Connections refused by the node (handshake rate, or a ban).
    refused: AtomicU64,
}

/// What a hostile identity does on its connection.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Streams that send their kind byte and nothing more.
    Silent,
    /// Frames trickled a byte every 50 ms.
    Trickle,
    /// 4 GB length prefixes.
    Huge,
    /// Garbage after OPEN.
    Garbage,
}

/// One identity of the hostile peer, connected, with an OPEN for a mailbox of the node so
/// that it gets past the opening and can misbehave inside a mailbox stream.
struct Hostile {
    connection: quinn::Connection,
    open: Vec<u8>,
    _fake: FakePeer,
}

impl Hostile {
    /// Opens a mailbox stream, writes OPEN and reads the node's ACCEPT; `None` once the node
    /// has closed the connection (or answered otherwise).
    async fn try_open_stream(&self) -> Option<(quinn::SendStream, quinn::RecvStream, BytesMut)> {
        let (mut send, mut recv) = self.connection.open_bi().await.ok()?;
        send.write_all(&self.open).await.ok()?;
        let mut buf = BytesMut::new();
        loop {
            match frame::decode_frame(&buf, 1024) {
                Ok(Some((Frame::Accept { .. }, used))) => {
                    let _ = buf.split_to(used);
                    return Some((send, recv, buf));
                }
                Ok(None) => {}
                _ => return None,
            }
            let chunk = recv.read_chunk(1024, true).await.ok()??;
            buf.extend_from_slice(&chunk.bytes);
        }
    }
}

/// One identity: misbehaves on its connection while `active` is set, until the node closes
/// it, recording the CLOSE code each stream is cut off with.
async fn session(
    hostile: Arc<Hostile>,
    behaviour: Behaviour,
    active: Arc<AtomicBool>,
    cut: Arc<CutOffs>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let idle = || tokio::time::sleep(Duration::from_millis(10));
    let parallel = match behaviour {
        Behaviour::Silent => 100,
        Behaviour::Trickle => 20,
        Behaviour::Huge | Behaviour::Garbage => 1,
    };
    for _ in 0..parallel {
        let (hostile, active, cut) = (hostile.clone(), active.clone(), cut.clone());
        tasks.spawn(async move {
            let mut rng = Rng(11);
            loop {
                if !active.load(Relaxed) {
                    idle().await;
                    continue;
                }
                match behaviour {
                    Behaviour::Silent => {
                        let Ok((mut send, mut recv)) = hostile.connection.open_bi().await else {
                            return;
                        };
                        let _ = send.write_all(&[StreamKind::Mailbox as u8]).await;
                        let close = read_close(&mut recv, &mut BytesMut::new()).await;
                        if let Some((ErrorCode::TIMEOUT, _)) = close {
                            cut.silent.fetch_add(1, Relaxed);
                        }
                    }
                    Behaviour::Trickle => {
                        let Some((mut send, mut recv, mut buf)) = hostile.try_open_stream().await
                        else {
                            return;
                        };
                        let mut header = Vec::new();
                        frame::put_message_header(&mut header, 1 << 20);
                        let _ = send.write_all(&header).await;
                        let trickle = async {
                            loop {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                if send.write_all(&[0x55]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        tokio::select! {
                            _ = trickle => {}
                            close = read_close(&mut recv, &mut buf) => {
                                if let Some((ErrorCode::TIMEOUT, _)) = close {
                                    cut.trickle.fetch_add(1, Relaxed);
                                }
                            }
                        }
                    }
                    Behaviour::Huge | Behaviour::Garbage => {
                        idle().await;
                        let Some((mut send, mut recv, mut buf)) = hostile.try_open_stream().await
                        else {
                            return;
                        };
                        let mut bytes = Vec::new();
                        if let Behaviour::Garbage = behaviour {
                            bytes.resize(4096, 0);
                            rng.fill(&mut bytes);
                            bytes[0] = 0x05;
                            bytes[1] = 0x42;
                        } else {
                            frame::put_varint(&mut bytes, 4 << 30);
                            bytes.push(0x03);
                        }
                        let _ = send.write_all(&bytes).await;
                        match (behaviour, read_close(&mut recv, &mut buf).await) {
                            (Behaviour::Garbage, Some((ErrorCode::PROTOCOL, _))) => {
                                cut.garbage.fetch_add(1, Relaxed);
                            }
                            (Behaviour::Huge, Some((ErrorCode::TOO_LARGE, _))) => {
                                cut.huge.fetch_add(1, Relaxed);
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
    }
    let closed = hostile.connection.closed().await;
    if matches!(closed, quinn::ConnectionError::ApplicationClosed(_)) {
        if let Some(out) = cut.thrown_out.get(behaviour as usize) {
            out.fetch_add(1, Relaxed);
        }
    }
    tasks.shutdown().await;
}

/// The attacker: while `active`, connects to the node and misbehaves, each identity in one
/// of the four ways in turn; thrown out, it comes back with a new identity. Identities are
/// made ahead (as an attacker would), not while attacking: `spare` holds the first ones.
async fn attack(
    node: NodeId,
    addr: SocketAddr,
    target: Address,
    mut spare: Vec<FakePeer>,
    active: Arc<AtomicBool>,
    cut: Arc<CutOffs>,
) -> anyhow::Result<()> {
    let behaviours = [
        Behaviour::Silent,
        Behaviour::Garbage,
        Behaviour::Trickle,
        Behaviour::Huge,
    ];
    for behaviour in behaviours.into_iter().cycle() {
        while !active.load(Relaxed) {
            if spare.len() < 64 {
                spare.push(FakePeer::bind(0));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fake = spare.pop().unwrap_or_else(|| FakePeer::bind(0));
        let connecting = fake
            .endpoint
            .connect(addr, &node.to_string())
            .context("dialing the node")?;
        let Ok(connection) = connecting.await else {
            cut.refused.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut open = vec![StreamKind::Mailbox as u8];
        frame::put_frame(
            &mut open,
            &Frame::Open(Box::new(Open {
                target: target.without_hints(),
                from: Address::mint(&fake.key, MailboxId(1), None, vec![]),
                epoch: 1,
                first_seq: 0,
            })),
        );
        let hostile = Arc::new(Hostile {
            connection,
            open,
            _fake: fake,
        });
        session(hostile, behaviour, active.clone(), cut.clone()).await;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [node, addr, target] = args.as_slice() else {
        bail!("usage: hostile_peer <node id> <node socket address> <address of a mailbox>");
    };
    let node: NodeId = node.parse().context("node id")?;
    let addr: SocketAddr = addr.parse().context("socket address")?;
    let target: Address = target.parse().context("mailbox address")?;

    let active = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(CutOffs::default());
    let spare = (0..8).map(|_| FakePeer::bind(0)).collect();
    let attacker = tokio::spawn(attack(
        node,
        addr,
        target,
        spare,
        active.clone(),
        cut.clone(),
    ));
    println!("ready");

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "attack" => active.store(true, Relaxed),
            "pause" => active.store(false, Relaxed),
            other => bail!("unknown command {other:?}"),
        }
        if attacker.is_finished() {
            break;
        }
    }
    attacker.abort();
    if let Ok(Ok(Err(error))) = tokio::time::timeout(Duration::from_secs(1), attacker).await {
        return Err(error);
    }
    let [silent, trickle, huge, garbage] =
        [&cut.silent, &cut.trickle, &cut.huge, &cut.garbage].map(|n| n.load(Relaxed));
    let [out0, out1, out2, out3] = cut.thrown_out.each_ref().map(|n| n.load(Relaxed));
    println!(
        "tally {silent} {trickle} {huge} {garbage} {out0} {out1} {out2} {out3} {}",
        cut.refused.load(Relaxed)
    );
    Ok(())
}
