//! Shard stores: where a node keeps its shards. One narrow trait, a disk
//! implementation (one file per shard on the donated partition) and an
//! in-memory one, with one conformance suite run against both.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sohofs_format::messages::SCRUB_CORRUPT_LISTED_MAX;
use sohofs_format::shard::{ShardHeader, SHARD_HEADER_BYTES};

use crate::error::{FsError, FsResult};
use crate::fault;

/// Identifies a shard: the piece it belongs to and its index in the stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    pub piece_id: u128,
    pub shard_index: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStat {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub shards: u64,
}

/// A node's shard storage. Calls block; async callers use the blocking pool.
pub trait ShardStore: Send + Sync + 'static {
    /// Stores a shard durably (it survives a power cut once this returns).
    /// Shards are never overwritten: putting an existing key again replaces
    /// it only with identical content.
    fn put(&self, key: ShardKey, payload: &[u8]) -> FsResult<()>;
    /// Returns the payload after checking it against its stored hash: a
    /// mismatch is [`FsError::Corrupt`], a missing shard [`FsError::NotFound`].
    fn get(&self, key: ShardKey) -> FsResult<Vec<u8>>;
    /// Deletes a shard; deleting a missing one is not an error.
    fn delete(&self, key: ShardKey) -> FsResult<()>;
    fn stat(&self) -> FsResult<StoreStat>;
    /// Every shard held, in no particular order (for scrub).
    fn list(&self) -> FsResult<Vec<ShardKey>>;
    /// The time since shard `key` was written (for the orphan collector,
    /// which keeps young shards: a write in flight); `None` if it is gone.
    /// A store that cannot tell reports every shard as just written, so
    /// that nothing of it is ever collected as an orphan.
    fn age(&self, key: ShardKey) -> FsResult<Option<std::time::Duration>> {
        let _ = key;
        Ok(Some(std::time::Duration::ZERO))
    }
}

/// What one scrub of a store found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubOutcome {
    pub shards_checked: u64,
    /// Shards that failed their hash, whose header is damaged, or that could
    /// not be read (an I/O error: a bad sector loses the shard just the
    /// same), at most [`SCRUB_CORRUPT_LISTED_MAX`].
    pub corrupt: Vec<ShardKey>,
}

