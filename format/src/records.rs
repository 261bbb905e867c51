//! Records kept in the metadata store, and the pieces of them that travel in
//! messages. Each stored record is `magic(2) | version(1) | postcard body`.

use serde::{Deserialize, Serialize};

use crate::{decode_record, encode_record, DecodeError};

pub type Ino = u64;
pub type NodeId = u64;
/// Nanoseconds since the Unix epoch (negative before it).
pub type TimeNs = i64;

pub const ROOT_INO: Ino = 1;
/// Readdir sequence numbers below this are `.` and `..`.
pub const FIRST_ENTRY_SEQ: u64 = 3;
pub const NAME_BYTES_MAX: usize = 255;
pub const SYMLINK_BYTES_MAX: usize = 4095;
pub const XATTR_NAME_BYTES_MAX: usize = 255;
pub const XATTR_VALUE_BYTES_MAX: usize = 64 * 1024;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => 0o100000,
            FileKind::Dir => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
            FileKind::CharDevice => 0o020000,
            FileKind::BlockDevice => 0o060000,
        }
    }

    pub fn from_mode(mode: u32) -> Option<FileKind> {
        match mode & 0o170000 {
            0o100000 => Some(FileKind::File),
            0o040000 => Some(FileKind::Dir),
            0o120000 => Some(FileKind::Symlink),
            0o010000 => Some(FileKind::Fifo),
            0o140000 => Some(FileKind::Socket),
            0o020000 => Some(FileKind::CharDevice),
            0o060000 => Some(FileKind::BlockDevice),
            _ => None,
        }
    }
}

/// An inode. `perm` holds the low 12 mode bits; the type is `kind`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: Ino,
    pub generation: u64,
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: TimeNs,
    pub mtime: TimeNs,
    pub ctime: TimeNs,
    pub rdev: u32,
    /// For a directory, the directory that holds it (itself for the root).
    pub parent: Ino,
    /// For a directory, the sequence number its next entry gets.
    pub next_seq: u64,
    /// For a symlink, its target.
    pub symlink: Vec<u8>,
    /// The key policy whose data key seals this inode's data (0: the
    /// volume key, the standard tier). Set from the parent at creation.
    pub policy: PolicyId,
}

/// A key policy: 0 is the volume key; others are protected directories.
pub type PolicyId = u64;
/// The policy of the standard tier: the volume key.
pub const VOLUME_POLICY: PolicyId = 0;

/// An inode as version 1 stored it (no policy: the standard tier).
#[derive(Deserialize)]
struct InodeV1 {
    ino: Ino,
    generation: u64,
    kind: FileKind,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    atime: TimeNs,
    mtime: TimeNs,
    ctime: TimeNs,
    rdev: u32,
    parent: Ino,
    next_seq: u64,
    symlink: Vec<u8>,
}

impl From<InodeV1> for Inode {
    fn from(v1: InodeV1) -> Inode {
        Inode {
            ino: v1.ino,
            generation: v1.generation,
            kind: v1.kind,
            perm: v1.perm,
            uid: v1.uid,
            gid: v1.gid,
            nlink: v1.nlink,
            size: v1.size,
            atime: v1.atime,
            mtime: v1.mtime,
            ctime: v1.ctime,
            rdev: v1.rdev,
            parent: v1.parent,
            next_seq: v1.next_seq,
            symlink: v1.symlink,
            policy: VOLUME_POLICY,
        }
    }
}

impl Inode {
    pub const MAGIC: [u8; 2] = *b"IN";
    /// Version 2 added `policy`; version 1 records still decode.
    pub const VERSION: u8 = 2;
    const WHAT: &'static str = "inode record";

    pub fn encode(&self) -> Vec<u8> {
        encode_record(Self::MAGIC, Self::VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() >= 3 && bytes[0..2] == Self::MAGIC && bytes[2] == 1 {
            let v1: InodeV1 = decode_record(Self::WHAT, Self::MAGIC, 1, bytes)?;
            return Ok(v1.into());
        }
        decode_record(Self::WHAT, Self::MAGIC, Self::VERSION, bytes)
    }

    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm as u32
    }
}

/// A directory entry, stored under (parent, name).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dentry {
    pub ino: Ino,
    pub kind: FileKind,
    /// Directory-local sequence number: the readdir offset and NFS cookie.
    pub seq: u64,
}

