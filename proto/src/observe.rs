//! The answer of an address observation (docs/PROTOCOL.md §10.12): the UDP address a peer
//! sees a node's packets come from, in the form of a socket-address hint (§4.2). Pure code on
//! byte buffers.
// Answers come from peers: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;

/// The name of the built-in observation service.
pub const OBSERVE_SERVICE: &str = "ferry.observe";

/// The observation answer: the address in the form of a socket-address hint.
pub fn encode_observed(addr: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(19);
    crate::address::put_socket_hint(&mut out, canonical(addr));
    out
}

/// Reads an observation answer; `None` if it is not exactly one socket-address hint.
pub fn decode_observed(bytes: &[u8]) -> Option<SocketAddr> {
    match crate::address::take_socket_hint(bytes)? {
        (addr, []) => Some(addr),
        _ => None,
    }
}

/// An IPv4 peer seen through a dual-stack socket as `::ffff:a.b.c.d` is `a.b.c.d`.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_mapped_addresses_are_canonical() {
        let v4: SocketAddr = "192.0.2.7:4433".parse().unwrap();
        assert_eq!(encode_observed(v4), [0x04, 192, 0, 2, 7, 0x11, 0x51]);
        assert_eq!(decode_observed(&encode_observed(v4)), Some(v4));
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:4433".parse().unwrap();
        assert_eq!(decode_observed(&encode_observed(mapped)), Some(v4));
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        assert_eq!(decode_observed(&encode_observed(v6)), Some(v6));
        assert_eq!(decode_observed(&[]), None);
        assert_eq!(decode_observed(&[0x04, 1, 2, 3]), None);
        let mut long = encode_observed(v4);
        long.push(0);
        assert_eq!(decode_observed(&long), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let _ = decode_observed(&bytes);
        }
    }
}
