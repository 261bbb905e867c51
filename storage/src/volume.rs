//! The client volume API: what FUSE and NFS adapters call.
//!
//! Metadata operations are synchronous RPCs to meta. File data is buffered per
//! open file in *spans* (one contiguous dirty range per chunk); a span is
//! sealed, erasure-coded and written to k+m nodes on distinct hosts in the
//! background when it fills its chunk, when the file's dirty bytes pass a
//! bound, or at `flush`/`fsync`, which return only after every span is
//! committed to meta. Commits of one chunk happen in the order the spans were
//! cut, so later writes always lie over earlier ones.
//!
//! Reads resolve a chunk's extents (fetching k shards, data shards first,
//! parity in place of any that is missing, slow or corrupt), then lay the
//! file's uncommitted spans over them. Consistency between clients is
//! close-to-open: opening a file drops this client's cached chunk records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use sohofs_format::messages::{ChunkOp, ChunkWrite, MetaRequest, MetaResponse, NewInode, NodeStatus, ShardRef};
use sohofs_format::{
    ChunkRecord, Extent, KeyEnvelope, NodeId, Piece, PieceBody, PolicyId, PolicyRecord, ShardLoc, VolumeRecord,
    VOLUME_POLICY,
};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinHandle;

pub use sohofs_format::messages::{DirEntry, SetAttr, StatFs, TimeSet, VolumeStatus};
pub use sohofs_format::{FileKind, Ino, Inode as Attr, TimeNs, ROOT_INO};

use crate::codec::{self, DataKey, PiecePlace};
use crate::error::{FsError, FsResult};
use crate::fault;
use crate::keytable::{KeyEvent, KeyOpener, KeyTable};
use crate::meta::now_ns;
use crate::names;
use crate::peers::{MetaClient, NodeClient};
use crate::placement::{choose_nodes, NodeView};
use crate::rpc::Transport;
use crate::shard_store::ShardKey;

/// Dirty bytes one open file may buffer before it flushes.
pub const FILE_DIRTY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Spans of all files being written to nodes at once.
pub const SPANS_IN_FLIGHT_MAX: usize = 6;
/// Decoded chunks kept for reads.
pub const CHUNK_CACHE_ENTRIES_MAX: usize = 32;
/// Chunks read ahead of a sequential reader.
pub const READAHEAD_CHUNKS: u64 = 2;
/// A chunk with this many extents is folded into one on its next write.
pub const EXTENTS_PER_CHUNK_MAX: usize = 16;
/// How often the client refreshes its view of the nodes.
pub const NODE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Directories whose policy a client remembers.
const DIR_POLICIES_CACHED: usize = 65_536;
/// Chunk records fetched per meta call when a file is read.
const CHUNK_RECORDS_PER_CALL: u32 = 64;

/// Passes a rekey makes before it gives up on writers that keep sealing
/// under an older epoch (clients follow a new epoch within a second).
const REKEY_PASSES_MAX: usize = 10;

/// How far a rekey has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RekeyProgress {
    pub files_total: u64,
    pub files_done: u64,
    pub chunks_rekeyed: u64,
    pub epochs_destroyed: u64,
}

/// Whether one piece opened with this client's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceCheck {
    pub index: u64,
    pub piece_id: u128,
    pub policy: PolicyId,
    pub epoch: u32,
    /// `None` when it opened.
    pub error: Option<FsError>,
}

/// Times a span is sealed again because its policy's key epoch changed.
const RESEAL_ATTEMPTS_MAX: usize = 3;

/// How a client reaches its cluster and opens its data.
#[derive(Clone)]
pub struct VolumeConfig {
    pub meta_addrs: Vec<String>,
    /// The volume key (the standard tier, policy 0).
    pub data_key: DataKey,
    /// Opens protected directories' key envelopes with this machine's
    /// identity; without one, every protected directory is EACCES.
    pub opener: Option<Arc<dyn KeyOpener>>,
}

impl std::fmt::Debug for VolumeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeConfig")
            .field("meta_addrs", &self.meta_addrs)
            .field("opener", &self.opener.is_some())
            .finish_non_exhaustive()
    }
}

/// A contiguous dirty range of one chunk, not yet committed.
#[derive(Debug)]
struct Span {
    index: u64,
    offset: u32,
    data: Vec<u8>,
}

impl Span {
    fn end(&self) -> u32 {
        self.offset + self.data.len() as u32
    }
}

/// A span on its way to the nodes and meta.
struct Pending {
    span: Arc<Span>,
    seq: u64,
}

/// What writers of a file change; held across awaits by write, flush and
/// setattr so that they exclude each other.
#[derive(Default)]
struct FileState {
    /// The size this client sees, including uncommitted writes.
    size: u64,
    /// Whether `size` has been loaded from meta.
    size_known: bool,
    mtime: Option<TimeNs>,
    spans: BTreeMap<u64, Span>,
    dirty_bytes: usize,
    /// The last flush task of each chunk; the next one waits for it.
    last_flush: HashMap<u64, JoinHandle<()>>,
    /// Fires when the last flush task started (of any chunk) has ended.
    /// Each task commits only after its predecessor ended, so commits are
    /// in write order and a chunk that failed is never followed by a later
    /// chunk's commit (which would leave a hole of zeros before data).
    /// Shard writes still run side by side; only the commits take turns.
    commit_turn: Option<tokio::sync::oneshot::Receiver<()>>,
    next_seq: u64,
}

/// What flush tasks and readers share; never held across an await.
#[derive(Default)]
struct Book {
    /// Spans in flight, per chunk, in commit order.
    pending: BTreeMap<u64, Vec<Pending>>,
    /// Bumped whenever `records` is dropped (truncate, reopen): a record fetch
    /// that started before must not put its older records back.
    records_epoch: u64,
    /// Chunk records as last read from meta or committed by this client.
    records: HashMap<u64, ChunkRecord>,
}

struct OpenFile {
    /// The key policy of the file's data (from meta at open).
    policy: std::sync::atomic::AtomicU64,
    state: Mutex<FileState>,
    book: StdMutex<Book>,
    handles: std::sync::atomic::AtomicU32,
    /// The first error of a background flush, reported at the next fsync.
    error: StdMutex<Option<FsError>>,
}

impl Book {
    fn clear_records(&mut self) {
        self.records.clear();
        self.records_epoch += 1;
    }
}

impl OpenFile {
    fn new() -> Arc<Self> {
        Arc::new(OpenFile {
            policy: std::sync::atomic::AtomicU64::new(VOLUME_POLICY),
            state: Mutex::new(FileState::default()),
            book: StdMutex::new(Book::default()),
            handles: std::sync::atomic::AtomicU32::new(0),
            error: StdMutex::new(None),
        })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().expect("file book lock")
    }

    /// The first background write of this file that failed. It stays until
    /// the file's last handle is closed, so that every later write, flush,
    /// fsync and close reports it: data a write() took and then lost must
    /// never be followed by an fsync or close that says "done".
    fn error(&self) -> Option<FsError> {
        self.error.lock().expect("file error lock").clone()
    }

    fn record_error(&self, error: FsError) {
        let mut slot = self.error.lock().expect("file error lock");
        if slot.is_none() {
            *slot = Some(error);
        }
    }
}

#[derive(Clone)]
struct NodeEntry {
    status: NodeStatus,
    client: Arc<NodeClient>,
}

type ChunkKey = (Ino, u64);

/// A cached, decoded chunk and the record it was decoded from.
struct CachedChunk {
    record: ChunkRecord,
    plain: Arc<Vec<u8>>,
}

struct Inner {
    meta: MetaClient,
    volume: VolumeRecord,
    keys: StdMutex<KeyTable>,
    opener: Option<Arc<dyn KeyOpener>>,
    /// The policy of each directory seen (a directory's policy changes only
    /// when `dir protect` gives an empty one its own).
    dir_policies: StdMutex<lru::LruCache<Ino, PolicyId>>,
    session: u64,
    transport: Transport,
    nodes: StdMutex<HashMap<NodeId, NodeEntry>>,
    /// Nodes being drained: read from, never written to.
    draining: StdMutex<HashSet<NodeId>>,
    files: StdMutex<HashMap<Ino, Arc<OpenFile>>>,
    cache: StdMutex<lru::LruCache<ChunkKey, Arc<CachedChunk>>>,
    /// One lock per chunk being decoded, so that a reader and the read-ahead
    /// never fetch the same chunk twice.
    loads: StdMutex<HashMap<ChunkKey, Arc<Mutex<()>>>>,
    flush_slots: Arc<Semaphore>,
    /// Whether every change waits until meta has made it durable (the NFS
    /// gateway: NFSv3 replies promise stable storage); otherwise only fsync
    /// does, as on a local file system.
    sync_every_change: std::sync::atomic::AtomicBool,
}

/// A mounted view of the volume. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Volume {
    inner: Arc<Inner>,
}

fn expect_inode(response: MetaResponse) -> FsResult<Attr> {
    match response {
        MetaResponse::Inode(inode) => Ok(inode),
        _ => Err(FsError::Protocol(
            "meta answered with something other than an inode".into(),
        )),
    }
}

fn expect_ok(response: MetaResponse) -> FsResult<()> {
    match response {
        MetaResponse::Ok => Ok(()),
        _ => Err(FsError::Protocol("meta answered with something other than Ok".into())),
    }
}

/// The volume key's envelope (standard tier) as meta holds it, if a sync
/// made one: what a client machine without `volume.key` opens with its
/// identity before it connects.
pub async fn volume_envelope(meta_addrs: &[String]) -> FsResult<Option<KeyEnvelope>> {
    let meta = MetaClient::new(meta_addrs, Transport::default());
    match meta.call(&MetaRequest::Envelopes { policy: VOLUME_POLICY }).await? {
        MetaResponse::Envelopes(envelopes) => Ok(envelopes.into_iter().find(|e| e.epoch == 0)),
        _ => Err(FsError::Protocol("meta answered Envelopes with something else".into())),
    }
}

