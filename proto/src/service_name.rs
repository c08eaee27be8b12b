//! Service names, as frames, caveats and registries take them.

/// Longest service name, in bytes.
pub const MAX_SERVICE_NAME_LEN: usize = 64;

/// A service name: 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`.
pub fn valid_service_name(name: &str) -> bool {
    (1..=MAX_SERVICE_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
