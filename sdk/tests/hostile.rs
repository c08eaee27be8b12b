//! Hostile peers against a real node (issue 7): address floods, bad addresses presented on
//! the wire, and peers that open streams and stall, trickle, announce huge frames or send
//! garbage. The hostile side is a [`FakePeer`] speaking the wire protocol by hand; what the
//! node did is read from its public counters ([`Node::stats`]) and from what it answers.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use ferry::address::ADDRESS_CORE_LEN;
use ferry::frame::{self, ErrorCode, Frame, Open, StreamKind};
use ferry::{Address, Clock as _, MailboxId, Node, NodeConfig, NodeStats, SecretKey, SendError};
use ferry_testkit::fake_peer::{read_close, FakePeer, Intruder, Rng};
use ferry_testkit::wait::wait_for;

const WAIT: Duration = Duration::from_secs(20);

async fn node_with(config: NodeConfig) -> Node {
    Node::bind(SecretKey::generate(), config).await.unwrap()
}

/// Waits until `read` of the node's stats gives `expected`.
async fn settles<T: PartialEq + std::fmt::Debug>(
    node: &Node,
    read: impl Fn(&NodeStats) -> T,
    expected: T,
) {
    let what = format!("the node's stats to show {expected:?}");
    wait_for(&what, || read(&node.stats()) == expected).await;
}

/// Application close codes of QUIC connections (docs/PROTOCOL.md §2.6).
const ADMISSION_REFUSED: u32 = 1;
const PROTOCOL: u32 = 3;

fn unix_now() -> u64 {
    ferry::SystemClock.unix_now()
}

/// The encoding of `kind` followed by one frame.
fn opening(kind: StreamKind, frame: &Frame<'_>) -> Vec<u8> {
    let mut out = vec![kind as u8];
    frame::put_frame(&mut out, frame);
    out
}

/// Opens a stream on `connection`, writes `bytes`, finishes, and reads the node's answer to
/// the end: the code of its CLOSE frame, or `None` if it answered without one.
async fn present(connection: &quinn::Connection, bytes: &[u8]) -> Option<ErrorCode> {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    let mut buf = BytesMut::new();
    let mut code = None;
    while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
        buf.extend_from_slice(&chunk.bytes);
        while let Ok(Some((frame, used))) = frame::decode_frame(&buf, 1 << 20) {
            if let Frame::Close { code: closed, .. } = frame {
                code = Some(closed);
            }
            let _ = buf.split_to(used);
        }
    }
    code
}

/// What the flood presents: one OPEN (or junk) per stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Junk {
    /// Random bytes where the OPEN frame should be.
    Garbage,
    /// An OPEN whose target core is malformed (weak node id, bad signature encoding).
    Malformed,
    /// Another node's id.
    WrongNode,
    /// This node, expired.
    Expired,
    /// This node, a mailbox that does not exist.
    NoSuchMailbox,
    /// This node and an open mailbox, a made-up signature: passes every cheap check.
    Forged,
    /// A valid address (one of a few), presented again and again.
    Valid,
}

