//! The conversation state machines driven by hand, on a time given to them: no network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::identity::SecretKey;

const TIMEOUT: Duration = Duration::from_secs(10);

fn frame_bytes(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    frame::put_frame(&mut out, frame);
    out
}

fn object(payload: &[u8]) -> Vec<u8> {
    frame_bytes(&Frame::Object(payload))
}

fn data(chunk: &[u8]) -> Vec<u8> {
    frame_bytes(&Frame::Data(chunk))
}

fn reader(max_recv: usize) -> Reader {
    Reader::new(max_recv, TIMEOUT, BytesMut::new())
}

fn fed(max_recv: usize, bytes: &[u8]) -> Reader {
    let mut reader = reader(max_recv);
    reader.receive(bytes, Instant::now());
    reader
}

fn no_deadline() -> Result<Step, ReadError> {
    Ok(Step::NeedBytes { deadline: None })
}

#[test]
fn objects_and_data_in_order() {
    let now = Instant::now();
    let mut bytes = object(b"hello");
    bytes.extend(data(b"chunk"));
    bytes.extend(frame_bytes(&Frame::DataEnd));
    let mut reader = fed(100, &bytes);
    assert_eq!(
        reader.next(Want::Object, now),
        Ok(Step::Object(Bytes::from_static(b"hello")))
    );
    assert_eq!(
        reader.next(Want::Data, now),
        Ok(Step::Data(Bytes::from_static(b"chunk")))
    );
    assert_eq!(reader.next(Want::Data, now), Ok(Step::DataEnd));
    assert_eq!(reader.next(Want::Object, now), no_deadline());
    reader.receive_fin(now);
    assert_eq!(reader.next(Want::Object, now), Err(ReadError::Ended));
    assert!(reader.is_ended());
    assert_eq!(reader.next(Want::Data, now), Err(ReadError::Ended));
}

#[test]
fn the_other_kind_stays_unread() {
    let now = Instant::now();
    let mut bytes = object(b"o");
    bytes.extend(data(b"d"));
    bytes.extend(frame_bytes(&Frame::DataEnd));
    let mut reader = fed(100, &bytes);
    assert_eq!(
        reader.next(Want::Data, now),
        Err(ReadError::Unexpected(Content::Object))
    );
    assert_eq!(
        reader.next(Want::Data, now),
        Err(ReadError::Unexpected(Content::Object))
    );
    assert_eq!(
        reader.next(Want::Object, now),
        Ok(Step::Object(Bytes::from_static(b"o")))
    );
    assert_eq!(
        reader.next(Want::Object, now),
        Err(ReadError::Unexpected(Content::Data))
    );
    assert_eq!(
        reader.next(Want::Data, now),
        Ok(Step::Data(Bytes::from_static(b"d")))
    );
    assert_eq!(
        reader.next(Want::Object, now),
        Err(ReadError::Unexpected(Content::Data))
    );
    assert_eq!(reader.next(Want::Data, now), Ok(Step::DataEnd));
}

#[test]
fn an_object_over_the_limit_is_read_past_once() {
    let now = Instant::now();
    let mut bytes = object(&[7; 20]);
    bytes.extend(object(b"next"));
    let mut reader = fed(10, &bytes);
    // Wanting data leaves it where it is.
    assert_eq!(
        reader.next(Want::Data, now),
        Err(ReadError::Unexpected(Content::Object))
    );
    assert_eq!(
        reader.next(Want::Object, now),
        Err(ReadError::TooLarge { size: 20, max: 10 })
    );
    assert_eq!(
        reader.next(Want::Object, now),
        Ok(Step::Object(Bytes::from_static(b"next")))
    );
}

