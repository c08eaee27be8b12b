//! The daemon as people run it: real `ferry run` / `ferry listen` / `ferry send` processes on
//! loopback, with SDK nodes in this test process as the other side where a test needs many
//! messages. Every child is killed by a guard when its test ends.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::io::Read as _;
use std::time::Duration;

use common::{free_port, run, stderr, Daemon};
use ferry::{Address, Node, NodeConfig, SecretKey};
use ferry_testkit::wait::{wait_for_blocking, wait_for_value_blocking, DEADLINE};

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?}: {error}"))
}

async fn sdk_node() -> Node {
    Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap()
}

/// Starts `ferry listen --json --data DIR --listen 127.0.0.1:PORT`, retrying while a previous
/// process still holds the port; returns it with the address it printed.
fn listen_on(dir: &std::path::Path, port: u16) -> (Daemon, String) {
    let listen = format!("127.0.0.1:{port}");
    wait_for_value_blocking(&format!("ferry listen to start on {listen}"), || {
        let daemon = Daemon::start(&[
            "listen",
            "--json",
            "--data",
            dir.to_str().unwrap(),
            "--listen",
            &listen,
        ]);
        let address = daemon.lines.recv_timeout(Duration::from_secs(5)).ok()?;
        Some((daemon, address))
    })
}