/// 100 000 junk and forged addresses in a burst over one connection: only the ones that pass
/// the cheap checks (right node, not expired, open mailbox) cost a signature check, valid
/// ones cost one check per distinct address, and no table grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_flood_costs_signature_checks_only_past_the_cheap_checks() {
    const TOTAL: usize = 100_000;
    // Forgeries that reach the signature check cost ~40 µs each in release builds and much more
    // in the debug builds tests run in; a few hundred show the count is exact.
    const FORGED: usize = 300;
    const VALID_DISTINCT: usize = 8;
    // Malformed frames are protocol violations, which would end the connection after
    // `max_violations`; this test is about the cost of addresses, so they may go on.
    let node = node_with(NodeConfig {
        max_violations: 0,
        ..NodeConfig::default()
    })
    .await;
    let mailbox = node.mailbox();
    let fake = FakePeer::bind(0);
    let from = Address::mint(&fake.key, MailboxId(1), None, vec![]);
    let others: Vec<_> = (0..16).map(|_| SecretKey::generate().public()).collect();
    let valid: Vec<Address> = (0..VALID_DISTINCT as u64)
        .map(|i| node.address_for(mailbox.id(), Some(unix_now() + 3600 + i)))
        .collect();
    let mut rng = Rng(0x5eed);
    let mut inputs = Vec::with_capacity(TOTAL);
    for i in 0..TOTAL {
        let kind = match i % 100 {
            _ if i < FORGED => Junk::Forged,
            0 => Junk::Valid,
            1..=20 => Junk::Garbage,
            21..=35 => Junk::Malformed,
            36..=55 => Junk::WrongNode,
            56..=75 => Junk::Expired,
            _ => Junk::NoSuchMailbox,
        };
        let mut core = mailbox.address().core_bytes().unwrap();
        let mut signature = [0u8; 64];
        rng.fill(&mut signature);
        signature[63] &= 0x0f;
        core[48..].copy_from_slice(&signature);
        match kind {
            Junk::Garbage => {
                let mut bytes = vec![0u8; (rng.next_u64() % 300) as usize];
                rng.fill(&mut bytes);
                bytes.insert(0, StreamKind::Mailbox as u8);
                inputs.push((kind, bytes));
                continue;
            }
            Junk::Malformed => {
                if rng.next_u64().is_multiple_of(2) {
                    core[..32].copy_from_slice(&[0; 32]); // small order
                } else {
                    core[111] |= 0x80; // S not canonical
                }
            }
            Junk::WrongNode => {
                let other = others[(rng.next_u64() % 16) as usize];
                core[..32].copy_from_slice(other.as_bytes());
            }
            Junk::Expired => {
                let at = 1 + rng.next_u64() % unix_now();
                core[40..48].copy_from_slice(&at.to_be_bytes());
            }
            Junk::NoSuchMailbox => {
                core[32..40].copy_from_slice(&rng.next_u64().to_be_bytes());
            }
            Junk::Forged => {}
            Junk::Valid => core = valid[i / 100 % VALID_DISTINCT].core_bytes().unwrap(),
        }
        let mut bytes = vec![StreamKind::Mailbox as u8];
        // The OPEN frame by hand: the core may be one `Address` cannot hold.
        let mut fields = Vec::with_capacity(1 + 2 * ADDRESS_CORE_LEN + 9);
        fields.push(0x01);
        fields.extend_from_slice(&core);
        fields.extend_from_slice(&from.core_bytes().unwrap());
        fields.extend_from_slice(&rng.next_u64().to_be_bytes());
        fields.push(0);
        frame::put_varint(&mut bytes, fields.len() as u64);
        bytes.extend_from_slice(&fields);
        inputs.push((kind, bytes));
    }

    let connection = fake.connect(node.id(), node.local_addr()).await;
    // The valid addresses once each first, one after the other: one signature check each,
    // then cached. (Streams presenting a new address at the same moment may each check it.)
    let present_valid = || async {
        for address in &valid {
            let open = Frame::Open(Box::new(Open {
                target: address.without_hints(),
                from: from.clone(),
                epoch: 0,
                first_seq: 0,
            }));
            assert_eq!(
                present(&connection, &opening(StreamKind::Mailbox, &open)).await,
                None
            );
        }
    };
    let warm = node.stats().signature_checks;
    present_valid().await;
    assert_eq!(node.stats().signature_checks - warm, VALID_DISTINCT as u64);
    let before = node.stats();
    let started = Instant::now();
    let inputs = Arc::new(inputs);
    let workers = 128;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let connection = connection.clone();
        let inputs = inputs.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for (kind, bytes) in inputs.iter().skip(worker).step_by(workers) {
                answers.push((*kind, present(&connection, bytes).await));
            }
            answers
        }));
    }
    let mut answers = std::collections::HashMap::new();
    for task in tasks {
        for (kind, code) in task.await.unwrap() {
            *answers.entry((kind, code)).or_insert(0usize) += 1;
        }
    }
    let elapsed = started.elapsed();
    let after = node.stats();

    // Every input got the answer its first failing check gives, and nothing else.
    let count = |kind, code| answers.get(&(kind, code)).copied().unwrap_or(0);
    let total = |kind| {
        answers
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    for (kind, code) in [
        (Junk::Garbage, ErrorCode::PROTOCOL),
        (Junk::Malformed, ErrorCode::PROTOCOL),
        (Junk::WrongNode, ErrorCode::WRONG_NODE),
        (Junk::Expired, ErrorCode::EXPIRED),
        (Junk::NoSuchMailbox, ErrorCode::NO_SUCH_MAILBOX),
        (Junk::Forged, ErrorCode::FORGED),
    ] {
        assert!(total(kind) > 0);
        assert_eq!(
            count(kind, Some(code)),
            total(kind),
            "{kind:?}: {answers:?}"
        );
    }
    // Valid addresses are accepted: the node answers ACCEPT, then FIN after our FIN.
    assert_eq!(count(Junk::Valid, None), total(Junk::Valid), "{answers:?}");
    assert_eq!(
        answers.values().sum::<usize>(),
        TOTAL,
        "every stream answered"
    );

    // Signature checks: one per forgery; none for the rest (the valid ones are cached).
    assert_eq!(
        after.signature_checks - before.signature_checks,
        FORGED as u64
    );
    assert_eq!(
        after.forged_addresses - before.forged_addresses,
        FORGED as u64
    );
    // Nothing grew: the mailboxes, the dedup table, the peers.
    assert_eq!(after.mailboxes, 2); // the inbox and this one
    assert_eq!(after.dedup_entries, 0);
    assert_eq!(after.connected_peers, 1);
    // The cache of verified signatures holds the valid addresses still (no forgery took a
    // place in it): presented again, they cost no check.
    present_valid().await;
    assert_eq!(node.stats().signature_checks, after.signature_checks);
    // Streams are not left open.
    settles(&node, |stats| stats.streams_in, 0).await;
    eprintln!("{TOTAL} addresses in {elapsed:?}");
    node.shutdown(Duration::from_millis(100)).await;
}

