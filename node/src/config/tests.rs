#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests: a failed unwrap is a failed test

use std::collections::{BTreeSet, HashSet};

use ferry::{Admission, RelayAccess, SecretKey};

use super::*;

fn parse_error(text: &str) -> ParseFailure {
    match FileConfig::parse(text) {
        Ok(config) => panic!("{text:?} parsed as {config:?}"),
        Err(failure) => failure,
    }
}

/// The keys the structs read under two names: the long one is the field's, the documented
/// one the key the file had first.
const SECOND_NAMES: [&str; 2] = [
    "gateway_max_channels_per_session",
    "store_max_pending_per_mailbox",
];

/// Rows whose default is a description, not a value.
const DESCRIBED_DEFAULTS: [&str; 2] = ["data_dir", "key_file"];

/// Every key the structs read has a row in docs/CONFIG.md, and every row is a key they read.
#[test]
fn every_key_is_documented_and_every_documented_key_is_read() {
    let read: BTreeSet<String> = Owner::new().every_key().into_iter().collect();
    let documented: BTreeSet<String> = reference::sections()
        .iter()
        .flat_map(|section| section.rows.iter().map(|row| row.key.to_owned()))
        .collect();
    let undocumented: Vec<&String> = read.difference(&documented).collect();
    assert_eq!(undocumented, SECOND_NAMES, "keys missing from CONFIG.md");
    let unread: Vec<&String> = documented.difference(&read).collect();
    assert!(
        unread.is_empty(),
        "CONFIG.md keys nothing reads: {unread:?}"
    );
    assert_eq!(documented.len(), 95);
}

/// The default column of every row is what the structs default to: `key = default` reads
/// as the file without the key.
#[test]
fn documented_defaults_are_the_defaults() {
    let default = format!("{:?}", FileConfig::default());
    for row in reference::sections()
        .iter()
        .flat_map(|section| &section.rows)
    {
        match row.literal() {
            Some(value) => {
                let text = format!("{} = {value}", row.key);
                let file = FileConfig::parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
                assert_eq!(format!("{file:?}"), default, "{text}");
            }
            None if row.default == "none" => {}
            None => assert!(
                DESCRIBED_DEFAULTS.contains(&row.key),
                "{}: default {:?} is neither a value nor none",
                row.key,
                row.default
            ),
        }
    }
}

/// The example sets every key whose default is a value to it, so it parses to exactly the
/// default configuration, and names every documented key.
#[test]
fn example_parses_to_the_defaults() {
    let example = example();
    let file = FileConfig::parse(&example).unwrap();
    assert_eq!(format!("{file:?}"), format!("{:?}", FileConfig::default()));
    assert_eq!(file.gateway_config(), Ok(GatewayConfig::default()));
    for row in reference::sections()
        .iter()
        .flat_map(|section| &section.rows)
    {
        let set = format!("\n{} = ", row.key);
        let commented = format!("\n# {} =\n", row.key);
        assert!(
            example.contains(&set) || example.contains(&commented),
            "{} not in the example",
            row.key
        );
    }
    assert!(example
        .lines()
        .all(|line| line.chars().count() <= 95 || !line.contains(' ')));
}

/// The example of docs/CONFIG.md is a valid config.
#[test]
fn documented_example_is_valid() {
    let doc = include_str!("../../../docs/CONFIG.md");
    let block = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let file = FileConfig::parse(block).unwrap();
    assert_eq!(file.node.validate(), Ok(()));
    assert_eq!(file.daemon.peers.len(), 1);
}

