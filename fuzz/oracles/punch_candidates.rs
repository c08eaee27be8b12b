//! `punch::decode_candidates`: the candidate list of a hole punch (docs/PROTOCOL.md §10.13),
//! and `observe::decode_observed`, the answer of an address observation (§10.12). Whatever
//! decodes encodes back to the same bytes.
//!
//! One copy, included by fuzz target `punch_candidates` and by the replay of its
//! committed corpus on the stable toolchain (sdk/tests/fuzz_corpus.rs).

use ferry::observe::{decode_observed, encode_observed};
use ferry::punch::{decode_candidates, encode_candidates, MAX_OFFER_LEN};

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    if let Ok(addrs) = decode_candidates(data) {
        assert_eq!(
            encode_candidates(&addrs),
            data,
            "candidate lists have one form"
        );
        assert!(data.len() <= MAX_OFFER_LEN);
    }
    if let Some(addr) = decode_observed(data) {
        // An IPv4-mapped IPv6 address is written as IPv4; every other answer is canonical.
        if !matches!(addr.ip(), std::net::IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some()) {
            assert_eq!(encode_observed(addr), data, "observations have one form");
        }
    }
}
