//! Replays the committed fuzz corpora of the gateway's frames (fuzz/corpus/gateway_frame and
//! fuzz/corpus/webtransport_frame, see
//! fuzz/README.md) through its decoders on the stable toolchain: every input the fuzzer found
//! interesting stays a regression test.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;

use ferry_node::gateway::protocol::{decode_binary, decode_text, parse_call_target_text};
use ferry_node::gateway::webtransport::{check_frame_header, decode_frame, FRAME_TEXT};

#[test]
fn gateway_frame_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/gateway_frame");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return; // a packaged crate has no corpus
    };
    for entry in entries {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let Some((&selector, rest)) = data.split_first() else {
            continue;
        };
        match selector % 3 {
            0 => {
                if let Ok(text) = std::str::from_utf8(rest) {
                    if let Err(error) = decode_text(text) {
                        let _ = error.answer();
                    }
                }
            }
            1 => {
                if let Err(error) = decode_binary(rest) {
                    let _ = error.answer();
                }
            }
            _ => {
                if let Ok(text) = std::str::from_utf8(rest) {
                    let _ = parse_call_target_text(text);
                }
            }
        }
    }
}

/// The WebTransport stream frames (fuzz/fuzz_targets/webtransport_frame.rs, the same oracle).
fn webtransport_frame(data: &[u8]) {
    let Some((limit, mut rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    // Small limits, to reach "too big" as often as the frames themselves.
    let max = usize::from(u16::from_be_bytes(*limit));
    loop {
        let decoded = decode_frame(rest, max);
        if let Some(header) = rest.first_chunk::<5>() {
            // The header check is what decode_frame applies first.
            match (check_frame_header(*header, max), &decoded) {
                (Err(a), Err(b)) => assert_eq!(&a, b),
                (Err(error), Ok(_)) => panic!("header refused ({error}) but frame decoded"),
                (Ok((_, len)), _) => assert!(len <= max),
            }
        }
        match decoded {
            Ok(Some((message, used))) => {
                assert!(used >= 5 && used <= rest.len());
                let (frame, tail) = rest.split_at(used);
                let body = message.into_data();
                // The frame is its header and its body, nothing more, nothing less.
                assert_eq!(&body[..], &frame[5..]);
                assert!(body.len() <= max);
                if frame[0] == FRAME_TEXT {
                    assert!(std::str::from_utf8(&body).is_ok());
                }
                // Every proper prefix is incomplete.
                for cut in [0, 1, 4, used - 1] {
                    assert!(matches!(decode_frame(&frame[..cut], max), Ok(None)));
                }
                rest = tail;
            }
            Ok(None) | Err(_) => return,
        }
    }
}

#[test]
fn webtransport_frame_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/webtransport_frame");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return; // a packaged crate has no corpus
    };
    let mut count = 0;
    for entry in entries {
        webtransport_frame(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "an empty corpus at {}", dir.display());
}
