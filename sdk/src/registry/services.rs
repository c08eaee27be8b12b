//! The service table: the node's registered services, by name and by mailbox id.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::address::{Address, MailboxId};
use crate::conversation::Conversation;
use crate::identity::NodeId;

/// A registered service.
pub(crate) struct ServiceEntry {
    pub(crate) name: String,
    pub(crate) mailbox: MailboxId,
    pub(crate) allow: Option<HashSet<NodeId>>,
    pub(crate) incoming: Incoming,
    pub(crate) address: Address,
}

/// What serves one conversation of a service run by a handler: its future.
pub(crate) type Handler =
    dyn Fn(Conversation) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// Where a service's conversations go.
pub(crate) enum Incoming {
    /// Into the backlog that the application takes them from (`Service::accept`).
    Backlog(mpsc::Sender<Conversation>),
    /// To the handler given to `Node::serve`, run on the task of the conversation's stream:
    /// no hand-off to another task between the opener's request and the handler.
    Handler {
        /// Makes the future that serves one conversation.
        run: Arc<Handler>,
        /// The service's span, which the handlers run in.
        span: tracing::Span,
    },
}

/// The node's registered services, by name and by mailbox id.
#[derive(Default)]
pub(crate) struct Services {
    inner: RwLock<ServiceIndex>,
}

#[derive(Default)]
pub(crate) struct ServiceIndex {
    pub(crate) by_name: HashMap<String, Arc<ServiceEntry>>,
    pub(crate) by_mailbox: HashMap<MailboxId, Arc<ServiceEntry>>,
}

impl Services {
    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, ServiceIndex> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, ServiceIndex> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn remove(&self, name: &str, mailbox: MailboxId) {
        let mut registry = self.write();
        if registry
            .by_name
            .get(name)
            .is_some_and(|entry| entry.mailbox == mailbox)
        {
            registry.by_name.remove(name);
        }
        registry.by_mailbox.remove(&mailbox);
    }
}
