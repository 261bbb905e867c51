//! RPC messages. Each travels as the postcard body of a [`crate::frame`]; shard
//! bytes travel in the frame's data tail, never inside a message.
//!
//! Adding a variant at the end of an enum is compatible; changing or
//! reordering one is a new frame version.

use serde::{Deserialize, Serialize};

use crate::{
    ChunkRecord, Extent, FileKind, Ino, Inode, KeyEnvelope, NodeId, NodeRecord, PolicyId, PolicyRecord, TimeNs,
    VolumeRecord,
};

/// The kind of a failure, sent instead of a string so that the caller can act
/// on it. The volume API maps each to one POSIX error.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Invalid,
    NameTooLong,
    NoSpace,
    Io,
    Corrupt,
    Stale,
    Permission,
    NoXattr,
    Range,
    Unavailable,
    CrossDevice,
    Protocol,
    TooBig,
    /// This machine holds no key that the data's policy is wrapped to now
    /// (EACCES); distinct from `Permission` (EPERM).
    Access,
}

/// `mode`, `uid`… left `None` are unchanged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SetAttr {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(TimeNs),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NewInode {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub symlink: Vec<u8>,
}

/// How a committed write changes a chunk record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ChunkOp {
    /// The extent covers the whole chunk: every older extent is released.
    Replace(Extent),
    /// The extent is laid over the existing ones.
    Overlay(Extent),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkWrite {
    pub index: u64,
    pub op: ChunkOp,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
    pub seq: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StatFs {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub files: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub record: NodeRecord,
    pub up: bool,
    pub last_seen_ms_ago: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VolumeStatus {
    pub files: u64,
    pub bytes: u64,
    pub chunks_total: u64,
    pub chunks_healthy: u64,
    pub chunks_degraded: u64,
    pub chunks_unreadable: u64,
}

/// One shard as one node holds it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardRef {
    pub node: NodeId,
    pub piece_id: u128,
    pub shard_index: u8,
}

/// What healing has left to do, as meta last planned it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RebuildStatus {
    /// Chunks with at least one shard to rebuild or place.
    pub chunks_left: u64,
    /// Shard bytes still to write.
    pub bytes_left: u64,
    /// Shard bytes written per second, over the last pass.
    pub bytes_per_s: u64,
    /// Chunks with fewer than k readable shards now: nothing to rebuild from.
    pub chunks_unrecoverable: u64,
    /// Nodes silent for longer than the grace period, whose shards are rebuilt.
    pub nodes_lost: Vec<NodeId>,
}

/// One registered node as `sohofs node list` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub record: NodeRecord,
    pub up: bool,
    /// Silent for longer than the grace period.
    pub lost: bool,
    /// Marked by `sohofs node drain`: takes no new shards, and healing
    /// moves every shard it holds to other hosts.
    pub draining: bool,
    /// Shards on this node that chunk records name (what a stripe needs).
    pub shards_referenced: u64,
    /// Shards on this node waiting in the GC queue (moved or released).
    pub shards_queued_for_gc: u64,
}

/// One shard as a node lists it: the orphan collector compares these with
/// the chunk records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedShard {
    pub piece_id: u128,
    pub shard_index: u8,
    /// Seconds since the shard file was written, by the node's own clock (so
    /// that no two clocks are compared).
    pub age_s: u64,
}

/// Most shards one `ListShards` answer holds (about 26 bytes each).
pub const SHARDS_LISTED_MAX: u32 = 16_384;

