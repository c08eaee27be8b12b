//! A stream's frames arriving in arbitrary pieces, as QUIC delivers them: reassembling in a
//! buffer and decoding after every piece (what the stream handlers do) gives exactly the
//! frames, and the same final error, as decoding the whole stream at once.
#![no_main]

#[path = "../oracles/frame_stream.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
