//! Message payloads as values: postcard, one value per payload.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::PayloadError;

/// Room for a small value's encoding, so that it takes one allocation instead of one per
/// growth; a larger value grows as usual.
const ENCODING_ROOM: usize = 128;

/// Encodes `value` for a frame that is written at once and not kept (a conversation's object,
/// dropped after the write; a call's request, dropped when the call ends), so its spare room
/// costs little and only for that long. Queued messages use postcard's own sizing.
pub(crate) fn encode_transient<T: Serialize + ?Sized>(value: &T) -> postcard::Result<Vec<u8>> {
    postcard::to_extend(value, Vec::with_capacity(ENCODING_ROOM))
}

/// Decodes postcard bytes as exactly one `T`, with nothing left over.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(PayloadError::TrailingBytes(rest.len())),
        Err(error) => Err(PayloadError::Postcard(error)),
    }
}