#[test]
fn an_object_over_the_longest_frame_is_skipped_without_buffering() {
    let t0 = Instant::now();
    let size = frame::MAX_DATA_CHUNK + 5000;
    let mut bytes = object(&vec![1; size]);
    bytes.extend(object(b"after"));
    let mut reader = reader(10);
    let mut fed_at = 0;
    let mut results = Vec::new();
    let mut now = t0;
    loop {
        match reader.next(Want::Object, now) {
            Ok(Step::NeedBytes { deadline }) => {
                assert!(deadline.is_some() || fed_at == 0);
                let end = (fed_at + 1000).min(bytes.len());
                now += Duration::from_millis(1);
                reader.receive(&bytes[fed_at..end], now);
                fed_at = end;
                // Never more than one read in memory.
                assert!(reader.buf.len() <= 1000 + 16);
            }
            other => {
                let done = matches!(other, Ok(Step::Object(_)));
                results.push(other);
                if done {
                    break;
                }
            }
        }
    }
    assert_eq!(
        results,
        vec![
            Err(ReadError::TooLarge { size, max: 10 }),
            Ok(Step::Object(Bytes::from_static(b"after")))
        ]
    );
}

#[test]
fn a_non_object_over_the_longest_frame_is_a_violation_for_good() {
    let now = Instant::now();
    let mut bytes = Vec::new();
    frame::put_payload_header(&mut bytes, true, frame::MAX_DATA_CHUNK + 1);
    let mut reader = fed(10, &bytes);
    let error = reader.next(Want::Data, now).unwrap_err();
    assert!(matches!(
        error,
        ReadError::Protocol(Violation::FrameTooLong { .. })
    ));
    reader.receive(&object(b"x"), now);
    assert_eq!(reader.next(Want::Object, now), Err(error.clone()));
    assert_eq!(reader.next(Want::Data, now), Err(error));
}

#[test]
fn malformed_and_misplaced_frames_are_violations_for_good() {
    let now = Instant::now();
    // Unknown type 0xEE.
    let mut reader = fed(100, &[1, 0xEE]);
    let error = reader.next(Want::Object, now).unwrap_err();
    assert!(matches!(
        error,
        ReadError::Protocol(Violation::Frame(FrameError::UnknownType(0xEE)))
    ));
    assert_eq!(reader.next(Want::Data, now), Err(error));

    let mut reader = fed(100, &frame_bytes(&Frame::Accept { max_message: 1 }));
    let unexpected = Err(ReadError::Protocol(Violation::UnexpectedFrame));
    assert_eq!(reader.next(Want::Object, now), unexpected);
    assert_eq!(reader.next(Want::Object, now), unexpected);
}

#[test]
fn fail_is_reported_then_ended() {
    let now = Instant::now();
    let fail = frame_bytes(&Frame::Fail {
        code: ErrorCode::HANDLER_FAILED,
        reason: "boom",
    });
    let mut reader = fed(100, &fail);
    assert_eq!(
        reader.next(Want::Data, now),
        Err(ReadError::Failed {
            code: ErrorCode::HANDLER_FAILED,
            reason: "boom".into()
        })
    );
    assert!(reader.is_ended());
    assert_eq!(reader.next(Want::Object, now), Err(ReadError::Ended));
}

#[test]
fn fin_inside_a_frame_is_a_violation() {
    let now = Instant::now();
    let bytes = object(b"abcdef");
    let mut reader = fed(100, &bytes[..3]);
    assert!(matches!(
        reader.next(Want::Object, now),
        Ok(Step::NeedBytes { deadline: Some(_) })
    ));
    reader.receive_fin(now);
    let violation = Err(ReadError::Protocol(Violation::EndedInsideFrame));
    assert_eq!(reader.next(Want::Object, now), violation);
    assert_eq!(reader.next(Want::Object, now), violation);
    assert!(!reader.is_ended());
}

