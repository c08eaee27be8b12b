//! ferry nodes through the lossy link: loss, delay and a partition long enough to kill the
//! connection. Every acknowledged message arrives exactly once, in order.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use ferry::{Node, NodeConfig, SecretKey};
use ferry_testkit::lossy::{LinkConfig, LossyLink};
use ferry_testkit::wait::wait_for;

const WAIT: Duration = Duration::from_secs(30);

fn short_lived() -> NodeConfig {
    NodeConfig {
        idle_timeout: Duration::from_millis(1000),
        keep_alive: Duration::from_millis(250),
        ..NodeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_that_kills_the_connection_loses_and_duplicates_nothing() {
    let a = Node::bind(SecretKey::generate(), short_lived())
        .await
        .unwrap();
    let b = Node::bind(SecretKey::generate(), short_lived())
        .await
        .unwrap();
    let link = LossyLink::start(LinkConfig::default(), b.local_addr())
        .await
        .unwrap();
    let target = b.mailbox();
    // The address A uses points at the link, not at B directly.
    let via_link = target.address().with_hints(vec![link.local_addr()]);
    let sender = a.sender(&via_link);

    const TOTAL: u32 = 3000;
    let receiver = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < TOTAL as usize {
            let message = target.recv_timeout(WAIT).await.unwrap();
            seen.push(message.decode::<u32>().unwrap());
        }
        // Nothing more arrives: no duplicates.
        assert!(target
            .recv_timeout(Duration::from_millis(500))
            .await
            .is_err());
        seen
    });
    sender.send(&0u32).await.unwrap();
    let connections_before = a.connections_established();
    let mut deliveries = Vec::new();
    for n in 1..TOTAL {
        if n == TOTAL / 2 {
            link.partition(true);
        }
        deliveries.push(sender.enqueue(&n).await.unwrap());
        if n == TOTAL / 2 + 10 {
            // Until both sides' idle timeout closed the connection.
            wait_for("the connection to die on both sides", || {
                !a.is_connected(&b.id()) && !b.is_connected(&a.id())
            })
            .await;
            link.partition(false);
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    let seen = receiver.await.unwrap();
    assert_eq!(seen, (0..TOTAL).collect::<Vec<_>>());
    // The messages after the partition went over a new connection.
    assert!(a.connections_established() > connections_before);
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_idle_timeout_is_probed_and_loses_nothing() {
    // Default idle timeout (30 s): the connection outlives the outage, and without probes its
    // retransmissions would have backed off to seconds apart.
    let a = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let b = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let link = LossyLink::start(LinkConfig::default(), b.local_addr())
        .await
        .unwrap();
    let target = b.mailbox();
    let via_link = target.address().with_hints(vec![link.local_addr()]);
    let sender = a.sender(&via_link);
    sender.send(&0u32).await.unwrap();
    assert_eq!(
        target
            .recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<u32>()
            .unwrap(),
        0
    );
    link.partition(true);
    let mut deliveries = Vec::new();
    for n in 1..=500u32 {
        deliveries.push(sender.enqueue(&n).await.unwrap());
    }
    // The sender notices the silence and probes the path until it is back.
    wait_for("five path probes", || a.stats().path_probes >= 5).await;
    assert!(
        target.try_recv_many(10).unwrap().is_empty(),
        "nothing crossed the outage"
    );
    link.partition(false);
    for delivery in deliveries {
        tokio::time::timeout(WAIT, delivery).await.unwrap().unwrap();
    }
    for n in 1..=500u32 {
        let message = target.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), n, "in order, once each");
    }
    assert!(
        target.try_recv_many(10).unwrap().is_empty(),
        "nothing twice"
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_delay_keep_order_and_lose_nothing() {
    let a = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let b = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let link = LossyLink::start(
        LinkConfig {
            loss: 0.02,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            duplicate: 0.01,
            seed: Some(7),
            ..LinkConfig::default()
        },
        b.local_addr(),
    )
    .await
    .unwrap();
    let target = b.mailbox();
    let via_link = target.address().with_hints(vec![link.local_addr()]);
    const PER_SENDER: u32 = 1000;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let from = a.mailbox();
        let to = via_link.clone();
        tasks.push(tokio::spawn(async move {
            let sender = from.sender(&to).unwrap();
            let mut last = None;
            for n in 0..PER_SENDER {
                // Big enough that thousands of packets cross the link.
                last = Some(sender.enqueue(&(n, vec![0u8; 1000])).await.unwrap());
            }
            last.unwrap().await.unwrap();
            from
        }));
    }
    let mut next = std::collections::HashMap::new();
    for _ in 0..4 * PER_SENDER {
        let message = target.recv_timeout(WAIT).await.unwrap();
        let (n, _padding): (u32, Vec<u8>) = message.decode().unwrap();
        let expected = next.entry(message.from().mailbox()).or_insert(0u32);
        assert_eq!(n, *expected);
        *expected += 1;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = link.stats();
    assert!(
        stats.upstream.dropped + stats.downstream.dropped > 0,
        "the link did drop packets: {stats:?}"
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_report_down_only_after_the_grace_period() {
    let config = NodeConfig {
        monitor_grace: Duration::from_millis(2500),
        ..short_lived()
    };
    let a = Node::bind(SecretKey::generate(), config).await.unwrap();
    let b = Node::bind(SecretKey::generate(), short_lived())
        .await
        .unwrap();
    let link = LossyLink::start(LinkConfig::default(), b.local_addr())
        .await
        .unwrap();
    let watched = b.mailbox();
    let via_link = watched.address().with_hints(vec![link.local_addr()]);
    let mut mailbox_monitor = a.monitor(&via_link).unwrap();
    let mut peer_monitor = a.monitor_peer(b.id(), &[link.local_addr()]);
    // The watches are in place: connected, and b serves the mailbox watch's stream.
    wait_for("the watches to be in place", || {
        a.is_connected(&b.id()) && b.stats().streams_in >= 1
    })
    .await;

    // A partition that kills the connection but heals within the grace period: no Down.
    link.partition(true);
    // The outage's length and the quiet after it are what is tested: real time.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    link.partition(false);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut mailbox_monitor)
            .await
            .is_err(),
        "a healed partition must not report the mailbox down"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut peer_monitor)
            .await
            .is_err()
    );

    // A partition longer than the grace period: Down with ConnectionLost.
    link.partition(true);
    let started = std::time::Instant::now();
    assert_eq!(
        tokio::time::timeout(WAIT, mailbox_monitor).await.unwrap(),
        ferry::DownReason::ConnectionLost
    );
    assert_eq!(
        tokio::time::timeout(WAIT, peer_monitor).await.unwrap(),
        ferry::DownReason::ConnectionLost
    );
    assert!(started.elapsed() >= Duration::from_millis(2500));
    a.shutdown(Duration::from_millis(100)).await;
    b.shutdown(Duration::from_millis(100)).await;
}
