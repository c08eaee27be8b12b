//! Durable mailboxes against the runtime's receiving side: what happens to a batch between
//! the store's write and its acknowledgement (the daemon's redb store is tested in
//! `node/tests/durable.rs`; here a store in memory lets the test hold a write open).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry::address::{Address, MailboxId};
use ferry::store::{MailboxStore, RunId, StoreError, StoreFuture, StoredMessage};
use ferry::{Node, NodeConfig, SecretKey};
use ferry_testkit::wait::wait_for;
use tokio::sync::{mpsc, Semaphore};

const WAIT: Duration = Duration::from_secs(20);

/// A store in memory (one mailbox) whose appends wait for a permit from `gate`, each telling
/// `appends` first that it began.
struct GatedStore {
    memory: Arc<Mutex<Memory>>,
    gate: Arc<Semaphore>,
    appends: mpsc::UnboundedSender<()>,
}

#[derive(Default)]
struct Memory {
    next_index: u64,
    messages: Vec<StoredMessage>,
    runs: HashMap<RunId, u64>,
}

impl MailboxStore for GatedStore {
    fn append(
        &self,
        _mailbox: MailboxId,
        run: Option<(RunId, u64)>,
        messages: Vec<(Address, Bytes)>,
    ) -> StoreFuture<Vec<u64>> {
        let (memory, gate, appends) =
            (self.memory.clone(), self.gate.clone(), self.appends.clone());
        Box::pin(async move {
            let _ = appends.send(());
            gate.acquire()
                .await
                .map_err(|error| StoreError::Failed(error.to_string()))?
                .forget();
            let mut memory = memory.lock().unwrap();
            let mut indexes = Vec::new();
            for (from, payload) in messages {
                let index = memory.next_index;
                memory.next_index += 1;
                memory.messages.push(StoredMessage {
                    index,
                    from,
                    payload,
                });
                indexes.push(index);
            }
            if let Some((run, first_seq)) = run {
                memory.runs.insert(run, first_seq + indexes.len() as u64);
            }
            Ok(indexes)
        })
    }

    fn delivered(&self, _mailbox: MailboxId, run: RunId) -> Result<Option<u64>, StoreError> {
        Ok(self.memory.lock().unwrap().runs.get(&run).copied())
    }

    fn end_run(&self, _mailbox: MailboxId, run: RunId) {
        self.memory.lock().unwrap().runs.remove(&run);
    }

    fn pending(&self, _mailbox: MailboxId) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.memory.lock().unwrap().messages.clone())
    }

    fn remove(&self, _mailbox: MailboxId, index: u64) {
        self.memory
            .lock()
            .unwrap()
            .messages
            .retain(|message| message.index != index);
    }
}

/// A batch stored, whose ACK cannot be written because the connection closed in between, still
/// reaches the application: the run counts it as delivered, so a resend of it is skipped as a
/// duplicate, and before the fix it stayed in the store until the mailbox was opened again
/// (found by ferry-sim, its seed 1 with the old behaviour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_batch_whose_ack_cannot_be_written_still_reaches_the_mailbox() {
    let gate = Arc::new(Semaphore::new(0));
    let (appends, mut appending) = mpsc::unbounded_channel();
    let store = GatedStore {
        memory: Arc::default(),
        gate: gate.clone(),
        appends,
    };
    let receiver = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let mailbox = receiver
        .durable_mailbox(MailboxId(1), Arc::new(store))
        .unwrap();
    let sender = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let out = sender.sender(mailbox.address());
    let sending = tokio::spawn(async move { out.send_bytes(Bytes::from_static(b"kept")).await });

    // The batch is being stored; the connection closes before its ACK is written.
    tokio::time::timeout(WAIT, appending.recv())
        .await
        .unwrap()
        .unwrap();
    sender.shutdown(Duration::from_millis(50)).await;
    wait_for("the connection to close", || {
        !receiver.is_connected(&sender.id())
    })
    .await;
    gate.add_permits(1);

    let message = mailbox.recv_timeout(WAIT).await.unwrap();
    assert_eq!(message.payload().as_ref(), b"kept");
    assert_eq!(message.id(), Some(0));
    // The sender shut down without its acknowledgement: for it the message is not confirmed.
    let _ = sending.await.unwrap();
}
