//! Link/monitor: Down events with their reasons.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use ferry::{Address, DownReason, MailboxId, MonitorError, Node, NodeConfig, SecretKey, SendError};
use ferry_testkit::wait::wait_for;

const WAIT: Duration = Duration::from_secs(20);

async fn node() -> Node {
    Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_when_a_remote_mailbox_closes() {
    let a = node().await;
    let b = node().await;
    let watched = b.mailbox();
    let mut monitor = a.monitor(watched.address()).unwrap();
    // Still up: nothing reported while the mailbox lives.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut monitor)
            .await
            .is_err()
    );
    watched.close();
    let reason = tokio::time::timeout(WAIT, monitor).await.unwrap();
    assert_eq!(reason, DownReason::MailboxClosed);

    // A local mailbox can be watched the same way.
    let local = a.mailbox();
    let monitor = a.monitor(local.address()).unwrap();
    drop(local);
    assert_eq!(
        tokio::time::timeout(WAIT, monitor).await.unwrap(),
        DownReason::MailboxClosed
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_once_for_unknown_or_forged_addresses() {
    let a = node().await;
    let b = node().await;
    let gone = b.mailbox();
    let address = gone.address().clone();
    drop(gone);
    assert_eq!(
        tokio::time::timeout(WAIT, a.monitor(&address).unwrap())
            .await
            .unwrap(),
        DownReason::MailboxClosed
    );
    let live = b.mailbox();
    let mut core = live.address().core_bytes();
    core[40..48].copy_from_slice(&u64::MAX.to_be_bytes()); // tampered expiry
    let forged = Address::from_core_bytes(&core)
        .unwrap()
        .with_hints(vec![b.local_addr()]);
    assert_eq!(
        tokio::time::timeout(WAIT, a.monitor(&forged).unwrap())
            .await
            .unwrap(),
        DownReason::InvalidAddress(SendError::Forged)
    );
    let unknown_mailbox = b.address_for(MailboxId(12345), None);
    assert_eq!(
        tokio::time::timeout(WAIT, a.monitor(&unknown_mailbox).unwrap())
            .await
            .unwrap(),
        DownReason::MailboxClosed
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_when_the_peer_shuts_down() {
    let a = node().await;
    let b = node().await;
    let watched = b.mailbox();
    let mailbox_monitor = a.monitor(watched.address()).unwrap();
    let peer_monitor = a.monitor_peer(b.id(), &[b.local_addr()]);
    // The watches are in place: connected, and b serves the mailbox watch's stream.
    wait_for("the watches to be in place", || {
        a.is_connected(&b.id()) && b.stats().streams_in >= 1
    })
    .await;
    b.shutdown(Duration::from_millis(200)).await;
    assert_eq!(
        tokio::time::timeout(WAIT, mailbox_monitor).await.unwrap(),
        DownReason::NodeShutdown
    );
    assert_eq!(
        tokio::time::timeout(WAIT, peer_monitor).await.unwrap(),
        DownReason::NodeShutdown
    );
    a.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_of_one_peer_are_bounded_and_share_streams() {
    let a = Node::bind(
        SecretKey::generate(),
        NodeConfig {
            max_monitors_per_peer: 2,
            ..NodeConfig::default()
        },
    )
    .await
    .unwrap();
    let b = node().await;
    let first = b.mailbox();
    let second = b.mailbox();
    let third = b.mailbox();
    // Watching one mailbox many times takes one stream: all of these fit.
    let first_watches: Vec<_> = (0..10)
        .map(|_| a.monitor(first.address()).unwrap())
        .collect();
    let second_watch = a.monitor(second.address()).unwrap();
    assert_eq!(
        a.monitor(third.address()).unwrap_err(),
        MonitorError::TooManyWatches {
            peer: b.id(),
            max: 2
        }
    );
    // Watches of the own node take no stream.
    let own = a.mailbox();
    let _own_watch = a.monitor(own.address()).unwrap();
    // Dropping every watch of a mailbox frees its place.
    drop(second_watch);
    let third_watch = a.monitor(third.address()).unwrap();
    // Every sharer learns of the Down.
    first.close();
    for watch in first_watches {
        assert_eq!(
            tokio::time::timeout(WAIT, watch).await.unwrap(),
            DownReason::MailboxClosed
        );
    }
    // The Down ended that watch: a new one starts afresh (and finds the mailbox closed).
    let again = b.mailbox();
    let _second_again = a.monitor(again.address()).unwrap();
    third.close();
    assert_eq!(
        tokio::time::timeout(WAIT, third_watch).await.unwrap(),
        DownReason::MailboxClosed
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}
