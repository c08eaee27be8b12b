//! Two- and three-node tests of the peer core on loopback.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use ferry::address::ADDRESS_CORE_LEN;
use ferry::{
    Address, Admission, AttachError, Clock as _, DialError, MailboxId, Node, NodeConfig, RecvError,
    SecretKey, SendError,
};
use ferry_testkit::lossy::{LinkConfig, LossyLink};
use ferry_testkit::wait::{wait_for, wait_for_ok};
use futures::StreamExt;

mod common;

use common::{node, node_with, unix_now, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_both_ways_with_reply_address() {
    let a = node().await;
    let b = node().await;
    let box_a = a.mailbox();
    let box_b = b.mailbox();

    box_a.send(box_b.address(), &("hello", 1u32)).await.unwrap();
    let message = box_b.recv_timeout(WAIT).await.unwrap();
    assert_eq!(
        message.decode::<(String, u32)>().unwrap(),
        ("hello".into(), 1)
    );
    assert_eq!(message.from().node(), a.id());
    assert_eq!(message.from().mailbox(), box_a.id());

    box_b.send(message.from(), "back").await.unwrap();
    let reply = box_a.recv_timeout(WAIT).await.unwrap();
    assert_eq!(reply.decode::<String>().unwrap(), "back");
    assert_eq!(reply.from().mailbox(), box_b.id());
    // One connection carries both directions.
    assert_eq!(a.stats().connected_peers, 1);
    assert_eq!(b.stats().connected_peers, 1);
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// `try_recv_many` takes what is queued, in order and never more than asked; the room it frees
/// (given back once per batch) lets a sender waiting on a full mailbox go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_queued_messages_in_batches_keeps_order_and_frees_room() {
    let a = node().await;
    let b = node_with(NodeConfig {
        mailbox_capacity: 4,
        ..NodeConfig::default()
    })
    .await;
    let mailbox = b.mailbox();
    let sender = a.sender(mailbox.address());
    let mut deliveries = Vec::new();
    for i in 0..40u32 {
        deliveries.push(sender.enqueue(&i).await.unwrap());
    }
    let mut received = Vec::new();
    while received.len() < 40 {
        let batch = mailbox.try_recv_many(3).unwrap();
        assert!(batch.len() <= 3, "{} messages for a max of 3", batch.len());
        if batch.is_empty() {
            // Nothing queued yet: wait for the next one.
            received.push(mailbox.recv_timeout(WAIT).await.unwrap());
        }
        received.extend(batch);
    }
    let values: Vec<u32> = received.iter().map(|m| m.decode().unwrap()).collect();
    assert_eq!(values, (0..40).collect::<Vec<_>>());
    for delivery in deliveries {
        tokio::time::timeout(WAIT, delivery).await.unwrap().unwrap();
    }
    assert!(mailbox.try_recv_many(0).unwrap().is_empty());
    for node in [a, b] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_and_local_delivery() {
    let a = node().await;
    let b = node().await;
    let c = node().await;
    let inbox_c = c.mailbox();
    a.send(inbox_c.address(), "from a").await.unwrap();
    b.send(inbox_c.address(), "from b").await.unwrap();
    c.send(inbox_c.address(), "from c itself").await.unwrap();
    let mut seen = HashMap::new();
    for _ in 0..3 {
        let message = inbox_c.recv_timeout(WAIT).await.unwrap();
        seen.insert(message.from().node(), message.decode::<String>().unwrap());
    }
    assert_eq!(seen[&a.id()], "from a");
    assert_eq!(seen[&b.id()], "from b");
    assert_eq!(seen[&c.id()], "from c itself");
    // C answers both remote senders through their reply addresses.
    for (peer, node) in [(a.id(), &a), (b.id(), &b)] {
        let address = node.inbox().address().without_hints();
        assert_eq!(address.node(), peer);
        c.send(&address, "ack").await.unwrap();
        let reply = node.inbox().recv_timeout(WAIT).await.unwrap();
        assert_eq!(reply.decode::<String>().unwrap(), "ack");
    }
    for node in [a, b, c] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_sender_order_ten_senders_ten_thousand_each() {
    const SENDERS: usize = 10;
    const EACH: u32 = 10_000;
    let a = node().await;
    let b = node().await;
    let target = b.mailbox();
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let from = a.mailbox();
        let to = target.address().clone();
        tasks.push(tokio::spawn(async move {
            let sender = from.sender(&to).unwrap();
            let mut last = None;
            for seq in 0..EACH {
                last = Some(sender.enqueue(&seq).await.unwrap());
            }
            last.unwrap().await.unwrap();
            from.id()
        }));
    }
    let mut next: HashMap<MailboxId, u32> = HashMap::new();
    for _ in 0..SENDERS * EACH as usize {
        let message = target.recv_timeout(WAIT).await.unwrap();
        let seq: u32 = message.decode().unwrap();
        let expected = next.entry(message.from().mailbox()).or_insert(0);
        assert_eq!(seq, *expected, "out of order from {:?}", message.from());
        *expected += 1;
    }
    let senders: HashSet<MailboxId> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(senders.len(), SENDERS);
    assert!(next.values().all(|&count| count == EACH));
    assert!(
        target.try_recv_many(10).unwrap().is_empty(),
        "nothing duplicated"
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// An address of `address.node()` whose core is changed by `tamper`, re-encoded with a valid
/// checksum so that only the signature check can catch it.
fn tampered(address: &Address, tamper: impl FnOnce(&mut [u8; ADDRESS_CORE_LEN])) -> Address {
    let mut core = address.core_bytes().unwrap();
    tamper(&mut core);
    Address::from_core_bytes(&core)
        .unwrap()
        .with_hints(address.hints().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_expired_and_revoked_addresses_are_refused() {
    let a = node().await;
    let b = node().await;
    let target = b.mailbox();
    let address = target.address().clone();
    a.send(&address, "valid").await.unwrap();
    target.recv_timeout(WAIT).await.unwrap();
    let checks_before = b.stats().signature_checks;

    // Tampered expiry: the mailbox exists, the signature no longer matches.
    let in_an_hour = unix_now() + 3600;
    let later = tampered(&address, |core| {
        core[40..48].copy_from_slice(&in_an_hour.to_be_bytes())
    });
    assert_eq!(a.send(&later, "x").await, Err(SendError::Forged));
    // A signature by another key over B's node id and the same mailbox.
    let impostor = Address::mint(&SecretKey::generate(), target.id(), None, vec![]);
    let forged = tampered(&address, |core| {
        core[48..].copy_from_slice(impostor.signature().unwrap());
    });
    assert_eq!(a.send(&forged, "x").await, Err(SendError::Forged));
    assert_eq!(b.stats().signature_checks, checks_before + 2);
    assert_eq!(b.stats().forged_addresses, 2);

    // Tampered mailbox id: refused before any signature check.
    let elsewhere = tampered(&address, |core| core[39] ^= 1);
    assert_eq!(a.send(&elsewhere, "x").await, Err(SendError::NoSuchMailbox));
    assert_eq!(b.stats().signature_checks, checks_before + 2);

    // Expired: refused by the cheap checks, also before any signature check.
    let expired = b.address_for(target.id(), Some(unix_now() - 10));
    assert!(matches!(
        a.send(&expired, "x").await,
        Err(SendError::Expired(_))
    ));
    assert_eq!(b.stats().signature_checks, checks_before + 2);

    // Revoked: closing the mailbox revokes its address.
    let revoked = address.clone();
    target.close();
    assert_eq!(a.send(&revoked, "x").await, Err(SendError::NoSuchMailbox));

    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_address_works_until_it_expires_also_on_an_open_stream() {
    let clock = std::sync::Arc::new(ferry::ManualClock::from_system());
    let a = node().await;
    let b = Node::builder(SecretKey::generate())
        .clock(clock.clone())
        .bind()
        .await
        .unwrap();
    let soon = b.mailbox_expiring(clock.unix_now() + 2);
    a.send(soon.address(), "in time").await.unwrap();
    soon.recv_timeout(WAIT).await.unwrap();
    // Expiry is a date on B's clock: moving it is the same as waiting.
    clock.advance(2);
    assert!(matches!(
        a.send(soon.address(), "late").await,
        Err(SendError::Expired(_))
    ));
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_the_wrong_node_id_is_refused() {
    let a = node().await;
    let b = node().await;
    let c_key = SecretKey::generate();
    // An address of node C whose dial hint points at node B.
    let address = Address::mint(&c_key, MailboxId(1), None, vec![b.local_addr()]);
    match a.send(&address, "x").await {
        Err(SendError::Unreachable(DialError::WrongNode { expected, actual })) => {
            assert_eq!(expected, c_key.public());
            assert_eq!(actual, b.id());
        }
        other => panic!("expected WrongNode, got {other:?}"),
    }
    assert_eq!(
        a.connect(c_key.public(), Some(b.local_addr())).await,
        Err(DialError::WrongNode {
            expected: c_key.public(),
            actual: b.id()
        })
    );
    // No hints and no known address: a clear error, not a hang.
    let nowhere = Address::mint(&c_key, MailboxId(1), None, vec![]);
    assert_eq!(
        a.send(&nowhere, "x").await,
        Err(SendError::Unreachable(DialError::NoAddress(c_key.public())))
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_messages_are_refused_alone_and_in_batches() {
    let a = node_with(NodeConfig {
        max_message_size: 64 * 1024,
        ..NodeConfig::default()
    })
    .await;
    let b = node_with(NodeConfig {
        max_message_size: 1024,
        ..NodeConfig::default()
    })
    .await;
    let target = b.mailbox();
    // Over the sender's own limit: refused before anything is sent.
    assert_eq!(
        a.send_bytes(target.address(), Bytes::from(vec![0u8; 64 * 1024 + 1]))
            .await,
        Err(SendError::TooLarge {
            size: 64 * 1024 + 1,
            max: 64 * 1024
        })
    );
    // Over the receiver's limit: refused with the receiver's limit; the conversation goes on.
    let sender = a.sender(target.address());
    let small = sender
        .enqueue_bytes(Bytes::from(vec![1u8; 1024]))
        .await
        .unwrap();
    let big = sender
        .enqueue_bytes(Bytes::from(vec![2u8; 1025]))
        .await
        .unwrap();
    let after = sender
        .enqueue_bytes(Bytes::from(vec![3u8; 10]))
        .await
        .unwrap();
    assert_eq!(small.await, Ok(()));
    assert_eq!(
        big.await,
        Err(SendError::TooLarge {
            size: 1025,
            max: 1024
        })
    );
    assert_eq!(after.await, Ok(()));
    assert_eq!(
        target.recv_timeout(WAIT).await.unwrap().payload().len(),
        1024
    );
    assert_eq!(target.recv_timeout(WAIT).await.unwrap().payload().len(), 10);
    // In batches (`enqueue_all`): over the sender's own limit, nothing of the batch is queued.
    assert_eq!(
        sender
            .enqueue_all([
                Bytes::from_static(b"first"),
                Bytes::from(vec![0u8; 64 * 1024 + 1])
            ])
            .await
            .err(),
        Some(SendError::TooLarge {
            size: 64 * 1024 + 1,
            max: 64 * 1024
        })
    );
    // Over the receiver's limit, in the middle: the batch fails with it, the others arrive.
    let batch = sender
        .enqueue_all([
            Bytes::from(vec![1u8; 10]),
            Bytes::from(vec![2u8; 1025]),
            Bytes::from(vec![3u8; 20]),
        ])
        .await
        .unwrap();
    assert_eq!(
        batch.await,
        Err(SendError::TooLarge {
            size: 1025,
            max: 1024
        })
    );
    assert_eq!(target.recv_timeout(WAIT).await.unwrap().payload().len(), 10);
    assert_eq!(target.recv_timeout(WAIT).await.unwrap().payload().len(), 20);
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_send_window_goes_out_in_order_between_single_messages() {
    // A window of 4 KiB: the batch of 200 messages of 100 bytes (about 21 KiB) is queued in
    // parts of a quarter of it, each waiting for the acknowledgement of the ones before.
    let a = node_with(NodeConfig {
        send_window: 4096,
        max_message_size: 1024,
        ..NodeConfig::default()
    })
    .await;
    let b = node().await;
    let target = b.mailbox();
    let sender = a.sender(target.address());
    let message = |n: u32| Bytes::from([n.to_be_bytes().as_slice(), &[0u8; 96]].concat());
    let before = sender.enqueue_bytes(message(0)).await.unwrap();
    let batch = sender.enqueue_all((1..=200).map(message)).await.unwrap();
    let after = sender.enqueue_bytes(message(201)).await.unwrap();
    assert_eq!(batch.await, Ok(()));
    assert_eq!(before.await, Ok(()));
    assert_eq!(after.await, Ok(()));
    for n in 0..=201u32 {
        let received = target.recv_timeout(WAIT).await.unwrap();
        assert_eq!(received.payload(), &message(n), "message {n}");
    }
    // An empty batch is delivered at once.
    assert_eq!(sender.enqueue_all([]).await.unwrap().await, Ok(()));
    // A batch to a mailbox of the same node.
    let local = a.mailbox();
    let to_local = a.sender(local.address());
    let batch = to_local
        .enqueue_all((0..5u8).map(|n| Bytes::from(vec![n; 3])))
        .await
        .unwrap();
    assert_eq!(batch.await, Ok(()));
    for n in 0..5u8 {
        assert_eq!(
            local.recv_timeout(WAIT).await.unwrap().payload(),
            &vec![n; 3]
        );
    }
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dial_gives_one_connection() {
    // The losing connection is closed once it carried no stream data for this long.
    let config = NodeConfig {
        duplicate_grace: Duration::from_millis(200),
        ..NodeConfig::default()
    };
    for _ in 0..10 {
        let a = node_with(config.clone()).await;
        let b = node_with(config.clone()).await;
        let (ab, ba) = tokio::join!(
            a.connect(b.id(), Some(b.local_addr())),
            b.connect(a.id(), Some(a.local_addr()))
        );
        ab.unwrap();
        ba.unwrap();
        // Both sides settle on the same single connection: the losing one, which carries
        // nothing, is closed after one grace.
        wait_for("one connection on each side", || {
            a.stats().open_connections == 1 && b.stats().open_connections == 1
        })
        .await;
        // And traffic flows both ways over it.
        let box_a = a.mailbox();
        let box_b = b.mailbox();
        box_a.send(box_b.address(), "ab").await.unwrap();
        box_b.send(box_a.address(), "ba").await.unwrap();
        box_b.recv_timeout(WAIT).await.unwrap();
        box_a.recv_timeout(WAIT).await.unwrap();
        assert_eq!(a.stats().open_connections, 1);
        assert_eq!(b.stats().open_connections, 1);
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_does_not_slow_another_conversation() {
    let a = node().await;
    let b = node_with(NodeConfig {
        mailbox_capacity: 16,
        ..NodeConfig::default()
    })
    .await;
    let slow = b.mailbox(); // never read
    let fast = b.mailbox();

    // Fill the slow conversation until its window is exhausted and sends block.
    let slow_from = a.mailbox();
    let slow_sender = slow_from.sender(slow.address()).unwrap();
    let payload = Bytes::from(vec![7u8; 16 * 1024]);
    let mut blocked = None;
    let mut pending = Vec::new();
    for n in 0..10_000 {
        match tokio::time::timeout(
            Duration::from_millis(500),
            slow_sender.enqueue_bytes(payload.clone()),
        )
        .await
        {
            Ok(delivery) => pending.push(delivery.unwrap()),
            Err(_) => {
                blocked = Some(n);
                break;
            }
        }
    }
    let blocked = blocked.expect("a never-read mailbox must eventually block its sender");
    assert!(
        blocked > 16,
        "the window, not the mailbox, bounds the sender"
    );

    // Meanwhile another conversation on the same connection runs at full speed.
    let fast_from = a.mailbox();
    let fast_sender = fast_from.sender(fast.address()).unwrap();
    let started = std::time::Instant::now();
    for n in 0..500u32 {
        fast_sender.send(&n).await.unwrap();
        assert_eq!(
            fast.recv_timeout(WAIT)
                .await
                .unwrap()
                .decode::<u32>()
                .unwrap(),
            n
        );
    }
    assert!(started.elapsed() < WAIT);
    // The slow conversation is still stuck: its last message is not acknowledged.
    let last = pending.pop().unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(200), last)
        .await
        .is_err());
    // Once the slow mailbox is read, everything flows.
    for _ in 0..16 {
        slow.recv_timeout(WAIT).await.unwrap();
    }
    a.shutdown(Duration::from_millis(100)).await;
    b.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refusal_is_reported_to_the_dialer() {
    let a = node().await;
    let allowed = SecretKey::generate().public();
    let b = node_with(NodeConfig {
        admission: Admission::Only([allowed].into_iter().collect()),
        ..NodeConfig::default()
    })
    .await;
    let target = b.mailbox();
    match a.send(target.address(), "x").await {
        Err(SendError::Unreachable(DialError::Refused(reason))) => {
            assert!(reason.contains("not admitted"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_alpn_is_refused_on_both_sides() {
    let a = Node::builder(SecretKey::generate())
        .alpn(b"ferry/999")
        .bind()
        .await
        .unwrap();
    let b = node().await;
    assert_eq!(
        a.connect(b.id(), Some(b.local_addr())).await,
        Err(DialError::IncompatibleVersion)
    );
    assert_eq!(
        b.connect(a.id(), Some(a.local_addr())).await,
        Err(DialError::IncompatibleVersion)
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// A mailbox handler that passes each message's text on to the receiver returned with it.
fn forwarding_handler() -> (
    impl FnMut(ferry::Message) -> futures::future::BoxFuture<'static, ()> + Send + 'static,
    tokio::sync::mpsc::Receiver<String>,
) {
    let (seen, seen_rx) = tokio::sync::mpsc::channel(4);
    let handler = move |message: ferry::Message| {
        let seen = seen.clone();
        let forward: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
            let _ = seen.send(message.decode::<String>().unwrap()).await;
        });
        forward
    };
    (handler, seen_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiving_forms_are_exclusive() {
    let a = node().await;
    let by_handler = a.mailbox();
    let (handler, mut seen_rx) = forwarding_handler();
    by_handler.set_handler(handler).unwrap();
    assert_eq!(
        by_handler.recv().await.unwrap_err(),
        RecvError::NotReceiving
    );
    assert_eq!(
        by_handler.set_handler(|_| async {}).unwrap_err(),
        AttachError::AlreadyAttached
    );
    assert!(by_handler.messages().is_err());
    a.send(by_handler.address(), "to the handler")
        .await
        .unwrap();
    assert_eq!(seen_rx.recv().await.unwrap(), "to the handler");

    let by_stream = a.mailbox();
    let mut stream = by_stream.messages().unwrap();
    a.send(by_stream.address(), "to the stream").await.unwrap();
    let message = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.decode::<String>().unwrap(), "to the stream");

    let by_recv = a.mailbox();
    assert_eq!(
        by_recv
            .recv_timeout(Duration::from_millis(50))
            .await
            .unwrap_err(),
        RecvError::Timeout
    );

    // A recv that waits holds the receiving end: attaching fails meanwhile, and takes it over
    // once the recv is gone.
    let by_recv_then_handler = a.mailbox();
    let mut waiting = Box::pin(by_recv_then_handler.recv());
    assert!(futures::poll!(&mut waiting).is_pending());
    assert_eq!(
        by_recv_then_handler.set_handler(|_| async {}).unwrap_err(),
        AttachError::Receiving
    );
    drop(waiting);
    let (handler, mut seen_rx) = forwarding_handler();
    by_recv_then_handler.set_handler(handler).unwrap();
    a.send(by_recv_then_handler.address(), "after the recv")
        .await
        .unwrap();
    assert_eq!(seen_rx.recv().await.unwrap(), "after the recv");
    a.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_receiver_is_reached_again_at_the_same_address() {
    reach_a_restarted_receiver(false).await;
}

/// A parked conversation whose peer restarted meanwhile (its stream and connection are gone)
/// delivers its next message on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_conversation_reaches_a_restarted_peer() {
    reach_a_restarted_receiver(true).await;
}

/// A message, a restart of its receiver (after the conversation parked, if `parked`), and
/// another message to the same address.
async fn reach_a_restarted_receiver(parked: bool) {
    let a = node().await;
    let key = SecretKey::generate();
    let b = Node::bind(key.clone(), NodeConfig::default())
        .await
        .unwrap();
    let port = b.local_addr();
    let mailbox_id = MailboxId(42);
    let first = b.mailbox_with_id(mailbox_id);
    let address = first.address().clone();
    a.send(&address, "before").await.unwrap();
    first.recv_timeout(WAIT).await.unwrap();
    if parked {
        wait_for("the quiet conversation to park", || {
            a.stats().parked_conversations == 1
        })
        .await;
    }
    drop(first);
    b.shutdown(Duration::from_millis(100)).await;
    drop(b);

    // Same key, same port, same mailbox id: the same address works after the restart.
    let b = rebind(&key, port).await;
    let second = b.mailbox_with_id(mailbox_id);
    assert_eq!(second.address(), &address);
    a.send(&address, "after").await.unwrap();
    assert_eq!(
        second
            .recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "after"
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// A node with `key` on `port`, where one just shut down. The old endpoint's driver task
/// releases the UDP port asynchronously, so the bind is retried briefly.
async fn rebind(key: &SecretKey, port: std::net::SocketAddr) -> Node {
    let config = NodeConfig {
        listen: port,
        ..NodeConfig::default()
    };
    wait_for_ok("rebinding the port", || {
        Node::bind(key.clone(), config.clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_close_and_reopen_on_demand() {
    let quick = NodeConfig {
        stream_idle_timeout: Duration::from_millis(200),
        ..NodeConfig::default()
    };
    let a = node_with(quick).await;
    let b = node().await;
    let target = b.mailbox();
    let sender = a.sender(target.address());
    sender.send(&1u32).await.unwrap();
    assert_eq!(a.stats().conversations, 1);
    wait_for("the idle conversation to close", || {
        a.stats().conversations == 0
    })
    .await;
    // The same sender keeps working: a new stream opens on demand, order is kept.
    sender.send(&2u32).await.unwrap();
    sender.send(&3u32).await.unwrap();
    for expected in 1..=3u32 {
        let message = target.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), expected);
    }
    assert!(target.try_recv_many(1).unwrap().is_empty());
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_deliveries_all_resolve() {
    let a = node().await;
    let b = node().await;
    let target = b.mailbox();
    let sender = a.sender(target.address());
    let mut deliveries = Vec::new();
    for n in 0..2000u32 {
        deliveries.push(sender.enqueue(&n).await.unwrap());
    }
    let receiver = tokio::spawn(async move {
        for n in 0..2000u32 {
            let message = target.recv_timeout(WAIT).await.unwrap();
            assert_eq!(message.decode::<u32>().unwrap(), n);
        }
        target
    });
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    receiver.await.unwrap();
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_mailbox_revokes_it_even_with_a_handler_attached() {
    let a = node().await;
    let b = node().await;
    let handled = b.mailbox();
    let (seen, mut seen_rx) = tokio::sync::mpsc::channel(16);
    handled
        .set_handler(move |message| {
            let seen = seen.clone();
            async move {
                let _ = seen.send(message.decode::<u32>().unwrap()).await;
            }
        })
        .unwrap();
    let address = handled.address().clone();
    a.send(&address, &1u32).await.unwrap();
    assert_eq!(seen_rx.recv().await, Some(1));
    handled.close();
    // The open stream learns of the close, and so does every new one.
    assert_eq!(a.send(&address, &2u32).await, Err(SendError::NoSuchMailbox));
    assert_eq!(a.send(&address, &3u32).await, Err(SendError::NoSuchMailbox));
    assert!(seen_rx.try_recv().is_err(), "nothing delivered after close");

    // Re-creating an id, then dropping the old mailbox, leaves the new one open.
    let old = b.mailbox_with_id(MailboxId(9));
    let new = b.mailbox_with_id(MailboxId(9));
    drop(old);
    a.send(new.address(), &4u32).await.unwrap();
    assert_eq!(
        new.recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<u32>()
            .unwrap(),
        4
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_also_applies_on_connections_the_node_dialed() {
    let a = node().await;
    let b = node_with(NodeConfig {
        admission: Admission::Only(HashSet::new()),
        ..NodeConfig::default()
    })
    .await;
    // B may send to A over a connection B dials...
    let box_a = a.mailbox();
    b.send(box_a.address(), "from b").await.unwrap();
    box_a.recv_timeout(WAIT).await.unwrap();
    // ...but A, not admitted by B, may not open streams to B over it.
    let box_b = b.mailbox();
    match a.send(box_b.address(), "from a").await {
        Err(SendError::Unreachable(DialError::Refused(_))) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(box_b.try_recv_many(1).unwrap().is_empty());
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_timeout_fails_sends_to_a_mailbox_that_is_never_read() {
    let a = node_with(NodeConfig {
        send_timeout: Duration::from_secs(1),
        ..NodeConfig::default()
    })
    .await;
    let b = node_with(NodeConfig {
        mailbox_capacity: 4,
        ..NodeConfig::default()
    })
    .await;
    let stuck = b.mailbox();
    let sender = a.sender(stuck.address());
    let payload = Bytes::from(vec![0u8; 64 * 1024]);
    let mut deliveries = Vec::new();
    // Enough to exhaust the mailbox and QUIC flow control, so the writer blocks.
    for _ in 0..120 {
        match tokio::time::timeout(
            Duration::from_secs(3),
            sender.enqueue_bytes(payload.clone()),
        )
        .await
        {
            Ok(Ok(delivery)) => deliveries.push(delivery),
            Ok(Err(error)) => {
                assert_eq!(error, SendError::Timeout);
                break;
            }
            Err(_) => panic!("enqueue blocked past the send timeout"),
        }
    }
    let last = deliveries.pop().unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        tokio::time::timeout(WAIT, last).await.unwrap(),
        Err(SendError::Timeout)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    a.shutdown(Duration::from_millis(100)).await;
    b.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_conversations_leave_no_dedup_state() {
    let a = node_with(NodeConfig {
        stream_idle_timeout: Duration::from_millis(300),
        ..NodeConfig::default()
    })
    .await;
    let b = node().await;
    let target = b.mailbox();
    for n in 0..5u32 {
        let from = a.mailbox();
        from.send(target.address(), &n).await.unwrap();
        // The conversation just acknowledged has its entry (earlier ones may have gone idle
        // and been released already: on a loaded machine five sends can take 100 ms).
        assert!(b.stats().dedup_entries >= 1);
    }
    wait_for("the dedup state to be released", || {
        b.stats().dedup_entries == 0
    })
    .await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// A conversation quiet for a second parks its run without a task; its next message takes it
/// up on the same stream, in order, and it parks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_conversation_parks_and_its_next_message_goes_on_the_same_stream() {
    let a = node().await;
    let b = node().await;
    let target = b.mailbox();
    let sender = a.sender(target.address());
    sender.send(&1u32).await.unwrap();
    wait_for("the quiet conversation to park", || {
        a.stats().parked_conversations == 1
    })
    .await;
    assert_eq!(a.stats().conversations, 1);
    assert_eq!(b.stats().streams_in, 1);
    // Taken up by the next message, and by a batch after it.
    let delivery = sender.enqueue(&2u32).await.unwrap();
    let batch = sender
        .enqueue_all([3u32, 4].map(|n| Bytes::from(postcard::to_allocvec(&n).unwrap())))
        .await
        .unwrap();
    delivery.await.unwrap();
    batch.await.unwrap();
    for expected in 1..=4u32 {
        let message = target.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), expected);
    }
    // One stream carried them all: the receiver serves it alone.
    assert_eq!(b.stats().streams_in, 1);
    wait_for("the conversation to park again", || {
        a.stats().parked_conversations == 1
    })
    .await;
    sender.send(&5u32).await.unwrap();
    assert_eq!(
        target
            .recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<u32>()
            .unwrap(),
        5
    );
    assert_eq!(b.stats().streams_in, 1);
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// A parked conversation still ends at `stream_idle_timeout`: its stream is finished, and the
/// next message opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_conversation_ends_at_its_idle_timeout() {
    let a = node_with(NodeConfig {
        stream_idle_timeout: Duration::from_secs(3),
        ..NodeConfig::default()
    })
    .await;
    let b = node().await;
    let target = b.mailbox();
    let sender = a.sender(target.address());
    sender.send(&1u32).await.unwrap();
    // Parked from 1 s to 3 s (a machine slow enough to miss that spell still checks the end).
    wait_for("the quiet conversation to park", || {
        let stats = a.stats();
        stats.parked_conversations == 1 || stats.conversations == 0
    })
    .await;
    wait_for("the parked conversation to end", || {
        let stats = a.stats();
        stats.conversations == 0 && stats.parked_conversations == 0
    })
    .await;
    wait_for("the receiver to see its stream finished", || {
        b.stats().streams_in == 0
    })
    .await;
    sender.send(&2u32).await.unwrap();
    for expected in 1..=2u32 {
        let message = target.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), expected);
    }
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// Shutting down ends parked conversations like running ones: their streams close and the
/// node forgets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_parked_conversations() {
    let a = node().await;
    let b = node().await;
    let targets = [b.mailbox(), b.mailbox()];
    for target in &targets {
        a.send(target.address(), "hello").await.unwrap();
    }
    wait_for("both conversations to park", || {
        a.stats().parked_conversations == 2
    })
    .await;
    assert_eq!(b.stats().streams_in, 2);
    tokio::time::timeout(WAIT, a.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown returns");
    let stats = a.stats();
    assert_eq!((stats.conversations, stats.parked_conversations), (0, 0));
    wait_for("the receiver to see both streams end", || {
        b.stats().streams_in == 0
    })
    .await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// On a current-thread runtime a request and its reply take two datagrams, as an echo on one
/// stream does: each side's acknowledgement leaves with its next message. The requester here
/// is the runtime's `block_on` future and the replier a task: the two ways an application
/// waits that the receiving stream's acknowledgement waits for (sdk/src/streams/inbound.rs).
/// They took four: the requester's acknowledgement of each reply went alone, and the
/// replier's QUIC acknowledged that packet and the next request at once, in a packet too.
#[tokio::test(flavor = "current_thread")]
async fn a_request_and_its_reply_take_two_datagrams_on_one_thread() {
    const ROUNDS: u64 = 100;
    let a = node().await;
    let b = node().await;
    let link = LossyLink::start(LinkConfig::default(), b.local_addr())
        .await
        .unwrap();
    a.connect(b.id(), Some(link.local_addr())).await.unwrap();
    let box_b = b.mailbox();
    let address = box_b.address().clone();
    let replier = b.clone();
    let echo = tokio::spawn(async move {
        let mut reply = None;
        while let Ok(message) = box_b.recv().await {
            let sender = reply.get_or_insert_with(|| replier.sender(message.from()));
            if sender
                .enqueue_bytes(message.payload().clone())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let sender = a.sender(&address);
    let inbox = a.inbox();
    let payload = Bytes::from_static(&[7; 64]);
    let round = || async {
        let delivery = sender.enqueue_bytes(payload.clone()).await.unwrap();
        let reply = inbox.recv_timeout(WAIT).await.unwrap();
        assert_eq!(reply.payload(), &payload);
        delivery.await.unwrap();
    };
    // The streams open and the connection settles first.
    for _ in 0..10 {
        round().await;
    }
    let before = link.stats();
    for _ in 0..ROUNDS {
        round().await;
    }
    let after = link.stats();
    let datagrams = (after.upstream.forwarded - before.upstream.forwarded)
        + (after.downstream.forwarded - before.downstream.forwarded);
    // Two per round, and some of QUIC's own when a round is slow (an acknowledgement whose
    // delay ran out, a probe): four per round before.
    assert!(
        datagrams < ROUNDS * 3,
        "{datagrams} datagrams for {ROUNDS} rounds"
    );
    echo.abort();
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}
