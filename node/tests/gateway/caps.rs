//! Capabilities of browser sessions (docs/GATEWAY.md §5.9): caveats on an address of a
//! session's mailbox are enforced for every sender, a revoked grant ends the streams open
//! under it, and a session's revocations are bounded.

use std::time::Duration;

use bytes::Bytes;

use ferry::{Address, Node, NodeConfig, SecretKey, SendError};
use ferry_node::gateway::protocol::Received;
use ferry_node::gateway::GatewayConfig;
use ferry_node::store::StoreConfig;
use ferry_testkit::wait::wait_for;
use serde_json::{json, Value};

use super::{ask, connect, data_json, limited, next, now, start, start_with, Ws, WAIT};

async fn peer() -> Node {
    Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap()
}

/// The session's own address, from its welcome.
fn address_of(welcome: &Value) -> Address {
    welcome["address"].as_str().unwrap().parse().unwrap()
}

/// The next `message` frame (other frames skipped).
async fn next_message_frame(ws: &mut Ws) -> Received {
    loop {
        let frame = next(ws).await;
        if frame.kind() == "message" {
            return frame;
        }
    }
}

/// The next `message` frame's payload.
async fn next_message(ws: &mut Ws) -> Bytes {
    next_message_frame(ws).await.data.unwrap()
}

/// A grant of the session's mailbox: its address and its id.
async fn grant(ws: &mut Ws, reference: u64) -> (Address, String) {
    let (answer, _) = ask(ws, json!({"type": "grant", "ref": reference})).await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    let data = data_json(&answer);
    (
        data["address"].as_str().unwrap().parse().unwrap(),
        data["grant"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caveats_on_a_session_s_address_are_enforced() {
    let env = start(GatewayConfig::default()).await;
    let (mut bob, welcome) = connect(env.addr, "").await;
    let own = address_of(&welcome);
    let (mut alice, _) = connect(env.addr, "").await;
    let sender = peer().await;
    // At most two messages, from a peer node and from another session alike.
    let twice = own.attenuate().max_messages(2).build().unwrap();
    sender
        .send_bytes(&twice, Bytes::from_static(br#"{"n":1}"#))
        .await
        .unwrap();
    let (answer, _) = ask(
        &mut alice,
        json!({"type": "send", "ref": 1, "to": twice.to_string(), "data": {"n": 2}}),
    )
    .await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    assert_eq!(
        sender.send_bytes(&twice, Bytes::from_static(b"3")).await,
        Err(SendError::Exhausted)
    );
    let (answer, _) = ask(
        &mut alice,
        json!({"type": "send", "ref": 2, "to": twice.to_string(), "data": {"n": 4}}),
    )
    .await;
    assert_eq!(answer.header["code"], "exhausted", "{answer:?}");
    // Expired, and held by another node than the sender: refused.
    let past = own.attenuate().expires_at(now() - 1).build().unwrap();
    assert!(matches!(
        sender.send(&past, "x").await,
        Err(SendError::Expired(_))
    ));
    let holder = peer().await;
    let only_holder = own.attenuate().only(holder.id()).build().unwrap();
    assert!(matches!(
        sender.send(&only_holder, "x").await,
        Err(SendError::Caveat(_))
    ));
    holder
        .send_bytes(&only_holder, Bytes::from_static(b"held"))
        .await
        .unwrap();
    // Bob got the two counted messages and the holder's, nothing else.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_message(&mut bob).await);
    }
    assert_eq!(got, [b"{\"n\":1}".as_slice(), b"{\"n\":2}", b"held"]);
    for node in [sender, holder] {
        node.shutdown(Duration::from_secs(1)).await;
    }
    env.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_ends_the_streams_open_under_it() {
    // One message not acknowledged by the session fills its mailbox in the store, so a
    // sender's next message waits on its stream for room.
    let store = StoreConfig {
        max_pending_per_mailbox: 1,
        ..StoreConfig::default()
    };
    let env = start_with(
        GatewayConfig::default(),
        std::sync::Arc::new(ferry_node::gateway::NoHooks),
        store,
    )
    .await;
    let (mut bob, _) = connect(env.addr, "").await;
    let (g, g_id) = grant(&mut bob, 1).await;
    let (h, _) = grant(&mut bob, 2).await;
    let a = peer().await;
    let c = peer().await;
    let from_a = a.mailbox();
    let to_g = from_a.sender(&g).unwrap();
    to_g.send_bytes(Bytes::from_static(b"g1")).await.unwrap();
    let first = next_message_frame(&mut bob).await;
    let waiting_g = to_g.enqueue_bytes(Bytes::from_static(b"g2")).await.unwrap();
    wait_for("G's second message to wait for room in the store", || {
        env.node.stats().buffered_bytes > 0
    })
    .await;
    let held_by_g = env.node.stats().buffered_bytes;
    let from_c = c.mailbox();
    let to_h = from_c.sender(&h).unwrap();
    let waiting_h = to_h.enqueue_bytes(Bytes::from_static(b"h1")).await.unwrap();
    wait_for("H's message to wait for room in the store", || {
        env.node.stats().buffered_bytes > held_by_g
    })
    .await;
    let (answer, _) = ask(&mut bob, json!({"type": "revoke", "ref": 3, "grant": g_id})).await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    // G's waiting message is refused at once, without the session making room.
    assert_eq!(
        tokio::time::timeout(WAIT, waiting_g).await.unwrap(),
        Err(SendError::Revoked)
    );
    assert_eq!(
        to_g.send_bytes(Bytes::from_static(b"g3")).await,
        Err(SendError::Revoked)
    );
    // The session acknowledges the first message: H's goes on, and is all that comes.
    super::put(&mut bob, json!({"type": "ack", "id": first.header["id"]})).await;
    assert_eq!(tokio::time::timeout(WAIT, waiting_h).await.unwrap(), Ok(()));
    assert_eq!(next_message(&mut bob).await.as_ref(), b"h1");
    for node in [a, c] {
        node.shutdown(Duration::from_secs(1)).await;
    }
    env.shutdown.cancel();
}

#[tokio::test]
async fn a_session_revokes_at_most_gateway_max_revocations_grants() {
    let env = start(limited(|limits| limits.max_revocations = 2)).await;
    let (mut bob, _) = connect(env.addr, "").await;
    let mut answers = Vec::new();
    for (reference, grant) in (1..=4).zip(["1", "2", "2", "3"]) {
        let grant = format!("{grant:0>16}");
        let (answer, _) = ask(
            &mut bob,
            json!({"type": "revoke", "ref": reference, "grant": grant}),
        )
        .await;
        answers.push(answer.header["code"].as_str().unwrap_or("ok").to_owned());
    }
    // Revoking a grant again does not count; the third distinct one is refused.
    assert_eq!(answers, ["ok", "ok", "ok", "forbidden"]);
    env.shutdown.cancel();
}
