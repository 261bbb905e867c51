//! The meta namespace suite: one set of cases, run against both metadata
//! stores (in memory and RocksDB in a temporary directory). Each case asserts
//! the values meta keeps, not just that calls succeed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sohofs_format::messages::{ChunkOp, ChunkWrite, NewInode, SetAttr};
use sohofs_format::{
    ChunkRecord, EnvelopeRecipient, Extent, FileKind, Ino, Inode, KeyEnvelope, NodeId, NodeRecord, Piece, PieceBody,
    ShardLoc, FIRST_ENTRY_SEQ, ROOT_INO,
};
use sohofs_storage::heal::HealSettings;
use sohofs_storage::kv::{Batch, KvStore, MemKv, RocksKv};
use sohofs_storage::meta::{Meta, VolumeParams};
use sohofs_storage::repair::ShardMove;
use sohofs_storage::FsError;

const CHUNK_BYTES: u32 = 64 * 1024;
const K: u8 = 4;
const M: u8 = 2;
const RENAME_NOREPLACE: u32 = 1;
const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;
const DOWN_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Rocks,
}

/// A metadata store that can be reopened: the same map in memory, or the
/// same RocksDB directory (the previous handle must be dropped first).
struct Store {
    memory: Arc<MemKv>,
    dir: Option<tempfile::TempDir>,
}

impl Store {
    fn new(backend: Backend) -> Store {
        Store {
            memory: Arc::new(MemKv::default()),
            dir: match backend {
                Backend::Memory => None,
                Backend::Rocks => Some(tempfile::tempdir().unwrap()),
            },
        }
    }

    fn kv(&self) -> Arc<dyn KvStore> {
        match &self.dir {
            None => self.memory.clone(),
            Some(dir) => Arc::new(RocksKv::open(&dir.path().join("db")).unwrap()),
        }
    }

    fn open(&self, down_after: Duration) -> Meta {
        Meta::open(self.kv(), Some(params()), down_after).unwrap()
    }
}

fn params() -> VolumeParams {
    VolumeParams {
        data_shards: K,
        parity_shards: M,
        write_quorum: K + 1,
        chunk_bytes: CHUNK_BYTES,
        inline_bytes_max: 2048,
    }
}

fn new_meta(backend: Backend) -> (Store, Meta) {
    let store = Store::new(backend);
    let meta = store.open(DOWN_AFTER);
    (store, meta)
}

fn new_inode(kind: FileKind, perm: u16, uid: u32, gid: u32) -> NewInode {
    NewInode {
        kind,
        perm,
        uid,
        gid,
        rdev: 0,
        symlink: Vec::new(),
    }
}

fn file(meta: &Meta, parent: Ino, name: &str) -> Inode {
    meta.create(parent, name.as_bytes(), &new_inode(FileKind::File, 0o644, 1000, 1000))
        .unwrap()
}

fn dir(meta: &Meta, parent: Ino, name: &str) -> Inode {
    meta.create(parent, name.as_bytes(), &new_inode(FileKind::Dir, 0o755, 1000, 1000))
        .unwrap()
}

fn nlink(meta: &Meta, ino: Ino) -> u32 {
    meta.inode(ino).unwrap().nlink
}

/// A striped piece of `len` bytes at chunk offset `offset`, its shards on
/// `nodes` (k + m of them; `None` is an unplaced shard).
fn striped(piece_id: u128, offset: u32, len: u32, nodes: &[Option<NodeId>]) -> Extent {
    assert_eq!(nodes.len(), (K + M) as usize);
    Extent {
        offset,
        len,
        piece: Piece {
            id: piece_id,
            base: offset,
            plain_len: len,
            key_id: 0,
            key_epoch: 0,
            body: PieceBody::Striped {
                sealed_len: len + 40,
                data_shards: K,
                parity_shards: M,
                shards: nodes
                    .iter()
                    .map(|node| ShardLoc {
                        node: *node,
                        hash: [7; 32],
                    })
                    .collect(),
            },
        },
    }
}

fn inline(piece_id: u128, len: u32) -> Extent {
    Extent {
        offset: 0,
        len,
        piece: Piece {
            id: piece_id,
            base: 0,
            plain_len: len,
            key_id: 0,
            key_epoch: 0,
            body: PieceBody::Inline {
                sealed: vec![1; len as usize + 40],
            },
        },
    }
}

const ALL_NODES: [Option<NodeId>; 6] = [Some(1), Some(2), Some(3), Some(4), Some(5), Some(6)];

fn overlay(index: u64, extent: Extent) -> ChunkWrite {
    ChunkWrite {
        index,
        op: ChunkOp::Overlay(extent),
    }
}

fn replace(index: u64, extent: Extent) -> ChunkWrite {
    ChunkWrite {
        index,
        op: ChunkOp::Replace(extent),
    }
}

fn commit(meta: &Meta, ino: Ino, writes: Vec<ChunkWrite>, size_at_least: u64) -> Inode {
    meta.commit_write(ino, &writes, size_at_least, sohofs_storage::meta::now_ns())
        .unwrap()
}

/// The shards of `piece_id` in the garbage-collection queue, as
/// (node, shard index), sorted.
fn queued(meta: &Meta, piece_id: u128) -> Vec<(NodeId, u8)> {
    let mut out: Vec<(NodeId, u8)> = meta
        .gc_batch()
        .unwrap()
        .into_iter()
        .filter(|(_, record)| record.piece_id == piece_id)
        .map(|(_, record)| (record.node, record.shard_index))
        .collect();
    out.sort();
    out
}

fn all_shards_of(nodes: &[Option<NodeId>]) -> Vec<(NodeId, u8)> {
    let mut out: Vec<(NodeId, u8)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(index, node)| node.map(|n| (n, index as u8)))
        .collect();
    out.sort();
    out
}

fn records(meta: &Meta, ino: Ino) -> HashMap<u64, ChunkRecord> {
    meta.read_chunks(ino, 0, 256).unwrap().into_iter().collect()
}

/// (offset, len, piece id) of each extent of a chunk, in overlay order.
fn extents(record: &ChunkRecord) -> Vec<(u32, u32, u128)> {
    record.extents.iter().map(|e| (e.offset, e.len, e.piece.id)).collect()
}

/// Every entry of `dir`, read in pages of `page`.
fn list(meta: &Meta, dir: Ino, page: u32) -> Vec<(Vec<u8>, Ino, u64)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let entries = meta.read_dir(dir, after, page).unwrap();
        let Some(last) = entries.last() else { break };
        after = last.seq;
        out.extend(entries.into_iter().map(|e| (e.name, e.ino, e.seq)));
    }
    out
}

fn names(listing: &[(Vec<u8>, Ino, u64)]) -> Vec<String> {
    listing
        .iter()
        .map(|(name, _, _)| String::from_utf8(name.clone()).unwrap())
        .collect()
}

// ----- cases -----

fn create_lookup_getattr(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let root_before = meta.inode(ROOT_INO).unwrap();
    assert_eq!(
        (root_before.kind, root_before.nlink, root_before.perm),
        (FileKind::Dir, 2, 0o755)
    );
    let created = meta
        .create(ROOT_INO, b"notes.txt", &new_inode(FileKind::File, 0o640, 1001, 1002))
        .unwrap();
    assert_eq!(created.kind, FileKind::File);
    assert_eq!((created.perm, created.uid, created.gid), (0o640, 1001, 1002));
    assert_eq!((created.nlink, created.size, created.generation), (1, 0, 1));
    assert!(created.ino > ROOT_INO);
    assert_eq!(meta.lookup(ROOT_INO, b"notes.txt").unwrap(), created);
    assert_eq!(meta.inode(created.ino).unwrap(), created);
    let root = meta.inode(ROOT_INO).unwrap();
    assert_eq!(root.nlink, 2, "a file does not add a link to its directory");
    assert!(root.mtime >= root_before.mtime && root.ctime >= root_before.ctime);
    assert_eq!(root.next_seq, root_before.next_seq + 1);

    assert_eq!(meta.lookup(ROOT_INO, b"missing"), Err(FsError::NotFound));
    assert_eq!(meta.lookup(created.ino, b"x"), Err(FsError::NotDir));
    assert_eq!(
        meta.create(ROOT_INO, b"notes.txt", &new_inode(FileKind::File, 0o644, 0, 0)),
        Err(FsError::Exists)
    );
    assert_eq!(
        meta.create(created.ino, b"x", &new_inode(FileKind::File, 0o644, 0, 0)),
        Err(FsError::NotDir)
    );
    assert_eq!(meta.inode(9999), Err(FsError::NotFound));

    let second = file(&meta, ROOT_INO, "second");
    assert_ne!(second.ino, created.ino);

    let mut link = new_inode(FileKind::Symlink, 0o777, 0, 0);
    link.symlink = b"../target".to_vec();
    let symlink = meta.create(ROOT_INO, b"link", &link).unwrap();
    assert_eq!((symlink.size, symlink.symlink.as_slice()), (9, &b"../target"[..]));
    link.symlink = Vec::new();
    assert!(matches!(
        meta.create(ROOT_INO, b"empty-link", &link),
        Err(FsError::Invalid(_))
    ));
}