#[test]
fn a_begun_frame_must_complete_within_frame_timeout_of_waiting() {
    let t0 = Instant::now();
    let bytes = object(b"abcdef");
    let mut reader = reader(100);
    // Nothing begun: no deadline, however long.
    assert_eq!(reader.next(Want::Object, t0), no_deadline());
    let t1 = t0 + Duration::from_secs(3600);
    reader.receive(&bytes[..2], t1);
    assert_eq!(
        reader.next(Want::Object, t1),
        Ok(Step::NeedBytes {
            deadline: Some(t1 + TIMEOUT)
        })
    );
    // Four seconds of waiting count against the frame...
    let t2 = t1 + Duration::from_secs(4);
    reader.receive(&bytes[2..4], t2);
    let deadline = t2 + Duration::from_secs(6);
    assert_eq!(
        reader.next(Want::Object, t2),
        Ok(Step::NeedBytes {
            deadline: Some(deadline)
        })
    );
    assert!(!reader.handle_timeout(deadline - Duration::from_millis(1)));
    assert!(reader.handle_timeout(deadline));
    let timeout = Err(ReadError::Protocol(Violation::FrameTimeout));
    assert_eq!(reader.next(Want::Object, deadline), timeout);
    reader.receive(&bytes[4..], deadline);
    assert_eq!(reader.next(Want::Object, deadline), timeout);
}

#[test]
fn each_frame_gets_its_own_frame_timeout() {
    let t0 = Instant::now();
    let mut bytes = object(b"first");
    let second = object(b"second");
    bytes.extend(&second[..2]);
    let mut reader = reader(100);
    reader.receive(&bytes[..3], t0);
    let _ = reader.next(Want::Object, t0);
    let t1 = t0 + Duration::from_secs(9);
    reader.receive(&bytes[3..], t1);
    assert!(matches!(reader.next(Want::Object, t1), Ok(Step::Object(_))));
    assert_eq!(
        reader.next(Want::Object, t1),
        Ok(Step::NeedBytes {
            deadline: Some(t1 + TIMEOUT)
        })
    );
}

#[test]
fn a_wait_given_up_does_not_count() {
    let t0 = Instant::now();
    let bytes = object(b"abcdef");
    let mut reader = fed(100, &bytes[..2]);
    let _ = reader.next(Want::Object, t0);
    // The driver's read was dropped; reading again an hour later starts a fresh wait.
    let t1 = t0 + Duration::from_secs(3600);
    assert_eq!(
        reader.next(Want::Object, t1),
        Ok(Step::NeedBytes {
            deadline: Some(t1 + TIMEOUT)
        })
    );
    assert!(!reader.handle_timeout(t0 + TIMEOUT));
}

#[test]
fn closing_ends_the_reader() {
    let mut reader = fed(100, &object(b"x"));
    reader.close();
    assert_eq!(
        reader.next(Want::Object, Instant::now()),
        Err(ReadError::Ended)
    );
}

#[test]
fn writer_checks_the_peer_limit_first_then_finished() {
    let mut writer = Writer::new(100);
    writer.set_peer_limit(4);
    assert_eq!(writer.max_send(), 4);
    let mut out = Vec::new();
    assert_eq!(
        writer.object(b"12345", &mut out),
        Err(WriteError::TooLarge { size: 5, max: 4 })
    );
    writer.object(b"1234", &mut out).unwrap();
    assert_eq!(out, object(b"1234"));
    writer.data(b"d", &mut out).unwrap();
    assert_eq!(out, data(b"d"));
    writer.data_end(&mut out).unwrap();
    assert_eq!(out, frame_bytes(&Frame::DataEnd));
    writer.fail("why", &mut out).unwrap();
    assert_eq!(
        out,
        frame_bytes(&Frame::Fail {
            code: ErrorCode::HANDLER_FAILED,
            reason: "why"
        })
    );
    writer.finish().unwrap();
    assert_eq!(writer.finish(), Err(WriteError::Finished));
    assert_eq!(
        writer.object(b"12345", &mut out),
        Err(WriteError::TooLarge { size: 5, max: 4 })
    );
    assert_eq!(writer.object(b"1", &mut out), Err(WriteError::Finished));
    assert_eq!(writer.data(b"1", &mut out), Err(WriteError::Finished));
    assert_eq!(writer.data_end(&mut out), Err(WriteError::Finished));
    assert_eq!(writer.fail("x", &mut out), Err(WriteError::Finished));
}

