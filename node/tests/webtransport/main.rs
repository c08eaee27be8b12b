//! The browser gateway over WebTransport, with web-transport-quinn's client as the browser:
//! the endpoint and its JSON, certificates pinned by hash and rotated on a driven clock,
//! sessions (welcome, sends, deliveries on the gateway's streams, calls on their own stream),
//! resume across transports, refusals, and a stalled stream that does not stall another.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::sync::atomic::{AtomicU64, Ordering};

use ferry::{Node, NodeConfig, SecretKey, ServiceHandle, ServiceOptions};
use ferry_node::gateway::webtransport::{
    self, decode_data_frame, encode_data_header, Certificates, DataFrame, ManualClock,
    WebTransport, WebTransportConfig, FRAME_TEXT, MAX_DATA_PIECE, STREAM_CONTROL, STREAM_DATA,
    STREAM_DELIVERIES, STREAM_INCOMING, STREAM_REQUESTS,
};
use ferry_node::gateway::{self, AuthConfig, GatewayConfig, GatewayHandle, NoHooks, StaticToken};
use ferry_node::store::{RedbStore, StoreConfig};
use ferry_testkit::files::{self, Gate};
use ferry_testkit::wait;
use futures::StreamExt;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use web_transport_quinn::{RecvStream, SendStream, Session};

const WAIT: Duration = Duration::from_secs(10);

struct Env {
    node: Node,
    handle: GatewayHandle,
    http: SocketAddr,
    wt: SocketAddr,
    clock: ManualClock,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start(config: GatewayConfig) -> Env {
    start_with(config, WebTransportConfig::default()).await
}

async fn start_with(config: GatewayConfig, wt_config: WebTransportConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(RedbStore::open(&dir.path().join("store.redb"), StoreConfig::default()).unwrap());
    let node = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let clock = ManualClock::new(SystemTime::now());
    let certificates = Certificates::self_signed(
        vec!["localhost".into(), "127.0.0.1".into()],
        Arc::new(clock.clone()),
    )
    .unwrap();
    let endpoint = WebTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(certificates),
        wt_config,
    )
    .unwrap();
    let wt = endpoint.local_addr().unwrap();
    let gateway = gateway::Gateway::new(node.clone(), store, config, Arc::new(NoHooks)).unwrap();
    let handle = gateway.handle();
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway.serve_webtransport(endpoint, shutdown.clone()));
    let serving = gateway.serve(listener, shutdown.clone());
    tokio::spawn(async move { serving.await.unwrap() });
    Env {
        node,
        handle,
        http,
        wt,
        clock,
        shutdown,
        _dir: dir,
    }
}

/// `GET /webtransport` on the gateway's HTTP port.
async fn endpoint_info(http: SocketAddr) -> Value {
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let request =
        format!("GET /webtransport HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

fn hashes(info: &Value) -> Vec<Vec<u8>> {
    info["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert_eq!(h["algorithm"], "sha-256");
            data_encoding::BASE64
                .decode(h["value"].as_str().unwrap().as_bytes())
                .unwrap()
        })
        .collect()
}

async fn session(url: &str, pinned: Vec<Vec<u8>>) -> Result<Session, String> {
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(pinned)
        .map_err(|e| e.to_string())?;
    let url = url::Url::parse(url).unwrap();
    tokio::time::timeout(WAIT, client.connect(url))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())
}

async fn write_frame(send: &mut SendStream, value: &Value) {
    let text = value.to_string();
    let mut frame = vec![FRAME_TEXT];
    frame.extend_from_slice(&(text.len() as u32).to_be_bytes());
    frame.extend_from_slice(text.as_bytes());
    send.write_all(&frame).await.unwrap();
}

async fn read_frame(recv: &mut RecvStream) -> Option<Value> {
    let mut head = [0u8; 5];
    if recv.read_exact(&mut head).await.is_err() {
        return None;
    }
    assert_eq!(head[0], FRAME_TEXT);
    let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.unwrap();
    Some(serde_json::from_slice(&body).unwrap())
}

/// A session with its control stream, and the frames of the gateway's delivery streams.
struct Client {
    session: Session,
    control: (SendStream, RecvStream),
    welcome: Value,
    /// Each delivery's stream (numbered as the gateway opened them) and frame.
    deliveries: tokio::sync::mpsc::UnboundedReceiver<(usize, Value)>,
}

