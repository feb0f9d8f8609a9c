//! The one encoding of everything a CM node stores or sends to its peers:
//! postcard (compact, maintained, serde-based).
//!
//! What is stored on disk ([`encode_stored`]) is sealed with a CRC-32 of its
//! bytes, so a corrupted record is refused with an error instead of decoding
//! into another valid value (postcard has no redundancy: a flipped bit in a
//! number is another number). Peer messages travel over TCP (and TLS) and are
//! not sealed.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes of the checksum in front of a stored record.
const CHECKSUM_BYTES: usize = 4;

/// Why a stored record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    /// The record is shorter than its checksum.
    #[error("stored record of {len} bytes is too short to hold its checksum")]
    Short {
        /// The record's length.
        len: usize,
    },
    /// The checksum does not match: the record is corrupt.
    #[error("stored record is corrupt: its checksum does not match its {len} bytes")]
    Checksum {
        /// The record's length.
        len: usize,
    },
    /// The bytes are not an encoding of the expected type.
    #[error("stored record does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes a value encoded by [`encode`]; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok(value)
}

/// Encodes `value` for storage: its CRC-32 (little-endian), then its bytes.
pub fn encode_stored<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let body = encode(value)?;
    let mut record = Vec::with_capacity(CHECKSUM_BYTES + body.len());
    record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    record.extend_from_slice(&body);
    Ok(record)
}

/// Decodes a record written by [`encode_stored`], checking its checksum first.
pub fn decode_stored<T: DeserializeOwned>(record: &[u8]) -> Result<T, StoredError> {
    let len = record.len();
    let (sum, body) = record.split_at_checked(CHECKSUM_BYTES).ok_or(StoredError::Short { len })?;
    let mut expected = [0u8; CHECKSUM_BYTES];
    expected.copy_from_slice(sum);
    if crc32fast::hash(body) != u32::from_le_bytes(expected) {
        return Err(StoredError::Checksum { len });
    }
    Ok(decode(body)?)
}