/// Re-hashes every shard of `store` (a get checks the BLAKE3 in the shard
/// header; no key is needed), reading at most `bytes_per_s` on average so
/// that the office's own reads keep their disk. Blocks: run it on the
/// blocking pool. Shards deleted meanwhile are skipped.
pub fn scrub(store: &dyn ShardStore, bytes_per_s: u64) -> FsResult<ScrubOutcome> {
    let started = std::time::Instant::now();
    let mut outcome = ScrubOutcome::default();
    let mut bytes_read = 0u64;
    for key in store.list()? {
        match store.get(key) {
            Ok(payload) => bytes_read += (payload.len() + SHARD_HEADER_BYTES) as u64,
            Err(FsError::NotFound) => continue,
            Err(error) if error.is_corruption() || matches!(error, FsError::Io(_)) => {
                tracing::warn!(%error, "scrub: shard unreadable");
                if outcome.corrupt.len() < SCRUB_CORRUPT_LISTED_MAX {
                    outcome.corrupt.push(key);
                }
            }
            Err(error) => return Err(error),
        }
        outcome.shards_checked += 1;
        if bytes_per_s > 0 {
            let due = std::time::Duration::from_secs_f64(bytes_read as f64 / bytes_per_s as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    Ok(outcome)
}

/// Shards as files: `DIR/shards/<first two hex digits>/<piece id hex>.<index>`,
/// each a [`ShardHeader`] followed by the payload.
pub struct DiskShardStore {
    root: PathBuf,
    used_bytes: AtomicU64,
    shards: AtomicU64,
}

const SHARDS_DIR: &str = "shards";
const TEMP_SUFFIX: &str = ".tmp";

impl DiskShardStore {
    /// Opens (creating if needed) a store under `root` and counts its shards.
    pub fn open(root: &Path) -> FsResult<Self> {
        let shards_dir = root.join(SHARDS_DIR);
        fs::create_dir_all(&shards_dir).map_err(|e| io_error("create the shard directory", &shards_dir, e))?;
        let store = DiskShardStore {
            root: root.to_path_buf(),
            used_bytes: AtomicU64::new(0),
            shards: AtomicU64::new(0),
        };
        let (mut count, mut bytes) = (0u64, 0u64);
        for bucket in fs::read_dir(&shards_dir).map_err(|e| io_error("list shards", &shards_dir, e))? {
            let bucket = bucket.map_err(|e| io_error("list shards", &shards_dir, e))?.path();
            let Ok(entries) = fs::read_dir(&bucket) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.to_string_lossy().ends_with(TEMP_SUFFIX) {
                    // A put interrupted by a crash: never acknowledged, safe to drop.
                    let _ = fs::remove_file(&path);
                    continue;
                }
                if let Ok(meta) = entry.metadata() {
                    count += 1;
                    bytes += meta.len();
                }
            }
        }
        store.shards.store(count, Ordering::Relaxed);
        store.used_bytes.store(bytes, Ordering::Relaxed);
        Ok(store)
    }

    fn path_of(&self, key: ShardKey) -> PathBuf {
        let hex = format!("{:032x}", key.piece_id);
        self.root
            .join(SHARDS_DIR)
            .join(&hex[..2])
            .join(format!("{hex}.{}", key.shard_index))
    }
}

/// `<piece id hex>.<index>`, as [`DiskShardStore::path_of`] names a shard;
/// anything else (a temp file) is not a shard.
fn parse_shard_file_name(name: &str) -> Option<ShardKey> {
    let (hex, index) = name.split_once('.')?;
    if hex.len() != 32 {
        return None;
    }
    Some(ShardKey {
        piece_id: u128::from_str_radix(hex, 16).ok()?,
        shard_index: index.parse().ok()?,
    })
}

/// A failpoint inside the disk store's I/O: `nospace` comes out as ENOSPC,
/// as from a full disk.
fn failpoint_io(name: &'static str) -> std::io::Result<()> {
    fault::failpoint(name).map_err(|error| match error {
        FsError::NoSpace(_) => std::io::Error::from_raw_os_error(libc::ENOSPC),
        other => std::io::Error::other(other),
    })
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> FsError {
    if error.raw_os_error() == Some(libc::ENOSPC) {
        return FsError::NoSpace(format!("{what} {}: {error}", path.display()));
    }
    FsError::Io(format!("{what} {}: {error}", path.display()))
}

impl ShardStore for DiskShardStore {
    fn put(&self, key: ShardKey, payload: &[u8]) -> FsResult<()> {
        let path = self.path_of(key);
        let bucket = path.parent().expect("shard paths have a bucket directory");
        fs::create_dir_all(bucket).map_err(|e| io_error("create shard bucket", bucket, e))?;
        let temp = path.with_extension(format!("{}{TEMP_SUFFIX}", key.shard_index));
        let header = ShardHeader::for_payload(key.piece_id, key.shard_index, payload);
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
            file.write_all(&header.encode())?;
            file.write_all(payload)?;
            file.sync_all()?;
            failpoint_io(fault::SHARD_PUT_AFTER_TEMP_WRITE)?;
            fs::rename(&temp, &path)?;
            failpoint_io(fault::SHARD_PUT_AFTER_RENAME)?;
            // The rename is durable only once the directory is.
            File::open(bucket)?.sync_all()
        };
        let existed = path.exists();
        if let Err(error) = write() {
            let _ = fs::remove_file(&temp);
            return Err(io_error("write shard", &path, error));
        }
        if !existed {
            self.shards.fetch_add(1, Ordering::Relaxed);
            self.used_bytes
                .fetch_add((SHARD_HEADER_BYTES + payload.len()) as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn get(&self, key: ShardKey) -> FsResult<Vec<u8>> {
        let path = self.path_of(key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FsError::NotFound),
            Err(e) => return Err(io_error("open shard", &path, e)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_error("read shard", &path, e))?;
        let header =
            ShardHeader::decode(&bytes).map_err(|e| FsError::Corrupt(format!("shard {}: {e}", path.display())))?;
        let payload = &bytes[SHARD_HEADER_BYTES..];
        if header.piece_id != key.piece_id || header.shard_index != key.shard_index || !header.verifies(payload) {
            return Err(FsError::Corrupt(format!("shard {} fails its hash", path.display())));
        }
        bytes.drain(..SHARD_HEADER_BYTES);
        Ok(bytes)
    }

    fn delete(&self, key: ShardKey) -> FsResult<()> {
        let path = self.path_of(key);
        let len = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("stat shard", &path, e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                self.shards.fetch_sub(1, Ordering::Relaxed);
                self.used_bytes.fetch_sub(len, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("delete shard", &path, e)),
        }
    }

    fn list(&self) -> FsResult<Vec<ShardKey>> {
        let shards_dir = self.root.join(SHARDS_DIR);
        let mut keys = Vec::new();
        for bucket in fs::read_dir(&shards_dir).map_err(|e| io_error("list shards", &shards_dir, e))? {
            let bucket = bucket.map_err(|e| io_error("list shards", &shards_dir, e))?.path();
            let Ok(entries) = fs::read_dir(&bucket) else { continue };
            for entry in entries.flatten() {
                if let Some(key) = entry.file_name().to_str().and_then(parse_shard_file_name) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }

    fn age(&self, key: ShardKey) -> FsResult<Option<std::time::Duration>> {
        let path = self.path_of(key);
        match fs::metadata(&path).and_then(|m| m.modified()) {
            // A clock set back makes a shard look new: kept, never lost.
            Ok(modified) => Ok(Some(
                std::time::SystemTime::now()
                    .duration_since(modified)
                    .unwrap_or_default(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("stat shard", &path, e)),
        }
    }

    fn stat(&self) -> FsResult<StoreStat> {
        let vfs = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| FsError::Io(format!("statvfs {}: {e}", self.root.display())))?;
        let fragment = vfs.fragment_size() as u64;
        Ok(StoreStat {
            capacity_bytes: vfs.blocks() as u64 * fragment,
            free_bytes: vfs.blocks_available() as u64 * fragment,
            used_bytes: self.used_bytes.load(Ordering::Relaxed),
            shards: self.shards.load(Ordering::Relaxed),
        })
    }
}

/// Shards in memory: for tests and benchmarks of everything above the disk.
pub struct MemShardStore {
    shards: Mutex<HashMap<ShardKey, (ShardHeader, Vec<u8>)>>,
    capacity_bytes: u64,
}

impl MemShardStore {
    pub fn new(capacity_bytes: u64) -> Self {
        MemShardStore {
            shards: Mutex::new(HashMap::new()),
            capacity_bytes,
        }
    }

    /// Flips one payload byte of a stored shard, as bit rot would.
    pub fn corrupt(&self, key: ShardKey) -> bool {
        let mut shards = self.shards.lock().expect("shard map lock");
        match shards.get_mut(&key) {
            Some((_, payload)) if !payload.is_empty() => {
                payload[0] ^= 0xff;
                true
            }
            _ => false,
        }
    }
}

impl ShardStore for MemShardStore {
    fn put(&self, key: ShardKey, payload: &[u8]) -> FsResult<()> {
        let mut shards = self.shards.lock().expect("shard map lock");
        let used: u64 = shards.values().map(|(_, p)| p.len() as u64).sum();
        if used + payload.len() as u64 > self.capacity_bytes {
            return Err(FsError::NoSpace("memory shard store is full".into()));
        }
        let header = ShardHeader::for_payload(key.piece_id, key.shard_index, payload);
        shards.insert(key, (header, payload.to_vec()));
        Ok(())
    }

    fn get(&self, key: ShardKey) -> FsResult<Vec<u8>> {
        let shards = self.shards.lock().expect("shard map lock");
        let (header, payload) = shards.get(&key).ok_or(FsError::NotFound)?;
        if !header.verifies(payload) {
            return Err(FsError::Corrupt("in-memory shard fails its hash".into()));
        }
        Ok(payload.clone())
    }

    fn delete(&self, key: ShardKey) -> FsResult<()> {
        self.shards.lock().expect("shard map lock").remove(&key);
        Ok(())
    }

    fn list(&self) -> FsResult<Vec<ShardKey>> {
        Ok(self.shards.lock().expect("shard map lock").keys().copied().collect())
    }

    fn stat(&self) -> FsResult<StoreStat> {
        let shards = self.shards.lock().expect("shard map lock");
        let used: u64 = shards.values().map(|(_, p)| p.len() as u64).sum();
        Ok(StoreStat {
            capacity_bytes: self.capacity_bytes,
            free_bytes: self.capacity_bytes.saturating_sub(used),
            used_bytes: used,
            shards: shards.len() as u64,
        })
    }
}

/// The conformance suite every [`ShardStore`] passes.
#[cfg(test)]
pub(crate) fn conformance(store: &dyn ShardStore) {
    let key = ShardKey {
        piece_id: 0xabcdef,
        shard_index: 2,
    };
    assert_eq!(store.get(key), Err(FsError::NotFound));
    store.put(key, b"shard bytes").unwrap();
    assert_eq!(store.get(key).unwrap(), b"shard bytes");
    let stat = store.stat().unwrap();
    assert_eq!(stat.shards, 1);
    assert!(stat.used_bytes >= 11);
    let other = ShardKey {
        piece_id: 0xabcdef,
        shard_index: 3,
    };
    store.put(other, b"").unwrap();
    assert_eq!(store.get(other).unwrap(), b"");
    let mut listed = store.list().unwrap();
    listed.sort();
    assert_eq!(listed, vec![key, other]);
    // Just written: young (a store that cannot tell says zero).
    let age = store.age(key).unwrap().expect("a stored shard has an age");
    assert!(age < std::time::Duration::from_secs(60), "{age:?}");
    store.delete(key).unwrap();
    store.delete(key).unwrap();
    if store.age(key).unwrap().is_some() {
        // Only the default (no ages kept) may answer for a missing shard.
        assert_eq!(store.age(key).unwrap(), Some(std::time::Duration::ZERO));
    }
    assert_eq!(store.get(key), Err(FsError::NotFound));
    assert_eq!(store.stat().unwrap().shards, 1);
    let outcome = scrub(store, 0).unwrap();
    assert_eq!(
        outcome,
        ScrubOutcome {
            shards_checked: 1,
            corrupt: vec![]
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance(&DiskShardStore::open(dir.path()).unwrap());
    }

    #[test]
    fn memory_store_conforms() {
        conformance(&MemShardStore::new(1 << 20));
    }

    #[test]
    fn disk_store_detects_a_flipped_bit_and_counts_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShardStore::open(dir.path()).unwrap();
        let key = ShardKey {
            piece_id: 7,
            shard_index: 0,
        };
        store.put(key, &[5u8; 1000]).unwrap();
        let path = store.path_of(key);
        let mut bytes = fs::read(&path).unwrap();
        bytes[SHARD_HEADER_BYTES + 500] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        assert!(store.get(key).unwrap_err().is_corruption());
        let good = ShardKey {
            piece_id: 8,
            shard_index: 3,
        };
        store.put(good, &[6u8; 100]).unwrap();
        let outcome = scrub(&store, 1 << 30).unwrap();
        assert_eq!(outcome.shards_checked, 2);
        assert_eq!(outcome.corrupt, vec![key]);
        let reopened = DiskShardStore::open(dir.path()).unwrap();
        assert_eq!(reopened.stat().unwrap().shards, 2);
    }
}
