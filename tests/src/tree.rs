//! A snapshot of a directory tree — kind, permission bits, size, BLAKE3 of
//! the content, symlink target — for comparing what went into a mount with
//! what comes out of it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Read size for hashing; large enough that FUSE requests are full-sized.
const HASH_READ_BYTES: usize = 1 << 20;

/// How many differences of each kind a failed comparison lists.
const DIFFERENCES_SHOWN_MAX: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        blake3: String,
    },
    Symlink {
        target: PathBuf,
    },
    /// Sockets, fifos, devices: recorded so that they are not silently lost.
    Other {
        mode: u32,
    },
}

/// Paths relative to the snapshot root; the root itself is not an entry.
pub type Tree = BTreeMap<PathBuf, Entry>;

impl Entry {
    pub fn is_file(&self) -> bool {
        matches!(self, Entry::File { .. })
    }

    pub fn file_size(&self) -> Option<u64> {
        match self {
            Entry::File { size, .. } => Some(*size),
            _ => None,
        }
    }
}

/// BLAKE3 of a file's content, as hex.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; HASH_READ_BYTES];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hasher.finalize().to_hex().to_string());
        }
        hasher.update(&buffer[..read]);
    }
}

/// Snapshots every entry below `root`, without following symlinks.
pub fn hash_tree(root: &Path) -> io::Result<Tree> {
    let mut tree = Tree::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for dirent in fs::read_dir(&dir)? {
            let path = dirent?.path();
            let metadata = fs::symlink_metadata(&path)?;
            let mode = metadata.permissions().mode() & 0o7777;
            let file_type = metadata.file_type();
            let entry = if file_type.is_dir() {
                pending.push(path.clone());
                Entry::Dir { mode }
            } else if file_type.is_file() {
                let blake3 = hash_file(&path)
                    .map_err(|error| io::Error::new(error.kind(), format!("hash {}: {error}", path.display())))?;
                Entry::File {
                    mode,
                    size: metadata.len(),
                    blake3,
                }
            } else if file_type.is_symlink() {
                Entry::Symlink {
                    target: fs::read_link(&path)?,
                }
            } else {
                Entry::Other {
                    mode: metadata.permissions().mode(),
                }
            };
            let relative = path.strip_prefix(root).expect("walk stays below root").to_path_buf();
            tree.insert(relative, entry);
        }
    }
    Ok(tree)
}

/// Regular files in a snapshot and their total size.
pub fn file_totals(tree: &Tree) -> (u64, u64) {
    tree.values()
        .filter_map(Entry::file_size)
        .fold((0, 0), |(files, bytes), size| (files + 1, bytes + size))
}

/// Panics, listing the differences, unless the two snapshots are equal.
pub fn assert_trees_equal(expected: &Tree, actual: &Tree, context: &str) {
    let missing: Vec<&PathBuf> = expected.keys().filter(|path| !actual.contains_key(*path)).collect();
    let unexpected: Vec<&PathBuf> = actual.keys().filter(|path| !expected.contains_key(*path)).collect();
    let changed: Vec<(&PathBuf, &Entry, &Entry)> = expected
        .iter()
        .filter_map(|(path, want)| {
            let got = actual.get(path)?;
            (got != want).then_some((path, want, got))
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && changed.is_empty() {
        return;
    }
    let mut report = format!(
        "{context}: trees differ ({} entries expected, {} found): {} missing, {} unexpected, {} changed\n",
        expected.len(),
        actual.len(),
        missing.len(),
        unexpected.len(),
        changed.len()
    );
    for path in missing.iter().take(DIFFERENCES_SHOWN_MAX) {
        let _ = writeln!(report, "  missing    {}", path.display());
    }
    for path in unexpected.iter().take(DIFFERENCES_SHOWN_MAX) {
        let _ = writeln!(report, "  unexpected {}", path.display());
    }
    for (path, want, got) in changed.iter().take(DIFFERENCES_SHOWN_MAX) {
        let _ = writeln!(
            report,
            "  changed    {}\n    expected {want:?}\n    found    {got:?}",
            path.display()
        );
    }
    panic!("{report}");
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn snapshot_records_kind_mode_hash_and_target() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/f"), b"abc").unwrap();
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o640)).unwrap();
        symlink("d/f", root.join("l")).unwrap();

        let tree = hash_tree(root).unwrap();
        assert_eq!(tree.len(), 3);
        assert_eq!(
            tree[Path::new("d/f")],
            Entry::File {
                mode: 0o640,
                size: 3,
                blake3: blake3::hash(b"abc").to_hex().to_string()
            }
        );
        assert_eq!(
            tree[Path::new("l")],
            Entry::Symlink {
                target: PathBuf::from("d/f")
            }
        );
        assert_eq!(file_totals(&tree), (1, 3));
    }

    #[test]
    #[should_panic(expected = "1 missing, 0 unexpected, 1 changed")]
    fn comparison_reports_what_differs() {
        let mut expected = Tree::new();
        expected.insert("a".into(), Entry::Dir { mode: 0o755 });
        expected.insert("b".into(), Entry::Dir { mode: 0o755 });
        let mut actual = Tree::new();
        actual.insert("a".into(), Entry::Dir { mode: 0o700 });
        assert_trees_equal(&expected, &actual, "test");
    }
}
