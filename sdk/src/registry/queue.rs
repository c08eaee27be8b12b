//! A mailbox's queue of delivered messages, made when it is first used: by the first message
//! delivered, or the application's first read. A mailbox that only sends (one per outgoing
//! conversation is common) never pays for one — tokio's channel allocates its first block of
//! 32 messages (1.8 KiB) and its 0.5 KiB of shared state when it is made, used or not.

use std::sync::{Mutex, OnceLock};

use tokio::sync::mpsc;

use crate::sync::lock;

/// The queue of one mailbox, shared by its [`Mailbox`](crate::Mailbox) and the node's table.
#[derive(Debug)]
pub(crate) struct MailboxQueue<T> {
    /// Messages the queue holds at most (`mailbox_capacity`).
    capacity: usize,
    channel: OnceLock<Channel<T>>,
}

#[derive(Debug)]
struct Channel<T> {
    sender: mpsc::Sender<T>,
    /// The receiving end, until the mailbox takes it (or closes the queue).
    receiver: Mutex<Option<mpsc::Receiver<T>>>,
}

impl<T> MailboxQueue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            channel: OnceLock::new(),
        }
    }

    fn channel(&self) -> &Channel<T> {
        self.channel.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(self.capacity.max(1));
            Channel {
                sender,
                receiver: Mutex::new(Some(receiver)),
            }
        })
    }

    /// The sending end. Sends fail once the receiving end is gone: the mailbox closed.
    pub(crate) fn sender(&self) -> &mpsc::Sender<T> {
        &self.channel().sender
    }

    /// The receiving end, to the one that asks first; `None` after that or once closed.
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<T>> {
        lock(&self.channel().receiver).take()
    }

    /// Closes the queue if the receiving end was never taken: later sends fail, as they do
    /// once a taken receiving end is dropped.
    pub(crate) fn close(&self) {
        drop(self.take_receiver());
    }

    /// Messages queued, not yet taken by the application.
    pub(crate) fn len(&self) -> usize {
        self.channel.get().map_or(0, |channel| {
            channel.sender.max_capacity() - channel.sender.capacity()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_made_until_used_and_closing_refuses_later_sends() {
        let queue = MailboxQueue::new(4);
        assert!(queue.channel.get().is_none());
        assert_eq!(queue.len(), 0);
        queue.sender().try_send(1u32).unwrap();
        assert_eq!(queue.len(), 1);
        let mut receiver = queue.take_receiver().unwrap();
        assert!(
            queue.take_receiver().is_none(),
            "the receiving end is taken once"
        );
        assert_eq!(receiver.recv().await, Some(1));
        drop(receiver);
        assert!(queue.sender().try_send(2).is_err());

        let unused = MailboxQueue::<u32>::new(4);
        unused.close();
        assert!(unused.sender().try_send(3).is_err());
        assert!(unused.take_receiver().is_none());
    }
}
