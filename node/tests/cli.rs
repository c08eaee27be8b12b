//! The real `ferry` binary on loopback: config files, `call`, `ping`, `send`/`listen`, help.
//! Readiness is read from the children's standard output, never waited for by sleeping, and
//! every child is killed by a guard when its test ends.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{ferry, free_port, run, stderr, stdout, Daemon};

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use ferry::{Conversation, Node, NodeConfig, SecretKey, ServiceOptions};

/// A `ferry run` node: its id and listen address, from its first lines.
struct RunningNode {
    daemon: Daemon,
    id: String,
    addr: SocketAddr,
}

fn start_run(args: &[&str]) -> RunningNode {
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    let mut daemon = Daemon::start(&full);
    let id = daemon.field("node id: ");
    let addr = daemon.field("listening on: ").parse().unwrap();
    daemon.field("inbox address: ");
    RunningNode { daemon, id, addr }
}

fn keygen(path: &Path) -> String {
    let output = run(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output).trim().to_owned()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn help_works_for_every_subcommand() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    for sub in [
        "keygen",
        "id",
        "run",
        "listen",
        "send",
        "call",
        "ping",
        "config-example",
    ] {
        assert!(stdout(&output).contains(sub), "{sub} missing from --help");
        let help = run(&[sub, "--help"]);
        assert!(help.status.success(), "{sub} --help: {}", stderr(&help));
        assert!(
            stdout(&help).contains(&format!("Usage: ferry {sub}")),
            "{sub}: {}",
            stdout(&help)
        );
    }
    assert!(stdout(&run(&["run", "--help"])).contains("--config <PATH>"));
}

