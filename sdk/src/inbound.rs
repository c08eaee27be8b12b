//! The receiving side of mailbox streams: checks the capability once when the stream opens,
//! then delivers messages in order into the target mailbox and acknowledges them cumulatively.
//! Waiting for room in a full mailbox stops reading the stream, so QUIC flow control slows
//! that one sender and no other.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::sync::Mutex as AsyncMutex;
use tracing::debug;

use crate::address::MailboxId;
use crate::error::SendError;
use crate::frame::{self, ErrorCode, Frame, Open};
use crate::identity::NodeId;
use crate::mailbox::{lock, Message};
use crate::node::NodeInner;

/// Duplicate suppression state of one conversation run, as seen by the receiver.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DedupState {
    /// Every message below this sequence number was delivered.
    next_seq: Option<u64>,
}

/// (sending node, sending mailbox, target mailbox, epoch): one run of one conversation.
type DedupKey = (NodeId, MailboxId, MailboxId, u64);

/// A dedup entry and when it was last used (a logical clock), for eviction.
type DedupEntry = (u64, Arc<AsyncMutex<DedupState>>);

/// Per-conversation duplicate suppression, bounded by `max_dedup_entries`.
#[derive(Default)]
pub(crate) struct DedupTable {
    entries: std::sync::Mutex<HashMap<DedupKey, DedupEntry>>,
    clock: std::sync::atomic::AtomicU64,
}

impl DedupTable {
    fn entry(&self, key: DedupKey, max: usize) -> Arc<AsyncMutex<DedupState>> {
        let now = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = lock(&self.entries);
        if let Some((used, state)) = entries.get_mut(&key) {
            *used = now;
            return state.clone();
        }
        if entries.len() >= max {
            // Forget the least recently opened conversation that no stream is using.
            let victim = entries
                .iter()
                .filter(|(_, (_, state))| Arc::strong_count(state) == 1)
                .min_by_key(|(_, (used, _))| *used)
                .map(|(key, _)| *key);
            if let Some(victim) = victim {
                entries.remove(&victim);
            }
        }
        let state = Arc::new(AsyncMutex::new(DedupState::default()));
        entries.insert(key, (now, state.clone()));
        state
    }
}

