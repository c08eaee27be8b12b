//! Durable mailboxes on the redb store: acknowledged messages survive a restart of the
//! receiving node, are delivered in per-sender order, exactly once into the store, and stay
//! until the application acknowledges them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use ferry::{Node, NodeConfig, SecretKey};
use ferry_node::store::{RedbStore, StoreConfig};
use ferry_testkit::wait::{wait_for, wait_for_ok};

const WAIT: Duration = Duration::from_secs(10);

/// Binds a node with `key` on `listen`, paused: the test opens its durable mailbox, then lets
/// streams in, as the daemon does. A restarted node wants its old port, which the old
/// endpoint's driver task releases asynchronously, so the bind is retried briefly.
async fn node_on(key: &SecretKey, listen: std::net::SocketAddr) -> Node {
    let config = NodeConfig {
        listen,
        ..NodeConfig::default()
    };
    // The old endpoint releases the UDP port asynchronously.
    wait_for_ok(&format!("rebinding {listen}"), || {
        Node::builder(SecretKey::from_bytes(&key.to_bytes()))
            .config(config.clone())
            .paused()
            .bind()
    })
    .await
}

fn open_store(dir: &std::path::Path) -> Arc<RedbStore> {
    Arc::new(RedbStore::open(&dir.join("store.redb"), StoreConfig::default()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_a_restart_until_the_application_acks_them() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let key = SecretKey::generate();
    let receiver = node_on(&key, "127.0.0.1:0".parse().unwrap()).await;
    let listen = receiver.local_addr();
    let store = open_store(dir.path());
    let id = store.named_mailbox("test").unwrap();
    let mailbox = receiver.durable_mailbox(id, store.clone()).unwrap();
    receiver.serve_streams();
    let address = mailbox.address().clone();

    // Fewer than the mailbox's queue holds, so all are acknowledged before anything is read.
    const N: u32 = 1000;
    let outbox = sender.sender(&address);
    let mut last = None;
    for n in 0..N {
        last = Some(outbox.enqueue(&n).await.unwrap());
    }
    last.unwrap().await.unwrap();
    // Every message is acknowledged; the application reads half and acks a quarter.
    for n in 0..N / 2 {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), n);
        if n < N / 4 {
            message.ack();
        }
    }
    drop(mailbox);
    receiver.shutdown(Duration::from_secs(1)).await;
    drop(receiver);
    store.close();
    drop(store);

    // Restart on the same key and store: the same address, and every unacknowledged message.
    let receiver = node_on(&key, listen).await;
    let store = open_store(dir.path());
    assert_eq!(store.named_mailbox("test").unwrap(), id);
    let mailbox = receiver.durable_mailbox(id, store.clone()).unwrap();
    receiver.serve_streams();
    assert_eq!(mailbox.address().without_hints(), address.without_hints());
    let mut ids = Vec::new();
    for n in N / 4..N {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), n);
        ids.push(message.id().unwrap());
        message.ack();
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    assert!(mailbox
        .recv_timeout(Duration::from_millis(300))
        .await
        .is_err());
    // New messages still arrive after the replay, with the sender's conversation resumed.
    outbox.send(&N).await.unwrap();
    let message = mailbox.recv_timeout(WAIT).await.unwrap();
    assert_eq!(message.decode::<u32>().unwrap(), N);
    message.ack();
    drop((message, mailbox));
    receiver.shutdown(Duration::from_secs(1)).await;
    drop(receiver);
    store.close();
    drop(store);

    let store = open_store(dir.path());
    assert!(
        store.pending_count(id).unwrap() == 0,
        "everything acked is gone"
    );
    sender.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_restarted_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let key = SecretKey::generate();
    let receiver = node_on(&key, "127.0.0.1:0".parse().unwrap()).await;
    let listen = receiver.local_addr();
    let store = open_store(dir.path());
    let id = store.named_mailbox("inbox").unwrap();
    let mailbox = receiver.durable_mailbox(id, store.clone()).unwrap();
    receiver.serve_streams();
    let address = mailbox.address().clone();

    const N: u32 = 20_000;
    let sending = tokio::spawn(async move {
        let outbox = sender.sender(&address);
        let mut deliveries = Vec::new();
        for n in 0..N {
            deliveries.push(outbox.enqueue(&n).await.unwrap());
        }
        for delivery in deliveries {
            delivery.await.unwrap();
        }
        sender
    });
    // Take some messages, acknowledging each, then stop the receiver in the middle.
    let mut seen = Vec::new();
    while seen.len() < 3000 {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        seen.push(message.decode::<u32>().unwrap());
        message.ack();
    }
    // The node stops first, as a process that exits does: its peers see it go away and
    // resend later. Closing the mailbox while the node still runs would answer the messages
    // in flight NO_SUCH_MAILBOX, which is final.
    receiver.shutdown(Duration::from_millis(200)).await;
    drop(mailbox);
    drop(receiver);
    store.close();
    drop(store);

    let receiver = node_on(&key, listen).await;
    let store = open_store(dir.path());
    let mailbox = receiver.durable_mailbox(id, store.clone()).unwrap();
    receiver.serve_streams();
    while seen.len() < N as usize {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        seen.push(message.decode::<u32>().unwrap());
        message.ack();
    }
    let sender = sending.await.unwrap();
    assert!(mailbox
        .recv_timeout(Duration::from_millis(300))
        .await
        .is_err());
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    sender.shutdown(Duration::from_secs(1)).await;
    receiver.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_slows_the_sender_instead_of_losing_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        RedbStore::open(
            &dir.path().join("store.redb"),
            StoreConfig {
                max_pending_per_mailbox: 10,
                ..StoreConfig::default()
            },
        )
        .unwrap(),
    );
    let sender = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let receiver = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let mailbox = receiver
        .durable_mailbox(store.named_mailbox("small").unwrap(), store.clone())
        .unwrap();
    let outbox = sender.sender(mailbox.address());
    let mut deliveries = Vec::new();
    for n in 0..30u32 {
        deliveries.push(outbox.enqueue(&n).await.unwrap());
    }
    // Ten fit; the rest wait until the application acknowledges.
    wait_for("ten messages stored", || sender.stats().messages_out >= 10).await;
    assert_eq!(sender.stats().messages_out, 10);
    for n in 0..30u32 {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), n);
        message.ack();
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    sender.shutdown(Duration::from_secs(1)).await;
    receiver.shutdown(Duration::from_secs(1)).await;
}

