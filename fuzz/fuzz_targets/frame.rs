//! `frame::decode_frame` with each limit the stream handlers use, over a buffer holding any
//! number of frames: the bytes after a stream's kind byte, in either direction, of every
//! stream kind (mailbox, conversation, monitor). Every frame that decodes encodes back to the
//! same bytes, stays within the limit, and every proper prefix of it is "incomplete".
#![no_main]

#[path = "../oracles/frame.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
