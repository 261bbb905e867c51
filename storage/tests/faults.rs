//! The volume under injected faults, against an in-process cluster: a meta
//! service and 6 or 7 nodes (one host each) whose shard stores are
//! `FaultyShardStore`s over memory, and clients whose transport may be a
//! faulty one. Every read is checked byte for byte.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sohofs_format::{ChunkRecord, Ino, NodeId, PieceBody};
use sohofs_storage::codec::DataKey;
use sohofs_storage::fault::{self, FaultyShardStore, StoreFaults, TransportFaults};
use sohofs_storage::kv::MemKv;
use sohofs_storage::meta::{self, Meta, VolumeParams};
use sohofs_storage::node::{self, NodeConfig};
use sohofs_storage::rpc::Transport;
use sohofs_storage::shard_store::MemShardStore;
use sohofs_storage::volume::{Volume, VolumeConfig, ROOT_INO};
use sohofs_storage::FsError;
use tokio::task::JoinHandle;

const CHUNK: u32 = 64 * 1024;
const DOWN_AFTER: Duration = Duration::from_secs(3);
const STORE_BYTES: u64 = 1 << 30;

/// Failpoints are per process, and tests of one file share a process: tests
/// here take this lock so that one test's armed failpoint never hits another.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

struct TestNode {
    id: NodeId,
    addr: String,
    faults: Arc<StoreFaults>,
    task: JoinHandle<std::io::Result<()>>,
}

struct Cluster {
    meta: Arc<Meta>,
    meta_addr: String,
    meta_task: JoinHandle<std::io::Result<()>>,
    nodes: Vec<TestNode>,
    key: DataKey,
}

impl Cluster {
    /// A 4+2 volume (write quorum 5) on `nodes` nodes of one host each.
    async fn start(nodes: u64) -> Cluster {
        let params = VolumeParams {
            data_shards: 4,
            parity_shards: 2,
            write_quorum: 5,
            chunk_bytes: CHUNK,
            inline_bytes_max: 2048,
        };
        let meta = Arc::new(Meta::open(Arc::new(MemKv::default()), Some(params), DOWN_AFTER).unwrap());
        let meta_addr = free_addr();
        let meta_task = tokio::spawn({
            let (meta, addr) = (meta.clone(), meta_addr.clone());
            async move { meta::run_meta(meta, &addr).await }
        });
        let mut cluster = Cluster {
            meta,
            meta_addr,
            meta_task,
            nodes: Vec::new(),
            key: DataKey::generate(),
        };
        for id in 1..=nodes {
            let store = FaultyShardStore::new(Arc::new(MemShardStore::new(STORE_BYTES)));
            let faults = store.faults();
            let addr = free_addr();
            let config = NodeConfig {
                id,
                listen: addr.clone(),
                advertise: addr.clone(),
                host: format!("host-{id}"),
                meta_addrs: vec![cluster.meta_addr.clone()],
            };
            let task = tokio::spawn(node::run_node(config, Arc::new(store)));
            cluster.nodes.push(TestNode { id, addr, faults, task });
        }
        cluster.wait_up(nodes as usize).await;
        cluster
    }

