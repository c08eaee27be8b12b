//! `frame::decode_frame` with each limit the stream handlers use, over a buffer holding any
//! number of frames: the bytes after a stream's kind byte, in either direction, of every
//! stream kind (mailbox, conversation, monitor). Every frame that decodes encodes back to the
//! same bytes, stays within the limit, and every proper prefix of it is "incomplete".
//!
//! One copy, included by fuzz target `frame` and by the replay of its
//! committed corpus on the stable toolchain (sdk/tests/fuzz_corpus.rs).

use ferry::frame::{self, decode_frame, StreamKind, MAX_CONTROL_FRAME_LEN, MAX_DATA_CHUNK};

/// The default `max_message_size`.
const MAX_MESSAGE: usize = 1 << 20;

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let _ = StreamKind::from_byte(selector);
    let limit = match selector % 5 {
        // Opening frames (OPEN, CONVERSE, LOOKUP, MONITOR) and everything an opener reads
        // before a conversation starts (ACCEPT, ACK, CLOSE, FOUND).
        0 => MAX_CONTROL_FRAME_LEN,
        // Mailbox streams after OPEN: MESSAGE frames.
        1 => MAX_MESSAGE + 1,
        // Conversations: OBJECT, DATA, DATA_END, FAIL.
        2 => MAX_MESSAGE.max(MAX_DATA_CHUNK) + 1,
        // The ping service's acceptor (an ACCEPT of 10 bytes).
        3 => 11,
        // Tiny limits, including 0.
        _ => usize::from(selector / 5),
    };
    let mut buf = rest;
    while let Ok(Some((decoded, used))) = decode_frame(buf, limit) {
        assert!(used <= buf.len());
        let consumed = &buf[..used];
        let mut again = Vec::new();
        frame::put_frame(&mut again, &decoded);
        assert_eq!(again, consumed, "{decoded:?} does not encode back");
        let (len, prefix) = frame::get_varint(consumed).unwrap().unwrap();
        assert!(len as usize <= limit);
        assert_eq!(prefix + len as usize, used);
        if used <= 1024 {
            for cut in 0..used {
                assert_eq!(decode_frame(&consumed[..cut], limit), Ok(None));
            }
        }
        buf = &buf[used..];
    }
}
