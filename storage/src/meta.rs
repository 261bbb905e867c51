//! The meta service: the namespace (inodes, dentries, xattrs), chunk records,
//! the node registry and the garbage-collection queue, over a [`KvStore`].
//!
//! Every mutation takes the one namespace lock, reads what it needs, and ends
//! in one atomic batch: a crash leaves either all of an operation or none of
//! it. Batches go to the log unsynced; [`Meta::sync`] is where durability is
//! promised. Meta never sees a key or a byte of plaintext file data.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sohofs_format::frame::{decode_body, encode_body};
use sohofs_format::keys;
use sohofs_format::messages::{
    ChunkOp, ChunkWrite, DirEntry, Member, MetaRequest, MetaResponse, NewInode, NodeStatus, RebuildStatus, SetAttr,
    ShardRef, StatFs, TimeSet, VolumeStatus,
};
use sohofs_format::{
    ChunkRecord, Dentry, Extent, FileKind, GcRecord, Ino, Inode, KeyEnvelope, NodeId, NodeRecord, PieceBody, PolicyId,
    PolicyRecord, TimeNs, VolumeRecord, FIRST_ENTRY_SEQ, NAME_BYTES_MAX, NAME_KEY_EPOCH, POLICY_EPOCHS_MAX, ROOT_INO,
    SYMLINK_BYTES_MAX, VOLUME_POLICY, XATTR_NAME_BYTES_MAX, XATTR_VALUE_BYTES_MAX,
};

use crate::error::{FsError, FsResult};
use crate::heal::HealSettings;
use crate::kv::{Batch, KvStore};
use crate::repair::{ClusterView, NodeHealth, ShardMove, StripeView};

/// A node that has not heartbeated for this long is shown down.
pub const NODE_DOWN_AFTER_DEFAULT: Duration = Duration::from_secs(5);
/// Most entries one readdir call returns.
pub const READDIR_ENTRIES_MAX: u32 = 1024;
/// Most chunk records one ReadChunks call returns.
pub const READ_CHUNKS_MAX: u32 = 256;
/// Most shards one corruption report may name.
pub const REPORTED_SHARDS_MAX: usize = sohofs_format::messages::SCRUB_CORRUPT_LISTED_MAX;
/// Most shards the garbage collector deletes per pass.
pub const GC_BATCH_MAX: usize = 512;
pub const GC_INTERVAL: Duration = Duration::from_secs(2);
/// How often meta syncs its log when no client asked for it.
pub const LOG_SYNC_INTERVAL: Duration = Duration::from_secs(1);

const RENAME_NOREPLACE: u32 = 1;
const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;
const INODE_COUNTER: &str = "ino";
const GC_COUNTER: &str = "gc";
const POLICY_COUNTER: &str = "policy";
/// Most inode numbers one `PolicyFiles` answer holds.
pub const POLICY_FILES_MAX: u32 = 4096;

pub fn now_ns() -> TimeNs {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as TimeNs,
        Err(e) => -(e.duration().as_nanos() as TimeNs),
    }
}

/// Parameters of a new volume.
#[derive(Debug, Clone)]
pub struct VolumeParams {
    pub data_shards: u8,
    pub parity_shards: u8,
    pub write_quorum: u8,
    pub chunk_bytes: u32,
    pub inline_bytes_max: u32,
}

struct Liveness {
    last_seen: Instant,
}

pub struct Meta {
    kv: Arc<dyn KvStore>,
    volume: VolumeRecord,
    namespace_lock: Mutex<()>,
    liveness: Mutex<HashMap<NodeId, Liveness>>,
    opens: Mutex<HashMap<Ino, HashMap<u64, u32>>>,
    down_after: Duration,
    /// A node never heard from since this start counts as silent since then.
    started: Instant,
    heal: HealSettings,
    /// Shards reported corrupt and not yet repaired (in memory: a restart
    /// forgets them and the next scrub finds them again).
    suspects: Mutex<HashSet<ShardRef>>,
    rebuild: Mutex<RebuildStatus>,
}

/// The inodes an operation has read and changed, written out in its batch.
struct Txn<'a> {
    meta: &'a Meta,
    batch: Batch,
    inodes: BTreeMap<Ino, Inode>,
    counters: BTreeMap<&'static str, u64>,
}

impl<'a> Txn<'a> {
    fn new(meta: &'a Meta) -> Self {
        Txn {
            meta,
            batch: Batch::default(),
            inodes: BTreeMap::new(),
            counters: BTreeMap::new(),
        }
    }

    fn inode(&mut self, ino: Ino) -> FsResult<Inode> {
        if let Some(inode) = self.inodes.get(&ino) {
            return Ok(inode.clone());
        }
        self.meta.inode(ino)
    }

    fn dir(&mut self, ino: Ino) -> FsResult<Inode> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(inode)
    }

    fn set_inode(&mut self, inode: Inode) {
        self.inodes.insert(inode.ino, inode);
    }

    fn next(&mut self, counter: &'static str) -> FsResult<u64> {
        let current = match self.counters.get(counter) {
            Some(value) => *value,
            None => self.meta.counter(counter)?,
        };
        self.counters.insert(counter, current + 1);
        Ok(current)
    }

    /// Adds `name -> ino` to directory `parent` with the next sequence number.
    fn add_entry(&mut self, parent: Ino, name: &[u8], ino: Ino, kind: FileKind) -> FsResult<()> {
        let mut dir = self.dir(parent)?;
        let seq = dir.next_seq;
        dir.next_seq += 1;
        let now = now_ns();
        dir.mtime = now;
        dir.ctime = now;
        if kind == FileKind::Dir {
            dir.nlink += 1;
        }
        self.set_inode(dir);
        self.batch
            .put(keys::dentry(parent, name), Dentry { ino, kind, seq }.encode());
        self.batch.put(keys::dir_seq(parent, seq), name.to_vec());
        Ok(())
    }

    fn remove_entry(&mut self, parent: Ino, name: &[u8], entry: &Dentry) -> FsResult<()> {
        let mut dir = self.dir(parent)?;
        let now = now_ns();
        dir.mtime = now;
        dir.ctime = now;
        if entry.kind == FileKind::Dir {
            dir.nlink = dir.nlink.saturating_sub(1);
        }
        self.set_inode(dir);
        self.batch.delete(keys::dentry(parent, name));
        self.batch.delete(keys::dir_seq(parent, entry.seq));
        Ok(())
    }

    /// Queues every shard of `extent`'s piece for deletion.
    fn release_extent(&mut self, extent: &Extent) -> FsResult<()> {
        if let PieceBody::Striped { shards, .. } = &extent.piece.body {
            for (index, shard) in shards.iter().enumerate() {
                if let Some(node) = shard.node {
                    let seq = self.next(GC_COUNTER)?;
                    let record = GcRecord {
                        node,
                        piece_id: extent.piece.id,
                        shard_index: index as u8,
                        queued: now_ns(),
                    };
                    self.batch.put(keys::gc(seq), record.encode());
                }
            }
        }
        Ok(())
    }

    /// Drops an inode with no links left, or keeps it as an orphan while it
    /// is open somewhere.
    fn drop_link(&mut self, mut inode: Inode) -> FsResult<()> {
        let now = now_ns();
        inode.ctime = now;
        if inode.kind == FileKind::Dir {
            inode.nlink = 0;
        } else {
            inode.nlink = inode.nlink.saturating_sub(1);
        }
        if inode.nlink > 0 {
            self.set_inode(inode);
            return Ok(());
        }
        if self.meta.is_open(inode.ino) {
            self.batch.put(keys::orphan(inode.ino), Vec::new());
            self.set_inode(inode);
            return Ok(());
        }
        self.purge(inode.ino)
    }

    /// Deletes an inode, its chunk records (queueing their shards) and xattrs.
    fn purge(&mut self, ino: Ino) -> FsResult<()> {
        let chunks = self.meta.scan_all(&keys::chunk_prefix(ino))?;
        for (key, value) in chunks {
            let record = ChunkRecord::decode(&value)?;
            for extent in &record.extents {
                self.release_extent(extent)?;
            }
            self.batch.delete(key);
        }
        for (key, _) in self.meta.scan_all(&keys::xattr_prefix(ino))? {
            self.batch.delete(key);
        }
        self.inodes.remove(&ino);
        self.batch.delete(keys::inode(ino));
        self.batch.delete(keys::orphan(ino));
        Ok(())
    }

    fn commit(mut self) -> FsResult<()> {
        for (name, value) in &self.counters {
            self.batch.put(keys::counter(name), value.to_le_bytes().to_vec());
        }
        for inode in self.inodes.values() {
            self.batch.put(keys::inode(inode.ino), inode.encode());
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        self.meta.kv.write(self.batch)
    }
}