#[test]
fn gateway_keys() {
    let text = r#"
        gateway = "off"
        gateway_session_ttl = "1m"
        gateway_origins = ["*"]
        gateway_client_config = { logger = "ferry1x", nested = { a = 1 } }
        gateway_tokens = [{ user = "alice", token = "s3cr3t" }]
        gateway_jwt_hs256_secret = "k"
        gateway_jwt_ed25519_public_key = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"
        gateway_jwt_audience = "app"
        gateway_join = ["lobby"]
        gateway_publish = ["lobby"]
        gateway_direct = true
        gateway_max_connections = 5
        gateway_max_sessions = 6
        gateway_max_connection_age = "1h"
        gateway_idle_timeout = "30s"
        gateway_ping_interval = "10s"
        gateway_rate_limit = 7
        gateway_rate_window = "2s"
        gateway_max_message_size = 8
        gateway_max_queue_bytes = 9
        gateway_write_timeout = "3s"
        gateway_connection_rate = 10
        gateway_max_channels = 11
        gateway_max_inflight = 12
        gateway_max_call_timeout = "4s"
        gateway_max_remembered_answers = 13
        gateway_max_remembered_answer_bytes = 14
        gateway_max_revocations = 15
        shutdown_grace = "5s"
    "#;
    let file = FileConfig::parse(text).unwrap();
    assert_eq!(file.daemon.gateway, None);
    let config = file.gateway_config().unwrap();
    let secs = Duration::from_secs;
    assert_eq!(config.session_ttl, secs(60));
    assert_eq!(
        config.drain,
        secs(5),
        "the gateway drains for shutdown_grace"
    );
    assert_eq!(config.origins, ["*"]);
    assert_eq!(config.client_config["nested"]["a"], 1);
    assert_eq!(config.auth.tokens[0].user, "alice");
    assert_eq!(config.auth.jwt_hs256_secret.as_deref(), Some(&b"k"[..]));
    assert_eq!(config.auth.jwt_ed25519_public_key.unwrap()[0], 0x8a);
    assert_eq!(config.auth.jwt_audience.as_deref(), Some("app"));
    assert_eq!(config.permissions.join, ["lobby"]);
    assert_eq!(config.permissions.publish, ["lobby"]);
    assert!(config.permissions.direct);
    let l = &config.limits;
    assert_eq!(
        (
            l.max_connections,
            l.max_sessions,
            l.rate_limit,
            l.max_message_size
        ),
        (5, 6, 7, 8)
    );
    assert_eq!(
        (
            l.max_queue_bytes,
            l.connection_rate,
            l.max_channels_per_session,
            l.max_inflight
        ),
        (9, 10, 11, 12)
    );
    assert_eq!(
        (
            l.max_remembered_answers,
            l.max_remembered_answer_bytes,
            l.max_revocations
        ),
        (13, 14, 15)
    );
    assert_eq!(l.max_connection_age, Some(secs(3600)));
    assert_eq!(
        [
            l.idle_timeout,
            l.ping_interval,
            l.rate_window,
            l.write_timeout,
            l.max_call_timeout
        ],
        [secs(30), secs(10), secs(2), secs(3), secs(4)]
    );
    // The node's `max_connections` is not the gateway's.
    assert_eq!(
        file.node.max_connections,
        NodeConfig::default().max_connections
    );

    let failure = parse_error(r#"gateway_jwt_ed25519_public_key = "abcd""#);
    assert_eq!(
        failure.key.as_deref(),
        Some("gateway_jwt_ed25519_public_key")
    );
    let bad = FileConfig::parse(r#"gateway_ping_interval = "2m""#).unwrap();
    assert_eq!(bad.gateway_config(), Err(GatewayConfigError::PingInterval));
    assert_eq!(
        parse_error(r#"gateway = "nowhere""#).key.as_deref(),
        Some("gateway")
    );
    let failure = parse_error("gateway_idle_timeout = 30");
    assert_eq!(
        (failure.line, failure.key.as_deref()),
        (Some(1), Some("gateway_idle_timeout"))
    );
    let failure = parse_error("\ngateway_idle_timout = \"30s\"");
    assert_eq!(
        (failure.line, failure.key.as_deref()),
        (Some(2), Some("gateway_idle_timout"))
    );
    assert!(failure.message.starts_with("unknown key"), "{failure:?}");
    // The client config may also be a table of its own.
    let file =
        FileConfig::parse("store_max_pending = 5\n[gateway_client_config]\nlogger = \"x\"\n")
            .unwrap();
    assert_eq!(file.gateway.client_config["logger"], "x");
    assert_eq!(file.store.max_pending_per_mailbox, 5);
    let file = FileConfig::parse(
        "[[gateway_tokens]]\nuser = \"a\"\ntoken = \"1\"\n[[gateway_tokens]]\nuser = \"b\"\ntoken = \"2\"\n",
    )
    .unwrap();
    assert_eq!(file.gateway.auth.tokens.len(), 2);
}

#[test]
fn every_key_reaches_the_node_config() {
    let a = SecretKey::generate().public();
    let text = format!(
        r#"
        data_dir = "/d"
        key_file = "/k"
        peers = ["{a}@127.0.0.1:4433"]
        shutdown_grace = "3s"
        http = "127.0.0.1:9000"
        store_max_pending = 20
        store_run_ttl = "1h"
        listen = "127.0.0.1:4000"
        advertise = ["192.0.2.1:4000"]
        idle_timeout = "1m"
        keep_alive = "2s"
        dial_timeout = "3s"
        max_message_size = 1024
        mailbox_capacity = 7
        send_window = 2000
        send_timeout = "4s"
        outbox_ttl = "12s"
        monitor_grace = "5s"
        call_timeout = "6s"
        stream_idle_timeout = "7s"
        duplicate_grace = "18s"
        open_timeout = "8s"
        max_connections = 9
        max_incoming_streams = 10
        initial_incoming_streams = 5
        max_dedup_entries = 11
        handshake_rate_per_ip = 14
        frame_timeout = "15s"
        receive_window = 1048576
        max_buffered_per_peer = 2000000
        max_buffered_bytes = 3000000
        max_violations = 16
        ban_duration = "17s"
        admission = ["{a}"]
        relay = ["{a}"]
        relay_rate = 12
        relays = ["{a}@192.0.2.2:4433"]
        hole_punching = false
        max_monitors_per_peer = 13
        max_revocations = 19
        "#
    );
    let file = FileConfig::parse(&text).unwrap();
    // Every field is named (no `..`), so a new NodeConfig field does not compile until this
    // test sets it.
    let NodeConfig {
        listen,
        advertise,
        idle_timeout,
        keep_alive,
        dial_timeout,
        max_message_size,
        mailbox_capacity,
        send_window,
        send_timeout,
        outbox_ttl,
        monitor_grace,
        call_timeout,
        stream_idle_timeout,
        duplicate_grace,
        open_timeout,
        max_connections,
        max_incoming_streams,
        initial_incoming_streams,
        max_dedup_entries,
        handshake_rate_per_ip,
        frame_timeout,
        receive_window,
        max_buffered_per_peer,
        max_buffered_bytes,
        max_violations,
        ban_duration,
        admission,
        relay,
        relay_rate,
        relays,
        hole_punching,
        max_monitors_per_peer,
        max_revocations,
    } = file.node.clone();
    assert!(!hole_punching);
    assert_eq!((max_incoming_streams, initial_incoming_streams), (10, 5));
    let secs = Duration::from_secs;
    assert_eq!(listen, "127.0.0.1:4000".parse().unwrap());
    assert_eq!(advertise, vec!["192.0.2.1:4000".parse().unwrap()]);
    assert_eq!(
        [idle_timeout, keep_alive, dial_timeout, send_timeout],
        [secs(60), secs(2), secs(3), secs(4)]
    );
    assert_eq!(
        [
            monitor_grace,
            call_timeout,
            stream_idle_timeout,
            open_timeout
        ],
        [secs(5), secs(6), secs(7), secs(8)]
    );
    assert_eq!(
        [
            max_message_size,
            mailbox_capacity,
            send_window,
            max_connections
        ],
        [1024, 7, 2000, 9]
    );
    assert_eq!((max_incoming_streams, max_dedup_entries), (10, 11));
    assert_eq!(handshake_rate_per_ip, 14);
    assert_eq!(frame_timeout, secs(15));
    assert_eq!(duplicate_grace, secs(18));
    assert_eq!(
        (receive_window, max_buffered_per_peer, max_buffered_bytes),
        (1 << 20, 2_000_000, 3_000_000)
    );
    assert_eq!((max_violations, ban_duration), (16, secs(17)));
    assert_eq!(outbox_ttl, secs(12));
    assert_eq!(admission, Admission::Only([a].into_iter().collect()));
    assert_eq!(relay, RelayAccess::Only([a].into_iter().collect()));
    assert_eq!(relay_rate, 12);
    assert_eq!(max_monitors_per_peer, 13);
    assert_eq!(max_revocations, 19);
    assert_eq!(relays, vec![(a, "192.0.2.2:4433".parse().unwrap())]);
    let daemon = &file.daemon;
    assert_eq!(daemon.data_dir, Some(PathBuf::from("/d")));
    assert_eq!(daemon.key_file, Some(PathBuf::from("/k")));
    assert_eq!(daemon.shutdown_grace, secs(3));
    assert_eq!(daemon.http, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(daemon.peers.len(), 1);
    assert_eq!((daemon.peers[0].id, daemon.peers[0].addr.port()), (a, 4433));
    assert_eq!(
        file.store,
        StoreConfig {
            max_pending_per_mailbox: 20,
            run_ttl: secs(3600)
        }
    );
}

#[test]
fn node_sets() {
    let admission = |text: &str| FileConfig::parse(text).unwrap().node.admission;
    assert_eq!(admission(r#"admission = "any""#), Admission::Any);
    assert_eq!(admission("admission = []"), Admission::Only(HashSet::new()));
    assert_eq!(
        admission(r#"admission = "nobody""#),
        Admission::Only(HashSet::new())
    );
    let failure = parse_error(r#"admission = "everyone""#);
    assert_eq!(failure.key.as_deref(), Some("admission"));
    assert!(
        failure.message.contains(r#""any", "nobody" or a list"#),
        "{failure:?}"
    );
    let relay = |text: &str| FileConfig::parse(text).unwrap().node.relay;
    assert_eq!(relay(r#"relay = "any""#), RelayAccess::Any);
    assert_eq!(relay(r#"relay = "nobody""#), RelayAccess::Nobody);
}

#[test]
fn errors_name_the_line_and_the_key() {
    let failure = parse_error("listen = \"127.0.0.1:0\"\nidle_timout = \"10s\"\n");
    assert_eq!(failure.line, Some(2));
    assert_eq!(failure.key.as_deref(), Some("idle_timout"));
    assert!(
        failure.message.starts_with("unknown key `idle_timout`"),
        "{failure:?}"
    );

    let failure = parse_error("\n\nidle_timeout = 10\n");
    assert_eq!(
        (failure.line, failure.key.as_deref()),
        (Some(3), Some("idle_timeout"))
    );
    assert!(failure.message.contains("duration string"), "{failure:?}");

    let failure = parse_error("keep_alive = \"10 seconds\"");
    assert_eq!(failure.key.as_deref(), Some("keep_alive"));
    assert!(failure.message.contains("invalid duration"), "{failure:?}");

    // (Errors inside an array point at the array.)
    let failure = parse_error("\npeers = [\n  \"nonsense\",\n]\n");
    assert_eq!(
        (failure.line, failure.key.as_deref()),
        (Some(2), Some("peers"))
    );
    assert!(failure.message.contains("NODEID@HOST:PORT"), "{failure:?}");

    let failure = parse_error("max_connections = -1");
    assert_eq!(failure.key.as_deref(), Some("max_connections"));

    let failure = parse_error("listen = \"localhost\"");
    assert_eq!(failure.key.as_deref(), Some("listen"));

    // A key nobody reads, even one with a known prefix.
    let failure = parse_error("store_nothing = 1");
    assert_eq!(failure.key.as_deref(), Some("store_nothing"));

    // Not TOML at all: a line, no key.
    let failure = parse_error("listen = \n");
    assert_eq!(failure.line, Some(1));
    assert!(!failure.message.contains('\n'));
}

#[test]
fn one_line_messages_name_the_file() {
    let error = ConfigFileError::Parse {
        path: PathBuf::from("/etc/ferry.toml"),
        failure: ParseFailure {
            line: Some(3),
            key: Some("idle_timeout".into()),
            message: "bad".into(),
        },
    };
    assert_eq!(
        error.to_string(),
        "config file /etc/ferry.toml, line 3, key `idle_timeout`: bad"
    );
}

/// Replays the committed fuzz corpus of config files (fuzz/corpus/config_toml, see
/// fuzz/README.md) with the `config_toml` target's oracle, on the stable toolchain: every
/// input the fuzzer found interesting stays a regression test. The inputs are random TOML,
/// so they are fed as they are, whatever they say (no file is opened, nothing is bound).
#[test]
fn fuzz_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config_toml");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return; // a packaged crate has no corpus
    };
    let mut replayed = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        match FileConfig::parse(text) {
            Ok(file) => {
                let _ = file.node.validate();
                let _ = file.gateway_config();
            }
            Err(failure) => {
                assert!(!failure.message.contains('\n'), "{path:?}: {failure:?}");
                if let Some(line) = failure.line {
                    let lines = text.lines().count().max(1) + 1;
                    assert!(line >= 1 && line <= lines, "{path:?}: {failure:?}");
                }
            }
        }
        replayed += 1;
    }
    assert!(replayed > 0, "no input in {dir:?}");
}

/// The WebTransport keys: the address (`auto`, an address, `off`) and the endpoint's own.
#[test]
fn webtransport_keys() {
    use crate::gateway::webtransport::Listen;
    let file = FileConfig::parse(
        r#"
        webtransport = "127.0.0.1:4443"
        gateway_webtransport_cert = "cert.pem"
        gateway_webtransport_key = "key.pem"
        gateway_webtransport_max_streams = 5
        gateway_webtransport_max_delivery_streams = 6
        gateway_webtransport_delivery_idle_timeout = "7s"
        gateway_webtransport_max_connection_bytes = 8
        gateway_webtransport_answer_timeout = "9s"
        gateway_webtransport_handshake_timeout = "10s"
        gateway_webtransport_max_data_streams = 11
        gateway_webtransport_max_data_bytes = 12
        "#,
    )
    .unwrap();
    assert_eq!(
        file.daemon.webtransport,
        Some(Listen::At("127.0.0.1:4443".parse().unwrap()))
    );
    let wt = &file.webtransport;
    assert_eq!(wt.cert.as_deref(), Some(std::path::Path::new("cert.pem")));
    assert_eq!(wt.key.as_deref(), Some(std::path::Path::new("key.pem")));
    assert_eq!(
        (
            wt.max_streams,
            wt.max_delivery_streams,
            wt.max_connection_bytes
        ),
        (5, 6, 8)
    );
    assert_eq!(wt.delivery_idle_timeout, Duration::from_secs(7));
    assert_eq!(wt.answer_timeout, Duration::from_secs(9));
    assert_eq!(wt.handshake_timeout, Duration::from_secs(10));
    assert_eq!((wt.max_data_streams, wt.max_data_bytes), (11, 12));
    assert!(wt.validate().is_ok());
    let off = FileConfig::parse(r#"webtransport = "off""#).unwrap();
    assert_eq!(off.daemon.webtransport, None);
    let auto = FileConfig::parse(r#"webtransport = "auto""#).unwrap();
    assert_eq!(auto.daemon.webtransport, Some(Listen::Gateway));
    let failure = parse_error(r#"webtransport = "nowhere""#);
    assert_eq!(failure.key.as_deref(), Some("webtransport"));
    let failure = parse_error("gateway_webtransport_max_stream = 1");
    assert!(failure.message.contains("unknown key"), "{failure:?}");
    let half = FileConfig::parse(r#"gateway_webtransport_cert = "c.pem""#).unwrap();
    assert!(half.webtransport.validate().is_err());
    let zero = FileConfig::parse("gateway_webtransport_max_streams = 0").unwrap();
    assert!(zero.webtransport.validate().is_err());
}
