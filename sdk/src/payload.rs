//! Message payloads as values: postcard, one value per payload.

use serde::de::DeserializeOwned;

use crate::error::PayloadError;

/// Decodes postcard bytes as exactly one `T`, with nothing left over.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(PayloadError::TrailingBytes(rest.len())),
        Err(error) => Err(PayloadError::Postcard(error)),
    }
}
