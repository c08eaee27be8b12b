//! The built-in `ferry.ping` service: `Node::ping`, calling it like any service, and the
//! reserved `ferry.` prefix.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ferry::{
    Admission, DialError, Node, NodeConfig, OpenError, PingError, SecretKey, ServeError,
    ServiceOptions, Target, PING_SERVICE,
};

async fn node(config: NodeConfig) -> Node {
    Node::bind(SecretKey::generate(), config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_pings() {
    let a = node(NodeConfig::default()).await;
    let b = node(NodeConfig::default()).await;
    // The first ping dials; later ones reuse the connection.
    for _ in 0..3 {
        let started = Instant::now();
        let rtt = a.ping(b.id(), &[b.local_addr()]).await.unwrap();
        assert!(rtt > Duration::ZERO);
        assert!(
            rtt <= started.elapsed(),
            "{rtt:?} is more than the wall time"
        );
    }
    assert!(a.is_connected(&b.id()));
    // Both directions, on the connection a dialed.
    b.ping(a.id(), &[]).await.unwrap();
    // No mailbox or service is created for it.
    assert_eq!(b.stats().mailboxes, 1, "only the inbox");
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// The ping is an ordinary call: a postcard u64 in, the same u64 out. Lookups find nothing:
/// built-in services have no address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_service_echoes_a_u64_call() {
    let a = node(NodeConfig::default()).await;
    let b = node(NodeConfig::default()).await;
    let target = Target::service(b.id(), PING_SERVICE).with_hints(vec![b.local_addr()]);
    let echo: u64 = a.call(target.clone(), &u64::MAX).await.unwrap();
    assert_eq!(echo, u64::MAX);
    // Anything but one u64 is refused: the handler gives up without an answer.
    let wrong: Result<u64, _> = a.call(target, "not a number").await;
    assert!(wrong.is_err(), "{wrong:?}");
    assert_eq!(
        a.lookup(b.id(), PING_SERVICE, &[b.local_addr()])
            .await
            .unwrap_err(),
        OpenError::NoSuchService(PING_SERVICE.into())
    );
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_ferry_prefix_is_reserved() {
    let a = node(NodeConfig::default()).await;
    for name in [PING_SERVICE, "ferry.", "ferry.mine"] {
        assert_eq!(
            a.service(name, ServiceOptions::default()).unwrap_err(),
            ServeError::Reserved(name.into())
        );
        assert_eq!(
            a.serve(name, ServiceOptions::default(), |_| async {})
                .unwrap_err(),
            ServeError::Reserved(name.into())
        );
    }
    // Only the exact prefix: these are ordinary names.
    let _ferryman = a.service("ferryman", ServiceOptions::default()).unwrap();
    let _upper = a.service("FERRY.ping", ServiceOptions::default()).unwrap();
    a.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_fail_with_typed_errors() {
    let short = NodeConfig {
        call_timeout: Duration::from_millis(500),
        ..NodeConfig::default()
    };
    let a = node(short).await;

    // No address known.
    let stranger = SecretKey::generate().public();
    assert_eq!(
        a.ping(stranger, &[]).await.unwrap_err(),
        PingError::Unreachable(DialError::NoAddress(stranger))
    );

    // Nobody listens there: the ping's deadline (call_timeout) passes during the dial.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    assert_eq!(
        a.ping(stranger, &[silent.local_addr().unwrap()])
            .await
            .unwrap_err(),
        PingError::Timeout
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A node that admits no one refuses the connection.
    let closed = node(NodeConfig {
        admission: Admission::Only(HashSet::new()),
        ..NodeConfig::default()
    })
    .await;
    let refused = a
        .ping(closed.id(), &[closed.local_addr()])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, PingError::Unreachable(DialError::Refused(_))),
        "{refused:?}"
    );

    // A node that admits no one, on a connection it dialed itself: the ping stream is reset.
    closed.connect(a.id(), Some(a.local_addr())).await.unwrap();
    let reset = a.ping(closed.id(), &[]).await.unwrap_err();
    assert!(
        matches!(reset, PingError::Unreachable(DialError::Refused(_))),
        "{reset:?}"
    );

    a.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        a.ping(closed.id(), &[]).await.unwrap_err(),
        PingError::NodeClosed
    );
    closed.shutdown(Duration::from_secs(1)).await;
}