/// A valid address presented to another node: WRONG_NODE, before any signature check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_address_presented_to_the_wrong_node_is_refused() {
    let owner = node_with(NodeConfig::default()).await;
    let other = node_with(NodeConfig::default()).await;
    let mailbox = owner.mailbox();
    let fake = FakePeer::bind(0);
    let from = Address::mint(&fake.key, MailboxId(1), None, vec![]);
    let connection = fake.connect(other.id(), other.local_addr()).await;
    let open = Frame::Open(Box::new(Open {
        target: mailbox.address().clone(),
        from,
        epoch: 1,
        first_seq: 0,
    }));
    let code = present(&connection, &opening(StreamKind::Mailbox, &open)).await;
    assert_eq!(code, Some(ErrorCode::WRONG_NODE));
    // The same address as a conversation target and as a watched mailbox.
    let converse = Frame::Converse(frame::ConverseTarget::Address(Box::new(
        mailbox.address().clone(),
    )));
    let mut bytes = opening(StreamKind::Conversation, &converse);
    frame::put_frame(&mut bytes, &Frame::Accept { max_message: 100 });
    assert_eq!(
        present(&connection, &bytes).await,
        Some(ErrorCode::WRONG_NODE)
    );
    let monitor = Frame::Monitor(Box::new(mailbox.address().clone()));
    assert_eq!(
        present(&connection, &opening(StreamKind::Monitor, &monitor)).await,
        Some(ErrorCode::WRONG_NODE)
    );
    assert_eq!(other.stats().signature_checks, 0);
    // The owner takes it.
    let sender = node_with(NodeConfig::default()).await;
    sender.send(mailbox.address(), "hi").await.unwrap();
    owner.shutdown(Duration::from_millis(100)).await;
    other.shutdown(Duration::from_millis(100)).await;
    sender.shutdown(Duration::from_millis(100)).await;
}

/// An address that expires exactly now, or a second ago, is refused end to end without a
/// signature check; one that expires in the future is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_expiring_now_or_a_second_ago_are_refused() {
    let a = node_with(NodeConfig::default()).await;
    let b = node_with(NodeConfig::default()).await;
    let mailbox = b.mailbox();
    let now = unix_now();
    for expires in [now, now - 1] {
        let address = b.address_for(mailbox.id(), Some(expires));
        assert_eq!(
            a.send(&address, "late").await,
            Err(SendError::Expired(expires))
        );
    }
    assert_eq!(b.stats().signature_checks, 0);
    let later = b.address_for(mailbox.id(), Some(now + 60));
    a.send(&later, "in time").await.unwrap();
    assert_eq!(b.stats().signature_checks, 1);
    a.shutdown(Duration::from_millis(100)).await;
    b.shutdown(Duration::from_millis(100)).await;
}

