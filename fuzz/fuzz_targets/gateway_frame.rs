//! The browser gateway's WebSocket frames: JSON text frames (`decode_text`), binary frames
//! (`decode_binary`: header length, JSON header, payload) and textual call targets.
#![no_main]

#[path = "../oracles/gateway_frame.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
