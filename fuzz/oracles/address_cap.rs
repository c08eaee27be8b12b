//! The decoders of addresses with grants and caveats (docs/PROTOCOL.md §4.11):
//! `Address::from_cap_bytes` (the capability field of OPEN_CAP, CONVERSE by capability,
//! MONITOR_CAP and FOUND_CAP), `Address::from_bytes` of the `ferry2` binary form and
//! `Caveat::decode`. Whatever parses encodes back to the same bytes, and its chain is checked
//! (cheap checks, usage, HMAC chain) without panicking; attenuating it further keeps it valid.
//!
//! The first input byte picks the mode: 0 — a capability field; 1 — `ferry2` + the rest with
//! its last four bytes replaced by the correct CRC-32 (to reach the caveats behind the
//! checksum); 2 — one caveat; otherwise — the rest as the text after `ferry2`.
//!
//! One copy, included by fuzz target `address_cap` and by the replay of its
//! committed corpus on the stable toolchain (sdk/tests/fuzz_corpus.rs).

use ferry::address::{Caveat, Usage};
use ferry::{Address, SecretKey};

fn exercise(address: &Address) {
    let key = SecretKey::from_bytes(&[1; 32]);
    let _ = address.check_cheap(&key.public(), 1_800_000_000);
    let _ = address.check_usage(&key.public(), Usage::Messages);
    let _ = address.check_usage(&key.public(), Usage::Conversation(Some("echo")));
    let checked = address.verify(&key).is_ok();
    assert_eq!(
        Address::from_cap_bytes(&address.to_cap_bytes()).as_ref(),
        Ok(&address.without_hints())
    );
    assert_eq!(address.to_string().parse::<Address>().as_ref(), Ok(address));
    if let Ok(narrower) = address.attenuate().max_messages(1).build() {
        // Attenuation needs no key and keeps a valid chain valid.
        if checked {
            assert!(narrower.verify(&key).is_ok());
        }
        assert!(narrower.caveats().len() > address.caveats().len());
    }
}

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            if let Ok(address) = Address::from_cap_bytes(rest) {
                assert_eq!(
                    address.to_cap_bytes(),
                    rest,
                    "capability field is not canonical"
                );
                exercise(&address);
            }
        }
        1 if rest.len() >= 4 => {
            let mut fixed = b"ferry2".to_vec();
            fixed.extend_from_slice(rest);
            let body = fixed.len() - 4;
            let crc = crc32fast::hash(&fixed[6..body]);
            fixed[body..].copy_from_slice(&crc.to_be_bytes());
            if let Ok(address) = Address::from_bytes(&fixed) {
                assert_eq!(address.to_bytes(), fixed, "binary form is not canonical");
                exercise(&address);
            }
        }
        2 => {
            if let Ok((caveat, tail)) = Caveat::decode(rest) {
                let used = rest.len() - tail.len();
                assert_eq!(caveat.to_bytes(), &rest[..used]);
                assert_eq!(caveat.validate(), Ok(()));
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(address) = format!("ferry2{text}").parse::<Address>() {
                    exercise(&address);
                }
            }
        }
    }
}
