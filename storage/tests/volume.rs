//! The client volume API against an in-process cluster: a meta service and
//! six nodes (one host each, shards on disk in temporary directories) run as
//! tokio tasks; a node is "switched off" by aborting its task. Data read back
//! is checked byte for byte against an in-memory model of each file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sohofs_format::{ChunkRecord, Ino, PieceBody, SHARD_HEADER_BYTES};
use sohofs_storage::codec::DataKey;
use sohofs_storage::kv::{KvStore, MemKv, RocksKv};
use sohofs_storage::meta::{self, Meta, VolumeParams};
use sohofs_storage::node::{self, NodeConfig};
use sohofs_storage::shard_store::DiskShardStore;
use sohofs_storage::volume::{SetAttr, Volume, VolumeConfig, ROOT_INO};
use sohofs_storage::FsError;
use tokio::task::JoinHandle;

const CHUNK: u32 = 64 * 1024;
const NODES: u64 = 6;
/// Most extents a chunk record may hold: the fold bound, plus one per span
/// that may be in flight when the fold is decided.
const EXTENTS_BOUND: usize =
    sohofs_storage::volume::EXTENTS_PER_CHUNK_MAX + sohofs_storage::volume::SPANS_IN_FLIGHT_MAX;
/// Meta shows a node down this long after its last heartbeat (1 s apart).
const DOWN_AFTER: Duration = Duration::from_secs(3);

/// A port that was free a moment ago. The services bind by address, so the
/// test picks the port and lets the listener go just before they bind it.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

struct TestNode {
    id: u64,
    dir: tempfile::TempDir,
    addr: String,
    task: JoinHandle<std::io::Result<()>>,
}

struct Cluster {
    meta: Arc<Meta>,
    meta_addr: String,
    meta_task: JoinHandle<std::io::Result<()>>,
    _meta_dir: tempfile::TempDir,
    nodes: Vec<TestNode>,
    key: DataKey,
}

#[derive(Clone, Copy)]
enum MetaStore {
    Memory,
    Rocks,
}

impl Cluster {
    async fn start(store: MetaStore) -> Cluster {
        let meta_dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn KvStore> = match store {
            MetaStore::Memory => Arc::new(MemKv::default()),
            MetaStore::Rocks => Arc::new(RocksKv::open(&meta_dir.path().join("db")).unwrap()),
        };
        let params = VolumeParams {
            data_shards: 4,
            parity_shards: 2,
            write_quorum: 5,
            chunk_bytes: CHUNK,
            inline_bytes_max: 2048,
        };
        let meta = Arc::new(Meta::open(kv, Some(params), DOWN_AFTER).unwrap());
        let meta_addr = free_addr();
        let meta_task = tokio::spawn({
            let meta = meta.clone();
            let addr = meta_addr.clone();
            async move { meta::run_meta(meta, &addr).await }
        });
        let mut cluster = Cluster {
            meta,
            meta_addr,
            meta_task,
            _meta_dir: meta_dir,
            nodes: Vec::new(),
            key: DataKey::generate(),
        };
        for id in 1..=NODES {
            let dir = tempfile::tempdir().unwrap();
            let addr = free_addr();
            let task = cluster.spawn_node(id, dir.path(), &addr);
            cluster.nodes.push(TestNode { id, dir, addr, task });
        }
        cluster.wait_up(NODES as usize).await;
        cluster
    }

    fn spawn_node(&self, id: u64, dir: &Path, addr: &str) -> JoinHandle<std::io::Result<()>> {
        let store = Arc::new(DiskShardStore::open(dir).unwrap());
        let config = NodeConfig {
            id,
            listen: addr.to_string(),
            advertise: addr.to_string(),
            host: format!("host-{id}"),
            meta_addrs: vec![self.meta_addr.clone()],
        };
        tokio::spawn(node::run_node(config, store))
    }