impl Volume {
    /// Connects to meta, learns the volume and the nodes, and starts the
    /// background refresh of the node view.
    pub async fn connect(config: VolumeConfig) -> FsResult<Volume> {
        Self::connect_with_transport(config, Transport::default()).await
    }

    /// [`Volume::connect`] over a given transport (one with fault injection).
    pub async fn connect_with_transport(config: VolumeConfig, transport: Transport) -> FsResult<Volume> {
        let meta = MetaClient::new(&config.meta_addrs, transport.clone());
        let volume = match meta.call(&MetaRequest::Volume).await? {
            MetaResponse::Volume(volume) => volume,
            _ => return Err(FsError::Protocol("meta answered Volume with something else".into())),
        };
        let inner = Arc::new(Inner {
            meta,
            volume,
            keys: StdMutex::new(KeyTable::new(config.data_key)),
            opener: config.opener,
            dir_policies: StdMutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(DIR_POLICIES_CACHED).expect("non-zero cache size"),
            )),
            session: rand::random(),
            transport,
            nodes: StdMutex::new(HashMap::new()),
            draining: StdMutex::new(HashSet::new()),
            files: StdMutex::new(HashMap::new()),
            cache: StdMutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(CHUNK_CACHE_ENTRIES_MAX).expect("non-zero cache size"),
            )),
            loads: StdMutex::new(HashMap::new()),
            sync_every_change: std::sync::atomic::AtomicBool::new(false),
            flush_slots: Arc::new(Semaphore::new(SPANS_IN_FLIGHT_MAX)),
        });
        let volume = Volume { inner };
        volume.refresh_nodes().await?;
        volume.refresh_keys().await?;
        let weak = Arc::downgrade(&volume.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(NODE_REFRESH_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { break };
                let volume = Volume { inner };
                if let Err(error) = volume.refresh_nodes().await {
                    tracing::debug!(%error, "node refresh failed");
                }
                if let Err(error) = volume.refresh_keys().await {
                    tracing::debug!(%error, "key policy refresh failed");
                }
            }
        });
        Ok(volume)
    }

    pub fn record(&self) -> &VolumeRecord {
        &self.inner.volume
    }

    /// Reloads the node table from meta; returns whether any node's address
    /// changed (a node restarted elsewhere).
    pub async fn refresh_nodes(&self) -> FsResult<bool> {
        let statuses = self.nodes().await?;
        let draining = match self.inner.meta.call(&MetaRequest::Draining).await? {
            MetaResponse::Draining(ids) => ids.into_iter().collect(),
            _ => return Err(FsError::Protocol("meta answered Draining with something else".into())),
        };
        *self.inner.draining.lock().expect("draining set lock") = draining;
        let mut nodes = self.inner.nodes.lock().expect("node table lock");
        let mut moved = false;
        for status in statuses {
            let id = status.record.id;
            let client = match nodes.get(&id) {
                Some(entry) if entry.client.addr() == status.record.addr => entry.client.clone(),
                known => {
                    moved |= known.is_some();
                    Arc::new(NodeClient::new(
                        status.record.addr.clone(),
                        self.inner.transport.clone(),
                    ))
                }
            };
            nodes.insert(id, NodeEntry { status, client });
        }
        Ok(moved)
    }

    /// Follows meta's key policies: opens the envelopes of epochs not tried
    /// yet, forgets destroyed ones, and so loses access when this machine
    /// is no longer among the current epoch's recipients.
    pub async fn refresh_keys(&self) -> FsResult<()> {
        let records = self.policies().await?;
        let to_fetch = self.keys().update(records);
        if !to_fetch.is_empty() {
            // Access may have been lost: no decoded chunk may outlive it.
            self.inner.cache.lock().expect("chunk cache lock").clear();
            // A directory protected since this client cached its policy
            // (a new policy) must be looked at again.
            self.inner.dir_policies.lock().expect("dir policy cache lock").clear();
        }
        // Policies this machine was refused are looked at again, for a
        // grant (an envelope re-wrapped at the same epoch); only a machine
        // with an identity could ever open them.
        let mut to_open = to_fetch;
        if self.inner.opener.is_some() {
            for policy in self.keys().refused_policies() {
                if !to_open.contains(&policy) {
                    to_open.push(policy);
                }
            }
        }
        for policy in to_open {
            let envelopes = self.envelopes(policy).await?;
            // Unwrapping is an X25519 per stanza, done only when an epoch
            // appears: cheap and rare enough to do under the lock.
            self.keys().take_envelopes(&envelopes, self.inner.opener.as_deref());
        }
        Ok(())
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, KeyTable> {
        self.inner.keys.lock().expect("key table lock")
    }

    /// The stored envelopes of a policy (ciphertext; for admin tools).
    pub async fn envelopes(&self, policy: PolicyId) -> FsResult<Vec<KeyEnvelope>> {
        match self.inner.meta.call(&MetaRequest::Envelopes { policy }).await? {
            MetaResponse::Envelopes(envelopes) => Ok(envelopes),
            _ => Err(FsError::Protocol("meta answered Envelopes with something else".into())),
        }
    }

    /// Every key policy meta holds.
    pub async fn policies(&self) -> FsResult<Vec<PolicyRecord>> {
        match self.inner.meta.call(&MetaRequest::Policies).await? {
            MetaResponse::Policies(records) => Ok(records),
            _ => Err(FsError::Protocol("meta answered Policies with something else".into())),
        }
    }

    /// The key of `policy` at `epoch` (0: the name key), if this machine
    /// holds it and has access (an admin re-wrapping it needs it).
    pub fn held_key(&self, policy: PolicyId, epoch: u32) -> Option<DataKey> {
        self.keys().held(policy, epoch)
    }

    /// The volume key (the standard tier), which a sync wraps to the
    /// cluster group's machines.
    pub fn volume_key(&self) -> DataKey {
        self.keys()
            .sealing(VOLUME_POLICY)
            .expect("the volume key is always held")
            .1
    }

    /// Whether this machine may read and write data of `policy` now.
    pub fn has_access(&self, policy: PolicyId) -> bool {
        self.keys().has_access(policy)
    }

    /// [`Volume::has_access`], looking at meta's policies first when this
    /// client has not seen `policy` yet (a directory protected since the
    /// last refresh): no spurious EACCES right after `dir protect`.
    async fn may_use(&self, policy: PolicyId) -> FsResult<bool> {
        if policy != VOLUME_POLICY && self.keys().record(policy).is_none() {
            self.refresh_keys().await?;
        }
        Ok(self.has_access(policy))
    }

    fn remember_policy(&self, attr: &Attr) {
        if attr.kind == FileKind::Dir {
            self.inner
                .dir_policies
                .lock()
                .expect("dir policy cache lock")
                .put(attr.ino, attr.policy);
        }
    }

    /// The policy of directory `dir`, refusing (EACCES) when it is
    /// protected and this machine is not approved for its key now.
    async fn dir_access(&self, dir: Ino) -> FsResult<PolicyId> {
        let cached = self
            .inner
            .dir_policies
            .lock()
            .expect("dir policy cache lock")
            .get(&dir)
            .copied();
        let policy = match cached {
            Some(policy) => policy,
            None => {
                let attr = expect_inode(self.inner.meta.call(&MetaRequest::GetAttr { ino: dir }).await?)?;
                self.remember_policy(&attr);
                attr.policy
            }
        };
        if self.may_use(policy).await? {
            Ok(policy)
        } else {
            Err(self.denied(policy))
        }
    }

    /// EACCES for data of `policy`, logged (and audited) once per policy
    /// and epoch.
    fn denied(&self, policy: PolicyId) -> FsError {
        let first = self.keys().first_denial(policy);
        if let Some(event) = first {
            if let KeyEvent::Denied { policy, epoch, group } = &event {
                tracing::warn!(
                    policy,
                    epoch,
                    "access denied: this machine is not approved for the key of a protected directory (group {group})"
                );
            }
            if let Some(opener) = &self.inner.opener {
                opener.event(event);
            }
        }
        FsError::Access
    }

    /// Forgets a directory's policy (meta said our view of it is stale).
    fn forget_policy(&self, dir: Ino) {
        self.inner.dir_policies.lock().expect("dir policy cache lock").pop(&dir);
    }

    /// `name` as stored in directory `dir` of `policy`: sealed in a protected
    /// directory (AES-SIV, so that lookup works), as given elsewhere.
    fn stored_name(&self, dir: Ino, policy: PolicyId, name: &[u8]) -> FsResult<Vec<u8>> {
        if policy == VOLUME_POLICY {
            return Ok(name.to_vec());
        }
        let key = self.keys().name_key(policy)?;
        Ok(names::seal_name(&key, dir, name)?)
    }

    /// A name of directory `dir` as the user sees it.
    fn shown_name(&self, dir: Ino, policy: PolicyId, stored: &[u8]) -> FsResult<Vec<u8>> {
        if policy == VOLUME_POLICY {
            return Ok(stored.to_vec());
        }
        let key = self.keys().name_key(policy)?;
        Ok(names::open_name(&key, dir, stored)?)
    }

    /// Looks up `name` in `parent` (sealing it first if need be): the
    /// stored name and the parent's policy, or EACCES.
    async fn entry_name(&self, parent: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        let policy = self.dir_access(parent).await?;
        self.stored_name(parent, policy, name)
    }

    fn node_client(&self, id: NodeId) -> Option<(Arc<NodeClient>, bool)> {
        let nodes = self.inner.nodes.lock().expect("node table lock");
        nodes.get(&id).map(|e| (e.client.clone(), e.status.up))
    }

    /// Marks a node down in this client's view until the next refresh;
    /// returns whether it was believed up (so that each outage is logged once).
    fn mark_down(&self, id: NodeId) -> bool {
        match self.inner.nodes.lock().expect("node table lock").get_mut(&id) {
            Some(entry) => std::mem::replace(&mut entry.status.up, false),
            None => false,
        }
    }

    async fn meta(&self, request: MetaRequest) -> FsResult<MetaResponse> {
        let response = self.inner.meta.call(&request).await?;
        let sync = self.inner.sync_every_change.load(std::sync::atomic::Ordering::Relaxed);
        if sync && changes_volume(&request) && !matches!(response, MetaResponse::Error(_)) {
            self.sync().await?;
        }
        Ok(response)
    }

    /// Makes every change of this client durable at meta before it is
    /// answered, not only at fsync. For servers whose protocol promises it.
    pub fn set_sync_every_change(&self, on: bool) {
        self.inner
            .sync_every_change
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits until every change meta has answered is durable.
    async fn sync(&self) -> FsResult<()> {
        expect_ok(self.inner.meta.call(&MetaRequest::Sync).await?)
    }

    // ----- namespace -----

    pub async fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Attr> {
        let stored = self.entry_name(parent, name).await?;
        let attr = expect_inode(self.meta(MetaRequest::Lookup { parent, name: stored }).await?)?;
        self.remember_policy(&attr);
        Ok(self.with_local_view(attr).await)
    }

    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let attr = expect_inode(self.meta(MetaRequest::GetAttr { ino }).await?)?;
        self.remember_policy(&attr);
        Ok(self.with_local_view(attr).await)
    }

    /// Lays this client's uncommitted size and times over meta's attributes.
    async fn with_local_view(&self, attr: Attr) -> Attr {
        let mut attr = shown_attr(attr);
        if let Some(file) = self.open_file(attr.ino) {
            let state = file.state.lock().await;
            if state.size_known {
                attr.size = state.size;
            }
            if let Some(mtime) = state.mtime {
                attr.mtime = attr.mtime.max(mtime);
                // A write changes the status too (POSIX); meta sets the same
                // ctime when the write commits.
                attr.ctime = attr.ctime.max(mtime);
            }
        }
        attr
    }

    pub async fn setattr(&self, ino: Ino, attr: SetAttr) -> FsResult<Attr> {
        if attr.size.is_some_and(|size| size > crate::meta::FILE_BYTES_MAX) {
            return Err(FsError::TooBig);
        }
        let file = self.open_file(ino);
        let mut state_guard = None;
        if attr.size.is_some() || attr.mtime.is_some() {
            // Data written before the truncate or utimes must land first, and no
            // write may slip in between.
            if let Some(file) = &file {
                let mut state = file.state.lock().await;
                self.flush_locked(ino, file, &mut state).await?;
                state_guard = Some(state);
            }
        }
        let new_size = attr.size;
        let result = expect_inode(self.meta(MetaRequest::SetAttr { ino, attr }).await?)?;
        if let Some(state) = state_guard.as_mut() {
            // Everything written is committed; meta's times are the truth now
            // (a `touch -d` must not be hidden by an older local write time).
            state.mtime = None;
            if let Some(size) = new_size {
                state.size = size;
                state.size_known = true;
            }
        }
        if new_size.is_some() {
            if let Some(file) = &file {
                file.book().clear_records();
            }
            self.drop_cached(ino);
        }
        drop(state_guard);
        // A chmod or chown leaves data buffered: the answer must show the size
        // this client sees, or the kernel would shrink the file to meta's.
        Ok(self.with_local_view(result).await)
    }

    /// Appends `data` at the end of the file as this client sees it (O_APPEND:
    /// the kernel's idea of the size may be older than another client's last
    /// close). Returns the offset written at.
    pub async fn append(&self, ino: Ino, data: &[u8]) -> FsResult<u64> {
        let file = self
            .open_file(ino)
            .ok_or(FsError::Invalid("append to a file that is not open"))?;
        self.check_file_access(&file)?;
        // The size and the write must be one step: hold the state lock across.
        let mut state = file.state.lock().await;
        self.ensure_size(ino, &mut state).await?;
        let offset = state.size;
        self.write_locked(ino, &file, &mut state, offset, data).await?;
        Ok(offset)
    }

    async fn create_inode(&self, parent: Ino, name: &[u8], inode: NewInode) -> FsResult<Attr> {
        match self.try_create_inode(parent, name, inode.clone()).await {
            // The directory was protected after this client looked at it.
            Err(FsError::Stale) => {
                self.forget_policy(parent);
                self.try_create_inode(parent, name, inode).await
            }
            other => other,
        }
    }

    async fn try_create_inode(&self, parent: Ino, name: &[u8], mut inode: NewInode) -> FsResult<Attr> {
        let policy = self.dir_access(parent).await?;
        let stored = self.stored_name(parent, policy, name)?;
        if inode.kind == FileKind::Symlink && policy != VOLUME_POLICY {
            let key = self.keys().name_key(policy)?;
            inode.symlink = names::seal_target(&key, &inode.symlink)?;
        }
        let attr = expect_inode(
            self.meta(MetaRequest::Create {
                parent,
                name: stored,
                inode,
            })
            .await?,
        )?;
        self.remember_policy(&attr);
        Ok(shown_attr(attr))
    }

    pub async fn mkdir(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> FsResult<Attr> {
        self.mknod(parent, name, FileKind::Dir, perm, uid, gid, 0).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        if kind == FileKind::Symlink {
            return Err(FsError::Invalid("symlinks are made with symlink"));
        }
        self.create_inode(
            parent,
            name,
            NewInode {
                kind,
                perm,
                uid,
                gid,
                rdev,
                symlink: Vec::new(),
            },
        )
        .await
    }

    /// Creates a regular file and opens it.
    pub async fn create(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> FsResult<Attr> {
        let attr = self.mknod(parent, name, FileKind::File, perm, uid, gid, 0).await?;
        self.open_with_size(attr.ino, Some(attr.size)).await?;
        Ok(attr)
    }

    pub async fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> FsResult<Attr> {
        self.create_inode(
            parent,
            name,
            NewInode {
                kind: FileKind::Symlink,
                perm: 0o777,
                uid,
                gid,
                rdev: 0,
                symlink: target.to_vec(),
            },
        )
        .await
    }

    pub async fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let attr = self.getattr(ino).await?;
        if attr.kind != FileKind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        if attr.policy == VOLUME_POLICY {
            return Ok(attr.symlink);
        }
        let key = self.keys().name_key(attr.policy)?;
        Ok(names::open_target(&key, &attr.symlink)?)
    }

    pub async fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> FsResult<Attr> {
        let stored = self.entry_name(parent, name).await?;
        let attr = match self
            .meta(MetaRequest::Link {
                ino,
                parent,
                name: stored,
            })
            .await
        {
            Err(FsError::Stale) => {
                self.forget_policy(parent);
                let stored = self.entry_name(parent, name).await?;
                self.meta(MetaRequest::Link {
                    ino,
                    parent,
                    name: stored,
                })
                .await?
            }
            other => other?,
        };
        let attr = expect_inode(attr)?;
        Ok(self.with_local_view(attr).await)
    }

    pub async fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        let stored = self.entry_name(parent, name).await?;
        expect_ok(self.meta(MetaRequest::Unlink { parent, name: stored }).await?)
    }

    pub async fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        // "." and ".." are refused by meta; they are never sealed.
        let stored = if name == b"." || name == b".." {
            name.to_vec()
        } else {
            self.entry_name(parent, name).await?
        };
        expect_ok(self.meta(MetaRequest::Rmdir { parent, name: stored }).await?)
    }

    pub async fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8], flags: u32) -> FsResult<()> {
        let mut retried = false;
        loop {
            let request = MetaRequest::Rename {
                parent,
                name: self.entry_name(parent, name).await?,
                new_parent,
                new_name: self.entry_name(new_parent, new_name).await?,
                flags,
            };
            match self.meta(request).await {
                Err(FsError::Stale) if !retried => {
                    self.forget_policy(new_parent);
                    retried = true;
                }
                other => return expect_ok(other?),
            }
        }
    }

    /// Checks that this machine may list directory `dir` (EACCES for a
    /// protected directory whose key it does not hold).
    pub async fn open_dir(&self, dir: Ino) -> FsResult<()> {
        // Asks meta, not the cache: the directory may have been protected
        // by another machine since this client last looked.
        self.forget_policy(dir);
        self.dir_access(dir).await.map(|_| ())
    }

    /// Entries of `dir` after sequence number `after_seq`, in sequence order.
    pub async fn readdir(&self, dir: Ino, after_seq: u64, limit: u32) -> FsResult<Vec<DirEntry>> {
        let mut policy = self.dir_access(dir).await?;
        let entries = match self.meta(MetaRequest::ReadDir { dir, after_seq, limit }).await? {
            MetaResponse::Entries(entries) => entries,
            _ => return Err(FsError::Protocol("meta answered ReadDir with something else".into())),
        };
        if policy == VOLUME_POLICY && entries.iter().any(|e| names::looks_sealed(&e.name)) {
            // Sealed names: the directory may have been protected since this
            // client cached its policy. Never show ciphertext as a name.
            self.forget_policy(dir);
            policy = self.dir_access(dir).await?;
        }
        if policy == VOLUME_POLICY {
            return Ok(entries);
        }
        let mut shown = Vec::with_capacity(entries.len());
        for mut entry in entries {
            match self.shown_name(dir, policy, &entry.name) {
                Ok(name) => {
                    entry.name = name;
                    shown.push(entry);
                }
                // One damaged name must not hide the rest of the directory.
                Err(error) => tracing::error!(dir, seq = entry.seq, %error, "an entry name does not open; skipped"),
            }
        }
        Ok(shown)
    }

    pub async fn statfs(&self) -> FsResult<StatFs> {
        match self.meta(MetaRequest::StatFs).await? {
            MetaResponse::StatFs(stat) => Ok(stat),
            _ => Err(FsError::Protocol("meta answered StatFs with something else".into())),
        }
    }

    /// The key policy of any inode (cached: a file's never changes, a
    /// directory's only when `dir protect` gives it one, which clears the
    /// cache), refusing (EACCES) one this machine may not use.
    async fn inode_access(&self, ino: Ino) -> FsResult<PolicyId> {
        let cached = self
            .inner
            .dir_policies
            .lock()
            .expect("dir policy cache lock")
            .get(&ino)
            .copied();
        let policy = match cached {
            Some(policy) => policy,
            None => {
                let attr = expect_inode(self.inner.meta.call(&MetaRequest::GetAttr { ino }).await?)?;
                self.inner
                    .dir_policies
                    .lock()
                    .expect("dir policy cache lock")
                    .put(ino, attr.policy);
                attr.policy
            }
        };
        if self.may_use(policy).await? {
            Ok(policy)
        } else {
            Err(self.denied(policy))
        }
    }

    /// Extended attribute values of protected inodes are sealed with the
    /// policy's name key (their names stay plain).
    pub async fn get_xattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        let policy = self.inode_access(ino).await?;
        let value = match self
            .meta(MetaRequest::GetXattr {
                ino,
                name: name.to_vec(),
            })
            .await?
        {
            MetaResponse::Xattr(value) => value,
            _ => return Err(FsError::Protocol("meta answered GetXattr with something else".into())),
        };
        if policy == VOLUME_POLICY {
            return Ok(value);
        }
        let key = self.keys().name_key(policy)?;
        Ok(names::open_xattr(&key, ino, name, &value)?)
    }

    pub async fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: u32) -> FsResult<()> {
        let policy = self.inode_access(ino).await?;
        let stored = if policy == VOLUME_POLICY {
            value.to_vec()
        } else {
            if value.len() > names::XATTR_VALUE_BYTES_MAX {
                return Err(FsError::TooBig);
            }
            let key = self.keys().name_key(policy)?;
            names::seal_xattr(&key, ino, name, value)?
        };
        expect_ok(
            self.meta(MetaRequest::SetXattr {
                ino,
                name: name.to_vec(),
                value: stored,
                flags,
            })
            .await?,
        )
    }

    pub async fn list_xattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        self.inode_access(ino).await?;
        match self.meta(MetaRequest::ListXattr { ino }).await? {
            MetaResponse::XattrNames(names) => Ok(names),
            _ => Err(FsError::Protocol("meta answered ListXattr with something else".into())),
        }
    }

    pub async fn remove_xattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.inode_access(ino).await?;
        expect_ok(
            self.meta(MetaRequest::RemoveXattr {
                ino,
                name: name.to_vec(),
            })
            .await?,
        )
    }

    pub async fn nodes(&self) -> FsResult<Vec<NodeStatus>> {
        match self.meta(MetaRequest::Nodes).await? {
            MetaResponse::Nodes(nodes) => Ok(nodes),
            _ => Err(FsError::Protocol("meta answered Nodes with something else".into())),
        }
    }

    pub async fn status(&self) -> FsResult<VolumeStatus> {
        match self.meta(MetaRequest::Status).await? {
            MetaResponse::Status(status) => Ok(status),
            _ => Err(FsError::Protocol("meta answered Status with something else".into())),
        }
    }

    // ----- key policies (protected directories) -----

    /// Gives the empty directory `dir` its own key, wrapped in `envelope`.
    /// `envelope` holds the data key of epoch 1, `names` the name key.
    pub async fn protect(
        &self,
        dir: Ino,
        group: &str,
        envelope: KeyEnvelope,
        names: KeyEnvelope,
    ) -> FsResult<PolicyRecord> {
        let policy = match self
            .meta(MetaRequest::Protect {
                dir,
                group: group.to_string(),
                envelope,
                names,
            })
            .await?
        {
            MetaResponse::Policy(policy) => policy,
            _ => return Err(FsError::Protocol("meta answered Protect with something else".into())),
        };
        self.inner.dir_policies.lock().expect("dir policy cache lock").pop(&dir);
        self.refresh_keys().await?;
        Ok(policy)
    }

    /// Stores an envelope of the current epoch (a grant) or of the next (a
    /// revoke: new data is sealed under the new key at once).
    pub async fn put_envelope(&self, envelope: KeyEnvelope, expect_epoch: u32) -> FsResult<PolicyRecord> {
        let policy = match self.meta(MetaRequest::PutEnvelope { envelope, expect_epoch }).await? {
            MetaResponse::Policy(policy) => policy,
            _ => {
                return Err(FsError::Protocol(
                    "meta answered PutEnvelope with something else".into(),
                ))
            }
        };
        self.refresh_keys().await?;
        Ok(policy)
    }

    /// Re-seals every piece of `policy` still under an older epoch with the
    /// current epoch's key, then destroys the older epochs' envelopes.
    /// Resumable: what is done is in the chunk records, so running it again
    /// after a crash carries on (a piece stored but not committed is an
    /// orphan the collector sweeps).
    pub async fn rekey(&self, policy: PolicyId, progress: &(dyn Fn(RekeyProgress) + Sync)) -> FsResult<RekeyProgress> {
        let mut done = RekeyProgress::default();
        for _pass in 0..REKEY_PASSES_MAX {
            self.refresh_keys().await?;
            let record = self.keys().record(policy).cloned().ok_or(FsError::NotFound)?;
            let (current, _) = self.keys().sealing(policy)?;
            let older: Vec<u32> = record.live_epochs.iter().copied().filter(|e| *e != current).collect();
            if older.is_empty() {
                return Ok(done);
            }
            let files = self.policy_files(policy).await?;
            done.files_total = files.len() as u64;
            done.files_done = 0;
            progress(done);
            for ino in files {
                match self.rekey_file(ino, policy, current).await {
                    Ok(chunks) => done.chunks_rekeyed += chunks,
                    // Deleted meanwhile: nothing left to re-seal.
                    Err(FsError::NotFound) => {}
                    Err(error) => return Err(error),
                }
                done.files_done += 1;
                progress(done);
            }
            let mut left = false;
            for epoch in older {
                match self.meta(MetaRequest::DropEpoch { policy, epoch }).await {
                    Ok(MetaResponse::Policy(_)) => done.epochs_destroyed += 1,
                    Ok(_) => return Err(FsError::Protocol("meta answered DropEpoch with something else".into())),
                    Err(FsError::NotEmpty) => left = true,
                    Err(error) => return Err(error),
                }
            }
            if !left {
                self.refresh_keys().await?;
                return Ok(done);
            }
        }
        Err(FsError::Unavailable(
            "pieces under an older key kept appearing; run the rekey again".into(),
        ))
    }

    async fn policy_files(&self, policy: PolicyId) -> FsResult<Vec<Ino>> {
        let mut files = Vec::new();
        let mut after = 0;
        loop {
            let page = match self
                .inner
                .meta
                .call(&MetaRequest::PolicyFiles {
                    policy,
                    after,
                    limit: u32::MAX,
                })
                .await?
            {
                MetaResponse::Inos(page) => page,
                _ => {
                    return Err(FsError::Protocol(
                        "meta answered PolicyFiles with something else".into(),
                    ))
                }
            };
            let Some(last) = page.last() else { return Ok(files) };
            after = *last;
            files.extend(page);
        }
    }

    /// The chunk records of `ino` from `first_index` on, one page of them
    /// (straight from meta, not retried: for admin work).
    async fn chunk_records_page(&self, ino: Ino, first_index: u64) -> FsResult<Vec<(u64, ChunkRecord)>> {
        match self
            .inner
            .meta
            .call(&MetaRequest::ReadChunks {
                ino,
                first_index,
                count: CHUNK_RECORDS_PER_CALL,
            })
            .await?
        {
            MetaResponse::Chunks(records) => Ok(records),
            _ => Err(FsError::Protocol("meta answered ReadChunks with something else".into())),
        }
    }

    /// Re-seals the chunks of one file that hold a piece of another epoch;
    /// returns how many were replaced.
    async fn rekey_file(&self, ino: Ino, policy: PolicyId, current: u32) -> FsResult<u64> {
        let mut rekeyed = 0;
        let mut first_index = 0;
        loop {
            let records = self.chunk_records_page(ino, first_index).await?;
            let Some((last, _)) = records.last() else {
                return Ok(rekeyed);
            };
            first_index = last + 1;
            for (index, record) in records {
                if record.extents.iter().all(|e| e.piece.key_epoch == current) {
                    continue;
                }
                let plain = self.decode_chunk(ino, index, &record).await?;
                if plain.is_empty() {
                    continue;
                }
                let piece = self.store_piece(ino, index, 0, plain, policy).await?;
                let extent = Extent {
                    offset: 0,
                    len: piece.plain_len,
                    piece,
                };
                let expect = record.extents.iter().map(|e| e.piece.id).collect();
                match self
                    .meta(MetaRequest::RekeyChunk {
                        ino,
                        index,
                        expect,
                        extents: vec![extent],
                    })
                    .await?
                {
                    // Not replaced: a client changed the chunk meanwhile;
                    // the next pass looks at it again.
                    MetaResponse::Replaced(replaced) => rekeyed += replaced as u64,
                    _ => return Err(FsError::Protocol("meta answered RekeyChunk with something else".into())),
                }
                self.drop_cached_chunk(ino, index);
                fault::failpoint_async(fault::REKEY_AFTER_CHUNK).await?;
            }
        }
    }

    /// Tries to open every piece of a file with the keys this client holds:
    /// what a machine's identity can and cannot decrypt, chunk by chunk.
    pub async fn check_pieces(&self, ino: Ino) -> FsResult<Vec<PieceCheck>> {
        let mut out = Vec::new();
        let mut first_index = 0;
        loop {
            let records = self.chunk_records_page(ino, first_index).await?;
            let Some((last, _)) = records.last() else {
                return Ok(out);
            };
            first_index = last + 1;
            for (index, record) in records {
                for extent in &record.extents {
                    // The key as the identity unwraps it, access or not: what
                    // the cryptography allows, not what the client permits.
                    let key = self.keys().unwrapped(extent.piece.key_id, extent.piece.key_epoch);
                    let opened = match key {
                        Some(key) => self.open_piece_with(ino, index, &extent.piece, key).await,
                        None => Err(FsError::Access),
                    };
                    out.push(PieceCheck {
                        index,
                        piece_id: extent.piece.id,
                        policy: extent.piece.key_id,
                        epoch: extent.piece.key_epoch,
                        error: opened.err(),
                    });
                }
            }
        }
    }

    // ----- open files -----

    fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.inner.files.lock().expect("open files lock").get(&ino).cloned()
    }

    /// Opens a file for I/O. The first open of a file on this client drops
    /// what it cached of the file (close-to-open consistency).
    pub async fn open(&self, ino: Ino) -> FsResult<()> {
        self.open_with_size(ino, None).await
    }

    /// [`Volume::open`], given the size meta reported in the same exchange
    /// (a file just created), which saves asking again at the first write.
    async fn open_with_size(&self, ino: Ino, fresh_size: Option<u64>) -> FsResult<()> {
        let attr = expect_inode(
            self.meta(MetaRequest::Open {
                ino,
                session: self.inner.session,
            })
            .await?,
        )?;
        if !self.may_use(attr.policy).await? {
            let _ = self
                .meta(MetaRequest::Release {
                    ino,
                    session: self.inner.session,
                })
                .await;
            return Err(self.denied(attr.policy));
        }
        let file = {
            let mut files = self.inner.files.lock().expect("open files lock");
            files.entry(ino).or_insert_with(OpenFile::new).clone()
        };
        file.policy.store(attr.policy, std::sync::atomic::Ordering::Relaxed);
        if file.handles.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            let mut state = file.state.lock().await;
            let mut book = file.book();
            if state.spans.is_empty() && book.pending.is_empty() {
                book.clear_records();
                state.size_known = fresh_size.is_some();
                state.size = fresh_size.unwrap_or(0);
                drop(book);
                drop(state);
                self.drop_cached(ino);
            }
        }
        Ok(())
    }

    /// Closes one handle: flushes, and forgets the file after its last handle.
    pub async fn release(&self, ino: Ino) -> FsResult<()> {
        let flushed = self.flush(ino).await;
        if let Some(file) = self.open_file(ino) {
            if file.handles.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                let mut files = self.inner.files.lock().expect("open files lock");
                if file.handles.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    files.remove(&ino);
                }
            }
        }
        let released = self
            .meta(MetaRequest::Release {
                ino,
                session: self.inner.session,
            })
            .await
            .and_then(expect_ok);
        flushed.and(released)
    }

    /// Writes every buffered span of `ino` and waits until meta has them.
    pub async fn flush(&self, ino: Ino) -> FsResult<()> {
        let Some(file) = self.open_file(ino) else { return Ok(()) };
        let mut state = file.state.lock().await;
        self.flush_locked(ino, &file, &mut state).await
    }

    /// Flushes `ino` and makes it, and every other change so far, durable.
    pub async fn fsync(&self, ino: Ino) -> FsResult<()> {
        self.flush(ino).await?;
        self.sync().await
    }

    /// fsync of a directory: its entries are changes at meta.
    pub async fn fsync_dir(&self) -> FsResult<()> {
        self.sync().await
    }

    async fn flush_locked(&self, ino: Ino, file: &Arc<OpenFile>, state: &mut FileState) -> FsResult<()> {
        let indexes: Vec<u64> = state.spans.keys().copied().collect();
        for index in indexes {
            self.start_flush(ino, file, state, index).await?;
        }
        let waits: Vec<JoinHandle<()>> = state.last_flush.drain().map(|(_, handle)| handle).collect();
        for handle in waits {
            let _ = handle.await;
        }
        match file.error() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    async fn ensure_size(&self, ino: Ino, state: &mut FileState) -> FsResult<()> {
        if !state.size_known {
            let attr = expect_inode(self.meta(MetaRequest::GetAttr { ino }).await?)?;
            state.size = attr.size;
            state.size_known = true;
        }
        Ok(())
    }

    /// Buffers `data` at `offset`; returns the bytes taken (all of them).
    pub async fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<usize> {
        let file = match self.open_file(ino) {
            Some(file) => file,
            None => return Err(FsError::Invalid("write to a file that is not open")),
        };
        self.check_file_access(&file)?;
        let mut state = file.state.lock().await;
        self.ensure_size(ino, &mut state).await?;
        self.write_locked(ino, &file, &mut state, offset, data).await
    }

    /// A file of a protected directory whose key this machine lost (a sync
    /// took it out of the group) takes no more writes.
    fn check_file_access(&self, file: &OpenFile) -> FsResult<()> {
        let policy = file.policy.load(std::sync::atomic::Ordering::Relaxed);
        if self.has_access(policy) {
            Ok(())
        } else {
            Err(self.denied(policy))
        }
    }

    async fn write_locked(
        &self,
        ino: Ino,
        file: &Arc<OpenFile>,
        state: &mut FileState,
        offset: u64,
        data: &[u8],
    ) -> FsResult<usize> {
        offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= crate::meta::FILE_BYTES_MAX)
            .ok_or(FsError::TooBig)?;
        if let Some(error) = file.error() {
            return Err(error);
        }
        let chunk_bytes = self.inner.volume.chunk_bytes as u64;
        let mut written = 0usize;
        while written < data.len() {
            let position = offset + written as u64;
            let index = position / chunk_bytes;
            let in_chunk = (position % chunk_bytes) as u32;
            let take = ((chunk_bytes - in_chunk as u64) as usize).min(data.len() - written);
            let bytes = &data[written..written + take];
            let mergeable = state
                .spans
                .get(&index)
                .is_some_and(|span| in_chunk >= span.offset && in_chunk <= span.end());
            if !mergeable && state.spans.contains_key(&index) {
                self.start_flush(ino, file, state, index).await?;
            }
            let span = state.spans.entry(index).or_insert_with(|| Span {
                index,
                offset: in_chunk,
                data: Vec::new(),
            });
            let at = (in_chunk - span.offset) as usize;
            let before = span.data.len();
            if at + take > span.data.len() {
                span.data.resize(at + take, 0);
            }
            span.data[at..at + take].copy_from_slice(bytes);
            let grown = span.data.len() - before;
            let full = span.offset == 0 && span.data.len() as u64 == chunk_bytes;
            state.dirty_bytes += grown;
            written += take;
            state.size = state.size.max(position + take as u64);
            if full {
                self.start_flush(ino, file, state, index).await?;
            }
        }
        state.mtime = Some(now_ns());
        if state.dirty_bytes > FILE_DIRTY_BYTES_MAX {
            let indexes: Vec<u64> = state.spans.keys().copied().collect();
            for index in indexes {
                self.start_flush(ino, file, state, index).await?;
            }
        }
        Ok(written)
    }

    /// Hands the span of chunk `index` to a background flush task.
    async fn start_flush(&self, ino: Ino, file: &Arc<OpenFile>, state: &mut FileState, index: u64) -> FsResult<()> {
        let Some(span) = state.spans.remove(&index) else {
            return Ok(());
        };
        state.dirty_bytes -= span.data.len();
        let span = Arc::new(span);
        let seq = state.next_seq;
        state.next_seq += 1;
        file.book().pending.entry(index).or_default().push(Pending {
            span: span.clone(),
            seq,
        });
        // A chunk with many extents is folded: the span is widened to the
        // whole chunk's current content so that it replaces them all.
        let fold = self.chunk_record(ino, file, index).await?.extents.len() >= EXTENTS_PER_CHUNK_MAX;
        let previous = state.last_flush.remove(&index);
        let (turn_done, next_turn) = tokio::sync::oneshot::channel::<()>();
        let my_turn = state.commit_turn.replace(next_turn);
        let permit = self
            .inner
            .flush_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| FsError::Unavailable("volume is shutting down".into()))?;
        let volume = self.clone();
        let file_for_task = file.clone();
        let size_at_least = index * self.inner.volume.chunk_bytes as u64 + span.end() as u64;
        let mtime = state.mtime.unwrap_or_else(now_ns);
        let handle = tokio::spawn(async move {
            let _permit = permit;
            let result = volume
                .flush_span(ino, &file_for_task, span, previous, my_turn, fold, size_at_least, mtime)
                .await;
            let mut book = file_for_task.book();
            if let Some(list) = book.pending.get_mut(&index) {
                list.retain(|p| p.seq != seq);
                if list.is_empty() {
                    book.pending.remove(&index);
                }
            }
            match result {
                Ok(record) => {
                    book.records.insert(index, record);
                }
                Err(error) => {
                    tracing::error!(ino, index, %error, "writing a chunk failed");
                    book.records.remove(&index);
                    file_for_task.record_error(error);
                }
            }
            drop(book);
            volume.drop_cached_chunk(ino, index);
            // After the error (if any) is recorded: the next task's turn.
            drop(turn_done);
        });
        state.last_flush.insert(index, handle);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn flush_span(
        &self,
        ino: Ino,
        file: &Arc<OpenFile>,
        span: Arc<Span>,
        mut previous: Option<JoinHandle<()>>,
        turn: Option<tokio::sync::oneshot::Receiver<()>>,
        fold: bool,
        size_at_least: u64,
        mtime: TimeNs,
    ) -> FsResult<ChunkRecord> {
        let index = span.index;
        let (offset, plain) = if fold {
            if let Some(previous) = previous.take() {
                let _ = previous.await;
            }
            let mut whole = self.committed_chunk(ino, file, index).await?.as_ref().clone();
            if whole.len() < span.end() as usize {
                whole.resize(span.end() as usize, 0);
            }
            whole[span.offset as usize..span.end() as usize].copy_from_slice(&span.data);
            (0u32, whole)
        } else {
            (span.offset, span.data.clone())
        };
        let policy = file.policy.load(std::sync::atomic::Ordering::Relaxed);
        // A protected file's span may have to be sealed again under a key
        // epoch that a revoke made while it was on its way.
        let again = (policy != VOLUME_POLICY).then(|| plain.clone());
        let mut piece = self.store_piece(ino, index, offset, plain, policy).await?;
        fault::failpoint_async(fault::VOLUME_AFTER_SHARDS_PUT).await?;
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        if let Some(turn) = turn {
            // Ok or Err: either way the predecessor has ended.
            let _ = turn.await;
        }
        if let Some(error) = file.error() {
            // An earlier span of this file failed; committing this one over a
            // hole would hide that. Stop here.
            return Err(error);
        }
        let mut resealed = 0;
        loop {
            let extent = Extent {
                offset,
                len: piece.plain_len,
                piece,
            };
            let op = if offset == 0 && (fold || extent.len == self.inner.volume.chunk_bytes) {
                ChunkOp::Replace(extent)
            } else {
                ChunkOp::Overlay(extent)
            };
            let committed = self
                .meta(MetaRequest::CommitWrite {
                    ino,
                    writes: vec![ChunkWrite { index, op }],
                    size_at_least,
                    mtime,
                })
                .await;
            match (committed, &again) {
                // The policy has a newer key epoch than this client used.
                (Err(FsError::Stale), Some(plain)) if resealed < RESEAL_ATTEMPTS_MAX => {
                    resealed += 1;
                    self.refresh_keys().await?;
                    piece = self.store_piece(ino, index, offset, plain.clone(), policy).await?;
                }
                (committed, _) => {
                    committed?;
                    break;
                }
            }
        }
        self.fetch_record(ino, index).await
    }

    /// Meta's record of chunk `index` (empty for a hole).
    async fn fetch_record(&self, ino: Ino, index: u64) -> FsResult<ChunkRecord> {
        let records = match self
            .meta(MetaRequest::ReadChunks {
                ino,
                first_index: index,
                count: 1,
            })
            .await?
        {
            MetaResponse::Chunks(records) => records,
            _ => return Err(FsError::Protocol("meta answered ReadChunks with something else".into())),
        };
        Ok(records
            .into_iter()
            .find(|(i, _)| *i == index)
            .map(|(_, r)| r)
            .unwrap_or_default())
    }

    /// Seals `plain` for its place and stores it: inline in the record when
    /// tiny, else as a stripe on k+m nodes of distinct hosts.
    async fn store_piece(&self, ino: Ino, index: u64, base: u32, plain: Vec<u8>, policy: PolicyId) -> FsResult<Piece> {
        let volume = &self.inner.volume;
        let piece_id: u128 = rand::random();
        let (key_epoch, key) = self.keys().sealing(policy)?;
        let place = PiecePlace {
            volume_id: volume.volume_id,
            ino,
            chunk_index: index,
            base,
            piece_id,
            key_id: policy,
            key_epoch,
        };
        let plain_len = plain.len() as u32;
        let inline = index == 0 && base == 0 && plain.len() <= volume.inline_bytes_max as usize;
        let (k, m) = (volume.data_shards as usize, volume.parity_shards as usize);
        /// What the blocking pool hands back: sealed bytes to keep inline, or
        /// their stripe.
        enum Encoded {
            Inline(Vec<u8>),
            Striped {
                sealed_len: usize,
                shards: Vec<Vec<u8>>,
                hashes: Vec<[u8; 32]>,
            },
        }
        let encoded = tokio::task::spawn_blocking(move || -> FsResult<Encoded> {
            let sealed = codec::seal(&key, &place, &plain);
            if inline {
                return Ok(Encoded::Inline(sealed));
            }
            let shards = codec::encode_stripe(&sealed, k, m)?;
            let hashes = shards.iter().map(|s| *blake3::hash(s).as_bytes()).collect();
            Ok(Encoded::Striped {
                sealed_len: sealed.len(),
                shards,
                hashes,
            })
        })
        .await
        .map_err(|e| FsError::Io(format!("encode task failed: {e}")))??;
        let body = match encoded {
            Encoded::Inline(sealed) => PieceBody::Inline { sealed },
            Encoded::Striped {
                sealed_len,
                shards,
                hashes,
            } => PieceBody::Striped {
                sealed_len: sealed_len as u32,
                data_shards: k as u8,
                parity_shards: m as u8,
                shards: self.put_stripe(piece_id, shards, hashes).await?,
            },
        };
        Ok(Piece {
            id: piece_id,
            base,
            plain_len,
            key_id: policy,
            key_epoch,
            body,
        })
    }

    /// The nodes as placement sees them: a draining node takes no shard.
    fn node_views(&self) -> Vec<NodeView> {
        let draining = self.inner.draining.lock().expect("draining set lock").clone();
        let nodes = self.inner.nodes.lock().expect("node table lock");
        nodes
            .values()
            .filter(|e| !draining.contains(&e.status.record.id))
            .map(|e| NodeView {
                id: e.status.record.id,
                host: e.status.record.host.clone(),
                free_bytes: e.status.record.free_bytes,
                up: e.status.up,
            })
            .collect()
    }

    /// Writes the shards of one stripe in parallel, each to a node on its own
    /// host; a failed shard is retried once on a spare host. Succeeds when at
    /// least the write quorum is durable; unplaced shards have no node.
    async fn put_stripe(&self, piece_id: u128, shards: Vec<Vec<u8>>, hashes: Vec<[u8; 32]>) -> FsResult<Vec<ShardLoc>> {
        let width = shards.len();
        let quorum = (self.inner.volume.write_quorum as usize).clamp(self.inner.volume.data_shards as usize, width);
        let mut views = self.node_views();
        let mut chosen = choose_nodes(&views, width, &HashSet::new(), &HashSet::new(), rand::random());
        if chosen.len() < width {
            // The view may be older than the nodes that just came up or back.
            self.refresh_nodes().await?;
            views = self.node_views();
            chosen = choose_nodes(&views, width, &HashSet::new(), &HashSet::new(), rand::random());
        }
        let host_of: HashMap<NodeId, String> = views.iter().map(|v| (v.id, v.host.clone())).collect();
        if chosen.len() < quorum {
            let up_hosts: HashSet<&str> = views.iter().filter(|v| v.up).map(|v| v.host.as_str()).collect();
            let reason = format!(
                "only {} hosts can take a stripe ({} up); the write quorum is {quorum}",
                chosen.len(),
                up_hosts.len()
            );
            tracing::error!("{reason}");
            return Err(FsError::Unavailable(reason));
        }
        let shards: Vec<Arc<Vec<u8>>> = shards.into_iter().map(Arc::new).collect();
        let mut placed: Vec<Option<NodeId>> = vec![None; width];
        let mut tried_nodes: HashSet<NodeId> = chosen.iter().copied().collect();
        let mut attempts = FuturesUnordered::new();
        for (index, node) in chosen.iter().enumerate() {
            attempts.push(self.put_one(*node, piece_id, index as u8, shards[index].clone(), hashes[index]));
        }
        // Shards whose first node has no host (fewer hosts than width) wait
        // for a spare like failed ones.
        let mut failed: Vec<usize> = (chosen.len()..width).collect();
        // Nodes that answered "no space": below the quorum because of them,
        // the volume is full (ENOSPC), not broken.
        let mut full_nodes = 0usize;
        while let Some((index, node, result)) = attempts.next().await {
            match result {
                Ok(()) => placed[index as usize] = Some(node),
                Err(error) => {
                    if matches!(error, FsError::NoSpace(_)) {
                        full_nodes += 1;
                    }
                    if !error.is_transient() || self.mark_down(node) {
                        tracing::warn!(node, %error, "shard write failed; trying a spare host");
                    }
                    failed.push(index as usize);
                }
            }
            if attempts.is_empty() && !failed.is_empty() {
                let used_hosts: HashSet<String> = placed
                    .iter()
                    .flatten()
                    .filter_map(|n| host_of.get(n).cloned())
                    .collect();
                let spares = choose_nodes(
                    &self.node_views(),
                    failed.len(),
                    &tried_nodes,
                    &used_hosts,
                    rand::random(),
                );
                for (spare, index) in spares.into_iter().zip(std::mem::take(&mut failed)) {
                    tried_nodes.insert(spare);
                    attempts.push(self.put_one(spare, piece_id, index as u8, shards[index].clone(), hashes[index]));
                }
            }
        }
        let durable = placed.iter().filter(|p| p.is_some()).count();
        if durable < quorum {
            // No record will ever name these shards: take them back now.
            self.discard_shards(piece_id, &placed).await;
            let reason = format!(
                "only {durable} of {width} shards could be written ({full_nodes} nodes full); the write quorum is {quorum}"
            );
            if full_nodes > 0 {
                return Err(FsError::NoSpace(reason));
            }
            return Err(FsError::Io(reason));
        }
        Ok(placed
            .into_iter()
            .zip(hashes)
            .map(|(node, hash)| ShardLoc { node, hash })
            .collect())
    }

    /// Deletes, best effort, the shards of a piece that was never committed
    /// (`placed[i]` is where shard i went). What is left is an orphan that
    /// only a scrub would find.
    async fn discard_shards(&self, piece_id: u128, placed: &[Option<NodeId>]) {
        let deletes = placed.iter().enumerate().filter_map(|(index, node)| {
            let node = (*node)?;
            let (client, _) = self.node_client(node)?;
            let shard = ShardKey {
                piece_id,
                shard_index: index as u8,
            };
            Some(async move {
                if let Err(error) = client.delete_shard(shard).await {
                    tracing::debug!(node, %error, "cannot take back an uncommitted shard");
                }
            })
        });
        futures::future::join_all(deletes).await;
    }

    fn put_one(
        &self,
        node: NodeId,
        piece_id: u128,
        shard_index: u8,
        payload: Arc<Vec<u8>>,
        hash: [u8; 32],
    ) -> impl std::future::Future<Output = (u8, NodeId, FsResult<()>)> + Send + 'static {
        let client = self.node_client(node).map(|(c, _)| c);
        async move {
            let result = match client {
                Some(client) => {
                    client
                        .put_shard_hashed(ShardKey { piece_id, shard_index }, &payload, hash)
                        .await
                }
                None => Err(FsError::Unavailable(format!("node {node} is unknown"))),
            };
            (shard_index, node, result)
        }
    }

    // ----- reads -----

    /// Reads up to `size` bytes at `offset`; short at the end of the file.
    pub async fn read(&self, ino: Ino, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let file = match self.open_file(ino) {
            Some(file) => file,
            None => {
                // Reads without an open (NFS) see meta's committed view.
                let file = OpenFile::new();
                return self.read_with(ino, &file, offset, size).await;
            }
        };
        self.read_with(ino, &file, offset, size).await
    }

    async fn read_with(&self, ino: Ino, file: &Arc<OpenFile>, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        // Decoded chunks are cached: check before the cache can answer.
        self.check_file_access(file)?;
        let chunk_bytes = self.inner.volume.chunk_bytes as u64;
        let file_size = {
            let mut state = file.state.lock().await;
            self.ensure_size(ino, &mut state).await?;
            state.size
        };
        let end = offset.saturating_add(size as u64).min(file_size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let (first_index, last_index) = (offset / chunk_bytes, (end - 1) / chunk_bytes);
        let mut out = Vec::with_capacity((end - offset) as usize);
        for index in first_index..=last_index {
            let chunk = self.chunk_view(ino, file, index).await?;
            let chunk_start = index * chunk_bytes;
            let from = (offset.max(chunk_start) - chunk_start) as usize;
            let to = (end.min(chunk_start + chunk_bytes) - chunk_start) as usize;
            let start_len = out.len();
            let available = chunk.len().min(to);
            if from < available {
                out.extend_from_slice(&chunk[from..available]);
            }
            // Bytes past what any extent holds are a hole: zeros.
            out.resize(start_len + (to - from), 0);
        }
        for ahead in 1..=READAHEAD_CHUNKS {
            let index = last_index + ahead;
            if index * chunk_bytes >= file_size {
                break;
            }
            self.prefetch(ino, file, index);
        }
        Ok(out)
    }

    /// A chunk as this client sees it: committed data with uncommitted spans
    /// laid over it.
    async fn chunk_view(&self, ino: Ino, file: &Arc<OpenFile>, index: u64) -> FsResult<Arc<Vec<u8>>> {
        // What is not committed yet is taken before what is: a span whose
        // flush commits meanwhile is then in the snapshot, or in the committed
        // data, or both -- never in neither. The state lock keeps a dirty span
        // from moving to the flush list while the snapshot is taken.
        let (in_flight, dirty) = {
            let state = file.state.lock().await;
            let in_flight: Vec<Arc<Span>> = file
                .book()
                .pending
                .get(&index)
                .map(|list| list.iter().map(|p| p.span.clone()).collect())
                .unwrap_or_default();
            // Copied: the span keeps growing once the lock is let go.
            let dirty = state.spans.get(&index).map(|span| (span.offset, span.data.clone()));
            (in_flight, dirty)
        };
        let committed = self.committed_chunk(ino, file, index).await?;
        if in_flight.is_empty() && dirty.is_none() {
            return Ok(committed);
        }
        let mut view = committed.as_ref().clone();
        let mut lay = |offset: u32, data: &[u8]| {
            let end = offset as usize + data.len();
            if view.len() < end {
                view.resize(end, 0);
            }
            view[offset as usize..end].copy_from_slice(data);
        };
        for span in &in_flight {
            lay(span.offset, &span.data);
        }
        if let Some((offset, data)) = &dirty {
            lay(*offset, data);
        }
        Ok(Arc::new(view))
    }

    /// The record of chunk `index`, from the file's book or from meta, which
    /// is asked for a window of records at once.
    async fn chunk_record(&self, ino: Ino, file: &Arc<OpenFile>, index: u64) -> FsResult<ChunkRecord> {
        let epoch = {
            let book = file.book();
            if let Some(record) = book.records.get(&index) {
                return Ok(record.clone());
            }
            book.records_epoch
        };
        let records = match self
            .meta(MetaRequest::ReadChunks {
                ino,
                first_index: index,
                count: CHUNK_RECORDS_PER_CALL,
            })
            .await?
        {
            MetaResponse::Chunks(records) => records,
            _ => return Err(FsError::Protocol("meta answered ReadChunks with something else".into())),
        };
        let mut found: HashMap<u64, ChunkRecord> = records.into_iter().collect();
        let mut book = file.book();
        if book.records_epoch != epoch {
            // Truncated or reopened meanwhile: what meta said may be older than
            // that; answer this read from it but keep none of it.
            return Ok(found.remove(&index).unwrap_or_default());
        }
        let in_flight: HashSet<u64> = book.pending.keys().copied().collect();
        // Everything in the window that meta did not return is a hole; chunks
        // with spans in flight keep what their flush task will set.
        for i in index..index + CHUNK_RECORDS_PER_CALL as u64 {
            if in_flight.contains(&i) && i != index {
                continue;
            }
            let record = found.remove(&i).unwrap_or_default();
            book.records.entry(i).or_insert(record);
        }
        Ok(book.records.get(&index).cloned().unwrap_or_default())
    }

    async fn committed_chunk(&self, ino: Ino, file: &Arc<OpenFile>, index: u64) -> FsResult<Arc<Vec<u8>>> {
        let record = self.chunk_record(ino, file, index).await?;
        match self.decode_record(ino, index, record.clone()).await {
            // The record this client holds may be older than the chunk: another
            // client replaced it and the collector deleted the shards the old
            // record names, or a rekey re-sealed it and the old epoch's key is
            // destroyed (EACCES for a piece of an epoch no longer held).
            // Meta's record, if it is another, is read instead.
            Err(error) if error.is_transient() || error == FsError::Access => {
                let current = self.fetch_record(ino, index).await?;
                if current == record {
                    return Err(error);
                }
                {
                    let mut book = file.book();
                    if book.records.get(&index) == Some(&record) {
                        book.records.insert(index, current.clone());
                    }
                }
                self.decode_record(ino, index, current).await
            }
            done => done,
        }
    }

    /// The plaintext of a chunk `record`, from the cache or decoded.
    async fn decode_record(&self, ino: Ino, index: u64, record: ChunkRecord) -> FsResult<Arc<Vec<u8>>> {
        if record.extents.is_empty() {
            return Ok(Arc::new(Vec::new()));
        }
        if let Some(plain) = self.cached(ino, index, &record) {
            return Ok(plain);
        }
        let load_lock = self
            .inner
            .loads
            .lock()
            .expect("chunk loads lock")
            .entry((ino, index))
            .or_default()
            .clone();
        let guard = load_lock.lock().await;
        let result = match self.cached(ino, index, &record) {
            Some(plain) => Ok(plain),
            None => self.decode_chunk(ino, index, &record).await.map(|plain| {
                let plain = Arc::new(plain);
                self.inner.cache.lock().expect("chunk cache lock").put(
                    (ino, index),
                    Arc::new(CachedChunk {
                        record,
                        plain: plain.clone(),
                    }),
                );
                plain
            }),
        };
        drop(guard);
        let mut loads = self.inner.loads.lock().expect("chunk loads lock");
        // Ours and the map's: no other reader waits on this chunk.
        if Arc::strong_count(&load_lock) == 2 {
            loads.remove(&(ino, index));
        }
        result
    }

    fn cached(&self, ino: Ino, index: u64, record: &ChunkRecord) -> Option<Arc<Vec<u8>>> {
        let mut cache = self.inner.cache.lock().expect("chunk cache lock");
        cache
            .get(&(ino, index))
            .filter(|cached| cached.record == *record)
            .map(|cached| cached.plain.clone())
    }

    fn prefetch(&self, ino: Ino, file: &Arc<OpenFile>, index: u64) {
        if self
            .inner
            .cache
            .lock()
            .expect("chunk cache lock")
            .contains(&(ino, index))
            || self
                .inner
                .loads
                .lock()
                .expect("chunk loads lock")
                .contains_key(&(ino, index))
        {
            return;
        }
        let volume = self.clone();
        let file = file.clone();
        tokio::spawn(async move {
            if let Err(error) = volume.committed_chunk(ino, &file, index).await {
                tracing::debug!(ino, index, %error, "read-ahead failed");
            }
        });
    }

    fn drop_cached(&self, ino: Ino) {
        let mut cache = self.inner.cache.lock().expect("chunk cache lock");
        let keys: Vec<ChunkKey> = cache.iter().filter(|((i, _), _)| *i == ino).map(|(k, _)| *k).collect();
        for key in keys {
            cache.pop(&key);
        }
    }

    fn drop_cached_chunk(&self, ino: Ino, index: u64) {
        self.inner.cache.lock().expect("chunk cache lock").pop(&(ino, index));
    }

    /// Resolves a chunk record's extents into its plaintext.
    async fn decode_chunk(&self, ino: Ino, index: u64, record: &ChunkRecord) -> FsResult<Vec<u8>> {
        let end = record.extents.iter().map(|e| e.offset + e.len).max().unwrap_or(0) as usize;
        let mut plain = vec![0u8; end];
        let pieces = record
            .extents
            .iter()
            .map(|extent| self.open_piece(ino, index, &extent.piece));
        let opened = futures::future::join_all(pieces).await;
        for (extent, piece_plain) in record.extents.iter().zip(opened) {
            let piece_plain = piece_plain?;
            let from = (extent.offset - extent.piece.base) as usize;
            let len = extent.len as usize;
            let Some(source) = piece_plain.get(from..from + len) else {
                return Err(FsError::Corrupt(format!(
                    "extent of piece {:032x} reaches past its data",
                    extent.piece.id
                )));
            };
            plain[extent.offset as usize..extent.offset as usize + len].copy_from_slice(source);
        }
        Ok(plain)
    }

    async fn open_piece(&self, ino: Ino, index: u64, piece: &Piece) -> FsResult<Vec<u8>> {
        // Before any shard is fetched: a machine without the key reads nothing.
        let key = self.keys().opening(piece.key_id, piece.key_epoch)?;
        self.open_piece_with(ino, index, piece, key).await
    }

    async fn open_piece_with(&self, ino: Ino, index: u64, piece: &Piece, key: DataKey) -> FsResult<Vec<u8>> {
        let place = PiecePlace {
            volume_id: self.inner.volume.volume_id,
            ino,
            chunk_index: index,
            base: piece.base,
            piece_id: piece.id,
            key_id: piece.key_id,
            key_epoch: piece.key_epoch,
        };
        let sealed = match &piece.body {
            PieceBody::Inline { sealed } => sealed.clone(),
            PieceBody::Striped {
                sealed_len,
                data_shards,
                parity_shards,
                shards,
            } => {
                let (k, m, sealed_len) = (*data_shards as usize, *parity_shards as usize, *sealed_len as usize);
                match self.fetch_stripe(piece.id, shards, k, m, sealed_len).await {
                    // Nodes that restarted on new addresses look unreachable
                    // until the table is refreshed: try once more if so.
                    Err(error) if error.is_transient() && self.refresh_nodes().await.unwrap_or(false) => {
                        self.fetch_stripe(piece.id, shards, k, m, sealed_len).await?
                    }
                    fetched => fetched?,
                }
            }
        };
        let plain_len = piece.plain_len as usize;
        let plain = tokio::task::spawn_blocking(move || codec::open(&key, &place, &sealed))
            .await
            .map_err(|e| FsError::Io(format!("decrypt task failed: {e}")))??;
        if plain.len() != plain_len {
            return Err(FsError::Corrupt("piece length differs from its record".into()));
        }
        Ok(plain)
    }

    /// Fetches k good shards of a stripe, data shards first, a parity shard
    /// in place of each one that is missing, unreachable or corrupt.
    async fn fetch_stripe(
        &self,
        piece_id: u128,
        locations: &[ShardLoc],
        k: usize,
        m: usize,
        sealed_len: usize,
    ) -> FsResult<Vec<u8>> {
        if locations.len() != k + m {
            return Err(FsError::Corrupt("stripe record has the wrong number of shards".into()));
        }
        // Candidates: placed shards on nodes believed up, data first; then
        // placed shards on nodes believed down, as a last resort.
        let mut order: Vec<usize> = Vec::with_capacity(k + m);
        let mut later: Vec<usize> = Vec::new();
        for (index, location) in locations.iter().enumerate() {
            match location.node.and_then(|n| self.node_client(n)) {
                Some((_, true)) => order.push(index),
                Some((_, false)) => later.push(index),
                None => {}
            }
        }
        order.extend(later);
        let mut candidates = order.into_iter();
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; k + m];
        let mut good = 0usize;
        let mut requests = FuturesUnordered::new();
        for index in candidates.by_ref().take(k) {
            requests.push(self.get_one(piece_id, index, locations[index]));
        }
        while let Some((index, result)) = requests.next().await {
            match result {
                Ok(payload) => {
                    shards[index] = Some(payload);
                    good += 1;
                    if good == k {
                        break;
                    }
                }
                Err(error) => {
                    // Unreachable nodes were logged when marked down; a corrupt or
                    // missing shard is logged every time (it needs repair).
                    if !error.is_transient() {
                        tracing::warn!(piece = %format!("{piece_id:032x}"), index, %error, "shard unreadable; using parity");
                    }
                    if let Some(next) = candidates.next() {
                        requests.push(self.get_one(piece_id, next, locations[next]));
                    }
                }
            }
        }
        drop(requests);
        tokio::task::spawn_blocking(move || codec::decode_stripe(shards, k, m, sealed_len))
            .await
            .map_err(|e| FsError::Io(format!("decode task failed: {e}")))?
    }

    fn get_one(
        &self,
        piece_id: u128,
        index: usize,
        location: ShardLoc,
    ) -> impl std::future::Future<Output = (usize, FsResult<Vec<u8>>)> + Send + 'static {
        let client = location.node.and_then(|n| self.node_client(n)).map(|(c, _)| c);
        let volume = self.clone();
        async move {
            let Some(client) = client else {
                return (index, Err(FsError::Unavailable("shard has no node".into())));
            };
            let result = client
                .get_shard(ShardKey {
                    piece_id,
                    shard_index: index as u8,
                })
                .await;
            let result = match result {
                Ok(bytes) if *blake3::hash(&bytes).as_bytes() == location.hash => Ok(bytes.to_vec()),
                Ok(_) => Err(FsError::Corrupt("shard does not match the hash in its record".into())),
                Err(error) if error.is_corruption() => Err(error),
                Err(error) => {
                    if error.is_transient() {
                        if let Some(node) = location.node {
                            if volume.mark_down(node) {
                                tracing::warn!(node, %error, "node unreachable; reading parity instead");
                            }
                        }
                    }
                    Err(error)
                }
            };
            if let (Err(error), Some(node)) = (&result, location.node) {
                if error.is_corruption() {
                    volume.report_corrupt(ShardRef {
                        node,
                        piece_id,
                        shard_index: index as u8,
                    });
                }
            }
            (index, result)
        }
    }

    /// Tells meta about a shard that failed its hash, so that it is rebuilt
    /// from the rest of its stripe; the read goes on with parity meanwhile.
    fn report_corrupt(&self, shard: ShardRef) {
        let meta = self.inner.meta.clone();
        tokio::spawn(async move {
            let request = MetaRequest::ReportCorrupt { shards: vec![shard] };
            if let Err(error) = meta.call(&request).await {
                tracing::debug!(%error, "could not report a corrupt shard");
            }
        });
    }
}

