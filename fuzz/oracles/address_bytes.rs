//! `Address::from_bytes`: the binary form of an address (inside application payloads), and
//! `Address::from_core_bytes`, the 112-byte core inside frames. Whatever parses encodes back
//! to the same bytes, in binary and in text.
//!
//! The first input byte picks the mode: odd — the input's last four bytes are replaced by its
//! correct CRC-32 first, so that the fuzzer reaches the node id, signature encoding and hint
//! parsing behind the checksum; even — the bytes as they are.
//!
//! One copy, included by fuzz target `address_bytes` and by the replay of its
//! committed corpus on the stable toolchain (sdk/tests/fuzz_corpus.rs).

use ferry::address::ADDRESS_CORE_LEN;
use ferry::Address;

/// The checks of one address's bytes.
fn check_bytes(data: &[u8]) {
    if let Ok(address) = Address::from_bytes(data) {
        assert_eq!(address.to_bytes(), data, "binary form is not canonical");
        let text = address.to_string();
        assert_eq!(text.parse::<Address>(), Ok(address.clone()));
        if let Some(core) = address.core_bytes() {
            let bare = Address::from_core_bytes(&core).expect("a parsed core parses again");
            assert_eq!(bare, address.without_hints());
        }
        let cap =
            Address::from_cap_bytes(&address.to_cap_bytes()).expect("a capability field parses");
        assert_eq!(cap, address.without_hints());
        let _ = address.relays();
        let _ = address.verify_signature();
    }
    if let Some(core) = data.first_chunk::<ADDRESS_CORE_LEN>() {
        if let Ok(address) = Address::from_core_bytes(core) {
            assert_eq!(address.core_bytes().as_ref(), Some(core));
        }
    }
}

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 && rest.len() >= 4 {
        let mut fixed = rest.to_vec();
        let body = fixed.len() - 4;
        let crc = crc32fast::hash(&fixed[..body]);
        fixed[body..].copy_from_slice(&crc.to_be_bytes());
        check_bytes(&fixed);
    } else {
        check_bytes(rest);
    }
}