    /// Waits until meta shows `count` nodes up.
    async fn wait_up(&self, count: usize) {
        // Heartbeats every second; generous for a loaded 2-core machine
        // (seen once: 5 of 6 up after 10 s while another build ran).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = self.meta.nodes().unwrap().iter().filter(|n| n.up).count();
            if up == count {
                return;
            }
            assert!(Instant::now() < deadline, "{up} of {count} nodes up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn volume(&self) -> Volume {
        Volume::connect(VolumeConfig {
            meta_addrs: vec![self.meta_addr.clone()],
            data_key: self.key.clone(),
            opener: None,
        })
        .await
        .unwrap()
    }

    /// Switches a node off: its listener and every connection close.
    async fn stop_node(&self, id: u64) {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        node.task.abort();
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(&node.addr).await.is_ok() {
            assert!(Instant::now() < deadline, "node {id} still accepts connections");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn shard_path(&self, node_id: u64, piece_id: u128, index: usize) -> PathBuf {
        let node = self.nodes.iter().find(|n| n.id == node_id).unwrap();
        let hex = format!("{piece_id:032x}");
        node.dir
            .path()
            .join("shards")
            .join(&hex[..2])
            .join(format!("{hex}.{index}"))
    }

    /// Shard files on all nodes.
    fn shard_files(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| count_files(&n.dir.path().join("shards")))
            .sum()
    }

    fn records(&self, ino: Ino) -> Vec<(u64, ChunkRecord)> {
        self.meta.read_chunks(ino, 0, 256).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.meta_task.abort();
        for node in &self.nodes {
            node.task.abort();
        }
    }
}

fn count_files(dir: &Path) -> usize {
    let Ok(buckets) = std::fs::read_dir(dir) else { return 0 };
    buckets
        .flatten()
        .map(|bucket| std::fs::read_dir(bucket.path()).map_or(0, |files| files.count()))
        .sum()
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

#[track_caller]
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: {} bytes read, {} expected; first difference at {first:?}",
        got.len(),
        want.len()
    );
}

/// Reads `len` bytes at `offset` in reads of at most `step` bytes.
async fn read_range(volume: &Volume, ino: Ino, offset: u64, len: u64) -> Result<Vec<u8>, FsError> {
    const STEP: u64 = 200 * 1024;
    let mut out = Vec::new();
    let mut at = offset;
    while at < offset + len {
        let want = STEP.min(offset + len - at) as u32;
        let got = volume.read(ino, at, want).await?;
        let short = got.len() < want as usize;
        at += got.len() as u64;
        out.extend_from_slice(&got);
        if short {
            break;
        }
    }
    Ok(out)
}

async fn read_all(volume: &Volume, ino: Ino) -> Vec<u8> {
    let size = volume.getattr(ino).await.unwrap().size;
    read_range(volume, ino, 0, size + 1000).await.unwrap()
}

/// A file as it should read: the model the volume is checked against.
struct Model {
    data: Vec<u8>,
}

impl Model {
    fn write(&mut self, offset: usize, bytes: &[u8]) {
        if self.data.len() < offset + bytes.len() {
            self.data.resize(offset + bytes.len(), 0);
        }
        self.data[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn read(&self, offset: usize, len: usize) -> &[u8] {
        let end = (offset + len).min(self.data.len());
        &self.data[offset.min(end)..end]
    }
}

async fn create(volume: &Volume, name: &str) -> Ino {
    volume
        .create(ROOT_INO, name.as_bytes(), 0o644, 1000, 1000)
        .await
        .unwrap()
        .ino
}

async fn write_file(volume: &Volume, name: &str, data: &[u8]) -> Ino {
    let ino = create(volume, name).await;
    // Unaligned pieces, so that spans cross chunk boundaries.
    let mut at = 0;
    for piece in data.chunks(50_000) {
        assert_eq!(volume.write(ino, at as u64, piece).await.unwrap(), piece.len());
        at += piece.len();
    }
    volume.release(ino).await.unwrap();
    ino
}

async fn truncate(volume: &Volume, ino: Ino, size: u64) {
    let attr = volume
        .setattr(
            ino,
            SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(attr.size, size);
}

async fn random_io_matches_model(store: MetaStore, seed: u64) {
    let cluster = Cluster::start(store).await;
    let writer = cluster.volume().await;
    let reader = cluster.volume().await;
    let mut rng = StdRng::seed_from_u64(seed);
    let ino = create(&writer, "model").await;
    let mut model = Model { data: Vec::new() };
    let chunk = CHUNK as usize;
    for step in 0..160 {
        let size = model.data.len();
        let roll = rng.gen_range(0..100);
        let context = format!("seed {seed} step {step}");
        match roll {
            0..=29 => {
                // Anywhere up to a chunk past the end (a sparse hole), often
                // across a chunk boundary, sometimes tiny.
                let offset = rng.gen_range(0..=size + chunk);
                let len = if rng.gen_bool(0.3) {
                    rng.gen_range(1..=300)
                } else {
                    rng.gen_range(1..=chunk * 3 / 2)
                };
                let bytes = random_bytes(&mut rng, len);
                writer.write(ino, offset as u64, &bytes).await.unwrap();
                model.write(offset, &bytes);
            }
            30..=39 => {
                let len = rng.gen_range(1..=chunk / 2);
                let bytes = random_bytes(&mut rng, len);
                writer.write(ino, size as u64, &bytes).await.unwrap();
                model.write(size, &bytes);
            }
            40..=47 => {
                let new_size = if size > 24 * chunk {
                    rng.gen_range(0..=size / 2)
                } else {
                    rng.gen_range(0..=size + 2 * chunk)
                };
                truncate(&writer, ino, new_size as u64).await;
                model.data.resize(new_size, 0);
            }
            48..=77 => {
                let offset = rng.gen_range(0..=size + 100);
                let len = rng.gen_range(1..=2 * chunk);
                let got = writer.read(ino, offset as u64, len as u32).await.unwrap();
                assert_same(
                    &format!("{context}: read {len} at {offset}"),
                    &got,
                    model.read(offset, len),
                );
            }
            78..=82 => writer.flush(ino).await.unwrap(),
            83..=90 => {
                writer.release(ino).await.unwrap();
                writer.open(ino).await.unwrap();
                assert_eq!(writer.getattr(ino).await.unwrap().size, size as u64, "{context}");
                assert_same(
                    &format!("{context}: after reopen"),
                    &read_all(&writer, ino).await,
                    &model.data,
                );
            }
            _ => {
                // Close-to-open: what one client fsynced, another sees on open.
                writer.fsync(ino).await.unwrap();
                reader.open(ino).await.unwrap();
                assert_eq!(reader.getattr(ino).await.unwrap().size, size as u64, "{context}");
                assert_same(
                    &format!("{context}: second client"),
                    &read_all(&reader, ino).await,
                    &model.data,
                );
                reader.release(ino).await.unwrap();
            }
        }
    }
    writer.release(ino).await.unwrap();
    let fresh = cluster.volume().await;
    fresh.open(ino).await.unwrap();
    assert_same("fresh client at the end", &read_all(&fresh, ino).await, &model.data);
    fresh.release(ino).await.unwrap();
    // Records never reach past the size, and hold no more extents than a
    // fold allows.
    for (index, record) in cluster.records(ino) {
        assert!(
            index * (CHUNK as u64) < model.data.len() as u64,
            "chunk {index} past the end"
        );
        assert!(
            record.extents.len() <= EXTENTS_BOUND,
            "{} extents",
            record.extents.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_io_matches_model_rocksdb() {
    random_io_matches_model(MetaStore::Rocks, 0x5eed_0001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_io_matches_model_memory() {
    random_io_matches_model(MetaStore::Memory, 0x5eed_0002).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_at_once_sees_the_write() {
    // Full chunks start flushing at once; a read right after must see them
    // whether their commit has landed yet or not.
    let cluster = Cluster::start(MetaStore::Memory).await;
    let volume = cluster.volume().await;
    let mut rng = StdRng::seed_from_u64(7);
    let ino = create(&volume, "f").await;
    let mut model = Model { data: Vec::new() };
    for round in 0..30 {
        let index = rng.gen_range(0..4u64);
        let bytes = random_bytes(&mut rng, CHUNK as usize);
        let offset = (index * CHUNK as u64) as usize;
        volume.write(ino, offset as u64, &bytes).await.unwrap();
        model.write(offset, &bytes);
        let got = volume.read(ino, offset as u64, CHUNK).await.unwrap();
        assert_same(&format!("round {round}"), &got, model.read(offset, CHUNK as usize));
    }
    volume.release(ino).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_files_stay_inline() {
    let cluster = Cluster::start(MetaStore::Memory).await;
    let volume = cluster.volume().await;
    let files_before = cluster.shard_files();
    let small = b"a small file, kept in its record".to_vec();
    let ino = write_file(&volume, "small", &small).await;
    let empty = write_file(&volume, "empty", b"").await;
    let records = cluster.records(ino);
    assert_eq!(records.len(), 1);
    assert!(matches!(records[0].1.extents[0].piece.body, PieceBody::Inline { .. }));
    assert!(cluster.records(empty).is_empty());
    assert_eq!(cluster.shard_files(), files_before, "no shard for an inline file");
    let other = cluster.volume().await;
    other.open(ino).await.unwrap();
    assert_same("inline", &read_all(&other, ino).await, &small);
    assert_eq!(other.read(ino, 4, 3).await.unwrap(), b"all");
    other.release(ino).await.unwrap();
    assert_eq!(other.getattr(empty).await.unwrap().size, 0);
    assert!(other.read(empty, 0, 10).await.unwrap().is_empty());
    // Growing it past the inline bound puts the rest on nodes.
    volume.open(ino).await.unwrap();
    let mut model = Model { data: small.clone() };
    let tail = vec![9u8; 5000];
    volume.write(ino, small.len() as u64, &tail).await.unwrap();
    model.write(small.len(), &tail);
    volume.release(ino).await.unwrap();
    assert!(cluster.shard_files() > files_before);
    other.open(ino).await.unwrap();
    assert_same("grown", &read_all(&other, ino).await, &model.data);
    other.release(ino).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_overlays_on_one_chunk_fold() {
    let cluster = Cluster::start(MetaStore::Memory).await;
    let volume = cluster.volume().await;
    let mut rng = StdRng::seed_from_u64(11);
    let ino = create(&volume, "f").await;
    let mut model = Model { data: Vec::new() };
    let base = CHUNK as usize; // chunk 1: never inline
    let first = random_bytes(&mut rng, CHUNK as usize);
    volume.write(ino, base as u64, &first).await.unwrap();
    model.write(base, &first);
    volume.flush(ino).await.unwrap();
    // 40 small writes apart from each other: each is its own extent.
    for i in 0..40 {
        let offset = base + i * 1500 + rng.gen_range(0..500);
        let bytes = random_bytes(&mut rng, 300);
        volume.write(ino, offset as u64, &bytes).await.unwrap();
        model.write(offset, &bytes);
    }
    volume.release(ino).await.unwrap();
    let records = cluster.records(ino);
    assert_eq!(records.len(), 1);
    let (index, record) = &records[0];
    assert_eq!(*index, 1);
    // Folded: the fold decision sees the record as of the last completed
    // flush, so the spans still in flight may each add one extent past the
    // bound before the next fold.
    assert!(
        record.extents.len() <= EXTENTS_BOUND,
        "{} extents",
        record.extents.len()
    );
    let other = cluster.volume().await;
    other.open(ino).await.unwrap();
    assert_same("folded chunk", &read_all(&other, ino).await, &model.data);
    other.release(ino).await.unwrap();
    // The pieces a fold replaced are collected: only the live ones' shards
    // stay on the nodes.
    let live: Vec<u128> = record.extents.iter().map(|e| e.piece.id).collect();
    assert!(cluster
        .meta
        .gc_batch()
        .unwrap()
        .iter()
        .all(|(_, gc)| !live.contains(&gc.piece_id)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.shard_files() != 6 * live.len() {
        assert!(
            Instant::now() < deadline,
            "{} shard files for {} pieces",
            cluster.shard_files(),
            live.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn file_of_chunks(cluster: &Cluster, name: &str, chunks: usize, seed: u64) -> (Ino, Vec<u8>) {
    let volume = cluster.volume().await;
    let data = random_bytes(&mut StdRng::seed_from_u64(seed), chunks * CHUNK as usize + 777);
    let ino = write_file(&volume, name, &data).await;
    (ino, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_two_nodes_down_and_fail_cleanly_with_three() {
    let cluster = Cluster::start(MetaStore::Rocks).await;
    let volume = cluster.volume().await;
    let data = random_bytes(&mut StdRng::seed_from_u64(3), 5 * CHUNK as usize + 777);
    let ino = write_file(&volume, "f", &data).await;
    // The same client keeps pooled connections to every node.
    volume.open(ino).await.unwrap();
    assert_same("all up", &read_all(&volume, ino).await, &data);
    volume.release(ino).await.unwrap();

    cluster.stop_node(1).await;
    cluster.stop_node(4).await;
    for client in [&volume, &cluster.volume().await] {
        client.open(ino).await.unwrap();
        assert_same("two nodes down", &read_all(client, ino).await, &data);
        client.release(ino).await.unwrap();
    }

    cluster.stop_node(6).await;
    for client in [&volume, &cluster.volume().await] {
        client.open(ino).await.unwrap();
        let started = Instant::now();
        let result = client.read(ino, 0, CHUNK).await;
        assert!(
            matches!(result, Err(FsError::Io(_) | FsError::Unavailable(_))),
            "three nodes down: {:?}",
            result.map(|bytes| bytes.len())
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        client.release(ino).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_serves_no_open_connection() {
    let cluster = Cluster::start(MetaStore::Memory).await;
    let client = sohofs_storage::peers::NodeClient::new(cluster.nodes[0].addr.clone(), Default::default());
    let key = sohofs_storage::shard_store::ShardKey {
        piece_id: 1,
        shard_index: 0,
    };
    client.put_shard(key, b"payload").await.unwrap();
    // Concurrent calls leave several connections in the client's pool.
    let gets = futures::future::join_all((0..4).map(|_| client.get_shard(key))).await;
    assert!(gets.iter().all(|got| got.as_ref().unwrap().as_ref() == b"payload"));
    cluster.stop_node(1).await;
    // Every pooled connection must be gone with the node.
    for attempt in 0..4 {
        let after = client.get_shard(key).await;
        assert!(
            matches!(after, Err(FsError::Unavailable(_))),
            "attempt {attempt}: {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_shards_are_rebuilt_from_parity() {
    let cluster = Cluster::start(MetaStore::Memory).await;
    let (ino, data) = file_of_chunks(&cluster, "f", 3, 5).await;
    let records = cluster.records(ino);
    assert_eq!(records.len(), 4);
    // Flip a byte in two data shards of every stripe: m = 2 can cover both.
    let mut flipped = 0;
    for (_, record) in &records {
        for extent in &record.extents {
            let PieceBody::Striped { shards, .. } = &extent.piece.body else {
                panic!("chunk data is striped")
            };
            for index in [0, 2] {
                let path = cluster.shard_path(shards[index].node.unwrap(), extent.piece.id, index);
                let mut bytes = std::fs::read(&path).unwrap();
                let at = SHARD_HEADER_BYTES + (bytes.len() - SHARD_HEADER_BYTES) / 2;
                bytes[at] ^= 0x40;
                std::fs::write(&path, &bytes).unwrap();
                flipped += 1;
            }
        }
    }
    assert_eq!(flipped, 8);
    let volume = cluster.volume().await;
    volume.open(ino).await.unwrap();
    assert_same("corrupt shards", &read_all(&volume, ino).await, &data);
    volume.release(ino).await.unwrap();
    // A third bad shard in one stripe is one too many: an error, never wrong bytes.
    let (_, record) = &records[0];
    let PieceBody::Striped { shards, .. } = &record.extents[0].piece.body else {
        unreachable!()
    };
    let path = cluster.shard_path(shards[5].node.unwrap(), record.extents[0].piece.id, 5);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[SHARD_HEADER_BYTES] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let fresh = cluster.volume().await;
    fresh.open(ino).await.unwrap();
    let result = fresh.read(ino, 0, 100).await;
    assert!(matches!(result, Err(FsError::Io(_))), "{:?}", result.map(|b| b.len()));
    fresh.release(ino).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_below_the_quorum_fail_and_commit_nothing() {
    let cluster = Cluster::start(MetaStore::Memory).await;
    let volume = cluster.volume().await;
    let (ino, data) = file_of_chunks(&cluster, "f", 2, 9).await;
    let before_records = cluster.records(ino);
    let before_size = cluster.meta.inode(ino).unwrap().size;
    cluster.stop_node(2).await;
    cluster.stop_node(5).await;
    let shards_before = cluster.shard_files();
    // Four hosts are left; a stripe needs five durable shards.
    volume.open(ino).await.unwrap();
    let overwrite = vec![0xAB; CHUNK as usize];
    volume.write(ino, 0, &overwrite).await.unwrap();
    volume.write(ino, data.len() as u64, &overwrite).await.unwrap();
    let error = volume.fsync(ino).await.unwrap_err();
    assert!(
        matches!(&error, FsError::Io(m) | FsError::Unavailable(m) if m.contains("quorum")),
        "{error:?}"
    );
    assert_eq!(cluster.records(ino), before_records, "nothing committed");
    assert_eq!(cluster.meta.inode(ino).unwrap().size, before_size);
    assert_eq!(cluster.shard_files(), shards_before, "no shard left behind");
    volume.release(ino).await.ok();
    let fresh = cluster.volume().await;
    fresh.open(ino).await.unwrap();
    assert_same("old data intact", &read_all(&fresh, ino).await, &data);
    fresh.release(ino).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_file_lives_while_open() {
    let cluster = Cluster::start(MetaStore::Rocks).await;
    let volume = cluster.volume().await;
    let data = random_bytes(&mut StdRng::seed_from_u64(13), 2 * CHUNK as usize + 10);
    let ino = create(&volume, "f").await;
    volume.write(ino, 0, &data).await.unwrap();
    volume.fsync(ino).await.unwrap();
    let files_with_data = cluster.shard_files();
    assert!(files_with_data >= 3 * 6);
    volume.unlink(ROOT_INO, b"f").await.unwrap();
    assert_eq!(volume.lookup(ROOT_INO, b"f").await, Err(FsError::NotFound));
    let mut model = Model { data };
    assert_same("unlinked, open", &read_all(&volume, ino).await, &model.data);
    let more = vec![5u8; CHUNK as usize];
    volume.write(ino, CHUNK as u64 / 2, &more).await.unwrap();
    model.write(CHUNK as usize / 2, &more);
    volume.fsync(ino).await.unwrap();
    assert_eq!(volume.getattr(ino).await.unwrap().nlink, 0);
    assert_same("written after unlink", &read_all(&volume, ino).await, &model.data);
    volume.release(ino).await.unwrap();
    assert_eq!(volume.getattr(ino).await, Err(FsError::NotFound));
    assert!(cluster.records(ino).is_empty());
    // The collector deletes every shard of the file from the nodes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.shard_files() > 0 {
        assert!(Instant::now() < deadline, "{} shard files left", cluster.shard_files());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_while_a_flush_commits_sees_the_write() {
    // A read that decodes a chunk's committed data while the flush of a
    // newer span of that chunk commits must still show the span.
    const CHUNKS: u64 = 4;
    let cluster = Cluster::start(MetaStore::Memory).await;
    let volume = cluster.volume().await;
    let mut rng = StdRng::seed_from_u64(19);
    let data = random_bytes(&mut rng, (CHUNKS * CHUNK as u64) as usize);
    let ino = write_file(&volume, "f", &data).await;
    let mut model = Model { data };
    for round in 0..60u64 {
        // A fresh open drops the decoded chunks: the read below decodes.
        volume.open(ino).await.unwrap();
        let index = rng.gen_range(0..CHUNKS);
        let offset = (index * CHUNK as u64) as usize;
        let bytes = random_bytes(&mut rng, CHUNK as usize);
        volume.write(ino, offset as u64, &bytes).await.unwrap();
        model.write(offset, &bytes);
        let pause = rng.gen_range(0..10_000);
        tokio::time::sleep(Duration::from_micros(pause)).await;
        let got = volume.read(ino, offset as u64, CHUNK).await.unwrap();
        assert_same(
            &format!("round {round}, after {pause} µs"),
            &got,
            model.read(offset, CHUNK as usize),
        );
        volume.release(ino).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_with_an_old_record_reads_after_its_shards_are_collected() {
    // A client opened the file before another rewrote a chunk; the
    // collector then deleted the old shards that its record still names.
    // Close-to-open lets it read old or new bytes -- not fail.
    let cluster = Cluster::start(MetaStore::Memory).await;
    let (ino, mut data) = file_of_chunks(&cluster, "f", 4, 23).await;
    let reader = cluster.volume().await;
    reader.open(ino).await.unwrap();
    assert_same(
        "chunk 0",
        &reader.read(ino, 0, CHUNK).await.unwrap(),
        &data[..CHUNK as usize],
    );
    let writer = cluster.volume().await;
    writer.open(ino).await.unwrap();
    let new_chunk = vec![0x5A; CHUNK as usize];
    let offset = 3 * CHUNK as usize;
    writer.write(ino, offset as u64, &new_chunk).await.unwrap();
    writer.release(ino).await.unwrap();
    let old_chunk = data[offset..offset + CHUNK as usize].to_vec();
    data[offset..offset + CHUNK as usize].copy_from_slice(&new_chunk);
    let live_shards = 6 * 5; // four whole chunks and a short fifth
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.shard_files() > live_shards {
        assert!(Instant::now() < deadline, "{} shard files", cluster.shard_files());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = reader.read(ino, offset as u64, CHUNK).await.unwrap();
    assert!(got == new_chunk || got == old_chunk, "neither old nor new bytes");
    reader.release(ino).await.unwrap();
    reader.open(ino).await.unwrap();
    assert_same("after reopen", &read_all(&reader, ino).await, &data);
    reader.release(ino).await.unwrap();
}
