//! Requests as the gateway carries them out, whatever the client does: in the order received
//! (also publishes not awaited one by one), once per `ref` across connections (the session's
//! journal), answered on the connection that asked last, answered before a drain closes the
//! connection; and heartbeats on idle connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry::{Node, NodeConfig, SecretKey, ServiceHandle, ServiceOptions};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{ask, closed, connect, data_json, limited, next, put, start, WAIT};
use ferry_node::gateway::GatewayConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_not_awaited_reach_every_member_in_the_order_sent() {
    let mut config = GatewayConfig::default();
    config.permissions.join = vec!["room".into()];
    config.permissions.publish = vec!["room".into()];
    let env = start(config).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = connect(env.addr, "").await;
        let (answer, _) = ask(
            &mut ws,
            json!({"type": "join", "ref": 1, "channel": "room"}),
        )
        .await;
        assert_eq!(answer.kind(), "ok");
        members.push(ws);
    }
    // The first member publishes 100 without waiting for any answer.
    for n in 0..100u64 {
        put(
            &mut members[0],
            json!({"type": "send", "ref": 2 + n, "to": {"channel": "room"}, "data": {"n": n}}),
        )
        .await;
    }
    for ws in &mut members {
        let mut got = Vec::new();
        while got.len() < 100 {
            let frame = next(ws).await;
            if frame.kind() == "message" {
                got.push(data_json(&frame)["n"].as_u64().unwrap());
            }
        }
        assert_eq!(got, (0..100).collect::<Vec<u64>>());
    }
}

/// A service (on its own node) that counts its calls and answers each after `delay`: the
/// node, the service, its count and its call target.
async fn counting_service(delay: Duration) -> (Node, ServiceHandle, Arc<AtomicUsize>, String) {
    let node = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = node
        .serve(
            "slow",
            ServiceOptions::default(),
            move |mut conversation| {
                let counted = counted.clone();
                async move {
                    if let Ok(text) = conversation.recv_obj::<String>().await {
                        counted.fetch_add(1, Ordering::SeqCst);
                        // Real time is under test: a slow service, `delay` per request.
                        tokio::time::sleep(delay).await;
                        let _ = conversation.reply(&text.to_uppercase()).await;
                    }
                }
            },
        )
        .unwrap();
    let target = format!("{}@{}/slow", node.id(), node.local_addr());
    (node, service, calls, target)
}

async fn settles(condition: impl Fn() -> bool) {
    ferry_testkit::wait::wait_for("the gateway to settle", condition).await;
}

#[tokio::test]
async fn a_request_sent_again_is_carried_out_once_and_answered_where_asked() {
    let env = start(GatewayConfig::default()).await;
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let mailbox = peer.mailbox();
    let sink = mailbox.address().to_string();
    let (first, welcome) = connect(env.addr, "").await;
    let resume = format!("resume={}", welcome["resume"].as_str().unwrap());
    let mut ws = first;
    let send = json!({"type": "send", "ref": 1, "to": sink, "data": {"n": 1}});
    let (answer, _) = ask(&mut ws, send.clone()).await;
    assert_eq!(answer.kind(), "ok");

    // The answer was lost with the connection, as far as the client knows: it resumes and
    // sends the request again. The answer comes from the journal; the peer got it once.
    drop(ws);
    let (mut ws, _) = connect(env.addr, &resume).await;
    let (answer, _) = ask(&mut ws, send).await;
    assert_eq!(answer.kind(), "ok");
    let (answer, _) = ask(
        &mut ws,
        json!({"type": "send", "ref": 2, "to": sink, "data": {"end": true}}),
    )
    .await;
    assert_eq!(answer.kind(), "ok");
    let mut payloads = Vec::new();
    loop {
        let message = mailbox.recv_timeout(WAIT).await.unwrap();
        if message.payload().as_ref() == br#"{"end":true}"# {
            break;
        }
        payloads.push(message.payload().clone());
    }
    assert_eq!(payloads, [bytes::Bytes::from_static(br#"{"n":1}"#)]);

    // A call still under way when its connection is taken over: sent again on the new
    // connection, it is not called again, and its answer arrives there.
    let (_node, _service, calls, target) = counting_service(Duration::from_millis(300)).await;
    let call = json!({"type": "call", "ref": 3, "to": target, "text": true, "data": "hi"});
    put(&mut ws, call.clone()).await;
    settles(|| calls.load(Ordering::SeqCst) == 1).await;
    let (mut taken_over, _) = connect(env.addr, &resume).await;
    assert_eq!(closed(&mut ws).await.0, 4409);
    let (answer, _) = ask(&mut taken_over, call).await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    assert_eq!(answer.data.unwrap().as_ref(), b"HI");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Once the client confirmed the answers, a ref sent again is not carried out: its outcome
    // is unknown. A new ref is.
    put(&mut taken_over, json!({"type": "ack", "answered": 3})).await;
    let (answer, _) = ask(
        &mut taken_over,
        json!({"type": "send", "ref": 1, "to": sink, "data": "again"}),
    )
    .await;
    assert_eq!(answer.header["code"], "unknown_outcome");
    let (answer, _) = ask(&mut taken_over, json!({"type": "ping", "ref": 4})).await;
    assert_eq!(answer.kind(), "ok");
}

#[tokio::test]
async fn the_journal_forgets_the_oldest_answers_beyond_its_limit() {
    let env = start(limited(|l| l.max_remembered_answers = 2)).await;
    let (mut ws, _) = connect(env.addr, "").await;
    for reference in 1..=3 {
        let (answer, _) = ask(&mut ws, json!({"type": "ping", "ref": reference})).await;
        assert_eq!(answer.kind(), "ok");
    }
    let (answer, _) = ask(&mut ws, json!({"type": "ping", "ref": 1})).await;
    assert_eq!(answer.header["code"], "unknown_outcome");
    let (answer, _) = ask(&mut ws, json!({"type": "ping", "ref": 3})).await;
    assert_eq!(answer.kind(), "ok");
}

#[tokio::test]
async fn a_draining_gateway_answers_the_requests_under_way_before_it_closes() {
    let env = start(GatewayConfig::default()).await;
    let (_node, _service, calls, target) = counting_service(Duration::from_millis(300)).await;
    let (mut ws, _) = connect(env.addr, "").await;
    put(
        &mut ws,
        json!({"type": "call", "ref": 1, "to": target, "text": true, "data": "bye"}),
    )
    .await;
    settles(|| calls.load(Ordering::SeqCst) == 1).await;
    env.shutdown.cancel();
    let answer = next(&mut ws).await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    assert_eq!(closed(&mut ws).await.0, 1001);
}

#[tokio::test]
async fn idle_connections_get_heartbeats() {
    let env = start(limited(|l| l.ping_interval = Duration::from_millis(100))).await;
    let (mut ws, _) = connect(env.addr, "").await;
    let heartbeats = async {
        let mut heartbeats = 0;
        while heartbeats < 3 {
            use futures::StreamExt;
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    assert_eq!(text.as_str(), r#"{"type":"heartbeat"}"#);
                    heartbeats += 1;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("{other:?}"),
            }
        }
    };
    tokio::time::timeout(WAIT, heartbeats)
        .await
        .expect("three heartbeats in time");
}
