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
            assert_eq!(&address.core_bytes(), core);
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
