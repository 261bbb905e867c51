//! The RPC frame: a fixed header, a postcard-encoded message body, and an
//! optional raw data tail (shard bytes travel there, uncopied by serde).
//!
//! Header layout (little-endian, 24 bytes, fixed):
//!
//! | offset | width | field                                   |
//! |-------:|------:|-----------------------------------------|
//! | 0      | 4     | magic `b"SORP"`                         |
//! | 4      | 2     | version (1)                             |
//! | 6      | 1     | kind: 0 request, 1 response             |
//! | 7      | 1     | reserved, zero                          |
//! | 8      | 8     | request id, echoed in the response      |
//! | 16     | 4     | body length (postcard message)          |
//! | 20     | 4     | data length (raw tail)                  |

use crate::DecodeError;

pub const FRAME_MAGIC: [u8; 4] = *b"SORP";
pub const FRAME_VERSION: u16 = 2;
pub const FRAME_HEADER_BYTES: usize = 24;
/// Bound on a message body: directory listings and chunk maps are paged below it.
pub const FRAME_BODY_BYTES_MAX: u32 = 8 * 1024 * 1024;
/// Bound on a data tail: one shard of the largest chunk.
pub const FRAME_DATA_BYTES_MAX: u32 = 64 * 1024 * 1024 + 4096;

const _: () = assert!(4 + 2 + 1 + 1 + 8 + 4 + 4 == FRAME_HEADER_BYTES);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub request_id: u64,
    pub body_len: u32,
    pub data_len: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        out[0..4].copy_from_slice(&FRAME_MAGIC);
        out[4..6].copy_from_slice(&FRAME_VERSION.to_le_bytes());
        out[6] = match self.kind {
            FrameKind::Request => 0,
            FrameKind::Response => 1,
        };
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.body_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.data_len.to_le_bytes());
        out
    }

    /// Decodes and bounds-checks a header; the lengths it returns are safe to
    /// allocate.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
            return Err(DecodeError::Truncated {
                what: "frame header",
                found: bytes.len(),
                needed: FRAME_HEADER_BYTES,
            });
        };
        let magic = [header[0], header[1], header[2], header[3]];
        if magic != FRAME_MAGIC {
            return Err(DecodeError::BadMagic {
                expected: FRAME_MAGIC,
                found: magic,
            });
        }
        let version = u16::from_le_bytes([header[4], header[5]]);
        if version != FRAME_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "frame",
                found: version,
                supported: FRAME_VERSION,
            });
        }
        if header[7] != 0 {
            return Err(DecodeError::Malformed {
                what: "frame header",
                reason: "reserved byte is not zero".into(),
            });
        }
        let kind = match header[6] {
            0 => FrameKind::Request,
            1 => FrameKind::Response,
            other => {
                return Err(DecodeError::Malformed {
                    what: "frame header",
                    reason: format!("unknown frame kind {other}"),
                })
            }
        };
        let le_u32 = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&header[8..16]);
        let body_len = le_u32(16);
        let data_len = le_u32(20);
        if body_len > FRAME_BODY_BYTES_MAX {
            return Err(DecodeError::TooLong {
                what: "frame body",
                found: body_len as usize,
                max: FRAME_BODY_BYTES_MAX as usize,
            });
        }
        if data_len > FRAME_DATA_BYTES_MAX {
            return Err(DecodeError::TooLong {
                what: "frame data",
                found: data_len as usize,
                max: FRAME_DATA_BYTES_MAX as usize,
            });
        }
        Ok(FrameHeader {
            kind,
            request_id: u64::from_le_bytes(id),
            body_len,
            data_len,
        })
    }
}

/// Encodes a message body with postcard.
pub fn encode_body<T: serde::Serialize>(message: &T) -> Vec<u8> {
    postcard::to_allocvec(message).expect("message types are postcard-serialisable")
}

/// Decodes a message body; rejects trailing bytes.
pub fn decode_body<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed {
        what: "frame body",
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed {
            what: "frame body",
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let header = FrameHeader {
            kind: FrameKind::Response,
            request_id: 77,
            body_len: 12,
            data_len: 4096,
        };
        assert_eq!(FrameHeader::decode(&header.encode()).unwrap(), header);
    }

    #[test]
    fn oversized_lengths_are_refused() {
        let mut bytes = FrameHeader {
            kind: FrameKind::Request,
            request_id: 1,
            body_len: 0,
            data_len: 0,
        }
        .encode();
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(FrameHeader::decode(&bytes), Err(DecodeError::TooLong { .. })));
    }
}
