//! The metadata store's narrow key-value interface, with a RocksDB
//! implementation (the real one) and an in-memory one, and one conformance
//! suite for both. The key schema is in `sohofs_format::keys`.
//!
//! `RocksKv` exists only with the `rocksdb` feature (on by default).

use std::collections::BTreeMap;
#[cfg(feature = "rocksdb")]
use std::path::Path;
use std::sync::RwLock;

#[cfg(feature = "rocksdb")]
use crate::error::FsError;
use crate::error::FsResult;

/// One change of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// An ordered batch of changes, applied all or nothing.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<KvOp>,
}

impl Batch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(KvOp::Put(key, value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(KvOp::Delete(key));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

pub trait KvStore: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>>;
    /// Entries whose key starts with `prefix` and is greater than `after`
    /// (or all, with `None`), in key order, at most `limit`.
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies `batch` atomically. On return it survives a crash of this
    /// process (it is in the log, in the kernel's page cache); it survives a
    /// crash of the machine once [`KvStore::sync`] has returned.
    fn write(&self, batch: Batch) -> FsResult<()>;
    /// Makes every write that has returned so far durable (syncs the log).
    fn sync(&self) -> FsResult<()>;
}

#[cfg(feature = "rocksdb")]
pub struct RocksKv {
    db: rocksdb::DB,
}

#[cfg(feature = "rocksdb")]
impl RocksKv {
    pub fn open(path: &Path) -> FsResult<Self> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.set_max_background_jobs(2);
        let db = rocksdb::DB::open(&options, path)
            .map_err(|e| FsError::Io(format!("open metadata database {}: {e}", path.display())))?;
        Ok(RocksKv { db })
    }
}

#[cfg(feature = "rocksdb")]
fn rocks_error(error: rocksdb::Error) -> FsError {
    FsError::Io(format!("metadata database: {error}"))
}

#[cfg(feature = "rocksdb")]
impl KvStore for RocksKv {
    fn get(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        self.db.get(key).map_err(rocks_error)
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = after.unwrap_or(prefix);
        let iter = self
            .db
            .iterator(rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(rocks_error)?;
            if !key.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|a| &key[..] <= a) {
                continue;
            }
            out.push((key.to_vec(), value.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn write(&self, batch: Batch) -> FsResult<()> {
        let mut write_batch = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                KvOp::Put(key, value) => write_batch.put(key, value),
                KvOp::Delete(key) => write_batch.delete(key),
            }
        }
        // Not synced: a sync per change cost more than the rest of a create.
        // Meta syncs the log where durability is promised (`Meta::sync`).
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(false);
        self.db.write_opt(write_batch, &options).map_err(rocks_error)
    }

    fn sync(&self) -> FsResult<()> {
        self.db.flush_wal(true).map_err(rocks_error)
    }
}

/// In memory: a second implementation for tests.
#[derive(Default)]
pub struct MemKv {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl KvStore for MemKv {
    fn get(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        Ok(self.map.read().expect("kv lock").get(key).cloned())
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let map = self.map.read().expect("kv lock");
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        Ok(map
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, batch: Batch) -> FsResult<()> {
        let mut map = self.map.write().expect("kv lock");
        for op in batch.ops {
            match op {
                KvOp::Put(key, value) => {
                    map.insert(key, value);
                }
                KvOp::Delete(key) => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> FsResult<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn conformance(kv: &dyn KvStore) {
    let mut batch = Batch::default();
    batch.put(b"a1".to_vec(), b"x".to_vec());
    batch.put(b"a2".to_vec(), b"y".to_vec());
    batch.put(b"a3".to_vec(), b"z".to_vec());
    batch.put(b"b1".to_vec(), b"w".to_vec());
    batch.delete(b"a3".to_vec());
    kv.write(batch).unwrap();
    assert_eq!(kv.get(b"a1").unwrap(), Some(b"x".to_vec()));
    assert_eq!(kv.get(b"a3").unwrap(), None);
    let all: Vec<_> = kv.scan(b"a", None, 10).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(all, vec![b"a1".to_vec(), b"a2".to_vec()]);
    let after: Vec<_> = kv
        .scan(b"a", Some(b"a1"), 10)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(after, vec![b"a2".to_vec()]);
    assert_eq!(kv.scan(b"a", None, 1).unwrap().len(), 1);
    assert!(kv.scan(b"c", None, 10).unwrap().is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "rocksdb")]
    #[test]
    fn rocksdb_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance(&RocksKv::open(dir.path()).unwrap());
    }

    #[test]
    fn memory_conforms() {
        conformance(&MemKv::default());
    }
}
