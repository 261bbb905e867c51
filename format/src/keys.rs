//! The metadata store's key schema. One codec builds every key; integers are
//! big-endian so that RocksDB's byte order is numeric order.
//!
//! | prefix | key shape                          | value            | scanned by                         |
//! |--------|------------------------------------|------------------|------------------------------------|
//! | `V`    | `V`                                | [`VolumeRecord`] | meta at start                      |
//! | `C`    | `C` counter-name                   | u64 LE           | allocators (inode, gc sequence)    |
//! | `I`    | `I` ino                            | [`Inode`]        | point reads; status counts files   |
//! | `D`    | `D` parent name                    | [`Dentry`]       | lookup; emptiness check of rmdir   |
//! | `S`    | `S` parent seq                     | name bytes       | readdir, in sequence order         |
//! | `K`    | `K` ino chunk-index                | [`ChunkRecord`]  | reads, truncate, status health     |
//! | `X`    | `X` ino name                       | xattr value      | getxattr, listxattr                |
//! | `N`    | `N` node-id                        | [`NodeRecord`]   | placement, status                  |
//! | `G`    | `G` seq                            | [`GcRecord`]     | the garbage collector              |
//! | `O`    | `O` ino                            | empty            | orphan purge (nlink 0, maybe open) |
//! | `W`    | `W` node-id                        | empty            | draining nodes: placement, healing |
//! | `Z`    | `Z` node-id                        | empty            | removed nodes: heartbeats refused  |
//! | `P`    | `P` policy-id                      | [`PolicyRecord`] | clients (epochs), sync, status     |
//! | `E`    | `E` policy-id epoch                | [`KeyEnvelope`]  | clients unwrapping a policy's keys |
//!
//! [`VolumeRecord`]: crate::VolumeRecord
//! [`Inode`]: crate::Inode
//! [`Dentry`]: crate::Dentry
//! [`ChunkRecord`]: crate::ChunkRecord
//! [`NodeRecord`]: crate::NodeRecord
//! [`GcRecord`]: crate::GcRecord
//! [`PolicyRecord`]: crate::PolicyRecord
//! [`KeyEnvelope`]: crate::KeyEnvelope

use crate::{Ino, NodeId, PolicyId};

pub const VOLUME: &[u8] = b"V";

fn with_prefix(prefix: u8, capacity: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + capacity);
    key.push(prefix);
    key
}

pub fn counter(name: &str) -> Vec<u8> {
    let mut key = with_prefix(b'C', name.len());
    key.extend_from_slice(name.as_bytes());
    key
}

pub fn inode(ino: Ino) -> Vec<u8> {
    let mut key = with_prefix(b'I', 8);
    key.extend_from_slice(&ino.to_be_bytes());
    key
}

pub const INODE_PREFIX: &[u8] = b"I";

pub fn dentry(parent: Ino, name: &[u8]) -> Vec<u8> {
    let mut key = dentry_prefix(parent);
    key.extend_from_slice(name);
    key
}

pub fn dentry_prefix(parent: Ino) -> Vec<u8> {
    let mut key = with_prefix(b'D', 8);
    key.extend_from_slice(&parent.to_be_bytes());
    key
}

pub fn dir_seq(parent: Ino, seq: u64) -> Vec<u8> {
    let mut key = dir_seq_prefix(parent);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn dir_seq_prefix(parent: Ino) -> Vec<u8> {
    let mut key = with_prefix(b'S', 16);
    key.extend_from_slice(&parent.to_be_bytes());
    key
}

/// The sequence number in a key built by [`dir_seq`].
pub fn dir_seq_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

pub fn chunk(ino: Ino, index: u64) -> Vec<u8> {
    let mut key = chunk_prefix(ino);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

pub fn chunk_prefix(ino: Ino) -> Vec<u8> {
    let mut key = with_prefix(b'K', 16);
    key.extend_from_slice(&ino.to_be_bytes());
    key
}

pub const CHUNK_PREFIX: &[u8] = b"K";

/// (ino, chunk index) of a key built by [`chunk`].
pub fn chunk_of(key: &[u8]) -> Option<(Ino, u64)> {
    let ino: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    let index: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    Some((u64::from_be_bytes(ino), u64::from_be_bytes(index)))
}

pub fn xattr(ino: Ino, name: &[u8]) -> Vec<u8> {
    let mut key = xattr_prefix(ino);
    key.extend_from_slice(name);
    key
}

pub fn xattr_prefix(ino: Ino) -> Vec<u8> {
    let mut key = with_prefix(b'X', 8);
    key.extend_from_slice(&ino.to_be_bytes());
    key
}

pub fn node(id: NodeId) -> Vec<u8> {
    let mut key = with_prefix(b'N', 8);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub const NODE_PREFIX: &[u8] = b"N";

pub fn gc(seq: u64) -> Vec<u8> {
    let mut key = with_prefix(b'G', 8);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub const GC_PREFIX: &[u8] = b"G";

pub fn orphan(ino: Ino) -> Vec<u8> {
    let mut key = with_prefix(b'O', 8);
    key.extend_from_slice(&ino.to_be_bytes());
    key
}

pub const ORPHAN_PREFIX: &[u8] = b"O";

/// A node being drained (`sohofs node drain`).
pub fn draining(id: NodeId) -> Vec<u8> {
    let mut key = with_prefix(b'W', 8);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub const DRAINING_PREFIX: &[u8] = b"W";

/// A node taken out of the cluster (`sohofs node remove`); never registered again.
pub fn removed(id: NodeId) -> Vec<u8> {
    let mut key = with_prefix(b'Z', 8);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub const REMOVED_PREFIX: &[u8] = b"Z";

pub fn policy(id: PolicyId) -> Vec<u8> {
    let mut key = with_prefix(b'P', 8);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub const POLICY_PREFIX: &[u8] = b"P";

pub fn envelope(policy: PolicyId, epoch: u32) -> Vec<u8> {
    let mut key = envelope_prefix(policy);
    key.extend_from_slice(&epoch.to_be_bytes());
    key
}

pub fn envelope_prefix(policy: PolicyId) -> Vec<u8> {
    let mut key = with_prefix(b'E', 12);
    key.extend_from_slice(&policy.to_be_bytes());
    key
}

/// The node id in a key built by [`node`], [`draining`] or [`removed`].
pub fn node_of(key: &[u8]) -> Option<NodeId> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The inode number in a key built by [`orphan`] or [`inode`].
pub fn ino_of(key: &[u8]) -> Option<Ino> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_order_is_byte_order() {
        assert!(chunk(1, 2) < chunk(1, 256));
        assert!(dir_seq(7, 9) < dir_seq(7, 10_000));
        assert_eq!(chunk_of(&chunk(5, 6)), Some((5, 6)));
        assert_eq!(dir_seq_of(&dir_seq(5, 6)), Some(6));
        assert!(chunk(1, u64::MAX).starts_with(&chunk_prefix(1)));
    }
}
