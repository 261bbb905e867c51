//! Healing against an in-process cluster (meta and six nodes as tokio tasks,
//! shards on disk in temporary directories): a node's own scrub schedule
//! finds a flipped byte, reports it, and meta's heal service rewrites the
//! shard in place from the rest of its stripe, without any command. And
//! the orphan collector: a shard no record names is deleted once it is older
//! than the safety window, never before (a write in flight).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sohofs_format::SHARD_HEADER_BYTES;
use sohofs_storage::codec::DataKey;
use sohofs_storage::heal::{HealSettings, Healer};
use sohofs_storage::kv::MemKv;
use sohofs_storage::meta::{self, Meta, VolumeParams};
use sohofs_storage::node::{self, NodeConfig, ScrubSchedule};
use sohofs_storage::rpc::Transport;
use sohofs_storage::shard_store::{DiskShardStore, ShardKey, ShardStore};
use sohofs_storage::volume::{Volume, VolumeConfig, ROOT_INO};

const NODES: u64 = 6;
const DOWN_AFTER: Duration = Duration::from_secs(3);
const SCRUB_INTERVAL: Duration = Duration::from_millis(300);
/// For the schedule, the report and a repair pass (2 s apart).
const REPAIR_TIMEOUT: Duration = Duration::from_secs(30);

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Every shard file under `dir`.
fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(buckets) = std::fs::read_dir(dir.join("shards")) else {
        return out;
    };
    for bucket in buckets.flatten() {
        for entry in std::fs::read_dir(bucket.path()).unwrap().flatten() {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_scrub_finds_a_flipped_byte_and_meta_rewrites_the_shard() {
    let params = VolumeParams {
        data_shards: 4,
        parity_shards: 2,
        write_quorum: 5,
        chunk_bytes: 64 * 1024,
        inline_bytes_max: 2048,
    };
    let meta = Arc::new(
        Meta::open(Arc::new(MemKv::default()), Some(params), DOWN_AFTER)
            .unwrap()
            .with_heal(HealSettings {
                grace_period: Duration::from_secs(600),
                rebuild_bytes_per_s: 0,
                ..HealSettings::default()
            }),
    );
    let meta_addr = free_addr();
    let meta_task = tokio::spawn({
        let meta = meta.clone();
        let addr = meta_addr.clone();
        async move { meta::run_meta(meta, &addr).await }
    });
    let mut dirs = Vec::new();
    let mut node_tasks = Vec::new();
    for id in 1..=NODES {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let config = NodeConfig {
            id,
            listen: addr.clone(),
            advertise: addr,
            host: format!("host-{id}"),
            meta_addrs: vec![meta_addr.clone()],
        };
        let store = Arc::new(DiskShardStore::open(dir.path()).unwrap());
        let schedule = ScrubSchedule {
            interval: Some(SCRUB_INTERVAL),
            bytes_per_s: 0,
        };
        node_tasks.push(tokio::spawn(node::run_node_with(config, store, schedule)));
        dirs.push(dir);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while meta.nodes().unwrap().iter().filter(|n| n.up).count() < NODES as usize {
        assert!(Instant::now() < deadline, "nodes did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = DataKey::generate();
    let volume = Volume::connect(VolumeConfig {
        meta_addrs: vec![meta_addr.clone()],
        data_key: key.clone(),
        opener: None,
    })
    .await
    .unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let ino = volume.create(ROOT_INO, b"f", 0o644, 0, 0).await.unwrap().ino;
    assert_eq!(volume.write(ino, 0, &data).await.unwrap(), data.len());
    volume.release(ino).await.unwrap();

    let victim = shard_files(dirs[2].path())
        .into_iter()
        .next()
        .expect("node 3 holds a shard");
    let original = std::fs::read(&victim).unwrap();
    let mut damaged = original.clone();
    damaged[SHARD_HEADER_BYTES + 1] ^= 0x40;
    std::fs::write(&victim, &damaged).unwrap();

    let deadline = Instant::now() + REPAIR_TIMEOUT;
    while std::fs::read(&victim).ok().as_ref() != Some(&original) {
        assert!(
            Instant::now() < deadline,
            "{} was not rewritten by scrub and repair",
            victim.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A fresh client (no cache) reads the file back whole; nothing is left
    // to rebuild.
    let fresh = Volume::connect(VolumeConfig {
        meta_addrs: vec![meta_addr],
        data_key: key,
        opener: None,
    })
    .await
    .unwrap();
    fresh.open(ino).await.unwrap();
    let mut read = Vec::new();
    while read.len() < data.len() {
        let got = fresh.read(ino, read.len() as u64, 65_536).await.unwrap();
        assert!(!got.is_empty(), "short read at {}", read.len());
        read.extend_from_slice(&got);
    }
    assert!(read == data, "the file read back differs");
    fresh.release(ino).await.unwrap();
    let status = meta.rebuild_status().unwrap();
    assert_eq!((status.chunks_left, status.bytes_left), (0, 0), "{status:?}");
    for task in node_tasks {
        task.abort();
    }
    meta_task.abort();
}

/// Where a disk store keeps shard `key` (`DiskShardStore`'s layout).
fn shard_path(root: &Path, key: ShardKey) -> PathBuf {
    let hex = format!("{:032x}", key.piece_id);
    root.join("shards")
        .join(&hex[..2])
        .join(format!("{hex}.{}", key.shard_index))
}

fn age_file(path: &Path, by: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - by).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_older_than_the_safety_window_are_collected_and_young_ones_kept() {
    const WINDOW: Duration = Duration::from_secs(3600);
    let params = VolumeParams {
        data_shards: 4,
        parity_shards: 2,
        write_quorum: 5,
        chunk_bytes: 64 * 1024,
        inline_bytes_max: 2048,
    };
    let meta = Arc::new(
        Meta::open(Arc::new(MemKv::default()), Some(params), DOWN_AFTER)
            .unwrap()
            .with_heal(HealSettings {
                orphan_safety_window: WINDOW,
                // Swept by the test, not on a schedule.
                orphan_sweep_interval: None,
                ..HealSettings::default()
            }),
    );
    let meta_addr = free_addr();
    let meta_task = tokio::spawn({
        let meta = meta.clone();
        let addr = meta_addr.clone();
        async move { meta::run_meta(meta, &addr).await }
    });
    let mut dirs = Vec::new();
    let mut stores = Vec::new();
    let mut node_tasks = Vec::new();
    for id in 1..=NODES {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let config = NodeConfig {
            id,
            listen: addr.clone(),
            advertise: addr,
            host: format!("host-{id}"),
            meta_addrs: vec![meta_addr.clone()],
        };
        let store = Arc::new(DiskShardStore::open(dir.path()).unwrap());
        let schedule = ScrubSchedule {
            interval: None,
            bytes_per_s: 0,
        };
        node_tasks.push(tokio::spawn(node::run_node_with(config, store.clone(), schedule)));
        stores.push(store);
        dirs.push(dir);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while meta.nodes().unwrap().iter().filter(|n| n.up).count() < NODES as usize {
        assert!(Instant::now() < deadline, "nodes did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = DataKey::generate();
    let volume = Volume::connect(VolumeConfig {
        meta_addrs: vec![meta_addr.clone()],
        data_key: key.clone(),
        opener: None,
    })
    .await
    .unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 17 % 253) as u8).collect();
    let ino = volume.create(ROOT_INO, b"f", 0o644, 0, 0).await.unwrap().ino;
    assert_eq!(volume.write(ino, 0, &data).await.unwrap(), data.len());
    volume.release(ino).await.unwrap();

    // On node 1: a shard left by a write that crashed long ago, one put a
    // moment ago by a write not committed yet, and a shard the file uses,
    // made to look old too.
    let root = dirs[0].path();
    let old_orphan = ShardKey {
        piece_id: 0xdead_0001,
        shard_index: 2,
    };
    let young_orphan = ShardKey {
        piece_id: 0xdead_0002,
        shard_index: 3,
    };
    stores[0].put(old_orphan, b"left by a crash mid-write").unwrap();
    stores[0].put(young_orphan, b"a write in flight").unwrap();
    age_file(&shard_path(root, old_orphan), 2 * WINDOW);
    let used = shard_files(root);
    assert!(used.len() >= 3, "node 1 holds the file's shards: {used:?}");
    let used: Vec<PathBuf> = used
        .into_iter()
        .filter(|p| *p != shard_path(root, old_orphan) && *p != shard_path(root, young_orphan))
        .collect();
    for path in &used {
        age_file(path, 2 * WINDOW);
    }

    let healer = Healer::new(meta.clone(), Transport::default());
    assert_eq!(
        healer.collect_orphans(WINDOW).await.unwrap(),
        1,
        "only the old orphan is queued"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while shard_path(root, old_orphan).exists() {
        assert!(Instant::now() < deadline, "the old orphan was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shard_path(root, young_orphan).exists(), "a young orphan must be kept");
    for path in &used {
        assert!(path.exists(), "a shard the file uses was deleted: {}", path.display());
    }
    // Queued once: a second sweep finds nothing new.
    assert_eq!(healer.collect_orphans(WINDOW).await.unwrap(), 0);
    // The young one is collected once it is old, and the file still reads.
    age_file(&shard_path(root, young_orphan), WINDOW);
    assert_eq!(healer.collect_orphans(WINDOW).await.unwrap(), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while shard_path(root, young_orphan).exists() {
        assert!(Instant::now() < deadline, "the aged orphan was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = Volume::connect(VolumeConfig {
        meta_addrs: vec![meta_addr],
        data_key: key,
        opener: None,
    })
    .await
    .unwrap();
    fresh.open(ino).await.unwrap();
    let mut read = Vec::new();
    while read.len() < data.len() {
        let got = fresh.read(ino, read.len() as u64, 65_536).await.unwrap();
        assert!(!got.is_empty(), "short read at {}", read.len());
        read.extend_from_slice(&got);
    }
    assert!(read == data, "the file read back differs");
    fresh.release(ino).await.unwrap();
    for task in node_tasks {
        task.abort();
    }
    meta_task.abort();
}
