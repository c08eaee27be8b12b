//! Replays the committed fuzz corpus of the gateway's frames (fuzz/corpus/gateway_frame, see
//! fuzz/README.md) through its decoders on the stable toolchain: every input the fuzzer found
//! interesting stays a regression test.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;

use ferry_node::gateway::protocol::{decode_binary, decode_text, parse_call_target_text};

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
