//! Forwarding through a relay: A reaches C only through B. The connection between A and C is
//! end to end (C checks the capability itself); B only passes packets, within its policy.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use ferry::{Node, NodeConfig, RelayAccess, SecretKey, SendError};
use ferry_testkit::wait::wait_for;

const WAIT: Duration = Duration::from_secs(10);

async fn relay(access: RelayAccess) -> Node {
    Node::bind(
        SecretKey::generate(),
        NodeConfig {
            relay: access,
            ..NodeConfig::default()
        },
    )
    .await
    .unwrap()
}

/// A node that stays connected to `relay` and names it in its addresses. It punches no
/// holes: on one machine every hole punch succeeds, and these tests are about the relay.
async fn behind(relay: &Node) -> Node {
    let node = Node::bind(
        SecretKey::generate(),
        NodeConfig {
            relays: vec![(relay.id(), relay.local_addr())],
            hole_punching: false,
            ..NodeConfig::default()
        },
    )
    .await
    .unwrap();
    // Wait until the relay knows it: it forwards only to connected peers.
    wait_for("the relay to know the node", || {
        relay.is_connected(&node.id())
    })
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_c_talk_only_through_b() {
    let b = relay(RelayAccess::Any).await;
    let c = behind(&b).await;
    let a = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let mailbox = c.mailbox();
    let minted = mailbox.address().clone();
    assert_eq!(minted.relays(), vec![(b.id(), b.local_addr())]);
    // No socket address of C at all: the relay hint is the only way to it.
    let only_relay = minted.without_hints().with_relay(b.id(), b.local_addr());
    let parsed: ferry::Address = only_relay.to_string().parse().unwrap();
    assert_eq!(parsed.relays(), vec![(b.id(), b.local_addr())]);

    let sender = a.sender(&parsed);
    let mut last = None;
    for n in 0..500u32 {
        last = Some(sender.enqueue(&n).await.unwrap());
    }
    last.unwrap().await.unwrap();
    for n in 0..500u32 {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), n);
        assert_eq!(
            message.from().node(),
            a.id(),
            "C learns A's identity end to end"
        );
        if n == 0 {
            // The reply goes back over the same relayed connection.
            c.send(message.from(), "hello back").await.unwrap();
        }
    }
    let reply = a.inbox().recv_timeout(WAIT).await.unwrap();
    assert_eq!(reply.decode::<String>().unwrap(), "hello back");
    let stats = b.stats();
    assert!(stats.relayed_packets > 0, "{stats:?}");
    assert!(
        stats.relayed_bytes > 500 * 5,
        "every message crossed the relay: {stats:?}"
    );
    assert_eq!(stats.messages_in, 0, "the relay sees no messages");

    // C still checks the capability itself: a forged address is refused end to end.
    let other = c.mailbox();
    let forged = {
        // A valid address of C with its signature swapped for another mailbox's.
        let mut bytes = other.address().to_bytes();
        let signature = minted.signature();
        bytes[48..112].copy_from_slice(signature);
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_be_bytes());
        ferry::Address::from_bytes(&bytes).unwrap()
    };
    let error = a.send(&forged, "x").await.unwrap_err();
    assert_eq!(error, SendError::Forged);

    a.shutdown(Duration::from_secs(1)).await;
    c.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_forwards_only_for_allowed_peers() {
    let b = relay(RelayAccess::Nobody).await;
    let c = behind(&b).await;
    let a = Node::bind(
        SecretKey::generate(),
        NodeConfig {
            dial_timeout: Duration::from_millis(300),
            send_timeout: Duration::from_secs(2),
            outbox_ttl: Duration::from_secs(3),
            ..NodeConfig::default()
        },
    )
    .await
    .unwrap();
    let mailbox = c.mailbox();
    let only_relay = mailbox
        .address()
        .without_hints()
        .with_relay(b.id(), b.local_addr());
    let error = a.send(&only_relay, "x").await.unwrap_err();
    assert!(matches!(error, SendError::Unreachable(_)), "{error:?}");
    let stats = b.stats();
    assert_eq!(stats.relayed_packets, 0);
    assert!(stats.relay_refused > 0, "{stats:?}");
    a.shutdown(Duration::from_secs(1)).await;
    c.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_forwards_at_most_its_rate() {
    const RATE: u64 = 64 * 1024;
    let b = Node::bind(
        SecretKey::generate(),
        NodeConfig {
            relay: RelayAccess::Any,
            relay_rate: RATE,
            ..NodeConfig::default()
        },
    )
    .await
    .unwrap();
    let c = behind(&b).await;
    let a = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let mailbox = c.mailbox();
    let only_relay = mailbox
        .address()
        .without_hints()
        .with_relay(b.id(), b.local_addr());
    // The handshake happens first, so the budget is full when the data starts.
    a.send(&only_relay, &0u32).await.unwrap();
    mailbox.recv_timeout(WAIT).await.unwrap();
    // Three times the rate: one second of burst, then at least two more seconds.
    let started = tokio::time::Instant::now();
    let sender = a.sender(&only_relay);
    let mut last = None;
    for _ in 0..3 * RATE / 1024 {
        last = Some(sender.enqueue_bytes(vec![7u8; 1024].into()).await.unwrap());
    }
    last.unwrap().await.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1800), "{elapsed:?}");
    assert!(b.stats().relay_refused > 0, "{:?}", b.stats());
    for _ in 0..3 * RATE / 1024 {
        mailbox.recv_timeout(WAIT).await.unwrap();
    }
    a.shutdown(Duration::from_secs(1)).await;
    c.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}
