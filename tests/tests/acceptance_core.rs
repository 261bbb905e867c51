//! The acceptance run of the dev cluster: copy real trees in, lose nodes, read
//! through another client, lose one node too many, restart, read again.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sohofs_e2e::process::run_ok;
use sohofs_e2e::status::expected_states;
use sohofs_e2e::tree::file_totals;
use sohofs_e2e::{assert_trees_equal, bounded, hash_tree, wait_until, Cluster, ClusterOptions, Status, Tree};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 6, k: 4, m: 2 };

const BIG_FILE_BYTES: usize = 100 << 20;
const SMALL_FILES: usize = 2000;
const SMALL_FILE_BYTES_MAX: usize = 8 << 10;
/// Half the small files go into one directory (long listings); the rest are
/// spread over this many.
const SMALL_FILE_DIRS: usize = 10;

/// Entries of the repository not copied: build output, VCS state, a running
/// dev cluster's data and mount, fuzzing output.
const REPO_SKIPPED_NAMES: &[&str] = &[
    ".git",
    "target",
    "sohofs-data",
    "sohofs-mnt",
    "corpus",
    "artifacts",
    "coverage",
];

/// `cp -a` of ~110 MiB and 2,000+ files into a debug build on 2 cores.
const COPY_TIMEOUT: Duration = Duration::from_secs(300);
/// Hashing the whole tree back out of a mount.
const HASH_TIMEOUT: Duration = Duration::from_secs(240);
/// The contract: a killed node shows "down" within ~10 s (heartbeat timeout).
const DOWN_DETECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The contract: with more than m nodes down, a read fails with EIO within 30 s.
const EIO_TIMEOUT: Duration = Duration::from_secs(30);
/// For `status` to agree with what the test did (counters, chunk health).
const STATUS_CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn acceptance_core() {
    let mut cluster = Cluster::start(OPTIONS);

    // Everything goes into one source tree first, so that `cp -a source/.`
    // copies it in one go and the mount root must equal it entry for entry.
    let source = cluster.scratch_dir("source");
    stage_repository_sources(&repo_root(), &source.join("repo"));
    let seed: u64 = rand::random();
    eprintln!("acceptance_core: random data seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    write_random_file(&source.join("big.bin"), BIG_FILE_BYTES, &mut rng).expect("write big.bin");
    write_small_files(&source.join("small"), &mut rng).expect("write the small files");
    let expected = hash_tree(&source).expect("snapshot the source tree");
    let (files, bytes) = file_totals(&expected);
    assert!(
        files > SMALL_FILES as u64 + 1,
        "the repository sources were staged ({files} files)"
    );

    // 1. Copy in, all nodes up.
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(source.join(".")).arg(cluster.mount_dir());
    run_ok(copy, cluster.tag(), COPY_TIMEOUT);
    assert_mount_matches(&expected, cluster.mount_dir(), "after `cp -a` into the mount of `up`");
    let status = wait_for_status(
        &cluster,
        "every node up after the copy",
        STATUS_CONVERGE_TIMEOUT,
        |status| check_status(status, &[], files, bytes, Health::AllHealthy),
    );
    check_nodes_hold_data(&status);

    // 2. Two nodes (= m) down: detected, and everything still reads.
    let killed_at = Instant::now();
    cluster.kill_node(1);
    cluster.kill_node(2);
    wait_for_status(&cluster, "nodes 1 and 2 down, 3..6 up", DOWN_DETECT_TIMEOUT, |status| {
        states_match(status, &[1, 2])
    });
    eprintln!(
        "acceptance_core: nodes 1, 2 shown down {:?} after SIGKILL",
        killed_at.elapsed()
    );
    wait_for_status(
        &cluster,
        "chunks degraded with nodes 1 and 2 down",
        STATUS_CONVERGE_TIMEOUT,
        |status| check_status(status, &[1, 2], files, bytes, Health::Degraded),
    );
    let second = cluster.mount_client();
    assert_mount_matches(
        &expected,
        second.mount_dir(),
        "through a second client with nodes 1 and 2 down",
    );
    second.stop();

    // 3. A third node down: every chunk lost m+1 shards, since with k+m equal
    // to the node count each chunk has a shard on every node. A client that
    // starts now has nothing cached, so the read must reach the nodes.
    cluster.kill_node(3);
    let fresh = cluster.mount_client();
    let big_file = fresh.mount_dir().join("big.bin");
    let read_started = Instant::now();
    let outcome = bounded("reading big.bin with nodes 1, 2, 3 down", EIO_TIMEOUT, move || {
        read_whole_file(&big_file)
    });
    match outcome {
        Ok(read) => panic!("big.bin read {read} bytes with 3 of 6 nodes down; expected EIO"),
        Err(error) => assert_eq!(
            error.raw_os_error(),
            Some(libc::EIO),
            "reading big.bin with 3 of 6 nodes down failed, but with {error:?}, not EIO"
        ),
    }
    eprintln!("acceptance_core: EIO after {:?}", read_started.elapsed());
    wait_for_status(
        &cluster,
        "nodes 1..3 down and chunks unreadable",
        DOWN_DETECT_TIMEOUT + STATUS_CONVERGE_TIMEOUT,
        |status| check_status(status, &[1, 2, 3], files, bytes, Health::Unreadable),
    );
    fresh.stop();

    // 4. Restart on the same directory: every node back, every byte intact.
    cluster.stop();
    cluster.start_again();
    wait_for_status(
        &cluster,
        "every node up after the restart",
        STATUS_CONVERGE_TIMEOUT,
        |status| check_status(status, &[], files, bytes, Health::AllHealthy),
    );
    assert_mount_matches(
        &expected,
        cluster.mount_dir(),
        "after restarting `up` on the same directory",
    );
}

/// The repository root: this package lives in `<root>/tests`.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Copies the repository's sources (not build output, VCS state or a running
/// dev cluster) into `dest`, so that the test copies a snapshot that cannot
/// change under it while someone edits the working tree.
fn stage_repository_sources(repo: &Path, dest: &Path) {
    let repo_device = fs::metadata(repo).expect("stat the repository").dev();
    copy_sources(repo, dest, repo_device).unwrap_or_else(|error| panic!("stage {}: {error}", repo.display()));
}

fn copy_sources(from: &Path, to: &Path, device: u64) -> io::Result<()> {
    fs::create_dir(to)?;
    for dirent in fs::read_dir(from)? {
        let dirent = dirent?;
        let name = dirent.file_name();
        if REPO_SKIPPED_NAMES.iter().any(|skipped| name == *skipped) {
            continue;
        }
        let source = dirent.path();
        let target = to.join(&name);
        let metadata = fs::symlink_metadata(&source)?;
        if metadata.is_dir() {
            // A directory on another device is a mount point: not source.
            if metadata.dev() == device {
                copy_sources(&source, &target, device)?;
                fs::set_permissions(&target, metadata.permissions())?;
            }
        } else if metadata.is_file() {
            fs::copy(&source, &target)?;
        } else if metadata.file_type().is_symlink() {
            symlink(fs::read_link(&source)?, &target)?;
        }
    }
    Ok(())
}

fn write_random_file(path: &Path, len: usize, rng: &mut StdRng) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let piece = left.min(block.len());
        rng.fill_bytes(&mut block[..piece]);
        out.write_all(&block[..piece])?;
        left -= piece;
    }
    out.into_inner()?.sync_all()
}