#[test]
fn reset_codes_by_side() {
    let (mut writer, mut reader) = (Writer::new(1), reader(1));
    let both = |code| Dropped {
        reset: Some(code),
        stop: Some(code),
    };
    assert_eq!(dropped(true, &writer, &reader), both(ErrorCode::CANCELLED));
    assert_eq!(
        dropped(false, &writer, &reader),
        both(ErrorCode::HANDLER_FAILED)
    );
    writer.finish().unwrap();
    assert_eq!(
        dropped(true, &writer, &reader),
        Dropped {
            reset: None,
            stop: Some(ErrorCode::CANCELLED)
        }
    );
    assert_eq!(
        dropped(false, &writer, &reader),
        Dropped {
            reset: None,
            stop: Some(ErrorCode::DONE)
        }
    );
    reader.close();
    let nothing = Dropped {
        reset: None,
        stop: None,
    };
    assert_eq!(dropped(false, &writer, &reader), nothing);
    assert_eq!(dropped(true, &writer, &reader), nothing);
}

#[test]
fn the_opening_of_a_conversation_announces_the_limit() {
    let first = Frame::Converse(ConverseTarget::Service("echo"));
    let bytes = opening(&first, 1234, 0);
    assert_eq!(bytes[0], StreamKind::Conversation as u8);
    let mut acceptor = Acceptor::new();
    // Byte by byte: the same result as at once.
    for byte in &bytes[1..] {
        assert!(matches!(acceptor.poll(), Ok(Opening::NeedBytes { .. })));
        acceptor.receive(&[*byte]);
    }
    acceptor.receive(&object(b"first"));
    assert_eq!(
        acceptor.poll(),
        Ok(Opening::Ready {
            request: Request::ByName("echo".into()),
            opener_limit: Some(1234)
        })
    );
    assert_eq!(acceptor.into_rest().as_ref(), object(b"first").as_slice());
    assert_eq!(
        opener_limit(&Request::ByName("echo".into()), Some(1234)),
        Ok(1234)
    );
}

#[test]
fn the_acceptor_reads_each_opening() {
    let address = crate::address::Address::mint(
        &SecretKey::generate(),
        crate::address::MailboxId::random(),
        None,
        Vec::new(),
    );
    let by_address = opening(
        &Frame::Converse(ConverseTarget::Address(Box::new(address.clone()))),
        5,
        0,
    );
    let mut acceptor = Acceptor::new();
    acceptor.receive(&by_address[1..]);
    assert_eq!(
        acceptor.poll(),
        Ok(Opening::Ready {
            request: Request::ByAddress(address),
            opener_limit: Some(5)
        })
    );

    let lookup = opening(&Frame::Lookup("svc"), 5, 0);
    assert_eq!(lookup, {
        let mut head = vec![StreamKind::Conversation as u8];
        head.extend(frame_bytes(&Frame::Lookup("svc")));
        head
    });
    let mut acceptor = Acceptor::new();
    acceptor.receive(&lookup[1..]);
    let request = Request::Lookup("svc".into());
    assert_eq!(
        acceptor.poll(),
        Ok(Opening::Ready {
            request: request.clone(),
            opener_limit: None
        })
    );
    assert_eq!(opener_limit(&request, None), Ok(0));

    // A converse without its Accept: the frame after it stays for the conversation.
    let mut acceptor = Acceptor::new();
    acceptor.receive(&frame_bytes(&Frame::Converse(ConverseTarget::Service("a"))));
    acceptor.receive(&object(b"o"));
    let request = Request::ByName("a".into());
    assert_eq!(
        acceptor.poll(),
        Ok(Opening::Ready {
            request: request.clone(),
            opener_limit: None
        })
    );
    assert_eq!(acceptor.into_rest().as_ref(), object(b"o").as_slice());
    assert_eq!(
        opener_limit(&request, None),
        Err((ErrorCode::PROTOCOL, "expected accept after converse"))
    );

    // The stream ends after the converse.
    let mut acceptor = Acceptor::new();
    acceptor.receive(&frame_bytes(&Frame::Converse(ConverseTarget::Service("a"))));
    assert!(matches!(acceptor.poll(), Ok(Opening::NeedBytes { .. })));
    acceptor.receive_fin();
    assert_eq!(
        acceptor.poll(),
        Ok(Opening::Ready {
            request,
            opener_limit: None
        })
    );
}

