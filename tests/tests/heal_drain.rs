//! Draining a node under load: `sohofs node drain 3` while a writer keeps
//! writing and reading files; every file reads back byte-exact, node 3 ends
//! with no shard (on disk and in `debug stripes`), and `node remove 3` then
//! succeeds. Removing a node that was not drained is refused. And the other
//! way: `sohofs node add` on a six-node cluster starts a seventh node, and
//! rebalancing moves shards to it until the counts are even.
//!
//! Seven nodes, not six: with 4+2 stripes and one shard per host, a shard
//! leaving node 3 needs a seventh host that holds no shard of its stripe.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use sohofs_e2e::process::run_ok;
use sohofs_e2e::{assert_trees_equal, bounded, hash_tree, wait_until, Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 7, k: 4, m: 2 };
const DRAINED: u64 = 3;
const CHUNK_BYTES: usize = 4 << 20;

const COPY_TIMEOUT: Duration = Duration::from_secs(300);
const HASH_TIMEOUT: Duration = Duration::from_secs(300);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Moving node 3's shards (a seventh of ~50 MiB stored) at 32 MiB/s, in
/// passes 2 s apart, while the writer competes for two cores.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
const VERB_TIMEOUT: Duration = Duration::from_secs(60);
/// Moving a seventh of the shards to a new node, in passes 2 s apart.
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(180);
/// The writer writes at least this many files while the drain runs.
const LIVE_FILES_MIN: usize = 5;

#[test]
fn a_node_drained_under_load_ends_empty_and_leaves_the_cluster() {
    let cluster = Cluster::start(OPTIONS);
    let source = cluster.scratch_dir("source");
    let seed: u64 = rand::random();
    eprintln!("heal_drain: random data seed {seed}");
    write_files(&source, &mut StdRng::seed_from_u64(seed));
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(source.join(".")).arg(cluster.mount_dir());
    run_ok(copy, cluster.tag(), COPY_TIMEOUT);
    wait_until("every chunk healthy", SETTLE_TIMEOUT, || {
        let status = json_of(&cluster, &["status", "--json"])?;
        match status["volume"]["chunks_degraded"].as_u64() {
            Some(0) => Ok(()),
            other => Err(format!("degraded: {other:?}")),
        }
    });
    let before = stripes(&cluster);
    let on_drained = before
        .values()
        .filter(|s| s.iter().any(|(node, _)| *node == Some(DRAINED)))
        .count();
    assert!(
        on_drained > 10,
        "node {DRAINED} holds shards of {on_drained} stripes only"
    );
    assert!(shard_files(&cluster, DRAINED) > 10);

    // A node that was not drained (and holds shards) is not removed.
    let refused = cluster.run_verb(&["node", "remove", "5"], VERB_TIMEOUT);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "node remove of a full node succeeded");
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("drain it first"), "the refusal says why: {stderr}");
    assert!(member(&cluster, 5).is_some(), "node 5 is still registered");

    // The writer: new files, each read back at once, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let live_dir = cluster.mount_dir().join("live");
    let live_source = cluster.scratch_dir("live-source");
    let writer = {
        let (stop, live_dir, live_source) = (stop.clone(), live_dir.clone(), live_source.clone());
        std::thread::spawn(move || write_while_draining(&stop, &live_dir, &live_source, seed))
    };

    let drain = cluster.run_verb(&["node", "drain", &DRAINED.to_string()], DRAIN_TIMEOUT);
    let drain_out = String::from_utf8_lossy(&drain.stdout);
    assert!(
        drain.status.success(),
        "node drain failed: {drain_out}{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    assert!(
        drain_out.contains("is empty"),
        "drain reports the node empty: {drain_out}"
    );
    // A few more writes after the drain finished: none may land on node 3.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("the writer thread");
    let written = written.unwrap_or_else(|error| panic!("the writer failed during the drain: {error}"));
    assert!(
        written >= LIVE_FILES_MIN,
        "only {written} files written during the drain"
    );

    let status = json_of(&cluster, &["status", "--json"]).unwrap();
    let in_status = status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == DRAINED))
        .expect("node 3 in status");
    assert_eq!(in_status["draining"], true, "{in_status}");
    let drained = member(&cluster, DRAINED).expect("node 3 is listed until removed");
    assert_eq!(drained["state"], "drained", "{drained}");
    assert_eq!(drained["shards_referenced"], 0, "{drained}");
    assert_eq!(drained["shards_queued_for_gc"], 0, "{drained}");
    // Late writes after the drain still avoid node 3; the collector has
    // deleted every shard file it held.
    let after = stripes(&cluster);
    for (piece, shards) in &after {
        assert!(
            shards.iter().all(|(node, _)| *node != Some(DRAINED)),
            "stripe {piece} still has a shard on node {DRAINED}: {shards:?}"
        );
        assert_whole_on_distinct_hosts(shards);
    }
    for piece in before.keys() {
        assert!(after.contains_key(piece), "piece {piece} vanished during the drain");
    }
    assert_eq!(shard_files(&cluster, DRAINED), 0, "shard files left on node {DRAINED}");

    let removed = cluster.run_verb(&["node", "remove", &DRAINED.to_string()], VERB_TIMEOUT);
    assert!(
        removed.status.success(),
        "node remove of a drained node: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(member(&cluster, DRAINED).is_none(), "node 3 left the registry");
    let status = json_of(&cluster, &["status", "--json"]).unwrap();
    assert_eq!(status["volume"]["chunks_degraded"], 0, "{status}");
    assert_eq!(status["volume"]["chunks_unreadable"], 0, "{status}");

    let client = cluster.mount_client();
    let client_dir = client.mount_dir().to_path_buf();
    let actual = bounded("hash the tree through a fresh client", HASH_TIMEOUT, move || {
        hash_tree(&client_dir)
    })
    .expect("read every file through a fresh client");
    let mut expected_dir = cluster.scratch_dir("expected");
    expected_dir.push("all");
    fs::create_dir_all(&expected_dir).unwrap();
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(source.join(".")).arg(&expected_dir);
    run_ok(copy, cluster.tag(), COPY_TIMEOUT);
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(&live_source).arg(expected_dir.join("live"));
    run_ok(copy, cluster.tag(), COPY_TIMEOUT);
    assert_trees_equal(
        &hash_tree(&expected_dir).unwrap(),
        &actual,
        "after draining and removing node 3",
    );
    client.stop();
}

