//! The built-in `ferry.ping` service every node answers, and [`Node::ping`](crate::Node::ping).
//!
//! A ping is a conversation (stream kind `Conversation`) with the reserved service name
//! [`PING_SERVICE`]: the opener sends `Converse(service "ferry.ping")` and, without waiting for
//! the `Accept`, one `Object` holding a postcard `u64` and its FIN; the acceptor answers
//! `Accept`, the same `Object`, and its FIN. The round trip is timed from opening the stream to
//! reading the echo, on a connection that already exists, so it is one network round trip.
//!
//! Because it is an ordinary service conversation, an application can also call it:
//! `node.call(Target::service(peer, "ferry.ping"), &7u64)` resolves to `7`.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::time::Instant;

use crate::conversation::Conversation;
use crate::error::{DialError, PingError};
use crate::frame::{self, ConverseTarget, ErrorCode, Frame, StreamKind};
use crate::identity::NodeId;
use crate::net::connection::ConnCode;
use crate::net::dial;
use crate::runtime::Runtime;

/// Service names starting with this prefix are reserved for services built into every node;
/// [`Node::service`](crate::Node::service) and [`Node::serve`](crate::Node::serve) refuse them
/// with [`ServeError::Reserved`](crate::ServeError::Reserved).
pub const RESERVED_PREFIX: &str = "ferry.";

/// The name of the built-in ping service (see [`Node::ping`](crate::Node::ping)).
pub const PING_SERVICE: &str = "ferry.ping";

/// Largest object the ping service accepts: a postcard `u64` (a varint of at most 10 bytes).
const MAX_PING_OBJECT: usize = frame::MAX_VARINT_LEN;

/// Whether applications may not register `name`.
pub(crate) fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// Measures one round trip to `peer` (dialing it first if needed, which is not timed).
pub(crate) async fn ping(
    node: &Arc<Runtime>,
    peer: NodeId,
    hints: &[SocketAddr],
) -> Result<Duration, PingError> {
    if node.is_closing() {
        return Err(PingError::NodeClosed);
    }
    let exchange = async {
        let connection =
            dial::connect(&node.net, peer, hints)
                .await
                .map_err(|error| match error {
                    DialError::NodeClosed => PingError::NodeClosed,
                    other => PingError::Unreachable(other),
                })?;
        let mut nonce = [0u8; 8];
        crate::identity::fill_random(&mut nonce);
        let (request, payload) = request(u64::from_be_bytes(nonce));

        let started = Instant::now();
        let (mut send, mut recv) = connection.open_bi().await.map_err(connection_lost)?;
        send.write_all(&request)
            .await
            .map_err(|error| match error {
                quinn::WriteError::ConnectionLost(error) => connection_lost(error),
                quinn::WriteError::Stopped(code) => stream_reset(code, false),
                other => PingError::Protocol(other.to_string()),
            })?;
        let _ = send.finish();
        let echo = read_echo(&mut recv).await?;
        let elapsed = started.elapsed();
        if echo != payload {
            return Err(PingError::Protocol(
                "the echo differs from the request".into(),
            ));
        }
        Ok(elapsed)
    };
    tokio::time::timeout(node.config.call_timeout, exchange)
        .await
        .unwrap_or(Err(PingError::Timeout))
}

/// The opener's bytes: kind, `Converse`, `Object` (the nonce as a postcard u64, which is its
/// varint); and the object payload the echo must repeat.
fn request(nonce: u64) -> (Vec<u8>, Vec<u8>) {
    let mut payload = Vec::with_capacity(MAX_PING_OBJECT);
    frame::put_varint(&mut payload, nonce);
    let mut request = vec![StreamKind::Conversation as u8];
    frame::put_frame(
        &mut request,
        &Frame::Converse(ConverseTarget::Service(PING_SERVICE)),
    );
    frame::put_frame(&mut request, &Frame::Object(&payload));
    (request, payload)
}