#[test]
fn the_acceptor_refuses_what_is_no_opening() {
    let mut acceptor = Acceptor::new();
    acceptor.receive(&object(b"o"));
    assert_eq!(acceptor.poll(), Err(OpeningError::Expected));
    assert!(OpeningError::Expected.is_violation());

    let mut acceptor = Acceptor::new();
    acceptor.receive(&[1, 0xEE]);
    assert_eq!(acceptor.poll(), Err(OpeningError::Expected));

    let mut acceptor = Acceptor::new();
    acceptor.receive(&[5]);
    acceptor.receive_fin();
    assert_eq!(acceptor.poll(), Err(OpeningError::Ended));
    assert!(!OpeningError::Ended.is_violation());
}

#[test]
fn the_opener_reads_an_accept_and_keeps_what_follows() {
    let mut bytes = accept(77);
    bytes.extend(object(b"hi"));
    let mut opener = Opener::new();
    opener.receive(&bytes[..1]);
    assert_eq!(opener.answer(), Ok(None));
    opener.receive(&bytes[1..]);
    assert_eq!(
        opener.answer(),
        Ok(Some(Answer::Accepted { peer_limit: 77 }))
    );
    assert_eq!(opener.into_rest().as_ref(), object(b"hi").as_slice());
}

#[test]
fn the_opener_reads_a_found_address() {
    let address = crate::address::Address::mint(
        &SecretKey::generate(),
        crate::address::MailboxId::random(),
        None,
        Vec::new(),
    );
    let mut opener = Opener::new();
    opener.receive(&found(&address));
    assert_eq!(opener.answer(), Ok(Some(Answer::Found(Box::new(address)))));
}

#[test]
fn each_refusal_is_a_typed_error() {
    let cases = [
        (
            ErrorCode::NO_SUCH_SERVICE,
            OpenError::NoSuchService { reason: "r".into() },
        ),
        (ErrorCode::NOT_ALLOWED, OpenError::NotAllowed),
        (ErrorCode::LIMIT, OpenError::Busy),
        (ErrorCode::SHUTTING_DOWN, OpenError::ShuttingDown),
        (
            ErrorCode::PROTOCOL,
            OpenError::Other {
                code: ErrorCode::PROTOCOL,
                reason: "r".into(),
            },
        ),
        (
            ErrorCode::TIMEOUT,
            OpenError::Other {
                code: ErrorCode::TIMEOUT,
                reason: "r".into(),
            },
        ),
    ];
    let refusals = [
        Refusal::NoSuchMailbox,
        Refusal::Forged,
        Refusal::Expired,
        Refusal::WrongNode,
        Refusal::Revoked,
        Refusal::Caveat,
        Refusal::Exhausted,
    ]
    .map(|refusal| {
        (
            refusal.code(),
            OpenError::Refused {
                refusal,
                reason: "r".into(),
            },
        )
    });
    for (code, expected) in cases.into_iter().chain(refusals) {
        let mut opener = Opener::new();
        opener.receive(&refusal(code, "r"));
        assert_eq!(opener.answer(), Err(expected), "code {}", code.0);
    }
}