/// Revocations and the counts of "max messages" caveats of a durable mailbox are in the store
/// (written before the revocation returns, and in the transaction that stores the messages):
/// a restarted node still refuses the revoked grant and still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let key = SecretKey::generate();
    let receiver = node_on(&key, "127.0.0.1:0".parse().unwrap()).await;
    let listen = receiver.local_addr();
    let store = open_store(dir.path());
    let id = store.named_mailbox("caps").unwrap();
    let mailbox = receiver.durable_mailbox(id, store.clone()).unwrap();
    receiver.serve_streams();
    let revoked = mailbox.grant(None);
    let kept = mailbox.grant(None);
    let three = mailbox
        .address()
        .attenuate()
        .max_messages(3)
        .build()
        .unwrap();
    sender.send(&three, "1").await.unwrap();
    sender.send(&three, "2").await.unwrap();
    sender.send(&revoked, "before").await.unwrap();
    mailbox.revoke(revoked.grant()).await.unwrap();
    assert_eq!(
        sender.send(&revoked, "x").await,
        Err(ferry::SendError::Revoked)
    );
    drop(mailbox);
    receiver.shutdown(Duration::from_secs(1)).await;
    drop(receiver);
    store.close();
    drop(store);

    let receiver = node_on(&key, listen).await;
    let store = open_store(dir.path());
    let mailbox = receiver.durable_mailbox(id, store.clone()).unwrap();
    receiver.serve_streams();
    assert!(mailbox.is_revoked(revoked.grant()));
    assert_eq!(
        sender.send(&revoked, "x").await,
        Err(ferry::SendError::Revoked)
    );
    sender.send(&kept, "kept").await.unwrap();
    sender.send(&three, "3").await.unwrap();
    assert_eq!(
        sender.send(&three, "4").await,
        Err(ferry::SendError::Exhausted)
    );
    let mut seen = Vec::new();
    for _ in 0..5 {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        seen.push(message.decode::<String>().unwrap());
        message.ack();
    }
    assert_eq!(seen, ["1", "2", "before", "kept", "3"]);
    receiver.shutdown(Duration::from_secs(1)).await;
    sender.shutdown(Duration::from_secs(1)).await;
}

