//! `Address::from_str`: the text form of a capability address, as pasted by a user or read
//! from a config file, a command line or a gateway frame. An address that parses has exactly
//! one text form, so printing it again gives the input back.
#![no_main]

#[path = "../oracles/address_text.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