impl Client {
    async fn connect(env: &Env, query: &str) -> Client {
        let info = endpoint_info(env.http).await;
        let url = format!("{}?{query}", info["url"].as_str().unwrap());
        let session = session(&url, hashes(&info)).await.unwrap();
        Self::on(session).await
    }

    async fn on(session: Session) -> Client {
        let (mut send, mut recv) = session.open_bi().await.unwrap();
        send.write_all(&[STREAM_CONTROL]).await.unwrap();
        let welcome = tokio::time::timeout(WAIT, read_frame(&mut recv))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let (tx, deliveries) = tokio::sync::mpsc::unbounded_channel();
        let accepting = session.clone();
        tokio::spawn(async move {
            let mut number = 0;
            while let Ok(mut recv) = accepting.accept_uni().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut kind = [0u8; 1];
                    recv.read_exact(&mut kind).await.unwrap();
                    assert_eq!(kind[0], STREAM_DELIVERIES);
                    while let Some(frame) = read_frame(&mut recv).await {
                        let _ = tx.send((number, frame));
                    }
                });
                number += 1;
            }
        });
        Client {
            session,
            control: (send, recv),
            welcome,
            deliveries,
        }
    }

    /// A request stream.
    async fn stream(&self) -> (SendStream, RecvStream) {
        let (mut send, recv) = self.session.open_bi().await.unwrap();
        send.write_all(&[STREAM_REQUESTS]).await.unwrap();
        (send, recv)
    }

    async fn delivered(&mut self) -> Value {
        self.delivered_on().await.1
    }

    /// The next delivery and the number of its stream.
    async fn delivered_on(&mut self) -> (usize, Value) {
        tokio::time::timeout(WAIT, self.deliveries.recv())
            .await
            .unwrap()
            .unwrap()
    }
}

/// The next frame of a stream that is not a heartbeat.
async fn answer(recv: &mut RecvStream) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, read_frame(recv))
            .await
            .unwrap()
            .unwrap();
        if frame["type"] != "heartbeat" {
            return frame;
        }
    }
}

#[tokio::test]
async fn the_endpoint_is_published_and_pinned_by_hash() {
    let env = start(GatewayConfig::default()).await;
    let info = endpoint_info(env.http).await;
    assert_eq!(
        info["url"],
        format!("https://127.0.0.1:{}/webtransport", env.wt.port())
    );
    assert_eq!(info["protocol"], webtransport::PROTOCOL);
    assert!(info["rotates_at"].as_u64().unwrap() > 0);
    let pinned = hashes(&info);
    assert_eq!(pinned.len(), 2);
    let url = info["url"].as_str().unwrap().to_owned();
    // The current hash alone connects; a wrong one does not.
    let client = Client::on(session(&url, vec![pinned[0].clone()]).await.unwrap()).await;
    assert_eq!(client.welcome["resumed"], false);
    assert_eq!(client.welcome["next"], 0);
    assert!(session(&url, vec![vec![7; 32]]).await.is_err());
    // Another path is not found.
    let other = format!("https://127.0.0.1:{}/elsewhere", env.wt.port());
    assert!(session(&other, pinned.clone()).await.is_err());
    let stats = env.handle.stats();
    assert_eq!(stats.webtransport_sessions, 1);
    assert_eq!(stats.connections, 1);
    env.shutdown.cancel();
}

#[tokio::test]
async fn certificates_rotate_on_the_clock_with_the_next_hash_published_ahead() {
    let env = start(GatewayConfig::default()).await;
    let before = endpoint_info(env.http).await;
    let old = hashes(&before);
    let url = before["url"].as_str().unwrap().to_owned();
    env.clock
        .advance(webtransport::ROTATE_EVERY + Duration::from_secs(1));
    let after = hashes(&endpoint_info(env.http).await);
    // The announced next certificate is served now; a new next one is announced.
    assert_eq!(after[0], old[1]);
    assert_ne!(after[1], old[0]);
    // A page holding the hashes fetched before the rotation still connects (its second
    // hash), one pinning only the retired certificate does not.
    Client::on(session(&url, old.clone()).await.unwrap()).await;
    assert!(session(&url, vec![old[0].clone()]).await.is_err());
    Client::on(
        session(&url, vec![after[1].clone(), after[0].clone()])
            .await
            .unwrap(),
    )
    .await;
    env.shutdown.cancel();
}

