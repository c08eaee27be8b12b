//! The daemon's durable store: mailboxes kept in one redb file.
//!
//! All writes go through one writer thread (`writer`) that takes every request waiting in
//! its queue, applies them in one transaction and commits once with `Durability::Immediate`
//! (fsync), so many streams storing at the same time share one disk flush (group commit). A
//! message is acknowledged to its sender only after that commit. Removals (messages the
//! application or a browser acknowledged) go to the writer through a list it takes whole with
//! each batch, so they do not wake it one by one; a crash before their commit only delivers
//! those messages again.
//!
//! Modules: `schema` (the tables and key layouts), `row` (the row codec, pure),
//! `redb_store` ([`RedbStore`]: opening, the node's [`MailboxStore`](ferry::MailboxStore)),
//! `session_store` (the [`SessionStore`] trait the browser gateway runs on, and its
//! implementation), `records` (small records: the gateway's sessions and resume-token key),
//! `shared` (messages stored once for several mailboxes), `senders` (sender addresses stored
//! once for the messages that name them), `counts` and `removal` (what the
//! writer knows of each mailbox; acknowledged and purged rows), `capabilities` (counts of
//! "max messages" caveats and revoked grants), `writer` (the writer thread: batches, group
//! commit).

mod capabilities;
mod counts;
mod records;
mod redb_store;
mod removal;
mod row;
mod schema;
mod senders;
mod session_store;
mod shared;
mod writer;

use std::path::PathBuf;
use std::time::Duration;

use ferry::StoreError;

pub use redb_store::RedbStore;
use row::RowError;
pub use session_store::{Appended, SessionStore, TaggedMessage};

/// Limits of a [`RedbStore`]. Deserializes (serde) from its field names, as the `ferry`
/// config file writes them after the `store_` prefix; an absent key keeps its default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Unacknowledged messages one mailbox may hold; beyond it the node stops reading the
    /// senders' streams (QUIC flow control slows them) until the application acknowledges
    /// messages. Default 1,000,000. (The config file's key is `store_max_pending`.)
    #[serde(alias = "max_pending")]
    pub max_pending_per_mailbox: u64,
    /// How long the duplicate-suppression record of a conversation run is kept after its last
    /// message. A sender that resends after a longer silence is not recognised. Default 7 days.
    #[serde(with = "ferry::duration")]
    pub run_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_pending_per_mailbox: 1_000_000,
            run_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStoreError {
    /// The database file could not be created, opened or read.
    #[error("opening store {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: redb::Error,
    },
    /// The writer thread could not be started.
    #[error("starting the store's writer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A database error as the SDK's store error (the one place that turns one into the other).
pub(crate) fn failed(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Failed(error.into().to_string())
}

/// A row that is not one, as the SDK's store error.
pub(crate) fn corrupt(error: RowError) -> StoreError {
    StoreError::Corrupt(format!("stored message: {error}"))
}
