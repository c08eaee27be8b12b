//! The wall clock a node checks addresses' expiry against (docs/PROTOCOL.md §4.6). QUIC and
//! every timeout run on tokio's clock, which tests pause and advance; expiry is a date, read
//! from this clock, which tests set.

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds since the Unix epoch, as a node sees them.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time in whole seconds since the Unix epoch.
    fn unix_now(&self) -> u64;
}

/// The operating system's clock (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    }
}

/// A clock that moves only when told: for tests of expiry that should not wait for it.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `unix_secs`.
    pub fn new(unix_secs: u64) -> Self {
        Self(AtomicU64::new(unix_secs))
    }

    /// A clock showing the system's time now.
    pub fn from_system() -> Self {
        Self::new(SystemClock.unix_now())
    }

    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix_now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
