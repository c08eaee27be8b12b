//! Gateways in a cluster on a real NATS (`nats-server -js`, started by the tests on a free
//! loopback port): channel publications, user and session delivery and presence across
//! nodes, the history's offsets and epoch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "../ws_client/mod.rs"]
mod ws_client;
use std::net::SocketAddr;
use std::time::Duration;
use ws_client::{ask, connect, data_json, next, put, Ws};

use ferry_node::cluster::ClusterConfig;
use ferry_node::gateway::protocol::Received;
use ferry_node::gateway::GatewayConfig;
use ferry_node::server::{Server, ServerConfig};
use ferry_testkit::nats::NatsServer;
use ferry_testkit::wait::wait_for_async_within;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// One `ferry run` of the cluster, in the test's process.
struct Node {
    gateway: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn gateway_config() -> GatewayConfig {
    let mut config = GatewayConfig::default();
    config.permissions.join = vec!["room.*".into()];
    config.permissions.publish = vec!["room.*".into()];
    config.permissions.direct = true;
    config.permissions.join_leave = true;
    config
}

fn cluster_config(nats: &[String]) -> ClusterConfig {
    let mut config = ClusterConfig::new(nats.to_vec());
    config.retry_interval = Duration::from_millis(200);
    config
}

async fn start_node(dir: &std::path::Path, cluster: Option<ClusterConfig>) -> Node {
    let mut config = ServerConfig::new(dir.to_path_buf());
    config.http = None;
    config.gateway = Some(("127.0.0.1:0".parse().unwrap(), gateway_config()));
    config.cluster = cluster;
    let server = Server::start(config).await.unwrap();
    let gateway = server.gateway_addr().unwrap();
    let shutdown = CancellationToken::new();
    let running = server.run(|_| Ok(()), shutdown.clone());
    let task = tokio::spawn(async move { running.await.unwrap() });
    Node {
        gateway,
        shutdown,
        task,
    }
}

/// The next frame of kind `kind`, skipping others.
async fn next_of(ws: &mut Ws, kind: &str) -> Received {
    loop {
        let received = next(ws).await;
        if received.kind() == kind {
            return received;
        }
    }
}

#[tokio::test]
async fn channels_users_sessions_and_presence_span_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let servers = vec![nats.url()];
    let mut nodes = Vec::new();
    for i in 0..3 {
        let data = dir.path().join(format!("node{i}"));
        nodes.push(start_node(&data, Some(cluster_config(&servers))).await);
    }
    let (mut a, welcome_a) = connect(nodes[0].gateway, "").await;
    let (mut b, welcome_b) = connect(nodes[1].gateway, "").await;
    let (mut c, welcome_c) = connect(nodes[2].gateway, "").await;
    assert_ne!(welcome_a["node"], welcome_b["node"], "three nodes");

    // a joins; b and c join after it, and a hears of each (join_leave).
    let (ok, _) = ask(&mut a, json!({"type":"join","ref":1,"channel":"room.1"})).await;
    assert_eq!(ok.kind(), "ok");
    for (ws, welcome) in [(&mut b, &welcome_b), (&mut c, &welcome_c)] {
        let (ok, _) = ask(ws, json!({"type":"join","ref":1,"channel":"room.1"})).await;
        assert_eq!(ok.kind(), "ok");
        let event = next_of(&mut a, "join").await;
        assert_eq!(event.header["channel"], "room.1");
        assert_eq!(event.header["session"], welcome["session"]);
        assert_eq!(event.header["user"], welcome["user"]);
    }

    // Presence, cluster-wide, from any node.
    let (answer, _) = ask(
        &mut c,
        json!({"type":"presence","ref":2,"channel":"room.1"}),
    )
    .await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    let members = data_json(&answer)["members"].as_array().unwrap().clone();
    let mut sessions: Vec<&str> = members
        .iter()
        .map(|m| m["session"].as_str().unwrap())
        .collect();
    sessions.sort_unstable();
    let mut expected = vec![
        welcome_a["session"].as_str().unwrap(),
        welcome_b["session"].as_str().unwrap(),
        welcome_c["session"].as_str().unwrap(),
    ];
    expected.sort_unstable();
    assert_eq!(sessions, expected);