#[test]
fn config_file_is_honoured_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let file_id = keygen(&dir.path().join("file-key"));
    let flag_key = dir.path().join("flag-key");
    let flag_id = keygen(&flag_key);
    let (file_port, flag_port) = (free_port(), free_port());
    // Relative paths are relative to the config file's directory.
    let config = write_config(
        dir.path(),
        &format!(
            "data_dir = \"data\"\nkey_file = \"file-key\"\nlisten = \"127.0.0.1:{file_port}\"\n\
             idle_timeout = \"20s\"\nkeep_alive = \"5s\"\nmax_message_size = 65536\n"
        ),
    );
    let config = config.to_str().unwrap();

    let node = start_run(&["--config", config]);
    assert_eq!(node.id, file_id);
    assert_eq!(node.addr, format!("127.0.0.1:{file_port}").parse().unwrap());
    assert!(dir.path().join("data").is_dir());
    drop(node);

    let listen = format!("127.0.0.1:{flag_port}");
    let node = start_run(&[
        "--config",
        config,
        "--key",
        flag_key.to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    assert_eq!(node.id, flag_id);
    assert_eq!(node.addr, listen.parse().unwrap());
    drop(node);

    // The file's max_message_size is in force: a larger message is refused by the node.
    let mut listener = Daemon::start(&["listen", "--config", config]);
    let address = listener.line();
    let big = "x".repeat(70_000);
    let refused = run(&["send", &address, &big]);
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    let sent = run(&["send", &address, "small enough"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert_eq!(listener.line(), "small enough");
}

/// Exit 2 and exactly one line on stderr, naming the file.
fn assert_config_error(dir: &Path, text: &str, expected: &[&str]) {
    let config = write_config(dir, text);
    let output = run(&["run", "--config", config.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(stdout(&output).is_empty());
    assert!(err.contains(config.to_str().unwrap()), "{err}");
    for part in expected {
        assert!(err.contains(part), "{part:?} not in {err}");
    }
}

#[test]
fn malformed_config_gives_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    assert_config_error(
        dir.path(),
        "listen = \"127.0.0.1:0\"\nidle_timout = \"10s\"\n",
        &["line 2", "unknown key `idle_timout`"],
    );
    assert_config_error(
        dir.path(),
        "keep_alive = 5\n",
        &["line 1", "key `keep_alive`", "duration"],
    );
    assert_config_error(
        dir.path(),
        "max_connections = \"many\"\n",
        &["key `max_connections`", "invalid type"],
    );
    assert_config_error(dir.path(), "listen = \n", &["line 1"]);
    assert_config_error(
        dir.path(),
        "keep_alive = \"1m\"\n",
        &["keep_alive", "idle_timeout"],
    );

    let missing = dir.path().join("missing.toml");
    let output = run(&["run", "--config", missing.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
}

#[test]
fn config_example_is_a_valid_config() {
    let output = run(&["config-example"]);
    assert!(output.status.success());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\ndata_dir = \"{}\"\n",
        stdout(&output),
        dir.path().join("data").display()
    );
    let config = write_config(dir.path(), &text);
    let node = start_run(&["--config", config.to_str().unwrap()]);
    assert_eq!(node.addr.ip(), std::net::Ipv4Addr::LOCALHOST);
}

/// Runs the binary from async code without blocking the runtime.
async fn run_async(args: Vec<String>, stdin: Option<Vec<u8>>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = ferry()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(&bytes).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

async fn shout(mut conversation: Conversation) {
    let text: String = conversation.recv_obj().await.unwrap();
    match text.as_str() {
        "fail" => conversation.fail("asked to fail").await.unwrap(),
        "hang" => {
            // Until the caller gives up.
            let _ = conversation.cancelled().await;
        }
        _ => conversation.reply(&text.to_uppercase()).await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_reaches_an_sdk_service() {
    let server = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let service = server
        .serve("shout", ServiceOptions::default(), shout)
        .unwrap();
    let address = service.address().to_string();
    let call = |target: &str, message: &str, extra: &[&str]| {
        let mut args = vec!["call".to_string(), target.to_string(), message.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_async(args, None)
    };

    // By capability address.
    let output = call(&address, "hello", &[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "HELLO\n");

    // By name, with the request on standard input.
    let by_name = format!("{}@{}/shout", server.id(), server.local_addr());
    let output = run_async(
        vec!["call".into(), by_name.clone(), "-".into()],
        Some("from stdin".into()),
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "FROM STDIN\n");

    // Typed failures: one line, distinct exit codes.
    let cases: Vec<(String, &str, Vec<&str>, i32, &str)> = vec![
        (address.clone(), "fail", vec![], 8, "asked to fail"),
        (
            address.clone(),
            "hang",
            vec!["--timeout", "500ms"],
            6,
            "timeout",
        ),
        (
            format!("{}@{}/nothing", server.id(), server.local_addr()),
            "x",
            vec![],
            4,
            "no such service",
        ),
        ("ferry1garbage".into(), "x", vec![], 2, "malformed address"),
    ];
    for (target, message, extra, code, text) in cases {
        let output = call(&target, message, &extra).await;
        let err = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{target} {message}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("ferry call: "), "{err}");
        assert!(err.contains(text), "{text:?} not in {err}");
        assert!(stdout(&output).is_empty());
    }

    drop(service);
    // A closed service's address names a mailbox that no longer exists.
    let output = call(&address, "hello", &[]).await;
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    server.shutdown(Duration::from_secs(1)).await;
}

/// The data directory `ferry run` creates holds the key, every stored message and the
/// gateway's resume-token key: its owner only may read it.
#[cfg(unix)]
#[test]
fn a_new_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new").join("data");
    let _node = start_run(&["--data", data.to_str().unwrap()]);
    for created in [&data, &dir.path().join("new")] {
        let mode = std::fs::metadata(created).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", created.display());
    }
    let key = std::fs::metadata(data.join("key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}

#[test]
fn ping_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_run(&["--data", dir.path().to_str().unwrap()]);
    let target = format!("{}@{}", node.id, node.addr);
    let output = run(&["ping", &target, "-c", "3", "--interval", "100ms"]);
    let out = stdout(&output);
    assert!(output.status.success(), "{out}{}", stderr(&output));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("PING {} ({})", node.id, node.addr));
    for (seq, line) in lines[1..4].iter().enumerate() {
        let seq = seq + 1;
        assert!(
            line.starts_with(&format!("reply from {}: seq={seq} time=", &node.id[..10])),
            "{line}"
        );
        assert!(line.ends_with(" ms"), "{line}");
    }
    assert!(lines[4].contains("ping statistics"), "{out}");
    assert_eq!(lines[5], "3 sent, 3 received, 0.0% loss");
    assert!(lines[6].starts_with("rtt min/avg/p50/max = "), "{out}");
    assert_eq!(lines.len(), 7, "{out}");

    // No interval: rounds back to back.
    let output = run(&["ping", &target, "-c", "2", "-i", "0"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("2 sent, 2 received, 0.0% loss"));
    drop(node.daemon);
}

#[test]
fn ping_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let stranger = keygen(&dir.path().join("stranger"));

    // Nobody listens at the address: the dial times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = format!("{stranger}@{}", silent.local_addr().unwrap());
    let output = run(&["ping", &target, "-c", "2", "--timeout", "500ms"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(6), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("node unreachable"), "{err}");
    assert!(stdout(&output).is_empty());

    // Another node answers at the address: unreachable (wrong node).
    let node = start_run(&["--data", dir.path().join("data").to_str().unwrap()]);
    let target = format!("{stranger}@{}", node.addr);
    let output = run(&["ping", &target, "-c", "1"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(5), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("node unreachable"), "{err}");

    // Not NODEID@HOST:PORT.
    let output = run(&["ping", "nonsense", "-c", "1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("NODEID@HOST:PORT"));
}

#[test]
fn send_reaches_listen() {
    let dir = tempfile::tempdir().unwrap();
    let mut listener = Daemon::start(&["listen", "--json", "--data", dir.path().to_str().unwrap()]);
    let address = listener.line();
    assert!(address.starts_with("ferry1"), "{address}");
    let output = run(&["send", &address, "hello \"there\""]);
    assert!(output.status.success(), "{}", stderr(&output));
    let line = listener.line();
    assert!(line.ends_with(r#","payload":"hello \"there\""}"#), "{line}");
    let output = run(&["send", "not-an-address", "x"]);
    assert_eq!(output.status.code(), Some(2));
}

/// `--listen 0.0.0.0:0`: the printed address names the machine's interface addresses that
/// other hosts can dial, with the bound port, never loopback (unless the machine has nothing
/// else); the node answers on every interface, loopback included.
#[test]
fn a_wildcard_listener_advertises_its_interfaces_not_loopback() {
    let mut listener = Daemon::start(&["listen", "--listen", "0.0.0.0:0"]);
    let address: ferry::Address = listener.line().parse().unwrap();
    let usable: Vec<std::net::IpAddr> = if_addrs::get_if_addrs()
        .unwrap()
        .into_iter()
        .filter(|interface| {
            interface.is_oper_up()
                && interface.ip().is_ipv4()
                && !interface.is_loopback()
                && !interface.is_link_local()
        })
        .map(|interface| interface.ip())
        .collect();
    let hints = address.hints();
    assert!(!hints.is_empty() && hints.len() <= 4, "{hints:?}");
    let port = hints[0].port();
    assert!(
        port != 0 && hints.iter().all(|hint| hint.port() == port),
        "{hints:?}"
    );
    if usable.is_empty() {
        assert_eq!(hints, [SocketAddr::from(([127, 0, 0, 1], port))]);
    } else {
        assert!(
            hints.iter().all(|hint| usable.contains(&hint.ip())),
            "{hints:?} not among {usable:?}"
        );
    }
    // The wildcard socket takes loopback traffic too (this test sends nowhere else).
    let local = address.with_hints(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
    let output = run(&["send", &local.to_string(), "to the wildcard"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listener.line(), "to the wildcard");
}
