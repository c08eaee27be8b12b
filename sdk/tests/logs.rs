//! What the SDK logs. A test binary of its own: its test installs a tracing subscriber for
//! one thread, and other tests running beside it in one process can race tracing's callsite
//! registration and leave callsites disabled for it (it then misses log lines).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use ferry::{Address, NodeConfig, SendError};
use ferry_testkit::fake_peer::{read_close, Intruder};

use common::{node_with, WAIT};

/// A `MakeWriter` collecting log lines in memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Addresses are bearer capabilities: they travel inside authenticated streams, never in
/// logs. Every path that handles one — delivery, refusals of forged, expired, wrong-node and
/// revoked addresses, conversations and watches by address, malformed frames — logs at the
/// most verbose level without printing one.
#[test]
fn addresses_never_appear_in_logs() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let mut seen = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        // One thread: every task of both nodes logs through this subscriber.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let a = node_with(NodeConfig::default()).await;
            let b = node_with(NodeConfig {
                open_timeout: Duration::from_millis(500),
                frame_timeout: Duration::from_millis(500),
                ..NodeConfig::default()
            })
            .await;
            let mailbox = b.mailbox();
            let address = mailbox.address().clone();
            a.send(&address, "hello").await.unwrap();
            let message = mailbox.recv_timeout(WAIT).await.unwrap();
            seen.push(message.from().clone());
            let mut forged = address.core_bytes().unwrap();
            forged[60] ^= 1;
            let forged = Address::from_core_bytes(&forged)
                .unwrap()
                .with_hints(address.hints().to_vec());
            assert_eq!(a.send(&forged, "x").await, Err(SendError::Forged));
            let expired = b.address_for(mailbox.id(), Some(1));
            assert!(a.send(&expired, "x").await.is_err());
            let elsewhere = a.address_for(a.inbox().id(), None);
            let wrong = Address::from_core_bytes(&{
                let mut core = elsewhere.core_bytes().unwrap();
                core[..32].copy_from_slice(b.id().as_bytes());
                core
            })
            .unwrap()
            .with_hints(address.hints().to_vec());
            assert!(a.send(&wrong, "x").await.is_err());
            let service = b
                .serve("svc", ferry::ServiceOptions::default(), |c| async move {
                    let _ = c.reply(&"ok").await;
                })
                .unwrap();
            let reply: String = a.call(service.address().clone(), &"hi").await.unwrap();
            assert_eq!(reply, "ok");
            let _ = a.call::<_, String>(forged.clone(), &"hi").await;
            let watch = a.monitor(&address).unwrap();
            mailbox.close();
            let _ = tokio::time::timeout(WAIT, watch).await.unwrap();
            assert_eq!(a.send(&address, "x").await, Err(SendError::NoSuchMailbox));
            let hostile = Intruder::connect(&b, b.inbox().address()).await;
            let (mut send, mut recv, mut buf) = hostile.open_stream().await;
            send.write_all(&[0x02, 0x42, 0x00]).await.unwrap();
            let _ = read_close(&mut recv, &mut buf).await;
            seen.extend([address, forged, expired, wrong, service.address().clone()]);
            seen.push(a.inbox().address().clone());
            seen.push(b.inbox().address().clone());
            a.shutdown(Duration::from_millis(100)).await;
            b.shutdown(Duration::from_millis(100)).await;
        });
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.lines().count() > 100, "{logs}");
    assert!(!logs.contains("ferry1"), "an address in the logs");
    for address in seen {
        let text = address.to_string();
        let body = &text[6..60];
        assert!(!logs.contains(body), "{address:?} in the logs");
        let core = data_encoding::HEXLOWER.encode(&address.core_bytes().unwrap()[40..]);
        assert!(!logs.contains(&core), "{address:?} signature in the logs");
    }
}
