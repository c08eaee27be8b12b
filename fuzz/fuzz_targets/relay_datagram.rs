//! `RelayDatagram::decode`: every QUIC datagram a peer sends on a ferry connection. Whatever
//! decodes encodes back to the same bytes.
#![no_main]

#[path = "../oracles/relay_datagram.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
