//! Nodes hold ciphertext only: no file's bytes or names appear in any file (or
//! file name) under `DIR/nodes/`, and no file's bytes appear under `DIR/meta/`
//! (meta may know names of the standard tier, never data — not even the data
//! of a tiny file stored inline in its metadata record).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use sohofs_e2e::{bounded, Cluster, ClusterOptions};

/// Smaller than the 6-node default: what is tested is the bytes at rest.
const OPTIONS: ClusterOptions = ClusterOptions { nodes: 3, k: 2, m: 1 };

const MEDIUM_FILE_BYTES: usize = 100 << 10;
/// More than two 4 MiB chunks.
const MULTI_CHUNK_FILE_BYTES: usize = 9 << 20;
const SCAN_READ_BYTES: usize = 1 << 20;
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
const SCAN_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a marker was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Name,
    Content,
    LinkTarget,
}

/// (path relative to the scan root, place, index of the marker).
type Hit = (PathBuf, Place, usize);

#[test]
fn no_plaintext_under_nodes() {
    let cluster = Cluster::start(OPTIONS);
    let id = format!("{:016x}", rand::random::<u64>());
    // In names and contents; must appear nowhere under nodes/.
    let name_marker = format!("SOHOFS-MARKER-{id}");
    // In contents only; must appear nowhere under nodes/ nor meta/.
    let data_marker = format!("SOHOFS-DATA-{id}");
    let markers = [name_marker.as_bytes().to_vec(), data_marker.as_bytes().to_vec()];
    let line = format!("{name_marker} {data_marker}\n");

    let tiny = format!("tiny-{name_marker}.txt");
    let medium = format!("medium-{name_marker}.bin");
    let dir = format!("dir-{name_marker}");
    let multi = format!("{dir}/multi-{name_marker}.bin");
    let link = format!("link-{name_marker}");

    let tiny_content = line.clone().into_bytes();
    assert!(tiny_content.len() < 1024);
    let mut medium_content = vec![0u8; MEDIUM_FILE_BYTES];
    rand::thread_rng().fill_bytes(&mut medium_content);
    for offset in [0, MEDIUM_FILE_BYTES / 2 + 3, MEDIUM_FILE_BYTES - line.len()] {
        medium_content[offset..offset + line.len()].copy_from_slice(line.as_bytes());
    }
    let multi_content: Vec<u8> = line.bytes().cycle().take(MULTI_CHUNK_FILE_BYTES).collect();

    let files = vec![
        (tiny.clone(), tiny_content),
        (medium.clone(), medium_content),
        (multi.clone(), multi_content),
    ];
    let mount = cluster.mount_dir().to_path_buf();
    {
        let (mount, dir, link, multi, files) = (mount.clone(), dir.clone(), link.clone(), multi.clone(), files.clone());
        bounded("writing the marked files", WRITE_TIMEOUT, move || -> io::Result<()> {
            fs::create_dir(mount.join(&dir))?;
            for (name, content) in &files {
                let mut file = File::create(mount.join(name))?;
                file.write_all(content)?;
                file.sync_all()?;
            }
            symlink(&multi, mount.join(&link))?;
            nix::unistd::sync();
            Ok(())
        })
        .expect("write the marked files into the mount");
    }

    // What was written reads back, byte for byte.
    for (name, content) in &files {
        let path = mount.join(name);
        let read = bounded("reading a marked file back", WRITE_TIMEOUT, move || fs::read(path))
            .unwrap_or_else(|error| panic!("read {name} back: {error}"));
        assert!(
            read == *content,
            "{name} reads back {} bytes that differ from the {} written",
            read.len(),
            content.len()
        );
    }

    // The scanner finds exactly the expected markers in the mount, which
    // proves that it would find them under nodes/ if they were there.
    let seen_in_mount = scan(&mount, &markers);
    let mut expected: BTreeSet<Hit> = BTreeSet::new();
    for name in [&tiny, &medium, &dir, &multi, &link] {
        expected.insert((PathBuf::from(name), Place::Name, 0));
    }
    for name in [&tiny, &medium, &multi] {
        expected.insert((PathBuf::from(name), Place::Content, 0));
        expected.insert((PathBuf::from(name), Place::Content, 1));
    }
    expected.insert((PathBuf::from(&link), Place::LinkTarget, 0));
    assert_eq!(
        seen_in_mount, expected,
        "the scan of the mount finds exactly the markers written"
    );

    let nodes_dir = cluster.nodes_dir();
    let node_bytes = bytes_under(&nodes_dir);
    assert!(
        node_bytes >= MULTI_CHUNK_FILE_BYTES as u64,
        "{} holds {node_bytes} bytes, less than the {MULTI_CHUNK_FILE_BYTES}-byte file alone: \
         the shards are not where the contract says",
        nodes_dir.display()
    );
    let seen_in_nodes = scan(&nodes_dir, &markers);
    assert!(
        seen_in_nodes.is_empty(),
        "plaintext under {} (marker 0 = name marker, 1 = data marker): {seen_in_nodes:#?}",
        nodes_dir.display()
    );

    let meta_dir = cluster.meta_dir();
    assert!(meta_dir.is_dir(), "no meta directory at {}", meta_dir.display());
    let seen_in_meta = scan(&meta_dir, &markers[1..]);
    assert!(
        seen_in_meta.is_empty(),
        "file data in plaintext under {}: {seen_in_meta:#?}",
        meta_dir.display()
    );
}

