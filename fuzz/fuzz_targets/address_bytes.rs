//! `Address::from_bytes`: the binary form of an address (inside application payloads), and
//! `Address::from_core_bytes`, the 112-byte core inside frames. Whatever parses encodes back
//! to the same bytes, in binary and in text.
//!
//! The first input byte picks the mode: odd — the input's last four bytes are replaced by its
//! correct CRC-32 first, so that the fuzzer reaches the node id, signature encoding and hint
//! parsing behind the checksum; even — the bytes as they are.
#![no_main]

#[path = "../oracles/address_bytes.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
