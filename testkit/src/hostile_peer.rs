//! The hostile peer (docs/SECURITY.md §5): a process of its own, on one thread, standing for a
//! machine of its own, that attacks one node while told to. The binary `hostile_peer` of this
//! crate runs it (its test: testkit/tests/hostile_peer.rs), and so does the benchmark's
//! `hostile` figure (interop-tests/src/bench/hostile.rs), which measures what the attack costs
//! an honest peer's throughput.
//!
//! ```text
//! hostile_peer <node id> <node socket address> <address of a mailbox of the node>
//!
//! stdout: ready                      first line, once its first identities are made
//!         tally <silent> <trickled> <huge> <garbage> <out silent> <out trickle> <out huge>
//!               <out garbage> <refused>
//!                                    on `tally`, and as the last line when standard input ends
//! stdin:  attack | pause             attack from now on, or stop (it starts paused)
//!         tally                      print the tally so far
//! ```
//!
//! [`Tally::parse`] reads a tally line.
//!
//! While attacking, it connects to the node with a fresh identity and misbehaves on that
//! connection in one of four ways, the next identity in the next way: streams that send their
//! kind byte and nothing more (100 at a time), frames trickled a byte every 50 ms (20 at a
//! time), 4 GB length prefixes, and garbage after OPEN. Thrown out (the node closes the
//! connection at `max_violations`), it comes back with a new identity, as an attacker would.
//!
//! The tally counts the streams the node cut off with the expected reason (TIMEOUT, TIMEOUT,
//! TOO_LARGE, PROTOCOL), the identities thrown out by the behaviour they had, and the
//! handshakes the node refused (rate limit or ban). It is built on [`crate::fake_peer`], a
//! peer that speaks the wire protocol by hand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::fake_peer::{read_close, FakePeer, Rng};
use anyhow::{bail, Context as _};
use bytes::BytesMut;
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
    // While paused, and between the opens of huge frames and garbage: the attack's pace in
    // real time.
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
                                // The behaviour itself: a byte every 50 ms of real time.
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
            // Paused: looks at the flag again every 10 ms (the `attack` line sets it).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fake = spare.pop().unwrap_or_else(|| FakePeer::bind(0));
        let connecting = fake
            .endpoint
            .connect(addr, &node.to_string())
            .context("dialing the node")?;
        let Ok(connection) = connecting.await else {
            cut.refused.fetch_add(1, Relaxed);
            // Refused (rate limit, ban): the attacker's pace in real time before the next try.
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

/// Runs the hostile peer with its command line `args` (without the program's name) on a
/// one-thread runtime of its own, until its standard input ends.
///
/// # Errors
///
/// If the arguments are not a node id, a socket address and a mailbox address, standard input
/// carries an unknown command, or dialing fails locally.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [node, addr, target] = args else {
        bail!("usage: hostile_peer <node id> <node socket address> <address of a mailbox>");
    };
    let node: NodeId = node.parse().context("node id")?;
    let addr: SocketAddr = addr.parse().context("socket address")?;
    let target: Address = target.parse().context("mailbox address")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?
        .block_on(run(node, addr, target))
}

/// The hostile peer against `node` at `addr`, with `target` (an address of one of its
/// mailboxes) to get past OPEN; see the module's documentation for its input and output.
async fn run(node: NodeId, addr: SocketAddr, target: Address) -> anyhow::Result<()> {
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
            "tally" => println!("{}", Tally::of(&cut)),
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
    println!("{}", Tally::of(&cut));
    Ok(())
}

/// What the hostile peer reports (its `tally` line): what the node did to it, by behaviour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Silent streams the node cut off with TIMEOUT.
    pub silent: u64,
    /// Trickled frames the node cut off with TIMEOUT.
    pub trickled: u64,
    /// 4 GB length prefixes the node refused with TOO_LARGE.
    pub huge: u64,
    /// Garbage the node refused with PROTOCOL.
    pub garbage: u64,
    /// Identities whose connection the node closed (too many violations), by behaviour:
    /// silent, trickle, huge, garbage.
    pub thrown_out: [u64; 4],
    /// Handshakes the node refused (rate limit or ban).
    pub refused: u64,
}

impl Tally {
    fn of(cut: &CutOffs) -> Self {
        Self {
            silent: cut.silent.load(Relaxed),
            trickled: cut.trickle.load(Relaxed),
            huge: cut.huge.load(Relaxed),
            garbage: cut.garbage.load(Relaxed),
            thrown_out: cut.thrown_out.each_ref().map(|n| n.load(Relaxed)),
            refused: cut.refused.load(Relaxed),
        }
    }

    /// Reads a `tally ...` line; `None` if it is not one.
    pub fn parse(line: &str) -> Option<Self> {
        let numbers: Vec<u64> = line
            .strip_prefix("tally ")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [silent, trickled, huge, garbage, out0, out1, out2, out3, refused] = numbers[..] else {
            return None;
        };
        Some(Self {
            silent,
            trickled,
            huge,
            garbage,
            thrown_out: [out0, out1, out2, out3],
            refused,
        })
    }

    /// Whether every behaviour was cut off with its reason: streams closed with TIMEOUT,
    /// TIMEOUT, TOO_LARGE and PROTOCOL, or the identity thrown out for too many violations
    /// (when the silent streams of an identity all time out at once, the connection may close
    /// before their CLOSE frames arrive); 4 GB frames and garbage are answered one by one, so
    /// each of them has answers counted.
    pub fn every_behaviour_cut_off(&self) -> bool {
        let streams = [self.silent, self.trickled, self.huge, self.garbage];
        streams
            .iter()
            .zip(self.thrown_out)
            .all(|(&streams, out)| streams + out > 0)
            && self.huge > 0
            && self.garbage > 0
    }

    /// Identities thrown out, all behaviours together.
    pub fn thrown_out_total(&self) -> u64 {
        self.thrown_out.iter().sum()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [out0, out1, out2, out3] = self.thrown_out;
        write!(
            f,
            "tally {} {} {} {} {out0} {out1} {out2} {out3} {}",
            self.silent, self.trickled, self.huge, self.garbage, self.refused
        )
    }
}