#[tokio::test]
async fn sends_answer_on_their_stream_and_messages_come_on_delivery_streams() {
    let env = start(GatewayConfig::default()).await;
    let mut client = Client::connect(&env, "").await;
    let address = client.welcome["address"].as_str().unwrap().to_owned();
    let (mut send, mut recv) = client.stream().await;
    for reference in 1..=3 {
        write_frame(
            &mut send,
            &json!({"type":"send","ref":reference,"to":address,"data":{"n":reference}}),
        )
        .await;
    }
    for reference in 1..=3 {
        let ok = answer(&mut recv).await;
        assert_eq!(ok, json!({"type":"ok","ref":reference}));
    }
    // Messages from one sender come in order on one delivery stream.
    for n in 1..=3 {
        let message = client.delivered().await;
        assert_eq!(message["type"], "message");
        assert_eq!(message["data"], json!({"n": n}));
        assert_eq!(message["id"], n - 1);
    }
    // A peer's message too; acks on the control stream.
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    peer.send_bytes(&address.parse().unwrap(), "from a peer".into())
        .await
        .unwrap();
    let message = client.delivered().await;
    assert_eq!(message["data"], "from a peer");
    write_frame(
        &mut client.control.0,
        &json!({"type":"ack","id":3,"answered":3}),
    )
    .await;
    // A ping on the control stream is answered there.
    write_frame(&mut client.control.0, &json!({"type":"ping","ref":4})).await;
    assert_eq!(
        answer(&mut client.control.1).await,
        json!({"type":"ok","ref":4})
    );
    drop(env.node);
    env.shutdown.cancel();
}

