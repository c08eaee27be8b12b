//! Replays the committed fuzz corpus (fuzz/corpus/, see fuzz/README.md) through the decoders
//! with the checks of the fuzz targets, on the stable toolchain: every input the fuzzer found
//! interesting stays a regression test, also where cargo-fuzz is not installed.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;

use bytes::Bytes;
use ferry::address::ADDRESS_CORE_LEN;
use ferry::frame::{self, decode_frame, MAX_CONTROL_FRAME_LEN, MAX_DATA_CHUNK};
use ferry::relay::RelayDatagram;
use ferry::Address;

/// The inputs of one target's corpus; none if the corpus is not there (a packaged crate).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<_> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn address_text_corpus() {
    for (path, data) in corpus("address_text") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok(address) = text.parse::<Address>() {
            assert_eq!(address.to_string(), text, "{}", path.display());
            let _ = address.verify_signature();
        }
    }
}

fn check_address_bytes(data: &[u8]) {
    if let Ok(address) = Address::from_bytes(data) {
        assert_eq!(address.to_bytes(), data);
        assert_eq!(address.to_string().parse::<Address>(), Ok(address.clone()));
        let _ = address.relays();
        let _ = address.verify_signature();
    }
    if let Some(core) = data.first_chunk::<ADDRESS_CORE_LEN>() {
        if let Ok(address) = Address::from_core_bytes(core) {
            assert_eq!(address.core_bytes().as_ref(), Some(core));
        }
    }
}

#[test]
fn address_bytes_corpus() {
    for (_, data) in corpus("address_bytes") {
        let Some((&mode, rest)) = data.split_first() else {
            continue;
        };
        if mode & 1 == 1 && rest.len() >= 4 {
            let mut fixed = rest.to_vec();
            let body = fixed.len() - 4;
            let crc = crc32fast::hash(&fixed[..body]);
            fixed[body..].copy_from_slice(&crc.to_be_bytes());
            check_address_bytes(&fixed);
        } else {
            check_address_bytes(rest);
        }
    }
}

#[test]
fn frame_corpus() {
    for (path, data) in corpus("frame") {
        let Some((&selector, rest)) = data.split_first() else {
            continue;
        };
        let limit = match selector % 5 {
            0 => MAX_CONTROL_FRAME_LEN,
            1 => (1 << 20) + 1,
            2 => (1usize << 20).max(MAX_DATA_CHUNK) + 1,
            3 => 11,
            _ => usize::from(selector / 5),
        };
        let mut buf = rest;
        while let Ok(Some((decoded, used))) = decode_frame(buf, limit) {
            let mut again = Vec::new();
            frame::put_frame(&mut again, &decoded);
            assert_eq!(again, &buf[..used], "{}", path.display());
            for cut in 0..used {
                assert_eq!(decode_frame(&buf[..cut], limit), Ok(None));
            }
            buf = &buf[used..];
        }
    }
}

#[test]
fn frame_stream_corpus() {
    for (_, data) in corpus("frame_stream") {
        // Decoding piece by piece gives the frames decoding at once gives.
        let Some((&selector, rest)) = data.split_first() else {
            continue;
        };
        let Some((&cuts, rest)) = rest.split_first() else {
            continue;
        };
        let cuts = usize::from(cuts % 16).min(rest.len());
        let (sizes, stream) = rest.split_at(cuts);
        let limit = if selector & 1 == 0 {
            MAX_CONTROL_FRAME_LEN
        } else {
            usize::from(selector) * 64 + 1
        };
        let all = |buf: &[u8]| {
            let mut frames = Vec::new();
            let mut at = 0;
            loop {
                match decode_frame(&buf[at..], limit) {
                    Ok(Some((_, used))) => {
                        frames.push(buf[at..at + used].to_vec());
                        at += used;
                    }
                    other => return (frames, other.err()),
                }
            }
        };
        let whole = all(stream);
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        let mut offset = 0;
        let mut error = None;
        for size in sizes.iter().map(|&s| usize::from(s)).chain([usize::MAX]) {
            let take = size.min(stream.len() - offset);
            buf.extend_from_slice(&stream[offset..offset + take]);
            offset += take;
            let (mut decoded, failed) = all(&buf);
            let used: usize = decoded.iter().map(Vec::len).sum();
            frames.append(&mut decoded);
            buf.drain(..used);
            if failed.is_some() || offset == stream.len() {
                error = failed;
                break;
            }
        }
        assert_eq!((frames, error), whole);
    }
}