/// A node whose limits are short enough for tests.
fn strict_config() -> NodeConfig {
    NodeConfig {
        open_timeout: Duration::from_millis(500),
        frame_timeout: Duration::from_millis(500),
        ..NodeConfig::default()
    }
}

/// A peer that opens streams and sends nothing, or only the kind byte, is cut off at
/// `open_timeout`: reset with TIMEOUT, or CLOSE TIMEOUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_are_cut_off_at_the_open_timeout() {
    let node = node_with(strict_config()).await;
    let fake = FakePeer::bind(0);
    let connection = fake.connect(node.id(), node.local_addr()).await;
    let started = Instant::now();
    // Nothing at all on the first stream; the node learns of it when the second (a higher
    // stream id) arrives with its kind byte only.
    let (_send1, mut recv1) = connection.open_bi().await.unwrap();
    let (mut send2, mut recv2) = connection.open_bi().await.unwrap();
    send2.write_all(&[StreamKind::Mailbox as u8]).await.unwrap();
    let mut buf = BytesMut::new();
    let (code, reason) = read_close(&mut recv2, &mut buf).await.unwrap();
    assert_eq!(code, ErrorCode::TIMEOUT, "{reason}");
    let timeout = quinn::VarInt::from_u32(ErrorCode::TIMEOUT.0 as u32);
    assert_eq!(
        recv1.read_chunk(64, true).await.err(),
        Some(quinn::ReadError::Reset(timeout))
    );
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(node.stats().streams_cut_off, 2);
    settles(&node, |stats| stats.streams_in, 0).await;
    node.shutdown(Duration::from_millis(100)).await;
}

/// A peer is granted `initial_incoming_streams` at first, more whenever half of its grant is
/// in use, and never more than `max_incoming_streams`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_credit_grows_with_use_up_to_max_incoming_streams() {
    let node = node_with(NodeConfig {
        initial_incoming_streams: 4,
        max_incoming_streams: 20,
        ..NodeConfig::default()
    })
    .await;
    let fake = FakePeer::bind(0);
    let connection = fake.connect(node.id(), node.local_addr()).await;
    // Each stream sends its kind byte only: the node holds it until `open_timeout` (10 s).
    let mut held = Vec::new();
    for opened in 0..20 {
        let (mut send, recv) = tokio::time::timeout(WAIT, connection.open_bi())
            .await
            .unwrap_or_else(|_| panic!("no credit for stream {} of 20", opened + 1))
            .unwrap();
        send.write_all(&[StreamKind::Mailbox as u8]).await.unwrap();
        held.push((send, recv));
    }
    settles(&node, |stats| stats.streams_in, 20).await;
    // The 21st waits: 20 is the most this peer is granted.
    let beyond = tokio::time::timeout(Duration::from_millis(500), connection.open_bi()).await;
    assert!(
        beyond.is_err(),
        "a stream beyond max_incoming_streams opened"
    );
    assert_eq!(node.stats().streams_in, 20);
    node.shutdown(Duration::from_millis(100)).await;
}

/// A length prefix of 4 GB is refused at once, before anything is buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_gigabyte_length_prefix_is_refused_at_once() {
    let node = node_with(strict_config()).await;
    let mailbox = node.mailbox();
    let hostile = Intruder::connect(&node, mailbox.address()).await;
    let (mut send, mut recv, mut buf) = hostile.open_stream().await;
    let mut prefix = Vec::new();
    frame::put_varint(&mut prefix, 4 << 30);
    prefix.push(0x03);
    let started = Instant::now();
    send.write_all(&prefix).await.unwrap();
    let (code, reason) = read_close(&mut recv, &mut buf).await.unwrap();
    assert_eq!(code, ErrorCode::TOO_LARGE, "{reason}");
    assert!(reason.contains("4294967296"), "{reason}");
    assert!(started.elapsed() < Duration::from_millis(450));
    // The 6 bytes read (prefix and type) are given back when the stream ends.
    settles(&node, |stats| stats.buffered_bytes, 0).await;
    node.shutdown(Duration::from_millis(100)).await;
}