fn mkdir_nlink_counts(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let a = dir(&meta, ROOT_INO, "a");
    assert_eq!((a.nlink, a.parent), (2, ROOT_INO));
    assert_eq!(nlink(&meta, ROOT_INO), 3);
    let b = dir(&meta, a.ino, "b");
    assert_eq!(b.parent, a.ino);
    assert_eq!(nlink(&meta, a.ino), 3);
    assert_eq!(nlink(&meta, ROOT_INO), 3);
    file(&meta, a.ino, "f");
    assert_eq!(nlink(&meta, a.ino), 3);
    meta.rmdir(a.ino, b"b").unwrap();
    assert_eq!(nlink(&meta, a.ino), 2);
    assert_eq!(meta.inode(b.ino), Err(FsError::NotFound));
    meta.unlink(a.ino, b"f").unwrap();
    meta.rmdir(ROOT_INO, b"a").unwrap();
    assert_eq!(nlink(&meta, ROOT_INO), 2);
    assert!(list(&meta, ROOT_INO, 10).is_empty());
}

fn setgid_directory_inheritance(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let shared = meta
        .create(ROOT_INO, b"shared", &new_inode(FileKind::Dir, 0o2775, 1000, 4242))
        .unwrap();
    assert_eq!((shared.perm, shared.gid), (0o2775, 4242));
    let inside = meta
        .create(shared.ino, b"doc", &new_inode(FileKind::File, 0o664, 1001, 1001))
        .unwrap();
    assert_eq!((inside.gid, inside.perm, inside.uid), (4242, 0o664, 1001));
    let sub = meta
        .create(shared.ino, b"sub", &new_inode(FileKind::Dir, 0o750, 1001, 1001))
        .unwrap();
    assert_eq!(
        (sub.gid, sub.perm),
        (4242, 0o2750),
        "a subdirectory inherits the setgid bit"
    );
    let deeper = meta
        .create(sub.ino, b"deeper", &new_inode(FileKind::File, 0o600, 1001, 1001))
        .unwrap();
    assert_eq!(deeper.gid, 4242);
    let plain = meta
        .create(ROOT_INO, b"plain", &new_inode(FileKind::Dir, 0o755, 1000, 1000))
        .unwrap();
    let own = meta
        .create(plain.ino, b"own", &new_inode(FileKind::File, 0o644, 1001, 1001))
        .unwrap();
    assert_eq!(own.gid, 1001);
}

fn names_are_checked(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let spec = new_inode(FileKind::File, 0o644, 0, 0);
    assert!(matches!(meta.create(ROOT_INO, b"", &spec), Err(FsError::Invalid(_))));
    assert!(matches!(meta.create(ROOT_INO, b"a/b", &spec), Err(FsError::Invalid(_))));
    assert!(matches!(
        meta.create(ROOT_INO, b"nul\0", &spec),
        Err(FsError::Invalid(_))
    ));
    assert!(meta.create(ROOT_INO, b".", &spec).is_err());
    assert!(meta.create(ROOT_INO, b"..", &spec).is_err());
    let longest = vec![b'n'; 255];
    let too_long = vec![b'n'; 256];
    let made = meta.create(ROOT_INO, &longest, &spec).unwrap();
    assert_eq!(meta.lookup(ROOT_INO, &longest).unwrap().ino, made.ino);
    assert_eq!(meta.create(ROOT_INO, &too_long, &spec), Err(FsError::NameTooLong));
    assert_eq!(meta.lookup(ROOT_INO, &too_long), Err(FsError::NameTooLong));
    assert_eq!(meta.link(made.ino, ROOT_INO, &too_long), Err(FsError::NameTooLong));
    assert_eq!(
        meta.rename(ROOT_INO, &longest, ROOT_INO, &too_long, 0),
        Err(FsError::NameTooLong)
    );
    assert!(matches!(meta.lookup(ROOT_INO, b""), Err(FsError::Invalid(_))));
    assert_eq!(names(&list(&meta, ROOT_INO, 10)), vec!["n".repeat(255)]);
}

fn unlink_and_rmdir_errors(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let d = dir(&meta, ROOT_INO, "d");
    let f = file(&meta, d.ino, "f");
    assert_eq!(meta.unlink(ROOT_INO, b"d"), Err(FsError::IsDir));
    assert_eq!(meta.rmdir(d.ino, b"f"), Err(FsError::NotDir));
    assert_eq!(meta.rmdir(ROOT_INO, b"d"), Err(FsError::NotEmpty));
    assert_eq!(meta.unlink(ROOT_INO, b"missing"), Err(FsError::NotFound));
    assert_eq!(meta.rmdir(ROOT_INO, b"missing"), Err(FsError::NotFound));
    assert_eq!(meta.unlink(f.ino, b"x"), Err(FsError::NotDir));
    // Nothing changed by the refused calls.
    assert_eq!(meta.lookup(d.ino, b"f").unwrap().ino, f.ino);
    assert_eq!(nlink(&meta, d.ino), 2);
    assert_eq!(nlink(&meta, ROOT_INO), 3);
    meta.unlink(d.ino, b"f").unwrap();
    assert_eq!(meta.inode(f.ino), Err(FsError::NotFound));
    meta.rmdir(ROOT_INO, b"d").unwrap();
    assert_eq!(nlink(&meta, ROOT_INO), 2);
}

fn rename_over_existing_file(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let source = file(&meta, ROOT_INO, "new");
    let target = file(&meta, ROOT_INO, "old");
    commit(
        &meta,
        source.ino,
        vec![replace(0, striped(0x50, 0, CHUNK_BYTES, &ALL_NODES))],
        64 * 1024,
    );
    let target_nodes = [Some(1), Some(2), None, Some(4), Some(5), Some(6)];
    commit(
        &meta,
        target.ino,
        vec![
            replace(0, striped(0xA0, 0, CHUNK_BYTES, &ALL_NODES)),
            overlay(1, striped(0xA1, 0, 100, &target_nodes)),
        ],
        64 * 1024 + 100,
    );
    meta.rename(ROOT_INO, b"new", ROOT_INO, b"old", 0).unwrap();
    assert_eq!(meta.lookup(ROOT_INO, b"new"), Err(FsError::NotFound));
    assert_eq!(meta.lookup(ROOT_INO, b"old").unwrap().ino, source.ino);
    assert_eq!(meta.inode(target.ino), Err(FsError::NotFound));
    assert!(records(&meta, target.ino).is_empty());
    assert_eq!(queued(&meta, 0xA0), all_shards_of(&ALL_NODES));
    assert_eq!(queued(&meta, 0xA1), all_shards_of(&target_nodes));
    assert!(queued(&meta, 0x50).is_empty());
    assert_eq!(extents(&records(&meta, source.ino)[&0]), vec![(0, CHUNK_BYTES, 0x50)]);
    assert_eq!(nlink(&meta, ROOT_INO), 2);
    assert_eq!(names(&list(&meta, ROOT_INO, 10)), vec!["old"]);
}

