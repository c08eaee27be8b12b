//! The gateway's WebTransport stream frames (docs/GATEWAY.md §13.3): kind (1 byte), u32
//! big-endian length, bytes; `decode_frame` over a run of frames with a limit taken from the
//! input, and `check_frame_header` on every header it meets.
#![no_main]

#[path = "../oracles/webtransport_frame.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
