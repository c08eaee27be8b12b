//! `Address::from_str`: the text form of a capability address, as pasted by a user or read
//! from a config file, a command line or a gateway frame. An address that parses has exactly
//! one text form, so printing it again gives the input back.
//!
//! One copy, included by fuzz target `address_text` and by the replay of its
//! committed corpus on the stable toolchain (sdk/tests/fuzz_corpus.rs).

use ferry::Address;

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(address) = text.parse::<Address>() {
        assert_eq!(address.to_string(), text, "text form is not canonical");
        assert_eq!(
            Address::from_bytes(&address.to_bytes()),
            Ok(address.clone())
        );
        let _ = address.relays();
        // The expensive check never panics either (only reached past the checksum).
        let _ = address.verify_signature();
    }
}
