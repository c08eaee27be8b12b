//! Watches and conversations with a peer played by hand ([`FakePeer`]): what a node does when
//! the other side answers in ways a ferry node never would (no stream credit, no answer, CLOSE
//! with odd codes, streams stopped with NOT_ADMITTED, oversized and unexpected frames), and a
//! connection closed as soon as the node took it into use.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry::frame::{self, ConverseTarget, ErrorCode, Frame, StreamKind};
use ferry::{
    Address, CallError, ConversationError, DialError, DownReason, MailboxId, Node, NodeConfig,
    OpenError, SecretKey, ServiceOptions, Target,
};
use ferry_testkit::fake_peer::{self, FakePeer, Intruder};
use ferry_testkit::wait::wait_for;

const WAIT: Duration = Duration::from_secs(10);

async fn node_with(config: NodeConfig) -> Node {
    Node::bind(SecretKey::generate(), config).await.unwrap()
}

fn watched(fake: &FakePeer) -> Address {
    Address::mint(&fake.key, MailboxId(7), None, vec![fake.addr])
}

/// Serves every connection to `fake` with `serve` per stream; counts the streams.
fn serve_fake<F, Fut>(fake: &FakePeer, serve: F) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>)
where
    F: Fn(quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let streams = Arc::new(AtomicUsize::new(0));
    let counted = streams.clone();
    let endpoint = fake.endpoint.clone();
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Some(incoming) = endpoint.accept().await {
            let Ok(connection) = incoming.await else {
                continue;
            };
            connections.push(connection.clone());
            let counted = counted.clone();
            let serve = serve.clone();
            tokio::spawn(async move {
                while let Ok((send, recv)) = connection.accept_bi().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(send, recv));
                }
            });
        }
    });
    (streams, task)
}

