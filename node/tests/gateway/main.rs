//! The browser gateway over real WebSockets (tokio-tungstenite as the browser): sessions,
//! messaging, auth, resume, channels, calls, hooks and limits.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod caps;
mod requests;

#[path = "../ws_client/mod.rs"]
mod ws_client;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ws_client::{ask, connect, data_json, next, put, Ws};

use bytes::Bytes;
use ferry::{Node, NodeConfig, SecretKey, ServiceOptions};
use ferry_node::gateway::protocol;
use ferry_node::gateway::{
    self, AuthConfig, Disconnect, EndReason, GatewayConfig, GatewayHandle, Hooks, NoHooks,
    SessionInfo, StaticToken, Verdict,
};
use ferry_node::store::{RedbStore, SessionStore, StoreConfig};
use ferry_testkit::wait::{wait_for, wait_for_within};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Env {
    node: Node,
    store: Arc<RedbStore>,
    handle: GatewayHandle,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_with(config: GatewayConfig, hooks: Arc<dyn Hooks>, store: StoreConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("store.redb"), store).unwrap());
    let node = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = gateway::Gateway::new(node.clone(), store.clone(), config, hooks).unwrap();
    let handle = gateway.handle();
    let shutdown = CancellationToken::new();
    let serving = gateway.serve(listener, shutdown.clone());
    let task = tokio::spawn(async move { serving.await.unwrap() });
    Env {
        node,
        store,
        handle,
        addr,
        shutdown,
        task,
        _dir: dir,
    }
}

/// Waits until the gateway saw the connection of `session` end.
async fn gone(handle: &GatewayHandle, session: &str) {
    wait_for("the gateway to see the session's connection end", || {
        !handle.is_connected(session)
    })
    .await;
}

async fn start(config: GatewayConfig) -> Env {
    start_with(config, Arc::new(NoHooks), StoreConfig::default()).await
}

/// The close code and reason of a refused WebSocket upgrade: it is completed and closed at once,
/// as a browser can read no HTTP status.
async fn closed_at_once(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (u16, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    closed(&mut ws).await
}

/// The status and `WWW-Authenticate` headers of a plain (not upgrading) `GET path`.
async fn plain_get(addr: SocketAddr, path: &str, headers: &str) -> (u16, Vec<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let challenges = response
        .lines()
        .filter_map(|line| line.strip_prefix("www-authenticate: "))
        .map(str::to_owned)
        .collect();
    (status, challenges)
}

/// The status and headers a refused upgrade gets.
async fn refused(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (u16, Vec<String>) {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            response
                .headers()
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect(),
        ),
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// Waits for the close frame and returns its code and reason.
async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return (1006, error.to_string()),
        }
    }
}

