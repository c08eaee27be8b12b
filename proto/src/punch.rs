//! The candidate lists of a hole punch (docs/PROTOCOL.md §10.13): a count byte, then that many
//! socket addresses in the form of socket-address hints (§4.2). Pure code on byte buffers.
// Candidate lists come from peers: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;

/// The name of the built-in hole-punching service.
pub const PUNCH_SERVICE: &str = "ferry.punch";
/// Candidate addresses in one offer or answer at most.
pub const MAX_PUNCH_CANDIDATES: usize = 8;
/// Largest offer: a count and that many IPv6 socket-address hints.
pub const MAX_OFFER_LEN: usize = 1 + MAX_PUNCH_CANDIDATES * 19;

/// Why a candidate list cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CandidatesError {
    /// The list is empty: no count byte.
    #[error("empty candidate list")]
    Empty,
    /// More candidates than [`MAX_PUNCH_CANDIDATES`].
    #[error("{0} candidates, more than {MAX_PUNCH_CANDIDATES}")]
    TooMany(usize),
    /// A candidate is not a socket-address hint (tag 0x04 or 0x06 with its full length).
    #[error("candidate {0} is not a socket address")]
    Malformed(usize),
    /// Bytes follow the last candidate.
    #[error("{0} bytes after the last candidate")]
    Trailing(usize),
}

/// (docs/PROTOCOL.md §4.2). At most [`MAX_PUNCH_CANDIDATES`] are taken.
pub fn encode_candidates(addrs: &[SocketAddr]) -> Vec<u8> {
    let addrs = addrs.get(..MAX_PUNCH_CANDIDATES).unwrap_or(addrs);
    let mut out = Vec::with_capacity(1 + addrs.len() * 19);
    out.push(addrs.len() as u8);
    for addr in addrs {
        crate::address::put_socket_hint(&mut out, *addr);
    }
    out
}

/// Decodes a candidate list.
pub fn decode_candidates(bytes: &[u8]) -> Result<Vec<SocketAddr>, CandidatesError> {
    let (&count, mut rest) = bytes.split_first().ok_or(CandidatesError::Empty)?;
    let count = usize::from(count);
    if count > MAX_PUNCH_CANDIDATES {
        return Err(CandidatesError::TooMany(count));
    }
    let mut addrs = Vec::with_capacity(count);
    for index in 0..count {
        let (addr, tail) =
            crate::address::take_socket_hint(rest).ok_or(CandidatesError::Malformed(index))?;
        addrs.push(addr);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(CandidatesError::Trailing(rest.len()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn candidate_lists_round_trip() {
        let addrs: Vec<SocketAddr> = vec![
            "198.51.100.7:4433".parse().unwrap(),
            "[2001:db8::5]:9".parse().unwrap(),
        ];
        let bytes = encode_candidates(&addrs);
        assert_eq!(
            bytes[..8],
            [0x02, 0x04, 198, 51, 100, 7, 0x11, 0x51],
            "count, then the first address as a socket-address hint"
        );
        assert_eq!(decode_candidates(&bytes), Ok(addrs));
        assert_eq!(decode_candidates(&[0]), Ok(vec![]));
    }

    #[test]
    fn malformed_lists_are_refused() {
        assert_eq!(decode_candidates(&[]), Err(CandidatesError::Empty));
        assert_eq!(decode_candidates(&[9]), Err(CandidatesError::TooMany(9)));
        assert_eq!(
            decode_candidates(&[1, 0x05, 1, 2]),
            Err(CandidatesError::Malformed(0))
        );
        assert_eq!(
            decode_candidates(&[1, 0x04, 1, 2, 3, 4, 0]),
            Err(CandidatesError::Malformed(0))
        );
        assert_eq!(
            decode_candidates(&[1, 0x04, 1, 2, 3, 4, 0, 1, 0xff]),
            Err(CandidatesError::Trailing(1))
        );
    }

    #[test]
    fn at_most_eight_candidates_are_encoded() {
        let addrs: Vec<SocketAddr> = (1..=12)
            .map(|port| SocketAddr::from(([10, 0, 0, 1], port)))
            .collect();
        let decoded = decode_candidates(&encode_candidates(&addrs)).unwrap();
        assert_eq!(decoded, addrs[..MAX_PUNCH_CANDIDATES]);
        assert!(encode_candidates(&decoded).len() <= MAX_OFFER_LEN);
    }

    proptest! {
        #[test]
        fn arbitrary_lists_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(addrs) = decode_candidates(&bytes) {
                prop_assert_eq!(encode_candidates(&addrs), bytes);
            }
        }
    }
}