/// A name as it may appear in any directory: plain, or sealed.
fn check_name(name: &[u8]) -> FsResult<()> {
    if crate::names::looks_sealed(name) {
        return Ok(());
    }
    check_plain_name(name)
}

/// A new entry of `dir`: sealed in a protected directory, plain elsewhere.
/// A plain name sent to a protected directory comes from a client that has
/// not seen the directory protected yet: `Stale` makes it look again.
/// The largest size a file may have: `off_t`'s maximum, as on Linux.
pub const FILE_BYTES_MAX: u64 = i64::MAX as u64;

fn check_name_in(dir: &Inode, name: &[u8]) -> FsResult<()> {
    if dir.policy == VOLUME_POLICY {
        check_plain_name(name)?;
        if name == b"." || name == b".." {
            return Err(FsError::Exists);
        }
        Ok(())
    } else if crate::names::looks_sealed(name) {
        Ok(())
    } else {
        Err(FsError::Stale)
    }
}

fn check_plain_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid("a name is not empty and has no '/' or NUL"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

fn check_new_name(name: &[u8]) -> FsResult<()> {
    check_name(name)?;
    if name == b"." || name == b".." {
        return Err(FsError::Exists);
    }
    Ok(())
}

/// An extent comes from a client: it must lie inside its chunk and show
/// only bytes its piece holds, or readers would index past their buffers.
fn check_extent(extent: &Extent, chunk_bytes: u32) -> FsResult<()> {
    let in_chunk = extent
        .offset
        .checked_add(extent.len)
        .is_some_and(|end| end <= chunk_bytes);
    if !in_chunk {
        return Err(FsError::Invalid("extent reaches past its chunk"));
    }
    let in_piece = extent
        .offset
        .checked_sub(extent.piece.base)
        .and_then(|from| from.checked_add(extent.len))
        .is_some_and(|to| to <= extent.piece.plain_len);
    if !in_piece {
        return Err(FsError::Invalid("extent shows bytes outside its piece"));
    }
    Ok(())
}

fn resolve_time(time: TimeSet, now: TimeNs) -> TimeNs {
    match time {
        TimeSet::Now => now,
        TimeSet::At(at) => at,
    }
}

/// Trims the extents of a chunk to its first `keep` bytes; returns the
/// extents that no longer show anything.
fn trim_extents(record: &mut ChunkRecord, keep: u32) -> Vec<Extent> {
    let mut dropped = Vec::new();
    record.extents.retain_mut(|extent| {
        if extent.offset >= keep {
            dropped.push(extent.clone());
            return false;
        }
        extent.len = extent.len.min(keep - extent.offset);
        true
    });
    dropped
}

impl Meta {
    /// Opens the namespace in `kv`, creating the volume with `params` if the
    /// store is empty. An empty store without `params` is an error.
    pub fn open(kv: Arc<dyn KvStore>, params: Option<VolumeParams>, down_after: Duration) -> FsResult<Meta> {
        let volume = match kv.get(keys::VOLUME)? {
            Some(bytes) => VolumeRecord::decode(&bytes)?,
            None => {
                let params = params.ok_or(FsError::Invalid("the metadata store holds no volume"))?;
                let now = now_ns();
                let volume = VolumeRecord {
                    volume_id: rand::random(),
                    data_shards: params.data_shards,
                    parity_shards: params.parity_shards,
                    write_quorum: params.write_quorum,
                    chunk_bytes: params.chunk_bytes,
                    inline_bytes_max: params.inline_bytes_max,
                    created: now,
                };
                let root = Inode {
                    ino: ROOT_INO,
                    generation: 1,
                    kind: FileKind::Dir,
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                    nlink: 2,
                    size: 0,
                    atime: now,
                    mtime: now,
                    ctime: now,
                    rdev: 0,
                    parent: ROOT_INO,
                    next_seq: FIRST_ENTRY_SEQ,
                    symlink: Vec::new(),
                    policy: VOLUME_POLICY,
                };
                let mut batch = Batch::default();
                batch.put(keys::VOLUME.to_vec(), volume.encode());
                batch.put(keys::inode(ROOT_INO), root.encode());
                batch.put(keys::counter(INODE_COUNTER), (ROOT_INO + 1).to_le_bytes().to_vec());
                kv.write(batch)?;
                volume
            }
        };
        let meta = Meta {
            kv,
            volume,
            namespace_lock: Mutex::new(()),
            liveness: Mutex::new(HashMap::new()),
            opens: Mutex::new(HashMap::new()),
            down_after,
            started: Instant::now(),
            heal: HealSettings::default(),
            suspects: Mutex::new(HashSet::new()),
            rebuild: Mutex::new(RebuildStatus::default()),
        };
        meta.purge_orphans()?;
        Ok(meta)
    }

    /// Sets the grace period and rebuild bandwidth (defaults otherwise).
    pub fn with_heal(mut self, heal: HealSettings) -> Meta {
        self.heal = heal;
        self
    }

    pub fn heal_settings(&self) -> HealSettings {
        self.heal
    }

    pub fn volume(&self) -> &VolumeRecord {
        &self.volume
    }

    /// Orphans left by a previous run are open nowhere now: drop them.
    fn purge_orphans(&self) -> FsResult<()> {
        let _guard = self.lock();
        let orphans = self.scan_all(keys::ORPHAN_PREFIX)?;
        if orphans.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new(self);
        for (key, _) in orphans {
            match keys::ino_of(&key) {
                Some(ino) => txn.purge(ino)?,
                None => txn.batch.delete(key),
            }
        }
        txn.commit()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.namespace_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn scan_all(&self, prefix: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.kv.scan(prefix, None, usize::MAX)
    }

    fn counter(&self, name: &str) -> FsResult<u64> {
        match self.kv.get(&keys::counter(name))? {
            Some(bytes) => {
                let array: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| FsError::Corrupt(format!("counter {name} is not 8 bytes")))?;
                Ok(u64::from_le_bytes(array))
            }
            None => Ok(1),
        }
    }

    fn is_open(&self, ino: Ino) -> bool {
        self.opens
            .lock()
            .expect("open table lock")
            .get(&ino)
            .is_some_and(|sessions| !sessions.is_empty())
    }

    pub fn inode(&self, ino: Ino) -> FsResult<Inode> {
        match self.kv.get(&keys::inode(ino))? {
            Some(bytes) => Ok(Inode::decode(&bytes)?),
            None => Err(FsError::NotFound),
        }
    }

    fn dentry(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Dentry>> {
        match self.kv.get(&keys::dentry(parent, name))? {
            Some(bytes) => Ok(Some(Dentry::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Inode> {
        check_name(name)?;
        match self.dentry(parent, name)? {
            Some(entry) => self.inode(entry.ino),
            None => {
                let dir = self.inode(parent)?;
                if dir.kind != FileKind::Dir {
                    return Err(FsError::NotDir);
                }
                Err(FsError::NotFound)
            }
        }
    }

    pub fn set_attr(&self, ino: Ino, attr: &SetAttr) -> FsResult<Inode> {
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        let mut inode = txn.inode(ino)?;
        let now = now_ns();
        if let Some(perm) = attr.perm {
            inode.perm = perm & 0o7777;
        }
        if let Some(uid) = attr.uid {
            inode.uid = uid;
        }
        if let Some(gid) = attr.gid {
            inode.gid = gid;
        }
        if let Some(atime) = attr.atime {
            inode.atime = resolve_time(atime, now);
        }
        if let Some(mtime) = attr.mtime {
            inode.mtime = resolve_time(mtime, now);
        }
        if let Some(size) = attr.size {
            match inode.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("only regular files have a size to set")),
            }
            // The largest file Linux knows (off_t); any client may send more.
            if size > FILE_BYTES_MAX {
                return Err(FsError::TooBig);
            }
            if size < inode.size {
                self.truncate_chunks(&mut txn, ino, size)?;
            }
            if size != inode.size && attr.mtime.is_none() {
                inode.mtime = now;
            }
            inode.size = size;
        }
        inode.ctime = now;
        txn.set_inode(inode.clone());
        txn.commit()?;
        Ok(inode)
    }

    /// Drops chunk data past `size`: whole chunks go, the boundary chunk's
    /// extents are trimmed so that a later extension reads zeros there.
    fn truncate_chunks(&self, txn: &mut Txn<'_>, ino: Ino, size: u64) -> FsResult<()> {
        let chunk_bytes = self.volume.chunk_bytes as u64;
        let first_affected = size / chunk_bytes;
        let after = first_affected.checked_sub(1).map(|index| keys::chunk(ino, index));
        let records = self.kv.scan(&keys::chunk_prefix(ino), after.as_deref(), usize::MAX)?;
        for (key, value) in records {
            let Some((_, index)) = keys::chunk_of(&key) else {
                continue;
            };
            if index < first_affected {
                continue;
            }
            let mut record = ChunkRecord::decode(&value)?;
            let keep = size.saturating_sub(index * chunk_bytes).min(chunk_bytes) as u32;
            for extent in trim_extents(&mut record, keep) {
                txn.release_extent(&extent)?;
            }
            if record.extents.is_empty() {
                txn.batch.delete(key);
            } else {
                txn.batch.put(key, record.encode());
            }
        }
        Ok(())
    }

    pub fn create(&self, parent: Ino, name: &[u8], new: &NewInode) -> FsResult<Inode> {
        check_new_name(name)?;
        // A sealed target (protected directories) is longer than its plaintext.
        let target_max = if new.symlink.first() == Some(&crate::names::SEALED_VERSION) {
            crate::names::SEALED_TARGET_BYTES_MAX
        } else {
            SYMLINK_BYTES_MAX
        };
        if new.kind == FileKind::Symlink && (new.symlink.is_empty() || new.symlink.len() > target_max) {
            return Err(if new.symlink.is_empty() {
                FsError::Invalid("empty symlink target")
            } else {
                FsError::NameTooLong
            });
        }
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        let dir = txn.dir(parent)?;
        check_name_in(&dir, name)?;
        if dir.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if self.dentry(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let ino = txn.next(INODE_COUNTER)?;
        let now = now_ns();
        let mut perm = new.perm & 0o7777;
        let mut gid = new.gid;
        if dir.perm & 0o2000 != 0 {
            gid = dir.gid;
            if new.kind == FileKind::Dir {
                perm |= 0o2000;
            }
        }
        let inode = Inode {
            ino,
            generation: 1,
            kind: new.kind,
            perm,
            uid: new.uid,
            gid,
            nlink: if new.kind == FileKind::Dir { 2 } else { 1 },
            size: if new.kind == FileKind::Symlink {
                new.symlink.len() as u64
            } else {
                0
            },
            atime: now,
            mtime: now,
            ctime: now,
            rdev: new.rdev,
            parent: if new.kind == FileKind::Dir { parent } else { 0 },
            next_seq: FIRST_ENTRY_SEQ,
            symlink: if new.kind == FileKind::Symlink {
                new.symlink.clone()
            } else {
                Vec::new()
            },
            policy: dir.policy,
        };
        txn.add_entry(parent, name, ino, new.kind)?;
        txn.set_inode(inode.clone());
        txn.commit()?;
        Ok(inode)
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> FsResult<Inode> {
        check_new_name(name)?;
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        let mut inode = txn.inode(ino)?;
        if inode.kind == FileKind::Dir {
            return Err(FsError::Permission);
        }
        if inode.nlink == 0 {
            return Err(FsError::NotFound);
        }
        let dir = txn.dir(parent)?;
        check_name_in(&dir, name)?;
        if dir.policy != inode.policy {
            // Its data is sealed under the other directory's key.
            return Err(FsError::CrossDevice);
        }
        if self.dentry(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        inode.nlink += 1;
        inode.ctime = now_ns();
        txn.add_entry(parent, name, ino, inode.kind)?;
        txn.set_inode(inode.clone());
        txn.commit()?;
        Ok(inode)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        txn.dir(parent)?;
        let entry = self.dentry(parent, name)?.ok_or(FsError::NotFound)?;
        if entry.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        let inode = txn.inode(entry.ino)?;
        txn.remove_entry(parent, name, &entry)?;
        txn.drop_link(inode)?;
        txn.commit()
    }

    /// Forgets a policy and destroys its envelopes once no inode is under
    /// it (its directory removed, and no file of it left open).
    fn drop_policy_if_unused(&self, id: PolicyId) -> FsResult<()> {
        for (_, value) in self.scan_all(keys::INODE_PREFIX)? {
            if Inode::decode(&value)?.policy == id {
                return Ok(());
            }
        }
        let mut batch = Batch::default();
        for (key, _) in self.scan_all(&keys::envelope_prefix(id))? {
            batch.delete(key);
        }
        batch.delete(keys::policy(id));
        self.kv.write(batch)?;
        self.sync()
    }

    fn is_empty_dir(&self, ino: Ino) -> FsResult<bool> {
        Ok(self.kv.scan(&keys::dentry_prefix(ino), None, 1)?.is_empty())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        if name == b"." {
            return Err(FsError::Invalid("cannot remove '.'"));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        txn.dir(parent)?;
        let entry = self.dentry(parent, name)?.ok_or(FsError::NotFound)?;
        if entry.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.is_empty_dir(entry.ino)? {
            return Err(FsError::NotEmpty);
        }
        let inode = txn.inode(entry.ino)?;
        let policy_root = self.is_policy_root(&inode)?.then_some(inode.policy);
        txn.remove_entry(parent, name, &entry)?;
        txn.drop_link(inode)?;
        txn.commit()?;
        if let Some(policy) = policy_root {
            self.drop_policy_if_unused(policy)?;
        }
        Ok(())
    }

    /// True when `ancestor` is `ino` or one of the directories above it.
    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> FsResult<bool> {
        // Bounded by the depth of the tree; the root is its own parent.
        for _ in 0..100_000 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            ino = self.inode(ino)?.parent;
        }
        Err(FsError::Corrupt(
            "directory parent chain does not reach the root".into(),
        ))
    }

    pub fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8], flags: u32) -> FsResult<()> {
        check_name(name)?;
        check_new_name(new_name)?;
        if name == b"." || name == b".." {
            return Err(FsError::Invalid("cannot rename '.' or '..'"));
        }
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(FsError::Invalid("rename flags other than RENAME_NOREPLACE"));
        }
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        txn.dir(parent)?;
        let to_dir = txn.dir(new_parent)?;
        check_name_in(&to_dir, new_name)?;
        let entry = self.dentry(parent, name)?.ok_or(FsError::NotFound)?;
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        let moved = txn.inode(entry.ino)?;
        if moved.policy != to_dir.policy && !self.is_policy_root(&moved)? {
            // Data and names below are sealed under another key: as across
            // file systems, mv copies instead. A protected directory itself
            // moves anywhere: it takes its own key along.
            return Err(FsError::CrossDevice);
        }
        if entry.kind == FileKind::Dir && self.is_ancestor(entry.ino, new_parent)? {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        let mut replaced_root = None;
        if let Some(target) = self.dentry(new_parent, new_name)? {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            if target.ino == entry.ino {
                return Ok(());
            }
            match (entry.kind == FileKind::Dir, target.kind == FileKind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.is_empty_dir(target.ino)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            let target_inode = txn.inode(target.ino)?;
            replaced_root = self.is_policy_root(&target_inode)?.then_some(target_inode.policy);
            txn.remove_entry(new_parent, new_name, &target)?;
            txn.drop_link(target_inode)?;
        }
        txn.remove_entry(parent, name, &entry)?;
        txn.add_entry(new_parent, new_name, entry.ino, entry.kind)?;
        let mut moved = txn.inode(entry.ino)?;
        moved.ctime = now_ns();
        if moved.kind == FileKind::Dir {
            moved.parent = new_parent;
        }
        txn.set_inode(moved);
        txn.commit()?;
        // An empty protected directory replaced by a rename is removed too.
        if let Some(policy) = replaced_root {
            self.drop_policy_if_unused(policy)?;
        }
        Ok(())
    }

    pub fn read_dir(&self, dir: Ino, after_seq: u64, limit: u32) -> FsResult<Vec<DirEntry>> {
        let inode = self.inode(dir)?;
        if inode.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        let limit = limit.clamp(1, READDIR_ENTRIES_MAX) as usize;
        let prefix = keys::dir_seq_prefix(dir);
        let mut after = keys::dir_seq(dir, after_seq);
        let mut entries = Vec::with_capacity(limit);
        // Listing takes no lock: between the index scan and the dentry reads
        // an entry may be removed, or removed and made again under a later
        // sequence number. Such an index entry is stale and skipped (the
        // entry is listed at its current number, if at all), and the scan
        // goes on so that a page of stale entries is not taken for the end.
        loop {
            let scanned = self.kv.scan(&prefix, Some(&after), limit - entries.len())?;
            let exhausted = scanned.len() < limit - entries.len();
            for (key, name) in scanned {
                let seq = keys::dir_seq_of(&key).ok_or_else(|| FsError::Corrupt("short readdir key".into()))?;
                after = key;
                match self.dentry(dir, &name)? {
                    Some(entry) if entry.seq == seq => entries.push(DirEntry {
                        name,
                        ino: entry.ino,
                        kind: entry.kind,
                        seq,
                    }),
                    _ => tracing::debug!(dir, seq, "readdir index entry changed under the scan"),
                }
            }
            if exhausted || entries.len() >= limit {
                return Ok(entries);
            }
        }
    }

    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        self.inode(ino)?;
        self.kv.get(&keys::xattr(ino, name))?.ok_or(FsError::NoXattr)
    }

    pub fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: u32) -> FsResult<()> {
        if name.is_empty() || name.len() > XATTR_NAME_BYTES_MAX {
            return Err(FsError::Range);
        }
        if value.len() > XATTR_VALUE_BYTES_MAX {
            return Err(FsError::TooBig);
        }
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        let mut inode = txn.inode(ino)?;
        let exists = self.kv.get(&keys::xattr(ino, name))?.is_some();
        if flags & XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoXattr);
        }
        inode.ctime = now_ns();
        txn.set_inode(inode);
        txn.batch.put(keys::xattr(ino, name), value.to_vec());
        txn.commit()
    }

    pub fn list_xattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        self.inode(ino)?;
        let prefix = keys::xattr_prefix(ino);
        Ok(self
            .scan_all(&prefix)?
            .into_iter()
            .map(|(key, _)| key[prefix.len()..].to_vec())
            .collect())
    }

    pub fn remove_xattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        let mut inode = txn.inode(ino)?;
        if self.kv.get(&keys::xattr(ino, name))?.is_none() {
            return Err(FsError::NoXattr);
        }
        inode.ctime = now_ns();
        txn.set_inode(inode);
        txn.batch.delete(keys::xattr(ino, name));
        txn.commit()
    }

    pub fn read_chunks(&self, ino: Ino, first_index: u64, count: u32) -> FsResult<Vec<(u64, ChunkRecord)>> {
        let count = count.clamp(1, READ_CHUNKS_MAX) as u64;
        let prefix = keys::chunk_prefix(ino);
        let start = keys::chunk(ino, first_index);
        let mut out = Vec::new();
        // `scan` is exclusive of `after`; the key just below `start` is the prefix
        // itself when first_index is 0, else chunk(first_index - 1).
        let after = if first_index == 0 {
            None
        } else {
            Some(keys::chunk(ino, first_index - 1))
        };
        for (key, value) in self.kv.scan(&prefix, after.as_deref(), count as usize)? {
            let Some((_, index)) = keys::chunk_of(&key) else {
                continue;
            };
            if index >= first_index.saturating_add(count) || key < start {
                break;
            }
            out.push((index, ChunkRecord::decode(&value)?));
        }
        Ok(out)
    }

    pub fn commit_write(&self, ino: Ino, writes: &[ChunkWrite], size_at_least: u64, mtime: TimeNs) -> FsResult<Inode> {
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        let mut inode = txn.inode(ino)?;
        if inode.kind != FileKind::File {
            return Err(FsError::Invalid("data written to something other than a file"));
        }
        // Records changed so far in this call: a later write to the same
        // chunk lays over what an earlier one made, not over the stored record.
        let mut changed: BTreeMap<u64, ChunkRecord> = BTreeMap::new();
        for write in writes {
            let record = match changed.entry(write.index) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(match self.kv.get(&keys::chunk(ino, write.index))? {
                        Some(bytes) => ChunkRecord::decode(&bytes)?,
                        None => ChunkRecord::default(),
                    })
                }
            };
            let (ChunkOp::Replace(extent) | ChunkOp::Overlay(extent)) = &write.op;
            check_extent(extent, self.volume.chunk_bytes)?;
            self.check_sealed_for(&inode, extent)?;
            // Piece ids are unique; a record that holds this piece already
            // took this write. A client that lost the answer (meta restarted
            // after the batch) sends it again: releasing the extents it
            // hides would queue the piece's own shards for deletion.
            if record.extents.iter().any(|old| old.piece.id == extent.piece.id) {
                continue;
            }
            match &write.op {
                ChunkOp::Replace(extent) => {
                    for old in std::mem::take(&mut record.extents) {
                        txn.release_extent(&old)?;
                    }
                    record.extents.push(extent.clone());
                }
                ChunkOp::Overlay(extent) => {
                    let (start, end) = (extent.offset, extent.offset + extent.len);
                    let (hidden, kept): (Vec<Extent>, Vec<Extent>) = std::mem::take(&mut record.extents)
                        .into_iter()
                        .partition(|old| old.offset >= start && old.offset + old.len <= end);
                    for old in hidden {
                        txn.release_extent(&old)?;
                    }
                    record.extents = kept;
                    record.extents.push(extent.clone());
                }
            }
        }
        for (index, record) in changed {
            txn.batch.put(keys::chunk(ino, index), record.encode());
        }
        inode.size = inode.size.max(size_at_least);
        inode.mtime = mtime;
        inode.ctime = mtime.max(now_ns());
        txn.set_inode(inode.clone());
        txn.commit()?;
        Ok(inode)
    }

    pub fn open_file(&self, ino: Ino, session: u64) -> FsResult<Inode> {
        let _guard = self.lock();
        let inode = self.inode(ino)?;
        *self
            .opens
            .lock()
            .expect("open table lock")
            .entry(ino)
            .or_default()
            .entry(session)
            .or_default() += 1;
        Ok(inode)
    }

    pub fn release_file(&self, ino: Ino, session: u64) -> FsResult<()> {
        let _guard = self.lock();
        {
            let mut opens = self.opens.lock().expect("open table lock");
            if let Some(sessions) = opens.get_mut(&ino) {
                if let Some(count) = sessions.get_mut(&session) {
                    *count -= 1;
                    if *count == 0 {
                        sessions.remove(&session);
                    }
                }
                if sessions.is_empty() {
                    opens.remove(&ino);
                }
            }
        }
        if self.is_open(ino) {
            return Ok(());
        }
        match self.inode(ino) {
            Ok(inode) if inode.nlink == 0 => {
                let mut txn = Txn::new(self);
                txn.purge(ino)?;
                txn.commit()
            }
            Ok(_) | Err(FsError::NotFound) => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub fn heartbeat(&self, node: &NodeRecord) -> FsResult<()> {
        if self.kv.get(&keys::removed(node.id))?.is_some() {
            // A removed node that still runs must not come back by itself:
            // its id is retired (`sohofs node remove`).
            return Err(FsError::Invalid("this node id was removed from the cluster"));
        }
        let known = match self.kv.get(&keys::node(node.id))? {
            Some(bytes) => Some(NodeRecord::decode(&bytes)?),
            None => None,
        };
        // The registry keeps where a node is; usage figures refresh in memory
        // through the liveness table and are written back at most when the
        // address or host changes, or on a large change of free space.
        let changed = known.as_ref().is_none_or(|k| {
            k.addr != node.addr
                || k.host != node.host
                || k.shards != node.shards
                || k.free_bytes.abs_diff(node.free_bytes) > 64 * 1024 * 1024
        });
        if changed {
            let mut batch = Batch::default();
            batch.put(keys::node(node.id), node.encode());
            self.kv.write(batch)?;
        }
        self.liveness.lock().expect("liveness lock").insert(
            node.id,
            Liveness {
                last_seen: Instant::now(),
            },
        );
        Ok(())
    }

    /// A node is shown down after [`NODE_DOWN_AFTER_DEFAULT`] of silence (or
    /// the grace period, when that is shorter); only past the grace period
    /// are its shards rebuilt (see [`Meta::node_health`]).
    pub fn nodes(&self) -> FsResult<Vec<NodeStatus>> {
        let liveness = self.liveness.lock().expect("liveness lock");
        let down_after = self.down_after.min(self.heal.grace_period);
        let mut out = Vec::new();
        for (_, value) in self.scan_all(keys::NODE_PREFIX)? {
            let record = NodeRecord::decode(&value)?;
            let seen = liveness.get(&record.id).map(|l| l.last_seen.elapsed());
            out.push(NodeStatus {
                up: seen.is_some_and(|s| s < down_after),
                last_seen_ms_ago: seen.map_or(u64::MAX, |s| s.as_millis() as u64),
                record,
            });
        }
        Ok(out)
    }

    /// Every registered node with its liveness as repair sees it, and its
    /// address.
    pub fn node_health(&self) -> FsResult<Vec<(NodeHealth, String)>> {
        let draining: HashSet<NodeId> = self.draining_nodes()?.into_iter().collect();
        let liveness = self.liveness.lock().expect("liveness lock");
        let mut out = Vec::new();
        for (_, value) in self.scan_all(keys::NODE_PREFIX)? {
            let record = NodeRecord::decode(&value)?;
            let seen = liveness.get(&record.id).map(|l| l.last_seen.elapsed());
            let silent = seen.unwrap_or_else(|| self.started.elapsed());
            out.push((
                NodeHealth {
                    id: record.id,
                    host: record.host,
                    free_bytes: record.free_bytes,
                    reachable: seen.is_some_and(|s| s < self.down_after.min(self.heal.grace_period)),
                    lost: silent >= self.heal.grace_period,
                    draining: draining.contains(&record.id),
                },
                record.addr,
            ));
        }
        Ok(out)
    }

    /// What repair planning needs: node liveness, the suspects, the GC
    /// queue, and every striped piece of every chunk record.
    pub fn repair_view(&self) -> FsResult<(ClusterView, Vec<StripeView>, HashMap<NodeId, String>)> {
        let health = self.node_health()?;
        let addrs = health.iter().map(|(n, addr)| (n.id, addr.clone())).collect();
        let mut gc_pending = HashSet::new();
        for (_, value) in self.scan_all(keys::GC_PREFIX)? {
            let gc = GcRecord::decode(&value)?;
            gc_pending.insert(ShardRef {
                node: gc.node,
                piece_id: gc.piece_id,
                shard_index: gc.shard_index,
            });
        }
        let view = ClusterView {
            nodes: health.into_iter().map(|(n, _)| n).collect(),
            suspects: self.suspects.lock().expect("suspects lock").clone(),
            gc_pending,
        };
        let mut stripes = Vec::new();
        for (key, value) in self.scan_all(keys::CHUNK_PREFIX)? {
            let Some((ino, chunk_index)) = keys::chunk_of(&key) else {
                continue;
            };
            let record = ChunkRecord::decode(&value)?;
            let mut seen = HashSet::new();
            for extent in &record.extents {
                if let PieceBody::Striped {
                    sealed_len,
                    data_shards,
                    parity_shards,
                    shards,
                } = &extent.piece.body
                {
                    if seen.insert(extent.piece.id) {
                        stripes.push(StripeView {
                            ino,
                            chunk_index,
                            piece_id: extent.piece.id,
                            sealed_len: *sealed_len,
                            data_shards: *data_shards,
                            parity_shards: *parity_shards,
                            shards: shards.clone(),
                        });
                    }
                }
            }
        }
        Ok((view, stripes, addrs))
    }

    /// The nodes marked draining.
    pub fn draining_nodes(&self) -> FsResult<Vec<NodeId>> {
        Ok(self
            .scan_all(keys::DRAINING_PREFIX)?
            .iter()
            .filter_map(|(key, _)| keys::node_of(key))
            .collect())
    }

    /// Marks a registered node draining: placement and repair stop choosing
    /// it, and the heal service moves its shards to other hosts.
    pub fn drain(&self, node: NodeId) -> FsResult<()> {
        let _guard = self.lock();
        if self.kv.get(&keys::node(node))?.is_none() {
            return Err(FsError::NotFound);
        }
        let mut batch = Batch::default();
        batch.put(keys::draining(node), Vec::new());
        self.kv.write(batch)?;
        self.kv.sync()
    }

    /// Every shard that chunk records place, and every shard queued for the
    /// collector. Scans all chunk records.
    pub fn shard_references(&self) -> FsResult<(HashSet<ShardRef>, HashSet<ShardRef>)> {
        let mut referenced = HashSet::new();
        for (_, value) in self.scan_all(keys::CHUNK_PREFIX)? {
            let record = ChunkRecord::decode(&value)?;
            for extent in &record.extents {
                if let PieceBody::Striped { shards, .. } = &extent.piece.body {
                    for (index, loc) in shards.iter().enumerate() {
                        if let Some(node) = loc.node {
                            referenced.insert(ShardRef {
                                node,
                                piece_id: extent.piece.id,
                                shard_index: index as u8,
                            });
                        }
                    }
                }
            }
        }
        let mut queued = HashSet::new();
        for (_, value) in self.scan_all(keys::GC_PREFIX)? {
            let gc = GcRecord::decode(&value)?;
            queued.insert(ShardRef {
                node: gc.node,
                piece_id: gc.piece_id,
                shard_index: gc.shard_index,
            });
        }
        Ok((referenced, queued))
    }

    /// Every registered node with its state and how many shards records
    /// place on it and the GC queue holds for it.
    pub fn members(&self) -> FsResult<Vec<Member>> {
        let (referenced, queued) = self.shard_references()?;
        let health: HashMap<NodeId, NodeHealth> = self.node_health()?.into_iter().map(|(n, _)| (n.id, n)).collect();
        let per_node = |set: &HashSet<ShardRef>| {
            let mut counts: HashMap<NodeId, u64> = HashMap::new();
            for shard in set {
                *counts.entry(shard.node).or_default() += 1;
            }
            counts
        };
        let (referenced, queued) = (per_node(&referenced), per_node(&queued));
        let count = |counts: &HashMap<NodeId, u64>, id: NodeId| counts.get(&id).copied().unwrap_or(0);
        Ok(self
            .nodes()?
            .into_iter()
            .map(|status| {
                let id = status.record.id;
                let health = health.get(&id);
                Member {
                    up: status.up,
                    lost: health.is_some_and(|h| h.lost),
                    draining: health.is_some_and(|h| h.draining),
                    shards_referenced: count(&referenced, id),
                    shards_queued_for_gc: count(&queued, id),
                    record: status.record,
                }
            })
            .collect())
    }

    /// Takes a node out of the registry for good: refused with
    /// [`FsError::Invalid`] unless it is draining or lost (an active node
    /// may be taking a write's shard right now, even when it holds none),
    /// and with [`FsError::NotEmpty`] while any chunk record places a shard
    /// on it (wait for the drain, or for the rebuild of a lost node). Its
    /// queued deletions are dropped (its disk leaves the cluster) and its
    /// id is retired, so its heartbeats are refused from now on.
    pub fn remove_node(&self, node: NodeId) -> FsResult<()> {
        let health = self.node_health()?;
        let _guard = self.lock();
        let Some((state, _)) = health.iter().find(|(n, _)| n.id == node) else {
            return Err(FsError::NotFound);
        };
        if !state.draining && !state.lost {
            return Err(FsError::Invalid("an active node is drained before it is removed"));
        }
        // Under the namespace lock no commit can add a reference meanwhile.
        for (_, value) in self.scan_all(keys::CHUNK_PREFIX)? {
            let record = ChunkRecord::decode(&value)?;
            let holds = record.extents.iter().any(|extent| match &extent.piece.body {
                PieceBody::Striped { shards, .. } => shards.iter().any(|loc| loc.node == Some(node)),
                PieceBody::Inline { .. } => false,
            });
            if holds {
                return Err(FsError::NotEmpty);
            }
        }
        let mut batch = Batch::default();
        for (key, value) in self.scan_all(keys::GC_PREFIX)? {
            if GcRecord::decode(&value)?.node == node {
                batch.delete(key);
            }
        }
        batch.delete(keys::node(node));
        batch.delete(keys::draining(node));
        batch.put(keys::removed(node), Vec::new());
        self.kv.write(batch)?;
        self.kv.sync()?;
        self.liveness.lock().expect("liveness lock").remove(&node);
        Ok(())
    }

    /// Queues shards found on `node` that nothing references for deletion
    /// (the orphan collector decided; see `repair::pick_orphans`).
    pub fn queue_orphans(&self, node: NodeId, shards: &[(u128, u8)]) -> FsResult<()> {
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        for &(piece_id, shard_index) in shards {
            let seq = txn.next(GC_COUNTER)?;
            let gc = GcRecord {
                node,
                piece_id,
                shard_index,
                queued: now_ns(),
            };
            txn.batch.put(keys::gc(seq), gc.encode());
        }
        txn.commit()
    }

    pub fn add_suspects(&self, shards: &[ShardRef]) {
        self.suspects
            .lock()
            .expect("suspects lock")
            .extend(shards.iter().copied());
    }

    pub fn forget_suspects(&self, shards: &[ShardRef]) {
        let mut suspects = self.suspects.lock().expect("suspects lock");
        for shard in shards {
            suspects.remove(shard);
        }
    }

    pub fn is_suspect(&self, shard: &ShardRef) -> bool {
        self.suspects.lock().expect("suspects lock").contains(shard)
    }

    /// Points the shards of `moves` at their new nodes, if the record still
    /// holds piece `piece_id` with each shard where the plan found it; the
    /// old locations go to the GC queue. If the record changed meanwhile (a
    /// client rewrote the chunk), nothing changes and the rebuilt copies go
    /// to the GC queue instead. Returns whether the repair was committed.
    pub fn commit_repair(&self, ino: Ino, chunk_index: u64, piece_id: u128, moves: &[ShardMove]) -> FsResult<bool> {
        let _guard = self.lock();
        let key = keys::chunk(ino, chunk_index);
        let mut record = match self.kv.get(&key)? {
            Some(bytes) => Some(ChunkRecord::decode(&bytes)?),
            None => None,
        };
        let unchanged = record.as_ref().is_some_and(|record| {
            let mut holding = record.extents.iter().filter(|e| e.piece.id == piece_id).peekable();
            holding.peek().is_some()
                && holding.all(|extent| match &extent.piece.body {
                    PieceBody::Striped { shards, .. } => moves.iter().all(|mv| {
                        shards
                            .get(mv.shard_index as usize)
                            .is_some_and(|loc| loc.node == mv.from)
                    }),
                    PieceBody::Inline { .. } => false,
                })
        });
        let mut txn = Txn::new(self);
        let queue = |txn: &mut Txn, node: NodeId, shard_index: u8| -> FsResult<()> {
            let seq = txn.next(GC_COUNTER)?;
            let gc = GcRecord {
                node,
                piece_id,
                shard_index,
                queued: now_ns(),
            };
            txn.batch.put(keys::gc(seq), gc.encode());
            Ok(())
        };
        match record.as_mut() {
            Some(record) if unchanged => {
                for extent in record.extents.iter_mut().filter(|e| e.piece.id == piece_id) {
                    if let PieceBody::Striped { shards, .. } = &mut extent.piece.body {
                        for mv in moves {
                            shards[mv.shard_index as usize].node = Some(mv.to);
                        }
                    }
                }
                txn.batch.put(key, record.encode());
                for mv in moves {
                    if let Some(from) = mv.from.filter(|from| *from != mv.to) {
                        // A removed node's disk has left the cluster: nothing to delete there.
                        if self.kv.get(&keys::removed(from))?.is_none() {
                            queue(&mut txn, from, mv.shard_index)?;
                        }
                    }
                }
            }
            _ => {
                // A shard rewritten in place has the key of the shard the
                // client's change already queued; the rest are orphans now.
                for mv in moves.iter().filter(|mv| mv.from != Some(mv.to)) {
                    queue(&mut txn, mv.to, mv.shard_index)?;
                }
            }
        }
        txn.commit()?;
        Ok(unchanged)
    }

    // ----- key policies (meta stores envelopes; it can open none) -----

    /// Whether `inode` is the directory a policy was given to.
    fn is_policy_root(&self, inode: &Inode) -> FsResult<bool> {
        if inode.kind != FileKind::Dir || inode.policy == VOLUME_POLICY {
            return Ok(false);
        }
        Ok(self.policy(inode.policy)?.dir == inode.ino)
    }

    pub fn policy(&self, id: PolicyId) -> FsResult<PolicyRecord> {
        match self.kv.get(&keys::policy(id))? {
            Some(bytes) => Ok(PolicyRecord::decode(&bytes)?),
            None => Err(FsError::NotFound),
        }
    }

    /// A piece committed to `inode` must be sealed under its policy's
    /// current epoch: once a revoke made a new epoch, no new data is sealed
    /// under a key the removed machine holds. A client that has not seen the
    /// new epoch yet gets `Stale` and seals its piece again.
    fn check_sealed_for(&self, inode: &Inode, extent: &Extent) -> FsResult<()> {
        let piece = &extent.piece;
        if piece.key_id != inode.policy {
            return Err(FsError::Invalid("data sealed under another directory's key"));
        }
        if inode.policy != VOLUME_POLICY && self.policy(inode.policy)?.current_epoch != piece.key_epoch {
            return Err(FsError::Stale);
        }
        Ok(())
    }

    /// Gives the empty directory `dir` a policy of its own at epoch 1.
    pub fn protect(
        &self,
        dir: Ino,
        group: String,
        mut envelope: KeyEnvelope,
        mut names: KeyEnvelope,
    ) -> FsResult<PolicyRecord> {
        if group.is_empty() || group.len() > sohofs_format::ENVELOPE_TEXT_BYTES_MAX {
            return Err(FsError::Invalid("a policy names its LDAP group"));
        }
        let _guard = self.lock();
        let mut txn = Txn::new(self);
        let mut inode = txn.dir(dir)?;
        if inode.policy != VOLUME_POLICY {
            return Err(FsError::Exists);
        }
        if !self.is_empty_dir(dir)? {
            // What is inside is sealed under the volume key, with plain names.
            return Err(FsError::NotEmpty);
        }
        let id = txn.next(POLICY_COUNTER)?;
        let policy = PolicyRecord {
            id,
            group,
            dir,
            current_epoch: 1,
            live_epochs: vec![1],
            created: now_ns(),
        };
        envelope.policy_id = id;
        envelope.epoch = 1;
        names.policy_id = id;
        names.epoch = NAME_KEY_EPOCH;
        inode.policy = id;
        inode.ctime = now_ns();
        txn.set_inode(inode);
        txn.batch.put(keys::policy(id), policy.encode());
        txn.batch.put(keys::envelope(id, 1), envelope.encode());
        txn.batch.put(keys::envelope(id, NAME_KEY_EPOCH), names.encode());
        txn.commit()?;
        // Key changes are made durable before they are answered.
        self.sync()?;
        Ok(policy)
    }

    pub fn policies(&self) -> FsResult<Vec<PolicyRecord>> {
        self.scan_all(keys::POLICY_PREFIX)?
            .iter()
            .map(|(_, value)| Ok(PolicyRecord::decode(value)?))
            .collect()
    }

    pub fn envelopes(&self, policy: PolicyId) -> FsResult<Vec<KeyEnvelope>> {
        // The standard tier (policy 0) has no record: its one envelope, if a
        // sync made it, is the volume key wrapped to the cluster group.
        if policy != VOLUME_POLICY {
            self.policy(policy)?;
        }
        self.scan_all(&keys::envelope_prefix(policy))?
            .iter()
            .map(|(_, value)| Ok(KeyEnvelope::decode(value)?))
            .collect()
    }

    /// Stores a re-wrapped envelope of the current epoch, or the first
    /// envelope of the next epoch, which becomes current.
    pub fn put_envelope(&self, envelope: KeyEnvelope, expect_epoch: u32) -> FsResult<PolicyRecord> {
        let _guard = self.lock();
        if envelope.policy_id == VOLUME_POLICY {
            return self.put_volume_envelope(envelope);
        }
        let mut policy = self.policy(envelope.policy_id)?;
        if policy.current_epoch != expect_epoch {
            return Err(FsError::Stale);
        }
        if envelope.epoch == policy.current_epoch + 1 {
            if policy.live_epochs.len() >= POLICY_EPOCHS_MAX {
                return Err(FsError::Invalid("too many key epochs waiting for a rekey"));
            }
            policy.current_epoch = envelope.epoch;
            policy.live_epochs.push(envelope.epoch);
        } else if envelope.epoch != policy.current_epoch && envelope.epoch != NAME_KEY_EPOCH {
            return Err(FsError::Invalid("an envelope is for the current epoch or the next"));
        }
        let mut batch = Batch::default();
        batch.put(keys::envelope(policy.id, envelope.epoch), envelope.encode());
        batch.put(keys::policy(policy.id), policy.encode());
        self.kv.write(batch)?;
        self.sync()?;
        Ok(policy)
    }

    /// The volume key (standard tier) wrapped to the cluster group's
    /// machines: one envelope at epoch 0, replaced whole at every sync (the
    /// volume key itself never changes).
    fn put_volume_envelope(&self, envelope: KeyEnvelope) -> FsResult<PolicyRecord> {
        if envelope.epoch != 0 {
            return Err(FsError::Invalid("the volume key's envelope is of epoch 0"));
        }
        let mut batch = Batch::default();
        batch.put(keys::envelope(VOLUME_POLICY, 0), envelope.encode());
        self.kv.write(batch)?;
        self.sync()?;
        Ok(PolicyRecord {
            id: VOLUME_POLICY,
            group: String::new(),
            dir: ROOT_INO,
            current_epoch: 0,
            live_epochs: vec![0],
            created: 0,
        })
    }

    /// Destroys an older epoch's envelope once no piece is sealed under it.
    pub fn drop_epoch(&self, id: PolicyId, epoch: u32) -> FsResult<PolicyRecord> {
        let _guard = self.lock();
        let mut policy = self.policy(id)?;
        if epoch == policy.current_epoch || epoch == NAME_KEY_EPOCH {
            return Err(FsError::Invalid("the current epoch's key and the name key are in use"));
        }
        if !policy.live_epochs.contains(&epoch) {
            return Ok(policy);
        }
        for (key, value) in self.scan_all(keys::INODE_PREFIX)? {
            let inode = Inode::decode(&value)?;
            if inode.policy != id || inode.kind != FileKind::File {
                continue;
            }
            let Some(ino) = keys::ino_of(&key) else { continue };
            for (_, record) in self.scan_all(&keys::chunk_prefix(ino))? {
                let record = ChunkRecord::decode(&record)?;
                if record.extents.iter().any(|e| e.piece.key_epoch == epoch) {
                    return Err(FsError::NotEmpty);
                }
            }
        }
        policy.live_epochs.retain(|live| *live != epoch);
        let mut batch = Batch::default();
        batch.delete(keys::envelope(id, epoch));
        batch.put(keys::policy(id), policy.encode());
        self.kv.write(batch)?;
        self.sync()?;
        Ok(policy)
    }

    /// Regular files of a policy, in inode order after `after`.
    pub fn policy_files(&self, id: PolicyId, after: Ino, limit: u32) -> FsResult<Vec<Ino>> {
        let limit = limit.clamp(1, POLICY_FILES_MAX) as usize;
        let mut out = Vec::new();
        let mut cursor = keys::inode(after);
        loop {
            let page = self.kv.scan(keys::INODE_PREFIX, Some(&cursor), 1024)?;
            let Some((last, _)) = page.last() else { break };
            cursor = last.clone();
            for (_, value) in &page {
                let inode = Inode::decode(value)?;
                if inode.policy == id && inode.kind == FileKind::File && inode.nlink > 0 {
                    out.push(inode.ino);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Replaces a chunk's record by re-sealed extents if nobody changed it.
    pub fn rekey_chunk(&self, ino: Ino, index: u64, expect: &[u128], extents: Vec<Extent>) -> FsResult<bool> {
        let _guard = self.lock();
        let inode = self.inode(ino)?;
        for extent in &extents {
            check_extent(extent, self.volume.chunk_bytes)?;
            self.check_sealed_for(&inode, extent)?;
        }
        let key = keys::chunk(ino, index);
        let old = match self.kv.get(&key)? {
            Some(bytes) => ChunkRecord::decode(&bytes)?,
            None => ChunkRecord::default(),
        };
        let mut txn = Txn::new(self);
        let unchanged = old.extents.iter().map(|e| e.piece.id).eq(expect.iter().copied());
        let new = ChunkRecord { extents };
        let (keep, release) = if unchanged { (&new, &old) } else { (&old, &new) };
        for extent in &release.extents {
            txn.release_extent(extent)?;
        }
        if unchanged {
            txn.batch.put(key, keep.encode());
        }
        txn.commit()?;
        Ok(unchanged)
    }

    /// Chunk records in key order after `after`, at most `limit`
    /// (bounded by [`READ_CHUNKS_MAX`]).
    pub fn list_chunks(&self, after: Option<(Ino, u64)>, limit: u32) -> FsResult<Vec<(Ino, u64, ChunkRecord)>> {
        let after_key = after.map(|(ino, index)| keys::chunk(ino, index));
        let limit = limit.clamp(1, READ_CHUNKS_MAX) as usize;
        let mut out = Vec::new();
        for (key, value) in self.kv.scan(keys::CHUNK_PREFIX, after_key.as_deref(), limit)? {
            if let Some((ino, index)) = keys::chunk_of(&key) {
                out.push((ino, index, ChunkRecord::decode(&value)?));
            }
        }
        Ok(out)
    }

    pub fn set_rebuild_status(&self, status: RebuildStatus) {
        *self.rebuild.lock().expect("rebuild status lock") = status;
    }

    /// Healing progress as the heal service last reported it, with the
    /// nodes lost now.
    pub fn rebuild_status(&self) -> FsResult<RebuildStatus> {
        let mut status = self.rebuild.lock().expect("rebuild status lock").clone();
        status.nodes_lost = self
            .node_health()?
            .into_iter()
            .filter(|(n, _)| n.lost)
            .map(|(n, _)| n.id)
            .collect();
        Ok(status)
    }

    pub fn stat_fs(&self) -> FsResult<StatFs> {
        let nodes = self.nodes()?;
        let files = self.counter(INODE_COUNTER)?.saturating_sub(1);
        let (k, m) = (self.volume.data_shards as u64, self.volume.parity_shards as u64);
        let usable = |raw: u64| raw / (k + m) * k;
        let up = nodes.iter().filter(|n| n.up);
        let (capacity, free) = up.fold((0u64, 0u64), |(c, f), n| {
            (c + n.record.capacity_bytes, f + n.record.free_bytes)
        });
        Ok(StatFs {
            capacity_bytes: usable(capacity),
            free_bytes: usable(free),
            files,
        })
    }

    pub fn status(&self) -> FsResult<VolumeStatus> {
        let up: std::collections::HashSet<NodeId> = self
            .nodes()?
            .into_iter()
            .filter(|n| n.up)
            .map(|n| n.record.id)
            .collect();
        let mut status = VolumeStatus::default();
        for (_, value) in self.scan_all(keys::INODE_PREFIX)? {
            let inode = Inode::decode(&value)?;
            if inode.kind == FileKind::File && inode.nlink > 0 {
                status.files += 1;
                status.bytes = status.bytes.saturating_add(inode.size);
            }
        }
        let k = self.volume.data_shards as usize;
        for (_, value) in self.scan_all(keys::CHUNK_PREFIX)? {
            let record = ChunkRecord::decode(&value)?;
            status.chunks_total += 1;
            let mut worst = 2; // 2 healthy, 1 degraded, 0 unreadable
            for extent in &record.extents {
                if let PieceBody::Striped { shards, .. } = &extent.piece.body {
                    let live = shards
                        .iter()
                        .filter(|s| s.node.is_some_and(|n| up.contains(&n)))
                        .count();
                    let health = if live == shards.len() {
                        2
                    } else if live >= k {
                        1
                    } else {
                        0
                    };
                    worst = worst.min(health);
                }
            }
            match worst {
                2 => status.chunks_healthy += 1,
                1 => status.chunks_degraded += 1,
                _ => status.chunks_unreadable += 1,
            }
        }
        Ok(status)
    }

    /// Makes every change answered so far durable. Changes are written to
    /// the log unsynced (a crash of the meta process loses none; a crash of
    /// its machine loses at most the last [`LOG_SYNC_INTERVAL`]); this is
    /// where durability is promised: a client's fsync, every NFS change,
    /// and before shards are deleted on the strength of a change.
    pub fn sync(&self) -> FsResult<()> {
        self.kv.sync()
    }

    /// The next shards to delete, with their queue keys. The log is synced first: a queued
    /// shard was replaced or freed by a change that must not be undone by a
    /// crash once the shard is gone.
    pub fn gc_batch(&self) -> FsResult<Vec<(Vec<u8>, GcRecord)>> {
        self.kv.sync()?;
        self.kv
            .scan(keys::GC_PREFIX, None, GC_BATCH_MAX)?
            .into_iter()
            .map(|(key, value)| Ok((key, GcRecord::decode(&value)?)))
            .collect()
    }

    pub fn gc_done(&self, done: Vec<Vec<u8>>) -> FsResult<()> {
        let mut batch = Batch::default();
        for key in done {
            batch.delete(key);
        }
        self.kv.write(batch)
    }

    /// Answers one request. Runs on the blocking pool.
    pub fn handle(&self, request: MetaRequest) -> FsResult<MetaResponse> {
        Ok(match request {
            MetaRequest::Volume => MetaResponse::Volume(self.volume.clone()),
            MetaRequest::Lookup { parent, name } => MetaResponse::Inode(self.lookup(parent, &name)?),
            MetaRequest::GetAttr { ino } => MetaResponse::Inode(self.inode(ino)?),
            MetaRequest::SetAttr { ino, attr } => MetaResponse::Inode(self.set_attr(ino, &attr)?),
            MetaRequest::Create { parent, name, inode } => MetaResponse::Inode(self.create(parent, &name, &inode)?),
            MetaRequest::Link { ino, parent, name } => MetaResponse::Inode(self.link(ino, parent, &name)?),
            MetaRequest::Unlink { parent, name } => {
                self.unlink(parent, &name)?;
                MetaResponse::Ok
            }
            MetaRequest::Rmdir { parent, name } => {
                self.rmdir(parent, &name)?;
                MetaResponse::Ok
            }
            MetaRequest::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                self.rename(parent, &name, new_parent, &new_name, flags)?;
                MetaResponse::Ok
            }
            MetaRequest::ReadDir { dir, after_seq, limit } => {
                MetaResponse::Entries(self.read_dir(dir, after_seq, limit)?)
            }
            MetaRequest::GetXattr { ino, name } => MetaResponse::Xattr(self.get_xattr(ino, &name)?),
            MetaRequest::SetXattr {
                ino,
                name,
                value,
                flags,
            } => {
                self.set_xattr(ino, &name, &value, flags)?;
                MetaResponse::Ok
            }
            MetaRequest::ListXattr { ino } => MetaResponse::XattrNames(self.list_xattr(ino)?),
            MetaRequest::RemoveXattr { ino, name } => {
                self.remove_xattr(ino, &name)?;
                MetaResponse::Ok
            }
            MetaRequest::StatFs => MetaResponse::StatFs(self.stat_fs()?),
            MetaRequest::ReadChunks {
                ino,
                first_index,
                count,
            } => MetaResponse::Chunks(self.read_chunks(ino, first_index, count)?),
            MetaRequest::CommitWrite {
                ino,
                writes,
                size_at_least,
                mtime,
            } => MetaResponse::Inode(self.commit_write(ino, &writes, size_at_least, mtime)?),
            MetaRequest::Open { ino, session } => MetaResponse::Inode(self.open_file(ino, session)?),
            MetaRequest::Release { ino, session } => {
                self.release_file(ino, session)?;
                MetaResponse::Ok
            }
            MetaRequest::Heartbeat { node } => {
                self.heartbeat(&node)?;
                MetaResponse::Ok
            }
            MetaRequest::Nodes => MetaResponse::Nodes(self.nodes()?),
            MetaRequest::Status => MetaResponse::Status(self.status()?),
            MetaRequest::Sync => {
                self.sync()?;
                MetaResponse::Ok
            }
            MetaRequest::Rebuild => MetaResponse::Rebuild(self.rebuild_status()?),
            MetaRequest::ReportCorrupt { shards } => {
                if shards.len() > REPORTED_SHARDS_MAX {
                    return Err(FsError::Invalid("too many shards in one report"));
                }
                tracing::warn!(shards = shards.len(), "corrupt shards reported; repairing");
                self.add_suspects(&shards);
                MetaResponse::Ok
            }
            // Scrub needs the nodes: the heal service answers it (`heal.rs`).
            MetaRequest::Scrub { .. } => return Err(FsError::Invalid("scrub is answered by the heal service")),
            MetaRequest::ListChunks { after, limit } => MetaResponse::ChunkList(self.list_chunks(after, limit)?),
            MetaRequest::Members => MetaResponse::Members(self.members()?),
            MetaRequest::Drain { node } => {
                self.drain(node)?;
                tracing::info!(node, "node draining: its shards move to other hosts");
                MetaResponse::Ok
            }
            MetaRequest::RemoveNode { node } => {
                self.remove_node(node)?;
                tracing::info!(node, "node removed from the cluster");
                MetaResponse::Ok
            }
            MetaRequest::Draining => MetaResponse::Draining(self.draining_nodes()?),
            MetaRequest::Protect {
                dir,
                group,
                envelope,
                names,
            } => MetaResponse::Policy(self.protect(dir, group, envelope, names)?),
            MetaRequest::Policies => MetaResponse::Policies(self.policies()?),
            MetaRequest::Envelopes { policy } => MetaResponse::Envelopes(self.envelopes(policy)?),
            MetaRequest::PutEnvelope { envelope, expect_epoch } => {
                MetaResponse::Policy(self.put_envelope(envelope, expect_epoch)?)
            }
            MetaRequest::DropEpoch { policy, epoch } => MetaResponse::Policy(self.drop_epoch(policy, epoch)?),
            MetaRequest::PolicyFiles { policy, after, limit } => {
                MetaResponse::Inos(self.policy_files(policy, after, limit)?)
            }
            MetaRequest::RekeyChunk {
                ino,
                index,
                expect,
                extents,
            } => MetaResponse::Replaced(self.rekey_chunk(ino, index, &expect, extents)?),
        })
    }
}

struct MetaHandler {
    meta: Arc<Meta>,
    healer: Arc<crate::heal::Healer>,
}

impl crate::rpc::Handler for MetaHandler {
    async fn handle(&self, body: Vec<u8>, _data: Bytes) -> (Vec<u8>, Bytes) {
        let response = match decode_body::<MetaRequest>(&body) {
            Err(error) => {
                tracing::debug!(%error, "undecodable meta request");
                MetaResponse::Error(sohofs_format::messages::ErrorKind::Protocol)
            }
            Ok(MetaRequest::Scrub { bytes_per_s }) => match self.healer.scrub_now(bytes_per_s).await {
                Ok(report) => MetaResponse::Scrub(report),
                Err(error) => {
                    tracing::error!(%error, "scrub failed");
                    MetaResponse::Error(error.kind())
                }
            },
            Ok(request) => {
                let meta = self.meta.clone();
                match tokio::task::spawn_blocking(move || meta.handle(request)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(error)) => {
                        if matches!(error, FsError::Io(_) | FsError::Corrupt(_)) {
                            tracing::error!(%error, "meta request failed");
                        }
                        MetaResponse::Error(error.kind())
                    }
                    Err(error) => {
                        tracing::error!(%error, "meta request task failed");
                        MetaResponse::Error(sohofs_format::messages::ErrorKind::Io)
                    }
                }
            }
        };
        (encode_body(&response), Bytes::new())
    }
}

/// Serves `meta` on `listen` and runs its garbage collector and the heal
/// service (rebuild, scrub repairs), until dropped.
pub async fn run_meta(meta: Arc<Meta>, listen: &str) -> std::io::Result<()> {
    let transport = crate::rpc::Transport::default();
    let listener = transport.bind(listen).await?;
    tracing::info!(%listen, volume = %format!("{:032x}", meta.volume().volume_id), "meta serving");
    let healer = Arc::new(crate::heal::Healer::new(meta.clone(), transport.clone()));
    let handler = Arc::new(MetaHandler {
        meta: meta.clone(),
        healer: healer.clone(),
    });
    tokio::select! {
        _ = crate::rpc::serve(listener, handler) => Ok(()),
        _ = gc_loop(meta.clone(), transport) => Ok(()),
        _ = log_sync_loop(meta) => Ok(()),
        _ = healer.run() => Ok(()),
    }
}

/// Syncs the log every [`LOG_SYNC_INTERVAL`], bounding what a crash of the
/// meta machine can take to changes no client had fsynced, as a local file
/// system's journal commit interval does.
async fn log_sync_loop(meta: Arc<Meta>) {
    loop {
        tokio::time::sleep(LOG_SYNC_INTERVAL).await;
        let meta = meta.clone();
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || meta.sync()).await {
            tracing::error!(%error, "cannot sync the metadata log");
        }
    }
}

/// Deletes queued shards from the nodes that are up; the rest wait.
async fn gc_loop(meta: Arc<Meta>, transport: crate::rpc::Transport) {
    let mut clients: HashMap<NodeId, Arc<crate::peers::NodeClient>> = HashMap::new();
    loop {
        tokio::time::sleep(GC_INTERVAL).await;
        let (batch, nodes) = {
            let meta = meta.clone();
            match tokio::task::spawn_blocking(move || Ok::<_, FsError>((meta.gc_batch()?, meta.nodes()?))).await {
                Ok(Ok(found)) => found,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "garbage collector cannot read its queue");
                    continue;
                }
                Err(_) => continue,
            }
        };
        if batch.is_empty() {
            continue;
        }
        let up: HashMap<NodeId, String> = nodes
            .into_iter()
            .filter(|n| n.up)
            .map(|n| (n.record.id, n.record.addr))
            .collect();
        let mut done = Vec::new();
        for (key, record) in batch {
            let Some(addr) = up.get(&record.node) else { continue };
            let client = clients
                .entry(record.node)
                .or_insert_with(|| Arc::new(crate::peers::NodeClient::new(addr.clone(), transport.clone())))
                .clone();
            let shard = crate::shard_store::ShardKey {
                piece_id: record.piece_id,
                shard_index: record.shard_index,
            };
            match client.delete_shard(shard).await {
                Ok(()) => done.push(key),
                Err(error) => tracing::debug!(node = record.node, %error, "shard delete deferred"),
            }
        }
        if !done.is_empty() {
            let meta = meta.clone();
            if let Ok(Err(error)) = tokio::task::spawn_blocking(move || meta.gc_done(done)).await {
                tracing::warn!(%error, "garbage collector cannot update its queue");
            }
        }
    }
}