async fn put_binary(ws: &mut Ws, header: Value, payload: &[u8]) {
    let header = header.to_string();
    let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(payload);
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

#[tokio::test]
async fn a_session_has_an_address_and_config_and_talks_to_peers() {
    let config = GatewayConfig {
        client_config: json!({"logger": "ferry1example"}),
        ..GatewayConfig::default()
    };
    let env = start(config).await;
    let (mut ws, welcome) = connect(env.addr, "").await;
    assert_eq!(welcome["config"]["logger"], "ferry1example");
    assert_eq!(welcome["resumed"], false);
    assert_eq!(welcome["node"], env.node.id().to_string());
    let address: ferry::Address = welcome["address"].as_str().unwrap().parse().unwrap();
    assert!(welcome["user"].as_str().unwrap().starts_with("anon-"));

    // A peer on another node sends JSON to the browser's address.
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    peer.send_bytes(&address, Bytes::from_static(br#"{"type":"ping"}"#))
        .await
        .unwrap();
    let message = next(&mut ws).await;
    assert_eq!(message.kind(), "message");
    assert_eq!(data_json(&message), json!({"type": "ping"}));
    let from = message.header["from"].as_str().unwrap().to_owned();
    assert_eq!(from, peer.inbox().address().without_hints().to_string());
    put(&mut ws, json!({"type": "ack", "id": message.header["id"]})).await;

    // The browser answers to `from`; the peer reads the JSON text.
    let (answer, _) = ask(
        &mut ws,
        json!({"type": "send", "ref": 1, "to": peer.inbox().address().to_string(), "data": {"type": "pong"}}),
    )
    .await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    let reply = peer.inbox().recv_timeout(WAIT).await.unwrap();
    assert_eq!(reply.payload().as_ref(), br#"{"type":"pong"}"#);
    assert_eq!(reply.from().mailbox(), address.mailbox());

    // A send to a revoked address fails with a code.
    let gone = peer.mailbox();
    let gone_address = gone.address().to_string();
    drop(gone);
    let (answer, _) = ask(
        &mut ws,
        json!({"type": "send", "ref": 2, "to": gone_address, "data": 1}),
    )
    .await;
    assert_eq!(answer.header["code"], "no_such_mailbox");
    env.shutdown.cancel();
    assert_eq!(closed(&mut ws).await.0, 1001);
    env.task.await.unwrap();
}

#[tokio::test]
async fn two_sessions_exchange_text_and_binary() {
    let env = start(GatewayConfig::default()).await;
    let (mut a, _) = connect(env.addr, "").await;
    let (mut b, welcome_b) = connect(env.addr, "").await;
    let b_address = welcome_b["address"].as_str().unwrap().to_owned();
    for n in 0..5 {
        let (answer, _) = ask(
            &mut a,
            json!({"type": "send", "ref": n, "to": b_address, "data": {"n": n}}),
        )
        .await;
        assert_eq!(answer.kind(), "ok");
    }
    put_binary(
        &mut a,
        json!({"type": "send", "ref": 9, "to": b_address}),
        &[0xff, 0, 1],
    )
    .await;
    for n in 0..5 {
        let message = next(&mut b).await;
        assert_eq!(data_json(&message), json!({"n": n}));
        assert_eq!(message.header["id"], n);
    }
    let binary = next(&mut b).await;
    assert_eq!(binary.data.unwrap().as_ref(), &[0xff, 0, 1]);
    // A binary answer for A.
    let ok = next(&mut a).await;
    assert_eq!((ok.kind(), ok.header["ref"].as_u64()), ("ok", Some(9)));
}

fn token_config() -> GatewayConfig {
    GatewayConfig {
        auth: AuthConfig {
            tokens: vec![
                StaticToken {
                    user: "alice".into(),
                    token: "alice-token".into(),
                },
                StaticToken {
                    user: "bob".into(),
                    token: "bob-token".into(),
                },
            ],
            jwt_hs256_secret: Some(b"an hs256 secret of enough length".to_vec()),
            ..AuthConfig::default()
        },
        ..GatewayConfig::default()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"an hs256 secret of enough length"),
    )
    .unwrap()
}

#[tokio::test]
async fn authentication_and_401s() {
    let env = start(token_config()).await;
    let url = format!("ws://{}/ws", env.addr);

    // No credentials, a wrong token, a wrong password, an expired token: the upgrade is
    // completed and closed at once with 4401 and the reason.
    let refusal = closed_at_once(url.as_str().into_client_request().unwrap()).await;
    assert_eq!(refusal, (4401, "credentials required".to_owned()));
    let (code, reason) =
        closed_at_once(format!("{url}?token=nope").into_client_request().unwrap()).await;
    assert_eq!(code, 4401);
    assert!(reason.starts_with("invalid credentials"), "{reason}");
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Basic {}", data_encoding::BASE64.encode(b"alice:wrong"))
            .parse()
            .unwrap(),
    );
    assert_eq!(closed_at_once(request).await.0, 4401);
    let expired = hs256("carol", now() - 3600);
    let refusal = closed_at_once(
        format!("{url}?token={expired}")
            .into_client_request()
            .unwrap(),
    )
    .await;
    assert_eq!(refusal, (4401, "credentials expired".to_owned()));
    // A request that is no upgrade gets the HTTP answer: 401 with WWW-Authenticate.
    let (status, challenge) = plain_get(env.addr, "/ws", "").await;
    assert_eq!(status, 401);
    assert_eq!(
        challenge,
        [r#"Bearer realm="ferry""#, r#"Basic realm="ferry""#]
    );
    let (status, challenge) = plain_get(env.addr, "/ws?token=nope", "").await;
    assert_eq!(status, 401);
    assert!(
        challenge[0].contains(r#"error="invalid_token""#),
        "{challenge:?}"
    );
    assert_eq!(env.handle.stats().refused_upgrades, 6);

    // Query token, bearer header, basic auth, HS256 JWT.
    let (_ws, welcome) = connect(env.addr, "token=alice-token").await;
    assert_eq!(welcome["user"], "alice");
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer bob-token".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next(&mut ws).await.header["user"], "bob");
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!(
            "Basic {}",
            data_encoding::BASE64.encode(b"alice:alice-token")
        )
        .parse()
        .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next(&mut ws).await.header["user"], "alice");
    let exp = now() + 3;
    let (mut carol, welcome) = connect(env.addr, &format!("token={}", hs256("carol", exp))).await;
    assert_eq!(welcome["user"], "carol");
    assert_eq!(welcome["auth_expires"], exp);

    // Refresh: another user's token is refused, the same user's extends the session.
    let (answer, _) = ask(
        &mut carol,
        json!({"type": "refresh", "ref": 1, "token": hs256("dave", now() + 60)}),
    )
    .await;
    assert_eq!(answer.header["code"], "unauthorized");
    let (answer, _) = ask(
        &mut carol,
        json!({"type": "refresh", "ref": 2, "token": hs256("carol", now() + 60)}),
    )
    .await;
    assert_eq!(answer.kind(), "ok");
    // Still connected after the first token's expiry (real time is under test: tokens
    // expire on the real clock, in whole seconds).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (answer, _) = ask(&mut carol, json!({"type": "ping", "ref": 3})).await;
    assert_eq!(answer.kind(), "ok");

    // Without a refresh, the connection closes when the token expires.
    let (mut short, _) = connect(env.addr, &format!("token={}", hs256("erin", now() + 1))).await;
    assert_eq!(closed(&mut short).await.0, 4002);
}

#[tokio::test]
async fn eddsa_jwts() {
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .try_into()
        .unwrap();
    let mut config = GatewayConfig::default();
    config.auth.jwt_ed25519_public_key = Some(public);
    let env = start(config).await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &json!({"sub": "frank", "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
    )
    .unwrap();
    let (_ws, welcome) = connect(env.addr, &format!("token={token}")).await;
    assert_eq!(welcome["user"], "frank");
    // An HS256 token is not accepted when only EdDSA is configured.
    let url = format!("ws://{}/ws?token={}", env.addr, hs256("frank", now() + 60));
    assert_eq!(
        closed_at_once(url.into_client_request().unwrap()).await.0,
        4401
    );
}

#[tokio::test]
async fn resume_gets_exactly_what_was_missed_in_order() {
    let env = start(GatewayConfig::default()).await;
    let (mut ws, welcome) = connect(env.addr, "").await;
    let address: ferry::Address = welcome["address"].as_str().unwrap().parse().unwrap();
    let resume = welcome["resume"].as_str().unwrap().to_owned();
    let session = welcome["session"].as_str().unwrap().to_owned();
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    for n in 0..3 {
        peer.send_bytes(&address, Bytes::from(format!("{n}")))
            .await
            .unwrap();
    }
    for n in 0..3 {
        assert_eq!(data_json(&next(&mut ws).await), json!(n));
    }
    put(&mut ws, json!({"type": "ack", "id": 0})).await;
    // The browser processed 0..=1 (acked 0), then drops off.
    ws.close(None).await.unwrap();
    drop(ws);
    gone(&env.handle, &session).await;
    for n in 3..6 {
        peer.send_bytes(&address, Bytes::from(format!("{n}")))
            .await
            .unwrap();
    }
    // A session pushes too, while it is away.
    env.handle
        .push_json(&session, &json!("pushed"))
        .await
        .unwrap();

    let (mut ws, welcome) = connect(env.addr, &format!("resume={resume}&cursor=1")).await;
    assert_eq!(welcome["resumed"], true);
    assert_eq!(welcome["recovered"], true);
    assert_eq!(welcome["address"], address.to_string());
    assert_eq!(welcome["pending"], 5);
    let mut got = Vec::new();
    for _ in 0..5 {
        let message = next(&mut ws).await;
        got.push((message.header["id"].as_u64().unwrap(), data_json(&message)));
    }
    assert_eq!(
        got,
        [
            (2, json!(2)),
            (3, json!(3)),
            (4, json!(4)),
            (5, json!(5)),
            (6, json!("pushed"))
        ]
    );

    // Resuming from a cursor below what was acknowledged cannot recover everything.
    drop(ws);
    gone(&env.handle, &session).await;
    let (_ws, welcome) = connect(env.addr, &format!("resume={resume}")).await;
    assert_eq!(
        welcome["recovered"], true,
        "no cursor: every unacknowledged message"
    );
    drop(_ws);
    gone(&env.handle, &session).await;
    let (_ws, welcome) = connect(env.addr, &format!("resume={resume}&cursor=0")).await;
    assert_eq!(welcome["recovered"], true);
    let (mut ws2, welcome) = connect(env.addr, &format!("resume={resume}&cursor=0")).await;
    assert_eq!(welcome["resumed"], true);
    // The older connection was taken over.
    let mut old = _ws;
    assert_eq!(closed(&mut old).await.0, 4409);
    put(&mut ws2, json!({"type": "ack", "id": 6})).await;
    let (answer, _) = ask(&mut ws2, json!({"type": "ping", "ref": 1})).await;
    assert_eq!(answer.kind(), "ok");
    drop(ws2);
    gone(&env.handle, &session).await;
    let (_ws, welcome) = connect(env.addr, &format!("resume={resume}&cursor=3")).await;
    assert_eq!(
        welcome["recovered"], false,
        "4..=6 were acknowledged and are gone"
    );
    assert_eq!(welcome["pending"], 0);
}

#[tokio::test]
async fn a_session_away_past_its_ttl_is_gone() {
    let config = GatewayConfig {
        session_ttl: Duration::from_millis(300),
        ..GatewayConfig::default()
    };
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    struct Ends(tokio::sync::mpsc::UnboundedSender<EndReason>);
    impl Hooks for Ends {
        fn ended(&self, _session: &SessionInfo, reason: &EndReason) {
            let _ = self.0.send(reason.clone());
        }
    }
    let env = start_with(config, Arc::new(Ends(ended_tx)), StoreConfig::default()).await;
    let (ws, welcome) = connect(env.addr, "").await;
    let address: ferry::Address = welcome["address"].as_str().unwrap().parse().unwrap();
    drop(ws);
    assert_eq!(
        tokio::time::timeout(WAIT, ended.recv()).await.unwrap(),
        Some(EndReason::Expired)
    );
    let resume = welcome["resume"].as_str().unwrap();
    let (_ws, again) = connect(env.addr, &format!("resume={resume}&cursor=0")).await;
    assert_eq!(again["resumed"], false);
    assert_eq!(again["expired"], true);
    assert_eq!(again["recovered"], false);
    assert_ne!(again["address"], welcome["address"]);
    // The old address is revoked.
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    assert_eq!(
        peer.send_bytes(&address, Bytes::from_static(b"1")).await,
        Err(ferry::SendError::NoSuchMailbox)
    );
    // A forged token is the same as a gone session.
    let (_ws, forged) = connect(env.addr, "resume=AAAA").await;
    assert_eq!(forged["expired"], true);
}

#[tokio::test]
async fn recovery_is_incomplete_when_messages_were_dropped() {
    let store = StoreConfig {
        max_pending_per_mailbox: 2,
        ..StoreConfig::default()
    };
    let env = start_with(GatewayConfig::default(), Arc::new(NoHooks), store).await;
    let (ws, welcome) = connect(env.addr, "").await;
    drop(ws);
    let session = welcome["session"].as_str().unwrap();
    gone(&env.handle, session).await;
    env.handle.push_json(session, &1).await.unwrap();
    env.handle.push_json(session, &2).await.unwrap();
    assert_eq!(
        env.handle.push_json(session, &3).await,
        Err(gateway::DeliverError::Full)
    );
    let resume = welcome["resume"].as_str().unwrap();
    let (mut ws, welcome) = connect(env.addr, &format!("resume={resume}")).await;
    assert_eq!(welcome["recovered"], false);
    assert_eq!(data_json(&next(&mut ws).await), json!(1));
    assert_eq!(data_json(&next(&mut ws).await), json!(2));
}

#[tokio::test]
async fn channels_users_and_sessions() {
    let mut config = token_config();
    config.permissions.join = vec!["room.*".into(), "private.{user}".into()];
    config.permissions.publish = vec!["room.*".into()];
    config.permissions.direct = true;
    let env = start(config).await;
    let (mut a, _) = connect(env.addr, "token=alice-token").await;
    let (mut a2, _) = connect(env.addr, "token=alice-token").await;
    let (mut b, welcome_b) = connect(env.addr, "token=bob-token").await;
    for (ws, reference) in [(&mut a, 1), (&mut b, 2)] {
        let (answer, _) = ask(
            ws,
            json!({"type": "join", "ref": reference, "channel": "room.1"}),
        )
        .await;
        assert_eq!(answer.kind(), "ok", "{answer:?}");
    }
    let (answer, _) = ask(
        &mut a,
        json!({"type": "join", "ref": 3, "channel": "secret"}),
    )
    .await;
    assert_eq!(answer.header["code"], "forbidden");
    let (answer, _) = ask(
        &mut a,
        json!({"type": "join", "ref": 4, "channel": "private.bob"}),
    )
    .await;
    assert_eq!(answer.header["code"], "forbidden");
    let (answer, _) = ask(
        &mut a,
        json!({"type": "join", "ref": 5, "channel": "private.alice"}),
    )
    .await;
    assert_eq!(answer.kind(), "ok");
    // Only members publish.
    let (answer, _) = ask(
        &mut a2,
        json!({"type": "send", "ref": 6, "to": {"channel": "room.1"}, "data": "x"}),
    )
    .await;
    assert_eq!(answer.header["code"], "forbidden");

    let (answer, mut early) = ask(
        &mut a,
        json!({"type": "send", "ref": 7, "to": {"channel": "room.1"}, "data": "hello room"}),
    )
    .await;
    assert_eq!(answer.kind(), "ok");
    let mine = match early.pop() {
        Some(message) => message,
        None => next(&mut a).await,
    };
    let theirs = next(&mut b).await;
    for message in [&mine, &theirs] {
        assert_eq!(message.header["channel"], "room.1");
        assert_eq!(data_json(message), json!("hello room"));
    }
    let (answer, _) = ask(
        &mut b,
        json!({"type": "leave", "ref": 8, "channel": "room.1"}),
    )
    .await;
    assert_eq!(answer.kind(), "ok");
    env.handle
        .publish("room.1", gateway::json_payload("second"))
        .await
        .unwrap();
    assert_eq!(data_json(&next(&mut a).await), json!("second"));

    // To a user: every session of bob's; to a session: that one.
    let (answer, _) = ask(
        &mut a,
        json!({"type": "send", "ref": 9, "to": {"user": "bob"}, "data": "hi bob"}),
    )
    .await;
    assert_eq!(answer.kind(), "ok");
    let message = next(&mut b).await;
    assert_eq!(
        (message.header["user"].as_str(), data_json(&message)),
        (Some("bob"), json!("hi bob"))
    );
    let (answer, _) = ask(
        &mut a,
        json!({"type": "send", "ref": 10, "to": {"session": welcome_b["session"]}, "data": "just you"}),
    )
    .await;
    assert_eq!(answer.kind(), "ok");
    assert_eq!(data_json(&next(&mut b).await), json!("just you"));
    let (answer, _) = ask(
        &mut a,
        json!({"type": "send", "ref": 11, "to": {"user": "nobody"}, "data": 1}),
    )
    .await;
    assert_eq!(answer.header["code"], "no_such_session");
    env.handle
        .push_user("alice", gateway::json_payload("both"))
        .await
        .unwrap();
    assert_eq!(data_json(&next(&mut a2).await), json!("both"));
}

#[tokio::test]
async fn calls_reach_services_and_time_out() {
    let env = start(GatewayConfig::default()).await;
    let service = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let _shout = service
        .serve(
            "shout",
            ServiceOptions::default(),
            |mut conversation| async move {
                if let Ok(request) = conversation.recv_obj::<String>().await {
                    let text: String = serde_json::from_str(&request).unwrap();
                    let reply =
                        serde_json::to_string(&json!({"shouted": text.to_uppercase()})).unwrap();
                    let _ = conversation.reply(&reply).await;
                }
            },
        )
        .unwrap();
    let _silent = service
        .serve(
            "silent",
            ServiceOptions::default(),
            |conversation| async move {
                // Never answers: holds the conversation until the node stops.
                std::future::pending::<()>().await;
                drop(conversation);
            },
        )
        .unwrap();
    let (mut ws, _) = connect(env.addr, "").await;
    let target = format!("{}@{}/shout", service.id(), service.local_addr());
    let (answer, _) = ask(
        &mut ws,
        json!({"type": "call", "ref": 1, "to": target, "data": "hi"}),
    )
    .await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    assert_eq!(data_json(&answer), json!({"shouted": "HI"}));
    let silent = format!("{}@{}/silent", service.id(), service.local_addr());
    let started = std::time::Instant::now();
    let (answer, _) = ask(
        &mut ws,
        json!({"type": "call", "ref": 2, "to": silent, "data": 1, "timeout_ms": 300}),
    )
    .await;
    assert_eq!(answer.header["code"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    let missing = format!("{}@{}/missing", service.id(), service.local_addr());
    let (answer, _) = ask(
        &mut ws,
        json!({"type": "call", "ref": 3, "to": missing, "data": 1}),
    )
    .await;
    assert_eq!(answer.header["code"], "no_such_service");
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Hooks for Recorder {
    fn started(&self, session: &SessionInfo) {
        self.events
            .lock()
            .unwrap()
            .push(format!("started {}", session.user));
    }
    fn connected(&self, _session: &SessionInfo, resumed: bool) {
        self.events
            .lock()
            .unwrap()
            .push(format!("connected {resumed}"));
    }
    fn message(&self, _session: &SessionInfo, request: &protocol::ClientFrame) -> Verdict {
        if let protocol::ClientFrame::Send { data, .. } = request {
            if data.as_ref() == b"\"forbidden\"" {
                return Verdict::Refuse("no forbidden words".into());
            }
        }
        self.events.lock().unwrap().push("message".into());
        Verdict::Allow
    }
    fn authorize_channel(
        &self,
        _session: &SessionInfo,
        channel: &str,
        _publish: bool,
    ) -> Option<bool> {
        Some(channel == "hooked")
    }
    fn disconnected(&self, _session: &SessionInfo, reason: &Disconnect) {
        self.events
            .lock()
            .unwrap()
            .push(format!("disconnected {reason:?}"));
    }
    fn ended(&self, _session: &SessionInfo, reason: &EndReason) {
        self.events
            .lock()
            .unwrap()
            .push(format!("ended {reason:?}"));
    }
}

#[tokio::test]
async fn hooks_are_told_and_can_push_and_close() {
    let recorder = Arc::new(Recorder::default());
    let env = start_with(
        GatewayConfig::default(),
        recorder.clone(),
        StoreConfig::default(),
    )
    .await;
    let (mut ws, welcome) = connect(env.addr, "").await;
    let address = welcome["address"].as_str().unwrap().to_owned();
    let (answer, _) = ask(
        &mut ws,
        json!({"type": "send", "ref": 1, "to": address, "data": "forbidden"}),
    )
    .await;
    assert_eq!(answer.header["code"], "forbidden");
    assert_eq!(answer.header["message"], "no forbidden words");
    let (answer, _) = ask(
        &mut ws,
        json!({"type": "join", "ref": 2, "channel": "hooked"}),
    )
    .await;
    assert_eq!(answer.kind(), "ok");
    let session = welcome["session"].as_str().unwrap();
    env.handle
        .push_json(session, &json!({"note": "from the app"}))
        .await
        .unwrap();
    let pushed = next(&mut ws).await;
    assert_eq!(pushed.header["push"], true);
    assert_eq!(data_json(&pushed), json!({"note": "from the app"}));
    assert!(env.handle.close(session, "bye now"));
    assert_eq!(closed(&mut ws).await, (4003, "bye now".to_owned()));
    drop(ws);
    wait_for("five hook events", || {
        recorder.events.lock().unwrap().len() >= 5
    })
    .await;
    let events = recorder.events.lock().unwrap().clone();
    assert_eq!(
        events,
        [
            format!("started {}", welcome["user"].as_str().unwrap()),
            "connected false".into(),
            "message".into(),
            "ended Closed(\"bye now\")".into(),
            "disconnected SessionEnded".into(),
        ]
    );
}

fn limited(limits: impl FnOnce(&mut gateway::Limits)) -> GatewayConfig {
    let mut config = GatewayConfig::default();
    limits(&mut config.limits);
    config
}

#[tokio::test]
async fn rate_limit_closes_the_connection() {
    let env = start(limited(|l| {
        l.rate_limit = 5;
        l.rate_window = Duration::from_secs(10);
    }))
    .await;
    let (mut ws, _) = connect(env.addr, "").await;
    for reference in 0..10 {
        let _ = ws
            .send(Message::Text(
                json!({"type": "ping", "ref": reference}).to_string().into(),
            ))
            .await;
    }
    let mut answers = 0;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(_))) => answers += 1,
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::from(4029));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(answers, 5);
    wait_for("the rate limit counted", || {
        env.handle.stats().rate_limited > 0
    })
    .await;
    assert_eq!(env.handle.stats().rate_limited, 1);
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    struct Disconnects(tokio::sync::mpsc::UnboundedSender<Disconnect>);
    impl Hooks for Disconnects {
        fn disconnected(&self, _session: &SessionInfo, reason: &Disconnect) {
            let _ = self.0.send(reason.clone());
        }
    }
    let config = limited(|l| {
        l.max_queue_bytes = 256 * 1024;
        l.write_timeout = Duration::from_millis(500);
    });
    let env = start_with(config, Arc::new(Disconnects(tx)), StoreConfig::default()).await;
    let (ws, welcome) = connect(env.addr, "").await;
    let session = welcome["session"].as_str().unwrap();
    // The browser stops reading; the gateway has far more to send than any socket buffers.
    let chunk = Bytes::from(vec![7u8; 60_000]);
    let mut pushes = Vec::new();
    for _ in 0..400 {
        pushes.push(env.handle.push(session, chunk.clone()));
    }
    for push in futures::future::join_all(pushes).await {
        push.unwrap();
    }
    let reason = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, Disconnect::SlowConsumer);
    drop(ws);
    // Nothing was lost: the session resumes and gets every message.
    let resume = welcome["resume"].as_str().unwrap();
    let (mut ws, welcome) = connect(env.addr, &format!("resume={resume}")).await;
    assert_eq!(welcome["recovered"], true);
    assert_eq!(welcome["pending"], 400);
    for id in 0..400u64 {
        let message = next(&mut ws).await;
        assert_eq!(message.header["id"].as_u64(), Some(id));
        if id % 100 == 99 {
            put(&mut ws, json!({"type": "ack", "id": id})).await;
        }
    }
}

#[tokio::test]
async fn connection_limits_answer_503() {
    let env = start(limited(|l| {
        l.connection_rate = 3;
        l.max_connections = 2;
    }))
    .await;
    let url = format!("ws://{}/ws", env.addr);
    let (_a, _) = connect(env.addr, "").await;
    let (_b, _) = connect(env.addr, "").await;
    // The third: too many connections.
    assert_eq!(
        refused(url.as_str().into_client_request().unwrap()).await.0,
        503
    );
    drop(_a);
    wait_for("the gateway to count the connection gone", || {
        env.handle.connections() == 1
    })
    .await;
    // The rate: 3 per second were used up.
    assert_eq!(
        refused(url.as_str().into_client_request().unwrap()).await.0,
        503
    );
    // A second later there is room again (real time is under test: a rate per second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_c, _) = connect(env.addr, "").await;

    // Origins: another site's page may not connect.
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    assert_eq!(
        closed_at_once(request).await,
        (4403, "origin not allowed".to_owned())
    );
    let stats = env.handle.stats();
    assert_eq!(stats.refused_upgrades, 3);
    assert_eq!(stats.connections, 2);
}

#[tokio::test]
async fn malformed_frames_and_sizes() {
    let env = start(limited(|l| l.max_message_size = 4096)).await;
    let (mut ws, _) = connect(env.addr, "").await;
    let (answer, _) = ask(&mut ws, json!({"type": "fly", "ref": 1})).await;
    assert_eq!(answer.header["code"], "unknown_type");
    let (answer, _) = ask(&mut ws, json!({"type": "send", "ref": 2, "data": 1})).await;
    assert_eq!(answer.header["code"], "bad_request");
    let (answer, _) = ask(
        &mut ws,
        json!({"type": "send", "ref": 3, "to": "ferry1garbage", "data": 1}),
    )
    .await;
    assert_eq!(answer.header["code"], "bad_request");
    ws.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(closed(&mut ws).await.0, 4400);

    let (mut ws, _) = connect(env.addr, "").await;
    ws.send(Message::Binary(vec![0, 0, 0, 200, 1].into()))
        .await
        .unwrap();
    assert_eq!(closed(&mut ws).await.0, 4400);

    let (mut ws, _) = connect(env.addr, "").await;
    let big = json!({"type": "ping", "ref": 1, "pad": "x".repeat(10_000)});
    let _ = ws.send(Message::Text(big.to_string().into())).await;
    assert_eq!(closed(&mut ws).await.0, 1009);
}

#[tokio::test]
async fn idle_connections_and_old_connections_close() {
    let env = start(limited(|l| {
        l.idle_timeout = Duration::from_millis(600);
        l.ping_interval = Duration::from_millis(200);
        l.max_connection_age = Some(Duration::from_secs(2));
    }))
    .await;
    // A client that reads answers the pings: not idle, until the age limit.
    let (mut live, welcome) = connect(env.addr, "").await;
    let started = std::time::Instant::now();
    assert_eq!(closed(&mut live).await.0, 4001);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let resume = welcome["resume"].as_str().unwrap();
    let (_again, welcome) = connect(env.addr, &format!("resume={resume}")).await;
    assert_eq!(welcome["resumed"], true);
    // A client that does not read sends no pongs: idle (real time is under test: the idle
    // timeout).
    let (mut quiet, _) = connect(env.addr, "").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(closed(&mut quiet).await.0, 4000);
}

/// A gateway on its own node (with `key`) and the store at `path`, as a restarted daemon has.
/// A running gateway: its node, store, handle, address, shutdown and serving task.
type Started = (
    Node,
    Arc<RedbStore>,
    GatewayHandle,
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
);

async fn start_on(key: &SecretKey, path: &std::path::Path) -> Started {
    start_configured(key, path, GatewayConfig::default()).await
}

/// [`start_on`] with `config`.
async fn start_configured(
    key: &SecretKey,
    path: &std::path::Path,
    config: GatewayConfig,
) -> Started {
    let store = Arc::new(RedbStore::open(path, StoreConfig::default()).unwrap());
    let node = Node::bind(key.clone(), NodeConfig::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway =
        gateway::Gateway::new(node.clone(), store.clone(), config, Arc::new(NoHooks)).unwrap();
    let handle = gateway.handle();
    let shutdown = CancellationToken::new();
    let serving = gateway.serve(listener, shutdown.clone());
    let task = tokio::spawn(async move { serving.await.unwrap() });
    (node, store, handle, addr, shutdown, task)
}

#[tokio::test]
async fn sessions_survive_a_restart_of_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = SecretKey::generate();
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();

    // First run: a session joins a channel, gets and acknowledges one message, goes away;
    // a peer and the channel send it one more each while it is away.
    let (node, store, handle, addr, shutdown, task) = start_on(&key, &path).await;
    let (mut ws, welcome) = connect(addr, "").await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let address: ferry::Address = welcome["address"].as_str().unwrap().parse().unwrap();
    let resume = welcome["resume"].as_str().unwrap().to_owned();
    handle.join(&session, "room.1").unwrap();
    peer.send_bytes(&address, Bytes::from_static(b"\"acked\""))
        .await
        .unwrap();
    let first = next(&mut ws).await;
    assert_eq!(data_json(&first), json!("acked"));
    put(&mut ws, json!({"type": "ack", "id": first.header["id"]})).await;
    let (answer, _) = ask(&mut ws, json!({"type": "ping", "ref": 2})).await;
    assert_eq!(answer.kind(), "ok");
    drop(ws);
    gone(&handle, &session).await;
    peer.send_bytes(&address, Bytes::from_static(b"\"while away\""))
        .await
        .unwrap();
    assert_eq!(
        handle
            .publish("room.1", Bytes::from_static(b"\"to the room\""))
            .await,
        Ok(1)
    );
    // A graceful stop: drain, node, store.
    shutdown.cancel();
    task.await.unwrap();
    node.shutdown(Duration::from_secs(1)).await;
    store.close();
    // The process ends here: nothing of it may keep the database open.
    drop((store, handle, node));

    // Second run on the same key and store: the session is back, with its address, its
    // messages and its channel.
    let (node, _store, handle, addr, _shutdown, _task) = start_on(&key, &path).await;
    assert_eq!(
        handle.session(&session).unwrap().address.without_hints(),
        address.without_hints()
    );
    peer.connect(node.id(), Some(node.local_addr()))
        .await
        .unwrap();
    peer.send_bytes(&address, Bytes::from_static(b"\"after the restart\""))
        .await
        .unwrap();
    let (mut ws, welcome) = connect(addr, &format!("resume={resume}&cursor=0")).await;
    assert_eq!(welcome["resumed"], true, "{welcome:?}");
    assert_eq!(welcome["recovered"], true, "{welcome:?}");
    assert_eq!(welcome["session"], session.as_str());
    let mut got = Vec::new();
    for _ in 0..3 {
        let message = next(&mut ws).await;
        got.push((message.header["id"].as_u64().unwrap(), data_json(&message)));
    }
    assert_eq!(
        got,
        [
            (1, json!("while away")),
            (2, json!("to the room")),
            (3, json!("after the restart"))
        ]
    );
    // Still a member of its channel.
    assert_eq!(
        handle
            .publish("room.1", Bytes::from_static(b"\"again\""))
            .await,
        Ok(1)
    );
    let message = next(&mut ws).await;
    assert_eq!(data_json(&message), json!("again"));
    assert_eq!(message.header["channel"], "room.1", "{message:?}");
}

#[tokio::test]
async fn the_time_a_session_is_away_counts_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = SecretKey::generate();
    let ttl = Duration::from_secs(5);
    let config = || GatewayConfig {
        session_ttl: ttl,
        ..GatewayConfig::default()
    };

    // First run: two sessions; `away` goes before the stop, `kept` is connected through it.
    let (node, store, handle, addr, shutdown, task) = start_configured(&key, &path, config()).await;
    let (ws, welcome) = connect(addr, "").await;
    let away = welcome["session"].as_str().unwrap().to_owned();
    let away_resume = welcome["resume"].as_str().unwrap().to_owned();
    drop(ws);
    let (_kept_ws, welcome) = connect(addr, "").await;
    let kept = welcome["session"].as_str().unwrap().to_owned();
    let kept_resume = welcome["resume"].as_str().unwrap().to_owned();
    // Real time is under test: `away` ages towards its session TTL while `kept` stays
    // connected.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    shutdown.cancel();
    task.await.unwrap();
    node.shutdown(Duration::from_secs(1)).await;
    store.close();
    drop((store, handle, node));
    // Down for a while: `away` has been away longer than its TTL when the node is back,
    // `kept` (its connection ended with the stop) has not (real time is under test).
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let (_node, _store, handle, addr, _shutdown, _task) =
        start_configured(&key, &path, config()).await;
    let (_ws, welcome) = connect(addr, &format!("resume={away_resume}")).await;
    assert_eq!(welcome["resumed"], false, "{welcome:?}");
    assert_eq!(welcome["expired"], true, "{welcome:?}");
    assert_ne!(welcome["session"], away.as_str());
    let (_ws, welcome) = connect(addr, &format!("resume={kept_resume}")).await;
    assert_eq!(welcome["resumed"], true, "{welcome:?}");
    assert_eq!(welcome["session"], kept.as_str());
    // The reaper ends the expired one (well before a fresh TTL would have run out).
    wait_for_within(
        "the expired session to be reaped",
        Duration::from_millis(2_500),
        || handle.session(&away).is_none(),
    )
    .await;
}

#[tokio::test]
async fn temporary_mailboxes_are_emptied_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let from = ferry::Address::mint(&SecretKey::generate(), ferry::MailboxId(1), None, vec![]);
    let (session, kept) = (ferry::MailboxId(7), ferry::MailboxId(8));
    {
        let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
        store.mark_temporary(session);
        for mailbox in [session, kept] {
            let stored = store
                .append_tagged(
                    mailbox,
                    vec![(from.clone(), Bytes::new(), Bytes::from_static(b"1"))],
                )
                .await
                .unwrap();
            assert_eq!(stored, [0]);
        }
        store.close();
    }
    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(store.pending_count(session).unwrap(), 0);
    assert_eq!(store.pending_count(kept).unwrap(), 1);
}

/// Waits until the store's writer applied every request submitted so far (it applies them in
/// order, and answers an append only after its batch is committed).
async fn flushed(store: &RedbStore) {
    let from = ferry::Address::mint(&SecretKey::generate(), ferry::MailboxId(1), None, vec![]);
    let scratch = ferry::MailboxId(u64::MAX);
    store
        .append_tagged(scratch, vec![(from, Bytes::new(), Bytes::new())])
        .await
        .unwrap();
    store.purge(scratch);
}

#[tokio::test]
async fn rows_of_alternating_senders_are_read_back_with_their_own_sender() {
    // A read resolves a run of rows from one sender once; each row still names its own.
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let [a, b] = [1, 2]
        .map(|id| ferry::Address::mint(&SecretKey::generate(), ferry::MailboxId(id), None, vec![]));
    let mailbox = ferry::MailboxId(5);
    let senders = [&a, &a, &b, &a, &b, &b];
    for (n, from) in senders.iter().enumerate() {
        let payload = Bytes::from(n.to_string());
        store
            .append_tagged(mailbox, vec![((*from).clone(), Bytes::new(), payload)])
            .await
            .unwrap();
    }
    let read = store.read_from(mailbox, 0, 100, usize::MAX).unwrap();
    assert_eq!(read.len(), senders.len());
    for (n, (message, from)) in read.iter().zip(senders).enumerate() {
        assert_eq!(message.payload, Bytes::from(n.to_string()));
        assert_eq!(&message.from, from, "row {n}");
    }
}

#[tokio::test]
async fn a_message_for_many_mailboxes_is_stored_once_and_survives_a_restart() {
    use ferry::MailboxStore as _;
    use ferry_node::store::Appended;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let from = ferry::Address::mint(&SecretKey::generate(), ferry::MailboxId(1), None, vec![]);
    let [a, b, c, temporary] = [11, 12, 13, 14].map(ferry::MailboxId);
    let tag = Bytes::from_static(br#"{"channel":"room"}"#);
    {
        let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
        store.mark_temporary(temporary);
        store
            .append_tagged(
                b,
                vec![(from.clone(), Bytes::new(), Bytes::from_static(b"b0"))],
            )
            .await
            .unwrap();
        let appended = store
            .append_shared(
                vec![a, b, c, temporary],
                from.clone(),
                tag.clone(),
                Bytes::from_static(b"shared"),
            )
            .await
            .unwrap();
        assert_eq!(
            appended,
            [
                Appended::Stored(0),
                Appended::Stored(1),
                Appended::Stored(0),
                Appended::Stored(0)
            ]
        );
        assert_eq!(store.shared_count().unwrap(), 1);
        // For one mailbox the message is stored in place.
        let appended = store
            .append_shared(
                vec![a],
                from.clone(),
                tag.clone(),
                Bytes::from_static(b"a1"),
            )
            .await
            .unwrap();
        assert_eq!(appended, [Appended::Stored(1)]);
        assert_eq!(store.shared_count().unwrap(), 1);
        store.close();
    }
    // After a restart: every (non-temporary) member still has it, in its place.
    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(store.shared_count().unwrap(), 1);
    assert_eq!(store.pending_count(temporary).unwrap(), 0);
    let read = store.read_from(a, 0, 10, 1 << 20).unwrap();
    let got: Vec<(u64, &[u8], &[u8])> = read
        .iter()
        .map(|m| (m.index, &m.tag[..], &m.payload[..]))
        .collect();
    assert_eq!(
        got,
        [(0, &tag[..], &b"shared"[..]), (1, &tag[..], &b"a1"[..])]
    );
    assert_eq!(read[0].from, from);
    let pending: Vec<(u64, Bytes)> = store
        .pending(b)
        .unwrap()
        .into_iter()
        .map(|m| (m.index, m.payload))
        .collect();
    assert_eq!(
        pending,
        [
            (0, Bytes::from_static(b"b0")),
            (1, Bytes::from_static(b"shared"))
        ]
    );
    assert_eq!(store.read_from(c, 1, 10, 1 << 20).unwrap().len(), 0);
    // The shared message goes with its last reference: acknowledged or purged.
    store.remove(a, 0);
    store.remove(b, 1);
    flushed(&store).await;
    assert_eq!(store.shared_count().unwrap(), 1);
    assert_eq!(
        store.read_from(c, 0, 10, 1 << 20).unwrap()[0].payload,
        "shared"
    );
    store.purge(c);
    flushed(&store).await;
    assert_eq!(store.shared_count().unwrap(), 0);
    assert_eq!(store.pending_count(a).unwrap(), 1);
    assert_eq!(store.pending_count(b).unwrap(), 1);

    // A full mailbox is skipped, and told where the message would have gone.
    store.close();
    drop(store);
    let store = RedbStore::open(
        &path,
        StoreConfig {
            max_pending_per_mailbox: 1,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let appended = store
        .append_shared(vec![a, c], from.clone(), tag, Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(
        appended,
        [Appended::Full { position: 2 }, Appended::Stored(0)]
    );
    assert_eq!(store.shared_count().unwrap(), 1);
}

#[tokio::test]
async fn cumulative_acknowledgements_remove_every_message_below_and_release_shared_ones() {
    use ferry_node::store::Appended;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let from = ferry::Address::mint(&SecretKey::generate(), ferry::MailboxId(1), None, vec![]);
    let members = [21, 22, 23].map(ferry::MailboxId);
    let [a, b, c] = members;
    let own: Vec<_> = ["a0", "a1", "a2"]
        .into_iter()
        .map(|p| (from.clone(), Bytes::new(), Bytes::from(p)))
        .collect();
    assert_eq!(store.append_tagged(a, own).await.unwrap(), [0, 1, 2]);
    let appended = store
        .append_shared(members.to_vec(), from.clone(), Bytes::new(), "all".into())
        .await
        .unwrap();
    assert_eq!(
        appended,
        [
            Appended::Stored(3),
            Appended::Stored(0),
            Appended::Stored(0)
        ]
    );
    assert_eq!(store.shared_count().unwrap(), 1);

    // Below 2: a0 and a1 go, a2 and the shared message stay.
    store.remove_below(a, 2);
    flushed(&store).await;
    assert_eq!(store.pending_count(a).unwrap(), 2);
    let left: Vec<u64> = store
        .read_from(a, 0, 10, 1 << 20)
        .unwrap()
        .iter()
        .map(|m| m.index)
        .collect();
    assert_eq!(left, [2, 3]);
    // Nothing below 0; a range past the end takes what is there.
    store.remove_below(b, 0);
    flushed(&store).await;
    assert_eq!(store.pending_count(b).unwrap(), 1);

    // Every member acknowledges in the same batch: the shared message goes, once.
    store.remove_below(a, 10);
    store.remove_below(b, 1);
    store.remove_below(c, 1);
    flushed(&store).await;
    for member in members {
        assert_eq!(store.pending_count(member).unwrap(), 0);
    }
    assert_eq!(store.shared_count().unwrap(), 0);
    // The indexes go on where they were, after a restart too (the store keeps a tombstone of
    // each emptied mailbox's last message).
    let next = store
        .append_tagged(a, vec![(from.clone(), Bytes::new(), "a4".into())])
        .await
        .unwrap();
    assert_eq!(next, [4]);
    ferry::MailboxStore::remove(&store, a, 4);
    store.close();
    drop(store);
    let store = RedbStore::open(&dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    assert_eq!(store.next_index(a).unwrap(), 5);
    assert_eq!(store.next_index(b).unwrap(), 1);
    assert_eq!(store.first_pending_index(c).unwrap(), 1);
    for member in members {
        assert_eq!(store.pending_count(member).unwrap(), 0);
        assert!(store.read_from(member, 0, 10, 1 << 20).unwrap().is_empty());
        assert!(ferry::MailboxStore::pending(&store, member)
            .unwrap()
            .is_empty());
    }
    let next = store
        .append_tagged(a, vec![(from, Bytes::new(), "a5".into())])
        .await
        .unwrap();
    assert_eq!(next, [5]);
    let read = store.read_from(a, 0, 10, 1 << 20).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!((read[0].index, &read[0].payload[..]), (5, &b"a5"[..]));
    assert_eq!(store.pending_count(a).unwrap(), 1);
}

#[tokio::test]
async fn removals_in_any_order_keep_a_mailbox_s_indexes_across_restarts() {
    use ferry::MailboxStore as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let from = ferry::Address::mint(&SecretKey::generate(), ferry::MailboxId(1), None, vec![]);
    let mailbox = ferry::MailboxId(31);
    let rows = |payloads: &[&'static str]| -> Vec<(ferry::Address, Bytes)> {
        payloads
            .iter()
            .map(|p| (from.clone(), Bytes::from_static(p.as_bytes())))
            .collect()
    };
    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    let stored = store.append(mailbox, None, rows(&["m0", "m1", "m2"])).await;
    assert_eq!(stored.unwrap(), [0, 1, 2]);
    // The newest first, then the oldest: only m1 is left.
    store.remove(mailbox, 2);
    store.remove(mailbox, 0);
    flushed(&store).await;
    let left = |store: &RedbStore| -> Vec<u64> {
        store
            .pending(mailbox)
            .unwrap()
            .iter()
            .map(|m| m.index)
            .collect()
    };
    assert_eq!(left(&store), [1]);
    store.close();
    drop(store);

    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(left(&store), [1]);
    assert_eq!(store.pending_count(mailbox).unwrap(), 1);
    assert_eq!(store.next_index(mailbox).unwrap(), 3);
    store.remove(mailbox, 1);
    let stored = store.append(mailbox, None, rows(&["m3"])).await;
    assert_eq!(stored.unwrap(), [3]);
    store.remove(mailbox, 3);
    flushed(&store).await;
    assert!(left(&store).is_empty());
    store.close();
    drop(store);

    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    assert!(left(&store).is_empty());
    let stored = store.append(mailbox, None, rows(&["m4"])).await;
    assert_eq!(stored.unwrap(), [4]);
    assert_eq!(left(&store), [4]);
    // A removal just before the store closes is applied by the close.
    store.remove(mailbox, 4);
    store.close();
    drop(store);
    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    assert!(left(&store).is_empty());
    assert_eq!(store.next_index(mailbox).unwrap(), 5);
}

#[tokio::test]
async fn channel_messages_reach_offline_members_in_order_and_go_with_the_last_ack() {
    let mut config = GatewayConfig {
        session_ttl: Duration::from_millis(500),
        ..GatewayConfig::default()
    };
    config.permissions.join = vec!["room".into()];
    let env = start(config).await;
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let mut members = Vec::new();
    for reference in 0..3 {
        let (mut ws, welcome) = connect(env.addr, "").await;
        let (answer, _) = ask(
            &mut ws,
            json!({"type": "join", "ref": reference, "channel": "room"}),
        )
        .await;
        assert_eq!(answer.kind(), "ok");
        members.push((ws, welcome));
    }
    // Member 2 goes away; a peer message and two channel messages arrive meanwhile.
    let (away, away_welcome) = members.pop().unwrap();
    drop(away);
    let away_session = away_welcome["session"].as_str().unwrap().to_owned();
    gone(&env.handle, &away_session).await;
    env.handle
        .publish("room", gateway::json_payload("first"))
        .await
        .unwrap();
    let away_address: ferry::Address = away_welcome["address"].as_str().unwrap().parse().unwrap();
    peer.send_bytes(&away_address, Bytes::from_static(b"\"direct\""))
        .await
        .unwrap();
    assert_eq!(
        env.handle
            .publish("room", gateway::json_payload("second"))
            .await
            .unwrap(),
        3
    );
    assert_eq!(env.store.shared_count().unwrap(), 2);
    // The connected members got both at once.
    for (ws, _) in &mut members {
        for (id, text) in [(0, "first"), (1, "second")] {
            let message = next(ws).await;
            assert_eq!(message.header["id"], id);
            assert_eq!(message.header["channel"], "room");
            assert_eq!(data_json(&message), json!(text));
        }
    }
    // The absent one resumes and gets all three, in order.
    let resume = away_welcome["resume"].as_str().unwrap();
    let (mut back, welcome) = connect(env.addr, &format!("resume={resume}")).await;
    assert_eq!(welcome["resumed"], true);
    assert_eq!(welcome["recovered"], true);
    assert_eq!(welcome["pending"], 3);
    let mut got = Vec::new();
    for _ in 0..3 {
        let message = next(&mut back).await;
        got.push((
            message.header["id"].as_u64().unwrap(),
            message.header["channel"].as_str().map(str::to_owned),
            data_json(&message),
        ));
    }
    let room = Some("room".to_owned());
    assert_eq!(
        got,
        [
            (0, room.clone(), json!("first")),
            (1, None, json!("direct")),
            (2, room, json!("second")),
        ]
    );
    // Caught up: the next one comes straight away.
    env.handle
        .publish("room", gateway::json_payload("third"))
        .await
        .unwrap();
    assert_eq!(next(&mut back).await.header["id"], 3);
    // The stored copies go once every member acknowledged them ...
    for (ws, _) in &mut members {
        assert_eq!(data_json(&next(ws).await), json!("third"));
        put(ws, json!({"type": "ack", "id": 2})).await;
    }
    put(&mut back, json!({"type": "ack", "id": 0})).await;
    let (answer, _) = ask(&mut back, json!({"type": "ping", "ref": 9})).await;
    assert_eq!(answer.kind(), "ok");
    flushed(&env.store).await;
    assert_eq!(
        env.store.shared_count().unwrap(),
        2,
        "`second` and `third` are still unacknowledged"
    );
    // ... or once the last holder's session ended (TTL).
    drop(back);
    drop(members);
    wait_for("the shared messages to go with their sessions", || {
        env.store.shared_count().unwrap() == 0
    })
    .await;
    assert_eq!(env.handle.sessions().len(), 0);
}

#[tokio::test]
async fn concurrent_senders_reach_a_connected_session_in_id_order_without_gaps() {
    // Messages from peers are handed to a caught-up connection as they arrive, and read back
    // from the store when they arrive out of order: either way every id comes once, in order,
    // and names its own sender (the connection keeps its last sender's encoding).
    let env = start(GatewayConfig::default()).await;
    let (mut ws, welcome) = connect(env.addr, "").await;
    let address: ferry::Address = welcome["address"].as_str().unwrap().parse().unwrap();
    let per_peer = 200;
    let mut senders = Vec::new();
    for name in ["a", "b"] {
        let address = address.clone();
        senders.push((
            name,
            tokio::spawn(async move {
                let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
                    .await
                    .unwrap();
                let sender = peer.sender(&address);
                let mut last = None;
                for n in 0..per_peer {
                    let payload = serde_json::to_vec(&json!([name, n])).unwrap();
                    last = Some(sender.enqueue_bytes(Bytes::from(payload)).await.unwrap());
                }
                last.unwrap().await.unwrap();
                peer
            }),
        ));
    }
    let mut next_of = std::collections::HashMap::new();
    let mut from_of = std::collections::HashMap::new();
    for expected in 0..2 * per_peer {
        let message = next(&mut ws).await;
        assert_eq!(message.header["id"], expected);
        let value = data_json(&message);
        let (name, n) = (
            value[0].as_str().unwrap().to_owned(),
            value[1].as_u64().unwrap(),
        );
        let from = message.header["from"].as_str().unwrap().to_owned();
        assert_eq!(
            from_of.entry(name.clone()).or_insert_with(|| from.clone()),
            &from,
            "every message of a peer names that peer"
        );
        let next_n = next_of.entry(name).or_insert(0);
        assert_eq!(n, *next_n, "each peer's messages in order");
        *next_n += 1;
    }
    for (name, sender) in senders {
        let peer = sender.await.unwrap();
        assert_eq!(
            from_of[name],
            peer.inbox().address().without_hints().to_string()
        );
    }
}

#[tokio::test]
async fn a_channel_message_stored_once_reaches_offline_members_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = SecretKey::generate();
    // Two sessions of one channel, both away when a message is published to it.
    let (node, store, handle, addr, shutdown, task) = start_on(&key, &path).await;
    let mut members = Vec::new();
    for _ in 0..2 {
        let (ws, welcome) = connect(addr, "").await;
        let session = welcome["session"].as_str().unwrap().to_owned();
        handle.join(&session, "room.2").unwrap();
        drop(ws);
        gone(&handle, &session).await;
        members.push(welcome["resume"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        handle
            .publish("room.2", Bytes::from_static(b"\"once\""))
            .await,
        Ok(2)
    );
    assert_eq!(store.shared_count().unwrap(), 1);
    shutdown.cancel();
    task.await.unwrap();
    node.shutdown(Duration::from_secs(1)).await;
    store.close();
    drop((store, handle, node));

    // After the restart both get it on resume, and the one stored copy goes with the last ack.
    let (_node, store, _handle, addr, _shutdown, _task) = start_on(&key, &path).await;
    assert_eq!(store.shared_count().unwrap(), 1);
    for (n, resume) in members.iter().enumerate() {
        let (mut ws, welcome) = connect(addr, &format!("resume={resume}")).await;
        assert_eq!(welcome["resumed"], true);
        assert_eq!(welcome["recovered"], true);
        let message = next(&mut ws).await;
        assert_eq!(message.header["channel"], "room.2");
        assert_eq!(data_json(&message), json!("once"));
        put(&mut ws, json!({"type": "ack", "id": message.header["id"]})).await;
        let (answer, _) = ask(&mut ws, json!({"type": "ping", "ref": 1})).await;
        assert_eq!(answer.kind(), "ok");
        flushed(&store).await;
        assert_eq!(store.shared_count().unwrap(), 1 - n as u64);
    }
}
