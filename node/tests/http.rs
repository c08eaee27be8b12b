//! The HTTP endpoint: `/health` answers, `/metrics` reports the node's counters in the
//! Prometheus text format and follows what the node does.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use ferry::{Node, NodeConfig, SecretKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// One HTTP/1.1 GET; returns (status line, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(10), get_now(addr, path))
        .await
        .unwrap_or_else(|_| panic!("GET {path} took too long"))
}

async fn get_now(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample `name` (with its labels, as printed) in a metrics body.
fn sample(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_follow_the_node() {
    let node = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(ferry_node::http::serve(
        listener,
        node.clone(),
        None,
        shutdown.clone(),
    ));

    let (status, body) = get(addr, "/health").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains(&node.id().to_string()), "{body}");

    let mailbox = node.mailbox();
    for n in 0..10u32 {
        peer.send(mailbox.address(), &n).await.unwrap();
    }
    // A send that fails: the mailbox is gone.
    let gone = node.mailbox();
    let address = gone.address().clone();
    drop(gone);
    let failed = tokio::time::timeout(Duration::from_secs(10), peer.send(&address, "x")).await;
    assert!(failed.unwrap().is_err());

    let (status, body) = get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(sample(&body, "ferry_messages_in_total"), Some(10), "{body}");
    assert_eq!(sample(&body, "ferry_mailbox_depth"), Some(10), "{body}");
    assert_eq!(sample(&body, "ferry_connected_peers"), Some(1), "{body}");
    assert!(sample(&body, "ferry_bytes_in_total").unwrap() >= 10);
    assert!(
        body.contains("# TYPE ferry_send_failures counter"),
        "{body}"
    );

    let peer_metrics = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = listener.local_addr().unwrap();
        tokio::spawn(ferry_node::http::serve(
            listener,
            peer.clone(),
            None,
            shutdown.clone(),
        ));
        get(peer_addr, "/metrics").await.1
    };
    assert_eq!(
        sample(&peer_metrics, "ferry_messages_out_total"),
        Some(10),
        "{peer_metrics}"
    );
    assert_eq!(
        sample(
            &peer_metrics,
            "ferry_send_failures_total{kind=\"no_such_mailbox\"}"
        ),
        Some(1),
        "{peer_metrics}"
    );

    let (status, _) = get(addr, "/nothing").await;
    assert!(status.contains("404"), "{status}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    node.shutdown(Duration::from_secs(1)).await;
    peer.shutdown(Duration::from_secs(1)).await;
}
