//! Names of the lab's namespaces: unique per run, remembered while they exist so that a signal
//! handler can remove them, and recognisable afterwards so that a later run removes those a
//! killed run left behind.
//!
//! A name is `ferrylab-<pid>-<random>-<role>`: the pid of the process that made it (a later run
//! removes the namespaces of pids that no longer run) and a random part (two labs of one
//! process, such as tests running in parallel, never share a name).

use std::collections::BTreeSet;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::namespace::delete_namespace;
use super::shell::{run, CommandError};

/// Every lab namespace name starts with this.
pub(crate) const PREFIX: &str = "ferrylab-";

/// The namespaces this process created and has not deleted yet.
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// A fresh `ferrylab-<pid>-<random>` prefix for one lab's namespaces.
pub(crate) fn new_run_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    format!(
        "{PREFIX}{}-{:06x}",
        std::process::id(),
        hasher.finish() & 0xff_ffff
    )
}

pub(crate) fn register(name: &str) {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.to_string());
}

pub(crate) fn unregister(name: &str) {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(name);
}

/// Deletes every namespace this process created and has not deleted yet, killing what runs in
/// them. For a signal handler, which exits right after (no `Drop` runs then).
pub fn tear_down_all() {
    let names: Vec<String> =
        std::mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner))
            .into_iter()
            .collect();
    for name in names {
        delete_namespace(&name);
    }
}

/// Deletes the lab namespaces whose creating process no longer runs (left by a run that was
/// killed before it could clean up); returns their names.
pub fn remove_stale() -> Result<Vec<String>, CommandError> {
    let listing = run("ip", &["netns", "list"], None)?;
    let mut removed = Vec::new();
    for line in listing.lines() {
        // "NAME" or "NAME (id: N)".
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(name);
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}
