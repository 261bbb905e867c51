//! Self-healing after a node is lost: with a short grace period, a killed
//! node's shards are rebuilt on the other hosts without any command, until
//! `status` shows no degraded chunk; then two more nodes may die and every
//! file still reads back byte-exact.
//!
//! Seven nodes, not six: with 4+2 stripes and one shard per host, a stripe
//! needs six live hosts to be whole again, so a six-node cluster that lost a
//! node can never get back to zero degraded chunks (the planner leaves such
//! shards missing rather than put two on one host).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use sohofs_e2e::process::run_ok;
use sohofs_e2e::{assert_trees_equal, bounded, hash_tree, wait_until, Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 7, k: 4, m: 2 };
const GRACE_PERIOD_S: &str = "3";
const CHUNK_BYTES: usize = 4 << 20;

/// Copying ~60 MiB in and hashing it out of a debug build on 2 cores.
const COPY_TIMEOUT: Duration = Duration::from_secs(300);
const HASH_TIMEOUT: Duration = Duration::from_secs(300);
/// For the cluster to settle after the copy (every chunk healthy).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace period, then rebuilding every shard the node held, throttled.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(300);
const VERB_TIMEOUT: Duration = Duration::from_secs(60);
/// The contract: a silent node shows down within ~10 s.
const DOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// The grace period of the test that pauses a node for less than that.
const GRACE_PERIOD_LONG: Duration = Duration::from_secs(60);
/// How long node 2 stays paused before the late writes (well inside the
/// grace period).
const PAUSE: Duration = Duration::from_secs(10);

