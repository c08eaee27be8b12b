//! The decoders of addresses with grants and caveats (docs/PROTOCOL.md §4.11):
//! `Address::from_cap_bytes` (the capability field of OPEN_CAP, CONVERSE by capability,
//! MONITOR_CAP and FOUND_CAP), `Address::from_bytes` of the `ferry2` binary form and
//! `Caveat::decode`. Whatever parses encodes back to the same bytes, and its chain is checked
//! (cheap checks, usage, HMAC chain) without panicking; attenuating it further keeps it valid.
//!
//! The first input byte picks the mode: 0 — a capability field; 1 — `ferry2` + the rest with
//! its last four bytes replaced by the correct CRC-32 (to reach the caveats behind the
//! checksum); 2 — one caveat; otherwise — the rest as the text after `ferry2`.
#![no_main]

#[path = "../oracles/address_cap.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