fn short() -> NodeConfig {
    NodeConfig {
        open_timeout: Duration::from_millis(300),
        monitor_grace: Duration::from_millis(500),
        ..NodeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_nobody_answers_goes_down_instead_of_hanging() {
    let node = node_with(short()).await;
    // No stream credit at all.
    let silent = FakePeer::bind(0);
    let (_, task) = serve_fake(&silent, |_, _| async {});
    let down = tokio::time::timeout(WAIT, node.monitor(&watched(&silent)).unwrap()).await;
    assert_eq!(down.unwrap(), DownReason::NoAnswer);
    task.abort();
    // Streams, but no answer to MONITOR.
    let mute = FakePeer::bind(16);
    let (streams, task) = serve_fake(&mute, |send, recv| async move {
        let _held = (send, recv);
        std::future::pending::<()>().await;
    });
    let down = tokio::time::timeout(WAIT, node.monitor(&watched(&mute)).unwrap()).await;
    assert_eq!(down.unwrap(), DownReason::NoAnswer);
    assert!(
        streams.load(Ordering::SeqCst) >= 2,
        "retried within the grace"
    );
    task.abort();
    node.shutdown(Duration::from_millis(100)).await;
}

/// A fake watched node answering every MONITOR with CLOSE `code`.
fn closing_with(
    fake: &FakePeer,
    code: ErrorCode,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    serve_fake(fake, move |mut send, mut recv| async move {
        let mut buf = BytesMut::new();
        let (kind, _) = fake_peer::read_opening(&mut recv, &mut buf).await;
        assert_eq!(kind, StreamKind::Monitor as u8);
        let close = fake_peer::encode(&Frame::Close {
            code,
            reason: "refused",
        });
        let _ = send.write_all(&close).await;
        let _ = send.finish();
        let _ = send.stopped().await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_without_a_watcher_meaning_follow_the_documented_mapping() {
    let grace = Duration::from_millis(800);
    let node = node_with(NodeConfig {
        monitor_grace: grace,
        ..NodeConfig::default()
    })
    .await;
    // A code that may be transient (TIMEOUT) is retried for the grace period.
    let fake = FakePeer::bind(16);
    let (streams, task) = closing_with(&fake, ErrorCode::TIMEOUT);
    let started = Instant::now();
    let down = tokio::time::timeout(WAIT, node.monitor(&watched(&fake)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        down,
        DownReason::Rejected {
            code: ErrorCode::TIMEOUT.0,
            reason: "refused".into()
        }
    );
    assert!(started.elapsed() >= grace, "{:?}", started.elapsed());
    assert!(streams.load(Ordering::SeqCst) >= 2);
    task.abort();
    // A protocol error is final at once.
    let fake = FakePeer::bind(16);
    let (streams, task) = closing_with(&fake, ErrorCode::PROTOCOL);
    let started = Instant::now();
    let down = tokio::time::timeout(WAIT, node.monitor(&watched(&fake)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        down,
        DownReason::Rejected {
            code: ErrorCode::PROTOCOL.0,
            reason: "refused".into()
        }
    );
    assert!(started.elapsed() < grace);
    assert_eq!(streams.load(Ordering::SeqCst), 1);
    task.abort();
    node.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_stream_stopped_with_not_admitted_is_unreachable() {
    let node = node_with(NodeConfig {
        monitor_grace: Duration::from_secs(3),
        ..NodeConfig::default()
    })
    .await;
    let fake = FakePeer::bind(16);
    let (_, task) = serve_fake(&fake, |send, mut recv| async move {
        recv.stop(quinn::VarInt::from_u32(ErrorCode::NOT_ADMITTED.0 as u32))
            .unwrap();
        let _held = send;
        std::future::pending::<()>().await;
    });
    let down = tokio::time::timeout(WAIT, node.monitor(&watched(&fake)).unwrap())
        .await
        .unwrap();
    assert!(
        matches!(down, DownReason::Unreachable(DialError::Refused(_))),
        "{down:?}"
    );
    task.abort();
    node.shutdown(Duration::from_millis(100)).await;
}

// Conversations and calls.

fn fake_target(fake: &FakePeer) -> Target {
    Target::service(fake.id, "svc").with_hints(vec![fake.addr])
}

/// What the fake acceptor reads after the opening, until its end.
async fn read_rest(recv: &mut quinn::RecvStream) -> Result<(), quinn::ReadError> {
    while recv.read_chunk(64 * 1024, true).await?.is_some() {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_abandoned_before_the_answer_resets_with_cancelled() {
    let fake = FakePeer::bind(16);
    let node = node_with(NodeConfig::default()).await;
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel();
    let connection = fake.accept();
    let acceptor = tokio::spawn(async move {
        let connection = connection.await;
        // The acceptor reads the opening and never answers.
        loop {
            let Ok((send, mut recv)) = connection.accept_bi().await else {
                return;
            };
            let mut buf = BytesMut::new();
            let (kind, _) = fake_peer::read_opening(&mut recv, &mut buf).await;
            assert_eq!(kind, StreamKind::Conversation as u8);
            opened_tx.send(()).unwrap();
            let ended = read_rest(&mut recv).await;
            let stopped = send.stopped().await;
            ended_tx.send((ended, stopped)).unwrap();
        }
    });

    // A call whose deadline passes before the answer.
    let call: Result<String, CallError> = node
        .call(fake_target(&fake), "work")
        .timeout(Duration::from_millis(300))
        .await;
    assert_eq!(call, Err(CallError::Timeout));
    let (ended, stopped) = tokio::time::timeout(WAIT, ended_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let cancelled = quinn::VarInt::from_u32(ErrorCode::CANCELLED.0 as u32);
    // The small request went whole, with its FIN, before the answer (PROTOCOL.md §10.3): the
    // callee learns of the cancellation from the stop of its answer's direction.
    assert_eq!(ended, Ok(()));
    assert_eq!(stopped.unwrap(), Some(cancelled));
    opened_rx.recv().await.unwrap();

    // An open whose future is dropped before the answer.
    let opening = tokio::spawn({
        let node = node.clone();
        let target = fake_target(&fake);
        async move { node.open(target).await }
    });
    tokio::time::timeout(WAIT, opened_rx.recv())
        .await
        .unwrap()
        .unwrap();
    opening.abort();
    let (ended, stopped) = tokio::time::timeout(WAIT, ended_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended, Err(quinn::ReadError::Reset(cancelled)));
    assert_eq!(stopped.unwrap(), Some(cancelled));
    node.shutdown(Duration::from_millis(100)).await;
    acceptor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_waits_no_longer_than_open_timeout_for_stream_credit() {
    // The peer grants no stream at all.
    let fake = FakePeer::bind(0);
    let node = node_with(NodeConfig {
        open_timeout: Duration::from_millis(300),
        ..NodeConfig::default()
    })
    .await;
    let connection = tokio::spawn(fake.accept());
    let open = tokio::time::timeout(WAIT, node.open(fake_target(&fake))).await;
    assert_eq!(open.unwrap().unwrap_err(), OpenError::Timeout);
    // A call too, when its own deadline is later.
    let call = node
        .call::<_, String>(fake_target(&fake), "work")
        .timeout(WAIT * 2);
    let call = tokio::time::timeout(WAIT, call).await;
    assert_eq!(call.unwrap(), Err(CallError::Open(OpenError::Timeout)));
    drop(connection);
    node.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stopped_with_not_admitted_is_a_refusal() {
    let fake = FakePeer::bind(16);
    let node = node_with(NodeConfig {
        open_timeout: Duration::from_secs(3),
        ..NodeConfig::default()
    })
    .await;
    let acceptor = tokio::spawn({
        let accepted = fake.accept();
        async move {
            let connection = accepted.await;
            let mut held = Vec::new();
            // Stop every stream with NOT_ADMITTED, without resetting the other direction.
            while let Ok((send, mut recv)) = connection.accept_bi().await {
                recv.stop(quinn::VarInt::from_u32(ErrorCode::NOT_ADMITTED.0 as u32))
                    .unwrap();
                held.push(send);
            }
        }
    });
    let open = tokio::time::timeout(WAIT, node.open(fake_target(&fake)))
        .await
        .unwrap();
    assert!(
        matches!(open, Err(OpenError::Unreachable(DialError::Refused(_)))),
        "{open:?}"
    );
    node.shutdown(Duration::from_millis(100)).await;
    acceptor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_unexpected_frames_are_reported_once() {
    let node = node_with(NodeConfig {
        max_message_size: 1024,
        send_window: 1024,
        ..NodeConfig::default()
    })
    .await;
    let mut service = node.service("svc", ServiceOptions::default()).unwrap();
    let fake = FakePeer::bind(16);
    let connection = fake.connect(node.id(), node.local_addr()).await;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let mut head = vec![StreamKind::Conversation as u8];
    head.extend(fake_peer::encode(&Frame::Converse(
        ConverseTarget::Service("svc"),
    )));
    head.extend(fake_peer::encode(&Frame::Accept {
        max_message: 1 << 20,
    }));
    send.write_all(&head).await.unwrap();
    let mut buf = BytesMut::new();
    let accept = fake_peer::read_frame(&mut recv, &mut buf).await.unwrap();
    assert_eq!(
        accept,
        fake_peer::encode(&Frame::Accept { max_message: 1024 })
    );
    let object = |value: &str| postcard::to_allocvec(value).unwrap();
    let mut out = Vec::new();
    for frame in [
        Frame::Object(&object(&"x".repeat(2000))),
        Frame::Object(&object("small")),
        Frame::Data(b"abc"),
        Frame::DataEnd,
        Frame::Object(&object(&"y".repeat(100_000))),
        Frame::Object(&object("after")),
    ] {
        frame::put_frame(&mut out, &frame);
    }
    send.write_all(&out).await.unwrap();
    send.finish().unwrap();

    let mut conversation = tokio::time::timeout(WAIT, service.accept())
        .await
        .unwrap()
        .unwrap();
    // An object beyond the limit is consumed: the next read goes on after it.
    assert_eq!(
        conversation.recv_obj::<String>().await,
        Err(ConversationError::TooLarge {
            size: 2002,
            max: 1024
        })
    );
    assert_eq!(conversation.recv_obj::<String>().await.unwrap(), "small");
    // Data where an object was asked for is left unread, for recv_chunk.
    assert_eq!(
        conversation.recv_obj::<String>().await,
        Err(ConversationError::Unexpected("data"))
    );
    assert_eq!(
        conversation.recv_chunk().await.unwrap().unwrap().as_ref(),
        b"abc"
    );
    assert_eq!(conversation.recv_chunk().await.unwrap(), None);
    // Also an object beyond every frame bound is skipped, not buffered.
    assert_eq!(
        conversation.recv_obj::<String>().await,
        Err(ConversationError::TooLarge {
            size: 100_003,
            max: 1024
        })
    );
    assert_eq!(conversation.recv_obj::<String>().await.unwrap(), "after");
    assert_eq!(
        conversation.recv_obj::<String>().await,
        Err(ConversationError::Ended)
    );
    node.shutdown(Duration::from_millis(100)).await;
}

/// A small message and a small call request reach the acceptor before it answered the opening:
/// they ride with it (docs/PROTOCOL.md §5.6, §10.3), so each costs one round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_and_requests_ride_with_the_opening() {
    let fake = FakePeer::bind(16);
    let node = node_with(NodeConfig::default()).await;
    let (_, acceptor) = serve_fake(&fake, |mut send, mut recv| async move {
        let mut buf = BytesMut::new();
        let (kind, _) = fake_peer::read_opening(&mut recv, &mut buf).await;
        if kind == StreamKind::Conversation as u8 {
            // The opener's ACCEPT, then its request: both before this side wrote anything.
            let limit = fake_peer::read_frame(&mut recv, &mut buf).await.unwrap();
            assert_eq!(
                frame::decode_frame(&limit, 64).unwrap().unwrap().0,
                Frame::Accept {
                    max_message: NodeConfig::default().max_message_size as u64
                }
            );
            let request = fake_peer::read_frame(&mut recv, &mut buf).await.unwrap();
            let encoded = postcard::to_allocvec("ping").unwrap();
            assert_eq!(request, fake_peer::encode(&Frame::Object(&encoded)));
            assert!(
                fake_peer::read_frame(&mut recv, &mut buf).await.is_none(),
                "the request is all, and its FIN came with it"
            );
            let mut answer = fake_peer::encode(&Frame::Accept { max_message: 1024 });
            let reply = postcard::to_allocvec("pong").unwrap();
            answer.extend(fake_peer::encode(&Frame::Object(&reply)));
            send.write_all(&answer).await.unwrap();
            send.finish().unwrap();
            let _ = send.stopped().await;
        } else {
            let message = fake_peer::read_frame(&mut recv, &mut buf).await.unwrap();
            let payload = postcard::to_allocvec(&7u32).unwrap();
            let mut expected = Vec::new();
            frame::put_message_header(&mut expected, payload.len());
            expected.extend(&payload);
            assert_eq!(message, expected, "the message, before the ACCEPT");
            let mut answer = fake_peer::encode(&Frame::Accept { max_message: 1024 });
            answer.extend(fake_peer::encode(&Frame::Ack { next_seq: 1 }));
            send.write_all(&answer).await.unwrap();
            let _ = read_rest(&mut recv).await;
        }
    });
    let from = node.mailbox();
    let sent = tokio::time::timeout(WAIT, from.send(&watched(&fake), &7u32)).await;
    assert_eq!(sent.unwrap(), Ok(()));
    let answer: Result<String, CallError> =
        tokio::time::timeout(WAIT, node.call(fake_target(&fake), "ping"))
            .await
            .unwrap();
    assert_eq!(answer.unwrap(), "pong");
    node.shutdown(Duration::from_millis(100)).await;
    acceptor.abort();
}

/// A call whose reply came with its FIN ends without a STOP_SENDING from the caller: it takes
/// the FIN when it drops the conversation (PROTOCOL.md §10.8), so a completed call costs no
/// frame (often no packet) more. On one thread, so that the fake callee's reply and FIN always
/// share a packet.
#[tokio::test]
async fn a_call_answered_with_its_fin_sends_no_stop() {
    let fake = FakePeer::bind(16);
    let node = node_with(NodeConfig::default()).await;
    let connection = fake.accept();
    let acceptor = tokio::spawn(async move {
        let connection = connection.await;
        for _ in 0..2 {
            let (mut send, mut recv) = connection.accept_bi().await.unwrap();
            let mut buf = BytesMut::new();
            let (kind, _) = fake_peer::read_opening(&mut recv, &mut buf).await;
            assert_eq!(kind, StreamKind::Conversation as u8);
            // The opener's ACCEPT and request, then its FIN.
            fake_peer::read_frame(&mut recv, &mut buf).await.unwrap();
            fake_peer::read_frame(&mut recv, &mut buf).await.unwrap();
            assert!(fake_peer::read_frame(&mut recv, &mut buf).await.is_none());
            let mut answer = fake_peer::encode(&Frame::Accept { max_message: 1024 });
            let reply = postcard::to_allocvec("pong").unwrap();
            answer.extend(fake_peer::encode(&Frame::Object(&reply)));
            send.write_all(&answer).await.unwrap();
            send.finish().unwrap();
        }
        connection
    });
    // A stop the first call's end sent would arrive before the second call's request.
    for _ in 0..2 {
        let answer: Result<String, CallError> =
            tokio::time::timeout(WAIT, node.call(fake_target(&fake), "ping"))
                .await
                .unwrap();
        assert_eq!(answer.unwrap(), "pong");
    }
    let connection = tokio::time::timeout(WAIT, acceptor).await.unwrap().unwrap();
    assert_eq!(connection.stats().frame_rx.stop_sending, 0);
    node.shutdown(Duration::from_millis(100)).await;
}

/// An idle mailbox stream ends with CLOSE SHUTTING_DOWN when its node stops, rather than with
/// the connection: its one wait covers its grant's revocation and the node's shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_closed_shutting_down_when_its_node_stops() {
    let node = node_with(NodeConfig::default()).await;
    let target = node.mailbox();
    let intruder = Intruder::connect(&node, target.address()).await;
    let (_send, mut recv, mut buf) = intruder.open_stream().await;
    let stopping = tokio::spawn({
        let node = node.clone();
        async move { node.shutdown(Duration::from_secs(5)).await }
    });
    let close = tokio::time::timeout(WAIT, fake_peer::read_close(&mut recv, &mut buf))
        .await
        .unwrap();
    assert_eq!(close.map(|(code, _)| code), Some(ErrorCode::SHUTTING_DOWN));
    stopping.await.unwrap();
}

/// A mailbox stream reset right behind its messages (as a sender resets a stream it gives up on,
/// to send again elsewhere) has not ended its run: the same messages sent again on a new stream
/// of the run are delivered once. Wherever the receiver reads the reset (quinn reports it once,
/// then reads past it as the end), it must not take it for the sender's FIN, which would forget
/// the run and deliver everything again. (Which read meets the reset depends on timing; the
/// outcome must not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_behind_its_messages_keeps_its_run() {
    const MESSAGES: u64 = 200;
    const RUNS: u64 = 8;
    let node = node_with(NodeConfig::default()).await;
    let mailbox = node.mailbox();
    for run in 0..RUNS {
        let message = |seq: u64| {
            let mut frame = Vec::new();
            frame::put_message_header(&mut frame, 16);
            frame.extend(run.to_be_bytes());
            frame.extend(seq.to_be_bytes());
            frame
        };
        let intruder = Intruder::connect(&node, mailbox.address()).await;
        // Every message in a write of its own, so that they arrive in many packets, then the
        // reset right behind them.
        let (mut send, _recv, _) = intruder.open_stream().await;
        for seq in 0..MESSAGES {
            send.write_all(&message(seq)).await.unwrap();
        }
        send.reset(0u32.into()).unwrap();
        // The same run again, from its first message.
        let (mut send, mut recv, mut buf) = intruder.open_stream().await;
        let all: Vec<u8> = (0..MESSAGES).flat_map(message).collect();
        send.write_all(&all).await.unwrap();
        send.finish().unwrap();
        loop {
            let ack = tokio::time::timeout(WAIT, fake_peer::read_frame(&mut recv, &mut buf))
                .await
                .unwrap()
                .expect("an ACK of every message before the stream ends");
            match frame::decode_frame(&ack, 64).unwrap().unwrap().0 {
                Frame::Ack { next_seq } if next_seq == MESSAGES => break,
                Frame::Ack { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // Acknowledged means delivered: every message is in the mailbox, once.
        let delivered = mailbox.try_recv_many(usize::MAX).unwrap();
        let seqs: Vec<u64> = delivered
            .iter()
            .map(|message| {
                let payload = message.payload();
                assert_eq!(payload[..8], run.to_be_bytes(), "a message of this run");
                u64::from_be_bytes(payload[8..16].try_into().unwrap())
            })
            .collect();
        assert_eq!(seqs, (0..MESSAGES).collect::<Vec<_>>(), "run {run}");
    }
    node.shutdown(Duration::from_millis(100)).await;
}

/// Messages delivered before a frame that breaks the protocol are in the mailbox when the stream
/// ends with PROTOCOL: the messages of one read are handed to the mailbox together, and the run
/// counts them as delivered (a resend on a new stream would skip them), so a violation later in
/// the same read must not drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_a_protocol_violation_in_the_same_read_are_delivered() {
    let node = node_with(NodeConfig::default()).await;
    let mailbox = node.mailbox();
    let intruder = Intruder::connect(&node, mailbox.address()).await;
    let (mut send, mut recv, mut buf) = intruder.open_stream().await;
    let mut out = Vec::new();
    for payload in [b"one", b"two", b"six"] {
        frame::put_frame(&mut out, &Frame::Message(payload));
    }
    // A frame no sender sends on a mailbox stream, in the same write as the messages.
    frame::put_frame(&mut out, &Frame::Accept { max_message: 1 });
    send.write_all(&out).await.unwrap();
    let close = tokio::time::timeout(WAIT, fake_peer::read_close(&mut recv, &mut buf))
        .await
        .unwrap();
    assert_eq!(close.map(|(code, _)| code), Some(ErrorCode::PROTOCOL));
    let delivered = mailbox.try_recv_many(10).unwrap();
    let payloads: Vec<&[u8]> = delivered
        .iter()
        .map(|message| message.payload().as_ref())
        .collect();
    assert_eq!(payloads, [&b"one"[..], b"two", b"six"]);
    node.shutdown(Duration::from_millis(100)).await;
}

/// A connection the node took into use and the peer closed at once (a dialer abandoning a
/// handshake just as the node completed it) leaves the node on the connection the rule set
/// aside, which the peer still uses, rather than on none: the node's next stream to the peer
/// goes there, with no new dial, and the set-aside connection's grace period no longer
/// closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_right_after_it_took_over_gives_way_to_the_one_set_aside() {
    let grace = Duration::from_millis(200);
    let node = node_with(NodeConfig {
        duplicate_grace: grace,
        ..NodeConfig::default()
    })
    .await;
    let fake = FakePeer::bind(16);
    let kept = fake.connect(node.id(), node.local_addr()).await;
    wait_for("the first connection in use", || {
        node.connections_established() == 1
    })
    .await;
    // Dialed by the same node: the newer one replaces the first, which is set aside.
    let abandoned = fake.connect(node.id(), node.local_addr()).await;
    wait_for("the second connection in use", || {
        node.connections_established() == 2
    })
    .await;
    abandoned.close(0u32.into(), b"");
    wait_for("the set-aside connection taken back", || {
        node.connections_established() == 3
    })
    .await;
    assert!(node.is_connected(&fake.id));
    // A witness: another peer's connection set aside after `kept` was, so its grace period
    // ends after the one `kept` had; once the node closed it, it would have closed `kept`.
    let witness = FakePeer::bind(16);
    let set_aside = witness.connect(node.id(), node.local_addr()).await;
    let _kept_by_witness = witness.connect(node.id(), node.local_addr()).await;
    let witness_closed = tokio::time::timeout(WAIT, set_aside.closed()).await;
    assert!(
        matches!(
            witness_closed,
            Ok(quinn::ConnectionError::ApplicationClosed(_))
        ),
        "the witness's set-aside connection closed: {witness_closed:?}"
    );
    assert_eq!(kept.close_reason(), None, "closed after it was taken back");
    let reached = tokio::time::timeout(WAIT, async {
        tokio::select! {
            stream = kept.accept_bi() => stream.is_ok(),
            _ = node.ping(fake.id, &[]) => false,
        }
    })
    .await;
    assert_eq!(
        reached,
        Ok(true),
        "the ping's stream on the set-aside connection"
    );
    node.shutdown(Duration::from_secs(1)).await;
}