#[test]
fn the_opener_reads_ends_resets_and_stops() {
    let mut opener = Opener::new();
    opener.receive(&object(b"o"));
    assert_eq!(opener.answer(), Err(OpenError::UnexpectedAnswer));
    let mut opener = Opener::new();
    opener.receive(&[1, 0xEE]);
    assert!(matches!(opener.answer(), Err(OpenError::Frame(_))));
    let opener = Opener::new();
    assert_eq!(opener.on_fin(), OpenError::EndedBeforeAnswer);
    assert_eq!(
        opener.on_reset(ErrorCode::NOT_ADMITTED),
        OpenError::NotAdmitted
    );
    assert_eq!(
        opener.on_reset(ErrorCode::HANDLER_FAILED),
        OpenError::Failed(ErrorCode::HANDLER_FAILED)
    );
    assert_eq!(
        opener.on_stopped(ErrorCode::NOT_ADMITTED),
        Some(OpenError::NotAdmitted)
    );
    assert_eq!(opener.on_stopped(ErrorCode::CANCELLED), None);
}

/// What a conversation's peer may send, for the property tests.
#[derive(Debug, Clone)]
enum Sent {
    Object(Vec<u8>),
    Data(Vec<u8>),
    DataEnd,
    Fail(u64),
    Garbage(Vec<u8>),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Sent::Object),
        1 => (0usize..3).prop_map(|n| Sent::Object(vec![9; frame::MAX_DATA_CHUNK + n])),
        4 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Sent::Data),
        2 => Just(Sent::DataEnd),
        1 => any::<u64>().prop_map(Sent::Fail),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Sent::Garbage),
    ]
}