    async fn wait_up(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = self.meta.nodes().unwrap().iter().filter(|n| n.up).count();
            if up == count {
                return;
            }
            assert!(Instant::now() < deadline, "{up} of {count} nodes up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn faults(&self, id: NodeId) -> &StoreFaults {
        &self.nodes.iter().find(|n| n.id == id).unwrap().faults
    }

    fn addr(&self, id: NodeId) -> &str {
        &self.nodes.iter().find(|n| n.id == id).unwrap().addr
    }

    async fn volume(&self) -> Volume {
        self.volume_over(Transport::default()).await
    }

    async fn volume_over(&self, transport: Transport) -> Volume {
        Volume::connect_with_transport(
            VolumeConfig {
                meta_addrs: vec![self.meta_addr.clone()],
                data_key: self.key.clone(),
                opener: None,
            },
            transport,
        )
        .await
        .unwrap()
    }

    fn records(&self, ino: Ino) -> Vec<ChunkRecord> {
        self.meta
            .read_chunks(ino, 0, 256)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// For each striped extent of the file: the node of each shard.
    fn placements(&self, ino: Ino) -> Vec<Vec<Option<NodeId>>> {
        let mut placements = Vec::new();
        for record in self.records(ino) {
            for extent in record.extents {
                if let PieceBody::Striped { shards, .. } = extent.piece.body {
                    placements.push(shards.iter().map(|s| s.node).collect());
                }
            }
        }
        placements
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

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// Writes `data` as a new file and fsyncs it; returns the first error of
/// the writes and the fsync.
async fn write_file(volume: &Volume, name: &str, data: &[u8]) -> (Ino, Result<(), FsError>) {
    let ino = volume
        .create(ROOT_INO, name.as_bytes(), 0o644, 1000, 1000)
        .await
        .unwrap()
        .ino;
    for (index, piece) in data.chunks(100_000).enumerate() {
        // A span that failed in the background is reported by a later write.
        if let Err(error) = volume.write(ino, (index * 100_000) as u64, piece).await {
            let _ = volume.release(ino).await;
            return (ino, Err(error));
        }
    }
    let synced = volume.fsync(ino).await;
    let _ = volume.release(ino).await;
    (ino, synced)
}

async fn read_all(volume: &Volume, ino: Ino) -> Result<Vec<u8>, FsError> {
    let size = volume.getattr(ino).await?.size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let got = volume.read(ino, out.len() as u64, 256 * 1024).await?;
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
    }
    Ok(out)
}

#[track_caller]
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes read, {} expected; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

const FILE_BYTES: usize = 10 * CHUNK as usize + 1234;

#[tokio::test]
async fn a_failing_store_leaves_stripes_degraded_and_readable() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(6).await;
    cluster.faults(3).fail_next(u64::MAX);
    let volume = cluster.volume().await;
    let data = random_bytes(1, FILE_BYTES);
    let (ino, synced) = write_file(&volume, "degraded", &data).await;
    synced.expect("a write with one of six stores failing succeeds at quorum 5");
    let placements = cluster.placements(ino);
    assert_eq!(placements.len(), 11);
    for shards in &placements {
        assert_eq!(shards.iter().filter(|n| n.is_none()).count(), 1, "{shards:?}");
        assert!(!shards.contains(&Some(3)), "{shards:?}");
    }
    cluster.faults(3).heal();
    assert_same(
        "degraded file",
        &read_all(&cluster.volume().await, ino).await.unwrap(),
        &data,
    );
}

#[tokio::test]
async fn a_failing_store_with_a_spare_host_leaves_nothing_degraded() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(7).await;
    cluster.faults(2).fail_next(u64::MAX);
    let volume = cluster.volume().await;
    let data = random_bytes(2, FILE_BYTES);
    let (ino, synced) = write_file(&volume, "spare", &data).await;
    synced.unwrap();
    for shards in cluster.placements(ino) {
        assert!(shards.iter().all(Option::is_some), "{shards:?}");
        assert!(!shards.contains(&Some(2)), "{shards:?}");
        let hosts: HashSet<_> = shards.iter().collect();
        assert_eq!(hosts.len(), 6, "two shards of a stripe on one node: {shards:?}");
    }
    assert_same("file", &read_all(&volume, ino).await.unwrap(), &data);
}

#[tokio::test]
async fn corrupt_shards_on_m_nodes_read_back_from_parity() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(6).await;
    let data = random_bytes(3, FILE_BYTES);
    let (ino, synced) = write_file(&cluster.volume().await, "rot", &data).await;
    synced.unwrap();
    // Bytes flipped on the way out of the store, past its own check: only
    // the hash in the chunk record can catch them.
    cluster.faults(1).corrupt_reads(true);
    cluster.faults(4).corrupt_reads(true);
    let read = read_all(&cluster.volume().await, ino).await.unwrap();
    assert_same("file read with two corrupt shards per stripe", &read, &data);
    let detected = cluster.faults(1).injected() + cluster.faults(4).injected();
    assert!(detected > 0, "no corrupt shard was read, so nothing was tested");

    // A third corrupt node is more than parity can cover: EIO-like, never
    // wrong bytes.
    cluster.faults(2).corrupt_reads(true);
    match read_all(&cluster.volume().await, ino).await {
        Err(error) => assert!(!matches!(error, FsError::NotFound), "{error}"),
        Ok(bytes) => assert_same("file read with three corrupt shards per stripe", &bytes, &data),
    }
}

#[tokio::test]
async fn shards_corrupted_as_they_are_stored_are_caught_by_the_record_hash() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(6).await;
    cluster.faults(5).corrupt_writes(true);
    cluster.faults(6).corrupt_writes(true);
    let data = random_bytes(4, FILE_BYTES);
    let (ino, synced) = write_file(&cluster.volume().await, "bad-disk", &data).await;
    synced.unwrap();
    assert!(cluster.faults(5).injected() > 0);
    assert_same("file", &read_all(&cluster.volume().await, ino).await.unwrap(), &data);
}

#[tokio::test]
async fn a_full_store_makes_writes_go_elsewhere_and_nospace_comes_only_below_the_quorum() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(7).await;
    let volume = cluster.volume().await;
    let before = random_bytes(5, FILE_BYTES);
    let (before_ino, synced) = write_file(&volume, "before", &before).await;
    synced.unwrap();

    cluster.faults(7).set_full(true);
    let data = random_bytes(6, FILE_BYTES);
    let (ino, synced) = write_file(&volume, "one-full", &data).await;
    synced.expect("one full node of seven: the spare takes its shards");
    for shards in cluster.placements(ino) {
        assert!(shards.iter().all(Option::is_some), "{shards:?}");
        assert!(!shards.contains(&Some(7)), "{shards:?}");
    }

    // Three full nodes of seven leave four: below the quorum of five.
    cluster.faults(5).set_full(true);
    cluster.faults(6).set_full(true);
    let (_, synced) = write_file(&volume, "three-full", &random_bytes(7, FILE_BYTES)).await;
    assert!(matches!(synced, Err(FsError::NoSpace(_))), "{synced:?}");

    for id in [5, 6, 7] {
        cluster.faults(id).set_full(false);
    }
    let fresh = cluster.volume().await;
    assert_same("file before", &read_all(&fresh, before_ino).await.unwrap(), &before);
    assert_same("file with one node full", &read_all(&fresh, ino).await.unwrap(), &data);
    let (_, synced) = write_file(&fresh, "after", &random_bytes(8, FILE_BYTES)).await;
    synced.expect("writes go on once space is back");
}

