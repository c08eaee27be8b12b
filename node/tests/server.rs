//! A whole `ferry run` in the test's process (`ferry_node::server`), on port 0 everywhere and
//! stopped by a CancellationToken: what arrives at its inbox is handed out, it answers
//! `/health`, it shuts down cleanly, and its inbox keeps its address across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::Read as _;
use std::time::Duration;

use bytes::Bytes;
use ferry::{Node, SecretKey};
use ferry_node::server::{Server, ServerConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// `GET path` on `addr`, the whole response (blocking: run it off the runtime's threads).
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test]
async fn a_whole_server_runs_in_process_and_stops_on_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig::new(dir.path().join("data")))
        .await
        .unwrap();
    let inbox = server.mailbox_address().clone();
    let http = server.http_addr().unwrap();
    assert!(
        server.gateway_addr().is_some(),
        "the gateway is on by default"
    );

    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(server.run(
        move |batch| {
            for message in batch {
                let _ = arrived.send(message.payload().to_vec());
            }
            Ok(())
        },
        shutdown.clone(),
    ));

    let sender = Node::builder(SecretKey::generate()).bind().await.unwrap();
    sender
        .send_bytes(&inbox, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let payload = tokio::time::timeout(WAIT, arrivals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payload, b"hello");

    let health = tokio::task::spawn_blocking(move || http_get(http, "/health"))
        .await
        .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    shutdown.cancel();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    sender.shutdown(Duration::ZERO).await;

    // The same data directory: the same inbox.
    let again = Server::start(ServerConfig::new(dir.path().join("data")))
        .await
        .unwrap();
    assert_eq!(
        again.mailbox_address().without_hints(),
        inbox.without_hints()
    );
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    again.run(|_| Ok(()), shutdown).await.unwrap();
}

#[tokio::test]
async fn a_refused_configuration_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().to_owned());
    config.node.keep_alive = config.node.idle_timeout;
    let error = Server::start(config).await.unwrap_err();
    assert!(
        matches!(error, ferry_node::server::ServerError::Config(_)),
        "{error}"
    );
}

/// WebTransport is on by default, on the gateway's port number over UDP; when that UDP port
/// is taken it takes a free one (and says so); `None` turns it off. `GET /webtransport` on
/// the gateway says where it is.
#[tokio::test]
async fn webtransport_takes_the_gateway_port_number_or_a_free_one() {
    use ferry_node::gateway::webtransport::{Listen, WebTransportError};
    use ferry_node::server::ServerError;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig::new(dir.path().join("a")))
        .await
        .unwrap();
    let gateway = server.gateway_addr().unwrap();
    let wt = server.webtransport().expect("on by default");
    assert_eq!(wt.addr, gateway, "the gateway's IP and port number, on UDP");
    assert!(!wt.own_port);
    let info = tokio::task::spawn_blocking(move || http_get(gateway, "/webtransport"))
        .await
        .unwrap();
    assert!(
        info.contains(&format!(
            "\"url\":\"https://127.0.0.1:{}/webtransport\"",
            gateway.port()
        )),
        "{info}"
    );

    // A gateway port whose number is taken on UDP (by the first server's endpoint, which
    // the second gateway cannot bind over TCP: so take a UDP socket at a free TCP port's
    // number).
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap();
    drop(probe);
    let _udp = std::net::UdpSocket::bind(port).unwrap();
    let mut config = ServerConfig::new(dir.path().join("b"));
    if let Some((addr, _)) = &mut config.gateway {
        *addr = port;
    }
    let second = Server::start(config).await.unwrap();
    assert_eq!(second.gateway_addr(), Some(port));
    let wt = second.webtransport().unwrap();
    assert!(wt.own_port, "{wt:?}");
    assert_ne!(wt.addr.port(), port.port());

    let mut config = ServerConfig::new(dir.path().join("c"));
    config.webtransport = None;
    let third = Server::start(config).await.unwrap();
    assert!(third.webtransport().is_none());
    let gateway = third.gateway_addr().unwrap();
    let info = tokio::task::spawn_blocking(move || http_get(gateway, "/webtransport"))
        .await
        .unwrap();
    assert!(info.starts_with("HTTP/1.1 404"), "{info}");
    // A free port's number: another socket of this machine may take it between its probe and
    // the server's bind, and then another is tried.
    let mut attempt = 0;
    let (fourth, free) = loop {
        let mut config = ServerConfig::new(dir.path().join(format!("d{attempt}")));
        let free = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        config.webtransport = Some((Listen::At(free), Default::default()));
        match Server::start(config).await {
            Ok(server) => break (server, free),
            Err(ServerError::WebTransport(WebTransportError::Bind { source, .. }))
                if source.kind() == std::io::ErrorKind::AddrInUse && attempt < 20 =>
            {
                attempt += 1;
            }
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(fourth.webtransport().unwrap().addr, free);
    for server in [server, second, third, fourth] {
        server.run(|_| Ok(()), cancelled()).await.unwrap();
    }
}

fn cancelled() -> CancellationToken {
    let token = CancellationToken::new();
    token.cancel();
    token
}
