//! Random bytes for secrets (session ids, the resume-token key). Nothing random is safe
//! without the operating system's generator, so its failure stops the process instead of
//! handing out predictable bytes.

/// `N` bytes from the operating system's random source.
///
/// # Panics
///
/// If the operating system's random source fails (see
/// [`ferry_proto::identity::fill_random`]): a session id or key made of anything else could
/// be guessed.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ferry_proto::identity::fill_random(&mut bytes);
    bytes
}
