//! `punch::decode_candidates`: the candidate list of a hole punch (docs/PROTOCOL.md §10.13),
//! and `observe::decode_observed`, the answer of an address observation (§10.12). Whatever
//! decodes encodes back to the same bytes.
#![no_main]

#[path = "../oracles/punch_candidates.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