/// A frame trickled one byte at a time is cut off at `frame_timeout` with CLOSE TIMEOUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_frame_is_cut_off_at_the_frame_timeout() {
    let node = node_with(strict_config()).await;
    let mailbox = node.mailbox();
    let hostile = Intruder::connect(&node, mailbox.address()).await;
    let (mut send, mut recv, mut buf) = hostile.open_stream().await;
    // One whole message first: it is delivered, the trickle comes after.
    let mut whole = Vec::new();
    frame::put_frame(&mut whole, &Frame::Message(b"\x02ok"));
    send.write_all(&whole).await.unwrap();
    let mut header = Vec::new();
    frame::put_message_header(&mut header, 1000);
    send.write_all(&header).await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            // Real time is under test: a byte every 50 ms, against the node's frame_timeout.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if send.write_all(&[0x55]).await.is_err() {
                return;
            }
        }
    });
    let (code, reason) = read_close(&mut recv, &mut buf).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(code, ErrorCode::TIMEOUT, "{reason}");
    assert!(reason.contains("frame_timeout"), "{reason}");
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(
        mailbox
            .recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "ok"
    );
    trickle.abort();
    assert!(node.stats().streams_cut_off >= 1);
    node.shutdown(Duration::from_millis(100)).await;
}

/// Time the node spends not reading (its mailbox is full) does not count against a frame:
/// only waiting for the peer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_does_not_count_against_the_frame_timeout() {
    let node = node_with(NodeConfig {
        mailbox_capacity: 1,
        ..strict_config()
    })
    .await;
    let mailbox = node.mailbox();
    let hostile = Intruder::connect(&node, mailbox.address()).await;
    let (mut send, mut recv, mut buf) = hostile.open_stream().await;
    // Two whole messages fill the mailbox and block the stream; half a third follows.
    let mut bytes = Vec::new();
    for text in ["a", "b", "c"] {
        frame::put_frame(
            &mut bytes,
            &Frame::Message(&postcard::to_allocvec(text).unwrap()),
        );
    }
    let cut = bytes.len() - 1;
    send.write_all(&bytes[..cut]).await.unwrap();
    // The node stops reading: one message waits in the mailbox, the next for room in it.
    settles(&node, |stats| stats.mailbox_depth, 1).await;
    // Well past frame_timeout (500 ms) without reading: real time is what is tested here.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Well past frame_timeout while the node was not reading: the stream still stands.
    send.write_all(&bytes[cut..]).await.unwrap();
    for text in ["a", "b", "c"] {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<String>().unwrap(), text);
    }
    send.finish().unwrap();
    assert_eq!(read_close(&mut recv, &mut buf).await, None);
    assert_eq!(node.stats().streams_cut_off, 0);
    node.shutdown(Duration::from_millis(100)).await;
}

/// Garbage is refused with PROTOCOL: as a stream kind, as an opening frame, and after OPEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_cut_off_with_a_reason() {
    let node = node_with(NodeConfig {
        max_violations: 0,
        ..strict_config()
    })
    .await;
    let mailbox = node.mailbox();
    let hostile = Intruder::connect(&node, mailbox.address()).await;
    let mut rng = Rng(7);
    for _ in 0..50 {
        let mut garbage = vec![0u8; 4096];
        rng.fill(&mut garbage);
        // After a valid OPEN: the first frame that is not a MESSAGE ends the stream.
        let (mut send, mut recv, mut buf) = hostile.open_stream().await;
        garbage[0] = 0x05; // a length of 5 ...
        garbage[1] = 0x42; // ... and an unknown type
        let _ = send.write_all(&garbage).await;
        let (code, _) = read_close(&mut recv, &mut buf).await.unwrap();
        assert_eq!(code, ErrorCode::PROTOCOL);
    }
    // An unknown stream kind: stopped and reset with PROTOCOL, nothing written.
    let (mut send, mut recv) = hostile.connection.open_bi().await.unwrap();
    send.write_all(&[0x7f, 1, 2, 3]).await.unwrap();
    let protocol = quinn::VarInt::from_u32(ErrorCode::PROTOCOL.0 as u32);
    assert_eq!(
        recv.read_chunk(64, true).await.err(),
        Some(quinn::ReadError::Reset(protocol))
    );
    // Garbage where OPEN belongs.
    let mut bytes = vec![StreamKind::Mailbox as u8];
    let mut garbage = vec![0u8; 300];
    rng.fill(&mut garbage);
    bytes.extend_from_slice(&garbage);
    assert_eq!(
        present(&hostile.connection, &bytes).await,
        Some(ErrorCode::PROTOCOL)
    );
    node.shutdown(Duration::from_millis(100)).await;
}

