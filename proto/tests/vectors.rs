//! The test vectors of docs/PROTOCOL.md (Appendix B): every file in proto/vectors/ is read;
//! ferry's encoders must produce exactly its bytes, its decoders must read them back to the
//! same fields, and the invalid inputs must be refused with the stated error.
//!
//! The files are made by this test from fixed keys (32 bytes of one seed byte each), so they
//! are deterministic and stay in step with the code. After a deliberate change of the wire
//! format, rewrite them with `FERRY_WRITE_VECTORS=1 cargo test -p ferry-proto --test vectors`
//! and review the diff like any other change of the protocol.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use data_encoding::HEXLOWER;
use ed25519_dalek::Verifier as _;
use ferry_proto::address::{ADDRESS_CORE_LEN, ADDRESS_SIGNING_DOMAIN};
use ferry_proto::frame::{
    decode_frame, encode, get_varint, put_frame, put_varint, ConverseTarget, ErrorCode, Frame,
    Open, StreamKind, MAX_CONTROL_FRAME_LEN,
};
use ferry_proto::observe::{decode_observed, encode_observed};
use ferry_proto::punch::{decode_candidates, encode_candidates, MAX_OFFER_LEN};
use ferry_proto::receiver::{Incoming, Receiver, RunState};
use ferry_proto::relay::RelayDatagram;
use ferry_proto::sender::{Action, Loss, Sender, SenderConfig};
use ferry_proto::{Address, MailboxId, NodeId, SecretKey};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Files

/// Every vector file, with the test that checks it.
const FILES: [&str; 10] = [
    "node_ids.json",
    "varints.json",
    "addresses.json",
    "signatures.json",
    "frames.json",
    "relay.json",
    "builtins.json",
    "conversation.json",
    "capabilities.json",
    "README.md",
];

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// The file `name`, which must equal `generated` (what ferry's code produces); with
/// `FERRY_WRITE_VECTORS` set, `generated` is written to it first.
fn vector_file(name: &str, generated: Value) -> Value {
    let path = vectors_dir().join(name);
    let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
    if std::env::var_os("FERRY_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let file: Value = serde_json::from_str(&stored).unwrap();
    if file != generated {
        let ours = text.lines();
        let theirs = serde_json::to_string_pretty(&file).unwrap();
        let (line, (expected, found)) = ours
            .zip(theirs.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("(lengths differ)", "")));
        panic!(
            "{name} differs from what ferry produces, first at line {}:\n  ferry: {expected}\n  file:  {found}\n\
             (after a deliberate change: FERRY_WRITE_VECTORS=1 cargo test -p ferry-proto --test vectors)",
            line + 1
        );
    }
    file
}

#[test]
fn every_file_in_the_folder_is_checked() {
    let mut found: Vec<String> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    found.sort();
    let mut known: Vec<String> = FILES.iter().map(|name| name.to_string()).collect();
    known.sort();
    assert_eq!(found, known, "a file in proto/vectors/ that no test reads");
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn hex(bytes: &[u8]) -> String {
    HEXLOWER.encode(bytes)
}

fn unhex(text: &str) -> Vec<u8> {
    HEXLOWER.decode(text.as_bytes()).unwrap()
}

fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32])
}

fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

fn list<'a>(value: &'a Value, field: &str) -> &'a Vec<Value> {
    value[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

fn bytes_of(value: &Value, field: &str) -> Vec<u8> {
    unhex(str_of(value, field))
}

fn usize_of(value: &Value, field: &str) -> usize {
    value[field].as_u64().unwrap() as usize
}

fn encode_all(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        put_frame(&mut out, frame);
    }
    out
}

/// The JSON form of a frame's fields.
fn describe(frame: &Frame<'_>) -> Value {
    match frame {
        Frame::Open(open) => json!({
            "type": "OPEN",
            "target": hex(&open.target.core_bytes().unwrap()),
            "from": hex(&open.from.core_bytes().unwrap()),
            "epoch": format!("{:016x}", open.epoch),
            "first_seq": open.first_seq,
        }),
        Frame::Accept { max_message } => json!({"type": "ACCEPT", "max_message": max_message}),
        Frame::Message(payload) => json!({"type": "MESSAGE", "payload": hex(payload)}),
        Frame::Ack { next_seq } => json!({"type": "ACK", "next_seq": next_seq}),
        Frame::Close { code, reason } => json!({"type": "CLOSE", "code": code.0, "reason": reason}),
        Frame::Fail { code, reason } => json!({"type": "FAIL", "code": code.0, "reason": reason}),
        Frame::Converse(ConverseTarget::Address(address)) => json!({
            "type": "CONVERSE",
            "target_tag": 1,
            "address": hex(&address.core_bytes().unwrap()),
        }),
        Frame::Converse(ConverseTarget::Service(name)) => {
            json!({"type": "CONVERSE", "target_tag": 2, "service": name})
        }
        Frame::Lookup(name) => json!({"type": "LOOKUP", "service": name}),
        Frame::Found(address) => {
            json!({"type": "FOUND", "address": hex(&address.core_bytes().unwrap())})
        }
        Frame::Monitor(address) => {
            json!({"type": "MONITOR", "address": hex(&address.core_bytes().unwrap())})
        }
        Frame::Object(payload) => json!({"type": "OBJECT", "payload": hex(payload)}),
        Frame::Data(chunk) => json!({"type": "DATA", "chunk": hex(chunk)}),
        Frame::DataEnd => json!({"type": "DATA_END"}),
    }
}

/// The frames of one direction of a stream (after its kind byte, if `kind`), described.
fn describe_stream(bytes: &[u8], kind: bool, max_len: usize) -> Value {
    let mut out = Vec::new();
    let mut rest = bytes;
    if kind {
        let (&byte, tail) = rest.split_first().unwrap();
        let kind = StreamKind::from_byte(byte).unwrap();
        out.push(json!({"kind": format!("{kind:?}"), "byte": format!("{byte:02x}")}));
        rest = tail;
    }
    while !rest.is_empty() {
        let (frame, used) = decode_frame(rest, max_len).unwrap().unwrap();
        out.push(describe(&frame));
        rest = &rest[used..];
    }
    Value::Array(out)
}

/// The exact bytes an address signature covers (docs/PROTOCOL.md §4.4).
fn signed_message(node: &NodeId, mailbox: u64, expires: u64) -> Vec<u8> {
    let mut message = ADDRESS_SIGNING_DOMAIN.to_vec();
    message.extend_from_slice(node.as_bytes());
    message.extend_from_slice(&mailbox.to_be_bytes());
    message.extend_from_slice(&expires.to_be_bytes());
    message
}

fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    body
}

/// An address's bytes without its checksum, with `tail` appended and the checksum made again.
fn extended(address: &Address, tail: &[u8]) -> Vec<u8> {
    let mut bytes = address.to_bytes();
    bytes.truncate(bytes.len() - 4);
    bytes.extend_from_slice(tail);
    with_crc(bytes)
}

fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// The eight points of small order, canonically encoded (docs/PROTOCOL.md §3.3).
const SMALL_ORDER: [(&str, &str); 8] = [
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "order 1 (the identity)",
    ),
    (
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "order 2",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "order 4 (all zero)",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000080",
        "order 4",
    ),
    (
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "order 8",
    ),
    (
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "order 8",
    ),
    (
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "order 8",
    ),
    (
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "order 8",
    ),
];

/// Encodings that are not canonical curve points: (bytes, what they are).
fn non_canonical_points() -> Vec<([u8; 32], &'static str)> {
    let mut y_p = [0xff; 32];
    y_p[0] = 0xed;
    y_p[31] = 0x7f;
    let mut y_p1 = y_p;
    y_p1[0] = 0xee;
    let mut y_max = [0xff; 32];
    y_max[31] = 0x7f;
    let mut negative_identity = [0u8; 32];
    negative_identity[0] = 1;
    negative_identity[31] = 0x80;
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    vec![
        (y_p, "y = p (not reduced)"),
        (y_p1, "y = p + 1 (not reduced)"),
        (y_max, "y = 2^255 - 1 (not reduced)"),
        (negative_identity, "x = 0 with the sign bit set"),
        (not_a_point, "y = 2: no x exists (not a curve point)"),
    ]
}

fn hex32(text: &str) -> [u8; 32] {
    unhex(text).try_into().unwrap()
}

// ---------------------------------------------------------------------------------------------
// NodeIds (§3)

fn generate_node_ids() -> Value {
    let valid: Vec<Value> = [1u8, 2, 3]
        .iter()
        .map(|&seed| {
            let id = key(seed).public();
            json!({"seed": hex(&[seed; 32]), "node_id": hex(id.as_bytes()), "text": id.to_string()})
        })
        .collect();
    let text = key(1).public().to_string();
    let mut invalid_text = Vec::new();
    for (name, candidate) in [
        ("51 characters", text[..51].to_owned()),
        ("53 characters", format!("{text}a")),
        (
            "non-zero trailing bits in the last character",
            format!("{}b", &text[..51]),
        ),
        ("upper case", text.to_uppercase()),
        ("padding character", format!("{}=", &text[..51])),
        ("digit outside the alphabet", format!("1{}", &text[1..])),
    ] {
        let error = candidate.parse::<NodeId>().unwrap_err();
        invalid_text.push(json!({"name": name, "text": candidate, "error": format!("{error:?}")}));
    }
    let mut invalid_bytes = Vec::new();
    for (point, name) in SMALL_ORDER {
        let error = NodeId::from_bytes(&hex32(point)).unwrap_err();
        invalid_bytes.push(json!({"name": name, "hex": point, "error": format!("{error:?}")}));
    }
    for (point, name) in non_canonical_points() {
        let error = NodeId::from_bytes(&point).unwrap_err();
        invalid_bytes
            .push(json!({"name": name, "hex": hex(&point), "error": format!("{error:?}")}));
    }
    json!({
        "description": "NodeIds (docs/PROTOCOL.md §3): the public key of a fixed seed, its text form, and texts and byte strings that are not NodeIds with the error ferry reports (Length(n), Encoding, NotCanonical, Weak).",
        "valid": valid,
        "invalid_text": invalid_text,
        "invalid_bytes": invalid_bytes,
    })
}

