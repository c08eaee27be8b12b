//! The node's tables: open mailboxes, registered services, outgoing conversations, watches
//! of other nodes' mailboxes, and the runs delivered here. Data and its bookkeeping only: no
//! tasks, no IO, and nothing from the modules that use them.

pub(crate) mod dedup;
pub(crate) mod mailboxes;
pub(crate) mod outbound;
pub(crate) mod queue;
pub(crate) mod services;
pub(crate) mod watches;
