//! A failpoint armed in one node process of a real cluster
//! (`SOHOFS_FAILPOINTS`, scoped to `node-2`): node 2 aborts right after it
//! has written and fsynced its first shard's temp file, before the rename.
//! What a crash there must preserve: the put was never acknowledged, so the
//! client places the stripe on the other hosts and every file reads back
//! byte-exact; the temp file is dropped when the node's store opens again.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};
use sohofs_e2e::{wait_until, Cluster, ClusterOptions, NodeState};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 6, k: 4, m: 2 };
const FILE_BYTES: usize = (9 << 20) + 4321;
const ARMED: &str = "shard_store.put.after_temp_write@node-2=1*abort";

fn temp_shards(shards: &Path) -> Vec<PathBuf> {
    let Ok(buckets) = fs::read_dir(shards) else {
        return Vec::new();
    };
    buckets
        .flatten()
        .filter_map(|bucket| fs::read_dir(bucket.path()).ok())
        .flat_map(|files| files.flatten().map(|f| f.path()))
        .filter(|path| path.to_string_lossy().ends_with(".tmp"))
        .collect()
}

fn write_synced(path: &Path, data: &[u8]) {
    let mut file = fs::File::create(path).unwrap();
    file.write_all(data).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn a_node_that_crashes_after_its_temp_write_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start_with_env(OPTIONS, &[("SOHOFS_FAILPOINTS", ARMED)]);
    let mut data = vec![0u8; FILE_BYTES];
    rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut data);
    write_synced(&cluster.mount_dir().join("big.bin"), &data);
    write_synced(&cluster.mount_dir().join("second.bin"), &data[..3 << 20]);

    // Node 2 died at the failpoint, leaving its temp file; the others ran on.
    let node_2_shards = cluster.nodes_dir().join("2/data/shards");
    wait_until("node 2 is down", std::time::Duration::from_secs(30), || {
        match cluster.status()?.node(2).map(|n| n.state) {
            Some(NodeState::Down) => Ok(()),
            other => Err(format!("node 2 is {other:?}")),
        }
    });
    // Puts run in parallel: other temp files may have been mid-write too.
    assert!(
        !temp_shards(&node_2_shards).is_empty(),
        "the crash leaves its temp file"
    );
    let node_log = fs::read_to_string(cluster.nodes_dir().join("2/node.log")).unwrap();
    assert!(
        node_log.contains("failpoint shard_store.put.after_temp_write"),
        "{node_log}"
    );

    {
        let client = cluster.mount_client();
        assert!(
            fs::read(client.mount_dir().join("big.bin")).unwrap() == data,
            "big.bin differs"
        );
        assert!(
            fs::read(client.mount_dir().join("second.bin")).unwrap() == data[..3 << 20],
            "second.bin differs"
        );
        client.stop();
    }

    // Started again without the failpoint: node 2's store drops the temp
    // file, and everything still reads back.
    cluster.stop();
    cluster.set_env("SOHOFS_FAILPOINTS", None);
    cluster.start_again();
    assert!(
        temp_shards(&node_2_shards).is_empty(),
        "the temp file outlived a restart"
    );
    assert!(
        fs::read(cluster.mount_dir().join("big.bin")).unwrap() == data,
        "big.bin differs after the restart"
    );
    cluster.stop();
}