#[tokio::test]
async fn a_partitioned_or_flaky_peer_is_worked_around_by_the_client() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(6).await;
    let faults = TransportFaults::new();
    faults.partition(cluster.addr(2), true);
    let volume = cluster.volume_over(Transport::with_faults(faults.clone())).await;
    let data = random_bytes(9, FILE_BYTES);
    let (ino, synced) = write_file(&volume, "cut-off", &data).await;
    synced.expect("one unreachable node of six: writes go on at quorum 5");
    for shards in cluster.placements(ino) {
        assert!(!shards.contains(&Some(2)), "{shards:?}");
    }
    // Reads through the same faulty transport, with node 4 failing a few
    // calls too, reconstruct from parity.
    let injected = faults.injected();
    faults.fail_next(cluster.addr(4), 3);
    let reader = cluster.volume_over(Transport::with_faults(faults.clone())).await;
    assert_same("file", &read_all(&reader, ino).await.unwrap(), &data);
    // The first failure marks node 4 down in the reader's view until its next
    // refresh, so it may be asked only once.
    assert!(faults.injected() > injected);

    // Two more nodes cut off: three of six is below the quorum. Unavailable,
    // not NoSpace: the volume is not full.
    faults.partition(cluster.addr(3), true);
    faults.partition(cluster.addr(5), true);
    let (_, synced) = write_file(&volume, "too-few", &random_bytes(10, FILE_BYTES)).await;
    assert!(
        matches!(synced, Err(FsError::Unavailable(_) | FsError::Io(_))),
        "{synced:?}"
    );
}

#[tokio::test]
async fn a_failure_between_shards_and_commit_keeps_the_old_contents() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(6).await;
    let volume = cluster.volume().await;
    let old = random_bytes(11, FILE_BYTES);
    let (ino, synced) = write_file(&volume, "kept", &old).await;
    synced.unwrap();

    fault::arm(fault::VOLUME_AFTER_SHARDS_PUT, "error").unwrap();
    volume.open(ino).await.unwrap();
    volume.write(ino, 0, &random_bytes(12, CHUNK as usize)).await.unwrap();
    let synced = volume.fsync(ino).await;
    let _ = volume.release(ino).await;
    fault::disarm_all();
    assert!(synced.is_err(), "fsync must report the failed commit");
    assert!(fault::hits(fault::VOLUME_AFTER_SHARDS_PUT) >= 1);
    assert_same(
        "file after a failed commit",
        &read_all(&cluster.volume().await, ino).await.unwrap(),
        &old,
    );
}

/// The tryout of 2026-12-04: a chunk that failed in the background was
/// reported once, by a later write, and the fsync and close after it said
/// "done" — the application never learned that acknowledged bytes were
/// lost. The error now stays with the open file until its last close.
#[tokio::test]
async fn a_lost_background_write_fails_every_later_write_fsync_and_close() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(6).await;
    let volume = cluster.volume().await;
    let ino = volume
        .create(ROOT_INO, b"lost-chunk", 0o644, 1000, 1000)
        .await
        .unwrap()
        .ino;
    let data = random_bytes(9, CHUNK as usize);
    volume.write(ino, 0, &data).await.expect("a whole chunk is taken");
    volume.fsync(ino).await.expect("the first chunk is stored");
    // Two full nodes of six leave four: below the quorum of five.
    cluster.faults(5).set_full(true);
    cluster.faults(6).set_full(true);
    volume
        .write(ino, CHUNK as u64, &data)
        .await
        .expect("a whole chunk is buffered");
    let first = volume.fsync(ino).await;
    assert!(matches!(first, Err(FsError::NoSpace(_))), "first fsync: {first:?}");
    let again = volume.fsync(ino).await;
    assert!(matches!(again, Err(FsError::NoSpace(_))), "second fsync: {again:?}");
    let write = volume.write(ino, 2 * CHUNK as u64, b"more").await;
    assert!(
        matches!(write, Err(FsError::NoSpace(_))),
        "write after the loss: {write:?}"
    );
    let closed = volume.release(ino).await;
    assert!(matches!(closed, Err(FsError::NoSpace(_))), "close: {closed:?}");

    // Closed and opened again, the file starts clean; the chunk written
    // before the loss is intact.
    cluster.faults(5).set_full(false);
    cluster.faults(6).set_full(false);
    let fresh = cluster.volume().await;
    let head = fresh.read(ino, 0, CHUNK).await.unwrap();
    assert_same("chunk written before the loss", &head, &data);
}