#[test]
fn a_lost_node_is_rebuilt_without_a_command_and_two_more_may_die() {
    let cluster = Cluster::start_with_up_args(OPTIONS, &["--grace-period", GRACE_PERIOD_S]);
    let source = cluster.scratch_dir("source");
    let seed: u64 = rand::random();
    eprintln!("heal_rebuild: random data seed {seed}");
    write_files(&source, &mut StdRng::seed_from_u64(seed));
    let expected = hash_tree(&source).expect("snapshot the source tree");
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(source.join(".")).arg(cluster.mount_dir());
    run_ok(copy, cluster.tag(), COPY_TIMEOUT);

    let settled = wait_until("every node up and every chunk healthy", SETTLE_TIMEOUT, || {
        let status = status_json(&cluster)?;
        let up = nodes_in_state(&status, "up");
        let volume = &status["volume"];
        match (
            up.len(),
            number(volume, "chunks_degraded")?,
            number(volume, "chunks_total")?,
        ) {
            (7, 0, total) if total > 0 => Ok(status),
            other => Err(format!("(up, degraded, total) = {other:?}")),
        }
    });
    let chunks_total = number(&settled["volume"], "chunks_total").unwrap();
    let stripes_before = stripes(&cluster);
    let on_lost_node = stripes_before
        .values()
        .filter(|stripe| stripe.iter().any(|(node, _)| *node == Some(3)))
        .count();
    assert!(on_lost_node > 10, "node 3 holds shards of {on_lost_node} stripes only");

    cluster.kill_node(3);
    let healed = wait_until(
        "node 3 down and no chunk degraded, without any command",
        REBUILD_TIMEOUT,
        || {
            let status = status_json(&cluster)?;
            let volume = &status["volume"];
            let rebuild = &volume["rebuild"];
            let state = (
                nodes_in_state(&status, "down"),
                number(volume, "chunks_degraded")?,
                number(volume, "chunks_unreadable")?,
                number(rebuild, "chunks_left")?,
                number(rebuild, "bytes_left")?,
            );
            number(rebuild, "bytes_per_s")?;
            match state {
                (down, 0, 0, 0, 0) if down == [3] => Ok(status),
                other => Err(format!(
                    "(down, degraded, unreadable, chunks_left, bytes_left) = {other:?}"
                )),
            }
        },
    );
    assert_eq!(number(&healed["volume"], "chunks_total").unwrap(), chunks_total);
    let node_3 = healed["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == 3))
        .expect("node 3 is listed");
    assert_eq!(
        node_3["lost"],
        Value::Bool(true),
        "node 3 past its grace period: {node_3}"
    );

    // Every stripe whole again, off node 3, one shard per host.
    let stripes_after = stripes(&cluster);
    assert_eq!(stripes_after.len(), stripes_before.len());
    assert!(stripes_after.keys().eq(stripes_before.keys()), "the same pieces");
    for stripe in stripes_after.values() {
        assert!(
            stripe.iter().all(|(node, _)| *node != Some(3)),
            "a shard is still on the lost node: {stripe:?}"
        );
        assert_whole_on_distinct_hosts(stripe);
    }

    cluster.kill_node(5);
    cluster.kill_node(6);
    let client = cluster.mount_client();
    let client_dir = client.mount_dir().to_path_buf();
    let actual = bounded("hash the tree through a fresh client", HASH_TIMEOUT, move || {
        hash_tree(&client_dir)
    })
    .expect("read every file through a fresh client");
    assert_trees_equal(&expected, &actual, "after rebuilding node 3 and losing nodes 5 and 6");
    client.stop();
}

/// A node that is silent for longer than it takes to show `down`, but back
/// within the grace period, causes no rebuild: every shard stays where it
/// was and the rebuild has nothing to do meanwhile.
#[test]
fn a_node_back_within_the_grace_period_causes_no_rebuild_and_takes_the_unplaced_shards() {
    // Shown down after 5 s of silence; lost only after the grace period.
    let cluster = Cluster::start_with_up_args(
        ClusterOptions { nodes: 6, k: 4, m: 2 },
        &["--grace-period", &GRACE_PERIOD_LONG.as_secs().to_string()],
    );
    let source = cluster.scratch_dir("source");
    write_files(&source, &mut StdRng::seed_from_u64(rand::random()));
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(source.join(".")).arg(cluster.mount_dir());
    run_ok(copy, cluster.tag(), COPY_TIMEOUT);
    wait_until("every chunk healthy", SETTLE_TIMEOUT, || {
        let status = status_json(&cluster)?;
        match number(&status["volume"], "chunks_degraded")? {
            0 => Ok(()),
            degraded => Err(format!("{degraded} degraded")),
        }
    });
    let before = stripes(&cluster);

    let pid = Pid::from_raw(cluster.node_pid(2));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP node 2");
    let paused = Instant::now();
    wait_until("node 2 shown down", DOWN_TIMEOUT, || {
        let status = status_json(&cluster)?;
        match nodes_in_state(&status, "down").as_slice() {
            [2] => Ok(()),
            other => Err(format!("down: {other:?}")),
        }
    });
    // Well inside the grace period: degraded, not lost, nothing to rebuild.
    while paused.elapsed() < PAUSE {
        let status = status_json(&cluster).expect("status while node 2 is paused");
        let node_2 = &status["nodes"].as_array().expect("nodes")[1];
        assert_eq!(node_2["lost"], Value::Bool(false), "{node_2}");
        assert_eq!(
            number(&status["volume"]["rebuild"], "chunks_left").unwrap(),
            0,
            "{status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Written while node 2 is down: five hosts for six shards, so each
    // stripe gets one shard with no node (a degraded write).
    let late_source = cluster.scratch_dir("late");
    for i in 0..8 {
        let mut rng = StdRng::seed_from_u64(rand::random());
        let size = rng.gen_range(64 << 10..2 << 20);
        write_random(&late_source.join(format!("late-{i}.bin")), size, &mut rng);
    }
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(&late_source).arg(cluster.mount_dir());
    run_ok(copy, cluster.tag(), COPY_TIMEOUT);
    let during = stripes(&cluster);
    let unplaced: Vec<&String> = during
        .iter()
        .filter(|(_, shards)| shards.iter().any(|(node, _)| node.is_none()))
        .map(|(piece, _)| piece)
        .collect();
    assert!(
        unplaced.len() >= 8,
        "only {} stripes with an unplaced shard",
        unplaced.len()
    );
    kill(pid, Signal::SIGCONT).expect("SIGCONT node 2");
    wait_until("node 2 up again and every chunk healthy", SETTLE_TIMEOUT, || {
        let status = status_json(&cluster)?;
        match (
            nodes_in_state(&status, "down").len(),
            number(&status["volume"], "chunks_degraded")?,
        ) {
            (0, 0) => Ok(()),
            other => Err(format!("(down, degraded) = {other:?}")),
        }
    });
    let paused_for = paused.elapsed();
    assert!(
        paused_for < GRACE_PERIOD_LONG,
        "the pause ({paused_for:?}) outlasted the grace period: the test proves nothing"
    );
    wait_until("the unplaced shards are added on node 2", REBUILD_TIMEOUT, || {
        let status = status_json(&cluster)?;
        match number(&status["volume"]["rebuild"], "chunks_left")? {
            0 => Ok(()),
            left => Err(format!("{left} chunks left")),
        }
    });
    let after = stripes(&cluster);
    for (piece, shards) in &before {
        assert_eq!(
            after.get(piece),
            Some(shards),
            "shards moved although node 2 came back within the grace period"
        );
    }
    for piece in unplaced {
        let shards = &after[piece];
        assert_whole_on_distinct_hosts(shards);
        let was = &during[piece];
        for (index, (node, _)) in shards.iter().enumerate() {
            match was[index].0 {
                None => assert_eq!(*node, Some(2), "the unplaced shard goes to the host that came back"),
                Some(old) => assert_eq!(*node, Some(old), "placed shards stay"),
            }
        }
    }
    let client = cluster.mount_client();
    let client_dir = client.mount_dir().join("late");
    let actual = bounded("hash the late files through a fresh client", HASH_TIMEOUT, move || {
        hash_tree(&client_dir)
    })
    .expect("read the late files");
    assert_trees_equal(
        &hash_tree(&late_source).unwrap(),
        &actual,
        "files written while node 2 was down",
    );
    client.stop();
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

/// Files over one chunk, files of a few shards' worth, and tiny files that
/// meta keeps inline (≤ 4 KiB: no shards at all).
fn write_files(root: &Path, rng: &mut StdRng) {
    fs::create_dir_all(root.join("big")).unwrap();
    fs::create_dir_all(root.join("small")).unwrap();
    for (i, size) in [CHUNK_BYTES + 1, 2 * CHUNK_BYTES, 3 * CHUNK_BYTES - 7, 9 << 20]
        .into_iter()
        .enumerate()
    {
        write_random(&root.join("big").join(format!("{i}.bin")), size, rng);
    }
    for i in 0..60 {
        let size = rng.gen_range(4097..600 << 10);
        write_random(&root.join("small").join(format!("{i}.bin")), size, rng);
    }
    for i in 0..20 {
        let size = rng.gen_range(0..=4096);
        write_random(&root.join("small").join(format!("tiny-{i}.bin")), size, rng);
    }
}

fn write_random(path: &Path, size: usize, rng: &mut StdRng) {
    let mut bytes = vec![0u8; size];
    rng.fill_bytes(&mut bytes);
    fs::write(path, bytes).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

fn status_json(cluster: &Cluster) -> Result<Value, String> {
    let output = cluster.run_verb(&["status", "--json"], VERB_TIMEOUT);
    if !output.status.success() {
        return Err(format!(
            "status exited {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|error| format!("status --json: {error}"))
}

fn number(object: &Value, field: &str) -> Result<u64, String> {
    object[field]
        .as_u64()
        .ok_or_else(|| format!("`{field}` is not a number in {object}"))
}

fn nodes_in_state(status: &Value, state: &str) -> Vec<u64> {
    status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["state"] == state)
                .filter_map(|n| n["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

type Shards = Vec<(Option<u64>, Option<String>)>;

/// `sohofs debug stripes --json`: each stripe's piece id and its shards as
/// (node, host), in index order.
fn stripes(cluster: &Cluster) -> BTreeMap<String, Shards> {
    let output = cluster.run_verb(&["debug", "stripes", "--json"], VERB_TIMEOUT);
    assert!(
        output.status.success(),
        "debug stripes: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_slice(&output.stdout).expect("debug stripes --json is JSON");
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
