//! The gateway's WebTransport stream frames (docs/GATEWAY.md §13.3): kind (1 byte), u32
//! big-endian length, bytes; `decode_frame` over a run of frames with a limit taken from the
//! input, and `check_frame_header` on every header it meets.
//!
//! One copy, included by fuzz target `webtransport_frame` and by the replay of its
//! committed corpus on the stable toolchain (node/tests/fuzz_corpus.rs).

use ferry_node::gateway::webtransport::{check_frame_header, decode_frame, FRAME_TEXT};

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    let Some((limit, mut rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    // Small limits, to reach "too big" as often as the frames themselves.
    let max = usize::from(u16::from_be_bytes(*limit));
    loop {
        let decoded = decode_frame(rest, max);
        if let Some(header) = rest.first_chunk::<5>() {
            // The header check is what decode_frame applies first.
            match (check_frame_header(*header, max), &decoded) {
                (Err(a), Err(b)) => assert_eq!(&a, b),
                (Err(error), Ok(_)) => panic!("header refused ({error}) but frame decoded"),
                (Ok((_, len)), _) => assert!(len <= max),
            }
        }
        match decoded {
            Ok(Some((message, used))) => {
                assert!(used >= 5 && used <= rest.len());
                let (frame, tail) = rest.split_at(used);
                let body = message.into_data();
                // The frame is its header and its body, nothing more, nothing less.
                assert_eq!(&body[..], &frame[5..]);
                assert!(body.len() <= max);
                if frame[0] == FRAME_TEXT {
                    assert!(std::str::from_utf8(&body).is_ok());
                }
                // Every proper prefix is incomplete.
                for cut in [0, 1, 4, used - 1] {
                    assert!(matches!(decode_frame(&frame[..cut], max), Ok(None)));
                }
                rest = tail;
            }
            Ok(None) | Err(_) => return,
        }
    }
}