/// An inode as the user sees it: a sealed symlink target's size is its
/// plaintext's.
fn shown_attr(mut attr: Attr) -> Attr {
    if attr.kind == FileKind::Symlink && attr.policy != VOLUME_POLICY {
        attr.size = attr.size.saturating_sub((1 + names::SIV_TAG_BYTES) as u64);
    }
    attr
}

/// Whether `request` changes what meta stores (and so may need a sync).
fn changes_volume(request: &MetaRequest) -> bool {
    match request {
        MetaRequest::SetAttr { .. }
        | MetaRequest::Create { .. }
        | MetaRequest::Link { .. }
        | MetaRequest::Unlink { .. }
        | MetaRequest::Rmdir { .. }
        | MetaRequest::Rename { .. }
        | MetaRequest::SetXattr { .. }
        | MetaRequest::RemoveXattr { .. }
        | MetaRequest::CommitWrite { .. }
        | MetaRequest::Protect { .. }
        | MetaRequest::PutEnvelope { .. }
        | MetaRequest::DropEpoch { .. }
        | MetaRequest::RekeyChunk { .. } => true,
        MetaRequest::Policies
        | MetaRequest::Envelopes { .. }
        | MetaRequest::PolicyFiles { .. }
        | MetaRequest::Volume
        | MetaRequest::Lookup { .. }
        | MetaRequest::GetAttr { .. }
        | MetaRequest::ReadDir { .. }
        | MetaRequest::GetXattr { .. }
        | MetaRequest::ListXattr { .. }
        | MetaRequest::StatFs
        | MetaRequest::ReadChunks { .. }
        | MetaRequest::Open { .. }
        | MetaRequest::Release { .. }
        | MetaRequest::Heartbeat { .. }
        | MetaRequest::Nodes
        | MetaRequest::Status
        | MetaRequest::Sync
        | MetaRequest::Rebuild
        | MetaRequest::Members
        | MetaRequest::Drain { .. }
        | MetaRequest::RemoveNode { .. }
        | MetaRequest::Draining
        | MetaRequest::ReportCorrupt { .. }
        | MetaRequest::Scrub { .. }
        | MetaRequest::ListChunks { .. } => false,
    }
}