/// Every frame type, cut at every byte offset and sent as the whole stream, over a real
/// stream: the node answers with a typed CLOSE (or, for a stream cut before its kind byte, a
/// reset), never a panic, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_opening_frame_cut_at_every_offset_over_a_real_stream() {
    let node = node_with(NodeConfig {
        max_violations: 0,
        ..strict_config()
    })
    .await;
    let mailbox = node.mailbox();
    let hostile = Intruder::connect(&node, mailbox.address()).await;
    let openings = [
        hostile.open.clone(),
        opening(
            StreamKind::Conversation,
            &Frame::Converse(frame::ConverseTarget::Service("some.service")),
        ),
        opening(
            StreamKind::Conversation,
            &Frame::Converse(frame::ConverseTarget::Address(Box::new(
                mailbox.address().clone(),
            ))),
        ),
        opening(StreamKind::Conversation, &Frame::Lookup("some.service")),
        opening(
            StreamKind::Monitor,
            &Frame::Monitor(Box::new(mailbox.address().clone())),
        ),
    ];
    let mut cuts = 0;
    for bytes in &openings {
        for cut in 1..bytes.len() {
            let code = present(&hostile.connection, &bytes[..cut]).await;
            // The stream ends (FIN) inside the opening frame.
            assert_eq!(
                code,
                Some(ErrorCode::PROTOCOL),
                "cut at {cut} of {bytes:02x?}"
            );
            cuts += 1;
        }
    }
    assert_eq!(cuts, 236 + 15 + 115 + 14 + 114);
    // After a valid OPEN: a MESSAGE cut at every offset, then FIN.
    let mut message = Vec::new();
    frame::put_frame(&mut message, &Frame::Message(&[0x11; 200]));
    for cut in 1..message.len() {
        let (mut send, mut recv, mut buf) = hostile.open_stream().await;
        send.write_all(&message[..cut]).await.unwrap();
        send.finish().unwrap();
        let (code, reason) = read_close(&mut recv, &mut buf).await.unwrap();
        assert_eq!(code, ErrorCode::PROTOCOL, "cut at {cut}");
        assert_eq!(reason, "stream ended inside a frame");
    }
    // Every other frame type, whole, in place of an opening frame.
    for frame in [
        Frame::Accept { max_message: 1 },
        Frame::Message(b"x"),
        Frame::Ack { next_seq: 1 },
        Frame::Close {
            code: ErrorCode::DONE,
            reason: "",
        },
        Frame::Found(Box::new(mailbox.address().clone())),
        Frame::Object(b"x"),
        Frame::Data(b"x"),
        Frame::DataEnd,
        Frame::Fail {
            code: ErrorCode::DONE,
            reason: "",
        },
    ] {
        for kind in [
            StreamKind::Mailbox,
            StreamKind::Conversation,
            StreamKind::Monitor,
        ] {
            let code = present(&hostile.connection, &opening(kind, &frame)).await;
            assert_eq!(code, Some(ErrorCode::PROTOCOL), "{kind:?} {frame:?}");
        }
    }
    // Still serving.
    let sender = node_with(NodeConfig::default()).await;
    sender.send(mailbox.address(), "still here").await.unwrap();
    assert_eq!(
        mailbox
            .recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "still here"
    );
    sender.shutdown(Duration::from_millis(100)).await;
    node.shutdown(Duration::from_millis(100)).await;
}