fn write_small_files(dir: &Path, rng: &mut StdRng) -> io::Result<()> {
    let flat = dir.join("flat");
    fs::create_dir_all(&flat)?;
    for index in 0..SMALL_FILES {
        let parent = if index < SMALL_FILES / 2 {
            flat.clone()
        } else {
            dir.join(format!("spread-{:02}", index % SMALL_FILE_DIRS))
        };
        fs::create_dir_all(&parent)?;
        let mut content = vec![0u8; rng.gen_range(0..=SMALL_FILE_BYTES_MAX)];
        rng.fill_bytes(&mut content);
        let path = parent.join(format!("file-{index:04}.bin"));
        fs::write(&path, &content)?;
        // A few modes other than the umask's, which `cp -a` must carry over.
        if index % 7 == 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

fn read_whole_file(path: &Path) -> io::Result<u64> {
    let mut file = File::open(path)?;
    io::copy(&mut file, &mut io::sink())
}

/// Snapshots the mount (bounded: a hung FUSE read must fail the test) and
/// compares it with the source snapshot.
fn assert_mount_matches(expected: &Tree, mount: &Path, context: &str) {
    let mount = mount.to_path_buf();
    let what = format!("hashing every file {context}");
    let actual =
        bounded(&what, HASH_TIMEOUT, move || hash_tree(&mount)).unwrap_or_else(|error| panic!("{what}: {error}"));
    assert_trees_equal(expected, &actual, context);
}

/// Polls `status --json` until `check` accepts it; returns that status.
fn wait_for_status(
    cluster: &Cluster,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Status) -> Result<(), String>,
) -> Status {
    wait_until(&format!("`sohofs status` shows {what}"), timeout, || {
        let status = cluster.status()?;
        check(&status).map_err(|problem| format!("{problem}\nstatus: {status:#?}"))?;
        Ok(status)
    })
}

fn states_match(status: &Status, down: &[u32]) -> Result<(), String> {
    let expected = expected_states(OPTIONS.nodes, down);
    let actual = status.node_states();
    match actual == expected && status.nodes.len() == expected.len() {
        true => Ok(()),
        false => Err(format!("node states {actual:?}, expected {expected:?}")),
    }
}

/// What the chunk counters must show, given that with k+m equal to the node
/// count every chunk has a shard on every node.
#[derive(Debug, Clone, Copy)]
enum Health {
    /// No node down: every chunk healthy.
    AllHealthy,
    /// 1..=m nodes down: every chunk that has shards is degraded, none
    /// unreadable.
    Degraded,
    /// More than m nodes down: every chunk that has shards is unreadable.
    Unreadable,
}

fn check_status(status: &Status, down: &[u32], files: u64, bytes: u64, health: Health) -> Result<(), String> {
    states_match(status, down)?;
    let volume = &status.volume;
    let mut problems = Vec::new();
    if (volume.k, volume.m) != (OPTIONS.k, OPTIONS.m) {
        problems.push(format!(
            "k+m is {}+{}, expected {}+{}",
            volume.k, volume.m, OPTIONS.k, OPTIONS.m
        ));
    }
    if (volume.files, volume.bytes) != (files, bytes) {
        problems.push(format!(
            "volume holds {} files of {} bytes, expected {files} files of {bytes} bytes",
            volume.files, volume.bytes
        ));
    }
    let counted = volume.chunks_healthy + volume.chunks_degraded + volume.chunks_unreadable;
    if counted != volume.chunks_total || volume.chunks_total == 0 {
        problems.push(format!(
            "chunks healthy+degraded+unreadable = {counted}, total = {} (must be equal and non-zero)",
            volume.chunks_total
        ));
    }
    let chunks_ok = match health {
        Health::AllHealthy => volume.chunks_healthy == volume.chunks_total,
        Health::Degraded => volume.chunks_degraded > 0 && volume.chunks_unreadable == 0,
        Health::Unreadable => volume.chunks_unreadable > 0 && volume.chunks_degraded == 0,
    };
    if !chunks_ok {
        problems.push(format!("chunk health is not {health:?}"));
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

/// After a 100 MiB file was written across all six nodes, each node reports
/// a loopback address of its own and holds shards.
fn check_nodes_hold_data(status: &Status) {
    let mut ports = Vec::new();
    for node in &status.nodes {
        let addr = node.loopback_addr().unwrap_or_else(|problem| panic!("{problem}"));
        ports.push(addr.port());
        assert!(
            node.shards > 0,
            "node {} holds no shards after the copy: {node:?}",
            node.id
        );
        assert!(
            node.used_bytes > 0 && node.used_bytes <= node.capacity_bytes,
            "node {} reports used {} of capacity {}",
            node.id,
            node.used_bytes,
            node.capacity_bytes
        );
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        status.nodes.len(),
        "nodes share a port: {:?}",
        status.nodes
    );
}