/// The volume's fixed parameters, written once at creation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    pub volume_id: u128,
    pub data_shards: u8,
    pub parity_shards: u8,
    pub write_quorum: u8,
    pub chunk_bytes: u32,
    pub inline_bytes_max: u32,
    pub created: TimeNs,
}

/// Where one shard of a striped piece lives. `node` is `None` when the write
/// could not place it (degraded write); healing adds it later.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLoc {
    pub node: Option<NodeId>,
    pub hash: [u8; 32],
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PieceBody {
    /// Tiny data sealed in the record itself (still ciphertext).
    Inline { sealed: Vec<u8> },
    /// Sealed bytes erasure-coded over `shards` (data shards first).
    Striped {
        sealed_len: u32,
        data_shards: u8,
        parity_shards: u8,
        shards: Vec<ShardLoc>,
    },
}

/// One encrypted write: plaintext `plain_len` bytes meant for chunk offset
/// `base`, sealed once under data key `key_id` at epoch `key_epoch`. `id` is
/// unique in the volume and is bound into the AEAD associated data, as is its
/// place.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub id: u128,
    pub base: u32,
    pub plain_len: u32,
    pub key_id: u64,
    pub key_epoch: u32,
    pub body: PieceBody,
}

/// The visible window `[offset, offset + len)` of a piece inside its chunk.
/// Extents of a chunk are laid over each other in order: later wins.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u32,
    pub len: u32,
    pub piece: Piece,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ChunkRecord {
    pub extents: Vec<Extent>,
}

/// A storage node as registered with meta.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: NodeId,
    pub addr: String,
    /// The failure domain: no stripe puts two shards on one host.
    pub host: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub shards: u64,
}

/// A shard that no record references any more and that the node may delete.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcRecord {
    pub node: NodeId,
    pub piece_id: u128,
    pub shard_index: u8,
    pub queued: TimeNs,
}

/// Bound on the age file inside a [`KeyEnvelope`]: a stanza is at most about
/// 200 bytes, so this holds [`ENVELOPE_RECIPIENTS_MAX`] of them with room.
pub const ENVELOPE_AGE_BYTES_MAX: usize = 1024 * 1024;
/// Machines one envelope may be wrapped to.
pub const ENVELOPE_RECIPIENTS_MAX: usize = 4096;
/// Bound on a machine name (an LDAP DN) and on a recipient's text.
pub const ENVELOPE_TEXT_BYTES_MAX: usize = 4096;

/// One machine a key envelope is wrapped to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeRecipient {
    /// Its name in the directory (the LDAP DN of its entry).
    pub machine: String,
    /// Its public key as published (`age1…` or `ssh-ed25519 AAAA…`, no
    /// comment), so that sync can tell a machine whose key changed.
    pub recipient: String,
}

/// A directory data key of policy `policy_id` at key epoch `epoch`, wrapped
/// with age to `recipients` (one stanza each). `age` is a binary age v1 file
/// whose payload is the 32-byte key; meta stores it and cannot open it.
/// `recipients` is what the wrapper meant (not checked against the stanzas:
/// age stanzas do not name their recipient).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyEnvelope {
    pub policy_id: u64,
    pub epoch: u32,
    pub recipients: Vec<EnvelopeRecipient>,
    pub age: Vec<u8>,
}

impl KeyEnvelope {
    pub const MAGIC: [u8; 2] = *b"KE";
    pub const VERSION: u8 = 1;
    const WHAT: &'static str = "key envelope";

    pub fn encode(&self) -> Vec<u8> {
        encode_record(Self::MAGIC, Self::VERSION, self)
    }

    /// Decodes and checks every bound.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let envelope: KeyEnvelope = decode_record(Self::WHAT, Self::MAGIC, Self::VERSION, bytes)?;
        let too_long = |found, max| DecodeError::TooLong {
            what: Self::WHAT,
            found,
            max,
        };
        if envelope.age.len() > ENVELOPE_AGE_BYTES_MAX {
            return Err(too_long(envelope.age.len(), ENVELOPE_AGE_BYTES_MAX));
        }
        if envelope.recipients.len() > ENVELOPE_RECIPIENTS_MAX {
            return Err(too_long(envelope.recipients.len(), ENVELOPE_RECIPIENTS_MAX));
        }
        for recipient in &envelope.recipients {
            let longest = recipient.machine.len().max(recipient.recipient.len());
            if longest > ENVELOPE_TEXT_BYTES_MAX {
                return Err(too_long(longest, ENVELOPE_TEXT_BYTES_MAX));
            }
        }
        Ok(envelope)
    }
}