/// One received JSON line: (payload number, message id).
fn received(line: &str) -> (u64, u64) {
    let value = json(line);
    let payload: u64 = value["payload"].as_str().unwrap().parse().unwrap();
    (payload, value["id"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_killed_and_restarted_mid_stream_loses_nothing_acknowledged() {
    const TOTAL: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut listener, address) = listen_on(dir.path(), port);
    let target: Address = address.parse().unwrap();
    let sender = sdk_node().await;
    let sending = {
        let sender = sender.sender(&target);
        tokio::spawn(async move {
            let mut last = None;
            for n in 0..TOTAL {
                last = Some(sender.enqueue_bytes(n.to_string().into()).await.unwrap());
            }
            last.unwrap().await
        })
    };
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let record = |line: &str, seen: &mut HashMap<u64, u64>| {
        let (n, id) = received(line);
        if let Some(first) = seen.insert(n, id) {
            // Printed again after the restart: it was printed, not yet acknowledged to the
            // store, when the process died. The same stored message, never a second copy.
            assert_eq!(first, id, "message {n} stored twice");
        }
    };
    while seen.len() < (TOTAL / 3) as usize {
        let line = tokio::task::block_in_place(|| listener.line());
        record(&line, &mut seen);
    }
    // SIGKILL: no chance to flush or say goodbye.
    listener.child.kill().unwrap();
    listener.child.wait().unwrap();
    // Everything it printed before it died, up to the end of its output.
    while let Ok(line) = listener.lines.recv_timeout(Duration::from_secs(10)) {
        record(&line, &mut seen);
    }
    let before = seen.len();
    assert!(before < TOTAL as usize, "the kill came mid-stream");
    let (mut listener, again) = tokio::task::block_in_place(|| listen_on(dir.path(), port));
    assert_eq!(again, address, "same key, same mailbox, same address");
    while seen.len() < TOTAL as usize {
        let line = tokio::task::block_in_place(|| listener.line());
        record(&line, &mut seen);
    }
    // Every message was acknowledged to the sender, and each arrived.
    tokio::time::timeout(Duration::from_secs(60), sending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!((0..TOTAL).all(|n| seen.contains_key(&n)));
    sender.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_for_an_offline_listener_arrive_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (listener, address) = listen_on(dir.path(), port);
    drop(listener); // killed: offline
    let target: Address = address.parse().unwrap();
    let sender = sdk_node().await;
    let outbox = sender.sender(&target);
    let mut deliveries = Vec::new();
    for n in 0..100u64 {
        deliveries.push(outbox.enqueue_bytes(n.to_string().into()).await.unwrap());
    }
    // Offline for a while (the outage is what is tested, in real time): the sender tries and
    // waits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut listener, _) = tokio::task::block_in_place(|| listen_on(dir.path(), port));
    for delivery in deliveries {
        tokio::time::timeout(Duration::from_secs(30), delivery)
            .await
            .unwrap()
            .unwrap();
    }
    for n in 0..100u64 {
        let line = tokio::task::block_in_place(|| listener.line());
        assert_eq!(received(&line).0, n, "in order");
    }
    sender.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn send_reports_every_failure_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut listener = Daemon::start(&["listen", "--data", dir.path().to_str().unwrap()]);
    let address: Address = listener.line().parse().unwrap();
    let cases: Vec<(String, Vec<String>, i32, &str)> = {
        let text = address.to_string();
        // Malformed: not an address at all.
        let malformed = "ferry1notanaddress".to_string();
        // Forged: another signature (the checksum fixed up so only the signature is wrong).
        let forged = {
            let mut bytes = address.to_bytes();
            bytes[60] ^= 1;
            let body = bytes.len() - 4;
            let crc = crc32fast::hash(&bytes[..body]);
            bytes[body..].copy_from_slice(&crc.to_be_bytes());
            Address::from_bytes(&bytes).unwrap().to_string()
        };
        // Unknown mailbox: a valid address of a mailbox that was never opened needs the key.
        let key_path = dir.path().join("key");
        let key = ferry_node::keyfile::load(&key_path).unwrap();
        let unknown = Address::mint(
            &key,
            ferry::MailboxId(12345),
            None,
            address.hints().to_vec(),
        )
        .to_string();
        let expired =
            Address::mint(&key, address.mailbox(), Some(1), address.hints().to_vec()).to_string();
        // Unreachable: a node nobody runs, at a port nobody listens on.
        let nobody = Address::mint(
            &SecretKey::generate(),
            ferry::MailboxId(1),
            None,
            vec![format!("127.0.0.1:{}", free_port()).parse().unwrap()],
        )
        .to_string();
        let big = "x".repeat(2 << 20);
        vec![
            (malformed, vec!["hi".into()], 2, "malformed address"),
            (forged, vec!["hi".into()], 3, "forged"),
            (expired, vec!["hi".into()], 3, "expired"),
            (unknown, vec!["hi".into()], 4, "no such mailbox"),
            (
                nobody,
                vec!["hi".into(), "--timeout".into(), "2s".into()],
                6,
                "",
            ),
            (text, vec![big], 7, "exceeds"),
        ]
    };
    for (target, rest, code, words) in cases {
        let mut args = vec!["send", target.as_str()];
        args.extend(rest.iter().map(String::as_str));
        let output = if args.get(2).is_some_and(|message| message.len() > 1000) {
            // Too long for the command line: from standard input.
            let message = args.remove(2).as_bytes().to_vec();
            args.push("-");
            run_with_input(&args, &message)
        } else {
            run(&args)
        };
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(code), "{target}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(words), "{err}");
    }
    // Nothing of that reached the mailbox.
    assert!(listener.lines.try_recv().is_err());
}

/// Runs `ferry ARGS` with `input` on its standard input.
fn run_with_input(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = common::ferry()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn send_through_a_relay_run_by_ferry() {
    let relay_dir = tempfile::tempdir().unwrap();
    let mut relay = Daemon::start(&[
        "run",
        "--serve-relay",
        "--data",
        relay_dir.path().to_str().unwrap(),
    ]);
    let relay_id = relay.field("node id: ");
    let relay_addr = relay.field("listening on: ");
    let relay_arg = format!("{relay_id}@{relay_addr}");
    let listen_dir = tempfile::tempdir().unwrap();
    let mut listener = Daemon::start(&[
        "listen",
        "--relay",
        &relay_arg,
        "--data",
        listen_dir.path().to_str().unwrap(),
    ]);
    let address: Address = listener.line().parse().unwrap();
    assert_eq!(
        address.relays().len(),
        1,
        "the relay is named in the address"
    );
    // Without any socket address of the listener: through the relay hint alone...
    let relay_only = address
        .without_hints()
        .with_relay(relay_id.parse().unwrap(), relay_addr.parse().unwrap());
    // (the listener connects to its relay in the background: retry until it did)
    wait_for_blocking("a send through the relay hint", || {
        run(&[
            "send",
            &relay_only.to_string(),
            "via hint",
            "--timeout",
            "3s",
        ])
        .status
        .success()
    });
    assert_eq!(listener.line(), "via hint");
    // ...and with no hint at all, through `--via`.
    let output = run(&[
        "send",
        &address.without_hints().to_string(),
        "via flag",
        "--via",
        &relay_arg,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    // A try of the loop above that timed out on the sender's side may still have been
    // delivered (its sender gave up, not the network): skip such copies.
    let line = std::iter::repeat_with(|| listener.line())
        .find(|line| line != "via hint")
        .unwrap();
    assert_eq!(line, "via flag");
}

#[test]
fn a_node_that_admits_only_others_refuses_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let other = SecretKey::generate().public();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, format!("admission = [\"{other}\"]\n")).unwrap();
    let mut node = Daemon::start(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    node.field("node id: ");
    node.field("listening on: ");
    let inbox = node.field("inbox address: ");
    let output = run(&["send", &inbox, "let me in"]);
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("not admitted"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn run_serves_metrics_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Daemon::start(&["run", "--data", dir.path().to_str().unwrap()]);
    node.field("node id: ");
    node.field("listening on: ");
    let inbox = node.field("inbox address: ");
    let metrics = node.field("metrics: http://");
    node.field("health: http://");
    // The browser gateway is on by default: its JS client is served beside /ws.
    let gateway = node.field("gateway: ws://");
    let (gateway_host, _) = gateway.split_once('/').unwrap();
    let script = http_get(gateway_host, "/ferry.js");
    assert!(script.contains("export function connect"), "{script}");
    // WebTransport too, on the gateway's port number (over UDP).
    let webtransport = node.field("webtransport: https://");
    assert_eq!(webtransport, format!("{gateway_host}/webtransport"));
    let info = http_get(gateway_host, "/webtransport");
    assert!(
        info.contains(&format!("\"url\":\"https://{gateway_host}/webtransport\"")),
        "{info}"
    );
    let output = run(&["send", &inbox, "counted"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(node.line(), "counted");
    let (host, path) = metrics.split_once('/').unwrap();
    let body = http_get(host, &format!("/{path}"));
    assert!(body.contains("ferry_messages_in_total 1"), "{body}");
    assert!(body.contains("ferry_store_bytes"), "{body}");
    assert!(body.contains("ferry_gateway_sessions 0"), "{body}");
    // SIGTERM: a graceful shutdown, exit 0.
    assert_eq!(node.terminate(DEADLINE).code(), Some(0));
}

fn http_get(host: &str, path: &str) -> String {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The UDP port of the dial hint in a printed address.
fn hint_port(address: &str) -> u16 {
    let address: Address = address.parse().unwrap();
    address.hints()[0].port()
}

/// Sends `text` to `address` with `ferry send` and waits until the listener printed it.
fn send_and_see(listener: &mut Daemon, address: &str, text: &str) {
    let output = run(&["send", address, text]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listener.line(), text);
}

/// Kills the child with SIGKILL, reaps it, and returns what it wrote to standard error.
fn kill_9(mut daemon: Daemon) -> String {
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let mut err = String::new();
    daemon
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[test]
fn listen_with_a_data_directory_prints_the_same_address_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // No --listen: any free port the first time, then the same one.
    let mut listener = Daemon::start(&["listen", "--data", data]);
    let address = listener.line();
    send_and_see(&mut listener, &address, "before");
    let port = hint_port(&address);
    let err = kill_9(listener);
    assert!(!err.contains("cannot be bound"), "{err}");

    let mut listener = Daemon::start(&["listen", "--data", data]);
    assert_eq!(listener.line(), address, "the same address after a restart");
    // The address printed before reaches the restarted node.
    send_and_see(&mut listener, &address, "after");
    let err = kill_9(listener);
    assert!(!err.contains("cannot be bound"), "{err}");

    // `ferry run` on the same data directory: the same port (and key).
    let mut node = Daemon::start(&["run", "--data", data]);
    node.field("node id: ");
    assert_eq!(
        node.field("listening on: "),
        format!("127.0.0.1:{port}"),
        "the port remembered by listen"
    );
}

#[test]
fn a_taken_port_is_replaced_by_a_free_one_and_said_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut listener = Daemon::start(&["listen", "--data", data]);
    let address = listener.line();
    let port = hint_port(&address);
    kill_9(listener);
    // Someone else takes the port while the node is down.
    let squatter = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();

    let mut listener = Daemon::start(&["listen", "--data", data]);
    let moved = listener.line();
    let new_port = hint_port(&moved);
    assert_ne!(new_port, port);
    // A working node at the new address.
    send_and_see(&mut listener, &moved, "at the new port");
    let err = kill_9(listener);
    assert!(
        err.contains(&format!(
            "UDP port {port}, which this node had before, cannot be bound"
        )) && err.contains(&format!("listening on 127.0.0.1:{new_port} instead"))
            && err.contains("addresses it printed before no longer reach it"),
        "{err}"
    );

    // The new port is the one remembered now.
    drop(squatter);
    let mut listener = Daemon::start(&["listen", "--data", data]);
    assert_eq!(listener.line(), moved);

    // An explicit port is used as given: taken, the node does not start.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let other = tempfile::tempdir().unwrap();
    let output = run(&[
        "listen",
        "--data",
        other.path().to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!("binding UDP {listen}")),
        "{}",
        stderr(&output)
    );
}

/// A signal that comes right after a node printed its address stops it cleanly (exit 0): its
/// handlers are installed before it prints anything, not when a task first gets to them. (Under
/// load, a third of these runs were killed by the signal's default action before.)
#[test]
fn sigterm_right_after_the_address_exits_cleanly() {
    for _ in 0..10 {
        let mut listener = Daemon::start(&["listen"]);
        assert!(listener.line().starts_with("ferry1"));
        assert_eq!(listener.terminate(DEADLINE).code(), Some(0));
    }
}
