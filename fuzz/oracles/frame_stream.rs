//! A stream's frames arriving in arbitrary pieces, as QUIC delivers them: reassembling in a
//! buffer and decoding after every piece (what the stream handlers do) gives exactly the
//! frames, and the same final error, as decoding the whole stream at once.
//!
//! One copy, included by fuzz target `frame_stream` and by the replay of its
//! committed corpus on the stable toolchain (sdk/tests/fuzz_corpus.rs).

use ferry::frame::{decode_frame, FrameError, MAX_CONTROL_FRAME_LEN};

#[derive(Debug, PartialEq)]
enum End {
    Incomplete(usize),
    Error(FrameError),
}

/// Decodes every frame at the start of `buf`; returns their encodings and how decoding ended.
fn decode_all(buf: &[u8], limit: usize) -> (Vec<Vec<u8>>, End) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match decode_frame(&buf[at..], limit) {
            Ok(Some((_, used))) => {
                frames.push(buf[at..at + used].to_vec());
                at += used;
            }
            Ok(None) => return (frames, End::Incomplete(buf.len() - at)),
            Err(error) => return (frames, End::Error(error)),
        }
    }
}

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    // [limit selector][number of cuts n][n cut sizes][stream]
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((&cuts, rest)) = rest.split_first() else {
        return;
    };
    let cuts = usize::from(cuts % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(cuts);
    let limit = if selector & 1 == 0 {
        MAX_CONTROL_FRAME_LEN
    } else {
        usize::from(selector) * 64 + 1
    };
    let whole = decode_all(stream, limit);

    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut offset = 0;
    let mut end = None;
    let pieces = sizes
        .iter()
        .map(|&size| usize::from(size))
        .chain(std::iter::once(usize::MAX));
    for size in pieces {
        let take = size.min(stream.len() - offset);
        buf.extend_from_slice(&stream[offset..offset + take]);
        offset += take;
        let (mut decoded, how) = decode_all(&buf, limit);
        let used: usize = decoded.iter().map(Vec::len).sum();
        frames.append(&mut decoded);
        buf.drain(..used);
        if let End::Error(_) = how {
            end = Some(how);
            break;
        }
        if offset == stream.len() {
            end = Some(how);
            break;
        }
    }
    assert_eq!((frames, end.expect("the last piece ends the loop")), whole);
}