/// A protected directory's key policy. Its data keys, one per live epoch,
/// are [`KeyEnvelope`]s stored beside it; new data is sealed under
/// `current_epoch`, older epochs stay until a rekey has re-sealed every
/// piece still under them. The envelope of epoch [`NAME_KEY_EPOCH`] holds
/// the key that seals entry names and symlink targets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    pub id: PolicyId,
    /// The LDAP group whose machines may hold the key.
    pub group: String,
    /// The directory that was protected (the policy's root).
    pub dir: Ino,
    pub current_epoch: u32,
    /// Epochs whose envelope is still stored, oldest first (includes
    /// `current_epoch`).
    pub live_epochs: Vec<u32>,
    pub created: TimeNs,
}

/// The envelope epoch of a policy's name key (data epochs start at 1).
pub const NAME_KEY_EPOCH: u32 = 0;

/// Bound on a policy's live epochs: a revoke adds one, a finished rekey
/// drops the older ones.
pub const POLICY_EPOCHS_MAX: usize = 64;

impl PolicyRecord {
    pub const MAGIC: [u8; 2] = *b"PO";
    pub const VERSION: u8 = 1;
    const WHAT: &'static str = "policy record";

    pub fn encode(&self) -> Vec<u8> {
        encode_record(Self::MAGIC, Self::VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let policy: PolicyRecord = decode_record(Self::WHAT, Self::MAGIC, Self::VERSION, bytes)?;
        if policy.group.len() > ENVELOPE_TEXT_BYTES_MAX {
            return Err(DecodeError::TooLong {
                what: Self::WHAT,
                found: policy.group.len(),
                max: ENVELOPE_TEXT_BYTES_MAX,
            });
        }
        if policy.live_epochs.len() > POLICY_EPOCHS_MAX {
            return Err(DecodeError::TooLong {
                what: Self::WHAT,
                found: policy.live_epochs.len(),
                max: POLICY_EPOCHS_MAX,
            });
        }
        Ok(policy)
    }
}

macro_rules! stored_record {
    ($ty:ty, $magic:expr, $version:expr, $what:expr) => {
        impl $ty {
            pub const MAGIC: [u8; 2] = $magic;
            pub const VERSION: u8 = $version;
            pub fn encode(&self) -> Vec<u8> {
                encode_record(Self::MAGIC, Self::VERSION, self)
            }
            pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                decode_record($what, Self::MAGIC, Self::VERSION, bytes)
            }
        }
    };
}

stored_record!(Dentry, *b"DE", 1, "dentry record");
stored_record!(VolumeRecord, *b"VO", 1, "volume record");
stored_record!(ChunkRecord, *b"CH", 1, "chunk record");
stored_record!(NodeRecord, *b"NO", 1, "node record");
stored_record!(GcRecord, *b"GC", 1, "gc record");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_record_round_trip() {
        let record = ChunkRecord {
            extents: vec![Extent {
                offset: 0,
                len: 10,
                piece: Piece {
                    id: 9,
                    base: 0,
                    plain_len: 10,
                    key_id: 0,
                    key_epoch: 0,
                    body: PieceBody::Striped {
                        sealed_len: 50,
                        data_shards: 4,
                        parity_shards: 2,
                        shards: vec![
                            ShardLoc {
                                node: Some(1),
                                hash: [7; 32]
                            };
                            6
                        ],
                    },
                },
            }],
        };
        assert_eq!(ChunkRecord::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn wrong_magic_and_trailing_bytes_are_refused() {
        let dentry = Dentry {
            ino: 5,
            kind: FileKind::File,
            seq: 3,
        };
        let mut bytes = dentry.encode();
        assert!(Inode::decode(&bytes).is_err());
        bytes.push(0);
        assert!(matches!(Dentry::decode(&bytes), Err(DecodeError::Malformed { .. })));
    }
}