fn rename_directories(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let a = dir(&meta, ROOT_INO, "a");
    let empty = dir(&meta, ROOT_INO, "empty");
    let full = dir(&meta, ROOT_INO, "full");
    let inside = file(&meta, full.ino, "inside");
    let f = file(&meta, ROOT_INO, "f");
    let sub = dir(&meta, a.ino, "sub");
    assert_eq!(nlink(&meta, ROOT_INO), 5);

    // Directory over a non-empty directory, over a file; file over a directory.
    assert_eq!(
        meta.rename(ROOT_INO, b"a", ROOT_INO, b"full", 0),
        Err(FsError::NotEmpty)
    );
    assert_eq!(meta.rename(ROOT_INO, b"a", ROOT_INO, b"f", 0), Err(FsError::NotDir));
    assert_eq!(meta.rename(ROOT_INO, b"f", ROOT_INO, b"empty", 0), Err(FsError::IsDir));
    // Into its own subtree, or onto itself as a child.
    assert!(matches!(
        meta.rename(ROOT_INO, b"a", sub.ino, b"x", 0),
        Err(FsError::Invalid(_))
    ));
    assert!(matches!(
        meta.rename(ROOT_INO, b"a", a.ino, b"x", 0),
        Err(FsError::Invalid(_))
    ));
    // RENAME_NOREPLACE refuses an existing target, even a compatible one.
    assert_eq!(
        meta.rename(ROOT_INO, b"a", ROOT_INO, b"empty", RENAME_NOREPLACE),
        Err(FsError::Exists)
    );
    assert!(matches!(
        meta.rename(ROOT_INO, b"a", ROOT_INO, b"z", 4),
        Err(FsError::Invalid(_))
    ));
    assert_eq!(
        meta.rename(ROOT_INO, b"nothing", ROOT_INO, b"z", 0),
        Err(FsError::NotFound)
    );
    // None of the refusals changed anything.
    assert_eq!(names(&list(&meta, ROOT_INO, 10)), vec!["a", "empty", "full", "f"]);
    assert_eq!(meta.lookup(full.ino, b"inside").unwrap().ino, inside.ino);
    assert_eq!(meta.lookup(ROOT_INO, b"f").unwrap().ino, f.ino);
    assert_eq!(nlink(&meta, ROOT_INO), 5);

    // RENAME_NOREPLACE to a free name works.
    meta.rename(ROOT_INO, b"f", ROOT_INO, b"g", RENAME_NOREPLACE).unwrap();
    assert_eq!(meta.lookup(ROOT_INO, b"g").unwrap().ino, f.ino);

    // Directory over an empty directory: the empty one is gone.
    meta.rename(ROOT_INO, b"a", ROOT_INO, b"empty", 0).unwrap();
    assert_eq!(meta.lookup(ROOT_INO, b"empty").unwrap().ino, a.ino);
    assert_eq!(meta.lookup(ROOT_INO, b"a"), Err(FsError::NotFound));
    assert_eq!(meta.inode(empty.ino), Err(FsError::NotFound));
    assert_eq!(nlink(&meta, ROOT_INO), 4);
    assert_eq!(nlink(&meta, a.ino), 3);
    assert_eq!(meta.lookup(a.ino, b"sub").unwrap().ino, sub.ino);
}

fn rename_hard_link_onto_sibling_is_a_no_op(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let d = dir(&meta, ROOT_INO, "d");
    let f = file(&meta, ROOT_INO, "f");
    meta.link(f.ino, ROOT_INO, b"g").unwrap();
    meta.link(f.ino, d.ino, b"h").unwrap();
    assert_eq!(nlink(&meta, f.ino), 3);
    meta.rename(ROOT_INO, b"f", ROOT_INO, b"g", 0).unwrap();
    meta.rename(d.ino, b"h", ROOT_INO, b"f", 0).unwrap();
    assert_eq!(meta.lookup(ROOT_INO, b"f").unwrap().ino, f.ino);
    assert_eq!(meta.lookup(ROOT_INO, b"g").unwrap().ino, f.ino);
    assert_eq!(meta.lookup(d.ino, b"h").unwrap().ino, f.ino);
    assert_eq!(nlink(&meta, f.ino), 3);
    // Renaming onto itself is a no-op too.
    meta.rename(ROOT_INO, b"f", ROOT_INO, b"f", 0).unwrap();
    assert_eq!(names(&list(&meta, ROOT_INO, 10)), vec!["d", "f", "g"]);
}

fn parent_nlink_after_cross_directory_moves(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let a = dir(&meta, ROOT_INO, "a");
    let b = dir(&meta, ROOT_INO, "b");
    let c = dir(&meta, a.ino, "c");
    file(&meta, a.ino, "f");
    assert_eq!((nlink(&meta, a.ino), nlink(&meta, b.ino)), (3, 2));
    meta.rename(a.ino, b"c", b.ino, b"c", 0).unwrap();
    assert_eq!((nlink(&meta, a.ino), nlink(&meta, b.ino)), (2, 3));
    assert_eq!(meta.inode(c.ino).unwrap().parent, b.ino);
    assert_eq!(nlink(&meta, c.ino), 2);
    // A file move changes no link count.
    meta.rename(a.ino, b"f", b.ino, b"f", 0).unwrap();
    assert_eq!((nlink(&meta, a.ino), nlink(&meta, b.ino)), (2, 3));
    // Directory over an empty directory in another parent.
    let d = dir(&meta, a.ino, "d");
    assert_eq!(nlink(&meta, a.ino), 3);
    meta.rename(b.ino, b"c", a.ino, b"d", 0).unwrap();
    assert_eq!((nlink(&meta, a.ino), nlink(&meta, b.ino)), (3, 2));
    assert_eq!(meta.inode(d.ino), Err(FsError::NotFound));
    assert_eq!(meta.inode(c.ino).unwrap().parent, a.ino);
    // Up to the root and back down.
    meta.rename(a.ino, b"d", ROOT_INO, b"top", 0).unwrap();
    assert_eq!((nlink(&meta, ROOT_INO), nlink(&meta, a.ino)), (5, 2));
    assert_eq!(meta.inode(c.ino).unwrap().parent, ROOT_INO);
    // Now `a` may move under `top` (c), which is no longer below it.
    meta.rename(ROOT_INO, b"a", c.ino, b"a", 0).unwrap();
    assert_eq!((nlink(&meta, ROOT_INO), nlink(&meta, c.ino)), (4, 3));
    assert!(matches!(
        meta.rename(ROOT_INO, b"top", a.ino, b"loop", 0),
        Err(FsError::Invalid(_))
    ));
}

fn hard_links(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let d = dir(&meta, ROOT_INO, "d");
    let f = file(&meta, ROOT_INO, "f");
    commit(
        &meta,
        f.ino,
        vec![replace(0, striped(0xF0, 0, CHUNK_BYTES, &ALL_NODES))],
        64 * 1024,
    );
    let linked = meta.link(f.ino, d.ino, b"g").unwrap();
    assert_eq!((linked.ino, linked.nlink), (f.ino, 2));
    assert_eq!(nlink(&meta, d.ino), 2, "a file link adds no directory link");
    assert_eq!(meta.link(f.ino, d.ino, b"g"), Err(FsError::Exists));
    assert_eq!(meta.link(d.ino, ROOT_INO, b"dir-link"), Err(FsError::Permission));
    meta.unlink(ROOT_INO, b"f").unwrap();
    let kept = meta.lookup(d.ino, b"g").unwrap();
    assert_eq!((kept.ino, kept.nlink, kept.size), (f.ino, 1, 64 * 1024));
    assert!(queued(&meta, 0xF0).is_empty(), "the data is still linked");
    assert_eq!(extents(&records(&meta, f.ino)[&0]), vec![(0, CHUNK_BYTES, 0xF0)]);
    meta.unlink(d.ino, b"g").unwrap();
    assert_eq!(meta.inode(f.ino), Err(FsError::NotFound));
    assert_eq!(queued(&meta, 0xF0), all_shards_of(&ALL_NODES));
    assert_eq!(meta.link(f.ino, ROOT_INO, b"again"), Err(FsError::NotFound));
}

fn readdir_pages_in_sequence_order(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let d = dir(&meta, ROOT_INO, "d");
    let mut made = Vec::new();
    for i in 0..10 {
        made.push(file(&meta, d.ino, &format!("e{i}")).ino);
    }
    let all = list(&meta, d.ino, 1000);
    let seqs: Vec<u64> = all.iter().map(|e| e.2).collect();
    assert_eq!(seqs, (FIRST_ENTRY_SEQ..FIRST_ENTRY_SEQ + 10).collect::<Vec<_>>());
    assert_eq!(all.iter().map(|e| e.1).collect::<Vec<_>>(), made);
    for page in [1, 3, 4, 10] {
        assert_eq!(list(&meta, d.ino, page), all);
    }
    // A page of 3 from the middle.
    let middle = meta.read_dir(d.ino, FIRST_ENTRY_SEQ + 4, 3).unwrap();
    assert_eq!(
        middle.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![b"e5".to_vec(), b"e6".to_vec(), b"e7".to_vec()]
    );
    assert_eq!(meta.read_dir(made[0], 0, 10), Err(FsError::NotDir));

    // Paging while entries come and go: every entry that exists throughout
    // is listed exactly once, in sequence order.
    let first = meta.read_dir(d.ino, 0, 4).unwrap();
    assert_eq!(first.len(), 4);
    meta.unlink(d.ino, b"e1").unwrap(); // already listed
    meta.unlink(d.ino, b"e6").unwrap(); // not yet listed
    meta.rename(d.ino, b"e2", d.ino, b"e2-renamed", 0).unwrap(); // listed, comes back later
    file(&meta, d.ino, "late");
    let mut seen: Vec<(Vec<u8>, Ino, u64)> = first.into_iter().map(|e| (e.name, e.ino, e.seq)).collect();
    let mut after = seen.last().unwrap().2;
    loop {
        let page = meta.read_dir(d.ino, after, 4).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        seen.extend(page.into_iter().map(|e| (e.name, e.ino, e.seq)));
    }
    let listed = names(&seen);
    assert_eq!(
        listed,
        vec![
            "e0",
            "e1",
            "e2",
            "e3",
            "e4",
            "e5",
            "e7",
            "e8",
            "e9",
            "e2-renamed",
            "late"
        ]
    );
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2));
}

