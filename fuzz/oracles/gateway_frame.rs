//! The browser gateway's WebSocket frames: JSON text frames (`decode_text`), binary frames
//! (`decode_binary`: header length, JSON header, payload) and textual call targets.
//!
//! One copy, included by fuzz target `gateway_frame` and by the replay of its
//! committed corpus on the stable toolchain (node/tests/fuzz_corpus.rs).

use ferry_node::gateway::protocol::{decode_binary, decode_text, parse_call_target_text};

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
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