    // A publication on node 0 reaches the members on every node, with its offset and epoch.
    let (ok, others) = ask(
        &mut a,
        json!({"type":"send","ref":2,"to":{"channel":"room.1"},"data":{"n":1}}),
    )
    .await;
    assert_eq!(ok.kind(), "ok", "{ok:?}");
    let kept = data_json(&ok);
    let offset = kept["offset"].as_u64().unwrap();
    let epoch = kept["epoch"].as_str().unwrap().to_owned();
    let mut early = others.into_iter().find(|r| r.kind() == "message");
    for ws in [&mut a, &mut b, &mut c] {
        let message = match early.take() {
            Some(message) => message,
            None => next_of(ws, "message").await,
        };
        assert_eq!(message.header["channel"], "room.1");
        assert_eq!(message.header["from"], welcome_a["address"]);
        assert_eq!(message.header["offset"], offset);
        assert_eq!(message.header["epoch"], epoch.as_str());
        assert_eq!(data_json(&message), json!({"n":1}));
    }

    // Many publications from two nodes: every member gets each one once, each sender's in
    // its order, and all members the same order (the history's).
    for n in 0..50 {
        put(
            &mut a,
            json!({"type":"send","ref":100 + n,"to":{"channel":"room.1"},"data":{"a":n}}),
        )
        .await;
        put(
            &mut b,
            json!({"type":"send","ref":100 + n,"to":{"channel":"room.1"},"data":{"b":n}}),
        )
        .await;
    }
    let mut orders = Vec::new();
    for ws in [&mut a, &mut b, &mut c] {
        let mut order = Vec::new();
        while order.len() < 100 {
            let message = next_of(ws, "message").await;
            order.push(data_json(&message));
        }
        let a_order: Vec<u64> = order.iter().filter_map(|v| v["a"].as_u64()).collect();
        let b_order: Vec<u64> = order.iter().filter_map(|v| v["b"].as_u64()).collect();
        assert_eq!(a_order, (0..50).collect::<Vec<_>>());
        assert_eq!(b_order, (0..50).collect::<Vec<_>>());
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);

    // To a user, and to a session, on another node.
    let (ok, _) = ask(
        &mut a,
        json!({"type":"send","ref":300,"to":{"user":welcome_c["user"]},"text":true,"data":"for c"}),
    )
    .await;
    assert_eq!(ok.kind(), "ok", "{ok:?}");
    let message = next_of(&mut c, "message").await;
    assert_eq!(message.header["user"], welcome_c["user"]);
    assert_eq!(message.data.as_deref(), Some(&b"for c"[..]));
    let (ok, _) = ask(
        &mut c,
        json!({"type":"send","ref":301,"to":{"session":welcome_b["session"]},"text":true,"data":"for b"}),
    )
    .await;
    assert_eq!(ok.kind(), "ok", "{ok:?}");
    let message = next_of(&mut b, "message").await;
    assert_eq!(message.data.as_deref(), Some(&b"for b"[..]));