#[test]
fn relay_datagram_corpus() {
    for (_, data) in corpus("relay_datagram") {
        if let Ok(datagram) = RelayDatagram::decode(Bytes::copy_from_slice(&data)) {
            assert_eq!(datagram.encode(), data);
        }
    }
}

#[test]
fn punch_candidates_corpus() {
    use ferry::observe::{decode_observed, encode_observed};
    use ferry::punch::{decode_candidates, encode_candidates, MAX_OFFER_LEN};
    let inputs = corpus("punch_candidates");
    assert!(
        !inputs.is_empty(),
        "the punch_candidates corpus is committed"
    );
    for (path, data) in inputs {
        if let Ok(addrs) = decode_candidates(&data) {
            assert_eq!(encode_candidates(&addrs), data, "{}", path.display());
            assert!(data.len() <= MAX_OFFER_LEN);
        }
        if let Some(addr) = decode_observed(&data) {
            if !matches!(addr.ip(), std::net::IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some()) {
                assert_eq!(encode_observed(addr), data, "{}", path.display());
            }
        }
    }
}

/// The checks of fuzz/fuzz_targets/address_cap.rs.
fn exercise_capability(address: &Address) {
    use ferry::address::Usage;
    let key = ferry::SecretKey::from_bytes(&[1; 32]);
    let _ = address.check_cheap(&key.public(), 1_800_000_000);
    let _ = address.check_usage(&key.public(), Usage::Messages);
    let _ = address.check_usage(&key.public(), Usage::Conversation(Some("echo")));
    let checked = address.verify(&key).is_ok();
    assert_eq!(
        Address::from_cap_bytes(&address.to_cap_bytes()).as_ref(),
        Ok(&address.without_hints())
    );
    assert_eq!(address.to_string().parse::<Address>().as_ref(), Ok(address));
    if let Ok(narrower) = address.attenuate().max_messages(1).build() {
        if checked {
            assert!(narrower.verify(&key).is_ok());
        }
        assert!(narrower.caveats().len() > address.caveats().len());
    }
}

#[test]
fn address_cap_corpus() {
    let inputs = corpus("address_cap");
    for (path, data) in &inputs {
        let Some((&mode, rest)) = data.split_first() else {
            continue;
        };
        match mode {
            0 => {
                if let Ok(address) = Address::from_cap_bytes(rest) {
                    assert_eq!(address.to_cap_bytes(), rest, "{}", path.display());
                    exercise_capability(&address);
                }
            }
            1 if rest.len() >= 4 => {
                let mut fixed = b"ferry2".to_vec();
                fixed.extend_from_slice(rest);
                let body = fixed.len() - 4;
                let crc = crc32fast::hash(&fixed[6..body]);
                fixed[body..].copy_from_slice(&crc.to_be_bytes());
                if let Ok(address) = Address::from_bytes(&fixed) {
                    assert_eq!(address.to_bytes(), fixed, "{}", path.display());
                    exercise_capability(&address);
                }
            }
            2 => {
                if let Ok((caveat, tail)) = ferry::caveat::Caveat::decode(rest) {
                    let used = rest.len() - tail.len();
                    assert_eq!(caveat.to_bytes(), &rest[..used]);
                }
            }
            _ => {
                if let Ok(text) = std::str::from_utf8(rest) {
                    if let Ok(address) = format!("ferry2{text}").parse::<Address>() {
                        exercise_capability(&address);
                    }
                }
            }
        }
    }
    // The committed seeds parse: valid capabilities are among them.
    assert!(
        inputs.is_empty()
            || inputs.iter().any(|(_, data)| data.first() == Some(&0)
                && Address::from_cap_bytes(&data[1..]).is_ok_and(|a| !a.caveats().is_empty()))
    );
}
