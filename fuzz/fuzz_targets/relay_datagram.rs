//! `RelayDatagram::decode`: every QUIC datagram a peer sends on a ferry connection. Whatever
//! decodes encodes back to the same bytes.
#![no_main]

use bytes::Bytes;
use ferry::relay::RelayDatagram;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(datagram) = RelayDatagram::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(datagram.encode(), data);
    }
});
