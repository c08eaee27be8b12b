//! Capabilities on the command line (docs/PROTOCOL.md §4.11): `ferry address attenuate` and
//! `inspect`, and grants of a running `ferry listen` revoked from its standard input, also
//! across a SIGKILL. Readiness is read from the children's output, never slept for.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::Write as _;

use common::{run, stderr, stdout, Daemon};

fn node_id_of_seed(seed: u8) -> String {
    ferry::SecretKey::from_bytes(&[seed; 32])
        .public()
        .to_string()
}

#[test]
fn attenuate_and_inspect_offline() {
    let plain = ferry::Address::mint(
        &ferry::SecretKey::from_bytes(&[1; 32]),
        ferry::MailboxId(7),
        None,
        vec!["127.0.0.1:4433".parse().unwrap()],
    )
    .to_string();
    let holder = node_id_of_seed(2);
    let output = run(&[
        "address",
        "attenuate",
        &plain,
        "--expires",
        "1h",
        "--max",
        "100",
        "--only",
        &holder,
        "--service",
        "echo",
        "--rate",
        "10/1m",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let narrow = stdout(&output).trim().to_owned();
    assert!(narrow.starts_with("ferry2"), "{narrow}");
    let output = run(&["address", "inspect", &narrow]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for expected in [
        "format: ferry2",
        "mailbox: 0000000000000007",
        "grant: 0000000000000000",
        "expires: never",
        "caveat: max-messages 100",
        "caveat: rate 10/60s",
        "caveat: service echo",
        &format!("caveat: only {holder}"),
        "hint: 127.0.0.1:4433",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }
    let output = run(&["address", "inspect", "--json", &plain]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["format"], "ferry1");
    assert_eq!(json["proof"], "signature");
    assert_eq!(json["length"], plain.len());
    // Narrowing again works offline; widening the expiry is refused.
    let output = run(&["address", "attenuate", &narrow, "--max", "1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = run(&["address", "attenuate", &narrow, "--expires", "2h"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("not earlier"),
        "{}",
        stderr(&output)
    );
    let output = run(&["address", "inspect", "ferry2nonsense"]);
    assert_eq!(output.status.code(), Some(2));
}

/// The next line that starts with `prefix`, skipping message lines.
fn line_starting(daemon: &mut Daemon, prefix: &str) -> String {
    loop {
        let line = daemon.line();
        if line.starts_with(prefix) {
            return line;
        }
    }
}

#[test]
fn a_running_listener_revokes_a_grant_durably() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (mut listener, mut stdin) =
        Daemon::start_with_stdin(&["listen", "--data", data, "--grant", "--commands"]);
    let granted = listener.line();
    assert!(granted.starts_with("ferry2"), "{granted}");
    let output = run(&["send", &granted, "first"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listener.line(), "first");
    // A second grant, minted on the running node.
    writeln!(stdin, "grant 1h").unwrap();
    let line = line_starting(&mut listener, "grant ");
    let mut words = line.split(' ').skip(1);
    let (other_grant, other) = (
        words.next().unwrap().to_owned(),
        words.next().unwrap().to_owned(),
    );
    let output = run(&["address", "inspect", "--json", &granted]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let grant = json["grant"].as_str().unwrap().to_owned();
    assert_ne!(grant, other_grant);
    writeln!(stdin, "revoke {grant}").unwrap();
    assert_eq!(
        line_starting(&mut listener, "revoked "),
        format!("revoked {grant}")
    );
    let output = run(&["send", &granted, "x"]);
    assert_eq!(output.status.code(), Some(9), "{}", stderr(&output));
    assert!(stderr(&output).contains("revoked"), "{}", stderr(&output));
    let output = run(&["send", &other, "other"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listener.line(), "other");

    // SIGKILL, then the same data directory: the revocation is still there.
    drop(listener);
    let mut listener = Daemon::start(&["listen", "--data", data]);
    let plain = listener.line();
    assert!(plain.starts_with("ferry1"), "{plain}");
    let output = run(&["send", &granted, "x"]);
    assert_eq!(output.status.code(), Some(9), "{}", stderr(&output));
    let output = run(&["send", &other, "still"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listener.line(), "still");
    // `--revoke` at start.
    drop(listener);
    let mut listener = Daemon::start(&["listen", "--data", data, "--revoke", &other_grant]);
    listener.line();
    let output = run(&["send", &other, "x"]);
    assert_eq!(output.status.code(), Some(9), "{}", stderr(&output));
}

/// SIGTERM stops a listener that reads commands, though its standard input stays open and no
/// line comes: the read of standard input does not hold the process.
#[test]
fn sigterm_stops_a_listener_waiting_for_commands() {
    let (mut listener, mut stdin) = Daemon::start_with_stdin(&["listen", "--commands"]);
    assert!(listener.line().starts_with("ferry1"));
    // Reading commands: a grant is answered.
    writeln!(stdin, "grant").unwrap();
    assert!(line_starting(&mut listener, "grant ").contains(" ferry2"));
    // An exit within 10 s, though standard input is open.
    let exit = listener.terminate(std::time::Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0));
    drop(stdin);
}
