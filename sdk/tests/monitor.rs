//! Link/monitor: Down events with their reasons.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use ferry::{Address, DownReason, MailboxId, Node, NodeConfig, SecretKey, SendError};

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
    let mut monitor = a.monitor(watched.address());
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
    let monitor = a.monitor(local.address());
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
        tokio::time::timeout(WAIT, a.monitor(&address))
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
        tokio::time::timeout(WAIT, a.monitor(&forged))
            .await
            .unwrap(),
        DownReason::InvalidAddress(SendError::Forged)
    );
    let unknown_mailbox = b.address_for(MailboxId(12345), None);
    assert_eq!(
        tokio::time::timeout(WAIT, a.monitor(&unknown_mailbox))
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
    let mailbox_monitor = a.monitor(watched.address());
    let peer_monitor = a.monitor_peer(b.id(), &[b.local_addr()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
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