#[tokio::test]
async fn a_session_resumes_across_transports() {
    let env = start(GatewayConfig::default()).await;
    // Over WebSocket first.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", env.http))
        .await
        .unwrap();
    let welcome: Value = match ws.next().await.unwrap().unwrap() {
        tokio_tungstenite::tungstenite::Message::Text(text) => {
            serde_json::from_str(text.as_str()).unwrap()
        }
        other => panic!("{other:?}"),
    };
    let address = welcome["address"].as_str().unwrap().to_owned();
    let token = welcome["resume"].as_str().unwrap().to_owned();
    ws.close(None).await.unwrap();
    drop(ws);
    env.handle
        .push_json(welcome["session"].as_str().unwrap(), &json!("while away"))
        .await
        .unwrap();
    // Then over WebTransport, with the WebSocket's token.
    let mut client = Client::connect(&env, &format!("resume={token}")).await;
    assert_eq!(client.welcome["resumed"], true);
    assert_eq!(client.welcome["recovered"], true);
    assert_eq!(client.welcome["address"], address);
    let message = client.delivered().await;
    assert_eq!(message["data"], "while away");
    assert_eq!(message["push"], true);
    // And back: the WebTransport connection is taken over (4409).
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?resume={token}&cursor=0", env.http))
            .await
            .unwrap();
    let welcome: Value = match ws.next().await.unwrap().unwrap() {
        tokio_tungstenite::tungstenite::Message::Text(text) => {
            serde_json::from_str(text.as_str()).unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(welcome["resumed"], true);
    let closed = tokio::time::timeout(WAIT, client.session.closed())
        .await
        .unwrap();
    assert!(closed.to_string().contains("4409"), "{closed}");
    env.shutdown.cancel();
}

#[tokio::test]
async fn refusals_close_the_session_with_the_websocket_codes() {
    let config = GatewayConfig {
        auth: AuthConfig {
            tokens: vec![StaticToken {
                user: "alice".into(),
                token: "s3cr3t".into(),
            }],
            ..AuthConfig::default()
        },
        ..GatewayConfig::default()
    };
    let env = start(config).await;
    let info = endpoint_info(env.http).await;
    let url = info["url"].as_str().unwrap();
    let refused = session(&format!("{url}?token=wrong"), hashes(&info))
        .await
        .unwrap();
    let closed = tokio::time::timeout(WAIT, refused.closed()).await.unwrap();
    assert!(closed.to_string().contains("4401"), "{closed}");
    let client = Client::connect(&env, "token=s3cr3t").await;
    assert_eq!(client.welcome["user"], "alice");
    assert!(env.handle.stats().refused_upgrades >= 1);
    assert!(env.handle.stats().webtransport_refused >= 1);
    env.shutdown.cancel();
}

#[tokio::test]
async fn a_stalled_stream_does_not_stall_another() {
    // Room for both bulk replies in the connection's queue (two 900 kB answers at once are
    // more than the default 1 MiB: a slow consumer, over WebSocket as well).
    let mut config = GatewayConfig::default();
    config.limits.max_queue_bytes = 4 << 20;
    let env = start(config).await;
    // A service whose reply is big: 900 kB.
    let service_node = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let _service = service_node
        .serve(
            "bulk",
            ServiceOptions::default(),
            |mut conversation| async move {
                if conversation.recv_obj::<String>().await.is_ok() {
                    let _ = conversation.reply(&"x".repeat(900_000)).await;
                }
            },
        )
        .unwrap();
    let target = format!("{}@{}/bulk", service_node.id(), service_node.local_addr());
    let client = Client::connect(&env, "").await;
    // Two bulk calls on one stream that the page does not read: 1.8 MB, more than the
    // stream's flow-control window.
    let (mut bulk_send, mut bulk_recv) = client.stream().await;
    for reference in 1..=2 {
        write_frame(
            &mut bulk_send,
            &json!({"type":"call","ref":reference,"to":target,"text":true,"data":"go"}),
        )
        .await;
    }
    // Meanwhile round trips on another stream are answered.
    let (mut echo_send, mut echo_recv) = client.stream().await;
    // Give the bulk replies time to be under way (the pings must pass them).
    let deadline = std::time::Instant::now() + WAIT;
    while env.handle.stats().requests < 2 {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    for reference in 3..=12 {
        write_frame(&mut echo_send, &json!({"type":"ping","ref":reference})).await;
        assert_eq!(
            answer(&mut echo_recv).await,
            json!({"type":"ok","ref":reference})
        );
    }
    // The stalled stream has everything once read (calls are not ordered with each other).
    let mut refs = Vec::new();
    for _ in 1..=2 {
        let reply = answer(&mut bulk_recv).await;
        assert_eq!(reply["type"], "ok", "{}", reply["type"]);
        assert_eq!(reply["data"].as_str().unwrap().len(), 900_000);
        refs.push(reply["ref"].as_u64().unwrap());
    }
    refs.sort_unstable();
    assert_eq!(refs, [1, 2]);
    env.shutdown.cancel();
}

#[tokio::test]
async fn streams_beyond_the_limit_and_unknown_streams_are_refused() {
    let env = start(GatewayConfig::default()).await;
    let client = Client::connect(&env, "").await;
    // A stream of an unknown type is stopped; the session goes on.
    let (mut send, mut recv) = client.session.open_bi().await.unwrap();
    send.write_all(&[0x7f]).await.unwrap();
    let mut buf = [0u8; 1];
    assert!(recv.read(&mut buf).await.is_err() || send.stopped().await.is_ok());
    let (mut s, mut r) = client.stream().await;
    write_frame(&mut s, &json!({"type":"ping","ref":1})).await;
    assert_eq!(answer(&mut r).await, json!({"type":"ok","ref":1}));
    ferry_testkit::wait::wait_for_within("the refused stream counted", WAIT, || {
        env.handle.stats().webtransport_refused_streams >= 1
    })
    .await;
    env.shutdown.cancel();
}

/// Each source (here: three senders) gets a delivery stream of its own; beyond
/// `max_delivery_streams` the least recently used is finished, and the source's next message
/// comes on a new stream.
#[tokio::test]
async fn each_source_has_its_own_delivery_stream_within_the_limit() {
    let mut wt = WebTransportConfig::default();
    wt.max_delivery_streams = 2;
    let env = start_with(GatewayConfig::default(), wt).await;
    let mut client = Client::connect(&env, "").await;
    let address: ferry::Address = client.welcome["address"].as_str().unwrap().parse().unwrap();
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(
            Node::bind(SecretKey::generate(), NodeConfig::default())
                .await
                .unwrap(),
        );
    }
    let mut stream_of = std::collections::HashMap::new();
    // a, b: two streams; c: a third (a's, the least recently used, is finished); a again: a
    // fourth stream, after the first.
    for (step, peer) in [0usize, 1, 2, 0].into_iter().enumerate() {
        peers[peer]
            .send_bytes(&address, json!({ "step": step }).to_string().into())
            .await
            .unwrap();
        let (stream, message) = client.delivered_on().await;
        assert_eq!(message["data"], json!({ "step": step }));
        assert_eq!(message["id"], step as u64);
        stream_of.insert(step, stream);
    }
    assert_eq!(stream_of.len(), 4);
    let streams: std::collections::HashSet<_> = stream_of.values().collect();
    assert_eq!(
        streams.len(),
        4,
        "a stream per source, a new one after eviction: {stream_of:?}"
    );
    env.shutdown.cancel();
}

/// A frame of an unknown kind closes the session with 4400, a frame longer than
/// `gateway_max_message_size` with 1009: typed, on any stream.
#[tokio::test]
async fn malformed_and_oversized_frames_close_with_their_codes() {
    let mut config = GatewayConfig::default();
    config.limits.max_message_size = 1000;
    let env = start(config).await;
    for (frame, code) in [
        (vec![0x07u8, 0, 0, 0, 1, b'x'], "4400"),
        (vec![FRAME_TEXT, 0, 0, 0x10, 0], "1009"),
    ] {
        let mut client = Client::connect(&env, "").await;
        client.control.0.write_all(&frame).await.unwrap();
        let closed = tokio::time::timeout(WAIT, client.session.closed())
            .await
            .unwrap();
        assert!(closed.to_string().contains(code), "{closed}");
        // On a request stream, the same.
        let client = Client::connect(&env, "").await;
        let (mut send, _recv) = client.stream().await;
        send.write_all(&frame).await.unwrap();
        let closed = tokio::time::timeout(WAIT, client.session.closed())
            .await
            .unwrap();
        assert!(closed.to_string().contains(code), "{closed}");
    }
    env.shutdown.cancel();
}

/// The stream limit counts the request streams the client has not finished: finished ones,
/// answered or not, do not hold it.
#[tokio::test]
async fn finished_request_streams_do_not_hold_the_limit() {
    let mut wt = WebTransportConfig::default();
    wt.max_streams = 2;
    let env = start_with(GatewayConfig::default(), wt).await;
    let client = Client::connect(&env, "").await;
    for round in 0..3u64 {
        let mut open = Vec::new();
        for i in 0..2u64 {
            let (mut send, mut recv) = client.stream().await;
            let reference = round * 10 + i;
            write_frame(&mut send, &json!({"type":"ping","ref":reference})).await;
            assert_eq!(
                answer(&mut recv).await,
                json!({"type":"ok","ref":reference})
            );
            open.push((send, recv));
        }
        // Both open: a third is refused.
        let (mut send, mut recv) = client.stream().await;
        write_frame(&mut send, &json!({"type":"ping","ref":99})).await;
        let refused = tokio::time::timeout(WAIT, read_frame(&mut recv))
            .await
            .unwrap();
        assert!(refused.is_none());
        assert_eq!(env.handle.stats().webtransport_refused_streams, round + 1);
        // Finished, and all answered: the gateway finishes its side too, and there is room.
        for (mut send, mut recv) in open {
            send.finish().unwrap();
            let end = tokio::time::timeout(WAIT, read_frame(&mut recv))
                .await
                .unwrap();
            assert!(end.is_none());
        }
    }
    env.shutdown.cancel();
}

/// A service node for data streams: `files` (ferry_testkit::files) behind `gate`, with a
/// QUIC receive window of `window` bytes per stream; and its call target text.
async fn files_node(window: usize, gate: Option<Arc<Gate>>) -> (Node, ServiceHandle, String) {
    let config = NodeConfig {
        receive_window: window,
        ..NodeConfig::default()
    };
    let node = Node::bind(SecretKey::generate(), config).await.unwrap();
    let service = files::serve(&node, "files", gate);
    let target = format!("{}@{}/files", node.id(), node.local_addr());
    (node, service, target)
}

/// A gateway with `wt`, a `files` service node (ungated, default window) and a client.
async fn data_scene(wt: WebTransportConfig) -> (Env, Node, ServiceHandle, String, Client) {
    let env = start_with(GatewayConfig::default(), wt).await;
    let (service_node, service, to) = files_node(32 << 20, None).await;
    let client = Client::connect(&env, "").await;
    (env, service_node, service, to, client)
}

/// Opens a data stream and writes its type byte and header.
async fn data_stream(client: &Client, to: &str, request: &Value) -> (SendStream, RecvStream) {
    let (mut send, recv) = client.session.open_bi().await.unwrap();
    send.write_all(&[STREAM_DATA]).await.unwrap();
    let header = encode_data_header(to, Some(&request.to_string()), false);
    send.write_all(&header).await.unwrap();
    (send, recv)
}

/// Reads the gateway's side of a data stream: the pieces (joined) and the answer.
async fn data_answer(recv: &mut RecvStream) -> (Vec<u8>, Value) {
    let mut buf = Vec::new();
    let mut data = Vec::new();
    loop {
        match decode_data_frame(&buf, 1 << 20).unwrap() {
            Some((DataFrame::Piece(piece), used)) => {
                data.extend_from_slice(&piece);
                buf.drain(..used);
            }
            Some((DataFrame::Answer { kind, body }, _)) => {
                assert_eq!(kind, FRAME_TEXT);
                return (data, serde_json::from_slice(&body).unwrap());
            }
            None => {
                let chunk = tokio::time::timeout(WAIT, recv.read_chunk(1 << 16, true))
                    .await
                    .unwrap()
                    .unwrap()
                    .expect("the stream ended before its answer");
                buf.extend_from_slice(&chunk.bytes);
            }
        }
    }
}

#[tokio::test]
async fn data_streams_carry_an_upload_to_a_service_and_a_download_back() {
    let (env, service_node, _service, to, client) = data_scene(WebTransportConfig::default()).await;

    let upload = files::pattern(0, 3 << 20);
    let (mut send, mut recv) = data_stream(&client, &to, &json!({"op": "upload"})).await;
    for piece in upload.chunks(100_000) {
        send.write_all(piece).await.unwrap();
    }
    send.finish().unwrap();
    let (data, answer) = data_answer(&mut recv).await;
    assert!(data.is_empty());
    assert_eq!(
        answer,
        json!({"type": "ok", "sent": upload.len(), "received": 0,
               "data": {"bytes": upload.len(), "sha256": files::sha256_hex(&upload)}})
    );

    let (mut send, mut recv) =
        data_stream(&client, &to, &json!({"op": "download", "bytes": 5_000_000})).await;
    send.finish().unwrap();
    let (data, answer) = data_answer(&mut recv).await;
    assert_eq!(data.len(), 5_000_000);
    assert!(data == files::pattern(0, 5_000_000), "the download differs");
    assert_eq!(answer["received"], 5_000_000);
    assert_eq!(answer["data"]["sha256"], files::sha256_hex(&data));
    let stats = env.handle.stats();
    assert_eq!(stats.webtransport_data_streams, 2);
    assert_eq!(stats.webtransport_data_bytes_in, upload.len() as u64);
    assert_eq!(stats.webtransport_data_bytes_out, 5_000_000);
    wait::wait_for("the bridges to let go", || {
        env.handle.stats().webtransport_data_buffered == 0
    })
    .await;
    assert!(env.handle.stats().webtransport_data_buffered_peak <= MAX_DATA_PIECE as u64);
    // A service that refuses the upload: its reason.
    let _refuse = service_node
        .serve(
            "refuse",
            ServiceOptions::default(),
            |conversation| async move {
                let _ = conversation.fail("no room for it").await;
            },
        )
        .unwrap();
    let refuse = to.replace("/files", "/refuse");
    let (mut send, mut recv) = data_stream(&client, &refuse, &json!({"op": "upload"})).await;
    let writing = tokio::spawn(async move {
        for piece in files::pattern(0, 4 << 20).chunks(64 * 1024) {
            if send.write_all(piece).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    let (_, answer) = data_answer(&mut recv).await;
    assert_eq!(answer["code"], "failed", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("no room for it"),
        "{answer}"
    );
    writing.await.unwrap();
    service_node.shutdown(Duration::from_secs(1)).await;
    env.shutdown.cancel();
}

#[tokio::test]
async fn a_slow_service_holds_the_upload_back_without_the_gateway_buffering_it() {
    let mut wt = WebTransportConfig::default();
    wt.max_data_bytes = 8 << 20;
    let env = start_with(GatewayConfig::default(), wt).await;
    // The service reads 1 MiB, then stops; its stream takes 1 MiB more (its QUIC window).
    let window = 1 << 20;
    let gate = Gate::pausing_after(1 << 20);
    let (service_node, _service, to) = files_node(window, Some(gate.clone())).await;
    let client = Client::connect(&env, "").await;
    let (mut send, mut recv) = data_stream(&client, &to, &json!({"op": "upload"})).await;
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let written = written.clone();
        async move {
            for piece in files::pattern(0, 8 << 20).chunks(32 * 1024) {
                send.write_all(piece).await.unwrap();
                written.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
            send.finish().unwrap();
        }
    });
    // The browser's side fills the gateway's stream window (2 MiB) too, and the bridge holds
    // a piece the service's stream does not take.
    wait::wait_for("the upload to stall", || {
        written.load(Ordering::Relaxed) >= 3 << 20
            && env.handle.stats().webtransport_data_buffered > 0
    })
    .await;
    let read = gate.read.load(Ordering::Relaxed);
    let stats = env.handle.stats();
    // What the gateway passed on: what the service's stream took (what the service read, a
    // piece its conversation may have read ahead, and its window), and at most one piece in
    // hand.
    assert!(
        stats.webtransport_data_bytes_in <= read + window as u64 + 2 * MAX_DATA_PIECE as u64,
        "gateway passed {} bytes to a service that read {read}",
        stats.webtransport_data_bytes_in
    );
    assert!(
        stats.webtransport_data_buffered <= MAX_DATA_PIECE as u64,
        "{stats:?}"
    );
    assert!(
        stats.webtransport_data_buffered_peak <= MAX_DATA_PIECE as u64,
        "{stats:?}"
    );
    assert!(
        written.load(Ordering::Relaxed) < 8 << 20,
        "the browser wrote everything"
    );
    gate.resume();
    writer.await.unwrap();
    let (_, answer) = data_answer(&mut recv).await;
    assert_eq!(answer["data"]["bytes"], 8 << 20, "{answer}");
    assert_eq!(
        answer["data"]["sha256"],
        files::sha256_hex(&files::pattern(0, 8 << 20))
    );
    service_node.shutdown(Duration::from_secs(1)).await;
    env.shutdown.cancel();
}

#[tokio::test]
async fn bad_data_streams_are_answered_with_typed_errors() {
    let mut wt = WebTransportConfig::default();
    wt.max_data_bytes = 1000;
    let (env, service_node, _service, to, mut client) = data_scene(wt).await;
    // A header that is not one.
    let (mut send, mut recv) = client.session.open_bi().await.unwrap();
    send.write_all(&[STREAM_DATA]).await.unwrap();
    write_frame(&mut send, &json!({"type": "call", "to": to})).await;
    let (_, answer) = data_answer(&mut recv).await;
    assert_eq!(answer["code"], "bad_request", "{answer}");
    // No such service.
    let nowhere = to.replace("/files", "/nothing");
    let (mut send, mut recv) = data_stream(&client, &nowhere, &json!({"op": "upload"})).await;
    send.finish().unwrap();
    let (_, answer) = data_answer(&mut recv).await;
    assert_eq!(answer["code"], "no_such_service", "{answer}");
    // More than max_data_bytes.
    let (mut send, mut recv) = data_stream(&client, &to, &json!({"op": "upload"})).await;
    let _ = send.write_all(&[0u8; 5000]).await;
    let (_, answer) = data_answer(&mut recv).await;
    assert_eq!(answer["code"], "too_large", "{answer}");
    // The session goes on.
    write_frame(&mut client.control.0, &json!({"type": "ping", "ref": 1})).await;
    assert_eq!(
        self::answer(&mut client.control.1).await,
        json!({"type": "ok", "ref": 1})
    );
    service_node.shutdown(Duration::from_secs(1)).await;
    env.shutdown.cancel();
}

#[tokio::test]
async fn data_streams_beyond_the_limit_are_reset() {
    let mut wt = WebTransportConfig::default();
    wt.max_data_streams = 1;
    let (env, service_node, _service, to, client) = data_scene(wt).await;
    // One data stream at a time: a second one while the first is under way is reset.
    let (mut first, mut first_recv) = data_stream(&client, &to, &json!({"op": "upload"})).await;
    wait::wait_for("the first data stream", || {
        env.handle.stats().webtransport_data_streams == 1
    })
    .await;
    let (_second, mut second_recv) = data_stream(&client, &to, &json!({"op": "upload"})).await;
    let refused = tokio::time::timeout(WAIT, second_recv.read_chunk(16, true))
        .await
        .unwrap();
    assert!(refused.is_err(), "{refused:?}");
    // The first goes on.
    first.write_all(b"abc").await.unwrap();
    first.finish().unwrap();
    let (_, answer) = data_answer(&mut first_recv).await;
    assert_eq!(answer["data"]["bytes"], 3, "{answer}");
    // A page that gives an upload up (resets its stream) frees its place: the gateway cancels
    // the service's conversation, and the next data stream is taken.
    wait::wait_for("the first's place to be free", || {
        env.handle.stats().webtransport_data_open == 0
    })
    .await;
    let (mut given_up, _given_up_recv) = data_stream(&client, &to, &json!({"op": "upload"})).await;
    given_up.write_all(&[7u8; 100_000]).await.unwrap();
    wait::wait_for("the upload to reach the service", || {
        env.handle.stats().webtransport_data_bytes_in > 3
    })
    .await;
    given_up.reset(0u32).unwrap();
    wait::wait_for("the given-up stream to let go", || {
        let stats = env.handle.stats();
        stats.webtransport_data_open == 0 && stats.webtransport_data_buffered == 0
    })
    .await;
    let (mut send, mut recv) = data_stream(&client, &to, &json!({"op": "upload"})).await;
    send.write_all(b"again").await.unwrap();
    send.finish().unwrap();
    let (_, answer) = data_answer(&mut recv).await;
    assert_eq!(answer["data"]["bytes"], 5, "{answer}");
    service_node.shutdown(Duration::from_secs(1)).await;
    env.shutdown.cancel();
}

#[tokio::test]
async fn a_peers_data_reaches_the_session_on_a_stream_the_gateway_opens() {
    let env = start(GatewayConfig::default()).await;
    let client = Client::connect(&env, "").await;
    let address: ferry::Address = client.welcome["address"].as_str().unwrap().parse().unwrap();
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let data = files::pattern(0, 3 << 20);
    let sending = tokio::spawn({
        let (peer, address, data) = (peer.clone(), address.clone(), data.clone());
        async move {
            webtransport::send_to_session(&peer, &address, br#"{"name":"a.bin"}"#, &data[..]).await
        }
    });
    // The page's side: the stream, its header, the bytes to the FIN, then the answer.
    let (mut send, mut recv) = tokio::time::timeout(WAIT, client.session.accept_bi())
        .await
        .unwrap()
        .unwrap();
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind).await.unwrap();
    assert_eq!(kind[0], STREAM_INCOMING);
    let header = read_frame(&mut recv).await.unwrap();
    assert_eq!(
        header,
        json!({"type": "data", "from": peer.id().to_string(), "data": {"name": "a.bin"}})
    );
    let got = tokio::time::timeout(WAIT, recv.read_to_end(8 << 20))
        .await
        .unwrap()
        .unwrap();
    assert!(got == data, "the bytes differ");
    write_frame(
        &mut send,
        &json!({"type": "ok", "data": {"got": got.len()}}),
    )
    .await;
    send.finish().unwrap();
    let answer = sending.await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        json!({"got": 3 << 20})
    );

    // The page refuses: the sender gets its reason.
    let refused = tokio::spawn({
        let (peer, address) = (peer.clone(), address.clone());
        async move { webtransport::send_to_session(&peer, &address, b"", &b"x"[..]).await }
    });
    let (mut send, _recv) = tokio::time::timeout(WAIT, client.session.accept_bi())
        .await
        .unwrap()
        .unwrap();
    write_frame(&mut send, &json!({"type": "error", "message": "not now"})).await;
    send.finish().unwrap();
    let error = refused.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("not now"), "{error}");

    // An address that is no session's: refused by the gateway.
    let stranger = env.node.mailbox();
    let error = webtransport::send_to_session(&peer, stranger.address(), b"", &b"x"[..])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no such session"), "{error}");
    peer.shutdown(Duration::from_secs(1)).await;
    env.shutdown.cancel();
}