/// Every place below `root` where one of `markers` occurs: in an entry's
/// name, a regular file's content, or a symlink's target. Symlinks are not
/// followed. Bounded, since `root` may be a FUSE mount.
fn scan(root: &Path, markers: &[Vec<u8>]) -> BTreeSet<Hit> {
    let (root, markers) = (root.to_path_buf(), markers.to_vec());
    let what = format!("scanning {} for markers", root.display());
    bounded(&what, SCAN_TIMEOUT, move || scan_tree(&root, &markers)).unwrap_or_else(|error| panic!("{what}: {error}"))
}

fn scan_tree(root: &Path, markers: &[Vec<u8>]) -> io::Result<BTreeSet<Hit>> {
    let mut hits = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for dirent in fs::read_dir(&dir)? {
            let dirent = dirent?;
            let path = dirent.path();
            let relative = path.strip_prefix(root).expect("walk stays below root").to_path_buf();
            let file_type = dirent.file_type()?;
            let name = dirent.file_name();
            let mut record = |place: Place, found: Vec<usize>| {
                hits.extend(found.into_iter().map(|marker| (relative.clone(), place, marker)));
            };
            record(Place::Name, markers_in(name.as_encoded_bytes(), markers));
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file() {
                record(Place::Content, markers_in_file(&path, markers)?);
            } else if file_type.is_symlink() {
                record(
                    Place::LinkTarget,
                    markers_in(fs::read_link(&path)?.as_os_str().as_encoded_bytes(), markers),
                );
            }
        }
    }
    Ok(hits)
}

fn markers_in(haystack: &[u8], markers: &[Vec<u8>]) -> Vec<usize> {
    (0..markers.len())
        .filter(|index| {
            haystack
                .windows(markers[*index].len())
                .any(|window| window == markers[*index])
        })
        .collect()
}

/// Streams the file, keeping the last `longest marker - 1` bytes of each read
/// in front of the next, so a marker split across reads is still found.
fn markers_in_file(path: &Path, markers: &[Vec<u8>]) -> io::Result<Vec<usize>> {
    let overlap = markers.iter().map(Vec::len).max().unwrap_or(1).saturating_sub(1);
    let mut file = File::open(path)?;
    let mut window: Vec<u8> = Vec::with_capacity(SCAN_READ_BYTES + overlap);
    let mut buffer = vec![0u8; SCAN_READ_BYTES];
    let mut found = BTreeSet::new();
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(found.into_iter().collect());
        }
        window.extend_from_slice(&buffer[..read]);
        found.extend(markers_in(&window, markers));
        let keep_from = window.len().saturating_sub(overlap);
        window.drain(..keep_from);
    }
}

/// Total size of the regular files below `root`.
fn bytes_under(root: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|error| panic!("list {}: {error}", dir.display()));
        for dirent in entries.flatten() {
            let Ok(metadata) = fs::symlink_metadata(dirent.path()) else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(dirent.path());
            } else if metadata.is_file() {
                total += metadata.len();
            }
        }
    }
    total
}

#[test]
fn scanner_finds_a_marker_split_across_reads() {
    let scratch = tempfile::tempdir().unwrap();
    let marker = b"SOHOFS-MARKER-split".to_vec();
    let mut content = vec![b'.'; SCAN_READ_BYTES - 5];
    content.extend_from_slice(&marker);
    content.extend_from_slice(b"tail");
    let path = scratch.path().join("file");
    fs::write(&path, &content).unwrap();
    assert_eq!(markers_in_file(&path, &[b"absent".to_vec(), marker]).unwrap(), vec![1]);
}