/// A mailbox purged (the gateway's ended sessions) or emptied at open (temporary) takes its
/// counters and revocations along; other mailboxes keep theirs.
#[tokio::test]
async fn a_purged_or_temporary_mailbox_takes_its_counts_and_revocations_along() {
    use ferry::address::{Address, CounterKey, GrantId, MailboxId};
    use ferry::MailboxStore as _;
    use ferry_node::store::SessionStore as _;
    let dir = tempfile::tempdir().unwrap();
    let from = Address::mint(&SecretKey::generate(), MailboxId(1), None, vec![]);
    let (purged, temporary, kept) = (MailboxId(21), MailboxId(22), MailboxId(23));
    let counter = CounterKey([7; 16]);
    {
        let store = open_store(dir.path());
        store.mark_temporary(temporary);
        for mailbox in [purged, temporary, kept] {
            let message = (from.clone(), bytes::Bytes::from_static(b"1"));
            store
                .append_counted(mailbox, None, vec![message], vec![counter])
                .await
                .unwrap();
            store.revoke(mailbox, GrantId(5)).await.unwrap();
            assert_eq!(store.counts(mailbox).unwrap(), [(counter, 1)]);
            assert_eq!(store.revoked(mailbox).unwrap(), [GrantId(5)]);
        }
        store.purge(purged);
        // The writer applies requests in order: once this one is answered, the purge is
        // committed.
        store.revoke(kept, GrantId(6)).await.unwrap();
        assert_eq!(store.counts(purged).unwrap(), []);
        assert_eq!(store.revoked(purged).unwrap(), []);
        store.close();
    }
    let store = open_store(dir.path());
    assert_eq!(store.counts(temporary).unwrap(), []);
    assert_eq!(store.revoked(temporary).unwrap(), []);
    assert_eq!(store.counts(kept).unwrap(), [(counter, 1)]);
    assert_eq!(store.revoked(kept).unwrap(), [GrantId(5), GrantId(6)]);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_address_is_stored_once_and_goes_with_its_last_message() {
    use ferry::address::{Address, MailboxId};
    use ferry::MailboxStore as _;
    use ferry_node::store::SessionStore as _;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        Address::mint(&SecretKey::generate(), MailboxId(1), None, vec![]),
        Address::mint(&SecretKey::generate(), MailboxId(2), None, vec![]),
    );
    let (acked, purged, temporary) = (MailboxId(31), MailboxId(32), MailboxId(33));
    let message = |from: &Address, n: u8| (from.clone(), bytes::Bytes::from(vec![n; 3]));
    {
        let store = open_store(dir.path());
        store.mark_temporary(temporary);
        // Alice in every mailbox, Bob in the first two: two addresses stored.
        store
            .append(
                acked,
                None,
                vec![message(&alice, 0), message(&bob, 1), message(&alice, 2)],
            )
            .await
            .unwrap();
        store
            .append(purged, None, vec![message(&bob, 3)])
            .await
            .unwrap();
        store
            .append(temporary, None, vec![message(&alice, 4)])
            .await
            .unwrap();
        assert_eq!(store.sender_count().unwrap(), 2);
        let read = store.read_from(acked, 0, 10, usize::MAX).unwrap();
        let got: Vec<(Address, Vec<u8>)> = read
            .iter()
            .map(|m| (m.from.clone(), m.payload.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                (alice.clone(), vec![0; 3]),
                (bob.clone(), vec![1; 3]),
                (alice.clone(), vec![2; 3])
            ]
        );
        // Bob's last message in `acked` goes; his message in `purged` keeps him.
        store.remove_below(acked, 2);
        store.append(acked, None, vec![]).await.unwrap();
        assert_eq!(store.sender_count().unwrap(), 2);
        store.purge(purged);
        store.append(acked, None, vec![]).await.unwrap();
        assert_eq!(store.sender_count().unwrap(), 1);
        store.close();
    }
    // Reopened: Alice is still named by two messages, read back with her address.
    let store = open_store(dir.path());
    assert_eq!(store.sender_count().unwrap(), 1);
    assert_eq!(
        store.read_from(acked, 0, 10, usize::MAX).unwrap()[0].from,
        alice
    );
    // A new sender after the reopen gets an id of its own: both read back right.
    store
        .append(acked, None, vec![message(&bob, 5)])
        .await
        .unwrap();
    let read = store.read_from(acked, 0, 10, usize::MAX).unwrap();
    assert_eq!(
        read.iter().map(|m| m.from.clone()).collect::<Vec<_>>(),
        [alice.clone(), bob.clone()]
    );
    // The temporary mailbox was emptied at the open; the last of Alice's and Bob's messages
    // take them along.
    store.remove_below(acked, u64::MAX);
    store.append(acked, None, vec![]).await.unwrap();
    assert_eq!(store.sender_count().unwrap(), 0);
    store.close();
}