    // c leaves: a hears it, and presence no longer lists c.
    let (ok, _) = ask(&mut c, json!({"type":"leave","ref":302,"channel":"room.1"})).await;
    assert_eq!(ok.kind(), "ok");
    let event = next_of(&mut a, "leave").await;
    assert_eq!(event.header["session"], welcome_c["session"]);
    let mut reference = 400;
    wait_for_async_within("presence without c", WAIT, async || {
        reference += 1;
        let (answer, _) = ask(
            &mut b,
            json!({"type":"presence","ref":reference,"channel":"room.1"}),
        )
        .await;
        data_json(&answer)["members"].as_array().unwrap().len() == 2
    })
    .await;

    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn without_a_cluster_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("alone"), None).await;
    let (mut a, _) = connect(node.gateway, "").await;
    let (ok, _) = ask(&mut a, json!({"type":"join","ref":1,"channel":"room.1"})).await;
    assert_eq!(ok.kind(), "ok");
    let (ok, others) = ask(
        &mut a,
        json!({"type":"send","ref":2,"to":{"channel":"room.1"},"data":{"n":1}}),
    )
    .await;
    assert_eq!(ok.kind(), "ok");
    assert!(ok.data.is_none(), "a node alone answers a plain ok");
    let message = match others.into_iter().find(|r| r.kind() == "message") {
        Some(message) => message,
        None => next_of(&mut a, "message").await,
    };
    assert!(message.header.get("offset").is_none());
    assert!(message.header.get("epoch").is_none());
    let (answer, _) = ask(
        &mut a,
        json!({"type":"presence","ref":3,"channel":"room.1"}),
    )
    .await;
    assert_eq!(data_json(&answer)["members"].as_array().unwrap().len(), 1);
    node.stop().await;
}

#[tokio::test]
async fn nats_unreachable_at_start_is_a_clear_error_after_the_retries() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cluster = cluster_config(&[format!("nats://127.0.0.1:{port}")]);
    cluster.start_retries = 2;
    cluster.retry_interval = Duration::from_millis(100);
    let mut config = ServerConfig::new(dir.path().join("node"));
    config.http = None;
    config.gateway = Some(("127.0.0.1:0".parse().unwrap(), gateway_config()));
    config.cluster = Some(cluster);
    let started = std::time::Instant::now();
    let error = Server::start(config).await.unwrap_err().to_string();
    assert!(error.contains("no NATS server reachable"), "{error}");
    assert!(error.contains("after 3 attempts"), "{error}");
    assert!(error.contains(&port.to_string()), "{error}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it retried"
    );
}