/// Serves one mailbox stream opened by `peer`. The stream kind byte was already read.
pub(crate) async fn serve(
    node: Arc<NodeInner>,
    peer: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let open = match read_open(&node, &mut recv, &mut buf).await {
        Ok(open) => open,
        Err((code, reason)) => return refuse(&mut send, code, &reason).await,
    };
    let queue = match authorize(&node, peer, &open) {
        Ok(queue) => queue,
        Err((code, reason)) => return refuse(&mut send, code, &reason).await,
    };
    let from = Arc::new(open.from);
    let dedup = node.dedup.entry(
        (peer, from.mailbox(), open.target.mailbox(), open.epoch),
        node.config.max_dedup_entries,
    );
    let expires = open.target.expires();
    let mut out = Vec::with_capacity(16);
    frame::put_frame(
        &mut out,
        &Frame::Accept {
            max_message: node.config.max_message_size as u64,
        },
    );
    if send.write_all(&out).await.is_err() {
        return;
    }
    let max_frame = node.config.max_message_size + 1;
    let mut seq = open.first_seq;
    let mut acked = seq;
    {
        // A sender only forgets messages that were acknowledged, so a first_seq beyond what we
        // delivered means our state was evicted: trust the sender.
        let mut state = dedup.lock().await;
        if state.next_seq.is_none_or(|next| seq > next) {
            state.next_seq = Some(seq);
        }
    }
    loop {
        if expires.is_some_and(|at| crate::node::unix_now() >= at) {
            return refuse(&mut send, ErrorCode::EXPIRED, "address expired").await;
        }
        // Deliver every complete frame in the buffer, then acknowledge them together.
        {
            let mut state = dedup.lock().await;
            loop {
                let decoded = match frame::decode_frame(&buf, max_frame) {
                    Ok(decoded) => decoded,
                    Err(frame::FrameError::TooLarge { len, max }) => {
                        let reason = format!("frame of {len} bytes exceeds {max}");
                        return refuse(&mut send, ErrorCode::TOO_LARGE, &reason).await;
                    }
                    Err(error) => {
                        return refuse(&mut send, ErrorCode::PROTOCOL, &error.to_string()).await;
                    }
                };
                let Some((frame, used)) = decoded else {
                    break;
                };
                let Frame::Message(payload) = frame else {
                    return refuse(&mut send, ErrorCode::PROTOCOL, "expected message frame").await;
                };
                let header = used - payload.len();
                let message = buf.split_to(used).freeze().slice(header..);
                if state.next_seq.is_some_and(|next| seq < next) {
                    seq += 1; // already delivered on an earlier stream
                    continue;
                }
                let message = Message {
                    from: from.clone(),
                    payload: message,
                };
                let permit = tokio::select! {
                    permit = queue.reserve() => permit,
                    _ = node.cancel.cancelled() => {
                        return refuse(&mut send, ErrorCode::SHUTTING_DOWN, "node shutting down").await;
                    }
                };
                let Ok(permit) = permit else {
                    return refuse(&mut send, ErrorCode::NO_SUCH_MAILBOX, "mailbox closed").await;
                };
                permit.send(message);
                node.stats.count_message_in();
                seq += 1;
                state.next_seq = Some(seq);
            }
        }
        if seq > acked {
            acked = seq;
            out.clear();
            frame::put_frame(&mut out, &Frame::Ack { next_seq: seq });
            if send.write_all(&out).await.is_err() {
                return;
            }
        }
        let chunk = tokio::select! {
            chunk = recv.read_chunk(64 * 1024, true) => chunk,
            _ = node.cancel.cancelled() => {
                return refuse(&mut send, ErrorCode::SHUTTING_DOWN, "node shutting down").await;
            }
        };
        match chunk {
            Ok(Some(chunk)) => {
                // Bound the buffer: a partial frame never exceeds one maximum frame.
                if buf.len() + chunk.bytes.len() > max_frame + frame::MAX_VARINT_LEN + 64 * 1024 {
                    return refuse(&mut send, ErrorCode::TOO_LARGE, "frame too large").await;
                }
                buf.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => {
                if buf.has_remaining() {
                    return refuse(
                        &mut send,
                        ErrorCode::PROTOCOL,
                        "stream ended inside a frame",
                    )
                    .await;
                }
                let _ = send.finish();
                return;
            }
            Err(error) => {
                debug!(%error, "mailbox stream ended");
                return;
            }
        }
    }
}

async fn read_open(
    node: &NodeInner,
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
) -> Result<Open, (ErrorCode, String)> {
    let read = async {
        loop {
            match frame::decode_frame(buf, frame::MAX_CONTROL_FRAME_LEN) {
                Ok(Some((Frame::Open(open), used))) => {
                    buf.advance(used);
                    return Ok(*open);
                }
                Ok(Some(_)) => return Err((ErrorCode::PROTOCOL, "expected open frame".into())),
                Ok(None) => {}
                Err(error) => return Err((ErrorCode::PROTOCOL, error.to_string())),
            }
            match recv.read_chunk(frame::MAX_CONTROL_FRAME_LEN, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => return Err((ErrorCode::PROTOCOL, "stream ended before open".into())),
            }
        }
    };
    tokio::time::timeout(node.config.open_timeout, read)
        .await
        .unwrap_or_else(|_| Err((ErrorCode::TIMEOUT, "no open frame in time".into())))
}

fn authorize(
    node: &NodeInner,
    peer: NodeId,
    open: &Open,
) -> Result<tokio::sync::mpsc::Sender<Message>, (ErrorCode, String)> {
    if open.from.node() != peer {
        return Err((
            ErrorCode::FROM_MISMATCH,
            "from address is not the sending node's".into(),
        ));
    }
    node.mailboxes
        .authorize(node, &open.target)
        .map_err(|error| (error_code(&error), error.to_string()))
}

fn error_code(error: &SendError) -> ErrorCode {
    match error {
        SendError::Forged => ErrorCode::FORGED,
        SendError::Expired(_) => ErrorCode::EXPIRED,
        SendError::WrongNode => ErrorCode::WRONG_NODE,
        SendError::NoSuchMailbox => ErrorCode::NO_SUCH_MAILBOX,
        _ => ErrorCode::PROTOCOL,
    }
}

async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, reason: &str) {
    debug!(code = code.0, reason, "closing mailbox stream");
    let mut out = Vec::with_capacity(reason.len() + 16);
    frame::put_frame(&mut out, &Frame::Close { code, reason });
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
    }
}