/// Reads `Accept` then one `Object`, and returns the object's payload.
async fn read_echo(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, PingError> {
    let mut buf = BytesMut::new();
    let mut accepted = false;
    loop {
        let decoded = frame::decode_frame(&buf, frame::MAX_CONTROL_FRAME_LEN)
            .map_err(|e| PingError::Protocol(e.to_string()))?;
        if let Some((frame, used)) = decoded {
            match frame {
                Frame::Accept { .. } if !accepted => accepted = true,
                Frame::Object(payload) if accepted => return Ok(payload.to_vec()),
                Frame::Close { code, .. } if !accepted && code == ErrorCode::NO_SUCH_SERVICE => {
                    return Err(PingError::Unsupported)
                }
                Frame::Close { code, reason } if !accepted => {
                    return Err(PingError::Refused {
                        code: code.0,
                        reason: reason.to_owned(),
                    })
                }
                Frame::Fail { code, reason } if accepted => {
                    return Err(PingError::Refused {
                        code: code.0,
                        reason: reason.to_owned(),
                    })
                }
                _ => return Err(PingError::Protocol("unexpected frame in a ping".into())),
            }
            buf.advance(used);
            continue;
        }
        match recv.read_chunk(frame::MAX_CONTROL_FRAME_LEN, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(PingError::Protocol(
                    "the stream ended before the echo".into(),
                ))
            }
            Err(quinn::ReadError::Reset(code)) => return Err(stream_reset(code, accepted)),
            Err(quinn::ReadError::ConnectionLost(error)) => return Err(connection_lost(error)),
            Err(error) => return Err(PingError::Protocol(error.to_string())),
        }
    }
}

/// A refusal for a connection the peer closed because it does not admit this node.
fn connection_lost(error: quinn::ConnectionError) -> PingError {
    match error {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == ConnCode::ADMISSION_REFUSED.into() =>
        {
            PingError::Unreachable(DialError::Refused(
                String::from_utf8_lossy(&close.reason).into_owned(),
            ))
        }
        other => PingError::ConnectionLost(other),
    }
}

/// The error for a stream the peer reset (or stopped): NOT_ADMITTED is a refusal, PROTOCOL
/// before the `Accept` means the peer knows no conversation streams (a ferry without them).
fn stream_reset(code: quinn::VarInt, accepted: bool) -> PingError {
    match ErrorCode(code.into_inner()) {
        ErrorCode::NOT_ADMITTED => {
            PingError::Unreachable(DialError::Refused("node not admitted".into()))
        }
        ErrorCode::PROTOCOL if !accepted => PingError::Unsupported,
        ErrorCode(other) => PingError::Reset(other),
    }
}

/// Answers a `ferry.ping` conversation opened by `peer`: `Accept`, then the request object
/// echoed, then FIN. The request must arrive by `deadline` (the stream's opening deadline).
pub(crate) async fn answer(
    peer: NodeId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    deadline: Instant,
) {
    let mut out = Vec::new();
    frame::put_frame(
        &mut out,
        &Frame::Accept {
            max_message: MAX_PING_OBJECT as u64,
        },
    );
    if send.write_all(&out).await.is_err() {
        return;
    }
    let mut conversation = Conversation::new(peer, send, recv, buf, MAX_PING_OBJECT, false);
    if let Ok(Ok(nonce)) = tokio::time::timeout_at(deadline, conversation.recv_obj::<u64>()).await {
        let _ = conversation.reply(&nonce).await;
    }
    // Otherwise dropping the conversation resets it with HANDLER_FAILED.
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact bytes of docs/PROTOCOL.md's ping example (nonce 300).
    #[test]
    fn wire_bytes() {
        let (request, payload) = request(300);
        assert_eq!(payload, [0xac, 0x02]);
        assert_eq!(postcard::to_allocvec(&300u64).unwrap(), payload);
        let mut expected = vec![0x02, 0x0c, 0x10, 0x02];
        expected.extend_from_slice(b"ferry.ping");
        expected.extend_from_slice(&[0x03, 0x13, 0xac, 0x02]);
        assert_eq!(request, expected);

        let mut accept = Vec::new();
        frame::put_frame(
            &mut accept,
            &Frame::Accept {
                max_message: MAX_PING_OBJECT as u64,
            },
        );
        assert_eq!(accept, [0x02, 0x02, 0x0a]);
    }

    #[test]
    fn reserved_names() {
        assert!(is_reserved(PING_SERVICE));
        assert!(is_reserved("ferry."));
        assert!(!is_reserved("ferryman"));
        assert!(!is_reserved("FERRY.ping"));
    }
}