/// A store that runs a hook right after the next readdir index scan: the
/// moment another client may change the directory under a listing.
struct RacingKv {
    inner: Arc<dyn KvStore>,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl KvStore for RacingKv {
    fn get(&self, key: &[u8]) -> sohofs_storage::FsResult<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> sohofs_storage::FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let found = self.inner.scan(prefix, after, limit)?;
        if prefix.first() == Some(&b'S') {
            let hook = self.hook.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        Ok(found)
    }

    fn write(&self, batch: Batch) -> sohofs_storage::FsResult<()> {
        self.inner.write(batch)
    }

    fn sync(&self) -> sohofs_storage::FsResult<()> {
        self.inner.sync()
    }
}

fn racing_meta(store: &Store) -> (Arc<RacingKv>, Arc<Meta>) {
    let racing = Arc::new(RacingKv {
        inner: store.kv(),
        hook: Mutex::new(None),
    });
    let meta = Arc::new(Meta::open(racing.clone(), Some(params()), DOWN_AFTER).unwrap());
    (racing, meta)
}

fn readdir_during_recreate_lists_no_entry_twice(backend: Backend) {
    let store = Store::new(backend);
    let (racing, meta) = racing_meta(&store);
    let d = dir(&meta, ROOT_INO, "d");
    file(&meta, d.ino, "a");
    file(&meta, d.ino, "x");
    file(&meta, d.ino, "z");
    // Between the index scan and the dentry reads, `x` is unlinked and made
    // again: it now sits at a later sequence number.
    let racer = meta.clone();
    let parent = d.ino;
    *racing.hook.lock().unwrap() = Some(Box::new(move || {
        racer.unlink(parent, b"x").unwrap();
        file(&racer, parent, "x");
    }));
    let listing = list(&meta, d.ino, 2);
    let again = meta.lookup(d.ino, b"x").unwrap();
    let mut pairs = HashSet::new();
    for (name, ino, _) in &listing {
        assert!(pairs.insert((name.clone(), *ino)), "{name:?} listed twice: {listing:?}");
    }
    assert!(listing.windows(2).all(|w| w[0].2 < w[1].2));
    // Each listed (name, seq) is what the dentry says.
    for (name, ino, seq) in &listing {
        if name == b"x" {
            assert_eq!((*ino, *seq), (again.ino, FIRST_ENTRY_SEQ + 3));
        }
    }
    assert_eq!(names(&listing), vec!["a", "z", "x"]);
}

fn readdir_page_of_vanished_entries_is_not_the_end(backend: Backend) {
    let store = Store::new(backend);
    let (racing, meta) = racing_meta(&store);
    let d = dir(&meta, ROOT_INO, "d");
    file(&meta, d.ino, "gone");
    file(&meta, d.ino, "stays");
    let racer = meta.clone();
    let parent = d.ino;
    *racing.hook.lock().unwrap() = Some(Box::new(move || racer.unlink(parent, b"gone").unwrap()));
    // The first page's only index entry vanishes under the scan; an empty
    // page would tell the caller that the directory ends here.
    let page = meta.read_dir(d.ino, 0, 1).unwrap();
    assert_eq!(
        page.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![b"stays".to_vec()]
    );
}

fn readdir_under_concurrent_churn(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let meta = Arc::new(meta);
    let d = dir(&meta, ROOT_INO, "d");
    let mut stable = BTreeSet::new();
    for i in 0..12 {
        file(&meta, d.ino, &format!("stable-{i:02}"));
        stable.insert(format!("stable-{i:02}"));
        file(&meta, d.ino, &format!("churn-{i:02}"));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let churner = {
        let meta = meta.clone();
        let stop = stop.clone();
        let rounds = rounds.clone();
        let parent = d.ino;
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = rounds.load(std::sync::atomic::Ordering::Relaxed) % 12;
                let name = format!("churn-{i:02}");
                meta.unlink(parent, name.as_bytes()).unwrap();
                file(&meta, parent, &name);
                meta.rename(parent, name.as_bytes(), parent, format!("moved-{i:02}").as_bytes(), 0)
                    .unwrap();
                meta.rename(parent, format!("moved-{i:02}").as_bytes(), parent, name.as_bytes(), 0)
                    .unwrap();
                rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    // List until both sides have done enough: on a loaded machine the churner
    // may not get a core for a while (bounded by the deadline).
    const LISTINGS_MIN: u32 = 150;
    const CHURN_ROUNDS_MIN: u32 = 24;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut listings = 0u32;
    while listings < LISTINGS_MIN || rounds.load(std::sync::atomic::Ordering::Relaxed) < CHURN_ROUNDS_MIN {
        assert!(std::time::Instant::now() < deadline, "churn did not progress in time");
        let listing = list(&meta, d.ino, 3);
        assert!(listing.windows(2).all(|w| w[0].2 < w[1].2), "out of order: {listing:?}");
        // Churned names may come back under a new sequence number (POSIX
        // leaves that open); the stable ones come exactly once, in order.
        let listed: Vec<String> = names(&listing);
        let stable_listed: Vec<&String> = listed.iter().filter(|n| n.starts_with("stable-")).collect();
        assert_eq!(stable_listed, stable.iter().collect::<Vec<_>>());
        listings += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churner.join().unwrap();
}

fn xattr_flags(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let f = file(&meta, ROOT_INO, "f");
    assert_eq!(meta.get_xattr(f.ino, b"user.a"), Err(FsError::NoXattr));
    assert_eq!(
        meta.set_xattr(f.ino, b"user.a", b"1", XATTR_REPLACE),
        Err(FsError::NoXattr)
    );
    meta.set_xattr(f.ino, b"user.a", b"1", XATTR_CREATE).unwrap();
    assert_eq!(
        meta.set_xattr(f.ino, b"user.a", b"2", XATTR_CREATE),
        Err(FsError::Exists)
    );
    assert_eq!(meta.get_xattr(f.ino, b"user.a").unwrap(), b"1");
    meta.set_xattr(f.ino, b"user.a", b"2", XATTR_REPLACE).unwrap();
    assert_eq!(meta.get_xattr(f.ino, b"user.a").unwrap(), b"2");
    meta.set_xattr(f.ino, b"user.b", b"", 0).unwrap();
    meta.set_xattr(f.ino, b"user.b", b"3", 0).unwrap();
    assert_eq!(meta.get_xattr(f.ino, b"user.b").unwrap(), b"3");
    assert_eq!(
        meta.list_xattr(f.ino).unwrap(),
        vec![b"user.a".to_vec(), b"user.b".to_vec()]
    );
    meta.remove_xattr(f.ino, b"user.a").unwrap();
    assert_eq!(meta.remove_xattr(f.ino, b"user.a"), Err(FsError::NoXattr));
    assert_eq!(meta.list_xattr(f.ino).unwrap(), vec![b"user.b".to_vec()]);
    assert_eq!(meta.set_xattr(f.ino, b"", b"x", 0), Err(FsError::Range));
    assert_eq!(meta.set_xattr(f.ino, &[b'n'; 256], b"x", 0), Err(FsError::Range));
    assert_eq!(
        meta.set_xattr(f.ino, b"user.big", &vec![0; 64 * 1024 + 1], 0),
        Err(FsError::TooBig)
    );
    assert_eq!(meta.get_xattr(9999, b"user.a"), Err(FsError::NotFound));
    // Xattrs go with the inode.
    let g = file(&meta, ROOT_INO, "g");
    meta.set_xattr(g.ino, b"user.c", b"4", 0).unwrap();
    meta.unlink(ROOT_INO, b"g").unwrap();
    assert_eq!(meta.list_xattr(g.ino), Err(FsError::NotFound));
}

fn setattr_shrink_trims_and_grow_reads_zeros(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let f = file(&meta, ROOT_INO, "f");
    let chunk = CHUNK_BYTES as u64;
    commit(
        &meta,
        f.ino,
        vec![
            replace(0, striped(0x10, 0, CHUNK_BYTES, &ALL_NODES)),
            replace(1, striped(0x11, 0, CHUNK_BYTES, &ALL_NODES)),
            overlay(1, striped(0x12, 1000, 2000, &ALL_NODES)),
            overlay(1, striped(0x13, 5000, 100, &ALL_NODES)),
            replace(2, striped(0x20, 0, CHUNK_BYTES, &ALL_NODES)),
            overlay(3, striped(0x30, 10, 20, &ALL_NODES)),
        ],
        3 * chunk + 30,
    );
    assert_eq!(meta.inode(f.ino).unwrap().size, 3 * chunk + 30);
    let shrunk = meta
        .set_attr(
            f.ino,
            &SetAttr {
                size: Some(chunk + 2000),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(shrunk.size, chunk + 2000);
    let after = records(&meta, f.ino);
    assert_eq!(after.keys().copied().collect::<BTreeSet<_>>(), BTreeSet::from([0, 1]));
    assert_eq!(extents(&after[&0]), vec![(0, CHUNK_BYTES, 0x10)]);
    // The boundary chunk keeps only its first 2000 bytes: extents end there.
    assert_eq!(extents(&after[&1]), vec![(0, 2000, 0x11), (1000, 1000, 0x12)]);
    for gone in [0x13, 0x20, 0x30] {
        assert_eq!(queued(&meta, gone), all_shards_of(&ALL_NODES), "piece {gone:x}");
    }
    for kept in [0x10, 0x11, 0x12] {
        assert!(queued(&meta, kept).is_empty(), "piece {kept:x}");
    }
    // Growing again adds no data: the new range is a hole.
    let grown = meta
        .set_attr(
            f.ino,
            &SetAttr {
                size: Some(4 * chunk),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(grown.size, 4 * chunk);
    assert_eq!(records(&meta, f.ino), after);
    // A shrink to a chunk boundary drops that chunk whole.
    meta.set_attr(
        f.ino,
        &SetAttr {
            size: Some(chunk),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let at_boundary = records(&meta, f.ino);
    assert_eq!(at_boundary.keys().copied().collect::<Vec<_>>(), vec![0]);
    assert_eq!(queued(&meta, 0x11), all_shards_of(&ALL_NODES));
    assert_eq!(queued(&meta, 0x12), all_shards_of(&ALL_NODES));
    meta.set_attr(
        f.ino,
        &SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert!(records(&meta, f.ino).is_empty());
    assert_eq!(queued(&meta, 0x10), all_shards_of(&ALL_NODES));
    let d = dir(&meta, ROOT_INO, "d");
    assert_eq!(
        meta.set_attr(
            d.ino,
            &SetAttr {
                size: Some(0),
                ..SetAttr::default()
            }
        ),
        Err(FsError::IsDir)
    );
}

fn commit_overlay_releases_hidden_extents(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let f = file(&meta, ROOT_INO, "f");
    commit(
        &meta,
        f.ino,
        vec![
            overlay(2, striped(0x1, 100, 100, &ALL_NODES)),
            overlay(2, striped(0x2, 150, 100, &ALL_NODES)),
            overlay(2, striped(0x3, 1000, 10, &ALL_NODES)),
        ],
        0,
    );
    assert_eq!(
        meta.inode(f.ino).unwrap().size,
        0,
        "size_at_least is the caller's to say"
    );
    // [0, 200) hides piece 1 entirely and piece 2 only in part.
    let size = commit(
        &meta,
        f.ino,
        vec![overlay(2, striped(0x4, 0, 200, &ALL_NODES))],
        2 * 65536 + 1010,
    )
    .size;
    assert_eq!(size, 2 * 65536 + 1010);
    assert_eq!(
        extents(&records(&meta, f.ino)[&2]),
        vec![(150, 100, 0x2), (1000, 10, 0x3), (0, 200, 0x4)]
    );
    assert_eq!(queued(&meta, 0x1), all_shards_of(&ALL_NODES));
    assert!(queued(&meta, 0x2).is_empty() && queued(&meta, 0x3).is_empty());
    // Replace releases everything.
    commit(
        &meta,
        f.ino,
        vec![replace(2, striped(0x5, 0, CHUNK_BYTES, &ALL_NODES))],
        0,
    );
    assert_eq!(extents(&records(&meta, f.ino)[&2]), vec![(0, CHUNK_BYTES, 0x5)]);
    for piece in [0x2, 0x3, 0x4] {
        assert_eq!(queued(&meta, piece), all_shards_of(&ALL_NODES));
    }
    assert_eq!(
        meta.inode(f.ino).unwrap().size,
        2 * 65536 + 1010,
        "size never shrinks on commit"
    );
    let d = dir(&meta, ROOT_INO, "d");
    assert!(matches!(
        meta.commit_write(d.ino, &[overlay(0, inline(0x9, 5))], 5, 0),
        Err(FsError::Invalid(_))
    ));
}

fn replayed_commit_keeps_its_shards(backend: Backend) {
    // A client retries a commit whose answer it lost (meta restarted after
    // the write batch): the replay must not release the piece it lays again.
    let (_store, meta) = new_meta(backend);
    let f = file(&meta, ROOT_INO, "f");
    let write = overlay(0, striped(0x77, 100, 50, &ALL_NODES));
    commit(&meta, f.ino, vec![write.clone()], 150);
    commit(&meta, f.ino, vec![write], 150);
    assert_eq!(extents(&records(&meta, f.ino)[&0]), vec![(100, 50, 0x77)]);
    assert!(queued(&meta, 0x77).is_empty());
    let whole = replace(1, striped(0x78, 0, CHUNK_BYTES, &ALL_NODES));
    commit(&meta, f.ino, vec![whole.clone()], 2 * 65536);
    commit(&meta, f.ino, vec![whole], 2 * 65536);
    assert_eq!(extents(&records(&meta, f.ino)[&1]), vec![(0, CHUNK_BYTES, 0x78)]);
    assert!(queued(&meta, 0x78).is_empty());
}

fn commit_refuses_extents_outside_chunk_or_piece(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let f = file(&meta, ROOT_INO, "f");
    commit(&meta, f.ino, vec![overlay(0, striped(0x1, 0, 100, &ALL_NODES))], 100);
    let before = records(&meta, f.ino);
    let overflowing = striped(0x2, u32::MAX - 5, 10, &ALL_NODES);
    let past_chunk = striped(0x3, CHUNK_BYTES - 5, 10, &ALL_NODES);
    let mut before_base = striped(0x4, 100, 10, &ALL_NODES);
    before_base.piece.base = 200;
    let mut past_piece = striped(0x5, 100, 10, &ALL_NODES);
    past_piece.piece.plain_len = 5;
    for bad in [overflowing, past_chunk, before_base, past_piece] {
        let id = bad.piece.id;
        // The bad write comes after a good one: the call is refused whole.
        let writes = [overlay(1, striped(0x9, 0, 10, &ALL_NODES)), overlay(0, bad)];
        assert!(
            matches!(meta.commit_write(f.ino, &writes, 1 << 20, 0), Err(FsError::Invalid(_))),
            "piece {id:x}"
        );
    }
    assert_eq!(records(&meta, f.ino), before);
    assert_eq!(meta.inode(f.ino).unwrap().size, 100);
    // An extent may show part of its piece.
    let mut window = striped(0x6, 10, 20, &ALL_NODES);
    window.piece.base = 5;
    window.piece.plain_len = 40;
    commit(&meta, f.ino, vec![overlay(0, window)], 100);
    assert_eq!(extents(&records(&meta, f.ino)[&0]), vec![(0, 100, 0x1), (10, 20, 0x6)]);
}

fn unlinked_open_file_is_an_orphan_until_released(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let f = file(&meta, ROOT_INO, "f");
    commit(
        &meta,
        f.ino,
        vec![replace(0, striped(0xE0, 0, CHUNK_BYTES, &ALL_NODES))],
        65536,
    );
    meta.open_file(f.ino, 1).unwrap();
    meta.open_file(f.ino, 2).unwrap();
    meta.open_file(f.ino, 2).unwrap();
    meta.unlink(ROOT_INO, b"f").unwrap();
    assert_eq!(meta.lookup(ROOT_INO, b"f"), Err(FsError::NotFound));
    let orphan = meta.inode(f.ino).unwrap();
    assert_eq!((orphan.nlink, orphan.size), (0, 65536));
    assert!(queued(&meta, 0xE0).is_empty());
    // Still writable through its open handle.
    commit(&meta, f.ino, vec![overlay(1, striped(0xE1, 0, 10, &ALL_NODES))], 65546);
    assert_eq!(meta.inode(f.ino).unwrap().size, 65546);
    assert_eq!(meta.status().unwrap().files, 0, "an orphan is no file of the namespace");
    meta.release_file(f.ino, 1).unwrap();
    meta.release_file(f.ino, 2).unwrap();
    assert_eq!(meta.inode(f.ino).unwrap().nlink, 0, "session 2 holds it twice");
    meta.release_file(f.ino, 2).unwrap();
    assert_eq!(meta.inode(f.ino), Err(FsError::NotFound));
    assert!(records(&meta, f.ino).is_empty());
    assert_eq!(queued(&meta, 0xE0), all_shards_of(&ALL_NODES));
    assert_eq!(queued(&meta, 0xE1), all_shards_of(&ALL_NODES));
    // A file released while still linked stays.
    let g = file(&meta, ROOT_INO, "g");
    meta.open_file(g.ino, 3).unwrap();
    meta.release_file(g.ino, 3).unwrap();
    assert_eq!(meta.inode(g.ino).unwrap().nlink, 1);
    // Renaming over an open file orphans it too.
    meta.open_file(g.ino, 4).unwrap();
    file(&meta, ROOT_INO, "h");
    meta.rename(ROOT_INO, b"h", ROOT_INO, b"g", 0).unwrap();
    assert_eq!(meta.inode(g.ino).unwrap().nlink, 0);
    meta.release_file(g.ino, 4).unwrap();
    assert_eq!(meta.inode(g.ino), Err(FsError::NotFound));
}

fn orphan_is_purged_when_meta_reopens(backend: Backend) {
    let store = Store::new(backend);
    let meta = store.open(DOWN_AFTER);
    let f = file(&meta, ROOT_INO, "f");
    let g = file(&meta, ROOT_INO, "g");
    commit(
        &meta,
        f.ino,
        vec![replace(0, striped(0xD0, 0, CHUNK_BYTES, &ALL_NODES))],
        65536,
    );
    meta.open_file(f.ino, 1).unwrap();
    meta.unlink(ROOT_INO, b"f").unwrap();
    assert_eq!(meta.inode(f.ino).unwrap().nlink, 0);
    let volume_id = meta.volume().volume_id;
    drop(meta);
    let meta = Meta::open(store.kv(), None, DOWN_AFTER).unwrap();
    assert_eq!(meta.volume().volume_id, volume_id);
    assert_eq!(meta.inode(f.ino), Err(FsError::NotFound));
    assert!(records(&meta, f.ino).is_empty());
    assert_eq!(queued(&meta, 0xD0), all_shards_of(&ALL_NODES));
    assert_eq!(meta.inode(g.ino).unwrap().nlink, 1);
    // New inodes never reuse the purged number.
    assert!(file(&meta, ROOT_INO, "new").ino > g.ino);
}

fn status_counts_with_node_liveness(backend: Backend) {
    let store = Store::new(backend);
    let down_after = Duration::from_millis(300);
    let meta = store.open(down_after);
    let node = |id: NodeId| NodeRecord {
        id,
        addr: format!("127.0.0.1:{}", 9000 + id),
        host: format!("host-{id}"),
        capacity_bytes: 1 << 30,
        free_bytes: 1 << 29,
        used_bytes: 0,
        shards: 0,
    };
    for id in 1..=6 {
        meta.heartbeat(&node(id)).unwrap();
    }
    let f = file(&meta, ROOT_INO, "f");
    let g = file(&meta, ROOT_INO, "g");
    file(&meta, ROOT_INO, "empty");
    let healthy = [Some(1), Some(2), Some(3), Some(4), Some(1), Some(2)];
    let unplaced = [Some(1), Some(2), Some(3), Some(4), Some(1), None];
    let unreadable = [Some(1), Some(2), Some(3), Some(5), Some(6), None];
    commit(
        &meta,
        f.ino,
        vec![
            replace(0, striped(1, 0, CHUNK_BYTES, &healthy)),
            replace(1, striped(2, 0, CHUNK_BYTES, &ALL_NODES)),
            replace(2, striped(3, 0, CHUNK_BYTES, &unplaced)),
            replace(3, striped(4, 0, CHUNK_BYTES, &unreadable)),
            // One bad extent makes its chunk as bad as it is.
            replace(4, striped(5, 0, CHUNK_BYTES, &healthy)),
            overlay(4, striped(6, 0, 10, &unreadable)),
        ],
        5 * 65536,
    );
    commit(&meta, g.ino, vec![replace(0, inline(7, 100))], 100);
    std::thread::sleep(down_after + Duration::from_millis(100));
    for id in 1..=4 {
        meta.heartbeat(&node(id)).unwrap();
    }
    let up: Vec<(NodeId, bool)> = meta.nodes().unwrap().iter().map(|n| (n.record.id, n.up)).collect();
    assert_eq!(
        up,
        vec![(1, true), (2, true), (3, true), (4, true), (5, false), (6, false)]
    );
    let status = meta.status().unwrap();
    assert_eq!((status.files, status.bytes), (3, 5 * 65536 + 100));
    assert_eq!(status.chunks_total, 6);
    assert_eq!(status.chunks_healthy, 2, "{status:?}"); // f/0 and g's inline chunk
    assert_eq!(status.chunks_degraded, 2, "{status:?}"); // f/1 (5, 6 down) and f/2 (unplaced)
    assert_eq!(status.chunks_unreadable, 2, "{status:?}"); // f/3 and f/4
                                                           // Usable space counts the nodes that are up, k of every k + m bytes.
    let statfs = meta.stat_fs().unwrap();
    assert_eq!(statfs.capacity_bytes, (4u64 << 30) / 6 * 4);
    assert_eq!(statfs.free_bytes, (4u64 << 29) / 6 * 4);
}

/// A repair commits new shard locations only while the record still holds
/// the piece with each shard where the plan found it; otherwise the rebuilt
/// copies are orphans and go to the GC queue.
fn commit_repair_moves_shards_or_drops_a_raced_repair(backend: Backend) {
    let store = Store::new(backend);
    let meta = store.open(DOWN_AFTER);
    let f = file(&meta, ROOT_INO, "f");
    let unplaced = [Some(1), Some(2), Some(3), Some(4), Some(5), None];
    commit(
        &meta,
        f.ino,
        vec![replace(0, striped(1, 0, CHUNK_BYTES, &unplaced))],
        65536,
    );
    let moves = [
        ShardMove {
            shard_index: 2,
            from: Some(3),
            to: 7,
        },
        ShardMove {
            shard_index: 5,
            from: None,
            to: 6,
        },
    ];
    assert!(meta.commit_repair(f.ino, 0, 1, &moves).unwrap());
    let shard_nodes = |meta: &Meta| -> Vec<Option<NodeId>> {
        match &records(meta, f.ino)[&0].extents[0].piece.body {
            PieceBody::Striped { shards, .. } => shards.iter().map(|s| s.node).collect(),
            PieceBody::Inline { .. } => panic!("striped piece expected"),
        }
    };
    assert_eq!(
        shard_nodes(&meta),
        vec![Some(1), Some(2), Some(7), Some(4), Some(5), Some(6)]
    );
    assert_eq!(queued(&meta, 1), vec![(3, 2)], "the old location is collected");
    // The plan saw shard 0 on node 1; it is not there any more (say, a
    // second repair moved it): nothing changes, the rebuilt copy is queued.
    let stale = [ShardMove {
        shard_index: 0,
        from: Some(9),
        to: 8,
    }];
    assert!(!meta.commit_repair(f.ino, 0, 1, &stale).unwrap());
    assert_eq!(shard_nodes(&meta)[0], Some(1));
    assert_eq!(queued(&meta, 1), vec![(3, 2), (8, 0)]);
    // A client replaced the chunk: the repair of the old piece is dropped.
    commit(
        &meta,
        f.ino,
        vec![replace(0, striped(2, 0, CHUNK_BYTES, &ALL_NODES))],
        65536,
    );
    let late = [ShardMove {
        shard_index: 1,
        from: Some(2),
        to: 8,
    }];
    assert!(!meta.commit_repair(f.ino, 0, 1, &late).unwrap());
    assert_eq!(extents(&records(&meta, f.ino)[&0]), vec![(0, CHUNK_BYTES, 2)]);
    assert!(queued(&meta, 1).contains(&(8, 1)));
    // An in-place rewrite (a corrupt shard) queues nothing of its own.
    let before = queued(&meta, 2);
    let in_place = [ShardMove {
        shard_index: 3,
        from: Some(4),
        to: 4,
    }];
    assert!(meta.commit_repair(f.ino, 0, 2, &in_place).unwrap());
    assert_eq!(queued(&meta, 2), before);
}

/// A node is shown down after a short silence, but lost (its shards
/// rebuilt) only past the grace period; a node never heard from since meta
/// started counts as silent since then.
fn grace_period_separates_down_from_lost(backend: Backend) {
    let store = Store::new(backend);
    let grace = Duration::from_millis(600);
    let meta = store.open(Duration::from_millis(200)).with_heal(HealSettings {
        grace_period: grace,
        rebuild_bytes_per_s: 1,
        ..HealSettings::default()
    });
    let node = |id: NodeId| NodeRecord {
        id,
        addr: format!("127.0.0.1:{}", 9000 + id),
        host: format!("host-{id}"),
        capacity_bytes: 1 << 30,
        free_bytes: 1 << 29,
        used_bytes: 0,
        shards: 0,
    };
    meta.heartbeat(&node(1)).unwrap();
    meta.heartbeat(&node(2)).unwrap();
    let state = |meta: &Meta| -> Vec<(NodeId, bool, bool)> {
        meta.node_health()
            .unwrap()
            .into_iter()
            .map(|(n, _)| (n.id, n.reachable, n.lost))
            .collect()
    };
    assert_eq!(state(&meta), vec![(1, true, false), (2, true, false)]);
    std::thread::sleep(Duration::from_millis(300));
    meta.heartbeat(&node(1)).unwrap();
    assert_eq!(state(&meta), vec![(1, true, false), (2, false, false)]);
    assert!(!meta.nodes().unwrap()[1].up);
    assert!(meta.rebuild_status().unwrap().nodes_lost.is_empty());
    std::thread::sleep(Duration::from_millis(400));
    meta.heartbeat(&node(1)).unwrap();
    assert_eq!(state(&meta), vec![(1, true, false), (2, false, true)]);
    assert_eq!(meta.rebuild_status().unwrap().nodes_lost, vec![2]);
    // Back before anything else happened: reachable, not lost.
    meta.heartbeat(&node(2)).unwrap();
    assert_eq!(state(&meta), vec![(1, true, false), (2, true, false)]);
    // Reopened, meta has heard from no one yet: not lost until the grace
    // period has passed since the start.
    drop(meta);
    let meta = store.open(Duration::from_millis(200)).with_heal(HealSettings {
        grace_period: grace,
        rebuild_bytes_per_s: 1,
        ..HealSettings::default()
    });
    assert_eq!(state(&meta), vec![(1, false, false), (2, false, false)]);
}

/// A drained node leaves the registry only once no record names it; its
/// queued deletions go with it, and its heartbeats are refused from then on.
fn remove_node_waits_for_the_drain(backend: Backend) {
    let store = Store::new(backend);
    let meta = store.open(DOWN_AFTER);
    let node = |id: NodeId| NodeRecord {
        id,
        addr: format!("127.0.0.1:{}", 9000 + id),
        host: format!("host-{id}"),
        capacity_bytes: 1 << 30,
        free_bytes: 1 << 29,
        used_bytes: 0,
        shards: 0,
    };
    for id in 1..=7 {
        meta.heartbeat(&node(id)).unwrap();
    }
    assert_eq!(meta.drain(9), Err(FsError::NotFound));
    assert_eq!(meta.remove_node(9), Err(FsError::NotFound));
    // Node 5 holds nothing yet, but an active node may be taking a write's
    // shard right now: it is drained first.
    assert!(matches!(meta.remove_node(5), Err(FsError::Invalid(_))));
    let f = file(&meta, ROOT_INO, "f");
    commit(
        &meta,
        f.ino,
        vec![replace(0, striped(1, 0, CHUNK_BYTES, &ALL_NODES))],
        65536,
    );
    meta.drain(3).unwrap();
    assert_eq!(meta.draining_nodes().unwrap(), vec![3]);
    let health: Vec<(NodeId, bool)> = meta
        .node_health()
        .unwrap()
        .into_iter()
        .map(|(n, _)| (n.id, n.draining))
        .collect();
    assert_eq!(health[2], (3, true));
    assert_eq!(meta.remove_node(3), Err(FsError::NotEmpty), "a record names node 3");
    let member = |meta: &Meta, id: NodeId| meta.members().unwrap().into_iter().find(|m| m.record.id == id);
    let three = member(&meta, 3).unwrap();
    assert_eq!(
        (three.draining, three.shards_referenced, three.shards_queued_for_gc),
        (true, 1, 0)
    );
    // The heal service moved the shard to node 7: the old one is queued.
    let moved = [ShardMove {
        shard_index: 2,
        from: Some(3),
        to: 7,
    }];
    assert!(meta.commit_repair(f.ino, 0, 1, &moved).unwrap());
    let three = member(&meta, 3).unwrap();
    assert_eq!((three.shards_referenced, three.shards_queued_for_gc), (0, 1));
    assert_eq!(member(&meta, 7).unwrap().shards_referenced, 1);
    meta.remove_node(3).unwrap();
    assert!(member(&meta, 3).is_none());
    assert!(meta.draining_nodes().unwrap().is_empty());
    assert!(queued(&meta, 1).is_empty(), "the removed node's deletions are dropped");
    assert!(meta.heartbeat(&node(3)).is_err(), "a removed node does not come back");
    assert!(member(&meta, 3).is_none());
    // Node 4 was never drained: refused; drained but still named: refused.
    assert!(matches!(meta.remove_node(4), Err(FsError::Invalid(_))));
    meta.drain(4).unwrap();
    assert_eq!(meta.remove_node(4), Err(FsError::NotEmpty));
    // A write that chose node 3 before it was removed commits late: healing
    // rebuilds that shard elsewhere and queues no deletion on the gone node.
    let g = file(&meta, ROOT_INO, "g");
    commit(
        &meta,
        g.ino,
        vec![replace(0, striped(2, 0, CHUNK_BYTES, &ALL_NODES))],
        65536,
    );
    let rebuilt = [ShardMove {
        shard_index: 2,
        from: Some(3),
        to: 7,
    }];
    assert!(meta.commit_repair(g.ino, 0, 2, &rebuilt).unwrap());
    assert!(queued(&meta, 2).is_empty());
}

fn envelope(epoch: u32, tag: u8) -> KeyEnvelope {
    KeyEnvelope {
        policy_id: 0,
        epoch,
        recipients: vec![EnvelopeRecipient {
            machine: "cn=ws-alpha".into(),
            recipient: "age1example".into(),
        }],
        age: vec![tag; 40],
    }
}

/// A name as `storage::names` seals it: version byte, tag, ciphertext.
fn sealed(tag: u8) -> Vec<u8> {
    let mut name = vec![sohofs_storage::names::SEALED_VERSION];
    name.extend_from_slice(&[tag; 20]);
    name
}

fn keyed(mut extent: Extent, policy: u64, epoch: u32) -> Extent {
    extent.piece.key_id = policy;
    extent.piece.key_epoch = epoch;
    extent
}

fn protected_directories_keep_their_keys_and_their_names_sealed(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let finance = dir(&meta, ROOT_INO, "finance");
    let full = dir(&meta, ROOT_INO, "full");
    file(&meta, full.ino, "inside");
    assert_eq!(
        meta.protect(full.ino, "cn=g".into(), envelope(1, 1), envelope(0, 2))
            .unwrap_err(),
        FsError::NotEmpty,
        "what is inside is under the volume key"
    );
    let policy = meta
        .protect(finance.ino, "cn=finance".into(), envelope(9, 1), envelope(9, 2))
        .unwrap();
    assert_eq!((policy.current_epoch, policy.live_epochs.clone()), (1, vec![1]));
    assert_eq!(meta.inode(finance.ino).unwrap().policy, policy.id);
    assert_eq!(
        meta.protect(finance.ino, "cn=finance".into(), envelope(1, 1), envelope(0, 2))
            .unwrap_err(),
        FsError::Exists
    );
    let stored: Vec<(u64, u32, u8)> = meta
        .envelopes(policy.id)
        .unwrap()
        .iter()
        .map(|e| (e.policy_id, e.epoch, e.age[0]))
        .collect();
    assert_eq!(
        stored,
        vec![(policy.id, 0, 2), (policy.id, 1, 1)],
        "meta numbers the envelopes"
    );
    assert_eq!(meta.policies().unwrap(), vec![policy.clone()]);

    // Entries of a protected directory are sealed: a plain name comes from
    // a client that has not seen the protect yet.
    let new = new_inode(FileKind::File, 0o600, 1, 1);
    assert_eq!(
        meta.create(finance.ino, b"plain.txt", &new).unwrap_err(),
        FsError::Stale
    );
    let inside = meta.create(finance.ino, &sealed(1), &new).unwrap();
    assert_eq!(inside.policy, policy.id, "children inherit the policy");
    let sub = meta
        .create(finance.ino, &sealed(2), &new_inode(FileKind::Dir, 0o700, 1, 1))
        .unwrap();
    assert_eq!(sub.policy, policy.id);
    // Leaving the policy, by link or rename, is a cross-device move.
    assert_eq!(
        meta.link(inside.ino, ROOT_INO, b"out").unwrap_err(),
        FsError::CrossDevice
    );
    assert_eq!(
        meta.rename(finance.ino, &sealed(1), ROOT_INO, b"out", 0).unwrap_err(),
        FsError::CrossDevice
    );
    let outside = file(&meta, ROOT_INO, "outside");
    assert_eq!(
        meta.rename(ROOT_INO, b"outside", finance.ino, &sealed(3), 0)
            .unwrap_err(),
        FsError::CrossDevice
    );
    meta.rename(finance.ino, &sealed(1), sub.ino, &sealed(4), 0).unwrap();
    // The protected directory itself moves anywhere and keeps its key; a
    // directory below it does not leave.
    let elsewhere = dir(&meta, ROOT_INO, "elsewhere");
    meta.rename(ROOT_INO, b"finance", elsewhere.ino, b"ledgers", 0).unwrap();
    assert_eq!(meta.lookup(elsewhere.ino, b"ledgers").unwrap().policy, policy.id);
    meta.rename(elsewhere.ino, b"ledgers", ROOT_INO, b"finance", 0).unwrap();
    assert_eq!(
        meta.rename(finance.ino, &sealed(2), ROOT_INO, b"sub", 0).unwrap_err(),
        FsError::CrossDevice
    );

    // Data must be sealed under the file's policy at its current epoch.
    let under = |epoch| keyed(inline(11, 10), policy.id, epoch);
    assert!(matches!(
        meta.commit_write(outside.ino, &[replace(0, under(1))], 10, 0),
        Err(FsError::Invalid(_))
    ));
    assert!(matches!(
        meta.commit_write(inside.ino, &[replace(0, inline(12, 10))], 10, 0),
        Err(FsError::Invalid(_))
    ));
    commit(&meta, inside.ino, vec![replace(0, under(1))], 10);

    // A revoke: epoch 2 becomes current; epoch 1 pieces stay readable.
    let mut next = envelope(2, 3);
    next.policy_id = policy.id;
    assert_eq!(
        meta.put_envelope(next.clone(), 0).unwrap_err(),
        FsError::Stale,
        "wrong expected epoch"
    );
    let policy2 = meta.put_envelope(next, 1).unwrap();
    assert_eq!((policy2.current_epoch, policy2.live_epochs.clone()), (2, vec![1, 2]));
    assert_eq!(
        meta.commit_write(inside.ino, &[overlay(0, under(1))], 10, 0)
            .unwrap_err(),
        FsError::Stale,
        "nothing new is sealed under the revoked epoch"
    );
    assert_eq!(
        meta.drop_epoch(policy.id, 1).unwrap_err(),
        FsError::NotEmpty,
        "a piece is still under it"
    );

    // The rekey replaces the record only if nobody changed it meanwhile.
    let rekeyed = keyed(inline(13, 10), policy.id, 2);
    assert!(!meta.rekey_chunk(inside.ino, 0, &[99], vec![rekeyed.clone()]).unwrap());
    assert_eq!(meta.read_chunks(inside.ino, 0, 1).unwrap()[0].1.extents[0].piece.id, 11);
    assert!(meta.rekey_chunk(inside.ino, 0, &[11], vec![rekeyed]).unwrap());
    assert_eq!(
        meta.read_chunks(inside.ino, 0, 1).unwrap()[0].1.extents[0]
            .piece
            .key_epoch,
        2
    );
    assert_eq!(meta.policy_files(policy.id, 0, 100).unwrap(), vec![inside.ino]);
    let dropped = meta.drop_epoch(policy.id, 1).unwrap();
    assert_eq!(dropped.live_epochs, vec![2]);
    let epochs: Vec<u32> = meta.envelopes(policy.id).unwrap().iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, vec![0, 2], "epoch 1's key is destroyed; the name key stays");
    assert!(matches!(meta.drop_epoch(policy.id, 2), Err(FsError::Invalid(_))));
    assert!(matches!(meta.drop_epoch(policy.id, 0), Err(FsError::Invalid(_))));

    // The standard tier: the volume key's one envelope (policy 0, epoch 0),
    // replaced whole; no policy record.
    assert_eq!(meta.envelopes(0).unwrap(), vec![], "none before a sync");
    meta.put_envelope(envelope(0, 5), 0).unwrap();
    meta.put_envelope(envelope(0, 6), 0).unwrap();
    let volume: Vec<(u64, u32, u8)> = meta
        .envelopes(0)
        .unwrap()
        .iter()
        .map(|e| (e.policy_id, e.epoch, e.age[0]))
        .collect();
    assert_eq!(volume, vec![(0, 0, 6)]);
    assert!(matches!(meta.put_envelope(envelope(1, 7), 0), Err(FsError::Invalid(_))));
    assert_eq!(
        meta.policies().unwrap().len(),
        1,
        "the standard tier has no policy record"
    );

    // Removing the emptied protected directory forgets its policy and
    // destroys its keys.
    meta.unlink(sub.ino, &sealed(4)).unwrap();
    meta.rmdir(finance.ino, &sealed(2)).unwrap();
    assert_eq!(
        meta.policies().unwrap().len(),
        1,
        "a directory below is not the policy's root"
    );
    meta.rmdir(ROOT_INO, b"finance").unwrap();
    assert_eq!(meta.policies().unwrap(), vec![]);
    assert_eq!(meta.envelopes(policy.id).unwrap_err(), FsError::NotFound);
    assert_eq!(meta.envelopes(0).unwrap().len(), 1, "the volume key's envelope stays");
}

fn sizes_past_off_t_are_refused_and_big_files_are_counted(backend: Backend) {
    let (_store, meta) = new_meta(backend);
    let size = |n: u64| SetAttr {
        size: Some(n),
        ..SetAttr::default()
    };
    let a = file(&meta, ROOT_INO, "a");
    let b = file(&meta, ROOT_INO, "b");
    assert_eq!(meta.set_attr(a.ino, &size(u64::MAX)).unwrap_err(), FsError::TooBig);
    assert_eq!(meta.set_attr(a.ino, &size(1 << 63)).unwrap_err(), FsError::TooBig);
    assert_eq!(meta.inode(a.ino).unwrap().size, 0, "nothing changed");
    meta.set_attr(a.ino, &size(i64::MAX as u64)).unwrap();
    meta.set_attr(b.ino, &size(i64::MAX as u64)).unwrap();
    let status = meta.status().unwrap();
    assert_eq!(status.files, 2);
    assert_eq!(status.bytes, u64::MAX - 1, "two files of off_t's maximum");
}

macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $case() { super::$case(super::Backend::Memory) })*
        }
        mod rocksdb {
            $(#[test] fn $case() { super::$case(super::Backend::Rocks) })*
        }
    };
}

both_stores!(
    sizes_past_off_t_are_refused_and_big_files_are_counted,
    create_lookup_getattr,
    mkdir_nlink_counts,
    setgid_directory_inheritance,
    names_are_checked,
    unlink_and_rmdir_errors,
    rename_over_existing_file,
    rename_directories,
    rename_hard_link_onto_sibling_is_a_no_op,
    parent_nlink_after_cross_directory_moves,
    hard_links,
    readdir_pages_in_sequence_order,
    readdir_during_recreate_lists_no_entry_twice,
    readdir_page_of_vanished_entries_is_not_the_end,
    readdir_under_concurrent_churn,
    xattr_flags,
    setattr_shrink_trims_and_grow_reads_zeros,
    commit_overlay_releases_hidden_extents,
    replayed_commit_keeps_its_shards,
    commit_refuses_extents_outside_chunk_or_piece,
    unlinked_open_file_is_an_orphan_until_released,
    orphan_is_purged_when_meta_reopens,
    status_counts_with_node_liveness,
    commit_repair_moves_shards_or_drops_a_raced_repair,
    grace_period_separates_down_from_lost,
    remove_node_waits_for_the_drain,
    protected_directories_keep_their_keys_and_their_names_sealed,
);
