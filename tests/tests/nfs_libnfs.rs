//! The NFSv3 gateway with a real NFS client (libnfs-utils: `nfs-cp`,
//! `nfs-ls`): files written through NFS read back byte-exact through the
//! FUSE mount of the same cluster and the other way round; a directory of
//! 2,000 entries plus hard links lists every name exactly once over NFS
//! (READDIRPLUS pages resumed by cookie); root squash refuses a write into a
//! root-owned directory and nothing appears on the mount.
//!
//! The gateway (`sohofs nfs serve`) runs with the cluster's run tag, so the
//! harness ends it with the cluster even when the test fails; the test also
//! stops it itself and checks that it exits 0 on SIGTERM.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::RngCore;
use sohofs_e2e::gateway::Gateway;
use sohofs_e2e::process::{run_bounded, run_ok};
use sohofs_e2e::{bounded, Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 3, k: 2, m: 1 };
/// One libnfs command (a copy of at most a few MiB, or one listing).
const NFS_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const FUSE_TIMEOUT: Duration = Duration::from_secs(120);
const LISTING_FILES: usize = 2_000;
const LISTING_HARD_LINKS: usize = 200;
/// Sizes that cross the inline bound, a chunk boundary and several chunks.
const FILE_SIZES: [usize; 7] = [0, 1, 4096, 4097, 100_000, (4 << 20) + 123, 9 << 20];

fn nfs_command(cluster: &Cluster, program: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(program);
    command.args(args);
    run_ok(command, cluster.tag(), NFS_COMMAND_TIMEOUT)
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

fn fuse_read(path: &Path) -> Vec<u8> {
    let path = path.to_owned();
    bounded("read through FUSE", FUSE_TIMEOUT, move || {
        fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    })
}

/// Names `nfs-ls` printed (the last field of each line), with how often each.
fn listed_names(output: &[u8]) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for line in String::from_utf8_lossy(output).lines() {
        if let Some(name) = line.split_whitespace().last() {
            if name != "." && name != ".." {
                *names.entry(name.to_owned()).or_insert(0) += 1;
            }
        }
    }
    names
}

#[test]
fn nfs_and_fuse_agree_byte_for_byte_and_listings_are_exact() {
    let cluster = Cluster::start(OPTIONS);
    let mount = cluster.mount_dir().to_owned();
    // Clients run as root, squashed to 65534: they write into an open directory.
    let shared = mount.join("shared");
    fs::create_dir(&shared).expect("mkdir shared");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).expect("chmod shared");
    let gateway = Gateway::start(&cluster);
    let local = cluster.scratch_dir("local");

    // NFS -> FUSE.
    for size in FILE_SIZES {
        let bytes = random_bytes(size);
        let source = local.join(format!("in-{size}"));
        fs::write(&source, &bytes).expect("write a local source file");
        let url = gateway.url(&format!("shared/in-{size}"));
        nfs_command(&cluster, "nfs-cp", &[source.to_str().expect("utf-8 path"), &url]);
        let seen = fuse_read(&shared.join(format!("in-{size}")));
        assert!(
            seen == bytes,
            "{size}-byte file written over NFS reads back {} bytes through FUSE, different",
            seen.len()
        );
    }

    // FUSE -> NFS.
    for size in FILE_SIZES {
        let bytes = random_bytes(size);
        let path = shared.join(format!("out-{size}"));
        let written = bytes.clone();
        bounded("write through FUSE", FUSE_TIMEOUT, move || fs::write(&path, &written)).expect("write through FUSE");
        let copy = local.join(format!("out-{size}"));
        let url = gateway.url(&format!("shared/out-{size}"));
        nfs_command(&cluster, "nfs-cp", &[&url, copy.to_str().expect("utf-8 path")]);
        let seen = fs::read(&copy).expect("read the copy");
        assert!(
            seen == bytes,
            "{size}-byte file written through FUSE reads back {} bytes over NFS, different",
            seen.len()
        );
    }

    // A big directory with hard links lists every name exactly once.
    let big = shared.join("big");
    let big_for_fuse = big.clone();
    bounded("fill a directory through FUSE", FUSE_TIMEOUT, move || {
        fs::create_dir(&big_for_fuse).expect("mkdir big");
        for i in 0..LISTING_FILES {
            fs::write(big_for_fuse.join(format!("file-{i:05}")), b"x").expect("create a file");
        }
        for i in 0..LISTING_HARD_LINKS {
            fs::hard_link(
                big_for_fuse.join(format!("file-{i:05}")),
                big_for_fuse.join(format!("link-{i:05}")),
            )
            .expect("hard link");
        }
    });
    let listing = nfs_command(&cluster, "nfs-ls", &[&gateway.url("shared/big")]);
    let names = listed_names(&listing.stdout);
    let twice: Vec<_> = names.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "listed more than once: {twice:?}");
    let mut expected: Vec<String> = (0..LISTING_FILES).map(|i| format!("file-{i:05}")).collect();
    expected.extend((0..LISTING_HARD_LINKS).map(|i| format!("link-{i:05}")));
    expected.sort();
    let got: Vec<String> = names.into_keys().collect();
    let missing: Vec<_> = expected.iter().filter(|n| !got.contains(n)).take(10).collect();
    let extra: Vec<_> = got.iter().filter(|n| !expected.contains(n)).take(10).collect();
    assert!(
        got == expected,
        "listing of {} entries differs: {} listed; missing (first 10) {missing:?}; extra {extra:?}",
        expected.len(),
        got.len()
    );

    // Root squash: root's write into a root-owned 0755 directory is refused.
    let private = mount.join("private");
    fs::create_dir(&private).expect("mkdir private");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).expect("chmod private");
    let source = local.join("in-1");
    let mut command = Command::new("nfs-cp");
    command.arg(&source).arg(gateway.url("private/refused"));
    let refused = run_bounded(command, cluster.tag(), NFS_COMMAND_TIMEOUT);
    assert!(
        !refused.status.success(),
        "a squashed root wrote into a 0755 root directory"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("NFS3ERR_ACCES")
            || String::from_utf8_lossy(&refused.stdout).contains("NFS3ERR_ACCES"),
        "refusal was not NFS3ERR_ACCES: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!private.join("refused").exists(), "a refused create left a file");

    gateway.stop();
    let mut cluster = cluster;
    cluster.stop();
}