#[test]
fn node_ids() {
    let file = vector_file("node_ids.json", generate_node_ids());
    for case in list(&file, "valid") {
        let seed: [u8; 32] = bytes_of(case, "seed").try_into().unwrap();
        let id = SecretKey::from_bytes(&seed).public();
        assert_eq!(hex(id.as_bytes()), str_of(case, "node_id"));
        let parsed: NodeId = str_of(case, "text").parse().unwrap();
        assert_eq!(parsed, id);
        let from_bytes = NodeId::from_bytes(&bytes_of(case, "node_id").try_into().unwrap());
        assert_eq!(from_bytes.unwrap().to_string(), str_of(case, "text"));
    }
    for case in list(&file, "invalid_text") {
        let error = str_of(case, "text").parse::<NodeId>().unwrap_err();
        assert_eq!(format!("{error:?}"), str_of(case, "error"), "{case}");
    }
    for case in list(&file, "invalid_bytes") {
        let bytes: [u8; 32] = bytes_of(case, "hex").try_into().unwrap();
        let error = NodeId::from_bytes(&bytes).unwrap_err();
        assert_eq!(format!("{error:?}"), str_of(case, "error"), "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// Varints (§5.2)

fn generate_varints() -> Value {
    let valid: Vec<Value> = [
        0u64,
        1,
        127,
        128,
        234,
        300,
        16_383,
        16_384,
        1_048_576,
        1 << 63,
        u64::MAX,
    ]
    .iter()
    .map(|&value| {
        let mut out = Vec::new();
        put_varint(&mut out, value);
        json!({"value": value.to_string(), "hex": hex(&out)})
    })
    .collect();
    let invalid: Vec<Value> = [
        ("8000", "0 in two bytes (not the shortest form)"),
        ("8100", "1 in two bytes"),
        ("ff00", "127 in two bytes"),
        ("80808080808080808000", "0 in ten bytes"),
        (
            "ffffffffffffffffff02",
            "a tenth byte above 1 (beyond 64 bits)",
        ),
        (
            "ffffffffffffffffff81",
            "a tenth byte with the continuation bit",
        ),
        ("8080808080808080808001", "eleven bytes"),
    ]
    .iter()
    .map(|(text, name)| {
        let error = get_varint(&unhex(text)).unwrap_err();
        json!({"name": name, "hex": text, "error": format!("{error:?}")})
    })
    .collect();
    let incomplete: Vec<Value> = ["", "80", "ffff", "ffffffffffffffffff"]
        .iter()
        .map(|text| {
            assert_eq!(get_varint(&unhex(text)), Ok(None));
            json!({"hex": text})
        })
        .collect();
    json!({
        "description": "Varints (docs/PROTOCOL.md §5.2): unsigned LEB128, shortest form only, at most 10 bytes. Values are decimal strings (they may exceed 2^53). Invalid encodings are errors; incomplete ones mean 'read more'.",
        "valid": valid,
        "invalid": invalid,
        "incomplete": incomplete,
    })
}

#[test]
fn varints() {
    let file = vector_file("varints.json", generate_varints());
    for case in list(&file, "valid") {
        let value: u64 = str_of(case, "value").parse().unwrap();
        let bytes = bytes_of(case, "hex");
        let mut out = Vec::new();
        put_varint(&mut out, value);
        assert_eq!(out, bytes);
        assert_eq!(get_varint(&bytes), Ok(Some((value, bytes.len()))));
    }
    for case in list(&file, "invalid") {
        let error = get_varint(&bytes_of(case, "hex")).unwrap_err();
        assert_eq!(format!("{error:?}"), str_of(case, "error"));
    }
    for case in list(&file, "incomplete") {
        assert_eq!(get_varint(&bytes_of(case, "hex")), Ok(None));
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses (§4)

/// The JSON form of an address, from its parsed fields (`seed`: the key that minted it).
fn describe_address(name: &str, seed: u8, address: &Address) -> Value {
    let expires = address.expires().unwrap_or(0);
    json!({
        "name": name,
        "seed": hex(&[seed; 32]),
        "node_id": address.node().to_string(),
        "mailbox_id": address.mailbox().to_string(),
        "expires": expires.to_string(),
        "hints": address.hints().iter().map(|hint| hint.to_string()).collect::<Vec<_>>(),
        "extension_hints": address
            .extension_hints()
            .iter()
            .map(|(tag, value)| json!({"tag": format!("{tag:02x}"), "value": hex(value)}))
            .collect::<Vec<_>>(),
        "relays": address
            .relays()
            .iter()
            .map(|(node, addr)| json!({"node_id": node.to_string(), "addr": addr.to_string()}))
            .collect::<Vec<_>>(),
        "signed_message": hex(&signed_message(&address.node(), address.mailbox().0, expires)),
        "signature": hex(address.signature().unwrap()),
        "core": hex(&address.core_bytes().unwrap()),
        "bytes": hex(&address.to_bytes()),
        "text": address.to_string(),
    })
}

/// The §4.10 address: key seed 1, mailbox 7, no expiry, no hints.
fn plain() -> Address {
    Address::mint(&key(1), MailboxId(7), None, vec![])
}

/// The second address of the examples: key seed 2, mailbox 0x0102030405060708.
fn second() -> Address {
    Address::mint(&key(2), MailboxId(0x0102_0304_0506_0708), None, vec![])
}

fn valid_addresses() -> Vec<(&'static str, u8, Address)> {
    let v4 = sock("192.0.2.1:4433");
    let v6 = sock("[2001:db8::1]:4433");
    let relay = key(3).public();
    let unknown_extension = Address::from_bytes(&extended(
        &plain().with_hints(vec![v4]),
        &[0x52, 3, 0xaa, 0xbb, 0xcc],
    ))
    .unwrap();
    let mut longest = plain().to_bytes();
    longest.truncate(112);
    for _ in 0..4 {
        longest.extend_from_slice(&[0x77, 64]);
        longest.extend_from_slice(&[0xab; 64]);
    }
    let longest = Address::from_bytes(&with_crc(longest)).unwrap();
    vec![
        ("no hints", 1, plain()),
        (
            "an IPv4 and an IPv6 hint",
            1,
            Address::mint(&key(1), MailboxId(7), None, vec![v4, v6]),
        ),
        (
            "an IPv4 hint and an IPv4-mapped IPv6 hint (different hints)",
            1,
            Address::mint(
                &key(1),
                MailboxId(7),
                None,
                vec![v4, sock("[::ffff:192.0.2.1]:4433")],
            ),
        ),
        (
            "an IPv4 hint and a 0x52 extension hint of 3 bytes (a malformed relay hint: kept, ignored)",
            1,
            unknown_extension,
        ),
        (
            "expires 1900000000",
            1,
            Address::mint(&key(1), MailboxId(7), Some(1_900_000_000), vec![]),
        ),
        ("the second example address", 2, second()),
        (
            "largest mailbox id and expiry",
            2,
            Address::mint(&key(2), MailboxId(u64::MAX), Some(u64::MAX), vec![]),
        ),
        (
            "an IPv4 hint and a relay hint (relay seed 3 at 203.0.113.5:4433)",
            1,
            Address::mint(&key(1), MailboxId(7), None, vec![v4])
                .with_relay(relay, sock("203.0.113.5:4433")),
        ),
        (
            "four hints: three socket addresses and an IPv6 relay hint",
            1,
            Address::mint(
                &key(1),
                MailboxId(7),
                None,
                vec![v4, v6, sock("198.51.100.2:9")],
            )
            .with_relay(relay, sock("[2001:db8::3]:4433")),
        ),
        (
            "the longest address: four 64-byte extension hints (380 bytes, 513 characters)",
            1,
            longest,
        ),
    ]
}

fn invalid_address_texts() -> Vec<(&'static str, String)> {
    let text = plain().to_string();
    let body = &text[6..];
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = text.chars().last().unwrap();
    let position = alphabet.find(last).unwrap();
    let sibling = alphabet.as_bytes()[position ^ 1] as char;
    let middle = text.as_bytes()[80] as char;
    let other = if middle == 'A' { 'B' } else { 'A' };
    vec![
        ("empty", String::new()),
        ("the prefix alone", "ferry1".to_owned()),
        ("another version", format!("ferry3{body}")),
        (
            "a ferry1 body under the ferry2 prefix",
            format!("ferry2{body}"),
        ),
        ("upper-case prefix", format!("FERRY1{body}")),
        ("one character short", text[..text.len() - 1].to_owned()),
        (
            "non-zero trailing bits",
            format!("{}{sibling}", &text[..text.len() - 1]),
        ),
        ("padding", format!("{text}=")),
        ("a space at the end", format!("{text} ")),
        (
            "standard base64 '+'",
            format!("{}+{}", &text[..80], &text[81..]),
        ),
        (
            "one character changed",
            format!("{}{other}{}", &text[..80], &text[81..]),
        ),
    ]
}

fn invalid_address_bytes() -> Vec<(&'static str, Vec<u8>)> {
    let bytes = plain().to_bytes();
    let core = plain().core_bytes().unwrap();
    let with_core = |f: &dyn Fn(&mut [u8; ADDRESS_CORE_LEN])| {
        let mut core = core;
        f(&mut core);
        with_crc(core.to_vec())
    };
    let mut bad_crc = bytes.clone();
    bad_crc[115] ^= 1;
    let ext = |len: u8| {
        let mut out = vec![0x77, len];
        out.extend(std::iter::repeat_n(0xab, usize::from(len)));
        out
    };
    let v4 = [0x04, 192, 0, 2, 1, 0x11, 0x51];
    vec![
        ("115 bytes", bytes[..115].to_vec()),
        ("381 bytes", vec![0; 381]),
        ("checksum", bad_crc),
        (
            "weak node id (all zero)",
            with_core(&|core| core[..32].fill(0)),
        ),
        (
            "non-canonical node id (y = p)",
            with_core(&|core| core[..32].copy_from_slice(&non_canonical_points()[0].0)),
        ),
        (
            "top bit of the signature's last byte",
            with_core(&|core| core[111] |= 0x80),
        ),
        (
            "socket-address hint after an extension hint",
            extended(&plain(), &[ext(0), v4.to_vec()].concat()),
        ),
        (
            "five hints",
            extended(&plain(), &[ext(0), ext(0), ext(0), ext(0), ext(0)].concat()),
        ),
        (
            "the same hint twice",
            extended(&plain(), &[v4, v4].concat()),
        ),
        (
            "truncated IPv4 hint",
            extended(&plain(), &[0x04, 192, 0, 2, 1, 0x11]),
        ),
        ("extension hint of 65 bytes", extended(&plain(), &ext(65))),
        (
            "extension length beyond the checksum",
            extended(&plain(), &[0x77, 5, 0xaa]),
        ),
    ]
}

fn generate_addresses() -> Value {
    let valid: Vec<Value> = valid_addresses()
        .iter()
        .map(|(name, seed, address)| describe_address(name, *seed, address))
        .collect();
    let invalid_text: Vec<Value> = invalid_address_texts()
        .into_iter()
        .map(|(name, text)| {
            let error = text.parse::<Address>().unwrap_err();
            json!({"name": name, "text": text, "error": format!("{error:?}")})
        })
        .collect();
    let invalid_bytes: Vec<Value> = invalid_address_bytes()
        .into_iter()
        .map(|(name, bytes)| {
            let error = Address::from_bytes(&bytes).unwrap_err();
            json!({"name": name, "hex": hex(&bytes), "error": format!("{error:?}")})
        })
        .collect();
    json!({
        "description": "Capability addresses (docs/PROTOCOL.md §4): minted from fixed keys (seed: 32 bytes of one value). mailbox_id is 16 hex digits, expires a decimal string (0 = never). bytes is the binary form (core, hints, CRC-32), text the text form; every valid address parses back to the same fields and its signature verifies. Invalid texts and byte strings carry the parser's error (§4.8).",
        "valid": valid,
        "invalid_text": invalid_text,
        "invalid_bytes": invalid_bytes,
    })
}

#[test]
fn addresses() {
    let file = vector_file("addresses.json", generate_addresses());
    for case in list(&file, "valid") {
        let seed = bytes_of(case, "seed")[0];
        let from_bytes = Address::from_bytes(&bytes_of(case, "bytes")).unwrap();
        let from_text: Address = str_of(case, "text").parse().unwrap();
        assert_eq!(from_bytes, from_text);
        assert_eq!(
            describe_address(str_of(case, "name"), seed, &from_bytes),
            *case
        );
        assert_eq!(from_bytes.verify_signature(), Ok(()));
        assert_eq!(from_bytes.node(), key(seed).public());
        // The core alone (as frames carry it) parses to the address without hints.
        let core: [u8; ADDRESS_CORE_LEN] = bytes_of(case, "core").try_into().unwrap();
        assert_eq!(
            Address::from_core_bytes(&core).unwrap(),
            from_bytes.without_hints()
        );
        // Minting again from the fields gives the same signature (ed25519 is deterministic).
        let expires: u64 = str_of(case, "expires").parse().unwrap();
        let minted = Address::mint(
            &key(seed),
            from_bytes.mailbox(),
            (expires != 0).then_some(expires),
            vec![],
        );
        assert_eq!(hex(minted.signature().unwrap()), str_of(case, "signature"));
    }
    for case in list(&file, "invalid_text") {
        let error = str_of(case, "text").parse::<Address>().unwrap_err();
        assert_eq!(format!("{error:?}"), str_of(case, "error"), "{case}");
    }
    for case in list(&file, "invalid_bytes") {
        let error = Address::from_bytes(&bytes_of(case, "hex")).unwrap_err();
        assert_eq!(format!("{error:?}"), str_of(case, "error"), "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// Strict signatures (§4.5)

#[path = "support/scalar.rs"]
mod scalar;
use scalar::{limbs_to_bytes, small_order_r_signature, ELL};

/// S + ℓ: the same scalar, not reduced.
fn unreduced(signature: &[u8; 64]) -> [u8; 64] {
    let mut s = [0u64; 4];
    for (limb, chunk) in s.iter_mut().zip(signature[32..].chunks(8)) {
        *limb = u64::from_le_bytes(chunk.try_into().unwrap());
    }
    let mut carry = false;
    for (limb, ell) in s.iter_mut().zip(ELL) {
        let (sum, c1) = limb.overflowing_add(ell);
        let (sum, c2) = sum.overflowing_add(u64::from(carry));
        *limb = sum;
        carry = c1 || c2;
    }
    let mut out = *signature;
    out[32..].copy_from_slice(&limbs_to_bytes(&s));
    out
}

/// The edge cases: (name, core). Most are the §4.10 address with one thing changed.
fn signature_cases() -> Vec<(String, [u8; ADDRESS_CORE_LEN])> {
    let address = plain();
    let core = address.core_bytes().unwrap();
    let signature = *address.signature().unwrap();
    let with_signature = |signature: &[u8; 64]| {
        let mut core = core;
        core[48..].copy_from_slice(signature);
        core
    };
    let with_node = |node: &[u8; 32]| {
        let mut core = core;
        core[..32].copy_from_slice(node);
        core
    };
    let mut cases = vec![("genuine".to_owned(), core)];
    let expiring = Address::mint(&key(1), MailboxId(7), Some(1_900_000_000), vec![]);
    cases.push((
        "genuine, expires 1900000000".to_owned(),
        expiring.core_bytes().unwrap(),
    ));
    for (point, what) in SMALL_ORDER {
        cases.push((
            format!("node id of small order: {what}"),
            with_node(&hex32(point)),
        ));
    }
    for (point, what) in non_canonical_points() {
        cases.push((format!("node id not canonical: {what}"), with_node(&point)));
    }
    let message = signed_message(&address.node(), 7, 0);
    cases.push((
        "R = identity (small order), S = k·a: passes a lax cofactorless verify, not verify_strict"
            .to_owned(),
        with_signature(&small_order_r_signature(1, &message)),
    ));
    let message = signed_message(&address.node(), 7, 1_900_000_000);
    let mut lax = expiring.core_bytes().unwrap();
    lax[48..].copy_from_slice(&small_order_r_signature(1, &message));
    cases.push((
        "R = identity, S = k·a, expires 1900000000: passes a lax verify, not verify_strict"
            .to_owned(),
        lax,
    ));
    for (point, what) in SMALL_ORDER {
        let mut bad = signature;
        bad[..32].copy_from_slice(&hex32(point));
        cases.push((
            format!("R of small order ({what}), genuine S"),
            with_signature(&bad),
        ));
    }
    let mut bad = signature;
    bad[..32].copy_from_slice(&non_canonical_points()[0].0);
    cases.push((
        "R not canonical (y = p), genuine S".to_owned(),
        with_signature(&bad),
    ));
    let plus_ell = unreduced(&signature);
    cases.push((
        "S + ℓ (the same scalar, not reduced)".to_owned(),
        with_signature(&plus_ell),
    ));
    let mut bad = signature;
    bad[32..].copy_from_slice(&limbs_to_bytes(&ELL));
    cases.push(("S = ℓ".to_owned(), with_signature(&bad)));
    let mut bad = signature;
    bad[32..].fill(0xff);
    bad[63] = 0x1f;
    cases.push((
        "S = 2^253 - 1 (top three bits clear)".to_owned(),
        with_signature(&bad),
    ));
    for bit in [0x20u8, 0x40, 0x80] {
        let mut bad = signature;
        bad[63] |= bit;
        cases.push((
            format!("S with bit {bit:#04x} of its last byte set"),
            with_signature(&bad),
        ));
    }
    cases.push(("all-zero signature".to_owned(), with_signature(&[0; 64])));
    let body = &message_of(&core)[16..];
    cases.push((
        "signed without the label".to_owned(),
        with_signature(&dalek_sign(1, body)),
    ));
    let mut relabelled = message_of(&core);
    relabelled[..16].copy_from_slice(b"ferry/address/v2");
    cases.push((
        "signed with the label ferry/address/v2".to_owned(),
        with_signature(&dalek_sign(1, &relabelled)),
    ));
    let other = Address::mint(&key(2), MailboxId(7), None, vec![]);
    cases.push((
        "another node's genuine signature of the same mailbox".to_owned(),
        with_signature(other.signature().unwrap()),
    ));
    cases
}

/// An ed25519 signature by the key of `seed` over any message.
fn dalek_sign(seed: u8, message: &[u8]) -> [u8; 64] {
    use ed25519_dalek::Signer as _;
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .sign(message)
        .to_bytes()
}

/// The signed message of a core (whatever its signature).
fn message_of(core: &[u8; ADDRESS_CORE_LEN]) -> Vec<u8> {
    let mut message = ADDRESS_SIGNING_DOMAIN.to_vec();
    message.extend_from_slice(&core[..48]);
    message
}

/// What each check says about a core: the parser (§4.8 steps 6–7), ferry's strict
/// verification (§4.5), and a lax cofactorless `verify` for contrast.
fn judge(core: &[u8; ADDRESS_CORE_LEN]) -> Value {
    let parse = match Address::from_bytes(&with_crc(core.to_vec())) {
        Ok(address) => {
            assert_eq!(Address::from_core_bytes(core).unwrap(), address);
            Ok(address)
        }
        Err(error) => {
            assert_eq!(Address::from_core_bytes(core), Err(error.clone()));
            Err(format!("{error:?}"))
        }
    };
    let signature = ed25519_dalek::Signature::from_bytes(&core[48..].try_into().unwrap());
    let lax = match ed25519_dalek::VerifyingKey::from_bytes(&core[..32].try_into().unwrap()) {
        Ok(key) => match key.verify(&message_of(core), &signature) {
            Ok(()) => "ok",
            Err(_) => "fails",
        },
        Err(_) => "not a point",
    };
    match parse {
        Ok(address) => json!({
            "parse": "ok",
            "verify_strict": match address.verify_signature() {
                Ok(()) => "ok".to_owned(),
                Err(error) => format!("{error:?}"),
            },
            "lax_verify": lax,
        }),
        Err(error) => json!({"parse": error, "lax_verify": lax}),
    }
}

fn generate_signatures() -> Value {
    let cases: Vec<Value> = signature_cases()
        .iter()
        .map(|(name, core)| {
            json!({
                "name": name,
                "core": hex(core),
                "signed_message": hex(&message_of(core)),
                "bytes": hex(&with_crc(core.to_vec())),
                "expect": judge(core),
            })
        })
        .collect();
    json!({
        "description": "Strict signature checks (docs/PROTOCOL.md §3.3, §4.5, §4.8): address cores (and the same with a CRC-32, as binary addresses) that a compatible implementation must judge exactly as ferry does. expect.parse is ok or the parser's error; expect.verify_strict is ferry's verdict (ok or Forged); expect.lax_verify is what a lax cofactorless verifier (ed25519-dalek's verify) says, for contrast: cases where it says ok but verify_strict says Forged are signatures a compatible verifier MUST refuse.",
        "cases": cases,
    })
}

#[test]
fn signatures() {
    let file = vector_file("signatures.json", generate_signatures());
    let mut lax_only = 0;
    for case in list(&file, "cases") {
        let core: [u8; ADDRESS_CORE_LEN] = bytes_of(case, "core").try_into().unwrap();
        assert_eq!(bytes_of(case, "bytes"), with_crc(core.to_vec()));
        assert_eq!(hex(&message_of(&core)), str_of(case, "signed_message"));
        assert_eq!(judge(&core), case["expect"], "{}", str_of(case, "name"));
        if case["expect"]["lax_verify"] == "ok" && case["expect"]["verify_strict"] == "Forged" {
            lax_only += 1;
        }
    }
    assert_eq!(lax_only, 2, "the signatures only a lax verifier accepts");
}

// ---------------------------------------------------------------------------------------------
// Frames (§5, §10.2, §11.1)

/// The bound a receiver applies to message-like frames with the default max_message_size.
const MESSAGE_BOUND: usize = 1_048_576 + 1;

fn open(first_seq: u64) -> Frame<'static> {
    Frame::Open(Box::new(Open {
        target: plain().without_hints(),
        from: second(),
        epoch: 0x0011_2233_4455_6677,
        first_seq,
    }))
}

fn valid_frames() -> Vec<(&'static str, Frame<'static>, usize)> {
    let control = MAX_CONTROL_FRAME_LEN;
    let longest_reason: &'static str = Box::leak("x".repeat(256).into_boxed_str());
    vec![
        ("OPEN, first_seq 0", open(0), control),
        ("OPEN, first_seq 300", open(300), control),
        ("OPEN, the longest first_seq", open(u64::MAX), control),
        (
            "ACCEPT, 1 MiB",
            Frame::Accept {
                max_message: 1_048_576,
            },
            control,
        ),
        (
            "ACCEPT, 10 (ferry.ping)",
            Frame::Accept { max_message: 10 },
            control,
        ),
        (
            "ACCEPT, 153 (ferry.punch)",
            Frame::Accept { max_message: 153 },
            control,
        ),
        (
            "ACCEPT, 0 (ferry.observe)",
            Frame::Accept { max_message: 0 },
            control,
        ),
        (
            "MESSAGE, the postcard string \"hello\"",
            Frame::Message(b"\x05hello"),
            MESSAGE_BOUND,
        ),
        (
            "MESSAGE, raw bytes \"hi\\n\" (what `echo hi | ferry send` sends)",
            Frame::Message(b"hi\n"),
            MESSAGE_BOUND,
        ),
        ("MESSAGE, empty", Frame::Message(b""), MESSAGE_BOUND),
        ("ACK 1", Frame::Ack { next_seq: 1 }, control),
        ("ACK 300", Frame::Ack { next_seq: 300 }, control),
        (
            "CLOSE 1 NO_SUCH_MAILBOX",
            Frame::Close {
                code: ErrorCode::NO_SUCH_MAILBOX,
                reason: "mailbox closed",
            },
            control,
        ),
        (
            "CLOSE 0, empty reason",
            Frame::Close {
                code: ErrorCode::DONE,
                reason: "",
            },
            control,
        ),
        (
            "CLOSE 7 SHUTTING_DOWN",
            Frame::Close {
                code: ErrorCode::SHUTTING_DOWN,
                reason: "node shutting down",
            },
            control,
        ),
        (
            "CLOSE 12 NO_SUCH_SERVICE",
            Frame::Close {
                code: ErrorCode::NO_SUCH_SERVICE,
                reason: "no service \"echo\"",
            },
            control,
        ),
        (
            "CLOSE, the longest (10-byte code, 256-byte reason)",
            Frame::Close {
                code: ErrorCode(u64::MAX),
                reason: longest_reason,
            },
            control,
        ),
        (
            "CONVERSE by name \"echo\"",
            Frame::Converse(ConverseTarget::Service("echo")),
            control,
        ),
        (
            "CONVERSE by name \"ferry.ping\"",
            Frame::Converse(ConverseTarget::Service("ferry.ping")),
            control,
        ),
        (
            "CONVERSE by address",
            Frame::Converse(ConverseTarget::Address(Box::new(plain()))),
            control,
        ),
        ("LOOKUP \"echo\"", Frame::Lookup("echo"), control),
        ("FOUND", Frame::Found(Box::new(second())), control),
        ("MONITOR", Frame::Monitor(Box::new(plain())), control),
        (
            "OBJECT, the postcard string \"hello\"",
            Frame::Object(b"\x05hello"),
            MESSAGE_BOUND,
        ),
        (
            "OBJECT, the postcard tuple (1u32, 2u32)",
            Frame::Object(&[1, 2]),
            MESSAGE_BOUND,
        ),
        (
            "OBJECT, empty (postcard ())",
            Frame::Object(b""),
            MESSAGE_BOUND,
        ),
        ("DATA \"abc\"", Frame::Data(b"abc"), MESSAGE_BOUND),
        (
            "DATA, empty (readers accept it; ferry never sends it)",
            Frame::Data(b""),
            MESSAGE_BOUND,
        ),
        ("DATA_END", Frame::DataEnd, control),
        (
            "FAIL 15 HANDLER_FAILED",
            Frame::Fail {
                code: ErrorCode::HANDLER_FAILED,
                reason: "boom",
            },
            control,
        ),
    ]
}

fn invalid_frames() -> Vec<(&'static str, Vec<u8>, usize)> {
    let control = MAX_CONTROL_FRAME_LEN;
    let open0 = encode(&open(0));
    let with_fields = |kind: u8, fields: &[u8]| {
        let mut out = Vec::new();
        put_varint(&mut out, fields.len() as u64 + 1);
        out.push(kind);
        out.extend_from_slice(fields);
        out
    };
    let open_fields = &open0[3..];
    let mut weak_target = open_fields.to_vec();
    weak_target[..32].fill(0);
    let mut bad_from_signature = open_fields.to_vec();
    bad_from_signature[112 + 111] |= 0x20;
    let core = plain().core_bytes().unwrap();
    let mut weak_core = core;
    weak_core[..32].fill(0);
    let mut top_bits = core;
    top_bits[111] |= 0x80;
    let long_reason = [&[0x01][..], &[b'x'; 257]].concat();
    vec![
        ("length 0", vec![0x00], control),
        (
            "length not in its shortest form",
            vec![0x80, 0x00, 0x04, 0x01],
            control,
        ),
        (
            "length 300 above the bound 267 (refused before buffering)",
            vec![0xac, 0x02],
            control,
        ),
        (
            "length of 4 GiB",
            vec![0x80, 0x80, 0x80, 0x80, 0x10],
            MESSAGE_BOUND,
        ),
        ("unknown type 0x00", vec![0x01, 0x00], control),
        ("unknown type 0x06", vec![0x01, 0x06], control),
        ("unknown type 0x0f", vec![0x01, 0x0f], control),
        ("unknown type 0x1b", vec![0x01, 0x1b], control),
        ("unknown type 0xff", vec![0x01, 0xff], control),
        ("ACCEPT without its varint", vec![0x01, 0x02], control),
        (
            "ACCEPT with a trailing byte",
            vec![0x03, 0x02, 0x0a, 0x00],
            control,
        ),
        (
            "ACCEPT with a varint not in its shortest form",
            vec![0x03, 0x02, 0x80, 0x00],
            control,
        ),
        (
            "ACK with a trailing byte",
            vec![0x03, 0x04, 0x01, 0x00],
            control,
        ),
        (
            "OPEN without first_seq",
            with_fields(0x01, &open_fields[..232]),
            control,
        ),
        (
            "OPEN with a byte after first_seq",
            with_fields(0x01, &[open_fields, &[0x00]].concat()),
            control,
        ),
        (
            "OPEN whose target has a weak node id",
            with_fields(0x01, &weak_target),
            control,
        ),
        (
            "OPEN whose from signature has a top bit set",
            with_fields(0x01, &bad_from_signature),
            control,
        ),
        ("CLOSE without a code", vec![0x01, 0x05], control),
        (
            "CLOSE with a reason of 257 bytes",
            with_fields(0x05, &long_reason),
            300,
        ),
        (
            "CLOSE with a reason that is not UTF-8",
            vec![0x04, 0x05, 0x01, 0xff, 0xfe],
            control,
        ),
        (
            "FAIL with a reason that is not UTF-8",
            vec![0x03, 0x16, 0x0f, 0xc3],
            control,
        ),
        ("CONVERSE without a target tag", vec![0x01, 0x10], control),
        (
            "CONVERSE with target tag 0x03",
            vec![0x03, 0x10, 0x03, b'a'],
            control,
        ),
        ("CONVERSE by name, empty", vec![0x02, 0x10, 0x02], control),
        (
            "CONVERSE by name with a space",
            with_fields(0x10, b"\x02echo v1"),
            control,
        ),
        (
            "CONVERSE by name of 65 bytes",
            with_fields(0x10, &[&[0x02][..], &[b'a'; 65]].concat()),
            control,
        ),
        (
            "CONVERSE by address of 111 bytes",
            with_fields(0x10, &[&[0x01][..], &core[..111]].concat()),
            control,
        ),
        (
            "CONVERSE by address with a weak node id",
            with_fields(0x10, &[&[0x01][..], &weak_core[..]].concat()),
            control,
        ),
        (
            "LOOKUP of a name that is not ASCII",
            with_fields(0x11, "é".as_bytes()),
            control,
        ),
        (
            "FOUND with a byte after the core",
            with_fields(0x12, &[&core[..], &[0x00]].concat()),
            control,
        ),
        (
            "MONITOR with a signature top bit set",
            with_fields(0x17, &top_bits),
            control,
        ),
        (
            "DATA_END with a field byte",
            vec![0x02, 0x15, 0x00],
            control,
        ),
    ]
}

fn generate_frames() -> Value {
    let kinds: Vec<Value> = [0x00u8, 0x01, 0x02, 0x03, 0x04, 0xff]
        .iter()
        .map(|&byte| match StreamKind::from_byte(byte) {
            Ok(kind) => json!({"byte": format!("{byte:02x}"), "kind": format!("{kind:?}")}),
            Err(error) => json!({"byte": format!("{byte:02x}"), "error": format!("{error:?}")}),
        })
        .collect();
    let valid: Vec<Value> = valid_frames()
        .iter()
        .map(|(name, frame, max_len)| {
            json!({"name": name, "frame": describe(frame), "hex": hex(&encode(frame)), "max_len": max_len})
        })
        .collect();
    let invalid: Vec<Value> = invalid_frames()
        .into_iter()
        .map(|(name, bytes, max_len)| {
            let error = decode_frame(&bytes, max_len).unwrap_err();
            json!({"name": name, "hex": hex(&bytes), "max_len": max_len, "error": format!("{error:?}")})
        })
        .collect();
    json!({
        "description": "Frames (docs/PROTOCOL.md §5.3, §5.4, §10.2, §11.1): each valid frame with its fields and its bytes (length varint, type, fields), decoded with the length bound max_len (267 for control frames, max_message + 1 for MESSAGE, OBJECT and DATA); address fields are 112-byte cores in hex, epoch 16 hex digits. Invalid byte strings carry ferry's decoding error; every one of them is answered CLOSE PROTOCOL (or TOO_LARGE for an oversized MESSAGE) by an acceptor. stream_kinds: the first byte of a stream.",
        "stream_kinds": kinds,
        "valid": valid,
        "invalid": invalid,
    })
}

#[test]
fn frames() {
    let file = vector_file("frames.json", generate_frames());
    for case in list(&file, "stream_kinds") {
        let byte = bytes_of(case, "byte")[0];
        match StreamKind::from_byte(byte) {
            Ok(kind) => assert_eq!(format!("{kind:?}"), str_of(case, "kind")),
            Err(error) => assert_eq!(format!("{error:?}"), str_of(case, "error")),
        }
    }
    for case in list(&file, "valid") {
        let bytes = bytes_of(case, "hex");
        let (frame, used) = decode_frame(&bytes, usize_of(case, "max_len"))
            .unwrap()
            .unwrap();
        assert_eq!(used, bytes.len(), "{}", str_of(case, "name"));
        assert_eq!(describe(&frame), case["frame"]);
        assert_eq!(encode(&frame), bytes);
        // Every prefix is incomplete, never an error.
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame(&bytes[..cut], usize_of(case, "max_len")),
                Ok(None)
            );
        }
    }
    for case in list(&file, "invalid") {
        let error = decode_frame(&bytes_of(case, "hex"), usize_of(case, "max_len")).unwrap_err();
        assert_eq!(
            format!("{error:?}"),
            str_of(case, "error"),
            "{}",
            str_of(case, "name")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Relay datagrams (§12.1)

fn generate_relay() -> Value {
    let datagrams = [
        (
            "FORWARD to node seed 3, packet c0ffee",
            RelayDatagram::Forward {
                destination: key(3).public(),
                packet: Bytes::from_static(&[0xc0, 0xff, 0xee]),
            },
        ),
        (
            "FORWARDED from node seed 1, empty packet",
            RelayDatagram::Forwarded {
                origin: key(1).public(),
                packet: Bytes::new(),
            },
        ),
    ];
    let valid: Vec<Value> = datagrams
        .iter()
        .map(|(name, datagram)| {
            let (kind, node, packet) = match datagram {
                RelayDatagram::Forward {
                    destination,
                    packet,
                } => ("FORWARD", destination, packet),
                RelayDatagram::Forwarded { origin, packet } => ("FORWARDED", origin, packet),
            };
            json!({
                "name": name,
                "type": kind,
                "node_id": node.to_string(),
                "packet": hex(packet),
                "hex": hex(&datagram.encode()),
            })
        })
        .collect();
    let mut weak = vec![0x01];
    weak.extend_from_slice(&[0; 32]);
    let mut unknown = vec![0x03];
    unknown.extend_from_slice(key(1).public().as_bytes());
    let invalid: Vec<Value> = [
        ("empty", vec![]),
        (
            "the 1-byte path probe 00 (ignored by every peer)",
            vec![0x00],
        ),
        ("32 bytes", vec![0x01; 32]),
        ("type 0x03", unknown),
        ("a weak node id", weak),
    ]
    .into_iter()
    .map(|(name, bytes)| {
        let error = RelayDatagram::decode(Bytes::from(bytes.clone())).unwrap_err();
        json!({"name": name, "hex": hex(&bytes), "error": format!("{error:?}")})
    })
    .collect();
    json!({
        "description": "Relay datagrams (docs/PROTOCOL.md §12.1): the QUIC DATAGRAM payloads of a ferry/1 connection. Invalid ones are ignored by the receiver (the error is ferry's reason).",
        "valid": valid,
        "invalid": invalid,
    })
}

#[test]
fn relay() {
    let file = vector_file("relay.json", generate_relay());
    for case in list(&file, "valid") {
        let bytes = bytes_of(case, "hex");
        let datagram = RelayDatagram::decode(Bytes::from(bytes.clone())).unwrap();
        let node: NodeId = str_of(case, "node_id").parse().unwrap();
        let packet = Bytes::from(bytes_of(case, "packet"));
        let expected = match str_of(case, "type") {
            "FORWARD" => RelayDatagram::Forward {
                destination: node,
                packet,
            },
            _ => RelayDatagram::Forwarded {
                origin: node,
                packet,
            },
        };
        assert_eq!(datagram, expected);
        assert_eq!(datagram.encode().to_vec(), bytes);
    }
    for case in list(&file, "invalid") {
        let error = RelayDatagram::decode(Bytes::from(bytes_of(case, "hex"))).unwrap_err();
        assert_eq!(format!("{error:?}"), str_of(case, "error"));
    }
}

// ---------------------------------------------------------------------------------------------
// Built-in services (§10.11–§10.13)

/// One exchange: what the opener writes (kind byte and frames, then FIN) and what the acceptor
/// answers (frames, then FIN).
fn exchange(name: &str, opener: &[u8], acceptor: &[u8], note: &str) -> Value {
    json!({
        "name": name,
        "note": note,
        "opener": hex(opener),
        "opener_frames": describe_stream(opener, true, MESSAGE_BOUND),
        "acceptor": hex(acceptor),
        "acceptor_frames": describe_stream(acceptor, false, MESSAGE_BOUND),
    })
}

fn ping_opener(nonce: u64, with_accept: bool) -> Vec<u8> {
    let mut payload = Vec::new();
    put_varint(&mut payload, nonce);
    let mut out = vec![StreamKind::Conversation as u8];
    put_frame(
        &mut out,
        &Frame::Converse(ConverseTarget::Service("ferry.ping")),
    );
    if with_accept {
        put_frame(
            &mut out,
            &Frame::Accept {
                max_message: 1_048_576,
            },
        );
    }
    put_frame(&mut out, &Frame::Object(&payload));
    out
}

fn ping_answer(nonce: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    put_varint(&mut payload, nonce);
    encode_all(&[Frame::Accept { max_message: 10 }, Frame::Object(&payload)])
}

fn builtin_opener(service: &str, object: Option<&[u8]>) -> Vec<u8> {
    let mut out = vec![StreamKind::Conversation as u8];
    put_frame(&mut out, &Frame::Converse(ConverseTarget::Service(service)));
    if let Some(object) = object {
        put_frame(&mut out, &Frame::Object(object));
    }
    out
}

fn generate_builtins() -> Value {
    let ping = vec![
        exchange(
            "ping, request 300, in one write",
            &ping_opener(300, false),
            &ping_answer(300),
            "the opener writes CONVERSE and its OBJECT without waiting for the ACCEPT, then FIN",
        ),
        exchange(
            "ping, request 300, as a call (the opener's ACCEPT after CONVERSE)",
            &ping_opener(300, true),
            &ping_answer(300),
            "the same exchange opened like any conversation: the acceptor takes the optional ACCEPT",
        ),
        exchange(
            "ping, the largest request (u64::MAX, 10 bytes)",
            &ping_opener(u64::MAX, false),
            &ping_answer(u64::MAX),
            "",
        ),
        exchange(
            "ping to a node without the built-in",
            &ping_opener(300, false),
            &encode(&Frame::Close {
                code: ErrorCode::NO_SUCH_SERVICE,
                reason: "no service \"ferry.ping\"",
            }),
            "the pinger reports Unsupported",
        ),
    ];
    let observe_opener = builtin_opener("ferry.observe", None);
    let mut observe: Vec<Value> = [
        ("192.0.2.7:4433", "an IPv4 peer"),
        ("[2001:db8::7]:4433", "an IPv6 peer"),
        (
            "[::ffff:192.0.2.7]:4433",
            "an IPv4 peer seen through a dual-stack socket: written as IPv4",
        ),
    ]
    .iter()
    .map(|(seen, note)| {
        let payload = encode_observed(sock(seen));
        let answer = encode_all(&[Frame::Accept { max_message: 0 }, Frame::Object(&payload)]);
        let mut value = exchange(
            &format!("observe, seen at {seen}"),
            &observe_opener,
            &answer,
            note,
        );
        value["observed"] = json!(decode_observed(&payload).unwrap().to_string());
        value
    })
    .collect();
    observe.push(exchange(
        "observe on a relayed connection",
        &observe_opener,
        &encode(&Frame::Close {
            code: ErrorCode::NOT_ALLOWED,
            reason: "no address to observe on a relayed connection",
        }),
        "a relayed connection has no address to tell",
    ));
    let invalid_observed: Vec<Value> = [
        ("empty", vec![]),
        ("truncated IPv4", vec![0x04, 192, 0, 2, 7]),
        (
            "a byte after the port",
            vec![0x04, 192, 0, 2, 7, 0x11, 0x51, 0x00],
        ),
        ("tag 0x05", vec![0x05, 192, 0, 2, 7, 0x11, 0x51]),
    ]
    .into_iter()
    .map(|(name, bytes)| {
        assert_eq!(decode_observed(&bytes), None);
        json!({"name": name, "payload": hex(&bytes)})
    })
    .collect();
    let offer = encode_candidates(&[sock("198.51.100.7:4433"), sock("10.0.0.2:4433")]);
    let ours = encode_candidates(&[sock("203.0.113.9:5000"), sock("[2001:db8::9]:5000")]);
    let punch = vec![
        exchange(
            "punch: two IPv4 candidates offered, one IPv4 and one IPv6 answered",
            &builtin_opener("ferry.punch", Some(&offer)),
            &encode_all(&[
                Frame::Accept {
                    max_message: MAX_OFFER_LEN as u64,
                },
                Frame::Object(&ours),
            ]),
            "then both dial the other's candidates",
        ),
        exchange(
            "punch with a node that does not punch",
            &builtin_opener("ferry.punch", Some(&offer)),
            &encode_all(&[
                Frame::Accept {
                    max_message: MAX_OFFER_LEN as u64,
                },
                Frame::Object(&encode_candidates(&[])),
            ]),
            "an empty list: no dialing",
        ),
    ];
    let lists = [
        vec![],
        vec![sock("198.51.100.7:4433")],
        vec![sock("198.51.100.7:4433"), sock("10.0.0.2:4433")],
        (1..=8)
            .map(|i| sock(&format!("[2001:db8::{i}]:4433")))
            .collect::<Vec<_>>(),
    ];
    let candidates: Vec<Value> = lists
        .iter()
        .map(|addrs| {
            json!({
                "candidates": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "hex": hex(&encode_candidates(addrs)),
            })
        })
        .collect();
    let invalid_candidates: Vec<Value> = [
        ("empty", vec![]),
        ("nine candidates", vec![0x09]),
        ("a truncated candidate", vec![0x01, 0x04, 1, 2]),
        (
            "a candidate with tag 0x05",
            vec![0x01, 0x05, 1, 2, 3, 4, 0, 1],
        ),
        ("a byte after the last candidate", vec![0x00, 0x00]),
    ]
    .into_iter()
    .map(|(name, bytes)| {
        let error = decode_candidates(&bytes).unwrap_err();
        json!({"name": name, "hex": hex(&bytes), "error": format!("{error:?}")})
    })
    .collect();
    json!({
        "description": "The built-in services (docs/PROTOCOL.md §10.11 ferry.ping, §10.12 ferry.observe, §10.13 ferry.punch): each exchange is one conversation stream; opener is what the opener writes (stream kind 02 and frames) before its FIN, acceptor what the acceptor writes before its FIN. observed, candidates: the payloads decoded. The invalid payloads are refused (observe: a protocol error of the exchange; punch: FAIL and no dialing).",
        "ping": ping,
        "observe": observe,
        "invalid_observed": invalid_observed,
        "punch": punch,
        "candidate_lists": candidates,
        "invalid_candidate_lists": invalid_candidates,
    })
}

#[test]
fn builtins() {
    let file = vector_file("builtins.json", generate_builtins());
    for group in ["ping", "observe", "punch"] {
        for case in list(&file, group) {
            let opener = bytes_of(case, "opener");
            let acceptor = bytes_of(case, "acceptor");
            assert_eq!(
                describe_stream(&opener, true, MESSAGE_BOUND),
                case["opener_frames"]
            );
            assert_eq!(
                describe_stream(&acceptor, false, MESSAGE_BOUND),
                case["acceptor_frames"]
            );
        }
    }
    for case in list(&file, "ping") {
        // The echo repeats the request's object byte for byte.
        let request = &list(case, "opener_frames").last().unwrap()["payload"];
        let answer = list(case, "acceptor_frames");
        if answer[0]["type"] == "ACCEPT" {
            assert_eq!(answer[0]["max_message"], 10);
            assert_eq!(&answer[1]["payload"], request);
        }
    }
    for case in list(&file, "observe") {
        if let Some(observed) = case["observed"].as_str() {
            let payload = unhex(
                list(case, "acceptor_frames")[1]["payload"]
                    .as_str()
                    .unwrap(),
            );
            assert_eq!(decode_observed(&payload).unwrap().to_string(), observed);
        }
    }
    for case in list(&file, "invalid_observed") {
        assert_eq!(decode_observed(&bytes_of(case, "payload")), None);
    }
    for case in list(&file, "candidate_lists") {
        let addrs: Vec<SocketAddr> = list(case, "candidates")
            .iter()
            .map(|a| sock(a.as_str().unwrap()))
            .collect();
        assert_eq!(hex(&encode_candidates(&addrs)), str_of(case, "hex"));
        assert_eq!(decode_candidates(&bytes_of(case, "hex")), Ok(addrs));
    }
    for case in list(&file, "invalid_candidate_lists") {
        let error = decode_candidates(&bytes_of(case, "hex")).unwrap_err();
        assert_eq!(format!("{error:?}"), str_of(case, "error"));
    }
}

// ---------------------------------------------------------------------------------------------
// A whole conversation (§5.6, §6.3, §6.4): ferry's sender and receiver state machines, driven
// through a run with a lost connection and a retransmission; every byte they write is recorded.

const CONFIG: SenderConfig = SenderConfig {
    send_timeout: Duration::from_secs(60),
    outbox_ttl: Duration::from_secs(600),
    stream_idle_timeout: Duration::from_secs(30),
    open_timeout: Duration::from_secs(10),
};
const EPOCH: u64 = 0x0011_2233_4455_6677;
const MAX_MESSAGE: usize = 1_048_576;

fn payloads() -> Vec<Bytes> {
    (0..6)
        .map(|i| Bytes::from(format!("message {i}")))
        .collect()
}

/// The sender's next actions, with acknowledgements left out.
fn actions(sender: &mut Sender<String>) -> Vec<Action<String>> {
    std::iter::from_fn(|| sender.poll_action())
        .filter(|action| !matches!(action, Action::Acknowledged { .. }))
        .collect()
}

/// The bytes of the sender's next writes (one or more; nothing else).
fn writes(sender: &mut Sender<String>) -> Vec<u8> {
    let actions = actions(sender);
    assert!(!actions.is_empty());
    let mut out = Vec::new();
    for action in actions {
        match action {
            Action::Write(bytes) => out.extend_from_slice(&bytes),
            other => panic!("expected writes, got {other:?}"),
        }
    }
    out
}

fn one_open(sender: &mut Sender<String>) -> Vec<u8> {
    match actions(sender).as_slice() {
        [Action::Open(head)] => head.clone(),
        other => panic!("expected an open, got {other:?}"),
    }
}

fn bytes_event(stream: u32, side: &str, bytes: &[u8], kind: bool) -> Value {
    json!({
        "stream": stream,
        "from": side,
        "hex": hex(bytes),
        "frames": describe_stream(bytes, kind, MESSAGE_BOUND),
    })
}

/// The receiver reads `bytes` of a stream: what it delivered, skipped, and the ACK it writes.
fn receive(
    receiver: &mut Receiver,
    run: &mut RunState,
    bytes: &[u8],
    payloads: &[Bytes],
) -> (Vec<u64>, Vec<u64>, Option<Vec<u8>>) {
    let mut unread = Bytes::copy_from_slice(bytes);
    let (mut delivered, mut duplicates) = (Vec::new(), Vec::new());
    while let Some(incoming) = receiver.next(&mut unread, run).unwrap() {
        match incoming {
            Incoming::Message { seq, payload } => {
                assert_eq!(payload, payloads[seq as usize]);
                delivered.push(seq);
                receiver.delivered(run, seq + 1);
            }
            Incoming::Duplicate => duplicates.push(receiver.seq() - 1),
        }
    }
    assert!(unread.is_empty());
    let ack = receiver
        .ack()
        .map(|next_seq| encode(&Frame::Ack { next_seq }));
    (delivered, duplicates, ack)
}

fn receiver_event(stream: u32, delivered: &[u64], duplicates: &[u64], run: &RunState) -> Value {
    json!({
        "stream": stream,
        "receiver": {
            "delivered": delivered,
            "duplicates": duplicates,
            "run_next_seq": run.next_seq,
        },
    })
}

/// The receiver's side of an OPEN: the run it names, its first sequence number, and the
/// messages pipelined after it.
fn accept_open<'a>(head: &'a [u8], target: &Address, from: &Address) -> (u64, &'a [u8]) {
    assert_eq!(head[0], StreamKind::Mailbox as u8);
    let (frame, used) = decode_frame(&head[1..], MAX_CONTROL_FRAME_LEN)
        .unwrap()
        .unwrap();
    let Frame::Open(open) = frame else {
        panic!("expected OPEN")
    };
    assert_eq!(open.target, target.without_hints());
    assert_eq!(open.from, *from);
    assert_eq!(open.epoch, EPOCH);
    assert_eq!(open.target.verify_signature(), Ok(()));
    (open.first_seq, &head[1 + used..])
}

fn generate_conversation() -> Value {
    let target = plain();
    let from = second();
    let payloads = payloads();
    let t0 = Instant::now();
    let mut sender: Sender<String> = Sender::new(
        std::sync::Arc::new(CONFIG),
        target.clone(),
        from.clone(),
        EPOCH,
        1,
        t0,
    );
    let mut run = RunState::default();
    let accept = encode(&Frame::Accept {
        max_message: MAX_MESSAGE as u64,
    });
    let mut events = Vec::new();

    // Stream 1: OPEN with three messages pipelined after it, ACCEPT, ACK(3).
    sender.push_all(
        t0,
        payloads[..3]
            .iter()
            .enumerate()
            .map(|(ticket, payload)| (ticket as u64, payload.clone())),
    );
    let head = one_open(&mut sender);
    let mut event = bytes_event(1, "sender", &head, true);
    event["note"] = json!("messages of at most EARLY_MESSAGE_MAX bytes ride with the OPEN (§5.6)");
    events.push(event);
    sender.opened(t0);
    let (first_seq, early) = accept_open(&head, &target, &from);
    let mut receiver = Receiver::open(first_seq, MAX_MESSAGE, &mut run);
    events.push(bytes_event(1, "receiver", &accept, false));
    sender.received(t0, &accept);
    let rest = actions(&mut sender);
    assert!(rest.is_empty(), "nothing written twice: {rest:?}");
    let (delivered, duplicates, ack) = receive(&mut receiver, &mut run, early, &payloads);
    events.push(receiver_event(1, &delivered, &duplicates, &run));
    let ack = ack.unwrap();
    events.push(bytes_event(1, "receiver", &ack, false));
    sender.received(t0, &ack);
    assert!(actions(&mut sender).is_empty());

    // Two more messages; the receiver delivers them, but its ACK(5) is lost with the
    // connection.
    for (ticket, payload) in payloads.iter().enumerate().skip(3).take(2) {
        sender.push(t0, ticket as u64, payload.clone());
    }
    let written = writes(&mut sender);
    events.push(bytes_event(1, "sender", &written, false));
    let (delivered, duplicates, ack) = receive(&mut receiver, &mut run, &written, &payloads);
    events.push(receiver_event(1, &delivered, &duplicates, &run));
    let lost = ack.unwrap();
    events.push(json!({
        "stream": 1,
        "from": "receiver",
        "lost": hex(&lost),
        "frames": describe_stream(&lost, false, MESSAGE_BOUND),
        "note": "the connection is lost: this ACK never arrives, and the receiver's stream ends without a FIN (its run state is kept)",
    }));
    let t1 = t0 + Duration::from_secs(1);
    sender.stream_failed(t1, "connection lost".into(), Loss::Retry, false);
    match actions(&mut sender).as_slice() {
        [Action::Reset(code)] => {
            assert_eq!(*code, ErrorCode::DONE);
            events.push(json!({
                "stream": 1,
                "from": "sender",
                "signal": "RESET_STREAM",
                "code": code.0,
                "note": "the sender gives the stream up but not the run: reset, never FIN",
            }));
        }
        other => panic!("expected a reset, got {other:?}"),
    }

    // Stream 2, on a new connection: the same epoch from the oldest unacknowledged message.
    sender.handle_timeout(t1);
    let head = one_open(&mut sender);
    let mut event = bytes_event(2, "sender", &head, true);
    event["note"] = json!(
        "retransmission of every unacknowledged message (seq 3 and 4), pipelined after the OPEN"
    );
    events.push(event);
    sender.opened(t1);
    let (first_seq, early) = accept_open(&head, &target, &from);
    assert_eq!(first_seq, 3);
    let resent = early.to_vec();
    let mut receiver = Receiver::open(first_seq, MAX_MESSAGE, &mut run);
    events.push(bytes_event(2, "receiver", &accept, false));
    sender.received(t1, &accept);
    let rest = actions(&mut sender);
    assert!(rest.is_empty(), "nothing written twice: {rest:?}");
    sender.push(t1, 5, payloads[5].clone());
    let written = writes(&mut sender);
    events.push(bytes_event(2, "sender", &written, false));
    let both = [resent, written].concat();
    let (delivered, duplicates, ack) = receive(&mut receiver, &mut run, &both, &payloads);
    assert_eq!(duplicates, [3, 4]);
    events.push(receiver_event(2, &delivered, &duplicates, &run));
    let ack = ack.unwrap();
    events.push(bytes_event(2, "receiver", &ack, false));
    sender.received(t1, &ack);
    assert!(actions(&mut sender).is_empty());

    // Idle for stream_idle_timeout: the run ends with FIN; the receiver forgets the run.
    sender.handle_timeout(t1 + CONFIG.stream_idle_timeout);
    assert!(matches!(actions(&mut sender).as_slice(), [Action::Idle]));
    sender.end_idle();
    assert!(matches!(actions(&mut sender).as_slice(), [Action::Finish]));
    events.push(json!({
        "stream": 2,
        "from": "sender",
        "signal": "FIN",
        "note": "nothing queued or unacknowledged for stream_idle_timeout: the run is over and its epoch is never used again",
    }));
    assert_eq!(receiver.finished(&[]), Ok(()));
    events.push(json!({
        "stream": 2,
        "from": "receiver",
        "signal": "FIN",
        "note": "the sender's FIN at a frame boundary: the receiver forgets the run's state and finishes its side",
    }));

    json!({
        "description": "A whole mailbox conversation (docs/PROTOCOL.md §5.6, §6.3, §6.4) between ferry's sender and receiver state machines: stream 1 carries OPEN with messages 0-2 pipelined after it, ACCEPT, ACK(3) and messages 3-4; the connection is lost before ACK(5) arrives; stream 2 opens with the same epoch at first_seq 3, retransmits 3 and 4 after its OPEN (the receiver skips them as duplicates but acknowledges them), carries message 5, ACK(6), and ends with FIN both ways after the idle timeout. Each event is bytes one side writes on one stream (hex and the frames in it), the receiver's decision for a batch (run_next_seq: its run state after it), or a stream signal.",
        "sender": {"seed": hex(&[2; 32]), "from": from.to_string()},
        "receiver": {"seed": hex(&[1; 32]), "target": target.to_string(), "max_message": MAX_MESSAGE},
        "epoch": format!("{EPOCH:016x}"),
        "messages": payloads.iter().map(|p| hex(p)).collect::<Vec<_>>(),
        "events": events,
    })
}

#[test]
fn conversation() {
    let file = vector_file("conversation.json", generate_conversation());
    // Replay the file's bytes through the decoders: every frame decodes to the fields stated.
    for event in list(&file, "events") {
        for field in ["hex", "lost"] {
            if let Some(text) = event[field].as_str() {
                let bytes = unhex(text);
                let kind = bytes.first() == Some(&(StreamKind::Mailbox as u8))
                    && event["frames"][0].get("kind").is_some();
                assert_eq!(
                    describe_stream(&bytes, kind, MESSAGE_BOUND),
                    event["frames"]
                );
            }
        }
    }
    // And through a fresh receiver: messages 0..=5 delivered once each, in order.
    let payloads = payloads();
    let mut run = RunState::default();
    let mut receiver = None;
    let mut delivered_all = Vec::new();
    for event in list(&file, "events") {
        if event["from"] != "sender" {
            continue;
        }
        let Some(text) = event["hex"].as_str() else {
            continue;
        };
        let bytes = unhex(text);
        if bytes[0] == StreamKind::Mailbox as u8 && event["frames"][0].get("kind").is_some() {
            let (first_seq, early) = accept_open(&bytes, &plain(), &second());
            let mut opened = Receiver::open(first_seq, MAX_MESSAGE, &mut run);
            let (delivered, _, _) = receive(&mut opened, &mut run, early, &payloads);
            delivered_all.extend(delivered);
            receiver = Some(opened);
            continue;
        }
        let (delivered, _, _) = receive(receiver.as_mut().unwrap(), &mut run, &bytes, &payloads);
        delivered_all.extend(delivered);
    }
    assert_eq!(delivered_all, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn readme_lists_every_file() {
    let readme = std::fs::read_to_string(vectors_dir().join("README.md")).unwrap();
    for name in FILES {
        if name != "README.md" {
            assert!(readme.contains(name), "README.md does not describe {name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Grants, caveats and chains (§4.11)

use ferry_proto::address::{AddressError, GrantId, Usage, VerifyError};
use ferry_proto::caveat::Caveat;

const CAP_NOW: u64 = 1_800_000_000;

/// (name, node seed, base address, caveats appended one by one).
fn capability_cases() -> Vec<(&'static str, u8, Address, Vec<Caveat>)> {
    let plain = plain().without_hints();
    let grant = Address::mint_grant(
        &key(1),
        MailboxId(7),
        GrantId(0x0102_0304_0506_0708),
        Some(1_900_000_000),
        vec![],
    );
    vec![
        (
            "grant base: grant 0102030405060708, expires 1900000000, signed with ferry/address/v2",
            1,
            grant.clone(),
            vec![],
        ),
        (
            "ferry1 address (grant 0) attenuated: at most 100 messages",
            1,
            plain.clone(),
            vec![Caveat::MaxMessages(100)],
        ),
        (
            "ferry1 address: expires before 1800003600, then only node of seed 2 (a handoff)",
            1,
            plain.clone(),
            vec![
                Caveat::ExpiresBefore(1_800_003_600),
                Caveat::Holder(key(2).public()),
            ],
        ),
        (
            "grant attenuated: service echo, 10 messages per 60 s, with an IPv4 hint",
            1,
            grant.with_hints(vec![sock("192.0.2.1:4433")]),
            vec![
                Caveat::Service("echo".into()),
                Caveat::Rate {
                    messages: 10,
                    per_secs: 60,
                },
            ],
        ),
        (
            "unknown caveat kind 0x40 (kept; a node refuses it)",
            1,
            plain,
            vec![Caveat::Unknown {
                kind: 0x40,
                value: vec![1, 2, 3],
            }],
        ),
    ]
}

fn describe_capability(name: &str, seed: u8, base: &Address, caveats: &[Caveat]) -> Value {
    let mut address = base.clone();
    let mut steps = Vec::new();
    for caveat in caveats {
        address = address.with_caveats(std::slice::from_ref(caveat)).unwrap();
        steps.push(json!({
            "caveat": caveat.to_string(),
            "bytes": hex(&caveat.to_bytes()),
            "tag": hex(address.tag().unwrap()),
        }));
    }
    let limits: Vec<Value> = match address.verify(&key(seed)) {
        Ok(limits) => limits
            .iter()
            .map(|l| json!({"kind": format!("{:?}", l.kind), "counter_key": hex(&l.key.0)}))
            .collect(),
        Err(error) => vec![json!(format!("{error:?}"))],
    };
    json!({
        "name": name,
        "seed": hex(&[seed]),
        "mailbox_id": format!("{:016x}", address.mailbox().0),
        "grant": format!("{:016x}", address.grant().0),
        "expires": address.expires().unwrap_or(0).to_string(),
        "base_signature": hex(base.signature().unwrap()),
        "tag0": hex(&base.root_tag(&key(seed))),
        "steps": steps,
        "effective_expiry": address.effective_expiry().unwrap_or(0).to_string(),
        "cap": hex(&address.to_cap_bytes()),
        "bytes": hex(&address.to_bytes()),
        "text": address.to_string(),
        "text_len": address.to_string().len(),
        "limits": limits,
    })
}

fn capability_frames() -> Vec<(&'static str, Frame<'static>)> {
    let cases = capability_cases();
    let handoff = {
        let (_, _, base, caveats) = &cases[2];
        base.with_caveats(caveats).unwrap()
    };
    let service = {
        let (_, _, base, caveats) = &cases[3];
        base.with_caveats(caveats).unwrap().without_hints()
    };
    vec![
        (
            "OPEN_CAP: attenuated target, ferry1 from, epoch 0011223344556677, first_seq 0",
            Frame::Open(Box::new(Open {
                target: handoff.clone(),
                from: second(),
                epoch: 0x0011_2233_4455_6677,
                first_seq: 0,
            })),
        ),
        (
            "CONVERSE by capability (target tag 0x03)",
            Frame::Converse(ConverseTarget::Address(Box::new(service))),
        ),
        ("MONITOR_CAP", Frame::Monitor(Box::new(handoff))),
    ]
}

fn generate_capabilities() -> Value {
    let valid: Vec<Value> = capability_cases()
        .iter()
        .map(|(name, seed, base, caveats)| describe_capability(name, *seed, base, caveats))
        .collect();
    let frames: Vec<Value> = capability_frames()
        .iter()
        .map(|(name, frame)| json!({"name": name, "bytes": hex(&encode(frame))}))
        .collect();
    let handoff = {
        let cases = capability_cases();
        let (_, _, base, caveats) = &cases[2];
        base.with_caveats(caveats).unwrap()
    };
    let cap = handoff.to_cap_bytes();
    let mut tampered: Vec<(&str, Vec<u8>)> = Vec::new();
    // Caveat 1 starts after 0x02 and the 57-byte head; caveat 2 after its 10 bytes.
    let (first, second_caveat) = (1 + 57, 1 + 57 + 10);
    let mut swapped = cap[..first].to_vec();
    swapped.extend_from_slice(&cap[second_caveat..second_caveat + 34]);
    swapped.extend_from_slice(&cap[first..second_caveat]);
    swapped.extend_from_slice(&cap[second_caveat + 34..]);
    tampered.push(("caveats swapped", swapped));
    let mut dropped = cap[..first].to_vec();
    dropped[first - 1] = 1;
    dropped.extend_from_slice(&cap[first..second_caveat]);
    dropped.extend_from_slice(&cap[second_caveat + 34..]);
    tampered.push(("last caveat dropped, tag kept", dropped));
    let mut later = cap.clone();
    later[first + 2 + 7] ^= 0x01; // expiry 1800003600 → 1800003601
    tampered.push(("expiry caveat changed", later));
    let mut other_mailbox = cap.clone();
    other_mailbox[1 + 32 + 7] ^= 0x01;
    tampered.push(("mailbox id changed", other_mailbox));
    let mut other_tag = cap.clone();
    *other_tag.last_mut().unwrap() ^= 0x80;
    tampered.push(("tag changed", other_tag));
    let tampered: Vec<Value> = tampered
        .into_iter()
        .map(|(name, bytes)| {
            let parsed = Address::from_cap_bytes(&bytes).unwrap();
            json!({"name": name, "cap": hex(&bytes), "error": format!("{:?}", parsed.verify(&key(1)).unwrap_err())})
        })
        .collect();
    let mut invalid: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut not_canonical = vec![0x02];
    not_canonical.extend_from_slice(&plain().core_bytes().unwrap()[..48]);
    not_canonical.extend_from_slice(&[0; 8]);
    not_canonical.push(0);
    not_canonical.extend_from_slice(&plain().core_bytes().unwrap()[48..]);
    invalid.push(("grant 0 without caveats in cap2 form", not_canonical));
    let mut nine = cap[..first].to_vec();
    nine[first - 1] = 9;
    invalid.push(("9 caveats", nine));
    let mut bad_expiry = cap.clone();
    bad_expiry[first + 2..first + 10].fill(0);
    invalid.push(("expiry caveat of 0", bad_expiry));
    let mut bad_len = cap.clone();
    bad_len[first + 1] = 65;
    invalid.push(("caveat value of 65 bytes", bad_len));
    let mut short = cap.clone();
    short.pop();
    invalid.push(("tag cut short", short));
    let mut long = cap.clone();
    long.push(0);
    invalid.push(("a trailing byte", long));
    let mut unknown_format = cap.clone();
    unknown_format[0] = 0x03;
    invalid.push(("unknown capability field format 0x03", unknown_format));
    let invalid: Vec<Value> = invalid
        .into_iter()
        .map(|(name, bytes)| {
            json!({"name": name, "cap": hex(&bytes), "error": format!("{:?}", Address::from_cap_bytes(&bytes).unwrap_err())})
        })
        .collect();
    let refusals: Vec<Value> = [
        (
            "handoff presented by seed 3's node",
            handoff.check_usage(&key(3).public(), Usage::Messages),
        ),
        (
            "handoff presented by seed 2's node",
            handoff.check_usage(&key(2).public(), Usage::Messages),
        ),
        (
            "handoff at 1800003600",
            handoff.check_cheap(&key(1).public(), 1_800_003_600),
        ),
        (
            "handoff at 1800003599",
            handoff.check_cheap(&key(1).public(), CAP_NOW + 3599),
        ),
    ]
    .into_iter()
    .map(|(name, result)| json!({"name": name, "result": format!("{result:?}")}))
    .collect();
    json!({
        "description": "Grants, caveats and HMAC chains (docs/PROTOCOL.md §4.11). Each valid case: the base address (seed, mailbox, grant, expires, its signature), tag0 = HMAC-SHA256(signature, \"ferry/caveat/v1\" | node | mailbox | expires | grant), then per caveat its bytes (kind | len | value) and tag_i = HMAC-SHA256(tag_{i-1}, caveat bytes); the capability field of frames (cap: 0x01 | core or 0x02 | cap2), the binary form (\"ferry2\" | cap2 | hints | crc32) and the text form; limits are the counting caveats with their counter keys (first 16 bytes of HMAC-SHA256(tag_i, \"ferry/count/v1\")). frames: the new frame forms. tampered: well-formed fields whose chain the node refuses; invalid: capability fields the parser refuses; refusals: the cheap and usage checks.",
        "valid": valid,
        "frames": frames,
        "tampered": tampered,
        "invalid": invalid,
        "refusals": refusals,
    })
}

#[test]
fn capabilities() {
    let file = vector_file("capabilities.json", generate_capabilities());
    for case in list(&file, "valid") {
        let from_text: Address = str_of(case, "text").parse().unwrap();
        let from_bytes = Address::from_bytes(&bytes_of(case, "bytes")).unwrap();
        let from_cap = Address::from_cap_bytes(&bytes_of(case, "cap")).unwrap();
        assert_eq!(from_text, from_bytes);
        assert_eq!(from_text.without_hints(), from_cap);
        let seed = bytes_of(case, "seed")[0];
        assert_eq!(from_text.node(), key(seed).public());
        let grant = &str_of(case, "grant").to_string();
        assert_eq!(format!("{:016x}", from_text.grant().0), *grant);
        if from_text.caveats().is_empty() {
            assert_eq!(from_text.verify_signature(), Ok(()));
        } else {
            assert_eq!(
                hex(from_text.tag().unwrap()),
                str_of(list(case, "steps").last().unwrap(), "tag")
            );
        }
    }
    for case in list(&file, "frames") {
        let bytes = bytes_of(case, "bytes");
        let (frame, used) = decode_frame(&bytes, ferry_proto::frame::MAX_OPENING_FRAME_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(encode(&frame), bytes);
        // Old acceptors' bound: every one of these fits in 267 bytes or is refused as too large.
        if let Err(error) = decode_frame(&bytes, MAX_CONTROL_FRAME_LEN) {
            assert!(
                matches!(error, ferry_proto::frame::FrameError::TooLarge { .. }),
                "{error:?}"
            );
        }
    }
    for case in list(&file, "tampered") {
        let parsed = Address::from_cap_bytes(&bytes_of(case, "cap")).unwrap();
        assert_eq!(parsed.verify(&key(1)), Err(VerifyError::Forged));
        assert_eq!(str_of(case, "error"), "Forged");
    }
    for case in list(&file, "invalid") {
        let error: AddressError = Address::from_cap_bytes(&bytes_of(case, "cap")).unwrap_err();
        assert_eq!(format!("{error:?}"), str_of(case, "error"), "{case}");
    }
    assert!(!list(&file, "refusals").is_empty());
}