fn encode(sent: &[Sent]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in sent {
        match item {
            Sent::Object(payload) => frame::put_frame(&mut out, &Frame::Object(payload)),
            Sent::Data(chunk) => frame::put_frame(&mut out, &Frame::Data(chunk)),
            Sent::DataEnd => frame::put_frame(&mut out, &Frame::DataEnd),
            Sent::Fail(code) => frame::put_frame(
                &mut out,
                &Frame::Fail {
                    code: ErrorCode(*code),
                    reason: "x",
                },
            ),
            Sent::Garbage(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// Reads everything `pieces` carry (then the end of the stream), switching what it wants
/// whenever the other kind is unexpected; the results, without the waits.
fn read_all(max_recv: usize, pieces: &[&[u8]]) -> Vec<Result<Step, ReadError>> {
    let now = Instant::now();
    let mut reader = reader(max_recv);
    let mut pieces = pieces.iter();
    let mut want = Want::Object;
    let mut results = Vec::new();
    loop {
        let result = reader.next(want, now);
        match &result {
            Ok(Step::NeedBytes { .. }) => match pieces.next() {
                Some(piece) => reader.receive(piece, now),
                None => reader.receive_fin(now),
            },
            Err(ReadError::Ended) | Err(ReadError::Protocol(_)) => {
                // Final: it stays so.
                assert_eq!(reader.next(Want::Object, now), result);
                assert_eq!(reader.next(Want::Data, now), result);
                results.push(result);
                return results;
            }
            Err(ReadError::Unexpected(Content::Object)) => {
                want = Want::Object;
                results.push(result);
            }
            Err(ReadError::Unexpected(Content::Data)) => {
                want = Want::Data;
                results.push(result);
            }
            _ => results.push(result),
        }
        assert!(results.len() < 10_000, "the reader made no progress");
    }
}

proptest! {
    #[test]
    fn any_split_reads_as_the_whole(
        sent in proptest::collection::vec(sent(), 0..12),
        max_recv in 0usize..48,
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let bytes = encode(&sent);
        let whole = read_all(max_recv, &[&bytes]);
        let pieces = split(&bytes, &cuts);
        prop_assert_eq!(read_all(max_recv, &pieces), whole.clone());
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(read_all(max_recv, &bytewise), whole);
    }

    #[test]
    fn well_formed_frames_read_as_sent(
        sent in proptest::collection::vec(sent(), 0..12),
        max_recv in 0usize..48,
    ) {
        let sent: Vec<Sent> = sent
            .into_iter()
            .filter(|item| !matches!(item, Sent::Garbage(_) | Sent::Fail(_)))
            .collect();
        let bytes = encode(&sent);
        let read: Vec<_> = read_all(max_recv, &[&bytes])
            .into_iter()
            .filter(|result| !matches!(result, Err(ReadError::Unexpected(_))))
            .collect();
        let mut expected: Vec<Result<Step, ReadError>> = sent
            .iter()
            .map(|item| match item {
                Sent::Object(payload) if payload.len() > max_recv => Err(ReadError::TooLarge {
                    size: payload.len(),
                    max: max_recv,
                }),
                Sent::Object(payload) => Ok(Step::Object(Bytes::from(payload.clone()))),
                Sent::Data(chunk) => Ok(Step::Data(Bytes::from(chunk.clone()))),
                Sent::DataEnd => Ok(Step::DataEnd),
                Sent::Fail(_) | Sent::Garbage(_) => unreachable!(),
            })
            .collect();
        expected.push(Err(ReadError::Ended));
        prop_assert_eq!(read, expected);
    }

    #[test]
    fn any_bytes_never_panic_and_any_answer_is_decided(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let now = Instant::now();
        let mut reader = fed(16, &bytes);
        let _ = reader.next(Want::Object, now);
        let _ = reader.next(Want::Data, now);
        reader.receive_fin(now);
        let _ = reader.next(Want::Data, now);
        let mut opener = Opener::new();
        opener.receive(&bytes);
        let _ = opener.answer();
        let mut acceptor = Acceptor::new();
        acceptor.receive(&bytes);
        let _ = acceptor.poll();
        acceptor.receive_fin();
        // Once the stream ended, the acceptor never asks for more.
        let asks_more = matches!(acceptor.poll(), Ok(Opening::NeedBytes { .. }));
        prop_assert!(!asks_more);
    }
}

/// Cuts `bytes` at the given points (taken modulo its length).
fn split<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for cut in cuts {
        pieces.push(&bytes[from..cut]);
        from = cut;
    }
    pieces.push(&bytes[from..]);
    pieces
}

proptest! {
    #[test]
    fn an_opening_reads_the_same_however_it_arrives(
        name in "[a-z0-9._-]{1,64}",
        limit in any::<u64>(),
        after in proptest::collection::vec(any::<u8>(), 0..20),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut bytes = opening(&Frame::Converse(ConverseTarget::Service(&name)), limit, 0);
        bytes.extend(object(&after));
        let mut acceptor = Acceptor::new();
        let mut pieces = split(&bytes[1..], &cuts).into_iter();
        let ready = loop {
            match acceptor.poll() {
                Ok(Opening::NeedBytes { .. }) => match pieces.next() {
                    Some(piece) => acceptor.receive(piece),
                    None => acceptor.receive_fin(),
                },
                other => break other,
            }
        };
        prop_assert_eq!(
            ready,
            Ok(Opening::Ready { request: Request::ByName(name), opener_limit: Some(limit) })
        );
        let mut rest = acceptor.into_rest().to_vec();
        for piece in pieces {
            rest.extend_from_slice(piece);
        }
        prop_assert_eq!(rest, object(&after));
    }

    #[test]
    fn an_answer_reads_the_same_however_it_arrives(
        limit in any::<u64>(),
        after in proptest::collection::vec(any::<u8>(), 0..20),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut bytes = accept(limit);
        bytes.extend(object(&after));
        let mut opener = Opener::new();
        let mut pieces = split(&bytes, &cuts).into_iter();
        let answer = loop {
            match opener.answer() {
                Ok(None) => match pieces.next() {
                    Some(piece) => opener.receive(piece),
                    None => break Err(opener.on_fin()),
                },
                Ok(Some(answer)) => break Ok(answer),
                Err(error) => break Err(error),
            }
        };
        prop_assert_eq!(answer, Ok(Answer::Accepted { peer_limit: limit }));
        let mut rest = opener.into_rest().to_vec();
        for piece in pieces {
            rest.extend_from_slice(piece);
        }
        prop_assert_eq!(rest, object(&after));
    }
}
