//! sohofs-format owns every byte layout that sohofs stores or sends: the shard
//! header written in front of each shard file, the records kept in the metadata
//! store (volume, inode, dentry, chunk, node, garbage), and the RPC frames and
//! messages exchanged between clients, meta and nodes.
//!
//! Nothing else in the project may lay out bytes of its own. Every layout starts
//! with a magic and a version; decoders never panic and never trust a length
//! that comes from outside (they are fuzzed in `fuzz/`). Golden vectors in
//! `tests/vectors/` fail when old bytes would decode differently.
//!
//! This crate is deliberately free of RocksDB, tokio and crypto so that the fuzz
//! targets build in seconds.

pub mod frame;
pub mod keys;
pub mod messages;
pub mod nfs_handle;
pub mod records;
pub mod rpc_call;
pub mod shard;

pub use frame::{FrameHeader, FRAME_BODY_BYTES_MAX, FRAME_DATA_BYTES_MAX, FRAME_HEADER_BYTES};
pub use nfs_handle::{NfsHandle, NFS_HANDLE_BYTES};
pub use records::*;
pub use shard::{ShardHeader, SHARD_HEADER_BYTES};

/// Why bytes could not be decoded. Every decoder returns this; none panics.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("bad magic: expected {expected:?}, found {found:?}")]
    BadMagic { expected: [u8; 4], found: [u8; 4] },
    #[error("unsupported {what} version {found} (this build reads up to {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u16,
        supported: u16,
    },
    #[error("{what}: input is {found} bytes, need {needed}")]
    Truncated {
        what: &'static str,
        found: usize,
        needed: usize,
    },
    #[error("{what}: length {found} exceeds the bound {max}")]
    TooLong {
        what: &'static str,
        found: usize,
        max: usize,
    },
    #[error("{what}: malformed body: {reason}")]
    Malformed { what: &'static str, reason: String },
}

/// Encodes `value` as a record: 2-byte magic, 1-byte version, postcard body.
pub(crate) fn encode_record<T: serde::Serialize>(magic: [u8; 2], version: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&magic);
    out.push(version);
    // Serialising our own in-memory types into a Vec cannot fail: postcard only
    // errors on unsupported serde shapes, which would be a bug of this crate.
    postcard::to_extend(value, out).expect("record types are postcard-serialisable")
}

/// Decodes a record written by [`encode_record`]; rejects trailing bytes.
pub(crate) fn decode_record<'a, T: serde::Deserialize<'a>>(
    what: &'static str,
    magic: [u8; 2],
    version: u8,
    bytes: &'a [u8],
) -> Result<T, DecodeError> {
    if bytes.len() < 3 {
        return Err(DecodeError::Truncated {
            what,
            found: bytes.len(),
            needed: 3,
        });
    }
    if bytes[0..2] != magic {
        return Err(DecodeError::BadMagic {
            expected: [magic[0], magic[1], 0, 0],
            found: [bytes[0], bytes[1], 0, 0],
        });
    }
    if bytes[2] != version {
        return Err(DecodeError::UnsupportedVersion {
            what,
            found: bytes[2] as u16,
            supported: version as u16,
        });
    }
    let (value, rest) = postcard::take_from_bytes(&bytes[3..]).map_err(|e| DecodeError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed {
            what,
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}