/// The "stall" an earlier bench saw with async-nats, reduced: a core subscription's messages
/// go through a bounded channel (`subscription_capacity`); when the reader falls behind by
/// more than that, the client *drops* messages (reported only as `Event::SlowConsumer` to an
/// event callback, nothing to the server), and a reader waiting for all of them waits
/// forever. The cluster reads its history with a pull consumer instead, which gets every
/// message however slowly it reads.
#[tokio::test]
async fn async_nats_drops_what_overflows_a_subscription_and_a_pull_consumer_does_not() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let slow = Arc::new(AtomicU64::new(0));
    let counter = slow.clone();
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(16)
        .event_callback(move |event| {
            let counter = counter.clone();
            async move {
                if let async_nats::Event::SlowConsumer(_) = event {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap();
    let mut subscriber = client.subscribe("bench.x").await.unwrap();
    const SENT: usize = 1000;
    for n in 0..SENT {
        client
            .publish("bench.x", n.to_string().into())
            .await
            .unwrap();
    }
    // PING/PONG: the server sent every message before its PONG, and the client handed each
    // to the subscription (or dropped it) before it took the PONG.
    client.flush().await.unwrap();
    client.flush().await.unwrap();
    let mut received = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), subscriber.next()).await
    {
        received += 1;
    }
    assert!(
        received < SENT / 10,
        "received {received} of {SENT}: the rest overflowed the buffer of 16 and were dropped"
    );
    wait_for_async_within("a slow consumer event", WAIT, async || {
        slow.load(Ordering::Relaxed) > 0
    })
    .await;

    // The same traffic through JetStream, read by a pull consumer whose batches fit in the
    // subscription's buffer (a batch larger than the buffer overflows it the same way): all
    // of it, however slowly it is read.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "REPRO".into(),
            subjects: vec!["repro.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    for n in 0..SENT {
        js.publish("repro.x", n.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            max_batch: 8,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for n in 0..SENT {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(message.payload, n.to_string().as_bytes());
    }
}

/// NATS stops and comes back (same port, same JetStream store): the nodes reconnect by
/// themselves; a publication made while NATS is down is either confirmed (kept, delivered
/// after) or refused with `unavailable`, never confirmed and lost.
#[tokio::test]
async fn a_nats_restart_loses_no_confirmed_publication() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(dir.path());
    let servers = vec![nats.url()];
    let mut cluster = cluster_config(&servers);
    cluster.publish_timeout = Duration::from_millis(1500);
    let one = start_node(&dir.path().join("one"), Some(cluster.clone())).await;
    let two = start_node(&dir.path().join("two"), Some(cluster)).await;
    let (mut a, _) = connect(one.gateway, "").await;
    let (mut b, _) = connect(two.gateway, "").await;
    for ws in [&mut a, &mut b] {
        let (ok, _) = ask(ws, json!({"type":"join","ref":1,"channel":"room.r"})).await;
        assert_eq!(ok.kind(), "ok");
    }
    let mut confirmed = Vec::new();
    let mut refused = 0;
    let mut reference = 10;
    let mut publish = async |ws: &mut Ws, n: u64| {
        reference += 1;
        let (answer, _) = ask(
            ws,
            json!({"type":"send","ref":reference,"to":{"channel":"room.r"},"data":{"n":n}}),
        )
        .await;
        answer
    };
    let answer = publish(&mut a, 0).await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    confirmed.push(0);

    nats.stop();
    for n in 1..=3 {
        let answer = publish(&mut a, n).await;
        match answer.kind() {
            "ok" => confirmed.push(n),
            "error" => {
                assert_eq!(answer.header["code"], "unavailable", "{answer:?}");
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    nats.restart();
    // The nodes reconnect by themselves: publications are confirmed again.
    let mut n = 100;
    loop {
        n += 1;
        let answer = publish(&mut a, n).await;
        if answer.kind() == "ok" {
            confirmed.push(n);
            break;
        }
        assert_eq!(answer.header["code"], "unavailable", "{answer:?}");
    }
    let answer = publish(&mut a, 1000).await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    confirmed.push(1000);
    eprintln!("confirmed {confirmed:?}, refused {refused} while NATS was down");

    // Every confirmed publication reaches the member on the other node, in order.
    let mut got = Vec::new();
    while got.last() != Some(&1000) {
        let message = next_of(&mut b, "message").await;
        got.push(data_json(&message)["n"].as_u64().unwrap());
    }
    for n in &confirmed {
        assert!(got.contains(n), "confirmed {n} lost: got {got:?}");
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(got, sorted, "in order");
    one.stop().await;
    two.stop().await;
}

/// A browser that reconnects to another node of the cluster resumes its session there: the
/// node it reaches forwards the connection to the node where the session lives, so the
/// session keeps its address, its ids, its channels, and gets what it missed.
#[tokio::test]
async fn a_session_resumes_through_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let servers = vec![nats.url()];
    let one = start_node(&dir.path().join("one"), Some(cluster_config(&servers))).await;
    let two = start_node(&dir.path().join("two"), Some(cluster_config(&servers))).await;
    let (mut a, welcome) = connect(one.gateway, "").await;
    let (ok, _) = ask(&mut a, json!({"type":"join","ref":1,"channel":"room.m"})).await;
    assert_eq!(ok.kind(), "ok");
    let (mut other, _) = connect(two.gateway, "").await;
    let (ok, _) = ask(
        &mut other,
        json!({"type":"join","ref":1,"channel":"room.m"}),
    )
    .await;
    assert_eq!(ok.kind(), "ok");
    let (ok, _) = ask(
        &mut other,
        json!({"type":"send","ref":2,"to":{"channel":"room.m"},"data":{"n":0}}),
    )
    .await;
    assert_eq!(ok.kind(), "ok");
    let first = next_of(&mut a, "message").await;
    let cursor = first.header["id"].as_u64().unwrap();
    a.close(None).await.unwrap();
    drop(a);
    // While it is away: a channel message and a message to its address.
    let (ok, _) = ask(
        &mut other,
        json!({"type":"send","ref":3,"to":{"channel":"room.m"},"data":{"n":1}}),
    )
    .await;
    assert_eq!(ok.kind(), "ok");
    let (ok, _) = ask(
        &mut other,
        json!({"type":"send","ref":4,"to":welcome["address"],"data":{"n":2}}),
    )
    .await;
    assert_eq!(ok.kind(), "ok", "{ok:?}");

    // It comes back through node two.
    let resume = welcome["resume"].as_str().unwrap();
    let (mut a, again) = connect(two.gateway, &format!("resume={resume}&cursor={cursor}")).await;
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(again["recovered"], true, "{again}");
    assert_eq!(again["session"], welcome["session"]);
    assert_eq!(again["address"], welcome["address"]);
    let mut got = Vec::new();
    while got.len() < 2 {
        let message = next_of(&mut a, "message").await;
        assert!(message.header["id"].as_u64().unwrap() > cursor);
        got.push(data_json(&message)["n"].as_u64().unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
    // And it keeps working: publications, requests, acks.
    let (ok, _) = ask(
        &mut other,
        json!({"type":"send","ref":5,"to":{"channel":"room.m"},"data":{"n":3}}),
    )
    .await;
    assert_eq!(ok.kind(), "ok");
    let message = next_of(&mut a, "message").await;
    assert_eq!(data_json(&message)["n"], 3);
    put(&mut a, json!({"type":"ack","id":message.header["id"]})).await;
    let (ok, _) = ask(&mut a, json!({"type":"ping","ref":9})).await;
    assert_eq!(ok.kind(), "ok");
    one.stop().await;
    two.stop().await;
}

/// A `ferry run` process of the cluster, started from the binary.
struct Process {
    child: std::process::Child,
    gateway: SocketAddr,
}

impl Process {
    fn start(dir: &std::path::Path, nats: &str) -> Self {
        use std::io::BufRead as _;
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("ferry.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\nhttp = \"127.0.0.1:0\"\ngateway = \"127.0.0.1:0\"\n\
                 gateway_join = [\"room.*\"]\ngateway_publish = [\"room.*\"]\n\
                 cluster = [{nats:?}]\ncluster_retry_interval = \"200ms\"\n",
                data = dir.join("data"),
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["run", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut gateway = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(url) = line.strip_prefix("gateway: ws://") {
                gateway = Some(url.trim_end_matches("/ws").parse().unwrap());
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            gateway: gateway.expect("the gateway's address on standard output"),
        }
    }

    fn kill(&mut self) {
        // SIGKILL: no drain, no goodbye.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kill -9 of one gateway process of three while messages flow: its session comes back on
/// another node (a new session: its node is gone for good) and recovers from the cluster's
/// history every channel publication that was confirmed, from the offset it had.
#[tokio::test]
async fn a_node_killed_loses_no_confirmed_channel_publication() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let mut processes: Vec<Process> = (0..3)
        .map(|i| Process::start(&dir.path().join(format!("p{i}")), &nats.url()))
        .collect();
    let (mut a, welcome) = connect(processes[0].gateway, "").await;
    let (mut publisher, _) = connect(processes[1].gateway, "").await;
    for ws in [&mut a, &mut publisher] {
        let (ok, _) = ask(ws, json!({"type":"join","ref":1,"channel":"room.k"})).await;
        assert_eq!(ok.kind(), "ok");
    }
    let mut reference = 10;
    let mut confirmed = Vec::new();
    let mut publish = async |ws: &mut Ws, n: u64| {
        reference += 1;
        let (answer, _) = ask(
            ws,
            json!({"type":"send","ref":reference,"to":{"channel":"room.k"},"data":{"n":n}}),
        )
        .await;
        assert_eq!(answer.kind(), "ok", "{answer:?}");
        n
    };
    for n in 0..10 {
        confirmed.push(publish(&mut publisher, n).await);
    }
    let mut got = std::collections::BTreeSet::new();
    let mut last = (String::new(), 0);
    let mut cursor = 0;
    while got.len() < 5 {
        let message = next_of(&mut a, "message").await;
        got.insert(data_json(&message)["n"].as_u64().unwrap());
        last = (
            message.header["epoch"].as_str().unwrap().to_owned(),
            message.header["offset"].as_u64().unwrap(),
        );
        cursor = message.header["id"].as_u64().unwrap();
    }
    processes[0].kill();
    drop(a);
    for n in 10..20 {
        confirmed.push(publish(&mut publisher, n).await);
    }

    // Back through another node: its node is gone, so a new session (expired), which joins
    // again and recovers from where it was.
    let resume = welcome["resume"].as_str().unwrap();
    let (mut a, again) = connect(
        processes[2].gateway,
        &format!("resume={resume}&cursor={cursor}"),
    )
    .await;
    assert_eq!(again["expired"], true, "{again}");
    let (ok, _) = ask(&mut a, json!({"type":"join","ref":1,"channel":"room.k"})).await;
    assert_eq!(ok.kind(), "ok");
    let (answer, mut early) = ask(
        &mut a,
        json!({"type":"recover","ref":2,"channel":"room.k","epoch":last.0,"offset":last.1}),
    )
    .await;
    assert_eq!(answer.kind(), "ok", "{answer:?}");
    assert_eq!(data_json(&answer)["recovered"], true, "{answer:?}");
    for n in 20..25 {
        confirmed.push(publish(&mut publisher, n).await);
    }
    while !confirmed.iter().all(|n| got.contains(n)) {
        let message = match early.pop() {
            Some(message) if message.kind() == "message" => message,
            Some(_) => continue,
            None => next_of(&mut a, "message").await,
        };
        let n = data_json(&message)["n"].as_u64().unwrap();
        assert!(message.header["offset"].as_u64().unwrap() > 0);
        got.insert(n);
    }
    drop(processes);
}

/// The nodes know three NATS servers forming a NATS cluster (the history in three replicas):
/// one of them is killed while publications flow; the nodes carry on through the others and
/// every confirmed publication reaches the members.
#[tokio::test]
async fn a_nats_server_of_three_killed_loses_no_confirmed_publication() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = NatsServer::start_cluster(dir.path());
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let mut cluster = cluster_config(&urls);
    cluster.history_replicas = 3;
    cluster.start_retries = 50;
    let one = start_node(&dir.path().join("one"), Some(cluster.clone())).await;
    let two = start_node(&dir.path().join("two"), Some(cluster)).await;
    let (mut a, _) = connect(one.gateway, "").await;
    let (mut b, _) = connect(two.gateway, "").await;
    for ws in [&mut a, &mut b] {
        let (ok, _) = ask(ws, json!({"type":"join","ref":1,"channel":"room.f"})).await;
        assert_eq!(ok.kind(), "ok");
    }
    let mut confirmed = Vec::new();
    let mut reference = 10;
    // Ten publications, the kill, then thirty more confirmed: while the nodes fail over (a new
    // leader for the history, a reconnection) a publication may be refused `unavailable`, and
    // is made again until NATS confirms it (never silently dropped).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for n in 0..40u64 {
        if n == 10 {
            servers[0].stop();
        }
        loop {
            reference += 1;
            let (answer, _) = ask(
                &mut a,
                json!({"type":"send","ref":reference,"to":{"channel":"room.f"},"data":{"n":n}}),
            )
            .await;
            if answer.kind() == "ok" {
                confirmed.push(n);
                break;
            }
            assert_eq!(answer.header["code"], "unavailable", "{answer:?}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "the others did not carry on: {confirmed:?}"
            );
            // Within the gateway's rate limit while the cluster fails over.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut got = std::collections::BTreeSet::new();
    while !confirmed.iter().all(|n| got.contains(n)) {
        let message = next_of(&mut b, "message").await;
        got.insert(data_json(&message)["n"].as_u64().unwrap());
    }
    one.stop().await;
    two.stop().await;
}
