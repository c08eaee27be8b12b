//! Wall-clock time where it is stored: run records (`runs`), session records, credentials'
//! expiry. Everything that only measures time in the process uses `Instant`.

/// Seconds since the unix epoch (0 if the system clock is set before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