/// Streams that hold partly received messages count against the peer's buffer budget; the
/// stream that would go beyond it is closed with LIMIT, and the bytes are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_received_messages_count_against_the_buffer_limit() {
    let node = node_with(NodeConfig {
        max_message_size: 100_000,
        max_buffered_per_peer: 350_000,
        frame_timeout: Duration::from_secs(10),
        ..NodeConfig::default()
    })
    .await;
    let mailbox = node.mailbox();
    let hostile = Intruder::connect(&node, mailbox.address()).await;
    // 90 000 bytes of a 100 000-byte message: 90 004 bytes with the frame header.
    let mut message = Vec::new();
    frame::put_message_header(&mut message, 100_000);
    message.extend(std::iter::repeat_n(0xaa, 100_000));
    let held = 90_004;
    let wait_for = |bytes: u64| {
        let node = node.clone();
        async move {
            settles(&node, |stats| stats.buffered_bytes, bytes).await;
        }
    };
    let mut streams = Vec::new();
    for n in 1..=3u64 {
        let (mut send, recv, buf) = hostile.open_stream().await;
        send.write_all(&message[..held]).await.unwrap();
        streams.push((send, recv, buf));
        wait_for(n * held as u64).await;
    }
    // A fourth would take the peer to 360 016 bytes.
    let (mut send, mut recv, mut buf) = hostile.open_stream().await;
    send.write_all(&message[..held]).await.unwrap();
    let (code, reason) = read_close(&mut recv, &mut buf).await.unwrap();
    assert_eq!(code, ErrorCode::LIMIT, "{reason}");
    assert!(reason.contains("max_buffered_per_peer"), "{reason}");
    wait_for(3 * held as u64).await;
    // The rest of the first message arrives: it is delivered and its bytes given back.
    let (send, _, _) = &mut streams[0];
    send.write_all(&message[held..]).await.unwrap();
    let delivered = mailbox.recv_timeout(WAIT).await.unwrap();
    assert_eq!(delivered.payload().len(), 100_000);
    wait_for(2 * held as u64).await;
    // Streams that end give back what they held.
    drop(streams);
    wait_for(0).await;
    node.shutdown(Duration::from_millis(100)).await;
}

/// Handshakes from one source IP address beyond `handshake_rate_per_ip` are refused; the
/// address gets its budget back a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_rate_per_ip_are_refused() {
    let node = node_with(NodeConfig {
        handshake_rate_per_ip: 5,
        ..NodeConfig::default()
    })
    .await;
    let fakes: Vec<FakePeer> = (0..30).map(|_| FakePeer::bind(0)).collect();
    let started = Instant::now();
    let attempts = fakes.iter().map(|fake| {
        fake.endpoint
            .connect(node.local_addr(), &node.id().to_string())
            .unwrap()
    });
    let results = futures::future::join_all(attempts).await;
    let elapsed = started.elapsed();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(quinn::ConnectionError::ConnectionClosed(_))))
        .count();
    // 5 from the bucket of unproven addresses, 5 more once proven by a Retry, and what the
    // buckets refilled meanwhile.
    let refill = (elapsed.as_secs_f64() * 5.0 * 2.0).ceil() as usize;
    assert!(accepted >= 5, "{accepted} accepted");
    assert!(
        accepted <= 10 + refill,
        "{accepted} accepted in {elapsed:?}"
    );
    assert_eq!(accepted + refused, 30, "{results:?}");
    assert!(node.stats().handshakes_refused >= refused as u64);
    // A second later the address may connect again (real time is under test: the rate is
    // per second of the real clock).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = FakePeer::bind(0);
    again.connect(node.id(), node.local_addr()).await;
    node.shutdown(Duration::from_millis(100)).await;
}