/// The outcome of a scrub of every node and the repairs it caused.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ScrubReport {
    pub nodes_scrubbed: u64,
    pub shards_checked: u64,
    /// Shards that failed their hash, or that records place on a node
    /// which does not hold them.
    pub shards_corrupt: u64,
    pub shards_repaired: u64,
    /// Corrupt shards that no chunk record references (replaced data
    /// waiting for the collector, or a write not committed yet): nothing
    /// to repair.
    pub shards_unreferenced: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum MetaRequest {
    Volume,
    Lookup {
        parent: Ino,
        name: Vec<u8>,
    },
    GetAttr {
        ino: Ino,
    },
    SetAttr {
        ino: Ino,
        attr: SetAttr,
    },
    Create {
        parent: Ino,
        name: Vec<u8>,
        inode: NewInode,
    },
    Link {
        ino: Ino,
        parent: Ino,
        name: Vec<u8>,
    },
    Unlink {
        parent: Ino,
        name: Vec<u8>,
    },
    Rmdir {
        parent: Ino,
        name: Vec<u8>,
    },
    Rename {
        parent: Ino,
        name: Vec<u8>,
        new_parent: Ino,
        new_name: Vec<u8>,
        flags: u32,
    },
    ReadDir {
        dir: Ino,
        after_seq: u64,
        limit: u32,
    },
    GetXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    ListXattr {
        ino: Ino,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    StatFs,
    ReadChunks {
        ino: Ino,
        first_index: u64,
        count: u32,
    },
    CommitWrite {
        ino: Ino,
        writes: Vec<ChunkWrite>,
        size_at_least: u64,
        mtime: TimeNs,
    },
    Open {
        ino: Ino,
        session: u64,
    },
    Release {
        ino: Ino,
        session: u64,
    },
    Heartbeat {
        node: NodeRecord,
    },
    Nodes,
    Status,
    /// Make every change meta has answered so far durable (fsync, NFS).
    Sync,
    /// Healing progress.
    Rebuild,
    /// Shards found corrupt by a read or a node's scrub: meta repairs them.
    ReportCorrupt {
        shards: Vec<ShardRef>,
    },
    /// Scrub every node that is up now, reading at most `bytes_per_s` on
    /// each (0: each node's own setting), and repair what it finds;
    /// answered when the repairs are done.
    Scrub {
        bytes_per_s: u64,
    },
    /// Chunk records in key order, starting after `(ino, index)`.
    ListChunks {
        after: Option<(Ino, u64)>,
        limit: u32,
    },
    /// Every registered node with its membership state and shard counts
    /// (scans every chunk record: an admin call).
    Members,
    /// Mark a node draining: no new shards go to it, and healing moves its
    /// shards to other hosts.
    Drain {
        node: NodeId,
    },
    /// Take a node out of the registry. Refused (`NotEmpty`) while any chunk
    /// record names a shard on it; a removed node's heartbeats are refused.
    RemoveNode {
        node: NodeId,
    },
    /// The nodes that are draining (clients place no new shards there).
    Draining,
    /// Give the empty directory `dir` a key policy of its own, with
    /// `envelope` (the data key of epoch 1) and `names` (the name key,
    /// epoch 0 by convention) wrapped to the machines of `group`; their
    /// `policy_id` is ignored: meta numbers policies.
    Protect {
        dir: Ino,
        group: String,
        envelope: KeyEnvelope,
        names: KeyEnvelope,
    },
    /// Every key policy (clients follow their epochs).
    Policies,
    /// The stored envelopes of a policy, one per live epoch.
    Envelopes {
        policy: PolicyId,
    },
    /// Store `envelope` for its policy: at the current epoch (the same key
    /// wrapped to a changed set of machines: a grant), at the next one (a
    /// new key: a revoke), which becomes current, or at epoch 0 (the name
    /// key re-wrapped). Refused (`Stale`) unless the policy's current
    /// epoch is `expect_epoch`.
    PutEnvelope {
        envelope: KeyEnvelope,
        expect_epoch: u32,
    },
    /// Destroy the envelope of an older epoch. Refused (`NotEmpty`) while
    /// any piece of the policy's files is still sealed under it.
    DropEpoch {
        policy: PolicyId,
        epoch: u32,
    },
    /// Files (not directories) of a policy, in inode order after `after`.
    PolicyFiles {
        policy: PolicyId,
        after: Ino,
        limit: u32,
    },
    /// Re-sealed data of a chunk: replaces the record by `extents` (the
    /// same bytes under a newer epoch) only if the record still holds
    /// exactly the pieces `expect` names, in order; answers `Replaced`.
    RekeyChunk {
        ino: Ino,
        index: u64,
        expect: Vec<u128>,
        extents: Vec<Extent>,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum MetaResponse {
    Ok,
    Volume(VolumeRecord),
    Inode(Inode),
    Entries(Vec<DirEntry>),
    Xattr(Vec<u8>),
    XattrNames(Vec<Vec<u8>>),
    StatFs(StatFs),
    Chunks(Vec<(u64, ChunkRecord)>),
    Nodes(Vec<NodeStatus>),
    Status(VolumeStatus),
    Error(ErrorKind),
    Rebuild(RebuildStatus),
    Scrub(ScrubReport),
    ChunkList(Vec<(Ino, u64, ChunkRecord)>),
    Members(Vec<Member>),
    Draining(Vec<NodeId>),
    Policy(PolicyRecord),
    Policies(Vec<PolicyRecord>),
    Envelopes(Vec<KeyEnvelope>),
    Inos(Vec<Ino>),
    Replaced(bool),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NodeRequest {
    /// Store the frame's data tail as this shard, durably, before answering.
    PutShard {
        piece_id: u128,
        shard_index: u8,
        hash: [u8; 32],
    },
    GetShard {
        piece_id: u128,
        shard_index: u8,
    },
    DeleteShard {
        piece_id: u128,
        shard_index: u8,
    },
    Stat,
    /// Re-hash every shard, reading at most `bytes_per_s` (0: the node's own
    /// setting); answered when done.
    Scrub {
        bytes_per_s: u64,
    },
    /// Shards held, in key order after `after`, at most `limit` (bounded by
    /// [`SHARDS_LISTED_MAX`]), with their ages.
    ListShards {
        after: Option<(u128, u8)>,
        limit: u32,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NodeResponse {
    Ok,
    /// The shard's bytes are in the data tail; they matched their hash on disk.
    Shard,
    Stat {
        capacity_bytes: u64,
        free_bytes: u64,
        used_bytes: u64,
        shards: u64,
    },
    Error(ErrorKind),
    /// `corrupt` lists (piece id, shard index) of the shards that failed
    /// their hash, at most [`SCRUB_CORRUPT_LISTED_MAX`].
    Scrubbed {
        shards_checked: u64,
        corrupt: Vec<(u128, u8)>,
    },
    /// An empty list: nothing after the cursor.
    Shards(Vec<ListedShard>),
}

/// Most corrupt shards one scrub answer lists (18 bytes each at most, well
/// inside a frame body).
pub const SCRUB_CORRUPT_LISTED_MAX: usize = 65_536;
