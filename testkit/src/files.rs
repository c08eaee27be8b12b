//! A service for the gateway's data streams (docs/GATEWAY.md §13.11), as HBI's file service:
//! its request object is a JSON text (a byte string, as the gateway sends a data stream's
//! `data`), then it reads the upload, sends its own data, and replies with a JSON text.
//!
//! - `{"op":"upload"}`: reads the upload, sends no data, replies
//!   `{"bytes":N,"sha256":"…"}` (the upload's length and SHA-256, lowercase hex).
//! - `{"op":"download","bytes":N}`: reads the upload (normally empty), sends `N` bytes of
//!   [`pattern`], replies with their length and SHA-256 the same way.
//!
//! A [`Gate`] makes it a slow reader: it stops reading once it has read `pause_after` bytes
//! of an upload, until [`Gate::resume`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry::{Conversation, ConversationError, Node, ServiceHandle, ServiceOptions};

/// Byte `i` of the data the service sends (and tests upload): `i mod 251`, a pattern whose
/// period is no power of two, so a piece lost, doubled or out of place changes the hash.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// SHA-256 in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a test sees of the service's reading, and how it holds it back.
#[derive(Debug, Default)]
pub struct Gate {
    /// Bytes of uploads read so far.
    pub read: AtomicU64,
    /// Stop reading an upload once this many bytes of it were read (`u64::MAX`: never).
    pub pause_after: AtomicU64,
    resume: tokio::sync::Notify,
}

impl Gate {
    /// A gate that pauses after `pause_after` bytes.
    pub fn pausing_after(pause_after: u64) -> Arc<Self> {
        let gate = Self::default();
        gate.pause_after.store(pause_after, Ordering::Relaxed);
        Arc::new(gate)
    }

    /// Lets a paused reader go on, for good.
    pub fn resume(&self) {
        self.pause_after.store(u64::MAX, Ordering::Relaxed);
        self.resume.notify_waiters();
        self.resume.notify_one();
    }
}

/// Registers the service `name` on `node`; `gate` (if any) holds its reading back.
pub fn serve(node: &Node, name: &str, gate: Option<Arc<Gate>>) -> ServiceHandle {
    let gate = gate.unwrap_or_else(|| Gate::pausing_after(u64::MAX));
    node.serve(name, ServiceOptions::default(), move |conversation| {
        let gate = gate.clone();
        async move {
            let _ = handle(conversation, &gate).await;
        }
    })
    .unwrap_or_else(|e| panic!("registering {name}: {e}"))
}

async fn handle(mut conversation: Conversation, gate: &Gate) -> Result<(), ConversationError> {
    let request: Vec<u8> = conversation.recv_obj().await?;
    let request: serde_json::Value = serde_json::from_slice(&request).unwrap_or_default();
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut read = 0u64;
    while let Some(chunk) = conversation.recv_chunk().await? {
        hash.update(&chunk);
        read += chunk.len() as u64;
        gate.read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        while read >= gate.pause_after.load(Ordering::Relaxed) {
            let resumed = gate.resume.notified();
            if read < gate.pause_after.load(Ordering::Relaxed) {
                break;
            }
            resumed.await;
        }
    }
    let reply = match request["op"].as_str() {
        Some("download") => {
            let bytes = request["bytes"].as_u64().unwrap_or(0);
            let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
            let mut sent = 0u64;
            while sent < bytes {
                let piece = pattern(sent, (bytes - sent).min(64 * 1024) as usize);
                hash.update(&piece);
                conversation.send_chunk(&piece).await?;
                sent += piece.len() as u64;
            }
            conversation.end_data().await?;
            serde_json::json!({"bytes": bytes, "sha256": hex(hash.finish().as_ref())})
        }
        _ => serde_json::json!({"bytes": read, "sha256": hex(hash.finish().as_ref())}),
    };
    conversation
        .reply(&serde_json::to_vec(&reply).unwrap_or_default())
        .await
}
