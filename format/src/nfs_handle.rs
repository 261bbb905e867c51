//! The NFSv3 file handle that the NFS gateway hands to its clients.
//!
//! Layout (little-endian, 40 bytes, fixed; NFSv3 allows up to 64):
//!
//! | offset | width | field                                  |
//! |-------:|------:|----------------------------------------|
//! | 0      | 4     | magic `b"SONH"`                        |
//! | 4      | 2     | version (1)                            |
//! | 6      | 2     | reserved, zero                         |
//! | 8      | 16    | volume id (u128)                       |
//! | 24     | 8     | inode number                           |
//! | 32     | 8     | inode generation                       |
//!
//! A handle names an inode for as long as it exists, across gateway restarts:
//! nothing in it depends on the gateway process. The generation tells a reused
//! inode number from the inode the client once looked up. Unlike the other
//! headers, nothing follows a handle, so any other length is refused.

use crate::DecodeError;

pub const NFS_HANDLE_MAGIC: [u8; 4] = *b"SONH";
pub const NFS_HANDLE_VERSION: u16 = 1;
pub const NFS_HANDLE_BYTES: usize = 40;

const _: () = assert!(4 + 2 + 2 + 16 + 8 + 8 == NFS_HANDLE_BYTES);
/// NFSv3's limit on handle size (RFC 1813, NFS3_FHSIZE).
const _: () = assert!(NFS_HANDLE_BYTES <= 64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NfsHandle {
    pub volume_id: u128,
    pub ino: u64,
    pub generation: u64,
}

impl NfsHandle {
    pub fn encode(&self) -> [u8; NFS_HANDLE_BYTES] {
        let mut out = [0u8; NFS_HANDLE_BYTES];
        out[0..4].copy_from_slice(&NFS_HANDLE_MAGIC);
        out[4..6].copy_from_slice(&NFS_HANDLE_VERSION.to_le_bytes());
        out[8..24].copy_from_slice(&self.volume_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.ino.to_le_bytes());
        out[32..40].copy_from_slice(&self.generation.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Ok(handle) = <&[u8; NFS_HANDLE_BYTES]>::try_from(bytes) else {
            return Err(if bytes.len() < NFS_HANDLE_BYTES {
                DecodeError::Truncated {
                    what: "nfs handle",
                    found: bytes.len(),
                    needed: NFS_HANDLE_BYTES,
                }
            } else {
                DecodeError::TooLong {
                    what: "nfs handle",
                    found: bytes.len(),
                    max: NFS_HANDLE_BYTES,
                }
            });
        };
        let magic = [handle[0], handle[1], handle[2], handle[3]];
        if magic != NFS_HANDLE_MAGIC {
            return Err(DecodeError::BadMagic {
                expected: NFS_HANDLE_MAGIC,
                found: magic,
            });
        }
        let version = u16::from_le_bytes([handle[4], handle[5]]);
        if version != NFS_HANDLE_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "nfs handle",
                found: version,
                supported: NFS_HANDLE_VERSION,
            });
        }
        if handle[6..8] != [0, 0] {
            return Err(DecodeError::Malformed {
                what: "nfs handle",
                reason: "reserved bytes are not zero".into(),
            });
        }
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&handle[8..24]);
        let mut ino = [0u8; 8];
        ino.copy_from_slice(&handle[24..32]);
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&handle[32..40]);
        Ok(NfsHandle {
            volume_id: u128::from_le_bytes(volume_id),
            ino: u64::from_le_bytes(ino),
            generation: u64::from_le_bytes(generation),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NfsHandle {
        NfsHandle {
            volume_id: 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff,
            ino: 0x0102_0304_0506_0708,
            generation: 9,
        }
    }

    #[test]
    fn golden_bytes() {
        let golden: [u8; NFS_HANDLE_BYTES] = [
            b'S', b'O', b'N', b'H', 1, 0, 0, 0, // magic, version, reserved
            0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
            0x00, // volume
            8, 7, 6, 5, 4, 3, 2, 1, // ino
            9, 0, 0, 0, 0, 0, 0, 0, // generation
        ];
        assert_eq!(sample().encode(), golden);
        assert_eq!(NfsHandle::decode(&golden), Ok(sample()));
    }

    #[test]
    fn refuses_other_lengths_magic_version_and_reserved() {
        let good = sample().encode();
        assert!(matches!(
            NfsHandle::decode(&good[..39]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(NfsHandle::decode(&[]), Err(DecodeError::Truncated { .. })));
        let mut long = good.to_vec();
        long.push(0);
        assert!(matches!(NfsHandle::decode(&long), Err(DecodeError::TooLong { .. })));
        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(NfsHandle::decode(&bad), Err(DecodeError::BadMagic { .. })));
        let mut bad = good;
        bad[4] = 2;
        assert!(matches!(
            NfsHandle::decode(&bad),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
        let mut bad = good;
        bad[7] = 1;
        assert!(matches!(NfsHandle::decode(&bad), Err(DecodeError::Malformed { .. })));
    }
}
