//! The header in front of every shard file on a node's data directory.
//!
//! Layout (little-endian, 64 bytes, fixed):
//!
//! | offset | width | field                                  |
//! |-------:|------:|----------------------------------------|
//! | 0      | 4     | magic `b"SOSH"`                        |
//! | 4      | 2     | version (1)                            |
//! | 6      | 2     | reserved, zero                         |
//! | 8      | 16    | piece id (u128)                        |
//! | 24     | 1     | shard index within the stripe          |
//! | 25     | 3     | reserved, zero                         |
//! | 28     | 4     | payload length in bytes                |
//! | 32     | 32    | BLAKE3 of the payload                  |
//!
//! The payload (erasure-coded ciphertext) follows the header directly.

use crate::DecodeError;

pub const SHARD_MAGIC: [u8; 4] = *b"SOSH";
pub const SHARD_VERSION: u16 = 1;
pub const SHARD_HEADER_BYTES: usize = 64;
/// No shard payload is larger than this (a 64 MiB chunk over one data shard).
pub const SHARD_PAYLOAD_BYTES_MAX: u32 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub piece_id: u128,
    pub shard_index: u8,
    pub payload_len: u32,
    pub payload_hash: [u8; 32],
}

const _: () = assert!(4 + 2 + 2 + 16 + 1 + 3 + 4 + 32 == SHARD_HEADER_BYTES);

impl ShardHeader {
    pub fn for_payload(piece_id: u128, shard_index: u8, payload: &[u8]) -> Self {
        ShardHeader {
            piece_id,
            shard_index,
            payload_len: payload.len() as u32,
            payload_hash: *blake3::hash(payload).as_bytes(),
        }
    }

    pub fn encode(&self) -> [u8; SHARD_HEADER_BYTES] {
        let mut out = [0u8; SHARD_HEADER_BYTES];
        out[0..4].copy_from_slice(&SHARD_MAGIC);
        out[4..6].copy_from_slice(&SHARD_VERSION.to_le_bytes());
        out[8..24].copy_from_slice(&self.piece_id.to_le_bytes());
        out[24] = self.shard_index;
        out[28..32].copy_from_slice(&self.payload_len.to_le_bytes());
        out[32..64].copy_from_slice(&self.payload_hash);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some(header) = bytes.get(..SHARD_HEADER_BYTES) else {
            return Err(DecodeError::Truncated {
                what: "shard header",
                found: bytes.len(),
                needed: SHARD_HEADER_BYTES,
            });
        };
        let magic: [u8; 4] = header[0..4].try_into().unwrap_or_default();
        if magic != SHARD_MAGIC {
            return Err(DecodeError::BadMagic {
                expected: SHARD_MAGIC,
                found: magic,
            });
        }
        let version = u16::from_le_bytes([header[4], header[5]]);
        if version != SHARD_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "shard header",
                found: version,
                supported: SHARD_VERSION,
            });
        }
        if header[6..8] != [0, 0] || header[25..28] != [0, 0, 0] {
            return Err(DecodeError::Malformed {
                what: "shard header",
                reason: "reserved bytes are not zero".into(),
            });
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&header[8..24]);
        let payload_len = u32::from_le_bytes([header[28], header[29], header[30], header[31]]);
        if payload_len > SHARD_PAYLOAD_BYTES_MAX {
            return Err(DecodeError::TooLong {
                what: "shard payload",
                found: payload_len as usize,
                max: SHARD_PAYLOAD_BYTES_MAX as usize,
            });
        }
        let mut payload_hash = [0u8; 32];
        payload_hash.copy_from_slice(&header[32..64]);
        Ok(ShardHeader {
            piece_id: u128::from_le_bytes(id),
            shard_index: header[24],
            payload_len,
            payload_hash,
        })
    }

    /// True when `payload` is exactly what this header describes.
    pub fn verifies(&self, payload: &[u8]) -> bool {
        payload.len() == self.payload_len as usize && *blake3::hash(payload).as_bytes() == self.payload_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_verify() {
        let header = ShardHeader::for_payload(0xdead_beef, 3, b"payload");
        let bytes = header.encode();
        assert_eq!(ShardHeader::decode(&bytes).unwrap(), header);
        assert!(header.verifies(b"payload"));
        assert!(!header.verifies(b"paylxad"));
    }

    #[test]
    fn rejects_short_and_foreign_input() {
        assert!(matches!(
            ShardHeader::decode(&[0u8; 10]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            ShardHeader::decode(&[0u8; 64]),
            Err(DecodeError::BadMagic { .. })
        ));
    }
}
