//! The outbox: messages for a node that was reachable but cannot be reached now wait (bounded
//! by `send_window` and `outbox_ttl`) and go out, in order, once it is back; a node that was not
//! reached within `outbox_ttl` is reported unreachable within `dial_timeout`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry::address::MailboxId;
use ferry::{Node, NodeConfig, SecretKey, SendError};
use ferry_testkit::wait::wait_for_ok;

mod common;

use common::{node_with, WAIT};

/// Binds `key` on `listen`, retrying while the previous endpoint still holds the port.
async fn bind_again(key: &SecretKey, listen: SocketAddr) -> Node {
    let config = NodeConfig {
        listen,
        ..NodeConfig::default()
    };
    // The old endpoint releases the UDP port asynchronously.
    wait_for_ok(&format!("rebinding {listen}"), || {
        Node::bind(key.clone(), config.clone())
    })
    .await
}

/// A receiver that is started, reached by `sender` (one message delivered), and stopped again.
async fn stopped_receiver(sender: &Node) -> (SecretKey, SocketAddr, ferry::Address) {
    let key = SecretKey::generate();
    let b = Node::bind(key.clone(), NodeConfig::default())
        .await
        .unwrap();
    let listen = b.local_addr();
    let mailbox = b.mailbox_with_id(MailboxId(7));
    let address = mailbox.address().clone();
    sender.send(&address, &u32::MAX).await.unwrap();
    assert_eq!(
        mailbox
            .recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<u32>()
            .unwrap(),
        u32::MAX
    );
    b.shutdown(Duration::from_millis(100)).await;
    drop(b);
    (key, listen, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_for_an_unreachable_node_and_go_out_in_order_when_it_is_back() {
    // send_timeout is short: only the outbox's time keeps these messages waiting.
    let a = node_with(NodeConfig {
        send_timeout: Duration::from_millis(500),
        dial_timeout: Duration::from_millis(300),
        ..NodeConfig::default()
    })
    .await;
    let (key, listen, address) = stopped_receiver(&a).await;
    let sender = a.sender(&address);
    let mut deliveries = Vec::new();
    for n in 0..200u32 {
        deliveries.push(sender.enqueue(&n).await.unwrap());
    }
    // Longer than send_timeout, with the target down all along (real time is under test: the
    // timeout runs on the real clock).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = bind_again(&key, listen).await;
    let mailbox = b.mailbox_with_id(MailboxId(7));
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    for n in 0..200u32 {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), n);
    }
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_fails_at_once_and_an_expired_one_fails_unreachable() {
    let a = node_with(NodeConfig {
        send_window: 4096,
        max_message_size: 1024,
        send_timeout: Duration::from_millis(500),
        outbox_ttl: Duration::from_secs(2),
        dial_timeout: Duration::from_millis(300),
        ..NodeConfig::default()
    })
    .await;
    let (_key, _listen, address) = stopped_receiver(&a).await;
    let sender = a.sender(&address);
    let first = sender.enqueue_bytes(vec![0u8; 1000].into()).await.unwrap();
    // The window fills; while the first dial is under way a send waits for room in it, and
    // once the dial has failed, a full window refuses at once.
    let mut queued = vec![first];
    let waiting_since = Instant::now();
    let refused = loop {
        let started = Instant::now();
        let enqueue = sender.enqueue_bytes(vec![0u8; 1000].into());
        match tokio::time::timeout(Duration::from_millis(100), enqueue).await {
            Ok(Ok(delivery)) => queued.push(delivery),
            Ok(Err(error)) => break (error, started.elapsed()),
            // Waiting for room: the dial has not failed yet (a dropped wait queues nothing).
            Err(_) => assert!(waiting_since.elapsed() < WAIT, "never refused"),
        }
        assert!(
            queued.len() <= 4,
            "the window holds at most 4 such messages"
        );
    };
    assert!(
        matches!(refused.0, SendError::OutboxFull { window: 4096 }),
        "{:?}",
        refused.0
    );
    assert!(
        refused.1 < Duration::from_millis(100),
        "refused at once, not after waiting"
    );
    // A batch is refused the same way, nothing of it queued.
    let batch = [bytes::Bytes::from(vec![0u8; 1000])];
    assert!(
        matches!(
            sender.enqueue_all(batch).await,
            Err(SendError::OutboxFull { window: 4096 })
        ),
        "a batch into a full outbox"
    );
    // After outbox_ttl the waiting messages fail as unreachable.
    for delivery in queued {
        let error = tokio::time::timeout(WAIT, delivery)
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(error, SendError::Unreachable(_)), "{error:?}");
    }
    a.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_reached_is_reported_unreachable_within_the_dial_timeout() {
    let dial_timeout = Duration::from_millis(600);
    let a = node_with(NodeConfig {
        dial_timeout,
        ..NodeConfig::default()
    })
    .await;
    // A node that is gone: its address's hint answers nothing. Its own socket is not that
    // hint, as a closing endpoint may still refuse the attempt (CONNECTION_REFUSED) instead
    // of staying silent.
    let b = node_with(NodeConfig::default()).await;
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = b
        .mailbox()
        .address()
        .with_hints(vec![black_hole.local_addr().unwrap()]);
    b.shutdown(Duration::from_millis(100)).await;
    drop(b);
    let started = Instant::now();
    let error = tokio::time::timeout(WAIT, a.send(&address, "hello"))
        .await
        .expect("the send ends by itself")
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, SendError::Unreachable(ferry::DialError::Timeout)),
        "{error:?}"
    );
    // Not the outbox's ten minutes, nor send_timeout's minute: one dial.
    assert!(took < WAIT, "took {took:?}");
    a.shutdown(Duration::from_secs(1)).await;
}
