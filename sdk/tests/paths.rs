//! How nodes find their way to each other on one machine: racing the routes of an address
//! (a hint that never answers or answers with another identity costs nothing), address
//! observation, hole punching from a relayed connection to a direct one while messages flow,
//! and paths that die and come back. The same across real NATs is the lab's job
//! (interop-tests, `lab`).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use ferry::{Node, NodeConfig, RelayAccess, Route, SecretKey};
use ferry_testkit::lossy::{LinkConfig, LossyLink};
use ferry_testkit::wait::wait_for;

const WAIT: Duration = Duration::from_secs(20);

async fn node(config: NodeConfig) -> Node {
    Node::bind(SecretKey::generate(), config).await.unwrap()
}

async fn relay() -> Node {
    node(NodeConfig {
        relay: RelayAccess::Any,
        ..NodeConfig::default()
    })
    .await
}

/// A node staying connected to `relay`, once the relay knows it.
async fn behind(relay: &Node, hole_punching: bool) -> Node {
    let node = node(NodeConfig {
        relays: vec![(relay.id(), relay.local_addr())],
        hole_punching,
        ..NodeConfig::default()
    })
    .await;
    wait_for("the relay to know the node", || {
        relay.is_connected(&node.id())
    })
    .await;
    node
}

/// A UDP socket that takes packets and never answers: a hint into a black hole.
fn black_hole() -> (std::net::UdpSocket, SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A path whose round trip is far longer than the dial's re-attempt interval (3 s, as over a
/// satellite hop with full queues both ways) is dialed: a silent route keeps its attempts for
/// 4 s, so one is answered before it is replaced. With the newest two of the attempts every
/// 500 ms kept (1 s), a 1.4-s path timed out; with the newest four (2 s), this one did. The
/// attempts started before the first answer (one every 500 ms) end at that answer: when they
/// went on, each completed in turn, both nodes took each into use and kept the ones it
/// replaced open for `duplicate_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_with_a_round_trip_of_three_seconds_is_dialed_once() {
    let a = node(NodeConfig::default()).await;
    let b = node(NodeConfig::default()).await;
    let slow = LinkConfig {
        delay: Duration::from_millis(1500),
        ..LinkConfig::default()
    };
    let link = LossyLink::start(slow, b.local_addr()).await.unwrap();
    a.connect(b.id(), Some(link.local_addr())).await.unwrap();
    let rtt = a.ping(b.id(), &[]).await.unwrap();
    assert!(
        rtt >= Duration::from_millis(3000),
        "{rtt:?} through the link"
    );
    // By now (a round trip after the first answer) the attempts started before that answer
    // would have completed one after another: with them going on, this node had taken 6
    // connections into use here and the other node 3. One more than the first is allowed:
    // an answer can come while the first is taken into use.
    let taken = (a.connections_established(), b.connections_established());
    assert!(
        taken.0 <= 2 && taken.1 <= 2,
        "connections taken into use: {taken:?}"
    );
    // The other node's ends of the abandoned handshakes are closed too (the dialer's close
    // reached them), not left open until their idle timeout.
    wait_for("one connection left on each node", || {
        a.stats().open_connections == 1 && b.stats().open_connections == 1
    })
    .await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_observes_the_address_it_sees() {
    let b = relay().await;
    let c = behind(&b, true).await;
    wait_for("an observation", || !c.observed_addrs().is_empty()).await;
    assert_eq!(c.observed_addrs(), vec![c.local_addr()]);
    c.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_first_hint_does_not_hold_up_the_relay() {
    let b = relay().await;
    let c = behind(&b, false).await;
    // send_timeout below dial_timeout: trying the hints one after another, each for the whole
    // dial_timeout, would fail this send.
    let a = node(NodeConfig {
        dial_timeout: Duration::from_secs(10),
        send_timeout: Duration::from_secs(3),
        ..NodeConfig::default()
    })
    .await;
    let (_hole, silent) = black_hole();
    let mailbox = c.mailbox();
    let address = mailbox.address().with_hints(vec![silent]);
    assert_eq!(address.relays(), vec![(b.id(), b.local_addr())]);
    a.send(&address, "through the relay").await.unwrap();
    assert_eq!(
        mailbox
            .recv_timeout(WAIT)
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "through the relay"
    );
    assert_eq!(a.route(&c.id()), Some(Route::Relayed { relay: b.id() }));
    for node in [a, c, b] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_that_answers_with_another_identity_is_just_a_failed_route() {
    let b = relay().await;
    let c = behind(&b, false).await;
    let stranger = node(NodeConfig::default()).await;
    let a = node(NodeConfig::default()).await;
    let mailbox = c.mailbox();
    // The first hint is another ferry node (say, one on the sender's own LAN).
    let address = mailbox.address().with_hints(vec![stranger.local_addr()]);
    a.send(&address, "x").await.unwrap();
    mailbox.recv_timeout(WAIT).await.unwrap();
    assert_eq!(a.route(&c.id()), Some(Route::Relayed { relay: b.id() }));
    for node in [a, c, b, stranger] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_failing_is_reported_with_each_reason() {
    let stranger = node(NodeConfig::default()).await;
    let c = node(NodeConfig::default()).await;
    let a = node(NodeConfig {
        dial_timeout: Duration::from_millis(800),
        ..NodeConfig::default()
    })
    .await;
    let (_hole, silent) = black_hole();
    let address = c
        .mailbox()
        .address()
        .with_hints(vec![stranger.local_addr(), silent]);
    let error = a.send(&address, "x").await.unwrap_err();
    let ferry::SendError::Unreachable(ferry::DialError::NoRoute { node, tried }) = error else {
        panic!("expected NoRoute, got {error:?}");
    };
    assert_eq!(node, c.id());
    let reasons: Vec<_> = tried
        .iter()
        .map(|failure| (failure.route, &failure.error))
        .collect();
    assert!(
        matches!(reasons[0], (Route::Direct(addr), ferry::DialError::WrongNode { actual, .. })
            if addr == stranger.local_addr() && *actual == stranger.id()),
        "{reasons:?}"
    );
    assert!(
        matches!(reasons[1], (Route::Direct(addr), ferry::DialError::Timeout) if addr == silent),
        "{reasons:?}"
    );
    for node in [a, c, stranger] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_becomes_direct_without_losing_reordering_or_repeating_a_message() {
    let b = relay().await;
    let c = behind(&b, true).await;
    let a = node(NodeConfig::default()).await;
    let mailbox = c.mailbox();
    // No hint: C is reached through B first.
    let only_relay = mailbox
        .address()
        .without_hints()
        .with_relay(b.id(), b.local_addr());
    // Messages are queued without waiting from before the first connection until well after
    // the direct one took over, so the switch happens with messages in flight.
    let sender = a.sender(&only_relay);
    let watching = a.clone();
    let peer = c.id();
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX));
    let announced = total.clone();
    let sending = tokio::spawn(async move {
        let mut n = 0u32;
        let mut direct_at = None;
        let mut last = None;
        while direct_at.is_none_or(|at| n < at + 2_000) {
            last = Some(sender.enqueue(&n).await.unwrap());
            n += 1;
            if direct_at.is_none()
                && watching
                    .route(&peer)
                    .is_some_and(|route| !route.is_relayed())
            {
                direct_at = Some(n);
            }
            if n.is_multiple_of(100) {
                tokio::task::yield_now().await;
            }
            assert!(n < 10_000_000, "never became direct");
        }
        announced.store(n, std::sync::atomic::Ordering::SeqCst);
        last.unwrap().await.unwrap();
    });
    let mut next = 0u32;
    while next < total.load(std::sync::atomic::Ordering::SeqCst) {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        assert_eq!(
            message.decode::<u32>().unwrap(),
            next,
            "in order, once each"
        );
        next += 1;
    }
    sending.await.unwrap();
    let count = total.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(next, count);
    assert!(
        mailbox.try_recv_many(10).unwrap().is_empty(),
        "nothing twice"
    );
    assert!(!a.route(&c.id()).unwrap().is_relayed());
    assert_eq!(c.route(&a.id()), Some(Route::Direct(a.local_addr())));
    assert!(
        b.stats().relayed_packets > 0,
        "the relay carried the first connection"
    );
    for node in [a, c, b] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hole_punching_a_relayed_connection_stays_relayed() {
    let b = relay().await;
    let c = behind(&b, false).await;
    let a = node(NodeConfig::default()).await;
    let mailbox = c.mailbox();
    let only_relay = mailbox
        .address()
        .without_hints()
        .with_relay(b.id(), b.local_addr());
    for n in 0..50u32 {
        a.send(&only_relay, &n).await.unwrap();
    }
    // A punch would have been offered right after the relayed connection was made; the
    // answer (an empty list) and its dial window are long over after fifty round trips
    // through the relay and this ping.
    a.ping(c.id(), &[]).await.unwrap();
    assert_eq!(a.route(&c.id()), Some(Route::Relayed { relay: b.id() }));
    assert_eq!(c.route(&a.id()), Some(Route::Relayed { relay: b.id() }));
    for node in [a, c, b] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}
