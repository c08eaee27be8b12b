//! `RelayDatagram::decode`: every QUIC datagram a peer sends on a ferry connection. Whatever
//! decodes encodes back to the same bytes.
//!
//! One copy, included by fuzz target `relay_datagram` and by the replay of its
//! committed corpus on the stable toolchain (sdk/tests/fuzz_corpus.rs).

use bytes::Bytes;
use ferry::relay::RelayDatagram;

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    if let Ok(datagram) = RelayDatagram::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(datagram.encode(), data);
    }
}