#[test]
fn a_node_added_gets_its_share_by_rebalancing_and_stays_after_a_restart() {
    let mut cluster = Cluster::start(ClusterOptions { nodes: 6, k: 4, m: 2 });
    let source = cluster.scratch_dir("source");
    write_files(&source, &mut StdRng::seed_from_u64(rand::random()));
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(source.join(".")).arg(cluster.mount_dir());
    run_ok(copy, cluster.tag(), COPY_TIMEOUT);

    let added = cluster.run_verb(&["node", "add"], VERB_TIMEOUT);
    let added_out = String::from_utf8_lossy(&added.stdout);
    assert!(
        added.status.success(),
        "node add: {added_out}{}",
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(added_out.contains("node 7 is up"), "{added_out}");
    let counts = wait_until("shard counts even, node 7 included", REBALANCE_TIMEOUT, || {
        let list = json_of(&cluster, &["node", "list", "--json"])?;
        let counts: BTreeMap<u64, u64> = list
            .as_array()
            .ok_or("a list")?
            .iter()
            .map(|n| {
                (
                    n["id"].as_u64().unwrap_or(0),
                    n["shards_referenced"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let (min, max) = (counts.values().min().copied(), counts.values().max().copied());
        // Even enough: within one shard, or 5 % of the mean if more (the
        // planner's slack, so that a busy cluster does not move data all day).
        let slack = (counts.values().sum::<u64>() / 7 * 5 / 100).max(1);
        match (counts.len(), min, max) {
            (7, Some(min), Some(max)) if min > 0 && max - min <= slack => Ok(counts),
            _ => Err(format!("shards per node: {counts:?}")),
        }
    });
    eprintln!("heal_drain: shards per node after rebalancing: {counts:?}");
    for shards in stripes(&cluster).values() {
        assert_whole_on_distinct_hosts(shards);
    }
    let client = cluster.mount_client();
    let client_dir = client.mount_dir().to_path_buf();
    let actual = bounded("hash the tree through a fresh client", HASH_TIMEOUT, move || {
        hash_tree(&client_dir)
    })
    .expect("read every file through a fresh client");
    assert_trees_equal(&hash_tree(&source).unwrap(), &actual, "after rebalancing onto node 7");
    client.stop();

    // `up` keeps the added node: it waits for all seven at its next start.
    cluster.stop();
    cluster.start_again();
    let list = json_of(&cluster, &["node", "list", "--json"]).unwrap();
    let up: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["up"] == true)
        .filter_map(|n| n["id"].as_u64())
        .collect();
    assert_eq!(up, (1..=7).collect::<Vec<u64>>(), "{list}");
}

/// Writes files into `live_dir` (keeping a copy in `source`) and reads each
/// back at once, until `stop`; returns how many, or the first mismatch.
fn write_while_draining(stop: &AtomicBool, live_dir: &Path, source: &Path, seed: u64) -> Result<usize, String> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    fs::create_dir_all(live_dir).map_err(|e| format!("mkdir {}: {e}", live_dir.display()))?;
    fs::create_dir_all(source).map_err(|e| format!("mkdir {}: {e}", source.display()))?;
    let mut written = 0;
    while !stop.load(Ordering::Relaxed) {
        let size = rng.gen_range(4097..3 << 20);
        let mut bytes = vec![0u8; size];
        rng.fill_bytes(&mut bytes);
        let name = format!("w-{written}.bin");
        let path = live_dir.join(&name);
        fs::write(&path, &bytes).map_err(|e| format!("write {}: {e}", path.display()))?;
        fs::write(source.join(&name), &bytes).map_err(|e| format!("keep {name}: {e}"))?;
        let back = fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        if back != bytes {
            return Err(format!("{} read back different bytes", path.display()));
        }
        // Also read an older file, whose shards the drain may be moving.
        if written > 0 {
            let old = format!("w-{}.bin", rng.gen_range(0..written));
            let want = fs::read(source.join(&old)).map_err(|e| format!("read kept {old}: {e}"))?;
            let got = fs::read(live_dir.join(&old)).map_err(|e| format!("read {old}: {e}"))?;
            if got != want {
                return Err(format!("{old} read back different bytes"));
            }
        }
        written += 1;
    }
    Ok(written)
}

fn write_files(root: &Path, rng: &mut StdRng) {
    fs::create_dir_all(root.join("big")).unwrap();
    fs::create_dir_all(root.join("small")).unwrap();
    for (i, size) in [CHUNK_BYTES + 1, 2 * CHUNK_BYTES, 3 * CHUNK_BYTES - 7]
        .into_iter()
        .enumerate()
    {
        write_random(&root.join("big").join(format!("{i}.bin")), size, rng);
    }
    for i in 0..50 {
        let size = rng.gen_range(4097..600 << 10);
        write_random(&root.join("small").join(format!("{i}.bin")), size, rng);
    }
    for i in 0..10 {
        let size = rng.gen_range(0..=4096);
        write_random(&root.join("small").join(format!("tiny-{i}.bin")), size, rng);
    }
}

fn write_random(path: &Path, size: usize, rng: &mut StdRng) {
    let mut bytes = vec![0u8; size];
    rng.fill_bytes(&mut bytes);
    fs::write(path, bytes).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

/// Shard files in node `id`'s folder (temp files of a put in flight aside).
fn shard_files(cluster: &Cluster, id: u64) -> usize {
    let shards: PathBuf = cluster.nodes_dir().join(id.to_string()).join("data").join("shards");
    let mut count = 0;
    for bucket in fs::read_dir(&shards).expect("list the shard folder").flatten() {
        count += fs::read_dir(bucket.path())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
                    .count()
            })
            .unwrap_or(0);
    }
    count
}

fn json_of(cluster: &Cluster, args: &[&str]) -> Result<Value, String> {
    let output = cluster.run_verb(args, VERB_TIMEOUT);
    if !output.status.success() {
        return Err(format!(
            "{args:?} exited {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|error| format!("{args:?}: {error}"))
}

/// Node `id` as `node list --json` shows it.
fn member(cluster: &Cluster, id: u64) -> Option<Value> {
    let list = json_of(cluster, &["node", "list", "--json"]).expect("node list --json");
    list.as_array()
        .expect("a list of nodes")
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
}

type Shards = Vec<(Option<u64>, Option<String>)>;

fn stripes(cluster: &Cluster) -> BTreeMap<String, Shards> {
    let value = json_of(cluster, &["debug", "stripes", "--json"]).expect("debug stripes --json");
    value
        .as_array()
        .expect("a list of stripes")
        .iter()
        .map(|stripe| {
            let shards = stripe["shards"]
                .as_array()
                .expect("shards")
                .iter()
                .map(|shard| (shard["node"].as_u64(), shard["host"].as_str().map(str::to_string)))
                .collect();
            (stripe["piece"].as_str().expect("piece id").to_string(), shards)
        })
        .collect()
}

fn assert_whole_on_distinct_hosts(shards: &Shards) {
    assert_eq!(shards.len(), 6, "{shards:?}");
    assert!(
        shards.iter().all(|(node, _)| node.is_some()),
        "a shard is unplaced: {shards:?}"
    );
    let hosts: HashSet<&str> = shards.iter().map(|(_, host)| host.as_deref().unwrap_or("")).collect();
    assert_eq!(hosts.len(), 6, "two shards of a stripe on one host: {shards:?}");
}
