//! Grants, revocation, attenuation, handoff and counting caveats between real nodes on
//! loopback (docs/PROTOCOL.md §4.11, issue 17).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use ferry::address::GrantId;
use ferry::{
    DownReason, Node, NodeConfig, OpenError, RevokeError, SecretKey, SendError, ServiceOptions,
};
use ferry_testkit::wait::wait_for;

mod common;

use common::{node, node_with, unix_now, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_grant_voids_it_and_its_derivations_only() {
    let a = node().await;
    let b = node().await;
    let target = b.mailbox();
    let granted = target.grant(None);
    let other = target.grant(None);
    assert_ne!(granted.grant(), GrantId::DEFAULT);
    assert_ne!(granted.grant(), other.grant());
    assert!(granted.to_string().starts_with("ferry2"));
    let derived = granted.attenuate().max_messages(10).build().unwrap();
    a.send(&granted, "one").await.unwrap();
    a.send(&derived, "two").await.unwrap();
    for expected in ["one", "two"] {
        let message = target.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<String>().unwrap(), expected);
    }
    target.revoke(granted.grant()).await.unwrap();
    assert!(target.is_revoked(granted.grant()));
    // The stream opened under the grant stops; new ones are refused: final, REVOKED.
    assert_eq!(a.send(&granted, "x").await, Err(SendError::Revoked));
    assert_eq!(a.send(&derived, "x").await, Err(SendError::Revoked));
    let rederived = derived.attenuate().max_messages(1).build().unwrap();
    assert_eq!(a.send(&rederived, "x").await, Err(SendError::Revoked));
    // The mailbox, its plain address and its other grants are untouched.
    a.send(target.address(), "plain").await.unwrap();
    a.send(&other, "other grant").await.unwrap();
    for expected in ["plain", "other grant"] {
        let message = target.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<String>().unwrap(), expected);
    }
    // Local senders are refused alike, and so are watches (through MONITOR_CAP).
    assert_eq!(b.send(&granted, "x").await, Err(SendError::Revoked));
    assert_eq!(
        tokio::time::timeout(WAIT, a.monitor(&derived).unwrap())
            .await
            .unwrap(),
        ferry::DownReason::InvalidAddress(SendError::Revoked)
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// Receives the next message as a `u32`.
async fn recv_u32(mailbox: &ferry::Mailbox) -> u32 {
    mailbox
        .recv_timeout(WAIT)
        .await
        .unwrap()
        .decode::<u32>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_grant_ends_the_streams_and_watches_open_under_it() {
    let a = node().await;
    let c = node().await;
    // Two messages fill the target's queue, so a third waits on its stream for room.
    let b = node_with(NodeConfig {
        mailbox_capacity: 2,
        ..NodeConfig::default()
    })
    .await;
    let target = b.mailbox();
    let g = target.grant(None);
    let h = target.grant(None);
    // A watch of an address derived from G, open before the revocation.
    let watch = c
        .monitor(&g.attenuate().max_messages(100).build().unwrap())
        .unwrap();
    wait_for("the watch to be open", || b.stats().streams_in >= 1).await;
    let from_a = a.mailbox();
    let to_g = from_a.sender(&g).unwrap();
    to_g.send(&1u32).await.unwrap();
    to_g.send(&2u32).await.unwrap();
    let waiting_g = to_g.enqueue(&3u32).await.unwrap();
    wait_for("G's third message to wait for room", || {
        b.stats().buffered_bytes > 0
    })
    .await;
    let held_by_g = b.stats().buffered_bytes;
    let from_c = c.mailbox();
    let to_h = from_c.sender(&h).unwrap();
    let waiting_h = to_h.enqueue(&10u32).await.unwrap();
    wait_for("H's message to wait for room", || {
        b.stats().buffered_bytes > held_by_g
    })
    .await;
    let open = b.stats().streams_in;
    target.revoke(g.grant()).await.unwrap();
    // The stream under G ends at once with REVOKED, its waiting message undelivered, and so
    // does the watch; nothing has to be read from the mailbox for that.
    assert_eq!(
        tokio::time::timeout(WAIT, waiting_g).await.unwrap(),
        Err(SendError::Revoked)
    );
    assert_eq!(
        tokio::time::timeout(WAIT, watch).await.unwrap(),
        DownReason::InvalidAddress(SendError::Revoked)
    );
    wait_for("G's stream and the watch to end", || {
        b.stats().streams_in + 2 <= open
    })
    .await;
    // What G's sender had acknowledged is delivered; H's stream, waiting all along, goes on.
    for expected in [1, 2, 10] {
        assert_eq!(recv_u32(&target).await, expected);
    }
    assert_eq!(tokio::time::timeout(WAIT, waiting_h).await.unwrap(), Ok(()));
    to_h.send(&11u32).await.unwrap();
    assert_eq!(recv_u32(&target).await, 11);
    assert_eq!(to_g.send(&4u32).await, Err(SendError::Revoked));
    from_a.send(target.address(), &5u32).await.unwrap();
    assert_eq!(recv_u32(&target).await, 5);
    assert!(target.try_recv_many(10).unwrap().is_empty());
    for node in [a, b, c] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_under_a_revoked_grant_ends_at_once() {
    idle_stream_under_a_revoked_grant(false).await;
}

/// As above, once the sending conversations parked: the receiver's CLOSE takes the run up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_stream_under_a_revoked_grant_ends_at_once() {
    idle_stream_under_a_revoked_grant(true).await;
}

/// Two idle streams (parked ones, if `parked`) under two grants; one grant is revoked.
async fn idle_stream_under_a_revoked_grant(parked: bool) {
    // The sender would keep an idle stream open for an hour.
    let a = node_with(NodeConfig {
        stream_idle_timeout: Duration::from_secs(3600),
        ..NodeConfig::default()
    })
    .await;
    let b = node().await;
    let target = b.mailbox();
    let [g, h] = [(); 2].map(|()| target.grant(None));
    let from = a.mailbox();
    from.send(&g, &1u32).await.unwrap();
    from.send(&h, &2u32).await.unwrap();
    wait_for("both streams to be open", || b.stats().streams_in == 2).await;
    assert_eq!(a.stats().conversations, 2);
    if parked {
        wait_for("both conversations to park", || {
            a.stats().parked_conversations == 2
        })
        .await;
    }
    target.revoke(g.grant()).await.unwrap();
    // Nothing is sent under G: its stream ends at both ends all the same.
    wait_for("G's idle stream to end", || {
        b.stats().streams_in == 1 && a.stats().conversations == 1
    })
    .await;
    from.send(&h, &3u32).await.unwrap();
    for expected in [1, 2, 3] {
        assert_eq!(recv_u32(&target).await, expected);
    }
    assert_eq!(from.send(&g, &4u32).await, Err(SendError::Revoked));
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waiting_for_a_rate_window_under_a_revoked_grant_ends_at_once() {
    let a = node().await;
    let b = node().await;
    let target = b.mailbox();
    let g = target.grant(None);
    // One message an hour: the second waits on the stream for the window to end.
    let hourly = g.attenuate().rate(1, 3600).build().unwrap();
    let sender = a.mailbox().sender(&hourly).unwrap();
    sender.send(&1u32).await.unwrap();
    let waiting = sender.enqueue(&2u32).await.unwrap();
    wait_for("the second message to wait for the rate window", || {
        b.stats().buffered_bytes > 0
    })
    .await;
    target.revoke(g.grant()).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, waiting).await.unwrap(),
        Err(SendError::Revoked)
    );
    assert_eq!(recv_u32(&target).await, 1);
    assert!(target.try_recv_many(10).unwrap().is_empty());
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

// One thread: the spawned send runs until it waits for room before the test goes on.
#[tokio::test]
async fn a_local_send_waiting_under_a_revoked_grant_is_refused() {
    let b = node_with(NodeConfig {
        mailbox_capacity: 1,
        ..NodeConfig::default()
    })
    .await;
    let target = b.mailbox();
    let g = target.grant(None);
    b.send(&g, &1u32).await.unwrap();
    let sender = b.clone();
    let to = g.clone();
    let waiting = tokio::spawn(async move { sender.send(&to, &2u32).await });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    target.revoke(g.grant()).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap(),
        Err(SendError::Revoked)
    );
    assert_eq!(recv_u32(&target).await, 1);
    assert!(target.try_recv_many(10).unwrap().is_empty());
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_keeps_at_most_max_revocations() {
    let b = node_with(NodeConfig {
        max_revocations: 2,
        ..NodeConfig::default()
    })
    .await;
    let target = b.mailbox();
    let [one, two, three] = [(); 3].map(|()| target.grant(None));
    target.revoke(one.grant()).await.unwrap();
    target.revoke(two.grant()).await.unwrap();
    // Revoking again is not counted.
    target.revoke(two.grant()).await.unwrap();
    assert_eq!(
        target.revoke(three.grant()).await,
        Err(RevokeError::TooMany { max: 2 })
    );
    assert_eq!(target.revocations(), 2);
    assert!(!target.is_revoked(three.grant()));
    b.send(&three, "still valid").await.unwrap();
    assert_eq!(b.send(&two, "x").await, Err(SendError::Revoked));
    // A smaller bound of the caller's own (a gateway session's) applies too.
    let other = b.mailbox();
    assert_eq!(
        other.revoke_within(GrantId(7), 0).await,
        Err(RevokeError::TooMany { max: 0 })
    );
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_n_messages_across_streams_resends_and_derivations() {
    let a = node().await;
    let b = node().await;
    let target = b.mailbox();
    let three = target
        .address()
        .attenuate()
        .max_messages(3)
        .build()
        .unwrap();
    let from = a.mailbox();
    // Four queued at once on one stream: three delivered and acknowledged, the fourth refused.
    let sender = from.sender(&three).unwrap();
    let mut deliveries = Vec::new();
    for i in 0..4u32 {
        deliveries.push(sender.enqueue(&i).await.unwrap());
    }
    let mut results = Vec::new();
    for delivery in deliveries {
        results.push(delivery.await);
    }
    assert_eq!(results[..3], [Ok(()), Ok(()), Ok(())]);
    assert_eq!(results[3], Err(SendError::Exhausted));
    for i in 0..3u32 {
        let message = target.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<u32>().unwrap(), i);
    }
    // Another sender mailbox, a derived address, a new connection: the count is the
    // address's, not the stream's.
    assert_eq!(from.send(&three, &9u32).await, Err(SendError::Exhausted));
    let derived = three.attenuate().max_messages(100).build().unwrap();
    let c = node().await;
    assert_eq!(c.send(&derived, &9u32).await, Err(SendError::Exhausted));
    assert!(target.try_recv_many(10).unwrap().is_empty());
    for node in [a, b, c] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_count_is_charged_to_its_parent() {
    let a = node().await;
    let b = node().await;
    let target = b.mailbox();
    let parent = target
        .address()
        .attenuate()
        .max_messages(2)
        .build()
        .unwrap();
    let child_one = parent.attenuate().max_messages(5).build().unwrap();
    let child_two = parent.attenuate().max_messages(6).build().unwrap();
    a.send(&child_one, "1").await.unwrap();
    a.send(&child_two, "2").await.unwrap();
    assert_eq!(a.send(&child_one, "3").await, Err(SendError::Exhausted));
    assert_eq!(a.send(&parent, "3").await, Err(SendError::Exhausted));
    assert_eq!(
        target
            .recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "1"
    );
    assert_eq!(
        target
            .recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "2"
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_is_useless_to_anyone_but_its_holder() {
    let a = node().await;
    let b = node().await;
    let c = node().await;
    let target = c.mailbox();
    // A holds C's address and hands it to B only.
    let for_b = target.address().handoff(b.id()).unwrap();
    b.send(&for_b, "from b").await.unwrap();
    let message = target.recv_timeout(WAIT).await.unwrap();
    assert_eq!(message.from().node(), b.id());
    // A copy in A's hands (or anyone else's) is refused: final.
    assert!(matches!(
        a.send(&for_b, "x").await,
        Err(SendError::Caveat(_))
    ));
    // message.from handed on the same way: C lets A reply to B's mailbox, nobody else.
    // (A reply address carries no dial hints: A learns where B is from B's own address.)
    let reply_for_a = message
        .from_for(a.id())
        .unwrap()
        .with_hints(b.inbox().address().hints().to_vec());
    a.send(&reply_for_a, "reply via a").await.unwrap();
    let reply = b.inbox().recv_timeout(WAIT).await.unwrap();
    assert_eq!(reply.decode::<String>().unwrap(), "reply via a");
    assert!(matches!(
        c.send(&reply_for_a, "x").await,
        Err(SendError::Caveat(_))
    ));
    for node in [a, b, c] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_caveats_and_forged_chains_are_refused() {
    let a = node().await;
    let b = node().await;
    let target = b.mailbox();
    let past = target
        .address()
        .attenuate()
        .expires_at(unix_now() - 1)
        .build()
        .unwrap();
    assert!(matches!(
        a.send(&past, "x").await,
        Err(SendError::Expired(_))
    ));
    // Another node's chain over B's mailbox: the tag does not check.
    let other = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let theirs = other.mailbox();
    let forged: ferry::Address = {
        // B's address with another node's chain tag: the node, mailbox and caveats are B's.
        let theirs = theirs
            .address()
            .attenuate()
            .max_messages(1)
            .build()
            .unwrap();
        let mut cap = target
            .address()
            .without_hints()
            .attenuate()
            .max_messages(1)
            .build()
            .unwrap()
            .to_cap_bytes();
        let tag_at = cap.len() - 32;
        cap[tag_at..].copy_from_slice(theirs.tag().unwrap());
        ferry::Address::from_cap_bytes(&cap)
            .unwrap()
            .with_hints(target.address().hints().to_vec())
    };
    assert_eq!(a.send(&forged, "x").await, Err(SendError::Forged));
    // A service-only address is no good for messages.
    let service_only = target
        .address()
        .attenuate()
        .service("echo")
        .build()
        .unwrap();
    assert!(matches!(
        a.send(&service_only, "x").await,
        Err(SendError::Caveat(_))
    ));
    for node in [a, b, other] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_caveats_and_counted_conversations() {
    let a = node().await;
    let b = node().await;
    let echo = b
        .serve(
            "echo",
            ServiceOptions::default(),
            |mut conversation| async move {
                let request: String = conversation.recv_obj().await.unwrap();
                conversation.reply(&request).await.unwrap();
            },
        )
        .unwrap();
    let address = echo.address().clone();
    let only_echo = address
        .attenuate()
        .service("echo")
        .max_messages(2)
        .build()
        .unwrap();
    let reply: String = a.call(&only_echo, "hi").await.unwrap();
    assert_eq!(reply, "hi");
    let reply: String = a.call(&only_echo, "again").await.unwrap();
    assert_eq!(reply, "again");
    let third: Result<String, _> = a.call(&only_echo, "third").await;
    assert!(
        matches!(third, Err(ferry::CallError::Open(OpenError::Exhausted))),
        "{third:?}"
    );
    let wrong = address.attenuate().service("time").build().unwrap();
    let refused: Result<String, _> = a.call(&wrong, "x").await;
    assert!(
        matches!(refused, Err(ferry::CallError::Open(OpenError::Caveat(_)))),
        "{refused:?}"
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}