/// A peer that keeps breaking the protocol is cut off as a whole: at `max_violations` its
/// connection is closed with a reason, and it is refused for `ban_duration`; other peers are
/// not affected, and address refusals do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_breaking_the_protocol_is_disconnected_and_banned() {
    let node = node_with(NodeConfig {
        max_violations: 4,
        ban_duration: Duration::from_secs(2),
        ..strict_config()
    })
    .await;
    let mailbox = node.mailbox();
    let hostile = Intruder::connect(&node, mailbox.address()).await;
    // Refusals of addresses are no violations: 20 forged ones leave the connection up.
    let mut forged = mailbox.address().core_bytes().unwrap();
    forged[50] ^= 1;
    let forged = Address::from_core_bytes(&forged).unwrap();
    for epoch in 0..20 {
        let open = Frame::Open(Box::new(Open {
            target: forged.clone(),
            from: Address::mint(&hostile.fake.key, MailboxId(1), None, vec![]),
            epoch,
            first_seq: 0,
        }));
        assert_eq!(
            present(&hostile.connection, &opening(StreamKind::Mailbox, &open)).await,
            Some(ErrorCode::FORGED)
        );
    }
    // Four streams of garbage: the fourth ends the connection (its CLOSE may not make it).
    for n in 1..=4 {
        let (mut send, mut recv, mut buf) = hostile.open_stream().await;
        send.write_all(&[0x02, 0x42, 0x00]).await.unwrap();
        let close = read_close(&mut recv, &mut buf).await.map(|(code, _)| code);
        if n < 4 {
            assert_eq!(close, Some(ErrorCode::PROTOCOL), "{n}");
        }
    }
    let reason = tokio::time::timeout(WAIT, hostile.connection.closed())
        .await
        .unwrap();
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(PROTOCOL));
            assert_eq!(&close.reason[..], b"too many protocol violations");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(node.stats().peers_banned, 1);
    // Coming back with the same key is refused while the ban lasts ...
    let again = hostile
        .fake
        .endpoint
        .connect(node.local_addr(), &node.id().to_string())
        .unwrap();
    let refused = match again.await {
        Ok(connection) => connection.closed().await,
        Err(error) => error,
    };
    match refused {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(ADMISSION_REFUSED));
            assert_eq!(&close.reason[..], b"banned for protocol violations");
        }
        other => panic!("{other:?}"),
    }
    // ... while an honest peer is served all along.
    let honest = node_with(NodeConfig::default()).await;
    honest.send(mailbox.address(), "hello").await.unwrap();
    // After the ban the peer is admitted again (real time is under test: the ban's length on
    // the real clock).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let back = hostile.fake.connect(node.id(), node.local_addr()).await;
    let hostile = Intruder {
        connection: back,
        open: hostile.open.clone(),
        fake: hostile.fake,
    };
    let _ = hostile.open_stream().await;
    assert_eq!(node.stats().peers_banned, 1);
    honest.shutdown(Duration::from_millis(100)).await;
    node.shutdown(Duration::from_millis(100)).await;
}

/// A conversation whose peer trickles a frame: the reader gets `Protocol` at
/// `frame_timeout`, and the stream is stopped with TIMEOUT; a 4 GB object is read past
/// without being buffered, and cut off the same way when its bytes do not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_conversation_frame_is_cut_off_at_the_frame_timeout() {
    let node = node_with(strict_config()).await;
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    let _service = node
        .serve(
            "victim",
            ferry::ServiceOptions::default(),
            move |mut conversation| {
                let results_tx = results_tx.clone();
                async move {
                    let started = Instant::now();
                    let first = conversation.recv_obj::<String>().await;
                    let second = conversation.recv_obj::<String>().await;
                    let _ = results_tx.send((first, second, started.elapsed()));
                }
            },
        )
        .unwrap();
    let fake = FakePeer::bind(0);
    let connection = fake.connect(node.id(), node.local_addr()).await;
    for huge in [false, true] {
        let mut bytes = opening(
            StreamKind::Conversation,
            &Frame::Converse(frame::ConverseTarget::Service("victim")),
        );
        frame::put_frame(&mut bytes, &Frame::Accept { max_message: 1000 });
        frame::put_frame(
            &mut bytes,
            &Frame::Object(&postcard::to_allocvec("whole").unwrap()),
        );
        if huge {
            frame::put_payload_header(&mut bytes, false, 4 << 30);
        } else {
            frame::put_payload_header(&mut bytes, false, 100);
        }
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        let trickle = tokio::spawn(async move {
            loop {
                // Real time is under test: a byte every 50 ms, against the frame_timeout.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if send.write_all(&[0x33]).await.is_err() {
                    return;
                }
            }
        });
        let (first, second, elapsed) = tokio::time::timeout(WAIT, results.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.unwrap(), "whole");
        match second {
            Err(ferry::ConversationError::Protocol(reason)) => {
                assert!(reason.contains("frame_timeout"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        // The handler dropped the conversation unanswered (the reset may overtake its ACCEPT).
        let failed = quinn::VarInt::from_u32(ErrorCode::HANDLER_FAILED.0 as u32);
        let end = loop {
            match recv.read_chunk(1024, true).await {
                Ok(Some(_)) => {}
                other => break other,
            }
        };
        assert_eq!(end.err(), Some(quinn::ReadError::Reset(failed)));
        trickle.abort();
    }
    node.shutdown(Duration::from_millis(100)).await;
}
