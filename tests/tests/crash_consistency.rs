//! Meta writes its log unsynced and syncs it on fsync, for NFS, before
//! garbage collection and every second. A crash of the processes (not of the
//! machine) must then lose nothing that was answered: SIGKILL every process
//! of the cluster right after the last close, with no fsync anywhere, start
//! it again and find every change.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sohofs_e2e::{assert_trees_equal, hash_tree, Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 6, k: 4, m: 2 };
const SMALL_FILES: usize = 300;
/// Sizes around the inline bound (4 KiB) so both paths are crossed.
const SMALL_FILE_BYTES_MAX: usize = 12 << 10;
const BIG_FILES: usize = 2;
const BIG_FILE_BYTES: usize = (5 << 20) + 77;

/// The same changes, in the same order, under `root`: creates, a chmod, a
/// rename over an existing file, a hard link, a symlink, an unlink and a
/// directory removal. No fsync.
fn make_changes(root: &Path, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    fs::create_dir_all(root.join("docs/old")).unwrap();
    fs::create_dir_all(root.join("gone")).unwrap();
    for index in 0..SMALL_FILES {
        let mut data = vec![0u8; rng.gen_range(0..=SMALL_FILE_BYTES_MAX)];
        rng.fill_bytes(&mut data);
        fs::write(root.join(format!("docs/f{index:04}")), &data).unwrap();
    }
    for index in 0..BIG_FILES {
        let mut data = vec![0u8; BIG_FILE_BYTES];
        rng.fill_bytes(&mut data);
        let mut file = File::create(root.join(format!("big{index}.bin"))).unwrap();
        file.write_all(&data).unwrap();
    }
    fs::set_permissions(root.join("docs/f0001"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(root.join("docs/f0002"), root.join("docs/f0003")).unwrap();
    fs::hard_link(root.join("docs/f0004"), root.join("docs/old/link-to-f0004")).unwrap();
    symlink("../docs/f0005", root.join("docs/old/sym")).unwrap();
    fs::remove_file(root.join("docs/f0006")).unwrap();
    fs::remove_dir(root.join("gone")).unwrap();
    // Overwrite in place: the replaced chunk versions go to the collector.
    fs::write(root.join("docs/f0007"), b"replaced").unwrap();
}

#[test]
fn a_crash_of_every_process_loses_nothing_answered() {
    let mut cluster = Cluster::start(OPTIONS);
    let local = cluster.scratch_dir("expected");
    let seed = rand::random();
    eprintln!("crash_consistency: seed {seed}");
    make_changes(&local, seed);
    make_changes(cluster.mount_dir(), seed);
    let expected = hash_tree(&local).expect("hash the local tree");

    cluster.crash();
    cluster.start_again();

    let found = hash_tree(cluster.mount_dir()).expect("hash the mount after the crash");
    assert_trees_equal(&expected, &found, "after SIGKILL of every process and a restart");
    cluster.stop();
}
