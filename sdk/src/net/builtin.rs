//! The exchange of the small services built into every node (`ferry.observe`, `ferry.punch`;
//! `ferry.ping` times its own): the opener sends `Converse` by name, at most one `Object`,
//! and FIN; the acceptor answers `Accept`, one `Object`, and FIN (docs/PROTOCOL.md §10.11).
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::pin::Pin;

use bytes::{Buf, BytesMut};

use crate::frame::{self, ConverseTarget, ErrorCode, Frame, StreamKind};

/// Why a built-in exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The peer does not know the service.
    #[error("the peer does not offer this service")]
    Unsupported,
    /// The peer refused, or failed, with this code.
    #[error("refused with code {code}: {reason}")]
    Refused { code: u64, reason: String },
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The connection or stream was lost.
    #[error("connection lost: {0}")]
    Lost(String),
}

/// The opener's bytes: kind, `Converse` by `service`, and `request` as one `Object` if any.
pub(crate) fn request(service: &str, request: Option<&[u8]>) -> Vec<u8> {
    let mut out = vec![StreamKind::Conversation as u8];
    frame::put_frame(&mut out, &Frame::Converse(ConverseTarget::Service(service)));
    if let Some(object) = request {
        frame::put_frame(&mut out, &Frame::Object(object));
    }
    out
}

/// The acceptor's bytes: `Accept` (it takes no more objects) and `answer` as one `Object`.
pub(crate) fn answer(answer: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::put_frame(&mut out, &Frame::Accept { max_message: 0 });
    frame::put_frame(&mut out, &Frame::Object(answer));
    out
}

/// Opens `service` on `connection`, sends `request`, and returns the answer object.
pub(crate) async fn exchange(
    connection: &quinn::Connection,
    service: &str,
    object: Option<&[u8]>,
) -> Result<Vec<u8>, ExchangeError> {
    let lost = |error: &dyn std::fmt::Display| ExchangeError::Lost(error.to_string());
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
    send.write_all(&request(service, object))
        .await
        .map_err(|e| lost(&e))?;
    let _ = send.finish();
    let mut buf = BytesMut::new();
    let mut accepted = false;
    loop {
        let decoded = frame::decode_frame(&buf, frame::MAX_CONTROL_FRAME_LEN)
            .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
        if let Some((frame, used)) = decoded {
            match frame {
                Frame::Accept { .. } if !accepted => accepted = true,
                Frame::Object(payload) if accepted => return Ok(payload.to_vec()),
                Frame::Close { code, .. } if !accepted && code == ErrorCode::NO_SUCH_SERVICE => {
                    return Err(ExchangeError::Unsupported)
                }
                Frame::Close { code, reason } | Frame::Fail { code, reason } => {
                    return Err(ExchangeError::Refused {
                        code: code.0,
                        reason: reason.to_owned(),
                    })
                }
                _ => return Err(ExchangeError::Protocol("unexpected frame".into())),
            }
            buf.advance(used);
            continue;
        }
        match recv.read_chunk(frame::MAX_CONTROL_FRAME_LEN, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(ExchangeError::Protocol("the stream ended early".into())),
            Err(quinn::ReadError::Reset(code))
                if code.into_inner() == ErrorCode::PROTOCOL.0 && !accepted =>
            {
                return Err(ExchangeError::Unsupported)
            }
            Err(error) => return Err(lost(&error)),
        }
    }
}

/// Reads the opener's request: one OBJECT of at most `max` bytes (an ACCEPT the opener may
/// send before it is skipped, docs/PROTOCOL.md §10.11), from what `buf` holds and then `recv`.
pub(crate) async fn read_request(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Vec<u8>, &'static str> {
    let limit = max.max(frame::MAX_CONTROL_FRAME_LEN);
    loop {
        match frame::decode_frame(buf, limit) {
            Ok(Some((Frame::Accept { .. }, used))) => buf.advance(used),
            Ok(Some((Frame::Object(payload), _))) if payload.len() > max => {
                return Err("request too large")
            }
            Ok(Some((Frame::Object(payload), _))) => return Ok(payload.to_vec()),
            Ok(Some(_)) => return Err("expected one object"),
            Err(_) => return Err("malformed request"),
            Ok(None) => match recv.read_chunk(limit, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => return Err("the stream ended before the request"),
            },
        }
    }
}

/// Ends a built-in's stream because its request failed: FAIL with `reason`, then FIN.
pub(crate) async fn fail(send: &mut quinn::SendStream, reason: &str) {
    let mut out = Vec::new();
    frame::put_frame(
        &mut out,
        &Frame::Fail {
            code: ErrorCode::HANDLER_FAILED,
            reason,
        },
    );
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
    }
}

/// Refuses a stream before its conversation starts: CLOSE with `code` and `reason`, FIN, and
/// up to a second for the peer to read them.
///
/// Boxed: a refusal is rare, and every stream that may end in one would otherwise keep room for
/// its wait in its future (and copy that room whenever the future moves).
pub(crate) fn refuse<'a>(
    send: &'a mut quinn::SendStream,
    code: ErrorCode,
    reason: &str,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    let out = ferry_proto::conversation::refusal(code, reason);
    Box::pin(async move {
        if send.write_all(&out).await.is_ok() {
            let _ = send.finish();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
        }
    })
}

/// Answers with `object` on `send` and finishes it.
pub(crate) async fn reply(send: &mut quinn::SendStream, object: &[u8]) {
    if send.write_all(&answer(object)).await.is_ok() {
        let _ = send.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of docs/PROTOCOL.md's examples for the built-in services.
    #[test]
    fn wire_bytes() {
        let mut expected = vec![0x02, 0x0f, 0x10, 0x02];
        expected.extend_from_slice(b"ferry.observe");
        assert_eq!(request("ferry.observe", None), expected);
        let answer = answer(&[0x04, 192, 0, 2, 7, 0x11, 0x51]);
        assert_eq!(
            answer,
            [0x02, 0x02, 0x00, 0x08, 0x13, 0x04, 192, 0, 2, 7, 0x11, 0x51]
        );
    }
}
